/**
 * What changed between two endpoint lists, by Dynamo identity: a holder is
 * (worker id, dp rank); a worker is gone when none of its ranks remain.
 * Pure.
 */
import type { WorkerRank } from '../kv/types.js';
import type { Endpoint } from './endpoints.js';

export interface EndpointChanges {
  added: Endpoint[];
  /** Holders no longer listed whose worker still has other ranks listed. */
  removedHolders: WorkerRank[];
  /** Workers none of whose ranks are listed any more. */
  removedWorkers: bigint[];
}

const holder = (e: { workerId: bigint; dpRank: number }) => `${e.workerId}/${e.dpRank}`;

export function diffEndpoints(
  prev: readonly Endpoint[],
  next: readonly Endpoint[],
): EndpointChanges {
  const before = new Set(prev.map(holder));
  const after = new Set(next.map(holder));
  const workersAfter = new Set(next.map((e) => e.workerId));
  const removedWorkers = new Set<bigint>();
  const removedHolders: WorkerRank[] = [];
  for (const e of prev) {
    if (after.has(holder(e))) continue;
    if (workersAfter.has(e.workerId))
      removedHolders.push({ workerId: e.workerId, dpRank: e.dpRank });
    else removedWorkers.add(e.workerId);
  }
  return {
    added: next.filter((e) => !before.has(holder(e))),
    removedHolders,
    removedWorkers: [...removedWorkers],
  };
}
