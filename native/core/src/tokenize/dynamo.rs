//! The Dynamo dialect: the prompt NVIDIA Dynamo 1.6's frontend builds for a
//! request body, where it differs from vLLM's OpenAI server (request.rs).
//!
//! Behind Dynamo's frontend in direct mode, the ids kv-epp injects as
//! `nvext.token_data` *are* the prompt (the frontend skips its own template and
//! tokenizer), so they must be the ids Dynamo would compute. Sources:
//! `dynamo-llm` 1.6.1 (`preprocessor.rs` `gather_tokens`/`encode_with_timing`,
//! `protocols/openai/chat_completions.rs` `normalize_reasoning_template_args`)
//! and `dynamo-renderer` 8.0.3 (`template/oai.rs` `render`,
//! `template/formatters.rs` probes). What differs, and is reproduced here:
//!
//! - encoding never adds special tokens (chat and completions alike), after
//!   every NUL is removed from the text;
//! - `tool_choice: "none"` renders without the tools;
//! - `chat_template_args` (or its alias `chat_template_kwargs`) with Dynamo's
//!   thinking controls folded in (`thinking`, `enable_thinking`,
//!   `thinking_mode`, `reasoning_effort`);
//! - text-only content part lists are joined with `\n`, empty parts included;
//! - `developer` messages reach the template unchanged;
//! - tool-call `arguments` strings stay verbatim for templates that print them
//!   (`arguments is string`, confirmed by a probe render, as Dynamo does), and
//!   are parsed to any JSON value otherwise (left as the string when they do not
//!   parse);
//! - an assistant's `reasoning_content` is kept for templates that read it and
//!   is prepended to the content as `<think>…</think>` for the others.
//!
//! Not reproduced (documented in docs/architecture.md): Dynamo's system-message
//! normalization for templates that reject a non-leading system turn, its tool
//! schema backfill, media placeholders, batched completions, and its request
//! validation (a body Dynamo refuses still gets Dynamo's 4xx from the frontend).
//!
//! Contract: pure; a body that needs no change is not copied.

use std::borrow::Cow;

use serde_json::{Map, Value as Json};

use super::TokenizeError;

/// Whose prompt construction the ids follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// vLLM 0.33's OpenAI server (request.rs): the workers render the prompt.
    #[default]
    Vllm,
    /// Dynamo 1.6's frontend: it takes kv-epp's ids as the prompt.
    Dynamo,
}

impl Dialect {
    pub fn parse(name: &str) -> Result<Dialect, TokenizeError> {
        match name {
            "vllm" => Ok(Dialect::Vllm),
            "dynamo" => Ok(Dialect::Dynamo),
            other => Err(TokenizeError::invalid_tokenizer(format!(
                "unknown prompt dialect {other:?} (expected vllm or dynamo)"
            ))),
        }
    }
}

/// A chat template's traits that Dynamo's renderer detects at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateTraits {
    /// The template prints string tool-call arguments itself.
    pub arguments_string: bool,
    /// The template reads `reasoning_content` (its source names it).
    pub reads_reasoning: bool,
}

/// Text with every NUL removed (Dynamo's `encode_with_timing`).
pub fn strip_nul(text: &str) -> Cow<'_, str> {
    if text.contains('\0') { Cow::Owned(text.replace('\0', "")) } else { Cow::Borrowed(text) }
}

const THINKING_TOGGLES: [&str; 2] = ["thinking", "enable_thinking"];
const THINKING_KEYS: [&str; 3] = ["thinking", "enable_thinking", "thinking_mode"];

enum ThinkingMode {
    Enabled,
    Disabled,
    Adaptive,
}

fn thinking_mode(v: &Json) -> Result<ThinkingMode, TokenizeError> {
    if let Some(on) = v.as_bool() {
        return Ok(if on { ThinkingMode::Enabled } else { ThinkingMode::Disabled });
    }
    let bad = |m: &str| TokenizeError::invalid_request(m.to_string());
    let Some(obj) = v.as_object() else {
        return Err(bad(
            "`thinking` must be a boolean or an object with `type` set to `enabled`, `disabled`, or `adaptive`",
        ));
    };
    match obj.get("type").and_then(Json::as_str) {
        Some("enabled") => Ok(ThinkingMode::Enabled),
        Some("disabled") => Ok(ThinkingMode::Disabled),
        Some("adaptive") => Ok(ThinkingMode::Adaptive),
        _ => Err(bad("`thinking.type` must be `enabled`, `disabled`, or `adaptive`")),
    }
}

fn set_thinking(args: &mut Map<String, Json>, on: bool) {
    args.insert("thinking".into(), Json::Bool(on));
    args.insert("enable_thinking".into(), Json::Bool(on));
    args.insert(
        "thinking_mode".into(),
        Json::String(if on { "enabled" } else { "disabled" }.into()),
    );
}

/// Whether [`chat_body`] would change `body`.
fn needs_rewrite(body: &Map<String, Json>) -> bool {
    let tool_choice_none = body.get("tool_choice").and_then(Json::as_str) == Some("none")
        && body.get("tools").is_some_and(|t| !t.is_null());
    let reasoning = ["chat_template_args", "thinking", "reasoning_effort"]
        .iter()
        .any(|k| body.get(*k).is_some_and(|v| !v.is_null()))
        || body.get("chat_template_kwargs").and_then(Json::as_object).is_some_and(|a| {
            a.contains_key("reasoning_effort") || THINKING_KEYS.iter().any(|k| a.contains_key(*k))
        });
    let parts = body.get("messages").and_then(Json::as_array).is_some_and(|ms| {
        ms.iter().any(|m| {
            m.get("content").is_some_and(Json::is_array)
                || m.get("reasoning_content").is_some_and(|r| !r.is_null())
        })
    });
    tool_choice_none || reasoning || parts
}

/// The template-independent half of Dynamo's request handling, as a body that
/// request.rs then reads: tools dropped for `tool_choice: "none"`, the template
/// arguments (with the thinking controls) in `chat_template_kwargs`, text-only
/// part lists joined. Borrowed when nothing changes.
pub fn chat_body(body: &Map<String, Json>) -> Result<Cow<'_, Map<String, Json>>, TokenizeError> {
    if !needs_rewrite(body) {
        return Ok(Cow::Borrowed(body));
    }
    let mut body = body.clone();
    if body.get("tool_choice").and_then(Json::as_str) == Some("none") {
        body.shift_remove("tools");
        body.shift_remove("tool_choice");
    }
    fold_template_args(&mut body)?;
    if let Some(Json::Array(messages)) = body.get_mut("messages") {
        for m in messages.iter_mut().filter_map(Json::as_object_mut) {
            join_text_parts(m);
        }
    }
    Ok(Cow::Owned(body))
}

/// Dynamo's `chat_template_args` (alias `chat_template_kwargs`) after
/// `normalize_reasoning_template_args`, written back as `chat_template_kwargs`;
/// the top-level `thinking` and `reasoning_effort` are folded in and removed.
fn fold_template_args(body: &mut Map<String, Json>) -> Result<(), TokenizeError> {
    let args_value = match body.shift_remove("chat_template_args") {
        Some(v) if !v.is_null() => Some(v),
        _ => body.get("chat_template_kwargs").filter(|v| !v.is_null()).cloned(),
    };
    let mut args = match args_value {
        None => Map::new(),
        Some(Json::Object(m)) => m,
        Some(_) => {
            return Err(TokenizeError::invalid_request("chat_template_args must be an object"));
        }
    };
    let mode = match body.shift_remove("thinking") {
        None | Some(Json::Null) => None,
        Some(v) => Some(thinking_mode(&v)?),
    };
    let effort = body
        .shift_remove("reasoning_effort")
        .filter(|e| !e.is_null())
        .or_else(|| args.get("reasoning_effort").filter(|e| !e.is_null()).cloned());
    let control = THINKING_KEYS.iter().any(|k| args.contains_key(*k));
    if mode.is_some() || effort.is_some() || control {
        match mode {
            Some(ThinkingMode::Enabled) => set_thinking(&mut args, true),
            Some(ThinkingMode::Disabled) => set_thinking(&mut args, false),
            Some(ThinkingMode::Adaptive) => {
                args.shift_remove("thinking");
                args.shift_remove("enable_thinking");
                args.insert("thinking_mode".into(), Json::String("adaptive".into()));
            }
            None => {}
        }
        let named = args.get("thinking_mode").and_then(Json::as_str).map(str::to_ascii_lowercase);
        let decided = THINKING_TOGGLES
            .iter()
            .find_map(|k| args.get(*k).and_then(Json::as_bool))
            .or_else(|| match named.as_deref() {
                Some("adaptive") => None,
                Some("enabled") => Some(true),
                Some("disabled") => Some(false),
                _ => effort.as_ref().and_then(Json::as_str).map(|e| e != "none"),
            });
        if let Some(on) = decided {
            set_thinking(&mut args, on);
        }
        if let Some(e) = effort {
            args.insert("reasoning_effort".into(), e);
        }
    }
    if args.is_empty() {
        body.shift_remove("chat_template_kwargs");
    } else {
        body.insert("chat_template_kwargs".into(), Json::Object(args));
    }
    Ok(())
}

/// `may_be_fix_msg_content` for a template that takes strings: a non-empty
/// list of parts that are all `text` becomes their texts joined with `\n`.
fn join_text_parts(m: &mut Map<String, Json>) {
    let Some(Json::Array(parts)) = m.get("content") else { return };
    let text_only = !parts.is_empty()
        && parts.iter().all(|p| p.get("type").and_then(Json::as_str) == Some("text"));
    if !text_only {
        return;
    }
    let joined = parts
        .iter()
        .filter_map(|p| p.get("text").and_then(Json::as_str))
        .collect::<Vec<_>>()
        .join("\n");
    m.insert("content".into(), Json::String(joined));
}

/// `inject_reasoning_content_into_messages`, for templates that do not read
/// `reasoning_content`: an assistant's reasoning is prepended to its content as
/// `<think>…</think>` (one block per non-empty segment of a list) and removed.
pub fn inject_reasoning(body: &mut Map<String, Json>) {
    let Some(Json::Array(messages)) = body.get_mut("messages") else { return };
    for m in messages.iter_mut().filter_map(Json::as_object_mut) {
        if m.get("role").and_then(Json::as_str) != Some("assistant") {
            continue;
        }
        let reasoning = match m.get("reasoning_content") {
            Some(Json::String(s)) if !s.is_empty() => format!("<think>{s}</think>"),
            Some(Json::Array(segments)) => {
                let joined: String = segments
                    .iter()
                    .filter_map(Json::as_str)
                    .filter(|s| !s.is_empty())
                    .map(|s| format!("<think>{s}</think>"))
                    .collect();
                if joined.is_empty() {
                    continue;
                }
                joined
            }
            _ => continue,
        };
        match m.get_mut("content") {
            Some(Json::String(s)) => s.insert_str(0, &reasoning),
            None | Some(Json::Null) => {
                m.insert("content".into(), Json::String(reasoning));
            }
            Some(Json::Array(parts)) => {
                let mut part = Map::new();
                part.insert("type".into(), Json::String("text".into()));
                part.insert("text".into(), Json::String(reasoning));
                parts.insert(0, Json::Object(part));
            }
            _ => continue,
        }
        m.shift_remove("reasoning_content");
    }
}

/// `may_be_fix_tool_schema` over the tools as Dynamo's typed request
/// serializes them (unset fields left out): a function's `description` that is
/// not a string becomes `""` (appended), and an object `parameters` gets
/// `type: "object"` and `properties: {}` appended where missing.
pub fn fix_tools(tools: &mut Json) {
    let Json::Array(list) = tools else { return };
    for tool in list.iter_mut() {
        let Some(Json::Object(f)) = tool.get_mut("function") else { continue };
        f.retain(|_, v| !v.is_null());
        if !matches!(f.get("description"), Some(Json::String(_))) {
            f.shift_remove("description");
            f.insert("description".into(), Json::String(String::new()));
        }
        if let Some(Json::Object(p)) = f.get_mut("parameters") {
            if !p.contains_key("type") {
                p.insert("type".into(), Json::String("object".into()));
            }
            if !p.contains_key("properties") {
                p.insert("properties".into(), Json::Object(Map::new()));
            }
        }
    }
}

/// Whether a body's messages carry a `reasoning_content` anywhere.
pub fn has_reasoning(body: &Map<String, Json>) -> bool {
    body.get("messages").and_then(Json::as_array).is_some_and(|ms| {
        ms.iter().any(|m| m.get("reasoning_content").is_some_and(|r| !r.is_null()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Json) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn untouched_bodies_are_borrowed() {
        let b = obj(
            json!({"messages": [{"role": "user", "content": "hi"}], "tools": [], "tool_choice": "auto"}),
        );
        assert!(matches!(chat_body(&b).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn tool_choice_none_drops_the_tools() {
        let b =
            obj(json!({"messages": [], "tools": [{"type": "function"}], "tool_choice": "none"}));
        let out = chat_body(&b).unwrap();
        assert!(!out.contains_key("tools") && !out.contains_key("tool_choice"));
    }

    #[test]
    fn text_parts_join_with_empty_ones() {
        let b = obj(json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": ""}, {"type": "text", "text": "B"}]},
            {"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "user", "content": []}
        ]}));
        let out = chat_body(&b).unwrap();
        let ms = out["messages"].as_array().unwrap();
        assert_eq!(ms[0]["content"], json!("A\n\nB"));
        assert!(ms[1]["content"].is_array());
        assert_eq!(ms[2]["content"], json!([]));
    }

    #[test]
    fn thinking_controls_fold_as_dynamo_does() {
        let fold = |v: Json| chat_body(&obj(v)).unwrap().into_owned();
        let off = json!({"thinking": false, "enable_thinking": false, "thinking_mode": "disabled"});
        assert_eq!(
            fold(json!({"messages": [], "thinking": {"type": "disabled"}}))["chat_template_kwargs"],
            off
        );
        assert_eq!(
            fold(json!({"messages": [], "chat_template_args": {"enable_thinking": false}}))["chat_template_kwargs"],
            off
        );
        assert_eq!(
            fold(json!({"messages": [], "chat_template_kwargs": {"thinking": false}}))["chat_template_kwargs"],
            off
        );
        let e = fold(json!({"messages": [], "chat_template_kwargs": {"reasoning_effort": "none"}}));
        assert_eq!(e["chat_template_kwargs"]["enable_thinking"], json!(false));
        let top = fold(json!({"messages": [], "reasoning_effort": "high"}));
        assert_eq!(top["chat_template_kwargs"]["enable_thinking"], json!(true));
        assert_eq!(top["chat_template_kwargs"]["reasoning_effort"], json!("high"));
        assert!(!top.contains_key("reasoning_effort"));
        let adaptive = fold(
            json!({"messages": [], "thinking": {"type": "adaptive"}, "reasoning_effort": "low", "chat_template_kwargs": {"enable_thinking": true}}),
        );
        assert_eq!(
            adaptive["chat_template_kwargs"],
            json!({"thinking_mode": "adaptive", "reasoning_effort": "low"})
        );
        assert!(chat_body(&obj(json!({"messages": [], "thinking": {"type": "maybe"}}))).is_err());
        assert!(chat_body(&obj(json!({"messages": [], "thinking": "yes"}))).is_err());
    }

    #[test]
    fn reasoning_is_prepended_as_think_blocks() {
        let mut b = obj(json!({"messages": [
            {"role": "assistant", "content": "A1.", "reasoning_content": "r"},
            {"role": "assistant", "content": null, "reasoning_content": ["x", "", "y"]},
            {"role": "assistant", "content": "", "reasoning_content": ""},
            {"role": "user", "content": "u", "reasoning_content": "r"}
        ]}));
        inject_reasoning(&mut b);
        let ms = b["messages"].as_array().unwrap();
        assert_eq!(ms[0], json!({"role": "assistant", "content": "<think>r</think>A1."}));
        assert_eq!(ms[1]["content"], json!("<think>x</think><think>y</think>"));
        assert_eq!(ms[2]["reasoning_content"], json!(""));
        assert_eq!(ms[3]["reasoning_content"], json!("r"));
    }

    #[test]
    fn tool_schemas_are_backfilled_in_dynamos_key_order() {
        let mut t = json!([
            {"type": "function", "function": {"name": "a", "description": null, "parameters": {}, "strict": null}},
            {"type": "function", "function": {"name": "b", "parameters": {"properties": {"x": {}}}}},
            {"type": "function", "function": {"name": "c", "description": "C.", "parameters": {"type": "object"}}}
        ]);
        fix_tools(&mut t);
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(
            text,
            r#"[{"type":"function","function":{"name":"a","parameters":{"type":"object","properties":{}},"description":""}},{"type":"function","function":{"name":"b","parameters":{"properties":{"x":{}},"type":"object"},"description":""}},{"type":"function","function":{"name":"c","description":"C.","parameters":{"type":"object","properties":{}}}}]"#
        );
    }

    #[test]
    fn nul_is_stripped() {
        assert_eq!(strip_nul("a\0b\0"), "ab");
        assert!(matches!(strip_nul("ab"), Cow::Borrowed(_)));
    }
}
