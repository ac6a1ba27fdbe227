//! Python `str` methods with Python semantics, for chat templates that call
//! them (`message.content.strip()`, `.split('</think>')`, `.startswith(...)`):
//! - whitespace is `str.isspace()`'s set, which unlike Rust's `char::is_whitespace`
//!   includes U+001C..U+001F (so `strip()` removes them);
//! - indices (`find`, `index`) count code points, not bytes;
//! - `split()` without a separator splits on whitespace runs and drops empty
//!   pieces; with one it keeps them; `maxsplit` as in Python.
//!
//! [`unknown_method`] is the environment's unknown-method callback: the methods
//! below on strings, everything else delegated to minijinja-contrib's pycompat
//! (`dict.items/get/keys/values`, `str.format/title/...`).

use minijinja::value::{Value, ValueKind, from_args};
use minijinja::{Error, ErrorKind, State};

use super::filters::pairs_to_tuples;
use super::pyfmt::to_py_str;

/// `str.isspace()` for one character.
pub fn is_py_space(c: char) -> bool {
    matches!(c, '\t'..='\r' | '\x1c'..='\x20' | '\u{85}' | '\u{a0}' | '\u{1680}'
        | '\u{2000}'..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}')
}

/// `str.splitlines()` boundaries.
fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r'
            | '\x0b'
            | '\x0c'
            | '\x1c'
            | '\x1d'
            | '\x1e'
            | '\u{85}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// `strip`/`lstrip`/`rstrip` with `chars=None` (whitespace) or a set of characters.
pub fn py_strip<'a>(s: &'a str, chars: Option<&str>, left: bool, right: bool) -> &'a str {
    let strip = |c: char| match chars {
        Some(set) => set.contains(c),
        None => is_py_space(c),
    };
    let mut out = s;
    if left {
        out = out.trim_start_matches(strip);
    }
    if right {
        out = out.trim_end_matches(strip);
    }
    out
}

fn value_error(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

/// `str.split(sep, maxsplit)`; `maxsplit < 0` means no limit.
pub fn py_split(s: &str, sep: Option<&str>, maxsplit: i64) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    match sep {
        Some("") => return Err(value_error("empty separator")),
        Some(sep) => {
            let mut rest = s;
            while maxsplit < 0 || (out.len() as i64) < maxsplit {
                match rest.find(sep) {
                    Some(i) => {
                        out.push(rest[..i].to_string());
                        rest = &rest[i + sep.len()..];
                    }
                    None => break,
                }
            }
            out.push(rest.to_string());
        }
        None => {
            let mut rest = py_strip(s, None, true, false);
            while !rest.is_empty() {
                if maxsplit >= 0 && out.len() as i64 >= maxsplit {
                    out.push(rest.to_string());
                    break;
                }
                let end = rest.find(is_py_space).unwrap_or(rest.len());
                out.push(rest[..end].to_string());
                rest = py_strip(&rest[end..], None, true, false);
            }
        }
    }
    Ok(out)
}

/// `str.rsplit(sep, maxsplit)`.
pub fn py_rsplit(s: &str, sep: Option<&str>, maxsplit: i64) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    match sep {
        Some("") => return Err(value_error("empty separator")),
        Some(sep) => {
            let mut rest = s;
            while maxsplit < 0 || (out.len() as i64) < maxsplit {
                match rest.rfind(sep) {
                    Some(i) => {
                        out.push(rest[i + sep.len()..].to_string());
                        rest = &rest[..i];
                    }
                    None => break,
                }
            }
            out.push(rest.to_string());
        }
        None => {
            let mut rest = py_strip(s, None, false, true);
            while !rest.is_empty() {
                if maxsplit >= 0 && out.len() as i64 >= maxsplit {
                    out.push(rest.to_string());
                    break;
                }
                let start = rest
                    .rfind(is_py_space)
                    .map(|i| i + rest[i..].chars().next().map_or(1, char::len_utf8))
                    .unwrap_or(0);
                out.push(rest[start..].to_string());
                rest = py_strip(&rest[..start], None, false, true);
            }
        }
    }
    out.reverse();
    Ok(out)
}

/// `str.splitlines(keepends)`.
pub fn py_splitlines(s: &str, keepends: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if !is_line_break(c) {
            continue;
        }
        let mut end = i + c.len_utf8();
        if c == '\r' && matches!(chars.peek(), Some((_, '\n'))) {
            chars.next();
            end += 1;
        }
        out.push(s[start..if keepends { end } else { i }].to_string());
        start = end;
    }
    if start < s.len() {
        out.push(s[start..].to_string());
    }
    out
}

/// Code-point index of byte offset `b` in `s`.
fn char_index(s: &str, b: usize) -> i64 {
    s[..b].chars().count() as i64
}

/// Slice of `s` by Python `[start:end]` code-point bounds (negative = from the end).
fn char_slice(s: &str, start: Option<i64>, end: Option<i64>) -> &str {
    if start.is_none() && end.is_none() {
        return s;
    }
    let n = s.chars().count() as i64;
    let norm = |i: i64| if i < 0 { (n + i).max(0) } else { i.min(n) };
    let a = norm(start.unwrap_or(0));
    let b = norm(end.unwrap_or(n));
    if a >= b {
        return "";
    }
    let byte = |ci: i64| s.char_indices().nth(ci as usize).map_or(s.len(), |(i, _)| i);
    &s[byte(a)..byte(b)]
}

/// `startswith`/`endswith` argument: a string or a tuple/list of strings.
fn affixes(v: &Value, method: &str) -> Result<Vec<String>, Error> {
    if let Some(s) = v.as_str() {
        return Ok(vec![s.to_string()]);
    }
    if matches!(v.kind(), ValueKind::Seq | ValueKind::Iterable) {
        return v
            .try_iter()?
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    value_error(format!(
                        "tuple for {method} must only contain str, not {}",
                        x.kind()
                    ))
                })
            })
            .collect();
    }
    Err(value_error(format!("{method} first arg must be str or a tuple of str, not {}", v.kind())))
}

fn strings(v: Vec<String>) -> Value {
    Value::from(v)
}

/// Python string methods; `None` when `method` is not one of them.
fn string_method(s: &str, method: &str, args: &[Value]) -> Option<Result<Value, Error>> {
    let r = (|| -> Result<Value, Error> {
        Ok(match method {
            "strip" | "lstrip" | "rstrip" => {
                let (chars,): (Option<Value>,) = from_args(args)?;
                let chars =
                    match &chars {
                        Some(v) if v.is_none() => None,
                        Some(v) => Some(v.as_str().ok_or_else(|| {
                            value_error(format!("{method} arg must be None or str"))
                        })?),
                        None => None,
                    };
                Value::from(py_strip(s, chars, method != "rstrip", method != "lstrip"))
            }
            "split" | "rsplit" => {
                let (sep, maxsplit): (Option<Value>, Option<i64>) = from_args(args)?;
                let sep = sep
                    .as_ref()
                    .filter(|v| !v.is_none())
                    .map(|v| v.as_str().ok_or_else(|| value_error("must be str or None")));
                let sep = sep.transpose()?;
                let maxsplit = maxsplit.unwrap_or(-1);
                strings(if method == "split" {
                    py_split(s, sep, maxsplit)?
                } else {
                    py_rsplit(s, sep, maxsplit)?
                })
            }
            "splitlines" => {
                let (keepends,): (Option<bool>,) = from_args(args)?;
                strings(py_splitlines(s, keepends.unwrap_or(false)))
            }
            "startswith" | "endswith" => {
                let (affix, start, end): (Value, Option<i64>, Option<i64>) = from_args(args)?;
                let hay = char_slice(s, start, end);
                let list = affixes(&affix, method)?;
                Value::from(list.iter().any(|a| {
                    if method == "startswith" {
                        hay.starts_with(a.as_str())
                    } else {
                        hay.ends_with(a.as_str())
                    }
                }))
            }
            "find" | "rfind" | "index" | "rindex" => {
                let (sub, start, end): (&str, Option<i64>, Option<i64>) = from_args(args)?;
                let hay = char_slice(s, start, end);
                let offset = if start.is_some() || end.is_some() {
                    char_index(s, hay.as_ptr() as usize - s.as_ptr() as usize)
                } else {
                    0
                };
                let found = if method.starts_with('r') { hay.rfind(sub) } else { hay.find(sub) };
                match found {
                    Some(b) => Value::from(offset + char_index(hay, b)),
                    None if method.ends_with("find") => Value::from(-1),
                    None => return Err(value_error("substring not found")),
                }
            }
            "count" => {
                let (sub,): (&str,) = from_args(args)?;
                Value::from(if sub.is_empty() {
                    s.chars().count() + 1
                } else {
                    s.matches(sub).count()
                })
            }
            "replace" => {
                let (old, new, count): (&str, &str, Option<i64>) = from_args(args)?;
                Value::from(match count {
                    Some(n) if n >= 0 => s.replacen(old, new, n as usize),
                    _ => s.replace(old, new),
                })
            }
            "removeprefix" => {
                let (p,): (&str,) = from_args(args)?;
                Value::from(s.strip_prefix(p).unwrap_or(s))
            }
            "removesuffix" => {
                let (p,): (&str,) = from_args(args)?;
                Value::from(s.strip_suffix(p).unwrap_or(s))
            }
            "isspace" => {
                let () = from_args(args)?;
                Value::from(!s.is_empty() && s.chars().all(is_py_space))
            }
            "join" => {
                let (items,): (Value,) = from_args(args)?;
                let mut out = String::new();
                for (i, item) in items.try_iter()?.enumerate() {
                    if i > 0 {
                        out.push_str(s);
                    }
                    match item.as_str() {
                        Some(t) => out.push_str(t),
                        None => {
                            return Err(value_error(format!(
                                "sequence item {i}: expected str instance, {} found",
                                item.kind()
                            )));
                        }
                    }
                }
                Value::from(out)
            }
            _ => return Err(Error::from(ErrorKind::UnknownMethod)),
        })
    })();
    match r {
        Err(e) if e.kind() == ErrorKind::UnknownMethod => None,
        r => Some(r),
    }
}

/// The environment's unknown-method callback (see the module docs).
pub fn unknown_method(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if let Some(s) = value.as_str().filter(|_| value.kind() == ValueKind::String)
        && let Some(r) = string_method(s, method, args)
    {
        return r;
    }
    if value.kind() == ValueKind::Map && method == "items" {
        let () = from_args(args)?;
        return pairs_to_tuples(minijinja::filters::items(value)?);
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// jinja2's `trim` filter: `str(value).strip(chars)`.
pub fn trim_filter(value: &Value, chars: Option<Value>) -> Result<Value, Error> {
    let s = to_py_str(value);
    let chars = chars.filter(|c| !c.is_none());
    let chars = match &chars {
        Some(c) => Some(c.as_str().ok_or_else(|| value_error("trim chars must be a string"))?),
        None => None,
    };
    Ok(Value::from(py_strip(&s, chars, true, true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn split_matches_python() {
        assert_eq!(py_split("  a  b\x1fc  ", None, -1).unwrap(), v(&["a", "b", "c"]));
        assert_eq!(py_split("  a  b  c  ", None, 1).unwrap(), v(&["a", "b  c  "]));
        assert_eq!(py_split("a,,b", Some(","), -1).unwrap(), v(&["a", "", "b"]));
        assert_eq!(py_split("a,b,c", Some(","), 1).unwrap(), v(&["a", "b,c"]));
        assert_eq!(py_split("", None, -1).unwrap(), Vec::<String>::new());
        assert_eq!(py_split("", Some(","), -1).unwrap(), v(&[""]));
        assert_eq!(py_rsplit("  a  b  c  ", None, 1).unwrap(), v(&["  a  b", "c"]));
        assert_eq!(py_rsplit("a,b,c", Some(","), 1).unwrap(), v(&["a,b", "c"]));
        assert!(py_split("a", Some(""), -1).is_err());
    }

    #[test]
    fn strip_matches_python() {
        assert_eq!(py_strip("\x1c\x1f hi \u{3000}\n", None, true, true), "hi");
        assert_eq!(py_strip("\n\nx\n", Some("\n"), true, false), "x\n");
        assert_eq!(py_strip("xxhixx", Some("x"), false, true), "xxhi");
        // U+200B ZERO WIDTH SPACE is not whitespace in Python.
        assert_eq!(py_strip("\u{200b}a", None, true, true), "\u{200b}a");
    }

    #[test]
    fn splitlines_matches_python() {
        assert_eq!(py_splitlines("a\r\nb\rc\x0bd\n", false), v(&["a", "b", "c", "d"]));
        assert_eq!(py_splitlines("a\r\nb\n", true), v(&["a\r\n", "b\n"]));
        assert_eq!(py_splitlines("", false), Vec::<String>::new());
    }
}
