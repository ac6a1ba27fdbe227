/**
 * The per-request hot path, backend-agnostic: tokenize the body, hash its
 * full blocks, score them against the prefix index.
 *
 * Contract: `tokens` are the worker's prompt ids (see src/tokenize/types.ts),
 * `localHashes` are Dynamo's local block hashes of those ids with the seed of
 * (loraName, cacheNamespace), and `overlap` is the index's answer for them at
 * the moment of the call. Pure: no I/O; errors are KvEppErrors from the
 * tokenizer (request problems) or the hasher (block size).
 */
import type { BlockHasher, KvIndex, OverlapScores } from '../kv/types.js';
import type { ApiKind, Tokenizer } from '../tokenize/types.js';

export interface RouteSettings {
  /** KV block size of the model's workers (DYN_KV_CACHE_BLOCK_SIZE). */
  blockSize: number;
  /** LoRA adapter the request targets; folded into the hash seed. */
  loraName?: string | undefined;
  /** Cache namespace (`nvext.cache_salt` / `cache_salt` / `x-tenant-id`); folded into the seed. */
  cacheNamespace?: string | undefined;
  /** Stop scoring once a single holder remains (Dynamo's `early_exit`). */
  earlyExit?: boolean | undefined;
  /** Clock for dated chat templates, ms since the epoch. */
  nowMs?: number | undefined;
}

export interface RoutePrep {
  tokens: Uint32Array;
  localHashes: BigUint64Array;
  overlap: OverlapScores;
}

export interface HotPath {
  tokenizer: Tokenizer;
  hasher: BlockHasher;
  index: KvIndex;
}

/** Tokenize + hash, the part that may run off the main thread. */
export function tokenizeAndHash(
  path: Pick<HotPath, 'tokenizer' | 'hasher'>,
  body: Uint8Array,
  api: ApiKind,
  s: RouteSettings,
): { tokens: Uint32Array; localHashes: BigUint64Array } {
  const tokens = path.tokenizer.tokenizeRequest(
    body,
    api,
    s.nowMs === undefined ? {} : { nowMs: s.nowMs },
  );
  const localHashes = new BigUint64Array(Math.floor(tokens.length / s.blockSize));
  path.hasher.localHashesInto(tokens, s.blockSize, localHashes, {
    loraName: s.loraName,
    cacheNamespace: s.cacheNamespace,
  });
  return { tokens, localHashes };
}

/** The whole hot path on the calling thread. */
export function prepareRouteInline(
  path: HotPath,
  body: Uint8Array,
  api: ApiKind,
  s: RouteSettings,
): RoutePrep {
  const { tokens, localHashes } = tokenizeAndHash(path, body, api, s);
  return {
    tokens,
    localHashes,
    overlap: path.index.findMatches(localHashes, s.earlyExit ?? false),
  };
}
