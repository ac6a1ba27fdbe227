/**
 * The response half of an ext_proc stream, after the request was routed:
 * pass headers through, read the status and the served endpoint, read usage,
 * restore the client's model name, and answer every message the way the
 * response body mode requires.
 *
 * - duplex (FULL_DUPLEX_STREAMED, the default): SSE (`text/event-stream`, or,
 *   when the response names no content type or its headers were skipped, a
 *   body whose first bytes are an SSE field such as `data:`) chunks go
 *   straight back as `streamed_response` (≤62 000 bytes each) while a
 *   line-buffered parser reads usage (a model name a chunk cuts off is held
 *   back to the next chunk and restored); other bodies are held to end of stream
 *   (up to a limit, then passed through untouched), usage read from the JSON,
 *   the model restored, and sent back chunked with EoS on the last piece.
 * - buffered (BUFFERED / BUFFERED_PARTIAL): the one body message is answered
 *   with `body_mutation.body` (+ content-length) only if the model was restored.
 *   A response that may be a stream (SSE, or untyped without a length) asks
 *   Envoy to switch its body to STREAMED (`mode_override`, honoured with
 *   `allow_mode_override`); its body messages are then answered as per_chunk's
 *   (a model name cut by a chunk boundary stays unrestored), and the body ends
 *   at the message with EoS (or trailers). Where Envoy ignores the override
 *   and sends its one BUFFERED message without EoS (trailers it does not
 *   forward, or BUFFERED_PARTIAL's buffer full), that response is not seen to
 *   end: nothing tells it from a stream an upstream reset cut short.
 * - per_chunk (STREAMED / NONE): each chunk answered, rewritten in place. A
 *   model name cut by a chunk boundary stays unrestored: holding bytes back
 *   here could lose them (trailers may end the body, and a trailers answer
 *   carries no body).
 * - passthrough (GRPC): each message echoed as one `streamed_response`.
 */
import { BodyBuffer, contentLength, splitBody } from './body.js';
import type { BodyBudget } from './body-budget.js';
import { readHeaderMap, setHeader } from './headers.js';
import {
  BodySendMode,
  type CommonResponse,
  HeaderSendMode,
  type HttpBody,
  type HttpHeaders,
  type Metadata,
  type ProcessingMode,
} from './messages.js';
import { readServedEndpoint } from './metadata.js';
import type { ModelRewriter } from './model-rewrite.js';
import type { StreamSink } from './sink.js';
import { SseUsageParser, type Usage, usageOfJsonBody } from './usage.js';

export type ResponseMode = 'duplex' | 'buffered' | 'per_chunk' | 'passthrough';

/** The rest of the response with its body STREAMED (headers and trailers sent). */
const STREAMED_RESPONSE: ProcessingMode = {
  response_header_mode: HeaderSendMode.SEND,
  response_body_mode: BodySendMode.STREAMED,
  response_trailer_mode: HeaderSendMode.SEND,
};

const EMPTY = new Uint8Array(0);
/** How far back from a chunk's end a cut-off model name is looked for and held. */
const SSE_HOLD_BYTES = 64 * 1024;
const CONTENT_LENGTH = 'content-length';

/** Sends `body` as `streamed_response` pieces of ≤62 000 bytes; EoS (if `eos`) on the last. */
export function sendStreamed(
  sink: StreamSink,
  kind: 'request_body' | 'response_body',
  body: Uint8Array,
  eos: boolean,
): void {
  const pieces = splitBody(body);
  const last = pieces.length - 1;
  for (let i = 0; i <= last; i++) {
    const streamed_response = { body: pieces[i] as Uint8Array, end_of_stream: eos && i === last };
    sink.send({ [kind]: { response: { body_mutation: { streamed_response } } } });
  }
}

/** SSE field names (WHATWG event stream) a stream's first line starts with; ':' is a comment. */
const SSE_FIELDS = ['data', 'event', 'id', 'retry'].map((f) => new TextEncoder().encode(f));

/**
 * Whether a body's first bytes (after blank lines) are an SSE field line
 * (`data:`, `data` alone on its line, `event:`, `id:`, `retry:`, or a `:`
 * comment): true or false, or undefined while the bytes could still become
 * one (only blank lines, or a field name cut short).
 */
export function startsLikeSse(bytes: Uint8Array): boolean | undefined {
  let i = 0;
  while (i < bytes.length && (bytes[i] === 0x0a || bytes[i] === 0x0d)) i++;
  if (i === bytes.length) return undefined;
  if (bytes[i] === 0x3a) return true;
  for (const f of SSE_FIELDS) {
    let k = 0;
    while (k < f.length && i + k < bytes.length && bytes[i + k] === f[k]) k++;
    if (i + k === bytes.length) {
      if (k > 0) return undefined; // a cut-short field name
      continue;
    }
    if (k < f.length) continue;
    const next = bytes[i + k];
    // `data:`, or a field name alone on its line (an empty value).
    if (next === 0x3a || next === 0x0a || next === 0x0d) return true;
  }
  return false;
}

/** `application/json` or a `+json` type (parameters ignored). */
export function isJsonType(contentType: string): boolean {
  const mime = (contentType.split(';')[0] as string).trim().toLowerCase();
  return mime === 'application/json' || mime.endsWith('+json');
}

/** `a` then `b`, in one new array. */
function joined(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** How Envoy's local reply for a circuit-breaker overflow begins (router filter, 1.40). */
const OVERFLOW_REPLY = Buffer.from(
  'upstream connect error or disconnect/reset before headers. reset reason: overflow',
  'latin1',
);

export class ResponsePath {
  status: number | undefined;
  served: string | undefined;
  /** Usage seen so far (a held JSON body's is read on first access). */
  get usage(): Usage | undefined {
    this.readPendingUsage();
    return this.readUsage;
  }
  /** The response ended (body EoS, header EoS or trailers). */
  done = false;
  /** Response body bytes the model server sent (before any model restore). */
  bytes = 0;
  headersSeen = false;
  /**
   * A response_body message arrived. Envoy takes a body answer only after one:
   * an unasked `streamed_response` is a spurious message, which it turns into a 500.
   */
  private bodySeen = false;
  /** Envoy's circuit breakers answered (see RequestSummary.gatewayOverflow). */
  get gatewayOverflow(): boolean {
    if (this.overloadedHeader) return true;
    const head = this.errorHead;
    return (
      this.status === 503 &&
      head !== undefined &&
      head.length >= OVERFLOW_REPLY.length &&
      Buffer.from(head.buffer, head.byteOffset, OVERFLOW_REPLY.length).equals(OVERFLOW_REPLY)
    );
  }
  private overloadedHeader = false;
  /** A 5xx body's first bytes (up to OVERFLOW_REPLY's length), to recognise Envoy's reply. */
  private errorHead: Uint8Array | undefined;

  private readUsage: Usage | undefined;
  /**
   * A complete JSON body whose usage is not read yet: reading it waits for the
   * first `usage` access, after the answer carrying the body has been written.
   */
  private usageBody: Uint8Array | undefined;
  /** The body is SSE; undefined until its headers or first bytes tell. */
  private sse: boolean | undefined;
  /** An untyped body's first bytes, while they cannot yet tell whether it is SSE. */
  private sniffed: Uint8Array | undefined;
  private hadContentLength = false;
  private sseParser: SseUsageParser | undefined;
  /** SSE with a model restore: a model name the last chunk cut off, sent with the next one. */
  private sseTail: Uint8Array | undefined;
  private held: BodyBuffer | undefined;
  /** buffered mode: STREAMED was asked for this response's body (mode_override). */
  private streamedAsked = false;
  /** The held-back body grew past the limit: the rest passes through. */
  private overflow = false;

  constructor(
    private readonly sink: StreamSink,
    private readonly mode: ResponseMode,
    private readonly rewriter: ModelRewriter | undefined,
    private readonly maxHeldBytes: number,
    private readonly onDone: () => void,
    /** Where held-back bodies are accounted; when it is full, bodies pass through unheld. */
    private readonly budget?: BodyBudget,
  ) {}

  readServed(md: Metadata | null | undefined): void {
    const s = readServedEndpoint(md);
    if (s) this.served = s;
  }

  headers(h: HttpHeaders | null | undefined): void {
    this.headersSeen = true;
    const map = readHeaderMap(h?.headers);
    const status = Number(map.get(':status') ?? map.get('status'));
    if (Number.isInteger(status) && status > 0) this.status = status;
    this.overloadedHeader = map.get('x-envoy-overloaded') === 'true';
    const type = map.get('content-type');
    this.hadContentLength = map.has(CONTENT_LENGTH);
    // Only a JSON body is held (for its usage and the model restore); any other
    // type (SSE, NDJSON, text a server streams) passes through chunk by chunk,
    // as SSE does. No content type (and no length, which a stream never has):
    // the first bytes tell.
    this.sse = type === undefined ? (this.hadContentLength ? false : undefined) : !isJsonType(type);
    if (this.sse === false) {
      const declared = contentLength(map.get(CONTENT_LENGTH));
      this.held = new BodyBuffer(Math.min(declared, this.maxHeldBytes), this.budget);
    }
    if (this.mode === 'buffered' && this.sse !== false && !h?.end_of_stream) {
      // A stream (SSE, or untyped without a length) in a BUFFERED response mode
      // (Envoy AI Gateway's "buffered" pools) would reach the client only at its
      // end, or fail past Envoy's buffer: ask for STREAMED. Envoy applies it with
      // `allow_mode_override` only; either way each body message is answered.
      this.streamedAsked = true;
      this.sink.send({ response_headers: { response: {} }, mode_override: STREAMED_RESPONSE });
    } else {
      this.sink.send({ response_headers: { response: {} } });
    }
    if (h?.end_of_stream) this.finish();
  }

  body(b: HttpBody | null | undefined): void {
    let chunk = b?.body ?? EMPTY;
    const eos = b?.end_of_stream === true;
    this.bodySeen = true;
    if (!this.done) this.bytes += chunk.length;
    if (this.status !== undefined && this.status >= 500 && chunk.length > 0) {
      const have = this.errorHead?.length ?? 0;
      if (have < OVERFLOW_REPLY.length) {
        const take = chunk.subarray(0, OVERFLOW_REPLY.length - have);
        this.errorHead = this.errorHead ? joined(this.errorHead, take) : take.slice();
      }
    }
    if (this.sse === undefined && chunk.length > 0) chunk = this.sniff(chunk);
    switch (this.mode) {
      case 'duplex':
        // A repeated EoS chunk is dropped: nothing may follow our EoS.
        if (this.done) return;
        if (this.sse) this.streamSse(chunk, eos);
        else this.holdJson(chunk, eos);
        return;
      case 'passthrough':
        if (this.done) return;
        sendStreamed(this.sink, 'response_body', chunk, eos);
        if (eos) this.finish();
        return;
      default:
        // BUFFERED sends one body message, the last; after STREAMED was asked, the EoS tells.
        this.answerChunk(chunk, eos || (this.mode === 'buffered' && !this.streamedAsked));
    }
  }

  /**
   * Decides whether an untyped body is SSE from its first bytes; until it can
   * tell, chunks are held as a JSON body's would be. Returns the chunk to go
   * on with: once the body turns out SSE, in duplex mode the held bytes come
   * first (they were not sent); in the other modes they were answered already
   * and only go to the usage parser.
   */
  private sniff(chunk: Uint8Array): Uint8Array {
    this.sniffed = this.sniffed ? joined(this.sniffed, chunk) : chunk;
    this.sse = startsLikeSse(this.sniffed);
    if (this.sse === undefined) return chunk;
    this.sniffed = undefined;
    const prior = this.sse ? this.takeHeld() : undefined;
    if (!prior || prior.length === 0) return chunk;
    if (this.mode === 'duplex') return joined(prior, chunk);
    this.sseParser ??= new SseUsageParser();
    this.sseParser.push(prior);
    return chunk;
  }

  trailers(): void {
    if (!this.done && this.mode === 'duplex' && !this.sse && !this.overflow && this.bodySeen) {
      // The body ended without an EoS chunk: the trailers end it. (With no
      // body at all there is nothing to answer but the trailers.)
      this.flushHeld(false);
    }
    if (!this.done && this.sseTail && this.rewriter) {
      sendStreamed(this.sink, 'response_body', this.rewriter.rewrite(this.sseTail), false);
      this.sseTail = undefined;
    }
    this.sink.send({ response_trailers: {} });
    this.finish();
  }

  private streamSse(chunk: Uint8Array, eos: boolean): void {
    this.sseParser ??= new SseUsageParser();
    this.sseParser.push(chunk);
    this.passRewritten(chunk, eos);
  }

  /** Passes a chunk on as it came, with the client's model name restored. */
  private passRewritten(chunk: Uint8Array, eos: boolean): void {
    if (!this.rewriter) {
      sendStreamed(this.sink, 'response_body', chunk, eos);
      if (eos) this.finish();
      return;
    }
    // The model name may be cut by a chunk boundary: hold back a match the
    // chunk ends inside of (at most SSE_HOLD_BYTES) until the rest arrives;
    // every other chunk passes one for one, as it came.
    let data = chunk;
    if (this.sseTail) {
      data = joined(this.sseTail, chunk);
      this.sseTail = undefined;
    }
    const cut = eos ? data.length : this.rewriter.cutMatchStart(data, SSE_HOLD_BYTES);
    if (cut < data.length) this.sseTail = data.slice(cut);
    if (cut > 0 || eos) {
      sendStreamed(this.sink, 'response_body', this.rewriter.rewrite(data.subarray(0, cut)), eos);
    }
    if (eos) this.finish();
  }

  private holdJson(chunk: Uint8Array, eos: boolean): void {
    // Past the limit or the server's body budget, the rest passes through as
    // SSE does (model restored, usage unread).
    if (this.overflow) {
      this.passRewritten(chunk, eos);
      return;
    }
    this.held ??= new BodyBuffer(0, this.budget);
    if (!this.held.append(chunk)) {
      this.overflow = true;
      const prior = this.takeHeld();
      if (prior.length > 0) this.passRewritten(prior, false);
      this.passRewritten(chunk, eos);
      return;
    }
    if (eos) {
      this.flushHeld(true);
      this.finish();
    } else if (this.held.length > this.maxHeldBytes) {
      this.overflow = true;
      this.passRewritten(this.takeHeld(), false);
    }
  }

  /** Sends the held-back body: usage read, model restored. */
  private flushHeld(eos: boolean): void {
    const body = this.takeHeld();
    this.deferUsage(body);
    const out = this.rewriter ? this.rewriter.rewrite(body) : body;
    sendStreamed(this.sink, 'response_body', out, eos);
  }

  /** buffered / per_chunk: exactly one answer per body message. */
  private answerChunk(chunk: Uint8Array, last: boolean): void {
    this.observeUsage(chunk, last);
    const out = this.rewriter ? this.rewriter.rewrite(chunk) : chunk;
    const response: CommonResponse = {};
    if (out !== chunk) {
      response.body_mutation = { body: out };
      if (this.mode === 'buffered' && this.hadContentLength) {
        response.header_mutation = { set_headers: [setHeader(CONTENT_LENGTH, String(out.length))] };
      }
    }
    this.sink.send({ response_body: { response } });
    if (last) this.finish();
  }

  private observeUsage(chunk: Uint8Array, last: boolean): void {
    if (this.sse) {
      this.sseParser ??= new SseUsageParser();
      this.sseParser.push(chunk);
      return;
    }
    // After the end (a body message past it) nothing is held: nothing would give it back.
    if (!this.overflow && !this.done) {
      this.held ??= new BodyBuffer(0, this.budget);
      if (this.held.length + chunk.length > this.maxHeldBytes || !this.held.append(chunk)) {
        this.overflow = true;
        this.takeHeld();
      }
    }
    if (last && this.held) this.deferUsage(this.takeHeld());
  }

  /** The held-back bytes, taken out (their budget share given back); empty when none. */
  private takeHeld(): Uint8Array {
    const held = this.held;
    if (!held) return EMPTY;
    this.held = undefined;
    held.release();
    return held.bytes();
  }

  /** Keeps `body` to read its usage later; a body not read yet is read now. */
  private deferUsage(body: Uint8Array): void {
    this.readPendingUsage();
    if (body.length > 0) this.usageBody = body;
  }

  private readPendingUsage(): void {
    if (this.usageBody === undefined) return;
    this.readUsage = usageOfJsonBody(this.usageBody) ?? this.readUsage;
    this.usageBody = undefined;
  }

  /** The response ended (or the stream did): usage finalised, onDone once. */
  finish(): void {
    if (this.done) return;
    this.done = true;
    this.takeHeld();
    if (this.sseParser) {
      this.sseParser.end();
      this.readUsage = this.sseParser.usage ?? this.readUsage;
    }
    this.onDone();
  }
}
