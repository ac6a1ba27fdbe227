/**
 * KV-event decoding and application: the contract shared by the native
 * (Rust) and JS event appliers.
 *
 * Invariants every implementation keeps (checked by test/contract/event-applier
 * and the native-vs-JS differential tests):
 * - Hashes are u64 end to end. Payload bytes are decoded by the applier itself;
 *   no caller ever `JSON.parse`s an event (that rounds integers above 2^53).
 *   Signed 64-bit hashes (older vLLM, Dynamo's Python API) are cast bitwise to u64.
 * - One `apply` call per transport message; a bad message is counted in the
 *   report and never throws, and never leaves the index half-updated for the
 *   event that was bad (events before it in the same message stay applied).
 * - Stream state (last event id per (worker, dp rank), last sequence per
 *   publisher) lives in the applier, so gaps and restarts are seen across messages.
 */
import type { Backend, WorkerRank } from '../kv/types.js';

/**
 * - `dynamo`: Dynamo 1.6 event-plane envelope (msgpack map `{publisher_id,
 *   sequence, published_at, topic, payload: bin}`, `payload` = msgpack array of
 *   `RouterEvent` maps); also accepts a bare msgpack `RouterEvent` or array of them.
 * - `dynamo-json`: JSON `RouterEvent`, or a JSON array of them (older releases,
 *   `DYN_EVENT_PLANE_CODEC=json`, JetStream mode).
 * - `vllm`: the payload frame of a vLLM/SGLang ZMQ message, msgpack
 *   `[ts, [events], data_parallel_rank]`, events as maps tagged `type` or as
 *   tagged arrays.
 */
export type EventCodec = 'dynamo' | 'dynamo-json' | 'vllm';

/** Why an event (or a whole message) was not applied. */
export type EventRejectReason =
  /** Bytes that are not valid msgpack/JSON, truncated, or the wrong shape/types. */
  | 'malformed'
  /** A well-formed event of a kind we do not know (e.g. a new `data` variant). */
  | 'unknown_variant'
  /** vLLM `BlockStored` whose `block_size` differs from the configured block size. */
  | 'block_size_mismatch'
  /** vLLM: trailing blocks without a full block of `token_ids` (dropped, as Dynamo does). */
  | 'partial_block'
  /** Index outcomes, as `ApplyOutcome`. */
  | 'parent_not_found'
  | 'block_not_found'
  | 'invalid_block_sequence'
  /** Engine stream without a worker id (vllm codec with no `context.workerId`). */
  | 'no_worker'
  /** Event id at or below the holder's last one but not a restart: already applied, skipped. */
  | 'duplicate';

export interface EventSourceContext {
  /** vllm: the worker the socket belongs to (engine events do not name it). Ignored by dynamo codecs. */
  workerId?: bigint;
  /** vllm: dp rank when the batch does not carry `data_parallel_rank`. Default 0. */
  dpRank?: number;
  /** vllm: the ZMQ sequence frame, used as the event id for gap/restart detection. */
  sequence?: bigint;
  /**
   * The message was applied before and is applied again (after a worker
   * recovery): its envelope sequence is not tracked (no `envelope`, no
   * `publisherGap`, the publisher's last sequence unchanged). Event ids are
   * checked as usual, so events at or below the holder's cursor are skipped;
   * a gap is reported but does not clear the holder (the replay lands on a
   * recovered state).
   */
  replay?: boolean;
  /**
   * A worker's tree dump: every event is applied whatever its id (dumps
   * number events from 0 per storage tier) and no cursor moves; implies
   * `replay`. The caller then sets the holder's cursor to the dump's last id.
   */
  ignoreIds?: boolean;
}

export interface EventApplyReport {
  /** The Dynamo envelope's header; null when the message had none. */
  envelope: { publisherId: bigint; sequence: bigint; publishedAtMs: number } | null;
  /** Envelope `sequence` skipped ahead of the publisher's last + 1 (messages lost). */
  publisherGap: { publisherId: bigint; expected: bigint; got: bigint } | null;
  /** Events applied, by kind. */
  applied: { stored: number; removed: number; cleared: number };
  /** Blocks inserted by applied `stored` events / named by applied `removed` events. */
  blocksStored: number;
  blocksRemoved: number;
  /** Rejections by reason (events, or blocks for `partial_block`); absent reasons are 0. */
  rejected: Partial<Record<EventRejectReason, number>>;
  /** Per-holder event-id gaps: `got > expected` where expected = last + 1. */
  gaps: Array<{ workerId: bigint; dpRank: number; expected: bigint; got: bigint }>;
  /**
   * Holders whose stream restarted (event id back at its first value, 0 or 1, after higher
   * ones): cleared before that event is applied.
   */
  resets: WorkerRank[];
  /** Every vLLM block-size mismatch seen in this message (for a once-per-worker log line). */
  blockSizeMismatches: Array<{ workerId: bigint; dpRank: number; expected: number; got: number }>;
  /** Distinct holders this message touched, in first-seen order. */
  workers: WorkerRank[];
}

export interface EventApplierOptions {
  /** Configured KV block size (tokens per block), 1..=1024. */
  blockSize: number;
}

export interface EventApplier {
  readonly backend: Backend;
  /** Decodes one transport message and applies its events to the bound index. Never throws on bad input. */
  apply(codec: EventCodec, payload: Uint8Array, context?: EventSourceContext): EventApplyReport;
  /** Forgets stream state for a worker that left discovery (the caller also calls `index.removeWorker`). */
  forgetWorker(workerId: bigint): void;
  /**
   * Sets the last event id of a Dynamo-stream holder; `null` forgets it (the
   * next id is taken as the first). After a worker recovery the index is
   * current up to the worker's `lastEventId`: later live events then apply
   * without a gap and earlier ones are skipped as duplicates.
   */
  setCursor(worker: WorkerRank, lastEventId: bigint | null): void;
  /** Releases native state; the bound index is not disposed. */
  dispose(): void;
}
