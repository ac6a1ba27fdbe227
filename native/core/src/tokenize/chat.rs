//! Chat-template rendering as transformers' `apply_chat_template(tokenize=False)`
//! does it (transformers 5.24: tokenization_utils_base.py and
//! utils/chat_template_utils.py), on minijinja configured like transformers'
//! jinja2 environment:
//! - `trim_blocks=True, lstrip_blocks=True`, jinja2's default
//!   `keep_trailing_newline=False`, no auto-escaping, lenient undefined (prints as
//!   nothing, attribute access on it fails), `loopcontrols`;
//! - globals `raise_exception(msg)` (=> `template_error` carrying `msg`),
//!   `strftime_now(fmt)` (the injected clock, see strftime.rs), `namespace`, `dict`;
//! - `{{ x }}` prints Python's `str(x)` (`None`, `True`, `1e-05`, `['a']`), Python
//!   string methods (pystr.rs), jinja2's filters and tests where minijinja's differ
//!   (`tojson`, `trim`, `round`, `escape`, ...: filters.rs).
//!
//! Around the template, [`ChatTemplate::apply`] re-implements what
//! `apply_chat_template` does: empty conversations and
//! `continue_final_message` + `add_generation_prompt` are errors, keys whose value
//! is `None` are dropped from messages, reasoning is aliased to `thinking` /
//! `reasoning_content`, tools/documents must be dicts, the special-token names are
//! template variables (kwargs override them), and `continue_final_message` cuts the
//! output after the final message's content.
//!
//! Known gaps (none reachable with the fixture templates):
//! - looping over `None` (e.g. `{% for t in tools %}` without tools) renders
//!   nothing where jinja2 raises TypeError; vLLM answers such requests with 400
//!   anyway, so only the ids of requests vLLM rejects are affected;
//! - the `~` operator prints floats and lists in minijinja's form (`0.00001`,
//!   `[1, "a"]`), not Python's; Python's `%` string formatting is unsupported;
//! - the filters `filesizeformat`, `random`, `striptags`, `urlize`, `wordwrap`,
//!   `xmlattr` do not exist.

use std::collections::HashSet;
use std::sync::OnceLock;

use minijinja::value::{Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior};
use serde_json::{Map, Value as Json};

use super::content_format::{self, ContentFormat};
use super::dynamo::TemplateTraits;
use super::error::TokenizeError;
use super::filters;
use super::pyfmt::to_py_str;
use super::pystr::{self, py_strip};
use super::strftime::{Tm, strftime};

/// Context key of the injected clock; not a valid identifier, so templates cannot
/// read or shadow it.
const NOW_KEY: &str = "kv-epp:now_ms";
const TEMPLATE_NAME: &str = "chat_template";
/// What transformers appends to the final message for `continue_final_message`.
const CONTINUE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";

/// The message of a `raise_exception(...)` call, carried as the error's source.
#[derive(Debug)]
struct RaisedException(String);

impl std::fmt::Display for RaisedException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

/// One compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    variables: HashSet<String>,
    content_format: ContentFormat,
    developer_role: bool,
    /// Dynamo's load-time probes of this template (dynamo.rs), made on first use.
    dynamo_traits: OnceLock<TemplateTraits>,
}

/// What `apply_chat_template` is called with (after vLLM's request handling).
#[derive(Debug, Default)]
pub struct ChatInput {
    /// The conversation: one JSON object per message.
    pub messages: Vec<Map<String, Json>>,
    /// `None` = Python `None` (the template sees `tools` defined but none).
    pub tools: Option<Json>,
    pub documents: Option<Json>,
    pub add_generation_prompt: bool,
    pub continue_final_message: bool,
    /// Extra template variables; they override the special-token names.
    pub kwargs: Map<String, Json>,
}

impl ChatTemplate {
    /// Compiles `source`. A syntax error (or a jinja2 feature minijinja lacks) is a
    /// `template_error`; loaders keep it and report it for every chat request, so
    /// that completions still work (as the JS backend does).
    pub fn compile(source: &str) -> Result<ChatTemplate, TokenizeError> {
        let mut env = environment();
        let stripped = strip_generation_tags(source);
        let content_format = content_format::detect(&stripped);
        env.add_template_owned(TEMPLATE_NAME, stripped)
            .map_err(|e| TokenizeError::template(format!("chat template does not compile: {e}")))?;
        let variables = env
            .get_template(TEMPLATE_NAME)
            .map(|t| t.undeclared_variables(false))
            .unwrap_or_default();
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            variables,
            content_format,
            developer_role: content_format::supports_developer_role(source),
            dynamo_traits: OnceLock::new(),
        })
    }

    /// The content format vLLM hands this template (content_format.rs).
    pub fn content_format(&self) -> ContentFormat {
        self.content_format
    }

    /// Whether vLLM passes `developer` messages to this template unchanged
    /// (else they become `system` messages, merged into the first).
    pub fn supports_developer_role(&self) -> bool {
        self.developer_role
    }

    /// What Dynamo's renderer detects in this template at load time
    /// (`formatters.rs`): whether it prints string tool-call arguments itself
    /// (its source tests `arguments is string` and a probe conversation's
    /// arguments string comes out verbatim) and whether it reads
    /// `reasoning_content`.
    pub fn dynamo_traits(&self, special_tokens: &[(String, String)]) -> TemplateTraits {
        *self.dynamo_traits.get_or_init(|| {
            let arguments_string = self.source.contains("arguments is string")
                && self.prints_string_arguments(special_tokens);
            let reads_reasoning = self.source.contains("reasoning_content");
            let (nonleading_system, consecutive_users) = self.system_rules(special_tokens);
            TemplateTraits {
                arguments_string,
                reads_reasoning,
                reasoning_string: reads_reasoning
                    && self.reads_reasoning_as_string(special_tokens, arguments_string),
                content_arrays: self.requires_content_arrays(),
                demote_nonleading_system: nonleading_system,
                coalesce_consecutive_users: consecutive_users,
            }
        })
    }

    /// A probe render of raw messages (no vLLM handling), as Dynamo's load-time probes make them.
    fn probe_render(
        &self,
        messages: Json,
        special_tokens: &[(String, String)],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizeError> {
        let messages = messages
            .as_array()
            .map(|ms| ms.iter().filter_map(|m| m.as_object().cloned()).collect())
            .unwrap_or_default();
        let input = ChatInput { messages, add_generation_prompt, ..ChatInput::default() };
        self.apply(input, special_tokens, 0)
    }

    /// A probe's output; a template error renders nothing, as Dynamo's probes take it.
    fn probe(
        &self,
        messages: Json,
        special_tokens: &[(String, String)],
        add_generation_prompt: bool,
    ) -> String {
        self.probe_render(messages, special_tokens, add_generation_prompt).unwrap_or_default()
    }

    /// `probe_template_raises`: whether rendering these messages fails.
    fn raises(&self, messages: Json, special_tokens: &[(String, String)]) -> bool {
        self.probe_render(messages, special_tokens, false).is_err()
    }

    /// `detect_system_normalization`: (demote non-leading system, coalesce users).
    fn system_rules(&self, special_tokens: &[(String, String)]) -> (bool, bool) {
        let m = |role: &str, content: &str| serde_json::json!({"role": role, "content": content});
        if self.raises(serde_json::json!([m("system", "s"), m("user", "u")]), special_tokens) {
            return (false, false);
        }
        let nonleading = self.raises(
            serde_json::json!([m("system", "s0"), m("user", "u"), m("system", "s1")]),
            special_tokens,
        );
        let after_assistant = self.raises(
            serde_json::json!([
                m("system", "s0"),
                m("user", "u"),
                m("assistant", "a"),
                m("system", "s1"),
                m("user", "u2")
            ]),
            special_tokens,
        );
        let users = self.raises(
            serde_json::json!([m("system", "s"), m("user", "u0"), m("user", "u1")]),
            special_tokens,
        );
        (nonleading || after_assistant, users)
    }

    /// `detect_reasoning_string_requirement`: a string reasoning comes out, a
    /// list of segments does not.
    fn reads_reasoning_as_string(
        &self,
        special_tokens: &[(String, String)],
        arguments_string: bool,
    ) -> bool {
        const FIRST: &str = "\u{1}dynamo_reasoning_probe_first\u{1}";
        const LAST: &str = "\u{1}dynamo_reasoning_probe_last\u{1}";
        let arguments =
            if arguments_string { serde_json::json!("{}") } else { serde_json::json!({}) };
        let render = |reasoning: Json| {
            self.probe(tool_call_probe(arguments.clone(), Some(reasoning)), special_tokens, true)
        };
        if !render(Json::String(FIRST.into())).contains(FIRST) {
            return false;
        }
        let out = render(serde_json::json!([FIRST, LAST]));
        !(out.contains(FIRST) || out.contains(LAST))
    }

    /// `detect_content_array_usage`: a text part list renders, a string does not
    /// (no special tokens, no generation prompt, as Dynamo probes).
    fn requires_content_arrays(&self) -> bool {
        let list = self.probe(
            serde_json::json!([{"role": "user", "content": [{"type": "text", "text": "template_test"}]}]),
            &[],
            false,
        );
        let string = self.probe(
            serde_json::json!([{"role": "user", "content": "template_test"}]),
            &[],
            false,
        );
        list.contains("template_test") && !string.contains("template_test")
    }

    /// `detect_tool_calls_arguments_string`'s render: the arguments string comes out verbatim.
    fn prints_string_arguments(&self, special_tokens: &[(String, String)]) -> bool {
        const ARGUMENTS: &str = r#"{"probe": "value"}"#;
        self.probe(tool_call_probe(Json::String(ARGUMENTS.into()), None), special_tokens, true)
            .contains(ARGUMENTS)
    }

    /// Names the template reads from its context (jinja2's
    /// `meta.find_undeclared_variables`); vLLM passes only these kwargs on.
    pub fn variables(&self) -> &HashSet<String> {
        &self.variables
    }

    /// `apply_chat_template(messages, tools=..., documents=..., tokenize=False,
    /// add_generation_prompt=..., continue_final_message=..., **kwargs)`.
    pub fn apply(
        &self,
        input: ChatInput,
        special_tokens: &[(String, String)],
        now_ms: i64,
    ) -> Result<String, TokenizeError> {
        if input.messages.is_empty() {
            return Err(TokenizeError::template(
                "Cannot apply chat template to an empty conversation. Provide at least one message.",
            ));
        }
        if input.continue_final_message && input.add_generation_prompt {
            return Err(TokenizeError::template(
                "continue_final_message and add_generation_prompt are not compatible. Use \
                 continue_final_message when you want the model to continue the final message, \
                 and add_generation_prompt when you want to add a header that will prompt it to \
                 start a new assistant message instead.",
            ));
        }
        let tools = match input.tools {
            None | Some(Json::Null) => Json::Null,
            Some(t) => Json::Array(dict_items(
                t,
                "tools",
                "Tools should either be a JSON schema, or a callable function with type hints and a docstring suitable for auto-conversion to a schema.",
            )?),
        };
        let documents = match input.documents {
            None | Some(Json::Null) => Json::Null,
            Some(d) => {
                dict_items(
                    d.clone(),
                    "documents",
                    "Documents should be a list of dicts with 'title' and 'text' keys!",
                )?;
                d
            }
        };
        let mut messages: Vec<Map<String, Json>> =
            input.messages.into_iter().map(drop_nulls).map(alias_reasoning).collect();

        // continue_final_message: tag the final content, render, cut at the tag.
        let mut final_message = None;
        if let Some(last) = messages.last_mut().filter(|_| input.continue_final_message) {
            if !last.contains_key("content") {
                return Err(TokenizeError::template(
                    "continue_final_message is set but the final message has no \"content\" to continue!",
                ));
            }
            if !self.source.contains("content") {
                return Err(TokenizeError::template(
                    "continue_final_message is set to \"content\" but this is not an accepted field in the chat_template",
                ));
            }
            match last.get_mut("content") {
                Some(Json::String(s)) => {
                    final_message = Some(s.clone());
                    s.push_str(CONTINUE_TAG);
                }
                // The "openai" content format: the last part with a text is continued.
                Some(Json::Array(parts))
                    if parts
                        .iter()
                        .any(|b| b.as_object().is_some_and(|b| b.contains_key("text"))) =>
                {
                    let block = parts
                        .iter_mut()
                        .rev()
                        .filter_map(Json::as_object_mut)
                        .find(|b| b.contains_key("text"));
                    let Some(Json::String(text)) = block.and_then(|b| b.get_mut("text")) else {
                        return Err(TokenizeError::template(
                            "continue_final_message: the final message's last text part has no text",
                        ));
                    };
                    final_message = Some(text.clone());
                    text.push_str(CONTINUE_TAG);
                }
                _ => {
                    return Err(TokenizeError::template(
                        "continue_final_message is set but we could not find any text to continue in the final message!",
                    ));
                }
            }
        }

        let mut ctx = Map::new();
        ctx.insert(
            "messages".into(),
            Json::Array(messages.into_iter().map(Json::Object).collect()),
        );
        ctx.insert("tools".into(), tools);
        ctx.insert("documents".into(), documents);
        ctx.insert("add_generation_prompt".into(), Json::Bool(input.add_generation_prompt));
        for (name, value) in special_tokens {
            ctx.insert(name.clone(), Json::String(value.clone()));
        }
        for (name, value) in input.kwargs {
            ctx.insert(name, value);
        }
        ctx.insert(NOW_KEY.into(), Json::from(now_ms));

        let template = self.env.get_template(TEMPLATE_NAME).map_err(template_error)?;
        let rendered = template.render(Value::from_serialize(&ctx)).map_err(template_error)?;

        match final_message {
            None => Ok(rendered),
            Some(final_message) => cut_at_continue_tag(rendered, &final_message),
        }
    }
}

/// Dynamo's tool-call probe conversation: a user turn, an assistant turn with
/// one call (and `reasoning_content` when given), the tool's answer.
fn tool_call_probe(arguments: Json, reasoning: Option<Json>) -> Json {
    let mut assistant = Map::new();
    assistant.insert("role".into(), Json::String("assistant".into()));
    assistant.insert("content".into(), Json::String(String::new()));
    if let Some(r) = reasoning {
        assistant.insert("reasoning_content".into(), r);
    }
    assistant.insert(
        "tool_calls".into(),
        serde_json::json!([{
            "id": "call_probe",
            "type": "function",
            "function": {"name": "probe", "arguments": arguments}
        }]),
    );
    serde_json::json!([
        {"role": "user", "content": "u"},
        Json::Object(assistant),
        {"role": "tool", "tool_call_id": "call_probe", "content": "r"}
    ])
}

/// The content format vLLM hands the template `source` (as compiled here:
/// `{% generation %}` tags rewritten first).
pub fn content_format_of(source: &str) -> ContentFormat {
    content_format::detect(&strip_generation_tags(source))
}

/// transformers' `AssistantTracker` extension adds `{% generation %}` ...
/// `{% endgeneration %}`, a block that renders its body unchanged (it only records
/// offsets for assistant masks). minijinja has no such tag, so each is rewritten
/// to a block tag with the same whitespace control (`{% if true %}` / `{% endif %}`),
/// which trims exactly as jinja2 trims around the original tags.
fn strip_generation_tags(source: &str) -> String {
    if !source.contains("generation") {
        return source.to_string();
    }
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        let Some(end) = tag.find("%}") else {
            break;
        };
        let inner = &tag[2..end];
        let (open, inner) = match inner.strip_prefix(['-', '+']) {
            Some(i) => (&tag[2..3], i),
            None => ("", inner),
        };
        let (inner, close) = match inner.strip_suffix(['-', '+']) {
            Some(i) => (i, &tag[end - 1..end]),
            None => (inner, ""),
        };
        let replacement = match inner.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => out.push_str(&format!("{{%{open} {r} {close}%}}")),
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// transformers: the final message must survive rendering; the output ends where
/// its content ends (trailing whitespace trimmed if the template ate the tag's space).
fn cut_at_continue_tag(rendered: String, final_message: &str) -> Result<String, TokenizeError> {
    let tag = CONTINUE_TAG.trim_end();
    if !rendered.contains(py_strip(final_message, None, true, true)) || !rendered.contains(tag) {
        return Err(TokenizeError::template(
            "continue_final_message is set but the final message does not appear in the chat after \
             applying the chat template! This can happen if the chat template deletes portions of \
             the final message.",
        ));
    }
    let at = rendered.rfind(tag).unwrap_or(rendered.len());
    if rendered[at..].starts_with(CONTINUE_TAG) {
        Ok(rendered[..at].to_string())
    } else {
        Ok(py_strip(&rendered[..at], None, false, true).to_string())
    }
}

/// `for x in value: if not isinstance(x, dict): raise` over a JSON value, as
/// Python iterates it (a dict yields its keys, a string its characters).
fn dict_items(value: Json, what: &str, msg: &str) -> Result<Vec<Json>, TokenizeError> {
    let bad = || TokenizeError::template(format!("{what}: {msg}"));
    match value {
        Json::Array(items) => {
            if items.iter().all(Json::is_object) {
                Ok(items)
            } else {
                Err(bad())
            }
        }
        Json::Object(m) if m.is_empty() => Ok(Vec::new()),
        Json::String(s) if s.is_empty() => Ok(Vec::new()),
        Json::Object(_) | Json::String(_) => Err(bad()),
        other => Err(TokenizeError::template(format!(
            "{what}: '{}' object is not iterable",
            json_type(&other)
        ))),
    }
}

fn json_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "NoneType",
        Json::Bool(_) => "bool",
        Json::Number(n) if n.is_f64() => "float",
        Json::Number(_) => "int",
        Json::String(_) => "str",
        Json::Array(_) => "list",
        Json::Object(_) => "dict",
    }
}

/// transformers' `_normalize_chat_messages`: keys whose value is None are dropped.
fn drop_nulls(mut m: Map<String, Json>) -> Map<String, Json> {
    m.retain(|_, v| !v.is_null());
    m
}

/// transformers' `_alias_reasoning_fields`: the first of reasoning_content,
/// thinking, reasoning that is set becomes `{"thinking": r, **message,
/// "reasoning_content": r}`.
fn alias_reasoning(m: Map<String, Json>) -> Map<String, Json> {
    let reasoning = ["reasoning_content", "thinking", "reasoning"]
        .iter()
        .find_map(|k| m.get(*k).filter(|v| !v.is_null()).cloned());
    let Some(r) = reasoning else { return m };
    let mut out = Map::with_capacity(m.len() + 2);
    out.insert("thinking".into(), r.clone());
    for (k, v) in m {
        out.insert(k, v);
    }
    out.insert("reasoning_content".into(), r);
    out
}

fn template_error(e: Error) -> TokenizeError {
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(raised) = s.downcast_ref::<RaisedException>() {
            return TokenizeError::template(format!("chat template raised: {raised}"));
        }
        source = s.source();
    }
    TokenizeError::template(format!("chat template failed: {e}"))
}

/// The environment shared by all templates (see the module docs).
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_formatter(|out, _state, value| {
        match value.as_str().filter(|_| value.kind() == ValueKind::String) {
            Some(s) => out.write_str(s)?,
            None => out.write_str(&to_py_str(value))?,
        }
        Ok(())
    });
    env.set_unknown_method_callback(pystr::unknown_method);
    filters::register(&mut env);
    env.add_function("raise_exception", |msg: Value| -> Result<Value, Error> {
        let msg = to_py_str(&msg);
        Err(Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(RaisedException(msg)))
    });
    env.add_function("strftime_now", strftime_now);
    env
}

/// `strftime_now(format)`: the injected clock formatted like Python's strftime.
fn strftime_now(state: &State, format: &str) -> Result<Value, Error> {
    let now = state
        .lookup(NOW_KEY)
        .and_then(|v| v.as_i64())
        .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "strftime_now: no clock"))?;
    Ok(Value::from(strftime(format, &Tm::from_unix_ms(now))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, ctx: serde_json::Value) -> String {
        let t = ChatTemplate::compile(src).unwrap();
        let mut c = Map::new();
        if let serde_json::Value::Object(m) = ctx {
            c = m;
        }
        c.insert(NOW_KEY.into(), Json::from(0));
        let tpl = t.env.get_template(TEMPLATE_NAME).unwrap();
        tpl.render(Value::from_serialize(&c)).unwrap()
    }

    // Each expected string is jinja2 3.1.6's output in transformers' environment.
    #[test]
    fn printing_is_python_str() {
        let got = render(
            "{{ none }}|{{ true }}|{{ 1.0 }}|{{ 1e-05 }}|{{ x }}|{{ x|string }}|{{ u }}|{{ [1, 'a', none] }}",
            serde_json::json!({"x": {"a": [1, 2.5, null, false]}}),
        );
        assert_eq!(
            got,
            "None|True|1.0|1e-05|{'a': [1, 2.5, None, False]}|{'a': [1, 2.5, None, False]}||[1, 'a', None]"
        );
    }

    #[test]
    fn tojson_variants() {
        let ctx = serde_json::json!({"t": {"b": [1, 2], "a": "é<>"}});
        assert_eq!(render("{{ t|tojson }}", ctx.clone()), r#"{"b": [1, 2], "a": "é<>"}"#);
        assert_eq!(
            render("{{ t|tojson(indent=2) }}", ctx.clone()),
            "{\n  \"b\": [\n    1,\n    2\n  ],\n  \"a\": \"é<>\"\n}"
        );
        assert_eq!(
            render("{{ t|tojson(sort_keys=true) }}", ctx.clone()),
            r#"{"a": "é<>", "b": [1, 2]}"#
        );
        assert_eq!(
            render("{{ t|tojson(true) }}", ctx.clone()),
            r#"{"b": [1, 2], "a": "\u00e9<>"}"#
        );
        assert_eq!(
            render("{{ t|tojson(separators=(',', ':')) }}", ctx),
            r#"{"b":[1,2],"a":"é<>"}"#
        );
    }

    #[test]
    fn whitespace_control_matches_jinja2() {
        let src = "{% for m in ms %}\n  {% if m %}\n    <{{ m }}>\n  {% endif %}\n{% endfor %}\n";
        assert_eq!(render(src, serde_json::json!({"ms": ["a", "b"]})), "    <a>\n    <b>\n");
        let src = "  {#- c -#}  x\n{%- if true %} y {% endif -%}\n z\n";
        assert_eq!(render(src, serde_json::json!({})), "x y z");
    }

    #[test]
    fn python_string_methods_and_tests() {
        let ctx =
            serde_json::json!({"s": "\x1c a b \n", "t": "<think>r</think>\n\nans", "d": {"k": 1}});
        assert_eq!(
            render(
                "[{{ s.strip() }}]{{ s.split()|length }}{{ t.split('</think>')[-1].lstrip('\\n') }}",
                ctx.clone()
            ),
            "[a b]2ans"
        );
        assert_eq!(
            render(
                "{{ s is sequence }}{{ d is sequence }}{{ 1 is sequence }}{{ true is number }}{{ s|trim }}",
                ctx
            ),
            "TrueTrueFalseTruea b"
        );
    }

    #[test]
    fn generation_tags_render_their_body() {
        let src = "{% for m in ms %}\n  {%- generation -%}\n  <{{ m }}>\n  {%- endgeneration %}\n{% endfor %}";
        assert_eq!(render(src, serde_json::json!({"ms": ["a", "b"]})), "<a><b>");
        assert_eq!(
            strip_generation_tags("{%+generation%}x{% endgeneration -%}"),
            "{%+ if true %}x{% endif -%}"
        );
    }

    #[test]
    fn raise_exception_and_strftime() {
        let t = ChatTemplate::compile("{{ raise_exception('bad role ' ~ 1) }}").unwrap();
        let input = ChatInput {
            messages: vec![Map::from_iter([("role".to_string(), Json::from("user"))])],
            ..Default::default()
        };
        let e = t.apply(input, &[], 0).unwrap_err();
        assert_eq!(e.code(), "template_error");
        assert_eq!(e.message, "chat template raised: bad role 1");
        let t = ChatTemplate::compile("{{ strftime_now('%d %b %Y') }}").unwrap();
        let input = ChatInput {
            messages: vec![Map::from_iter([("role".to_string(), Json::from("user"))])],
            ..Default::default()
        };
        assert_eq!(t.apply(input, &[], 1_795_608_000_000).unwrap(), "25 Nov 2026");
    }
}
