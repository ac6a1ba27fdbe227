/**
 * What metrics cost kv-epp's event loop as the pool grows:
 *  - polling the model servers' own `/metrics` (`--refresh-metrics-interval`;
 *    model-server-scraper.ts) with N endpoints at a given interval: scrapes
 *    done, CPU per scrape, event-loop utilization and delay;
 *  - rendering kv-epp's own `/metrics` (what Prometheus scrapes) with N
 *    endpoints' series in it.
 *   node dist/bench/scrape/main.js [--quick] [--json FILE] [--pods 16,64] [--intervals 50,1000]
 *     [--seconds S] [--no-render]
 * Numbers are reported, never asserted: bench/README.md says what they mean.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { Logger } from '../../src/log/logger.js';
import { ENGINES } from '../../src/metrics/model-server-metrics.js';
import { ModelServerScraper, type ScrapeTarget } from '../../src/metrics/model-server-scraper.js';
import { EppMetrics } from '../../src/metrics/registry.js';
import { ScraperThread } from '../../src/metrics/scraper-thread.js';
import { vllmMetricsPage } from './vllm-page.js';

const { values } = parseArgs({
  options: {
    json: { type: 'string' },
    quick: { type: 'boolean', default: false },
    pods: { type: 'string' },
    intervals: { type: 'string' },
    seconds: { type: 'string' },
    'no-render': { type: 'boolean', default: false },
  },
});
const nums = (v: string | undefined, d: number[]) => (v ? v.split(',').map(Number) : d);
const quick = values.quick ?? false;
const seconds = Number(values.seconds ?? (quick ? 2 : 8));
const PODS = nums(values.pods, quick ? [16, 128] : [16, 64, 256]);
const INTERVALS_MS = nums(values.intervals, [50, 1000]);
const MODES: Mode[] = ['inline', 'thread'];

let warnings = 0;
const log: Logger = {
  debug: () => {},
  info: () => {},
  warn: () => {
    warnings++;
  },
  error: () => {
    warnings++;
  },
  isLevelEnabled: (l) => l === 'warn' || l === 'error',
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function ask<T>(child: ChildProcess, msg: string, key: string): Promise<T> {
  return new Promise((resolve) => {
    const on = (m: unknown) => {
      if (m && typeof m === 'object' && key in m) {
        child.off('message', on);
        resolve((m as Record<string, T>)[key] as T);
      }
    };
    child.on('message', on);
    if (msg) child.send(msg);
  });
}

type Mode = 'inline' | 'thread';

interface ScrapeRow {
  /** inline: ModelServerScraper on the event loop; thread: ScraperThread (what `serve` runs). */
  mode: Mode;
  pods: number;
  intervalMs: number;
  /** What the interval asks for: pods × 1000 / interval. */
  wantedPerS: number;
  donePerS: number;
  cpuUsPerScrape: number;
  /** Of which in the kernel (socket reads and writes, connects). */
  sysUsPerScrape: number;
  /** Share of wall time the event loop was busy (this process does nothing else). */
  eluPct: number;
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
  freshPods: number;
  failures: number;
}

async function scrapeCase(
  child: ChildProcess,
  ports: number[],
  intervalMs: number,
  mode: Mode,
  idleCpuUsPerS: number,
): Promise<ScrapeRow> {
  const targets: ScrapeTarget[] = ports.map((port, i) => ({
    pod: `worker-${i}`,
    url: `http://127.0.0.1:${port}/metrics`,
    engine: ENGINES.vllm as (typeof ENGINES)['vllm'] & object,
  }));
  const opts = { targets: () => targets, intervalMs, log };
  const scraper = mode === 'inline' ? new ModelServerScraper(opts) : new ScraperThread(opts);
  warnings = 0;
  // One interval's worth first, so connections and JIT are warm.
  scraper.start();
  await sleep(Math.max(500, 2 * intervalMs));
  const h = monitorEventLoopDelay({ resolution: 1 });
  const served0 = await ask<number>(child, 'count', 'served');
  const elu0 = performance.eventLoopUtilization();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  h.enable();
  await sleep(seconds * 1000);
  h.disable();
  const wallS = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const elu = performance.eventLoopUtilization(elu0);
  const served = (await ask<number>(child, 'count', 'served')) - served0;
  const freshPods = scraper.fresh(Date.now(), Math.max(2000, 2 * intervalMs)).length;
  await scraper.stop();
  await sleep(200);
  // The process's own idle CPU (the delay monitor's 1 ms timer) is not the scrapes'.
  const scrapeCpu = cpu.user + cpu.system - idleCpuUsPerS * wallS;
  return {
    mode,
    pods: ports.length,
    intervalMs,
    wantedPerS: (ports.length * 1000) / intervalMs,
    donePerS: served / wallS,
    cpuUsPerScrape: served > 0 ? scrapeCpu / served : Number.NaN,
    sysUsPerScrape: served > 0 ? cpu.system / served : Number.NaN,
    eluPct: elu.utilization * 100,
    loopDelayP99Ms: h.percentile(99) / 1e6,
    loopDelayMaxMs: h.max / 1e6,
    freshPods,
    failures: warnings,
  };
}

interface RenderRow {
  pods: number;
  series: number;
  bytes: number;
  usPerRender: number;
}

async function renderCase(pods: number): Promise<RenderRow> {
  const names = Array.from({ length: pods }, (_, i) => `worker-${i}`);
  const m = new EppMetrics({
    poolName: 'bench-pool',
    poolNamespace: 'default',
    readyPods: () => pods,
    modelServers: () =>
      names.map((pod, i) => ({ pod, waiting: i % 5, running: i % 17, kvUsage: 0.25 })),
    workerBlocks: () =>
      names.map((_, i) => ({ workerId: BigInt(i) * 7919n, dpRank: 0, blocks: 1000 + i })),
    queueDepth: () => 0,
    indexMemberships: () => pods * 1000,
    segmentCache: () => ({ hits: 10, misses: 2 }),
  });
  const s = m.requestSeries('Qwen/Qwen3-8B', 'Qwen/Qwen3-8B');
  for (const [i, name] of names.entries()) {
    const ep = { name, port: 8000 + i };
    for (let k = 0; k < 3; k++) {
      s.scheduled(ep);
      s.requests.inc();
      s.duration.observe(0.05 * (k + 1));
    }
  }
  let text = await m.registry.metrics();
  const n = quick ? 50 : 200;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) text = await m.registry.metrics();
  const us = ((performance.now() - t0) * 1000) / n;
  const series = text.split('\n').filter((l) => l && !l.startsWith('#')).length;
  return { pods, series, bytes: Buffer.byteLength(text), usPerRender: us };
}

/** CPU µs per second this process spends with nothing to do but the delay monitor. */
async function idleCpu(): Promise<number> {
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await sleep(2000);
  const cpu = process.cpuUsage(cpu0);
  h.disable();
  return (cpu.user + cpu.system) / ((performance.now() - t0) / 1000);
}

const idleCpuUsPerS = await idleCpu();
const scrapeRows: ScrapeRow[] = [];
for (const pods of PODS) {
  const child = fork(fileURLToPath(new URL('./servers.js', import.meta.url)), [String(pods)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const ports = await ask<number[]>(child, '', 'ports');
  for (const intervalMs of INTERVALS_MS) {
    for (const mode of MODES) {
      const r = await scrapeCase(child, ports, intervalMs, mode, idleCpuUsPerS);
      scrapeRows.push(r);
      console.error(`[scrape] ${JSON.stringify(r)}`);
    }
  }
  child.send('exit');
  await new Promise((r) => child.once('exit', r));
}
const renderRows: RenderRow[] = [];
if (!values['no-render'])
  for (const pods of [16, 256, 1024]) renderRows.push(await renderCase(pods));

const pageBytes = Buffer.byteLength(vllmMetricsPage(0));
const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '—');
console.log(
  `\nModel-server scraping (${seconds} s per case; synthetic vLLM page of ${pageBytes} bytes; ${cpus().length} × ${cpus()[0]?.model ?? '?'}; Node ${process.version})`,
);
console.log(
  `CPU: the whole process's (all threads) less its idle ${idleCpuUsPerS.toFixed(0)} µs/s; kernel: of which in system calls`,
);
console.log(
  '| pods | interval ms | scraper | scrapes/s wanted | done | CPU µs/scrape (kernel) | event loop busy % | loop delay p99 / max ms | fresh pods | failures |',
);
console.log(
  '| ---- | ----------- | ------- | ---------------- | ---- | ---------------------- | ----------------- | ----------------------- | ---------- | -------- |',
);
for (const r of scrapeRows) {
  console.log(
    `| ${r.pods} | ${r.intervalMs} | ${r.mode} | ${f(r.wantedPerS, 0)} | ${f(r.donePerS, 0)} | ${f(r.cpuUsPerScrape, 0)} (${f(r.sysUsPerScrape, 0)}) | ${f(r.eluPct)} | ${f(r.loopDelayP99Ms, 2)} / ${f(r.loopDelayMaxMs, 2)} | ${r.freshPods} | ${r.failures} |`,
  );
}
console.log('\nkv-epp /metrics render (what one Prometheus scrape costs the event loop)');
console.log('| endpoints | series | bytes | µs per render (wall) |');
console.log('| --------- | ------ | ----- | -------------------- |');
for (const r of renderRows) {
  console.log(`| ${r.pods} | ${r.series} | ${r.bytes} | ${f(r.usPerRender, 0)} |`);
}
if (values.json) {
  writeFileSync(
    values.json,
    `${JSON.stringify(
      {
        kind: 'kv-epp-scrape-bench',
        startedAt: new Date().toISOString(),
        machine: { cpus: cpus().length, model: cpus()[0]?.model, node: process.version },
        seconds,
        pageBytes,
        idleCpuUsPerS,
        scrape: scrapeRows,
        render: renderRows,
      },
      null,
      2,
    )}\n`,
  );
}
process.exit(0);
