/**
 * Worker-thread entry of the model-server scraper (src/metrics/scraper-thread.ts):
 * polls the model servers off the event loop. Each interval it posts every
 * endpoint's latest reading (one message), then starts the next round.
 * Targets arrive as messages; log records go back as messages (debug ones
 * only when the parent's logger writes them). Protocol: ScraperToWorker /
 * ScraperFromWorker in scraper-thread.ts.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { Logger, LogLevel } from '../log/logger.js';
import { ModelServerScraper, type ScrapeTarget } from '../metrics/model-server-scraper.js';
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
let targets: readonly ScrapeTarget[] = [];
const scraper = new ModelServerScraper({
  targets: () => targets,
  intervalMs: data.intervalMs,
  insecureSkipVerify: data.insecureSkipVerify,
  maxBytes: data.maxBytes,
  log,
});
const round = () => {
  post({ type: 'readings', readings: scraper.readings() });
  scraper.tick();
};
let timer: NodeJS.Timeout | undefined;
port.on('message', (m: ScraperToWorker) => {
  if (m.type === 'targets') {
    targets = m.targets;
    // The first targets start the rounds.
    if (timer === undefined) {
      scraper.tick();
      timer = setInterval(round, data.intervalMs);
    }
  } else if (m.type === 'stop') {
    if (timer !== undefined) clearInterval(timer);
    scraper.stop();
    port.close();
  }
});
