/**
 * Native prefix index: a handle to the process-wide index in the addon, so
 * Piscina workers can score against the index the main thread feeds
 * (`NativeKvIndex.attach(handle)`). Output buffers for scoring are owned here
 * and reused; they grow when more holders match than they can hold.
 */
import { KvEppError } from '../../errors.js';
import type {
  ApplyOutcome,
  IndexStats,
  KvIndex,
  OverlapScores,
  StoredBlocks,
  WorkerRank,
} from '../types.js';
import { mapNativeError, type NativeBinding } from './binding.js';

const OUTCOMES: readonly ApplyOutcome[] = [
  'ok',
  'parent_not_found',
  'block_not_found',
  'invalid_block_sequence',
  'length_mismatch',
];

export class NativeKvIndex implements KvIndex {
  readonly backend = 'native' as const;
  private disposed = false;
  private workerIds = new BigUint64Array(64);
  private dpRanks = new Uint32Array(64);
  private depths = new Uint32Array(64);
  private treeSizes = new Uint32Array(64);

  private constructor(
    private readonly addon: NativeBinding,
    /** Process-wide handle; valid on every thread of this process. */
    readonly handle: number,
    private readonly owned: boolean,
  ) {}

  static create(addon: NativeBinding): NativeKvIndex {
    return new NativeKvIndex(addon, addon.indexCreate(), true);
  }

  /** The addon this index lives in (for objects bound to it, e.g. the approximate-mode tracker). */
  get binding(): NativeBinding {
    return this.addon;
  }

  /** A view of an index created elsewhere in the process; `dispose` does not free it. */
  static attach(addon: NativeBinding, handle: number): NativeKvIndex {
    return new NativeKvIndex(addon, handle, false);
  }

  private live(): void {
    if (this.disposed) throw new KvEppError('disposed', 'the index was disposed');
  }

  private call<T>(f: () => T): T {
    this.live();
    try {
      return f();
    } catch (e) {
      throw mapNativeError(e);
    }
  }

  applyStored(worker: WorkerRank, parentHash: bigint | null, blocks: StoredBlocks): ApplyOutcome {
    const code = this.call(() =>
      this.addon.indexApplyStored(
        this.handle,
        worker.workerId,
        worker.dpRank,
        parentHash,
        blocks.localHashes,
        blocks.externalHashes,
      ),
    );
    return OUTCOMES[code] ?? 'ok';
  }

  applyRemoved(worker: WorkerRank, externalHashes: BigUint64Array): ApplyOutcome {
    const code = this.call(() =>
      this.addon.indexApplyRemoved(this.handle, worker.workerId, worker.dpRank, externalHashes),
    );
    return OUTCOMES[code] ?? 'ok';
  }

  clear(worker: WorkerRank): void {
    this.call(() => this.addon.indexClear(this.handle, worker.workerId, worker.dpRank));
  }

  removeHolder(worker: WorkerRank): void {
    this.call(() => this.addon.indexRemoveHolder(this.handle, worker.workerId, worker.dpRank));
  }

  removeWorker(workerId: bigint): void {
    this.call(() => this.addon.indexRemoveWorker(this.handle, workerId));
  }

  findMatches(localHashes: BigUint64Array, earlyExit: boolean): OverlapScores {
    let n = this.scoreInto(localHashes, earlyExit);
    if (n > this.workerIds.length) {
      this.grow(n);
      n = this.scoreInto(localHashes, earlyExit);
    }
    const out: OverlapScores = { workers: [], blocks: [], treeSizes: [] };
    for (let i = 0; i < n; i++) {
      out.workers.push({
        workerId: this.workerIds[i] as bigint,
        dpRank: this.dpRanks[i] as number,
      });
      out.blocks.push(this.depths[i] as number);
      out.treeSizes.push(this.treeSizes[i] as number);
    }
    return out;
  }

  private scoreInto(localHashes: BigUint64Array, earlyExit: boolean): number {
    return this.call(() =>
      this.addon.indexFindMatches(
        this.handle,
        localHashes,
        earlyExit,
        this.workerIds,
        this.dpRanks,
        this.depths,
        this.treeSizes,
      ),
    );
  }

  private grow(n: number): void {
    const size = Math.max(n, this.workerIds.length * 2);
    this.workerIds = new BigUint64Array(size);
    this.dpRanks = new Uint32Array(size);
    this.depths = new Uint32Array(size);
    this.treeSizes = new Uint32Array(size);
  }

  treeSize(worker: WorkerRank): number {
    return this.call(() => this.addon.indexTreeSize(this.handle, worker.workerId, worker.dpRank));
  }

  memberships(): number {
    return this.call(() => this.addon.indexMemberships(this.handle));
  }

  stats(): IndexStats {
    const s = this.call(() => this.addon.indexStats(this.handle));
    return {
      workers: s.workers,
      memberships: s.memberships,
      counters: {
        applied: s.applied,
        parentNotFound: s.parentNotFound,
        blockNotFound: s.blockNotFound,
        invalidBlockSequence: s.invalidBlockSequence,
      },
    };
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    if (this.owned) this.addon.indexDispose(this.handle);
  }
}
