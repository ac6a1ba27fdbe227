import { beforeAll, describe, expect, it } from 'vitest';
import { KvEppError } from '../../src/errors.js';
import type { BlockHasher } from '../../src/kv/types.js';

// Vectors computed with Dynamo's hashing (xxhash-rust xxh3_64_with_seed).
const range = (from: number, to: number) =>
  Uint32Array.from({ length: to - from + 1 }, (_, i) => from + i);
const u64s = (...xs: bigint[]) => BigUint64Array.from(xs);

/**
 * Block-hasher contract: every backend must pass it unchanged. Expected values
 * are Dynamo's (dynamo-kv-router 1.6.1 / python-xxhash), not our own output.
 */
export function describeBlockHasherContract(
  name: string,
  make: () => Promise<BlockHasher> | BlockHasher,
): void {
  describe(`BlockHasher contract: ${name}`, () => {
    let hasher: BlockHasher;
    beforeAll(async () => {
      hasher = await make();
    });

    it.each([
      {
        name: '0..15 / 16',
        tokens: range(0, 15),
        bs: 16,
        local: [15310707395893867146n],
        seq: [15310707395893867146n],
      },
      {
        name: '1..32 / 16',
        tokens: range(1, 32),
        bs: 16,
        local: [16863443419780771464n, 2287610619914608821n],
        seq: [16863443419780771464n, 12466389667045779788n],
      },
      {
        name: '0..3 / 4',
        tokens: range(0, 3),
        bs: 4,
        local: [9143094415614847814n],
        seq: [9143094415614847814n],
      },
      {
        name: '1..8 / 4',
        tokens: range(1, 8),
        bs: 4,
        local: [14643705804678351452n, 16777012769546811212n],
        seq: [14643705804678351452n, 4945711292740353085n],
      },
    ])('hashes $name like Dynamo', ({ tokens, bs, local, seq }) => {
      const h = hasher.hash(tokens, bs);
      expect(h.local).toEqual(u64s(...local));
      expect(h.sequence).toEqual(u64s(...seq));
    });

    it.each([
      { opts: { loraName: 'adapter-a' }, seed: 8842669519798868182n, local: 6665157333201000639n },
      {
        opts: { cacheNamespace: 'tenant-a' },
        seed: 1948188790972764086n,
        local: 17009624042690211646n,
      },
      {
        opts: { loraName: 'adapter-a', cacheNamespace: 'tenant-a' },
        seed: 10790858310771630931n,
        local: 8269515957840517240n,
      },
    ])('folds LoRA/namespace into the seed: $opts', ({ opts, local }) => {
      expect(hasher.hash(range(0, 3), 4, opts).local).toEqual(u64s(local));
      // Still right after the engine was reset to other seeds in between.
      hasher.hash(range(0, 15), 16);
      expect(hasher.hash(range(0, 3), 4, opts).local).toEqual(u64s(local));
    });

    it('treats empty LoRA/namespace strings as absent', () => {
      expect(hasher.hash(range(0, 3), 4, { loraName: '', cacheNamespace: '' }).local).toEqual(
        u64s(9143094415614847814n),
      );
    });

    it.each([11, 32, 64])('hashes only full blocks (block size %i)', (bs) => {
      const count = (n: number) => hasher.hash(range(1, n), bs).local.length;
      expect(count(bs)).toBe(1);
      expect(count(bs + 1)).toBe(1);
      expect(count(2 * bs + 1)).toBe(2);
      expect(hasher.hash(new Uint32Array(0), bs).local.length).toBe(0);
      expect(hasher.hash(new Uint32Array(0), bs).sequence.length).toBe(0);
    });

    it('hashes long blocks (> 240 bytes) and token views with an offset', () => {
      const tokens = range(0, 2 * 1024 + 7);
      const whole = hasher.hash(tokens, 1024);
      const shifted = new Uint32Array(tokens.length + 3);
      shifted.set(tokens, 3);
      expect(hasher.hash(shifted.subarray(3), 1024)).toEqual(whole);
      const opts = { loraName: 'adapter-a' };
      expect(hasher.hash(shifted.subarray(3), 1024, opts)).toEqual(hasher.hash(tokens, 1024, opts));
      expect(whole.local[0]).not.toBe(hasher.hash(tokens, 1024, opts).local[0]);
    });

    it.each([0, 1025, 1.5, -1, Number.NaN])('rejects block size %s', (bs) => {
      const call = () => hasher.hash(range(0, 15), bs);
      expect(call).toThrow(KvEppError);
      try {
        call();
      } catch (e) {
        expect((e as KvEppError).code).toBe('invalid_block_size');
      }
    });

    it('rejects short output buffers', () => {
      const out = new BigUint64Array(1);
      expect(() => hasher.localHashesInto(range(1, 32), 16, out)).toThrow(
        expect.objectContaining({ code: 'buffer_too_small' }),
      );
      expect(() => hasher.sequenceHashesInto(new BigUint64Array(2), 2, out)).toThrow(
        expect.objectContaining({ code: 'buffer_too_small' }),
      );
    });

    it('writes into caller buffers, in place for sequences', () => {
      const out = new BigUint64Array(4);
      expect(hasher.localHashesInto(range(1, 8), 4, out)).toBe(2);
      expect(out).toEqual(u64s(14643705804678351452n, 16777012769546811212n, 0n, 0n));
      expect(hasher.sequenceHashesInto(out, 2, out)).toBe(2);
      expect(out).toEqual(u64s(14643705804678351452n, 4945711292740353085n, 0n, 0n));
    });
  });
}
