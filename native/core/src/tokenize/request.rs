//! OpenAI request bodies => what vLLM (0.33.0) hands to `apply_chat_template` / `encode`.
//!
//! Re-implements steps 1-4 of scripts/goldens/make_goldens.py (its docstring is
//! the spec; its goldens run vLLM's own code for steps 1-2; comments below name
//! the step):
//! 1. `check_tool_usage`, then validation of `messages` against pydantic's smart
//!    union of vLLM's message types inside its request model (pydantic.rs:
//!    `extra="allow"`, so no key is dropped), `tools` through vLLM's tool model;
//! 2. message parsing (`parse_chat_message_content`): each message's content in
//!    both of vLLM's content formats ("string": the non-empty texts joined with
//!    "\n"; "openai": a list of text parts), unknown keys dropped, tool-call
//!    arguments made objects; the template picks the format and whether
//!    developer messages become system ones (`chat_input`);
//! 3. tools re-serialised as `{type, function: {name, description, parameters,
//!    <extras>}}`;
//! 4. template kwargs (`chat_template_kwargs` + request fields, None/"auto"
//!    unset), filtered to what the template reads plus `apply_chat_template`'s
//!    own parameters.
//!
//! Key order of the body is preserved (serde_json `preserve_order`): templates
//! print tool schemas and arguments with `tojson` in input order.
//!
//! Beyond the script (which reads request fields raw), top-level fields are
//! type-checked as vLLM's pydantic request models do (lax booleans, lists,
//! objects), and a request-supplied `chat_template` is refused as vLLM does
//! without `--trust-request-chat-template`.
//!
//! Known divergences: from Python's `json`, NaN/Infinity literals and lone
//! surrogate escapes are rejected (`invalid_json`) and integers beyond 64 bits
//! become floats, `-0` a float (`-0.0`), the same in tool-call arguments; a
//! part whose text is not a string is refused in both content formats (vLLM
//! renders it in the "openai" one when its custom message type won validation);
//! `tool_choice` is checked as with a tool parser configured (vLLM without one
//! refuses every `tool_choice` but "none").

use serde_json::{Map, Value as Json};

use super::chat::{ChatInput, ChatTemplate};
use super::content_format::ContentFormat;
use super::error::TokenizeError;
use super::pydantic::{lax_bool, validate_message};

/// Containers nested deepest in a body the tokenizer parses: serde_json's
/// recursion limit (128 levels refused), which Dynamo's frontend parses with
/// too. The JS twin's parser stops at the same depth.
pub const MAX_JSON_DEPTH: usize = 127;

/// The `unsupported_content` message for a body nested deeper than
/// [`MAX_JSON_DEPTH`] (mirrored as `NESTED_TOO_DEEP` in TypeScript, which tells
/// it apart from the other `unsupported_content` refusals by this text).
pub const NESTED_TOO_DEEP: &str =
    "the request body nests JSON deeper than 127 levels: it is routed without token data";

/// The parsed body (a JSON object, key order kept).
///
/// A body nested deeper than [`MAX_JSON_DEPTH`] is `unsupported_content`, not
/// `invalid_json`: it is still JSON (the reference EPP forwards it up to Go's
/// 10 000 levels), so the router sends it on by load and lets the worker decide.
pub fn parse_body(body: &[u8]) -> Result<Map<String, Json>, TokenizeError> {
    match serde_json::from_slice::<Json>(body) {
        Ok(Json::Object(m)) => Ok(m),
        Ok(_) => Err(TokenizeError::invalid_request("the request body must be a JSON object")),
        Err(e) if is_recursion_limit(&e) => {
            Err(TokenizeError::unsupported_content(NESTED_TOO_DEEP))
        }
        Err(e) => {
            Err(TokenizeError::invalid_json(format!("the request body is not valid JSON: {e}")))
        }
    }
}

/// serde_json has no accessor for this error; its text is pinned by a test.
fn is_recursion_limit(e: &serde_json::Error) -> bool {
    e.is_syntax() && e.to_string().starts_with("recursion limit exceeded")
}

/// The request's cache namespace: `nvext.cache_salt`, else the top-level
/// `cache_salt` (Dynamo's order); empty or non-string values count as absent.
pub fn cache_salt(body: &Map<String, Json>) -> Option<&str> {
    let nested = body.get("nvext").and_then(|n| n.get("cache_salt")).and_then(Json::as_str);
    nested
        .filter(|s| !s.is_empty())
        .or_else(|| body.get("cache_salt").and_then(Json::as_str).filter(|s| !s.is_empty()))
}

/// A boolean request field with its default (null is rejected, as pydantic does
/// for a non-Optional `bool`).
fn bool_field(body: &Map<String, Json>, name: &str, default: bool) -> Result<bool, TokenizeError> {
    match body.get(name) {
        None => Ok(default),
        Some(v) => lax_bool(v)
            .ok_or_else(|| TokenizeError::invalid_request(format!("{name} must be a boolean"))),
    }
}

/// Python truthiness of a JSON value.
fn truthy(v: &Json) -> bool {
    match v {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Json::String(s) => !s.is_empty(),
        Json::Array(a) => !a.is_empty(),
        Json::Object(m) => !m.is_empty(),
    }
}

// ------------------------------------------------------------------------------------------
// Completions
// ------------------------------------------------------------------------------------------

/// A completions prompt: text to encode, or token ids passed through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

#[derive(Debug, Clone)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    /// vLLM's default for completions: true.
    pub add_special_tokens: bool,
}

/// Token ids: integers in 0..=u32::MAX (pydantic's lax int also takes 3.0).
fn token_ids(items: &[Json]) -> Option<Vec<u32>> {
    items
        .iter()
        .map(|v| match v.as_u64() {
            Some(n) => u32::try_from(n).ok(),
            None => v
                .as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(f))
                .map(|f| f as u32),
        })
        .collect()
}

/// `prompt`: a string, one token-id array, or a one-element array of either.
/// Batched prompts (several prompts in one request) are `unsupported_content`:
/// the router sends them by load alone, without token data.
pub fn completion_request(body: &Map<String, Json>) -> Result<CompletionRequest, TokenizeError> {
    let add_special_tokens = bool_field(body, "add_special_tokens", true)?;
    let bad = |m: &str| TokenizeError::invalid_request(format!("prompt {m}"));
    // vLLM's before-validator: a prompt that is null or "" needs prompt_embeds
    // (not null, not []), which kv-epp cannot tokenize.
    let embeds = body
        .get("prompt_embeds")
        .is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()));
    let prompt = match body.get("prompt") {
        None | Some(Json::Null) if embeds => {
            return Err(TokenizeError::unsupported_content("prompt_embeds: not supported"));
        }
        Some(Json::String(s)) if s.is_empty() && embeds => {
            return Err(TokenizeError::unsupported_content("prompt_embeds: not supported"));
        }
        None | Some(Json::Null) => return Err(bad("is required")),
        Some(Json::String(s)) if s.is_empty() => {
            return Err(TokenizeError::invalid_request(
                "Either prompt or prompt_embeds must be provided and non-empty.",
            ));
        }
        Some(Json::String(s)) => Prompt::Text(s.clone()),
        Some(Json::Array(items)) => match items.as_slice() {
            [] => return Err(bad("must not be empty")),
            [Json::String(s)] => Prompt::Text(s.clone()),
            [Json::Array(inner)] if inner.is_empty() => return Err(bad("[0] must not be empty")),
            [Json::Array(inner)] => Prompt::Ids(
                token_ids(inner)
                    .ok_or_else(|| bad("token ids must be integers in 0..=4294967295"))?,
            ),
            items if items.iter().all(Json::is_number) => Prompt::Ids(
                token_ids(items)
                    .ok_or_else(|| bad("token ids must be integers in 0..=4294967295"))?,
            ),
            // Batched prompts: the worker serves each (vLLM and Dynamo both do); one
            // request has no one prompt to route on, so it goes by load, untouched.
            items if items.iter().all(|v| v.is_string() || v.is_array()) => {
                return Err(TokenizeError::unsupported_content(format!(
                    "prompt holds {} prompts: a batched request is routed by load alone, without token data",
                    items.len()
                )));
            }
            _ => {
                return Err(bad(
                    "must be a string, a list of token ids, or a list of one of those",
                ));
            }
        },
        Some(_) => return Err(bad("must be a string or a list of token ids")),
    };
    Ok(CompletionRequest { prompt, add_special_tokens })
}

// ------------------------------------------------------------------------------------------
// Step 2: message parsing (vLLM's `parse_chat_message_content`, both content formats)
// ------------------------------------------------------------------------------------------

/// Part types vLLM parses as media (a refusal for a text-only model), in the
/// order it looks for their keys in a part without a `type` (or with a `uuid`).
const MEDIA_KEYS: [&str; 9] = [
    "image_url",
    "image_pil",
    "image_embeds",
    "audio_embeds",
    "video_embeds",
    "prompt_embeds",
    "audio_url",
    "input_audio",
    "video_url",
];

/// vLLM's `_KNOWN_CONTENT_PART_FIELDS`: every other key of a text part is copied
/// onto the part it becomes in the "openai" format.
const KNOWN_PART_FIELDS: [&str; 18] = [
    "audio_embeds",
    "audio_url",
    "closed",
    "data",
    "file",
    "image_embeds",
    "image_pil",
    "image_url",
    "input_audio",
    "name",
    "prompt_cache_breakpoint",
    "refusal",
    "text",
    "thinking",
    "type",
    "uuid",
    "video_embeds",
    "video_url",
];

/// The billing line some gateways put first in a system message's text.
const BILLING_HEADER: &str = "x-anthropic-billing-header";

/// One content part after `parse_chat_message_content_part`.
enum Part<'m> {
    /// Skipped (a `text`/`refusal` part whose value is null or missing).
    Skip,
    /// A text-like part: its text (a string, or null for the types vLLM does not
    /// skip) and the part it came from (for the extra keys), `None` for a plain
    /// string part.
    Text(Json, Option<&'m Map<String, Json>>),
    /// A `tool_reference` part: the tool's name (a string or null).
    ToolReference(Json),
}

fn media_refusal(at: &str, kind: &str) -> TokenizeError {
    TokenizeError::unsupported_content(format!(
        "{at}: {kind} parts are not supported by a text-only model"
    ))
}

/// vLLM's `parse_chat_message_content_mm_part` + `parse_chat_message_content_part`.
fn parse_part<'m>(i: usize, j: usize, part: &'m Json) -> Result<Part<'m>, TokenizeError> {
    // Only an error names the part: no formatting on the hot path.
    let at = || format!("messages[{i}].content[{j}]");
    let m = match part {
        Json::String(s) => return Ok(Part::Text(Json::String(s.clone()), None)),
        Json::Object(m) => m,
        _ => {
            return Err(TokenizeError::invalid_request(format!(
                "{}: a content part must be an object or a string",
                at()
            )));
        }
    };
    let field = |k: &str| m.get(k).cloned().unwrap_or(Json::Null);
    let ty = m.get("type").filter(|t| !t.is_null());
    let uuid = m.get("uuid").filter(|u| !u.is_null());
    let (kind, value): (&str, Json) = match (ty, uuid) {
        (Some(Json::String(t)), None) => match t.as_str() {
            "text" | "input_text" | "output_text" => (t, field("text")),
            "refusal" => (t, field("refusal")),
            "thinking" => (t, field("thinking")),
            "tool_reference" => (t, field("name")),
            other if other == "input_image" || MEDIA_KEYS.contains(&other) => {
                return Err(media_refusal(&at(), other));
            }
            other => {
                return Err(TokenizeError::invalid_request(format!(
                    "{}: unsupported content part type '{other}'",
                    at()
                )));
            }
        },
        (None, _) | (_, Some(_)) => {
            let video = ty.and_then(Json::as_str) == Some("video_embeds");
            if let Some(k) =
                MEDIA_KEYS.iter().find(|k| m.contains_key(**k) && !(video && **k == "audio_embeds"))
            {
                return Err(media_refusal(&at(), k));
            }
            if !m.contains_key("tool_reference") {
                return Err(TokenizeError::invalid_request(format!(
                    "{}: Missing 'type' field in multimodal part.",
                    at()
                )));
            }
            ("tool_reference", field("name"))
        }
        (Some(_), None) => {
            return Err(TokenizeError::invalid_request(format!(
                "{}: Invalid 'type' field in multimodal part.",
                at()
            )));
        }
    };
    match (kind, value) {
        ("text" | "refusal", Json::Null) => Ok(Part::Skip),
        ("tool_reference", name @ (Json::String(_) | Json::Null)) => Ok(Part::ToolReference(name)),
        (_, text @ (Json::String(_) | Json::Null)) => Ok(Part::Text(text, Some(m))),
        (_, _) => Err(TokenizeError::invalid_request(format!("{}.{kind} must be a string", at()))),
    }
}

/// A system message's parts with the billing line dropped from the texts that
/// start with it (a text left empty drops its part).
fn strip_billing_header(parts: Vec<Json>) -> Vec<Json> {
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        let text = match &part {
            Json::String(s) => Some(s.as_str()),
            Json::Object(m) if m.get("type").and_then(Json::as_str) == Some("text") => {
                m.get("text").and_then(Json::as_str)
            }
            _ => None,
        };
        let Some(rest) = text
            .filter(|t| t.starts_with(BILLING_HEADER))
            .map(|t| t.split_once('\n').map_or("", |(_, rest)| rest).to_string())
        else {
            out.push(part);
            continue;
        };
        if rest.is_empty() {
            continue;
        }
        out.push(match part {
            Json::Object(mut m) => {
                m.insert("text".into(), Json::String(rest));
                Json::Object(m)
            }
            _ => Json::String(rest),
        });
    }
    out
}

/// A message's content in both of vLLM's content formats.
#[derive(Debug, Clone)]
pub enum OpenAiContent {
    /// `[]`: null content, or a system text the billing line emptied.
    Empty,
    /// `[{"type": "text", "text": <the "string" format content>}]`: a string content.
    Text,
    /// A list content's parts, as the "openai" format has them.
    Parts(Vec<Json>),
}

/// The content in the "string" format (the texts that are not empty, joined
/// with "\n") and in the "openai" format.
fn parse_content(
    i: usize,
    role: &str,
    content: Option<&Json>,
) -> Result<(String, OpenAiContent), TokenizeError> {
    let parts = match content {
        None | Some(Json::Null) => return Ok((String::new(), OpenAiContent::Empty)),
        Some(Json::String(s)) if role != "system" || !s.starts_with(BILLING_HEADER) => {
            return Ok((s.clone(), OpenAiContent::Text));
        }
        Some(Json::String(s)) => {
            vec![Json::Object(Map::from_iter([
                ("type".to_string(), Json::String("text".into())),
                ("text".to_string(), Json::String(s.clone())),
            ]))]
        }
        Some(Json::Array(parts)) => parts.clone(),
        Some(_) => {
            return Err(TokenizeError::invalid_request(format!(
                "messages[{i}].content must be a string or a list of parts"
            )));
        }
    };
    let from_string = matches!(content, Some(Json::String(_)));
    let parts = if role == "system" { strip_billing_header(parts) } else { parts };
    // Texts that are not empty, joined with "\n" (so `flat` is empty until the first).
    let mut flat = String::new();
    let mut push_text = |t: &Json| {
        if let Json::String(t) = t
            && !t.is_empty()
        {
            if !flat.is_empty() {
                flat.push('\n');
            }
            flat.push_str(t);
        }
    };
    let mut wrapped = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        match parse_part(i, j, p)? {
            Part::Skip => {}
            Part::Text(text, source) => {
                push_text(&text);
                let mut out = Map::new();
                out.insert("type".into(), Json::String("text".into()));
                out.insert("text".into(), text.clone());
                for (k, v) in source.into_iter().flatten() {
                    if !KNOWN_PART_FIELDS.contains(&k.as_str()) {
                        out.insert(k.clone(), v.clone());
                    }
                }
                wrapped.push(Json::Object(out));
            }
            Part::ToolReference(name) => {
                push_text(&name);
                let mut out = Map::new();
                out.insert("type".into(), Json::String("tool_reference".into()));
                out.insert("name".into(), name.clone());
                wrapped.push(Json::Object(out));
            }
        }
    }
    let openai = match (from_string, wrapped.len()) {
        (true, 0) => OpenAiContent::Empty,
        (true, _) => OpenAiContent::Text,
        (false, _) => OpenAiContent::Parts(wrapped),
    };
    Ok((flat, openai))
}

/// Step 2 for one validated message: its "string" format message and its
/// "openai" format content.
fn parse_message(
    i: usize,
    m: &Map<String, Json>,
    opts: ChatOptions,
) -> Result<(Map<String, Json>, OpenAiContent), TokenizeError> {
    let role = m.get("role").and_then(Json::as_str).unwrap_or_default().to_string();
    if let Some(Json::Object(r)) = m.get("reasoning")
        && r.get("type").and_then(Json::as_str) == Some("prompt_embeds")
    {
        // vLLM parses such a reasoning as a prompt_embeds part, for any role.
        let at = format!("messages[{i}].reasoning");
        if !r.get("data").is_some_and(truthy) {
            return Err(TokenizeError::invalid_request(format!(
                "{at}: prompt_embeds requires non-empty data"
            )));
        }
        return Err(media_refusal(&at, "prompt_embeds"));
    }
    let (flat, openai) = parse_content(i, &role, m.get("content"))?;
    let mut out = Map::new();
    out.insert("role".into(), Json::String(role.clone()));
    out.insert("content".into(), Json::String(flat));
    if role == "assistant" {
        if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
            out.insert("tool_calls".into(), calls.clone());
        }
        if let Some(r) = m.get("reasoning").filter(|v| !v.is_null()) {
            out.insert("reasoning".into(), r.clone());
            out.insert("reasoning_content".into(), r.clone());
        }
    } else if role == "tool"
        && let Some(id) = m.get("tool_call_id")
    {
        out.insert("tool_call_id".into(), id.clone());
    }
    for key in ["name", "task"] {
        if let Some(v) = m.get(key).filter(|v| v.is_string()) {
            out.insert(key.into(), v.clone());
        }
    }
    if role == "developer" {
        out.insert("tools".into(), m.get("tools").cloned().unwrap_or(Json::Null));
    }
    // vLLM's `_postprocess_messages`: an empty tool_calls list is removed; each
    // call must be a function call; arguments become an object (a JSON string
    // is parsed; anything that is not an object, or does not parse, is {}).
    if role == "assistant"
        && let Some(Json::Array(calls)) = out.get_mut("tool_calls")
    {
        if calls.is_empty() {
            out.shift_remove("tool_calls");
        } else {
            for (j, call) in calls.iter_mut().enumerate() {
                let Some(call) = call.as_object_mut() else {
                    return Err(TokenizeError::invalid_request(format!(
                        "messages[{i}].tool_calls[{j}]: assistant tool_calls entries must be objects."
                    )));
                };
                let function_call = call.get("type").is_none_or(|t| t.as_str() == Some("function"));
                let f = call.get_mut("function").and_then(Json::as_object_mut);
                let Some(f) = f.filter(|_| function_call) else {
                    return Err(TokenizeError::invalid_request(format!(
                        "messages[{i}].tool_calls[{j}]: only function tool calls are supported"
                    )));
                };
                if opts.dynamo {
                    // Dynamo: verbatim for templates that print the string, else parsed
                    // to any JSON value when it parses.
                    if let Some(Json::String(s)) = f.get("arguments")
                        && !opts.raw_arguments
                        && let Ok(v) = serde_json::from_str::<Json>(s)
                    {
                        f.insert("arguments".into(), v);
                    }
                    continue;
                }
                let parsed = match f.get("arguments") {
                    Some(Json::String(s)) => serde_json::from_str::<Json>(s).ok(),
                    Some(v) => Some(v.clone()),
                    None => None,
                };
                let args =
                    parsed.filter(Json::is_object).unwrap_or_else(|| Json::Object(Map::new()));
                f.insert("arguments".into(), args);
            }
        }
    }
    Ok((out, openai))
}

/// The conversation in the "openai" content format: each message's content
/// replaced by its parts (a tool message's text parts joined back into one string).
fn to_openai_format(
    conversation: &mut [Map<String, Json>],
    contents: Vec<OpenAiContent>,
) -> Result<(), TokenizeError> {
    for (i, (msg, content)) in conversation.iter_mut().zip(contents).enumerate() {
        let text_part = |text: Json| {
            Json::Object(Map::from_iter([
                ("type".to_string(), Json::String("text".into())),
                ("text".to_string(), text),
            ]))
        };
        let parts = match content {
            OpenAiContent::Empty => vec![],
            OpenAiContent::Text => {
                vec![text_part(msg.get("content").cloned().unwrap_or(Json::Null))]
            }
            OpenAiContent::Parts(parts) => parts,
        };
        let value = if msg.get("role").and_then(Json::as_str) == Some("tool")
            && parts.iter().all(|p| p.get("type").and_then(Json::as_str) == Some("text"))
        {
            let mut texts = Vec::with_capacity(parts.len());
            for p in &parts {
                match p.get("text") {
                    Some(Json::String(t)) => texts.push(t.as_str()),
                    _ => {
                        return Err(TokenizeError::invalid_request(format!(
                            "messages[{i}]: a tool message's text part has no text"
                        )));
                    }
                }
            }
            Json::String(texts.join("\n"))
        } else {
            Json::Array(parts)
        };
        msg.insert("content".into(), value);
    }
    Ok(())
}

/// vLLM's `_convert_developer_to_system` + `_consolidate_system_messages`, for a
/// template that never names the developer role: developer messages become system
/// messages (without `tools`); when a system message is not first or there are
/// several, their non-empty texts are merged ("\n\n") into one system message put
/// first, the others keeping their order.
fn developer_to_system(
    conversation: Vec<Map<String, Json>>,
) -> Result<Vec<Map<String, Json>>, TokenizeError> {
    if !conversation.iter().any(|m| m.get("role").and_then(Json::as_str) == Some("developer")) {
        return Ok(conversation);
    }
    let mut texts: Vec<String> = Vec::new();
    let mut others = Vec::with_capacity(conversation.len());
    let mut merge = false;
    let mut converted = Vec::with_capacity(conversation.len());
    for mut msg in conversation {
        if msg.get("role").and_then(Json::as_str) == Some("developer") {
            msg.insert("role".into(), Json::String("system".into()));
            msg.shift_remove("tools");
        }
        converted.push(msg);
    }
    for (i, msg) in converted.iter().enumerate() {
        if msg.get("role").and_then(Json::as_str) != Some("system") {
            others.push(i);
            continue;
        }
        merge |= i > 0 || !texts.is_empty();
        let text = match msg.get("content") {
            Some(Json::String(s)) => s.clone(),
            Some(Json::Array(parts)) => {
                let mut joined = Vec::with_capacity(parts.len());
                for p in parts {
                    match p {
                        Json::String(s) => joined.push(s.as_str()),
                        Json::Object(o) if o.contains_key("text") => match o.get("text") {
                            Some(Json::String(s)) => joined.push(s.as_str()),
                            _ => {
                                return Err(TokenizeError::invalid_request(format!(
                                    "messages[{i}]: a system message's text part has no text"
                                )));
                            }
                        },
                        _ => {}
                    }
                }
                joined.join("\n")
            }
            _ => String::new(),
        };
        if !text.is_empty() {
            texts.push(text);
        }
    }
    if !merge {
        return Ok(converted);
    }
    let mut out = Vec::with_capacity(others.len() + 1);
    out.push(Map::from_iter([
        ("role".to_string(), Json::String("system".into())),
        ("content".to_string(), Json::String(texts.join("\n\n"))),
    ]));
    let mut converted: Vec<Option<Map<String, Json>>> = converted.into_iter().map(Some).collect();
    out.extend(others.into_iter().filter_map(|i| converted[i].take()));
    Ok(out)
}

// ------------------------------------------------------------------------------------------
// Step 3: tools
// ------------------------------------------------------------------------------------------

/// vLLM's `ChatCompletionToolsParam.model_validate(t).model_dump()`: `type` must be
/// "function"; the function keeps only its declared fields (`name`, `description`,
/// `parameters`, then `strict` and `defer_loading` unless null); a tool-level
/// `defer_loading` fills the function's when that is unset.
fn validate_tool(i: usize, t: &Json) -> Result<Json, TokenizeError> {
    let bad = |m: &str| TokenizeError::invalid_request(format!("tools[{i}]{m}"));
    let t = t.as_object().ok_or_else(|| bad(" must be an object"))?;
    match t.get("type") {
        None => {}
        Some(Json::String(s)) if s == "function" => {}
        Some(_) => return Err(bad(".type must be \"function\"")),
    }
    let f = t
        .get("function")
        .and_then(Json::as_object)
        .ok_or_else(|| bad(".function must be an object"))?;
    let name = f
        .get("name")
        .filter(|v| v.is_string())
        .ok_or_else(|| bad(".function.name must be a string"))?;
    let description = match f.get("description") {
        None | Some(Json::Null) => Json::Null,
        Some(d @ Json::String(_)) => d.clone(),
        Some(_) => return Err(bad(".function.description must be a string or null")),
    };
    let parameters = match f.get("parameters") {
        None | Some(Json::Null) => Json::Null,
        Some(p @ Json::Object(_)) => p.clone(),
        Some(_) => return Err(bad(".function.parameters must be an object or null")),
    };
    let opt_bool = |v: Option<&Json>, what: &str| match v {
        None | Some(Json::Null) => Ok(None),
        Some(v) => lax_bool(v).map(Some).ok_or_else(|| bad(&format!("{what} must be a boolean"))),
    };
    let strict = opt_bool(f.get("strict"), ".function.strict")?;
    let tool_defer = opt_bool(t.get("defer_loading"), ".defer_loading")?;
    let defer = opt_bool(f.get("defer_loading"), ".function.defer_loading")?.or(tool_defer);
    let mut function = Map::new();
    function.insert("name".into(), name.clone());
    function.insert("description".into(), description);
    function.insert("parameters".into(), parameters);
    if let Some(b) = strict {
        function.insert("strict".into(), Json::Bool(b));
    }
    if let Some(b) = defer {
        function.insert("defer_loading".into(), Json::Bool(b));
    }
    let mut out = Map::new();
    out.insert("type".into(), Json::String("function".into()));
    out.insert("function".into(), Json::Object(function));
    if let Some(b) = tool_defer {
        out.insert("defer_loading".into(), Json::Bool(b));
    }
    Ok(Json::Object(out))
}

// ------------------------------------------------------------------------------------------
// The chat request
// ------------------------------------------------------------------------------------------

/// vLLM's `ReasoningEffort`.
const REASONING_EFFORTS: [&str; 7] = ["none", "minimal", "low", "medium", "high", "xhigh", "max"];

/// A value vLLM's `merge_kwargs` treats as not set.
fn is_unset(v: &Json) -> bool {
    v.is_null() || v.as_str() == Some("auto")
}

/// vLLM's `ChatCompletionRequest.check_tool_usage` (a before-validator): `tools`
/// must not be empty; a `tool_choice` (defaulted to "auto" when tools are given)
/// other than "none" needs tools and must be "auto", "required" or a named tool
/// among them. (vLLM then also needs `--enable-auto-tool-choice` for all but
/// "none"; kv-epp assumes the server has it.)
fn check_tool_usage(body: &Map<String, Json>) -> Result<(), TokenizeError> {
    let bad = |m: &str| Err(TokenizeError::invalid_request(m.to_string()));
    let tools = body.get("tools");
    if tools.and_then(Json::as_array).is_some_and(Vec::is_empty) {
        return bad(
            "`tools` must not be an empty array. Either provide at least one tool or omit the \
             field entirely.",
        );
    }
    // `None`: no tool_choice with tools given, which vLLM defaults to "auto".
    let choice = match body.get("tool_choice") {
        Some(c) => Some(c),
        None if tools.is_some_and(truthy) => None,
        None => return Ok(()),
    };
    let choice_str = choice.map_or(Some("auto"), Json::as_str);
    if choice.is_some_and(Json::is_null) || choice_str == Some("none") {
        return Ok(());
    }
    let Some(tools) = tools.filter(|t| !t.is_null()) else {
        return bad("When using `tool_choice`, `tools` must be set.");
    };
    let Some(named) = choice.and_then(Json::as_object) else {
        return match choice_str {
            Some("auto" | "required") => Ok(()),
            _ => bad(&format!(
                "Invalid value for `tool_choice`: {}! Only named tools, \"none\", \"auto\" or \
                 \"required\" are supported.",
                choice.map(Json::to_string).unwrap_or_default()
            )),
        };
    };
    let usage = r#"Correct usage: `{"type": "function", "function": {"name": "my_function"}}`"#;
    let Some(function) = named.get("function").and_then(Json::as_object) else {
        return bad(&format!("Invalid value for `function` in `tool_choice`! {usage}"));
    };
    let Some(name) = function.get("name") else {
        return bad(&format!("Expected field `name` in `function` in `tool_choice`! {usage}"));
    };
    let Some(name) = name.as_str().filter(|n| !n.is_empty()) else {
        return bad(&format!("Invalid `name` in `function` in `tool_choice`! {usage}"));
    };
    let matches = tools.as_array().is_some_and(|list| {
        list.iter().any(|t| {
            t.get("function").and_then(|f| f.get("name")).and_then(Json::as_str) == Some(name)
        })
    });
    if !matches {
        return bad(
            "The tool specified in `tool_choice` does not match any of the specified `tools`",
        );
    }
    Ok(())
}

/// A chat request after steps 1-3 and the request half of step 4.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The conversation handed to the template, in the "string" content format.
    pub conversation: Vec<Map<String, Json>>,
    /// Each message's content in the "openai" content format (same order).
    pub openai_contents: Vec<OpenAiContent>,
    /// vLLM's dumped tools; `None` when the request has none.
    pub tools: Option<Json>,
    /// vLLM's default for chat: false (the template writes BOS etc.).
    pub add_special_tokens: bool,
    pub add_generation_prompt: bool,
    pub continue_final_message: bool,
    /// `chat_template_kwargs` merged with the request fields, before filtering.
    pub kwargs: Map<String, Json>,
    /// Dynamo dialect: `developer` messages reach the template unchanged.
    pub keep_developer: bool,
    /// Dynamo dialect: contents as part lists (true) or strings (false),
    /// whatever vLLM would detect for the template.
    pub content_arrays: Option<bool>,
}

/// How [`chat_request_with`] reads messages: vLLM's way (the default) or the
/// Dynamo dialect's (dynamo.rs).
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatOptions {
    /// Dynamo dialect: tool-call arguments are not forced into objects and
    /// developer messages stay.
    pub dynamo: bool,
    /// With `dynamo`: string arguments stay strings (the template prints them).
    pub raw_arguments: bool,
}

/// Steps 1-3 and the request half of step 4.
pub fn chat_request(body: &Map<String, Json>) -> Result<ChatRequest, TokenizeError> {
    chat_request_with(body, ChatOptions::default())
}

/// [`chat_request`] with the dialect's message reading.
pub fn chat_request_with(
    body: &Map<String, Json>,
    opts: ChatOptions,
) -> Result<ChatRequest, TokenizeError> {
    // Dynamo does not check tool usage as vLLM does (`tool_choice: "auto"` without
    // tools is served); a body it refuses still gets its own 400.
    if !opts.dynamo {
        check_tool_usage(body)?;
    }
    // vLLM's pydantic request model: field types first.
    let add_generation_prompt = bool_field(body, "add_generation_prompt", true)?;
    let continue_final_message = bool_field(body, "continue_final_message", false)?;
    let add_special_tokens = bool_field(body, "add_special_tokens", false)?;
    let user_kwargs = match body.get("chat_template_kwargs") {
        None | Some(Json::Null) => Map::new(),
        Some(Json::Object(m)) => m.clone(),
        Some(_) => {
            return Err(TokenizeError::invalid_request("chat_template_kwargs must be an object"));
        }
    };
    // vLLM: `list[dict[str, str]] | None`.
    let documents = match body.get("documents") {
        None | Some(Json::Null) => None,
        Some(d @ Json::Array(items))
            if items
                .iter()
                .all(|i| i.as_object().is_some_and(|m| m.values().all(Json::is_string))) =>
        {
            Some(d.clone())
        }
        Some(_) => {
            return Err(TokenizeError::invalid_request(
                "documents must be a list of objects with string values",
            ));
        }
    };
    let reasoning_effort = match body.get("reasoning_effort") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) if REASONING_EFFORTS.contains(&s.as_str()) => Some(s.clone()),
        Some(_) => {
            return Err(TokenizeError::invalid_request(format!(
                "reasoning_effort must be one of {}",
                REASONING_EFFORTS.join(", ")
            )));
        }
    };
    if body.get("chat_template").is_some_and(|t| !t.is_null())
        || user_kwargs.get("chat_template").is_some_and(|t| !t.is_null())
    {
        return Err(TokenizeError::invalid_request(
            "a chat template passed with the request is refused (vLLM without \
             --trust-request-chat-template)",
        ));
    }

    // Step 1. vLLM's check_generation_prompt runs before pydantic: Python
    // truthiness of the raw values.
    if body.get("continue_final_message").is_some_and(truthy)
        && body.get("add_generation_prompt").is_some_and(truthy)
    {
        return Err(TokenizeError::invalid_request(
            "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
        ));
    }
    let raw = match body.get("messages") {
        Some(Json::Array(items)) => items,
        _ => return Err(TokenizeError::invalid_request("messages must be a list")),
    };
    let validated = raw
        .iter()
        .enumerate()
        .map(|(i, m)| validate_message(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let tools = match body.get("tools") {
        None | Some(Json::Null) => None,
        Some(Json::Array(items)) => Some(Json::Array(
            items.iter().enumerate().map(|(i, t)| validate_tool(i, t)).collect::<Result<_, _>>()?,
        )),
        Some(_) => return Err(TokenizeError::invalid_request("tools must be a list")),
    };

    // Step 2.
    let (conversation, openai_contents): (Vec<_>, Vec<_>) = validated
        .iter()
        .enumerate()
        .map(|(i, m)| parse_message(i, m, opts))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .unzip();

    // Step 4, request half.
    let mut kwargs = user_kwargs;
    let enable_thinking = reasoning_effort
        .as_ref()
        .filter(|_| !kwargs.contains_key("enable_thinking"))
        .map(|e| Json::Bool(e != "none"));
    let extra = [
        ("add_generation_prompt", Some(Json::Bool(add_generation_prompt))),
        ("continue_final_message", Some(Json::Bool(continue_final_message))),
        ("documents", documents),
        ("reasoning_effort", reasoning_effort.map(Json::String)),
        ("enable_thinking", enable_thinking),
    ];
    for (k, v) in extra {
        if let Some(v) = v.filter(|v| !is_unset(v)) {
            kwargs.insert(k.into(), v);
        }
    }
    // vLLM's merge_kwargs drops overrides whose value is None or "auto": the request
    // fields override `chat_template_kwargs`, which override the renderer's defaults.
    kwargs.retain(|_, v| !is_unset(v));
    // `tokenize` is apply_chat_template's own: true returns the ids it encodes, without
    // special tokens.
    let add_special_tokens = add_special_tokens && !kwargs.get("tokenize").is_some_and(truthy);
    Ok(ChatRequest {
        conversation,
        openai_contents,
        tools,
        add_special_tokens,
        add_generation_prompt,
        continue_final_message,
        kwargs,
        keep_developer: opts.dynamo,
        content_arrays: None,
    })
}

/// transformers' `apply_chat_template` parameters (besides `self`), which vLLM
/// passes through even when the template does not read them.
const APPLY_PARAMS: [&str; 15] = [
    "conversation",
    "tools",
    "documents",
    "chat_template",
    "add_generation_prompt",
    "continue_final_message",
    "tokenize",
    "sanitize_control_tokens",
    "padding",
    "truncation",
    "max_length",
    "return_tensors",
    "return_dict",
    "return_assistant_tokens_mask",
    "tokenizer_kwargs",
];

/// Step 4's filter (kwargs the template reads, plus `apply_chat_template`'s own
/// parameters) and the call `apply_chat_template(conversation, tools=tools,
/// tokenize=False, **kwargs)`: kwargs named like its parameters act as those
/// parameters (`tools` even replaces the request's tools), the rest become template
/// variables, and names the call already binds are a TypeError (template_error).
pub fn chat_input(req: ChatRequest, template: &ChatTemplate) -> Result<ChatInput, TokenizeError> {
    let template_variables = template.variables();
    let mut messages = req.conversation;
    let openai = req.content_arrays.unwrap_or(template.content_format() == ContentFormat::OpenAi);
    if openai {
        to_openai_format(&mut messages, req.openai_contents)?;
    }
    if !req.keep_developer && !template.supports_developer_role() {
        messages = developer_to_system(messages)?;
    }
    let mut input = ChatInput {
        messages,
        tools: req.tools,
        documents: None,
        add_generation_prompt: false,
        continue_final_message: false,
        kwargs: Map::new(),
    };
    for (k, v) in req.kwargs {
        let param = APPLY_PARAMS.contains(&k.as_str());
        if !(param || template_variables.contains(&k)) || k == "chat_template" || k == "tokenize" {
            continue;
        }
        match k.as_str() {
            "conversation" | "messages" | "conversations" => {
                return Err(TokenizeError::template(format!(
                    "apply_chat_template() got multiple values for argument '{k}'"
                )));
            }
            "tools" => input.tools = Some(v),
            "documents" => input.documents = Some(v),
            "add_generation_prompt" => input.add_generation_prompt = truthy(&v),
            "continue_final_message" => input.continue_final_message = truthy(&v),
            "sanitize_control_tokens" | "return_assistant_tokens_mask" if truthy(&v) => {
                return Err(TokenizeError::template(format!(
                    "`{k}=True` requires `tokenize=True` (vLLM renders with tokenize=False)"
                )));
            }
            _ if param => {} // tokenizer-call options: no effect with tokenize=False
            _ => {
                input.kwargs.insert(k, v);
            }
        }
    }
    Ok(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(msg: &str) -> Result<Vec<Map<String, Json>>, TokenizeError> {
        let body = format!(r#"{{"messages": [{msg}]}}"#);
        chat_request(&parse_body(body.as_bytes())?).map(|r| r.conversation)
    }

    fn conv_json(msg: &str) -> String {
        match conv(msg) {
            Ok(c) => serde_json::to_string(&c).unwrap(),
            Err(e) => format!("{}: {}", e.code(), e.message),
        }
    }

    // Expected values: scripts/goldens/make_goldens.py's validate_chat_request +
    // parse_messages on the same message (pydantic 2.14.4, openai 3.57.0).
    #[test]
    fn union_member_choice_decides_surviving_keys() {
        let call = r#"{"id":"1","type":"function","function":{"name":"f","arguments":"{}"}}"#;
        // Custom wins (3 fields vs 2): reasoning kept.
        assert_eq!(
            conv_json(r#"{"role":"assistant","content":"a","reasoning":"r"}"#),
            r#"[{"role":"assistant","content":"a","reasoning":"r","reasoning_content":"r"}]"#
        );
        // Tie 3-3 (refusal counts though null): Assistant wins; `reasoning` is an
        // extra key to it, kept (`extra="allow"`).
        assert_eq!(
            conv_json(r#"{"role":"assistant","content":"a","reasoning":"r","refusal":null}"#),
            r#"[{"role":"assistant","content":"a","reasoning":"r","reasoning_content":"r"}]"#
        );
        // Custom validates tool_calls eagerly: nested fields count, Custom wins.
        assert_eq!(
            conv_json(&format!(
                r#"{{"role":"assistant","content":"x","tool_calls":[{call}],"reasoning":"r","refusal":null}}"#
            )),
            r#"[{"role":"assistant","content":"x","tool_calls":[{"id":"1","function":{"arguments":{},"name":"f"},"type":"function"}],"reasoning":"r","reasoning_content":"r"}]"#
        );
        // 9 vs 9: Assistant (first) wins (and keeps `reasoning` as an extra key).
        assert_eq!(
            conv_json(&format!(
                r#"{{"role":"assistant","content":"x","tool_calls":[{call}],"refusal":null,"audio":{{"id":"a"}},"function_call":{{"name":"f","arguments":"{{}}"}},"reasoning":"r"}}"#
            )),
            r#"[{"role":"assistant","content":"x","tool_calls":[{"id":"1","function":{"arguments":{},"name":"f"},"type":"function"}],"reasoning":"r","reasoning_content":"r"}]"#
        );
        // User wins the tie (vLLM's typed parts: input_text is none of them, only an
        // all-optional one with 0 fields) and its lazily validated parts reject input_text ...
        assert_eq!(
            conv_json(r#"{"role":"user","content":[{"type":"input_text","text":"x"}]}"#),
            "invalid_request: messages[0].content[0]: not a valid content part for a \"user\" message"
        );
        // ... unless one more (even null) Custom field tips it.
        assert_eq!(
            conv_json(
                r#"{"role":"user","content":[{"type":"input_text","text":"x"}],"tool_call_id":null}"#
            ),
            r#"[{"role":"user","content":"x"}]"#
        );
        assert_eq!(
            conv_json(r#"{"role":"user","content":"x","task":"t"}"#),
            r#"[{"role":"user","content":"x","task":"t"}]"#
        );
        assert_eq!(
            conv_json(r#"{"role":"tool","content":"x","tool_call_id":null}"#),
            r#"[{"role":"tool","content":"x","tool_call_id":null}]"#
        );
        assert_eq!(
            conv_json(
                r#"{"role":"developer","content":"x","tools":[{"type":"function","function":{"name":"f","strict":1,"x":2,"description":"d","parameters":{"a":1}},"y":1}]}"#
            ),
            r#"[{"role":"developer","content":"x","tools":[{"function":{"name":"f","description":"d","parameters":{"a":1},"strict":true,"x":2},"type":"function","y":1}]}]"#
        );
    }

    #[test]
    fn iterables_accept_what_python_iterates() {
        assert_eq!(
            conv_json(r#"{"role":"assistant","content":"x","tool_calls":""}"#),
            r#"[{"role":"assistant","content":"x"}]"#
        );
        assert_eq!(
            conv_json(r#"{"role":"assistant","content":"x","tool_calls":{}}"#),
            r#"[{"role":"assistant","content":"x"}]"#
        );
        assert!(conv(r#"{"role":"assistant","content":"x","tool_calls":{"a":1}}"#).is_err());
        assert_eq!(
            conv_json(r#"{"role":"user","content":{}}"#),
            r#"[{"role":"user","content":""}]"#
        );
        assert!(conv(r#"{"role":"user","content":5}"#).is_err());
    }

    #[test]
    fn parsing_rules() {
        assert_eq!(conv_json(r#"{"role":"user"}"#), r#"[{"role":"user","content":""}]"#);
        assert_eq!(
            conv_json(r#"{"role":"user","content":null}"#),
            "invalid_request: messages[0]: content must be a string or a list of parts, not null"
        );
        assert_eq!(
            conv_json(
                r#"{"role":"assistant","content":[{"type":"refusal","refusal":"no"},{"type":"text","text":"t"}]}"#
            ),
            r#"[{"role":"assistant","content":"no\nt"}]"#
        );
        assert_eq!(
            conv_json(
                r#"{"role":"user","content":[{"type":"image_url","image_url":{"url":"u"}}]}"#
            ),
            "unsupported_content: messages[0].content[0]: image_url parts are not supported by a text-only model"
        );
        assert_eq!(
            conv_json(r#"{"role":"user","content":[{"type":"file","file":{"file_id":"x"}}]}"#),
            "invalid_request: messages[0].content[0]: unsupported content part type 'file'"
        );
        assert_eq!(
            conv_json(
                r#"{"role":"assistant","content":"x","tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":"bad"}}]}"#
            ),
            r#"[{"role":"assistant","content":"x","tool_calls":[{"id":"1","function":{"arguments":{},"name":"f"},"type":"function"}]}]"#
        );
        assert_eq!(
            conv_json(
                r#"{"role":"assistant","content":"x","reasoning_content":"rc","reasoning":null}"#
            ),
            r#"[{"role":"assistant","content":"x","reasoning":"rc","reasoning_content":"rc"}]"#
        );
        assert_eq!(
            conv_json(r#"{"role":"function","content":null,"name":"f"}"#),
            r#"[{"role":"function","content":"","name":"f"}]"#
        );
    }

    #[test]
    fn completions_prompts() {
        let p = |s: &str| completion_request(&parse_body(s.as_bytes()).unwrap()).map(|r| r.prompt);
        assert_eq!(p(r#"{"prompt":"hi"}"#).unwrap(), Prompt::Text("hi".into()));
        assert_eq!(p(r#"{"prompt":["hi"]}"#).unwrap(), Prompt::Text("hi".into()));
        assert_eq!(p(r#"{"prompt":[1,2,4294967295]}"#).unwrap(), Prompt::Ids(vec![1, 2, u32::MAX]));
        assert_eq!(p(r#"{"prompt":[[7, 8.0]]}"#).unwrap(), Prompt::Ids(vec![7, 8]));
        assert_eq!(p(r#"{"prompt_embeds":"x"}"#).unwrap_err().code(), "unsupported_content");
        // Batches route by load, untouched.
        assert_eq!(p(r#"{"prompt":["a","b"]}"#).unwrap_err().code(), "unsupported_content");
        assert_eq!(p(r#"{"prompt":[[1],[2]]}"#).unwrap_err().code(), "unsupported_content");
        for bad in [
            r#"{"prompt":[4294967296]}"#,
            r#"{"prompt":[-1]}"#,
            r#"{"prompt":[1.5]}"#,
            r#"{"prompt":["a",1]}"#,
            r#"{"prompt":[]}"#,
            r#"{"prompt":[[]]}"#,
            r#"{}"#,
        ] {
            assert_eq!(p(bad).unwrap_err().code(), "invalid_request", "{bad}");
        }
    }

    /// `levels` nested containers in all: the body object holding an array chain.
    fn nested(levels: usize) -> String {
        let n = levels - 1;
        format!(r#"{{"model":"m","x":{}1{}}}"#, "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn nesting_beyond_serde_limit_is_unsupported_content_not_invalid_json() {
        assert!(parse_body(nested(MAX_JSON_DEPTH).as_bytes()).is_ok());
        for levels in [MAX_JSON_DEPTH + 1, 10_001] {
            let e = parse_body(nested(levels).as_bytes()).unwrap_err();
            assert_eq!((e.code(), e.message.as_str()), ("unsupported_content", NESTED_TOO_DEEP));
        }
        // Other syntax errors stay invalid_json, deep or not.
        let e = parse_body(format!("{}x", &nested(3)[..20]).as_bytes()).unwrap_err();
        assert_eq!(e.code(), "invalid_json");
        // A syntax error before the depth is reached is reported as such.
        let e = parse_body(format!(r#"{{"a":x,"b":{}"#, "[".repeat(200)).as_bytes()).unwrap_err();
        assert_eq!(e.code(), "invalid_json");
    }
}
