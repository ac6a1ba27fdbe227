/**
 * Messages between the main thread and the tokenization workers. Bodies and
 * results cross as transferred typed arrays (no structured clone of JS
 * arrays); the body comes back with the result so the main thread can still
 * forward it.
 */
import type { Backend } from '../kv/types.js';
import type { RouteSettings } from '../pipeline/route-prep.js';
import type { ApiKind } from '../tokenize/types.js';

/** How a worker reaches the tokenizer: the native one by its process-wide handle. */
export interface TokenizerRef {
  backend: Backend;
  /** Path or encoding name (the JS backend loads it once per worker). */
  source: string;
  /** Native registry handle (native backend only). */
  handle?: number | undefined;
  /** Chat template override file contents, if any. */
  chatTemplate?: string | undefined;
}

export interface PrepareTask {
  tokenizer: TokenizerRef;
  body: Uint8Array;
  api: ApiKind;
  settings: RouteSettings;
}

export type PrepareResult =
  | { ok: true; body: Uint8Array; tokens: Uint32Array; localHashes: BigUint64Array }
  | { ok: false; body: Uint8Array; code: string; message: string };
