/**
 * The fused native hot path: tokenize + hash + score (+ the body work) in one
 * addon call (`prepareRoute`), used when tokenizer, hasher and index are all
 * native. Gives exactly what the generic path gives (the route-preparer and
 * request-body tests check it). The answer crosses the boundary as one
 * ArrayBuffer (layout: `pack_route` in native/core/src/route.rs), read here
 * through views without copying.
 */
import { KvEppError } from '../errors.js';
import { mapNativeError, type NativeBinding } from '../kv/native/binding.js';
import { NativeBlockHasher } from '../kv/native/block-hasher.js';
import { NativeKvIndex } from '../kv/native/radix-index.js';
import type { OverlapScores } from '../kv/types.js';
import { readRequest } from '../openai/request-body.js';
import { NativeTokenizer } from '../tokenize/native/tokenizer.js';
import { type ApiKind, NESTED_TOO_DEEP } from '../tokenize/types.js';
import type { BodyWork, FusedPrepare, HotPath, RoutePrep, RouteSettings } from './route-prep.js';

export interface NativeRouteHandles {
  tokenizer: number;
  /** 0 = no scoring. */
  index: number;
}

const HEADER_BYTES = 32;
const TOKENS = 1;
const EDITED = 2;
const REWRITTEN = 4;
const NO_SALT = 0xffff_ffff;
const utf8 = new TextDecoder();
const NO_TOKENS = new Uint32Array(0);

const align8 = (n: number): number => (n + 7) & ~7;

/**
 * Reads `pack_route`'s buffer; every array is a view of `buf`. `rewrite` is
 * the rewrite the call was given (the target, when the addon applied it).
 */
export function unpackRoute(buf: ArrayBuffer, rewrite?: string): RoutePrep {
  const h = new Uint32Array(buf, 0, 8);
  // Indexed, not destructured: destructuring a typed array runs its iterator.
  const nTokens = h[0] as number;
  const nHashes = h[1] as number;
  const nScores = h[2] as number;
  const modelLen = h[3] as number;
  const saltLen = h[4] as number;
  const tailLen = h[5] as number;
  const flags = h[7] as number;
  let o = HEADER_BYTES;
  let tokens = NO_TOKENS;
  if (flags & TOKENS) {
    tokens = new Uint32Array(buf, o, nTokens);
    o = align8(o + nTokens * 4);
  }
  const localHashes = new BigUint64Array(buf, o, nHashes);
  o += nHashes * 8;
  const n = nScores;
  const workerIds = new BigUint64Array(buf, o, n);
  const ranks = new Uint32Array(buf, o + n * 8, n);
  const depths = new Uint32Array(buf, o + n * 12, n);
  const sizes = new Uint32Array(buf, o + n * 16, n);
  o = align8(o + n * 20);
  const overlap: OverlapScores = { workers: [], blocks: [], treeSizes: [] };
  for (let i = 0; i < n; i++) {
    overlap.workers.push({ workerId: workerIds[i] as bigint, dpRank: ranks[i] as number });
    overlap.blocks.push(depths[i] as number);
    overlap.treeSizes.push(sizes[i] as number);
  }
  const bytes = new Uint8Array(buf, o);
  const model = modelLen ? utf8.decode(bytes.subarray(0, modelLen)) : '';
  o = modelLen;
  let cacheSalt: string | undefined;
  if (saltLen !== NO_SALT) {
    cacheSalt = utf8.decode(bytes.subarray(o, o + saltLen));
    o += saltLen;
  }
  const tail = bytes.subarray(o, o + tailLen);
  if (!(flags & EDITED)) {
    return { tokens, localHashes, cacheSalt, overlap, tokenDataJson: tail };
  }
  return {
    tokens,
    localHashes,
    cacheSalt,
    overlap,
    request: {
      model,
      tokenCount: nTokens as number,
      target: (flags as number) & REWRITTEN ? rewrite : undefined,
      body: tail,
    },
  };
}

/**
 * One request through the addon. The body's 400s carry `readRequest`'s exact
 * messages (its checks run natively; on a refusal the TypeScript check is
 * re-run for the text: the reference EPP's wording, Go's JSON errors). A body
 * too deep to tokenize is checked the same way, so it stays forwardable only
 * when the reference EPP would take it (Go's 10 000 levels, valid JSON, a model),
 * as the JS twin, which runs `readRequest` first, decides.
 */
export function nativePrepare(
  addon: NativeBinding,
  h: NativeRouteHandles,
  body: Uint8Array,
  api: ApiKind,
  s: RouteSettings,
  work?: BodyWork,
): RoutePrep {
  let buf: ArrayBuffer;
  try {
    buf = addon.prepareRoute(
      h.tokenizer,
      h.index,
      body,
      api,
      s.blockSize,
      s.loraName,
      s.cacheNamespace,
      s.nowMs ?? Date.now(),
      s.earlyExit ?? false,
      work !== undefined,
      work?.rewrite,
    );
  } catch (e) {
    const mapped = mapNativeError(e);
    if (
      mapped instanceof KvEppError &&
      (mapped.code === 'invalid_json' ||
        mapped.code === 'invalid_request' ||
        mapped.message === NESTED_TOO_DEEP)
    ) {
      readRequest(body, api);
    }
    throw mapped;
  }
  return unpackRoute(buf, work?.rewrite);
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
  const fused: FusedPrepare = (body, api, s, work) =>
    nativePrepare(addon, handles, body, api, s, work);
  return { ...path, fused };
}
