//! `TiktokenTokenizer::encode_chat` (whole messages of a rendered chat prompt
//! from the segment cache) against `encode` of the whole prompt, for
//! o200k_base and cl100k_base: the same ids on the first encode (cache
//! misses), on the second (hits), and for prompts whose contents are built to
//! sit on the cuts: message contents ending or starting with line breaks,
//! `/`, `<`, `|>`, whitespace runs, a literal `<|im_end|>\n` followed by
//! anything, unicode and long runs. `KV_EPP_FUZZ_CASES=N` runs N random
//! conversations per encoding instead of the default.

use kv_epp_core::tokenize::{ApiKind, TiktokenTokenizer, Tokenizer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const FRAGMENTS: &[&str] = &[
    "\n",
    "\n\n",
    "\r\n",
    "\r",
    " ",
    "   ",
    "\t",
    "/",
    "//",
    "<",
    "<<",
    ">",
    "|>",
    "<|",
    "<|im_end|>\n",
    "<|im_end|>\n<",
    "<|im_end|>\n/",
    "<|im_end|>\n\n",
    "<|im_start|>",
    "<|im_start|>user\n",
    ".",
    "...",
    "!?",
    "'s",
    "a",
    "Hello",
    "WORLD",
    "camelCase",
    "123",
    "12345",
    "é",
    "日本語",
    "👍🏽",
    "\u{a0}",
    "\u{2028}",
    "The quick brown fox jumps over the lazy dog. ",
    "fn main() { let x = 1; }\n",
];

const ROLES: &[&str] = &["system", "user", "assistant", "tool", "developer"];

fn content(rng: &mut SmallRng) -> String {
    let mut s = String::new();
    // Often long enough (≥ 256 bytes with the markers) to be cached.
    let n = if rng.random_bool(0.5) { rng.random_range(30..120) } else { rng.random_range(0..8) };
    for _ in 0..n {
        s.push_str(FRAGMENTS[rng.random_range(0..FRAGMENTS.len())]);
    }
    s
}

/// A prompt in kv-epp's plain chat format (tiktoken.rs module docs).
fn prompt(rng: &mut SmallRng, messages: &[(String, String)]) -> String {
    let mut out = String::new();
    let last = messages.len().saturating_sub(1);
    let continue_final = rng.random_bool(0.2);
    for (i, (role, text)) in messages.iter().enumerate() {
        out.push_str("<|im_start|>");
        out.push_str(role);
        out.push('\n');
        out.push_str(text);
        if !(i == last && continue_final) {
            out.push_str("<|im_end|>\n");
        }
    }
    if !continue_final && rng.random_bool(0.8) {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}

fn cases() -> usize {
    std::env::var("KV_EPP_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1500)
}

#[test]
fn encode_chat_equals_encode_on_random_conversations() {
    for name in ["o200k_base", "cl100k_base"] {
        let t = TiktokenTokenizer::load(name).expect("known").expect("loads");
        let mut rng = SmallRng::seed_from_u64(0x5e9_2026);
        // A few shared messages, so later conversations hit the cache.
        let shared: Vec<(String, String)> = (0..6)
            .map(|_| (ROLES[rng.random_range(0..ROLES.len())].to_string(), content(&mut rng)))
            .collect();
        let mut mismatches = Vec::new();
        for case in 0..cases() {
            let n = rng.random_range(1..6);
            let messages: Vec<(String, String)> = (0..n)
                .map(|_| {
                    if rng.random_bool(0.4) {
                        shared[rng.random_range(0..shared.len())].clone()
                    } else {
                        (ROLES[rng.random_range(0..ROLES.len())].to_string(), content(&mut rng))
                    }
                })
                .collect();
            let p = prompt(&mut rng, &messages);
            let whole = t.encode(&p);
            for pass in 0..2 {
                if t.encode_chat(&p) != whole {
                    mismatches.push(format!("{name} case {case} pass {pass}: {p:?}"));
                }
            }
            if mismatches.len() > 5 {
                break;
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
        let stats = t.segment_cache_stats();
        assert!(stats.hits > 1000, "{name}: the cache was used ({stats:?})");
        assert!(stats.misses > 100, "{name}: and missed on new messages ({stats:?})");
    }
}

#[test]
fn a_chat_request_tokenizes_to_the_whole_prompt_ids_with_the_cache() {
    let tok = Tokenizer::load("o200k_base").expect("loads");
    let Tokenizer::Tiktoken(t) = &tok else { panic!("a tiktoken tokenizer") };
    let system = "You are a careful assistant. ".repeat(20);
    let body = serde_json::json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "What is <|im_end|>\n/ about?"},
        ],
    })
    .to_string();
    let expected = t.encode(&tok.render_chat(body.as_bytes(), 0).expect("renders"));
    let before = t.segment_cache_stats();
    for _ in 0..3 {
        let ids = tok.tokenize_request(body.as_bytes(), ApiKind::Chat, 0).expect("tokenizes");
        assert_eq!(ids, expected);
    }
    let after = t.segment_cache_stats();
    // The system message (≥ 256 bytes) missed once, then hit twice.
    assert!(after.hits >= before.hits + 2, "{before:?} → {after:?}");
}
