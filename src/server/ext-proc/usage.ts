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

/** Usage in a complete non-streaming JSON body; undefined if none or not JSON. */
export function usageOfJsonBody(body: Uint8Array): Usage | undefined {
  if (body.length === 0) return undefined;
  const text = decoder.decode(body);
  if (!text.includes('_tokens')) return undefined;
  try {
    return usageOf(JSON.parse(text));
  } catch {
    return undefined;
  }
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
