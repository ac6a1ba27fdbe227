/**
 * Tokenization contracts shared by the native and JS backends.
 *
 * Invariant: for a request body, `tokenizeRequest` returns exactly the prompt
 * token ids vLLM's OpenAI server computes for it (test/fixtures/chat/goldens,
 * made with HF transformers and vLLM's request normalisation; see
 * scripts/goldens/make_goldens.py for the normalisation steps). A single
 * differing id breaks prefix matching silently, so both backends are checked
 * against every golden and against each other.
 */
import type { Backend } from '../kv/types.js';

/** Which OpenAI API a body belongs to (decided by the request path). */
export type ApiKind = 'chat' | 'completions';

export interface TokenizeOptions {
  /** Clock for templates that print the date (`strftime_now`), ms since the epoch. Default: now. */
  nowMs?: number;
}

export interface Tokenizer {
  readonly backend: Backend;
  /** `hf` for tokenizer.json (+ tokenizer_config.json), `tiktoken` for a built-in encoding. */
  readonly kind: 'hf' | 'tiktoken';
  /** What was loaded: a directory/file path or an encoding name. */
  readonly source: string;
  /** Plain encode of text. */
  encode(text: string, addSpecialTokens: boolean): Uint32Array;
  /**
   * The rendered chat prompt for an OpenAI chat/completions body (UTF-8 JSON bytes).
   * @throws KvEppError with a TokenizeErrorCode
   */
  renderChat(body: Uint8Array, options?: TokenizeOptions): string;
  /**
   * Prompt token ids for a request body: chat → normalise, render the chat
   * template, encode without adding special tokens; completions → `prompt`
   * string encoded with special tokens (or token-id arrays passed through).
   * @throws KvEppError with a TokenizeErrorCode
   */
  tokenizeRequest(body: Uint8Array, api: ApiKind, options?: TokenizeOptions): Uint32Array;
  dispose(): void;
}

/**
 * The `unsupported_content` message, in both twins, for a body nested deeper
 * than the tokenizer parses (127 levels, serde_json's limit; `NESTED_TOO_DEEP`
 * in native/core/src/tokenize/request.rs). Still JSON: the router sends it on
 * by load unless Go's parser (10 000 levels) would refuse it too.
 */
export const NESTED_TOO_DEEP =
  'the request body nests JSON deeper than 127 levels: it is routed without token data';

/** The KvEppError codes tokenization throws (src/errors.ts); request ones map to HTTP 400. */
export type TokenizeErrorCode =
  | 'invalid_json'
  | 'invalid_request'
  | 'unsupported_content'
  | 'template_error'
  | 'tokenizer_not_found'
  | 'tokenizer_invalid';
