//! The per-request hot path in one call: parse the body once, tokenize it,
//! hash its full blocks with the seed of (LoRA, cache namespace).
//!
//! Contract: `tokens` equal `Tokenizer::tokenize_request`, `local_hashes`
//! equal `hash::local_hashes(tokens, block_size, seed)`, where the namespace
//! is the caller's `x-tenant-id` value, else the body's `nvext.cache_salt` /
//! `cache_salt` (Dynamo's precedence). Scoring is left to the caller, which holds the
//! index lock only for that.

use crate::error::CoreError;
use crate::hash;
use crate::request_edit;
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
    /// The `x-tenant-id` namespace (already checked by the caller): it wins over
    /// the body's salt, as Dynamo's frontend writes the header into
    /// `nvext.cache_salt` over the body's (`apply_header_routing_overrides`).
    pub header_namespace: Option<&'a str>,
    pub now_ms: i64,
}

pub fn tokenize_and_hash(tok: &Tokenizer, input: &RouteInput<'_>) -> Result<Prepared, RouteError> {
    Ok(prepare_request(tok, input, None)?.0)
}

/// The body work done next to tokenizing: the router's checks, then the splice.
pub struct BodyWork<'a> {
    /// The gateway's `x-gateway-model-name-rewrite`.
    pub rewrite: Option<&'a str>,
}

/// A checked body with `nvext.token_data` (and the model rewrite) spliced in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditedRequest {
    pub model: String,
    /// Set when the model was rewritten.
    pub target: Option<String>,
    pub body: Vec<u8>,
}

/// `tokenize_and_hash`, plus the body work when asked. The body's checks
/// (`request_edit::check_request`) come before tokenizing, so their 400s win
/// over the tokenizer's, as in the TypeScript pipeline.
pub fn prepare_request(
    tok: &Tokenizer,
    input: &RouteInput<'_>,
    work: Option<&BodyWork<'_>>,
) -> Result<(Prepared, Option<EditedRequest>), RouteError> {
    let body = request::parse_body(input.body)?;
    let model = match work {
        Some(_) => Some(request_edit::check_request(&body, input.api)?.to_owned()),
        None => None,
    };
    hash::validate_block_size(input.block_size)?;
    let cache_salt = request::cache_salt(&body).map(str::to_owned);
    let tokens = tok.tokenize_parsed(&body, input.api, input.now_ms)?;
    drop(body);
    let namespace = input.header_namespace.or(cache_salt.as_deref());
    let seed = hash::block_hash_seed(input.lora_name, namespace);
    let local_hashes = hash::local_hashes(&tokens, input.block_size, seed)?;
    let edited = match (work, model) {
        (Some(w), Some(model)) => {
            let target = request_edit::rewrite_target(&model, w.rewrite).map(str::to_owned);
            let body =
                request_edit::splice_request(input.body, target.as_deref(), &ids_json(&tokens));
            Some(EditedRequest { model, target, body })
        }
        _ => None,
    };
    Ok((Prepared { tokens, local_hashes, cache_salt }, edited))
}

/// One holder's answer from the index, as packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedScore {
    pub worker_id: u64,
    pub dp_rank: u32,
    pub depth: u32,
    pub tree_size: u32,
}

/// Flags of a packed route (header word 7).
pub const PACKED_TOKENS: u32 = 1;
pub const PACKED_EDITED: u32 = 2;
pub const PACKED_REWRITTEN: u32 = 4;
/// Header words (u32) before the first section.
pub const PACKED_HEADER_WORDS: usize = 8;

/// The whole answer of one request in one little-endian byte buffer, so that
/// one buffer crosses into JavaScript instead of one object per field
/// (decoded by `unpackRoute` in src/pipeline/native-route.ts).
///
/// Header, u32 words: 0 token count, 1 local-hash count, 2 score count,
/// 3 model byte length, 4 cache-salt byte length (`u32::MAX` = none), 5 length
/// of the trailing bytes, 6 reserved (0), 7 flags (`PACKED_*`). Then, each
/// section starting at a multiple of 8: the tokens as u32 (only with
/// `PACKED_TOKENS`, i.e. without an edited body, which holds them), the local hashes as u64, the scores' worker ids as u64,
/// then their dp ranks, depths and tree sizes as u32 each; then the model's
/// and the cache salt's UTF-8 bytes and the trailing bytes, unpadded. The
/// trailing bytes are the edited body with `PACKED_EDITED`, else the tokens as
/// JSON (`ids_json`).
pub fn pack_route(p: &Prepared, edited: Option<&EditedRequest>, scores: &[PackedScore]) -> Vec<u8> {
    fn pad8(v: &mut Vec<u8>) {
        v.resize(v.len().next_multiple_of(8), 0);
    }
    let json;
    let (model, tail): (&[u8], &[u8]) = match edited {
        Some(e) => (e.model.as_bytes(), &e.body),
        None => {
            json = ids_json(&p.tokens);
            (b"", &json)
        }
    };
    let salt = p.cache_salt.as_deref().map(str::as_bytes);
    let with_tokens = edited.is_none();
    let mut flags = if with_tokens { PACKED_TOKENS } else { 0 };
    if let Some(e) = edited {
        flags |= PACKED_EDITED;
        if e.target.is_some() {
            flags |= PACKED_REWRITTEN;
        }
    }
    let header = [
        p.tokens.len() as u32,
        p.local_hashes.len() as u32,
        scores.len() as u32,
        model.len() as u32,
        salt.map_or(u32::MAX, |s| s.len() as u32),
        tail.len() as u32,
        0,
        flags,
    ];
    let tokens_bytes = if with_tokens { p.tokens.len() * 4 + 8 } else { 0 };
    let mut out = Vec::with_capacity(
        32 + tokens_bytes
            + p.local_hashes.len() * 8
            + scores.len() * 20
            + 16
            + model.len()
            + salt.map_or(0, <[u8]>::len)
            + tail.len(),
    );
    for w in header {
        out.extend_from_slice(&w.to_le_bytes());
    }
    if with_tokens {
        for t in &p.tokens {
            out.extend_from_slice(&t.to_le_bytes());
        }
        pad8(&mut out);
    }
    for h in &p.local_hashes {
        out.extend_from_slice(&h.to_le_bytes());
    }
    for s in scores {
        out.extend_from_slice(&s.worker_id.to_le_bytes());
    }
    for s in scores {
        out.extend_from_slice(&s.dp_rank.to_le_bytes());
    }
    for s in scores {
        out.extend_from_slice(&s.depth.to_le_bytes());
    }
    for s in scores {
        out.extend_from_slice(&s.tree_size.to_le_bytes());
    }
    pad8(&mut out);
    out.extend_from_slice(model);
    out.extend_from_slice(salt.unwrap_or_default());
    out.extend_from_slice(tail);
    out
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
            header_namespace: None,
            now_ms: 0,
        }
    }

    #[test]
    fn the_header_namespace_wins_over_the_body_salt_which_seeds_the_hash() {
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
        assert_eq!(
            p.local_hashes,
            hash::local_hashes(&[1, 2], 2, hash::block_hash_seed(None, None)).unwrap()
        );

        // x-tenant-id over the body's salt, with or without one.
        let tenant = RouteInput { header_namespace: Some("header-tenant"), ..input(body) };
        let p = tokenize_and_hash(&tok, &tenant).unwrap();
        assert_eq!(p.cache_salt.as_deref(), Some("tenant-a"));
        let seed = hash::block_hash_seed(None, Some("header-tenant"));
        assert_eq!(p.local_hashes, hash::local_hashes(&[1, 2, 3, 4], 2, seed).unwrap());
        let p = tokenize_and_hash(
            &tok,
            &RouteInput { header_namespace: Some("header-tenant"), ..input(none) },
        )
        .unwrap();
        assert_eq!(p.local_hashes, hash::local_hashes(&[1, 2], 2, seed).unwrap());
    }

    #[test]
    fn body_work_checks_first_then_splices() {
        let tok = Tokenizer::load("o200k_base").unwrap();
        let work = BodyWork { rewrite: Some("served") };
        let body = br#"{"model":"m","prompt":[5,6,7],"nvext":{"k":1}}"#;
        let (p, e) = prepare_request(&tok, &input(body), Some(&work)).unwrap();
        let e = e.unwrap();
        assert_eq!((e.model.as_str(), e.target.as_deref()), ("m", Some("served")));
        assert_eq!(
            e.body,
            br#"{"model":"served","prompt":[5,6,7],"nvext":{"k":1,"token_data":[5,6,7]}}"#
        );
        assert_eq!(p.tokens, vec![5, 6, 7]);
        // The router's check wins over the tokenizer's (a bad prompt, but no model).
        let r = prepare_request(&tok, &input(br#"{"prompt":{}}"#), Some(&work));
        assert!(matches!(r, Err(RouteError::Tokenize(e)) if e.message.contains("model not found")));
    }

    #[test]
    fn packs_every_field_at_its_offset() {
        let p = Prepared {
            tokens: vec![1, 2, 3],
            local_hashes: vec![7, u64::MAX],
            cache_salt: Some("s\u{e9}".into()),
        };
        let scores = [PackedScore { worker_id: 9, dp_rank: 1, depth: 2, tree_size: 3 }];
        let e = EditedRequest { model: "m".into(), target: Some("t".into()), body: b"{}".to_vec() };
        let word = |b: &[u8], i: usize| u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
        let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());

        let b = pack_route(&p, None, &scores);
        let salt = "s\u{e9}".len() as u32;
        assert_eq!(
            (0..8).map(|i| word(&b, i)).collect::<Vec<_>>(),
            vec![3, 2, 1, 0, salt, 7, 0, PACKED_TOKENS]
        );
        assert_eq!((8..11).map(|i| word(&b, i)).collect::<Vec<_>>(), vec![1, 2, 3]);
        // tokens end at 44, padded to 48; hashes at 48, worker id at 64, then three u32s.
        assert_eq!((u64_at(&b, 48), u64_at(&b, 56), u64_at(&b, 64)), (7, u64::MAX, 9));
        assert_eq!((word(&b, 18), word(&b, 19), word(&b, 20)), (1, 2, 3));
        assert_eq!(&b[88..], "s\u{e9}[1,2,3]".as_bytes());

        let b = pack_route(&p, Some(&e), &[]);
        assert_eq!(word(&b, 7), PACKED_EDITED | PACKED_REWRITTEN);
        assert_eq!((word(&b, 3), word(&b, 5)), (1, 2));
        assert_eq!(b.len(), 32 + 16 + 1 + salt as usize + 2);
        assert_eq!(&b[48..], "ms\u{e9}{}".as_bytes());
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
    /// "00" .. "99": two digits per division.
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    // At most 10 digits and a comma per id, plus the brackets; written in
    // place (no memcpy call per id), then cut to length.
    let mut out = vec![0u8; ids.len() * 11 + 2];
    out[0] = b'[';
    let mut o = 1;
    for (i, &id) in ids.iter().enumerate() {
        if i > 0 {
            out[o] = b',';
            o += 1;
        }
        let len = digits(id);
        let mut v = id;
        let mut p = o + len;
        while v >= 100 {
            let r = (v % 100) as usize * 2;
            v /= 100;
            p -= 2;
            out[p] = PAIRS[r];
            out[p + 1] = PAIRS[r + 1];
        }
        if v >= 10 {
            let r = v as usize * 2;
            out[p - 2] = PAIRS[r];
            out[p - 1] = PAIRS[r + 1];
        } else {
            out[p - 1] = b'0' + v as u8;
        }
        o += len;
    }
    out[o] = b']';
    out.truncate(o + 1);
    out
}

/// Decimal digits of `v`.
#[inline(always)]
fn digits(v: u32) -> usize {
    match v {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1_000..=9_999 => 4,
        10_000..=99_999 => 5,
        100_000..=999_999 => 6,
        1_000_000..=9_999_999 => 7,
        10_000_000..=99_999_999 => 8,
        100_000_000..=999_999_999 => 9,
        _ => 10,
    }
}

#[cfg(test)]
mod ids_json_tests {
    use super::ids_json;

    #[test]
    fn formats_like_json() {
        assert_eq!(ids_json(&[]), b"[]");
        assert_eq!(ids_json(&[0]), b"[0]");
        assert_eq!(ids_json(&[7, 10, 99, 100, u32::MAX]), b"[7,10,99,100,4294967295]");
        let all: Vec<u32> =
            (0..100_000).chain([999_999, 1_000_000, 123_456_789, 1 << 31]).collect();
        let want = format!("[{}]", all.iter().map(u32::to_string).collect::<Vec<_>>().join(","));
        assert_eq!(String::from_utf8(ids_json(&all)).unwrap(), want);
    }
}
