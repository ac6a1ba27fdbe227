/**
 * The model-server scraper on its worker thread: real model servers on
 * loopback, the built worker entry (dist/), the parent's logger and targets.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { engineOf } from '../../../src/metrics/model-server-metrics.js';
import type { ScrapeTarget } from '../../../src/metrics/model-server-scraper.js';
import { ScraperThread } from '../../../src/metrics/scraper-thread.js';
import { RecordingLogger } from '../../support/ext-proc.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../../..');
const servers: Server[] = [];
let thread: ScraperThread | undefined;
afterEach(async () => {
  await thread?.stop();
  thread = undefined;
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

/** A vLLM metrics port answering `waiting`, or `status` with no figures; counts its scrapes. */
async function modelServer(
  waiting: number,
  status = 200,
): Promise<{ target: (pod: string) => ScrapeTarget; hits: () => number }> {
  let hits = 0;
  const s = createServer((_req, res) => {
    hits++;
    res.writeHead(status, { 'content-type': 'text/plain' });
    res.end(
      `vllm:num_requests_waiting{engine="0"} ${waiting}\nvllm:num_requests_running{engine="0"} 1\nvllm:kv_cache_usage_perc{engine="0"} 0.5\n`,
    );
  });
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  return {
    target: (pod) => ({ pod, url: `http://127.0.0.1:${port}/metrics`, engine: engineOf({}) }),
    hits: () => hits,
  };
}

async function until(ok: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(ok()).toBe(true);
}

describe('ScraperThread', () => {
  it('brings the figures in from its thread, follows the targets and forwards its log records', async () => {
    const a = await modelServer(4);
    const b = await modelServer(7);
    const broken = await modelServer(0, 503);
    const log = new RecordingLogger();
    let targets = [a.target('a'), b.target('b'), broken.target('c')];
    thread = new ScraperThread({ intervalMs: 50, log, targets: () => targets });
    thread.start();
    const byPod = () =>
      Object.fromEntries(thread?.fresh(Date.now(), 2000).map((p) => [p.pod, p.waiting]) ?? []);
    await until(() => byPod().a === 4 && byPod().b === 7);
    expect(byPod()).toEqual({ a: 4, b: 7 });
    // The failing endpoint's warning, written by this thread's logger (once per run of failures).
    await until(() => log.records.some((r) => r.msg === 'model-server metrics scrape failed'));
    const warned = log.records.filter((r) => r.msg === 'model-server metrics scrape failed');
    expect(warned.map((r) => [r.level, r.fields.pod, r.fields.err])).toEqual([
      ['warn', 'c', 'HTTP 503'],
    ]);
    // Nothing is fresh within 0 ms of a time long after the last reading.
    expect(thread.fresh(Date.now() + 60_000, 1000)).toEqual([]);
    // An endpoint that leaves the targets is no longer scraped nor reported.
    targets = [a.target('a')];
    await until(() => Object.keys(byPod()).join() === 'a');
    const bHits = b.hits();
    await new Promise((r) => setTimeout(r, 200));
    expect(b.hits()).toBe(bHits);
  });

  it('brings each reading in as it is read, not a round later', async () => {
    const a = await modelServer(3);
    // One round now, the next in a minute: the reading must not wait for it.
    thread = new ScraperThread({
      intervalMs: 60_000,
      log: new RecordingLogger(),
      targets: () => [a.target('a')],
    });
    thread.start();
    await until(() => (thread?.fresh(Date.now(), 60_000).length ?? 0) === 1);
    expect(thread.fresh(Date.now(), 60_000)).toEqual([
      { pod: 'a', waiting: 3, running: 1, kvUsage: 0.5 },
    ]);
  });

  it.runIf(process.platform === 'linux')(
    "runs at the nice it is given, on its own thread only (the event loop's stays)",
    async () => {
      const niceOf = (tid: string) => {
        const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
        return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
      };
      const lowered = () => readdirSync('/proc/self/task').filter((tid) => niceOf(tid) === 7);
      const mainNice = niceOf(String(process.pid));
      const before = lowered();
      thread = new ScraperThread({
        intervalMs: 50,
        log: new RecordingLogger(),
        targets: () => [],
        nice: 7,
      });
      thread.start();
      await until(() => lowered().length === before.length + 1);
      expect(niceOf(String(process.pid))).toBe(mainNice);
      await thread.stop();
      thread = undefined;
      expect(lowered()).toEqual(before);
    },
  );

  it('does not keep the process alive', () => {
    // A process that starts a thread and never stops it still exits.
    // (A module file: under `-e` the same script exits even when the worker holds it.)
    const entry = pathToFileURL(join(ROOT, 'dist/src/metrics/scraper-thread.js')).href;
    const dir = mkdtempSync(join(tmpdir(), 'kv-epp-scraper-'));
    const script = join(dir, 'start-and-leave.mjs');
    writeFileSync(
      script,
      `const { ScraperThread } = await import(${JSON.stringify(entry)});
const log = { debug() {}, info() {}, warn() {}, error() {} };
new ScraperThread({ intervalMs: 50, log, targets: () => [] }).start();
`,
    );
    const r = spawnSync(process.execPath, [script], { timeout: 20_000, encoding: 'utf8' });
    rmSync(dir, { recursive: true, force: true });
    expect({ status: r.status, signal: r.signal, stderr: r.stderr }).toEqual({
      status: 0,
      signal: null,
      stderr: '',
    });
  });

  it('stops polling when stopped, and a stopped thread reports nothing', async () => {
    const a = await modelServer(2);
    const log = new RecordingLogger();
    thread = new ScraperThread({ intervalMs: 20, log, targets: () => [a.target('a')] });
    thread.start();
    await until(() => (thread?.fresh(Date.now(), 2000).length ?? 0) === 1);
    await thread.stop();
    const hits = a.hits();
    await new Promise((r) => setTimeout(r, 150));
    expect(a.hits()).toBe(hits);
    expect(thread.fresh(Date.now(), 1e9)).toEqual([]);
    expect(log.records.filter((r) => r.level === 'error')).toEqual([]);
  });
});
