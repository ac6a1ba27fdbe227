/**
 * Native and JS hashers must agree bit for bit on random input. (Each is also
 * checked against Dynamo's own vectors by the contract suite, and the native
 * core against dynamo-kv-router itself by native/oracle.)
 */
import { describe, expect, it } from 'vitest';
import { JsBlockHasher } from '../../src/kv/js/block-hasher.js';
import { loadNativeBinding } from '../../src/kv/native/binding.js';
import { NativeBlockHasher } from '../../src/kv/native/block-hasher.js';
import { mulberry32 } from '../support/random.js';

describe('native vs JS block hashing', () => {
  it('agree on 2 000 random sequences, block sizes and seeds', async () => {
    const native = new NativeBlockHasher(await loadNativeBinding());
    const js = new JsBlockHasher();
    const rand = mulberry32(42);
    const loras = [undefined, '', 'adapter-a', 'lora/ünï'];
    const spaces = [undefined, '', 'tenant-a', 'salt-7'];
    let blocks = 0;
    for (let i = 0; i < 2000; i++) {
      const len = Math.floor(rand() * 3000);
      const tokens = new Uint32Array(len);
      for (let t = 0; t < len; t++) {
        tokens[t] = rand() < 0.05 ? 0xffff_ffff : Math.floor(rand() * 200_000);
      }
      const bs = [1, 16, 32, 64, 128, 1024][i % 6] as number;
      const opts = {
        loraName: loras[Math.floor(rand() * loras.length)],
        cacheNamespace: spaces[Math.floor(rand() * spaces.length)],
      };
      const a = native.hash(tokens, bs, opts);
      const b = js.hash(tokens, bs, opts);
      expect(a.local).toEqual(b.local);
      expect(a.sequence).toEqual(b.sequence);
      blocks += a.local.length;
    }
    expect(blocks).toBeGreaterThan(50_000);
  });
});
