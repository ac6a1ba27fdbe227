//! The ids of whole text segments (the text between two added tokens), shared
//! by the threads that encode with one tokenizer (fastbpe.rs).
//!
//! Why: chat templates put every message between special tokens, across which
//! byte-level BPE never merges, and a gateway sees the same segments again and
//! again: the system prompt of every request of an application, and in a
//! multi-turn conversation every earlier message, resent with each turn. A
//! segment seen before costs a hash, a compare and a copy instead of a split
//! and a merge loop per piece.
//!
//! Contract: [`SegmentCache::get_into`] appends exactly the ids last inserted
//! for a segment whose bytes equal the asked ones (compared in full: a hash
//! collision is a miss, never another segment's ids), or appends nothing and
//! returns false. Memory: at most the budget set with
//! [`set_segment_cache_bytes`] (bytes of segment text plus ids, over all
//! tokenizers of the process; default [`DEFAULT_BUDGET_BYTES`], 0 turns the
//! cache off), as two generations per shard: inserts go to the current one, a
//! hit in the previous one moves the entry to the current one, and a full
//! current generation becomes the previous one (dropping the older), so the
//! segments in use stay while one-offs age out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustc_hash::FxBuildHasher;
use xxhash_rust::xxh3::xxh3_64;

/// Segments shorter than this are encoded directly (a lookup would cost about
/// what it saves).
pub const MIN_SEGMENT_BYTES: usize = 256;
/// 64 MiB.
pub const DEFAULT_BUDGET_BYTES: usize = 64 << 20;
const SHARDS: usize = 16;

static BUDGET_BYTES: AtomicUsize = AtomicUsize::new(DEFAULT_BUDGET_BYTES);

/// Sets the budget of every segment cache of the process, in bytes (0: off).
/// Takes effect at the next lookup; a smaller budget trims at the next insert.
pub fn set_segment_cache_bytes(bytes: usize) {
    BUDGET_BYTES.store(bytes, Ordering::Relaxed);
}

/// The budget in force, in bytes.
pub fn segment_cache_bytes() -> usize {
    BUDGET_BYTES.load(Ordering::Relaxed)
}

struct Entry {
    text: Box<[u8]>,
    ids: Arc<[u32]>,
}

impl Entry {
    fn cost(&self) -> usize {
        self.text.len() + self.ids.len() * 4
    }
}

type Map = HashMap<u64, Entry, FxBuildHasher>;

#[derive(Default)]
struct Generations {
    current: Map,
    current_bytes: usize,
    previous: Map,
}

/// Lookups and their outcomes since the cache was made (for metrics and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentCacheStats {
    pub hits: u64,
    pub misses: u64,
}

pub(crate) struct SegmentCache {
    shards: Box<[Mutex<Generations>]>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl SegmentCache {
    pub(crate) fn new() -> SegmentCache {
        SegmentCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Generations::default())).collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Whether `segment` goes through the cache at all.
    pub(crate) fn applies(segment: &[u8]) -> bool {
        segment.len() >= MIN_SEGMENT_BYTES && segment_cache_bytes() > 0
    }

    pub(crate) fn key(segment: &[u8]) -> u64 {
        xxh3_64(segment)
    }

    fn shard(&self, key: u64) -> &Mutex<Generations> {
        &self.shards[(key >> 60) as usize % SHARDS]
    }

    /// Appends the ids cached for `segment` (its `key`); false on a miss.
    pub(crate) fn get_into(&self, key: u64, segment: &[u8], out: &mut Vec<u32>) -> bool {
        let ids = {
            let Ok(mut g) = self.shard(key).lock() else { return false };
            match g.current.get(&key) {
                Some(e) if *e.text == *segment => Some(e.ids.clone()),
                Some(_) => None,
                None => match g.previous.remove(&key) {
                    Some(e) if *e.text == *segment => {
                        let ids = e.ids.clone();
                        g.current_bytes += e.cost();
                        g.current.insert(key, e);
                        Some(ids)
                    }
                    _ => None,
                },
            }
        };
        match ids {
            Some(ids) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                out.extend_from_slice(&ids);
                true
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Keeps `ids` as the encoding of `segment` (its `key`), unless the entry
    /// alone is more than a shard's generation may hold.
    pub(crate) fn insert(&self, key: u64, segment: &[u8], ids: &[u32]) {
        let generation = segment_cache_bytes() / SHARDS / 2;
        let entry = Entry { text: segment.into(), ids: ids.into() };
        let cost = entry.cost();
        if cost > generation {
            return;
        }
        let Ok(mut g) = self.shard(key).lock() else { return };
        if g.current_bytes + cost > generation {
            g.previous = std::mem::take(&mut g.current);
            g.current_bytes = 0;
        }
        g.current_bytes += cost;
        if let Some(old) = g.current.insert(key, entry) {
            g.current_bytes -= old.cost();
        }
    }

    pub(crate) fn stats(&self) -> SegmentCacheStats {
        SegmentCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| b'a' + ((i as u8).wrapping_mul(seed)) % 26).collect()
    }

    #[test]
    fn hits_only_on_equal_bytes_and_ages_out_unused_segments() {
        let c = SegmentCache::new();
        let (a, b) = (text(3, 300), text(5, 300));
        let (ka, kb) = (SegmentCache::key(&a), SegmentCache::key(&b));
        let mut out = vec![7];
        assert!(!c.get_into(ka, &a, &mut out));
        c.insert(ka, &a, &[1, 2, 3]);
        assert!(c.get_into(ka, &a, &mut out));
        assert_eq!(out, [7, 1, 2, 3]);
        // Same key, other bytes (a forced collision): a miss, nothing appended.
        assert!(!c.get_into(ka, &b, &mut out));
        assert_eq!(out, [7, 1, 2, 3]);
        assert!(!c.get_into(kb, &b, &mut out));
        assert_eq!(c.stats(), SegmentCacheStats { hits: 1, misses: 3 });
    }

    #[test]
    fn stays_within_the_budget_and_keeps_what_is_used() {
        let c = SegmentCache::new();
        let generation = segment_cache_bytes() / SHARDS / 2;
        let hot = text(7, 400);
        let kh = SegmentCache::key(&hot);
        c.insert(kh, &hot, &[9; 100]);
        // Many one-off segments in the hot one's shard: each costs 1 KiB + 400 B.
        let mut n = 0u32;
        let mut inserted = 0;
        while inserted < 3 * generation {
            n += 1;
            let t: Vec<u8> = format!("{n:0>1024}").into_bytes();
            let k = SegmentCache::key(&t);
            if (k >> 60) != (kh >> 60) {
                continue;
            }
            c.insert(k, &t, &[n; 100]);
            inserted += t.len() + 400;
            let mut out = Vec::new();
            // Used again and again: never aged out.
            assert!(c.get_into(kh, &hot, &mut out), "hot segment lost after {inserted} bytes");
        }
        let g = c.shard(kh).lock().unwrap();
        let held: usize = g.current.values().chain(g.previous.values()).map(Entry::cost).sum();
        assert!(held <= 2 * generation + 2048, "{held} bytes held, generation {generation}");
    }

    #[test]
    fn skips_entries_larger_than_a_generation() {
        let c = SegmentCache::new();
        let big = vec![b'x'; segment_cache_bytes() / SHARDS];
        let k = SegmentCache::key(&big);
        c.insert(k, &big, &[1]);
        assert!(!c.get_into(k, &big, &mut Vec::new()));
    }
}
