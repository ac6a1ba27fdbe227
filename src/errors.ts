/**
 * Stable machine-readable error codes. The native addon reports the same
 * strings (see native/core/src/error.rs), so callers branch on `code`, never
 * on `message`.
 */
export type KvEppErrorCode =
  | 'invalid_block_size'
  | 'buffer_too_small'
  | 'length_mismatch'
  | 'invalid_token'
  | 'invalid_argument'
  | 'native_unavailable'
  | 'hash_backend_unavailable'
  | 'disposed'
  | 'internal'
  // Request tokenization (the server answers 400 with the message):
  | 'invalid_json'
  | 'invalid_request'
  | 'unsupported_content'
  | 'template_error'
  // Routing (the server answers 503 / 429 / 413):
  | 'no_endpoint'
  | 'overloaded'
  | 'body_too_large'
  // The gateway abandoned the request before it was answered (never sent):
  | 'cancelled'
  // Tokenizer loading (configuration errors: start-up fails):
  | 'tokenizer_not_found'
  | 'tokenizer_invalid';

/** The one error type kv-epp throws for contract violations. */
export class KvEppError extends Error {
  constructor(
    readonly code: KvEppErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'KvEppError';
  }
}
