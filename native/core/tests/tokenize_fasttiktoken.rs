//! The fast tiktoken encoder (src/tokenize/fasttiktoken.rs) against tiktoken-rs,
//! which it replaces, for o200k_base and cl100k_base: exact ids (vs
//! `CoreBPE::encode_ordinary`) and exact split pieces (vs fancy-regex running
//! tiktoken-rs's own split patterns) on real text (this repository's sources, the
//! bench corpus when node_modules is installed) and on tens of thousands of
//! random strings built to hit the tricky parts: whitespace runs before text and
//! at the end, \r\n mixes, every Unicode White_Space char, digits of all kinds,
//! contractions incl. the case-folded `'ſ`, o200k's case classes (Lu/Lt/Lm/Lo
//! and combining marks, camelCase, ALLCaps), punctuation runs with `/` and
//! newlines, CJK, emoji, control characters, random code points of every plane,
//! and pieces over 100 bytes (tiktoken's heap merge). `KV_EPP_FUZZ_CASES=N` runs N
//! random strings per generator and encoding instead of the default.

use std::path::{Path, PathBuf};

use kv_epp_core::tokenize::TiktokenTokenizer;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

mod tokenize_support;

/// tiktoken-rs 0.12's cl100k_base split pattern (inline in its `cl100k_base()`).
const CL100K_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const PIECES: &[&str] = &[
    " ",
    "  ",
    "   ",
    "    ",
    "        ",
    "\t",
    "\t\t",
    "\n",
    "\n\n",
    "\r\n",
    "\r",
    " \n ",
    " \n",
    "\n ",
    "\u{a0}",
    "\u{1680}",
    "\u{2000}",
    "\u{2009}",
    "\u{200a}",
    "\u{2028}",
    "\u{2029}",
    "\u{202f}",
    "\u{205f}",
    "\u{3000}",
    "\u{85}",
    "\u{1c}",
    "\u{1f}",
    "\u{b}",
    "\u{c}",
    "\u{180e}",
    "\u{200b}",
    "\u{200d}",
    "\u{feff}",
    "\u{0}",
    "\u{7f}",
    "a",
    "A",
    "Hello",
    "hello",
    "HELLO",
    "world",
    "it",
    "I",
    "'s",
    "'S",
    "'ſ",
    "'t",
    "'T",
    "'re",
    "'RE",
    "'rE",
    "'ve",
    "'Ve",
    "'m",
    "'M",
    "'ll",
    "'Ll",
    "'lL",
    "'d",
    "'D",
    "'x",
    "'r",
    "'l",
    "'v",
    "'",
    "''",
    "\u{2019}s",
    "don't",
    "DON'T",
    "we're",
    "They'LL",
    "1",
    "12",
    "123",
    "1234",
    "12345",
    "3.14",
    "1,000",
    "٣",
    "٠١٢٣٤",
    "१२३",
    "½",
    "²",
    "①",
    "Ⅻ",
    "é",
    "É",
    "e\u{301}",
    "E\u{301}",
    "\u{301}",
    "\u{301}\u{302}",
    "\u{20dd}",
    "\u{1e9b}\u{323}",
    "ǅ",
    "ǅemal",
    "ǈ",
    "ǲ",
    "ʰ",
    "ˆ",
    "ᵃ",
    "ª",
    "º",
    "ß",
    "ẞ",
    "ſ",
    "K",
    "Å",
    "İ",
    "ı",
    "ŉ",
    "ﬀ",
    "HTTPServer",
    "xmlHTTPRequest",
    "getElementById",
    "snake_case_name",
    "CONSTANT_NAME",
    "camelCase",
    "PascalCase",
    "\u{1100}\u{1161}",
    "한국어",
    "日本語",
    "ひらがな",
    "カタカナ",
    "你好",
    "世界",
    "👍",
    "👍🏽",
    "👩‍👩‍👧‍👦",
    "🇫🇷",
    "❤️",
    "مرحبا",
    "שלום",
    "हिन्दी",
    "ไทย",
    "Ελληνικά",
    "Русский",
    "∑",
    "√2",
    "—",
    "–",
    "…",
    "...",
    "!!",
    "?",
    "¿",
    "<",
    ">",
    "</",
    "/>",
    "//",
    "///",
    "/*",
    "*/",
    "/",
    " /",
    "/\n",
    "//\n",
    "?/",
    "#",
    "@",
    "$",
    "%",
    "^",
    "&&",
    "||",
    "=>",
    "->",
    "::",
    "{",
    "}",
    "}\n",
    "};\n",
    "(",
    ")",
    "()",
    "[]",
    "\"",
    "`",
    "\\",
    "\\n",
    "{\"a\": 1}",
    "_",
    "__init__",
    "<|endoftext|>",
    "<|im_start|>",
    "<|endofprompt|>",
    "<|fim_prefix|>",
];

const CODE: &[&str] = &[
    "fn main() {\n",
    "    let x = vec![1, 2, 3];\n",
    "    println!(\"{x:?}\");\n",
    "}\n",
    "def foo(self, *args, **kwargs):\n",
    "        return None\n",
    "import { readFileSync } from 'node:fs';\n",
    "export const a: Array<number> = [];\n",
    "interface HTMLElementTagNameMap {\n",
    "    readonly ELEMENT_NODE: 1;\n",
    "  /** The node's type. */\n",
    "// TODO: it's broken\n",
    "#include <stdio.h>\n",
    "int main(void) { return 0; }\r\n",
    "SELECT * FROM users WHERE id = 42;\n",
    "<div class=\"x\">Hi</div>\n",
    "https://example.com/a/b?c=d&e=f\n",
    "C:\\Users\\me\\file.txt\n",
    "    \n",
    "\t\n",
    "\n\n\n",
    "x += 1;\n",
    "if (a && b || !c) {}\n",
    "0x1F, 0b1010, 1e-9, 3.14159\n",
];

/// A valid scalar in `lo..hi` (surrogates redrawn as 'x').
fn scalar(rng: &mut SmallRng, lo: u32, hi: u32) -> char {
    char::from_u32(rng.random_range(lo..hi)).unwrap_or('x')
}

/// A random code point from a range picked for its classes.
fn random_char(rng: &mut SmallRng) -> char {
    const RANGES: &[(u32, u32)] = &[
        (0x00, 0x80),       // ASCII incl. controls
        (0x80, 0x250),      // Latin-1, Latin Extended (Lt: ǅ ǈ ǋ ǲ)
        (0x250, 0x300),     // IPA, spacing modifiers (Lm)
        (0x300, 0x370),     // combining marks (Mn)
        (0x370, 0x530),     // Greek, Cyrillic
        (0x590, 0x700),     // Hebrew, Arabic (Lo, Mn, Nd)
        (0x900, 0xA00),     // Devanagari (Mc, Mn, Nd)
        (0x1100, 0x1200),   // Hangul Jamo
        (0x1680, 0x1690),   // Ogham space
        (0x1D00, 0x1DC0),   // phonetic extensions (Lm)
        (0x1E00, 0x2000),   // Latin Extended Additional, Greek Extended (Lt)
        (0x2000, 0x2070),   // General Punctuation (Zs, Zl, Zp, Cf)
        (0x2070, 0x2200),   // super/subscripts, letterlike, number forms (Nl, No)
        (0x2460, 0x2500),   // enclosed alphanumerics (No)
        (0x3000, 0x3100),   // CJK punctuation, kana (Lm, Lo)
        (0x4E00, 0xA000),   // CJK ideographs
        (0xAC00, 0xD7A4),   // Hangul syllables
        (0xFE00, 0xFE10),   // variation selectors (Mn)
        (0xFF00, 0xFFF0),   // fullwidth forms
        (0x10400, 0x10450), // Deseret (Lu, Ll)
        (0x1D400, 0x1D800), // math alphanumerics (Lu, Ll, Nd)
        (0x1F000, 0x1FB00), // emoji, symbols
        (0xE0000, 0xE0080), // tags (Cf)
        (0x0, 0x11_0000),   // anything
    ];
    let (lo, hi) = RANGES[rng.random_range(0..RANGES.len())];
    scalar(rng, lo, hi)
}

/// Mixed pieces, code lines and random code points.
fn random_mixed(rng: &mut SmallRng) -> String {
    let n = rng.random_range(0..32);
    let mut s = String::new();
    for _ in 0..n {
        match rng.random_range(0..10) {
            0 | 1 => s.push(random_char(rng)),
            2 => s.push_str(CODE[rng.random_range(0..CODE.len())]),
            _ => s.push_str(PIECES[rng.random_range(0..PIECES.len())]),
        }
    }
    s
}

/// Random characters only, from a small alphabet that makes dense interactions
/// (case changes, marks, apostrophes, spaces, newlines, digits, slashes).
fn random_dense(rng: &mut SmallRng) -> String {
    const ALPHABET: &[char] = &[
        'a', 'b', 's', 't', 'l', 'e', 'r', 'v', 'm', 'd', 'A', 'S', 'T', 'L', 'E', 'R', 'D', 'ſ',
        'ǅ', 'ʰ', 'ª', 'ß', '日', '\u{301}', '\u{903}', '\u{20dd}', '\'', '\'', ' ', ' ', ' ',
        '\t', '\n', '\r', '\u{a0}', '\u{3000}', '\u{85}', '\u{b}', '1', '2', '٣', '½', 'Ⅻ', '.',
        ',', '/', '-', '_', '"', '(', '{', '👍', '\u{200d}', '\u{feff}', '\u{0}',
    ];
    let n = rng.random_range(0..40);
    (0..n).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())]).collect()
}

/// Random ASCII (all 128 code points, weighted to letters and spaces).
fn random_ascii(rng: &mut SmallRng) -> String {
    let n = rng.random_range(0..64);
    (0..n)
        .map(|_| match rng.random_range(0..4) {
            0 => rng.random_range(b'a'..=b'z') as char,
            1 => *b" \n\t'".get(rng.random_range(0..4)).unwrap() as char,
            _ => rng.random_range(0u8..128) as char,
        })
        .collect()
}

/// Long single-class runs (pieces over 100 bytes: tiktoken's heap merge).
fn random_long(rng: &mut SmallRng) -> String {
    let mut s = String::new();
    for _ in 0..rng.random_range(1..4) {
        let len = rng.random_range(50..600);
        match rng.random_range(0..6) {
            0 => s.extend((0..len).map(|_| rng.random_range(b'a'..=b'z') as char)),
            1 => s.extend((0..len).map(|_| ['a', 'b', 'A', 'B'][rng.random_range(0..4)])),
            2 => s.extend((0..len).map(|_| [' ', '\t', '\n', '\u{a0}'][rng.random_range(0..4)])),
            3 => s.extend((0..len).map(|_| ['-', '=', '*', '/', '#'][rng.random_range(0..5)])),
            4 => s.extend((0..len).map(|_| scalar(rng, 0x4E00, 0x9FA0))),
            _ => s.extend((0..len).map(|_| random_char(rng))),
        }
        if rng.random_bool(0.5) {
            s.push_str(PIECES[rng.random_range(0..PIECES.len())]);
        }
    }
    s
}

/// Real text: repository sources and docs, fixture chat renders, and (when
/// node_modules is installed) the bench corpus.
fn real_texts() -> Vec<String> {
    let mut out = Vec::new();
    let mut files =
        vec![repo().join("README.md"), repo().join("node_modules/typescript/lib/lib.dom.d.ts")];
    for dir in
        ["native/core/src/tokenize", "src/tokenize", "docs", "test/fixtures/chat/goldens/qwen3"]
    {
        if let Ok(entries) = std::fs::read_dir(repo().join(dir)) {
            let mut paths: Vec<_> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
            paths.sort();
            files.extend(paths);
        }
    }
    for f in files {
        if let Ok(text) = std::fs::read_to_string(&f) {
            out.push(text);
        }
    }
    if let Ok(entries) = std::fs::read_dir(repo().join("node_modules")) {
        let mut readmes: Vec<_> =
            entries.filter_map(|e| Some(e.ok()?.path().join("README.md"))).collect();
        readmes.sort();
        let prose: String =
            readmes.iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect();
        out.push(prose);
    }
    out
}

fn fuzz_cases(default: usize) -> usize {
    std::env::var("KV_EPP_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Checks every text; returns how many were checked.
fn check_all(encoding: &str, pattern: &str, texts: &[String]) -> usize {
    let tok = TiktokenTokenizer::load(encoding).unwrap().unwrap();
    assert!(tok.is_fast(), "{encoding} should take the fast path");
    let regex = fancy_regex::Regex::new(pattern).unwrap();
    let mut failures = 0;
    for text in texts {
        let pieces = tok.split(text).unwrap();
        let expected: Vec<&str> = regex.find_iter(text).map(|m| m.unwrap().as_str()).collect();
        let fast = tok.encode(text);
        let reference = tok.encode_reference(text);
        if pieces != expected || fast != reference {
            failures += 1;
            if failures <= 10 {
                let short: String = text.chars().take(300).collect();
                eprintln!("{encoding} {short:?}:");
                if pieces != expected {
                    let at = pieces.iter().zip(&expected).position(|(a, b)| a != b);
                    let at = at.unwrap_or(pieces.len().min(expected.len()));
                    eprintln!(
                        "  pieces differ at {at}: fast {:?} regex {:?}",
                        &pieces[at..(at + 4).min(pieces.len())],
                        &expected[at..(at + 4).min(expected.len())]
                    );
                } else {
                    eprintln!("  ids differ: fast {} ids, ref {} ids", fast.len(), reference.len());
                }
            }
        }
    }
    assert_eq!(failures, 0, "{encoding}: {failures} of {} texts differ", texts.len());
    texts.len()
}

fn check_encoding(encoding: &str, pattern: &str, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = fuzz_cases(12_000);
    let mut texts = Vec::new();
    for _ in 0..n {
        texts.push(random_mixed(&mut rng));
        texts.push(random_dense(&mut rng));
        texts.push(random_ascii(&mut rng));
    }
    texts.extend((0..n / 10).map(|_| random_long(&mut rng)));
    let random = texts.len();
    // Glued together: long texts with every kind of context at piece edges.
    let glued: Vec<String> = texts.chunks(200).map(|c| c.concat()).collect();
    texts.extend(glued);
    let real = real_texts();
    let real_count = real.len();
    texts.extend(real);
    let checked = check_all(encoding, pattern, &texts);
    eprintln!("{encoding}: {checked} texts equal ({random} random, {real_count} real files)");
}

/// One encoder shared by four threads (as the addon shares it with its pool
/// workers): every encode still equals tiktoken-rs's, with the threads filling
/// and reading the shared merge cache at once, in different orders.
#[test]
fn o200k_fast_path_is_exact_from_several_threads() {
    let tok = TiktokenTokenizer::load("o200k_base").unwrap().unwrap();
    assert!(tok.is_fast());
    let mut rng = SmallRng::seed_from_u64(12);
    let mut texts: Vec<String> = (0..1500).map(|_| random_mixed(&mut rng)).collect();
    texts.extend((0..150).map(|_| random_long(&mut rng)));
    texts.extend(real_texts());
    let reference: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode_reference(t)).collect();
    let failures =
        tokenize_support::mismatches_from_four_threads(&texts, &reference, |text| tok.encode(text));
    assert_eq!(failures, 0);
}

#[test]
fn o200k_fast_path_equals_tiktoken_rs() {
    check_encoding("o200k_base", tiktoken_rs::O200K_BASE_PAT_STR, 1);
}

#[test]
fn cl100k_fast_path_equals_tiktoken_rs() {
    check_encoding("cl100k_base", CL100K_PATTERN, 2);
}

/// Every assigned-plane code point (planes 0-3 and the tag / variation-selector
/// block of plane 14; a sample of the unassigned and private-use rest), each
/// alone, before and after letters, and after an apostrophe, for both encodings.
#[test]
fn every_code_point_equals_tiktoken_rs() {
    let mut texts = Vec::new();
    let mut chunk = String::new();
    let every =
        |cp: u32| cp < 0x3_2400 || (0xE_0000..0xE_0200).contains(&cp) || cp.is_multiple_of(61);
    for c in (0..0x11_0000u32).filter(|&cp| every(cp)).filter_map(char::from_u32) {
        for part in [c.to_string(), format!("{c}a"), format!(" {c}A"), format!("'{c}"), "\n".into()]
        {
            chunk.push_str(&part);
        }
        if chunk.len() > 4096 {
            texts.push(std::mem::take(&mut chunk));
        }
    }
    texts.push(chunk);
    check_all("o200k_base", tiktoken_rs::O200K_BASE_PAT_STR, &texts);
    check_all("cl100k_base", CL100K_PATTERN, &texts);
}
