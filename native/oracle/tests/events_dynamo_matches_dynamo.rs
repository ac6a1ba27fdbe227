//! `dynamo` / `dynamo-json` decoding + application must match Dynamo 1.6.1:
//! random `RouterEvent` streams are serialised with Dynamo's own types
//! (`rmp_serde::to_vec_named` inside an event-plane envelope built like the
//! runtime's, positional `rmp_serde::to_vec`, `serde_json::to_vec`), decoded
//! and applied by kv-epp, and — decoded back with Dynamo's own serde impls —
//! applied to Dynamo's `RadixTree` behind the router's cursor and tier routing.
//! Scores, lookup sizes and per-event outcomes must be identical.

mod events_oracle;

use std::collections::HashMap;

use dynamo_kv_router::protocols::{
    KvCacheEventData, ResidencyDomain, RouterEvent, StorageTier, WireResidencyDomain,
};
use dynamo_kv_router::radix_tree::RadixTree;
use events_oracle::{Outcomes, Router, assert_same_scores, envelope_bytes};
use kv_epp_core::RadixIndex;
use kv_epp_core::events::{EventApplier, EventCodec, RejectReason, SourceContext};
use kv_epp_oracle::{Event, StreamGen, to_router_event};
use rand::{Rng, SeedableRng, rngs::SmallRng};

/// How a message goes on the wire.
#[derive(Debug, Clone, Copy)]
enum Wire {
    Envelope,
    EnvelopePositional,
    NamedArray,
    PositionalArray,
    Json,
}

struct Run {
    rng: SmallRng,
    stream: StreamGen,
    anomalies: bool,
    applier: EventApplier,
    ours: RadixIndex,
    tree: RadixTree,
    router: Router,
    next_id: HashMap<(u64, u32), u64>,
    sent: HashMap<(u64, u32), Vec<RouterEvent>>,
    publisher_seq: u64,
    last_envelope: Option<u64>,
    messages: usize,
    totals: Totals,
}

/// What the streams exercised (asserted non-trivial at the end of each test).
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    stored: u64,
    removed: u64,
    cleared: u64,
    index_errors: u64,
    duplicates: u64,
    gaps: u64,
    restarts: u64,
    ignored: u64,
    publisher_gaps: u64,
    json: u64,
    positional: u64,
}

impl Totals {
    fn add(&mut self, o: Totals) {
        self.stored += o.stored;
        self.removed += o.removed;
        self.cleared += o.cleared;
        self.index_errors += o.index_errors;
        self.duplicates += o.duplicates;
        self.gaps += o.gaps;
        self.restarts += o.restarts;
        self.ignored += o.ignored;
        self.publisher_gaps += o.publisher_gaps;
        self.json += o.json;
        self.positional += o.positional;
    }
}

impl Run {
    fn new(seed: u64, anomalies: bool) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed ^ 0x0005_EED0_FEE7),
            stream: StreamGen::new(seed, 3, 2, 16, 16),
            anomalies,
            applier: EventApplier::new(16).unwrap(),
            ours: RadixIndex::new(),
            tree: RadixTree::new(),
            router: Router::default(),
            next_id: HashMap::new(),
            sent: HashMap::new(),
            publisher_seq: 0,
            last_envelope: None,
            messages: 0,
            totals: Totals::default(),
        }
    }

    /// Gives a generated event its id, tier and domain (sometimes a duplicate,
    /// a gap or a restart first).
    fn dress(&mut self, e: &Event, out: &mut Vec<RouterEvent>) {
        let key = match e {
            Event::Stored { worker, .. }
            | Event::Removed { worker, .. }
            | Event::Cleared { worker } => (worker.worker_id, worker.dp_rank),
            Event::RemoveWorker { .. } => unreachable!(),
        };
        let next = self.next_id.entry(key).or_insert(1);
        if self.anomalies {
            let roll = self.rng.random_range(0..100);
            if roll < 3
                && let Some(old) = self.sent.get(&key).filter(|v| !v.is_empty())
            {
                out.push(old[self.rng.random_range(0..old.len())].clone());
            } else if roll < 6 {
                *next += self.rng.random_range(1..4);
            } else if roll < 7 {
                *next = self.rng.random_range(0..2);
            }
        }
        let id = *next;
        *next += 1;
        let mut ev = to_router_event(e, id).expect("not RemoveWorker");
        match self.rng.random_range(0..100) {
            0..=3 => ev.storage_tier = StorageTier::HostPinned,
            4..=6 => ev.storage_tier = StorageTier::Disk,
            7..=9 => ev.residency_domain = WireResidencyDomain::Missing,
            10 => ev.residency_domain = WireResidencyDomain::explicit(ResidencyDomain::CacheOwner),
            11 => {
                ev.residency_domain = WireResidencyDomain::explicit(ResidencyDomain::CacheOwner);
                ev.storage_tier = StorageTier::External;
            }
            _ => {}
        }
        self.sent.entry(key).or_default().push(ev.clone());
        out.push(ev);
    }

    fn send(&mut self, events: Vec<RouterEvent>, queries: &[Vec<u64>]) {
        if events.is_empty() {
            return;
        }
        let wire = match self.rng.random_range(0..100) {
            0..=44 => Wire::Envelope,
            45..=49 => Wire::EnvelopePositional,
            50..=64 => Wire::NamedArray,
            65..=79 => Wire::PositionalArray,
            _ => Wire::Json,
        };
        // Positional RouterEvents only decode when no field was skipped
        // (protocols.rs:1495: "positional encoding is unsupported"); Dynamo
        // drops such a message whole, so the stream uses named maps then.
        let positional_ok =
            events.iter().all(|e| !matches!(e.residency_domain, WireResidencyDomain::Missing));
        let wire = match wire {
            Wire::EnvelopePositional | Wire::PositionalArray if !positional_ok => Wire::NamedArray,
            w => w,
        };
        let single = events.len() == 1 && self.rng.random_bool(0.5);
        // A publisher gap now and then.
        self.publisher_seq += if self.rng.random_bool(0.05) { 2 } else { 1 };
        let seq = self.publisher_seq;
        let (codec, bytes, decoded): (EventCodec, Vec<u8>, Vec<RouterEvent>) = match wire {
            Wire::Envelope => {
                let b = envelope_bytes(42, seq, &events);
                let back = dynamo_decode_envelope(&b);
                (EventCodec::Dynamo, b, back)
            }
            Wire::EnvelopePositional => {
                let payload = rmp_serde::to_vec(&events).unwrap();
                let b = rmp_serde::to_vec(&(42u64, seq, 0u64, "kv-events", serde_bytes(&payload)))
                    .unwrap();
                let back: Vec<RouterEvent> = rmp_serde::from_slice(&payload).unwrap();
                (EventCodec::Dynamo, b, back)
            }
            Wire::NamedArray if single => {
                let b = rmp_serde::to_vec_named(&events[0]).unwrap();
                let back: RouterEvent = rmp_serde::from_slice(&b).unwrap();
                (EventCodec::Dynamo, b, vec![back])
            }
            Wire::NamedArray => {
                let b = rmp_serde::to_vec_named(&events).unwrap();
                let back: Vec<RouterEvent> = rmp_serde::from_slice(&b).unwrap();
                (EventCodec::Dynamo, b, back)
            }
            Wire::PositionalArray => {
                let b = rmp_serde::to_vec(&events).unwrap();
                let back: Vec<RouterEvent> = rmp_serde::from_slice(&b).unwrap();
                (EventCodec::Dynamo, b, back)
            }
            Wire::Json if single => {
                let b = serde_json::to_vec(&events[0]).unwrap();
                let back: RouterEvent = serde_json::from_slice(&b).unwrap();
                (EventCodec::DynamoJson, b, vec![back])
            }
            Wire::Json => {
                let b = serde_json::to_vec(&events).unwrap();
                let back: Vec<RouterEvent> = serde_json::from_slice(&b).unwrap();
                (EventCodec::DynamoJson, b, back)
            }
        };
        assert_eq!(decoded, events, "Dynamo round-trips its own serialisation");
        let report = self.applier.apply(codec, &bytes, SourceContext::default(), &mut self.ours);
        let mut out = Outcomes::default();
        for ev in decoded {
            self.router.live(&mut self.tree, ev, &mut out);
        }
        let ctx = format!("message {} ({wire:?})", self.messages);
        assert_eq!(report.rejected(RejectReason::Malformed), 0, "{ctx}: {report:?}");
        assert_eq!(report.rejected(RejectReason::ParentNotFound), out.parent_not_found, "{ctx}");
        assert_eq!(report.rejected(RejectReason::BlockNotFound), out.block_not_found, "{ctx}");
        assert_eq!(
            report.rejected(RejectReason::InvalidBlockSequence),
            out.invalid_block_sequence,
            "{ctx}"
        );
        assert_eq!(report.rejected(RejectReason::Duplicate), out.stale, "{ctx}");
        assert_eq!(report.gaps.len() as u32, out.gaps, "{ctx}: {report:?}");
        assert_eq!(report.resets.len() as u32, out.restarts, "{ctx}");
        if matches!(wire, Wire::Envelope | Wire::EnvelopePositional) {
            assert_eq!(report.envelope.map(|e| e.sequence), Some(seq));
            let gap = self.last_envelope.is_some_and(|l| seq > l + 1);
            assert_eq!(report.publisher_gap.is_some(), gap, "{ctx}");
            self.last_envelope = Some(seq);
        }
        let t = &mut self.totals;
        t.stored += report.applied.stored as u64;
        t.removed += report.applied.removed as u64;
        t.cleared += report.applied.cleared as u64;
        t.index_errors +=
            (out.parent_not_found + out.block_not_found + out.invalid_block_sequence) as u64;
        t.duplicates += out.stale as u64;
        t.gaps += out.gaps as u64;
        t.restarts += out.restarts as u64;
        t.ignored += report.ignored as u64;
        t.publisher_gaps += report.publisher_gap.is_some() as u64;
        t.json += matches!(wire, Wire::Json) as u64;
        t.positional += matches!(wire, Wire::PositionalArray | Wire::EnvelopePositional) as u64;
        self.messages += 1;
        assert_same_scores(&self.ours, &self.tree, queries, &ctx);
    }

    fn run(&mut self, events: usize) {
        let mut pending: Vec<RouterEvent> = Vec::new();
        let mut target = self.rng.random_range(1..=6);
        for _ in 0..events {
            let e = self.stream.next_event();
            let queries: Vec<Vec<u64>> = (0..3).map(|_| self.stream.query()).collect();
            if let Event::RemoveWorker { worker_id } = e {
                let batch = std::mem::take(&mut pending);
                self.send(batch, &queries);
                self.applier.forget_worker(worker_id);
                self.ours.remove_worker(worker_id);
                self.router.forget_worker(worker_id);
                self.tree.remove_worker(worker_id);
                continue;
            }
            let mut evs = Vec::new();
            self.dress(&e, &mut evs);
            pending.extend(evs);
            if pending.len() >= target {
                let batch = std::mem::take(&mut pending);
                self.send(batch, &queries);
                target = self.rng.random_range(1..=6);
            }
        }
        let queries: Vec<Vec<u64>> = (0..3).map(|_| self.stream.query()).collect();
        let batch = std::mem::take(&mut pending);
        self.send(batch, &queries);
    }
}

/// Wraps bytes so rmp_serde writes `bin` (as the runtime's `serialize_bytes`).
fn serde_bytes(b: &[u8]) -> Bin<'_> {
    Bin(b)
}

struct Bin<'a>(&'a [u8]);

impl serde::Serialize for Bin<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Dynamo's decoding of an envelope: the runtime's envelope struct, then
/// `Vec<RouterEvent>` from the payload (lib/llm subscriber).
fn dynamo_decode_envelope(bytes: &[u8]) -> Vec<RouterEvent> {
    #[derive(serde::Deserialize)]
    struct Env<'a> {
        #[allow(dead_code)]
        publisher_id: u64,
        #[allow(dead_code)]
        sequence: u64,
        #[allow(dead_code)]
        published_at: u64,
        #[allow(dead_code)]
        topic: &'a str,
        payload: &'a [u8],
    }
    let env: Env<'_> = rmp_serde::from_slice(bytes).unwrap();
    rmp_serde::from_slice(env.payload).unwrap()
}

fn run_seeds(seeds: std::ops::Range<u64>, anomalies: bool) -> Totals {
    let mut totals = Totals::default();
    for seed in seeds {
        let mut run = Run::new(seed, anomalies);
        run.run(300);
        totals.add(run.totals);
    }
    totals
}

#[test]
fn random_router_event_streams_in_every_encoding() {
    let t = run_seeds(0..150, false);
    assert!(t.stored > 10_000 && t.removed > 5_000 && t.cleared > 200, "{t:?}");
    assert!(t.index_errors > 1_000 && t.ignored > 1_000 && t.publisher_gaps > 100, "{t:?}");
    assert!(t.json > 1_000 && t.positional > 500, "{t:?}");
    assert_eq!((t.duplicates, t.gaps, t.restarts), (0, 0, 0), "{t:?}");
}

#[test]
fn duplicates_gaps_and_restarts_match_the_router() {
    let t = run_seeds(500..650, true);
    assert!(t.duplicates > 500 && t.gaps > 500 && t.restarts > 100, "{t:?}");
}

#[test]
fn hashes_above_2_pow_63_survive_every_encoding() {
    let big = u64::MAX - 7;
    let ev = |id, data| {
        RouterEvent::new(
            u64::MAX,
            dynamo_kv_router::protocols::KvCacheEvent { event_id: id, data, dp_rank: 3 },
        )
    };
    use dynamo_kv_router::protocols::{
        ExternalSequenceBlockHash as X, KvCacheRemoveData, KvCacheStoreData,
        KvCacheStoredBlockData, LocalBlockHash as L,
    };
    let stored = KvCacheEventData::Stored(KvCacheStoreData {
        parent_hash: None,
        start_position: None,
        blocks: vec![
            KvCacheStoredBlockData { block_hash: X(big), tokens_hash: L(big), mm_extra_info: None },
            KvCacheStoredBlockData {
                block_hash: X(u64::MAX),
                tokens_hash: L(1 << 63),
                mm_extra_info: None,
            },
        ],
    });
    let removed = KvCacheEventData::Removed(KvCacheRemoveData { block_hashes: vec![X(u64::MAX)] });
    let events = vec![ev(1, stored), ev(2, removed)];
    let encodings: Vec<(EventCodec, Vec<u8>)> = vec![
        (EventCodec::Dynamo, envelope_bytes(u64::MAX, u64::MAX, &events)),
        (EventCodec::Dynamo, rmp_serde::to_vec(&events).unwrap()),
        (EventCodec::DynamoJson, serde_json::to_vec(&events).unwrap()),
    ];
    for (codec, bytes) in encodings {
        let mut applier = EventApplier::new(16).unwrap();
        let mut ours = RadixIndex::new();
        let r = applier.apply(codec, &bytes, SourceContext::default(), &mut ours);
        assert_eq!((r.applied.stored, r.applied.removed, r.blocks_removed), (1, 1, 1), "{r:?}");
        let w = kv_epp_core::WorkerKey::new(u64::MAX, 3);
        assert_eq!(r.workers, vec![w]);
        assert_eq!(ours.find_matches(&[big, 1 << 63], false).scores, vec![(w, 1)]);
        assert_eq!(ours.tree_size(w), 1);
    }
}

/// Byte mutations of valid msgpack and JSON messages: whenever Dynamo's own
/// serde still decodes `Vec<RouterEvent>`, kv-epp must decode every event
/// and end in the same state.
#[test]
fn mutated_messages_dynamo_accepts_decode_identically() {
    let (mut accepted, mut rejected) = (0, 0);
    for seed in 0..40u64 {
        let mut g = StreamGen::new(seed, 2, 2, 8, 8);
        let mut rng = SmallRng::seed_from_u64(seed);
        for trial in 0..300 {
            let mut events = Vec::new();
            while events.len() < rng.random_range(1..=4) {
                let e = g.next_event();
                if let Some(ev) = to_router_event(&e, rng.random_range(1..3)) {
                    events.push(ev);
                }
            }
            let json = rng.random_bool(0.5);
            let mut bytes = if json {
                serde_json::to_vec(&events).unwrap()
            } else {
                rmp_serde::to_vec_named(&events).unwrap()
            };
            for _ in 0..rng.random_range(1..=2) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = if json {
                    b"0123456789-\",:[]{}x"[rng.random_range(0..19)]
                } else {
                    rng.random()
                };
            }
            let decoded: Option<Vec<RouterEvent>> = if json {
                serde_json::from_slice(&bytes).ok()
            } else {
                rmp_serde::from_slice(&bytes).ok()
            };
            let Some(decoded) = decoded else {
                rejected += 1;
                continue;
            };
            accepted += 1;
            let mut tree = RadixTree::new();
            let mut out = Outcomes::default();
            let mut router = Router::default();
            // Residency domains Dynamo decodes but its router drops: we count
            // them as unknown_variant (a string) / malformed (not a string).
            let unknown = decoded
                .iter()
                .filter(|e| matches!(e.residency_domain, WireResidencyDomain::Unknown(_)))
                .count();
            let invalid = decoded
                .iter()
                .filter(|e| matches!(e.residency_domain, WireResidencyDomain::Invalid))
                .count();
            for ev in decoded {
                router.live(&mut tree, ev, &mut out);
            }
            let codec = if json { EventCodec::DynamoJson } else { EventCodec::Dynamo };
            let mut applier = EventApplier::new(16).unwrap();
            let mut ours = RadixIndex::new();
            let r = applier.apply(codec, &bytes, SourceContext::default(), &mut ours);
            let ctx = format!("seed {seed} trial {trial}: {}", String::from_utf8_lossy(&bytes));
            assert!(r.rejected(RejectReason::Malformed) as usize <= invalid, "{ctx}: {r:?}");
            assert!(r.rejected(RejectReason::UnknownVariant) as usize <= unknown, "{ctx}: {r:?}");
            let queries: Vec<Vec<u64>> = (0..4).map(|_| g.query()).collect();
            assert_same_scores(&ours, &tree, &queries, &ctx);
        }
    }
    assert!(accepted > 1_000 && rejected > 1_000, "accepted {accepted} rejected {rejected}");
}
