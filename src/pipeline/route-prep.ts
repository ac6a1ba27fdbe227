/**
 * The per-request hot path, backend-agnostic: tokenize the body, hash its
 * full blocks, score them against the prefix index.
 *
 * Contract: `tokens` are the worker's prompt ids (see src/tokenize/types.ts),
 * `localHashes` are Dynamo's local block hashes of those ids with the seed of
 * (loraName, cache namespace) — the namespace is `settings.cacheNamespace`
 * (the `x-tenant-id` header), else the body's `nvext.cache_salt` /
 * `cache_salt`, Dynamo's frontend's precedence — and `overlap` is the index's answer for them at the
 * moment of the call. When every piece is native, a `fused` implementation
 * does all of it in one addon call with identical results. Pure: no I/O;
 * errors are KvEppErrors from the tokenizer (request problems) or the hasher.
 */
import { KvEppError } from '../errors.js';
import type { BlockHasher, KvIndex, OverlapScores } from '../kv/types.js';
import {
  idsJsonBytes,
  readRequest,
  rewriteTarget,
  spliceRequestBody,
} from '../openai/request-body.js';
import type { Cancellation } from '../server/routing-types.js';
import type { ApiKind, Tokenizer } from '../tokenize/types.js';

export interface RouteSettings {
  /** KV block size of the model's workers (DYN_KV_CACHE_BLOCK_SIZE). */
  blockSize: number;
  /** LoRA adapter the request targets; folded into the hash seed. */
  loraName?: string | undefined;
  /**
   * The `x-tenant-id` namespace (tenantNamespace): wins over the body's cache
   * salt, as Dynamo's frontend writes the header into `nvext.cache_salt`.
   */
  cacheNamespace?: string | undefined;
  /** Stop scoring once a single holder remains (Dynamo's `early_exit`). */
  earlyExit?: boolean | undefined;
  /** Clock for dated chat templates, ms since the epoch. */
  nowMs?: number | undefined;
}

export interface RoutePrep {
  /** The prompt ids; may be empty when `request` is set (they are in `request.body`). */
  tokens: Uint32Array;
  /** `tokens` as JSON bytes (`idsJsonBytes`), when the native hot path made them. */
  tokenDataJson?: Uint8Array | undefined;
  localHashes: BigUint64Array;
  /** The body's cache salt, when it named one. */
  cacheSalt?: string | undefined;
  overlap: OverlapScores;
  /** With `BodyWork`: the body's model, the rewrite target and the body for the worker. */
  request?: PreparedRequest | undefined;
}

/**
 * Body work a preparer can do next to tokenizing, so that a large body is
 * parsed and rewritten off the main thread: `readRequest`'s checks (their
 * 400s), then `nvext.token_data` (and the model rewrite) spliced in.
 */
export interface BodyWork {
  /** The gateway's `x-gateway-model-name-rewrite`. */
  rewrite?: string | undefined;
  /** The caller gives the body up: a pool may transfer its buffer (detaching it) instead of copying. */
  transferBody?: boolean | undefined;
}

export interface PreparedRequest {
  model: string;
  /** Prompt tokens (`RoutePrep.tokens` may be empty when the pool made this). */
  tokenCount: number;
  /** Set when the model was rewritten. */
  target?: string | undefined;
  /** The body to send on: the client's with token_data (and the model) spliced in. */
  body: Uint8Array;
}

/** Splices the prepared tokens (and the rewrite) into a body `readRequest` accepted. */
export function finishRequest(
  body: Uint8Array,
  model: string,
  tokens: Uint32Array,
  work: BodyWork,
  tokenDataJson?: Uint8Array,
): PreparedRequest {
  const target = rewriteTarget(model, work.rewrite);
  const out = spliceRequestBody(body, { model: target, tokenData: tokens, tokenDataJson });
  return { model, tokenCount: tokens.length, target, body: out };
}

/** With `work`, the body work is done too (`RoutePrep.request`; `tokens` may then be empty). */
export type FusedPrepare = (
  body: Uint8Array,
  api: ApiKind,
  s: RouteSettings,
  work?: BodyWork,
) => RoutePrep;

export interface HotPath {
  tokenizer: Tokenizer;
  hasher: BlockHasher;
  index: KvIndex;
  /** One-call implementation, present when tokenizer, hasher and index are native. */
  fused?: FusedPrepare | undefined;
}

const SALT_KEY = new TextEncoder().encode('cache_salt');

/** The body's `nvext.cache_salt`, else `cache_salt`; parses only bodies that mention one. */
export function cacheSaltOf(body: Uint8Array): string | undefined {
  if (!contains(body, SALT_KEY)) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder().decode(body));
  } catch {
    return undefined; // the tokenizer reports the bad body
  }
  const o = json as { nvext?: { cache_salt?: unknown }; cache_salt?: unknown } | null;
  const nested = o?.nvext?.cache_salt;
  if (typeof nested === 'string' && nested !== '') return nested;
  const top = o?.cache_salt;
  return typeof top === 'string' && top !== '' ? top : undefined;
}

function contains(hay: Uint8Array, needle: Uint8Array): boolean {
  const first = needle[0] as number;
  for (let i = hay.indexOf(first); i >= 0 && i <= hay.length - needle.length; ) {
    let j = 1;
    while (j < needle.length && hay[i + j] === needle[j]) j++;
    if (j === needle.length) return true;
    i = hay.indexOf(first, i + 1);
  }
  return false;
}

/** Tokenize + hash, the part that may run off the main thread. */
export function tokenizeAndHash(
  path: Pick<HotPath, 'tokenizer' | 'hasher'>,
  body: Uint8Array,
  api: ApiKind,
  s: RouteSettings,
): { tokens: Uint32Array; localHashes: BigUint64Array; cacheSalt?: string | undefined } {
  const tokens = path.tokenizer.tokenizeRequest(
    body,
    api,
    s.nowMs === undefined ? {} : { nowMs: s.nowMs },
  );
  const cacheSalt = cacheSaltOf(body);
  const localHashes = new BigUint64Array(Math.floor(tokens.length / s.blockSize));
  path.hasher.localHashesInto(tokens, s.blockSize, localHashes, {
    loraName: s.loraName,
    cacheNamespace: s.cacheNamespace ?? cacheSalt,
  });
  return { tokens, localHashes, cacheSalt };
}

/**
 * The cache namespace an `x-tenant-id` value gives, as Dynamo's frontend reads
 * it (`HeaderValue::to_str`, empty ignored): undefined unless it is non-empty
 * visible ASCII (space and tab allowed).
 */
export function tenantNamespace(value: string | undefined): string | undefined {
  if (!value) return undefined;
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if ((c < 0x20 && c !== 0x09) || c > 0x7e) return undefined;
  }
  return value;
}

/** The whole hot path on the calling thread (with `work`: the body work too). */
export function prepareRouteInline(
  path: HotPath,
  body: Uint8Array,
  api: ApiKind,
  s: RouteSettings,
  work?: BodyWork,
): RoutePrep {
  // The fused call does the body work itself, checks first.
  if (path.fused) return path.fused(body, api, s, work);
  // The checks come first, so a bad body fails as it would without tokenizing.
  const model = work ? readRequest(body, api).model : undefined;
  const r = tokenizeAndHash(path, body, api, s);
  const prep: RoutePrep = {
    ...r,
    overlap: path.index.findMatches(r.localHashes, s.earlyExit ?? false),
    tokenDataJson: idsJsonBytes(r.tokens),
  };
  if (work) {
    prep.request = finishRequest(body, model as string, prep.tokens, work, prep.tokenDataJson);
  }
  return prep;
}

/**
 * `unsupported_content` (content a text tokenizer cannot take) from a preparer
 * that had the body transferred away (`BodyWork.transferBody`): carries the
 * body's bytes back, so the caller can still forward the request untokenized.
 */
export class UntokenizableBody extends KvEppError {
  constructor(
    message: string,
    readonly body: Uint8Array,
  ) {
    super('unsupported_content', message);
  }
}

/** Anything that runs the hot path for a body (inline or on a worker pool). */
export interface Preparer {
  /**
   * With `work`, `RoutePrep.request` is set (and the body's 400s are raised here).
   * A KvEppError `unsupported_content` for a transferred body is an UntokenizableBody.
   * A preparer may drop work still waiting when `cancel` fires, rejecting
   * with KvEppError `cancelled`; work already running finishes.
   */
  prepare(
    body: Uint8Array,
    api: ApiKind,
    s: RouteSettings,
    work?: BodyWork,
    cancel?: Cancellation,
  ): Promise<RoutePrep>;
  /** True when a body this size is prepared off the calling thread. */
  offloads?(bytes: number): boolean;
}
