import { describe, expect, it } from 'vitest';
import { JsKvIndex } from '../../../src/kv/js/radix-index.js';
import type { StoredBlocks } from '../../../src/kv/types.js';
import { describeKvIndexContract } from '../../contract/kv-index.contract.js';

const u64s = (...xs: bigint[]) => BigUint64Array.from(xs);
const blocks = (locals: bigint[], offset = 100n): StoredBlocks => ({
  localHashes: u64s(...locals),
  externalHashes: u64s(...locals.map((l) => l + offset)),
});
const A = { workerId: 1n, dpRank: 0 };

describeKvIndexContract('js', () => new JsKvIndex());

describe('JsKvIndex', () => {
  it('is the js backend', () => {
    expect(new JsKvIndex().backend).toBe('js');
  });

  it('takes dp ranks modulo 2^32, as the native u32 conversion does', () => {
    const idx = new JsKvIndex();
    expect(idx.applyStored({ workerId: 1n, dpRank: -1 }, null, blocks([1n]))).toBe('ok');
    expect(idx.treeSize({ workerId: 1n, dpRank: 2 ** 32 - 1 })).toBe(1);
    expect(idx.findMatches(u64s(1n), false).workers).toEqual([
      { workerId: 1n, dpRank: 2 ** 32 - 1 },
    ]);
  });

  it("skips a removed holder's stale membership when splitting (Dynamo panics here)", () => {
    // Same case as index.rs `split_skips_forgotten_holders_instead_of_panicking`.
    // A stores N[1,2] (externals 11,12), then re-stores 11,12 under locals 7,8:
    // its lookup moves to M[7,8], so clearing A never visits N and A stays a
    // stale full holder of N. B's divergent store splits N at 1 and must
    // re-point A's lookup for the suffix, but A has none: Dynamo's `unwrap()`
    // panics; kv-epp gives A no entries and goes on.
    const idx = new JsKvIndex();
    const B = { workerId: 2n, dpRank: 0 };
    const pairs = (ls: bigint[], es: bigint[]) => ({
      localHashes: u64s(...ls),
      externalHashes: u64s(...es),
    });
    expect(idx.applyStored(A, null, pairs([1n, 2n], [11n, 12n]))).toBe('ok');
    expect(idx.applyStored(A, null, pairs([7n, 8n], [11n, 12n]))).toBe('ok');
    idx.clear(A);
    // The stale membership still scores (Dynamo does the same).
    expect(idx.findMatches(u64s(1n, 2n), false)).toEqual({
      workers: [A],
      blocks: [2],
      treeSizes: [0],
    });
    expect(idx.applyStored(B, null, pairs([1n, 9n], [21n, 29n]))).toBe('ok');
    expect(idx.treeSize(B)).toBe(2);
    expect(idx.findMatches(u64s(1n, 9n), false)).toEqual({
      workers: [A, B],
      blocks: [1, 2],
      treeSizes: [0, 2],
    });
  });

  it('frees every node once all holders are gone', () => {
    const idx = new JsKvIndex();
    // A: [1,2,3,4]; B splits it at 2 and adds [7,8]; A extends from 104; B removes 201.
    idx.applyStored(A, null, blocks([1n, 2n, 3n, 4n]));
    idx.applyStored({ workerId: 2n, dpRank: 0 }, null, blocks([1n, 2n, 7n, 8n], 200n));
    idx.applyStored(A, 104n, blocks([5n]));
    idx.applyRemoved({ workerId: 2n, dpRank: 0 }, u64s(201n));
    expect(idx.nodeCount()).toBeGreaterThan(1);
    idx.removeWorker(1n);
    idx.removeWorker(2n);
    expect(idx.stats().memberships).toBe(0);
    expect(idx.nodeCount()).toBe(1);
  });
});
