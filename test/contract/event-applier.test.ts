/**
 * Backend-agnostic contract of `EventApplier` (src/events/types.ts), run
 * against both backends: the native applier on a native index, and the JS
 * twin on a JS index, each made by the factories. The cases follow the Rust
 * tests native/core/tests/events_dynamo.rs and events_vllm.rs (the semantics
 * and their Dynamo 1.6.1 sources are in native/core/src/events/); messages
 * are hand-encoded with the tiny MessagePack writer below (smallest markers,
 * as msgspec and rmp write them).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createEventApplier } from '../../src/events/factory.js';
import type {
  EventApplier,
  EventApplyReport,
  EventCodec,
  EventSourceContext,
} from '../../src/events/types.js';
import { createKvIndex } from '../../src/kv/factory.js';
import { JsBlockHasher, XXH3_SEED, xxh3_64 } from '../../src/kv/js/block-hasher.js';
import type { Backend, KvIndex, WorkerRank } from '../../src/kv/types.js';
import { encode, type M, MapM, map } from '../support/msgpack.js';
import {
  block,
  cleared,
  envelope,
  removed,
  routerEvent,
  stored,
} from '../support/router-events.js';

// ---- value helpers (the writer is test/support/msgpack.ts) -----------------------------------

const u = (x: number | bigint): bigint => BigInt(x);
const hashes = (h: Array<number | bigint>): M => h.map(u);
const tokens = (t: number[]): M => t.map(u);

/** `m` with `key` set to `v` (replacing an existing entry in place, else appended). */
function with_(m: M, key: string, v: M): MapM {
  if (!(m instanceof MapM)) throw new Error('not a map');
  const entries = m.entries.map(([k, x]): [M, M] => [k, k === key ? v : x]);
  if (!m.entries.some(([k]) => k === key)) entries.push([key, v]);
  return new MapM(entries);
}

/** `m` without `key`. */
function without(m: M, key: string): MapM {
  if (!(m instanceof MapM)) throw new Error('not a map');
  return new MapM(m.entries.filter(([k]) => k !== key));
}

// ---- shared fixtures -------------------------------------------------------------------------

const BIG = 0xffff_ffff_ffff_fffbn; // 18446744073709551611, > 2^63
const U64_MAX = 2n ** 64n - 1n;
const BLOCK = 4;
const wk = (workerId: bigint, dpRank = 0): WorkerRank => ({ workerId, dpRank });
const range = (a: number, b: number): number[] => Array.from({ length: b - a }, (_, i) => a + i);

const hasher = new JsBlockHasher();
function locals(t: number[], lora?: string, ns?: string): bigint[] {
  return [...hasher.hash(Uint32Array.from(t), BLOCK, { loraName: lora, cacheNamespace: ns }).local];
}
function leBytes(t: number[], extra: bigint[] = []): Uint8Array {
  const v = new DataView(new ArrayBuffer(t.length * 4 + extra.length * 8));
  for (const [i, x] of t.entries()) v.setUint32(i * 4, x, true);
  for (const [i, x] of extra.entries()) v.setBigUint64(t.length * 4 + i * 8, x, true);
  return new Uint8Array(v.buffer);
}

// vLLM shapes.
const batch = (events: M[], dp: number | null = null): M => [
  1_764_000_000.25,
  events,
  dp === null ? null : u(dp),
];
const storedMap = (
  h: Array<number | bigint>,
  parent: number | bigint | null,
  t: number[],
  bs: number | bigint = 4,
) =>
  map({
    type: 'BlockStored',
    block_hashes: hashes(h),
    parent_block_hash: parent === null ? null : u(parent),
    token_ids: tokens(t),
    block_size: u(bs),
    lora_id: null,
    medium: 'GPU',
    lora_name: null,
  });
const removedMap = (h: Array<number | bigint>) =>
  map({ type: 'BlockRemoved', block_hashes: hashes(h), medium: 'GPU' });
const clearedMap = () => map({ type: 'AllBlocksCleared' });

const thrownCode = (f: () => unknown): unknown => {
  try {
    f();
  } catch (e) {
    return (e as { code?: unknown }).code;
  }
  return 'did not throw';
};

// ---- the contract ----------------------------------------------------------------------------

describe.each<Backend>(['native', 'js'])('EventApplier contract (%s)', (backend) => {
  let index: KvIndex;
  let applier: EventApplier;

  beforeEach(async () => {
    index = await createKvIndex(backend);
    applier = await createEventApplier(index, { blockSize: BLOCK });
  });

  afterEach(() => {
    applier.dispose();
    index.dispose();
  });

  const apply = (codec: EventCodec, bytes: Uint8Array, ctx?: EventSourceContext) =>
    applier.apply(codec, bytes, ctx);
  const dyn = (m: M) => apply('dynamo', encode(m));
  const json = (s: string) => apply('dynamo-json', new TextEncoder().encode(s));
  const vllm = (m: M, worker: bigint, seq?: bigint) =>
    apply(
      'vllm',
      encode(m),
      seq === undefined ? { workerId: worker } : { workerId: worker, sequence: seq },
    );
  const depth = (w: WorkerRank, q: bigint[]): number => {
    const s = index.findMatches(BigUint64Array.from(q), false);
    const i = s.workers.findIndex((x) => x.workerId === w.workerId && x.dpRank === w.dpRank);
    return i < 0 ? 0 : (s.blocks[i] as number);
  };
  const memberships = () => index.stats().memberships;

  it('is bound to the backend of its index', () => {
    expect(applier.backend).toBe(backend);
  });

  // ---- dynamo ------------------------------------------------------------------------------

  it('applies an envelope of named RouterEvents with hashes above 2^63', () => {
    const w = U64_MAX - 1n;
    const r = dyn(
      envelope(7n, 0n, [
        routerEvent(
          w,
          0,
          1,
          stored(null, [
            [BIG, U64_MAX],
            [BIG - 1n, 1n << 63n],
          ]),
        ),
        routerEvent(w, 0, 2, stored(BIG - 1n, [[BIG - 2n, 3n]])),
        routerEvent(w, 0, 3, removed([BIG - 2n])),
      ]),
    );
    expect(r).toEqual({
      envelope: { publisherId: 7n, sequence: 0n, publishedAtMs: 1_700_000_000_000 },
      publisherGap: null,
      applied: { stored: 2, removed: 1, cleared: 0 },
      blocksStored: 3,
      blocksRemoved: 1,
      rejected: {},
      gaps: [],
      resets: [],
      blockSizeMismatches: [],
      workers: [wk(w)],
    } satisfies EventApplyReport);
    expect(depth(wk(w), [U64_MAX, 1n << 63n, 3n])).toBe(2);
    expect(index.treeSize(wk(w))).toBe(2);
  });

  it('writes > 2^63 hashes as uint64 on the wire (the fixture is honest)', () => {
    const bytes = [...encode(block(BIG, 1n))];
    const needle = [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb];
    expect(bytes.some((_, i) => needle.every((b, j) => bytes[i + j] === b))).toBe(true);
  });

  it('accepts a bare RouterEvent, an array of them, positional and index-keyed forms', () => {
    let r = dyn(routerEvent(1n, 0, 1, stored(null, [[10n, 100n]])));
    expect([r.envelope, r.applied.stored]).toEqual([null, 1]);
    r = dyn([
      routerEvent(1n, 0, 2, stored(10n, [[11n, 101n]])),
      routerEvent(2n, 1, 1, stored(null, [[10n, 100n]])),
    ]);
    expect(r.applied.stored).toBe(2);
    expect(r.workers).toEqual([wk(1n), wk(2n, 1)]);
    // [worker_id, storage_tier, residency_domain, event] with positional inner structs.
    const positional: M = [
      3n,
      'device',
      'worker',
      [
        1n,
        map({
          stored: [
            null,
            null,
            [
              [10n, 100n, null],
              [11n, 101n, null],
            ],
          ],
        }),
        0n,
      ],
    ];
    expect(dyn(positional).applied.stored).toBe(1);
    expect(depth(wk(3n), [100n, 101n])).toBe(2);
    // Field indexes as map keys and variant indexes, as serde accepts them.
    const byIndex = new MapM([
      [0n, 4n],
      [
        3n,
        new MapM([
          [0n, 1n],
          [1n, new MapM([[0n, map({ parent_hash: null, blocks: [block(10n, 100n)] })]])],
        ]),
      ],
    ]);
    expect(dyn(byIndex).applied.stored).toBe(1);
    expect(depth(wk(4n), [100n])).toBe(1);
  });

  it('follows serde for missing, extra, repeated and unknown fields', () => {
    const mapForm = routerEvent(1n, 0, 1, map({ stored: map({ blocks: [block(1n, 1n)] }) }));
    expect(dyn(mapForm).applied.stored).toBe(1);
    const shortArray = routerEvent(1n, 0, 2, map({ stored: [null, null] }));
    expect(dyn(shortArray).rejected).toEqual({ malformed: 1 });
    const long = routerEvent(1n, 0, 3, map({ removed: [[1n], 9n] }));
    expect(dyn(long).rejected).toEqual({ malformed: 1 });
    const dup = new MapM([
      ['worker_id', 1n],
      ['worker_id', 2n],
      ['event', map({ event_id: 4n, data: cleared() })],
    ]);
    expect(dyn(dup).rejected).toEqual({ malformed: 1 });
    const extra = map({
      worker_id: 1n,
      future_field: [1n, 'x'],
      event: map({ event_id: 5n, data: cleared(), also_new: null }),
    });
    expect(dyn(extra).applied.cleared).toBe(1);
    // A key that is neither a string nor an integer is malformed.
    const floatKey = new MapM([
      [1.5, 1n],
      ['worker_id', 1n],
      ['event', map({ event_id: 6n, data: cleared() })],
    ]);
    expect(dyn(floatKey).rejected).toEqual({ malformed: 1 });
  });

  it('keeps JSON integers exact up to u64::MAX', () => {
    const one = `{"worker_id":18446744073709551615,"storage_tier":"device","event":{"event_id":1,"data":{"stored":{"parent_hash":null,"blocks":[{"block_hash":${BIG},"tokens_hash":18446744073709551615}]}},"dp_rank":0}}`;
    let r = json(one);
    expect([r.applied.stored, r.blocksStored, r.rejected]).toEqual([1, 1, {}]);
    expect(depth(wk(U64_MAX), [U64_MAX])).toBe(1);
    const many = `[{"worker_id":18446744073709551615,"event":{"event_id":2,"data":{"removed":{"block_hashes":[${BIG}]}}}},
      {"worker_id":5,"event":{"event_id":1,"data":"cleared"}},
      {"worker_id":5,"event":{"event_id":2,"data":{"cleared":null}}}]`;
    r = json(many);
    expect([r.applied.removed, r.applied.cleared, r.blocksRemoved]).toEqual([1, 2, 1]);
    expect(depth(wk(U64_MAX), [U64_MAX])).toBe(0);
    // 2^64 is not a u64; a float is not an integer; negative hashes are cast bitwise.
    const tooBig = '{"worker_id":18446744073709551616,"event":{"event_id":1,"data":"cleared"}}';
    expect(json(tooBig).rejected).toEqual({ malformed: 1 });
    const float = '{"worker_id":1.0,"event":{"event_id":1,"data":"cleared"}}';
    expect(json(float).rejected).toEqual({ malformed: 1 });
    const negative =
      '{"worker_id":9,"event":{"event_id":1,"data":{"stored":{"parent_hash":null,"blocks":[{"block_hash":-5,"tokens_hash":-1}]}}}}';
    expect(json(negative).applied.stored).toBe(1);
    expect(depth(wk(9n), [U64_MAX])).toBe(1);
    r = json(
      '{"worker_id":9,"event":{"event_id":2,"data":{"removed":{"block_hashes":[18446744073709551611]}}}}',
    );
    expect(r.applied.removed).toBe(1); // -5 and 18446744073709551611 are the same block
    // Not JSON, and trailing garbage (serde_json rejects both).
    expect(json('{').rejected).toEqual({ malformed: 1 });
    expect(json('[] x').rejected).toEqual({ malformed: 1 });
  });

  it("parses JSON with serde_json's rules", () => {
    // A cleared event of its own worker (id 1), so each message is independent.
    let next = 100;
    const ev = (extra = '') =>
      `{${extra}"worker_id":${next++},"event":{"event_id":1,"data":"cleared"}}`;
    /** `[x, event]`: the event is applied iff `x` parses (a non-event `x` is one malformed event). */
    const probe = (x: string) => json(`[${x}, ${ev()}]`);
    // A repeated key takes the last value (no error, unlike msgpack maps).
    expect(json(ev('"worker_id":"x",')).applied.cleared).toBe(1);
    // Escapes, paired surrogates, whitespace; lone surrogates fail the whole message.
    expect(
      json(` \t\r\n${ev('"session_id":"a\\"\\u00e9\\ud83d\\ude00\\/\\b\\f\\n\\r\\t",')} `).applied
        .cleared,
    ).toBe(1);
    for (const bad of [
      '"\\ud800"',
      '"\\udc00x"',
      '"\\ud800\\u0041"',
      '"\\ud800\\n"',
      '"\\x"',
      '"\\u12"',
    ]) {
      const r = probe(bad);
      expect([r.rejected, r.applied.cleared], bad).toEqual([{ malformed: 1 }, 0]);
    }
    // A session id that is not a string fails that event only.
    let r = json(`[${ev('"session_id":1,')}, ${ev()}]`);
    expect([r.rejected, r.applied.cleared]).toEqual([{ malformed: 1 }, 1]);
    // Numbers: leading zeros, bare signs, missing digits, infinities are errors.
    for (const bad of [
      '01',
      '-',
      '1.',
      '.5',
      '1e',
      '1e+',
      '1e400',
      '-1e400',
      '+1',
      '1ee1',
      'tru',
      'nul',
      '1'.repeat(400),
    ]) {
      r = probe(bad);
      expect([r.rejected, r.applied.cleared], bad).toEqual([{ malformed: 1 }, 0]);
    }
    // Valid numbers. An integer first element makes the array one positional RouterEvent
    // (so the event is not applied); a float does not: this tells u64/i64 from f64.
    for (const float of [
      '-0',
      '1e-400',
      '0e99999999999',
      '-9223372036854775809',
      '18446744073709551616',
      '1.5E+3',
      '0.0',
    ]) {
      r = probe(float);
      expect([r.rejected, r.applied.cleared], float).toEqual([{ malformed: 1 }, 1]);
    }
    for (const int of ['0', '-1', '-9223372036854775808', '18446744073709551615']) {
      r = probe(int);
      expect([r.rejected, r.applied.cleared], int).toEqual([{ malformed: 1 }, 0]);
    }
    for (const other of ['true', 'null', '"x"', '{}', '[]']) {
      r = probe(other);
      expect([r.rejected, r.applied.cleared], other).toEqual([{ malformed: 1 }, 1]);
    }
    // Trailing commas.
    for (const bad of ['[1,]', '{"a":1,}', '[,1]', '{,}', '{"a" 1}', '{1:2}']) {
      r = probe(bad);
      expect([r.rejected, r.applied.cleared], bad).toEqual([{ malformed: 1 }, 0]);
    }
    // Raw control characters and invalid UTF-8 inside strings fail the message.
    const raw = new TextEncoder().encode(ev('"session_id":"ab",'));
    const at = raw.indexOf(0x61); // the 'a' of "ab"
    for (const b of [0x01, 0xff, 0xc0]) {
      const bytes = raw.slice();
      bytes[at] = b;
      expect(apply('dynamo-json', bytes).rejected).toEqual({ malformed: 1 });
    }
    // A UTF-8 BOM is not whitespace; a BOM inside a string is kept (and is valid).
    expect(apply('dynamo-json', Uint8Array.from([0xef, 0xbb, 0xbf, 0x5b, 0x5d])).rejected).toEqual({
      malformed: 1,
    });
    expect(json(ev('"session_id":"\ufeff",')).applied.cleared).toBe(1);
    // Nesting: 64 levels are read, 65 are not (the msgpack reader's limit).
    r = json(`[${ev()}, ${'['.repeat(63)}${']'.repeat(63)}]`);
    expect([r.rejected, r.applied.cleared]).toEqual([{ malformed: 1 }, 1]);
    r = json(`[${ev()}, ${'['.repeat(64)}${']'.repeat(64)}]`);
    expect([r.rejected, r.applied.cleared]).toEqual([{ malformed: 1 }, 0]);
    r = json(`[${ev()}, ${'{"a":'.repeat(63)}1${'}'.repeat(63)}]`);
    expect([r.rejected, r.applied.cleared]).toEqual([{ malformed: 1 }, 1]);
    expect(json('[]').rejected).toEqual({});
  });

  it('handles unknown variants, lower tiers and residency domains like Dynamo', () => {
    const moved = routerEvent(1n, 0, 1, map({ moved: map({ block_hashes: [] }) }));
    expect(dyn(moved).rejected).toEqual({ unknown_variant: 1 });
    let ev = with_(routerEvent(1n, 0, 2, stored(null, [[1n, 1n]])), 'storage_tier', 'quantum');
    expect(dyn(ev).rejected).toEqual({ unknown_variant: 1 });
    // A lower tier goes to Dynamo's lower-tier indexer, not the device tree.
    ev = with_(routerEvent(1n, 0, 3, stored(null, [[1n, 1n]])), 'storage_tier', 'host_pinned');
    let r = dyn(ev);
    expect([r.applied.stored, r.rejected]).toEqual([0, {}]);
    expect(depth(wk(1n), [1n])).toBe(0);
    ev = with_(routerEvent(1n, 0, 4, stored(null, [[1n, 1n]])), 'residency_domain', 'galaxy');
    expect(dyn(ev).rejected).toEqual({ unknown_variant: 1 });
    ev = with_(routerEvent(1n, 0, 5, stored(null, [[1n, 1n]])), 'residency_domain', null);
    expect(dyn(ev).rejected).toEqual({ malformed: 1 });
    ev = with_(
      with_(routerEvent(1n, 0, 6, stored(null, [[1n, 1n]])), 'residency_domain', 'cache_owner'),
      'storage_tier',
      'disk',
    );
    r = dyn(ev);
    expect([r.applied, r.rejected]).toEqual([{ stored: 0, removed: 0, cleared: 0 }, {}]);
    // A cache-owner event in the device tier is dropped.
    ev = with_(routerEvent(2n, 0, 1, stored(null, [[1n, 1n]])), 'residency_domain', 'cache_owner');
    expect(dyn(ev).applied.stored).toBe(0);
    expect(depth(wk(2n), [1n])).toBe(0);
    // A clear in any tier reaches the device tree (worker domain).
    dyn(routerEvent(1n, 0, 7, stored(null, [[1n, 1n]])));
    expect(depth(wk(1n), [1n])).toBe(1);
    ev = with_(routerEvent(1n, 0, 8, cleared()), 'storage_tier', 'disk');
    expect(dyn(ev).applied.cleared).toBe(1);
    expect(depth(wk(1n), [1n])).toBe(0);
  });

  it('skips a bad event and applies the rest; index outcomes are per event', () => {
    const bad = map({ worker_id: 'seven', event: map({ event_id: 1n, data: cleared() }) });
    let r = dyn(
      envelope(1n, 0n, [
        routerEvent(1n, 0, 1, stored(null, [[1n, 10n]])),
        bad,
        routerEvent(1n, 0, 2, map({ stored: 'not a struct' })),
        routerEvent(1n, 0, 2, stored(1n, [[2n, 20n]])),
      ]),
    );
    expect([r.applied.stored, r.rejected]).toEqual([2, { malformed: 2 }]);
    expect(depth(wk(1n), [10n, 20n])).toBe(2);
    r = dyn([
      routerEvent(1n, 0, 3, stored(999n, [[3n, 30n]])),
      routerEvent(1n, 0, 4, removed([424242n])),
      routerEvent(1n, 0, 5, stored(5n, [[5n, 50n]])),
    ]);
    expect(r.rejected).toEqual({
      parent_not_found: 1,
      block_not_found: 1,
      invalid_block_sequence: 1,
    });
    // Index counters: block_not_found still counts as applied (Dynamo's RadixTree).
    expect(index.stats().counters).toEqual({
      applied: 3,
      parentNotFound: 1,
      blockNotFound: 1,
      invalidBlockSequence: 1,
    });
  });

  it('rejects every truncation of a message and ignores trailing bytes', () => {
    const msg = encode(
      envelope(1n, 0n, [
        routerEvent(
          1n,
          0,
          1,
          stored(null, [
            [BIG, 1n],
            [2n, 2n],
          ]),
        ),
        routerEvent(1n, 0, 2, removed([2n])),
      ]),
    );
    for (let cut = 0; cut < msg.length; cut++) {
      const r = apply('dynamo', msg.subarray(0, cut));
      expect(r.applied.stored + r.applied.removed, `cut ${cut}`).toBe(0);
      expect(r.rejected.malformed ?? 0, `cut ${cut}`).toBeGreaterThanOrEqual(1);
    }
    expect(memberships()).toBe(0);
    const padded = Uint8Array.from([...msg, 0xc1, 0xff]);
    expect(apply('dynamo', padded).applied.stored).toBe(1);
    // Hostile lengths: a huge claimed array / bin with no data.
    for (const bytes of [
      [0xdd, 0xff, 0xff, 0xff, 0xff],
      [0xc6, 0xff, 0xff, 0xff, 0xff],
      [0xdf, 0xff, 0xff, 0xff, 0xff],
      [0xc1],
      [],
    ]) {
      expect(apply('dynamo', Uint8Array.from(bytes)).rejected).toEqual({ malformed: 1 });
      expect(apply('vllm', Uint8Array.from(bytes), { workerId: 1n }).rejected).toEqual({
        malformed: 1,
      });
    }
    // Depth: 64 nested arrays are one value, 65 are not.
    const nest = (n: number): M => (n === 0 ? null : [nest(n - 1)]);
    let r = dyn([routerEvent(7n, 0, 1, cleared()), nest(63)]);
    expect([r.rejected, r.applied.cleared]).toEqual([{ malformed: 1 }, 1]);
    r = dyn([routerEvent(7n, 0, 2, cleared()), nest(64)]);
    expect([r.rejected, r.applied.cleared]).toEqual([{ malformed: 1 }, 0]);
  });

  it('skips duplicates, clears on gaps and restarts, applies legacy clears at any higher id', () => {
    const w = wk(1n);
    for (const id of [1n, 2n, 3n]) {
      dyn(routerEvent(1n, 0, id, stored(id > 1n ? id - 1n : null, [[id, 10n * id]])));
    }
    expect(depth(w, [10n, 20n, 30n])).toBe(3);
    let r = dyn(routerEvent(1n, 0, 2, removed([1n])));
    expect(r.rejected).toEqual({ duplicate: 1 });
    expect(r.workers).toEqual([w]);
    expect(depth(w, [10n, 20n, 30n])).toBe(3);
    // A gap: reported; the holder is cleared, then the event applied.
    r = dyn(routerEvent(1n, 0, 6, stored(null, [[7n, 70n]])));
    expect(r.gaps).toEqual([{ workerId: 1n, dpRank: 0, expected: 4n, got: 6n }]);
    expect([r.resets, r.applied.stored]).toEqual([[], 1]);
    expect([depth(w, [10n]), depth(w, [70n])]).toEqual([0, 1]);
    dyn(routerEvent(1n, 1, 1, stored(null, [[1n, 10n]])));
    // Back at the first id: a restart clears the holder first.
    r = dyn(routerEvent(1n, 0, 1, stored(null, [[8n, 80n]])));
    expect(r.resets).toEqual([w]);
    expect([depth(w, [70n]), depth(w, [80n]), depth(wk(1n, 1), [10n])]).toEqual([0, 1, 1]);
    r = dyn(routerEvent(1n, 0, 2, stored(8n, [[9n, 90n]])));
    expect([r.resets, r.gaps, r.rejected]).toEqual([[], [], {}]);
    // A legacy clear (no residency_domain) is applied at any id above the last.
    const clear = without(routerEvent(1n, 0, 10, cleared()), 'residency_domain');
    r = dyn(clear);
    expect([r.applied.cleared, r.gaps.length]).toEqual([1, 1]);
    expect(depth(w, [80n])).toBe(0);
    expect(dyn(clear).rejected).toEqual({ duplicate: 1 });
    // Resets are not events: the index counted the stores and the clear only.
    expect(index.stats().counters.applied).toBe(8);
    // Forgetting the worker forgets its ids: id 1 is a fresh start.
    applier.forgetWorker(1n);
    r = dyn(routerEvent(1n, 0, 1, stored(null, [[8n, 80n]])));
    expect([r.resets, r.gaps]).toEqual([[], []]);
  });

  it('keeps a restarted holder unknown when its first event is not for the device tree', () => {
    dyn(routerEvent(5n, 0, 3, stored(null, [[1n, 1n]])));
    index.removeWorker(5n);
    expect(index.stats().workers).toBe(0);
    const r = dyn(with_(routerEvent(5n, 0, 1, stored(null, [[1n, 1n]])), 'storage_tier', 'disk'));
    expect(r.resets).toEqual([wk(5n)]);
    expect(index.stats()).toMatchObject({ workers: 0, counters: { applied: 1 } });
  });

  it('reports publisher gaps from the envelope sequence', () => {
    const ev = (id: number) => routerEvent(3n, 0, id, removed([]));
    expect(dyn(envelope(9n, 0n, [ev(1)])).publisherGap).toBeNull();
    expect(dyn(envelope(9n, 1n, [ev(2)])).publisherGap).toBeNull();
    expect(dyn(envelope(9n, 5n, [ev(3)])).publisherGap).toEqual({
      publisherId: 9n,
      expected: 2n,
      got: 5n,
    });
    expect(dyn(envelope(10n, 7n, [ev(4)])).publisherGap).toBeNull();
    expect(dyn(envelope(9n, 6n, [ev(5)])).publisherGap).toBeNull();
    expect(dyn(envelope(9n, U64_MAX, [ev(6)])).publisherGap).toEqual({
      publisherId: 9n,
      expected: 7n,
      got: U64_MAX,
    });
    expect(dyn(envelope(9n, U64_MAX, [ev(7)])).publisherGap).toBeNull();
    applier.forgetWorker(9n);
    expect(dyn(envelope(9n, 100n, [ev(8)])).publisherGap).toBeNull();
  });

  it('re-applies a replayed envelope without tracking its sequence', () => {
    const ev = (id: number) => routerEvent(3n, 0, id, removed([]));
    dyn(envelope(9n, 10n, [ev(1)]));
    const r = apply('dynamo', encode(envelope(9n, 4n, [ev(2)])), { replay: true });
    expect([r.envelope, r.publisherGap, r.applied.removed]).toEqual([null, null, 1]);
    // The publisher's last sequence is still 10.
    expect(dyn(envelope(9n, 11n, [ev(3)])).publisherGap).toBeNull();
    // Event ids are checked as usual: a replayed duplicate is skipped.
    expect(apply('dynamo', encode(envelope(9n, 4n, [ev(2)])), { replay: true }).rejected).toEqual({
      duplicate: 1,
    });
    // A replayed gap is reported but does not clear the holder.
    dyn(routerEvent(4n, 0, 1, stored(null, [[1n, 10n]])));
    const g = apply('dynamo', encode(routerEvent(4n, 0, 5, stored(1n, [[2n, 20n]]))), {
      replay: true,
    });
    expect([g.gaps.length, depth(wk(4n), [10n, 20n])]).toEqual([1, 2]);
  });

  it('applies a tree dump whatever its ids, without moving any cursor', () => {
    const w = wk(6n);
    dyn(routerEvent(6n, 0, 10, stored(null, [[1n, 10n]])));
    // A dump: device tier ids 0..1, then a lower tier restarting at 0, then ids below the cursor.
    const dump = encode([
      routerEvent(6n, 0, 0, stored(null, [[2n, 20n]])),
      routerEvent(6n, 0, 1, stored(2n, [[3n, 30n]])),
      with_(routerEvent(6n, 0, 0, stored(null, [[4n, 40n]])), 'storage_tier', 'host_pinned'),
      routerEvent(6n, 0, 0, stored(3n, [[5n, 50n]])),
    ]);
    const r = apply('dynamo', dump, { ignoreIds: true });
    expect([r.resets, r.gaps, r.rejected, r.applied.stored]).toEqual([[], [], {}, 3]);
    expect([depth(w, [10n]), depth(w, [20n, 30n, 50n])]).toEqual([1, 3]);
    // The cursor is still 10: 11 is next, 10 a duplicate.
    expect(dyn(routerEvent(6n, 0, 10, removed([]))).rejected).toEqual({ duplicate: 1 });
    expect(dyn(routerEvent(6n, 0, 11, removed([]))).gaps).toEqual([]);
  });

  it('sets or forgets the cursor of one holder', () => {
    const w = wk(1n);
    dyn(routerEvent(1n, 0, 3, stored(null, [[1n, 10n]])));
    dyn(routerEvent(1n, 1, 3, stored(null, [[1n, 10n]])));
    applier.setCursor(w, 8n);
    expect(dyn(routerEvent(1n, 0, 6, stored(1n, [[2n, 20n]]))).rejected).toEqual({ duplicate: 1 });
    let r = dyn(routerEvent(1n, 0, 9, stored(1n, [[3n, 30n]])));
    expect([r.gaps, r.resets, depth(w, [10n, 30n])]).toEqual([[], [], 2]);
    // Forgotten: the next id is the first (a dump's synthetic ids 0.. apply in order).
    applier.setCursor(w, null);
    r = dyn(routerEvent(1n, 0, 0, stored(null, [[4n, 40n]])));
    expect([r.gaps, r.resets, r.applied.stored]).toEqual([[], [], 1]);
    // The other rank kept its cursor.
    expect(dyn(routerEvent(1n, 1, 5, removed([]))).gaps).toEqual([
      { workerId: 1n, dpRank: 1, expected: 4n, got: 5n },
    ]);
    expect(thrownCode(() => applier.setCursor({ workerId: -1n, dpRank: 0 }, 1n))).toBe(
      'invalid_argument',
    );
  });

  it('checks envelope fields; accepts the positional envelope', () => {
    const payload = encode([routerEvent(1n, 0, 1, removed([]))]);
    const missingSeq = map({
      publisher_id: 1n,
      published_at: 0n,
      topic: 'kv-events',
      payload,
    });
    expect(dyn(missingSeq)).toMatchObject({ envelope: null, rejected: { malformed: 1 } });
    const notMsgpack = with_(envelope(1n, 0n, []), 'payload', Uint8Array.from([0xc1]));
    const r = dyn(notMsgpack);
    expect(r.rejected).toEqual({ malformed: 1 });
    expect(r.envelope).not.toBeNull();
    const positional: M = [1n, 0n, 5n, 'kv-events', payload];
    expect(dyn(positional).envelope?.publishedAtMs).toBe(5);
    // published_at keeps its u64 value as a number (rounded above 2^53).
    expect(dyn([2n, 0n, 2n ** 60n + 1n, 'kv-events', payload]).envelope?.publishedAtMs).toBe(
      2 ** 60,
    );
    // A topic that is not UTF-8 fails the envelope.
    expect(dyn([1n, 1n, 5n, Uint8Array.from([0xff]), payload]).rejected).toEqual({ malformed: 1 });
  });

  it('validates multimodal block info', () => {
    const info = map({ mm_objects: [map({ mm_hash: BIG, offsets: [[0n, 3n]] })] });
    const ok = map({ block_hash: 1n, tokens_hash: 2n, mm_extra_info: info });
    expect(
      dyn(routerEvent(1n, 0, 1, map({ stored: map({ parent_hash: null, blocks: [ok] }) }))).applied
        .stored,
    ).toBe(1);
    const bad = map({ block_hash: 1n, tokens_hash: 2n, mm_extra_info: 'x' });
    expect(
      dyn(routerEvent(1n, 0, 2, map({ stored: map({ parent_hash: null, blocks: [bad] }) })))
        .rejected,
    ).toEqual({ malformed: 1 });
  });

  // ---- vllm --------------------------------------------------------------------------------

  it('stores the same blocks from the map and tagged-array layouts', () => {
    const t = range(1, 9);
    const l = locals(t);
    expect(l).toEqual([14643705804678351452n, 16777012769546811212n]);
    let r = vllm(batch([storedMap([BIG, 7], null, t)], 0), 1n);
    expect([r.applied.stored, r.blocksStored, r.rejected]).toEqual([1, 2, {}]);
    const asArray: M = ['BlockStored', [-5n, 7n], null, tokens(t), 4n, null, 'GPU'];
    r = vllm(batch([asArray], 0), 2n);
    expect(r.applied.stored).toBe(1);
    expect([depth(wk(1n), l), depth(wk(2n), l)]).toEqual([2, 2]);
    r = vllm(batch([['BlockRemoved', [-5n], 'GPU']]), 1n);
    expect([r.applied.removed, r.blocksRemoved]).toEqual([1, 1]);
    r = vllm(batch([removedMap([BIG])]), 2n);
    expect(r.applied.removed).toBe(1);
    expect([depth(wk(1n), l), depth(wk(2n), l)]).toEqual([0, 0]);
    vllm(batch([storedMap([1], null, range(0, 4))]), 1n);
    expect(vllm(batch([['AllBlocksCleared']]), 1n).applied.cleared).toBe(1);
    expect(vllm(batch([clearedMap()]), 2n).applied.cleared).toBe(1);
    expect(memberships()).toBe(0);
  });

  it('seeds local hashes with the LoRA name and the cache salt', () => {
    const t = range(0, 4);
    expect(locals(t, 'adapter-a')).toEqual([6665157333201000639n]);
    expect(locals(t, undefined, 'tenant-a')).toEqual([17009624042690211646n]);
    expect(locals(t, 'adapter-a', 'tenant-a')).toEqual([8269515957840517240n]);
    const base = () => storedMap([1], null, t);
    const cases: Array<[M, string | undefined, string | undefined]> = [
      [base(), undefined, undefined],
      [with_(base(), 'lora_name', 'adapter-a'), 'adapter-a', undefined],
      [with_(base(), 'cache_salt', 'tenant-a'), undefined, 'tenant-a'],
      [
        with_(with_(base(), 'cache_salt', 'tenant-a'), 'lora_name', 'adapter-a'),
        'adapter-a',
        'tenant-a',
      ],
      [
        with_(with_(base(), 'lora_name', 'adapter-a'), 'extra_keys', [
          ['adapter-a', 'dynamo-cache-salt:tenant-a'],
        ]),
        'adapter-a',
        'tenant-a',
      ],
      [with_(base(), 'cache_salt', ''), undefined, undefined],
      [
        ['BlockStored', hashes([1]), null, tokens(t), 4n, null, null, 'adapter-a'],
        'adapter-a',
        undefined,
      ],
      [
        [
          'BlockStored',
          hashes([1]),
          null,
          tokens(t),
          4n,
          3n,
          null,
          map({ cache_salt: 'tenant-a' }),
        ],
        undefined,
        'tenant-a',
      ],
    ];
    for (const [i, [ev, lora, ns]] of cases.entries()) {
      const w = BigInt(100 + i);
      const r = vllm(batch([ev]), w);
      expect(r.applied.stored, `case ${i}`).toBe(1);
      expect(depth(wk(w), locals(t, lora, ns)), `case ${i}`).toBe(1);
      if (lora || ns) expect(depth(wk(w), locals(t)), `case ${i}`).toBe(0);
    }
  });

  it("lets an unsalted child inherit its parent's namespace", () => {
    const t = range(0, 12);
    vllm(batch([with_(storedMap([1, 2], null, t.slice(0, 8)), 'cache_salt', 'tenant-a')]), 1n);
    const r = vllm(batch([storedMap([3], 2, t.slice(8))]), 1n);
    expect(r.applied.stored).toBe(1);
    expect(depth(wk(1n), locals(t, undefined, 'tenant-a'))).toBe(3);
  });

  it('tells partial blocks from block-size mismatches', () => {
    const w = wk(1n);
    const t = range(0, 10);
    let r = vllm(batch([storedMap([1, 2, 3], null, t)]), 1n);
    expect([r.applied.stored, r.blocksStored, r.rejected]).toEqual([1, 2, { partial_block: 1 }]);
    expect(r.blockSizeMismatches).toEqual([]);
    expect(depth(w, locals(t))).toBe(2);
    r = vllm(batch([storedMap([4], 2, [8, 9], 2)]), 1n);
    expect([r.applied.stored, r.rejected, r.blockSizeMismatches]).toEqual([
      0,
      { partial_block: 1 },
      [],
    ]);
    r = vllm(batch([storedMap([5], null, range(0, 8), 8)]), 1n);
    expect(r.rejected).toEqual({ block_size_mismatch: 1 });
    expect(r.blockSizeMismatches).toEqual([{ workerId: 1n, dpRank: 0, expected: 4, got: 8 }]);
    r = vllm(batch([storedMap([6, 7], null, range(0, 4), 2)]), 1n);
    expect([r.rejected, r.blockSizeMismatches[0]?.got]).toEqual([{ block_size_mismatch: 1 }, 2]);
    r = vllm(batch([storedMap([8], null, range(0, 4), 2)]), 1n);
    expect(r.rejected).toEqual({ block_size_mismatch: 1 });
    // A block size beyond 2^53 is reported as the nearest number.
    r = vllm(batch([storedMap([8], null, range(0, 4), 2n ** 60n + 1n)]), 1n);
    expect(r.blockSizeMismatches[0]?.got).toBe(2 ** 60);
    expect(index.treeSize(w)).toBe(2);
    // Lower tiers are not classified.
    r = vllm(batch([with_(storedMap([9], null, range(0, 16), 16), 'medium', 'CPU')]), 1n);
    expect([r.rejected, r.applied.stored]).toEqual([{}, 0]);
  });

  it('rejects bad events one by one, and a message that is not a batch as a whole', () => {
    const t = range(0, 4);
    const r = vllm(
      batch([
        storedMap([1], null, t),
        map({ type: 'BlockMoved', block_hashes: hashes([1]) }),
        ['BlockTeleported', hashes([1])],
        map({ type: 'BlockStored', block_hashes: hashes([2]) }),
        with_(storedMap([3], null, t), 'medium', 7n),
        with_(storedMap([3], null, t), 'token_ids', [-1n]),
        [null, hashes([1])],
        5n,
        removedMap([424242]),
        storedMap([2], 1, range(4, 8)),
      ]),
      1n,
    );
    expect(r.applied.stored).toBe(2);
    expect(r.rejected).toEqual({ malformed: 5, unknown_variant: 2, block_not_found: 1 });
    expect(depth(wk(1n), locals(range(0, 8)))).toBe(2);
    for (const bad of [
      1n,
      [0.0],
      ['ts', []],
      [0.0, [], 'x'],
      [0.0, [], 2n ** 32n],
      [0.0, [], -(2n ** 31n) - 1n],
    ]) {
      expect(vllm(bad, 1n).rejected).toEqual({ malformed: 1 });
    }
  });

  it("takes the worker from the context and the dp rank from the batch, else the context's, else 0", () => {
    const t = range(0, 4);
    const l = locals(t);
    const ev = () => storedMap([1], null, t);
    let r = apply('vllm', encode(batch([ev(), ev()])), {});
    expect(r.rejected).toEqual({ no_worker: 2 });
    expect(r.workers).toEqual([]);
    r = apply('vllm', encode(batch([ev()], 3)), { workerId: 5n, dpRank: 2 });
    expect(r.workers).toEqual([wk(5n, 3)]);
    r = apply('vllm', encode(batch([ev()])), { workerId: 5n, dpRank: 2 });
    expect(r.workers).toEqual([wk(5n, 2)]);
    r = vllm(batch([ev()]), 5n);
    expect(r.workers).toEqual([wk(5n, 0)]);
    for (const d of [0, 2, 3]) expect(depth(wk(5n, d), l)).toBe(1);
    expect(vllm([0.5, [ev()]], 6n).workers).toEqual([wk(6n, 0)]);
    expect(vllm([1n, [ev()], 1n, 'future'], 6n).workers).toEqual([wk(6n, 1)]);
    // A negative rank is an i32 cast to u32.
    expect(vllm([1n, [ev()], -1n], 7n).workers).toEqual([wk(7n, 2 ** 32 - 1)]);
    // An empty batch touches nobody.
    expect(vllm(batch([]), 8n).workers).toEqual([]);
  });

  it('uses the ZMQ sequence for duplicates, gaps and restarts', () => {
    const w = wk(1n);
    const t = range(0, 12);
    const l = locals(t);
    const ev = (i: number) => storedMap([i + 1], i > 0 ? i : null, t.slice(4 * i, 4 * i + 4));
    expect(vllm(batch([ev(0)]), 1n, 0n).rejected).toEqual({});
    let r = vllm(batch([ev(1), removedMap([1])]), 1n, 0n);
    expect(r.rejected).toEqual({ duplicate: 2 });
    expect(depth(w, l)).toBe(1);
    vllm(batch([ev(1)]), 1n, 1n);
    r = vllm(batch([ev(2)]), 1n, 4n);
    expect(r.gaps).toEqual([{ workerId: 1n, dpRank: 0, expected: 2n, got: 4n }]);
    expect(depth(w, l)).toBe(3);
    r = vllm(batch([ev(0)]), 1n, 0n);
    expect(r.resets).toEqual([w]);
    expect(index.treeSize(w)).toBe(1);
    expect(depth(w, l)).toBe(1);
    expect(index.stats().counters.applied).toBe(4);
  });

  it('filters media, locality, ownership and KV-cache groups like the relay', () => {
    const t = range(0, 4);
    const l = locals(t);
    const w = wk(1n);
    const st = (h: number) => storedMap([h], null, t);
    let r = vllm(
      batch([
        with_(st(1), 'medium', 'CPU_PINNED'),
        with_(st(2), 'medium', 'FS'),
        with_(st(3), 'locality', 'REMOTE'),
        with_(st(4), 'locality', 'ELSEWHERE'),
        with_(st(5), 'ownership', 'kvcr'),
        with_(st(6), 'ownership', 'bob'),
        with_(st(7), 'kv_cache_spec_kind', 'sliding_window'),
        with_(st(8), 'kv_cache_spec_kind', 'warp_attention'),
        with_(st(9), 'group_idx', 1n),
        map({ type: 'Ignored', anything: 1n }),
      ]),
      1n,
    );
    expect([r.applied.stored, r.rejected]).toEqual([0, { unknown_variant: 4 }]);
    expect(depth(w, l)).toBe(0);
    const described = with_(with_(st(10), 'group_idx', 2n), 'kv_cache_spec_kind', 'full_attention');
    vllm(batch([described]), 1n);
    r = vllm(batch([with_(removedMap([10]), 'group_idx', 2n)]), 1n);
    expect(r.applied.removed).toBe(1);
    r = vllm(
      batch([with_(with_(with_(st(11), 'medium', ''), 'locality', 'LOCAL'), 'group_idx', 0n)]),
      1n,
    );
    expect(r.applied.stored).toBe(1);
    expect(depth(w, l)).toBe(1);
  });

  it('reads the trailing metadata of tagged arrays', () => {
    const t = range(0, 4);
    const head = (h: number): M[] => [
      'BlockStored',
      hashes([h]),
      null,
      tokens(t),
      4n,
      null,
      'GPU',
      null,
      null,
    ];
    const sw = [...head(1), 1n, 'sliding_window', 128n, 'LOCAL', null];
    const full = [...head(2), 0n, 'full_attention', null, 'LOCAL'];
    const remote = [...head(3), null, null, null, 'REMOTE', null, 'ignored tail'];
    const legacy = [...head(4), 'mamba'];
    let r = vllm(batch([sw, full, remote, legacy]), 1n);
    expect([r.applied.stored, r.rejected]).toEqual([1, {}]);
    r = vllm(batch([['BlockRemoved', hashes([2]), null, 0n, 'full_attention', null, null]]), 1n);
    expect(r.applied.removed).toBe(1);
  });

  it('ref-counts duplicate stores like the relay', () => {
    const w = wk(1n);
    const t = range(0, 4);
    const l = locals(t);
    vllm(batch([storedMap([1], null, t)]), 1n);
    vllm(batch([storedMap([1], null, t)]), 1n);
    let r = vllm(batch([removedMap([1])]), 1n);
    expect([r.applied.removed, r.blocksRemoved]).toEqual([1, 0]);
    expect(depth(w, l)).toBe(1);
    r = vllm(batch([removedMap([1])]), 1n);
    expect(r.blocksRemoved).toBe(1);
    expect(depth(w, l)).toBe(0);
    vllm(batch([storedMap([1], null, t), storedMap([1], null, t)]), 1n);
    vllm(batch([clearedMap(), storedMap([1], null, t)]), 1n);
    vllm(batch([removedMap([1])]), 1n);
    expect(depth(w, l)).toBe(0);
  });

  it('merges chained stores of one message like the relay', () => {
    const t = range(0, 12);
    let r = vllm(
      batch([
        storedMap([1], null, t.slice(0, 4)),
        storedMap([2], 1, t.slice(4, 8)),
        storedMap([3], 2, t.slice(8, 12)),
      ]),
      1n,
    );
    expect([r.applied.stored, r.blocksStored]).toEqual([3, 3]);
    expect(depth(wk(1n), locals(t))).toBe(3);
    expect(index.stats().counters.applied).toBe(1); // one merged store
    // The coalescer quirk: an all-dropped store keeps its parent and the next root store merges into it.
    r = vllm(
      batch([storedMap([9], 777, range(0, 8), 8), storedMap([10], null, range(50, 54))]),
      2n,
    );
    expect(r.rejected).toEqual({ block_size_mismatch: 1, parent_not_found: 1 });
    expect(index.treeSize(wk(2n))).toBe(0);
    // 128 blocks flush a merged store early.
    const many = range(0, 130).map((i) =>
      storedMap([1000 + i], i > 0 ? 999 + i : null, range(4 * i, 4 * i + 4)),
    );
    r = vllm(batch(many), 3n);
    expect([r.applied.stored, r.blocksStored]).toEqual([130, 130]);
  });

  it('rejects self-referencing stores', () => {
    let r = vllm(batch([storedMap([1, 1], null, range(0, 8))]), 1n);
    expect(r.rejected).toEqual({ invalid_block_sequence: 1 });
    r = vllm(batch([storedMap([5], 5, range(0, 4))]), 1n);
    expect(r.rejected).toEqual({ invalid_block_sequence: 1 });
    expect(memberships()).toBe(0);
  });

  it('hashes Eagle windows and multimodal blocks', () => {
    const t = range(100, 109);
    const bigrams: M = t.slice(0, -1).map((x, i) => [u(x), u(t[i + 1] as number)]);
    let r = vllm(batch([with_(storedMap([1, 2], null, []), 'token_ids', bigrams)]), 1n);
    expect(r.blocksStored).toBe(2);
    const eagle = [
      xxh3_64(leBytes(t.slice(0, 5)), XXH3_SEED),
      xxh3_64(leBytes(t.slice(4, 9)), XXH3_SEED),
    ];
    expect(depth(wk(1n), eagle)).toBe(2);

    const t2 = range(0, 8);
    const mm = (hs: bigint[]) =>
      map({ mm_objects: hs.map((h) => map({ mm_hash: h, offsets: [[0n, 2n]] })) });
    const want = [xxh3_64(leBytes(t2.slice(0, 4), [3n, BIG]), XXH3_SEED), ...locals(t2).slice(1)];
    const explicit = with_(storedMap([1, 2], null, t2), 'block_mm_infos', [mm([BIG, 3n]), null]);
    const marker = (h: bigint) => `${h.toString(16).padStart(16, '0')}${'0'.repeat(48)}`;
    const viaExtraKeys = with_(storedMap([1, 2], null, t2), 'extra_keys', [
      [marker(BIG), [marker(3n), 0n], 'not-a-hash'],
      null,
    ]);
    for (const [i, ev] of [explicit, viaExtraKeys].entries()) {
      const w = BigInt(10 + i);
      r = vllm(batch([ev]), w);
      expect(r.blocksStored, `case ${i}`).toBe(2);
      expect(depth(wk(w), want), `case ${i}`).toBe(2);
    }
  });

  it('rejects every truncation of a vLLM batch as one malformed message', () => {
    const msg = encode(
      batch(
        [storedMap([BIG, 2], null, range(0, 8)), ['BlockRemoved', [-5n], null], clearedMap()],
        1,
      ),
    );
    expect(apply('vllm', msg, { workerId: 1n }).applied.stored).toBe(1);
    for (let cut = 0; cut < msg.length; cut++) {
      expect(apply('vllm', msg.subarray(0, cut), { workerId: 2n }).rejected, `cut ${cut}`).toEqual({
        malformed: 1,
      });
    }
    expect(index.treeSize(wk(2n, 1))).toBe(0);
  });

  // ---- lifecycle ---------------------------------------------------------------------------

  it('forgets a worker: its ids, relay state and publisher sequence', () => {
    const t = range(0, 4);
    vllm(batch([storedMap([1], null, t)]), 1n, 5n);
    vllm(batch([storedMap([1], null, t)]), 1n, 6n);
    applier.forgetWorker(1n);
    index.removeWorker(1n);
    // Sequence 0 is a fresh start (no restart), and the refcount of hash 1 is gone.
    let r = vllm(batch([storedMap([1], null, t)]), 1n, 0n);
    expect([r.resets, r.gaps, r.applied.stored]).toEqual([[], [], 1]);
    r = vllm(batch([removedMap([1])]), 1n, 1n);
    expect(r.blocksRemoved).toBe(1);
    expect(index.treeSize(wk(1n))).toBe(0);
  });

  it('throws only for misuse: unknown codec, bad context, disposed applier or index', async () => {
    const ok = encode(batch([]));
    expect(thrownCode(() => apply('msgpack' as EventCodec, ok))).toBe('invalid_argument');
    expect(thrownCode(() => apply('vllm', ok, { workerId: -1n }))).toBe('invalid_argument');
    expect(thrownCode(() => apply('vllm', ok, { workerId: 1n, sequence: 2n ** 64n }))).toBe(
      'invalid_argument',
    );
    expect(thrownCode(() => applier.forgetWorker(-1n))).toBe('invalid_argument');
    // Garbage never throws.
    expect(apply('dynamo-json', Uint8Array.from([0xff, 0x00])).rejected).toEqual({ malformed: 1 });
    applier.dispose();
    applier.dispose();
    expect(thrownCode(() => apply('vllm', ok, { workerId: 1n }))).toBe('disposed');
    expect(thrownCode(() => applier.forgetWorker(1n))).toBe('disposed');
    // The index outlives its applier; a new applier over a disposed index cannot apply.
    expect(index.stats().workers).toBe(0);
    const other = await createKvIndex(backend);
    const second = await createEventApplier(other, { blockSize: BLOCK });
    other.dispose();
    expect(thrownCode(() => second.apply('vllm', ok, { workerId: 1n }))).toBe('disposed');
    second.dispose();
    await expect(createEventApplier(other, { blockSize: BLOCK })).rejects.toMatchObject({
      code: 'disposed',
    });
    await expect(createEventApplier(index, { blockSize: 0 })).rejects.toMatchObject({
      code: 'invalid_block_size',
    });
    await expect(createEventApplier(index, { blockSize: 1025 })).rejects.toMatchObject({
      code: 'invalid_block_size',
    });
  });
});
