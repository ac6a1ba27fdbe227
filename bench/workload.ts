/**
 * Deterministic benchmark workloads (no I/O): token prompts and KV event
 * streams shaped like production traffic — shared system prompts followed
 * by per-conversation blocks, stored in parent-chained events.
 */
import { mulberry32, randomU64 } from '../test/support/random.js';

export function tokens(n: number, seed = 1): Uint32Array {
  const rand = mulberry32(seed);
  const t = new Uint32Array(n);
  for (let i = 0; i < n; i++) t[i] = Math.floor(rand() * 150_000);
  return t;
}

export interface StoredEvent {
  workerId: bigint;
  parent: bigint | null;
  local: BigUint64Array;
  external: BigUint64Array;
}

export interface IndexWorkload {
  events: StoredEvent[];
  /** Queries whose prefix is held (a stored sequence, some with a divergent tail). */
  hits: BigUint64Array[];
  /** Queries sharing nothing with the index. */
  misses: BigUint64Array[];
  memberships: number;
}

/**
 * `workers` holders each store `seqsPerWorker` sequences of `seqBlocks`
 * blocks: one of `systemPrompts` shared prefixes (`prefixBlocks` long), then
 * unique blocks, in events of `eventBlocks` blocks chained by parent hash.
 */
export function indexWorkload(o: {
  workers: number;
  seqsPerWorker: number;
  seqBlocks: number;
  prefixBlocks: number;
  systemPrompts: number;
  eventBlocks: number;
  queries: number;
  seed?: number;
}): IndexWorkload {
  const rand = mulberry32(o.seed ?? 7);
  const prompts = Array.from({ length: o.systemPrompts }, () =>
    Array.from({ length: o.prefixBlocks }, () => randomU64(rand)),
  );
  const events: StoredEvent[] = [];
  const sequences: bigint[][] = [];
  for (let w = 0; w < o.workers; w++) {
    const workerId = BigInt(w + 1) * 0x1_0000_0001n;
    for (let s = 0; s < o.seqsPerWorker; s++) {
      const prefix = prompts[Math.floor(rand() * prompts.length)] as bigint[];
      const seq = prefix.slice();
      while (seq.length < o.seqBlocks) seq.push(randomU64(rand));
      sequences.push(seq);
      // External hashes chain like an engine's: equal prefixes, equal hashes.
      const ext = seq.map((_, i) => (i < prefix.length ? seq[i] : (seq[i] as bigint) ^ 1n));
      for (let a = 0; a < seq.length; a += o.eventBlocks) {
        const b = Math.min(seq.length, a + o.eventBlocks);
        events.push({
          workerId,
          parent: a === 0 ? null : (ext[a - 1] as bigint),
          local: BigUint64Array.from(seq.slice(a, b)),
          external: BigUint64Array.from(ext.slice(a, b)),
        });
      }
    }
  }
  const hits: BigUint64Array[] = [];
  const misses: BigUint64Array[] = [];
  for (let q = 0; q < o.queries; q++) {
    const seq = (sequences[Math.floor(rand() * sequences.length)] as bigint[]).slice();
    if (rand() < 0.3) {
      const cut = 1 + Math.floor(rand() * (seq.length - 1));
      for (let i = cut; i < seq.length; i++) seq[i] = randomU64(rand);
    }
    hits.push(BigUint64Array.from(seq));
    misses.push(BigUint64Array.from({ length: o.seqBlocks }, () => randomU64(rand)));
  }
  return { events, hits, misses, memberships: o.workers * o.seqsPerWorker * o.seqBlocks };
}
