//! A fast, exact encoder for the common shape of LLM tokenizers: byte-level BPE
//! (GPT-2 byte alphabet) with a GPT-4/Llama-3/Qwen-style split regex, as in
//! Llama 3.x, Qwen 2/2.5/3 and GPT-2-style tokenizer.json files.
//!
//! Why: the `tokenizers` crate is exact but slow here. Built without Oniguruma,
//! its split regex runs on fancy-regex's backtracking VM (about 40% of the encode
//! time), and every step tracks per-byte offset alignments we do not need.
//!
//! Contract: [`FastBpe::encode`] returns exactly the ids of
//! `tokenizers::Tokenizer::encode(text, add_special_tokens)` for the tokenizer it
//! was built from; [`FastBpe::build`] returns `None` (the caller keeps using the
//! `tokenizers` crate) for anything outside the supported shape:
//! - added tokens: all `normalized: false` with no `lstrip`/`rstrip`/`single_word`
//!   (matched on the raw text, leftmost-longest, as `AddedVocabulary` does;
//!   special ones skipped when `encode_special_tokens` is set);
//! - normalizer: none or NFC (with the same Unicode tables as the crate);
//! - pre-tokenizer: `Sequence[Split(<known regex>, Isolated), ByteLevel(no prefix
//!   space, no regex)]`, or `ByteLevel(no prefix space, GPT-2 regex)`;
//! - model: BPE without dropout, unk token, byte fallback, subword prefix/suffix,
//!   whose vocabulary holds all 256 byte symbols (`ignore_merges` honoured);
//! - post-processor: anything that only adds fixed ids around the sequence
//!   (checked by encoding probes both ways).
//!
//! The split regexes end in `\s+(?!\S)|\s+`, which needs backtracking; here the
//! regex crate runs the pattern with `\s+` in place of both, and a whitespace run
//! that the lookahead alternative would have matched is cut as it would have been:
//! a run of 2+ characters followed by more text gives up its last character.
//!
//! Concurrency: `encode` takes `&self` and runs on the calling thread. Results of
//! the BPE merge loop are cached per split piece in a sharded, bounded cache,
//! and the ids of long segments between added tokens per segment
//! (segment_cache.rs): both exact, both shared by the threads.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::Regex;
use rustc_hash::FxHashMap;
use serde_json::Value as Json;
use tokenizers::Tokenizer;
use unicode_normalization_alignments::{IsNormalized, UnicodeNormalization, is_nfc_quick};

use super::piece_cache::PieceCache;
use super::prefetch::run_ahead;
use super::segment_cache::{SegmentCache, SegmentCacheStats};

/// Llama 3 / GPT-4 (cl100k) split pattern.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2 / 2.5 / 3 split pattern (single digits).
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2's ByteLevel pattern (`use_regex: true`).
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LOOKAHEAD_TAIL: &str = r"|\s+(?!\S)|\s+";

/// The split pieces of `s` as byte ranges, in order, tiling it: the split regex
/// with the `\s+(?!\S)` emulation; text between matches (Isolated split) is a
/// piece of its own.
struct Pieces<'a> {
    bpe: &'a FastBpe,
    s: &'a str,
    pos: usize,
    /// The match that follows an unmatched gap, returned next.
    pending: Option<(usize, usize)>,
}

impl Iterator for Pieces<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        if let Some(p) = self.pending.take() {
            return Some(p);
        }
        let (s, pos) = (self.s, self.pos);
        if pos >= s.len() {
            return None;
        }
        let Some(m) = self.bpe.split.find_at(s, pos) else {
            self.pos = s.len();
            return Some((pos, s.len()));
        };
        let mut end = m.end();
        let piece = m.as_str();
        if end < s.len()
            && piece.chars().all(char::is_whitespace)
            && !(self.bpe.newline_runs_are_final && piece.contains(['\r', '\n']))
        {
            // `\s+(?!\S)`: a run followed by text keeps its last char for the
            // next piece, unless it is a single char (then plain `\s+` took it).
            if let Some((last, _)) = piece.char_indices().next_back().filter(|(i, _)| *i > 0) {
                end = m.start() + last;
            }
        }
        if end <= pos {
            // The supported patterns never match empty text; never loop on one.
            end = pos + s[pos..].chars().next().map_or(1, char::len_utf8);
        }
        self.pos = end;
        if m.start() > pos {
            self.pending = Some((m.start(), end));
            return Some((pos, m.start()));
        }
        Some((m.start(), end))
    }
}

pub struct FastBpe {
    split: Regex,
    /// Whitespace-only matches that contain \r or \n came from `\s*[\r\n]+` (the
    /// Llama/Qwen patterns) and are not cut; false for GPT-2's pattern.
    newline_runs_are_final: bool,
    nfc: bool,
    added: Option<(AhoCorasick, Vec<u32>)>,
    vocab: FxHashMap<Box<[u8]>, u32>,
    byte_ids: [u32; 256],
    merges: FxHashMap<(u32, u32), (u32, u32)>,
    ignore_merges: bool,
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    cache: PieceCache,
    segments: SegmentCache,
}

/// GPT-2's byte => char alphabet, inverted: char => byte.
fn byte_decoder() -> FxHashMap<char, u8> {
    let mut bs: Vec<u8> = (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs: Vec<u32> = bs.iter().map(|&b| b as u32).collect();
    let mut n = 0;
    for b in 0..=255u8 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter().zip(cs).filter_map(|(b, c)| Some((char::from_u32(c)?, b))).collect()
}

/// A byte-level vocabulary string back to raw bytes (`None` if a char is not in
/// the byte alphabet, e.g. for added tokens living in the model vocabulary).
fn to_bytes(s: &str, decoder: &FxHashMap<char, u8>) -> Option<Box<[u8]>> {
    s.chars()
        .map(|c| decoder.get(&c).copied())
        .collect::<Option<Vec<u8>>>()
        .map(Vec::into_boxed_slice)
}

fn pre_tokenizer_shape(pt: &Json) -> Option<(&'static str, bool)> {
    let is_plain_byte_level = |v: &Json, regex: bool| {
        v.get("type").and_then(Json::as_str) == Some("ByteLevel")
            && v.get("add_prefix_space").and_then(Json::as_bool) == Some(false)
            && v.get("use_regex").and_then(Json::as_bool).unwrap_or(true) == regex
    };
    if is_plain_byte_level(pt, true) {
        return Some((GPT2_PATTERN, false));
    }
    if pt.get("type").and_then(Json::as_str) != Some("Sequence") {
        return None;
    }
    match pt.get("pretokenizers").and_then(Json::as_array)?.as_slice() {
        [split, bl] if is_plain_byte_level(bl, false) => {
            if split.get("type").and_then(Json::as_str) != Some("Split")
                || split.get("behavior").and_then(Json::as_str) != Some("Isolated")
                || split.get("invert").and_then(Json::as_bool) != Some(false)
            {
                return None;
            }
            match split.get("pattern")?.get("Regex")?.as_str()? {
                LLAMA3_PATTERN => Some((LLAMA3_PATTERN, true)),
                QWEN2_PATTERN => Some((QWEN2_PATTERN, true)),
                _ => None,
            }
        }
        _ => None,
    }
}

impl FastBpe {
    /// The fast encoder for `tok` (parsed from `json`, with its added tokens and
    /// flags final), or `None` when `tok` is outside the supported shape.
    pub fn build(tok: &Tokenizer, json: &Json) -> Option<FastBpe> {
        let (pattern, newline_runs_are_final) = pre_tokenizer_shape(json.get("pre_tokenizer")?)?;
        let nfc = match json.get("normalizer") {
            None | Some(Json::Null) => false,
            Some(n) if n.get("type").and_then(Json::as_str) == Some("NFC") => true,
            Some(_) => return None,
        };
        let model = json.get("model")?;
        let null_or =
            |k: &str, ok: &dyn Fn(&Json) -> bool| model.get(k).is_none_or(|v| v.is_null() || ok(v));
        if model.get("type").and_then(Json::as_str) != Some("BPE")
            || !null_or("dropout", &|v| v.as_f64() == Some(0.0))
            || !null_or("unk_token", &|_| false)
            || !null_or("continuing_subword_prefix", &|v| v.as_str() == Some(""))
            || !null_or("end_of_word_suffix", &|v| v.as_str() == Some(""))
            || model.get("byte_fallback").and_then(Json::as_bool).unwrap_or(false)
        {
            return None;
        }
        let ignore_merges = model.get("ignore_merges").and_then(Json::as_bool).unwrap_or(false);

        let decoder = byte_decoder();
        let str_vocab: FxHashMap<&str, u32> = model
            .get("vocab")?
            .as_object()?
            .iter()
            .map(|(k, v)| Some((k.as_str(), u32::try_from(v.as_u64()?).ok()?)))
            .collect::<Option<_>>()?;
        let mut vocab = FxHashMap::default();
        for (s, &id) in &str_vocab {
            if let Some(bytes) = to_bytes(s, &decoder) {
                vocab.insert(bytes, id);
            }
        }
        let mut byte_ids = [0u32; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = *vocab.get(&[b as u8][..])?;
        }
        let mut merges = FxHashMap::default();
        for (rank, m) in model.get("merges")?.as_array()?.iter().enumerate() {
            let (a, b) = match m {
                Json::String(s) => s.split_once(' ')?,
                Json::Array(p) => match p.as_slice() {
                    [Json::String(a), Json::String(b)] => (a.as_str(), b.as_str()),
                    _ => return None,
                },
                _ => return None,
            };
            let (ia, ib) = (*str_vocab.get(a)?, *str_vocab.get(b)?);
            let merged = *str_vocab.get(format!("{a}{b}").as_str())?;
            // a later duplicate overwrites, as the crate's map does
            merges.insert((ia, ib), (rank as u32, merged));
        }

        // Added tokens: all matched on the raw text.
        let added_vocab = tok.get_added_vocabulary();
        let encode_special = tok.get_encode_special_tokens();
        let mut patterns = Vec::new();
        let mut ids = Vec::new();
        let mut decoder_map: Vec<(u32, tokenizers::AddedToken)> =
            tok.get_added_tokens_decoder().into_iter().collect();
        decoder_map.sort_by_key(|(id, _)| *id);
        for (id, t) in decoder_map {
            if t.normalized || t.lstrip || t.rstrip || t.single_word {
                return None;
            }
            if t.content.is_empty() || (encode_special && added_vocab.is_special_token(&t.content))
            {
                continue;
            }
            patterns.push(t.content);
            ids.push(id);
        }
        let added = if patterns.is_empty() {
            None
        } else {
            let ac = AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .ok()?;
            Some((ac, ids))
        };

        let base = pattern.strip_suffix(LOOKAHEAD_TAIL)?;
        let split = Regex::new(&format!("{base}|\\s+")).ok()?;

        let mut fast = FastBpe {
            split,
            newline_runs_are_final,
            nfc,
            added,
            vocab,
            byte_ids,
            merges,
            ignore_merges,
            prefix: Vec::new(),
            suffix: Vec::new(),
            cache: PieceCache::new(),
            segments: SegmentCache::new(),
        };
        // The post-processor's fixed ids, from probes; they must be consistent.
        let mut affixes = None;
        for probe in ["a", "Hello world", " 12\n"] {
            let with = tok.encode_fast(probe, true).ok()?.get_ids().to_vec();
            let without = tok.encode_fast(probe, false).ok()?.get_ids().to_vec();
            if fast.encode_raw(probe) != without {
                return None;
            }
            let at = (0..=with.len().checked_sub(without.len())?)
                .find(|&i| with[i..i + without.len()] == without[..])?;
            let found = (with[..at].to_vec(), with[at + without.len()..].to_vec());
            if affixes.as_ref().is_some_and(|a| *a != found) {
                return None;
            }
            affixes = Some(found);
        }
        (fast.prefix, fast.suffix) = affixes?;
        Some(fast)
    }

    /// `tokenizer.encode(text, add_special_tokens)`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Vec<u32> {
        if !add_special_tokens {
            return self.encode_raw(text);
        }
        let mut out = self.prefix.clone();
        self.encode_into(text, &mut out);
        out.extend_from_slice(&self.suffix);
        out
    }

    fn encode_raw(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 4);
        self.encode_into(text, &mut out);
        out
    }

    /// Splits around added tokens, then normalises and encodes each gap.
    fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        let Some((ac, ids)) = &self.added else {
            self.encode_segment(text, out);
            return;
        };
        let mut start = 0;
        for m in ac.find_iter(text) {
            if m.start() > start {
                self.encode_segment(&text[start..m.start()], out);
            }
            out.push(ids[m.pattern().as_usize()]);
            start = m.end();
        }
        if start < text.len() {
            self.encode_segment(&text[start..], out);
        }
    }

    /// One gap between added tokens: a pure function of its text, so a long
    /// one seen before is taken from the segment cache.
    fn encode_segment(&self, segment: &str, out: &mut Vec<u32>) {
        let bytes = segment.as_bytes();
        self.segments.sync();
        if !SegmentCache::applies(bytes) {
            return self.encode_gap(segment, out);
        }
        let key = SegmentCache::key(bytes);
        if self.segments.get_into(key, bytes, out) {
            return;
        }
        let start = out.len();
        self.encode_gap(segment, out);
        self.segments.insert(key, bytes, &out[start..]);
    }

    /// Segment cache lookups since this encoder was built.
    pub fn segment_cache_stats(&self) -> SegmentCacheStats {
        self.segments.stats()
    }

    fn encode_gap(&self, segment: &str, out: &mut Vec<u32>) {
        if self.nfc && is_nfc_quick(segment.chars()) != IsNormalized::Yes {
            let normalized: String = segment.nfc().map(|(c, _)| c).collect();
            self.split_and_merge(&normalized, out);
        } else {
            self.split_and_merge(segment, out);
        }
    }

    /// BPE on each split piece, splitting pieces ahead so the cache lines of
    /// their lookups load in parallel (prefetch.rs).
    fn split_and_merge(&self, s: &str, out: &mut Vec<u32>) {
        let bytes = s.as_bytes();
        let mut pieces = Pieces { bpe: self, s, pos: 0, pending: None };
        run_ahead(
            || {
                let (a, b) = pieces.next()?;
                let piece = bytes.get(a..b).unwrap_or_default();
                if piece.len() > 1 {
                    self.cache.prefetch(piece);
                }
                Some((a, b))
            },
            |(a, b)| self.bpe(bytes.get(a..b).unwrap_or_default(), out),
        );
    }

    /// BPE of one piece (raw bytes) into `out`.
    fn bpe(&self, piece: &[u8], out: &mut Vec<u32>) {
        match piece.len() {
            0 => return,
            1 => {
                out.push(self.byte_ids[piece[0] as usize]);
                return;
            }
            _ => {}
        }
        if self.ignore_merges
            && let Some(&id) = self.vocab.get(piece)
        {
            out.push(id);
            return;
        }
        if self.cache.get_into(piece, out) {
            return;
        }
        let start = out.len();
        self.merge(piece, out);
        self.cache.insert(piece, &out[start..]);
    }

    /// The BPE merge loop: repeatedly merge the adjacent pair with the lowest
    /// merge rank, the leftmost one among equals (what the crate's heap does).
    fn merge(&self, piece: &[u8], out: &mut Vec<u32>) {
        let mut parts: Vec<u32> = piece.iter().map(|&b| self.byte_ids[b as usize]).collect();
        // rank of the pair (parts[i], parts[i + 1]); u32::MAX = no merge
        let rank_of =
            |a: u32, b: u32| self.merges.get(&(a, b)).map_or((u32::MAX, 0), |&(r, id)| (r, id));
        let mut ranks: Vec<(u32, u32)> = parts.windows(2).map(|w| rank_of(w[0], w[1])).collect();
        // `min_by_key` keeps the first of equal keys: the leftmost lowest rank.
        while let Some((i, &(rank, merged))) = ranks.iter().enumerate().min_by_key(|(_, m)| m.0) {
            if rank == u32::MAX {
                break;
            }
            parts[i] = merged;
            parts.remove(i + 1);
            ranks.remove(i);
            if i + 1 < parts.len() {
                ranks[i] = rank_of(parts[i], parts[i + 1]);
            }
            if i > 0 {
                ranks[i - 1] = rank_of(parts[i - 1], parts[i]);
            }
        }
        out.extend_from_slice(&parts);
    }
}
