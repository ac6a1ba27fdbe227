//! KV-event decoding and application: Dynamo 1.6.1 event-plane messages
//! (`dynamo`, `dynamo-json`) and vLLM/SGLang ZMQ batches (`vllm`), decoded
//! from bytes and applied to a [`RadixIndex`](crate::index::RadixIndex).
//!
//! Contract (mirrors `src/events/types.ts`):
//! - one [`EventApplier::apply`] per transport message; bad bytes or bad
//!   events are counted in the [`ApplyReport`], never panic, never error;
//!   an event that is bad leaves the index untouched, the other events of the
//!   message are applied;
//! - hashes are u64 everywhere (msgpack uint64, negative int64 cast bitwise,
//!   JSON integers up to `u64::MAX`);
//! - stream state (last event id per holder, last envelope sequence per
//!   publisher, the vLLM relay's namespace/group/refcount state) lives in the
//!   applier, so gaps and restarts are seen across messages;
//! - decoding and conversion ([`EventApplier::prepare`]) need no index;
//!   [`Prepared::commit`] applies the resulting operations in order, so a
//!   caller can hold the index's write lock only for the commit.
//!
//! Module map: [`msgpack`] (zero-copy reader), [`de`] (serde-compatible
//! struct/enum reading), [`dynamo`] (envelope + `RouterEvent`), [`vllm`] (ZMQ
//! batches and Dynamo's relay pipeline), `applier` (stream state, reports).

mod applier;
pub mod de;
pub mod dynamo;
pub mod load;
pub mod msgpack;
pub mod vllm;

pub use applier::EventApplier;
pub use dynamo::Envelope;

use crate::index::{EventError, RadixIndex, StoredBlock, WorkerKey};

/// Which wire format a message is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventCodec {
    /// Dynamo event-plane envelope (msgpack), or a bare msgpack `RouterEvent`
    /// or array of them.
    Dynamo,
    /// JSON `RouterEvent` or array of them.
    DynamoJson,
    /// The payload frame of a vLLM/SGLang ZMQ message.
    Vllm,
}

impl EventCodec {
    pub fn parse(s: &str) -> Option<EventCodec> {
        match s {
            "dynamo" => Some(EventCodec::Dynamo),
            "dynamo-json" => Some(EventCodec::DynamoJson),
            "vllm" => Some(EventCodec::Vllm),
            _ => None,
        }
    }
}

/// What the transport knows about a message (vLLM streams do not name their worker).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceContext {
    pub worker_id: Option<u64>,
    /// Used when the batch carries no `data_parallel_rank`.
    pub dp_rank: Option<u32>,
    /// The ZMQ sequence frame: the vLLM stream's event id.
    pub sequence: Option<u64>,
    /// The message was applied before (kv-epp re-applies messages buffered
    /// during a worker recovery): its envelope sequence is not tracked, so it
    /// neither reports a publisher gap nor moves the publisher's last sequence,
    /// and an event-id gap is reported without clearing the holder.
    pub replay: bool,
    /// A worker's tree dump: every event is applied whatever its id (dumps
    /// number their events from 0 per storage tier), and no holder's cursor
    /// moves; the caller sets the cursor to the dump's last event id.
    pub ignore_ids: bool,
}

/// Why an event (or message) was not applied. Codes match `EventRejectReason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    Malformed,
    UnknownVariant,
    BlockSizeMismatch,
    PartialBlock,
    ParentNotFound,
    BlockNotFound,
    InvalidBlockSequence,
    NoWorker,
    Duplicate,
}

impl RejectReason {
    pub const COUNT: usize = 9;
    pub const ALL: [RejectReason; Self::COUNT] = [
        RejectReason::Malformed,
        RejectReason::UnknownVariant,
        RejectReason::BlockSizeMismatch,
        RejectReason::PartialBlock,
        RejectReason::ParentNotFound,
        RejectReason::BlockNotFound,
        RejectReason::InvalidBlockSequence,
        RejectReason::NoWorker,
        RejectReason::Duplicate,
    ];

    pub fn code(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::UnknownVariant => "unknown_variant",
            RejectReason::BlockSizeMismatch => "block_size_mismatch",
            RejectReason::PartialBlock => "partial_block",
            RejectReason::ParentNotFound => "parent_not_found",
            RejectReason::BlockNotFound => "block_not_found",
            RejectReason::InvalidBlockSequence => "invalid_block_sequence",
            RejectReason::NoWorker => "no_worker",
            RejectReason::Duplicate => "duplicate",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl From<EventError> for RejectReason {
    fn from(e: EventError) -> Self {
        match e {
            EventError::ParentBlockNotFound => RejectReason::ParentNotFound,
            EventError::BlockNotFound => RejectReason::BlockNotFound,
            EventError::InvalidBlockSequence => RejectReason::InvalidBlockSequence,
        }
    }
}

/// Events applied, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub stored: u32,
    pub removed: u32,
    pub cleared: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublisherGap {
    pub publisher_id: u64,
    pub expected: u64,
    pub got: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HolderGap {
    pub worker: WorkerKey,
    pub expected: u64,
    pub got: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizeMismatch {
    pub worker: WorkerKey,
    pub expected: u32,
    pub got: u64,
}

/// What one message did. Field meanings follow `EventApplyReport` in
/// `src/events/types.ts`; `ignored` (native only) counts well-formed events
/// Dynamo's router also keeps out of the device index (lower storage tiers,
/// cache-owner domains, remote locality, non-main KV-cache groups, vLLM
/// `Ignored`, ambiguous cache namespaces).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub envelope: Option<Envelope>,
    pub publisher_gap: Option<PublisherGap>,
    pub applied: Applied,
    pub blocks_stored: u64,
    pub blocks_removed: u64,
    rejected: [u32; RejectReason::COUNT],
    pub ignored: u32,
    pub gaps: Vec<HolderGap>,
    pub resets: Vec<WorkerKey>,
    pub block_size_mismatches: Vec<BlockSizeMismatch>,
    pub workers: Vec<WorkerKey>,
}

impl ApplyReport {
    /// Rejections for one reason (events; blocks for `PartialBlock`).
    pub fn rejected(&self, r: RejectReason) -> u32 {
        self.rejected[r.index()]
    }

    /// Every non-zero rejection count.
    pub fn rejections(&self) -> impl Iterator<Item = (RejectReason, u32)> + '_ {
        RejectReason::ALL.iter().map(|&r| (r, self.rejected(r))).filter(|&(_, n)| n > 0)
    }

    pub(crate) fn reject(&mut self, r: RejectReason, n: u32) {
        let c = &mut self.rejected[r.index()];
        *c = c.saturating_add(n);
    }

    pub(crate) fn mismatch(&mut self, worker: WorkerKey, expected: u32, got: u64) {
        self.block_size_mismatches.push(BlockSizeMismatch { worker, expected, got });
    }

    pub(crate) fn touch(&mut self, w: WorkerKey) {
        if !self.workers.contains(&w) {
            self.workers.push(w);
        }
    }
}

/// One index operation produced by decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OpKind {
    Stored {
        parent: Option<u64>,
        blocks: Vec<StoredBlock>,
    },
    Removed {
        hashes: Vec<u64>,
    },
    Cleared,
    /// Forget a holder before a restarted (or, for Dynamo, gapped) stream
    /// continues; not an event of its own.
    Reset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Op {
    pub worker: WorkerKey,
    pub kind: OpKind,
    /// Source events whose fate (applied / rejected by the index) this
    /// operation's outcome decides; several when the relay merged events.
    pub srcs: u32,
}

/// A decoded message: index operations in order, and the report so far.
#[derive(Debug, Default)]
pub struct Prepared {
    ops: Vec<Op>,
    report: ApplyReport,
}

impl Prepared {
    /// True when committing would not touch the index.
    pub fn is_noop(&self) -> bool {
        self.ops.is_empty()
    }

    /// Applies the operations to `index` and completes the report.
    pub fn commit(self, index: &mut RadixIndex) -> ApplyReport {
        let Prepared { ops, mut report } = self;
        for op in ops {
            let w = op.worker;
            match op.kind {
                OpKind::Stored { parent, blocks } => match index.apply_stored(w, parent, &blocks) {
                    Ok(()) => {
                        report.applied.stored += op.srcs;
                        if op.srcs > 0 {
                            report.blocks_stored += blocks.len() as u64;
                        }
                    }
                    Err(e) => report.reject(e.into(), op.srcs),
                },
                OpKind::Removed { hashes } => match index.apply_removed(w, &hashes) {
                    Ok(()) => {
                        report.applied.removed += op.srcs;
                        report.blocks_removed += hashes.len() as u64;
                    }
                    Err(e) => report.reject(e.into(), op.srcs),
                },
                OpKind::Cleared => {
                    index.apply_cleared(w);
                    report.applied.cleared += op.srcs;
                }
                OpKind::Reset => index.remove_worker_dp_rank(w),
            }
        }
        report
    }

    /// The report of a message that needs no index (no operations).
    pub fn into_report(self) -> ApplyReport {
        self.report
    }
}
