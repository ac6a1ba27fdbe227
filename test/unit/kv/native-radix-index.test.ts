import { describe, expect, it } from 'vitest';
import { loadNativeBinding } from '../../../src/kv/native/binding.js';
import { NativeKvIndex } from '../../../src/kv/native/radix-index.js';
import { describeKvIndexContract } from '../../contract/kv-index.contract.js';

const addon = await loadNativeBinding();
describeKvIndexContract('native', () => NativeKvIndex.create(addon));

describe('NativeKvIndex', () => {
  it('is shared process-wide through its handle', () => {
    const owner = NativeKvIndex.create(addon);
    const view = NativeKvIndex.attach(addon, owner.handle);
    const w = { workerId: 5n, dpRank: 0 };
    owner.applyStored(w, null, {
      localHashes: BigUint64Array.of(1n, 2n),
      externalHashes: BigUint64Array.of(11n, 12n),
    });
    expect(view.findMatches(BigUint64Array.of(1n, 2n), false).blocks).toEqual([2]);
    view.dispose();
    expect(owner.treeSize(w)).toBe(2);
    owner.dispose();
    expect(() => NativeKvIndex.attach(addon, owner.handle).treeSize(w)).toThrow(
      expect.objectContaining({ code: 'disposed' }),
    );
  });

  it('grows its score buffers when many holders match', () => {
    const ix = NativeKvIndex.create(addon);
    for (let i = 0; i < 300; i++) {
      ix.applyStored({ workerId: BigInt(i), dpRank: i % 3 }, null, {
        localHashes: BigUint64Array.of(9n),
        externalHashes: BigUint64Array.of(99n),
      });
    }
    const s = ix.findMatches(BigUint64Array.of(9n), false);
    expect(s.workers).toHaveLength(300);
    expect(s.workers[299]).toEqual({ workerId: 299n, dpRank: 2 });
    ix.dispose();
  });
});
