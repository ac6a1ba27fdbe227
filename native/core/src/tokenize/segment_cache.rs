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
//! returns false. Memory: per tokenizer, at most the budget set with
//! [`set_segment_cache_bytes`] (bytes of segment text plus ids, not counting
//! the maps' own overhead; default [`DEFAULT_BUDGET_BYTES`], 0 turns the cache
//! off and frees it at the next encode), as two generations per shard: inserts
//! and hits in the previous generation go to the current one, and a full
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
/// Bumped by every budget change: each cache empties itself at its next use
/// after one (see `SegmentCache::sync`).
static BUDGET_EPOCH: AtomicU64 = AtomicU64::new(0);

/// Sets the budget of every segment cache of the process, in bytes (0: off).
/// Each cache drops what it holds at its next encode and then keeps to the
/// new budget.
pub fn set_segment_cache_bytes(bytes: usize) {
    BUDGET_BYTES.store(bytes, Ordering::Relaxed);
    BUDGET_EPOCH.fetch_add(1, Ordering::Release);
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
    /// The budget epoch this cache's contents were made under.
    epoch: AtomicU64,
}

/// Bytes one shard's generation may hold under the budget in force.
fn generation_bytes() -> usize {
    segment_cache_bytes() / SHARDS / 2
}

impl SegmentCache {
    pub(crate) fn new() -> SegmentCache {
        SegmentCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Generations::default())).collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            epoch: AtomicU64::new(BUDGET_EPOCH.load(Ordering::Acquire)),
        }
    }

    /// Empties the cache if the budget changed since its contents were made
    /// (so a budget of 0 frees them); one atomic load otherwise. Call before
    /// each encode, whether or not a segment goes through the cache.
    pub(crate) fn sync(&self) {
        let now = BUDGET_EPOCH.load(Ordering::Acquire);
        if self.epoch.swap(now, Ordering::AcqRel) == now {
            return;
        }
        for shard in &*self.shards {
            if let Ok(mut g) = shard.lock() {
                *g = Generations::default();
            }
        }
    }

    /// Whether `segment` goes through the cache at all (never when the budget
    /// leaves a generation less than one smallest entry).
    pub(crate) fn applies(segment: &[u8]) -> bool {
        segment.len() >= MIN_SEGMENT_BYTES && generation_bytes() >= MIN_SEGMENT_BYTES
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
                        // Promoted like an insert: the current generation stays
                        // within its size, rotating first when full.
                        if g.current_bytes + e.cost() > generation_bytes() {
                            g.previous = std::mem::take(&mut g.current);
                            g.current_bytes = 0;
                        }
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
        let generation = generation_bytes();
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

    /// Keys of distinct 1 KiB segments that all fall in one shard.
    fn same_shard_segments(n: usize) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = 0u32;
        while out.len() < n {
            i += 1;
            let t: Vec<u8> = format!("{i:0>1024}").into_bytes();
            let k = SegmentCache::key(&t);
            if k >> 60 == 3 {
                out.push((k, t));
            }
        }
        out
    }

    #[test]
    fn hits_that_promote_keep_to_the_budget_too() {
        // A conversation resent every turn: each turn adds a segment and hits all
        // earlier ones, so nothing is ever a one-off.
        let c = SegmentCache::new();
        let generation = generation_bytes();
        let segs = same_shard_segments(3 * generation / 1424 + 8);
        for (t, (k, text)) in segs.iter().enumerate() {
            c.insert(*k, text, &[1; 100]);
            for (k2, text2) in &segs[..=t] {
                c.get_into(*k2, text2, &mut Vec::new());
            }
            let g = c.shard(*k).lock().unwrap();
            let held: usize = g.current.values().chain(g.previous.values()).map(Entry::cost).sum();
            assert!(held <= 2 * generation, "turn {t}: {held} bytes held, generation {generation}");
        }
    }

    #[test]
    fn a_budget_change_empties_the_cache_at_its_next_use() {
        let c = SegmentCache::new();
        let [(k, text)] = same_shard_segments(1).try_into().unwrap();
        c.insert(k, &text, &[5]);
        assert!(c.get_into(k, &text, &mut Vec::new()));
        // The same budget set again still counts as a change.
        set_segment_cache_bytes(segment_cache_bytes());
        c.sync();
        assert!(!c.get_into(k, &text, &mut Vec::new()));
        c.insert(k, &text, &[5]);
        c.sync();
        assert!(c.get_into(k, &text, &mut Vec::new()));
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
