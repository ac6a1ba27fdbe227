/**
 * kv-epp benchmark CLI. Every case runs the native and JS backends side by
 * side in one process and prints a table (and JSON with --json FILE).
 *   node --expose-gc dist/bench/main.js [hash|index|tokenize|pipeline|segments|cold|all] [--quick] [--json FILE]
 * Numbers are reported, never asserted: targets live in bench/README.md.
 */
import { writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { parseArgs } from 'node:util';
import { JsBlockHasher } from '../src/kv/js/block-hasher.js';
import { JsKvIndex } from '../src/kv/js/radix-index.js';
import { loadNativeBinding } from '../src/kv/native/binding.js';
import { NativeBlockHasher } from '../src/kv/native/block-hasher.js';
import { NativeKvIndex } from '../src/kv/native/radix-index.js';
import type { BlockHasher, KvIndex } from '../src/kv/types.js';
import {
  benchColdPrepare,
  benchPipeline,
  benchSegmentCache,
  benchTokenizers,
  type Table,
} from './tokenize-bench.js';
import { indexWorkload, tokens } from './workload.js';

interface Row {
  case: string;
  native: number;
  js: number;
  unit: string;
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { json: { type: 'string' }, quick: { type: 'boolean', default: false } },
});
const scope = positionals[0] ?? 'all';
const quick = values.quick ?? false;
const rows: Row[] = [];

function gc(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

/** Mean µs per call over at least `minMs` after a warm-up. */
function timeUs(f: () => void, minMs = quick ? 100 : 500): number {
  for (let i = 0; i < 20; i++) f();
  let n = 0;
  const start = process.hrtime.bigint();
  let elapsed = 0n;
  const limit = BigInt(minMs) * 1_000_000n;
  while (elapsed < limit) {
    for (let i = 0; i < 10; i++) f();
    n += 10;
    elapsed = process.hrtime.bigint() - start;
  }
  return Number(elapsed) / 1e3 / n;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] as number;
}

async function benchHash(native: BlockHasher, js: BlockHasher): Promise<void> {
  for (const n of [1024, 8192, 131072]) {
    const t = tokens(n);
    const out = new BigUint64Array(Math.ceil(n / 16));
    const seq = new BigUint64Array(out.length);
    const per = (h: BlockHasher) =>
      timeUs(() => {
        const k = h.localHashesInto(t, 16, out);
        h.sequenceHashesInto(out, k, seq);
      });
    rows.push({
      case: `hash ${n} tokens (bs 16, local+seq)`,
      native: per(native),
      js: per(js),
      unit: 'µs/call',
    });
  }
}

function build(index: KvIndex, events: ReturnType<typeof indexWorkload>['events']): number {
  const start = process.hrtime.bigint();
  let blocks = 0;
  for (const e of events) {
    index.applyStored({ workerId: e.workerId, dpRank: 0 }, e.parent, {
      localHashes: e.local,
      externalHashes: e.external,
    });
    blocks += e.local.length;
  }
  return blocks / (Number(process.hrtime.bigint() - start) / 1e9);
}

function latencies(index: KvIndex, queries: BigUint64Array[]): { p50: number; p99: number } {
  for (const q of queries.slice(0, 200)) index.findMatches(q, false);
  const lat: number[] = [];
  for (const q of queries) {
    const s = process.hrtime.bigint();
    index.findMatches(q, false);
    lat.push(Number(process.hrtime.bigint() - s) / 1e3);
  }
  lat.sort((a, b) => a - b);
  return { p50: percentile(lat, 0.5), p99: percentile(lat, 0.99) };
}

async function benchIndex(make: { native: () => KvIndex; js: () => KvIndex }): Promise<void> {
  const w = indexWorkload({
    workers: 64,
    seqsPerWorker: quick ? 16 : 128,
    seqBlocks: 128,
    prefixBlocks: 32,
    systemPrompts: 32,
    eventBlocks: 32,
    queries: quick ? 2000 : 20000,
  });
  const result: Record<string, Record<string, number>> = {};
  for (const backend of ['native', 'js'] as const) {
    gc();
    const before = process.memoryUsage();
    const index = make[backend]();
    const rate = build(index, w.events);
    gc();
    const after = process.memoryUsage();
    const memberships = index.stats().memberships;
    const hit = latencies(index, w.hits);
    const miss = latencies(index, w.misses);
    result[backend] = {
      rate,
      memberships,
      bytesPerMembership: (after.rss - before.rss) / memberships,
      hitP50: hit.p50,
      hitP99: hit.p99,
      missP50: miss.p50,
    };
    index.dispose();
  }
  const r = (k: string) => ({ native: result.native?.[k] ?? NaN, js: result.js?.[k] ?? NaN });
  const m = result.native?.memberships ?? 0;
  const label = `${(m / 1e6).toFixed(2)} M memberships / 64 workers`;
  rows.push({ case: `index apply, ${label}`, ...r('rate'), unit: 'blocks/s' });
  rows.push({ case: 'find_matches hit p50 (128 blocks)', ...r('hitP50'), unit: 'µs' });
  rows.push({ case: 'find_matches hit p99 (128 blocks)', ...r('hitP99'), unit: 'µs' });
  rows.push({ case: 'find_matches miss p50', ...r('missP50'), unit: 'µs' });
  rows.push({ case: 'RSS per worker-block membership', ...r('bytesPerMembership'), unit: 'B' });
}

function fmt(v: number): string {
  if (!Number.isFinite(v)) return '-';
  if (v >= 1e6) return `${(v / 1e6).toFixed(2)} M`;
  if (v >= 1000) return v.toFixed(0);
  return v.toFixed(2);
}

async function main(): Promise<void> {
  const addon = await loadNativeBinding();
  if (scope === 'hash' || scope === 'all') {
    await benchHash(new NativeBlockHasher(addon), new JsBlockHasher());
  }
  if (scope === 'index' || scope === 'all') {
    await benchIndex({ native: () => NativeKvIndex.create(addon), js: () => new JsKvIndex() });
  }
  const tables: Table[] = [];
  if (scope === 'tokenize' || scope === 'all') tables.push(...(await benchTokenizers(quick)));
  if (scope === 'pipeline' || scope === 'all') tables.push(...(await benchPipeline(quick)));
  if (scope === 'segments' || scope === 'all') tables.push(...(await benchSegmentCache(quick)));
  if (scope === 'cold' || scope === 'all') tables.push(await benchColdPrepare(quick));
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? '?'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`;
  console.log(`kv-epp bench (${scope}${quick ? ', quick' : ''}) on ${machine}\n`);
  if (rows.length > 0) {
    const w = Math.max(...rows.map((r) => r.case.length));
    console.log(
      `${'case'.padEnd(w)}  ${'native'.padStart(12)}  ${'js'.padStart(12)}  ${'native ×'.padStart(9)}  unit`,
    );
    for (const r of rows) {
      // How many times better native is: higher-is-better units invert the ratio.
      const ratio = r.unit.endsWith('/s') ? r.native / r.js : r.js / r.native;
      console.log(
        `${r.case.padEnd(w)}  ${fmt(r.native).padStart(12)}  ${fmt(r.js).padStart(12)}  ${ratio.toFixed(1).padStart(9)}  ${r.unit}`,
      );
    }
  }
  for (const t of tables) printTable(t);
  if (values.json) {
    const json = JSON.stringify({ machine, scope, quick, rows, tables }, null, 2);
    writeFileSync(values.json, `${json}\n`);
  }
}

function printTable(t: Table): void {
  console.log(`\n${t.title}`);
  const w = Math.max(4, ...t.rows.map((r) => r.case.length));
  const cw = t.columns.map((c) => Math.max(c.length, 9));
  console.log(
    `${'case'.padEnd(w)}  ${t.columns.map((c, i) => c.padStart(cw[i] as number)).join('  ')}`,
  );
  for (const r of t.rows) {
    const cells = r.values.map((v, i) =>
      (typeof v === 'number' ? fmt(v) : v).padStart(cw[i] as number),
    );
    console.log(`${r.case.padEnd(w)}  ${cells.join('  ')}`);
  }
}

await main();
