/**
 * Worker recovery from the worker's own local KV indexer, as Dynamo 1.6.1's
 * router does (docs/dynamo-request-plane.md §1): when a worker's events were
 * lost (an event-id gap) and when kv-epp first hears from a worker (an EPP
 * that starts late, or restarts, on the NATS core event plane), kv-epp asks
 * that worker for its whole tree and replaces what it holds for it.
 * Pure: discovery, the query and timers are injected; no I/O.
 *
 * Contract, per holder (worker, dp rank) with a recovery target:
 * - The message that revealed the gap was applied already (the applier's
 *   fallback: clear, then apply, as Dynamo does without a target), so the
 *   index stays usable while the query runs.
 * - That message and every later one touching the holder are applied as
 *   usual and also kept (at most `maxBuffered`, oldest dropped): the worker
 *   may answer with a tree older than the message that revealed the gap.
 * - When the dump (`{events, lastEventId}`) arrives, the holder is replaced by
 *   it: `removeHolder`, the dump applied, the cursor set to `lastEventId`,
 *   then the kept messages re-applied as replays (events at or below
 *   `lastEventId` are skipped as duplicates, later ones applied again). Live
 *   messages still queued apply after it under the same cursor rule. The end
 *   state is the worker's tree as of `lastEventId` plus every later event,
 *   which is what Dynamo's router ends with.
 * - A failed query is retried (`attempts`, backoff doubling from
 *   `backoffMs`); after the last one the holder keeps the fallback state and
 *   the failure is counted. A restart of the holder's stream cancels a
 *   recovery in flight (its answer would describe the old stream).
 * - Without a recovery target nothing changes (today's fallback); holders
 *   are looked up when they first show up and on each gap.
 */
import type { KvIndex, WorkerRank } from '../kv/types.js';
import type { Logger } from '../log/logger.js';
import type { EventApplier, EventApplyReport, EventCodec, EventSourceContext } from './types.js';
import type { WorkerKvQueryResult } from './worker-query/wire.js';

/** A message as the ingest applied it. */
export interface AppliedMessage {
  codec: EventCodec;
  payload: Uint8Array;
  context?: EventSourceContext | undefined;
  source: string;
}

/** What a query returned (worker-query/wire.ts); only an all-domain `tree_dump` replaces a holder. */
export type DumpAnswer = WorkerKvQueryResult;

export type RecoveryTrigger = 'gap' | 'discovered';
export type RecoveryOutcome = 'recovered' | 'failed' | 'cancelled';

export interface RecoveryObserver {
  recovery(trigger: RecoveryTrigger, outcome: RecoveryOutcome, blocks: number): void;
}

export interface WorkerRecoveryOptions<T> {
  applier: EventApplier;
  index: Pick<KvIndex, 'removeHolder'>;
  log: Logger;
  /** The holder's recovery target, or undefined (then it is not recovered). Must not throw. */
  findTarget(worker: WorkerRank): T | undefined;
  /** Asks the target for its whole tree; rejects on transport errors and timeouts. */
  dump(target: T): Promise<DumpAnswer>;
  sleep(ms: number): Promise<void>;
  observer?: RecoveryObserver | undefined;
  /** Queries per recovery; default 4. */
  attempts?: number | undefined;
  /** Wait before the second query, doubled each time; default 200 ms. */
  backoffMs?: number | undefined;
  /** Messages kept per holder while its query runs; default 1024 (Dynamo's limit). */
  maxBuffered?: number | undefined;
  /** Payload bytes kept per holder; default 64 MiB. */
  maxBufferedBytes?: number | undefined;
}

interface Recovery {
  worker: WorkerRank;
  trigger: RecoveryTrigger;
  kept: AppliedMessage[];
  keptBytes: number;
  /** Kept messages dropped over the bound. */
  dropped: number;
  cancelled: boolean;
}

const key = (w: WorkerRank): string => `${w.workerId}/${w.dpRank}`;

export class WorkerRecovery<T> {
  private readonly active = new Map<string, Recovery>();
  private readonly seen = new Set<string>();
  private readonly attempts: number;
  private readonly backoffMs: number;
  private readonly maxBuffered: number;
  private readonly maxBufferedBytes: number;
  private closed = false;

  constructor(private readonly opts: WorkerRecoveryOptions<T>) {
    this.attempts = Math.max(1, opts.attempts ?? 4);
    this.backoffMs = opts.backoffMs ?? 200;
    this.maxBuffered = opts.maxBuffered ?? 1024;
    this.maxBufferedBytes = opts.maxBufferedBytes ?? 64 * 1024 * 1024;
  }

  /** Holders with a query in flight. */
  get inFlight(): number {
    return this.active.size;
  }

  /** Called by the ingest after each message it applied. Never throws. */
  observe(msg: AppliedMessage, report: EventApplyReport): void {
    // Only Dynamo's event plane has recovery endpoints; engine (vLLM) streams are left alone.
    if (this.closed || msg.codec === 'vllm') return;
    for (const w of report.resets) this.cancel(w);
    for (const w of report.workers) {
      const r = this.active.get(key(w));
      if (!r) continue;
      r.kept.push(msg);
      r.keptBytes += msg.payload.length;
      while (r.kept.length > this.maxBuffered || r.keptBytes > this.maxBufferedBytes) {
        r.keptBytes -= (r.kept.shift() as AppliedMessage).payload.length;
        r.dropped++;
      }
    }
    for (const g of report.gaps) this.start(g, 'gap', msg);
    for (const w of report.workers) {
      const k = key(w);
      if (this.seen.has(k)) continue;
      this.seen.add(k);
      this.start(w, 'discovered', msg);
    }
  }

  /** Stops: recoveries in flight are abandoned (their answers ignored), no new ones start. */
  close(): void {
    this.closed = true;
    for (const r of [...this.active.values()]) this.cancel(r.worker);
  }

  /** A worker left discovery: cancel its recoveries and forget it was seen. */
  forgetWorker(workerId: bigint): void {
    for (const r of [...this.active.values()]) {
      if (r.worker.workerId === workerId) this.cancel(r.worker);
    }
    const prefix = `${workerId}/`;
    for (const k of [...this.seen]) if (k.startsWith(prefix)) this.seen.delete(k);
  }

  private cancel(w: WorkerRank): void {
    const r = this.active.get(key(w));
    if (!r) return;
    r.cancelled = true;
    this.active.delete(key(w));
    this.opts.observer?.recovery(r.trigger, 'cancelled', 0);
  }

  /** `msg` (the message that revealed the need) is kept too: the dump may predate it. */
  private start(w: WorkerRank, trigger: RecoveryTrigger, msg: AppliedMessage): void {
    const k = key(w);
    if (this.active.has(k)) return;
    const worker = { workerId: w.workerId, dpRank: w.dpRank };
    const target = this.opts.findTarget(worker);
    if (target === undefined) return;
    const r: Recovery = {
      worker,
      trigger,
      kept: [msg],
      keptBytes: msg.payload.length,
      dropped: 0,
      cancelled: false,
    };
    this.active.set(k, r);
    void this.run(r, target);
  }

  private async run(r: Recovery, first: T): Promise<void> {
    let target: T | undefined = first;
    let lastError = '';
    for (let attempt = 0; attempt < this.attempts && !r.cancelled; attempt++) {
      if (attempt > 0) {
        await this.opts.sleep(this.backoffMs * 2 ** (attempt - 1));
        if (r.cancelled) return;
        // The worker may have moved (restarted elsewhere) or gone.
        target = this.opts.findTarget(r.worker);
        if (target === undefined) {
          lastError = 'the recovery target left discovery';
          break;
        }
      }
      let answer: DumpAnswer;
      try {
        answer = await this.opts.dump(target);
      } catch (e) {
        lastError = e instanceof Error ? e.message : String(e);
        continue;
      }
      if (r.cancelled) return;
      // Only a dump of every residency domain may replace the holder (Dynamo retries others).
      if (answer.kind === 'tree_dump' && answer.resetScope === 'all') {
        this.replace(r, answer);
        return;
      }
      lastError = `the worker answered ${answer.kind}${answer.kind === 'tree_dump' ? ` (scope ${answer.resetScope})` : ''}`;
    }
    if (r.cancelled || this.active.get(key(r.worker)) !== r) return;
    this.active.delete(key(r.worker));
    this.opts.observer?.recovery(r.trigger, 'failed', 0);
    this.opts.log.warn(
      {
        workerId: r.worker.workerId,
        dpRank: r.worker.dpRank,
        trigger: r.trigger,
        err: lastError,
      },
      'KV recovery from the worker failed; its blocks come from live events only',
    );
  }

  private replace(
    r: Recovery,
    dump: { events: Uint8Array; count: number; lastEventId: bigint },
  ): void {
    const { applier, index } = this.opts;
    let stored = 0;
    this.active.delete(key(r.worker));
    let holes = 0;
    try {
      index.removeHolder(r.worker);
      const applied = applier.apply('dynamo', dump.events, { ignoreIds: true });
      applier.setCursor(r.worker, dump.lastEventId);
      for (const m of r.kept) {
        holes += applier.apply(m.codec, m.payload, { ...m.context, replay: true }).gaps.length;
      }
      this.opts.observer?.recovery(r.trigger, 'recovered', applied.blocksStored);
      stored = applied.blocksStored;
    } catch (e) {
      // The applier or index was disposed (shutdown): nothing to recover into.
      this.opts.log.warn(
        { workerId: r.worker.workerId, dpRank: r.worker.dpRank, err: (e as Error).message },
        'KV recovery could not be applied',
      );
      return;
    }
    if (holes > 0 || r.dropped > 0) {
      // Events between the dump and the replayed tail are missing (too many kept, or an old dump).
      this.opts.log.warn(
        { workerId: r.worker.workerId, dpRank: r.worker.dpRank, holes, dropped: r.dropped },
        'KV recovery left gaps after the dump',
      );
    }
    this.opts.log.info(
      {
        workerId: r.worker.workerId,
        dpRank: r.worker.dpRank,
        trigger: r.trigger,
        events: dump.count,
        blocks: stored,
        lastEventId: dump.lastEventId,
        replayed: r.kept.length,
      },
      'KV state recovered from the worker',
    );
  }
}
