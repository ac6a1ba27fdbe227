import { describe, expect, it } from 'vitest';
import { U52Map } from '../../../src/kv/approx/u52-map.js';
import { mulberry32 } from '../../support/random.js';

describe('U52Map', () => {
  it('behaves like a Map under random sets, gets and deletes (growth, tombstones, reuse)', () => {
    const rnd = mulberry32(3);
    const ours = new U52Map();
    const ref = new Map<number, number>();
    // A small key space forces collisions, deletes and re-inserts; some keys use all 52 bits.
    const keys = Array.from({ length: 3000 }, (_, i) =>
      i % 5 === 0 ? Math.floor(rnd() * 2 ** 52) : Math.floor(rnd() * 5000) * 65536,
    );
    for (let step = 0; step < 200_000; step++) {
      const k = keys[Math.floor(rnd() * keys.length)] as number;
      const op = rnd();
      if (op < 0.5) {
        ours.set(k, step);
        ref.set(k, step);
      } else if (op < 0.8) {
        expect(ours.delete(k)).toBe(ref.delete(k));
      } else {
        expect(ours.get(k)).toBe(ref.get(k));
      }
      if (step % 10_000 === 0) {
        expect(ours.size).toBe(ref.size);
        for (const [rk, rv] of ref) expect(ours.get(rk)).toBe(rv);
      }
    }
    expect(ours.size).toBe(ref.size);
  });

  it('keeps 52-bit keys apart that share their low 32 bits', () => {
    const m = new U52Map();
    m.set(7, 1);
    m.set(7 + 2 ** 32, 2);
    m.set(7 + 2 ** 51, 3);
    expect([m.get(7), m.get(7 + 2 ** 32), m.get(7 + 2 ** 51), m.get(8)]).toEqual([
      1,
      2,
      3,
      undefined,
    ]);
    expect(m.delete(7 + 2 ** 32)).toBe(true);
    expect([m.get(7), m.get(7 + 2 ** 32), m.get(7 + 2 ** 51)]).toEqual([1, undefined, 3]);
  });
});
