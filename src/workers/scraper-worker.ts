/**
 * Worker-thread entry of the model-server scraper (src/metrics/scraper-thread.ts):
 * polls the model servers off the event loop. New readings are posted in
 * batches, within 10 ms (a fifth of the interval when shorter) of being read.
 * Targets arrive as messages; log records go back as messages (debug ones
 * only when the parent's logger writes them). Protocol: ScraperToWorker /
 * ScraperFromWorker in scraper-thread.ts.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { Logger, LogLevel } from '../log/logger.js';
import {
  ModelServerScraper,
  type PodReading,
  type ScrapeTarget,
} from '../metrics/model-server-scraper.js';
import type {
  ScraperFromWorker,
  ScraperToWorker,
  ScraperWorkerData,
} from '../metrics/scraper-thread.js';

const port = parentPort;
if (!port) throw new Error('scraper-worker runs as a worker thread');
const data = workerData as ScraperWorkerData;
const post = (m: ScraperFromWorker) => port.postMessage(m);
const record =
  (level: LogLevel) =>
  (fields: Record<string, unknown>, msg: string): void =>
    post({ type: 'log', level, fields, msg });
const log: Logger = {
  debug: data.debug ? record('debug') : () => {},
  info: record('info'),
  warn: record('warn'),
  error: record('error'),
  isLevelEnabled: (level) => level !== 'debug' || data.debug,
};
// The thread's own priority, as the tokenizer pool's (per-thread nice on Linux,
// through Piscina's optional @napi-rs/nice): the event loop wins a contended core.
// Without the package the thread keeps the event loop's priority.
const NICE_MODULE = '@napi-rs/nice';
if (data.nice > 0 && process.platform === 'linux') {
  try {
    ((await import(NICE_MODULE)) as { nice(increment: number): number }).nice(data.nice);
  } catch (e) {
    log.debug({ err: (e as Error).message }, 'model-server metrics thread keeps its priority');
  }
}

let targets: readonly ScrapeTarget[] = [];
// New readings go to the parent in batches, within `flushMs` of being read, so
// the parent's `fresh` lags the scrapes by at most that (not by an interval).
const flushMs = Math.max(1, Math.min(10, data.intervalMs / 5));
const pending = new Map<string, PodReading>();
let flushScheduled = false;
const flush = () => {
  flushScheduled = false;
  if (pending.size === 0) return;
  post({ type: 'readings', readings: [...pending.values()] });
  pending.clear();
};
const scraper = new ModelServerScraper({
  targets: () => targets,
  intervalMs: data.intervalMs,
  insecureSkipVerify: data.insecureSkipVerify,
  maxBytes: data.maxBytes,
  log,
  onReading: (r) => {
    pending.set(r.pod, r);
    if (!flushScheduled) {
      flushScheduled = true;
      setTimeout(flush, flushMs);
    }
  },
});
// The parent ends the thread with `terminate()`; there is nothing to flush.
port.on('message', (m: ScraperToWorker) => {
  targets = m.targets;
  // The first targets start the rounds; later ones take effect at the next.
  scraper.start();
});
