/**
 * Pure-TypeScript twin of the native KV prefix index (native/core/src/index.rs):
 * a compressed radix tree keyed by local block hashes, with one lookup per
 * (worker, dp rank) from the engine's external block hash to where that block
 * lives in the tree.
 *
 * Contract: for any event stream, every observable result (`findMatches`,
 * outcomes, `treeSize`, `stats`) equals the native index's, and therefore
 * `dynamo_kv_router::RadixTree` 1.6.1's (checked by the native-vs-JS
 * differential test). Dynamo's observable quirks are part of the contract:
 * - a removal in the middle of an edge cuts the holder's coverage at that
 *   position and drops its later lookup entries on the same edge only;
 * - an edge with no full holder loses its children (cascade), and detached
 *   subtrees stay reachable from lookups (stores may still attach to them);
 * - a store whose parent is missing or not covered by the holder is dropped.
 * The logic is a one-to-one port of the Rust index (same operation order,
 * same sorted holder sets, same merge-intersection when scoring); keep the two
 * in step when either changes.
 *
 * Layout: nodes live in one arena addressed by index, holders are interned to
 * dense slots that are never reused, holder sets are sorted slot arrays, and
 * nodes are reference counted (lookup entries + the parent link) and released
 * at the end of each operation, exactly like the Rust arena.
 *
 * Failure modes: malformed events return an outcome other than `'ok'` and leave
 * the index unchanged apart from what Dynamo also changes. Arguments are
 * checked like the native glue does (native/napi/src/lib.rs): hash array
 * lengths first (`'length_mismatch'`), then worker ids and parent hashes must
 * be u64 (`KvEppError('invalid_argument')`); dp ranks are taken modulo 2^32
 * as napi's `u32` conversion does. A split that reaches a removed holder's
 * stale membership throws a plain `Error` (an invariant violation: the Rust
 * index and Dynamo panic at the same point). Confined to the thread that made
 * it; not reentrant.
 */
import { KvEppError } from '../../errors.js';
import type {
  ApplyOutcome,
  IndexStats,
  KvIndex,
  OverlapScores,
  StoredBlocks,
  WorkerRank,
} from '../types.js';

/** Why an event was (partly) not applied; `null` means applied. */
type EventError = 'parent_not_found' | 'block_not_found' | 'invalid_block_sequence';

const NONE = -1;
const ROOT = 0;
const U64_MAX = (1n << 64n) - 1n;

function checkU64(v: bigint, field: string): void {
  if (typeof v !== 'bigint' || v < 0n || v > U64_MAX) {
    throw new KvEppError('invalid_argument', `${field} must be an unsigned 64-bit integer`);
  }
}

/** The holder as the native glue sees it: u64 worker id, dp rank as napi's `u32` (ToUint32). */
function holderOf(worker: WorkerRank): WorkerRank {
  checkU64(worker.workerId, 'workerId');
  return { workerId: worker.workerId, dpRank: worker.dpRank >>> 0 };
}

/** Index of the first element of sorted `xs` that is `>= x`. */
function lowerBound(xs: readonly number[], x: number): number {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((xs[mid] as number) < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

class RadixNode {
  /** Holders covering the whole edge, sorted. */
  full: number[] = [];
  /**
   * Holders covering `edge[..cutoff]` with `0 < cutoff < edge.length`, sorted by
   * slot; `cutoffVals[i]` belongs to `cutoffSlots[i]`.
   */
  cutoffSlots: number[] = [];
  cutoffVals: number[] = [];
  children = new Map<bigint, number>();
  /** Lookup entries pointing here plus one for the parent link. */
  refs = 0;
  /** Once a node has had children it is never extended as a leaf again. */
  internal = false;
  live = true;

  constructor(
    /** Local hash per block; empty only for the root. */
    public edgeLocal: bigint[],
    /** External hash per block, parallel to `edgeLocal`. */
    public edgeExt: bigint[],
    /** Parent while linked in the parent's children; `NONE` once detached. */
    public parent: number,
  ) {}

  get edgeLen(): number {
    return this.edgeLocal.length;
  }

  isFull(w: number): boolean {
    const i = lowerBound(this.full, w);
    return this.full[i] === w;
  }

  cutoffOf(w: number): number | undefined {
    const i = lowerBound(this.cutoffSlots, w);
    return this.cutoffSlots[i] === w ? this.cutoffVals[i] : undefined;
  }

  currentCutoff(w: number): number {
    if (this.isFull(w)) return this.edgeLen;
    return this.cutoffOf(w) ?? 0;
  }

  coversPos(w: number, pos: number): boolean {
    if (this.isFull(w)) return true;
    const c = this.cutoffOf(w);
    return c !== undefined && pos < c;
  }

  hasAnyWorkers(): boolean {
    return this.full.length > 0 || this.cutoffSlots.length > 0;
  }

  addFull(w: number): boolean {
    const i = lowerBound(this.full, w);
    if (this.full[i] === w) return false;
    this.full.splice(i, 0, w);
    return true;
  }

  removeFull(w: number): boolean {
    const i = lowerBound(this.full, w);
    if (this.full[i] !== w) return false;
    this.full.splice(i, 1);
    return true;
  }

  setCutoff(w: number, c: number): void {
    const i = lowerBound(this.cutoffSlots, w);
    if (this.cutoffSlots[i] === w) {
      this.cutoffVals[i] = c;
    } else {
      this.cutoffSlots.splice(i, 0, w);
      this.cutoffVals.splice(i, 0, c);
    }
  }

  removeCutoff(w: number): void {
    const i = lowerBound(this.cutoffSlots, w);
    if (this.cutoffSlots[i] === w) {
      this.cutoffSlots.splice(i, 1);
      this.cutoffVals.splice(i, 1);
    }
  }

  dropWorker(w: number): void {
    this.removeFull(w);
    this.removeCutoff(w);
  }

  /** Makes `w` a full holder; true when that changed anything. */
  promoteToFull(w: number): boolean {
    if (this.isFull(w)) return false;
    this.removeCutoff(w);
    this.addFull(w);
    return true;
  }

  /** Extends `w`'s coverage to at least `edge[..cutoff]`; true when changed. */
  coverPrefix(w: number, cutoff: number): boolean {
    if (cutoff === 0) return false;
    if (cutoff >= this.edgeLen) return this.promoteToFull(w);
    if (this.isFull(w)) return false;
    const c = this.cutoffOf(w);
    if (c !== undefined && c >= cutoff) return false;
    this.setCutoff(w, cutoff);
    return true;
  }

  /** Position of `hash` in this edge, searched outwards from `hint`; -1 when absent. */
  positionOf(hash: bigint, hint: number): number {
    const len = this.edgeLen;
    if (len === 0) return -1;
    const h = Math.min(hint, len - 1);
    if (this.edgeExt[h] === hash) return h;
    let lo = h;
    let hi = h + 1;
    for (;;) {
      let more = false;
      if (lo > 0) {
        lo -= 1;
        if (this.edgeExt[lo] === hash) return lo;
        more = true;
      }
      if (hi < len) {
        if (this.edgeExt[hi] === hash) return hi;
        hi += 1;
        more = true;
      }
      if (!more) return -1;
    }
  }

  /** Where a holder's lookup hash most likely sits: just below its coverage end. */
  hintFor(w: number): number {
    const c = this.currentCutoff(w);
    return c === 0 ? Math.max(0, this.edgeLen - 1) : c - 1;
  }

  /** `edge[parentPos+1..]` starts with all of `blocks`. */
  suffixMatchesStore(parentPos: number, local: BigUint64Array, ext: BigUint64Array): boolean {
    const from = parentPos + 1;
    const suffixLen = this.edgeLen - from;
    if (local.length > suffixLen) return false;
    for (let i = 0; i < local.length; i++) {
      if (this.edgeLocal[from + i] !== local[i] || this.edgeExt[from + i] !== ext[i]) return false;
    }
    return true;
  }

  /** `blocks` starts with all of `edge[parentPos+1..]` and is longer: the suffix length, else -1. */
  storeStartsWithSuffix(parentPos: number, local: BigUint64Array, ext: BigUint64Array): number {
    const from = parentPos + 1;
    const suffixLen = this.edgeLen - from;
    if (local.length <= suffixLen) return -1;
    for (let i = 0; i < suffixLen; i++) {
      if (this.edgeLocal[from + i] !== local[i] || this.edgeExt[from + i] !== ext[i]) return -1;
    }
    return suffixLen;
  }
}

/** Per-holder lookup: external hash -> node (the position is found in its edge). */
type Lookup = Map<bigint, number>;

interface Slot {
  key: WorkerRank;
  /**
   * `null` once the holder was removed. Slots are never reused for another
   * holder: stale memberships Dynamo keeps must not leak to a newcomer.
   */
  lookup: Lookup | null;
}

function slotKey(workerId: bigint, dpRank: number): string {
  return `${workerId}:${dpRank}`;
}

function compareWorkers(a: WorkerRank, b: WorkerRank): number {
  if (a.workerId !== b.workerId) return a.workerId < b.workerId ? -1 : 1;
  return a.dpRank - b.dpRank;
}

const emptyScores = (): OverlapScores => ({ workers: [], blocks: [], treeSizes: [] });

export class JsKvIndex implements KvIndex {
  readonly backend = 'js' as const;

  private nodes: RadixNode[] = [];
  private free: number[] = [];
  private pendingFree: number[] = [];
  private slots: Slot[] = [];
  private slotOf = new Map<string, number>();
  private counters = {
    applied: 0,
    parentNotFound: 0,
    blockNotFound: 0,
    invalidBlockSequence: 0,
    duplicateStores: 0,
  };
  private disposed = false;

  constructor() {
    const root = new RadixNode([], [], NONE);
    root.internal = true;
    root.refs = 1;
    this.nodes.push(root);
  }

  // ---- public surface ------------------------------------------------------

  applyStored(worker: WorkerRank, parentHash: bigint | null, blocks: StoredBlocks): ApplyOutcome {
    this.checkLive();
    if (blocks.localHashes.length !== blocks.externalHashes.length) return 'length_mismatch';
    const holder = holderOf(worker);
    if (parentHash !== null) checkU64(parentHash, 'parentHash');
    const s = this.ensureSlot(holder);
    const r = this.stored(s, parentHash, blocks.localHashes, blocks.externalHashes);
    this.collect();
    return this.count(r);
  }

  applyRemoved(worker: WorkerRank, externalHashes: BigUint64Array): ApplyOutcome {
    this.checkLive();
    const s = this.ensureSlot(holderOf(worker));
    const r = this.removed(s, externalHashes);
    this.collect();
    return this.count(r);
  }

  /** `AllBlocksCleared`: Dynamo's `remove_worker_dp_rank`, counted as applied. */
  clear(worker: WorkerRank): void {
    this.checkLive();
    const holder = holderOf(worker);
    this.ensureSlot(holder);
    this.removeWorkerDpRank(holder);
    this.counters.applied += 1;
  }

  removeWorker(workerId: bigint): void {
    this.checkLive();
    checkU64(workerId, 'workerId');
    const slots: number[] = [];
    this.slots.forEach((sl, i) => {
      if (sl.key.workerId === workerId && sl.lookup !== null) slots.push(i);
    });
    for (const s of slots) this.dropSlot(s);
    this.collect();
  }

  /**
   * Contiguous prefix depth per holder for the query's local hashes. With
   * `earlyExit`, the walk stops once a single holder remains.
   */
  findMatches(sequence: BigUint64Array, earlyExit: boolean): OverlapScores {
    this.checkLive();
    if (sequence.length === 0) return emptyScores();
    const scoreSlots: number[] = [];
    const scoreDepths: number[] = [];
    let next = this.node(ROOT).children.get(sequence[0] as bigint);
    let active: number[] = [];
    let matched = 0;
    let first = true;
    while (matched < sequence.length) {
      if (next === undefined) break;
      const node = this.node(next);
      next = undefined;
      const walk = Math.min(node.edgeLen, sequence.length - matched);
      let m = 0;
      while (m < walk && node.edgeLocal[m] === sequence[matched + m]) m++;
      if (m === 0) break;
      if (first) {
        active = node.full.slice();
        for (let i = 0; i < node.cutoffSlots.length; i++) {
          const contribution = Math.min(node.cutoffVals[i] as number, m);
          if (contribution > 0) {
            scoreSlots.push(node.cutoffSlots[i] as number);
            scoreDepths.push(contribution);
          }
        }
        first = false;
      } else {
        // Merge-intersect the sorted active set with the node's full holders;
        // leavers score their depth (plus their partial coverage here).
        const scratch: number[] = [];
        const full = node.full;
        let j = 0;
        for (const w of active) {
          while (j < full.length && (full[j] as number) < w) j++;
          if (j < full.length && full[j] === w) {
            scratch.push(w);
            continue;
          }
          const c = node.cutoffOf(w);
          const extra = c === undefined ? 0 : Math.min(c, m);
          scoreSlots.push(w);
          scoreDepths.push(matched + extra);
        }
        active = scratch;
      }
      matched += m;
      if (
        active.length === 0 ||
        m < node.edgeLen ||
        matched === sequence.length ||
        (earlyExit && active.length === 1)
      ) {
        break;
      }
      next = node.children.get(sequence[matched] as bigint);
    }
    for (const w of active) {
      scoreSlots.push(w);
      scoreDepths.push(matched);
    }

    const order = scoreSlots.map((_, i) => i);
    order.sort((a, b) =>
      compareWorkers(
        this.slot(scoreSlots[a] as number).key,
        this.slot(scoreSlots[b] as number).key,
      ),
    );
    const out = emptyScores();
    for (const i of order) {
      const sl = this.slot(scoreSlots[i] as number);
      out.workers.push({ workerId: sl.key.workerId, dpRank: sl.key.dpRank });
      out.blocks.push(scoreDepths[i] as number);
      out.treeSizes.push(sl.lookup?.size ?? 0);
    }
    return out;
  }

  /** Blocks held by one holder (its lookup size); 0 when unknown. */
  treeSize(worker: WorkerRank): number {
    this.checkLive();
    const holder = holderOf(worker);
    const s = this.slotOf.get(slotKey(holder.workerId, holder.dpRank));
    return s === undefined ? 0 : (this.slot(s).lookup?.size ?? 0);
  }

  memberships(): number {
    this.checkLive();
    let n = 0;
    for (const sl of this.slots) if (sl.lookup !== null) n += sl.lookup.size;
    return n;
  }

  stats(): IndexStats {
    this.checkLive();
    let workers = 0;
    let memberships = 0;
    for (const sl of this.slots) {
      if (sl.lookup === null) continue;
      workers += 1;
      memberships += sl.lookup.size;
    }
    const c = this.counters;
    return {
      workers,
      memberships,
      counters: {
        applied: c.applied,
        parentNotFound: c.parentNotFound,
        blockNotFound: c.blockNotFound,
        invalidBlockSequence: c.invalidBlockSequence,
      },
    };
  }

  /** Live tree nodes, the root included (the native `node_count`; for tests). */
  nodeCount(): number {
    this.checkLive();
    return this.nodes.length - this.free.length;
  }

  /** Releases the index; every later call except `dispose` throws `disposed`. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.nodes = [];
    this.free = [];
    this.pendingFree = [];
    this.slots = [];
    this.slotOf = new Map();
  }

  // ---- holders and arena ---------------------------------------------------

  private checkLive(): void {
    if (this.disposed) throw new KvEppError('disposed', 'the JS KV index was disposed');
  }

  private node(n: number): RadixNode {
    return this.nodes[n] as RadixNode;
  }

  private slot(s: number): Slot {
    return this.slots[s] as Slot;
  }

  /** The (checked) holder's slot, making it known (as every Dynamo event does). */
  private ensureSlot(key: WorkerRank): number {
    const k = slotKey(key.workerId, key.dpRank);
    let s = this.slotOf.get(k);
    if (s === undefined) {
      s = this.slots.length;
      this.slots.push({ key: { workerId: key.workerId, dpRank: key.dpRank }, lookup: null });
      this.slotOf.set(k, s);
    }
    const sl = this.slot(s);
    if (sl.lookup === null) sl.lookup = new Map();
    return s;
  }

  /**
   * The lookup of a holder that must be known. Throws when it is not: the Rust
   * index panics (`expect("slot ensured")`) and Dynamo panics (`unwrap`) at the
   * same point, so this is an invariant violation, not an event outcome.
   */
  private lookup(s: number): Lookup {
    const l = this.slot(s).lookup;
    if (l === null) throw new Error(`kv index invariant: holder slot ${s} has no lookup`);
    return l;
  }

  private alloc(node: RadixNode): number {
    const i = this.free.pop();
    if (i !== undefined) {
      this.nodes[i] = node;
      return i;
    }
    this.nodes.push(node);
    return this.nodes.length - 1;
  }

  private incref(n: number): void {
    this.node(n).refs += 1;
  }

  private decref(n: number): void {
    const node = this.node(n);
    node.refs -= 1;
    if (node.refs === 0) this.pendingFree.push(n);
  }

  /** Frees nodes whose last reference went away during the operation. */
  private collect(): void {
    for (let n = this.pendingFree.pop(); n !== undefined; n = this.pendingFree.pop()) {
      const node = this.node(n);
      if (!node.live || node.refs !== 0) continue;
      node.live = false;
      node.edgeLocal = [];
      node.edgeExt = [];
      node.full = [];
      node.cutoffSlots = [];
      node.cutoffVals = [];
      const children = [...node.children.values()];
      node.children = new Map();
      for (const c of children) {
        this.node(c).parent = NONE;
        this.decref(c);
      }
      this.free.push(n);
    }
  }

  /** Sets `lookup[s][hash] = node`; true when the node changed. */
  private setLookup(s: number, hash: bigint, node: number): boolean {
    const lookup = this.lookup(s);
    const old = lookup.get(hash);
    lookup.set(hash, node);
    if (old === node) return false;
    this.incref(node);
    if (old !== undefined) this.decref(old);
    return true;
  }

  private removeLookup(s: number, hash: bigint): void {
    const lookup = this.lookup(s);
    const old = lookup.get(hash);
    if (old !== undefined) {
      lookup.delete(hash);
      this.decref(old);
    }
  }

  /** Lookup entries for `ext` (placed on `node`'s edge); true when any changed. */
  private setLookups(s: number, ext: BigUint64Array, node: number): boolean {
    let changed = false;
    for (let i = 0; i < ext.length; i++) {
      // Every entry is set; no short-circuit.
      if (this.setLookup(s, ext[i] as bigint, node)) changed = true;
    }
    return changed;
  }

  private linkChild(parent: number, key: bigint, child: number): void {
    const children = this.node(parent).children;
    const old = children.get(key);
    children.set(key, child);
    this.node(child).parent = parent;
    this.incref(child);
    if (old !== undefined) {
      if (old !== child) this.node(old).parent = NONE;
      this.decref(old);
    }
  }

  /**
   * Dynamo's cascade: an edge with no full holder loses its children; a node
   * with no holder at all leaves its parent.
   */
  private pruneUnreachable(n: number): void {
    const node = this.node(n);
    if (node.full.length === 0 && node.children.size > 0) {
      const children = [...node.children.values()];
      node.children = new Map();
      for (const c of children) {
        this.node(c).parent = NONE;
        this.decref(c);
      }
    }
    if (node.hasAnyWorkers()) return;
    const parent = node.parent;
    const key = node.edgeLocal[0];
    if (parent !== NONE && key !== undefined) {
      const siblings = this.node(parent).children;
      if (siblings.get(key) === n) {
        siblings.delete(key);
        node.parent = NONE;
        this.decref(n);
      }
    }
  }

  // ---- events --------------------------------------------------------------

  removeHolder(worker: WorkerRank): void {
    this.checkLive();
    this.removeWorkerDpRank(holderOf(worker));
  }

  private removeWorkerDpRank(worker: WorkerRank): void {
    const s = this.slotOf.get(slotKey(worker.workerId, worker.dpRank));
    if (s !== undefined) {
      this.dropSlot(s);
      this.collect();
    }
  }

  private count(r: EventError | null): ApplyOutcome {
    const c = this.counters;
    switch (r) {
      case null:
        c.applied += 1;
        return 'ok';
      case 'parent_not_found':
        c.parentNotFound += 1;
        return r;
      case 'block_not_found':
        c.applied += 1;
        c.blockNotFound += 1;
        return r;
      case 'invalid_block_sequence':
        c.invalidBlockSequence += 1;
        return r;
    }
  }

  private dropSlot(s: number): void {
    const sl = this.slot(s);
    const lookup = sl.lookup;
    if (lookup === null) return;
    sl.lookup = null;
    const nodes = [...new Set(lookup.values())].sort((a, b) => a - b);
    // The lookup's references go away only after every node was visited,
    // so no node is freed while still listed.
    for (const n of nodes) {
      this.node(n).dropWorker(s);
      this.pruneUnreachable(n);
    }
    for (const n of lookup.values()) this.decref(n);
  }

  private stored(
    s: number,
    parentHash: bigint | null,
    local: BigUint64Array,
    ext: BigUint64Array,
  ): EventError | null {
    if (parentHash !== null && ext.includes(parentHash)) return 'invalid_block_sequence';
    let duplicate = local.length > 0;
    let parent = ROOT;
    if (parentHash !== null) {
      const ph = parentHash;
      const n = this.lookup(s).get(ph);
      if (n === undefined) return 'parent_not_found';
      const node = this.node(n);
      const pos = node.positionOf(ph, node.hintFor(s));
      if (pos < 0) return 'parent_not_found';
      if (!node.coversPos(s, pos)) {
        this.removeLookup(s, ph);
        return 'parent_not_found';
      }
      // The store continues inside the parent's edge.
      if (node.suffixMatchesStore(pos, local, ext)) {
        const changed = node.coverPrefix(s, pos + 1 + local.length);
        const lchanged = this.setLookups(s, ext, n);
        if (duplicate && !changed && !lchanged) this.counters.duplicateStores += 1;
        return null;
      }
      if (!node.internal) {
        const suffixLen = node.storeStartsWithSuffix(pos, local, ext);
        if (suffixLen >= 0) {
          this.appendToLeaf(n, s, local.subarray(suffixLen), ext.subarray(suffixLen));
          this.setLookups(s, ext, n);
          return null;
        }
      }
      if (node.edgeExt[node.edgeLen - 1] !== ph) this.split(n, pos + 1);
      parent = n;
    }

    let at = 0;
    while (at < local.length) {
      const restLocal = local.subarray(at);
      const restExt = ext.subarray(at);
      const firstLocal = restLocal[0] as bigint;
      const child = this.node(parent).children.get(firstLocal);
      if (child === undefined) {
        const p = this.node(parent);
        const canExtend = p.edgeLen > 0 && !p.internal && p.coversPos(s, p.edgeLen - 1);
        if (canExtend) {
          this.appendToLeaf(parent, s, restLocal, restExt);
          this.setLookups(s, restExt, parent);
          duplicate = false;
          break;
        }
        const leaf = this.newLeaf(restLocal, restExt, s, parent);
        this.node(parent).internal = true;
        this.linkChild(parent, firstLocal, leaf);
        this.setLookups(s, restExt, leaf);
        duplicate = false;
        break;
      }

      const c = this.node(child);
      const edgeLen = c.edgeLen;
      const walk = Math.min(edgeLen, restLocal.length);
      let matchLen = 0;
      while (matchLen < walk && c.edgeLocal[matchLen] === restLocal[matchLen]) matchLen++;

      if (matchLen < edgeLen) {
        if (matchLen === restLocal.length) {
          const changed = c.coverPrefix(s, matchLen);
          const lchanged = this.setLookups(s, restExt, child);
          duplicate = duplicate && !changed && !lchanged;
          break;
        }
        this.split(child, matchLen);
        this.node(child).promoteToFull(s);
        this.setLookups(s, restExt.subarray(0, matchLen), child);
        const tailLocal = restLocal.subarray(matchLen);
        const tailExt = restExt.subarray(matchLen);
        const tail = this.newLeaf(tailLocal, tailExt, s, child);
        this.node(child).internal = true;
        this.linkChild(child, tailLocal[0] as bigint, tail);
        this.setLookups(s, tailExt, tail);
        duplicate = false;
        break;
      }

      if (c.promoteToFull(s)) duplicate = false;
      if (this.setLookups(s, restExt.subarray(0, edgeLen), child)) duplicate = false;
      at += edgeLen;
      parent = child;
    }
    if (duplicate) this.counters.duplicateStores += 1;
    return null;
  }

  private newLeaf(local: BigUint64Array, ext: BigUint64Array, s: number, parent: number): number {
    const node = new RadixNode(Array.from(local), Array.from(ext), parent);
    node.full.push(s);
    return this.alloc(node);
  }

  /** Appends blocks to leaf `n` for holder `s`; other full holders keep only the old edge. */
  private appendToLeaf(n: number, s: number, local: BigUint64Array, ext: BigUint64Array): void {
    const node = this.node(n);
    const oldLen = node.edgeLen;
    const others = node.full.filter((w) => w !== s);
    for (const w of others) {
      node.removeFull(w);
      node.setCutoff(w, oldLen);
    }
    node.promoteToFull(s);
    for (let i = 0; i < local.length; i++) {
      node.edgeLocal.push(local[i] as bigint);
      node.edgeExt.push(ext[i] as bigint);
    }
  }

  /** Splits `n` so that it keeps `edge[..pos]` and a new child holds `edge[pos..]`. */
  private split(n: number, pos: number): void {
    const node = this.node(n);
    const suffixLocal = node.edgeLocal.splice(pos);
    const suffixExt = node.edgeExt.splice(pos);
    const firstLocal = suffixLocal[0] as bigint;
    const suffixFull = node.full.slice();
    const suffixCutoffSlots: number[] = [];
    const suffixCutoffVals: number[] = [];
    const keptSlots: number[] = [];
    const keptVals: number[] = [];
    const promote: number[] = [];
    for (let i = 0; i < node.cutoffSlots.length; i++) {
      const w = node.cutoffSlots[i] as number;
      const c = node.cutoffVals[i] as number;
      if (c < pos) {
        keptSlots.push(w);
        keptVals.push(c);
        continue;
      }
      promote.push(w);
      const sc = c - pos;
      if (sc > 0) {
        suffixCutoffSlots.push(w);
        suffixCutoffVals.push(sc);
      }
    }
    node.cutoffSlots = keptSlots;
    node.cutoffVals = keptVals;
    for (const w of promote) node.addFull(w);
    const children = node.children;
    node.children = new Map();
    const internal = node.internal;
    node.internal = true;

    const suffix = new RadixNode(suffixLocal, suffixExt, n);
    suffix.full = suffixFull;
    suffix.cutoffSlots = suffixCutoffSlots;
    suffix.cutoffVals = suffixCutoffVals;
    suffix.children = children;
    suffix.internal = internal;
    const sfx = this.alloc(suffix);
    for (const c of children.values()) this.node(c).parent = sfx;
    // The suffix takes over the children (their parent references move with
    // them) and becomes the node's only child.
    node.children.set(firstLocal, sfx);
    this.incref(sfx);

    const full = suffix.full.slice();
    const cutSlots = suffix.cutoffSlots.slice();
    const cutVals = suffix.cutoffVals.slice();
    const hashes = suffix.edgeExt.slice();
    // A forgotten holder can still be listed on a node its lookup no longer
    // references (Dynamo panics here); it gets no entries.
    const known = (w: number) => this.slot(w).lookup !== null;
    for (const w of full) {
      if (!known(w)) continue;
      for (let i = 0; i < hashes.length; i++) this.setLookup(w, hashes[i] as bigint, sfx);
    }
    for (let k = 0; k < cutSlots.length; k++) {
      const w = cutSlots[k] as number;
      const c = cutVals[k] as number;
      if (!known(w)) continue;
      for (let i = 0; i < c; i++) this.setLookup(w, hashes[i] as bigint, sfx);
    }
    this.pruneUnreachable(sfx);
  }

  private removed(s: number, hashes: BigUint64Array): EventError | null {
    let firstError: EventError | null = null;
    // Hashes this event already dropped as stale; a later miss on one of
    // them is expected, not an error.
    const eagerlyRemoved = new Set<bigint>();
    let i = 0;
    while (i < hashes.length) {
      const h = hashes[i] as bigint;
      i += 1;
      const lookup = this.lookup(s);
      const n = lookup.get(h);
      if (n === undefined) {
        if (!eagerlyRemoved.has(h)) firstError ??= 'block_not_found';
        continue;
      }
      lookup.delete(h);
      const node = this.node(n);
      const firstPos = node.positionOf(h, node.hintFor(s));
      if (firstPos < 0) {
        lookup.set(h, n);
        firstError ??= 'block_not_found';
        continue;
      }
      let minPos = firstPos;
      let minHash = h;
      let lastPos = firstPos;
      if (node.coversPos(s, firstPos)) {
        // Consume following hashes on the same edge in one cut.
        while (i < hashes.length) {
          const c = hashes[i] as bigint;
          const cand = lookup.get(c);
          if (cand === undefined || cand !== n) break;
          const cpos = node.positionOf(c, lastPos);
          if (cpos < 0) break;
          lastPos = cpos;
          if (!node.coversPos(s, cpos)) break;
          if (cpos < minPos) {
            minPos = cpos;
            minHash = c;
          }
          i += 1;
        }
      }
      // The entry for `h` was taken out above; release its reference now
      // that the node is no longer needed by index.
      const stale = this.removeAt(n, s, minPos, minHash);
      this.pruneUnreachable(n);
      this.decref(n);
      for (const sh of stale) {
        this.removeLookup(s, sh);
        eagerlyRemoved.add(sh);
      }
    }
    return firstError;
  }

  /** Cuts holder `s`'s coverage of `n` at `pos`; returns the hashes it no longer covers. */
  private removeAt(n: number, s: number, pos: number, removedHash: bigint): bigint[] {
    const node = this.node(n);
    const current = node.currentCutoff(s);
    if (pos >= current) return [removedHash];
    const stale = node.edgeExt.slice(pos, current);
    if (pos === 0) {
      node.dropWorker(s);
    } else {
      node.removeFull(s);
      node.setCutoff(s, pos);
    }
    return stale;
  }
}
