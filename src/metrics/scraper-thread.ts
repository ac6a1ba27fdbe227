/**
 * The model-server scraper on a worker thread of its own, so that polling
 * many endpoints at a short interval never takes the event loop the ext_proc
 * server routes on (bench/README.md, "Metrics scraping": reading one vLLM
 * page costs ~150 µs of CPU; 256 endpoints every 50 ms kept a main-thread
 * scraper's event loop 60–80 % busy). Adapter module (node:worker_threads).
 *
 * Contract: the same as ModelServerScraper's `start`/`stop`/`fresh`. Readings
 * reach this thread within 10 ms of being read (scraper-worker.ts). The
 * targets are read here every interval and sent to the worker when they
 * change; an endpoint that left is dropped from `fresh` then.
 * Failure modes: the worker failing to start or dying logs one error and the
 * figures go stale (the pool gauges lose their samples); routing never reads
 * them. `stop()` terminates the worker; nothing here throws into the event loop.
 */
import { Worker } from 'node:worker_threads';
import { type LogLevel, levelEnabled } from '../log/logger.js';
import { workerEntryFile } from '../workers/entry-file.js';
import type { PodLoad } from './model-server-metrics.js';
import type { PodReading, ScraperOptions, ScrapeTarget } from './model-server-scraper.js';

export interface ScraperWorkerData {
  intervalMs: number;
  insecureSkipVerify: boolean | undefined;
  maxBytes: number | undefined;
  /** Whether the parent writes debug records (the worker sends none otherwise). */
  debug: boolean;
  /** Nice increment of the thread over the event loop (0 = the same; Linux only). */
  nice: number;
}

/** The endpoints to scrape (the only message the worker takes; `terminate()` ends it). */
export type ScraperToWorker = { type: 'targets'; targets: readonly ScrapeTarget[] };

export type ScraperFromWorker =
  /** New readings since the last message (each endpoint's latest). */
  | { type: 'readings'; readings: PodReading[] }
  | { type: 'log'; level: LogLevel; fields: Record<string, unknown>; msg: string };

export class ScraperThread {
  private worker: Worker | undefined;
  /** The latest reading per endpoint, as the worker sent them. */
  private readonly readings = new Map<string, PodReading>();
  private sent: readonly ScrapeTarget[] | undefined;
  /** The endpoints of the targets last sent: only their readings are reported. */
  private live = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly opts: Omit<ScraperOptions, 'now' | 'onReading'> & {
      /** Nice increment of the thread (0–19; default 0). */
      nice?: number | undefined;
    },
  ) {}

  start(): void {
    if (this.worker || this.stopped) return;
    const { log } = this.opts;
    let worker: Worker;
    try {
      const data: ScraperWorkerData = {
        intervalMs: this.opts.intervalMs,
        insecureSkipVerify: this.opts.insecureSkipVerify,
        maxBytes: this.opts.maxBytes,
        debug: levelEnabled(log, 'debug'),
        nice: this.opts.nice ?? 0,
      };
      worker = new Worker(workerEntryFile('scraper-worker.js'), { workerData: data });
    } catch (e) {
      log.error({ err: (e as Error).message }, 'model-server metrics thread failed to start');
      return;
    }
    this.worker = worker;
    worker.on('message', (m: ScraperFromWorker) => {
      if (m.type === 'readings') {
        for (const r of m.readings) if (this.live.has(r.pod)) this.readings.set(r.pod, r);
      } else {
        log[m.level](m.fields, m.msg);
      }
    });
    worker.on('error', (e) => {
      log.error({ err: e.message }, 'model-server metrics thread failed');
    });
    worker.on('exit', (code) => {
      if (!this.stopped) {
        log.error({ code }, 'model-server metrics thread exited; the pool load gauges go stale');
      }
      this.worker = undefined;
      this.sent = undefined;
      if (this.timer) clearInterval(this.timer);
    });
    // Never what keeps the process alive. After the listeners: adding a
    // 'message' listener refs the worker again.
    worker.unref();
    this.sendTargets();
    this.timer = setInterval(() => this.sendTargets(), this.opts.intervalMs);
    this.timer.unref();
  }

  /** Stops polling; resolves when the worker has exited. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    const w = this.worker;
    this.worker = undefined;
    this.readings.clear();
    if (w) await w.terminate();
  }

  /** The figures read within `stalenessMs` of `nowMs`, one entry per endpoint. */
  fresh(nowMs: number, stalenessMs: number): PodLoad[] {
    const out: PodLoad[] = [];
    for (const { atMs, ...load } of this.readings.values()) {
      if (nowMs - atMs <= stalenessMs) out.push(load);
    }
    return out;
  }

  private sendTargets(): void {
    const targets = this.opts.targets();
    if (this.sent !== undefined && sameTargets(this.sent, targets)) return;
    this.sent = targets;
    // Endpoints that left drop out of `fresh` now, not when the worker next ticks.
    this.live = new Set(targets.map((t) => t.pod));
    for (const pod of this.readings.keys()) if (!this.live.has(pod)) this.readings.delete(pod);
    this.worker?.postMessage({ type: 'targets', targets } satisfies ScraperToWorker);
  }
}

function sameTargets(a: readonly ScrapeTarget[], b: readonly ScrapeTarget[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as ScrapeTarget;
    const y = b[i] as ScrapeTarget;
    if (x.pod !== y.pod || x.url !== y.url || x.engine !== y.engine || x.dpRank !== y.dpRank)
      return false;
  }
  return true;
}
