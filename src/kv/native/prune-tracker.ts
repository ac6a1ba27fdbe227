/**
 * Approximate mode's tracker in the addon (`kv_epp_core::approx`), bound to a
 * native index: `route` is one call per routing decision (expire, sequence
 * hashes, store, track, prune under one index write lock), and the tracked
 * hashes never live on the JS heap. Same contract and removal order as the
 * TypeScript `PruneTracker` (test/unit/kv/prune-tracker.test.ts runs both).
 */
import {
  type ApproxTracker,
  type PruneResult,
  type PruneSettings,
  validatePruneSettings,
} from '../approx/prune-tracker.js';
import type { WorkerRank } from '../types.js';
import { mapNativeError, type NativeBinding } from './binding.js';
import type { NativeKvIndex } from './radix-index.js';

export class NativePruneTracker implements ApproxTracker {
  private disposed = false;

  private constructor(
    private readonly addon: NativeBinding,
    private readonly handle: number,
  ) {}

  /** @throws RangeError for settings outside Dynamo's ranges, as `PruneTracker` does. */
  static create(index: NativeKvIndex, settings: PruneSettings): NativePruneTracker {
    const v = validatePruneSettings(settings);
    const addon = index.binding;
    const handle = call(() =>
      addon.approxTrackerCreate(
        index.handle,
        v.ttlMs,
        v.maxTreeSize,
        v.pruneTargetRatio,
        v.refreshGranularityMs,
        v.removalStep,
      ),
    );
    return new NativePruneTracker(addon, handle);
  }

  route(worker: WorkerRank, localHashes: BigUint64Array, count: number, nowMs: number): number {
    return call(() =>
      this.addon.approxRoute(
        this.handle,
        worker.workerId,
        worker.dpRank,
        localHashes,
        count,
        nowMs,
      ),
    );
  }

  routeSoon(worker: WorkerRank, localHashes: BigUint64Array, count: number, nowMs: number): void {
    call(() =>
      this.addon.approxRouteQueued(
        this.handle,
        worker.workerId,
        worker.dpRank,
        localHashes,
        count,
        nowMs,
      ),
    );
  }

  settle(): void {
    call(() => this.addon.approxFlush());
  }

  readonly offThread = true;

  maintainSoon(nowMs: number): void {
    call(() => this.addon.approxMaintainQueued(this.handle, nowMs));
  }

  record(
    worker: WorkerRank,
    sequenceHashes: BigUint64Array,
    nowMs: number,
    count = sequenceHashes.length,
  ): number {
    return call(() =>
      this.addon.approxRecord(
        this.handle,
        worker.workerId,
        worker.dpRank,
        sequenceHashes,
        count,
        nowMs,
      ),
    );
  }

  expire(nowMs: number): number {
    return call(() => this.addon.approxExpire(this.handle, nowMs));
  }

  maintain(nowMs: number): PruneResult {
    return call(() => this.addon.approxMaintain(this.handle, nowMs));
  }

  forgetHolder(worker: WorkerRank): void {
    call(() => this.addon.approxForgetHolder(this.handle, worker.workerId, worker.dpRank));
  }

  forgetWorker(workerId: bigint): void {
    call(() => this.addon.approxForgetWorker(this.handle, workerId));
  }

  get size(): number {
    return call(() => this.addon.approxStats(this.handle)).size;
  }

  get queued(): number {
    return call(() => this.addon.approxStats(this.handle)).queued;
  }

  backlog(nowMs: number): boolean {
    return call(() => this.addon.approxBacklog(this.handle, nowMs));
  }

  nextExpiry(): number | undefined {
    return call(() => this.addon.approxNextExpiry(this.handle)) ?? undefined;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.addon.approxTrackerDispose(this.handle);
  }
}

/** The approximate-mode thread's queue, shared by every native tracker in the process. */
export interface ApproxQueueStats {
  /** Jobs waiting for the thread. */
  queued: number;
  /** Jobs dropped because their tracker had been disposed meanwhile (running totals). */
  disposed: number;
  /** Jobs that panicked: a bug; their work was lost and the thread went on (running totals). */
  panicked: number;
}

export function approxQueueStats(addon: NativeBinding): ApproxQueueStats {
  return call(() => addon.approxQueueStats());
}

function call<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw mapNativeError(e);
  }
}
