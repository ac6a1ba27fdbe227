/**
 * Native and JS indexes must give identical outcomes, scores, tree sizes and
 * stats for the same random event stream. (The native index is checked
 * against dynamo-kv-router's RadixTree by native/oracle.)
 */
import { describe, expect, it } from 'vitest';
import { JsKvIndex } from '../../src/kv/js/radix-index.js';
import { loadNativeBinding } from '../../src/kv/native/binding.js';
import { NativeKvIndex } from '../../src/kv/native/radix-index.js';
import type { KvIndex, WorkerRank } from '../../src/kv/types.js';
import { mulberry32, randomU64 } from '../support/random.js';

interface Held {
  doc: number;
  from: number;
  to: number;
}

/** A random stream over shared-prefix documents, like the Rust oracle's generator. */
function makeStream(seed: number, events: number) {
  const rand = mulberry32(seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)] as T;
  const smallSpace = rand() < 0.3;
  const docs: bigint[][] = [];
  for (let d = 0; d < 24; d++) {
    const base = docs.length > 0 && rand() < 0.6 ? pick(docs) : [];
    const doc = base.slice(0, Math.floor(rand() * (base.length + 1)));
    const len = Math.max(doc.length, 1 + Math.floor(rand() * 24));
    while (doc.length < len)
      doc.push(smallSpace ? BigInt(Math.floor(rand() * 6)) : randomU64(rand));
    docs.push(doc);
  }
  const workers: WorkerRank[] = [];
  for (const id of [7n, 2n ** 64n - 1n, 2n ** 53n + 1n]) {
    for (const dpRank of [0, 1]) workers.push({ workerId: id, dpRank });
  }
  const salted = rand() < 0.5;
  const ext = (w: number, doc: number, i: number): bigint => {
    let h = salted ? BigInt(w + 1) * 0x9e3779b97f4a7c15n : 0x1234n;
    for (const l of (docs[doc] as bigint[]).slice(0, i + 1)) {
      h = ((h ^ l) * 0x100000001b3n + 0x9e37n) & 0xffff_ffff_ffff_ffffn;
    }
    return h;
  };
  const held: Held[][] = workers.map(() => []);
  const out: Array<(ix: KvIndex) => unknown> = [];
  const queries: BigUint64Array[] = [];
  for (let e = 0; e < events; e++) {
    const wi = Math.floor(rand() * workers.length);
    const worker = workers[wi] as WorkerRank;
    const roll = rand();
    if (roll < 0.55) {
      const h = held[wi] as Held[];
      let doc: number;
      let from = 0;
      if (h.length > 0 && rand() < 0.6) {
        const r = pick(h);
        doc = r.doc;
        from = rand() < 0.7 ? r.to : r.from + Math.floor(rand() * (r.to - r.from + 1));
      } else {
        doc = Math.floor(rand() * docs.length);
      }
      const len = (docs[doc] as bigint[]).length;
      if (from >= len) from = 0;
      const to = from + 1 + Math.floor(rand() * (len - from));
      h.push({ doc, from, to });
      const local = BigUint64Array.from((docs[doc] as bigint[]).slice(from, to));
      const external = BigUint64Array.from({ length: to - from }, (_, i) => ext(wi, doc, from + i));
      const parent = from > 0 ? ext(wi, doc, from - 1) : rand() < 0.05 ? randomU64(rand) : null;
      out.push((ix) =>
        ix.applyStored(worker, parent, { localHashes: local, externalHashes: external }),
      );
    } else if (roll < 0.93) {
      const h = held[wi] as Held[];
      let hashes: bigint[] = [randomU64(rand)];
      if (h.length > 0) {
        const r = pick(h);
        const mode = Math.floor(rand() * 3);
        const idx = Array.from({ length: r.to - r.from }, (_, i) => r.from + i);
        const chosen =
          mode === 0
            ? idx.slice(Math.floor(rand() * idx.length)).reverse()
            : mode === 1
              ? idx
              : idx.filter(() => rand() < 0.3);
        hashes = chosen.map((i) => ext(wi, r.doc, i));
      }
      const arr = BigUint64Array.from(hashes);
      out.push((ix) => ix.applyRemoved(worker, arr));
    } else if (roll < 0.98) {
      held[wi] = [];
      out.push((ix) => ix.clear(worker));
    } else {
      workers.forEach((w, j) => {
        if (w.workerId === worker.workerId) held[j] = [];
      });
      out.push((ix) => ix.removeWorker(worker.workerId));
    }
    const doc = docs[Math.floor(rand() * docs.length)] as bigint[];
    queries.push(BigUint64Array.from(doc.slice(0, 1 + Math.floor(rand() * doc.length))));
  }
  return { ops: out, queries, workers };
}

describe('native vs JS prefix index', () => {
  it('agree on 200 random event streams', async () => {
    const addon = await loadNativeBinding();
    let nonEmpty = 0;
    for (let seed = 1; seed <= 200; seed++) {
      const { ops, queries, workers } = makeStream(seed, 150);
      const native = NativeKvIndex.create(addon);
      const js = new JsKvIndex();
      ops.forEach((op, i) => {
        expect(op(js), `seed ${seed} op ${i}`).toEqual(op(native));
        const q = queries[i] as BigUint64Array;
        for (const early of [false, true]) {
          const a = native.findMatches(q, early);
          expect(js.findMatches(q, early), `seed ${seed} op ${i} early ${early}`).toEqual(a);
          if (a.workers.length > 0) nonEmpty++;
        }
      });
      for (const w of workers) expect(js.treeSize(w)).toBe(native.treeSize(w));
      expect(js.stats()).toEqual(native.stats());
      native.dispose();
    }
    expect(nonEmpty).toBeGreaterThan(10_000);
  });
});
