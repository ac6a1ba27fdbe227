//! Dynamo-side models for the event-path differential tests.
//!
//! Everything that exists in `dynamo-kv-router` 1.6.1 is used as is: its
//! wire types and serde impls, `decode_event_batch`, `ZmqEventNormalizer`,
//! `RouterEvent::targets_primary`, `RadixTree`. Two pieces live in
//! `dynamo-llm` 1.6.1 (not a dependency: it pulls the whole runtime) and are
//! transcribed here line for line:
//! - the worker-side relay after normalisation: `PlacementEventCoalescer`
//!   (`kv_router/publisher/batching.rs`), `EventDedupFilter` with the
//!   `RefCounted` policy (`publisher/dedup.rs`) and the processor loop
//!   (`publisher/event_processor.rs`, no batching timeout);
//! - the router's per-rank event-id cursor for a source it cannot query for
//!   recovery (`kv_router/indexer/recovery/worker_query_state.rs:66-126`,
//!   `worker_query.rs:571-688`), plus kv-epp's restart rule.

#![allow(dead_code)]

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use dynamo_kv_router::protocols::{
    ExternalSequenceBlockHash, KvCacheEvent, KvCacheEventData, KvCacheRemoveData, KvCacheStoreData,
    Placement, PlacementEvent, ResetScope, ResidencyDomain, RouterEvent, StorageTier,
    WorkerWithDpRank,
};
use dynamo_kv_router::radix_tree::RadixTree;
use dynamo_kv_router::zmq_wire::{ZmqEventNormalizer, decode_event_batch};
use kv_epp_core::{RadixIndex, WorkerKey};
use kv_epp_oracle::dynamo_scores;
use serde::Serialize;

// ---- the event-plane envelope ----------------------------------------------------------------

/// `BorrowedEventEnvelope` (dynamo-runtime 1.6.1 `transports/event_plane/codec.rs`).
#[derive(Serialize)]
struct Envelope<'a> {
    publisher_id: u64,
    sequence: u64,
    published_at: u64,
    topic: &'a str,
    #[serde(serialize_with = "serialize_bytes")]
    payload: &'a [u8],
}

fn serialize_bytes<S: serde::Serializer>(b: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(b)
}

/// What `EventPlanePublisher` sends: `rmp_serde::to_vec_named(events)` inside
/// `MsgpackCodec::encode_envelope_parts`.
pub fn envelope_bytes(publisher_id: u64, sequence: u64, events: &[RouterEvent]) -> Vec<u8> {
    let payload = rmp_serde::to_vec_named(events).unwrap();
    envelope_around(publisher_id, sequence, 1_700_000_000_000 + sequence, "kv-events", &payload)
}

/// The envelope around an already encoded payload, for any topic.
pub fn envelope_around(
    publisher_id: u64,
    sequence: u64,
    published_at: u64,
    topic: &str,
    payload: &[u8],
) -> Vec<u8> {
    rmp_serde::to_vec_named(&Envelope { publisher_id, sequence, published_at, topic, payload })
        .unwrap()
}

// ---- router: event-id cursor + tier routing --------------------------------------------------

/// The router side for `RouterEvent` streams: cursor per (worker, dp rank),
/// then `targets_primary()` routing into `RadixTree`.
#[derive(Default)]
pub struct Router {
    cursors: HashMap<(u64, u32), u64>,
}

/// Per-event outcome counts of the Dynamo side, comparable with our report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub parent_not_found: u32,
    pub block_not_found: u32,
    pub invalid_block_sequence: u32,
    /// Events the cursor skipped (`Stale`).
    pub stale: u32,
    /// Holders cleared because of a gap (`ResetDegraded`) / a restart.
    pub gaps: u32,
    pub restarts: u32,
}

impl Router {
    pub fn forget_worker(&mut self, worker_id: u64) {
        self.cursors.retain(|&(w, _), _| w != worker_id);
    }

    /// `handle_live_batch` for a non-recoverable source, with kv-epp's restart rule.
    pub fn live(&mut self, tree: &mut RadixTree, ev: RouterEvent, out: &mut Outcomes) {
        let key = (ev.worker_id, ev.event.dp_rank);
        let id = ev.event.event_id;
        let last = self.cursors.get(&key).copied();
        // kv-epp's addition: back at the first id (0 or 1) below the last one.
        if let Some(l) = last
            && id <= 1
            && id < l
        {
            tree.remove_worker_dp_rank(key.0, key.1);
            out.restarts += 1;
            self.cursors.insert(key, id);
            apply_routed(tree, ev, out);
            return;
        }
        // worker_query_state.rs:73-81: an all-domain clear.
        if matches!(ev.reset_scope(), Ok(Some(ResetScope::All))) {
            if last.is_some_and(|l| id <= l) {
                out.stale += 1;
                return;
            }
            if last.is_some_and(|l| id > l + 1) {
                out.gaps += 1;
            }
            self.cursors.insert(key, id);
            apply_routed(tree, ev, out);
            return;
        }
        match last {
            Some(l) if id <= l => out.stale += 1,
            Some(l) if id > l + 1 => {
                // Gap without a recovery target: ResetDegraded.
                out.gaps += 1;
                tree.remove_worker_dp_rank(key.0, key.1);
                self.cursors.insert(key, id);
                apply_routed(tree, ev, out);
            }
            _ => {
                self.cursors.insert(key, id);
                apply_routed(tree, ev, out);
            }
        }
    }
}

/// `LocalKvIndexer::apply_event_by_tier` restricted to the device tree.
pub fn apply_routed(tree: &mut RadixTree, ev: RouterEvent, out: &mut Outcomes) {
    if ev.targets_primary() != Ok(true) {
        return;
    }
    if let Err(e) = tree.apply_event(ev) {
        use dynamo_kv_router::protocols::KvCacheEventError as E;
        match e {
            E::ParentBlockNotFound => out.parent_not_found += 1,
            E::BlockNotFound => out.block_not_found += 1,
            E::InvalidBlockSequence => out.invalid_block_sequence += 1,
            other => panic!("unexpected tree error {other:?}"),
        }
    }
}

// ---- the vLLM relay -----------------------------------------------------------------------------

const MAX_BATCH_BLOCKS: usize = 128;

/// One worker's publisher: normaliser + coalescer + dedup, fed one ZMQ payload at a time.
pub struct Relay {
    worker_id: u64,
    normalizer: ZmqEventNormalizer,
    next_raw_id: u64,
    next_publish_id: u64,
    pending: Option<(Placement, PlacementEvent)>,
    dedup: HashMap<(u32, StorageTier, ResidencyDomain), HashMap<ExternalSequenceBlockHash, usize>>,
}

impl Relay {
    pub fn new(worker_id: u64, block_size: u32) -> Self {
        Self {
            worker_id,
            normalizer: ZmqEventNormalizer::new(block_size),
            next_raw_id: 0,
            next_publish_id: 1,
            pending: None,
            dedup: HashMap::new(),
        }
    }

    /// `start_zmq_listener`'s per-message body (zmq_listener.rs:102-164), then
    /// `run_event_processor_loop`'s (event_processor.rs:50-154) with no timeout.
    /// `None` when Dynamo cannot decode the batch (it drops the message).
    pub fn message(&mut self, payload: &[u8]) -> Option<Vec<RouterEvent>> {
        let batch = decode_event_batch(payload).ok()?;
        let dp_rank = batch.data_parallel_rank.unwrap_or(0).cast_unsigned();
        let worker = WorkerWithDpRank::new(self.worker_id, dp_rank);
        let mut events = Vec::new();
        for raw in batch.events {
            let Ok(raw) = self.normalizer.preprocess_with_reason(raw, worker) else { continue };
            let id = self.next_raw_id;
            self.next_raw_id += 1;
            if let Some(ev) = self.normalizer.normalize_preprocessed(raw, id, worker) {
                events.push(ev);
            }
        }
        let mut out = Vec::new();
        for pe in events {
            match &pe.event.data {
                KvCacheEventData::Removed(_) | KvCacheEventData::Stored(_) => {
                    self.push(pe, &mut out)
                }
                KvCacheEventData::Cleared => {
                    self.flush(&mut out);
                    let tier = pe.placement.tier;
                    let domain = pe.placement.residency_domain;
                    let dp = pe.event.dp_rank;
                    self.dedup.retain(|&(r, _, d), _| r != dp || d != domain);
                    let event = KvCacheEvent {
                        event_id: self.next_publish_id,
                        data: KvCacheEventData::Cleared,
                        dp_rank: dp,
                    };
                    out.push(RouterEvent::with_residency_domain(
                        self.worker_id,
                        event,
                        tier,
                        domain,
                    ));
                    self.next_publish_id += 1;
                }
            }
        }
        self.flush(&mut out);
        Some(out)
    }

    /// `PlacementEventCoalescer::push` + `BatchingState::push`.
    fn push(&mut self, event: PlacementEvent, out: &mut Vec<RouterEvent>) {
        let key = event.placement.clone();
        let can_merge = self.pending.as_ref().is_some_and(|(pk, p)| {
            *pk == key
                && p.event.dp_rank == event.event.dp_rank
                && p.session_id == event.session_id
                && compatible(&p.event.data, &event.event.data)
        });
        if can_merge {
            let p = &mut self.pending.as_mut().unwrap().1;
            match (&mut p.event.data, event.event.data) {
                (KvCacheEventData::Stored(a), KvCacheEventData::Stored(b)) => {
                    a.blocks.extend(b.blocks)
                }
                (KvCacheEventData::Removed(a), KvCacheEventData::Removed(b)) => {
                    a.block_hashes.extend(b.block_hashes)
                }
                _ => unreachable!(),
            }
            if block_count(p) >= MAX_BATCH_BLOCKS {
                self.flush(out);
            }
            return;
        }
        self.flush(out);
        if block_count(&event) >= MAX_BATCH_BLOCKS {
            self.emit_ready(event, out);
        } else {
            self.pending = Some((key, event));
        }
    }

    fn flush(&mut self, out: &mut Vec<RouterEvent>) {
        if let Some((_, e)) = self.pending.take() {
            self.emit_ready(e, out);
        }
    }

    /// `BatchingState::emit_ready` with `EventDedupFilter` (RefCounted).
    fn emit_ready(&mut self, pe: PlacementEvent, out: &mut Vec<RouterEvent>) {
        let tier = pe.placement.tier;
        let domain = pe.placement.residency_domain;
        let session_id = pe.session_id;
        let mut event = pe.event;
        let refcounts = self.dedup.entry((event.dp_rank, tier, domain)).or_default();
        event.data = match event.data {
            KvCacheEventData::Removed(mut data) => {
                data.block_hashes.retain(|h| match refcounts.entry(*h) {
                    Entry::Occupied(mut e) => {
                        *e.get_mut() -= 1;
                        if *e.get() == 0 {
                            e.remove();
                            true
                        } else {
                            false
                        }
                    }
                    Entry::Vacant(_) => true,
                });
                if data.block_hashes.is_empty() {
                    return;
                }
                KvCacheEventData::Removed(data)
            }
            KvCacheEventData::Stored(data) => {
                for b in &data.blocks {
                    *refcounts.entry(b.block_hash).or_insert(0) += 1;
                }
                KvCacheEventData::Stored(data)
            }
            KvCacheEventData::Cleared => unreachable!(),
        };
        event.event_id = self.next_publish_id;
        let mut re = RouterEvent::with_residency_domain(self.worker_id, event, tier, domain);
        re.session_id = session_id;
        out.push(re);
        self.next_publish_id += 1;
    }
}

fn compatible(pending: &KvCacheEventData, next: &KvCacheEventData) -> bool {
    match (pending, next) {
        (KvCacheEventData::Stored(p), KvCacheEventData::Stored(n)) => {
            n.parent_hash == p.blocks.last().map(|b| b.block_hash)
        }
        (KvCacheEventData::Removed(_), KvCacheEventData::Removed(_)) => true,
        _ => false,
    }
}

fn block_count(e: &PlacementEvent) -> usize {
    match &e.event.data {
        KvCacheEventData::Stored(d) => d.blocks.len(),
        KvCacheEventData::Removed(d) => d.block_hashes.len(),
        KvCacheEventData::Cleared => 0,
    }
}

// Silence unused-import warnings for types only some tests name.
#[allow(unused)]
fn _types(_: KvCacheStoreData, _: KvCacheRemoveData) {}

// ---- a dynamic msgpack value, encoded by rmp_serde --------------------------------------------

/// Lets the tests build vLLM payloads of any shape (maps, tagged arrays,
/// Eagle bigrams, extra_keys) while `rmp_serde` does the encoding.
#[derive(Debug, Clone)]
pub enum V {
    Nil,
    U(u64),
    I(i64),
    F(f64),
    S(String),
    A(Vec<V>),
    M(Vec<(String, V)>),
}

impl Serialize for V {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            V::Nil => s.serialize_none(),
            V::U(x) => s.serialize_u64(*x),
            V::I(x) => s.serialize_i64(*x),
            V::F(x) => s.serialize_f64(*x),
            V::S(x) => s.serialize_str(x),
            V::A(items) => {
                let mut q = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    q.serialize_element(i)?;
                }
                q.end()
            }
            V::M(items) => {
                let mut m = s.serialize_map(Some(items.len()))?;
                for (k, v) in items {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

impl V {
    pub fn str(x: &str) -> V {
        V::S(x.to_string())
    }

    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap()
    }
}

// ---- comparison ---------------------------------------------------------------------------------

/// Asserts identical scores (both early-exit modes) for every query.
pub fn assert_same_scores(ours: &RadixIndex, theirs: &RadixTree, queries: &[Vec<u64>], ctx: &str) {
    for q in queries {
        for early in [false, true] {
            let want = dynamo_scores(theirs, q, early);
            let got = ours.find_matches(q, early).scores;
            assert_eq!(got, want, "{ctx}: query {q:?} early_exit {early}");
        }
    }
    assert_eq!(ours.membership_count(), theirs.current_size(), "{ctx}: lookup sizes");
}

pub fn key(w: &WorkerWithDpRank) -> WorkerKey {
    WorkerKey::new(w.worker_id, w.dp_rank)
}
