import { describe, expect, it } from 'vitest';
import { loadNativeBinding } from '../../../src/kv/native/binding.js';
import { NativeBlockHasher } from '../../../src/kv/native/block-hasher.js';
import { describeBlockHasherContract } from '../../contract/block-hasher.contract.js';

describeBlockHasherContract('native', async () => new NativeBlockHasher(await loadNativeBinding()));

describe('native addon hashing', () => {
  it('derives the Dynamo seed natively', async () => {
    const addon = await loadNativeBinding();
    expect(addon.blockHashSeed('adapter-a', 'tenant-a')).toBe(10790858310771630931n);
    expect(addon.blockHashSeed('', null)).toBe(1337n);
  });

  it('reports errors with stable codes', async () => {
    const h = new NativeBlockHasher(await loadNativeBinding());
    expect(() => h.localHashesInto(new Uint32Array(32), 16, new BigUint64Array(1))).toThrow(
      expect.objectContaining({ code: 'buffer_too_small' }),
    );
  });
});
