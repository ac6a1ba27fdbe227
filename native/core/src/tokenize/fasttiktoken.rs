//! A fast, exact encoder for tiktoken's `o200k_base` and `cl100k_base`
//! (`CoreBPE::encode_ordinary` of the `tiktoken-rs` crate, which stays the
//! vocabulary source and the reference).
//!
//! Why: tiktoken-rs splits text with fancy-regex's backtracking VM, the bulk of
//! its encode time (it was slower than the pure-JS `gpt-tokenizer` on code), and
//! looks tokens up in a map keyed by heap-allocated byte strings. Here the split
//! regexes are hand-written scanners over a per-code-point class table, and
//! tokens of up to 16 bytes are looked up with their bytes inline.
//!
//! Contract: [`FastTiktoken::encode`] returns exactly the ids of
//! `encode_ordinary(text)` of the `CoreBPE` it was built from, for every `&str`
//! (tests/tokenize_fasttiktoken.rs checks pieces and ids against tiktoken-rs and
//! fancy-regex on random text); [`FastTiktoken::build`] returns `None` (the caller
//! keeps using tiktoken-rs) if the vocabulary or the Unicode tables are not what
//! this module expects.
//!
//! Split patterns, as tiktoken-rs 0.12 spells them (one alternation, branches
//! tried in order, leftmost-first; every position matches some branch, so the
//! pieces tile the text). cl100k_base:
//!
//! ```text
//! '(?i:[sdmt]|ll|ve|re) | [^\r\n\p{L}\p{N}]?+\p{L}++ | \p{N}{1,3}+
//! | ' '?[^\s\p{L}\p{N}]++[\r\n]*+ | \s++$ | \s*[\r\n] | \s+(?!\S) | \s
//! ```
//!
//! o200k_base, with U = `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`, L =
//! `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`, P = `[^\r\n\p{L}\p{N}]`, C =
//! `(?i:'s|'t|'re|'ve|'m|'ll|'d)`:
//!
//! ```text
//! P?U*L+C? | P?U+L*C? | \p{N}{1,3} | ' '?[^\s\p{L}\p{N}]+[\r\n/]*
//! | \s*[\r\n]+ | \s+(?!\S) | \s+
//! ```
//!
//! The character classes (`\p{..}`, `\s` = White_Space, the case folds of the
//! contraction letters, e.g. `ſ` for `s`) come from `regex-syntax`, the crate
//! that fancy-regex hands them to, so both agree on every code point.
//!
//! Merging is tiktoken's own: a piece that is a token is that token; otherwise
//! the adjacent pair whose concatenation has the lowest rank is merged, the
//! leftmost among equals, until no pair is a token (the same two algorithms as
//! tiktoken, switching at the same 100-byte length). Merge results are cached per
//! piece (piece_cache.rs).
//!
//! Concurrency: `encode` takes `&self` and runs on the calling thread; the merge
//! cache is shared (sharded locks). Cost: built once per process next to the
//! `CoreBPE` (about 60 ms and 13 MB of rank table for o200k_base, half for
//! cl100k_base).

use std::collections::BinaryHeap;
use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use tiktoken_rs::CoreBPE;

use super::key::pack;
use super::piece_cache::PieceCache;
use super::prefetch::run_ahead;

type Rank = u32;

/// `\p{L}`.
const LETTER: u8 = 1;
/// `\p{N}`.
const NUMBER: u8 = 2;
/// `\s` (Unicode White_Space).
const SPACE: u8 = 4;
/// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]` (o200k's upper-case class).
const UPPER: u8 = 8;
/// `[\p{Ll}\p{Lm}\p{Lo}\p{M}]` (o200k's lower-case class).
const LOWER: u8 = 16;
/// `\r` or `\n`.
const NEWLINE: u8 = 32;

/// Per-code-point class bits, from regex-syntax's Unicode tables: ASCII directly,
/// the rest through 256-code-point blocks shared when equal (a few hundred).
struct CharClasses {
    ascii: [u8; 128],
    /// Block number of each 256-code-point block of 0..0x110000.
    index: Vec<u16>,
    blocks: Vec<[u8; 256]>,
    /// Non-ASCII characters that `(?i:x)` matches, with their ASCII letter `x`.
    folds: Vec<(char, u8)>,
}

/// The ranges of a regex that is a single Unicode class (`None` otherwise).
fn class_ranges(pattern: &str) -> Option<Vec<(u32, u32)>> {
    let hir = regex_syntax::Parser::new().parse(pattern).ok()?;
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => {
            Some(c.ranges().iter().map(|r| (r.start() as u32, r.end() as u32)).collect())
        }
        _ => None,
    }
}

impl CharClasses {
    fn build() -> Option<CharClasses> {
        const LIMIT: usize = 0x11_0000;
        let mut flat = vec![0u8; LIMIT];
        let classes: [(&str, u8); 5] = [
            (r"\p{L}", LETTER),
            (r"\p{N}", NUMBER),
            (r"\s", SPACE),
            (r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", UPPER),
            (r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]", LOWER),
        ];
        for (pattern, bit) in classes {
            for (lo, hi) in class_ranges(pattern)? {
                for slot in flat.get_mut(lo as usize..=hi as usize)? {
                    *slot |= bit;
                }
            }
        }
        for nl in [b'\r', b'\n'] {
            flat[nl as usize] |= NEWLINE;
        }
        let mut ascii = [0u8; 128];
        ascii.copy_from_slice(&flat[..128]);
        let mut index = Vec::with_capacity(LIMIT / 256);
        let mut blocks: Vec<[u8; 256]> = Vec::new();
        let mut seen: FxHashMap<[u8; 256], u16> = FxHashMap::default();
        for chunk in flat.chunks_exact(256) {
            let mut block = [0u8; 256];
            block.copy_from_slice(chunk);
            let n = match seen.get(&block) {
                Some(&n) => n,
                None => {
                    let n = u16::try_from(blocks.len()).ok()?;
                    blocks.push(block);
                    seen.insert(block, n);
                    n
                }
            };
            index.push(n);
        }
        let mut folds = Vec::new();
        for letter in *b"sdmtlver" {
            for (lo, hi) in class_ranges(&format!("(?i:{})", letter as char))? {
                for cp in lo..=hi {
                    if let Some(c) = char::from_u32(cp).filter(|c| !c.is_ascii()) {
                        folds.push((c, letter));
                    }
                }
            }
        }
        Some(CharClasses { ascii, index, blocks, folds })
    }

    #[inline(always)]
    fn of(&self, cp: u32) -> u8 {
        match self.index.get((cp >> 8) as usize) {
            Some(&b) => self.blocks.get(b as usize).map_or(0, |blk| blk[(cp & 0xFF) as usize]),
            None => 0,
        }
    }
}

/// The classes, built once per process (`None` if regex-syntax refused a class).
fn char_classes() -> Option<&'static CharClasses> {
    static CLASSES: OnceLock<Option<CharClasses>> = OnceLock::new();
    CLASSES.get_or_init(CharClasses::build).as_ref()
}

/// The code point at byte `i` of valid UTF-8 and its length (`i` a char boundary).
#[inline(always)]
fn decode(s: &[u8], i: usize) -> Option<(u32, usize)> {
    let b0 = *s.get(i)? as u32;
    if b0 < 0x80 {
        return Some((b0, 1));
    }
    let cont = |k: usize| s.get(i + k).map_or(0, |&b| (b & 0x3F) as u32);
    Some(if b0 < 0xE0 {
        (((b0 & 0x1F) << 6) | cont(1), 2)
    } else if b0 < 0xF0 {
        (((b0 & 0x0F) << 12) | (cont(1) << 6) | cont(2), 3)
    } else {
        (((b0 & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3), 4)
    })
}

/// Which split pattern (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pattern {
    Cl100k,
    O200k,
}

/// Pieces shorter than this take tiktoken's quadratic merge, longer ones its heap
/// merge (same threshold as tiktoken; the two agree anyway).
const SMALL_PIECE: usize = 100;

/// Token bytes => rank (= id). Tokens of up to 16 bytes (nearly all) live in an
/// open-addressing table with the bytes inline, zero-padded into two words: one
/// probe sequence, no pointer chasing, no memcmp. Longer ones are in `long`.
struct RankTable {
    /// Power-of-two length, at most half full (so every probe sequence ends).
    slots: Vec<Slot>,
    /// `64 - log2(slots.len())`: the hash's top bits pick the first slot.
    shift: u32,
    long: FxHashMap<Box<[u8]>, Rank>,
}

/// A string of at most 16 bytes as [`RankTable`] looks it up.
#[derive(Clone, Copy, Default)]
struct Key {
    lo: u64,
    hi: u64,
    home: usize,
}

/// `len == 0`: empty (no token is empty).
#[derive(Clone, Copy, Default)]
struct Slot {
    lo: u64,
    hi: u64,
    len: u32,
    rank: Rank,
}

impl RankTable {
    fn new(tokens: &FxHashMap<Box<[u8]>, Rank>) -> RankTable {
        let short = tokens.keys().filter(|k| k.len() <= 16).count();
        let size = (short * 2).next_power_of_two().max(16);
        let mut table = RankTable {
            slots: vec![Slot::default(); size],
            shift: 64 - size.trailing_zeros(),
            long: FxHashMap::default(),
        };
        for (k, &rank) in tokens {
            if k.len() > 16 {
                table.long.insert(k.clone(), rank);
                continue;
            }
            let (lo, hi) = pack(k);
            let mask = table.slots.len() - 1;
            let mut i = table.home(lo, hi, k.len());
            while table.slots[i].len != 0 {
                i = (i + 1) & mask;
            }
            table.slots[i] = Slot { lo, hi, len: k.len() as u32, rank };
        }
        table
    }

    #[inline(always)]
    fn home(&self, lo: u64, hi: u64, len: usize) -> usize {
        let h = (lo ^ hi.rotate_left(23).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ len as u64)
            .wrapping_mul(0xD6E8_FEB8_6659_FD93);
        (h >> self.shift) as usize
    }

    /// `k`'s key (its packed bytes and the slot its probe sequence begins at),
    /// after asking the CPU to start loading that slot (a hint: no effect on
    /// results). `None` for keys longer than 16 bytes.
    #[inline(always)]
    fn key_prefetched(&self, k: &[u8]) -> Option<Key> {
        if k.len() > 16 {
            return None;
        }
        let (lo, hi) = pack(k);
        let home = self.home(lo, hi, k.len());
        if let Some(slot) = self.slots.get(home) {
            super::prefetch::read(slot);
        }
        Some(Key { lo, hi, home })
    }

    #[inline(always)]
    fn get(&self, k: &[u8]) -> Option<Rank> {
        if k.len() > 16 {
            return self.long.get(k).copied();
        }
        let (lo, hi) = pack(k);
        self.probe(k.len(), Key { lo, hi, home: self.home(lo, hi, k.len()) })
    }

    /// [`get`](Self::get) with the key [`key_prefetched`](Self::key_prefetched) gave.
    #[inline(always)]
    fn get_keyed(&self, k: &[u8], key: Option<Key>) -> Option<Rank> {
        match key {
            Some(key) => self.probe(k.len(), key),
            None => self.long.get(k).copied(),
        }
    }

    /// Linear probing for the key of a `len`-byte string (at most 16).
    #[inline(always)]
    fn probe(&self, len: usize, Key { lo, hi, home }: Key) -> Option<Rank> {
        let len = len as u32;
        let mask = self.slots.len() - 1;
        let mut i = home;
        loop {
            let slot = self.slots.get(i)?;
            if slot.len == len && slot.lo == lo && slot.hi == hi {
                return Some(slot.rank);
            }
            if slot.len == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
    }
}

pub struct FastTiktoken {
    pattern: Pattern,
    classes: &'static CharClasses,
    /// Holds every single byte.
    ranks: RankTable,
    cache: PieceCache,
}

impl FastTiktoken {
    /// The fast encoder for encoding `name` (`o200k_base` / `cl100k_base`) with the
    /// vocabulary of `bpe`, or `None` when anything is off (unknown name, a
    /// vocabulary without all 256 bytes, or a disagreement with `bpe` on probes).
    pub fn build(name: &str, bpe: &CoreBPE) -> Option<FastTiktoken> {
        let pattern = match name {
            "o200k_base" => Pattern::O200k,
            "cl100k_base" => Pattern::Cl100k,
            _ => return None,
        };
        let classes = char_classes()?;
        // Special tokens are not reachable from encode_ordinary: leave them out.
        let mut special: Vec<Rank> = Vec::new();
        for s in bpe.special_tokens() {
            match bpe.encode_with_special_tokens(s).as_slice() {
                [r] => special.push(*r),
                _ => return None,
            }
        }
        // Ordinary ranks lie below the highest special one (checked: none above).
        let end = special.iter().max().map_or(0, |m| m + 1);
        if (end..end + 4096).any(|r| bpe.decode_bytes(&[r]).is_ok()) {
            return None;
        }
        let mut ranks = FxHashMap::default();
        for rank in 0..end {
            if special.contains(&rank) {
                continue;
            }
            if let Ok(bytes) = bpe.decode_bytes(&[rank])
                && ranks.insert(bytes.into_boxed_slice(), rank).is_some()
            {
                return None; // two ranks for the same bytes
            }
        }
        if (0..=255u8).any(|b| !ranks.contains_key(&[b][..])) {
            return None;
        }
        let fast = FastTiktoken {
            pattern,
            classes,
            ranks: RankTable::new(&ranks),
            cache: PieceCache::new(),
        };
        let probes = [
            "Hello, world! It's 2024-06-01 and we're testing.\n\n  fn main() {\n\tlet x = 1234567;\n}\n",
            "   leading spaces\r\n\r\n trailing  \u{a0} ",
            "DON'T Stop: éa\u{301} ſ 'S 日本語 한국어 👍🏽 HTTPServer xmlHTTP ǅemal",
        ];
        for p in probes {
            if fast.encode(p) != bpe.encode_ordinary(p) {
                return None;
            }
        }
        Some(fast)
    }

    /// `encode_ordinary(text)`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 4 + 4);
        let s = text.as_bytes();
        let mut i = 0;
        run_ahead(
            || {
                // (start, end, rank-table key) of the next piece, its slot prefetched
                (i < s.len()).then(|| {
                    let end = self.piece_end(s, i);
                    let key = self.ranks.key_prefetched(s.get(i..end).unwrap_or_default());
                    let piece = (i, end, key);
                    i = end;
                    piece
                })
            },
            |(a, b, key)| {
                let piece = s.get(a..b).unwrap_or_default();
                match self.ranks.get_keyed(piece, key) {
                    Some(r) => out.push(r),
                    None => self.merge_piece(piece, &mut out),
                }
            },
        );
        out
    }

    /// The split pieces of `text` (what the split regex's `find_iter` yields).
    pub fn split<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let s = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            let end = self.piece_end(s, i);
            out.push(text.get(i..end).unwrap_or_default());
            i = end;
        }
        out
    }

    /// The end of the piece that starts at char boundary `i < s.len()`: a char
    /// boundary in `i + 1..=s.len()`, so the scan always advances.
    #[inline]
    fn piece_end(&self, s: &[u8], i: usize) -> usize {
        let end = match self.pattern {
            Pattern::Cl100k => self.cl100k(s, i),
            Pattern::O200k => self.o200k(s, i),
        };
        if end > i && end <= s.len() {
            end
        } else {
            // Unreachable (some branch always matches); never loop, never panic.
            (i + decode(s, i).map_or(1, |(_, n)| n)).min(s.len())
        }
    }

    /// The class bits and length of the char at `i` (`None` at the end).
    #[inline(always)]
    fn class_at(&self, s: &[u8], i: usize) -> Option<(u8, usize)> {
        let b = *s.get(i)?;
        if b < 0x80 {
            return Some((self.classes.ascii[b as usize], 1));
        }
        let (cp, n) = decode(s, i)?;
        Some((self.classes.of(cp), n))
    }

    /// The end of the run of chars from `i` whose class bits satisfy `keep`.
    #[inline(always)]
    fn run(&self, s: &[u8], mut i: usize, keep: impl Fn(u8) -> bool) -> usize {
        while let Some((k, n)) = self.class_at(s, i) {
            if !keep(k) {
                break;
            }
            i += n;
        }
        i
    }

    /// The ASCII letter that the char at `i` matches case-insensitively (`None` if
    /// none of the contraction letters), and the char's length.
    #[inline]
    fn fold_at(&self, s: &[u8], i: usize) -> Option<(u8, usize)> {
        let b = *s.get(i)?;
        if b < 0x80 {
            return Some((b.to_ascii_lowercase(), 1));
        }
        let (cp, n) = decode(s, i)?;
        let c = char::from_u32(cp)?;
        self.classes.folds.iter().find(|(f, _)| *f == c).map(|&(_, l)| (l, n))
    }

    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)` at `i`: the end of the match, or `i`.
    #[inline]
    fn contraction(&self, s: &[u8], i: usize) -> usize {
        if s.get(i) != Some(&b'\'') {
            return i;
        }
        let Some((first, n1)) = self.fold_at(s, i + 1) else {
            return i;
        };
        let second = |want: u8| match self.fold_at(s, i + 1 + n1) {
            Some((l, n2)) if l == want => i + 1 + n1 + n2,
            _ => i,
        };
        match first {
            b's' | b't' | b'm' | b'd' => i + 1 + n1,
            b'r' | b'v' => second(b'e'),
            b'l' => second(b'l'),
            _ => i,
        }
    }

    /// The whitespace branches at `i` (a `\s` char), in their pattern order:
    /// cl100k `\s++$|\s*[\r\n]|\s+(?!\S)|\s` (`at_end_first`), o200k
    /// `\s*[\r\n]+|\s+(?!\S)|\s+`. Over the maximal `\s` run from `i`:
    /// `\s*[\r\n]+` ends after the run's last newline; `\s+(?!\S)` takes a run
    /// that reaches the end of the text, and otherwise all but its last char if
    /// that leaves at least one; else the single char.
    #[inline]
    fn whitespace(&self, s: &[u8], i: usize, at_end_first: bool) -> usize {
        let mut p = i;
        let mut last_start = i;
        let mut after_newline = None;
        while let Some((k, n)) = self.class_at(s, p) {
            if k & SPACE == 0 {
                break;
            }
            if k & NEWLINE != 0 {
                after_newline = Some(p + n);
            }
            last_start = p;
            p += n;
        }
        if at_end_first && p == s.len() {
            return p;
        }
        if let Some(e) = after_newline {
            return e;
        }
        if p == s.len() {
            return p;
        }
        if last_start > i { last_start } else { p }
    }

    /// ` ?[^\s\p{L}\p{N}]+` then `tail`-bytes at `i`: the end of the match, or `i`.
    #[inline]
    fn punctuation(&self, s: &[u8], i: usize, tail: &[u8]) -> usize {
        let j = if s.get(i) == Some(&b' ') { i + 1 } else { i };
        let e = self.run(s, j, |k| k & (SPACE | LETTER | NUMBER) == 0);
        if e == j {
            return i;
        }
        let mut e = e;
        while s.get(e).is_some_and(|b| tail.contains(b)) {
            e += 1;
        }
        e
    }

    /// cl100k_base's split at `i`.
    fn cl100k(&self, s: &[u8], i: usize) -> usize {
        // '(?i:[sdmt]|ll|ve|re)
        let e = self.contraction(s, i);
        if e > i {
            return e;
        }
        let Some((k, n)) = self.class_at(s, i) else { return i };
        // [^\r\n\p{L}\p{N}]?+\p{L}++
        if k & LETTER != 0 {
            return self.run(s, i, |k| k & LETTER != 0);
        }
        if k & (NEWLINE | NUMBER) == 0 {
            let e = self.run(s, i + n, |k| k & LETTER != 0);
            if e > i + n {
                return e;
            }
        }
        // \p{N}{1,3}+
        if k & NUMBER != 0 {
            return self.numbers(s, i);
        }
        // ?[^\s\p{L}\p{N}]++[\r\n]*+
        let e = self.punctuation(s, i, b"\r\n");
        if e > i {
            return e;
        }
        self.whitespace(s, i, true)
    }

    /// `\p{N}{1,3}` at `i` (a `\p{N}` char).
    #[inline]
    fn numbers(&self, s: &[u8], i: usize) -> usize {
        let mut e = i;
        for _ in 0..3 {
            match self.class_at(s, e) {
                Some((k, n)) if k & NUMBER != 0 => e += n,
                _ => break,
            }
        }
        e
    }

    /// o200k's first branch from `j` (after the optional prefix char):
    /// `U*L+C?` with U/L the upper/lower classes. U* gives back chars until L+
    /// can start: at the char after the U run if that is L, else at the last char
    /// of the run that is also L (Lm, Lo, M), where L+ then takes just that char.
    #[inline]
    fn o200k_upper_lower(&self, s: &[u8], j: usize) -> Option<usize> {
        let mut p = j;
        let mut after_last_both = None;
        while let Some((k, n)) = self.class_at(s, p) {
            if k & UPPER == 0 {
                break;
            }
            p += n;
            if k & LOWER != 0 {
                after_last_both = Some(p);
            }
        }
        let end = match self.class_at(s, p) {
            Some((k, _)) if k & LOWER != 0 => self.run(s, p, |k| k & LOWER != 0),
            _ => after_last_both?,
        };
        Some(self.contraction(s, end))
    }

    /// o200k's second branch from `j`: `U+L*C?` (no backtracking needed).
    #[inline]
    fn o200k_upper_then_lower(&self, s: &[u8], j: usize) -> Option<usize> {
        let p = self.run(s, j, |k| k & UPPER != 0);
        if p == j {
            return None;
        }
        Some(self.contraction(s, self.run(s, p, |k| k & LOWER != 0)))
    }

    /// o200k_base's split at `i`.
    fn o200k(&self, s: &[u8], i: usize) -> usize {
        let Some((k, n)) = self.class_at(s, i) else { return i };
        // The optional `[^\r\n\p{L}\p{N}]?` is tried taken first, then not taken;
        // not taking it only matters when the char is itself U/L (a mark).
        let prefixed = k & (LETTER | NUMBER | NEWLINE) == 0;
        let cased = k & (UPPER | LOWER) != 0;
        if prefixed || cased {
            if prefixed && let Some(e) = self.o200k_upper_lower(s, i + n) {
                return e;
            }
            if cased && let Some(e) = self.o200k_upper_lower(s, i) {
                return e;
            }
            if prefixed && let Some(e) = self.o200k_upper_then_lower(s, i + n) {
                return e;
            }
            if cased && let Some(e) = self.o200k_upper_then_lower(s, i) {
                return e;
            }
        }
        // \p{N}{1,3}
        if k & NUMBER != 0 {
            return self.numbers(s, i);
        }
        // ?[^\s\p{L}\p{N}]+[\r\n/]*
        let e = self.punctuation(s, i, b"\r\n/");
        if e > i {
            return e;
        }
        self.whitespace(s, i, false)
    }

    #[inline(always)]
    fn rank(&self, bytes: &[u8]) -> Option<Rank> {
        self.ranks.get(bytes)
    }

    /// The ids of a piece that is not itself a token into `out`.
    fn merge_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        if self.cache.get_into(piece, out) {
            return;
        }
        let start = out.len();
        if piece.len() < SMALL_PIECE {
            self.merge_small(piece, out);
        } else {
            self.merge_large(piece, out);
        }
        self.cache.insert(piece, &out[start..]);
    }

    /// tiktoken's `_byte_pair_merge`: `parts` holds (start, rank of the pair
    /// starting there); each round merges the leftmost lowest-ranked pair.
    /// Every final part is a token (a single byte or a merge result).
    fn merge_small(&self, piece: &[u8], out: &mut Vec<u32>) {
        let n = piece.len();
        if n < 2 {
            out.extend(piece.iter().filter_map(|&b| self.rank(&[b])));
            return;
        }
        let rank_of = |a: usize, b: usize| piece.get(a..b).and_then(|p| self.rank(p));
        let mut parts: SmallVec<[(usize, Rank); 64]> = SmallVec::with_capacity(n + 1);
        let mut min = (Rank::MAX, usize::MAX);
        for i in 0..n - 1 {
            let r = rank_of(i, i + 2).unwrap_or(Rank::MAX);
            if r < min.0 {
                min = (r, i);
            }
            parts.push((i, r));
        }
        parts.push((n - 1, Rank::MAX));
        parts.push((n, Rank::MAX));
        // rank of the pair at i once parts[i + 1] is gone
        let pair_after = |parts: &[(usize, Rank)], i: usize| match parts.get(i + 3) {
            Some(&(end, _)) => rank_of(parts[i].0, end).unwrap_or(Rank::MAX),
            None => Rank::MAX,
        };
        while min.0 != Rank::MAX {
            let i = min.1;
            if i > 0 {
                parts[i - 1].1 = pair_after(&parts, i - 1);
            }
            parts[i].1 = pair_after(&parts, i);
            parts.remove(i + 1);
            min = (Rank::MAX, usize::MAX);
            for (i, &(_, r)) in parts[..parts.len() - 1].iter().enumerate() {
                if r < min.0 {
                    min = (r, i);
                }
            }
        }
        out.extend(parts.windows(2).filter_map(|w| rank_of(w[0].0, w[1].0)));
    }

    /// tiktoken's `_byte_pair_merge_large`: the same merge order with a heap of
    /// candidate merges and a linked list of parts (stale heap entries skipped).
    fn merge_large(&self, piece: &[u8], out: &mut Vec<u32>) {
        #[derive(PartialEq, Eq)]
        struct Merge {
            start: usize,
            rank: Rank,
        }
        impl Ord for Merge {
            // max-heap order: lowest rank first, then leftmost
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                other.rank.cmp(&self.rank).then_with(|| other.start.cmp(&self.start))
            }
        }
        impl PartialOrd for Merge {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        struct State {
            prev: usize,
            end: usize,
            next_end: usize,
            next_rank: Rank,
        }
        let n = piece.len();
        if n < 2 {
            return self.merge_small(piece, out);
        }
        let rank_of = |a: usize, b: usize| piece.get(a..b).and_then(|p| self.rank(p));
        let mut heap = BinaryHeap::with_capacity(n);
        // part i = piece[i..end]; its merge candidate = piece[i..next_end]
        let mut state: Vec<State> = (0..n)
            .map(|i| {
                let next_rank = rank_of(i, i + 2).unwrap_or(Rank::MAX);
                if next_rank != Rank::MAX {
                    heap.push(Merge { start: i, rank: next_rank });
                }
                State { prev: i.wrapping_sub(1), end: i + 1, next_end: i + 2, next_rank }
            })
            .collect();
        let potential = |state: &mut Vec<State>,
                         heap: &mut BinaryHeap<Merge>,
                         start: usize,
                         next_end: usize| {
            state[start].next_end = next_end;
            state[start].next_rank = Rank::MAX;
            if next_end <= n
                && let Some(rank) = rank_of(start, next_end)
            {
                heap.push(Merge { start, rank });
                state[start].next_rank = rank;
            }
        };
        while let Some(left) = heap.pop() {
            if left.rank != state[left.start].next_rank {
                continue; // stale
            }
            let left_start = left.start;
            let right_start = state[left_start].end;
            let right_end = state[left_start].next_end;
            let Some(right_next_end) = state.get(right_start).map(|s| s.next_end) else { break };
            state[left_start].end = right_end;
            potential(&mut state, &mut heap, left_start, right_next_end);
            if right_end < n {
                state[right_end].prev = left_start;
            }
            if left_start > 0 {
                let prev_start = state[left_start].prev;
                potential(&mut state, &mut heap, prev_start, right_end);
            }
            state[right_start].next_rank = Rank::MAX;
        }
        let mut i = 0;
        while i < n {
            let end = state[i].end;
            if let Some(r) = rank_of(i, end) {
                out.push(r);
            }
            i = end;
        }
    }
}
