//! The prefix index must score exactly like `dynamo_kv_router::RadixTree`
//! 1.6.1 for the same event stream, including its error reports.

use dynamo_kv_router::radix_tree::RadixTree;
use kv_epp_core::RadixIndex;
use kv_epp_oracle::{StreamGen, apply_dynamo, apply_ours, dynamo_scores};

fn run_stream(seed: u64, workers: u64, dp: u32, docs: usize, max_len: usize, events: usize) {
    let mut g = StreamGen::new(seed, workers, dp, docs, max_len);
    let mut ours = RadixIndex::new();
    let mut theirs = RadixTree::new();
    for id in 0..events {
        let e = g.next_event();
        let dyn_err = apply_dynamo(&mut theirs, &e, id as u64);
        let our_err = apply_ours(&mut ours, &e);
        assert_eq!(our_err, dyn_err, "seed {seed} event {id}: error report differs for {e:?}");
        if id % 3 == 0 {
            for _ in 0..4 {
                let q = g.query();
                for early in [false, true] {
                    let want = dynamo_scores(&theirs, &q, early);
                    let got = ours.find_matches(&q, early).scores;
                    assert_eq!(got, want, "seed {seed} event {id} early_exit {early}: {e:?}");
                }
            }
        }
    }
    assert_eq!(ours.membership_count(), theirs.current_size(), "seed {seed}: lookup sizes");
}

#[test]
fn random_streams_small_trees() {
    for seed in 0..300 {
        run_stream(seed, 3, 2, 12, 12, 400);
    }
}

#[test]
fn random_streams_many_workers_long_chains() {
    for seed in 1000..1040 {
        run_stream(seed, 8, 3, 40, 64, 1500);
    }
}

#[test]
fn memory_is_released_after_everything_is_removed() {
    let mut g = StreamGen::new(99, 4, 2, 30, 40);
    let mut ours = RadixIndex::new();
    for _ in 0..5000 {
        let e = g.next_event();
        apply_ours(&mut ours, &e);
    }
    for w in g.workers.clone() {
        ours.remove_worker(w.worker_id);
    }
    assert_eq!(ours.membership_count(), 0);
    assert_eq!(ours.node_count(), 1, "only the root is left");
}
