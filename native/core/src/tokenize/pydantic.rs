//! Step 1 of vLLM's request handling for `messages`: validation against the
//! union of the OpenAI SDK's message TypedDicts and vLLM's
//! `CustomChatCompletionMessageParam`, as pydantic-core (2.x, smart mode) does it
//! over `json.loads` output, inside vLLM's request model (`extra="allow"`, which
//! the TypedDicts inherit). The member that wins decides the output's key order
//! (its declared fields in schema order, then the other keys in input order) and
//! which fields are coerced; no key is dropped.
//!
//! Rules re-implemented (and checked against pydantic by the unit tests of
//! request.rs): lax mode (`str` only from strings, pydantic's lax `bool`); the
//! winner is the member with the most fields set, counting every TypedDict
//! validated on the way (so each eagerly validated tool call adds its fields),
//! ties to the earlier member; `Iterable[...]` fields are accepted if Python can
//! iterate them (lists, dict keys, string characters) and validated only after the
//! union chose its member, so a bad element there fails the request even when
//! another member would have taken it.

use serde_json::{Map, Value as Json};

use super::error::TokenizeError;

/// pydantic's lax `bool`.
pub fn lax_bool(v: &Json) -> Option<bool> {
    match v {
        Json::Bool(b) => Some(*b),
        Json::Number(n) => match n.as_f64() {
            Some(0.0) => Some(false),
            Some(1.0) => Some(true),
            _ => None,
        },
        Json::String(s) => match s.to_ascii_lowercase().as_str() {
            "0" | "off" | "f" | "false" | "n" | "no" => Some(false),
            "1" | "on" | "t" | "true" | "y" | "yes" => Some(true),
            _ => None,
        },
        _ => None,
    }
}

/// The subset of pydantic's type language the OpenAI message types use.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bool,
    /// `dict[str, object]`
    Dict,
    Lit(&'static [&'static str]),
    /// Accepts nothing from JSON (a Python object type, e.g. `PIL.Image`).
    Never,
    /// `int | float` (not a bool).
    Num,
    /// `dict[str, T]`
    DictOf(&'static Ty),
    Opt(&'static Ty),
    Union(&'static [Ty]),
    /// `list[T]`: validated eagerly.
    List(&'static Ty),
    /// `Iterable[T]`: accepted if iterable, elements validated only when the
    /// message is materialised (after the union picked its member).
    Iter(&'static Ty),
    Td(&'static Td),
}

/// A TypedDict: fields in declaration order (the order pydantic outputs).
struct Td {
    fields: &'static [Field],
}

struct Field {
    name: &'static str,
    ty: Ty,
    required: bool,
}

const fn req(name: &'static str, ty: Ty) -> Field {
    Field { name, ty, required: true }
}
const fn opt(name: &'static str, ty: Ty) -> Field {
    Field { name, ty, required: false }
}

// openai-python's chat types (the version in scripts/goldens/requirements.txt).
static CACHE_BREAKPOINT: Td =
    Td { fields: &[req("mode", Ty::Lit(&["explicit"])), opt("ttl", Ty::Lit(&["30m", "12h"]))] };
static TEXT_PART: Td = Td {
    fields: &[
        req("text", Ty::Str),
        req("type", Ty::Lit(&["text"])),
        opt("prompt_cache_breakpoint", Ty::Td(&CACHE_BREAKPOINT)),
    ],
};
static REFUSAL_PART: Td =
    Td { fields: &[req("refusal", Ty::Str), req("type", Ty::Lit(&["refusal"]))] };
static IMAGE_URL: Td = Td {
    fields: &[req("url", Ty::Str), opt("detail", Ty::Lit(&["auto", "low", "high", "original"]))],
};
static IMAGE_PART: Td = Td {
    fields: &[
        req("image_url", Ty::Td(&IMAGE_URL)),
        req("type", Ty::Lit(&["image_url"])),
        opt("prompt_cache_breakpoint", Ty::Td(&CACHE_BREAKPOINT)),
    ],
};
static INPUT_AUDIO: Td =
    Td { fields: &[req("data", Ty::Str), req("format", Ty::Lit(&["wav", "mp3"]))] };
static AUDIO_PART: Td = Td {
    fields: &[
        req("input_audio", Ty::Td(&INPUT_AUDIO)),
        req("type", Ty::Lit(&["input_audio"])),
        opt("prompt_cache_breakpoint", Ty::Td(&CACHE_BREAKPOINT)),
    ],
};
static FILE_FILE: Td =
    Td { fields: &[opt("file_data", Ty::Str), opt("file_id", Ty::Str), opt("filename", Ty::Str)] };
static FILE_PART: Td = Td {
    fields: &[
        req("file", Ty::Td(&FILE_FILE)),
        req("type", Ty::Lit(&["file"])),
        opt("prompt_cache_breakpoint", Ty::Td(&CACHE_BREAKPOINT)),
    ],
};
static USER_PART: Ty =
    Ty::Union(&[Ty::Td(&TEXT_PART), Ty::Td(&IMAGE_PART), Ty::Td(&AUDIO_PART), Ty::Td(&FILE_PART)]);
static ASSISTANT_PART: Ty = Ty::Union(&[Ty::Td(&TEXT_PART), Ty::Td(&REFUSAL_PART)]);
static FUNCTION: Td = Td { fields: &[req("arguments", Ty::Str), req("name", Ty::Str)] };
static FUNCTION_TOOL_CALL: Td = Td {
    fields: &[
        req("id", Ty::Str),
        req("function", Ty::Td(&FUNCTION)),
        req("type", Ty::Lit(&["function"])),
    ],
};
static CUSTOM: Td = Td { fields: &[req("input", Ty::Str), req("name", Ty::Str)] };
static CUSTOM_TOOL_CALL: Td = Td {
    fields: &[
        req("id", Ty::Str),
        req("custom", Ty::Td(&CUSTOM)),
        req("type", Ty::Lit(&["custom"])),
    ],
};
static AUDIO: Td = Td { fields: &[req("id", Ty::Str)] };
static FUNCTION_DEFINITION: Td = Td {
    fields: &[
        req("name", Ty::Str),
        opt("description", Ty::Str),
        opt("parameters", Ty::Dict),
        opt("strict", Ty::Opt(&Ty::Bool)),
    ],
};
static FUNCTION_TOOL: Td = Td {
    fields: &[req("function", Ty::Td(&FUNCTION_DEFINITION)), req("type", Ty::Lit(&["function"]))],
};

static DEVELOPER: Td = Td {
    fields: &[
        req("content", Ty::Union(&[Ty::Str, Ty::Iter(&Ty::Td(&TEXT_PART))])),
        req("role", Ty::Lit(&["developer"])),
        opt("name", Ty::Str),
    ],
};
static SYSTEM: Td = Td {
    fields: &[
        req("content", Ty::Union(&[Ty::Str, Ty::Iter(&Ty::Td(&TEXT_PART))])),
        req("role", Ty::Lit(&["system"])),
        opt("name", Ty::Str),
    ],
};
static USER: Td = Td {
    fields: &[
        req("content", Ty::Union(&[Ty::Str, Ty::Iter(&USER_PART)])),
        req("role", Ty::Lit(&["user"])),
        opt("name", Ty::Str),
    ],
};
static ASSISTANT: Td = Td {
    fields: &[
        req("role", Ty::Lit(&["assistant"])),
        opt("audio", Ty::Opt(&Ty::Td(&AUDIO))),
        opt("content", Ty::Opt(&Ty::Union(&[Ty::Str, Ty::Iter(&ASSISTANT_PART)]))),
        opt("function_call", Ty::Opt(&Ty::Td(&FUNCTION))),
        opt("name", Ty::Str),
        opt("refusal", Ty::Opt(&Ty::Str)),
        opt(
            "tool_calls",
            Ty::Iter(&Ty::Union(&[Ty::Td(&FUNCTION_TOOL_CALL), Ty::Td(&CUSTOM_TOOL_CALL)])),
        ),
    ],
};
static TOOL: Td = Td {
    fields: &[
        req("content", Ty::Union(&[Ty::Str, Ty::Iter(&Ty::Td(&TEXT_PART))])),
        req("role", Ty::Lit(&["tool"])),
        req("tool_call_id", Ty::Str),
    ],
};
static FUNCTION_MESSAGE: Td = Td {
    fields: &[
        req("content", Ty::Opt(&Ty::Str)),
        req("name", Ty::Str),
        req("role", Ty::Lit(&["function"])),
    ],
};
// vLLM's content parts (vllm/renderers/chat_utils/types.py, 0.33.0).
static URL: Td = Td { fields: &[req("url", Ty::Str)] };
static AUDIO_URL_PART: Td =
    Td { fields: &[req("audio_url", Ty::Td(&URL)), req("type", Ty::Lit(&["audio_url"]))] };
static VIDEO_URL_PART: Td =
    Td { fields: &[req("video_url", Ty::Td(&URL)), req("type", Ty::Lit(&["video_url"]))] };
static OPT_STR: Ty = Ty::Opt(&Ty::Str);
static PIL_PART: Td = Td { fields: &[opt("image_pil", Ty::Opt(&Ty::Never)), opt("uuid", OPT_STR)] };
static SIMPLE_IMAGE_PART: Td = Td { fields: &[opt("image_url", OPT_STR), opt("uuid", OPT_STR)] };
/// `str | dict[str, str | list[int | float]] | None`
static EMBEDS: Ty =
    Ty::Opt(&Ty::Union(&[Ty::Str, Ty::DictOf(&Ty::Union(&[Ty::Str, Ty::List(&Ty::Num)]))]));
static IMAGE_EMBEDS_PART: Td = Td {
    fields: &[
        opt("image_embeds", EMBEDS),
        req("type", Ty::Lit(&["image_embeds"])),
        opt("uuid", OPT_STR),
    ],
};
static AUDIO_EMBEDS_PART: Td = Td {
    fields: &[
        opt("audio_embeds", EMBEDS),
        req("type", Ty::Lit(&["audio_embeds"])),
        opt("uuid", OPT_STR),
    ],
};
static VIDEO_EMBEDS_PART: Td = Td {
    fields: &[
        opt("video_embeds", EMBEDS),
        opt("audio_embeds", EMBEDS),
        req("type", Ty::Lit(&["video_embeds"])),
        opt("uuid", OPT_STR),
    ],
};
static PROMPT_EMBEDS_PART: Td =
    Td { fields: &[req("data", Ty::Str), req("type", Ty::Lit(&["prompt_embeds"]))] };
static SIMPLE_AUDIO_PART: Td = Td { fields: &[opt("audio_url", OPT_STR)] };
static SIMPLE_VIDEO_PART: Td = Td { fields: &[opt("video_url", OPT_STR), opt("uuid", OPT_STR)] };
static TOOL_REFERENCE_PART: Td =
    Td { fields: &[opt("name", Ty::Str), opt("type", Ty::Lit(&["tool_reference"]))] };
static THINK_PART: Td = Td {
    fields: &[
        req("thinking", Ty::Str),
        opt("closed", Ty::Bool),
        req("type", Ty::Lit(&["thinking"])),
    ],
};
/// vLLM's `ChatCompletionContentPartParam`, in its union order.
static CUSTOM_PART: Ty = Ty::Union(&[
    Ty::Td(&TEXT_PART),
    Ty::Td(&IMAGE_PART),
    Ty::Td(&AUDIO_PART),
    Ty::Td(&FILE_PART),
    Ty::Td(&AUDIO_URL_PART),
    Ty::Td(&VIDEO_URL_PART),
    Ty::Td(&REFUSAL_PART),
    Ty::Td(&PIL_PART),
    Ty::Td(&SIMPLE_IMAGE_PART),
    Ty::Td(&IMAGE_EMBEDS_PART),
    Ty::Td(&AUDIO_EMBEDS_PART),
    Ty::Td(&VIDEO_EMBEDS_PART),
    Ty::Td(&PROMPT_EMBEDS_PART),
    Ty::Td(&SIMPLE_AUDIO_PART),
    Ty::Td(&SIMPLE_VIDEO_PART),
    Ty::Td(&TOOL_REFERENCE_PART),
    Ty::Str,
    Ty::Td(&THINK_PART),
]);
/// vLLM's `CustomChatCompletionMessageParam` (any role).
static CUSTOM_MESSAGE: Td = Td {
    fields: &[
        req("role", Ty::Str),
        opt("content", Ty::Union(&[Ty::Str, Ty::List(&CUSTOM_PART)])),
        opt("name", Ty::Str),
        opt("tool_call_id", OPT_STR),
        opt("tool_calls", Ty::Opt(&Ty::List(&Ty::Td(&FUNCTION_TOOL_CALL)))),
        opt("reasoning", Ty::Opt(&Ty::Union(&[Ty::Str, Ty::Td(&PROMPT_EMBEDS_PART)]))),
        opt("tools", Ty::Opt(&Ty::List(&Ty::Td(&FUNCTION_TOOL)))),
        opt("task", OPT_STR),
    ],
};
/// The union's members, in pydantic's order (ties go to the earlier one).
static MESSAGE_MEMBERS: [&Td; 7] =
    [&DEVELOPER, &SYSTEM, &USER, &ASSISTANT, &TOOL, &FUNCTION_MESSAGE, &CUSTOM_MESSAGE];

/// A validated value, borrowing from the input whatever validation keeps
/// unchanged: the union tries up to seven members per message, and only the
/// winner is turned into JSON (`into_json`), so losing members copy nothing.
enum Out<'a> {
    /// The input value itself.
    Same(&'a Json),
    /// A value validation made (a lax bool, a null, an iterated string).
    Made(Json),
    Array(Vec<Out<'a>>),
    /// A TypedDict's fields in declaration order, then the keys it does not
    /// declare in input order (`extra="allow"`); or a `dict[str, T]`'s items.
    Object(Vec<(&'a str, Out<'a>)>),
}

impl Out<'_> {
    fn into_json(self) -> Json {
        match self {
            Out::Same(v) => v.clone(),
            Out::Made(v) => v,
            Out::Array(items) => Json::Array(items.into_iter().map(Out::into_json).collect()),
            Out::Object(fields) => Json::Object(object_of(fields)),
        }
    }
}

fn object_of(fields: Vec<(&str, Out<'_>)>) -> Map<String, Json> {
    let mut m = Map::with_capacity(fields.len());
    for (k, v) in fields {
        m.insert(k.to_string(), v.into_json());
    }
    m
}

/// A validated value and pydantic's `fields_set` count for it: the fields set in
/// every TypedDict validated on the way, nested ones included (lazily validated
/// `Iterable` elements count nothing).
type Scored<'a> = (Out<'a>, usize);

/// One element of a Python iteration over a JSON value.
enum Item<'a> {
    /// A list's item.
    Of(&'a Json),
    /// A dict's key or a string's character.
    Made(Json),
}

/// Iterating a JSON value as Python does: a list's items, a dict's keys, a
/// string's characters.
fn py_iter(v: &Json) -> Option<Vec<Item<'_>>> {
    match v {
        Json::Array(a) => Some(a.iter().map(Item::Of).collect()),
        Json::Object(m) => Some(m.keys().map(|k| Item::Made(Json::String(k.clone()))).collect()),
        Json::String(s) => {
            Some(s.chars().map(|c| Item::Made(Json::String(c.to_string()))).collect())
        }
        _ => None,
    }
}

/// `validate` over one iterated element (a made one is owned by the result).
fn validate_item<'a>(ty: &Ty, item: &Item<'a>) -> Option<Scored<'a>> {
    match item {
        Item::Of(v) => validate(ty, v),
        Item::Made(v) => validate(ty, v).map(|(x, s)| (Out::Made(x.into_json()), s)),
    }
}

/// Eager validation (pydantic lax mode over `json.loads` output).
fn validate<'a>(ty: &Ty, v: &'a Json) -> Option<Scored<'a>> {
    match ty {
        Ty::Str => v.is_string().then_some((Out::Same(v), 0)),
        Ty::Bool => lax_bool(v).map(|b| (Out::Made(Json::Bool(b)), 0)),
        Ty::Dict => v.is_object().then_some((Out::Same(v), 0)),
        Ty::Lit(options) => v.as_str().filter(|s| options.contains(s)).map(|_| (Out::Same(v), 0)),
        Ty::Never => None,
        Ty::Num => v.is_number().then_some((Out::Same(v), 0)),
        Ty::DictOf(inner) => {
            let m = v.as_object()?;
            let mut out = Vec::with_capacity(m.len());
            let mut score = 0;
            for (k, x) in m {
                let (x, s) = validate(inner, x)?;
                out.push((k.as_str(), x));
                score += s;
            }
            Some((Out::Object(out), score))
        }
        Ty::Opt(inner) => {
            if v.is_null() {
                Some((Out::Made(Json::Null), 0))
            } else {
                validate(inner, v)
            }
        }
        Ty::Union(members) => {
            // smart mode: an exact non-TypedDict match wins at once; among
            // TypedDicts the most fields set wins, ties go to the first.
            let mut best: Option<Scored<'a>> = None;
            for m in members.iter() {
                if let Some(r) = validate(m, v) {
                    if !matches!(m, Ty::Td(_)) {
                        return Some(r);
                    }
                    if best.as_ref().is_none_or(|b| r.1 > b.1) {
                        best = Some(r);
                    }
                }
            }
            best
        }
        Ty::List(inner) => {
            let items = v.as_array()?;
            let mut out = Vec::with_capacity(items.len());
            let mut score = 0;
            for item in items {
                let (x, s) = validate(inner, item)?;
                out.push(x);
                score += s;
            }
            Some((Out::Array(out), score))
        }
        Ty::Iter(inner) => {
            let mut out = Vec::new();
            let mut score = 0;
            for item in py_iter(v)? {
                let (x, s) = validate_item(inner, &item)?;
                out.push(x);
                score += s;
            }
            Some((Out::Array(out), score))
        }
        Ty::Td(td) => validate_td(td, v.as_object()?, false).map(|c| (Out::Object(c.out), c.score)),
    }
}

/// A top-level `Iterable` field still to validate: (field, element type, items).
type Lazy<'a> = (&'static str, &'static Ty, Vec<Item<'a>>);

/// An `Iterable` accepted for now: its element type and items.
type Deferred<'a> = (&'static Ty, Vec<Item<'a>>);

/// A union member that accepted a message.
struct Candidate<'a> {
    out: Vec<(&'a str, Out<'a>)>,
    score: usize,
    /// Top-level `Iterable` fields still to validate; `out` holds a null for each.
    lazy: Vec<Lazy<'a>>,
}

/// A field value at the top of a message: `Iterable`s (also inside
/// `Optional`/unions) are only checked for iterability.
fn validate_top<'a>(ty: &'static Ty, v: &'a Json) -> Option<Result<Scored<'a>, Deferred<'a>>> {
    match ty {
        Ty::Iter(inner) => py_iter(v).map(|items| Err((*inner, items))),
        Ty::Opt(inner) if !v.is_null() => validate_top(inner, v),
        Ty::Union(members) => members.iter().find_map(|m| validate_top(m, v)),
        _ => validate(ty, v).map(Ok),
    }
}

fn validate_td<'a>(
    td: &'static Td,
    m: &'a Map<String, Json>,
    lazy_top: bool,
) -> Option<Candidate<'a>> {
    let mut c = Candidate { out: Vec::with_capacity(td.fields.len()), score: 0, lazy: Vec::new() };
    for f in td.fields {
        let Some(v) = m.get(f.name) else {
            if f.required {
                return None;
            }
            continue;
        };
        c.score += 1;
        let r = if lazy_top { validate_top(&f.ty, v)? } else { Ok(validate(&f.ty, v)?) };
        match r {
            Ok((x, s)) => {
                c.out.push((f.name, x));
                c.score += s;
            }
            Err((inner, items)) => {
                c.out.push((f.name, Out::Made(Json::Null)));
                c.lazy.push((f.name, inner, items));
            }
        }
    }
    // vLLM's request model has `extra="allow"`, which its TypedDicts inherit: the
    // keys a TypedDict does not declare are kept, unvalidated and not counted.
    for (k, v) in m {
        if !td.fields.iter().any(|f| f.name == k) {
            c.out.push((k.as_str(), Out::Same(v)));
        }
    }
    Some(c)
}

/// Step 1 for one message: the pydantic smart union picks the member with the
/// most fields set (nested TypedDicts included, ties to the earlier member), whose
/// output keeps only its own keys; then its lazily accepted `Iterable` fields are
/// materialised, and a bad element there fails the request even if another member
/// would have taken the message.
pub fn validate_message(i: usize, msg: &Json) -> Result<Map<String, Json>, TokenizeError> {
    let Json::Object(m) = msg else {
        return Err(TokenizeError::invalid_request(format!("messages[{i}] must be an object")));
    };
    // vLLM renames reasoning_content to reasoning first (no member has a
    // `reasoning_content` field, so only the rename can change the outcome).
    let renamed;
    let msg = match m.get("reasoning_content") {
        Some(rc) if !rc.is_null() && m.get("reasoning").is_none_or(Json::is_null) => {
            let mut r = m.clone();
            r.shift_remove("reasoning_content");
            r.insert("reasoning".into(), rc.clone());
            renamed = r;
            &renamed
        }
        _ => m,
    };
    let mut best: Option<Candidate<'_>> = None;
    for td in MESSAGE_MEMBERS {
        if let Some(c) = validate_td(td, msg, true)
            && best.as_ref().is_none_or(|b| c.score > b.score)
        {
            best = Some(c);
        }
    }
    let Some(mut c) = best else { return Err(no_member_error(i, msg)) };
    for (field, inner, items) in std::mem::take(&mut c.lazy) {
        let mut out = Vec::with_capacity(items.len());
        for (j, item) in items.iter().enumerate() {
            match validate_item(inner, item) {
                Some((x, _)) => out.push(x),
                None => {
                    let what = if field == "tool_calls" { "tool call" } else { "content part" };
                    return Err(TokenizeError::invalid_request(format!(
                        "messages[{i}].{field}[{j}]: not a valid {what} for a \"{}\" message",
                        msg.get("role").and_then(Json::as_str).unwrap_or_default()
                    )));
                }
            }
        }
        if let Some(slot) = c.out.iter_mut().find(|(k, _)| *k == field) {
            slot.1 = Out::Array(out);
        }
    }
    Ok(object_of(c.out))
}

/// The most likely reason no member accepted message `i`.
fn no_member_error(i: usize, msg: &Map<String, Json>) -> TokenizeError {
    let role = msg.get("role");
    let detail = if !role.is_some_and(Json::is_string) {
        "role must be a string".to_string()
    } else if msg.get("name").is_some_and(|n| !n.is_string()) {
        "name must be a string (null is not accepted)".to_string()
    } else if let Some(c) = msg.get("content").filter(|c| !c.is_string() && !c.is_array()) {
        format!("content must be a string or a list of parts, not {c}")
    } else {
        "matches none of the message types vLLM accepts".to_string()
    };
    TokenizeError::invalid_request(format!("messages[{i}]: {detail}"))
}
