/**
 * Approximate mode's block lifetimes (no KV events): which (worker, dp rank,
 * sequence hash) memberships the router predicted, when each expires, and
 * the removals that bring the index back within its TTL and size cap, as
 * Dynamo's pruning indexer does.
 *
 * Dynamo's semantics, read from its source (ai-dynamo/dynamo):
 * - Sources: `PruneConfig` / `PruneManager` in lib/kv-router/src/approx.rs
 *   @209c9e83 (same code later in lib/kv-router/src/indexer/pruning.rs
 *   @18bcdc90); the indexer loop that drives it in
 *   lib/kv-router/src/indexer/kv_indexer.rs before 1.6 (the `routing_rx`,
 *   `prune_rx` and `expiry_fut` arms; `apply_event_with_prune_tracking`);
 *   the older lib/llm/src/kv_router/approx.rs @17cf2360; and the 1.6.1 crate
 *   (~/.cargo/registry/src/…/dynamo-kv-router-1.6.1/src/indexer/).
 * - Defaults: ttl 120 s, max_tree_size 2^20, prune_target_ratio 0.8
 *   (`impl Default for PruneConfig`, approx.rs L57-65).
 * - Key: one timer per `BlockEntry { key: sequence hash, worker (id + dp
 *   rank), seq_position }` (approx.rs L18-27; 1.6.1 pruning.rs:27-36), so
 *   the same block routed to two workers has two independent timers.
 * - Refresh: yes. `PruneManager::insert` overwrites `timers[key] = now + ttl`
 *   and pushes a new heap entry; the old one goes stale and is skipped when
 *   popped (approx.rs L120-137, lazy deletion; the heap is rebuilt when it
 *   holds more than 50× the live timers, `PruneManager::new(50, …)`). 1.6.1
 *   keeps this and states it: "TTL since the latest predicted insertion, not
 *   since first sighting" (kv_indexer.rs:86-90; pruning.rs:126-160).
 * - Tracked only when applied: the timers are inserted after the router's
 *   `Stored` event (parent None, blocks = (local hash, sequence hash)) was
 *   applied without error (kv_indexer.rs `routing_rx` arm:
 *   `if trie.apply_event(event).is_err() { continue; }`; 1.6.1
 *   kv_indexer.rs:45-102).
 * - Size cap: the whole tree, not per worker. After each routing decision,
 *   `if trie.current_size() > max_tree_size` a prune is scheduled, and
 *   `prune(current_size)` pops `current_size - floor(max * ratio)` live
 *   timers (approx.rs L171-219, `while num_pruned <
 *   current_size.saturating_sub(target_size)`). `current_size()` is the sum of
 *   every holder's lookup size, i.e. the total (worker, block) memberships
 *   (1.6.1 radix_tree.rs:859-861). Pruning is reactive to inserts (the older
 *   lib/llm approx.rs polled it on a `prune_interval` tick instead).
 * - Order: earliest expiry first, i.e. least recently routed. The heap is a
 *   max-heap of `(Reverse(expiry), BlockEntry)` and `BlockEntry` orders by
 *   seq_position, then key, then worker (approx.rs L35-43, L77-80), so among
 *   equal expiries (the blocks of one routing decision) the deeper position
 *   goes first: leaves before parents.
 * - Expiry: on a timer, not on insert. The indexer loop sleeps until
 *   `peek_next_expiry()` and then removes every timer with `expiry <= now`
 *   (`pop_expired`, approx.rs L139-162). 1.6.1 rounds expiries up to 100 ms
 *   buckets, so a block may stay routable up to 100 ms late (pruning.rs:22-25).
 * - Removal: each pruned or expired timer becomes a `Removed` event for its
 *   worker: one event per block before 1.6, one event per worker with the
 *   hashes sorted by seq_position in 1.6.1 (`apply_prune_removes`,
 *   kv_indexer.rs:104-128). Errors from the tree are ignored.
 * - Descendants: the pruner does nothing special; the radix tree's removal
 *   semantics apply. The worker's coverage is cut at the removed block, so its
 *   overlap with any longer prefix stops there. A node left with no worker
 *   loses its children (cascade). Their timers stay; removing them later only
 *   touches the detached nodes or reports `BlockNotFound`, both ignored.
 *   Because every routing decision refreshes its whole prefix, a parent never
 *   expires before its children, and ties remove deeper blocks first. So TTL
 *   and size pruning take leaves before parents and never strand a descendant
 *   that is still tracked.
 * - 1.6.1 differs: `PruneConfig` has only `ttl`, and the size cap moved to the
 *   approximate-LRU policy (pruning.rs:54-66, approximate_lru.rs). The issue
 *   asks for the TTL + cap + ratio indexer, which is the one reproduced here.
 *
 * This implementation:
 * - The TTL is uniform, so expiry order is insertion order. A FIFO queue
 *   (typed arrays) with lazy deletion on refresh replaces the heap: each queue
 *   slot is live iff its holder's map still points at that slot. Expiries are
 *   clamped to be non-decreasing, so a clock that steps back cannot reorder
 *   the queue. Each decision's blocks are queued deepest first, which gives
 *   Dynamo's tie-break. Two decisions at the same millisecond keep their
 *   arrival order; Dynamo's nanosecond `Instant`s practically never tie.
 * - Cost: `record` is O(blocks of the decision), `expire` / prune are
 *   O(removed), and compaction is amortised O(1) per queued entry. Nothing
 *   scans every tracked entry per decision.
 * - Size = max(index memberships, tracked entries). In approximate mode every
 *   membership was recorded here, so this is Dynamo's `current_size()`.
 *   Counting our own entries as well bounds this tracker's memory by the cap
 *   even after cascades dropped tracked blocks from the index.
 * - Removals are batched per holder as in 1.6.1, each decision's run root to
 *   leaf (see `RemovalBatch`).
 * - Bounded work per call. Dynamo prunes on its indexer's own task, off the
 *   routing path; here `route` / `record` / `maintain` run on the event loop,
 *   and one prune from 2^20 to 0.8 × 2^20 (210 k removals) took ~30 ms
 *   there, stalling health checks with unique 220 KB prompts (bench/README.md,
 *   finding AS). So each call removes at most `max(removalStep, 2 × the
 *   decision's blocks)` memberships (expired and pruned together); the rest
 *   stays queued in the same order, an unfinished prune goes on toward the
 *   target at the next call, and `backlog(now)` says when the owner should
 *   call `maintain` again soon. The same memberships go in the same order as
 *   an unbounded prune; only later, as with Dynamo's asynchronous pruner.
 *   A decision removes at least twice what it adds, so pruning catches up.
 * - `forgetHolder` / `forgetWorker` drop a holder's timers when it leaves,
 *   like 1.6.1's `remove_worker` / `remove_worker_dp_rank`.
 *
 * Pure: no timers, no I/O. The caller passes `nowMs` from a monotonic clock
 * and runs `expire` (or `maintain`) on its own schedule.
 */
import type { BlockHasher, KvIndex, WorkerRank } from '../types.js';
import { U52Map } from './u52-map.js';

export interface PruneSettings {
  /** Time to live of a routed block, ms (Dynamo `router_ttl_secs` × 1000). */
  ttlMs: number;
  /** Memberships (holder × block) above which pruning starts (`router_max_tree_size`). */
  maxTreeSize: number;
  /** Pruning goes down to `floor(maxTreeSize × ratio)` (`router_prune_target_ratio`). */
  pruneTargetRatio: number;
  /**
   * A refresh that would move a block's expiry by less than this is skipped,
   * so the block may expire up to this much early (default 0: exact). A hot
   * prefix routed hundreds of times a second is then queued once per period
   * instead of once per request (Dynamo 1.6.1 similarly rounds expiries to
   * 100 ms buckets, late instead of early).
   */
  refreshGranularityMs?: number | undefined;
  /**
   * Removals per call at most (more when the decision is larger: twice its
   * blocks). Default `DEFAULT_REMOVAL_STEP`.
   */
  removalStep?: number | undefined;
}

/** ~0.25 ms of index work per call (bench/README.md, finding AS). */
export const DEFAULT_REMOVAL_STEP = 1024;

/** Dynamo's `PruneConfig::default()`. */
export const DEFAULT_PRUNE_SETTINGS: Readonly<PruneSettings> = Object.freeze({
  ttlMs: 120_000,
  maxTreeSize: 2 ** 20,
  pruneTargetRatio: 0.8,
});

/** What one call removed from the index. */
export interface PruneResult {
  /** Memberships whose TTL ran out. */
  expired: number;
  /** Memberships dropped to get back under the size cap. */
  pruned: number;
}

/**
 * Approximate mode's tracker, in TypeScript (`PruneTracker`) or in the addon
 * (`NativePruneTracker`, over a native index): the same decisions, the same
 * removals in the same order. `createApproxTracker` (src/kv/factory.ts) picks.
 */
export interface ApproxTracker {
  /**
   * After a routing decision: expire what is due, store the decision's blocks
   * (`localHashes[0..count)`, parent none, their sequence hashes as external
   * hashes) for `worker`, and when the index applied them, track them and
   * prune above the cap. Returns the memberships removed.
   */
  route(worker: WorkerRank, localHashes: BigUint64Array, count: number, nowMs: number): number;
  /**
   * `route`, later and off the calling thread where the implementation can
   * (native: kv-epp's approximate-mode thread, in queue order; TypeScript: at
   * once). The hashes are copied; the caller may reuse them.
   */
  routeSoon(worker: WorkerRank, localHashes: BigUint64Array, count: number, nowMs: number): void;
  /** Returns once every `routeSoon` / `maintainSoon` before it has run. */
  settle(): void;
  /**
   * Whether `routeSoon` / `maintainSoon` run on another thread (native). Then
   * `maintainSoon` also works off the whole backlog there, so the owner's
   * upkeep need not repeat it on its own thread.
   */
  readonly offThread: boolean;
  /** `maintain`, later on the tracker's thread until no backlog is left (native); at once otherwise. */
  maintainSoon(nowMs: number): void;
  /** Tracks blocks the index already stored (see `PruneTracker.record`); returns the pruned count. */
  record(worker: WorkerRank, sequenceHashes: BigUint64Array, nowMs: number, count?: number): number;
  expire(nowMs: number): number;
  /** Expiry, then the size cap, at most `removalStep` removals. */
  maintain(nowMs: number): PruneResult;
  /**
   * Removals a call's budget left over: a prune short of its target, or an
   * expiry due at `nowMs`. The owner then calls `maintain` again soon.
   */
  backlog(nowMs: number): boolean;
  forgetHolder(worker: WorkerRank): void;
  forgetWorker(workerId: bigint): void;
  readonly size: number;
  readonly queued: number;
  nextExpiry(): number | undefined;
  /** Releases the tracker (native: its handle). */
  dispose(): void;
}

/**
 * The settings with the default refresh granularity filled in.
 * @throws RangeError outside Dynamo's ranges (both trackers).
 */
export function validatePruneSettings(
  settings: PruneSettings,
): PruneSettings & { refreshGranularityMs: number; removalStep: number } {
  const { ttlMs, maxTreeSize, pruneTargetRatio } = settings;
  if (!(Number.isFinite(ttlMs) && ttlMs > 0)) throw new RangeError('ttlMs must be > 0');
  if (!(Number.isSafeInteger(maxTreeSize) && maxTreeSize > 0))
    throw new RangeError('maxTreeSize must be a positive integer');
  if (!(pruneTargetRatio > 0 && pruneTargetRatio <= 1))
    throw new RangeError('pruneTargetRatio must be in (0, 1]');
  const g = settings.refreshGranularityMs ?? 0;
  if (!(Number.isFinite(g) && g >= 0 && g < ttlMs))
    throw new RangeError('refreshGranularityMs must be in [0, ttlMs)');
  const removalStep = settings.removalStep ?? DEFAULT_REMOVAL_STEP;
  if (!(Number.isSafeInteger(removalStep) && removalStep > 0))
    throw new RangeError('removalStep must be a positive integer');
  return { ttlMs, maxTreeSize, pruneTargetRatio, refreshGranularityMs: g, removalStep };
}

interface Holder {
  worker: WorkerRank;
  /**
   * Low 52 bits of the sequence hash → queue slot of its live entry, in a
   * typed-array hash map: a JS Map keyed by bigint (and the BigInt each
   * typed-array read allocates) cost ~1 µs per block, a fifth of the main
   * thread for 50k-token prompts.
   */
  live: U52Map;
  /** Full hash → slot for the rare hash whose low 52 bits collide with a live one. */
  overflow: Map<bigint, number> | undefined;
}

/** The little-endian u32 halves of a u64 as an exact 52-bit number key. */
function key52(lo: number, hi: number): number {
  return (hi & 0xfffff) * 4294967296 + lo;
}

if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1) {
  throw new Error('prune-tracker assumes a little-endian platform');
}

const MIN_CAPACITY = 1024;

export class PruneTracker implements ApproxTracker {
  private readonly ttlMs: number;
  private readonly maxTreeSize: number;
  private readonly targetSize: number;
  private readonly refreshMs: number;
  private readonly removalStep: number;
  /** Above the cap once and not yet back at the target: pruning goes on. */
  private pruning = false;

  private readonly holders: Holder[] = [];
  private readonly holderSlot = new Map<string, number>();
  private liveCount = 0;

  // FIFO by expiry; slots in [head, tail) are queued, live or stale.
  private head = 0;
  private tail = 0;
  private qHash = new BigUint64Array(MIN_CAPACITY);
  /** `qHash` as u32 halves (lo at 2i, hi at 2i+1). */
  private qWords = new Uint32Array(this.qHash.buffer);
  private qExpiry = new Float64Array(MIN_CAPACITY);
  private qHolder = new Int32Array(MIN_CAPACITY);
  private lastExpiry = Number.NEGATIVE_INFINITY;

  /** `hasher` is needed by `route` only (it computes the sequence hashes). */
  constructor(
    private readonly index: KvIndex,
    settings: PruneSettings = DEFAULT_PRUNE_SETTINGS,
    private readonly hasher?: BlockHasher,
  ) {
    const v = validatePruneSettings(settings);
    this.ttlMs = v.ttlMs;
    this.maxTreeSize = v.maxTreeSize;
    this.targetSize = Math.floor(v.maxTreeSize * v.pruneTargetRatio);
    this.refreshMs = v.refreshGranularityMs;
    this.removalStep = v.removalStep;
  }

  /** Live tracked memberships. */
  get size(): number {
    return this.liveCount;
  }

  /** Queue slots in use, live or stale (bounded by a small multiple of `size`). */
  get queued(): number {
    return this.tail - this.head;
  }

  /** The earliest pending expiry (ms), or undefined when nothing is queued. */
  nextExpiry(): number | undefined {
    while (this.head < this.tail && !this.isLive(this.head)) this.head++;
    return this.head < this.tail ? this.qExpiry[this.head] : undefined;
  }

  /**
   * Records that `worker` now holds `sequenceHashes[0..count)` (call after the
   * index applied the matching `Stored` event): every block expires at
   * `nowMs + ttl`, refreshing blocks already tracked. Then prunes oldest first
   * toward `floor(maxTreeSize × ratio)` if the size went above the cap (at
   * most the call's budget); returns how many memberships that pruned.
   */
  record(
    worker: WorkerRank,
    sequenceHashes: BigUint64Array,
    nowMs: number,
    count = sequenceHashes.length,
  ): number {
    this.track(worker, sequenceHashes, nowMs, count);
    return this.pruneToCap(this.budget(count));
  }

  /** Removals one call may make for a decision of `blocks` blocks. */
  private budget(blocks: number): number {
    return Math.max(this.removalStep, 2 * blocks);
  }

  private track(
    worker: WorkerRank,
    sequenceHashes: BigUint64Array,
    nowMs: number,
    count: number,
  ): void {
    const s = this.slotFor(worker);
    const live = (this.holders[s] as Holder).live;
    const expiry = Math.max(nowMs + this.ttlMs, this.lastExpiry);
    this.lastExpiry = expiry;
    this.reserve(count);
    const words = new Uint32Array(sequenceHashes.buffer, sequenceHashes.byteOffset, count * 2);
    const holder = this.holders[s] as Holder;
    const q = this.qWords;
    // Deepest first: among equal expiries, leaves leave before parents.
    for (let pos = count - 1; pos >= 0; pos--) {
      const lo = words[2 * pos] as number;
      const hi = words[2 * pos + 1] as number;
      const k = key52(lo, hi);
      const prev = live.get(k);
      const same = prev !== undefined && q[2 * prev] === lo && q[2 * prev + 1] === hi;
      // Fresh enough: keep the queued entry (it may expire up to refreshMs early).
      if (same && expiry - (this.qExpiry[prev] as number) < this.refreshMs) continue;
      const slot = this.tail++;
      q[2 * slot] = lo;
      q[2 * slot + 1] = hi;
      this.qExpiry[slot] = expiry;
      this.qHolder[slot] = s;
      if (prev === undefined) {
        this.liveCount++;
        live.set(k, slot);
      } else if (same) {
        live.set(k, slot); // refresh
      } else {
        // Another live hash shares the low 52 bits: track this one exactly.
        const h = sequenceHashes[pos] as bigint;
        holder.overflow ??= new Map();
        if (!holder.overflow.has(h)) this.liveCount++;
        holder.overflow.set(h, slot);
      }
    }
  }

  route(worker: WorkerRank, localHashes: BigUint64Array, count: number, nowMs: number): number {
    if (!this.hasher) throw new Error('PruneTracker.route needs the hasher');
    // Expire first, so a block due now and routed again is stored and tracked afresh.
    const budget = this.budget(count);
    const expired = this.expireUpTo(nowMs, budget);
    const local = count === localHashes.length ? localHashes : localHashes.subarray(0, count);
    const sequence = new BigUint64Array(count);
    this.hasher.sequenceHashesInto(local, count, sequence);
    const outcome = this.index.applyStored(worker, null, {
      localHashes: local,
      externalHashes: sequence,
    });
    // Dynamo tracks the blocks only when the Stored event applied; then prunes above the cap.
    if (outcome !== 'ok') return expired;
    this.track(worker, sequence, nowMs, count);
    return expired + this.pruneToCap(budget - expired);
  }

  routeSoon(worker: WorkerRank, localHashes: BigUint64Array, count: number, nowMs: number): void {
    this.route(worker, localHashes, count, nowMs);
  }

  settle(): void {}

  readonly offThread = false;

  maintainSoon(nowMs: number): void {
    this.maintain(nowMs);
  }

  dispose(): void {}

  /** Removes every membership whose expiry is `<= nowMs` from the index. */
  expire(nowMs: number): number {
    return this.expireUpTo(nowMs, Number.POSITIVE_INFINITY);
  }

  private expireUpTo(nowMs: number, budget: number): number {
    const batch = new RemovalBatch();
    while (
      batch.count < budget &&
      this.head < this.tail &&
      (this.qExpiry[this.head] as number) <= nowMs
    ) {
      this.takeHead(batch);
    }
    return batch.apply(this.index, this.holders);
  }

  /** Periodic upkeep: expiry, then the size cap, `removalStep` removals at most. */
  maintain(nowMs: number): PruneResult {
    const expired = this.expireUpTo(nowMs, this.removalStep);
    return { expired, pruned: this.pruneToCap(this.removalStep - expired) };
  }

  backlog(nowMs: number): boolean {
    if (this.pruning) return true;
    const next = this.nextExpiry();
    return next !== undefined && next <= nowMs;
  }

  /** Forgets one holder's timers (it was cleared or left); the index is not touched. */
  forgetHolder(worker: WorkerRank): void {
    const s = this.holderSlot.get(keyOf(worker));
    if (s !== undefined) this.reset(s);
  }

  /** Forgets every dp rank of a worker (it left discovery); the index is not touched. */
  forgetWorker(workerId: bigint): void {
    this.holders.forEach((h, s) => {
      if (h.worker.workerId === workerId) this.reset(s);
    });
  }

  // ---- internals -------------------------------------------------------------

  /**
   * Above the cap, prunes oldest first toward the target, at most `budget`
   * removals now; an unfinished prune continues at the next call.
   */
  private pruneToCap(budget: number): number {
    const size = Math.max(this.liveCount, this.index.memberships());
    if (size > this.maxTreeSize) this.pruning = true;
    if (!this.pruning || size <= this.targetSize) {
      this.pruning = false;
      return 0;
    }
    const want = size - this.targetSize;
    const batch = new RemovalBatch();
    const n = Math.min(want, budget);
    while (batch.count < n && this.head < this.tail) this.takeHead(batch);
    // Done when the whole difference went (cascades may take more) or nothing is left.
    if (batch.count >= want || this.head >= this.tail) this.pruning = false;
    return batch.apply(this.index, this.holders);
  }

  /** Pops the head slot; a live entry is untracked and added to `batch`. */
  private takeHead(batch: RemovalBatch): void {
    const slot = this.head++;
    const s = this.qHolder[slot] as number;
    const holder = this.holders[s];
    if (holder === undefined) return;
    const k = key52(this.qWords[2 * slot] as number, this.qWords[2 * slot + 1] as number);
    const h = this.qHash[slot] as bigint;
    if (holder.live.get(k) === slot) holder.live.delete(k);
    else if (holder.overflow?.get(h) === slot) holder.overflow.delete(h);
    else return;
    this.liveCount--;
    batch.add(s, h);
  }

  private isLive(slot: number): boolean {
    const holder = this.holders[this.qHolder[slot] as number];
    if (holder === undefined) return false;
    const k = key52(this.qWords[2 * slot] as number, this.qWords[2 * slot + 1] as number);
    if (holder.live.get(k) === slot) return true;
    return holder.overflow?.get(this.qHash[slot] as bigint) === slot;
  }

  private slotFor(worker: WorkerRank): number {
    const key = keyOf(worker);
    let s = this.holderSlot.get(key);
    if (s === undefined) {
      s = this.holders.length;
      this.holders.push({
        worker: { workerId: worker.workerId, dpRank: worker.dpRank >>> 0 },
        live: new U52Map(),
        overflow: undefined,
      });
      this.holderSlot.set(key, s);
    }
    return s;
  }

  private reset(s: number): void {
    const h = this.holders[s] as Holder;
    this.liveCount -= h.live.size + (h.overflow?.size ?? 0);
    // Fresh maps: the old queue slots no longer match them and go stale.
    h.live = new U52Map();
    h.overflow = undefined;
  }

  /** Makes room for `n` more slots: compacts away stale/consumed slots, grows or shrinks. */
  private reserve(n: number): void {
    const cap = this.qHash.length;
    if (this.tail + n <= cap) return;
    const needed = this.liveCount + n;
    let next = cap;
    while (next < 2 * needed) next *= 2;
    while (next > MIN_CAPACITY && next >= 8 * needed) next /= 2;
    const hash = next === cap ? this.qHash : new BigUint64Array(next);
    const exp = next === cap ? this.qExpiry : new Float64Array(next);
    const holder = next === cap ? this.qHolder : new Int32Array(next);
    const words = next === cap ? this.qWords : new Uint32Array(hash.buffer);
    let w = 0;
    for (let r = this.head; r < this.tail; r++) {
      const s = this.qHolder[r] as number;
      const hd = this.holders[s];
      if (hd === undefined) continue;
      const lo = this.qWords[2 * r] as number;
      const hi = this.qWords[2 * r + 1] as number;
      const k = key52(lo, hi);
      let inOverflow = false;
      if (hd.live.get(k) !== r) {
        const h = this.qHash[r] as bigint;
        if (hd.overflow?.get(h) !== r) continue; // stale
        inOverflow = true;
        hd.overflow.set(h, w);
      }
      words[2 * w] = lo;
      words[2 * w + 1] = hi;
      exp[w] = this.qExpiry[r] as number;
      holder[w] = s;
      if (!inOverflow) hd.live.set(k, w);
      w++;
    }
    this.qHash = hash;
    this.qWords = words;
    this.qExpiry = exp;
    this.qHolder = holder;
    this.head = 0;
    this.tail = w;
  }
}

function keyOf(worker: WorkerRank): string {
  return `${worker.workerId}:${worker.dpRank >>> 0}`;
}

/**
 * Removals grouped per holder, one `applyRemoved` each. Slots are popped
 * oldest first and each decision's blocks deepest first; reversing that gives
 * every decision's surviving run root to leaf. Consecutive hashes then share
 * an edge, so the index cuts each edge once and never searches its list of
 * already-dropped hashes. (1.6.1 sorts by position alone, which interleaves
 * sequences; the memberships removed are the same.)
 */
class RemovalBatch {
  count = 0;
  private readonly byHolder = new Map<number, bigint[]>();

  add(holder: number, hash: bigint): void {
    let b = this.byHolder.get(holder);
    if (b === undefined) {
      b = [];
      this.byHolder.set(holder, b);
    }
    b.push(hash);
    this.count++;
  }

  apply(index: KvIndex, holders: readonly Holder[]): number {
    for (const [s, b] of this.byHolder) {
      const hashes = new BigUint64Array(b.length);
      for (let i = 0; i < b.length; i++) hashes[i] = b[b.length - 1 - i] as bigint;
      // Outcomes other than 'ok' (a cascade already dropped a block) are
      // counted by the index and otherwise ignored, as Dynamo does.
      index.applyRemoved((holders[s] as Holder).worker, hashes);
    }
    return this.count;
  }
}
