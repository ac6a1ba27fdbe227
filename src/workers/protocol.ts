/**
 * Messages between the main thread and the tokenization workers. The body
 * (a private copy) and the results cross as transferred typed arrays, never
 * as structured clones of JS arrays.
 */
import type { KvEppErrorCode } from '../errors.js';
import type { Backend, OverlapScores } from '../kv/types.js';
import type { BodyWork, PreparedRequest, RouteSettings } from '../pipeline/route-prep.js';
import type { PromptDialect } from '../tokenize/dynamo-dialect.js';
import type { ApiKind } from '../tokenize/types.js';

/** How a worker reaches the tokenizer: the native one by its process-wide handle. */
export interface TokenizerRef {
  backend: Backend;
  /** Path or encoding name (the JS backend loads it once per worker). */
  source: string;
  /** Native registry handle (native backend only). */
  handle?: number | undefined;
  /** Native index handle: the worker scores too (native backend only). */
  indexHandle?: number | undefined;
  /** Chat template override file contents, if any. */
  chatTemplate?: string | undefined;
  /** Whose prompt construction bodies follow (default vllm). */
  dialect?: PromptDialect | undefined;
}

export interface PrepareTask {
  tokenizer: TokenizerRef;
  body: Uint8Array;
  api: ApiKind;
  settings: RouteSettings;
  /** Validate and splice the body here too (its buffer comes back transferred). */
  work?: BodyWork | undefined;
}

export type PrepareResult =
  | {
      ok: true;
      tokens: Uint32Array;
      localHashes: BigUint64Array;
      cacheSalt?: string | undefined;
      /** Present when the worker scored (native index). */
      overlap?: OverlapScores | undefined;
      /** Present when the task asked for body work. */
      request?: PreparedRequest | undefined;
    }
  | {
      ok: false;
      code: KvEppErrorCode;
      message: string;
      /** `unsupported_content` only: the task's body, transferred back. */
      body?: Uint8Array | undefined;
    };
