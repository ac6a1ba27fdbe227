/**
 * vLLM / SGLang ZMQ KV events, decoded and turned into index operations the
 * way Dynamo 1.6.1's worker-side relay does. Mirrors
 * native/core/src/events/vllm.rs step for step (its header names the Dynamo
 * source of each step):
 * 1. decode `[ts, [events], data_parallel_rank]` (vllm-decode.ts);
 * 2. the normaliser: ownership, `Ignored`, locality and medium gates,
 *    KV-cache-group filter, cache-namespace propagation along parent chains;
 * 3. conversion: self-referencing stores become an empty removal, local
 *    hashes are recomputed from `token_ids` (LoRA name and cache salt in the
 *    seed, multimodal hashes appended, Eagle windows), blocks that are not
 *    full configured-size blocks are dropped (`partial_block` vs
 *    `block_size_mismatch`, see `convertStored`);
 * 4. coalescing of adjacent compatible events of the message (flushed at the
 *    end of each message, or at 128 blocks);
 * 5. ref-counted store/remove dedup per holder (device tier);
 * 6. tier routing: only device-tier events reach the device index.
 * The deliberate deviations from Dynamo listed in vllm.rs are the same here.
 */
import { blockHashSeed, JsBlockHasher, xxh3_64 } from '../../kv/js/block-hasher.js';
import type { Decoded } from './decode.js';
import { type Tier, tierFromKvMedium } from './dynamo.js';
import type { Holder, Op, Tally } from './ops.js';
import type { Meta, RawEvent, RawRemoved, RawStored, SpecKind } from './vllm-decode.js';

export { decodeBatch } from './vllm-decode.js';

/** `DEFAULT_MAX_BATCH_BLOCKS` (dynamo-llm publisher/mod.rs:65). */
const MAX_BATCH_BLOCKS = 128;

// ---- normaliser state ------------------------------------------------------------------------

/** A namespace name, or a hash seen under two names. */
const AMBIGUOUS: unique symbol = Symbol('ambiguous');
type Namespace = string | typeof AMBIGUOUS;

/** Why the normaliser dropped an event: not for the device index, or unknown. */
type Filtered = 'ignored' | 'unknown' | null;

/** What the relay keeps per holder. */
interface HolderState {
  /** `group_idx -> kind` learned from stores (the sliding window is never read). */
  groups: Map<number, SpecKind>;
  /** External hash -> namespace, for salted chains. */
  namespaces: Map<bigint, Namespace>;
  /** Device-tier store refcounts (`EventDedupFilter`, RefCounted). */
  refcounts: Map<bigint, number>;
}

/** Per-applier state of the vLLM path: worker id -> dp rank -> holder state. */
export class VllmState {
  private readonly workers = new Map<bigint, Map<number, HolderState>>();

  private holder(w: Holder): HolderState {
    let ranks = this.workers.get(w.workerId);
    if (!ranks) {
      ranks = new Map();
      this.workers.set(w.workerId, ranks);
    }
    let h = ranks.get(w.dpRank);
    if (!h) {
      h = { groups: new Map(), namespaces: new Map(), refcounts: new Map() };
      ranks.set(w.dpRank, h);
    }
    return h;
  }

  /** Forgets everything about one holder (its stream restarted). */
  forgetHolder(w: Holder): void {
    this.workers.get(w.workerId)?.delete(w.dpRank);
  }

  /** Forgets every dp rank of a worker. */
  forgetWorker(workerId: bigint): void {
    this.workers.delete(workerId);
  }

  /** `preprocess_with_reason` + `preprocess_residency_with_reason` (zmq_wire/mod.rs:143-215). */
  preprocess(raw: RawEvent, w: Holder): Filtered {
    const ownership = raw.kind === 'ignored' ? undefined : raw.ownership;
    if (ownership !== undefined) return ownership === 'kvcr' ? 'ignored' : 'unknown';
    if (raw.kind === 'ignored') return 'ignored';
    if (raw.kind === 'cleared') {
      // No medium, locality or metadata: only the namespace state changes.
      this.holder(w).namespaces.clear();
      return null;
    }
    if (raw.locality === 'remote') return 'ignored';
    if (raw.locality === 'unknown') return 'unknown';
    if (raw.medium !== undefined) {
      const tier = tierFromKvMedium(raw.medium);
      if (tier === null) return 'unknown';
      // Lower tiers bypass metadata and namespace state.
      if (tier !== 'device' && tier !== 'host_pinned') return null;
    }
    const meta = raw.meta;
    const h = this.holder(w);
    if (raw.kind === 'stored' && meta.groupIdx !== undefined && meta.kind !== undefined) {
      h.groups.set(meta.groupIdx, meta.kind);
    }
    const f = groupFilter(h, meta);
    if (f !== null) return f;
    return this.propagateNamespace(raw, h);
  }

  /**
   * `propagate_cache_namespace`: a salted store names its blocks; an unsalted
   * store whose parent is named inherits the name; a hash seen under two names
   * becomes ambiguous and its unsalted children are dropped.
   */
  private propagateNamespace(raw: RawStored | RawRemoved, h: HolderState): Filtered {
    const ns = h.namespaces;
    if (raw.kind === 'removed') {
      for (const x of raw.blockHashes) {
        if (ns.get(x) !== AMBIGUOUS) ns.delete(x);
      }
      return null;
    }
    if (raw.cacheNamespace === '') raw.cacheNamespace = undefined;
    let named: string | undefined;
    if (raw.cacheNamespace !== undefined) {
      named = raw.cacheNamespace;
    } else if (raw.parent !== undefined) {
      const p = ns.get(raw.parent);
      if (p === AMBIGUOUS) return 'ignored';
      if (p !== undefined) {
        raw.cacheNamespace = p;
        named = p;
      }
    }
    if (named !== undefined) {
      for (const x of raw.blockHashes) {
        const e = ns.get(x);
        if (e === undefined) ns.set(x, named);
        else if (e !== named) ns.set(x, AMBIGUOUS);
      }
    } else {
      for (const x of raw.blockHashes) {
        if (ns.has(x)) ns.set(x, AMBIGUOUS);
      }
    }
    return null;
  }

  /** `EventDedupFilter::track_store_in_domain`, device tier. */
  trackStore(w: Holder, externals: bigint[]): void {
    const rc = this.holder(w).refcounts;
    for (const x of externals) rc.set(x, (rc.get(x) ?? 0) + 1);
  }

  /** `filter_remove_in_domain`: keeps hashes whose refcount drops to zero or that are not tracked. */
  filterRemove(w: Holder, hashes: bigint[]): bigint[] {
    const rc = this.workers.get(w.workerId)?.get(w.dpRank)?.refcounts;
    if (!rc) return hashes;
    return hashes.filter((x) => {
      const n = rc.get(x);
      if (n === undefined) return true;
      if (n === 1) {
        rc.delete(x);
        return true;
      }
      rc.set(x, n - 1);
      return false;
    });
  }

  /** `AllBlocksCleared` resets the holder's refcounts. */
  clearRefcounts(w: Holder): void {
    this.workers.get(w.workerId)?.get(w.dpRank)?.refcounts.clear();
  }
}

/** `filter_reason` (zmq_wire/mod.rs:356). */
function groupFilter(h: HolderState, meta: Meta): Filtered {
  const verdict = (kind: SpecKind): Filtered =>
    kind === 'main' ? null : kind === 'unknown' ? 'unknown' : 'ignored';
  if (meta.kind !== undefined) return verdict(meta.kind);
  if (meta.groupIdx === undefined) return null;
  const known = h.groups.get(meta.groupIdx);
  if (known !== undefined) return verdict(known);
  return meta.groupIdx === 0 ? null : 'ignored';
}

// ---- conversion and coalescing ---------------------------------------------------------------

/** A converted event on its way to the index (`PlacementEvent`). */
interface Placed {
  tier: Tier;
  session: string | undefined;
  stored: boolean;
  /** Stored: the parent of the first block. */
  parent: bigint | undefined;
  /** Stored: local hashes; unused for removals. */
  locals: bigint[];
  /** Stored: external hashes; Removed: the hashes. */
  hashes: bigint[];
  /** Source events whose fate follows this event's index outcome. */
  srcs: number;
}

const hasher = new JsBlockHasher();

/** Local hash of a block window with extra bytes (Eagle windows, multimodal hashes). */
function windowHash(
  tokens: Uint32Array,
  from: number,
  to: number,
  seed: bigint,
  mm: bigint[] | null,
): bigint {
  const n = to - from;
  const extra = mm ? mm.length : 0;
  const bytes = new Uint8Array(n * 4 + extra * 8);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < n; i++) view.setUint32(i * 4, tokens[from + i] as number, true);
  if (mm) {
    const sorted = [...mm].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    for (let i = 0; i < sorted.length; i++)
      view.setBigUint64(n * 4 + i * 8, sorted[i] as bigint, true);
  }
  return xxh3_64(bytes, seed);
}

/**
 * `convert_event`'s `BlockStored` arm plus `create_stored_blocks`, counting
 * dropped blocks. A store whose `block_size` equals the configured size but
 * whose `token_ids` run out has its trailing blocks dropped (`partial_block`,
 * one per block). A store whose `block_size` differs loses all its blocks; it
 * is `partial_block` only for the shape of a trailing partial block (smaller
 * size, at most one hash, fewer tokens than a configured block, +1 for Eagle),
 * else one `block_size_mismatch`. Only device-tier stores are classified.
 */
function convertStored(
  s: RawStored,
  tier: Tier,
  blockSize: number,
  w: Holder,
  tally: Tally,
): Placed {
  const session = s.sessionId;
  // Self-referencing store: all hashes, the parent included, must be unique.
  const seen = new Set<bigint>();
  if (s.parent !== undefined) seen.add(s.parent);
  let selfRef = false;
  for (const x of s.blockHashes) {
    if (seen.has(x)) {
      selfRef = true;
      break;
    }
    seen.add(x);
  }
  if (selfRef) {
    if (tier === 'device') tally.reject('invalid_block_sequence', 1);
    else tally.ignored += 1;
    return { tier, session, stored: false, parent: undefined, locals: [], hashes: [], srcs: 0 };
  }
  const n = s.blockHashes.length;
  const append = s.isEagle ? 1 : 0;
  const locals: bigint[] = [];
  const externals: bigint[] = [];
  const tokens = s.tokenIds;
  if (s.blockSize === BigInt(blockSize)) {
    const options = { loraName: s.loraName, cacheNamespace: s.cacheNamespace };
    let count = 0;
    while (count < n && (count + 1) * blockSize + append <= tokens.length) count++;
    const plain = append === 0 ? new BigUint64Array(count) : null;
    if (plain && count > 0) {
      hasher.localHashesInto(tokens.subarray(0, count * blockSize), blockSize, plain, options);
    }
    const seed = append === 1 || s.mm ? blockHashSeed(options) : 0n;
    for (let i = 0; i < count; i++) {
      const mm = s.mm?.[i] ?? null;
      const offset = i * blockSize;
      const end = offset + append + blockSize;
      const local =
        plain && (mm === null || mm.length === 0)
          ? (plain[i] as bigint)
          : windowHash(tokens, offset, end, seed, mm && mm.length > 0 ? mm : null);
      locals.push(local);
      externals.push(s.blockHashes[i] as bigint);
    }
  }
  const dropped = n - locals.length;
  let srcs = 1;
  if (tier === 'device' && dropped > 0) {
    const shortSingle =
      s.blockSize < BigInt(blockSize) && n <= 1 && tokens.length < blockSize + append;
    if (s.blockSize === BigInt(blockSize) || shortSingle) {
      tally.reject('partial_block', dropped);
    } else {
      tally.reject('block_size_mismatch', 1);
      tally.mismatch(w, blockSize, s.blockSize);
    }
    if (locals.length === 0) srcs = 0;
  }
  return { tier, session, stored: true, parent: s.parent, locals, hashes: externals, srcs };
}

/** Runs one decoded batch for one holder through conversion, coalescing, dedup and tier routing. */
export function processBatch(
  state: VllmState,
  blockSize: number,
  w: Holder,
  events: Array<Decoded<RawEvent>>,
  ops: Op[],
  tally: Tally,
): void {
  const ctx: Coalescer = { state, w, ops, tally, pending: null };
  for (const ev of events) {
    if (!ev.ok) {
      tally.reject(ev.reason, 1);
      continue;
    }
    const raw = ev.value;
    const f = state.preprocess(raw, w);
    if (f === 'ignored') {
      tally.ignored += 1;
      continue;
    }
    if (f === 'unknown') {
      tally.reject('unknown_variant', 1);
      continue;
    }
    if (raw.kind === 'cleared') {
      flush(ctx, takePending(ctx));
      state.clearRefcounts(w);
      ops.push({ worker: w, kind: 'cleared', srcs: 1 });
      continue;
    }
    if (raw.kind === 'ignored') continue;
    // The medium was vetted by `preprocess`.
    const tier = (raw.medium === undefined ? null : tierFromKvMedium(raw.medium)) ?? 'device';
    const placed: Placed =
      raw.kind === 'removed'
        ? {
            tier,
            session: undefined,
            stored: false,
            parent: undefined,
            locals: [],
            hashes: raw.blockHashes,
            srcs: 1,
          }
        : convertStored(raw, tier, blockSize, w, tally);
    push(ctx, placed);
  }
  flush(ctx, takePending(ctx));
}

interface Coalescer {
  state: VllmState;
  w: Holder;
  ops: Op[];
  tally: Tally;
  pending: Placed | null;
}

function takePending(c: Coalescer): Placed | null {
  const p = c.pending;
  c.pending = null;
  return p;
}

/** `PlacementEventCoalescer::push` (batching.rs:42). */
function push(c: Coalescer, ev: Placed): void {
  const p = c.pending;
  const canMerge =
    p !== null &&
    p.tier === ev.tier &&
    p.session === ev.session &&
    (p.stored && ev.stored
      ? ev.parent === (p.hashes.length > 0 ? p.hashes[p.hashes.length - 1] : undefined)
      : !p.stored && !ev.stored);
  if (canMerge && p) {
    p.srcs += ev.srcs;
    for (const x of ev.locals) p.locals.push(x);
    for (const x of ev.hashes) p.hashes.push(x);
    if (p.hashes.length >= MAX_BATCH_BLOCKS) flush(c, takePending(c));
    return;
  }
  flush(c, takePending(c));
  if (ev.hashes.length >= MAX_BATCH_BLOCKS) flush(c, ev);
  else c.pending = ev;
}

/** `BatchingState::emit_ready` (batching.rs:183) plus tier routing. */
function flush(c: Coalescer, ev: Placed | null): void {
  if (ev === null) return;
  if (ev.tier !== 'device') {
    // Lower-tier indexers are not the device index.
    c.tally.ignored += ev.srcs;
    return;
  }
  if (!ev.stored) {
    const hashes = c.state.filterRemove(c.w, ev.hashes);
    if (hashes.length === 0) {
      // Absorbed by the refcounts: the blocks are still held.
      c.tally.applied.removed += ev.srcs;
      return;
    }
    c.ops.push({ worker: c.w, kind: 'removed', hashes, srcs: ev.srcs });
    return;
  }
  c.state.trackStore(c.w, ev.hashes);
  c.ops.push({
    worker: c.w,
    kind: 'stored',
    parent: ev.parent ?? null,
    locals: ev.locals,
    externals: ev.hashes,
    srcs: ev.srcs,
  });
}
