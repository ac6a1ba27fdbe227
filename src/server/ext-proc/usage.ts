/**
 * Token usage from OpenAI-style responses (gaie-epp.md §1.5): the top-level
 * `usage` object of a JSON body, or of an SSE `data:` event (vLLM sends it in
 * the last event when the client asked for `stream_options.include_usage`);
 * the Responses API puts it in `response.usage` of `response.completed`.
 * Chat/completions name the fields prompt/completion_tokens, the Responses API
 * input/output_tokens; both are read.
 *
 * Unlike GAIE, the SSE parser keeps a line buffer, so a `data:` line split
 * across body chunks is still read.
 */
import { skipWs, valueEnd } from '../../openai/json-bytes.js';

export interface Usage {
  promptTokens?: number | undefined;
  completionTokens?: number | undefined;
  /**
   * Prompt tokens the server found in its prefix cache:
   * `prompt_tokens_details.cached_tokens` (chat/completions) or
   * `input_tokens_details.cached_tokens` (Responses API); GAIE's spelling
   * `prompt_token_details` is read too.
   */
  cachedTokens?: number | undefined;
}

function num(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

function fromUsageObject(u: unknown): Usage | undefined {
  if (typeof u !== 'object' || u === null) return undefined;
  const o = u as Record<string, unknown>;
  const promptTokens = num(o.prompt_tokens) ?? num(o.input_tokens);
  const completionTokens = num(o.completion_tokens) ?? num(o.output_tokens);
  if (promptTokens === undefined && completionTokens === undefined) return undefined;
  const details = o.prompt_tokens_details ?? o.input_tokens_details ?? o.prompt_token_details;
  const cachedTokens =
    typeof details === 'object' && details !== null
      ? num((details as Record<string, unknown>).cached_tokens)
      : undefined;
  return cachedTokens === undefined
    ? { promptTokens, completionTokens }
    : { promptTokens, completionTokens, cachedTokens };
}

/** Usage in one decoded JSON document (a whole body or one SSE event). */
export function usageOf(doc: unknown): Usage | undefined {
  if (typeof doc !== 'object' || doc === null) return undefined;
  const o = doc as Record<string, unknown>;
  const direct = fromUsageObject(o.usage);
  if (direct) return direct;
  if (typeof o.response === 'object' && o.response !== null) {
    return fromUsageObject((o.response as Record<string, unknown>).usage);
  }
  return undefined;
}

const decoder = new TextDecoder();

/** Bodies up to this size are parsed whole for their usage; larger ones are not. */
const WHOLE_PARSE_MAX_BYTES = 1024 * 1024;
/** How far from a large body's end its top-level `usage` is looked for. */
const USAGE_TAIL_BYTES = 64 * 1024;
const USAGE_KEY = new TextEncoder().encode('"usage"');

/**
 * Usage in a complete non-streaming JSON body; undefined if none or not JSON.
 * A body above WHOLE_PARSE_MAX_BYTES (a large embeddings answer) is not parsed:
 * its top-level `usage` member is found within its last USAGE_TAIL_BYTES, where
 * OpenAI-style servers put it, and only that member is parsed. Parsing all of
 * it stalled the event loop ~200 ms per 60 MB and grew the heap ~6×.
 */
export function usageOfJsonBody(body: Uint8Array): Usage | undefined {
  if (body.length === 0) return undefined;
  if (body.length > WHOLE_PARSE_MAX_BYTES) {
    const usage = topLevelUsageNearEnd(body);
    if (!usage) return undefined;
    try {
      return usageOf({ usage: JSON.parse(decoder.decode(usage)) });
    } catch {
      return undefined;
    }
  }
  const text = decoder.decode(body);
  if (!text.includes('_tokens')) return undefined;
  try {
    return usageOf(JSON.parse(text));
  } catch {
    return undefined;
  }
}

/**
 * The value of the last `"usage"` member of the top-level object that starts
 * within the body's last USAGE_TAIL_BYTES. A candidate key is a quote no
 * backslash escapes (inside a string a quote is always escaped), followed by
 * `:`; it is top-level when, after its value, the document closes exactly one
 * object and ends.
 */
function topLevelUsageNearEnd(b: Uint8Array): Uint8Array | undefined {
  const floor = Math.max(0, b.length - USAGE_TAIL_BYTES);
  for (let q = b.lastIndexOf(0x22); q >= floor; q = q > 0 ? b.lastIndexOf(0x22, q - 1) : -1) {
    if (!startsWith(b, q, USAGE_KEY)) continue;
    let k = q - 1;
    while (k >= 0 && b[k] === 0x5c) k--;
    if ((q - 1 - k) % 2 !== 0) continue;
    let i = skipWs(b, q + USAGE_KEY.length);
    if (b[i] !== 0x3a) continue;
    i = skipWs(b, i + 1);
    const end = valueEnd(b, i);
    if (end > i && end <= b.length && closesOneObject(b, end)) return b.subarray(i, end);
  }
  return undefined;
}

function startsWith(b: Uint8Array, at: number, s: Uint8Array): boolean {
  if (at + s.length > b.length) return false;
  for (let j = 0; j < s.length; j++) if (b[at + j] !== s[j]) return false;
  return true;
}

/** From `i` to the end, the input closes exactly one open object, last, then only whitespace. */
function closesOneObject(b: Uint8Array, i: number): boolean {
  let depth = 0;
  while (i < b.length) {
    const x = b[i];
    if (x === 0x22) {
      i = valueEnd(b, i);
      continue;
    }
    if (x === 0x7b || x === 0x5b) depth++;
    else if (x === 0x7d || x === 0x5d) {
      depth--;
      if (depth < 0) return x === 0x7d && skipWs(b, i + 1) === b.length;
    }
    i++;
  }
  return false;
}

/** Longest partial line kept between chunks; a longer one is dropped unread. */
const MAX_PENDING_LINE = 4 * 1024 * 1024;

/** Reads usage from an SSE body fed chunk by chunk; the last usage seen wins. */
export class SseUsageParser {
  private readonly decoder = new TextDecoder();
  private pending = '';
  private skipping = false;
  usage: Usage | undefined;

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    const text = this.decoder.decode(chunk, { stream: true });
    let start = 0;
    for (;;) {
      const nl = text.indexOf('\n', start);
      if (nl < 0) break;
      const piece = text.slice(start, nl);
      if (this.skipping) {
        this.skipping = false;
      } else if (this.pending) {
        // A chunk that ended without a newline is usually a split line; some
        // senders (GAIE's tests) end chunks mid-stream without one, though:
        // then the new piece alone is the line.
        if (!this.line(this.pending + piece) && piece.startsWith('data:')) this.line(piece);
      } else {
        this.line(piece);
      }
      this.pending = '';
      start = nl + 1;
    }
    if (start < text.length && !this.skipping) {
      this.pending += text.slice(start);
      if (this.pending.length > MAX_PENDING_LINE) {
        this.pending = '';
        this.skipping = true;
      }
    }
  }

  /** The body ended: a last line without a newline still counts. */
  end(): void {
    const rest = this.pending + this.decoder.decode();
    this.pending = '';
    if (rest && !this.skipping) this.line(rest);
  }

  /** Reads one line; false if it was a `data:` line whose payload is not JSON. */
  private line(raw: string): boolean {
    if (!raw.startsWith('data:')) return true;
    let payload = raw.endsWith('\r') ? raw.slice(5, -1) : raw.slice(5);
    if (payload.startsWith(' ')) payload = payload.slice(1);
    // Cheap filter first: most events carry no usage.
    if (!payload.includes('_tokens')) return true;
    try {
      const u = usageOf(JSON.parse(payload));
      if (u) this.usage = u;
      return true;
    } catch {
      return false;
    }
  }
}
