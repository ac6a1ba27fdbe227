/**
 * The fused native hot path: tokenize + hash + score in one addon call
 * (`prepareRoute`), used when tokenizer, hasher and index are all native.
 * Gives exactly what the generic path gives (test/differential checks it).
 */
import { mapNativeError, type NativeBinding } from '../kv/native/binding.js';
import { NativeBlockHasher } from '../kv/native/block-hasher.js';
import { NativeKvIndex } from '../kv/native/radix-index.js';
import type { OverlapScores } from '../kv/types.js';
import { NativeTokenizer } from '../tokenize/native/tokenizer.js';
import type { ApiKind } from '../tokenize/types.js';
import type { FusedPrepare, HotPath, RoutePrep, RouteSettings } from './route-prep.js';

export interface NativeRouteHandles {
  tokenizer: number;
  /** 0 = no scoring. */
  index: number;
}

export function nativePrepare(
  addon: NativeBinding,
  h: NativeRouteHandles,
  body: Uint8Array,
  api: ApiKind,
  s: RouteSettings,
): RoutePrep {
  let r: ReturnType<NativeBinding['prepareRoute']>;
  try {
    r = addon.prepareRoute(
      h.tokenizer,
      h.index,
      body,
      api,
      s.blockSize,
      s.loraName,
      s.cacheNamespace,
      s.nowMs ?? Date.now(),
      s.earlyExit ?? false,
    );
  } catch (e) {
    throw mapNativeError(e);
  }
  const overlap: OverlapScores = { workers: [], blocks: [], treeSizes: [] };
  for (let i = 0; i < r.workerIds.length; i++) {
    overlap.workers.push({ workerId: r.workerIds[i] as bigint, dpRank: r.dpRanks[i] as number });
    overlap.blocks.push(r.depths[i] as number);
    overlap.treeSizes.push(r.treeSizes[i] as number);
  }
  return {
    tokens: r.tokens,
    localHashes: r.localHashes,
    cacheSalt: r.cacheSalt ?? undefined,
    overlap,
    tokenDataJson: r.tokenDataJson,
  };
}

/** Adds the fused implementation to a hot path whose pieces are all native. */
export function withFusedNative(addon: NativeBinding, path: HotPath): HotPath {
  const { tokenizer, hasher, index } = path;
  if (
    !(tokenizer instanceof NativeTokenizer) ||
    !(hasher instanceof NativeBlockHasher) ||
    !(index instanceof NativeKvIndex)
  ) {
    return path;
  }
  const handles = { tokenizer: tokenizer.handle, index: index.handle };
  const fused: FusedPrepare = (body, api, s) => nativePrepare(addon, handles, body, api, s);
  return { ...path, fused };
}
