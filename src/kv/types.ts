/**
 * Hot-path contracts shared by the native (Rust addon) and JS backends.
 *
 * Invariants every implementation must keep (checked by test/contract and the
 * native-vs-JS differential tests):
 * - Hashes are u64 and cross as `BigUint64Array`/`bigint`, never `number`.
 * - Block hashing equals Dynamo's `compute_block_hash_for_seq` /
 *   `compute_seq_hash_for_block` bit for bit (XXH3-64, seed 1337 folded with
 *   the LoRA name and cache namespace; only full blocks are hashed).
 * - The index has Dynamo 1.6.1 `RadixTree` semantics: identical event streams
 *   give identical overlap scores.
 */

/** Which implementation backs a hot-path piece. */
export type Backend = 'native' | 'js';
/** What the factory is asked for: `auto` prefers native, falls back to JS. */
export type BackendChoice = Backend | 'auto';

export interface HashOptions {
  /** LoRA adapter name; empty or absent means "no LoRA". */
  loraName?: string | undefined;
  /** Cache namespace (`nvext.cache_salt`, `cache_salt`, `x-tenant-id`); empty or absent means none. */
  cacheNamespace?: string | undefined;
}

export interface BlockHasher {
  readonly backend: Backend;
  /**
   * Writes the local block hashes of the `floor(tokens.length / blockSize)` full
   * blocks into `out` (which must hold at least that many) and returns the count.
   * @throws KvEppError('invalid_block_size') when blockSize is outside 1..=1024.
   * @throws KvEppError('buffer_too_small') when `out` is too short.
   */
  localHashesInto(
    tokens: Uint32Array,
    blockSize: number,
    out: BigUint64Array,
    options?: HashOptions,
  ): number;
  /** Writes `seq[0]=local[0]`, `seq[i]=XXH3(LE(seq[i-1])‖LE(local[i]), 1337)` into `out`; returns the count. */
  sequenceHashesInto(local: BigUint64Array, count: number, out: BigUint64Array): number;
  /** Convenience: allocating form of both, for CLIs and tests (not the request path). */
  hash(
    tokens: Uint32Array,
    blockSize: number,
    options?: HashOptions,
  ): { local: BigUint64Array; sequence: BigUint64Array };
}

/** A KV-cache holder: one data-parallel rank of one worker instance. */
export interface WorkerRank {
  workerId: bigint;
  dpRank: number;
}

/** One stored block as carried by a Dynamo `Stored` event. */
export interface StoredBlocks {
  /** Router-computed local hashes (`tokens_hash`), one per block. */
  localHashes: BigUint64Array;
  /** The engine's opaque block hashes (`block_hash`), same length. */
  externalHashes: BigUint64Array;
}

/** Outcome of applying one event; errors are counted, never thrown. */
export type ApplyOutcome =
  | 'ok'
  | 'parent_not_found'
  | 'block_not_found'
  | 'invalid_block_sequence'
  | 'length_mismatch';

export interface OverlapScores {
  /** One entry per (worker, dp rank) with a non-zero contiguous prefix, sorted by workerId then dpRank. */
  workers: WorkerRank[];
  /** `blocks[i]` is the prefix depth of `workers[i]`. */
  blocks: number[];
  /** `treeSizes[i]` is the number of blocks `workers[i]` holds in the index. */
  treeSizes: number[];
}

export interface IndexStats {
  /** Distinct (worker, dp rank) holders known to the index. */
  workers: number;
  /** Total worker-block memberships (sum of every holder's tree size). */
  memberships: number;
  counters: {
    applied: number;
    parentNotFound: number;
    blockNotFound: number;
    invalidBlockSequence: number;
  };
}

/**
 * The prefix index. Safe to read from any thread of the process in the native
 * backend (one process-wide index behind a read-mostly lock); the JS backend
 * is confined to the thread that made it.
 */
export interface KvIndex {
  readonly backend: Backend;
  applyStored(worker: WorkerRank, parentHash: bigint | null, blocks: StoredBlocks): ApplyOutcome;
  applyRemoved(worker: WorkerRank, externalHashes: BigUint64Array): ApplyOutcome;
  /** `AllBlocksCleared` for one (worker, dp rank). */
  clear(worker: WorkerRank): void;
  /** Drops one (worker, dp rank) (it left discovery, or its stream was reset); counts no event. */
  removeHolder(worker: WorkerRank): void;
  /** Drops every dp rank of a worker (it left discovery). */
  removeWorker(workerId: bigint): void;
  /** Contiguous prefix depth per holder for the query's local hashes. */
  findMatches(localHashes: BigUint64Array, earlyExit: boolean): OverlapScores;
  /** Blocks held by one (worker, dp rank); 0 when unknown. */
  treeSize(worker: WorkerRank): number;
  stats(): IndexStats;
  /** `stats().memberships` alone (cheap enough to ask per request). */
  memberships(): number;
  /** Releases the index (native: frees the handle). Further use throws. */
  dispose(): void;
}
