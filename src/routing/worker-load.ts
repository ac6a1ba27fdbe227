/**
 * Worker load as the workers report it (Dynamo's `kv_metrics` subject:
 * `ActiveLoad { worker_id, dp_rank, active_decode_blocks, kv_used_blocks }`),
 * per (worker, dp rank). The picker breaks prefix ties with it after its own
 * in-flight count. Reports older than `staleAfterMs` are ignored (a worker
 * that stopped reporting is not assumed idle or busy). Pure: time is passed in.
 */
export interface ReportedLoad {
  workerId: bigint;
  dpRank: number;
  activeDecodeBlocks?: number | undefined;
  activePrefillTokens?: number | undefined;
  kvUsedBlocks?: number | undefined;
}

interface Entry {
  load: number;
  kvUsedBlocks: number | undefined;
  atMs: number;
}

export const DEFAULT_LOAD_STALE_MS = 10_000;

export class WorkerLoadTable {
  private readonly byHolder = new Map<string, Entry>();

  constructor(private readonly staleAfterMs: number = DEFAULT_LOAD_STALE_MS) {}

  /** Records a report received at `nowMs`. */
  update(r: ReportedLoad, nowMs: number): void {
    const load = r.activeDecodeBlocks ?? r.kvUsedBlocks;
    if (load === undefined) return;
    this.byHolder.set(`${r.workerId}/${r.dpRank}`, {
      load,
      kvUsedBlocks: r.kvUsedBlocks,
      atMs: nowMs,
    });
  }

  /** The holder's reported decode load (blocks), 0 when unknown or stale. */
  load(workerId: bigint, dpRank: number, nowMs: number): number {
    const e = this.byHolder.get(`${workerId}/${dpRank}`);
    if (e === undefined || nowMs - e.atMs > this.staleAfterMs) return 0;
    return e.load;
  }

  /** Forgets a worker that left discovery. */
  forgetWorker(workerId: bigint): void {
    const prefix = `${workerId}/`;
    for (const k of this.byHolder.keys()) if (k.startsWith(prefix)) this.byHolder.delete(k);
  }

  get size(): number {
    return this.byHolder.size;
  }
}
