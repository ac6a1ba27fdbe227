/**
 * Approximate mode's TTL + size-cap pruning: the TypeScript tracker
 * (src/kv/approx/prune-tracker.ts) over both index backends, and the addon's
 * (src/kv/native/prune-tracker.ts) over the native index, one contract; then
 * the two trackers against each other on random traffic. Blocks are stored
 * the way KvRouter stores them: local hashes with their sequence hashes as
 * external hashes, parent none. Time is an explicit number: nothing here
 * reads a clock.
 */
import { afterEach, describe, expect, it } from 'vitest';
import {
  type ApproxTracker,
  type PruneSettings,
  PruneTracker,
} from '../../../src/kv/approx/prune-tracker.js';
import { approxQueueReader, createBlockHasher, createKvIndex } from '../../../src/kv/factory.js';
import { NativePruneTracker } from '../../../src/kv/native/prune-tracker.js';
import type { NativeKvIndex } from '../../../src/kv/native/radix-index.js';
import type { Backend, BlockHasher, KvIndex, WorkerRank } from '../../../src/kv/types.js';
import { mulberry32 } from '../../support/random.js';

const W1: WorkerRank = { workerId: 1n, dpRank: 0 };
const W2: WorkerRank = { workerId: 2n, dpRank: 0 };
const u64s = (xs: readonly bigint[]) => BigUint64Array.from(xs);

type TrackerKind = 'ts' | 'native';

function makeTracker(
  kind: TrackerKind,
  index: KvIndex,
  settings: PruneSettings,
  hasher?: BlockHasher,
): ApproxTracker {
  return kind === 'native'
    ? NativePruneTracker.create(index as NativeKvIndex, settings)
    : new PruneTracker(index, settings, hasher);
}

describe.each([
  ['js', 'ts'],
  ['native', 'ts'],
  ['native', 'native'],
] as [Backend, TrackerKind][])('%s index, %s tracker', (backend, kind) => {
  let index: KvIndex;
  let hasher: BlockHasher;
  const trackers: ApproxTracker[] = [];
  const make = (settings: PruneSettings) => {
    const t = makeTracker(kind, index, settings, hasher);
    trackers.push(t);
    return t;
  };

  afterEach(() => {
    for (const t of trackers.splice(0)) t.dispose();
    index.dispose();
  });

  async function setup(settings: Partial<PruneSettings> = {}) {
    index = await createKvIndex(backend);
    hasher = await createBlockHasher(backend);
    expect(index.backend).toBe(backend);
    const tracker = make({
      ttlMs: 1000,
      maxTreeSize: 1 << 20,
      pruneTargetRatio: 0.8,
      ...settings,
    });
    const seqOf = (locals: readonly bigint[]) => {
      const seq = new BigUint64Array(locals.length);
      hasher.sequenceHashesInto(u64s(locals), locals.length, seq);
      return seq;
    };
    /** What KvRouter does after a decision: store, then track (and prune). */
    const route = (worker: WorkerRank, locals: readonly bigint[], now: number) => {
      const seq = seqOf(locals);
      expect(
        index.applyStored(worker, null, { localHashes: u64s(locals), externalHashes: seq }),
      ).toBe('ok');
      return tracker.record(worker, seq, now);
    };
    /** Prefix depth per worker id for a query, e.g. `{ 1: 2 }`. */
    const depths = (locals: readonly bigint[]) => {
      const s = index.findMatches(u64s(locals), false);
      return Object.fromEntries(s.workers.map((w, i) => [String(w.workerId), s.blocks[i]]));
    };
    const memberships = () => index.stats().memberships;
    return { tracker, route, depths, memberships, seqOf };
  }

  it('expires exactly the blocks whose TTL ran out, and overlap drops with them', async () => {
    const { tracker, route, depths, memberships } = await setup();
    route(W1, [1n, 2n, 3n, 4n], 0);
    // Same first two blocks routed again to W1 at 500: their TTL restarts.
    route(W1, [1n, 2n, 5n], 500);
    route(W2, [1n, 2n, 3n, 4n], 500);
    expect(memberships()).toBe(9);
    expect(tracker.size).toBe(9);

    expect(tracker.expire(999)).toBe(0);
    expect(depths([1n, 2n, 3n, 4n])).toEqual({ 1: 4, 2: 4 });

    // Expiry is due at now >= expiry (Dynamo's `expiry <= now`): W1's blocks 3, 4 only.
    expect(tracker.expire(1000)).toBe(2);
    expect(memberships()).toBe(7);
    expect(tracker.size).toBe(7);
    expect(depths([1n, 2n, 3n, 4n])).toEqual({ 1: 2, 2: 4 });
    expect(depths([1n, 2n, 5n])).toEqual({ 1: 3, 2: 2 });
    expect(index.stats().counters.blockNotFound).toBe(0);

    expect(tracker.expire(1499)).toBe(0);
    expect(tracker.expire(1500)).toBe(7);
    expect(memberships()).toBe(0);
    expect(tracker.size).toBe(0);
    expect(depths([1n, 2n, 3n, 4n])).toEqual({});
    expect(tracker.nextExpiry()).toBeUndefined();
  });

  it('extends a block’s life each time it is routed again', async () => {
    const { tracker, route, depths } = await setup();
    route(W1, [1n, 2n, 3n], 0);
    route(W1, [1n, 2n, 3n], 900);
    expect(tracker.size).toBe(3);
    expect(tracker.nextExpiry()).toBe(1900);
    expect(tracker.maintain(1000)).toEqual({ expired: 0, pruned: 0 });
    expect(depths([1n, 2n, 3n])).toEqual({ 1: 3 });
    expect(tracker.maintain(1899).expired).toBe(0);
    expect(tracker.maintain(1900)).toEqual({ expired: 3, pruned: 0 });
    expect(depths([1n, 2n, 3n])).toEqual({});
  });

  it('with a refresh granularity, re-queues a hot block once per period (early by < the period)', async () => {
    const { tracker, route, depths } = await setup({ refreshGranularityMs: 100 });
    route(W1, [1n, 2n, 3n], 0);
    for (let t = 10; t < 100; t += 10) route(W1, [1n, 2n, 3n], t);
    // Nine refreshes within the period queued nothing: expiry stays at 1000.
    expect([tracker.size, tracker.queued, tracker.nextExpiry()]).toEqual([3, 3, 1000]);
    route(W1, [1n, 2n, 3n], 100);
    expect([tracker.size, tracker.queued]).toEqual([3, 6]);
    expect(tracker.maintain(1099).expired).toBe(0);
    expect(depths([1n, 2n, 3n])).toEqual({ 1: 3 });
    expect(tracker.maintain(1100).expired).toBe(3);
    expect(() =>
      make({ ttlMs: 100, maxTreeSize: 1, pruneTargetRatio: 1, refreshGranularityMs: 100 }),
    ).toThrow(RangeError);
  });

  it('prunes the whole tree down to floor(cap × ratio) once above the cap, oldest first', async () => {
    // Dynamo's test_approx_indexer_e2e_pruning, with cap 10 and ratio 0.5.
    const { tracker, route, depths, memberships } = await setup({
      ttlMs: 60_000,
      maxTreeSize: 10,
      pruneTargetRatio: 0.5,
    });
    for (let i = 0; i < 10; i++) expect(route(W1, [100n + BigInt(i)], i)).toBe(0);
    expect(memberships()).toBe(10); // at the cap, not above it: nothing pruned
    expect(route(W1, [110n], 10)).toBe(6); // 11 > 10 → down to 5
    expect(memberships()).toBe(5);
    expect(tracker.size).toBe(5);
    for (let i = 0; i <= 10; i++) {
      expect(depths([100n + BigInt(i)])).toEqual(i < 6 ? {} : { 1: 1 });
    }
  });

  it('counts memberships of every worker against one cap', async () => {
    const { route, depths, memberships } = await setup({
      maxTreeSize: 5,
      pruneTargetRatio: 0.6,
    });
    route(W1, [1n, 2n, 3n], 0);
    expect(route(W2, [1n, 2n, 3n], 1)).toBe(3); // 6 > 5 → down to 3: all of W1's, the oldest
    expect(memberships()).toBe(3);
    expect(depths([1n, 2n, 3n])).toEqual({ 2: 3 });
  });

  it('prunes the deeper blocks of a decision first, leaving a usable prefix', async () => {
    const { route, depths, memberships } = await setup({ maxTreeSize: 4, pruneTargetRatio: 0.75 });
    route(W1, [1n, 2n, 3n], 0);
    expect(route(W1, [7n, 8n], 1)).toBe(2); // 5 > 4 → down to 3: blocks 3 and 2 of the first
    expect(memberships()).toBe(3);
    expect(depths([1n, 2n, 3n])).toEqual({ 1: 1 });
    expect(depths([7n, 8n])).toEqual({ 1: 2 });
    expect(index.stats().counters.blockNotFound).toBe(0);
  });

  it('moves a re-routed block to the back of the pruning order', async () => {
    // Dynamo's test_prune_manager_prune_reinsertion_updates_position.
    const { route, depths } = await setup({
      ttlMs: 10_000,
      maxTreeSize: 10,
      pruneTargetRatio: 0.4,
    });
    for (let i = 1; i <= 10; i++) route(W1, [BigInt(i)], i);
    route(W1, [1n], 11); // refreshed: now the newest
    expect(route(W1, [11n], 12)).toBe(7); // 11 > 10 → down to 4
    const kept = [1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n, 9n, 10n, 11n].filter((l) => depths([l])[1] === 1);
    expect(kept).toEqual([1n, 9n, 10n, 11n]);
  });

  it('removing a prefix block cuts the holder’s overlap there; later removals are harmless', async () => {
    const { tracker, route, depths, memberships, seqOf } = await setup();
    route(W1, [1n, 2n, 3n, 4n], 0);
    route(W1, [1n, 2n, 5n, 6n], 0);
    route(W2, [1n, 2n, 3n, 4n], 0);
    // Something else (an engine eviction, in event mode) removes W1's second block.
    const seqA = seqOf([1n, 2n, 3n, 4n]);
    expect(index.applyRemoved(W1, seqA.subarray(1, 2))).toBe('ok');
    // Dynamo scores the contiguous prefix only: W1 stops before the removed block,
    // on every branch below it; W2 is untouched.
    expect(depths([1n, 2n, 3n, 4n])).toEqual({ 1: 1, 2: 4 });
    expect(depths([1n, 2n, 5n, 6n])).toEqual({ 1: 1, 2: 2 });
    const before = index.stats().counters.blockNotFound;
    // The tracker still holds W1's descendants; expiring them must not throw and must
    // leave nothing behind.
    expect(tracker.expire(1000)).toBe(10);
    expect(memberships()).toBe(0);
    expect(tracker.size).toBe(0);
    expect(depths([1n, 2n, 3n, 4n])).toEqual({});
    // The one Removed event for W1 named hashes the index no longer had (Dynamo: BlockNotFound).
    expect(index.stats().counters.blockNotFound).toBe(before + 1);
  });

  it('a removed prefix block with no other holder detaches the branches below (cascade)', async () => {
    const { tracker, route, depths, memberships, seqOf } = await setup();
    route(W1, [1n, 2n, 3n, 4n], 0);
    route(W1, [1n, 2n, 5n, 6n], 0);
    expect(index.applyRemoved(W1, seqOf([1n, 2n]).subarray(1, 2))).toBe('ok');
    expect(depths([1n, 2n, 3n, 4n])).toEqual({ 1: 1 });
    expect(depths([1n, 2n, 5n, 6n])).toEqual({ 1: 1 });
    // A new decision for the same prefix re-stores the whole chain and refreshes it.
    route(W1, [1n, 2n, 3n, 4n], 400);
    expect(depths([1n, 2n, 3n, 4n])).toEqual({ 1: 4 });
    expect(tracker.expire(1000)).toBe(2); // blocks 5, 6 of the other branch
    expect(depths([1n, 2n, 3n, 4n])).toEqual({ 1: 4 });
    expect(tracker.expire(1400)).toBe(4);
    expect(memberships()).toBe(0);
    expect(tracker.size).toBe(0);
  });

  it('forgets a holder that was cleared, issuing no removals for it', async () => {
    const { tracker, route, depths } = await setup();
    route(W1, [1n, 2n], 0);
    route({ workerId: 1n, dpRank: 1 }, [1n, 2n], 0);
    route(W2, [1n, 2n], 0);
    index.clear(W1);
    tracker.forgetHolder(W1);
    expect(tracker.size).toBe(4);
    tracker.forgetWorker(2n);
    index.removeWorker(2n);
    expect(tracker.size).toBe(2);
    // W1 is routed again: its fresh entries are tracked, the forgotten ones stay forgotten.
    route(W1, [1n, 2n], 500);
    expect(tracker.expire(1000)).toBe(2);
    expect(depths([1n, 2n])).toEqual({ 1: 2 });
    expect(tracker.expire(1500)).toBe(2);
    expect(index.stats()).toMatchObject({ memberships: 0, counters: { blockNotFound: 0 } });
  });

  it('keeps memory bounded under refresh churn and long prompts', async () => {
    const cap = 4200;
    const { tracker, route, memberships } = await setup({
      ttlMs: 1_000_000,
      maxTreeSize: cap,
      pruneTargetRatio: 0.96, // target 4032: room for the newest decision
    });
    // A shared 4 000-block system prompt plus a short distinct tail, over and over:
    // the prompt is refreshed each time (stale queue slots), tails pile up to the cap.
    const prompt = Array.from({ length: 4000 }, (_, i) => BigInt(i + 1));
    let maxQueued = 0;
    let pruned = 0;
    for (let i = 0; i < 200; i++) {
      const tail = [BigInt(1_000_000 + 2 * i), BigInt(1_000_001 + 2 * i)];
      pruned += route(W1, [...prompt, ...tail], i);
      expect(tracker.size).toBeLessThanOrEqual(cap);
      expect(memberships()).toBeLessThanOrEqual(tracker.size);
      maxQueued = Math.max(maxQueued, tracker.queued);
    }
    // Queue slots (live + stale) stay within 4 × (live + one decision), whatever the churn.
    expect(maxQueued).toBeLessThan(4 * (cap + 4002));
    expect(pruned).toBeGreaterThan(0);
    // The newest decision survives whole.
    expect(index.findMatches(u64s([...prompt, 1_000_398n, 1_000_399n]), false).blocks).toEqual([
      4002,
    ]);
  });

  it('prunes in bounded steps that remove what one unbounded prune would, in order', async () => {
    // Cap 20, target 10, 4 removals per call: one decision of 2 blocks over the
    // cap leaves a prune of 11 that the next calls finish.
    const { tracker, route, depths, memberships } = await setup({
      ttlMs: 60_000,
      maxTreeSize: 20,
      pruneTargetRatio: 0.5,
      removalStep: 4,
    });
    for (let i = 0; i < 10; i++) route(W1, [BigInt(100 + 2 * i), BigInt(101 + 2 * i)], i);
    expect([memberships(), tracker.backlog(10)]).toEqual([20, false]);
    expect(route(W1, [200n, 201n], 10)).toBe(4); // 22 > 20: 12 to go, 4 now
    expect([memberships(), tracker.backlog(10)]).toEqual([18, true]);
    // Between the cap and the target the prune goes on (Dynamo prunes to the target).
    expect(tracker.maintain(10)).toEqual({ expired: 0, pruned: 4 });
    expect(tracker.maintain(10)).toEqual({ expired: 0, pruned: 4 });
    expect([memberships(), tracker.backlog(10)]).toEqual([10, false]);
    expect(tracker.maintain(10)).toEqual({ expired: 0, pruned: 0 });
    // The oldest six decisions went, each deepest block first; the newest five stay.
    for (let i = 0; i < 10; i++) {
      expect(depths([BigInt(100 + 2 * i), BigInt(101 + 2 * i)])).toEqual(i < 6 ? {} : { 1: 2 });
    }
    expect(depths([200n, 201n])).toEqual({ 1: 2 });
    // A decision larger than the step removes twice its own blocks: pruning catches up.
    const big = Array.from({ length: 12 }, (_, i) => BigInt(300 + i));
    expect(route(W2, big, 11)).toBe(12); // 22 > 20 → down to 10 in one call (budget 24)
    expect([memberships(), tracker.backlog(11)]).toEqual([10, false]);
    expect(index.stats().counters.blockNotFound).toBe(0);
  });

  it('expires in bounded steps too, and reports the backlog until it is done', async () => {
    const { tracker, route, memberships } = await setup({ ttlMs: 100, removalStep: 5 });
    for (let i = 0; i < 4; i++)
      route(W1, [BigInt(10 * i + 1), BigInt(10 * i + 2), BigInt(10 * i + 3)], i);
    expect(tracker.backlog(99)).toBe(false); // nothing due yet
    expect(tracker.backlog(100)).toBe(true); // the first decision's blocks
    expect(tracker.maintain(200)).toEqual({ expired: 5, pruned: 0 });
    expect([memberships(), tracker.backlog(200)]).toEqual([7, true]);
    expect(tracker.maintain(200)).toEqual({ expired: 5, pruned: 0 });
    expect(tracker.maintain(200)).toEqual({ expired: 2, pruned: 0 });
    expect([memberships(), tracker.size, tracker.backlog(200)]).toEqual([0, 0, false]);
    // expire() itself is not bounded: it removes everything due.
    for (let i = 0; i < 4; i++) route(W1, [BigInt(i + 1), BigInt(i + 50)], 300);
    expect(tracker.expire(400)).toBe(8);
  });

  it('routeSoon + settle leave what route leaves, in queue order', async () => {
    const { tracker, depths, memberships } = await setup({ maxTreeSize: 5, pruneTargetRatio: 0.8 });
    const hashes = u64s([1n, 2n, 3n]);
    tracker.routeSoon(W1, hashes, 3, 0);
    hashes.fill(0n); // the caller may reuse its array at once
    tracker.routeSoon(W2, u64s([1n, 2n, 4n]), 3, 10);
    tracker.settle();
    // As route() twice: 6 > 5 → down to 4, the oldest decision's deepest blocks first.
    expect(depths([1n, 2n, 3n])).toEqual({ 1: 1, 2: 2 });
    expect([memberships(), tracker.size]).toEqual([4, 4]);
  });

  it('maintainSoon works off the whole backlog on the tracker’s thread (native), one step otherwise', async () => {
    const { tracker, route, memberships } = await setup({ ttlMs: 100, removalStep: 4 });
    for (let i = 0; i < 4; i++)
      route(W1, [BigInt(10 * i + 1), BigInt(10 * i + 2), BigInt(10 * i + 3)], i);
    tracker.maintainSoon(500);
    tracker.settle();
    expect(tracker.offThread).toBe(kind === 'native');
    if (tracker.offThread) {
      expect([memberships(), tracker.size, tracker.backlog(500)]).toEqual([0, 0, false]);
    } else {
      expect([memberships(), tracker.backlog(500)]).toEqual([8, true]);
    }
  });

  it('tracks hashes whose low 52 bits collide as distinct blocks', async () => {
    const { tracker, memberships } = await setup();
    // Two external hashes equal in their low 52 bits, different above.
    const a = 0x0001_2345_6789_abcdn;
    const b = a | (0xabcn << 52n);
    const c = a | (0x001n << 52n);
    const blocks = (ext: bigint, local: bigint) => ({
      localHashes: u64s([local]),
      externalHashes: u64s([ext]),
    });
    expect(index.applyStored(W1, null, blocks(a, 100n))).toBe('ok');
    expect(index.applyStored(W2, null, blocks(b, 200n))).toBe('ok');
    tracker.record(W1, u64s([a]), 0);
    // Same holder, colliding keys: a and c both live.
    expect(index.applyStored(W1, null, blocks(c, 300n))).toBe('ok');
    tracker.record(W1, u64s([c]), 100);
    tracker.record(W2, u64s([b]), 100);
    expect(tracker.size).toBe(3);
    tracker.record(W1, u64s([c]), 600); // refresh c only
    expect(tracker.size).toBe(3);
    expect(tracker.expire(1000)).toBe(1); // a
    expect(tracker.expire(1100)).toBe(1); // b (W2)
    expect(tracker.size).toBe(1);
    expect(tracker.expire(1600)).toBe(1); // c, refreshed
    expect(tracker.size).toBe(0);
    expect(memberships()).toBe(0);
  });

  it('rejects settings outside Dynamo’s ranges', async () => {
    index = await createKvIndex(backend);
    const ok = { ttlMs: 1, maxTreeSize: 1, pruneTargetRatio: 1 };
    expect(() => make(ok)).not.toThrow();
    expect(() => make({ ...ok, ttlMs: 0 })).toThrow(RangeError);
    expect(() => make({ ...ok, maxTreeSize: 1.5 })).toThrow(RangeError);
    expect(() => make({ ...ok, pruneTargetRatio: 0 })).toThrow(RangeError);
    expect(() => make({ ...ok, pruneTargetRatio: 1.01 })).toThrow(RangeError);
    expect(() => make({ ...ok, removalStep: 0 })).toThrow(RangeError);
    expect(() => make({ ...ok, removalStep: 2.5 })).toThrow(RangeError);
  });

  it('route() stores, tracks and expires first, as the router did step by step', async () => {
    const { tracker, depths, memberships } = await setup({ maxTreeSize: 5, pruneTargetRatio: 0.8 });
    expect(tracker.route(W1, u64s([1n, 2n, 3n, 9n]), 3, 0)).toBe(0); // count: 9 is ignored
    expect(depths([1n, 2n, 3n, 9n])).toEqual({ 1: 3 });
    // Above the cap (3 + 3 > 5): down to 4, the oldest decision's deepest blocks first.
    expect(tracker.route(W2, u64s([1n, 2n, 4n]), 3, 10)).toBe(2);
    expect(depths([1n, 2n, 3n])).toEqual({ 1: 1, 2: 2 });
    // W1's block 1 is due at 1000: expired before the new store, which then tracks it afresh.
    expect(tracker.route(W1, u64s([1n]), 1, 1000)).toBe(1);
    expect([memberships(), tracker.size, tracker.nextExpiry()]).toEqual([4, 4, 1010]);
    expect(depths([1n, 2n, 4n])).toEqual({ 1: 1, 2: 3 });
    expect(tracker.expire(1010)).toBe(3);
    expect(depths([1n, 2n, 4n])).toEqual({ 1: 1 });
  });
});

describe('the addon tracker’s thread', () => {
  const rand = mulberry32(5);
  it.each([
    // Random sizes, shared prefixes, pruning to the cap's target over and over.
    [
      'prunes, no expiry',
      { ttlMs: 1e6, maxTreeSize: 5000, pruneTargetRatio: 0.6 },
      Array.from({ length: 12 }, (_, d): [number, boolean] => [
        1500 + Math.floor(rand() * 1500),
        d % 5 === 4,
      ]),
    ],
    // Four decisions of 2 400 sit under the cap (9 600 ≤ 10 000); from the fifth on, the
    // oldest expires (2 400 > one chunk) before the new one is stored: no prune at all,
    // as long as the whole expiry runs before the cap is checked.
    [
      'expiries of more than a chunk before the store',
      { ttlMs: 3.5, maxTreeSize: 10_000, pruneTargetRatio: 0.6 },
      Array.from({ length: 8 }, (): [number, boolean] => [2400, false]),
    ],
  ] as Array<[string, PruneSettings, Array<[number, boolean]>]>)(
    'routeSoon, in chunks of 1 024 removals, leaves what route leaves (%s)',
    async (_, settings, shapes) => {
      const a = (await createKvIndex('native')) as NativeKvIndex;
      const b = (await createKvIndex('native')) as NativeKvIndex;
      const ta = NativePruneTracker.create(a, settings);
      const tb = NativePruneTracker.create(b, settings);
      const decisions = shapes.map(([n, shared], d) =>
        BigUint64Array.from({ length: n }, (_, i) => BigInt(shared ? i + 1 : d * 100_000 + i + 1)),
      );
      for (const [d, h] of decisions.entries()) {
        const w = d % 2 ? W2 : W1;
        ta.route(w, h, h.length, d);
        tb.routeSoon(w, h, h.length, d);
        tb.settle();
        expect([d, tb.size, tb.backlog(d)]).toEqual([d, ta.size, ta.backlog(d)]);
      }
      expect(b.stats().memberships).toBe(a.stats().memberships);
      for (const h of decisions) expect(b.findMatches(h, false)).toEqual(a.findMatches(h, false));
      for (const x of [ta, tb, a, b]) x.dispose();
    },
  );
});

describe("the approximate-mode thread's queue", () => {
  it('is read through a native index only, and is empty once settled', async () => {
    const js = await createKvIndex('js');
    expect(approxQueueReader(js)).toBeUndefined();
    js.dispose();
    const index = (await createKvIndex('native')) as NativeKvIndex;
    const read = approxQueueReader(index);
    expect(read).toBeDefined();
    const before = read?.();
    const t = NativePruneTracker.create(index, {
      ttlMs: 1000,
      maxTreeSize: 100,
      pruneTargetRatio: 0.8,
    });
    for (let d = 0; d < 50; d++) {
      t.routeSoon(
        W1,
        BigUint64Array.from({ length: 20 }, (_, i) => BigInt(d * 100 + i + 1)),
        20,
        d,
      );
    }
    t.settle();
    // Every job ran against a live tracker: none lost, none waiting.
    expect(read?.()).toEqual({ ...before, queued: 0 });
    expect(t.size).toBeLessThanOrEqual(100);
    t.dispose();
    index.dispose();
  });
});

describe('the addon tracker against the TypeScript one', () => {
  it.each([
    ['unbounded steps', undefined],
    ['steps of 7 removals', 7],
  ])('removes the same memberships on random traffic (%s)', async (_, removalStep) => {
    const rand = mulberry32(11);
    const pick = (n: number) => Math.floor(rand() * n);
    const settings = {
      ttlMs: 400,
      maxTreeSize: 300,
      pruneTargetRatio: 0.7,
      refreshGranularityMs: 30,
      removalStep,
    };
    const tsIndex = await createKvIndex('js');
    const tsTracker = new PruneTracker(tsIndex, settings, await createBlockHasher('js'));
    const nIndex = (await createKvIndex('native')) as NativeKvIndex;
    const nTracker = NativePruneTracker.create(nIndex, settings);
    // Chains sharing prefixes: 12 roots × branches, up to 40 blocks deep.
    const chains = Array.from({ length: 60 }, (_, i) => {
      const root = BigInt(1 + (i % 12)) * 1_000_000n;
      return Array.from({ length: 5 + pick(36) }, (_, d) =>
        d < 3 ? root + BigInt(d) : root + BigInt(1000 * (i + 1) + d),
      );
    });
    const workers = [W1, W2, { workerId: 3n, dpRank: 1 }];
    let now = 0;
    for (let step = 0; step < 2000; step++) {
      now += pick(7);
      const op = rand();
      if (op < 0.9) {
        const w = workers[pick(3)] as WorkerRank;
        const c = chains[pick(chains.length)] as bigint[];
        const n = 1 + pick(c.length);
        const a = tsTracker.route(w, u64s(c), n, now);
        const b = nTracker.route(w, u64s(c), n, now);
        expect([step, b]).toEqual([step, a]);
      } else if (op < 0.97) {
        expect(nTracker.maintain(now)).toEqual(tsTracker.maintain(now));
        expect(nTracker.backlog(now)).toBe(tsTracker.backlog(now));
      } else {
        const w = workers[pick(3)] as WorkerRank;
        tsTracker.forgetHolder(w);
        nTracker.forgetHolder(w);
      }
      expect(nTracker.size).toBe(tsTracker.size);
      if (step % 50 === 0) {
        for (const c of chains) {
          expect(nIndex.findMatches(u64s(c), false)).toEqual(tsIndex.findMatches(u64s(c), false));
        }
        expect(nTracker.nextExpiry()).toBe(tsTracker.nextExpiry());
      }
    }
    expect(nIndex.stats().memberships).toBe(tsIndex.stats().memberships);
    nTracker.dispose();
    nIndex.dispose();
    tsIndex.dispose();
  });
});
