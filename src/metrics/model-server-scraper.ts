/**
 * Polls each endpoint's model-server metrics (`GET <scheme>://<address>:<port><path>`,
 * GAIE's `metrics-data-source`) and keeps the latest load figures per endpoint,
 * for the pool gauges (`inference_pool_average_*`, `_per_pod_queue_size`).
 * Adapter module: node:http(s) lives here, the reading in model-server-metrics.ts.
 *
 * Contract: one request per metrics URL and tick, its page read for every
 * endpoint with that URL when the answer comes (the dp ranks of one server;
 * each with its own engine's names; of endpoints sharing a name, the first);
 * at most one request per URL in flight, so a tick skips a URL whose previous
 * scrape has not finished. `fresh(now, staleness)` returns only
 * figures read within `staleness`, so an endpoint that stops answering drops out
 * of the averages instead of holding its last value (GAIE's staleness threshold).
 * Endpoints that leave the target list are forgotten at the next tick.
 * Each URL keeps one connection alive between scrapes (a new connection
 * per scrape cost more CPU than reading the page; bench/README.md, "Metrics
 * scraping"). Failure modes: a refused connection, a timeout (the interval, at least 1 s), a
 * non-200 status or a body over `maxBytes` fail that scrape only; the first
 * failure of a run of them is logged as a warning, the rest at debug, and the
 * recovery at info; an answer holding none of the engine's families is logged
 * once. `stop()` abandons requests in flight silently. Nothing here throws
 * into the event loop.
 */
import {
  type ClientRequest,
  Agent as HttpAgent,
  get as httpGet,
  type IncomingMessage,
} from 'node:http';
import { Agent as HttpsAgent, get as httpsGet } from 'node:https';
import type { Logger } from '../log/logger.js';
import {
  type EngineMetrics,
  type LoadFigures,
  type PodLoad,
  readLoadFigures,
  readRankFigures,
} from './model-server-metrics.js';

export interface ScrapeTarget {
  /** The endpoint's name (`model_server_pod`). */
  pod: string;
  url: string;
  engine: EngineMetrics;
  /** The endpoint's data-parallel rank: ranks sharing a URL read their own series. */
  dpRank?: number | undefined;
}

export interface ScraperOptions {
  targets: () => readonly ScrapeTarget[];
  intervalMs: number;
  /** https only: accept any certificate (GAIE's default, true). */
  insecureSkipVerify?: boolean | undefined;
  log: Logger;
  /** Largest body read (default 16 MiB). */
  maxBytes?: number | undefined;
  now?: (() => number) | undefined;
  /** Called with each new reading as it is kept (the worker thread forwards them). */
  onReading?: ((reading: PodReading) => void) | undefined;
}

/** Below uvicorn's default keep-alive timeout (5 s), which vLLM and SGLang serve with. */
export const KEEP_ALIVE_IDLE_MS = 4000;
const EMPTY = Buffer.alloc(0);
const AGENT_OPTIONS = { keepAlive: true, timeout: KEEP_ALIVE_IDLE_MS };

/** One endpoint's figures and when they were read (ms since the epoch, the scraper's clock). */
export interface PodReading extends PodLoad {
  atMs: number;
}

interface Reading {
  figures: LoadFigures;
  atMs: number;
}

export class ModelServerScraper {
  private readonly latest = new Map<string, Reading>();
  /** The request in flight per metrics URL (undefined while it is being made). */
  private readonly inFlight = new Map<string, ClientRequest | undefined>();
  private readonly failing = new Set<string>();
  /**
   * The last tick's targets by metrics URL, the first target of each pod name
   * only (names need not be unique). A scrape's answer is read for the targets
   * its URL has when it arrives: an endpoint that left or moved to another URL
   * gets nothing from it, one that joined gets its figures.
   */
  private byUrl = new Map<string, ScrapeTarget[]>();
  /** Pods whose last good answer held none of the engine's families (logged once). */
  private readonly empty = new Set<string>();
  private stopped = false;
  private readonly now: () => number;
  /**
   * Kept-alive connections: one per metrics URL, as a tick never has two scrapes
   * of one URL in flight. An idle connection is
   * closed after KEEP_ALIVE_IDLE_MS, before a model server's own idle timeout
   * (uvicorn's 5 s) can close it under a request; at longer intervals every
   * scrape connects anew.
   */
  private readonly httpAgent = new HttpAgent(AGENT_OPTIONS);
  private readonly httpsAgent = new HttpsAgent(AGENT_OPTIONS);
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: ScraperOptions) {
    this.now = opts.now ?? Date.now;
  }

  start(): void {
    if (this.timer) return;
    this.tick();
    this.timer = setInterval(() => this.tick(), this.opts.intervalMs);
    this.timer.unref();
  }

  /** Stops polling; requests in flight are abandoned without a log line. */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.byUrl = new Map();
    for (const r of this.inFlight.values()) r?.destroy();
    this.inFlight.clear();
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }

  /** The figures read within `stalenessMs` of `nowMs`, one entry per endpoint. */
  fresh(nowMs: number, stalenessMs: number): PodLoad[] {
    const out: PodLoad[] = [];
    for (const [pod, r] of this.latest) {
      if (nowMs - r.atMs <= stalenessMs) out.push({ pod, ...r.figures });
    }
    return out;
  }

  /** One round: a scrape of every metrics URL not still being scraped. */
  tick(): void {
    if (this.stopped) return;
    const live = new Set<string>();
    const byUrl = new Map<string, ScrapeTarget[]>();
    for (const t of this.opts.targets()) {
      if (live.has(t.pod)) continue;
      live.add(t.pod);
      const group = byUrl.get(t.url);
      if (group) group.push(t);
      else byUrl.set(t.url, [t]);
    }
    this.byUrl = byUrl;
    for (const pod of this.latest.keys()) if (!live.has(pod)) this.latest.delete(pod);
    for (const pod of this.failing) if (!live.has(pod)) this.failing.delete(pod);
    for (const pod of this.empty) if (!live.has(pod)) this.empty.delete(pod);
    for (const url of byUrl.keys()) {
      if (this.inFlight.has(url)) continue;
      this.inFlight.set(url, undefined);
      this.scrape(url);
    }
  }

  /** One endpoint's outcome of a scrape of its URL: a failure, or its figures. */
  private record(t: ScrapeTarget, err: string | undefined, figures?: LoadFigures): void {
    if (err !== undefined || figures === undefined) {
      const first = !this.failing.has(t.pod);
      this.failing.add(t.pod);
      const fields = { pod: t.pod, url: t.url, err };
      if (first) this.opts.log.warn(fields, 'model-server metrics scrape failed');
      else this.opts.log.debug(fields, 'model-server metrics scrape failed');
      return;
    }
    if (this.failing.delete(t.pod)) {
      this.opts.log.info({ pod: t.pod, url: t.url }, 'model-server metrics scrape recovered');
    }
    const none =
      figures.waiting === undefined &&
      figures.running === undefined &&
      figures.kvUsage === undefined;
    if (none && !this.empty.has(t.pod)) {
      this.empty.add(t.pod);
      this.opts.log.warn(
        { pod: t.pod, url: t.url },
        "model-server metrics hold none of the engine's families (wrong port, or engine-type label?)",
      );
    } else if (!none) {
      this.empty.delete(t.pod);
    }
    const atMs = this.now();
    this.latest.set(t.pod, { figures, atMs });
    this.opts.onReading?.({ pod: t.pod, ...figures, atMs });
  }

  /** Scrapes `url` once for the endpoints that have it when the answer comes. */
  private scrape(url: string): void {
    let finished = false;
    const done = (err: string | undefined, body?: Buffer) => {
      if (finished) return;
      finished = true;
      this.inFlight.delete(url);
      const group = this.byUrl.get(url) ?? [];
      // Several ranks of one server on one page each read their own share.
      const ranks = new Set(group.map((t) => t.dpRank ?? 0)).size;
      // Read once per engine: the endpoints of one server usually share it.
      const byEngine = new Map<EngineMetrics, LoadFigures>();
      for (const t of group) {
        let figures: LoadFigures | undefined;
        if (err === undefined && ranks > 1) {
          figures = readRankFigures(body ?? EMPTY, t.engine, t.dpRank ?? 0, ranks);
        } else if (err === undefined) {
          figures = byEngine.get(t.engine);
          if (figures === undefined) {
            figures = readLoadFigures(body ?? EMPTY, t.engine);
            byEngine.set(t.engine, figures);
          }
        }
        this.record(t, err, figures);
      }
    };
    const maxBytes = this.opts.maxBytes ?? 16 * 1024 * 1024;
    const onResponse = (res: IncomingMessage) => {
      if (res.statusCode !== 200) {
        res.resume();
        done(`HTTP ${res.statusCode}`);
        return;
      }
      const chunks: Buffer[] = [];
      let bytes = 0;
      res.on('data', (c: Buffer) => {
        bytes += c.length;
        if (bytes > maxBytes) {
          res.destroy(new Error(`body over ${maxBytes} bytes`));
          return;
        }
        chunks.push(c);
      });
      res.on('end', () =>
        done(undefined, chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, bytes)),
      );
      res.on('error', (e) => done(e.message));
    };
    // A kept-alive socket the server closed just before this request was sent
    // fails it with ECONNRESET: that request is retried once on a new connection.
    const send = (retry: boolean) => {
      const https = url.startsWith('https:');
      const req = (https ? httpsGet : httpGet)(
        url,
        {
          agent: https ? this.httpsAgent : this.httpAgent,
          rejectUnauthorized: !(this.opts.insecureSkipVerify ?? true),
          timeout: Math.max(1000, this.opts.intervalMs),
          headers: { accept: 'text/plain' },
        },
        onResponse,
      );
      this.inFlight.set(url, req);
      req.on('timeout', () => req.destroy(new Error('timed out')));
      req.on('error', (e: NodeJS.ErrnoException) => {
        if (retry && req.reusedSocket && e.code === 'ECONNRESET' && !this.stopped && !finished) {
          send(false);
          return;
        }
        done(e.message);
      });
    };
    try {
      send(true);
    } catch (e) {
      done((e as Error).message);
    }
  }
}
