/**
 * Reading model servers' load figures from their Prometheus text, and the
 * scraper that polls them: a real HTTP server on loopback, a 404 and a closed
 * port. The exposition texts follow the engines' metric names (gaie-epp.md §5.7).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import {
  ENGINE_LABEL,
  ENGINES,
  engineOf,
  readLoadFigures,
  samples,
} from '../../../src/metrics/model-server-metrics.js';
import { ModelServerScraper } from '../../../src/metrics/model-server-scraper.js';
import { RecordingLogger } from '../../support/ext-proc.js';

const VLLM = `# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:num_requests_waiting{engine="1",model_name="m"} NaN
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 99
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
vllm:e2e_request_latency_seconds_bucket{le="0.3",model_name="m"} 7.0
`;

describe('readLoadFigures', () => {
  it('reads vLLM: request counts added over engines, KV usage averaged, NaN and longer names ignored', () => {
    expect(readLoadFigures(VLLM, ENGINES.vllm as never)).toEqual({
      waiting: 4,
      running: 5,
      kvUsage: 0.375,
    });
  });

  it("falls back to vLLM's older gpu_cache_usage_perc, and leaves absent families undefined", () => {
    const text = 'vllm:gpu_cache_usage_perc{model_name="m"} 0.8\nvllm:num_requests_running 1\n';
    expect(readLoadFigures(text, engineOf({}))).toEqual({
      waiting: undefined,
      running: 1,
      kvUsage: 0.8,
    });
  });

  it('picks the engine from the GAIE engine-type label; unknown names are vLLM', () => {
    const sglang =
      'sglang:num_queue_reqs{model_name="m"} 6\nsglang:num_running_reqs 2\nsglang:token_usage 0.1\n';
    expect(readLoadFigures(sglang, engineOf({ [ENGINE_LABEL]: 'sglang' }))).toEqual({
      waiting: 6,
      running: 2,
      kvUsage: 0.1,
    });
    expect(engineOf({ [ENGINE_LABEL]: 'other' })).toBe(ENGINES.vllm);
  });

  it("selects Triton's series by label, with quotes, escapes and braces in label values", () => {
    const text = [
      'nv_trt_llm_request_metrics{model="a \\"}\\" b",request_type="waiting",version="1"} 7',
      'nv_trt_llm_request_metrics{model="x",request_type="scheduled",version="1"} 3',
      'nv_trt_llm_request_metrics{model="x",request_type="max",version="1"} 64',
      'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="x"} 0.9 1700000000000',
      'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="x"} 900',
    ].join('\n');
    expect(readLoadFigures(text, engineOf({ [ENGINE_LABEL]: 'triton-tensorrt-llm' }))).toEqual({
      waiting: 7,
      running: 3,
      kvUsage: 0.9,
    });
  });

  it('skips a line without a value (no sample, not a 0)', () => {
    expect(samples('vllm:a{x="1"}\nvllm:a \nvllm:a 2\r\n', { name: 'vllm:a' })).toEqual([2]);
  });

  it('matches only at the start of a line and the whole name', () => {
    expect(
      samples('xvllm:a 1\nvllm:ab 2\nvllm:a 3\n# vllm:a 4\nvllm:a\t5', { name: 'vllm:a' }),
    ).toEqual([3, 5]);
  });

  it('reads the bytes as received: a sample on the first line, UTF-8 label values, a view into a larger buffer', () => {
    const page = Buffer.from('vllm:a{x="é"} 1\nvllm:a{x="e"} 2\nvllm:a{x="é"} 3');
    expect(samples(page, { name: 'vllm:a', labels: { x: 'é' } })).toEqual([1, 3]);
    const head = Buffer.from('\nvllm:a 9\n');
    const framed = Buffer.concat([head, page, Buffer.from('\nvllm:a 9')]);
    const view = new Uint8Array(framed.buffer, framed.byteOffset + head.length, page.length);
    expect(samples(view, { name: 'vllm:a' })).toEqual([1, 2, 3]);
    expect(readLoadFigures(Buffer.from(VLLM), ENGINES.vllm as never)).toEqual(
      readLoadFigures(VLLM, ENGINES.vllm as never),
    );
  });
});

describe('ModelServerScraper', () => {
  const servers: Server[] = [];
  let scraper: ModelServerScraper | undefined;
  afterEach(async () => {
    scraper?.stop();
    await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
  });

  async function serve(status: number, body: string): Promise<number> {
    const s = createServer((req, res) => {
      res.writeHead(req.url === '/metrics' ? status : 404, { 'content-type': 'text/plain' });
      res.end(body);
    });
    servers.push(s);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    return (s.address() as AddressInfo).port;
  }

  /** A vLLM endpoint `pod` on a loopback port. */
  const target = (pod: string, port: number) => ({
    pod,
    url: `http://127.0.0.1:${port}/metrics`,
    engine: engineOf({}),
    dpRank: undefined as number | undefined,
  });

  /** A scraper over `targets` on a clock the test moves. */
  function scraperOver(
    targets: () => ReturnType<typeof target>[],
    log: RecordingLogger,
    now: () => number = Date.now,
  ): ModelServerScraper {
    scraper = new ModelServerScraper({ intervalMs: 1000, log, targets, now });
    return scraper;
  }

  /**
   * Scrapes endpoint `a` on `s` (at `port`) `rounds` times, each on a clock one
   * later and waited for, counting the connections `s` accepts.
   */
  async function scrapeRounds(s: Server, port: number, rounds: number) {
    let accepted = 0;
    s.on('connection', () => accepted++);
    const log = new RecordingLogger();
    let clock = 0;
    const sc = scraperOver(
      () => [target('a', port)],
      log,
      () => clock,
    );
    for (clock = 1; clock <= rounds; clock++) {
      sc.tick();
      await until(() => sc.fresh(clock, 0).length === 1);
    }
    return { sc, log, connections: () => accepted };
  }

  async function until(ok: () => boolean): Promise<void> {
    for (let i = 0; i < 500 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
    expect(ok()).toBe(true);
  }

  it('keeps the latest figures of each endpoint that answers; failures are logged once per run', async () => {
    const good = await serve(200, VLLM);
    const missing = await serve(404, 'no');
    // Accepts, then drops every connection (a crashed server; a closed port could be reused).
    const dropper = createServer();
    dropper.on('connection', (socket) => socket.destroy());
    servers.push(dropper);
    await new Promise<void>((r) => dropper.listen(0, '127.0.0.1', r));
    const closed = (dropper.address() as AddressInfo).port;
    const log = new RecordingLogger();
    let clock = 1000;
    let targets = [target('a', good), target('b', missing), target('c', closed)];
    const sc = scraperOver(
      () => targets,
      log,
      () => clock,
    );
    const failures = () =>
      log.records.filter((r) => r.msg === 'model-server metrics scrape failed');
    sc.tick();
    await until(() => sc.fresh(clock, 0).length === 1 && failures().length === 2);
    expect(sc.fresh(clock, 0)).toEqual([{ pod: 'a', waiting: 4, running: 5, kvUsage: 0.375 }]);
    expect(
      failures()
        .map((r) => [r.level, r.fields.pod])
        .sort(),
    ).toEqual([
      ['warn', 'b'],
      ['warn', 'c'],
    ]);
    expect(failures().find((r) => r.fields.pod === 'b')?.fields.err).toBe('HTTP 404');
    // Again: no new warnings for the same failures; figures older than the threshold drop out.
    clock = 5000;
    sc.tick();
    await until(() => failures().length === 4 && sc.fresh(clock, 0).length === 1);
    expect(
      failures()
        .slice(2)
        .map((r) => r.level),
    ).toEqual(['debug', 'debug']);
    expect(sc.fresh(clock + 2001, 2000)).toEqual([]);
    // An endpoint that leaves the list is forgotten.
    targets = [];
    sc.tick();
    expect(sc.fresh(clock, 1e9)).toEqual([]);
  });

  it("warns once when an answer holds none of the engine's families", async () => {
    const wrong = await serve(200, '{"object":"list"}');
    const log = new RecordingLogger();
    const targets = [target('a', wrong)];
    let clock = 1;
    const sc = scraperOver(
      () => targets,
      log,
      () => clock,
    );
    const warned = () =>
      log.records.filter((r) => r.msg.startsWith('model-server metrics hold none'));
    sc.tick();
    await until(() => warned().length === 1);
    // A second answer, read at clock 2 (staleness 0: only a reading made then counts).
    clock = 2;
    sc.tick();
    await until(() => sc.fresh(2, 0).length === 1);
    expect(warned()).toHaveLength(1);
  });

  it('keeps one connection per endpoint between scrapes and closes it on stop', async () => {
    const port = await serve(200, VLLM);
    const s = servers[0] as Server;
    const { sc, log, connections } = await scrapeRounds(s, port, 3);
    expect(connections()).toBe(1);
    sc.stop();
    // Closed by stop, not by the idle timeout (KEEP_ALIVE_IDLE_MS, 4 s): look for 1 s at most.
    const open = () => new Promise<number>((r) => s.getConnections((_e, n) => r(n)));
    for (let i = 0; i < 100 && (await open()) > 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(await open()).toBe(0);
    expect(log.records).toEqual([]);
  });

  it('scrapes a metrics URL once for all its endpoints, each read with its own engine', async () => {
    // One server, two engines' names (the dp ranks of a vLLM server, and an SGLang-labelled one).
    const page = `${VLLM}sglang:num_queue_reqs{tp_rank="0"} 9\nsglang:num_running_reqs 8\nsglang:token_usage 0.125\n`;
    const held: Array<() => void> = [];
    let hold = false;
    let requests = 0;
    const s = createServer((_req, res) => {
      requests++;
      const answer = () => res.writeHead(200, { 'content-type': 'text/plain' }).end(page);
      if (hold) held.push(answer);
      else answer();
    });
    servers.push(s);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const port = (s.address() as AddressInfo).port;
    const sglang = { ...target('r3', port), engine: engineOf({ [ENGINE_LABEL]: 'sglang' }) };
    const targets = [target('r0', port), target('r1', port), target('r2', port), sglang];
    const log = new RecordingLogger();
    const sc = scraperOver(() => targets, log);
    sc.tick();
    await until(() => sc.fresh(Date.now(), 60_000).length === 4);
    expect(requests).toBe(1);
    const vllm = { waiting: 4, running: 5, kvUsage: 0.375 };
    expect(sc.fresh(Date.now(), 60_000)).toEqual([
      { pod: 'r0', ...vllm },
      { pod: 'r1', ...vllm },
      { pod: 'r2', ...vllm },
      { pod: 'r3', waiting: 9, running: 8, kvUsage: 0.125 },
    ]);
    // While that URL's scrape is in flight, later ticks do not ask it again.
    hold = true;
    sc.tick();
    await until(() => requests === 2);
    sc.tick();
    sc.tick();
    await new Promise((r) => setTimeout(r, 50));
    expect(requests).toBe(2);
    for (const h of held) h();
    expect(log.records.filter((r) => r.level === 'warn')).toEqual([]);
  });

  it("gives each data-parallel rank sharing a page its own engine's series, or an even share of the totals", async () => {
    let page = VLLM;
    const s = createServer((_req, res) => res.writeHead(200).end(page));
    servers.push(s);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const port = (s.address() as AddressInfo).port;
    const targets = [
      { ...target('rank0', port), dpRank: 0 },
      { ...target('rank1', port), dpRank: 1 },
    ];
    const sc = scraperOver(() => targets, new RecordingLogger());
    sc.tick();
    await until(() => sc.fresh(Date.now(), 60_000).length === 2);
    expect(sc.fresh(Date.now(), 60_000)).toEqual([
      { pod: 'rank0', waiting: 4, running: 3, kvUsage: 0.5 },
      // engine 1's waiting sample is NaN: no figure, rather than engine 0's.
      { pod: 'rank1', waiting: undefined, running: 2, kvUsage: 0.25 },
    ]);
    // A server whose page has no engine label: its totals split over the ranks.
    page =
      'vllm:num_requests_waiting{model_name="m"} 8\nvllm:num_requests_running 6\nvllm:kv_cache_usage_perc 0.4\n';
    const before = sc.fresh(Date.now(), 60_000);
    sc.tick();
    await until(() => JSON.stringify(sc.fresh(Date.now(), 60_000)) !== JSON.stringify(before));
    expect(sc.fresh(Date.now(), 60_000)).toEqual([
      { pod: 'rank0', waiting: 4, running: 3, kvUsage: 0.4 },
      { pod: 'rank1', waiting: 4, running: 3, kvUsage: 0.4 },
    ]);
    sc.stop();
  });

  it("reads an answer for the endpoints its URL has when it comes: one that moved away gets the new URL's", async () => {
    const released: Array<() => void> = [];
    let heldRequests = 0;
    // U1 holds its answer (waiting 1) until released; U2 answers at once (waiting 2).
    const page = (waiting: number) =>
      `vllm:num_requests_waiting ${waiting}\nvllm:num_requests_running 0\nvllm:kv_cache_usage_perc 0\n`;
    const u1 = createServer((_req, res) => {
      heldRequests++;
      released.push(() => res.writeHead(200, { 'content-type': 'text/plain' }).end(page(1)));
    });
    servers.push(u1);
    await new Promise<void>((r) => u1.listen(0, '127.0.0.1', r));
    const port1 = (u1.address() as AddressInfo).port;
    const port2 = await serve(200, page(2));
    let targets = [target('a', port1)];
    const sc = scraperOver(() => targets, new RecordingLogger());
    sc.tick();
    await until(() => heldRequests === 1);
    // `a` moves to U2 and `b` joins U1 while U1's answer is out.
    targets = [target('a', port2), target('b', port1)];
    sc.tick();
    await until(() => sc.fresh(Date.now(), 60_000).length === 1);
    for (const r of released) r();
    await until(() => sc.fresh(Date.now(), 60_000).length === 2);
    const byPod = Object.fromEntries(sc.fresh(Date.now(), 60_000).map((p) => [p.pod, p.waiting]));
    expect(byPod).toEqual({ a: 2, b: 1 });
    expect(heldRequests).toBe(1);
  });

  it('keeps the first of endpoints that share a name, as each tick lists them', async () => {
    let firstRequests = 0;
    let secondRequests = 0;
    const port1 = await serve(200, VLLM);
    const port2 = await serve(200, VLLM);
    (servers[servers.length - 2] as Server).on('request', () => firstRequests++);
    (servers[servers.length - 1] as Server).on('request', () => secondRequests++);
    const readings: string[] = [];
    scraper = new ModelServerScraper({
      intervalMs: 1000,
      log: new RecordingLogger(),
      targets: () => [target('a', port1), target('a', port2), target('a', port1)],
      onReading: (r) => readings.push(r.pod),
    });
    scraper.tick();
    await until(() => readings.length >= 1);
    await new Promise((r) => setTimeout(r, 50));
    expect({ firstRequests, secondRequests, readings }).toEqual({
      firstRequests: 1,
      secondRequests: 0,
      readings: ['a'],
    });
  });

  it('logs a failed scrape of a shared URL once for each of its endpoints', async () => {
    const port = await serve(503, 'busy');
    const log = new RecordingLogger();
    const sc = scraperOver(() => [target('r0', port), target('r1', port)], log);
    sc.tick();
    const failed = () => log.records.filter((r) => r.msg === 'model-server metrics scrape failed');
    await until(() => failed().length === 2);
    expect(failed().map((r) => [r.level, r.fields.pod, r.fields.err])).toEqual([
      ['warn', 'r0', 'HTTP 503'],
      ['warn', 'r1', 'HTTP 503'],
    ]);
    expect(sc.fresh(Date.now(), 60_000)).toEqual([]);
  });

  it('retries once, on a new connection, a scrape whose kept-alive connection the server closed', async () => {
    // Answers the first request of each connection; closes it on the second (a
    // server whose idle timeout fired as the request went out).
    const s = createServer((req, res) => {
      const socket = req.socket as typeof req.socket & { served?: number };
      socket.served = (socket.served ?? 0) + 1;
      if (socket.served > 1) {
        socket.destroy();
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain' }).end(VLLM);
    });
    servers.push(s);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const port = (s.address() as AddressInfo).port;
    const { log, connections } = await scrapeRounds(s, port, 2);
    expect(connections()).toBe(2);
    expect(log.records.filter((r) => r.msg === 'model-server metrics scrape failed')).toEqual([]);
  });

  it('abandons requests in flight on stop, without logging', async () => {
    // Holds every request open until the test ends.
    const held: Array<() => void> = [];
    const s = createServer((_req, res) => held.push(() => res.end()));
    servers.push(s);
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const port = (s.address() as AddressInfo).port;
    let arrived = 0;
    s.on('request', () => arrived++);
    const log = new RecordingLogger(true);
    const targets = [target('a', port)];
    const sc = scraperOver(() => targets, log);
    sc.tick();
    await until(() => arrived === 1);
    sc.stop();
    for (const h of held) h();
    // Let the destroyed request's events run: still nothing logged, nothing kept.
    await new Promise((r) => setTimeout(r, 50));
    expect(log.records).toEqual([]);
    expect(sc.fresh(Date.now(), 1e9)).toEqual([]);
    sc.tick();
    expect(arrived).toBe(1);
  });
});
