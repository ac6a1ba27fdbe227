//! The ids of split pieces as a BPE merge loop computed them, shared by the
//! threads that encode with one tokenizer (fastbpe.rs, fasttiktoken.rs).
//!
//! Contract: [`PieceCache::get_into`] appends exactly the ids last inserted
//! for that piece, or appends nothing and returns false (a miss), under any
//! interleaving of threads: never another piece's ids, never a torn mix. An
//! insert may be dropped or may evict another piece (it is a cache); memory is
//! bounded (a fixed table plus shards cleared when full).
//!
//! Layout: most pieces are short words with a few ids. Those live in a
//! two-way set-associative table of 64-byte lines, bytes and ids inline, each
//! line guarded by its own sequence number (a seqlock: readers never block or
//! write, a writer skips a line another writer holds). One lookup reads the
//! two adjacent lines of one set, which can be prefetched from the piece alone
//! ([`PieceCache::prefetch`]).
//! Longer pieces or longer id lists go to sharded maps under locks.

use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use rustc_hash::{FxHashMap, FxHasher};

use super::key::pack24;

/// Longest piece (bytes) and id list kept inline in a line.
const INLINE_KEY: usize = 24;
const INLINE_IDS: usize = 8;
/// Sets in the inline table, of two 64-byte lines each (4 MiB): a piece may be
/// in either line of its set, so two pieces that hash alike both stay.
const SETS: usize = 1 << 15;
/// Overflow shards and the entries each keeps before it is cleared.
const SHARDS: usize = 16;
const SHARD_CAPACITY: usize = 4096;
/// Pieces longer than this are merged without caching (as the crate's cache does).
const MAX_CACHED_PIECE: usize = 256;

/// One line: word 0 is the header (bits 0..32 the sequence number, odd while
/// a writer holds the line; bits 32..40 the key length, 0 = empty; bits 40..48
/// the id count), words 1..4 the key bytes zero-padded, words 4..8 the ids
/// (two per word).
#[repr(align(64))]
struct Line([AtomicU64; 8]);

impl Line {
    fn empty() -> Line {
        Line(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// One overflow shard: piece bytes => their ids.
type Shard = Mutex<FxHashMap<Box<[u8]>, Box<[u32]>>>;

pub(crate) struct PieceCache {
    lines: Box<[Line]>,
    /// Inserts that found both lines of their set taken (picks the victim).
    evictions: AtomicU64,
    shards: Vec<Shard>,
}

/// The set of a key: its first line; the second follows it.
#[inline(always)]
fn set_of(key: &[u64; 3], len: usize) -> usize {
    let h = (key[0] ^ key[1].rotate_left(21) ^ key[2].rotate_left(42) ^ len as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    2 * (h >> (64 - SETS.trailing_zeros())) as usize
}

/// Whether line `w` holds `key` of `len` bytes (a snapshot: may change after).
#[inline(always)]
fn holds(w: &[AtomicU64; 8], key: &[u64; 3], len: usize) -> bool {
    let head = w[0].load(Ordering::Relaxed);
    head & 1 == 0
        && (head >> 32) & 0xFF == len as u64
        && w[1].load(Ordering::Relaxed) == key[0]
        && w[2].load(Ordering::Relaxed) == key[1]
        && w[3].load(Ordering::Relaxed) == key[2]
}

impl PieceCache {
    pub(crate) fn new() -> PieceCache {
        PieceCache {
            lines: (0..2 * SETS).map(|_| Line::empty()).collect(),
            evictions: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(FxHashMap::default())).collect(),
        }
    }

    #[inline(always)]
    fn inline(piece: &[u8]) -> bool {
        !piece.is_empty() && piece.len() <= INLINE_KEY
    }

    /// Starts loading the lines `piece` would be in (a hint: no effect on results).
    #[inline(always)]
    pub(crate) fn prefetch(&self, piece: &[u8]) {
        if !Self::inline(piece) {
            return;
        }
        let set = set_of(&pack24(piece), piece.len());
        for line in self.lines.get(set..set + 2).unwrap_or_default() {
            super::prefetch::read(line);
        }
    }

    /// Appends the cached ids of `piece` to `out`; false (nothing appended) on a miss.
    pub(crate) fn get_into(&self, piece: &[u8], out: &mut Vec<u32>) -> bool {
        // A short piece with many ids is in the overflow maps.
        if Self::inline(piece) && self.get_inline(piece, out) {
            return true;
        }
        if piece.is_empty() || piece.len() > MAX_CACHED_PIECE {
            return false;
        }
        if let Some(shard) = self.shard(piece)
            && let Ok(shard) = shard.lock()
            && let Some(ids) = shard.get(piece)
        {
            out.extend_from_slice(ids);
            return true;
        }
        false
    }

    /// Records `ids` as the encoding of `piece` (a no-op for long pieces).
    pub(crate) fn insert(&self, piece: &[u8], ids: &[u32]) {
        if Self::inline(piece) && !ids.is_empty() && ids.len() <= INLINE_IDS {
            self.insert_inline(piece, ids);
            return;
        }
        if piece.is_empty() || piece.len() > MAX_CACHED_PIECE {
            return;
        }
        if let Some(shard) = self.shard(piece)
            && let Ok(mut shard) = shard.lock()
        {
            if shard.len() >= SHARD_CAPACITY {
                shard.clear();
            }
            shard.insert(piece.into(), ids.into());
        }
    }

    fn shard(&self, piece: &[u8]) -> Option<&Shard> {
        let mut h = FxHasher::default();
        piece.hash(&mut h);
        self.shards.get((h.finish() as usize) % SHARDS)
    }

    #[inline(always)]
    fn get_inline(&self, piece: &[u8], out: &mut Vec<u32>) -> bool {
        let key = pack24(piece);
        let set = set_of(&key, piece.len());
        for Line(w) in self.lines.get(set..set + 2).unwrap_or_default() {
            if Self::read_line(w, &key, piece.len(), out) {
                return true;
            }
        }
        false
    }

    /// Appends the ids in line `w` if it holds `key`; false otherwise.
    #[inline(always)]
    fn read_line(w: &[AtomicU64; 8], key: &[u64; 3], len: usize, out: &mut Vec<u32>) -> bool {
        let head = w[0].load(Ordering::Acquire);
        if head & 1 != 0 || (head >> 32) & 0xFF != len as u64 {
            return false;
        }
        let k = [
            w[1].load(Ordering::Relaxed),
            w[2].load(Ordering::Relaxed),
            w[3].load(Ordering::Relaxed),
        ];
        let ids = [
            w[4].load(Ordering::Relaxed),
            w[5].load(Ordering::Relaxed),
            w[6].load(Ordering::Relaxed),
            w[7].load(Ordering::Relaxed),
        ];
        // The loads above happen before the re-check: an unchanged even
        // header means no writer touched the line meanwhile.
        fence(Ordering::Acquire);
        if w[0].load(Ordering::Relaxed) != head || k != *key {
            return false;
        }
        let n = ((head >> 40) & 0xFF) as usize;
        out.extend((0..n.min(INLINE_IDS)).map(|i| (ids[i / 2] >> (32 * (i % 2))) as u32));
        true
    }

    fn insert_inline(&self, piece: &[u8], ids: &[u32]) {
        let key = pack24(piece);
        let set = set_of(&key, piece.len());
        let [Line(w0), Line(w1)] = self.lines.get(set..set + 2).unwrap_or_default() else {
            return;
        };
        // The line that holds the piece already, else an empty one, else
        // either, alternately (so two hot pieces of a set do not keep evicting
        // each other while the set's other line goes unused).
        let empty = |w: &[AtomicU64; 8]| w[0].load(Ordering::Relaxed) >> 32 & 0xFF == 0;
        let w = if holds(w0, &key, piece.len()) {
            w0
        } else if holds(w1, &key, piece.len()) {
            w1
        } else if empty(w0) {
            w0
        } else if empty(w1) || self.evictions.fetch_add(1, Ordering::Relaxed) & 1 == 1 {
            w1
        } else {
            w0
        };
        let head = w[0].load(Ordering::Relaxed);
        // Another writer holds the line, or took it first: drop this insert.
        if head & 1 != 0
            || w[0].compare_exchange(head, head | 1, Ordering::Acquire, Ordering::Relaxed).is_err()
        {
            return;
        }
        // The odd header is visible before any data store (readers then miss).
        fence(Ordering::Release);
        for (i, &k) in key.iter().enumerate() {
            w[1 + i].store(k, Ordering::Relaxed);
        }
        let mut packed = [0u64; INLINE_IDS / 2];
        for (i, &id) in ids.iter().enumerate() {
            packed[i / 2] |= u64::from(id) << (32 * (i % 2));
        }
        for (i, &p) in packed.iter().enumerate() {
            w[4 + i].store(p, Ordering::Relaxed);
        }
        let seq = u64::from((head as u32).wrapping_add(2));
        w[0].store(seq | (piece.len() as u64) << 32 | (ids.len() as u64) << 40, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn get(c: &PieceCache, piece: &[u8]) -> Option<Vec<u32>> {
        let mut out = vec![7];
        c.get_into(piece, &mut out).then(|| out[1..].to_vec())
    }

    #[test]
    fn returns_what_was_inserted_inline_and_in_overflow() {
        let c = PieceCache::new();
        let long = vec![b'x'; 100];
        let many: Vec<u32> = (0..20).collect();
        assert_eq!(get(&c, b"hello"), None);
        c.insert(b"hello", &[1, 2, 3]);
        c.insert(b"a piece of exactly 24 by", &[9; INLINE_IDS]);
        c.insert(&long, &[4, 5]);
        c.insert(b"short", &many);
        assert_eq!(get(&c, b"hello"), Some(vec![1, 2, 3]));
        assert_eq!(get(&c, b"a piece of exactly 24 by"), Some(vec![9; INLINE_IDS]));
        assert_eq!(get(&c, &long), Some(vec![4, 5]));
        assert_eq!(get(&c, b"short"), Some(many));
        // Same bytes zero-padded, other length: other key.
        assert_eq!(get(&c, b"hello\0"), None);
        c.insert(b"hello", &[u32::MAX]);
        assert_eq!(get(&c, b"hello"), Some(vec![u32::MAX]));
        let too_long = vec![b'y'; MAX_CACHED_PIECE + 1];
        c.insert(&too_long, &[1]);
        assert_eq!(get(&c, &too_long), None);
    }

    #[test]
    fn pieces_of_one_set_share_it_and_never_answer_for_another() {
        let c = PieceCache::new();
        // Find two pieces on the same line.
        let a = b"p0".to_vec();
        let set = set_of(&pack24(&a), a.len());
        let same_set: Vec<Vec<u8>> = (1..)
            .map(|i: u32| format!("p{i}").into_bytes())
            .filter(|p| set_of(&pack24(p), p.len()) == set)
            .take(2)
            .collect();
        let (b, d) = (&same_set[0], &same_set[1]);
        c.insert(&a, &[1]);
        assert_eq!(get(&c, b), None);
        // Two pieces of one set both stay.
        c.insert(b, &[2, 2]);
        assert_eq!(get(&c, &a), Some(vec![1]));
        assert_eq!(get(&c, b), Some(vec![2, 2]));
        // A third evicts one of them; every hit is still the right piece's.
        c.insert(d, &[3]);
        assert_eq!(get(&c, d), Some(vec![3]));
        let kept = [get(&c, &a) == Some(vec![1]), get(&c, b) == Some(vec![2, 2])];
        assert_eq!(kept.iter().filter(|&&k| k).count(), 1);
        assert_eq!(get(&c, &a).is_some() as usize + get(&c, b).is_some() as usize, 1);
    }

    /// Writers keep rewriting pieces that share lines while readers check that
    /// every hit is exactly that piece's ids (derived from the piece).
    #[test]
    fn concurrent_readers_see_whole_entries_or_misses() {
        let c = Arc::new(PieceCache::new());
        // Eight pieces in each of two sets, so writers keep evicting each other.
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        for first in ["w0", "w1"] {
            let set = set_of(&pack24(first.as_bytes()), first.len());
            pieces.extend(
                (0..)
                    .map(|i: u32| format!("w{i}").into_bytes())
                    .filter(|p| set_of(&pack24(p), p.len()) == set)
                    .take(8),
            );
        }
        let ids_of = |p: &[u8]| -> Vec<u32> {
            let h = p.iter().fold(17u32, |h, &b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
            (0..1 + (h as usize % INLINE_IDS)).map(|i| h.wrapping_add(i as u32)).collect()
        };
        let pieces = Arc::new(pieces);
        let mut threads = Vec::new();
        for t in 0..4 {
            let (c, pieces) = (Arc::clone(&c), Arc::clone(&pieces));
            threads.push(std::thread::spawn(move || {
                let mut hits = 0u32;
                for round in 0..50_000usize {
                    let p = &pieces[(round * 13 + t * 5) % pieces.len()];
                    if t % 2 == 0 {
                        c.insert(p, &ids_of(p));
                    }
                    let mut out = Vec::new();
                    if c.get_into(p, &mut out) {
                        assert_eq!(out, ids_of(p));
                        hits += 1;
                    }
                }
                hits
            }));
        }
        let hits: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(hits > 0);
    }
}
