import { describe, expect, it } from 'vitest';
import { blockHashSeed, JsBlockHasher, xxh3_64 } from '../../../src/kv/js/block-hasher.js';
import { describeBlockHasherContract } from '../../contract/block-hasher.contract.js';

describeBlockHasherContract('js', () => new JsBlockHasher());

describe('JsBlockHasher', () => {
  it('is the js backend', () => {
    expect(new JsBlockHasher().backend).toBe('js');
  });

  it('XXH3-64 matches the reference with seed 1337', () => {
    expect(xxh3_64(new TextEncoder().encode('test data'), 1337n)).toBe(13226331709069118873n);
    expect(xxh3_64('test data', 1337n)).toBe(13226331709069118873n);
  });

  it.each([
    [{ loraName: 'adapter-a' }, 8842669519798868182n],
    [{ cacheNamespace: 'tenant-a' }, 1948188790972764086n],
    [{ loraName: 'adapter-a', cacheNamespace: 'tenant-a' }, 10790858310771630931n],
    [{ loraName: '', cacheNamespace: '' }, 1337n],
    [{}, 1337n],
  ])('derives the Dynamo seed for %o', (opts, seed) => {
    expect(blockHashSeed(opts)).toBe(seed);
  });
});
