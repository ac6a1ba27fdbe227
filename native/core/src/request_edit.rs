//! OpenAI request bodies as bytes: the router's request checks and the splice
//! of `nvext.token_data` (and a model rewrite) into the client's JSON. The Rust
//! twin of `readRequest` / `spliceRequestBody` in src/openai/request-body.ts;
//! the TypeScript differential tests hold the two byte-identical.
//!
//! Contract of the splice: every byte of the client's body outside the edited
//! values is kept (key order, number forms, whitespace); edits apply to the
//! last member of a repeated key, the one the worker's JSON reader keeps (as
//! the TypeScript twin does), an existing
//! `nvext.token_data` is replaced, a non-object `nvext` (which `check_request`
//! refuses first) is replaced by `{"token_data":…}`. The body must be a JSON object that parsed already: the
//! scanner below does not validate.

use serde_json::{Map, Value as Json};

use crate::tokenize::{ApiKind, TokenizeError};

/// The checks every routed body passes (HTTP 400s), in `readRequest`'s order
/// and with its messages; returns the body's model.
pub fn check_request(body: &Map<String, Json>, api: ApiKind) -> Result<&str, TokenizeError> {
    let model = match body.get("model") {
        Some(Json::String(s)) if !s.is_empty() => s.as_str(),
        _ => return Err(TokenizeError::invalid_request("model not found in request body")),
    };
    match api {
        ApiKind::Chat if !matches!(body.get("messages"), Some(Json::Array(_))) => {
            Err(TokenizeError::invalid_request("chat completions need a \"messages\" list"))
        }
        ApiKind::Completions if !body.contains_key("prompt") => {
            Err(TokenizeError::invalid_request("completions need a \"prompt\""))
        }
        // The token ids go into `nvext`; Dynamo's frontend refuses a non-object
        // one too, so it is the client's 400 rather than a value replaced.
        _ if body.get("nvext").is_some_and(|v| !(v.is_null() || v.is_object())) => {
            Err(TokenizeError::invalid_request(NVEXT_NOT_AN_OBJECT))
        }
        _ => Ok(model),
    }
}

const NVEXT_NOT_AN_OBJECT: &str = "\"nvext\" must be an object";

/// The model the worker must see: the gateway's rewrite when it names another one.
pub fn rewrite_target<'a>(model: &str, rewrite: Option<&'a str>) -> Option<&'a str> {
    rewrite.filter(|r| !r.is_empty() && *r != model)
}

struct Member {
    /// Raw key bytes between the quotes (escapes undecoded).
    key: (usize, usize),
    start: usize,
    end: usize,
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\n' | b'\r' | b'\t')
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ws(b[i]) {
        i += 1;
    }
    i
}

/// End (exclusive) of the JSON value starting at `i`.
fn value_end(b: &[u8], mut i: usize) -> usize {
    match b.get(i) {
        Some(b'"') => {
            i += 1;
            // To the next quote or backslash at SIMD speed; a backslash skips the escaped byte.
            while let Some(at) = memchr::memchr2(b'"', b'\\', b.get(i..).unwrap_or_default()) {
                i += at;
                if b[i] == b'"' {
                    return i + 1;
                }
                i += 2;
            }
            b.len() + 1
        }
        Some(b'{') | Some(b'[') => {
            let mut depth = 0usize;
            while i < b.len() {
                match b[i] {
                    b'"' => i = value_end(b, i) - 1,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            b.len()
        }
        _ => {
            while i < b.len() && !matches!(b[i], b',' | b'}' | b']') && !is_ws(b[i]) {
                i += 1;
            }
            i
        }
    }
}

/// Members of the object whose `{` is at `open`, and the index of its `}`.
fn members(b: &[u8], open: usize) -> (Vec<Member>, usize) {
    let mut list = Vec::new();
    let mut i = skip_ws(b, open + 1);
    if b.get(i) == Some(&b'}') {
        return (list, i);
    }
    loop {
        let key_end = value_end(b, i);
        let key = (i + 1, key_end - 1);
        i = skip_ws(b, key_end);
        i = skip_ws(b, i + 1); // ':'
        let end = value_end(b, i);
        list.push(Member { key, start: i, end });
        i = skip_ws(b, end);
        if b.get(i) == Some(&b',') {
            i = skip_ws(b, i + 1);
            continue;
        }
        return (list, i);
    }
}

fn key_is(b: &[u8], m: &Member, name: &str) -> bool {
    let raw = &b[m.key.0..m.key.1];
    if !raw.contains(&b'\\') {
        return raw == name.as_bytes();
    }
    // An escaped key: compare its decoded text (the quotes included for the decoder).
    serde_json::from_slice::<String>(&b[m.key.0 - 1..m.key.1 + 1]).is_ok_and(|k| k == name)
}

/// The member a JSON reader sees for `name`: the last one (serde_json, Python's
/// json and JavaScript's JSON.parse all keep the last of repeated keys).
fn find<'m>(b: &[u8], list: &'m [Member], name: &str) -> Option<&'m Member> {
    list.iter().rev().find(|m| key_is(b, m, name))
}

struct Edit {
    start: usize,
    end: usize,
    text: Vec<u8>,
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Sets top-level `model` (when given) and `nvext.token_data` (the JSON array
/// `token_data_json`) in `body`, keeping every other byte.
pub fn splice_request(body: &[u8], model: Option<&str>, token_data_json: &[u8]) -> Vec<u8> {
    let open = skip_ws(body, 0);
    let (list, close) = members(body, open);
    let mut edits: Vec<Edit> = Vec::with_capacity(2);
    if let Some(model) = model {
        let text = serde_json::to_string(model).unwrap_or_default().into_bytes();
        match find(body, &list, "model") {
            Some(m) => edits.push(Edit { start: m.start, end: m.end, text }),
            None => {
                let sep: &[u8] = if list.is_empty() { b"" } else { b"," };
                edits.push(Edit {
                    start: close,
                    end: close,
                    text: cat(&[sep, b"\"model\":", &text]),
                })
            }
        }
    }
    let nv = find(body, &list, "nvext");
    match nv {
        Some(nv) if body[nv.start] == b'{' => {
            let (inner, inner_close) = members(body, nv.start);
            match find(body, &inner, "token_data") {
                Some(td) => edits.push(Edit {
                    start: td.start,
                    end: td.end,
                    text: token_data_json.to_vec(),
                }),
                None => {
                    let sep: &[u8] = if inner.is_empty() { b"" } else { b"," };
                    edits.push(Edit {
                        start: inner_close,
                        end: inner_close,
                        text: cat(&[sep, b"\"token_data\":", token_data_json]),
                    });
                }
            }
        }
        _ => {
            // No nvext (or a non-object one, which check_request refuses first): set it.
            let obj = cat(&[b"{\"token_data\":", token_data_json, b"}"]);
            match nv {
                Some(nv) => edits.push(Edit { start: nv.start, end: nv.end, text: obj }),
                None => {
                    let sep: &[u8] = if !list.is_empty() || edits.iter().any(|e| e.start == close) {
                        b","
                    } else {
                        b""
                    };
                    edits.push(Edit {
                        start: close,
                        end: close,
                        text: cat(&[sep, b"\"nvext\":", &obj]),
                    });
                }
            }
        }
    }
    // Stable: a model inserted at the closing brace stays before nvext.
    edits.sort_by_key(|e| e.start);
    let grown: usize = edits.iter().map(|e| e.text.len()).sum();
    let mut out = Vec::with_capacity(body.len() + grown);
    let mut at = 0;
    for e in &edits {
        out.extend_from_slice(&body[at..e.start]);
        out.extend_from_slice(&e.text);
        at = e.end;
    }
    out.extend_from_slice(&body[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splice(body: &str, model: Option<&str>, ids: &str) -> String {
        String::from_utf8(splice_request(body.as_bytes(), model, ids.as_bytes())).unwrap()
    }

    fn parsed(s: &str) -> Map<String, Json> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn appends_and_replaces_token_data() {
        assert_eq!(splice(r#"{"a":1}"#, None, "[1,2]"), r#"{"a":1,"nvext":{"token_data":[1,2]}}"#);
        assert_eq!(splice("{}", None, "[]"), r#"{"nvext":{"token_data":[]}}"#);
        assert_eq!(splice(" { } ", None, "[1]"), r#" { "nvext":{"token_data":[1]}} "#);
        assert_eq!(
            splice(r#"{"nvext": {"x": [1, "}"]}}"#, None, "[3]"),
            r#"{"nvext": {"x": [1, "}"],"token_data":[3]}}"#
        );
        assert_eq!(
            splice(r#"{"nvext":{"token_data":[9,9],"k":1}}"#, None, "[3]"),
            r#"{"nvext":{"token_data":[3],"k":1}}"#
        );
        assert_eq!(splice(r#"{"nvext":null}"#, None, "[3]"), r#"{"nvext":{"token_data":[3]}}"#);
        assert_eq!(splice(r#"{"nvext":{}}"#, None, "[3]"), r#"{"nvext":{"token_data":[3]}}"#);
    }

    #[test]
    fn rewrites_the_model_last_member_wins_escaped_keys_match() {
        assert_eq!(
            splice(r#"{"model":"a","x":"\"model\""}"#, Some("b\"\n\u{1}é"), "[1]"),
            r#"{"model":"b\"\n\u0001é","x":"\"model\"","nvext":{"token_data":[1]}}"#
        );
        assert_eq!(splice("{}", Some("m"), "[1]"), r#"{"model":"m","nvext":{"token_data":[1]}}"#);
        assert_eq!(
            splice(r#"{"model":"z","mod\u0065l":"a"}"#, Some("b"), "[]"),
            r#"{"model":"z","mod\u0065l":"b","nvext":{"token_data":[]}}"#
        );
        assert_eq!(
            splice(r#"{"model":"a","x":1,"model":"dup"}"#, Some("b"), "[1]"),
            r#"{"model":"a","x":1,"model":"b","nvext":{"token_data":[1]}}"#
        );
        assert_eq!(
            splice(r#"{"nvext":{"k":1},"nvext":{"token_data":[7],"token_data":[8]}}"#, None, "[1]"),
            r#"{"nvext":{"k":1},"nvext":{"token_data":[7],"token_data":[1]}}"#
        );
    }

    #[test]
    fn checks_in_read_request_order() {
        let chat = |s: &str| check_request(&parsed(s), ApiKind::Chat).map(str::to_owned);
        assert_eq!(chat(r#"{"model":"m","messages":[]}"#).unwrap(), "m");
        assert!(chat(r#"{"messages":[]}"#).unwrap_err().message.contains("model not found"));
        assert!(chat(r#"{"model":"","messages":[]}"#).is_err());
        assert!(chat(r#"{"model":1,"messages":[]}"#).is_err());
        assert!(chat(r#"{"model":"m","messages":{}}"#).unwrap_err().message.contains("messages"));
        let comp = |s: &str| check_request(&parsed(s), ApiKind::Completions).map(str::to_owned);
        assert_eq!(comp(r#"{"model":"m","prompt":null}"#).unwrap(), "m");
        assert!(comp(r#"{"model":"m"}"#).unwrap_err().message.contains("prompt"));
    }

    #[test]
    fn rewrite_target_only_when_different() {
        assert_eq!(rewrite_target("m", Some("n")), Some("n"));
        assert_eq!(rewrite_target("m", Some("m")), None);
        assert_eq!(rewrite_target("m", Some("")), None);
        assert_eq!(rewrite_target("m", None), None);
    }
}
