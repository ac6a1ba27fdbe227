/**
 * Native block hasher: one addon call per prompt, hashes written into the
 * caller's `BigUint64Array`. Seeds for (LoRA, namespace) pairs are computed
 * natively once and cached, so the hot call passes no strings.
 */
import { KvEppError } from '../../errors.js';
import { checkBlockSize } from '../block-size.js';
import type { BlockHasher, HashOptions } from '../types.js';
import { mapNativeError, type NativeBinding } from './binding.js';

const SEED_CACHE_LIMIT = 256;

export class NativeBlockHasher implements BlockHasher {
  readonly backend = 'native' as const;
  private readonly seeds = new Map<string, bigint>();
  private readonly defaultSeed: bigint;

  constructor(private readonly addon: NativeBinding) {
    this.defaultSeed = addon.blockHashSeed(null, null);
  }

  private seedFor(options: HashOptions | undefined): bigint {
    const lora = options?.loraName ?? '';
    const ns = options?.cacheNamespace ?? '';
    if (lora === '' && ns === '') return this.defaultSeed;
    const key = `${lora.length}:${lora}${ns}`;
    let seed = this.seeds.get(key);
    if (seed === undefined) {
      seed = this.addon.blockHashSeed(lora, ns);
      if (this.seeds.size >= SEED_CACHE_LIMIT) this.seeds.clear();
      this.seeds.set(key, seed);
    }
    return seed;
  }

  localHashesInto(
    tokens: Uint32Array,
    blockSize: number,
    out: BigUint64Array,
    options?: HashOptions,
  ): number {
    checkBlockSize(blockSize);
    try {
      return this.addon.localHashesInto(tokens, blockSize, this.seedFor(options), out);
    } catch (e) {
      throw mapNativeError(e);
    }
  }

  sequenceHashesInto(local: BigUint64Array, count: number, out: BigUint64Array): number {
    if (!Number.isInteger(count) || count < 0 || count > local.length || count > out.length) {
      throw new KvEppError(
        'buffer_too_small',
        `count ${count} does not fit local (${local.length}) and out (${out.length})`,
      );
    }
    // The addon takes `local` and `out` as distinct slices; aliasing goes through a copy.
    const src = local.buffer === out.buffer ? local.slice(0, count) : local;
    try {
      return this.addon.sequenceHashesInto(src, count, out);
    } catch (e) {
      throw mapNativeError(e);
    }
  }

  hash(tokens: Uint32Array, blockSize: number, options?: HashOptions) {
    checkBlockSize(blockSize);
    const n = Math.floor(tokens.length / blockSize);
    const local = new BigUint64Array(n);
    this.localHashesInto(tokens, blockSize, local, options);
    const sequence = new BigUint64Array(n);
    this.sequenceHashesInto(local, n, sequence);
    return { local, sequence };
  }
}
