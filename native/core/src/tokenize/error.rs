//! The one error type of tokenization. `code()` is stable and mirrored by
//! `TokenizeErrorCode` in TypeScript (src/tokenize/types.ts); the message names
//! the offending part of the request (e.g. `messages[2].content[1]: ...`) and is
//! informational only.
//!
//! Which code for what (the first four are the request's fault => HTTP 400):
//! - `invalid_json`: the body is not JSON (or not UTF-8);
//! - `invalid_request`: JSON, but vLLM's request validation would reject it;
//! - `unsupported_content`: valid, but content a text-only model cannot take
//!   (image/audio/video/file parts, unknown part types);
//! - `template_error`: the chat template (or transformers' `apply_chat_template`
//!   around it) fails for this request, e.g. `raise_exception(...)`;
//! - `tokenizer_not_found` / `tokenizer_invalid`: loading (configuration) errors.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenizeErrorCode {
    InvalidJson,
    InvalidRequest,
    UnsupportedContent,
    TemplateError,
    TokenizerNotFound,
    TokenizerInvalid,
}

impl TokenizeErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenizeErrorCode::InvalidJson => "invalid_json",
            TokenizeErrorCode::InvalidRequest => "invalid_request",
            TokenizeErrorCode::UnsupportedContent => "unsupported_content",
            TokenizeErrorCode::TemplateError => "template_error",
            TokenizeErrorCode::TokenizerNotFound => "tokenizer_not_found",
            TokenizeErrorCode::TokenizerInvalid => "tokenizer_invalid",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizeError {
    pub code: TokenizeErrorCode,
    pub message: String,
}

impl TokenizeError {
    pub fn new(code: TokenizeErrorCode, message: impl Into<String>) -> Self {
        TokenizeError { code, message: message.into() }
    }
    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(TokenizeErrorCode::InvalidJson, message)
    }
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(TokenizeErrorCode::InvalidRequest, message)
    }
    pub fn unsupported_content(message: impl Into<String>) -> Self {
        Self::new(TokenizeErrorCode::UnsupportedContent, message)
    }
    pub fn template(message: impl Into<String>) -> Self {
        Self::new(TokenizeErrorCode::TemplateError, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(TokenizeErrorCode::TokenizerNotFound, message)
    }
    pub fn invalid_tokenizer(message: impl Into<String>) -> Self {
        Self::new(TokenizeErrorCode::TokenizerInvalid, message)
    }

    /// Stable machine-readable code (`invalid_json`, `template_error`, ...).
    pub fn code(&self) -> &'static str {
        self.code.as_str()
    }
}

impl fmt::Display for TokenizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TokenizeError {}
