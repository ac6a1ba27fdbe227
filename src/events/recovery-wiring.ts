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
  listRecoveryTargets,
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

/** How long one read of the discovery directory serves lookups (a burst of new workers reads it once). */
const DISCOVERY_CACHE_MS = 1000;

export function createWorkerRecovery(o: RecoveryWiringOptions): WorkerRecovery<RecoveryTarget> {
  let listed: { at: number; targets: RecoveryTarget[] } | undefined;
  return new WorkerRecovery<RecoveryTarget>({
    applier: o.applier,
    index: o.index,
    log: o.log,
    observer: o.observer,
    findTarget: (w) => {
      try {
        const now = Date.now();
        if (!listed || now - listed.at > DISCOVERY_CACHE_MS) {
          listed = { at: now, targets: listRecoveryTargets(o.discoveryDir) };
        }
        const t = findRecoveryTarget(o.discoveryDir, w.workerId, w.dpRank, {
          targets: listed.targets,
        });
        // A worker that only speaks the legacy JSON request plane cannot decode our query.
        return t.codec === 'msgpack' ? t : undefined;
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
