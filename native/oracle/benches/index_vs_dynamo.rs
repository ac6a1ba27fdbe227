//! kv-epp's `RadixIndex` against `dynamo_kv_router::radix_tree::RadixTree`
//! 1.6.1 on the same event stream in the same run.
//!
//! Workload (deterministic, seed fixed): 64 workers (dp rank 0), each filled to
//! `KV_EPP_BENCH_PER_WORKER` (default 16,384) distinct blocks, so about 1 M
//! worker-block memberships. Sequences are 128 blocks long: a system prompt
//! (32 of them, 8-48 blocks, skewed popularity) then a per-conversation
//! continuation; a quarter of the conversations fork from an earlier one, so
//! trees overlap at two or three levels. A worker emits only the blocks it does
//! not hold yet (parent = its last cached block), cut into events of 16-128
//! blocks; workers' events are interleaved.
//!
//! Cases:
//! 1. apply: all store events, blocks/s;
//! 2. find_matches, early_exit = false, 128-block queries: stored sequence
//!    (hit), stored prefix + divergent tail, system prompt + new conversation,
//!    unknown first block (cold miss); p50/p99 per query (both implementations
//!    timed in alternating blocks, best of several passes) plus a batch mean;
//!    scores asserted identical (both early_exit modes) on a sample, also
//!    after the removals;
//! 3. memory: each index built in its own child process (the bench re-runs
//!    itself with `KV_EPP_BENCH_CHILD=ours|dynamo`) after `malloc_trim`: RSS
//!    growth, and live heap growth from a counting global allocator, divided by
//!    memberships (ours `membership_count`, Dynamo `current_size`, asserted
//!    equal); plus ours `heap_bytes()`;
//! 4. removal: tail-first removal events (16-64 blocks) of every stored
//!    sequence's tail, blocks/s.
//!
//! Run: `cd native && cargo bench -p kv-epp-oracle --bench index_vs_dynamo`.
//! Prints a table and one JSON line (prefixed by nothing, starts with `{`);
//! the JSON also goes to the file named by `KV_EPP_BENCH_JSON` when set.
//! Knobs: `KV_EPP_BENCH_PER_WORKER`, `KV_EPP_BENCH_QUERIES` (per kind, default
//! 20,000), `KV_EPP_BENCH_REPS` (apply/remove repetitions, best one reported,
//! default 5), `KV_EPP_BENCH_QUERY_PASSES` (query passes, best statistic
//! reported, default 3), `KV_EPP_BENCH_BLOCK` (queries per alternating block,
//! default 500).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::Instant;

use dynamo_kv_router::protocols::{LocalBlockHash, RouterEvent};
use dynamo_kv_router::radix_tree::RadixTree;
use kv_epp_core::{RadixIndex, StoredBlock, WorkerKey};
use kv_epp_oracle::{Event, apply_ours, dynamo_scores, to_router_event};
use rand::{Rng, SeedableRng, rngs::SmallRng};

/// Counts live heap bytes requested through Rust's allocator while enabled
/// (only in the memory child processes; one relaxed load per call otherwise).
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(new_size as isize - l.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.realloc(p, l, new_size) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Returns free heap pages to the OS so that reusing them shows up as RSS growth.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        unsafe {
            malloc_trim(0);
        }
    }
}

const WORKERS: u64 = 64;
const SEQ_LEN: usize = 128;
const SYSTEM_PROMPTS: usize = 32;
const CONVERSATIONS: usize = 8192;
const FORK_P: f64 = 0.25;
const SEED: u64 = 0x6b76_2d65_7070;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn worker_key(w: u64) -> WorkerKey {
    WorkerKey::new(1000 + w, 0)
}

/// Engine-style chained block hash: equal prefixes get equal hashes.
fn chain(prev: u64, local: u64) -> u64 {
    let mut h = (prev ^ local.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^ (h >> 32)
}

struct Conversation {
    local: Vec<u64>,
    external: Vec<u64>,
    /// Blocks shared with the system prompt.
    sys_len: usize,
}

struct Workload {
    store_events: Vec<Event>,
    remove_events: Vec<Event>,
    stored_blocks: usize,
    /// Distinct blocks across all workers (tree blocks when nothing is duplicated).
    unique_blocks: usize,
    removed_blocks: usize,
    queries: Vec<(&'static str, Vec<Vec<u64>>)>,
}

fn conversations(rng: &mut SmallRng) -> Vec<Conversation> {
    let prompts: Vec<Vec<u64>> = (0..SYSTEM_PROMPTS)
        .map(|_| {
            let len = rng.random_range(8..=48);
            (0..len).map(|_| rng.random()).collect()
        })
        .collect();
    let mut convs: Vec<Conversation> = Vec::with_capacity(CONVERSATIONS);
    for _ in 0..CONVERSATIONS {
        let (mut local, sys_len) = if !convs.is_empty() && rng.random_bool(FORK_P) {
            // A later turn / branch of an earlier conversation.
            let base = &convs[rng.random_range(0..convs.len())];
            let keep = rng.random_range(base.sys_len + 1..SEQ_LEN);
            (base.local[..keep].to_vec(), base.sys_len)
        } else {
            // Skewed popularity: low-numbered prompts are used more.
            let u: f64 = rng.random();
            let p = &prompts[((u * u) * SYSTEM_PROMPTS as f64) as usize];
            (p.clone(), p.len())
        };
        while local.len() < SEQ_LEN {
            local.push(rng.random());
        }
        let mut external = Vec::with_capacity(SEQ_LEN);
        let mut prev = 0x6b76_6570_7000_0001u64;
        for &l in &local {
            prev = chain(prev, l);
            external.push(prev);
        }
        convs.push(Conversation { local, external, sys_len });
    }
    convs
}

fn interleave(
    rng: &mut SmallRng,
    mut per_worker: Vec<std::collections::VecDeque<Event>>,
) -> Vec<Event> {
    let mut out = Vec::new();
    let mut live: Vec<usize> = (0..per_worker.len()).collect();
    while !live.is_empty() {
        let k = rng.random_range(0..live.len());
        let w = live[k];
        match per_worker[w].pop_front() {
            Some(e) => out.push(e),
            None => {
                live.swap_remove(k);
            }
        }
    }
    out
}

fn workload(per_worker: usize, queries: usize) -> Workload {
    let mut rng = SmallRng::seed_from_u64(SEED);
    let convs = conversations(&mut rng);

    // Stores.
    let mut store_q = Vec::new();
    // (conversation, end) per worker, in store order.
    let mut held_seqs: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut stored_blocks = 0usize;
    for w in 0..WORKERS {
        let worker = worker_key(w);
        let mut held: HashSet<u64> = HashSet::with_capacity(per_worker);
        let mut seqs = Vec::new();
        let mut q = std::collections::VecDeque::new();
        while held.len() < per_worker {
            let c = rng.random_range(0..convs.len());
            let conv = &convs[c];
            // Held sets are prefix-closed: find the first block not cached yet.
            let start = conv.external.iter().position(|h| !held.contains(h)).unwrap_or(SEQ_LEN);
            if start == SEQ_LEN {
                continue;
            }
            let end = (start + (per_worker - held.len())).min(SEQ_LEN);
            let mut a = start;
            while a < end {
                let b = (a + rng.random_range(16..=128)).min(end);
                q.push_back(Event::Stored {
                    worker,
                    parent: (a > 0).then(|| conv.external[a - 1]),
                    blocks: (a..b)
                        .map(|i| StoredBlock {
                            local_hash: conv.local[i],
                            external_hash: conv.external[i],
                        })
                        .collect(),
                });
                stored_blocks += b - a;
                a = b;
            }
            held.extend(conv.external[start..end].iter().copied());
            seqs.push((c, end));
        }
        store_q.push(q);
        held_seqs.push(seqs);
    }
    let unique_blocks = store_q
        .iter()
        .flatten()
        .flat_map(|e| match e {
            Event::Stored { blocks, .. } => blocks.iter().map(|b| b.external_hash).collect(),
            _ => Vec::new(),
        })
        .collect::<HashSet<u64>>()
        .len();
    let store_events = interleave(&mut rng, store_q);

    // Removals: each stored sequence loses a 16-64 block tail (not into its
    // system prompt), tail first, as engines evict.
    let mut remove_q = Vec::new();
    let mut removed_blocks = 0usize;
    for (w, seqs) in held_seqs.iter().enumerate() {
        let worker = worker_key(w as u64);
        let mut gone: HashSet<u64> = HashSet::new();
        let mut q = std::collections::VecDeque::new();
        for &(c, end) in seqs {
            let conv = &convs[c];
            let from = end.saturating_sub(rng.random_range(16..=64)).max(conv.sys_len);
            let hashes: Vec<u64> =
                (from..end).rev().map(|i| conv.external[i]).filter(|h| gone.insert(*h)).collect();
            if hashes.is_empty() {
                continue;
            }
            removed_blocks += hashes.len();
            q.push_back(Event::Removed { worker, hashes });
        }
        remove_q.push(q);
    }
    let remove_events = interleave(&mut rng, remove_q);

    // Queries (128 blocks each).
    let all_seqs: Vec<(usize, usize)> = held_seqs.iter().flatten().copied().collect();
    let mut hit = Vec::with_capacity(queries);
    let mut divergent = Vec::with_capacity(queries);
    let mut novel = Vec::with_capacity(queries);
    let mut cold = Vec::with_capacity(queries);
    for _ in 0..queries {
        let (c, _) = all_seqs[rng.random_range(0..all_seqs.len())];
        let conv = &convs[c];
        hit.push(conv.local.clone());

        let (c, _) = all_seqs[rng.random_range(0..all_seqs.len())];
        let conv = &convs[c];
        let keep = rng.random_range(conv.sys_len + 1..SEQ_LEN);
        let mut q = conv.local[..keep].to_vec();
        q.extend((keep..SEQ_LEN).map(|_| rng.random::<u64>()));
        divergent.push(q);

        let conv = &convs[rng.random_range(0..convs.len())];
        let mut q = conv.local[..conv.sys_len].to_vec();
        q.extend((conv.sys_len..SEQ_LEN).map(|_| rng.random::<u64>()));
        novel.push(q);

        cold.push((0..SEQ_LEN).map(|_| rng.random::<u64>()).collect());
    }

    Workload {
        store_events,
        remove_events,
        stored_blocks,
        unique_blocks,
        removed_blocks,
        queries: vec![
            ("hit", hit),
            ("hit_divergent_tail", divergent),
            ("miss_after_system_prompt", novel),
            ("miss_cold", cold),
        ],
    }
}

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    let kb: usize = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS kB");
    kb * 1024
}

fn router_events(events: &[Event], first_id: u64) -> Vec<RouterEvent> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| to_router_event(e, first_id + i as u64).expect("no RemoveWorker"))
        .collect()
}

fn build_ours(w: &Workload) -> (RadixIndex, f64) {
    let mut idx = RadixIndex::new();
    let t = Instant::now();
    let mut errors = 0usize;
    for e in &w.store_events {
        errors += apply_ours(&mut idx, e) as usize;
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(errors, 0, "kv-epp reported errors while building");
    (idx, secs)
}

fn build_dynamo(w: &Workload) -> (RadixTree, f64) {
    let evs = router_events(&w.store_events, 0);
    let mut tree = RadixTree::new();
    let t = Instant::now();
    let mut errors = 0usize;
    for e in evs {
        errors += tree.apply_event(e).is_err() as usize;
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(errors, 0, "Dynamo reported errors while building");
    (tree, secs)
}

fn remove_ours(idx: &mut RadixIndex, w: &Workload) -> f64 {
    let t = Instant::now();
    let mut errors = 0usize;
    for e in &w.remove_events {
        errors += apply_ours(idx, e) as usize;
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(errors, 0, "kv-epp reported errors while removing");
    secs
}

fn remove_dynamo(tree: &mut RadixTree, w: &Workload) -> f64 {
    let evs = router_events(&w.remove_events, w.store_events.len() as u64);
    let t = Instant::now();
    let mut errors = 0usize;
    for e in evs {
        errors += tree.apply_event(e).is_err() as usize;
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(errors, 0, "Dynamo reported errors while removing");
    secs
}

#[derive(Clone, Copy, Default)]
struct Lat {
    p50: f64,
    p99: f64,
    mean: f64,
    /// Mean from one timer around the whole batch (no per-query timer cost).
    batch_mean: f64,
}

fn lat(mut ns: Vec<u64>) -> Lat {
    ns.sort_unstable();
    let n = ns.len();
    Lat {
        p50: ns[n * 50 / 100] as f64,
        p99: ns[(n * 99 / 100).min(n - 1)] as f64,
        mean: ns.iter().sum::<u64>() as f64 / n as f64,
        batch_mean: 0.0,
    }
}

fn to_dynamo_query(q: &[u64]) -> Vec<LocalBlockHash> {
    q.iter().copied().map(LocalBlockHash).collect()
}

/// One pass over `qs`: per-query latencies of ours and Dynamo's, timed in
/// alternating blocks of `KV_EPP_BENCH_BLOCK` (default 500) queries so each
/// runs with its own data warm (as in production, where only one index runs)
/// while drifts in machine load hit both alike; then one untimed-per-query
/// batch each for the batch means. Dynamo takes the query by value, so its
/// copies are built outside the timed region and freed inside it (as its API
/// requires).
fn query_pass(idx: &RadixIndex, tree: &RadixTree, qs: &[Vec<u64>]) -> (Lat, Lat) {
    // Both query copies freshly built side by side: same memory layout.
    let mut ours_q: Vec<Vec<u64>> = Vec::with_capacity(qs.len());
    let mut dyn_q: Vec<Vec<LocalBlockHash>> = Vec::with_capacity(qs.len());
    for q in qs {
        ours_q.push(q.clone());
        dyn_q.push(to_dynamo_query(q));
    }
    let mut ours_ns = Vec::with_capacity(qs.len());
    let mut dyn_ns = Vec::with_capacity(qs.len());
    let time_ours = |q: &Vec<u64>| {
        let t = Instant::now();
        drop(black_box(idx.find_matches(black_box(q), false)));
        t.elapsed().as_nanos() as u64
    };
    let time_dyn = |q: Vec<LocalBlockHash>| {
        let t = Instant::now();
        drop(black_box(tree.find_matches(black_box(q), false)));
        t.elapsed().as_nanos() as u64
    };
    let mut dyn_q = dyn_q.into_iter();
    for (b, block) in ours_q.chunks(env_usize("KV_EPP_BENCH_BLOCK", 500).max(1)).enumerate() {
        let dyn_block: Vec<Vec<LocalBlockHash>> = dyn_q.by_ref().take(block.len()).collect();
        if b % 2 == 0 {
            ours_ns.extend(block.iter().map(&time_ours));
            dyn_ns.extend(dyn_block.into_iter().map(&time_dyn));
        } else {
            dyn_ns.extend(dyn_block.into_iter().map(&time_dyn));
            ours_ns.extend(block.iter().map(&time_ours));
        }
    }

    let t = Instant::now();
    for q in &ours_q {
        drop(black_box(idx.find_matches(black_box(q), false)));
    }
    let ours_batch = t.elapsed().as_nanos() as f64 / qs.len() as f64;
    let dyn_q: Vec<Vec<LocalBlockHash>> = qs.iter().map(|q| to_dynamo_query(q)).collect();
    let t = Instant::now();
    for q in dyn_q {
        drop(black_box(tree.find_matches(black_box(q), false)));
    }
    let dyn_batch = t.elapsed().as_nanos() as f64 / qs.len() as f64;
    (Lat { batch_mean: ours_batch, ..lat(ours_ns) }, Lat { batch_mean: dyn_batch, ..lat(dyn_ns) })
}

/// `passes` passes after a warm-up; each statistic is the best (lowest) over
/// the passes, per implementation: the pass least disturbed by other load.
fn query_both(idx: &RadixIndex, tree: &RadixTree, qs: &[Vec<u64>], passes: usize) -> (Lat, Lat) {
    for q in qs.iter().take(1000) {
        black_box(idx.find_matches(q, false));
        black_box(tree.find_matches(to_dynamo_query(q), false));
    }
    let fold = |a: Lat, b: Lat| Lat {
        p50: a.p50.min(b.p50),
        p99: a.p99.min(b.p99),
        mean: a.mean.min(b.mean),
        batch_mean: a.batch_mean.min(b.batch_mean),
    };
    let inf = Lat {
        p50: f64::INFINITY,
        p99: f64::INFINITY,
        mean: f64::INFINITY,
        batch_mean: f64::INFINITY,
    };
    (0..passes.max(1)).fold((inf, inf), |(o, d), _| {
        let (po, pd) = query_pass(idx, tree, qs);
        (fold(o, po), fold(d, pd))
    })
}

fn check_scores(idx: &RadixIndex, tree: &RadixTree, qs: &[Vec<u64>], every: usize) -> usize {
    let mut checked = 0;
    for q in qs.iter().step_by(every) {
        for early in [false, true] {
            let want = dynamo_scores(tree, q, early);
            let got = idx.find_matches(q, early).scores;
            assert_eq!(got, want, "scores differ (early_exit {early}) for query {q:?}");
        }
        checked += 1;
    }
    checked
}

/// Child-process memory measurement: generate the events, return free heap
/// pages to the OS, then build while counting RSS growth and live heap bytes.
/// Dynamo's events are converted one at a time inside the loop (it consumes
/// them), so no freed event memory is recycled into the tree unseen.
/// Prints `MEM <rss growth> <live heap growth> <memberships> <heap_bytes()> <nodes>`.
fn mem_child(which: &str) {
    let per_worker = env_usize("KV_EPP_BENCH_PER_WORKER", 16_384);
    let w = workload(per_worker, 0);
    trim_heap();
    let before = rss_bytes();
    COUNTING.store(true, Ordering::SeqCst);
    if which == "dynamo" {
        let mut tree = RadixTree::new();
        for (i, e) in w.store_events.iter().enumerate() {
            let e = to_router_event(e, i as u64).expect("store");
            tree.apply_event(e).expect("store");
        }
        let live = LIVE.load(Ordering::SeqCst);
        let after = rss_bytes();
        println!("MEM {} {} {} 0 0", after - before, live, tree.current_size());
        std::mem::forget(tree);
    } else {
        let mut idx = RadixIndex::new();
        for e in &w.store_events {
            assert!(!apply_ours(&mut idx, e));
        }
        let live = LIVE.load(Ordering::SeqCst);
        let after = rss_bytes();
        println!(
            "MEM {} {} {} {} {}",
            after - before,
            live,
            idx.membership_count(),
            idx.heap_bytes(),
            idx.node_count()
        );
        std::mem::forget(idx);
    }
}

struct Mem {
    rss: usize,
    live: usize,
    members: usize,
    heap: usize,
    nodes: usize,
}

fn mem_run(which: &str) -> Mem {
    let exe = std::env::current_exe().expect("current_exe");
    let out =
        Command::new(exe).env("KV_EPP_BENCH_CHILD", which).output().expect("spawn memory child");
    assert!(out.status.success(), "memory child failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("MEM ")).expect("MEM line");
    let v: Vec<usize> = line[4..].split_whitespace().map(|x| x.parse().unwrap()).collect();
    Mem { rss: v[0], live: v[1], members: v[2], heap: v[3], nodes: v[4] }
}

/// Best (shortest) of the repetitions: the least disturbed by other load on the machine.
fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn main() {
    if let Ok(which) = std::env::var("KV_EPP_BENCH_CHILD") {
        mem_child(&which);
        return;
    }
    let per_worker = env_usize("KV_EPP_BENCH_PER_WORKER", 16_384);
    let n_queries = env_usize("KV_EPP_BENCH_QUERIES", 20_000);
    let reps = env_usize("KV_EPP_BENCH_REPS", 5).max(1);
    let passes = env_usize("KV_EPP_BENCH_QUERY_PASSES", 3).max(1);

    let t = Instant::now();
    let w = workload(per_worker, n_queries);
    eprintln!(
        "workload: {} store events / {} blocks, {} remove events / {} blocks ({:.1}s)",
        w.store_events.len(),
        w.stored_blocks,
        w.remove_events.len(),
        w.removed_blocks,
        t.elapsed().as_secs_f64()
    );

    // 1. Apply (build) and 4. removal, repeated; the last builds are kept for queries.
    let mut ours_apply = Vec::new();
    let mut dyn_apply = Vec::new();
    let mut ours_remove = Vec::new();
    let mut dyn_remove = Vec::new();
    let (mut idx, s) = build_ours(&w);
    ours_apply.push(s);
    let (mut tree, s) = build_dynamo(&w);
    dyn_apply.push(s);
    let members = idx.membership_count();
    assert_eq!(members, tree.current_size(), "membership counts differ after build");
    let nodes = idx.node_count();
    let heap_after_build = idx.heap_bytes();

    // 2. find_matches on the full build.
    let mut lat_rows = Vec::new();
    let mut checked = 0;
    for (name, qs) in &w.queries {
        let (o, d) = query_both(&idx, &tree, qs, passes);
        checked += check_scores(&idx, &tree, qs, 10);
        lat_rows.push((*name, o, d));
    }
    // Timer overhead for reference.
    let timer_ns = {
        let mut v = Vec::with_capacity(10_000);
        for _ in 0..10_000 {
            let t = Instant::now();
            v.push(t.elapsed().as_nanos() as u64);
        }
        lat(v).p50
    };

    // Removal on the kept builds, then the extra repetitions.
    ours_remove.push(remove_ours(&mut idx, &w));
    dyn_remove.push(remove_dynamo(&mut tree, &w));
    let members_after_remove = idx.membership_count();
    assert_eq!(members_after_remove, tree.current_size(), "membership counts differ after removal");
    for (_, qs) in &w.queries {
        checked += check_scores(&idx, &tree, qs, 50);
    }
    drop(idx);
    drop(tree);
    for _ in 1..reps {
        let (mut i, s) = build_ours(&w);
        ours_apply.push(s);
        ours_remove.push(remove_ours(&mut i, &w));
        drop(i);
        let (mut t, s) = build_dynamo(&w);
        dyn_apply.push(s);
        dyn_remove.push(remove_dynamo(&mut t, &w));
        drop(t);
    }

    // 3. Memory, each in a fresh process.
    let mo = mem_run("ours");
    let md = mem_run("dynamo");
    assert_eq!(mo.members, members);
    assert_eq!(md.members, members);

    let ours_apply_bps = w.stored_blocks as f64 / best(&ours_apply);
    let dyn_apply_bps = w.stored_blocks as f64 / best(&dyn_apply);
    let ours_rm_bps = w.removed_blocks as f64 / best(&ours_remove);
    let dyn_rm_bps = w.removed_blocks as f64 / best(&dyn_remove);

    println!();
    println!(
        "kv-epp RadixIndex vs dynamo-kv-router 1.6.1 RadixTree: {} workers, {} memberships over {} distinct blocks, {} tree nodes (ours), {} store events ({:.1} blocks/event), apply/remove best of {} runs",
        WORKERS,
        members,
        w.unique_blocks,
        nodes,
        w.store_events.len(),
        w.stored_blocks as f64 / w.store_events.len() as f64,
        reps
    );
    println!("{:<50} {:>14} {:>14} {:>10}", "case", "kv-epp", "dynamo", "ours/dyn");
    let row = |name: String, o: f64, d: f64, unit: &str| {
        println!("{:<50} {:>11.2} {unit:<3} {:>10.2} {unit:<3} {:>9.3}x", name, o, d, o / d);
    };
    row(
        format!("apply stored ({} blocks)", w.stored_blocks),
        ours_apply_bps / 1e6,
        dyn_apply_bps / 1e6,
        "M/s",
    );
    row(
        format!("apply removed ({} blocks)", w.removed_blocks),
        ours_rm_bps / 1e6,
        dyn_rm_bps / 1e6,
        "M/s",
    );
    for (name, o, d) in &lat_rows {
        row(format!("find_matches {name} p50"), o.p50 / 1e3, d.p50 / 1e3, "us");
        row(format!("find_matches {name} p99"), o.p99 / 1e3, d.p99 / 1e3, "us");
        row(
            format!("find_matches {name} mean (batch)"),
            o.batch_mean / 1e3,
            d.batch_mean / 1e3,
            "us",
        );
    }
    row(
        "RSS bytes / membership".to_string(),
        mo.rss as f64 / mo.members as f64,
        md.rss as f64 / md.members as f64,
        "B",
    );
    row(
        "live heap bytes / membership".to_string(),
        mo.live as f64 / mo.members as f64,
        md.live as f64 / md.members as f64,
        "B",
    );
    println!(
        "{:<50} {:>11.2} B   (heap_bytes {} over {} memberships, {} nodes in child)",
        "heap_bytes() / membership (ours)",
        mo.heap as f64 / mo.members as f64,
        mo.heap,
        mo.members,
        mo.nodes
    );
    println!(
        "heap_bytes after build (main process): {heap_after_build}; memberships after removal: {members_after_remove}; score checks: {checked} queries x 2 early_exit modes; timer overhead p50 {timer_ns} ns"
    );

    let lat_json: Vec<String> = lat_rows
        .iter()
        .map(|(name, o, d)| {
            format!(
                "\"{name}\":{{\"ours_p50_ns\":{:.0},\"ours_p99_ns\":{:.0},\"ours_mean_ns\":{:.0},\"ours_batch_mean_ns\":{:.0},\"dynamo_p50_ns\":{:.0},\"dynamo_p99_ns\":{:.0},\"dynamo_mean_ns\":{:.0},\"dynamo_batch_mean_ns\":{:.0}}}",
                o.p50, o.p99, o.mean, o.batch_mean, d.p50, d.p99, d.mean, d.batch_mean
            )
        })
        .collect();
    let json = format!(
        "{{\"bench\":\"index_vs_dynamo\",\"workers\":{WORKERS},\"memberships\":{members},\"unique_blocks\":{},\"nodes\":{nodes},\"store_events\":{},\"stored_blocks\":{},\"remove_events\":{},\"removed_blocks\":{},\"reps\":{reps},\"queries_per_kind\":{n_queries},\"query_passes\":{passes},\"apply_blocks_per_s\":{{\"ours\":{:.0},\"dynamo\":{:.0}}},\"remove_blocks_per_s\":{{\"ours\":{:.0},\"dynamo\":{:.0}}},\"find_matches\":{{{}}},\"rss_bytes_per_membership\":{{\"ours\":{:.2},\"dynamo\":{:.2}}},\"live_heap_bytes_per_membership\":{{\"ours\":{:.2},\"dynamo\":{:.2}}},\"ours_heap_bytes_per_membership\":{:.2},\"timer_overhead_ns\":{timer_ns}}}",
        w.unique_blocks,
        w.store_events.len(),
        w.stored_blocks,
        w.remove_events.len(),
        w.removed_blocks,
        ours_apply_bps,
        dyn_apply_bps,
        ours_rm_bps,
        dyn_rm_bps,
        lat_json.join(","),
        mo.rss as f64 / mo.members as f64,
        md.rss as f64 / md.members as f64,
        mo.live as f64 / mo.members as f64,
        md.live as f64 / md.members as f64,
        mo.heap as f64 / mo.members as f64,
    );
    println!("{json}");
    if let Ok(path) = std::env::var("KV_EPP_BENCH_JSON") {
        std::fs::write(&path, format!("{json}\n")).expect("write KV_EPP_BENCH_JSON");
    }
}
