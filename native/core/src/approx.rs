//! Approximate mode's block lifetimes (no KV events), the Rust twin of
//! src/kv/approx/prune-tracker.ts: which (holder, sequence hash) memberships
//! the router predicted, when each expires, and the removals that keep the
//! index within its TTL and size cap, as Dynamo's pruning indexer does. The
//! TypeScript file's header gives Dynamo's semantics with source references;
//! this module keeps them and the twin's exact order of removals (the
//! TypeScript tests run against both, and a differential test compares them).
//!
//! Invariants: a queue slot is live iff its holder's map points at it; expiries
//! in the queue never decrease (clamped), so the queue is ordered by expiry;
//! each decision's blocks are queued deepest first (leaves leave before
//! parents). Removals go to the index grouped per holder, each holder's
//! hashes in reverse pop order (every decision's run root to leaf); the
//! index's errors for already-detached blocks are ignored, as Dynamo does.
//!
//! Bounded work per call: `route`, `record` and `maintain` remove at most
//! `max(removal_step, 2 × the decision's blocks)` memberships each (the
//! TypeScript header says why). Work left over (a prune not yet at its target,
//! an expiry due) stays queued in the same order for the next call;
//! [`PruneTracker::backlog`] tells the caller to call `maintain` again soon.

use rustc_hash::FxHashMap;

use crate::index::{RadixIndex, StoredBlock, WorkerKey};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PruneSettings {
    pub ttl_ms: f64,
    pub max_tree_size: usize,
    pub prune_target_ratio: f64,
    /// A refresh moving a block's expiry by less than this is skipped.
    pub refresh_granularity_ms: f64,
    /// Removals per call before the rest waits for the next one (at least the
    /// decision's blocks twice over, so a prune always catches up).
    pub removal_step: usize,
}

/// Removals per call by default: ~0.25 ms of index work (bench/README.md, finding AS).
pub const DEFAULT_REMOVAL_STEP: usize = 1024;

impl PruneSettings {
    /// The twin's RangeError messages, for the same out-of-range values.
    pub fn validate(&self) -> Result<(), &'static str> {
        if !(self.ttl_ms.is_finite() && self.ttl_ms > 0.0) {
            return Err("ttlMs must be > 0");
        }
        if self.max_tree_size == 0 || self.max_tree_size > (1usize << 53) {
            return Err("maxTreeSize must be a positive integer");
        }
        if !(self.prune_target_ratio > 0.0 && self.prune_target_ratio <= 1.0) {
            return Err("pruneTargetRatio must be in (0, 1]");
        }
        let g = self.refresh_granularity_ms;
        if !(g.is_finite() && g >= 0.0 && g < self.ttl_ms) {
            return Err("refreshGranularityMs must be in [0, ttlMs)");
        }
        if self.removal_step == 0 || self.removal_step > (1usize << 53) {
            return Err("removalStep must be a positive integer");
        }
        Ok(())
    }
}

struct Holder {
    worker: WorkerKey,
    /// Sequence hash → queue slot (absolute) of its live entry.
    live: FxHashMap<u64, u64>,
}

/// Memberships removed by one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneResult {
    pub expired: usize,
    pub pruned: usize,
}

pub struct PruneTracker {
    ttl_ms: f64,
    max_tree_size: usize,
    target_size: usize,
    refresh_ms: f64,
    removal_step: usize,
    /// Above the cap once and not yet back at the target: pruning goes on.
    pruning: bool,
    holders: Vec<Holder>,
    holder_slot: FxHashMap<WorkerKey, u32>,
    live_count: usize,
    /// Absolute slot number of `queue[0]`; slots below were popped or compacted away.
    base: u64,
    /// Queue entries from `head` (absolute) on: (hash, expiry, holder).
    queue: std::collections::VecDeque<(u64, f64, u32)>,
    last_expiry: f64,
}

/// Removals grouped per holder, holders in first-seen order.
#[derive(Default)]
struct RemovalBatch {
    count: usize,
    order: Vec<u32>,
    by_holder: FxHashMap<u32, Vec<u64>>,
}

impl RemovalBatch {
    fn add(&mut self, holder: u32, hash: u64) {
        self.by_holder
            .entry(holder)
            .or_insert_with(|| {
                self.order.push(holder);
                Vec::new()
            })
            .push(hash);
        self.count += 1;
    }

    fn apply(mut self, index: &mut RadixIndex, holders: &[Holder]) -> usize {
        for s in &self.order {
            let mut hashes = self.by_holder.remove(s).unwrap_or_default();
            hashes.reverse();
            // A cascade may have dropped some already: counted by the index, ignored here.
            let _ = index.apply_removed(holders[*s as usize].worker, &hashes);
        }
        self.count
    }
}

impl PruneTracker {
    pub fn new(settings: PruneSettings) -> Result<PruneTracker, &'static str> {
        settings.validate()?;
        Ok(PruneTracker {
            ttl_ms: settings.ttl_ms,
            max_tree_size: settings.max_tree_size,
            target_size: (settings.max_tree_size as f64 * settings.prune_target_ratio).floor()
                as usize,
            refresh_ms: settings.refresh_granularity_ms,
            removal_step: settings.removal_step,
            pruning: false,
            holders: Vec::new(),
            holder_slot: FxHashMap::default(),
            live_count: 0,
            base: 0,
            queue: std::collections::VecDeque::new(),
            last_expiry: f64::NEG_INFINITY,
        })
    }

    /// Live tracked memberships.
    pub fn size(&self) -> usize {
        self.live_count
    }

    /// Queue entries, live or stale.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn slot_for(&mut self, worker: WorkerKey) -> u32 {
        if let Some(&s) = self.holder_slot.get(&worker) {
            return s;
        }
        let s = self.holders.len() as u32;
        self.holders.push(Holder { worker, live: FxHashMap::default() });
        self.holder_slot.insert(worker, s);
        s
    }

    fn is_live(&self, slot: u64) -> bool {
        let Some(&(hash, _, s)) = self.queue.get((slot - self.base) as usize) else {
            return false;
        };
        self.holders[s as usize].live.get(&hash) == Some(&slot)
    }

    /// Removals one call may make for a decision of `blocks` blocks.
    pub fn budget(&self, blocks: usize) -> usize {
        self.removal_step.max(blocks.saturating_mul(2))
    }

    /// What the router does after a decision in approximate mode: expire what
    /// is due, store the decision's blocks for `worker` (parent none, the
    /// sequence hashes of `local` as external hashes), and when the index
    /// took them, track them and prune above the cap. Returns the removals
    /// (at most `budget(local.len())`; the rest is [`Self::backlog`]).
    pub fn route(
        &mut self,
        index: &mut RadixIndex,
        worker: WorkerKey,
        local: &[u64],
        now_ms: f64,
    ) -> PruneResult {
        self.route_within(index, worker, local, now_ms, self.budget(local.len()))
    }

    /// [`Self::route`] with at most `budget` removals (a caller that goes on
    /// with [`Self::maintain_within`] in further calls).
    pub fn route_within(
        &mut self,
        index: &mut RadixIndex,
        worker: WorkerKey,
        local: &[u64],
        now_ms: f64,
        budget: usize,
    ) -> PruneResult {
        let expired = self.expire_up_to(index, now_ms, budget);
        let seq = crate::hash::sequence_hashes(local);
        let blocks: Vec<StoredBlock> = local
            .iter()
            .zip(&seq)
            .map(|(&l, &e)| StoredBlock { local_hash: l, external_hash: e })
            .collect();
        let pruned = match index.apply_stored(worker, None, &blocks) {
            Ok(()) => {
                self.track(worker, &seq, now_ms);
                self.prune_to_cap(index, budget - expired)
            }
            Err(_) => 0,
        };
        PruneResult { expired, pruned }
    }

    /// `worker` now holds `sequence` (the index applied the matching store):
    /// each block expires at `now + ttl`, refreshing tracked ones; then prunes
    /// oldest first toward the target if above the cap. Returns how many it
    /// pruned (at most `budget(sequence.len())`).
    pub fn record(
        &mut self,
        index: &mut RadixIndex,
        worker: WorkerKey,
        sequence: &[u64],
        now_ms: f64,
    ) -> usize {
        self.track(worker, sequence, now_ms);
        self.prune_to_cap(index, self.budget(sequence.len()))
    }

    fn track(&mut self, worker: WorkerKey, sequence: &[u64], now_ms: f64) {
        let s = self.slot_for(worker);
        let expiry = (now_ms + self.ttl_ms).max(self.last_expiry);
        self.last_expiry = expiry;
        let tail = self.base + self.queue.len() as u64;
        let mut next = tail;
        for &h in sequence.iter().rev() {
            let prev = self.holders[s as usize].live.get(&h).copied();
            if let Some(p) = prev {
                let queued_expiry = self.queue[(p - self.base) as usize].1;
                if expiry - queued_expiry < self.refresh_ms {
                    continue;
                }
            } else {
                self.live_count += 1;
            }
            self.queue.push_back((h, expiry, s));
            self.holders[s as usize].live.insert(h, next);
            next += 1;
        }
    }

    /// Removes every membership whose expiry is `<= now_ms` from the index.
    pub fn expire(&mut self, index: &mut RadixIndex, now_ms: f64) -> usize {
        self.expire_up_to(index, now_ms, usize::MAX)
    }

    /// [`Self::expire`], stopping after `budget` removals.
    pub fn expire_up_to(&mut self, index: &mut RadixIndex, now_ms: f64, budget: usize) -> usize {
        let mut batch = RemovalBatch::default();
        while batch.count < budget && self.queue.front().is_some_and(|e| e.1 <= now_ms) {
            self.take_head(&mut batch);
        }
        batch.apply(index, &self.holders)
    }

    /// Periodic upkeep: expiry, then the size cap, `removal_step` removals at
    /// most; call again while [`Self::backlog`] says so.
    pub fn maintain(&mut self, index: &mut RadixIndex, now_ms: f64) -> PruneResult {
        self.maintain_within(index, now_ms, self.removal_step)
    }

    /// [`Self::maintain`] with at most `budget` removals.
    pub fn maintain_within(
        &mut self,
        index: &mut RadixIndex,
        now_ms: f64,
        budget: usize,
    ) -> PruneResult {
        let expired = self.expire_up_to(index, now_ms, budget);
        PruneResult { expired, pruned: self.prune_to_cap(index, budget - expired) }
    }

    /// Work the budget left over: a prune short of its target, or an expiry
    /// due at `now_ms`.
    pub fn backlog(&mut self, now_ms: f64) -> bool {
        self.pruning || self.next_expiry().is_some_and(|e| e <= now_ms)
    }

    /// The earliest pending expiry, if anything is queued.
    pub fn next_expiry(&mut self) -> Option<f64> {
        while !self.queue.is_empty() && !self.is_live(self.base) {
            self.queue.pop_front();
            self.base += 1;
        }
        self.queue.front().map(|e| e.1)
    }

    /// Forgets one holder's timers (it was cleared or left); the index is not touched.
    pub fn forget_holder(&mut self, worker: WorkerKey) {
        if let Some(&s) = self.holder_slot.get(&worker) {
            self.reset(s);
        }
    }

    /// Forgets every dp rank of a worker; the index is not touched.
    pub fn forget_worker(&mut self, worker_id: u64) {
        for s in 0..self.holders.len() {
            if self.holders[s].worker.worker_id == worker_id {
                self.reset(s as u32);
            }
        }
    }

    fn reset(&mut self, s: u32) {
        let h = &mut self.holders[s as usize];
        self.live_count -= h.live.len();
        // Its queued slots no longer match the (empty) map: they go stale.
        h.live = FxHashMap::default();
        self.compact_if_sparse();
    }

    /// Above the cap, prunes oldest first toward `target_size`, at most
    /// `budget` removals now; an unfinished prune continues at the next call.
    fn prune_to_cap(&mut self, index: &mut RadixIndex, budget: usize) -> usize {
        let size = self.live_count.max(index.membership_count());
        self.pruning |= size > self.max_tree_size;
        if !self.pruning || size <= self.target_size {
            self.pruning = false;
            self.compact_if_sparse();
            return 0;
        }
        let want = size - self.target_size;
        let mut batch = RemovalBatch::default();
        while batch.count < want.min(budget) && !self.queue.is_empty() {
            self.take_head(&mut batch);
        }
        // Done when the whole difference went (cascades may have taken more) or nothing is left.
        if batch.count >= want || self.queue.is_empty() {
            self.pruning = false;
        }
        batch.apply(index, &self.holders)
    }

    /// Pops the head slot; a live entry is untracked and added to `batch`.
    fn take_head(&mut self, batch: &mut RemovalBatch) {
        let slot = self.base;
        let Some((h, _, s)) = self.queue.pop_front() else {
            return;
        };
        self.base += 1;
        let holder = &mut self.holders[s as usize];
        if holder.live.get(&h) == Some(&slot) {
            holder.live.remove(&h);
            self.live_count -= 1;
            batch.add(s, h);
        }
    }

    /// Drops stale entries once they outnumber live ones 4 to 1 (amortised
    /// O(1) per queued entry); live entries keep their order.
    fn compact_if_sparse(&mut self) {
        let n = self.queue.len();
        if n < 1024 || n < 4 * (self.live_count + 1) {
            return;
        }
        let old_base = self.base;
        let old: Vec<(u64, f64, u32)> = self.queue.drain(..).collect();
        // New slots continue from the old tail, so no number is ever reused.
        let new_base = old_base + n as u64;
        let mut next = new_base;
        for (i, (h, e, s)) in old.into_iter().enumerate() {
            let slot = old_base + i as u64;
            let live = &mut self.holders[s as usize].live;
            if live.get(&h) == Some(&slot) {
                live.insert(h, next);
                self.queue.push_back((h, e, s));
                next += 1;
            }
        }
        self.base = new_base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W1: WorkerKey = WorkerKey { worker_id: 1, dp_rank: 0 };
    const W2: WorkerKey = WorkerKey { worker_id: 2, dp_rank: 0 };

    fn tracker(max: usize, refresh: f64) -> PruneTracker {
        PruneTracker::new(PruneSettings {
            ttl_ms: 1000.0,
            max_tree_size: max,
            prune_target_ratio: 0.8,
            refresh_granularity_ms: refresh,
            removal_step: DEFAULT_REMOVAL_STEP,
        })
        .unwrap()
    }

    fn depth(index: &RadixIndex, local: &[u64], w: WorkerKey) -> u32 {
        index
            .find_matches(local, false)
            .scores
            .into_iter()
            .find(|(k, _)| *k == w)
            .map_or(0, |(_, d)| d)
    }

    #[test]
    fn expires_refreshes_and_prunes_deepest_first() {
        let mut index = RadixIndex::new();
        let mut t = tracker(1 << 20, 0.0);
        t.route(&mut index, W1, &[1, 2, 3, 4], 0.0);
        t.route(&mut index, W1, &[1, 2, 5], 500.0);
        t.route(&mut index, W2, &[1, 2, 3, 4], 500.0);
        assert_eq!(index.membership_count(), 9);
        assert_eq!(t.expire(&mut index, 999.0), 0);
        assert_eq!(t.expire(&mut index, 1000.0), 2); // W1's 3, 4
        assert_eq!(depth(&index, &[1, 2, 3, 4], W1), 2);
        assert_eq!(t.maintain(&mut index, 1500.0), PruneResult { expired: 7, pruned: 0 });
        assert_eq!((t.size(), index.membership_count()), (0, 0));

        // Cap 4, target 3: the fifth membership prunes two, the newest decision's deepest first.
        let mut t = tracker(4, 0.0);
        t.route(&mut index, W1, &[1, 2, 3], 0.0);
        let r = t.route(&mut index, W2, &[1, 2], 10.0);
        assert_eq!(r.pruned, 2);
        assert_eq!(depth(&index, &[1, 2, 3], W1), 1);
        assert_eq!(depth(&index, &[1, 2], W2), 2);
    }

    #[test]
    fn prunes_and_expires_in_bounded_steps() {
        let mut index = RadixIndex::new();
        let mut t = PruneTracker::new(PruneSettings {
            ttl_ms: 1000.0,
            max_tree_size: 20,
            prune_target_ratio: 0.5,
            refresh_granularity_ms: 0.0,
            removal_step: 4,
        })
        .unwrap();
        for i in 0..10u64 {
            t.route(&mut index, W1, &[100 + 2 * i, 101 + 2 * i], i as f64);
        }
        // 22 > 20: 12 to prune, 4 per call; the prune goes on below the cap, to the target.
        assert_eq!(t.route(&mut index, W1, &[200, 201], 10.0).pruned, 4);
        assert!(t.backlog(10.0));
        assert_eq!(t.maintain(&mut index, 10.0), PruneResult { expired: 0, pruned: 4 });
        assert_eq!(t.maintain(&mut index, 10.0), PruneResult { expired: 0, pruned: 4 });
        assert!(!t.backlog(10.0));
        assert_eq!(index.membership_count(), 10);
        assert_eq!(depth(&index, &[110, 111], W1), 0); // decision 5 went
        assert_eq!(depth(&index, &[112, 113], W1), 2); // decision 6 stays
        // Expiry: 10 due, 4 per maintain call.
        assert!(t.backlog(1010.0));
        assert_eq!(t.maintain(&mut index, 2000.0).expired, 4);
        assert_eq!(t.maintain(&mut index, 2000.0).expired, 4);
        assert_eq!(t.maintain(&mut index, 2000.0).expired, 2);
        assert!(!t.backlog(2000.0));
        assert_eq!((t.size(), index.membership_count()), (0, 0));
    }

    #[test]
    fn refresh_granularity_skips_near_refreshes() {
        let mut index = RadixIndex::new();
        let mut t = tracker(1 << 20, 100.0);
        t.route(&mut index, W1, &[1, 2, 3], 0.0);
        t.route(&mut index, W1, &[1, 2, 3], 50.0); // within 100: not re-queued
        assert_eq!(t.queued(), 3);
        assert_eq!(t.expire(&mut index, 1000.0), 3); // early by 50
        t.route(&mut index, W1, &[1, 2, 3], 2000.0);
        t.route(&mut index, W1, &[1, 2, 3], 2100.0); // re-queued: stale entries remain
        assert_eq!((t.queued(), t.size()), (6, 3));
        assert_eq!(t.next_expiry(), Some(3100.0));
    }

    #[test]
    fn forgetting_a_holder_issues_no_removals_and_compacts() {
        let mut index = RadixIndex::new();
        let mut t = tracker(1 << 20, 0.0);
        let long: Vec<u64> = (1..=3000).collect();
        t.route(&mut index, W1, &long, 0.0);
        t.route(&mut index, W2, &[7, 8], 0.0);
        t.forget_worker(1);
        assert_eq!(t.size(), 2);
        assert!(t.queued() <= 2, "stale entries compacted: {}", t.queued());
        assert_eq!(t.expire(&mut index, 1000.0), 2);
        assert_eq!(depth(&index, &long, W1), 3000); // untouched
        assert!(
            PruneTracker::new(PruneSettings {
                ttl_ms: 0.0,
                max_tree_size: 1,
                prune_target_ratio: 0.5,
                refresh_granularity_ms: 0.0,
                removal_step: 1,
            })
            .is_err()
        );
    }
}
