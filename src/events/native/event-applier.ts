/**
 * Native event applier: a handle to an applier in the addon, bound to a
 * `NativeKvIndex`. One `apply` call is one native call: the payload bytes go
 * to Rust, which decodes the message outside the index lock, then takes the
 * index's write lock once to apply it. Stream state (event ids, publisher
 * sequences, the vLLM relay's namespace/refcount state) lives in the addon.
 * Semantics and the Dynamo 1.6.1 sources they follow: native/core/src/events/.
 */
import { KvEppError } from '../../errors.js';
import { mapNativeError, type NativeBinding } from '../../kv/native/binding.js';
import type { NativeKvIndex } from '../../kv/native/radix-index.js';
import type { WorkerRank } from '../../kv/types.js';
import type {
  EventApplier,
  EventApplierOptions,
  EventApplyReport,
  EventCodec,
  EventRejectReason,
  EventSourceContext,
} from '../types.js';

type NativeReport = ReturnType<NativeBinding['eventApplierApply']>;
type NativeRejections = NativeReport['rejected'];

/** Native rejection counters, in `EventRejectReason` order. */
const REASONS: ReadonlyArray<readonly [keyof NativeRejections, EventRejectReason]> = [
  ['malformed', 'malformed'],
  ['unknownVariant', 'unknown_variant'],
  ['blockSizeMismatch', 'block_size_mismatch'],
  ['partialBlock', 'partial_block'],
  ['parentNotFound', 'parent_not_found'],
  ['blockNotFound', 'block_not_found'],
  ['invalidBlockSequence', 'invalid_block_sequence'],
  ['noWorker', 'no_worker'],
  ['duplicate', 'duplicate'],
];

function rank(w: { workerId: bigint; dpRank: number }): WorkerRank {
  return { workerId: w.workerId, dpRank: w.dpRank };
}

/** The native report as `EventApplyReport` (absent rejection reasons are left out). */
function toReport(r: NativeReport): EventApplyReport {
  const rejected: Partial<Record<EventRejectReason, number>> = {};
  for (const [native, reason] of REASONS) {
    const n = r.rejected[native];
    if (n > 0) rejected[reason] = n;
  }
  return {
    envelope: r.envelope
      ? {
          publisherId: r.envelope.publisherId,
          sequence: r.envelope.sequence,
          publishedAtMs: r.envelope.publishedAtMs,
        }
      : null,
    publisherGap: r.publisherGap
      ? {
          publisherId: r.publisherGap.publisherId,
          expected: r.publisherGap.expected,
          got: r.publisherGap.got,
        }
      : null,
    applied: { stored: r.appliedStored, removed: r.appliedRemoved, cleared: r.appliedCleared },
    blocksStored: r.blocksStored,
    blocksRemoved: r.blocksRemoved,
    rejected,
    gaps: r.gaps.map((g) => ({
      workerId: g.workerId,
      dpRank: g.dpRank,
      expected: g.expected,
      got: g.got,
    })),
    resets: r.resets.map(rank),
    blockSizeMismatches: r.blockSizeMismatches.map((m) => ({
      workerId: m.workerId,
      dpRank: m.dpRank,
      expected: m.expected,
      got: m.got,
    })),
    workers: r.workers.map(rank),
  };
}

export class NativeEventApplier implements EventApplier {
  readonly backend = 'native' as const;
  private disposed = false;

  private constructor(
    private readonly addon: NativeBinding,
    /** Process-wide applier handle. */
    readonly handle: number,
  ) {}

  /**
   * An applier feeding `index` (which it does not own: disposing the applier
   * leaves the index alive; disposing the index first makes `apply` throw).
   * @throws KvEppError('invalid_block_size') when blockSize is outside 1..=1024.
   * @throws KvEppError('disposed') when the index was disposed.
   */
  static create(
    addon: NativeBinding,
    index: NativeKvIndex,
    options: EventApplierOptions,
  ): NativeEventApplier {
    try {
      return new NativeEventApplier(
        addon,
        addon.eventApplierCreate(index.handle, options.blockSize),
      );
    } catch (e) {
      throw mapNativeError(e);
    }
  }

  private live(): void {
    if (this.disposed) throw new KvEppError('disposed', 'the event applier was disposed');
  }

  private call<T>(f: () => T): T {
    this.live();
    try {
      return f();
    } catch (e) {
      throw mapNativeError(e);
    }
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
    const r = this.call(() =>
      this.addon.eventApplierApply(
        this.handle,
        codec,
        payload,
        context.workerId,
        context.dpRank,
        context.sequence,
        context.replay,
        context.ignoreIds,
      ),
    );
    return toReport(r);
  }

  setCursor(worker: WorkerRank, lastEventId: bigint | null): void {
    this.call(() =>
      this.addon.eventApplierSetCursor(
        this.handle,
        worker.workerId,
        worker.dpRank,
        lastEventId ?? undefined,
      ),
    );
  }

  forgetWorker(workerId: bigint): void {
    this.call(() => this.addon.eventApplierForgetWorker(this.handle, workerId));
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.addon.eventApplierDispose(this.handle);
  }
}
