//! The per-request hot path in one call: parse the body once, tokenize it,
//! hash its full blocks with the seed of (LoRA, cache namespace).
//!
//! Contract: `tokens` equal `Tokenizer::tokenize_request`, `local_hashes`
//! equal `hash::local_hashes(tokens, block_size, seed)`, where the namespace
//! is the body's `nvext.cache_salt` / `cache_salt`, else the caller's fallback
//! (the `x-tenant-id` header). Scoring is left to the caller, which holds the
//! index lock only for that.

use crate::error::CoreError;
use crate::hash;
use crate::tokenize::{ApiKind, TokenizeError, Tokenizer, request};

#[derive(Debug)]
pub enum RouteError {
    Tokenize(TokenizeError),
    Core(CoreError),
}

impl From<TokenizeError> for RouteError {
    fn from(e: TokenizeError) -> Self {
        RouteError::Tokenize(e)
    }
}

impl From<CoreError> for RouteError {
    fn from(e: CoreError) -> Self {
        RouteError::Core(e)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub tokens: Vec<u32>,
    pub local_hashes: Vec<u64>,
    /// The namespace taken from the body, when it had one.
    pub cache_salt: Option<String>,
}

pub struct RouteInput<'a> {
    pub body: &'a [u8],
    pub api: ApiKind,
    pub block_size: u32,
    pub lora_name: Option<&'a str>,
    /// Used when the body names no cache salt.
    pub fallback_namespace: Option<&'a str>,
    pub now_ms: i64,
}

pub fn tokenize_and_hash(tok: &Tokenizer, input: &RouteInput<'_>) -> Result<Prepared, RouteError> {
    hash::validate_block_size(input.block_size)?;
    let body = request::parse_body(input.body)?;
    let cache_salt = request::cache_salt(&body).map(str::to_owned);
    let tokens = tok.tokenize_parsed(&body, input.api, input.now_ms)?;
    let namespace = cache_salt.as_deref().or(input.fallback_namespace);
    let seed = hash::block_hash_seed(input.lora_name, namespace);
    let local_hashes = hash::local_hashes(&tokens, input.block_size, seed)?;
    Ok(Prepared { tokens, local_hashes, cache_salt })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(body: &[u8]) -> RouteInput<'_> {
        RouteInput {
            body,
            api: ApiKind::Completions,
            block_size: 2,
            lora_name: None,
            fallback_namespace: Some("header-tenant"),
            now_ms: 0,
        }
    }

    #[test]
    fn body_salt_wins_over_the_fallback_and_seeds_the_hash() {
        let tok = Tokenizer::load("o200k_base").unwrap();
        let body = br#"{"prompt":[1,2,3,4,5],"nvext":{"cache_salt":"tenant-a"}}"#;
        let p = tokenize_and_hash(&tok, &input(body)).unwrap();
        assert_eq!(p.tokens, vec![1, 2, 3, 4, 5]);
        assert_eq!(p.cache_salt.as_deref(), Some("tenant-a"));
        let seed = hash::block_hash_seed(None, Some("tenant-a"));
        assert_eq!(p.local_hashes, hash::local_hashes(&[1, 2, 3, 4], 2, seed).unwrap());

        let top = br#"{"prompt":[1,2],"cache_salt":"t2"}"#;
        assert_eq!(tokenize_and_hash(&tok, &input(top)).unwrap().cache_salt.as_deref(), Some("t2"));

        let none = br#"{"prompt":[1,2]}"#;
        let p = tokenize_and_hash(&tok, &input(none)).unwrap();
        assert_eq!(p.cache_salt, None);
        let seed = hash::block_hash_seed(None, Some("header-tenant"));
        assert_eq!(p.local_hashes, hash::local_hashes(&[1, 2], 2, seed).unwrap());
    }

    #[test]
    fn errors_keep_their_kind() {
        let tok = Tokenizer::load("o200k_base").unwrap();
        assert!(matches!(tokenize_and_hash(&tok, &input(b"{")), Err(RouteError::Tokenize(_))));
        let mut i = input(br#"{"prompt":[1]}"#);
        i.block_size = 0;
        assert!(matches!(tokenize_and_hash(&tok, &i), Err(RouteError::Core(_))));
    }
}

/// The JSON array of token ids (`[1,2,3]`, no spaces) that kv-epp splices into
/// the body as `nvext.token_data`; byte-identical to the TypeScript
/// `idsJsonBytes` (src/openai/request-body.ts), which the differential tests check.
pub fn ids_json(ids: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * 7 + 2);
    out.push(b'[');
    let mut digits = [0u8; 10];
    for (i, &id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut v = id;
        let mut n = 0;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        out.extend(digits[..n].iter().rev());
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod ids_json_tests {
    use super::ids_json;

    #[test]
    fn formats_like_json() {
        assert_eq!(ids_json(&[]), b"[]");
        assert_eq!(ids_json(&[0]), b"[0]");
        assert_eq!(ids_json(&[7, 10, 99, 100, u32::MAX]), b"[7,10,99,100,4294967295]");
    }
}
