/**
 * Native and JS event appliers must give identical reports and leave
 * identical indexes for the same random message streams: Dynamo msgpack
 * (envelopes, bare and positional events), Dynamo JSON and vLLM batches (both
 * event layouts), with duplicates, gaps, restarts, bad fields, unknown
 * variants, lower tiers, partial blocks, block-size mismatches, Eagle and
 * multimodal stores, and mutated or truncated bytes. After every message the
 * reports are compared; every few messages random queries, tree sizes and the
 * index stats. (The native applier is checked against dynamo-kv-router 1.6.1
 * by native/oracle.)
 */
import { describe, expect, it } from 'vitest';
import { createEventApplier } from '../../src/events/factory.js';
import type { EventApplier, EventCodec, EventSourceContext } from '../../src/events/types.js';
import { createKvIndex } from '../../src/kv/factory.js';
import { JsBlockHasher } from '../../src/kv/js/block-hasher.js';
import type { KvIndex, WorkerRank } from '../../src/kv/types.js';
import { encode, type M, map } from '../support/msgpack.js';
import { mulberry32, randomU64 } from '../support/random.js';

// ---- JSON writer for the value model of test/support/msgpack.ts ------------------------------

/**
 * JSON text of `m` (floats always with a fraction or exponent; bins as
 * arrays). `num` may respell an integer (as a float, with a leading zero...).
 */
function toJson(m: M, ws: () => string, num: (n: bigint) => string = String): string {
  if (m === null) return 'null';
  if (typeof m === 'boolean') return String(m);
  if (typeof m === 'bigint') return num(m);
  if (typeof m === 'number') {
    const s = String(m);
    return /[.eE]/.test(s) ? s : `${s}.0`;
  }
  if (typeof m === 'string') return JSON.stringify(m);
  if (m instanceof Uint8Array) return toJson([...m].map(BigInt), ws, num);
  if (Array.isArray(m)) return `[${ws()}${m.map((x) => toJson(x, ws, num)).join(`,${ws()}`)}]`;
  const fields = m.entries.map(
    ([k, v]) =>
      `${JSON.stringify(typeof k === 'string' ? k : String(k))}${ws()}:${toJson(v, ws, num)}`,
  );
  return `{${fields.join(',')}}`;
}

// ---- the random stream ---------------------------------------------------------------------

interface Message {
  codec: EventCodec;
  payload: Uint8Array;
  context: EventSourceContext;
}

const U64_MAX = 2n ** 64n - 1n;

function makeStream(seed: number, count: number, blockSize: number) {
  const rand = mulberry32(seed);
  const chance = (p: number) => rand() < p;
  const int = (n: number) => Math.floor(rand() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)] as T;
  const hasher = new JsBlockHasher();

  const workerIds = [7n, U64_MAX, 2n ** 63n + 5n, 2n];
  const docs: number[][] = [];
  for (let d = 0; d < 12; d++) {
    const base = docs.length > 0 && chance(0.5) ? pick(docs) : [];
    const doc = base.slice(0, int(base.length + 1));
    const len = blockSize * Math.max(1 + int(10), Math.ceil(doc.length / blockSize));
    while (doc.length < len) doc.push(chance(0.02) ? 0xffff_ffff : int(50_000));
    docs.push(doc);
  }
  // A LoRA named like a salt item: extra_keys skip one item equal to the LoRA name.
  const loras = [undefined, undefined, 'adapter-a', '', 'dynamo-cache-salt:lora'];
  const salts = [undefined, undefined, 'tenant-a', 'tenant-b', ''];
  /** Engine block hash of block i of doc d for a worker (some workers share hashes). */
  const ext = (w: number, d: number, i: number, ns = ''): bigint => {
    let h = BigInt(w % 2) * 0x9e3779b97f4a7c15n + BigInt(ns.length) * 0x51ed27n;
    for (const t of (docs[d] as number[]).slice(0, (i + 1) * blockSize)) {
      h = ((h ^ BigInt(t)) * 0x100000001b3n + 0x9e37n) & U64_MAX;
    }
    return h;
  };
  const queries: BigUint64Array[] = [];
  const addQuery = (d: number, lora?: string, ns?: string) => {
    const doc = Uint32Array.from(docs[d] as number[]);
    queries.push(hasher.hash(doc, blockSize, { loraName: lora, cacheNamespace: ns }).local);
  };

  // Per-holder event ids (dynamo) and sequences (vllm).
  const ids = new Map<string, bigint>();
  const nextId = (key: string): bigint => {
    const last = ids.get(key);
    let id: bigint;
    const roll = rand();
    if (last === undefined) id = BigInt(int(3));
    else if (roll < 0.8) id = last + 1n;
    else if (roll < 0.87)
      id = last > 0n ? last - BigInt(int(2)) : 0n; // duplicate
    else if (roll < 0.94)
      id = last + 2n + BigInt(int(3)); // gap
    else id = BigInt(int(2)); // restart (or duplicate when last <= 1)
    if (last === undefined || id > last || id <= 1n) ids.set(key, id);
    return id;
  };
  const publisherSeq = new Map<bigint, bigint>();

  const hashValue = (h: bigint): M => (chance(0.1) ? BigInt.asIntN(64, h) : h);

  // ---- dynamo events ---------------------------------------------------------------------

  const dynamoData = (wi: number): M => {
    const roll = rand();
    if (roll < 0.6) {
      const d = int(docs.length);
      const nb = (docs[d] as number[]).length / blockSize;
      const from = chance(0.6) ? 0 : int(nb);
      const to = from + 1 + int(nb - from);
      const local = [...hasher.hash(Uint32Array.from(docs[d] as number[]), blockSize).local];
      addQuery(d);
      const blocks: M[] = [];
      for (let i = from; i < to; i++) {
        const info = chance(0.05)
          ? map({ mm_objects: [map({ mm_hash: randomU64(rand), offsets: [[0n, 2n]] })] })
          : chance(0.02)
            ? 'bad'
            : null;
        const b = {
          block_hash: hashValue(ext(wi, d, i)),
          tokens_hash: hashValue(local[i] as bigint),
          mm_extra_info: info,
        };
        blocks.push(chance(0.1) ? Object.values(b) : map(b));
      }
      const parent = from > 0 ? ext(wi, d, from - 1) : chance(0.05) ? randomU64(rand) : null;
      const body = {
        parent_hash: parent,
        start_position: chance(0.2) ? BigInt(from) : null,
        blocks,
      };
      return map({ stored: chance(0.1) ? Object.values(body) : map(body) });
    }
    if (roll < 0.85) {
      const d = int(docs.length);
      const nb = (docs[d] as number[]).length / blockSize;
      const hs = Array.from({ length: 1 + int(nb) }, (_, i) => hashValue(ext(wi, d, i)));
      if (chance(0.2)) hs.push(randomU64(rand));
      return map({ removed: chance(0.1) ? [hs] : map({ block_hashes: hs }) });
    }
    if (roll < 0.95) return chance(0.5) ? 'cleared' : map({ cleared: null });
    return pick<M>([map({ moved: map({}) }), 2n, 7n, 'exploded', map({ stored: 'x' }), null]);
  };

  const routerEvent = (): M => {
    const wi = int(workerIds.length);
    const dp = chance(0.8) ? 0 : 1;
    const key = `d${wi}:${dp}`;
    const event: Record<string, M> = {
      event_id: nextId(key),
      data: dynamoData(wi),
    };
    if (dp !== 0 || chance(0.5)) event.dp_rank = BigInt(dp);
    if (chance(0.03)) event.event_id = -1n;
    const ev: Record<string, M> = { worker_id: workerIds[wi] as bigint };
    if (chance(0.7))
      ev.storage_tier = chance(0.9) ? 'device' : pick(['host_pinned', 'disk', 'quantum', 1n]);
    if (chance(0.7)) {
      ev.residency_domain = chance(0.9) ? 'worker' : pick<M>(['cache_owner', 'galaxy', null]);
    }
    ev.event = chance(0.1) ? Object.values(event) : map(event);
    if (chance(0.05)) ev.session_id = pick<M>(['s-1', 3n, null]);
    if (chance(0.05)) ev.future_field = [1n, 'x'];
    if (chance(0.02)) ev.worker_id = 'seven';
    if (chance(0.08)) {
      // Positional: [worker_id, storage_tier, residency_domain, event].
      return [
        ev.worker_id ?? null,
        ev.storage_tier ?? 'device',
        ev.residency_domain ?? 'worker',
        ev.event,
      ];
    }
    return map(ev);
  };

  const dynamoMessage = (): Message => {
    const events = Array.from({ length: 1 + int(4) }, routerEvent);
    let top: M = events.length === 1 && chance(0.3) ? (events[0] as M) : events;
    if (chance(0.7)) {
      const pub = chance(0.5) ? 1n : U64_MAX;
      const last = publisherSeq.get(pub);
      const seq = last === undefined ? 0n : chance(0.85) ? last + 1n : last + BigInt(int(4));
      publisherSeq.set(pub, seq);
      const env = {
        publisher_id: pub,
        sequence: seq,
        published_at: BigInt(1_700_000_000_000 + int(1000)),
        topic: 'kv-events',
        payload: encode(top),
      };
      top = chance(0.15) ? Object.values(env) : map(env);
    }
    return { codec: 'dynamo', payload: encode(top), context: {} };
  };

  const jsonMessage = (): Message => {
    const events = Array.from({ length: 1 + int(3) }, routerEvent);
    const top: M = events.length === 1 && chance(0.4) ? (events[0] as M) : events;
    const ws = () => (chance(0.1) ? pick([' ', '\n', '\t ', '\r\n']) : '');
    const num = (n: bigint): string => {
      if (!chance(0.03)) return String(n);
      return pick([
        `${n}.0`,
        `${n}e0`,
        `0${n}`,
        `-${n}`,
        `${n}0000000000000000000000`,
        '-0',
        `${n}E-0`,
      ]);
    };
    const text = toJson(top, ws, num);
    return { codec: 'dynamo-json', payload: new TextEncoder().encode(text), context: {} };
  };

  // ---- vllm events -----------------------------------------------------------------------

  /** Random trailing slots of a tagged array (metadata, mm infos, junk). */
  const tail = (mm: M): M[] => {
    const slot = (): M =>
      chance(0.3)
        ? null
        : pick<M>([
            null,
            0n,
            1n,
            2n,
            128n,
            2n ** 32n,
            -1n,
            'full_attention',
            'sliding_window',
            'mamba',
            'warp',
            'LOCAL',
            'REMOTE',
            'kvcr',
            'bob',
            1.5,
            Uint8Array.from([0x4c, 0x4f, 0x43, 0x41, 0x4c]),
            Uint8Array.from([0xff]),
            [],
            mm,
            [null],
            [1n, 2n],
          ]);
    const fixed: M[][] = [
      [0n, 'full_attention', null, 'LOCAL'],
      [1n, 'sliding_window', 128n, 'LOCAL', null],
      ['mamba'],
      [mm],
      // On the boundary between the fixed and the v1.2 opportunistic layouts.
      [null, null, 2n],
      [null, 'full_attention', 5n],
      [null, null, 1n, 'LOCAL'],
      [null, 'full_attention', null, 'REMOTE', 3n],
      [1n, null, null, 'REMOTE', 'kvcr'],
      [0n, 'full_attention', 2n, 'LOCAL', 7n],
      [0n, 'mamba', null, 'LOCAL', 'bob', 'tail'],
      [null, 2n, null, 'REMOTE'],
      [mm, 0n, 'full_attention', null, 'REMOTE'],
    ];
    return chance(0.6) ? pick(fixed) : Array.from({ length: int(7) }, slot);
  };

  const vllmStored = (wi: number): M => {
    const d = int(docs.length);
    const doc = docs[d] as number[];
    const nb = doc.length / blockSize;
    const from = chance(0.5) ? 0 : int(nb);
    const n = 1 + int(Math.min(nb - from, 6));
    const lora = pick(loras);
    const salt = pick(salts);
    const eagle = chance(0.05);
    const parent =
      from > 0 ? ext(wi, d, from - 1, salt) : chance(0.03) ? ext(wi, d, 0, salt) : null;
    let hashes = Array.from({ length: n }, (_, i) => ext(wi, d, from + i, salt));
    if (chance(0.03)) hashes = [...hashes, hashes[0] as bigint]; // self-referencing
    let size = blockSize;
    let toks = doc.slice(from * blockSize, (from + n) * blockSize + (eagle ? 1 : 0));
    const roll = rand();
    if (roll < 0.08)
      toks = toks.slice(0, Math.max(0, toks.length - 1 - int(blockSize))); // partial
    else if (roll < 0.12) size = blockSize * 2;
    else if (roll < 0.15) size = Math.max(1, blockSize >> 1);
    addQuery(d, lora, salt);
    const tokenIds: M = eagle
      ? toks.slice(0, -1).map((t, i) => [BigInt(t), BigInt(toks[i + 1] as number)])
      : toks.map(BigInt);
    const medium = chance(0.85) ? 'GPU' : pick<M>(['CPU', 'DISK', '', 'FS', null]);
    const mm: M = chance(0.05)
      ? hashes.map((_, i) =>
          i === 0
            ? map({ mm_objects: [map({ mm_hash: randomU64(rand), offsets: [[0n, 1n]] })] })
            : null,
        )
      : null;
    if (chance(0.7)) {
      const ev: Record<string, M> = {
        type: 'BlockStored',
        block_hashes: hashes.map(hashValue),
        parent_block_hash: parent,
        token_ids: tokenIds,
        block_size: BigInt(size),
        lora_id: null,
        medium,
        lora_name: lora ?? null,
      };
      if (salt !== undefined) {
        if (chance(0.5)) ev.cache_salt = salt;
        else ev.extra_keys = [[...(lora ? [lora] : []), `dynamo-cache-salt:${salt}`]];
      }
      if (mm !== null) ev.block_mm_infos = mm;
      if (chance(0.05)) ev.group_idx = BigInt(int(3));
      if (chance(0.05)) ev.kv_cache_spec_kind = pick(['full_attention', 'mamba', 'warp']);
      if (chance(0.03)) ev.locality = pick(['LOCAL', 'REMOTE', 'MARS']);
      if (chance(0.03)) ev.ownership = pick(['kvcr', 'bob']);
      if (chance(0.03)) ev.session_id = pick(['a', 'b']);
      if (chance(0.02)) ev.token_ids = [-1n];
      return map(ev);
    }
    const p7: M = salt !== undefined && chance(0.5) ? map({ cache_salt: salt }) : (lora ?? null);
    const arr: M[] = [
      'BlockStored',
      hashes.map(hashValue),
      parent,
      tokenIds,
      BigInt(size),
      chance(0.2) ? 3n : null,
      medium,
      p7,
    ];
    if (chance(0.5))
      arr.push(chance(0.5) ? null : [[`dynamo-cache-salt:${pick(['x', 'y'])}`]], ...tail(mm));
    return arr;
  };

  const vllmEvent = (wi: number): M => {
    const roll = rand();
    if (roll < 0.6) return vllmStored(wi);
    if (roll < 0.85) {
      const d = int(docs.length);
      const nb = (docs[d] as number[]).length / blockSize;
      const hs = Array.from({ length: 1 + int(nb) }, (_, i) =>
        hashValue(ext(wi, d, i, pick(salts))),
      );
      const medium = chance(0.9) ? 'GPU' : pick<M>(['CPU', 'DISK', null]);
      return chance(0.7)
        ? map({ type: 'BlockRemoved', block_hashes: hs, medium })
        : ['BlockRemoved', hs, medium, ...(chance(0.3) ? tail(null) : [])];
    }
    if (roll < 0.93) return chance(0.5) ? map({ type: 'AllBlocksCleared' }) : ['AllBlocksCleared'];
    return pick<M>([
      map({ type: 'Ignored' }),
      ['BlockMoved'],
      map({ type: 'Teleport' }),
      5n,
      [null],
    ]);
  };

  const vllmMessage = (): Message => {
    const wi = int(workerIds.length);
    const dp = chance(0.8) ? null : pick([0n, 1n, -1n]);
    const events = Array.from({ length: int(5) }, () => vllmEvent(wi));
    const top: M = chance(0.1) ? [0.5, events] : [chance(0.9) ? 1_764_000_000.25 : 1n, events, dp];
    const context: EventSourceContext = {};
    if (chance(0.97)) context.workerId = workerIds[wi] as bigint;
    if (chance(0.2)) context.dpRank = int(2);
    if (chance(0.8)) {
      const rank = dp === null ? (context.dpRank ?? 0) : Number(BigInt.asUintN(32, dp));
      context.sequence = nextId(`v${wi}:${rank}`);
    }
    return { codec: 'vllm', payload: encode(top), context };
  };

  // ---- mutations ---------------------------------------------------------------------------

  const snippets = [
    '0',
    '-',
    '.',
    'e',
    '1e400',
    ',',
    '"',
    '\\',
    '\\ud800',
    '\\udc00',
    '\\ud83d\\ude00',
    '\\u00e9',
    '00',
    '01',
    '-0',
    '1.',
    '.1',
    '9'.repeat(30),
    '\\n',
    ' ',
    '[',
    ']',
    '{',
    '}',
    ':',
    'null',
    '\u00ff',
  ];
  const mutate = (m: Message): Message => {
    const b = m.payload.slice();
    if (m.codec === 'dynamo-json' && chance(0.7)) {
      const text = new TextDecoder().decode(b);
      // Often right after a structural character: the start of a value or string.
      const marks = [...text.matchAll(/[:,["]/g)].map((x) => (x.index as number) + 1);
      const at = marks.length > 0 && chance(0.6) ? pick(marks) : int(text.length + 1);
      const raw = chance(0.1) ? Uint8Array.from([pick([0x01, 0xff, 0xc0, 0xed])]) : null;
      const head = new TextEncoder().encode(text.slice(0, at));
      const mid = raw ?? new TextEncoder().encode(pick(snippets));
      const rest = new TextEncoder().encode(text.slice(at));
      return { ...m, payload: Uint8Array.from([...head, ...mid, ...rest]) };
    }
    const roll = rand();
    if (roll < 0.4) return { ...m, payload: b.subarray(0, int(b.length)) };
    if (roll < 0.8) {
      for (let k = 0; k < 1 + int(3); k++) b[int(b.length)] = int(256);
      return { ...m, payload: b };
    }
    const at = int(b.length + 1);
    const ins = Uint8Array.from([...b.subarray(0, at), int(256), ...b.subarray(at)]);
    return { ...m, payload: ins };
  };

  const messages: Message[] = [];
  for (let i = 0; i < count; i++) {
    const roll = rand();
    let m = roll < 0.4 ? dynamoMessage() : roll < 0.6 ? jsonMessage() : vllmMessage();
    if (chance(m.codec === 'dynamo-json' ? 0.3 : 0.12)) m = mutate(m);
    messages.push(m);
  }
  return { messages, queries, workerIds };
}

// ---- the comparison ------------------------------------------------------------------------

interface Pair {
  index: KvIndex;
  applier: EventApplier;
}

async function pair(backend: 'native' | 'js', blockSize: number): Promise<Pair> {
  const index = await createKvIndex(backend);
  return { index, applier: await createEventApplier(index, { blockSize }) };
}

describe('native vs JS event applier', () => {
  it('agree on random message streams in all three codecs', async () => {
    const rand = mulberry32(99);
    let applied = 0;
    let rejected = 0;
    let nonEmpty = 0;
    let checks = 0;
    const seen = new Map<string, number>();
    // [seed, configured block size]
    const seeds: Array<[number, number]> = [
      [1, 4],
      [2, 4],
      [3, 16],
      [4, 1],
      [5, 4],
      [6, 8],
      [7, 2],
      [8, 4],
      [9, 32],
      [10, 4],
    ];
    const perSeed = 1200;
    for (const [seed, blockSize] of seeds) {
      const { messages, queries, workerIds } = makeStream(seed, perSeed, blockSize);
      const native = await pair('native', blockSize);
      const js = await pair('js', blockSize);
      messages.forEach((m, i) => {
        const where = `seed ${seed} message ${i} (${m.codec})`;
        const a = native.applier.apply(m.codec, m.payload, m.context);
        const b = js.applier.apply(m.codec, m.payload, m.context);
        expect(b, where).toEqual(a);
        applied += a.applied.stored + a.applied.removed + a.applied.cleared;
        rejected += Object.values(a.rejected).reduce((s, n) => s + n, 0);
        for (const [k, n] of Object.entries(a.rejected)) seen.set(k, (seen.get(k) ?? 0) + n);
        const bump = (k: string, n: number) => seen.set(k, (seen.get(k) ?? 0) + n);
        bump(`applied:${m.codec}`, a.applied.stored + a.applied.removed + a.applied.cleared);
        bump('gaps', a.gaps.length);
        bump('resets', a.resets.length);
        bump('publisherGaps', a.publisherGap ? 1 : 0);
        bump('mismatches', a.blockSizeMismatches.length);
        if (i % 15 === 14 && rand() < 0.1) {
          const gone = workerIds[Math.floor(rand() * workerIds.length)] as bigint;
          for (const p of [native, js]) {
            p.applier.forgetWorker(gone);
            p.index.removeWorker(gone);
          }
        }
        if (i % 10 === 9) {
          checks++;
          expect(js.index.stats(), where).toEqual(native.index.stats());
          for (let q = 0; q < 8 && queries.length > 0; q++) {
            const query = queries[Math.floor(rand() * queries.length)] as BigUint64Array;
            const cut = query.subarray(0, 1 + Math.floor(rand() * query.length));
            for (const early of [false, true]) {
              const s = native.index.findMatches(cut, early);
              expect(js.index.findMatches(cut, early), where).toEqual(s);
              if (s.workers.length > 0) nonEmpty++;
            }
          }
          for (const workerId of workerIds) {
            for (const dpRank of [0, 1, 2 ** 32 - 1]) {
              const w: WorkerRank = { workerId, dpRank };
              expect(js.index.treeSize(w), where).toBe(native.index.treeSize(w));
            }
          }
        }
      });
      expect(js.index.stats()).toEqual(native.index.stats());
      for (const p of [native, js]) {
        p.applier.dispose();
        p.index.dispose();
      }
    }
    // The streams exercise the index, every rejection reason, the stream state and the queries.
    expect(applied).toBeGreaterThan(2000);
    expect(rejected).toBeGreaterThan(500);
    expect(nonEmpty).toBeGreaterThan(1000);
    for (const k of [
      'applied:dynamo',
      'applied:dynamo-json',
      'applied:vllm',
      'malformed',
      'unknown_variant',
      'block_size_mismatch',
      'partial_block',
      'parent_not_found',
      'block_not_found',
      'invalid_block_sequence',
      'no_worker',
      'duplicate',
      'gaps',
      'resets',
      'publisherGaps',
      'mismatches',
    ]) {
      expect(seen.get(k) ?? 0, k).toBeGreaterThan(10);
    }
    expect(checks).toBe((seeds.length * perSeed) / 10);
  });

  it('agree on random and mutated bytes fed to every codec', async () => {
    const rand = mulberry32(7);
    const int = (n: number) => Math.floor(rand() * n);
    const { messages } = makeStream(11, 300, 4);
    const native = await pair('native', 4);
    const js = await pair('js', 4);
    const codecs: EventCodec[] = ['dynamo', 'dynamo-json', 'vllm'];
    for (let i = 0; i < 3000; i++) {
      let bytes: Uint8Array;
      if (i % 2 === 0) {
        bytes = Uint8Array.from({ length: int(64) }, () => int(256));
      } else {
        bytes = (messages[int(messages.length)] as Message).payload.slice();
        for (let k = 0; k < 1 + int(4) && bytes.length > 0; k++)
          bytes[int(bytes.length)] = int(256);
      }
      for (const codec of codecs) {
        const ctx: EventSourceContext = { workerId: 1n, sequence: BigInt(i) };
        const a = native.applier.apply(codec, bytes, ctx);
        expect(js.applier.apply(codec, bytes, ctx), `bytes ${i} ${codec}`).toEqual(a);
      }
    }
    expect(js.index.stats()).toEqual(native.index.stats());
    for (const p of [native, js]) {
      p.applier.dispose();
      p.index.dispose();
    }
  });
});
