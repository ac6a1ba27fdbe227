//! Prompt tokenization: the token ids vLLM's OpenAI server computes for a request
//! body, bit for bit (checked against test/fixtures/chat/goldens, made with HF
//! transformers 5.24 and scripts/goldens/make_goldens.py's emulation of vLLM).
//!
//! Pipeline for a chat body (`render_chat` / `tokenize_request`):
//! parse (request.rs, key order kept) -> vLLM's validation and message parsing
//! (request.rs) -> template choice (hf.rs) -> kwargs filter + transformers'
//! `apply_chat_template` (chat.rs, minijinja) -> `encode(rendered,
//! add_special_tokens)` (hf.rs; false by default for chat; byte-level BPE
//! tokenizers take the exact fast path of fastbpe.rs). A completions body's
//! `prompt` is encoded with `add_special_tokens` (default true), or passed through
//! when it is token ids. tiktoken encodings (tiktoken.rs) render chats in kv-epp's
//! own plain format and take the exact fast path of fasttiktoken.rs.
//!
//! Contracts: no call panics on any input (malformed JSON, hostile request
//! values, odd Unicode); errors carry stable codes (error.rs); `now_ms` is the
//! clock `strftime_now` sees (templates that print today's date); everything runs
//! on the calling thread (no rayon), and a `Tokenizer` is `Send + Sync`.

pub mod chat;
pub mod content_format;
pub mod dynamo;
pub mod error;
pub mod fastbpe;
pub mod fasttiktoken;
pub mod filters;
pub mod hf;
mod key;
mod piece_cache;
mod prefetch;
pub mod pydantic;
pub mod pyfmt;
pub mod pystr;
pub mod request;
pub mod segment_cache;
pub mod strftime;
pub mod tiktoken;

pub use dynamo::Dialect;
pub use error::{TokenizeError, TokenizeErrorCode};
pub use hf::HfTokenizer;
pub use tiktoken::TiktokenTokenizer;

use request::Prompt;

/// Which OpenAI API a body belongs to (the request path decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    Chat,
    Completions,
}

/// Shared across threads by the napi registry.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Tokenizer>()
};

pub enum Tokenizer {
    /// tokenizer.json (+ tokenizer_config.json, chat templates).
    Hf(Box<HfTokenizer>),
    /// A built-in tiktoken encoding.
    Tiktoken(TiktokenTokenizer),
}

impl Tokenizer {
    /// Segment cache lookups of this tokenizer (zeros where it has none:
    /// HF tokenizers off the fast path; a tiktoken encoding's are shared by
    /// all its tokenizers).
    pub fn segment_cache_stats(&self) -> segment_cache::SegmentCacheStats {
        match self {
            Tokenizer::Hf(t) => t.segment_cache_stats().unwrap_or_default(),
            Tokenizer::Tiktoken(t) => t.segment_cache_stats(),
        }
    }

    /// `o200k_base` / `cl100k_base` => tiktoken; an existing path => HF (a
    /// directory with tokenizer.json, or the tokenizer.json file); anything else
    /// => `tokenizer_not_found`.
    pub fn load(source: &str) -> Result<Tokenizer, TokenizeError> {
        if let Some(t) = TiktokenTokenizer::load(source) {
            return t.map(Tokenizer::Tiktoken);
        }
        if std::path::Path::new(source).exists() {
            return HfTokenizer::load(source).map(|t| Tokenizer::Hf(Box::new(t)));
        }
        Err(TokenizeError::not_found(format!(
            "{source:?} is neither a tokenizer directory or tokenizer.json path nor one of {}",
            tiktoken::ENCODINGS.join(", ")
        )))
    }

    /// `hf` or `tiktoken`.
    pub fn kind(&self) -> &'static str {
        match self {
            Tokenizer::Hf(_) => "hf",
            Tokenizer::Tiktoken(_) => "tiktoken",
        }
    }

    /// Replaces the chat template (vLLM's `--chat-template`); HF tokenizers only.
    /// A template that does not compile fails every chat request (`template_error`).
    pub fn set_chat_template(&mut self, source: &str) -> Result<(), TokenizeError> {
        match self {
            Tokenizer::Hf(t) => {
                t.set_chat_template(source);
                Ok(())
            }
            Tokenizer::Tiktoken(t) => Err(TokenizeError::invalid_tokenizer(format!(
                "{} has no chat template support",
                t.name()
            ))),
        }
    }

    /// Whose prompt construction chat and completions bodies follow
    /// (dynamo.rs). tiktoken encodings keep kv-epp's own plain chat format
    /// and ignore it.
    pub fn set_dialect(&mut self, dialect: Dialect) {
        if let Tokenizer::Hf(t) = self {
            t.dialect = dialect;
        }
    }

    fn dialect(&self) -> Dialect {
        match self {
            Tokenizer::Hf(t) => t.dialect,
            Tokenizer::Tiktoken(_) => Dialect::Vllm,
        }
    }

    /// Plain encode of `text`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizeError> {
        match self {
            Tokenizer::Hf(t) => t.encode(text, add_special_tokens),
            Tokenizer::Tiktoken(t) => Ok(t.encode(text)),
        }
    }

    /// The rendered chat prompt of a chat/completions body.
    pub fn render_chat(&self, body: &[u8], now_ms: i64) -> Result<String, TokenizeError> {
        let body = request::parse_body(body)?;
        match self {
            Tokenizer::Hf(t) if t.dialect == Dialect::Dynamo => {
                Self::render_dynamo(t, &body, now_ms)
            }
            _ => self.render(request::chat_request(&body)?, now_ms),
        }
    }

    /// The Dynamo dialect's chat prompt (dynamo.rs): the body rewritten as
    /// Dynamo's renderer sees it, the template picked by the tools left, its
    /// traits deciding the arguments and reasoning, then the vLLM-compatible
    /// render.
    fn render_dynamo(
        t: &HfTokenizer,
        body: &serde_json::Map<String, serde_json::Value>,
        now_ms: i64,
    ) -> Result<String, TokenizeError> {
        let mut body = dynamo::chat_body(body)?;
        let has_tools = body.get("tools").is_some_and(|v| !v.is_null());
        let template = t.chat_template(has_tools)?;
        let traits = template.dynamo_traits(t.special_tokens());
        // oai.rs `render`'s order: system messages, contents, arguments, reasoning.
        if dynamo::needs_system_normalization(&body, &traits) {
            dynamo::normalize_system_messages(body.to_mut(), &traits);
        }
        if !traits.content_arrays && dynamo::has_text_parts(&body) {
            dynamo::join_text_parts(body.to_mut());
        }
        if !traits.reads_reasoning && dynamo::has_reasoning(&body) {
            // Into part lists the reasoning goes as a part of its own.
            if traits.content_arrays {
                dynamo::wrap_string_contents(body.to_mut());
            }
            dynamo::inject_reasoning(body.to_mut());
        } else if traits.reasoning_string && dynamo::has_reasoning_segments(&body) {
            dynamo::join_reasoning_segments(body.to_mut());
        }
        let opts = request::ChatOptions { dynamo: true, raw_arguments: traits.arguments_string };
        let mut req = request::chat_request_with(&body, opts)?;
        req.content_arrays = Some(traits.content_arrays);
        if let Some(tools) = req.tools.as_mut() {
            dynamo::fix_tools(tools);
        }
        let input = request::chat_input(req, template)?;
        template.apply(input, t.special_tokens(), now_ms)
    }

    fn render(&self, req: request::ChatRequest, now_ms: i64) -> Result<String, TokenizeError> {
        match self {
            Tokenizer::Hf(t) => {
                let template = t.chat_template(req.tools.is_some())?;
                let input = request::chat_input(req, template)?;
                template.apply(input, t.special_tokens(), now_ms)
            }
            Tokenizer::Tiktoken(t) => t.render_chat(&req),
        }
    }

    /// The prompt token ids of a request body.
    pub fn tokenize_request(
        &self,
        body: &[u8],
        api: ApiKind,
        now_ms: i64,
    ) -> Result<Vec<u32>, TokenizeError> {
        self.tokenize_parsed(&request::parse_body(body)?, api, now_ms)
    }

    /// [`Self::tokenize_request`] for a body already parsed by [`request::parse_body`].
    pub fn tokenize_parsed(
        &self,
        body: &serde_json::Map<String, serde_json::Value>,
        api: ApiKind,
        now_ms: i64,
    ) -> Result<Vec<u32>, TokenizeError> {
        if let (Tokenizer::Hf(t), Dialect::Dynamo) = (self, self.dialect()) {
            // Dynamo encodes without special tokens, after removing NULs.
            let text = match api {
                ApiKind::Chat => Self::render_dynamo(t, body, now_ms)?,
                ApiKind::Completions => match request::completion_request(body)?.prompt {
                    Prompt::Ids(ids) => return Ok(ids),
                    Prompt::Text(text) => text,
                },
            };
            return t.encode(&dynamo::strip_nul(&text), false);
        }
        match api {
            ApiKind::Chat => {
                let req = request::chat_request(body)?;
                let add_special_tokens = req.add_special_tokens;
                let rendered = self.render(req, now_ms)?;
                match self {
                    // Whole messages from the segment cache (HF encoders cut at added tokens).
                    Tokenizer::Tiktoken(t) => Ok(t.encode_chat(&rendered)),
                    Tokenizer::Hf(_) => self.encode(&rendered, add_special_tokens),
                }
            }
            ApiKind::Completions => {
                let req = request::completion_request(body)?;
                match req.prompt {
                    Prompt::Ids(ids) => Ok(ids),
                    Prompt::Text(text) => self.encode(&text, req.add_special_tokens),
                }
            }
        }
    }
}
