//! A Hugging Face tokenizer: `tokenizer.json` through the `tokenizers` crate plus
//! what transformers 5 (what the goldens were made with) takes from next to it:
//! - `tokenizer_config.json`: `chat_template` (a string, or a list of
//!   `{name, template}`), the named special tokens (`bos_token`, `eos_token`,
//!   `unk_token`, `sep_token`, `pad_token`, `cls_token`, `mask_token`: strings or
//!   `{content: ...}` objects; templates see them by name), `added_tokens_decoder`,
//!   `additional_special_tokens`/`extra_special_tokens` (added to the tokenizer when
//!   tokenizer.json lacks them, as transformers does), `split_special_tokens`,
//!   `add_bos_token`/`add_eos_token` (recorded only: transformers 5 drops both when a
//!   tokenizer.json exists and keeps its post-processor, so they never change ids);
//! - `chat_template.jinja` and `additional_chat_templates/*.jinja`, which take
//!   priority over the config's template (transformers' loading order), and
//!   `chat_template.json` as a last resort.
//!
//! Encoding contract: `encode(text, add_special_tokens)` equals transformers'
//! `tokenizer.encode(text, add_special_tokens=...)`: added/special tokens typed in
//! the text are matched as such (unless `split_special_tokens`), no truncation, no
//! padding. Encoding runs on the calling thread: single-sequence encoding in the
//! `tokenizers` crate never touches its rayon pool (only the batch APIs do).

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tokenizers::{AddedToken, Tokenizer};

use super::chat::ChatTemplate;
use super::dynamo::Dialect;
use super::error::TokenizeError;
use super::fastbpe::FastBpe;
use super::segment_cache::SegmentCacheStats;

/// transformers' `SPECIAL_TOKENS_ATTRIBUTES`, in its order.
const SPECIAL_TOKEN_NAMES: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

/// A template, or why it does not compile (reported on each chat request).
type Compiled = Result<ChatTemplate, TokenizeError>;

/// The chat template(s) of a tokenizer.
pub enum ChatTemplates {
    None,
    Single(Box<Compiled>),
    /// Named templates (`default`, `tool_use`, ...), in file order.
    Named(Vec<(String, Compiled)>),
}

pub struct HfTokenizer {
    tokenizer: Tokenizer,
    /// The fast exact encoder when the tokenizer has the shape it supports.
    fast: Option<FastBpe>,
    /// `(name, content)` of the named special tokens that are set, for templates.
    special_tokens: Vec<(String, String)>,
    /// `add_bos_token` from tokenizer_config.json (informational, see module docs).
    pub add_bos_token: Option<bool>,
    templates: ChatTemplates,
    /// Whose prompt construction chat and completions bodies follow.
    pub dialect: Dialect,
}

fn read_json(path: &Path) -> Result<Json, TokenizeError> {
    let bytes = fs::read(path).map_err(|e| {
        TokenizeError::invalid_tokenizer(format!("cannot read {}: {e}", path.display()))
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        TokenizeError::invalid_tokenizer(format!("{} is not valid JSON: {e}", path.display()))
    })
}

/// A token given as a string or as an AddedToken object (`{"content": ...}`).
fn token_content(v: &Json) -> Option<&str> {
    match v {
        Json::String(s) => Some(s),
        Json::Object(m) => m.get("content").and_then(Json::as_str),
        _ => None,
    }
}

/// An AddedToken from its config form; a plain string is a special token.
fn added_token(v: &Json, special_default: bool) -> Option<AddedToken> {
    let content = token_content(v)?;
    let mut t = AddedToken::from(content.to_string(), special_default);
    if let Json::Object(m) = v {
        let flag = |k: &str, d: bool| m.get(k).and_then(Json::as_bool).unwrap_or(d);
        t = t
            .special(flag("special", special_default))
            .single_word(flag("single_word", false))
            .lstrip(flag("lstrip", false))
            .rstrip(flag("rstrip", false));
        let special = t.special;
        t = t.normalized(flag("normalized", !special));
    }
    Some(t)
}

impl HfTokenizer {
    /// Loads from a directory holding tokenizer.json (+ optional
    /// tokenizer_config.json and template files), or from a tokenizer.json path
    /// (config and template files are then read from the same directory).
    pub fn load(source: &str) -> Result<HfTokenizer, TokenizeError> {
        let path = PathBuf::from(source);
        let (dir, file) = if path.is_dir() {
            (path.clone(), path.join("tokenizer.json"))
        } else if path.is_file() {
            (path.parent().map(Path::to_path_buf).unwrap_or_default(), path.clone())
        } else {
            return Err(TokenizeError::not_found(format!("no such file or directory: {source}")));
        };
        if !file.is_file() {
            return Err(TokenizeError::not_found(format!("{} not found", file.display())));
        }
        let bytes = fs::read(&file).map_err(|e| {
            TokenizeError::invalid_tokenizer(format!("cannot read {}: {e}", file.display()))
        })?;
        let json: Json = serde_json::from_slice(&bytes).map_err(|e| {
            TokenizeError::invalid_tokenizer(format!("{} is not valid JSON: {e}", file.display()))
        })?;
        let mut tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| {
            TokenizeError::invalid_tokenizer(format!("{} is not a tokenizer: {e}", file.display()))
        })?;
        drop(bytes);
        // transformers' encode() turns both off unless asked for.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| TokenizeError::invalid_tokenizer(format!("{}: {e}", file.display())))?;

        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() { read_json(&config_path)? } else { Json::Null };
        let mut special_tokens = Vec::new();
        for name in SPECIAL_TOKEN_NAMES {
            if let Some(content) = config.get(name).and_then(token_content) {
                special_tokens.push((name.to_string(), content.to_string()));
            }
        }
        add_missing_tokens(&mut tokenizer, &config, &special_tokens);
        if let Some(split) = config.get("split_special_tokens").and_then(Json::as_bool) {
            tokenizer.set_encode_special_tokens(split);
        }
        let templates = load_templates(&dir, &config)?;
        let fast = FastBpe::build(&tokenizer, &json);
        Ok(HfTokenizer {
            tokenizer,
            fast,
            special_tokens,
            add_bos_token: config.get("add_bos_token").and_then(Json::as_bool),
            templates,
            dialect: Dialect::default(),
        })
    }

    /// Replaces the chat template (vLLM's `--chat-template`). A template that
    /// does not compile fails every chat request with `template_error`.
    pub fn set_chat_template(&mut self, source: &str) {
        self.templates = ChatTemplates::Single(Box::new(ChatTemplate::compile(source)));
    }

    /// The template transformers' `get_chat_template(None, tools)` picks: the only
    /// one, or `tool_use` when the request has tools and it exists, else `default`.
    pub fn chat_template(&self, has_tools: bool) -> Result<&ChatTemplate, TokenizeError> {
        let compiled = match &self.templates {
            ChatTemplates::Single(t) => t,
            ChatTemplates::Named(list) => {
                let find = |n: &str| list.iter().find(|(name, _)| name == n).map(|(_, t)| t);
                has_tools
                    .then(|| find("tool_use"))
                    .flatten()
                    .or_else(|| find("default"))
                    .ok_or_else(|| {
                        TokenizeError::template(
                            "This model has multiple chat templates with no default specified!",
                        )
                    })?
            }
            ChatTemplates::None => {
                return Err(TokenizeError::template(
                    "the tokenizer has no chat template (tokenizer_config.json chat_template or \
                     chat_template.jinja) and none was configured",
                ));
            }
        };
        compiled.as_ref().map_err(Clone::clone)
    }

    /// `(name, content)` of the named special tokens (template variables).
    pub fn special_tokens(&self) -> &[(String, String)] {
        &self.special_tokens
    }

    /// `tokenizer.encode(text, add_special_tokens=...)`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizeError> {
        match &self.fast {
            Some(fast) => Ok(fast.encode(text, add_special_tokens)),
            None => self.encode_reference(text, add_special_tokens),
        }
    }

    /// Whether [`encode`](Self::encode) takes the fast path (fastbpe.rs).
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// The fast path's segment cache lookups (none without the fast path).
    pub fn segment_cache_stats(&self) -> Option<SegmentCacheStats> {
        self.fast.as_ref().map(FastBpe::segment_cache_stats)
    }

    /// `encode` through the `tokenizers` crate only (the fast path's reference).
    pub fn encode_reference(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, TokenizeError> {
        let enc = self.tokenizer.encode_fast(text, add_special_tokens).map_err(|e| {
            TokenizeError::invalid_tokenizer(format!("the tokenizer cannot encode this text: {e}"))
        })?;
        Ok(enc.get_ids().to_vec())
    }
}

/// transformers adds the config's added tokens and named/extra special tokens that
/// tokenizer.json does not know as added tokens (same content => left alone).
fn add_missing_tokens(tokenizer: &mut Tokenizer, config: &Json, special: &[(String, String)]) {
    let known = |t: &Tokenizer, c: &str| t.get_added_vocabulary().get_vocab().contains_key(c);
    if let Some(decoder) = config.get("added_tokens_decoder").and_then(Json::as_object) {
        let mut entries: Vec<(u64, &Json)> =
            decoder.iter().filter_map(|(k, v)| Some((k.parse().ok()?, v))).collect();
        entries.sort_by_key(|(id, _)| *id);
        for (_, v) in entries {
            if let Some(t) = added_token(v, false)
                && !known(tokenizer, &t.content)
            {
                tokenizer.add_tokens(&[t]);
            }
        }
    }
    let mut extra: Vec<AddedToken> = special
        .iter()
        .map(|(name, content)| {
            config
                .get(name.as_str())
                .and_then(|v| added_token(v, true))
                .unwrap_or_else(|| AddedToken::from(content.clone(), true))
        })
        .collect();
    for key in ["additional_special_tokens", "extra_special_tokens"] {
        if let Some(list) = config.get(key).and_then(Json::as_array) {
            extra.extend(list.iter().filter_map(|v| added_token(v, true)));
        }
    }
    for mut t in extra {
        if !known(tokenizer, &t.content) {
            t.special = true;
            tokenizer.add_special_tokens(&[t]);
        }
    }
}

fn template_source(v: &Json) -> Result<Option<Vec<(String, String)>>, TokenizeError> {
    match v {
        Json::Null => Ok(None),
        Json::String(s) => Ok(Some(vec![("default".into(), s.clone())])),
        Json::Array(list) => {
            let mut out = Vec::new();
            for item in list {
                let name = item.get("name").and_then(Json::as_str);
                let template = item.get("template").and_then(Json::as_str);
                match (name, template) {
                    (Some(n), Some(t)) => out.push((n.to_string(), t.to_string())),
                    _ => {
                        return Err(TokenizeError::invalid_tokenizer(
                            "chat_template list entries must be {\"name\": ..., \"template\": ...}",
                        ));
                    }
                }
            }
            Ok(Some(out))
        }
        _ => Err(TokenizeError::invalid_tokenizer(
            "chat_template must be a string or a list of {name, template}",
        )),
    }
}

/// Template files first (chat_template.jinja = `default`, plus
/// additional_chat_templates/*.jinja), else the config's `chat_template`, else
/// chat_template.json.
fn load_templates(dir: &Path, config: &Json) -> Result<ChatTemplates, TokenizeError> {
    let read = |p: &Path| {
        fs::read_to_string(p).map_err(|e| {
            TokenizeError::invalid_tokenizer(format!("cannot read {}: {e}", p.display()))
        })
    };
    let mut named: Vec<(String, String)> = Vec::new();
    let main = dir.join("chat_template.jinja");
    if main.is_file() {
        named.push(("default".into(), read(&main)?));
    }
    let extra_dir = dir.join("additional_chat_templates");
    if let Ok(entries) = fs::read_dir(&extra_dir) {
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
            .collect();
        files.sort();
        for f in files {
            let name = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            named.push((name, read(&f)?));
        }
    }
    if named.is_empty()
        && let Some(list) = template_source(config.get("chat_template").unwrap_or(&Json::Null))?
    {
        named = list;
    }
    if named.is_empty() {
        let legacy = dir.join("chat_template.json");
        if legacy.is_file()
            && let Some(list) =
                template_source(read_json(&legacy)?.get("chat_template").unwrap_or(&Json::Null))?
        {
            named = list;
        }
    }
    if named.len() == 1 && named[0].0 == "default" {
        return Ok(ChatTemplates::Single(Box::new(ChatTemplate::compile(&named[0].1))));
    }
    if named.is_empty() {
        return Ok(ChatTemplates::None);
    }
    let named = named
        .into_iter()
        .map(|(name, src)| {
            let t = ChatTemplate::compile(&src).map_err(|e| {
                TokenizeError::template(format!("chat template {name:?}: {}", e.message))
            });
            (name, t)
        })
        .collect();
    Ok(ChatTemplates::Named(named))
}
