//! How long one approximate-mode `route` holds the index (and, in kv-epp, the
//! event loop) when the tree is at its size cap, with unique 220 KB prompts
//! (3 200 blocks each, so every decision adds 3 200 memberships): unbounded
//! pruning (one prune of 20 % of the cap) against the bounded steps.
//! bench/README.md, finding AS.
//!
//!   cargo run --release -p kv-epp-core --example approx_prune
use kv_epp_core::approx::{DEFAULT_REMOVAL_STEP, PruneSettings, PruneTracker};
use kv_epp_core::index::{RadixIndex, WorkerKey};
use std::time::Instant;

fn main() {
    let blocks = 3200usize;
    for step in [usize::MAX >> 11, DEFAULT_REMOVAL_STEP, 4096] {
        let mut index = RadixIndex::new();
        let mut t = PruneTracker::new(PruneSettings {
            ttl_ms: 120_000.0,
            max_tree_size: 1 << 20,
            prune_target_ratio: 0.8,
            refresh_granularity_ms: 5000.0,
            removal_step: step,
        })
        .unwrap();
        let mut times = Vec::new();
        let mut removed = 0usize;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for d in 0..2000u64 {
            let local: Vec<u64> = (0..blocks)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                })
                .collect();
            let w = WorkerKey::new(1 + d % 2, 0);
            let t0 = Instant::now();
            let r = t.route(&mut index, w, &local, d as f64 * 4.0);
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            removed += r.expired + r.pruned;
        }
        let steady = &mut times[600..].to_vec();
        steady.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let pct = |p: f64| steady[((steady.len() - 1) as f64 * p) as usize];
        println!(
            "step {:>9}: route p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; removed {} ({} ns each incl. inserts), memberships {}",
            if step > 1 << 40 { "unbounded".to_string() } else { step.to_string() },
            pct(0.5),
            pct(0.99),
            steady[steady.len() - 1],
            removed,
            (times.iter().sum::<f64>() * 1e6 / removed.max(1) as f64) as u64,
            index.membership_count(),
        );
    }
}
