/**
 * The one place that turns an error into the HTTP answer the gateway sends
 * the client (an ext_proc ImmediateResponse). Body format follows the GAIE
 * EPP, `inference error: <Category> - <message>`, so a router that uses GAIE's
 * messages yields byte-identical bodies (gaie-epp.md §1.4 step 7, §6.2).
 *
 *   invalid_json, invalid_request, unsupported_content, template_error → 400 BadRequest
 *   no_endpoint   → 503 ServiceUnavailable
 *   overloaded    → 429 ResourceExhausted (+ retry-after)
 *   body_too_large → 413 PayloadTooLarge
 *   anything else → 500 Internal, with the error's name (and code) in the text
 */
import { KvEppError, type KvEppErrorCode } from '../../errors.js';
import { setHeader } from './headers.js';
import type { ImmediateResponse } from './messages.js';

export interface ErrorAnswer {
  status: number;
  /** GAIE's error category, the word before ` - ` in the body. */
  category: string;
  /** The text after `inference error: `. */
  text: string;
  /** Whether this is a server fault worth an error log (500s). */
  internal: boolean;
}

const BY_CODE: Partial<Record<KvEppErrorCode, readonly [number, string]>> = {
  invalid_json: [400, 'BadRequest'],
  invalid_request: [400, 'BadRequest'],
  unsupported_content: [400, 'BadRequest'],
  template_error: [400, 'BadRequest'],
  no_endpoint: [503, 'ServiceUnavailable'],
  overloaded: [429, 'ResourceExhausted'],
  body_too_large: [413, 'PayloadTooLarge'],
};

/** Classifies a thrown value (anything, not only errors). */
export function classifyError(err: unknown): ErrorAnswer {
  if (err instanceof KvEppError) {
    const hit = BY_CODE[err.code];
    if (hit) {
      return {
        status: hit[0],
        category: hit[1],
        text: `${hit[1]} - ${err.message}`,
        internal: false,
      };
    }
    return {
      status: 500,
      category: 'Internal',
      text: `Internal - ${err.name} [${err.code}]: ${err.message}`,
      internal: true,
    };
  }
  const detail = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  return { status: 500, category: 'Internal', text: `Internal - ${detail}`, internal: true };
}

export interface ImmediateOptions {
  /** `retry-after` seconds on 429 answers. */
  retryAfterSeconds: number;
}

const encoder = new TextEncoder();

/** The ImmediateResponse for `answer` (see classifyError). */
export function immediateResponse(answer: ErrorAnswer, opts: ImmediateOptions): ImmediateResponse {
  const res: ImmediateResponse = {
    status: { code: answer.status },
    body: encoder.encode(`inference error: ${answer.text}`),
    details: `kv_epp_${answer.category}`,
  };
  if (answer.status === 429) {
    res.headers = { set_headers: [setHeader('retry-after', String(opts.retryAfterSeconds))] };
  }
  return res;
}
