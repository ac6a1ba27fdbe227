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
//! - the tool schemas backfilled as `may_be_fix_tool_schema` does;
//! - contents as part lists only for templates that require them (a probe),
//!   else as strings.
//!
//! Not reproduced (documented in docs/architecture.md): Dynamo's system-message
//! normalization for templates that reject a non-leading system turn, media
//! placeholders, template arguments named like its own context variables, and
//! its request validation (a body Dynamo refuses still gets Dynamo's 4xx from
//! the frontend; one vLLM refuses is refused here too).
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
    /// It reads `reasoning_content` only as a string: a list of segments is joined first.
    pub reasoning_string: bool,
    /// It renders a text part list but not a string: contents go to it as part lists.
    pub content_arrays: bool,
    /// It rejects a system message after the first turn: those become user messages
    /// (a leading run of them merges into the first).
    pub demote_nonleading_system: bool,
    /// It rejects two user messages in a row: they merge.
    pub coalesce_consecutive_users: bool,
}

/// Text with every NUL removed (Dynamo's `encode_with_timing`).
pub fn strip_nul(text: &str) -> Cow<'_, str> {
    if text.contains('\0') { Cow::Owned(text.replace('\0', "")) } else { Cow::Borrowed(text) }
}

/// Template variables Dynamo's renderer sets itself; template arguments of these names are ignored.
const CONTEXT_NAMES: [&str; 6] =
    ["messages", "tools", "bos_token", "eos_token", "unk_token", "add_generation_prompt"];

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
    let collide = ["chat_template_kwargs", "chat_template_args"].iter().any(|k| {
        body.get(*k)
            .and_then(Json::as_object)
            .is_some_and(|a| CONTEXT_NAMES.iter().any(|n| a.contains_key(*n)))
    });
    let messages = body.get("messages").and_then(Json::as_array).is_some_and(|ms| {
        ms.iter().any(|m| {
            (role_is(m, "assistant")
                && m.get("reasoning").is_some()
                && m.get("reasoning_content").is_none())
                || m.get("name").is_some_and(Json::is_null)
                || m.get("tool_calls").and_then(Json::as_array).is_some_and(|calls| {
                    calls.iter().any(|c| c.as_object().is_some_and(|c| !c.contains_key("type")))
                })
        })
    });
    tool_choice_none || reasoning || collide || messages
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
            // Dynamo's typed messages take a null name, and a tool call without a type
            // as a function call (which vLLM's validation, run next, refuses).
            if m.get("name").is_some_and(Json::is_null) {
                m.shift_remove("name");
            }
            if let Some(Json::Array(calls)) = m.get_mut("tool_calls") {
                for c in calls.iter_mut().filter_map(Json::as_object_mut) {
                    if !c.contains_key("type") {
                        c.insert("type".into(), Json::String("function".into()));
                    }
                }
            }
            // The typed assistant message reads `reasoning` as `reasoning_content`.
            if m.get("role").and_then(Json::as_str) == Some("assistant")
                && !m.contains_key("reasoning_content")
                && let Some(r) = m.shift_remove("reasoning")
            {
                m.insert("reasoning_content".into(), r);
            }
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
    // `normalize_thinking_aliases`, run on every request after the step above:
    // the first of `thinking`, `enable_thinking`, `thinking_mode` that decides
    // (strings and numbers included) sets both boolean switches.
    if let Some(on) = thinking_alias(&args) {
        args.insert("thinking".into(), Json::Bool(on));
        args.insert("enable_thinking".into(), Json::Bool(on));
    }
    // Dynamo merges the arguments under its own context: names it sets win.
    for name in CONTEXT_NAMES {
        args.shift_remove(name);
    }
    if args.is_empty() {
        body.shift_remove("chat_template_kwargs");
    } else {
        body.insert("chat_template_kwargs".into(), Json::Object(args));
    }
    Ok(())
}

/// dynamo-truthy's `is_truthy`: 1, true, on, yes (trimmed, any case).
fn is_truthy(v: &str) -> bool {
    matches!(v.trim().to_lowercase().as_str(), "1" | "true" | "on" | "yes")
}

/// dynamo-truthy's `parse_bool_opt`: truthy, falsey (0, false, off, no), or neither.
fn parse_bool_opt(v: &str) -> Option<bool> {
    if is_truthy(v) {
        Some(true)
    } else if v.trim().is_empty() {
        None
    } else if matches!(v.trim().to_lowercase().as_str(), "0" | "false" | "off" | "no") {
        Some(false)
    } else {
        None
    }
}

/// Dynamo's `normalize_thinking_aliases` (no reasoning parser configured).
fn thinking_alias(args: &Map<String, Json>) -> Option<bool> {
    for key in THINKING_KEYS {
        match args.get(key) {
            Some(Json::Bool(b)) => {
                if key == "thinking_mode" {
                    return Some(*b);
                }
                return THINKING_TOGGLES.iter().find_map(|k| args.get(*k).and_then(Json::as_bool));
            }
            Some(Json::String(v)) => {
                if key == "thinking_mode" {
                    if v.eq_ignore_ascii_case("enabled") {
                        return Some(true);
                    }
                    if v.eq_ignore_ascii_case("disabled") {
                        return Some(false);
                    }
                    return parse_bool_opt(v);
                }
                return Some(is_truthy(v));
            }
            Some(Json::Number(n)) => {
                if let Some(x) = n.as_f64() {
                    return Some(x != 0.0);
                }
            }
            _ => {}
        }
    }
    None
}

/// `may_be_fix_msg_content` for a template that takes strings: in every
/// message, a non-empty list of parts that are all `text` becomes their texts
/// joined with `\n`.
pub fn join_text_parts(body: &mut Map<String, Json>) {
    if let Some(Json::Array(messages)) = body.get_mut("messages") {
        for m in messages.iter_mut().filter_map(Json::as_object_mut) {
            join_message_parts(m);
        }
    }
}

/// `may_be_fix_msg_content` for a template that requires part lists: every
/// string content becomes one text part (before reasoning is injected).
pub fn wrap_string_contents(body: &mut Map<String, Json>) {
    let Some(Json::Array(messages)) = body.get_mut("messages") else { return };
    for m in messages.iter_mut().filter_map(Json::as_object_mut) {
        if let Some(c) = m.get_mut("content")
            && let Json::String(text) = c
        {
            *c = Json::Array(vec![text_part(std::mem::take(text))]);
        }
    }
}

/// Whether [`join_text_parts`] would change `body`.
pub fn has_text_parts(body: &Map<String, Json>) -> bool {
    body.get("messages")
        .and_then(Json::as_array)
        .is_some_and(|ms| ms.iter().any(|m| m.get("content").is_some_and(Json::is_array)))
}

fn join_message_parts(m: &mut Map<String, Json>) {
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
            Some(Json::Array(parts)) => parts.insert(0, text_part(reasoning)),
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

/// `join_reasoning_content_segments_in_messages`: an assistant's list of
/// reasoning segments becomes its non-empty string segments joined with `\n`.
pub fn join_reasoning_segments(body: &mut Map<String, Json>) {
    let Some(Json::Array(messages)) = body.get_mut("messages") else { return };
    for m in messages.iter_mut().filter_map(Json::as_object_mut) {
        if m.get("role").and_then(Json::as_str) != Some("assistant") {
            continue;
        }
        if let Some(r) = m.get_mut("reasoning_content")
            && let Json::Array(segments) = r
        {
            let joined = segments
                .iter()
                .filter_map(Json::as_str)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("\n");
            *r = Json::String(joined);
        }
    }
}

/// Whether any assistant message holds a list of reasoning segments.
pub fn has_reasoning_segments(body: &Map<String, Json>) -> bool {
    body.get("messages").and_then(Json::as_array).is_some_and(|ms| {
        ms.iter().any(|m| {
            m.get("role").and_then(Json::as_str) == Some("assistant")
                && m.get("reasoning_content").is_some_and(Json::is_array)
        })
    })
}

/// `{"type": "text", "text": text}`.
fn text_part(text: String) -> Json {
    let mut p = Map::new();
    p.insert("type".into(), Json::String("text".into()));
    p.insert("text".into(), Json::String(text));
    Json::Object(p)
}

fn role_is(m: &Json, role: &str) -> bool {
    m.get("role").and_then(Json::as_str) == Some(role)
}

/// `merge_message_content`: two contents joined without flattening part lists.
fn merge_content(target: Json, source: Json) -> Json {
    match (target, source) {
        (Json::String(mut t), Json::String(s)) => {
            if !t.is_empty() && !s.is_empty() {
                t.push_str("\n\n");
            }
            t.push_str(&s);
            Json::String(t)
        }
        (Json::Array(mut t), Json::Array(s)) => {
            t.extend(s);
            Json::Array(t)
        }
        (Json::Array(mut t), Json::String(s)) => {
            if !s.is_empty() {
                t.push(text_part(s));
            }
            Json::Array(t)
        }
        (Json::String(t), Json::Array(s)) => {
            let mut parts = Vec::with_capacity(s.len() + 1);
            if !t.is_empty() {
                parts.push(text_part(t));
            }
            parts.extend(s);
            Json::Array(parts)
        }
        (Json::Null, s) => s,
        (t, _) => t,
    }
}

/// `append_message_content`: `source` merged into `target`'s content (which moves last).
fn append_content(target: &mut Json, source: Json) {
    let Some(target) = target.as_object_mut() else { return };
    let merged = merge_content(target.shift_remove("content").unwrap_or(Json::Null), source);
    target.insert("content".into(), merged);
}

fn take_content(m: &mut Json) -> Json {
    m.get_mut("content").map(Json::take).unwrap_or(Json::Null)
}

/// Whether [`normalize_system_messages`] would change `body`.
pub fn needs_system_normalization(body: &Map<String, Json>, t: &TemplateTraits) -> bool {
    let Some(list) = body.get("messages").and_then(Json::as_array) else { return false };
    let leading = list.iter().take_while(|m| role_is(m, "system")).count();
    (t.demote_nonleading_system
        && (leading > 1 || list.iter().skip(leading).any(|m| role_is(m, "system"))))
        || (t.coalesce_consecutive_users
            && list.windows(2).any(|w| role_is(&w[0], "user") && role_is(&w[1], "user")))
}

/// `normalize_system_messages`: the rewrites a strict template needs, each only
/// when its probe found the restriction. A leading run of system messages
/// merges into the first and later ones become user messages in place; then
/// consecutive user messages merge.
pub fn normalize_system_messages(body: &mut Map<String, Json>, t: &TemplateTraits) {
    let Some(Json::Array(list)) = body.get_mut("messages") else { return };
    if t.demote_nonleading_system {
        let leading = list.iter().take_while(|m| role_is(m, "system")).count();
        if leading > 1 {
            for mut trailing in list.drain(1..leading).collect::<Vec<_>>() {
                let content = take_content(&mut trailing);
                append_content(&mut list[0], content);
            }
        }
        let leading = list.iter().take_while(|m| role_is(m, "system")).count();
        for m in list.iter_mut().skip(leading) {
            if role_is(m, "system")
                && let Some(m) = m.as_object_mut()
            {
                m.insert("role".into(), Json::String("user".into()));
            }
        }
    }
    if t.coalesce_consecutive_users {
        let mut coalesced: Vec<Json> = Vec::with_capacity(list.len());
        for mut m in list.drain(..) {
            if role_is(&m, "user") && coalesced.last().is_some_and(|p| role_is(p, "user")) {
                let content = take_content(&mut m);
                if let Some(last) = coalesced.last_mut() {
                    append_content(last, content);
                }
            } else {
                coalesced.push(m);
            }
        }
        *list = coalesced;
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
        let mut out = b.clone();
        assert!(has_text_parts(&out));
        join_text_parts(&mut out);
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
        // The second step: strings and numbers decide too.
        let alias = |v: Json| {
            fold(json!({"messages": [], "chat_template_kwargs": v}))["chat_template_kwargs"].clone()
        };
        assert_eq!(alias(json!({"enable_thinking": "false"}))["thinking"], json!(false));
        assert_eq!(alias(json!({"enable_thinking": 0}))["enable_thinking"], json!(false));
        assert_eq!(alias(json!({"thinking_mode": "off"}))["enable_thinking"], json!(false));
        assert_eq!(alias(json!({"thinking_mode": "ON"}))["thinking"], json!(true));
        assert_eq!(alias(json!({"thinking": "maybe"}))["enable_thinking"], json!(false));
        assert_eq!(
            alias(json!({"thinking_mode": "adaptive"})),
            json!({"thinking_mode": "adaptive"})
        );
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
    fn reasoning_is_read_under_its_alias_and_segments_join() {
        let b = obj(json!({"messages": [
            {"role": "assistant", "content": "A", "reasoning": "r"},
            {"role": "user", "content": "u", "reasoning": "r"}
        ]}));
        let out = chat_body(&b).unwrap();
        assert_eq!(
            out["messages"][0],
            json!({"role": "assistant", "content": "A", "reasoning_content": "r"})
        );
        assert_eq!(out["messages"][1]["reasoning"], json!("r"));
        let mut seg = obj(
            json!({"messages": [{"role": "assistant", "content": "A", "reasoning_content": ["x", "", "y"]}]}),
        );
        assert!(has_reasoning_segments(&seg));
        join_reasoning_segments(&mut seg);
        assert_eq!(seg["messages"][0]["reasoning_content"], json!("x\ny"));
    }

    #[test]
    fn strict_templates_get_system_messages_demoted_and_users_coalesced() {
        let t = TemplateTraits {
            arguments_string: false,
            reads_reasoning: false,
            reasoning_string: false,
            content_arrays: false,
            demote_nonleading_system: true,
            coalesce_consecutive_users: true,
        };
        let mut b = obj(json!({"messages": [
            {"role": "system", "content": "S1"},
            {"role": "system", "content": [{"type": "text", "text": "S2"}]},
            {"role": "user", "content": "U1"},
            {"role": "system", "content": "S3"},
            {"role": "assistant", "content": "A"},
            {"role": "user", "content": ""},
            {"role": "user", "content": "U2"}
        ]}));
        assert!(needs_system_normalization(&b, &t));
        normalize_system_messages(&mut b, &t);
        assert_eq!(
            b["messages"],
            json!([
                {"role": "system", "content": [{"type": "text", "text": "S1"}, {"type": "text", "text": "S2"}]},
                {"role": "user", "content": "U1\n\nS3"},
                {"role": "assistant", "content": "A"},
                {"role": "user", "content": "U2"}
            ])
        );
        assert!(!needs_system_normalization(&b, &t));
    }

    #[test]
    fn reasoning_goes_into_part_lists_as_its_own_part() {
        let mut b = obj(json!({"messages": [
            {"role": "user", "content": "U"},
            {"role": "assistant", "content": "A", "reasoning_content": "R"}
        ]}));
        wrap_string_contents(&mut b);
        inject_reasoning(&mut b);
        assert_eq!(
            b["messages"][1]["content"],
            json!([{"type": "text", "text": "<think>R</think>"}, {"type": "text", "text": "A"}])
        );
        assert_eq!(b["messages"][0]["content"], json!([{"type": "text", "text": "U"}]));
    }

    #[test]
    fn nul_is_stripped() {
        assert_eq!(strip_nul("a\0b\0"), "ab");
        assert!(matches!(strip_nul("ab"), Cow::Borrowed(_)));
    }
}
