/**
 * The event path between the transports (NATS, JetStream, ZMQ) and the
 * applier: a bounded FIFO of raw messages drained in slices, so an event
 * flood neither grows memory without bound nor stalls the request path.
 * Pure: time and scheduling are injected; no I/O.
 *
 * Contract:
 * - `push` never throws and never blocks. When `maxQueuedMessages` or
 *   `maxQueuedBytes` would be exceeded the message is dropped and counted
 *   (`dropped`); the index then misses those events exactly as it would miss
 *   a lost NATS message (the gap shows up as an event-id gap later).
 * - Messages of one source are applied in push order; a drain slice applies
 *   messages until `sliceMs` has passed, then yields to the event loop.
 * - Every report reaches the observer (metrics); a vLLM block-size mismatch
 *   is logged once per (worker, dp rank, sizes); gaps and restarts are logged
 *   once per holder per minute at most.
 * - An applier that throws costs that message only (logged once a minute);
 *   after `close` nothing more is applied or queued (shutdown: the applier is
 *   disposed next, and a slice already scheduled must not reach it).
 */
import type { WorkerRank } from '../kv/types.js';
import type { Logger } from '../log/logger.js';
import type { EventApplier, EventApplyReport, EventCodec, EventSourceContext } from './types.js';

export interface EventMessage {
  codec: EventCodec;
  payload: Uint8Array;
  context?: EventSourceContext | undefined;
  /** Where it came from (subject, ZMQ endpoint, file), for logs. */
  source: string;
  /** `now()` when the transport handed it over; set by `push` when absent. */
  receivedAtMs?: number | undefined;
}

/** What metrics see of each applied message. */
export interface EventObserver {
  applied(report: EventApplyReport, lagMs: number | undefined): void;
  dropped(messages: number): void;
}

export interface EventIngestOptions {
  applier: EventApplier;
  log: Logger;
  observer?: EventObserver | undefined;
  /** Wall clock in ms since the epoch (lag is measured against `published_at`). */
  now: () => number;
  /** Runs `fn` soon, after pending I/O (setImmediate in the server). */
  schedule: (fn: () => void) => void;
  /** Default 65 536 messages. */
  maxQueuedMessages?: number | undefined;
  /** Default 256 MiB of payload. */
  maxQueuedBytes?: number | undefined;
  /** Longest a drain slice runs before yielding, in ms; default 5. */
  sliceMs?: number | undefined;
  /** Sees every applied message and its report (worker recovery, src/events/recovery.ts). */
  recovery?:
    | {
        observe(msg: EventMessage, report: EventApplyReport): void;
        forgetWorker(workerId: bigint): void;
      }
    | undefined;
}

export interface EventIngestStats {
  queued: number;
  queuedBytes: number;
  dropped: number;
  messages: number;
}

const GAP_LOG_INTERVAL_MS = 60_000;

function holderKey(w: { workerId: bigint; dpRank: number }): string {
  return `${w.workerId}/${w.dpRank}`;
}

export class EventIngest {
  private queue: EventMessage[] = [];
  private head = 0;
  private queuedBytes = 0;
  private scheduled = false;
  private closed = false;
  private droppedTotal = 0;
  private messages = 0;
  private readonly mismatchLogged = new Set<string>();
  private readonly gapLoggedAt = new Map<string, number>();
  private readonly maxMessages: number;
  private readonly maxBytes: number;
  private readonly sliceMs: number;

  constructor(private readonly opts: EventIngestOptions) {
    this.maxMessages = opts.maxQueuedMessages ?? 65_536;
    this.maxBytes = opts.maxQueuedBytes ?? 256 * 1024 * 1024;
    this.sliceMs = opts.sliceMs ?? 5;
  }

  /** Queues one message; false when it was dropped because the queue is full. */
  push(msg: EventMessage): boolean {
    if (this.closed) return false;
    const queued = this.queue.length - this.head;
    if (queued >= this.maxMessages || this.queuedBytes + msg.payload.length > this.maxBytes) {
      this.droppedTotal++;
      this.opts.observer?.dropped(1);
      if (this.droppedTotal === 1 || this.droppedTotal % 10_000 === 0) {
        this.opts.log.warn(
          { source: msg.source, dropped: this.droppedTotal, queued },
          'KV event queue full; dropping events',
        );
      }
      return false;
    }
    msg.receivedAtMs ??= this.opts.now();
    this.queue.push(msg);
    this.queuedBytes += msg.payload.length;
    if (!this.scheduled) {
      this.scheduled = true;
      this.opts.schedule(() => this.drainSlice());
    }
    return true;
  }

  /** True while a push would be dropped (sources with backpressure stop reading). */
  isFull(): boolean {
    return this.queue.length - this.head >= this.maxMessages || this.queuedBytes >= this.maxBytes;
  }

  /** Applies everything queued now, ignoring the slice budget (tests, replay, shutdown). */
  drainAll(): void {
    while (this.head < this.queue.length) this.applyNext();
    this.compact();
  }

  stats(): EventIngestStats {
    return {
      queued: this.queue.length - this.head,
      queuedBytes: this.queuedBytes,
      dropped: this.droppedTotal,
      messages: this.messages,
    };
  }

  /** Drops what is queued and applies nothing more (shutdown, before the applier is disposed). */
  close(): void {
    this.closed = true;
    this.queue = [];
    this.head = 0;
    this.queuedBytes = 0;
  }

  /** Forgets a worker that left discovery (stream state and log throttles). */
  forgetWorker(workerId: bigint): void {
    this.opts.applier.forgetWorker(workerId);
    this.opts.recovery?.forgetWorker(workerId);
    const prefix = `${workerId}/`;
    for (const k of this.gapLoggedAt.keys()) if (k.startsWith(prefix)) this.gapLoggedAt.delete(k);
  }

  private drainSlice(): void {
    this.scheduled = false;
    if (this.closed) return;
    const start = performance.now();
    while (this.head < this.queue.length) {
      this.applyNext();
      if (performance.now() - start >= this.sliceMs) break;
    }
    this.compact();
    if (this.head < this.queue.length) {
      this.scheduled = true;
      this.opts.schedule(() => this.drainSlice());
    }
  }

  private compact(): void {
    if (this.head === this.queue.length) {
      this.queue = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  }

  private applyNext(): void {
    const msg = this.queue[this.head] as EventMessage;
    this.queue[this.head] = undefined as unknown as EventMessage;
    this.head++;
    this.queuedBytes -= msg.payload.length;
    this.messages++;
    let report: EventApplyReport;
    try {
      report = this.opts.applier.apply(msg.codec, msg.payload, msg.context);
    } catch (e) {
      if (this.shouldLogGap(`failed:${msg.source}`)) {
        this.opts.log.error(
          { source: msg.source, err: e instanceof Error ? e.message : String(e) },
          'applying a KV event message failed; skipped',
        );
      }
      return;
    }
    const lagMs =
      report.envelope === null
        ? undefined
        : Math.max(0, this.opts.now() - report.envelope.publishedAtMs);
    this.opts.observer?.applied(report, lagMs);
    this.logNotable(msg, report);
    this.opts.recovery?.observe(msg, report);
  }

  private logNotable(msg: EventMessage, report: EventApplyReport): void {
    const log = this.opts.log;
    for (const m of report.blockSizeMismatches) {
      const key = `${holderKey(m)}:${m.expected}:${m.got}`;
      if (this.mismatchLogged.has(key)) continue;
      this.mismatchLogged.add(key);
      log.warn(
        {
          source: msg.source,
          workerId: m.workerId,
          dpRank: m.dpRank,
          configuredBlockSize: m.expected,
          eventBlockSize: m.got,
        },
        'KV events rejected: the engine block size differs from the configured block size (set --block-size / DYN_KV_CACHE_BLOCK_SIZE to the engine value)',
      );
    }
    for (const g of report.gaps) {
      if (!this.shouldLogGap(holderKey(g))) continue;
      log.warn(
        {
          source: msg.source,
          workerId: g.workerId,
          dpRank: g.dpRank,
          expected: g.expected,
          got: g.got,
        },
        'KV event gap: events were lost; the index may miss blocks of this worker until they are evicted or re-stored',
      );
    }
    const pg = report.publisherGap;
    if (pg && this.shouldLogGap(`publisher:${pg.publisherId}`)) {
      log.warn(
        { source: msg.source, publisherId: pg.publisherId, expected: pg.expected, got: pg.got },
        'KV event publisher sequence gap: messages were lost',
      );
    }
    for (const w of report.resets) this.logReset(msg.source, w);
    const malformed = report.rejected.malformed ?? 0;
    if (malformed > 0 && this.shouldLogGap(`malformed:${msg.source}`)) {
      log.warn({ source: msg.source, codec: msg.codec }, 'malformed KV event message skipped');
    }
  }

  private logReset(source: string, w: WorkerRank): void {
    this.opts.log.info(
      { source, workerId: w.workerId, dpRank: w.dpRank },
      'KV event stream restarted; cleared the worker from the index',
    );
  }

  private shouldLogGap(key: string): boolean {
    const now = this.opts.now();
    const last = this.gapLoggedAt.get(key);
    if (last !== undefined && now - last < GAP_LOG_INTERVAL_MS) return false;
    this.gapLoggedAt.set(key, now);
    return true;
  }
}
