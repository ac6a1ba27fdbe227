/**
 * `kv_metrics` load reports: the addon's decoder and its JS twin agree on
 * envelopes, bare msgpack and JSON (u64 worker ids above 2^63 included), and
 * on mutated/truncated bytes (both reject or both return the same).
 */
import { describe, expect, it } from 'vitest';
import { decodeActiveLoadJs } from '../../src/events/js/load.js';
import { nativeLoadDecoder } from '../../src/events/native/load.js';
import { loadNativeBinding } from '../../src/kv/native/binding.js';
import { encode, map } from '../support/msgpack.js';
import { mulberry32 } from '../support/random.js';

const te = new TextEncoder();

interface Load {
  workerId: bigint;
  dpRank: number;
  decode?: bigint | undefined;
  prefill?: bigint | undefined;
  used?: bigint | undefined;
}

function loadMsgpack(l: Load): Uint8Array {
  return encode(
    map({
      worker_id: l.workerId,
      dp_rank: BigInt(l.dpRank),
      active_decode_blocks: l.decode ?? null,
      active_prefill_tokens: l.prefill ?? null,
      kv_used_blocks: l.used ?? null,
    }),
  );
}

function envelope(payload: Uint8Array, at: bigint): Uint8Array {
  return encode(
    map({ publisher_id: 3n, sequence: 1n, published_at: at, topic: 'kv_metrics', payload }),
  );
}

function json(l: Load): Uint8Array {
  const o = (v: bigint | undefined) => (v === undefined ? 'null' : v.toString());
  return te.encode(
    `{"worker_id":${l.workerId},"dp_rank":${l.dpRank},"active_decode_blocks":${o(l.decode)},"active_prefill_tokens":${o(l.prefill)},"kv_used_blocks":${o(l.used)}}`,
  );
}

describe('kv_metrics decoding: native vs JS', async () => {
  const addon = await loadNativeBinding();
  const native = nativeLoadDecoder(addon);

  it('agrees on well-formed reports in every form, exact u64 ids', () => {
    const rnd = mulberry32(7);
    const big = () =>
      (BigInt(Math.floor(rnd() * 2 ** 32)) << 32n) | BigInt(Math.floor(rnd() * 2 ** 32));
    for (let i = 0; i < 300; i++) {
      const maybe = () => (rnd() < 0.3 ? undefined : BigInt(Math.floor(rnd() * 100_000)));
      const l: Load = {
        workerId: i === 0 ? 18446744073709551615n : big(),
        dpRank: Math.floor(rnd() * 8),
        decode: maybe(),
        prefill: maybe(),
        used: maybe(),
      };
      const want = {
        workerId: l.workerId,
        dpRank: l.dpRank,
        activeDecodeBlocks: l.decode === undefined ? undefined : Number(l.decode),
        activePrefillTokens: l.prefill === undefined ? undefined : Number(l.prefill),
        kvUsedBlocks: l.used === undefined ? undefined : Number(l.used),
      };
      for (const bytes of [envelope(loadMsgpack(l), 1_700_000_000_000n), loadMsgpack(l), json(l)]) {
        expect(decodeActiveLoadJs(bytes)).toEqual(want);
        expect(native(bytes)).toEqual(want);
      }
    }
  });

  it('agrees on mutated and truncated bytes', () => {
    const rnd = mulberry32(11);
    const base = envelope(
      loadMsgpack({ workerId: 5n, dpRank: 1, decode: 3n, used: 9n }),
      1_700_000_000_000n,
    );
    for (let i = 0; i < 2000; i++) {
      let b = base.slice(0, 1 + Math.floor(rnd() * base.length));
      if (rnd() < 0.7) {
        b = base.slice();
        b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
      }
      expect(decodeActiveLoadJs(b)).toEqual(native(b));
    }
  });
});
