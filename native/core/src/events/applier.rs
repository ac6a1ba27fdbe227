//! Stream state and the per-message flow of both codecs.
//!
//! Event ids, per holder (Dynamo 1.6.1 router, dynamo-llm
//! `kv_router/indexer/recovery/worker_query_state.rs:66-126` and
//! `worker_query.rs:571-688`, for a source the router cannot query for
//! recovery — kv-epp never queries workers):
//! - first id seen, or last + 1: applied;
//! - at or below the last id: skipped (`duplicate`), as Dynamo's `Stale`;
//! - above last + 1: a gap. Dynamo's `ResetDegraded` clears the holder, then
//!   applies the event; so do we (reported in `gaps`, not in `resets`);
//! - a legacy `Cleared` without `residency_domain` (`ResetScope::All`) is
//!   applied whenever its id is above the last one, gap or not
//!   (worker_query_state.rs:73-81).
//!
//! Our addition (not in Dynamo, whose router never sees a restarted stream
//! under the same worker id): an id back at its first value (0 or 1) below
//! the last one is a restart — the holder is cleared first, listed in
//! `resets`, and the event applied.
//!
//! vLLM streams use the ZMQ sequence frame as the id of the whole message
//! (dynamo-kv-router `services/indexer/listener.rs:300-402` checks it once
//! per message): a stale sequence skips the message (every event `duplicate`),
//! a gap is reported and the message applied (no replay endpoint: "batches
//! lost", listener.rs:196-203), a restart clears the holder (and the relay
//! state kept for it) as above.
//!
//! Envelope sequence per `publisher_id`: above last + 1 is a `publisherGap`;
//! any value then becomes the last one.

use hashbrown::HashMap;
use rustc_hash::FxBuildHasher;

use super::de::DecodeError;
use super::dynamo::{self, EventData, Route};
use super::vllm::{self, VllmState};
use super::{
    ApplyReport, EventCodec, HolderGap, Op, OpKind, Prepared, PublisherGap, RejectReason,
    SourceContext,
};
use crate::error::CoreError;
use crate::hash::validate_block_size;
use crate::index::{RadixIndex, WorkerKey};

type FxMap<K, V> = HashMap<K, V, FxBuildHasher>;

/// How an event id relates to the holder's last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    First,
    Next,
    Gap { expected: u64 },
    Stale,
    Restart,
}

fn observe(last: Option<u64>, got: u64) -> Seen {
    match last {
        None => Seen::First,
        Some(l) if got <= 1 && got < l => Seen::Restart,
        Some(l) if got <= l => Seen::Stale,
        Some(l) if got == l + 1 => Seen::Next,
        Some(l) => Seen::Gap { expected: l + 1 },
    }
}

fn decode_reason(e: DecodeError) -> RejectReason {
    match e {
        DecodeError::Malformed => RejectReason::Malformed,
        DecodeError::UnknownVariant => RejectReason::UnknownVariant,
    }
}

/// Decodes KV-event messages and applies them to an index, keeping the
/// stream state that spans messages.
#[derive(Debug)]
pub struct EventApplier {
    block_size: u32,
    dynamo_ids: FxMap<WorkerKey, u64>,
    vllm_ids: FxMap<WorkerKey, u64>,
    publishers: FxMap<u64, u64>,
    vllm: VllmState,
}

impl EventApplier {
    /// `block_size`: the configured KV block size, `1..=1024`.
    pub fn new(block_size: u32) -> Result<Self, CoreError> {
        validate_block_size(block_size)?;
        Ok(Self {
            block_size,
            dynamo_ids: FxMap::default(),
            vllm_ids: FxMap::default(),
            publishers: FxMap::default(),
            vllm: VllmState::default(),
        })
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Decodes one message and applies it to `index`.
    pub fn apply(
        &mut self,
        codec: EventCodec,
        payload: &[u8],
        ctx: SourceContext,
        index: &mut RadixIndex,
    ) -> ApplyReport {
        self.prepare(codec, payload, ctx).commit(index)
    }

    /// Decodes one message into index operations, updating stream state.
    /// Commit the result (in message order) with [`Prepared::commit`].
    pub fn prepare(&mut self, codec: EventCodec, payload: &[u8], ctx: SourceContext) -> Prepared {
        let mut p = Prepared::default();
        match codec {
            EventCodec::Dynamo => match dynamo::decode_msgpack(payload) {
                Ok(m) => self.dynamo_message(m, ctx, &mut p),
                Err(e) => p.report.reject(decode_reason(e), 1),
            },
            EventCodec::DynamoJson => match dynamo::decode_json(payload) {
                Ok(m) => self.dynamo_message(m, ctx, &mut p),
                Err(e) => p.report.reject(decode_reason(e), 1),
            },
            EventCodec::Vllm => self.vllm_message(payload, ctx, &mut p),
        }
        p
    }

    /// Forgets a worker that left discovery: its event ids (every dp rank),
    /// the relay state kept for it, and the envelope sequence of a publisher
    /// with the same id (Dynamo's publisher id is the worker's instance id).
    pub fn forget_worker(&mut self, worker_id: u64) {
        self.dynamo_ids.retain(|w, _| w.worker_id != worker_id);
        self.vllm_ids.retain(|w, _| w.worker_id != worker_id);
        self.publishers.remove(&worker_id);
        self.vllm.forget_worker(worker_id);
    }

    /// Sets the last event id of a Dynamo-stream holder (`None` forgets it,
    /// so the next id is taken as the first). Used after a worker recovery:
    /// the recovered state is current up to the worker's `last_event_id`.
    pub fn set_cursor(&mut self, worker: WorkerKey, last_event_id: Option<u64>) {
        match last_event_id {
            Some(id) => self.dynamo_ids.insert(worker, id),
            None => self.dynamo_ids.remove(&worker),
        };
    }

    fn dynamo_message(&mut self, m: dynamo::DynamoMessage, ctx: SourceContext, p: &mut Prepared) {
        let replay = ctx.replay || ctx.ignore_ids;
        if let Some(env) = m.envelope
            && !replay
        {
            p.report.envelope = Some(env);
            if let Some(&last) = self.publishers.get(&env.publisher_id)
                && env.sequence > last.saturating_add(1)
            {
                p.report.publisher_gap = Some(PublisherGap {
                    publisher_id: env.publisher_id,
                    expected: last + 1,
                    got: env.sequence,
                });
            }
            self.publishers.insert(env.publisher_id, env.sequence);
        }
        for ev in m.events {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    p.report.reject(decode_reason(e), 1);
                    continue;
                }
            };
            let w = WorkerKey::new(ev.worker_id, ev.dp_rank);
            p.report.touch(w);
            let id = ev.event_id;
            let last = self.dynamo_ids.get(&w).copied();
            let seen = if ctx.ignore_ids { Seen::Next } else { observe(last, id) };
            match seen {
                Seen::Restart => {
                    p.ops.push(Op { worker: w, kind: OpKind::Reset, srcs: 0 });
                    p.report.resets.push(w);
                }
                Seen::Stale => {
                    p.report.reject(RejectReason::Duplicate, 1);
                    continue;
                }
                Seen::Gap { expected } => {
                    p.report.gaps.push(HolderGap { worker: w, expected, got: id });
                    // A legacy all-domain clear is applied as is; anything
                    // else is `ResetDegraded`: clear, then apply. A replay
                    // never clears: it lands on a recovered state, and Dynamo
                    // only warns about holes in the tail it replays.
                    if !ev.is_reset_all() && !replay {
                        p.ops.push(Op { worker: w, kind: OpKind::Reset, srcs: 0 });
                    }
                }
                Seen::First | Seen::Next => {}
            }
            if !ctx.ignore_ids {
                self.dynamo_ids.insert(w, id);
            }
            match ev.route() {
                Route::Primary => {}
                Route::Elsewhere => {
                    p.report.ignored += 1;
                    continue;
                }
                Route::UnsupportedUnknown => {
                    p.report.reject(RejectReason::UnknownVariant, 1);
                    continue;
                }
                Route::UnsupportedInvalid => {
                    p.report.reject(RejectReason::Malformed, 1);
                    continue;
                }
            }
            let kind = match ev.data {
                EventData::Stored { parent, blocks } => OpKind::Stored { parent, blocks },
                EventData::Removed { hashes } => OpKind::Removed { hashes },
                EventData::Cleared => OpKind::Cleared,
            };
            p.ops.push(Op { worker: w, kind, srcs: 1 });
        }
    }

    fn vllm_message(&mut self, payload: &[u8], ctx: SourceContext, p: &mut Prepared) {
        let batch = match vllm::decode_batch(payload) {
            Ok(b) => b,
            Err(e) => {
                p.report.reject(decode_reason(e), 1);
                return;
            }
        };
        let n = batch.events.len() as u32;
        let Some(worker_id) = ctx.worker_id else {
            p.report.reject(RejectReason::NoWorker, n);
            return;
        };
        let dp_rank = batch.dp_rank.or(ctx.dp_rank).unwrap_or(0);
        let w = WorkerKey::new(worker_id, dp_rank);
        if n > 0 {
            p.report.touch(w);
        }
        if let Some(seq) = ctx.sequence {
            match observe(self.vllm_ids.get(&w).copied(), seq) {
                Seen::Restart => {
                    p.ops.push(Op { worker: w, kind: OpKind::Reset, srcs: 0 });
                    p.report.resets.push(w);
                    self.vllm.forget_holder(w);
                }
                Seen::Stale => {
                    p.report.reject(RejectReason::Duplicate, n);
                    return;
                }
                Seen::Gap { expected } => {
                    p.report.gaps.push(HolderGap { worker: w, expected, got: seq });
                }
                Seen::First | Seen::Next => {}
            }
            self.vllm_ids.insert(w, seq);
        }
        vllm::process_batch(
            &mut self.vllm,
            self.block_size,
            w,
            batch.events,
            &mut p.ops,
            &mut p.report,
        );
    }
}
