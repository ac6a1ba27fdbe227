/**
 * Index operations produced by decoding, and the report being built for one
 * message. Mirrors `Op`, `OpKind`, `ApplyReport` and `Prepared::commit` in
 * native/core/src/events/mod.rs.
 */
import type { ApplyOutcome, KvIndex, WorkerRank } from '../../kv/types.js';
import type { EventApplyReport, EventRejectReason } from '../types.js';

/** A KV-cache holder: (worker, dp rank). */
export type Holder = WorkerRank;

/**
 * One index operation. `srcs`: source events whose fate (applied / rejected
 * by the index) this operation's outcome decides; several when the vLLM relay
 * merged events, 0 for a store whose blocks were all dropped. `reset` forgets
 * a holder before a restarted (or, for Dynamo, gapped) stream continues; it is
 * not an event of its own.
 */
export type Op =
  | {
      worker: Holder;
      kind: 'stored';
      parent: bigint | null;
      locals: bigint[];
      externals: bigint[];
      srcs: number;
    }
  | { worker: Holder; kind: 'removed'; hashes: bigint[]; srcs: number }
  | { worker: Holder; kind: 'cleared'; srcs: number }
  | { worker: Holder; kind: 'reset' };

/** `RejectReason::ALL` order (the report lists non-zero counts only). */
const REASONS: readonly EventRejectReason[] = [
  'malformed',
  'unknown_variant',
  'block_size_mismatch',
  'partial_block',
  'parent_not_found',
  'block_not_found',
  'invalid_block_sequence',
  'no_worker',
  'duplicate',
];

const U32_MAX = 0xffff_ffff;

/** What one message did, as it is being decoded and committed (`ApplyReport`). */
export class Tally {
  envelope: EventApplyReport['envelope'] = null;
  publisherGap: EventApplyReport['publisherGap'] = null;
  readonly applied = { stored: 0, removed: 0, cleared: 0 };
  blocksStored = 0;
  blocksRemoved = 0;
  private readonly rejected = new Map<EventRejectReason, number>();
  /**
   * Well-formed events Dynamo's router also keeps out of the device index
   * (lower tiers, cache-owner domains, remote locality, non-main groups,
   * vLLM `Ignored`, ambiguous namespaces). Not part of `EventApplyReport`.
   */
  ignored = 0;
  readonly gaps: EventApplyReport['gaps'] = [];
  readonly resets: WorkerRank[] = [];
  readonly blockSizeMismatches: EventApplyReport['blockSizeMismatches'] = [];
  readonly workers: WorkerRank[] = [];

  /** Counts `n` rejections (saturating at u32::MAX, as the native counter). */
  reject(reason: EventRejectReason, n: number): void {
    this.rejected.set(reason, Math.min((this.rejected.get(reason) ?? 0) + n, U32_MAX));
  }

  mismatch(w: Holder, expected: number, got: bigint): void {
    this.blockSizeMismatches.push({
      workerId: w.workerId,
      dpRank: w.dpRank,
      expected,
      got: Number(got),
    });
  }

  /** Records a holder the message touched (first-seen order). */
  touch(w: Holder): void {
    if (!this.workers.some((x) => x.workerId === w.workerId && x.dpRank === w.dpRank)) {
      this.workers.push({ workerId: w.workerId, dpRank: w.dpRank });
    }
  }

  report(): EventApplyReport {
    const rejected: Partial<Record<EventRejectReason, number>> = {};
    for (const r of REASONS) {
      const n = this.rejected.get(r) ?? 0;
      if (n > 0) rejected[r] = n;
    }
    return {
      envelope: this.envelope,
      publisherGap: this.publisherGap,
      applied: { ...this.applied },
      blocksStored: this.blocksStored,
      blocksRemoved: this.blocksRemoved,
      rejected,
      gaps: this.gaps,
      resets: this.resets,
      blockSizeMismatches: this.blockSizeMismatches,
      workers: this.workers,
    };
  }
}

function outcomeReason(o: ApplyOutcome): EventRejectReason | null {
  switch (o) {
    case 'ok':
      return null;
    case 'parent_not_found':
    case 'block_not_found':
    case 'invalid_block_sequence':
      return o;
    case 'length_mismatch':
      // Never produced: every stored op has as many local as external hashes.
      return 'malformed';
  }
}

/** Applies the operations to `index` in order and completes the tally (`Prepared::commit`). */
export function commit(ops: readonly Op[], index: KvIndex, t: Tally): void {
  for (const op of ops) {
    const w = op.worker;
    switch (op.kind) {
      case 'stored': {
        const o = index.applyStored(w, op.parent, {
          localHashes: BigUint64Array.from(op.locals),
          externalHashes: BigUint64Array.from(op.externals),
        });
        const reason = outcomeReason(o);
        if (reason === null) {
          t.applied.stored += op.srcs;
          if (op.srcs > 0) t.blocksStored += op.externals.length;
        } else {
          t.reject(reason, op.srcs);
        }
        break;
      }
      case 'removed': {
        const o = index.applyRemoved(w, BigUint64Array.from(op.hashes));
        const reason = outcomeReason(o);
        if (reason === null) {
          t.applied.removed += op.srcs;
          t.blocksRemoved += op.hashes.length;
        } else {
          t.reject(reason, op.srcs);
        }
        break;
      }
      case 'cleared':
        index.clear(w);
        t.applied.cleared += op.srcs;
        break;
      case 'reset':
        index.removeHolder(w);
        break;
    }
  }
}
