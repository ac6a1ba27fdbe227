//! OpenAI's tiktoken encodings `o200k_base` and `cl100k_base` (vocabularies
//! embedded in the `tiktoken-rs` crate; built once per process and shared).
//! Encoding takes the exact fast path of fasttiktoken.rs, tiktoken-rs itself
//! only if that could not be built.
//!
//! Encoding = tiktoken's `encode_ordinary`: text that looks like a special token
//! (`<|endoftext|>`) is encoded as ordinary text, which is what
//! test/fixtures/chat/goldens/tiktoken/*.json record, and `add_special_tokens` has
//! nothing to add (these encodings have no BOS/EOS convention).
//!
//! Chat rendering: tiktoken has no chat template, so chat bodies are rendered in
//! kv-epp's own format, the one src/tokenize/plain-chat.ts defines for both
//! backends. It is EPP-INTERNAL: no model server renders it; all that depends on it
//! is routing consistency (the same conversation prefix gives the same token
//! prefix, in both backends). After vLLM's request normalisation (request.rs):
//!
//! ```text
//! for each message:          "<|im_start|>" + role + "\n" + content + "<|im_end|>\n"
//! if add_generation_prompt:  "<|im_start|>assistant\n"
//! ```
//! - `continue_final_message`: the last message is written without "<|im_end|>\n";
//! - tools, documents and chat_template_kwargs are ignored;
//! - an empty conversation, and `continue_final_message` with
//!   `add_generation_prompt` (also at its default true), are `template_error`s;
//! - the text is encoded as ordinary text ("<|im_start|>" is not a special token).

use std::sync::{Arc, OnceLock};

use serde_json::Value as Json;
use tiktoken_rs::CoreBPE;

use super::error::TokenizeError;
use super::fasttiktoken::FastTiktoken;
use super::request::ChatRequest;
use super::segment_cache::{SegmentCache, SegmentCacheStats};

/// The encodings this module knows.
pub const ENCODINGS: [&str; 2] = ["o200k_base", "cl100k_base"];

/// One encoding: tiktoken-rs's `CoreBPE` (vocabulary source and reference) and
/// the exact fast encoder built from it (fasttiktoken.rs; `None` = use `bpe`).
struct Encoding {
    bpe: CoreBPE,
    fast: Option<FastTiktoken>,
    /// Ids of whole messages of rendered chat prompts (see `encode_chat`).
    segments: SegmentCache,
}

pub struct TiktokenTokenizer {
    name: &'static str,
    enc: Arc<Encoding>,
}

type Shared = OnceLock<Result<Arc<Encoding>, String>>;
type Build = fn() -> Result<CoreBPE, String>;
static O200K: Shared = OnceLock::new();
static CL100K: Shared = OnceLock::new();

impl TiktokenTokenizer {
    /// The encoding called `name`, or `None` if there is no such built-in encoding.
    pub fn load(name: &str) -> Option<Result<TiktokenTokenizer, TokenizeError>> {
        let (name, cell, build): (&'static str, &Shared, Build) = match name {
            "o200k_base" => {
                ("o200k_base", &O200K, || tiktoken_rs::o200k_base().map_err(|e| e.to_string()))
            }
            "cl100k_base" => {
                ("cl100k_base", &CL100K, || tiktoken_rs::cl100k_base().map_err(|e| e.to_string()))
            }
            _ => return None,
        };
        let enc = cell.get_or_init(|| {
            build().map(|bpe| {
                let fast = FastTiktoken::build(name, &bpe);
                Arc::new(Encoding { bpe, fast, segments: SegmentCache::new() })
            })
        });
        Some(match enc {
            Ok(enc) => Ok(TiktokenTokenizer { name, enc: enc.clone() }),
            Err(e) => Err(TokenizeError::invalid_tokenizer(format!("{name}: {e}"))),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `encode_ordinary(text)`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match &self.enc.fast {
            Some(fast) => fast.encode(text),
            None => self.encode_reference(text),
        }
    }

    /// [`encode`](Self::encode) of a prompt [`render_chat`](Self::render_chat)
    /// made, with each whole message (`"<|im_start|>" … "<|im_end|>\n"`, at
    /// least `MIN_SEGMENT_BYTES`) taken from the segment cache when seen before:
    /// a system prompt, the earlier turns of a conversation.
    ///
    /// Exact: every cut falls right after an `"<|im_end|>\n"` that a `'<'`
    /// follows (or that ends the prompt), which is a boundary of both
    /// encodings' split. The piece holding that `'\n'` is the punctuation run
    /// `"|>"` with the line breaks after it (`[^\s\p{L}\p{N}]+[\r\n/]*` in
    /// o200k_base, `[^\s\p{L}\p{N}]++[\r\n]*+` in cl100k_base: no other branch
    /// matches at `'|'`), a `'<'` ends it, and no branch looks behind. (cl100k's
    /// end-of-text `\s++$` cannot start inside that piece.) BPE merges never
    /// cross a split boundary, so the ids of the parts are the ids of the whole;
    /// tests/tokenize_tiktoken_segments.rs checks this on random conversations.
    pub fn encode_chat(&self, prompt: &str) -> Vec<u32> {
        const END: &[u8] = b"<|im_end|>\n";
        let bytes = prompt.as_bytes();
        let mut out = Vec::with_capacity(prompt.len() / 4 + 4);
        let mut start = 0;
        for at in memchr::memmem::find_iter(bytes, END) {
            let cut = at + END.len();
            if cut < bytes.len() && bytes[cut] != b'<' {
                continue;
            }
            // ASCII on both sides of the cut: char boundaries.
            self.encode_segment(prompt.get(start..cut).unwrap_or_default(), &mut out);
            start = cut;
        }
        if start < bytes.len() {
            self.encode_segment(prompt.get(start..).unwrap_or_default(), &mut out);
        }
        out
    }

    /// Appends `encode(segment)`, from the segment cache when it applies.
    fn encode_segment(&self, segment: &str, out: &mut Vec<u32>) {
        let cache = &self.enc.segments;
        cache.sync();
        let bytes = segment.as_bytes();
        if !SegmentCache::applies(bytes) {
            out.extend_from_slice(&self.encode(segment));
            return;
        }
        let key = SegmentCache::key(bytes);
        if cache.get_into(key, bytes, out) {
            return;
        }
        let ids = self.encode(segment);
        cache.insert(key, bytes, &ids);
        out.extend_from_slice(&ids);
    }

    /// Segment cache lookups of this encoding (all its tokenizers) since the process started.
    pub fn segment_cache_stats(&self) -> SegmentCacheStats {
        self.enc.segments.stats()
    }

    /// Whether [`encode`](Self::encode) takes the fast path (fasttiktoken.rs).
    pub fn is_fast(&self) -> bool {
        self.enc.fast.is_some()
    }

    /// `encode` through tiktoken-rs only (the fast path's reference).
    pub fn encode_reference(&self, text: &str) -> Vec<u32> {
        self.enc.bpe.encode_ordinary(text)
    }

    /// The fast path's split pieces of `text` (`None` without a fast path).
    pub fn split<'a>(&self, text: &'a str) -> Option<Vec<&'a str>> {
        self.enc.fast.as_ref().map(|f| f.split(text))
    }

    /// The prompt in kv-epp's plain chat format (see the module docs).
    pub fn render_chat(&self, req: &ChatRequest) -> Result<String, TokenizeError> {
        if req.conversation.is_empty() {
            return Err(TokenizeError::template("Cannot render an empty conversation"));
        }
        if req.continue_final_message && req.add_generation_prompt {
            return Err(TokenizeError::template(
                "continue_final_message and add_generation_prompt are not compatible",
            ));
        }
        let mut out = String::new();
        let last = req.conversation.len() - 1;
        for (i, m) in req.conversation.iter().enumerate() {
            out.push_str("<|im_start|>");
            out.push_str(m.get("role").and_then(Json::as_str).unwrap_or_default());
            out.push('\n');
            out.push_str(m.get("content").and_then(Json::as_str).unwrap_or_default());
            if !(i == last && req.continue_final_message) {
                out.push_str("<|im_end|>\n");
            }
        }
        if req.add_generation_prompt {
            out.push_str("<|im_start|>assistant\n");
        }
        Ok(out)
    }
}
