/**
 * Applies KV events to an index and accounts for every one of them.
 *
 * Contract: an event the index cannot apply (missing parent, unknown block,
 * self-referencing store, malformed arrays) is counted per outcome and
 * logged — once per (holder, outcome) until `resetLogBudget`, so a broken
 * worker cannot flood the log — and dropped; nothing throws and nothing else
 * is lost. Pure: no I/O beyond the injected logger.
 */
import type { Logger } from '../log/logger.js';
import type { ApplyOutcome, KvIndex, StoredBlocks, WorkerRank } from './types.js';

export type OutcomeCounts = Record<ApplyOutcome, number>;

export class EventSink {
  readonly counts: OutcomeCounts = {
    ok: 0,
    parent_not_found: 0,
    block_not_found: 0,
    invalid_block_sequence: 0,
    length_mismatch: 0,
  };
  private readonly logged = new Set<string>();

  constructor(
    private readonly index: KvIndex,
    private readonly log: Logger,
  ) {}

  stored(worker: WorkerRank, parentHash: bigint | null, blocks: StoredBlocks): ApplyOutcome {
    return this.account(worker, 'stored', this.index.applyStored(worker, parentHash, blocks), {
      parentHash,
      blocks: blocks.localHashes.length,
    });
  }

  removed(worker: WorkerRank, externalHashes: BigUint64Array): ApplyOutcome {
    return this.account(worker, 'removed', this.index.applyRemoved(worker, externalHashes), {
      blocks: externalHashes.length,
    });
  }

  cleared(worker: WorkerRank): void {
    this.index.clear(worker);
    this.counts.ok++;
  }

  /** Lets every (holder, outcome) pair log once more. */
  resetLogBudget(): void {
    this.logged.clear();
  }

  private account(
    worker: WorkerRank,
    kind: 'stored' | 'removed',
    outcome: ApplyOutcome,
    detail: Record<string, unknown>,
  ): ApplyOutcome {
    this.counts[outcome]++;
    if (outcome !== 'ok') {
      const key = `${worker.workerId}:${worker.dpRank}:${outcome}`;
      if (!this.logged.has(key)) {
        this.logged.add(key);
        this.log.warn(
          { workerId: worker.workerId, dpRank: worker.dpRank, event: kind, outcome, ...detail },
          `KV ${kind} event not applied: ${outcome.replaceAll('_', ' ')} (event dropped; further ones for this worker are only counted)`,
        );
      }
    }
    return outcome;
  }
}
