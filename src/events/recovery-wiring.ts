/**
 * Wires worker recovery (recovery.ts) to Dynamo's file discovery and the
 * worker query client (worker-query/): the I/O side, kept out of the pure
 * recovery logic. Recovery is on when a discovery directory is configured
 * (`--dynamo-discovery-dir` / `DYN_FILE_KV`).
 */
import type { KvIndex } from '../kv/types.js';
import type { Logger } from '../log/logger.js';
import { type RecoveryObserver, WorkerRecovery } from './recovery.js';
import type { EventApplier } from './types.js';
import {
  findRecoveryTarget,
  queryWorkerKvDump,
  type RecoveryTarget,
  WorkerQueryError,
} from './worker-query/index.js';

export interface RecoveryWiringOptions {
  discoveryDir: string;
  /** Where workers connect back with answers (listened on and advertised). */
  responseHost: string;
  applier: EventApplier;
  index: Pick<KvIndex, 'removeHolder'>;
  log: Logger;
  observer?: RecoveryObserver | undefined;
  /** Per query; default 10 s. */
  timeoutMs?: number | undefined;
}

export function createWorkerRecovery(o: RecoveryWiringOptions): WorkerRecovery<RecoveryTarget> {
  return new WorkerRecovery<RecoveryTarget>({
    applier: o.applier,
    index: o.index,
    log: o.log,
    observer: o.observer,
    findTarget: (w) => {
      try {
        return findRecoveryTarget(o.discoveryDir, w.workerId, w.dpRank);
      } catch (e) {
        // No record (a worker without a local indexer) is the common case; others are worth a line.
        if (!(e instanceof WorkerQueryError && e.code === 'no_recovery_target')) {
          o.log.warn(
            { dir: o.discoveryDir, err: (e as Error).message },
            'cannot read Dynamo discovery',
          );
        }
        return undefined;
      }
    },
    dump: (target) =>
      queryWorkerKvDump(target, {
        timeoutMs: o.timeoutMs ?? 10_000,
        responseHost: o.responseHost,
      }),
    sleep: (ms) =>
      new Promise((resolve) => {
        setTimeout(resolve, ms).unref();
      }),
  });
}
