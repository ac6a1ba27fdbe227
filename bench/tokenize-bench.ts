/**
 * Tokenizer and request-pipeline benchmarks (issue 4), side by side:
 * kv-epp native, kv-epp JS twin, npm `tokenizers` (HF's own napi binding) and
 * `gpt-tokenizer` (fastest pure-JS OpenAI BPE), on real prose and code.
 * Ids are compared against the native backend and the match is reported.
 */

import { join } from 'node:path';
import { encode as gptEncode } from 'gpt-tokenizer/encoding/o200k_base';

/** Special-token text encoded as ordinary text, as kv-epp's plain encode does. */
const gptEncodeO200k = (text: string) => gptEncode(text, { disallowedSpecial: new Set() });

import { Tokenizer as HfNpmTokenizer } from 'tokenizers';
import { loadNativeBinding } from '../src/kv/native/binding.js';
import { createHotPath } from '../src/pipeline/factory.js';
import { createTokenizer } from '../src/tokenize/factory.js';
import { NativeTokenizer } from '../src/tokenize/native/tokenizer.js';
import type { Tokenizer } from '../src/tokenize/types.js';
import { RoutePreparer } from '../src/workers/route-preparer.js';
import { sample } from './corpus.js';

export interface Table {
  title: string;
  columns: string[];
  unit: string;
  rows: Array<{ case: string; values: Array<number | string> }>;
}

const ROOT = join(import.meta.dirname, '../..');
const QWEN = join(ROOT, 'test/fixtures/tokenizers/qwen3');

async function timeMs(f: () => unknown, minMs: number): Promise<number> {
  await f();
  let n = 0;
  const start = performance.now();
  while (performance.now() - start < minMs || n < 3) {
    await f();
    n++;
  }
  return (performance.now() - start) / n;
}

const DEFAULT_SEGMENT_CACHE_BYTES = 64 * 1024 * 1024;

/**
 * Runs `f` with the native tokenizers' segment cache off: these benchmarks
 * encode the same texts again and again, which the cache would serve instead
 * of the encoder being measured. benchSegmentCache measures the cache itself.
 */
async function withoutSegmentCache<T>(f: () => Promise<T>): Promise<T> {
  const addon = await loadNativeBinding();
  NativeTokenizer.setSegmentCacheBytes(addon, 0);
  try {
    return await f();
  } finally {
    NativeTokenizer.setSegmentCacheBytes(addon, DEFAULT_SEGMENT_CACHE_BYTES);
  }
}

const same = (a: ArrayLike<number>, b: ArrayLike<number>) =>
  a.length === b.length && Array.prototype.every.call(a, (v: number, i: number) => v === b[i]);

export function benchTokenizers(quick: boolean): Promise<Table[]> {
  return withoutSegmentCache(() => tokenizerTables(quick));
}

async function tokenizerTables(quick: boolean): Promise<Table[]> {
  const minMs = quick ? 150 : 600;
  const sizes = quick ? [2048, 65536] : [2048, 65536, 1 << 20];
  const hf: Table = {
    title: 'HF tokenizer.json (Qwen3): MB/s, higher is better',
    columns: ['kv-epp native', 'kv-epp js', 'npm tokenizers', 'native ÷ npm', 'ids equal'],
    unit: 'MB/s',
    rows: [],
  };
  const tk: Table = {
    title: 'tiktoken o200k_base: MB/s, higher is better',
    columns: [
      'kv-epp native',
      'kv-epp js (tiktoken)',
      'gpt-tokenizer',
      'native ÷ gpt',
      'ids equal',
    ],
    unit: 'MB/s',
    rows: [],
  };
  const native = await createTokenizer({ source: QWEN }, 'native');
  const js = await createTokenizer({ source: QWEN }, 'js');
  const npm = HfNpmTokenizer.fromFile(join(QWEN, 'tokenizer.json'));
  const nativeTk = await createTokenizer({ source: 'o200k_base' }, 'native');
  const jsTk = await createTokenizer({ source: 'o200k_base' }, 'js');
  for (const kind of ['prose', 'code'] as const) {
    for (const bytes of sizes) {
      const text = sample(kind, bytes);
      const mb = Buffer.byteLength(text) / 1e6;
      const label = `${kind} ${bytes >= 1 << 20 ? `${bytes >> 20} MB` : `${bytes >> 10} KB`}`;
      const ids = native.encode(text, false);
      const npmIds = (await npm.encode(text, undefined, { addSpecialTokens: false })).getIds();
      const a = mb / ((await timeMs(() => native.encode(text, false), minMs)) / 1e3);
      const b = mb / ((await timeMs(() => js.encode(text, false), minMs)) / 1e3);
      const c =
        mb /
        ((await timeMs(() => npm.encode(text, undefined, { addSpecialTokens: false }), minMs)) /
          1e3);
      const eq = same(ids, npmIds) && same(ids, js.encode(text, false));
      hf.rows.push({ case: label, values: [a, b, c, a / c, eq ? 'yes' : 'NO'] });

      const tids = nativeTk.encode(text, false);
      const ta = mb / ((await timeMs(() => nativeTk.encode(text, false), minMs)) / 1e3);
      const tb = mb / ((await timeMs(() => jsTk.encode(text, false), minMs)) / 1e3);
      const tc = mb / ((await timeMs(() => gptEncodeO200k(text), minMs)) / 1e3);
      const teq = same(tids, gptEncodeO200k(text)) && same(tids, jsTk.encode(text, false));
      tk.rows.push({ case: label, values: [ta, tb, tc, ta / tc, teq ? 'yes' : 'NO'] });
    }
  }
  for (const t of [native, js, nativeTk, jsTk]) t.dispose();
  return [hf, tk, await coldCache(quick)];
}

/**
 * Median µs of `n` calls of `f(r)`, each after writing one byte per cache line
 * of `evict[0..bytes)` (0: caches left warm). Only `f` is timed.
 */
async function p50UsAfterWrites(
  n: number,
  evict: Uint8Array,
  bytes: number,
  f: (r: number) => unknown,
): Promise<number> {
  const t: number[] = [];
  for (let r = 0; r < n; r++) {
    for (let j = 0; j < bytes; j += 64) evict[j] = (evict[j] as number) + 1;
    const t0 = performance.now();
    const x = f(r);
    // A synchronous call is timed without a microtask turn.
    if (x instanceof Promise) await x;
    t.push((performance.now() - t0) * 1e3);
  }
  t.sort((a, b) => a - b);
  return t[t.length >> 1] as number;
}

/**
 * A gateway at a moderate rate runs one request at a time between other
 * processes (Envoy, the workers' sidecars), so the tokenizer's tables are out
 * of the CPU caches when a request arrives. Here: 2 KB prose prompts, encoded
 * back to back (warm) and after touching 64 MB between calls (cold).
 */
async function coldCache(quick: boolean): Promise<Table> {
  const out: Table = {
    title: '2 KB prose, µs per encode (p50): caches warm vs evicted (64 MB touched between calls)',
    columns: ['warm', 'cold', 'cold − warm'],
    unit: 'µs',
    rows: [],
  };
  const texts = Array.from({ length: 32 }, (_, i) => sample('prose', 2048 + 64 * i).slice(64 * i));
  const evict = new Uint8Array(64 << 20);
  const p50 = (tok: Tokenizer, cold: boolean): Promise<number> =>
    p50UsAfterWrites(quick ? 200 : 600, evict, cold ? evict.length : 0, (r) =>
      tok.encode(texts[r % texts.length] as string, false),
    );
  for (const [name, source] of [
    ['o200k_base', 'o200k_base'],
    ['Qwen3', QWEN],
  ] as const) {
    for (const backend of ['native', 'js'] as const) {
      const tok = await createTokenizer({ source }, backend);
      await p50(tok, false);
      const warm = await p50(tok, false);
      const cold = await p50(tok, true);
      out.rows.push({ case: `${name} ${backend}`, values: [warm, cold, cold - warm] });
      tok.dispose();
    }
  }
  return out;
}

/**
 * One 2 KB chat request's route preparation (the addon's fused parse, checks,
 * render, tokenize, hash, score and splice; the JS twin's pipeline), as at
 * 500 req/s through Envoy: the caches are evicted between two requests there
 * (bench/README.md, finding AX). 64 bodies over 4 system prompts, o200k_base,
 * the segment cache on as in `kv-epp serve`; µs per request (p50) with nothing,
 * 8 MB (within the L3) and 64 MB (beyond it) written between requests.
 */
export async function benchColdPrepare(quick: boolean): Promise<Table> {
  const out: Table = {
    title: '2 KB chat route preparation, µs per request (p50) by what is written between requests',
    columns: ['nothing', '8 MB', '64 MB'],
    unit: 'µs',
    rows: [],
  };
  const systems = Array.from(
    { length: 4 },
    (_, i) => `System prompt ${i}. ${sample('prose', 400)}`,
  );
  const bodies = Array.from({ length: 64 }, (_, i) =>
    new TextEncoder().encode(
      JSON.stringify({
        model: 'bench',
        messages: [
          { role: 'system', content: systems[i % 4] },
          { role: 'user', content: sample('prose', 1500 + 97 * i).slice(97 * i) },
        ],
      }),
    ),
  );
  const evict = new Uint8Array(64 << 20);
  for (const backend of ['native', 'js'] as const) {
    const path = await createHotPath({ source: 'o200k_base' }, backend);
    const preparer = RoutePreparer.create(path, { poolSize: 0, offloadBytes: 1 << 30 });
    const s = { blockSize: 16 };
    const work = { rewrite: undefined };
    const p50 = (bytes: number): Promise<number> =>
      p50UsAfterWrites(quick ? 200 : 800, evict, bytes, (r) =>
        preparer.prepare(bodies[r % bodies.length] as Uint8Array, 'chat', s, work),
      );
    await p50(0);
    const values = [await p50(0), await p50(8 << 20), await p50(64 << 20)];
    out.rows.push({ case: `${backend} o200k_base`, values });
    await preparer.close();
    path.tokenizer.dispose();
    path.index.dispose();
  }
  return out;
}

function chatBody(tokenizer: Tokenizer, targetTokens: number, salt: number): Uint8Array {
  // ~4 bytes per token for English prose with Qwen3.
  let text = sample('prose', targetTokens * 4);
  const n = tokenizer.encode(text, false).length;
  text = sample('prose', Math.round((targetTokens * 4 * targetTokens) / n));
  return new TextEncoder().encode(
    JSON.stringify({
      model: 'bench',
      messages: [
        { role: 'system', content: `You are assistant #${salt}.` },
        { role: 'user', content: text },
      ],
    }),
  );
}

/**
 * Where offloading starts to pay: single-request latency inline vs through a
 * one-thread pool, by body size (native fused path).
 */
async function offloadThreshold(quick: boolean): Promise<Table> {
  const t: Table = {
    title: 'offload threshold: one request at a time, native, µs (inline blocks the event loop)',
    columns: ['inline µs', 'pool µs', 'pool − inline'],
    unit: 'µs',
    rows: [],
  };
  const path = await createHotPath({ source: QWEN }, 'native');
  const inline = RoutePreparer.create(path, { poolSize: 0, offloadBytes: 1 });
  const pooled = RoutePreparer.create(path, { poolSize: 1, offloadBytes: 1 });
  const s = { blockSize: 16 };
  for (const bytes of quick ? [1024, 16384] : [512, 2048, 8192, 16384, 32768, 65536]) {
    const body = new TextEncoder().encode(
      JSON.stringify({ messages: [{ role: 'user', content: sample('prose', bytes) }] }),
    );
    const a = (await timeMs(() => inline.prepare(body, 'chat', s), quick ? 100 : 400)) * 1e3;
    const b = (await timeMs(() => pooled.prepare(body, 'chat', s), quick ? 100 : 400)) * 1e3;
    t.rows.push({ case: `${bytes >> 10 || bytes / 1024} KB body`, values: [a, b, b - a] });
  }
  await pooled.close();
  path.tokenizer.dispose();
  return t;
}

/**
 * Event-loop blocking as a 1 ms interval timer sees it: each tick's lateness
 * (gap beyond 1 ms) while requests are in flight. Unlike a histogram enabled
 * and read within one synchronous run, this catches a loop blocked by inline work.
 */
function loopProbe(): { stop(): Promise<{ max: number; p99: number }> } {
  const late: number[] = [];
  let last = performance.now();
  const t = setInterval(() => {
    const now = performance.now();
    late.push(Math.max(0, now - last - 1));
    last = now;
  }, 1);
  return {
    async stop() {
      // One more tick, so a loop blocked until now is recorded.
      await new Promise((r) => setTimeout(r, 3));
      clearInterval(t);
      late.sort((a, b) => a - b);
      return {
        max: late[late.length - 1] ?? 0,
        p99: late[Math.floor(late.length * 0.99)] ?? 0,
      };
    },
  };
}

export function benchPipeline(quick: boolean): Promise<Table[]> {
  return withoutSegmentCache(() => pipelineTables(quick));
}

/**
 * Multi-turn chat (Qwen3 native): each turn resends the whole conversation, a
 * 2 KB system prompt shared by every conversation plus ~1 KB user and ~1 KB
 * assistant messages. µs per request body (render + encode) at a given turn,
 * with the segment cache (which serves the earlier messages) and without,
 * side by side; the ids are checked equal.
 */
export async function benchSegmentCache(quick: boolean): Promise<Table[]> {
  const addon = await loadNativeBinding();
  const out: Table = {
    title:
      'multi-turn chat, Qwen3 native: µs per request at turn N (whole history resent each turn)',
    columns: ['history KB', 'cache off µs', 'cache on µs', 'off ÷ on', 'ids equal'],
    unit: 'µs',
    rows: [],
  };
  const turns = [1, 4, 8, 16];
  const conversations = quick ? 8 : 32;
  const prose = sample('prose', 400_000);
  // A slice that never splits a surrogate pair (a lone surrogate is not valid JSON text).
  const low = (i: number) => (prose.charCodeAt(i) & 0xfc00) === 0xdc00;
  const slice = (a: number, b: number) => prose.slice(low(a) ? a + 1 : a, low(b) ? b + 1 : b);
  const system = { role: 'system', content: slice(0, 2048) };
  // Conversation c, turn t: the bodies every turn up to t sends, oldest first.
  const bodies = (c: number): Uint8Array[] => {
    const messages: Array<{ role: string; content: string }> = [system];
    const list: Uint8Array[] = [];
    for (let t = 1; t <= Math.max(...turns); t++) {
      const at = 2048 + (((c * 40 + t * 2) * 1024) % (prose.length - 4096));
      messages.push({ role: 'user', content: `[${c}.${t}] ${slice(at, at + 1024)}` });
      list.push(new TextEncoder().encode(JSON.stringify({ model: 'm', messages })));
      messages.push({ role: 'assistant', content: slice(at + 1024, at + 2048) });
    }
    return list;
  };
  const tok = NativeTokenizer.load(addon, QWEN);
  const run = (cacheBytes: number) => {
    NativeTokenizer.setSegmentCacheBytes(addon, cacheBytes);
    const times = new Map<number, number[]>(turns.map((t) => [t, []]));
    const ids = new Map<string, Uint32Array>();
    for (let c = 0; c < conversations; c++) {
      // The conversation's turns in order, as a gateway sees them.
      bodies(c).forEach((b, i) => {
        const t0 = performance.now();
        const got = tok.tokenizeRequest(b, 'chat');
        const us = (performance.now() - t0) * 1e3;
        times.get(i + 1)?.push(us);
        if (times.has(i + 1)) ids.set(`${c}.${i + 1}`, got);
      });
    }
    return { times, ids };
  };
  run(0); // warm the encoder's own tables
  const off = run(0);
  const on = run(DEFAULT_SEGMENT_CACHE_BYTES);
  const median = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1] as number;
  for (const t of turns) {
    const a = median(off.times.get(t) ?? []);
    const b = median(on.times.get(t) ?? []);
    let eq = true;
    for (const [k, v] of off.ids)
      if (k.endsWith(`.${t}`) && !same(v, on.ids.get(k) ?? [])) eq = false;
    const kb = (bodies(0)[t - 1] as Uint8Array).length / 1024;
    out.rows.push({ case: `turn ${t}`, values: [kb, a, b, a / b, eq ? 'yes' : 'NO'] });
  }
  const s = tok.segmentCacheStats();
  out.rows.push({
    case: 'cache lookups (hits / misses)',
    values: ['', '', `${s.hits} / ${s.misses}`, '', ''],
  });
  tok.dispose();
  NativeTokenizer.setSegmentCacheBytes(addon, DEFAULT_SEGMENT_CACHE_BYTES);
  return [out];
}

async function pipelineTables(quick: boolean): Promise<Table[]> {
  const out: Table = {
    title: 'prepareRoute (tokenize + hash + score), Qwen3 chat prompt, block size 16',
    columns: ['p50 ms', 'p99 ms', 'req/s', 'max loop delay ms', 'loop p99 ms'],
    unit: '',
    rows: [],
  };
  for (const backend of ['native', 'js'] as const) {
    const path = await createHotPath({ source: QWEN }, backend);
    const { tokenizer, index } = path;
    for (const tokens of quick ? [8192] : [8192, 65536]) {
      const bodies = Array.from({ length: 32 }, (_, i) => chatBody(tokenizer, tokens, i));
      for (const mode of ['inline', 'pool'] as const) {
        const preparer = RoutePreparer.create(path, {
          poolSize: mode === 'pool' ? 2 : 0,
          offloadBytes: 1,
        });
        await preparer.prepare(bodies[0] as Uint8Array, 'chat', { blockSize: 16 });
        const probe = loopProbe();
        const lat: number[] = [];
        const start = performance.now();
        // 32 requests in flight at once, as a burst would arrive.
        await Promise.all(
          bodies.map(async (b) => {
            const t0 = performance.now();
            await preparer.prepare(b, 'chat', { blockSize: 16 });
            lat.push(performance.now() - t0);
          }),
        );
        const wall = performance.now() - start;
        const gaps = await probe.stop();
        await preparer.close();
        lat.sort((x, y) => x - y);
        out.rows.push({
          case: `${backend} ${tokens >> 10}k tokens, ${mode}, 32 in flight`,
          values: [
            lat[Math.floor(lat.length / 2)] as number,
            lat[Math.floor(lat.length * 0.99)] as number,
            (bodies.length / wall) * 1e3,
            gaps.max,
            gaps.p99,
          ],
        });
      }
    }
    tokenizer.dispose();
    index.dispose();
  }
  return [await offloadThreshold(quick), out];
}
