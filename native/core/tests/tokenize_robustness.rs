//! No input panics: every fixture request body, mutated at random (truncated,
//! bytes replaced, JSON fragments spliced in), through both APIs of an HF and a
//! tiktoken tokenizer must come back as ids or as a coded error.

use std::path::{Path, PathBuf};

use kv_epp_core::tokenize::{ApiKind, Tokenizer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const FRAGMENTS: &[&str] = &[
    "null",
    "[]",
    "{}",
    "\"\"",
    "0",
    "-1",
    "1e999",
    "true",
    "[[[]]]",
    "{\"role\":5}",
    "\"\\ud800\"",
    "\"\\u0000\"",
    "[{\"type\":\"text\",\"text\":null}]",
    "{\"type\":\"image_url\"}",
    "\"<|im_end|>\"",
    "{\"function\":{\"name\":\"f\",\"arguments\":\"{]\"}}",
    "\"{{ raise_exception('x') }}\"",
    ",",
    ":",
];

#[test]
fn mutated_bodies_never_panic() {
    let hf =
        Tokenizer::load(repo().join("test/fixtures/tokenizers/qwen3").to_str().unwrap()).unwrap();
    let tk = Tokenizer::load("o200k_base").unwrap();
    let mut rng = SmallRng::seed_from_u64(7);
    let dir = repo().join("test/fixtures/chat/requests");
    let mut outcomes = [0usize; 2];
    for entry in std::fs::read_dir(dir).unwrap() {
        let body = std::fs::read(entry.unwrap().path()).unwrap();
        for _ in 0..150 {
            let mut b = body.clone();
            match rng.random_range(0..4) {
                0 => b.truncate(rng.random_range(0..=b.len())),
                1 => {
                    for _ in 0..rng.random_range(1..4) {
                        let i = rng.random_range(0..b.len());
                        b[i] = rng.random();
                    }
                }
                _ => {
                    let i = rng.random_range(0..=b.len());
                    let f = FRAGMENTS[rng.random_range(0..FRAGMENTS.len())];
                    b.splice(i..i, f.bytes());
                }
            }
            for tok in [&hf, &tk] {
                for api in [ApiKind::Chat, ApiKind::Completions] {
                    outcomes[tok.tokenize_request(&b, api, i64::MAX).is_ok() as usize] += 1;
                }
                let _ = tok.render_chat(&b, i64::MIN);
            }
        }
    }
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
}
