/**
 * Pure-JS twin of the native block hasher (XXH3-64 from hash-wasm).
 *
 * Contract: bit-for-bit equal to Dynamo's `compute_block_hash_for_seq` /
 * `compute_seq_hash_for_block` and to native/core/src/hash.rs; see
 * src/kv/types.ts. Single-threaded: one module instance owns its WASM state,
 * and every call finishes synchronously, so instances may share it.
 */
import { createXXHash3, type IHasher } from 'hash-wasm';
import { KvEppError } from '../../errors.js';
import { checkBlockSize } from '../block-size.js';

import type { BlockHasher, HashOptions } from '../types.js';

/** Seed of the chain hash and of local hashes without LoRA/namespace. */
export const XXH3_SEED = 1337n;

const U64_MASK = (1n << 64n) - 1n;
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * hash-wasm 4.x `save()` layout for XXH3: a 4-byte build tag, then the wasm32
 * `XXH3_state_t`: acc[8] @0, customSecret[192] @64, ..., seed @544. A state
 * seeded with S differs from one seeded with 1337 only in `seed` and in the
 * secret lanes (even lanes kSecret+S, odd lanes kSecret-S), so any seed's
 * freshly reset state is derived synchronously from the 1337 one. The layout
 * is verified against a real instance at load time (`hash_backend_unavailable`
 * if a hash-wasm upgrade changes it).
 */
const STATE_TAG_BYTES = 4;
const SECRET_OFFSET = STATE_TAG_BYTES + 64;
const SECRET_LANES = 24;
const SEED_OFFSET = STATE_TAG_BYTES + 544;
const SEED_STATE_CACHE = 64;

class Xxh3 {
  private readonly seedStates = new Map<bigint, Uint8Array>();
  private readonly digestOut = new BigUint64Array(1);
  private readonly digestBytes = new Uint8Array(this.digestOut.buffer);

  private constructor(
    /** Seeded with 1337; reset by `init()` or to any other seed by `load()`. */
    private readonly main: IHasher,
    /** Seed 0 resets to the default secret, which a derived state cannot express. */
    private readonly zero: IHasher,
    private readonly baseState: Uint8Array,
  ) {}

  static async create(): Promise<Xxh3> {
    const main = await createXXHash3(Number(XXH3_SEED), 0);
    const zero = await createXXHash3(0, 0);
    const xxh = new Xxh3(main, zero, main.init().save());
    const probeSeed = 0xdeadbeef_cafebaben;
    const probe = await createXXHash3(0xcafebabe, 0xdeadbeef);
    const expected = probe.init().save();
    const derived = xxh.stateFor(probeSeed);
    if (derived.length !== expected.length || !derived.every((b, i) => b === expected[i])) {
      throw new KvEppError(
        'hash_backend_unavailable',
        'hash-wasm XXH3 state layout changed; pin hash-wasm to a verified 4.x version',
      );
    }
    return xxh;
  }

  /** Resets the engine to `seed` and returns it ready for `update`. */
  reset(seed: bigint): IHasher {
    if (seed === XXH3_SEED) return this.main.init();
    if (seed === 0n) return this.zero.init();
    return this.main.load(this.stateFor(seed));
  }

  /** Finishes `h` and writes the digest as a native-endian u64 at `out[at..at+8]`. */
  digestInto(h: IHasher, out: Uint8Array, at: number): void {
    const d = h.digest('binary'); // big-endian bytes
    if (LITTLE_ENDIAN) {
      for (let k = 0; k < 8; k++) out[at + k] = d[7 - k] as number;
    } else {
      out.set(d, at);
    }
  }

  digest(h: IHasher): bigint {
    this.digestInto(h, this.digestBytes, 0);
    return this.digestOut[0] as bigint;
  }

  private stateFor(seed: bigint): Uint8Array {
    const cached = this.seedStates.get(seed);
    if (cached) return cached;
    const state = this.baseState.slice();
    const view = new DataView(state.buffer);
    const delta = (seed - XXH3_SEED) & U64_MASK;
    for (let lane = 0; lane < SECRET_LANES; lane++) {
      const at = SECRET_OFFSET + lane * 8;
      const v = view.getBigUint64(at, true);
      view.setBigUint64(at, (lane % 2 === 0 ? v + delta : v - delta) & U64_MASK, true);
    }
    view.setBigUint64(SEED_OFFSET, seed, true);
    if (this.seedStates.size >= SEED_STATE_CACHE) {
      const oldest = this.seedStates.keys().next().value;
      if (oldest !== undefined) this.seedStates.delete(oldest);
    }
    this.seedStates.set(seed, state);
    return state;
  }
}

const xxh = await Xxh3.create();

/** XXH3-64 of `data` (UTF-8 for strings) with a u64 `seed`. */
export function xxh3_64(data: Uint8Array | string, seed = 0n): bigint {
  if (seed < 0n || seed > U64_MASK) throw new RangeError('seed must be a u64');
  return xxh.digest(xxh.reset(seed).update(data));
}

/** Local-hash seed: 1337 + XXH3(lora, 0) + XXH3(namespace, 1), wrapping; empty strings are absent. */
export function blockHashSeed(options?: HashOptions): bigint {
  let seed = XXH3_SEED;
  if (options?.loraName) seed = (seed + xxh3_64(options.loraName, 0n)) & U64_MASK;
  if (options?.cacheNamespace) seed = (seed + xxh3_64(options.cacheNamespace, 1n)) & U64_MASK;
  return seed;
}

function bytesOf(a: BigUint64Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Copies the native-endian u64 at `src[from..]` to `dst[to..]` as little-endian. */
function copyLe64(src: Uint8Array, from: number, dst: Uint8Array, to: number): void {
  for (let k = 0; k < 8; k++) dst[to + k] = src[from + (LITTLE_ENDIAN ? k : 7 - k)] as number;
}

export class JsBlockHasher implements BlockHasher {
  readonly backend = 'js' as const;
  private readonly pair = new Uint8Array(16);

  localHashesInto(
    tokens: Uint32Array,
    blockSize: number,
    out: BigUint64Array,
    options?: HashOptions,
  ): number {
    checkBlockSize(blockSize);
    const count = Math.floor(tokens.length / blockSize);
    if (out.length < count) {
      throw new KvEppError(
        'buffer_too_small',
        `output buffer holds ${out.length} hashes, ${count} needed`,
      );
    }
    const seed = blockHashSeed(options);
    const outBytes = bytesOf(out);
    const blockBytes = blockSize * 4;
    const le = LITTLE_ENDIAN ? null : new DataView(new ArrayBuffer(blockBytes));
    for (let i = 0; i < count; i++) {
      let block: Uint8Array;
      if (le) {
        for (let t = 0; t < blockSize; t++) {
          le.setUint32(t * 4, tokens[i * blockSize + t] as number, true);
        }
        block = new Uint8Array(le.buffer);
      } else {
        block = new Uint8Array(tokens.buffer, tokens.byteOffset + i * blockBytes, blockBytes);
      }
      xxh.digestInto(xxh.reset(seed).update(block), outBytes, i * 8);
    }
    return count;
  }

  sequenceHashesInto(local: BigUint64Array, count: number, out: BigUint64Array): number {
    if (!Number.isInteger(count) || count < 0 || count > local.length || count > out.length) {
      throw new KvEppError(
        'buffer_too_small',
        `count ${count} exceeds local (${local.length}) or out (${out.length})`,
      );
    }
    if (count === 0) return 0;
    out[0] = local[0] as bigint;
    const localBytes = bytesOf(local);
    const outBytes = bytesOf(out);
    const pair = this.pair;
    for (let i = 1; i < count; i++) {
      copyLe64(outBytes, (i - 1) * 8, pair, 0);
      copyLe64(localBytes, i * 8, pair, 8);
      xxh.digestInto(xxh.reset(XXH3_SEED).update(pair), outBytes, i * 8);
    }
    return count;
  }

  hash(
    tokens: Uint32Array,
    blockSize: number,
    options?: HashOptions,
  ): { local: BigUint64Array; sequence: BigUint64Array } {
    checkBlockSize(blockSize);
    const local = new BigUint64Array(Math.floor(tokens.length / blockSize));
    const count = this.localHashesInto(tokens, blockSize, local, options);
    const sequence = new BigUint64Array(count);
    this.sequenceHashesInto(local, count, sequence);
    return { local, sequence };
  }
}
