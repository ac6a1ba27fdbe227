/**
 * Pure-JS event applier: the twin of the native one (native/core/src/events/
 * applier.rs, stream state and per-message flow), for a `JsKvIndex`. Same
 * reports and index effects for the same messages; see that module's header
 * for the Dynamo 1.6.1 sources of each rule:
 * - event ids per holder: first or last + 1 applied; at or below the last one
 *   `duplicate`; above last + 1 a gap (reported, the holder cleared, then the
 *   event applied — except a legacy all-domain clear, applied as is); back at
 *   0 or 1 below the last one a restart (cleared first, reported in `resets`);
 * - vLLM streams use the ZMQ sequence frame as the id of the whole message (a
 *   stale sequence skips the message, a gap is only reported, a restart also
 *   forgets the relay state kept for the holder);
 * - envelope sequence per publisher: above last + 1 is a `publisherGap`.
 * Pure: no I/O; confined to the thread that made it (like `JsKvIndex`).
 */
import { KvEppError } from '../../errors.js';
import { checkBlockSize } from '../../kv/block-size.js';
import type { KvIndex, WorkerRank } from '../../kv/types.js';
import type {
  EventApplier,
  EventApplierOptions,
  EventApplyReport,
  EventCodec,
  EventSourceContext,
} from '../types.js';
import type { Decoded } from './decode.js';
import { type DynamoMessage, decodeJson, decodeMsgpack, isResetAll, routeOf } from './dynamo.js';
import { commit, type Holder, type Op, Tally } from './ops.js';
import { decodeBatch, processBatch, VllmState } from './vllm.js';

const U64_MAX = (1n << 64n) - 1n;

/** How an event id relates to the holder's last one. */
type Seen = 'first' | 'next' | 'stale' | 'restart' | { gap: bigint };

function observe(last: bigint | undefined, got: bigint): Seen {
  if (last === undefined) return 'first';
  if (got <= 1n && got < last) return 'restart';
  if (got <= last) return 'stale';
  if (got === last + 1n) return 'next';
  return { gap: last + 1n };
}

/** Last event id per holder: worker id -> dp rank -> id. */
class Ids {
  private readonly byWorker = new Map<bigint, Map<number, bigint>>();

  get(w: Holder): bigint | undefined {
    return this.byWorker.get(w.workerId)?.get(w.dpRank);
  }

  set(w: Holder, id: bigint): void {
    let ranks = this.byWorker.get(w.workerId);
    if (!ranks) {
      ranks = new Map();
      this.byWorker.set(w.workerId, ranks);
    }
    ranks.set(w.dpRank, id);
  }

  forget(workerId: bigint): void {
    this.byWorker.delete(workerId);
  }

  forgetHolder(w: Holder): void {
    this.byWorker.get(w.workerId)?.delete(w.dpRank);
  }
}

const isU64 = (v: unknown): v is bigint => typeof v === 'bigint' && v >= 0n && v <= U64_MAX;

export class JsEventApplier implements EventApplier {
  readonly backend = 'js' as const;
  private readonly blockSize: number;
  private readonly dynamoIds = new Ids();
  private readonly vllmIds = new Ids();
  private readonly publishers = new Map<bigint, bigint>();
  private readonly vllm = new VllmState();
  private disposed = false;

  /**
   * An applier feeding `index` (not owned: disposing the applier leaves the
   * index alive; disposing the index first makes `apply` throw `disposed`).
   * @throws KvEppError('invalid_block_size') when blockSize is outside 1..=1024.
   */
  constructor(
    private readonly index: KvIndex,
    options: EventApplierOptions,
  ) {
    // As the native factory: the index must be live, then the block size valid.
    index.treeSize({ workerId: 0n, dpRank: 0 });
    checkBlockSize(options.blockSize);
    this.blockSize = options.blockSize;
  }

  /**
   * Bad payloads are reported, never thrown. Throws only for misuse: a
   * disposed applier or index (`disposed`), an unknown codec or a context
   * value out of range (`invalid_argument`).
   */
  apply(
    codec: EventCodec,
    payload: Uint8Array,
    context: EventSourceContext = {},
  ): EventApplyReport {
    this.live();
    if (codec !== 'dynamo' && codec !== 'dynamo-json' && codec !== 'vllm') {
      throw new KvEppError(
        'invalid_argument',
        `codec must be dynamo, dynamo-json or vllm, got ${JSON.stringify(codec)}`,
      );
    }
    if (!(payload instanceof Uint8Array)) {
      throw new KvEppError('invalid_argument', 'payload must be a Uint8Array');
    }
    const { workerId, dpRank, sequence } = context;
    if (workerId !== undefined && !isU64(workerId)) {
      throw new KvEppError('invalid_argument', 'workerId must be an unsigned 64-bit integer');
    }
    if (sequence !== undefined && !isU64(sequence)) {
      throw new KvEppError('invalid_argument', 'sequence must be an unsigned 64-bit integer');
    }
    if (dpRank !== undefined && typeof dpRank !== 'number') {
      throw new KvEppError('invalid_argument', 'dpRank must be a number');
    }
    // The native applier looks its index up before decoding: a disposed index
    // fails the call without touching stream state.
    this.index.treeSize({ workerId: 0n, dpRank: 0 });
    const t = new Tally();
    const ops: Op[] = [];
    switch (codec) {
      case 'dynamo':
        this.dynamoMessage(decodeMsgpack(payload), context, ops, t);
        break;
      case 'dynamo-json':
        this.dynamoMessage(decodeJson(payload), context, ops, t);
        break;
      case 'vllm':
        // dp ranks are taken modulo 2^32, as the native u32 conversion (and JsKvIndex) does.
        this.vllmMessage(
          payload,
          workerId,
          dpRank === undefined ? undefined : dpRank >>> 0,
          sequence,
          ops,
          t,
        );
        break;
    }
    commit(ops, this.index, t);
    return t.report();
  }

  /**
   * Forgets a worker that left discovery: its event ids (every dp rank), the
   * relay state kept for it, and the envelope sequence of a publisher with
   * the same id (Dynamo's publisher id is the worker's instance id).
   */
  forgetWorker(workerId: bigint): void {
    this.live();
    if (!isU64(workerId)) {
      throw new KvEppError('invalid_argument', 'workerId must be an unsigned 64-bit integer');
    }
    this.dynamoIds.forget(workerId);
    this.vllmIds.forget(workerId);
    this.publishers.delete(workerId);
    this.vllm.forgetWorker(workerId);
  }

  setCursor(worker: WorkerRank, lastEventId: bigint | null): void {
    this.live();
    if (!isU64(worker.workerId) || (lastEventId !== null && !isU64(lastEventId))) {
      throw new KvEppError(
        'invalid_argument',
        'workerId and lastEventId must be unsigned 64-bit integers',
      );
    }
    // As the native u32 conversion.
    const w = { workerId: worker.workerId, dpRank: worker.dpRank >>> 0 };
    if (lastEventId === null) this.dynamoIds.forgetHolder(w);
    else this.dynamoIds.set(w, lastEventId);
  }

  dispose(): void {
    this.disposed = true;
  }

  private live(): void {
    if (this.disposed) throw new KvEppError('disposed', 'the event applier was disposed');
  }

  private dynamoMessage(
    decoded: Decoded<DynamoMessage>,
    context: EventSourceContext,
    ops: Op[],
    t: Tally,
  ): void {
    const ignoreIds = context.ignoreIds === true;
    const replay = context.replay === true || ignoreIds;
    if (!decoded.ok) {
      t.reject(decoded.reason, 1);
      return;
    }
    const m = decoded.value;
    const env = m.envelope;
    if (env && !replay) {
      t.envelope = {
        publisherId: env.publisherId,
        sequence: env.sequence,
        publishedAtMs: Number(env.publishedAtMs),
      };
      const last = this.publishers.get(env.publisherId);
      if (last !== undefined && env.sequence > (last === U64_MAX ? last : last + 1n)) {
        t.publisherGap = { publisherId: env.publisherId, expected: last + 1n, got: env.sequence };
      }
      this.publishers.set(env.publisherId, env.sequence);
    }
    for (const d of m.events) {
      if (!d.ok) {
        t.reject(d.reason, 1);
        continue;
      }
      const ev = d.value;
      const w: WorkerRank = { workerId: ev.workerId, dpRank: ev.dpRank };
      t.touch(w);
      const id = ev.eventId;
      const seen: Seen = ignoreIds ? 'next' : observe(this.dynamoIds.get(w), id);
      if (seen === 'restart') {
        ops.push({ worker: w, kind: 'reset' });
        t.resets.push(w);
      } else if (seen === 'stale') {
        t.reject('duplicate', 1);
        continue;
      } else if (typeof seen === 'object') {
        t.gaps.push({ workerId: w.workerId, dpRank: w.dpRank, expected: seen.gap, got: id });
        // A legacy all-domain clear is applied as is; anything else is
        // `ResetDegraded`: clear, then apply.
        if (!isResetAll(ev) && !replay) ops.push({ worker: w, kind: 'reset' });
      }
      if (!ignoreIds) this.dynamoIds.set(w, id);
      const route = routeOf(ev);
      if (route === 'elsewhere') {
        t.ignored += 1;
        continue;
      }
      if (route === 'unsupported_unknown') {
        t.reject('unknown_variant', 1);
        continue;
      }
      if (route === 'unsupported_invalid') {
        t.reject('malformed', 1);
        continue;
      }
      const data = ev.data;
      if (data.kind === 'stored') {
        ops.push({
          worker: w,
          kind: 'stored',
          parent: data.parent,
          locals: data.locals,
          externals: data.externals,
          srcs: 1,
        });
      } else if (data.kind === 'removed') {
        ops.push({ worker: w, kind: 'removed', hashes: data.hashes, srcs: 1 });
      } else {
        ops.push({ worker: w, kind: 'cleared', srcs: 1 });
      }
    }
  }

  private vllmMessage(
    payload: Uint8Array,
    workerId: bigint | undefined,
    dpRank: number | undefined,
    sequence: bigint | undefined,
    ops: Op[],
    t: Tally,
  ): void {
    const batch = decodeBatch(payload);
    if (batch === null) {
      t.reject('malformed', 1);
      return;
    }
    const n = batch.events.length;
    if (workerId === undefined) {
      t.reject('no_worker', n);
      return;
    }
    const w: WorkerRank = { workerId, dpRank: batch.dpRank ?? dpRank ?? 0 };
    if (n > 0) t.touch(w);
    if (sequence !== undefined) {
      const seq = sequence;
      const seen = observe(this.vllmIds.get(w), seq);
      if (seen === 'restart') {
        ops.push({ worker: w, kind: 'reset' });
        t.resets.push(w);
        this.vllm.forgetHolder(w);
      } else if (seen === 'stale') {
        t.reject('duplicate', n);
        return;
      } else if (typeof seen === 'object') {
        t.gaps.push({ workerId: w.workerId, dpRank: w.dpRank, expected: seen.gap, got: seq });
      }
      this.vllmIds.set(w, seq);
    }
    processBatch(this.vllm, this.blockSize, w, batch.events, ops, t);
  }
}
