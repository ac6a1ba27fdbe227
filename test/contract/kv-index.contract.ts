/**
 * Backend-agnostic contract of `KvIndex` (Dynamo 1.6.1 `RadixTree` semantics,
 * as ported in native/core/src/index.rs). Register a backend with
 * `describeKvIndexContract(name, make)` from a `*.test.ts` file.
 *
 * Every expected value below is derived by hand from the index's algorithm;
 * the comments give the tree each case builds. Notation: `N[1,2]{A}` is a node
 * whose edge has local hashes 1,2 and whose full holders are {A}; `A:1` in a
 * node is a partial holder covering the edge's first block only. Unless stated
 * otherwise a block's external hash is its local hash + 100 for A-like holders
 * and + 200 for B-like holders (engines with per-worker hash salts).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { KvIndex, OverlapScores, StoredBlocks, WorkerRank } from '../../src/kv/types.js';

/** The `code` of what `f` throws (a `KvEppError`), or a note that it did not throw. */
const thrownCode = (f: () => unknown): unknown => {
  try {
    f();
  } catch (e) {
    return (e as { code?: unknown }).code;
  }
  return 'did not throw';
};

const w = (workerId: bigint, dpRank = 0): WorkerRank => ({ workerId, dpRank });
const u64s = (...xs: bigint[]): BigUint64Array => BigUint64Array.from(xs);

/** Blocks with the given local hashes and external hash `local + offset`. */
const blocks = (locals: bigint[], offset = 100n): StoredBlocks => ({
  localHashes: u64s(...locals),
  externalHashes: u64s(...locals.map((l) => l + offset)),
});
/** Blocks given as explicit `[local, external]` pairs. */
const pairs = (...ps: Array<[bigint, bigint]>): StoredBlocks => ({
  localHashes: u64s(...ps.map(([l]) => l)),
  externalHashes: u64s(...ps.map(([, e]) => e)),
});

/** Expected scores; entries must already be sorted by workerId then dpRank. */
const scores = (
  ...entries: Array<[WorkerRank, depth: number, treeSize: number]>
): OverlapScores => ({
  workers: entries.map(([k]) => k),
  blocks: entries.map(([, d]) => d),
  treeSizes: entries.map(([, , t]) => t),
});
const none = scores();

const A = w(1n);
const B = w(2n);

export function describeKvIndexContract(name: string, make: () => KvIndex): void {
  describe(`KvIndex contract: ${name}`, () => {
    let idx: KvIndex;
    const match = (query: bigint[], earlyExit = false) =>
      idx.findMatches(u64s(...query), earlyExit);

    beforeEach(() => {
      idx = make();
    });
    afterEach(() => {
      idx.dispose();
    });

    it('an empty index scores nothing', () => {
      expect(match([1n, 2n, 3n])).toEqual(none);
      expect(match([1n, 2n, 3n], true)).toEqual(none);
      expect(match([])).toEqual(none);
      expect(idx.treeSize(A)).toBe(0);
      expect(idx.stats()).toEqual({
        workers: 0,
        memberships: 0,
        counters: { applied: 0, parentNotFound: 0, blockNotFound: 0, invalidBlockSequence: 0 },
      });
    });

    it('scores the contiguous prefix of a chain stored from the root', () => {
      // N[1,2,3]{A}
      expect(idx.applyStored(A, null, blocks([1n, 2n, 3n]))).toBe('ok');
      expect(match([1n])).toEqual(scores([A, 1, 3]));
      expect(match([1n, 2n])).toEqual(scores([A, 2, 3]));
      expect(match([1n, 2n, 3n])).toEqual(scores([A, 3, 3]));
      // Diverging midway: the walk stops at the first mismatch.
      expect(match([1n, 2n, 9n, 3n])).toEqual(scores([A, 2, 3]));
      expect(match([1n, 9n])).toEqual(scores([A, 1, 3]));
      // Longer than stored: depth is what is stored.
      expect(match([1n, 2n, 3n, 4n, 5n])).toEqual(scores([A, 3, 3]));
      expect(match([1n, 2n, 3n, 4n, 5n], true)).toEqual(scores([A, 3, 3]));
      // Not a prefix from the root.
      expect(match([2n, 3n])).toEqual(none);
      expect(match([9n])).toEqual(none);
      expect(idx.treeSize(A)).toBe(3);
    });

    it('splits an edge when two holders diverge; each scores its own depth', () => {
      // A: N[1,2,3,4]{A}. B diverges after 2: split into
      // N[1,2]{A,B} -> S[3,4]{A}, T[7,8]{B}.
      expect(idx.applyStored(A, null, blocks([1n, 2n, 3n, 4n]))).toBe('ok');
      expect(idx.applyStored(B, null, blocks([1n, 2n, 7n, 8n], 200n))).toBe('ok');
      expect(match([1n, 2n, 3n, 4n])).toEqual(scores([A, 4, 4], [B, 2, 4]));
      expect(match([1n, 2n, 7n, 8n])).toEqual(scores([A, 2, 4], [B, 4, 4]));
      expect(match([1n, 2n])).toEqual(scores([A, 2, 4], [B, 2, 4]));
      // Query ends inside S: A scores 3, B left after N with 2.
      expect(match([1n, 2n, 3n])).toEqual(scores([A, 3, 4], [B, 2, 4]));
      expect(match([1n, 2n, 7n])).toEqual(scores([A, 2, 4], [B, 3, 4]));
      // Query ends inside N: both active holders score the partial match.
      expect(match([1n])).toEqual(scores([A, 1, 4], [B, 1, 4]));
      // Two holders stay active through N, so early exit changes nothing here.
      expect(match([1n, 2n, 3n, 4n], true)).toEqual(scores([A, 4, 4], [B, 2, 4]));
      expect(idx.stats().memberships).toBe(8);
      expect(idx.memberships()).toBe(8);
      expect(idx.stats().workers).toBe(2);
    });

    it('treats dp ranks of one worker as distinct holders', () => {
      // (5,0): N[1,2,3]{(5,0)}; (5,1) stores a prefix: N[1,2,3]{(5,0)} (5,1):2.
      const r0 = w(5n, 0);
      const r1 = w(5n, 1);
      expect(idx.applyStored(r0, null, blocks([1n, 2n, 3n]))).toBe('ok');
      expect(idx.applyStored(r1, null, blocks([1n, 2n]))).toBe('ok');
      expect(match([1n, 2n, 3n])).toEqual(scores([r0, 3, 3], [r1, 2, 2]));
      expect(match([1n, 2n])).toEqual(scores([r0, 2, 3], [r1, 2, 2]));
      expect(idx.treeSize(r0)).toBe(3);
      expect(idx.treeSize(r1)).toBe(2);
      expect(idx.stats().workers).toBe(2);
    });

    it('extends the chain from a known parent', () => {
      expect(idx.applyStored(A, null, blocks([1n, 2n]))).toBe('ok');
      // Parent 102 is the last block of the leaf N[1,2]: the leaf grows to N[1,2,3,4].
      expect(idx.applyStored(A, 102n, blocks([3n, 4n]))).toBe('ok');
      expect(match([1n, 2n, 3n, 4n])).toEqual(scores([A, 4, 4]));
      expect(idx.applyStored(A, 104n, blocks([5n]))).toBe('ok');
      expect(match([1n, 2n, 3n, 4n, 5n])).toEqual(scores([A, 5, 5]));
      // A parent in the middle of the edge with a new continuation splits it:
      // N[1,2]{A} -> S[3,4,5]{A}, L[6]{A}.
      expect(idx.applyStored(A, 102n, blocks([6n]))).toBe('ok');
      expect(match([1n, 2n, 6n])).toEqual(scores([A, 3, 6]));
      expect(match([1n, 2n, 3n, 4n, 5n])).toEqual(scores([A, 5, 6]));
      // Re-storing blocks already there from a mid-edge parent changes nothing.
      expect(idx.applyStored(A, 103n, blocks([4n, 5n]))).toBe('ok');
      expect(idx.treeSize(A)).toBe(6);
      expect(idx.stats().counters.applied).toBe(5);
    });

    it("rejects a store whose parent the holder does not hold, changing nothing but the holder's presence", () => {
      expect(idx.applyStored(A, null, blocks([1n, 2n]))).toBe('ok');
      expect(idx.applyStored(A, 999n, blocks([3n]))).toBe('parent_not_found');
      expect(match([1n, 2n, 3n])).toEqual(scores([A, 2, 2]));
      // 102 is A's block, not B's: lookups are per holder.
      expect(idx.applyStored(B, 102n, blocks([3n], 200n))).toBe('parent_not_found');
      expect(match([1n, 2n, 3n])).toEqual(scores([A, 2, 2]));
      expect(idx.treeSize(B)).toBe(0);
      // Every event makes its holder known, even a rejected one.
      expect(idx.stats()).toEqual({
        workers: 2,
        memberships: 2,
        counters: { applied: 1, parentNotFound: 2, blockNotFound: 0, invalidBlockSequence: 0 },
      });
    });

    it('rejects a self-referencing store before looking at the parent', () => {
      expect(idx.applyStored(A, null, blocks([1n, 2n]))).toBe('ok');
      // Known parent 102 repeated among the blocks.
      expect(idx.applyStored(A, 102n, pairs([3n, 103n], [4n, 102n]))).toBe(
        'invalid_block_sequence',
      );
      // Unknown parent 555 repeated among the blocks: still invalid, not parent_not_found.
      expect(idx.applyStored(A, 555n, pairs([3n, 555n]))).toBe('invalid_block_sequence');
      expect(match([1n, 2n, 3n, 4n])).toEqual(scores([A, 2, 2]));
      expect(idx.stats().counters).toEqual({
        applied: 1,
        parentNotFound: 0,
        blockNotFound: 0,
        invalidBlockSequence: 2,
      });
    });

    it('removing a tail block shortens the depth; removing the rest empties the holder', () => {
      // N[1,2,3]{A}; removing 103 leaves N[1,2,3] A:2.
      expect(idx.applyStored(A, null, blocks([1n, 2n, 3n]))).toBe('ok');
      expect(idx.applyRemoved(A, u64s(103n))).toBe('ok');
      expect(match([1n, 2n, 3n])).toEqual(scores([A, 2, 2]));
      expect(idx.treeSize(A)).toBe(2);
      // 102 cuts at position 1, 101 (consumed in the same cut) at 0: A leaves N,
      // N has no holder left and leaves the tree.
      expect(idx.applyRemoved(A, u64s(102n, 101n))).toBe('ok');
      expect(match([1n, 2n, 3n])).toEqual(none);
      expect(idx.treeSize(A)).toBe(0);
      // The holder stays known with an empty lookup.
      expect(idx.stats()).toMatchObject({ workers: 1, memberships: 0 });
      // Removing an already removed block.
      expect(idx.applyRemoved(A, u64s(103n))).toBe('block_not_found');
    });

    it('removes a batch of blocks on one edge tail first', () => {
      // N[1,2,3,4]{A,B}; A removes 104,103,102 in one event: cut at position 1.
      expect(idx.applyStored(A, null, blocks([1n, 2n, 3n, 4n]))).toBe('ok');
      expect(idx.applyStored(B, null, blocks([1n, 2n, 3n, 4n], 200n))).toBe('ok');
      expect(idx.applyRemoved(A, u64s(104n, 103n, 102n))).toBe('ok');
      expect(match([1n, 2n, 3n, 4n])).toEqual(scores([A, 1, 1], [B, 4, 4]));
    });

    it('removing a middle block cuts depth at that position for that holder only', () => {
      // N[1,2,3,4]{A,B}; A removes 102: N[1,2,3,4]{B} A:1, and A's entries for
      // 103 and 104 (same edge, no longer covered) are dropped.
      expect(idx.applyStored(A, null, blocks([1n, 2n, 3n, 4n]))).toBe('ok');
      expect(idx.applyStored(B, null, blocks([1n, 2n, 3n, 4n], 200n))).toBe('ok');
      expect(idx.applyRemoved(A, u64s(102n))).toBe('ok');
      expect(match([1n, 2n, 3n, 4n])).toEqual(scores([A, 1, 1], [B, 4, 4]));
      expect(match([1n, 2n, 3n, 4n], true)).toEqual(scores([A, 1, 1], [B, 4, 4]));
      expect(idx.treeSize(A)).toBe(1);
      expect(idx.treeSize(B)).toBe(4);
      // 103 is gone from A's lookup, so it can no longer be a parent.
      expect(idx.applyStored(A, 103n, blocks([5n]))).toBe('parent_not_found');
    });

    it('a removal naming an unknown hash reports block_not_found but applies the rest', () => {
      expect(idx.applyStored(A, null, blocks([1n, 2n, 3n]))).toBe('ok');
      expect(idx.applyRemoved(A, u64s(999n, 103n))).toBe('block_not_found');
      expect(match([1n, 2n, 3n])).toEqual(scores([A, 2, 2]));
      // A removal for a holder never seen: error, but the holder becomes known.
      expect(idx.applyRemoved(w(9n), u64s(5n))).toBe('block_not_found');
      expect(idx.stats()).toEqual({
        workers: 2,
        memberships: 2,
        counters: { applied: 3, parentNotFound: 0, blockNotFound: 2, invalidBlockSequence: 0 },
      });
    });

    it('a hash dropped earlier in the same removal is not reported missing', () => {
      // N1[1,2,3]{A}, N2[7,8]{A}. Removing 102 cuts N1 at 1 and drops 103 too;
      // 108 (another edge) cuts N2 at 1; the later 103 is then expected missing.
      expect(idx.applyStored(A, null, blocks([1n, 2n, 3n]))).toBe('ok');
      expect(idx.applyStored(A, null, blocks([7n, 8n]))).toBe('ok');
      expect(idx.applyRemoved(A, u64s(102n, 108n, 103n))).toBe('ok');
      expect(match([1n, 2n, 3n])).toEqual(scores([A, 1, 2]));
      expect(match([7n, 8n])).toEqual(scores([A, 1, 2]));
      expect(idx.stats().counters.blockNotFound).toBe(0);
    });

    it('an edge left without full holders drops its children, which stay reachable by lookup', () => {
      // Both holders use the same engine hashes (local + 100).
      // A: N[1,2,3]{A}; B diverges after 2: N[1,2]{A,B} -> S[3]{A}, T[9]{B}.
      expect(idx.applyStored(A, null, blocks([1n, 2n, 3n]))).toBe('ok');
      expect(idx.applyStored(B, null, blocks([1n, 2n, 9n]))).toBe('ok');
      expect(match([1n, 2n, 3n])).toEqual(scores([A, 3, 3], [B, 2, 3]));
      // A removes 101: A leaves N (drops 101, 102) but keeps S. Scoring walks
      // from the root, so A's S no longer counts.
      expect(idx.applyRemoved(A, u64s(101n))).toBe('ok');
      expect(match([1n, 2n, 3n])).toEqual(scores([B, 2, 3]));
      expect(idx.treeSize(A)).toBe(1);
      // B removes 101: N has no full holder, loses S and T, and leaves the root.
      expect(idx.applyRemoved(B, u64s(101n))).toBe('ok');
      expect(match([1n, 2n, 3n])).toEqual(none);
      expect(match([1n, 2n, 9n])).toEqual(none);
      expect(idx.stats().memberships).toBe(2);
      // Detached S and T still accept stores through their holders' lookups.
      expect(idx.applyStored(A, 103n, blocks([4n]))).toBe('ok');
      expect(idx.applyStored(B, 109n, blocks([10n]))).toBe('ok');
      expect(idx.treeSize(A)).toBe(2);
      expect(idx.treeSize(B)).toBe(2);
      expect(match([1n, 2n, 3n, 4n])).toEqual(none);
    });

    it("an edge keeps its first storer's engine hashes; other hashes do not resolve on it", () => {
      // N[1,2]{A,B} with edge externals 101,102 (A stored first). B's lookup
      // maps 201,202 to N, but positions are resolved against the edge's
      // externals, so B can neither remove 202 nor store after it (Dynamo's
      // `edge_index` behaves the same). B's entry for 202 is kept.
      expect(idx.applyStored(A, null, blocks([1n, 2n]))).toBe('ok');
      expect(idx.applyStored(B, null, blocks([1n, 2n], 200n))).toBe('ok');
      expect(idx.applyRemoved(B, u64s(202n))).toBe('block_not_found');
      expect(match([1n, 2n])).toEqual(scores([A, 2, 2], [B, 2, 2]));
      expect(idx.applyStored(B, 202n, blocks([3n], 200n))).toBe('parent_not_found');
      expect(idx.treeSize(B)).toBe(2);
      // The first storer extends and removes normally.
      expect(idx.applyStored(A, 102n, blocks([3n]))).toBe('ok');
      expect(idx.applyRemoved(A, u64s(101n))).toBe('ok');
      expect(match([1n, 2n, 3n])).toEqual(scores([B, 2, 2]));
    });

    it('removeHolder() drops one dp rank without counting an event or registering a holder', () => {
      const r0 = w(7n, 0);
      const r1 = w(7n, 1);
      expect(idx.applyStored(r0, null, blocks([1n, 2n]))).toBe('ok');
      expect(idx.applyStored(r1, null, blocks([1n, 2n]))).toBe('ok');
      idx.removeHolder(r1);
      idx.removeHolder(w(9n)); // unknown: nothing happens
      expect(match([1n, 2n])).toEqual(scores([r0, 2, 2]));
      expect(idx.stats()).toEqual({
        workers: 1,
        memberships: 2,
        counters: { applied: 2, parentNotFound: 0, blockNotFound: 0, invalidBlockSequence: 0 },
      });
      expect(idx.applyStored(r1, null, blocks([1n]))).toBe('ok');
    });

    it('clear() drops one dp rank only', () => {
      const r0 = w(7n, 0);
      const r1 = w(7n, 1);
      expect(idx.applyStored(r0, null, blocks([1n, 2n]))).toBe('ok');
      expect(idx.applyStored(r1, null, blocks([1n, 2n]))).toBe('ok');
      expect(match([1n, 2n])).toEqual(scores([r0, 2, 2], [r1, 2, 2]));
      idx.clear(r1);
      expect(match([1n, 2n])).toEqual(scores([r0, 2, 2]));
      expect(idx.treeSize(r1)).toBe(0);
      // Clearing an unknown holder is a no-op that still counts as applied.
      idx.clear(w(9n));
      expect(idx.stats()).toEqual({
        workers: 1,
        memberships: 2,
        counters: { applied: 4, parentNotFound: 0, blockNotFound: 0, invalidBlockSequence: 0 },
      });
      // The cleared rank can store again.
      expect(idx.applyStored(r1, null, blocks([1n]))).toBe('ok');
      expect(match([1n, 2n])).toEqual(scores([r0, 2, 2], [r1, 1, 1]));
    });

    it('removeWorker drops every dp rank of the worker', () => {
      const r0 = w(7n, 0);
      const r1 = w(7n, 1);
      const other = w(8n, 0);
      for (const k of [r0, r1, other])
        expect(idx.applyStored(k, null, blocks([1n, 2n]))).toBe('ok');
      idx.removeWorker(7n);
      expect(match([1n, 2n])).toEqual(scores([other, 2, 2]));
      expect(idx.treeSize(r0)).toBe(0);
      expect(idx.treeSize(r1)).toBe(0);
      idx.removeWorker(12345n);
      // removeWorker is not an event: counters are untouched.
      expect(idx.stats()).toEqual({
        workers: 1,
        memberships: 2,
        counters: { applied: 3, parentNotFound: 0, blockNotFound: 0, invalidBlockSequence: 0 },
      });
      expect(idx.applyStored(r0, null, blocks([1n, 2n]))).toBe('ok');
      expect(match([1n, 2n])).toEqual(scores([r0, 2, 2], [other, 2, 2]));
    });

    it('earlyExit does not cut a walk that stays on one edge', () => {
      // A stores [1,2,3,4]: N[1,2,3,4]{A}. B stores [1], a prefix of N's edge,
      // so N is not split: N[1,2,3,4]{A} B:1. The query is decided by that one
      // node (first node: A active, B scores min(1, 4) = 1; the query ends with
      // the edge), so there is nothing left to skip: A scores 4 either way.
      expect(idx.applyStored(A, null, blocks([1n, 2n, 3n, 4n]))).toBe('ok');
      expect(idx.applyStored(B, null, blocks([1n], 200n))).toBe('ok');
      expect(match([1n, 2n, 3n, 4n], true)).toEqual(scores([A, 4, 4], [B, 1, 1]));
      expect(match([1n, 2n, 3n, 4n], false)).toEqual(scores([A, 4, 4], [B, 1, 1]));
    });

    it('earlyExit stops descending once a single holder remains', () => {
      // A stores [1,2,3] then [1,2,7]: N[1,2]{A} -> S[3]{A}, T[7]{A}.
      // B stores [1]: partial holder of N, N[1,2]{A} B:1.
      // Query [1,2,3]: at N, m = 2, active = {A}, B scores min(1, 2) = 1.
      // - without earlyExit the walk continues into S (m = 1), A stays: A = 3;
      // - with earlyExit one active holder ends the walk after N: A = 2.
      expect(idx.applyStored(A, null, blocks([1n, 2n, 3n]))).toBe('ok');
      expect(idx.applyStored(A, null, blocks([1n, 2n, 7n]))).toBe('ok');
      expect(idx.applyStored(B, null, blocks([1n], 200n))).toBe('ok');
      expect(match([1n, 2n, 3n], false)).toEqual(scores([A, 3, 4], [B, 1, 1]));
      expect(match([1n, 2n, 3n], true)).toEqual(scores([A, 2, 4], [B, 1, 1]));
    });

    it('round-trips hashes and worker ids above 2^63', () => {
      const max = 2n ** 64n - 1n;
      const big = w(max, 3);
      const bigLess = w(max - 1n, 0);
      const l0 = max;
      const l1 = 2n ** 63n;
      const l2 = 2n ** 63n + 1n;
      const e0 = max - 1n;
      const e1 = 2n ** 63n + 5n;
      const e2 = max - 2n;
      expect(idx.applyStored(big, null, pairs([l0, e0], [l1, e1], [l2, e2]))).toBe('ok');
      expect(idx.applyStored(bigLess, null, pairs([l0, e0]))).toBe('ok');
      expect(match([l0, l1, l2])).toEqual(scores([bigLess, 1, 1], [big, 3, 3]));
      // Parent hash above 2^63 extends the leaf N[l0,l1,l2] (big full, bigLess:1).
      expect(idx.applyStored(big, e2, pairs([max - 5n, max - 6n]))).toBe('ok');
      expect(match([l0, l1, l2, max - 5n])).toEqual(scores([bigLess, 1, 1], [big, 4, 4]));
      // Removing e1 cuts big at position 1.
      expect(idx.applyRemoved(big, u64s(e1))).toBe('ok');
      const got = match([l0, l1, l2, max - 5n]);
      expect(got).toEqual(scores([bigLess, 1, 1], [big, 1, 1]));
      expect(got.workers[1]?.workerId).toBe(max);
      expect(typeof got.workers[1]?.workerId).toBe('bigint');
      idx.removeWorker(max);
      expect(match([l0])).toEqual(scores([bigLess, 1, 1]));
    });

    it('keeps worker ids above 2^53 distinct and sorts them numerically', () => {
      // Number(2^53) === Number(2^53 + 1): a lossy id would merge these holders.
      const a = w(2n ** 53n);
      const b = w(2n ** 53n + 1n);
      const ten = w(10n);
      const two = w(2n);
      // N[1,2,3]{a, two} b:2 ten:1.
      expect(idx.applyStored(a, null, blocks([1n, 2n, 3n]))).toBe('ok');
      expect(idx.applyStored(b, null, blocks([1n, 2n]))).toBe('ok');
      expect(idx.applyStored(ten, null, blocks([1n]))).toBe('ok');
      expect(idx.applyStored(two, null, blocks([1n, 2n, 3n]))).toBe('ok');
      expect(match([1n, 2n, 3n])).toEqual(scores([two, 3, 3], [ten, 1, 1], [a, 3, 3], [b, 2, 2]));
      expect(idx.treeSize(a)).toBe(3);
      expect(idx.treeSize(b)).toBe(2);
      expect(idx.stats().workers).toBe(4);
    });

    it('treeSize and stats().memberships count lookup entries', () => {
      expect(idx.applyStored(A, null, blocks([1n, 2n, 3n]))).toBe('ok');
      expect(idx.applyStored(B, null, blocks([1n, 2n], 200n))).toBe('ok');
      expect(idx.treeSize(A)).toBe(3);
      expect(idx.treeSize(B)).toBe(2);
      expect(idx.treeSize(w(3n))).toBe(0);
      expect(idx.treeSize(w(1n, 1))).toBe(0);
      expect(idx.stats().memberships).toBe(5);
      // A duplicate store changes nothing.
      expect(idx.applyStored(A, null, blocks([1n, 2n, 3n]))).toBe('ok');
      expect(idx.stats().memberships).toBe(5);
      expect(match([1n, 2n, 3n])).toEqual(scores([A, 3, 3], [B, 2, 2]));
      // Each lookup counts on its own: B re-stores block 2 under a second external hash.
      expect(idx.applyStored(B, null, pairs([1n, 201n], [2n, 302n]))).toBe('ok');
      expect(idx.treeSize(B)).toBe(3);
      expect(idx.stats().memberships).toBe(6);
    });
    it('rejects hash arrays of different lengths without touching the index', () => {
      const bad = { localHashes: u64s(1n, 2n), externalHashes: u64s(101n) };
      expect(idx.applyStored(A, null, bad)).toBe('length_mismatch');
      // Checked before anything else: the holder is not made known, nothing is counted.
      expect(idx.applyStored(w(-1n), 2n ** 64n, bad)).toBe('length_mismatch');
      expect(idx.stats()).toEqual({
        workers: 0,
        memberships: 0,
        counters: { applied: 0, parentNotFound: 0, blockNotFound: 0, invalidBlockSequence: 0 },
      });
      expect(match([1n])).toEqual(none);
    });

    it('rejects worker ids and parent hashes outside u64 with invalid_argument', () => {
      const tooBig = 2n ** 64n;
      const ok = blocks([1n]);
      expect(thrownCode(() => idx.applyStored(w(-1n), null, ok))).toBe('invalid_argument');
      expect(thrownCode(() => idx.applyStored(w(tooBig), null, ok))).toBe('invalid_argument');
      expect(thrownCode(() => idx.applyStored(A, -1n, ok))).toBe('invalid_argument');
      expect(thrownCode(() => idx.applyStored(A, tooBig, ok))).toBe('invalid_argument');
      expect(thrownCode(() => idx.applyRemoved(w(-1n), u64s(101n)))).toBe('invalid_argument');
      expect(thrownCode(() => idx.clear(w(tooBig)))).toBe('invalid_argument');
      expect(thrownCode(() => idx.removeWorker(-1n))).toBe('invalid_argument');
      expect(thrownCode(() => idx.treeSize(w(tooBig)))).toBe('invalid_argument');
      // Nothing was applied or made known.
      expect(idx.stats()).toEqual({
        workers: 0,
        memberships: 0,
        counters: { applied: 0, parentNotFound: 0, blockNotFound: 0, invalidBlockSequence: 0 },
      });
    });

    it('throws disposed from every call after dispose(); a second dispose is harmless', () => {
      expect(idx.applyStored(A, null, blocks([1n]))).toBe('ok');
      idx.dispose();
      const calls: Array<() => unknown> = [
        () => idx.applyStored(A, null, blocks([2n])),
        () => idx.applyStored(A, null, { localHashes: u64s(1n), externalHashes: u64s() }),
        () => idx.applyRemoved(A, u64s(101n)),
        () => idx.clear(A),
        () => idx.removeHolder(A),
        () => idx.removeWorker(1n),
        () => idx.findMatches(u64s(1n), false),
        () => idx.treeSize(A),
        () => idx.stats(),
      ];
      for (const call of calls) expect(thrownCode(call)).toBe('disposed');
      expect(() => idx.dispose()).not.toThrow();
    });
  });
}
