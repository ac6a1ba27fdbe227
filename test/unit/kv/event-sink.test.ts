import { describe, expect, it } from 'vitest';
import { EventSink } from '../../../src/kv/event-sink.js';
import { JsKvIndex } from '../../../src/kv/js/radix-index.js';
import { loadNativeBinding } from '../../../src/kv/native/binding.js';
import { NativeKvIndex } from '../../../src/kv/native/radix-index.js';
import type { KvIndex } from '../../../src/kv/types.js';

const addon = await loadNativeBinding();
const W = { workerId: 2n ** 64n - 1n, dpRank: 1 };
const blocks = (...xs: bigint[]) => ({
  localHashes: BigUint64Array.from(xs),
  externalHashes: BigUint64Array.from(xs.map((x) => x + 100n)),
});

describe.each([
  ['native', () => NativeKvIndex.create(addon) as KvIndex],
  ['js', () => new JsKvIndex() as KvIndex],
])('EventSink over the %s index', (_name, make) => {
  it('counts and logs a missing parent once per worker, drops the event, keeps going', () => {
    const warnings: Array<Record<string, unknown>> = [];
    const log = {
      debug() {},
      info() {},
      error() {},
      warn: (f: Record<string, unknown>) => warnings.push(f),
    };
    const index = make();
    const sink = new EventSink(index, log);
    expect(sink.stored(W, 999n, blocks(1n))).toBe('parent_not_found');
    expect(sink.stored(W, 998n, blocks(2n))).toBe('parent_not_found');
    expect(sink.stored(W, null, blocks(1n, 2n))).toBe('ok');
    expect(sink.removed(W, BigUint64Array.of(7n))).toBe('block_not_found');
    expect(
      sink.stored(W, null, {
        localHashes: BigUint64Array.of(1n),
        externalHashes: new BigUint64Array(2),
      }),
    ).toBe('length_mismatch');
    expect(sink.counts).toEqual({
      ok: 1,
      parent_not_found: 2,
      block_not_found: 1,
      invalid_block_sequence: 0,
      length_mismatch: 1,
    });
    expect(warnings.map((w) => w.outcome)).toEqual([
      'parent_not_found',
      'block_not_found',
      'length_mismatch',
    ]);
    expect(warnings[0]?.workerId).toBe(W.workerId);
    expect(index.findMatches(BigUint64Array.of(1n, 2n), false).blocks).toEqual([2]);
    sink.resetLogBudget();
    sink.stored(W, 997n, blocks(3n));
    expect(warnings).toHaveLength(4);
    index.dispose();
  });
});
