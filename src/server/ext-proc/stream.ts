/**
 * The ext_proc state machine for one HTTP request/response exchange (one gRPC
 * `Process` stream). Transport-free: grpc-server.ts feeds it decoded
 * ProcessingRequests and gives it a StreamSink to answer on.
 *
 * Request body modes (from `protocol_config` in the first message; absent →
 * FULL_DUPLEX_STREAMED, which is also what NGF-style one-shot clients get):
 * - FULL_DUPLEX_STREAMED: headers are kept and not answered; body chunks are
 *   buffered to end of stream (or request trailers); then the router decides
 *   and the headers response (destination, clear_route_cache, content-length,
 *   dynamic metadata) goes out, followed by the body as ≤62 000-byte
 *   `streamed_response` chunks.
 * - BUFFERED / BUFFERED_PARTIAL: headers are answered at once with CONTINUE;
 *   the one body message is answered with the header mutation, the dynamic
 *   metadata and `body_mutation.body`.
 * - NONE: no body will come; routed as a header-only request.
 * - STREAMED / GRPC: unsupported (the stream fails with UNIMPLEMENTED).
 * Header-only requests (`request_headers.end_of_stream`) are routed at once.
 *
 * Messages are handled strictly in order: while the router works, later
 * messages wait in a queue. `router.complete` runs exactly once per stream
 * that got a decision: when the response ends, or when the stream ends first
 * (client gone, half-close after the request phase, protocol error).
 */
import { randomUUID } from 'node:crypto';
import { KvEppError } from '../../errors.js';
import type { Logger } from '../../log/logger.js';
import { clientRoutingHeaders } from '../../routing/client-headers.js';
import type {
  Cancellation,
  CancelReason,
  GatewayRequest,
  RequestRouter,
  RouteDecision,
} from '../routing-types.js';
import { BodyBuffer, contentLength } from './body.js';
import type { BodyBudget } from './body-budget.js';
import { readHeaderMap, setHeader } from './headers.js';
import { classifyError, immediateResponse } from './immediate.js';
import {
  BodySendMode,
  type CommonResponse,
  DESTINATION_ENDPOINT_KEY,
  type HeaderMutation,
  type Metadata,
  type ProcessingRequest,
  type ProtocolConfiguration,
  REQUEST_ID_HEADER,
} from './messages.js';
import { destinationMetadata, mergeSubsetHint, readSubsetHint } from './metadata.js';
import { ModelRewriter } from './model-rewrite.js';
import { type ResponseMode, ResponsePath, sendStreamed } from './response.js';
import { GrpcCode, type StreamSink } from './sink.js';

export { GrpcCode, type StreamSink };

export interface ExtProcStreamOptions {
  router: RequestRouter;
  logger: Logger;
  /** Largest request body accepted; more → 413. */
  maxBodyBytes: number;
  /** `retry-after` seconds on 429 answers. */
  retryAfterSeconds: number;
  /**
   * Largest non-streaming response body held back for usage parsing and the
   * model rewrite; past it the body is passed through untouched.
   */
  maxResponseBufferBytes: number;
  /**
   * The server's budget of buffered body bytes, shared by its streams: a
   * request body it has no room for is answered 429; a response body it has
   * no room for passes through unheld. Absent: no limit across streams.
   */
  bodyBudget?: BodyBudget | undefined;
  /**
   * Called with the error category (`PayloadTooLarge` for a 413; see immediate.ts)
   * when the stream answers an error the router never saw (an oversized body), so
   * metrics can count it; router errors are reported by the router's observer.
   */
  onLocalReject?: ((category: string) => void) | undefined;
}

/** A message the stream cannot accept: ends the stream with `code`. */
export class ProtocolViolation extends Error {
  constructor(
    readonly grpcCode: number,
    message: string,
  ) {
    super(message);
    this.name = 'ProtocolViolation';
  }
}

type Phase = 'headers' | 'body' | 'routing' | 'routed';
type RequestMode = 'duplex' | 'buffered' | 'no_body';

const EMPTY = new Uint8Array(0);
const CONTENT_LENGTH = 'content-length';

function modeName(m: number): string {
  return Object.entries(BodySendMode).find(([, v]) => v === m)?.[0] ?? String(m);
}

/**
 * Most messages a stream holds while its request is routed; past it, or past
 * maxBodyBytes (at least QUEUE_LIMIT_MIN_BYTES) of their bodies, the stream
 * fails with RESOURCE_EXHAUSTED.
 */
const QUEUE_LIMIT_MESSAGES = 1024;
const QUEUE_LIMIT_MIN_BYTES = 4 * 1024 * 1024;

/** What a queued message counts against the limit: its body and a fixed allowance. */
function queuedSize(msg: ProcessingRequest): number {
  return 256 + (msg.request_body?.body?.length ?? 0) + (msg.response_body?.body?.length ?? 0);
}

/** Longest `x-request-id` kv-epp logs and reports; longer ones are cut. */
const MAX_REQUEST_ID_CHARS = 128;

/** `ProcessingRequest.request_body` (field 4, length-delimited): the tag that starts such a message. */
const REQUEST_BODY_TAG = 0x22;

export class ExtProcStream {
  private phase: Phase = 'headers';
  private first = true;
  private requestMode: RequestMode = 'duplex';
  private responseMode: ResponseMode = 'duplex';

  private readonly headers = new Map<string, string>();
  private requestId = '';
  private generatedRequestId = false;
  private subset: string[] | undefined;
  private reqBody: BodyBuffer | undefined;
  /** Request trailers, not a body EoS, ended the body: answer them after it. */
  private requestTrailers = false;
  /** When request_headers arrived (`performance.now()`). */
  private receivedAtMs: number | undefined;
  /** The request's content-length, 0 when absent. */
  private declaredLength = 0;
  /** request_body_mode BUFFERED_PARTIAL: a body message without EoS may be truncated. */
  private partialBuffering = false;

  private decision: RouteDecision | undefined;
  private response: ResponsePath | undefined;
  private completed = false;

  private queue: ProcessingRequest[] = [];
  /** Body bytes (plus a per-message allowance) of `queue`: bounded, see QUEUE_LIMIT_MESSAGES. */
  private queuedBytes = 0;
  private busy = false;
  private halfClosed = false;
  private closed = false;
  /** The body request being routed now, cancelled if the stream closes first. */
  private routing: Cancellation | undefined;

  constructor(
    private readonly sink: StreamSink,
    private readonly opts: ExtProcStreamOptions,
  ) {}

  // --- transport events ---

  onMessage(msg: ProcessingRequest): void {
    if (this.closed) return;
    if (this.busy) {
      // Only a repeated end-of-stream chunk or trailers are due while the
      // router works; a client that keeps sending would grow this without end.
      this.queuedBytes += queuedSize(msg);
      if (
        this.queue.length >= QUEUE_LIMIT_MESSAGES ||
        this.queuedBytes > Math.max(this.opts.maxBodyBytes, QUEUE_LIMIT_MIN_BYTES)
      ) {
        this.violation(
          new ProtocolViolation(
            GrpcCode.RESOURCE_EXHAUSTED,
            `${this.queue.length + 1} messages (${this.queuedBytes} bytes) sent while the request was being routed`,
          ),
        );
        return;
      }
      this.queue.push(msg);
      return;
    }
    this.dispatch(msg);
  }

  /**
   * A message above the transport's receive limit: a whole request body
   * (BUFFERED; the first field of a `request_body` message, tag 0x22) is
   * answered 413 here, as a body over the limit is in the other modes, and its
   * bytes are dropped unread. Anything else fails the call (RESOURCE_EXHAUSTED).
   */
  onOversizedMessage(length: number, firstByte: number): boolean {
    if (this.closed || this.busy || firstByte !== REQUEST_BODY_TAG || this.phase !== 'body') {
      return false;
    }
    this.rejectLocally(
      new KvEppError(
        'body_too_large',
        `request body message of ${length} bytes exceeds the limit of ${this.opts.maxBodyBytes} bytes`,
      ),
    );
    return true;
  }

  /** The client half-closed: answer what is pending, then end the stream. */
  onHalfClose(): void {
    this.halfClosed = true;
    if (!this.busy && !this.closed) this.finish();
  }

  /** The client went away (cancel, reset, connection loss): nothing more is sent. */
  onCancel(): void {
    if (this.closed) return;
    this.markClosed();
    this.settle();
  }

  // --- message loop ---

  private dispatch(msg: ProcessingRequest): void {
    let pending: Promise<void> | undefined;
    try {
      pending = this.handle(msg);
    } catch (err) {
      this.violation(err);
      return;
    }
    if (pending) {
      this.busy = true;
      pending.then(
        () => this.resume(),
        (err: unknown) => {
          this.violation(err);
          this.resume();
        },
      );
    }
  }

  private resume(): void {
    this.busy = false;
    while (!this.busy && !this.closed && this.queue.length > 0) {
      const msg = this.queue.shift() as ProcessingRequest;
      this.queuedBytes -= queuedSize(msg);
      this.dispatch(msg);
    }
    if (!this.busy && this.halfClosed && !this.closed) this.finish();
  }

  private handle(msg: ProcessingRequest): Promise<void> | undefined {
    if (this.first) {
      this.first = false;
      this.readProtocolConfig(msg.protocol_config);
    }
    switch (msg.request) {
      case 'request_headers':
        return this.onRequestHeaders(msg);
      case 'request_body':
        return this.onRequestBody(msg);
      case 'request_trailers':
        return this.onRequestTrailers(msg);
      case 'response_headers':
        this.onResponseHeaders(msg);
        return undefined;
      case 'response_body':
        this.onResponseBody(msg);
        return undefined;
      case 'response_trailers':
        this.onResponseTrailers(msg);
        return undefined;
      default:
        throw new ProtocolViolation(
          GrpcCode.INVALID_ARGUMENT,
          'ProcessingRequest carries no request',
        );
    }
  }

  private readProtocolConfig(pc: ProtocolConfiguration | null | undefined): void {
    if (!pc) return;
    const req = pc.request_body_mode ?? BodySendMode.NONE;
    if (req === BodySendMode.FULL_DUPLEX_STREAMED) this.requestMode = 'duplex';
    else if (req === BodySendMode.BUFFERED || req === BodySendMode.BUFFERED_PARTIAL) {
      this.requestMode = 'buffered';
      this.partialBuffering = req === BodySendMode.BUFFERED_PARTIAL;
    } else if (req === BodySendMode.NONE) {
      this.requestMode = 'no_body';
      if (!warnedNoBody.has(this.opts.logger)) {
        warnedNoBody.add(this.opts.logger);
        this.opts.logger.warn(
          { request_body_mode: 'NONE' },
          'the gateway sends no request bodies: requests are routed on their headers alone (no prefix-aware routing, no token_data); set request_body_mode FULL_DUPLEX_STREAMED (logged once)',
        );
      }
    } else {
      throw new ProtocolViolation(
        GrpcCode.UNIMPLEMENTED,
        `request_body_mode ${modeName(req)} is not supported; use FULL_DUPLEX_STREAMED or BUFFERED`,
      );
    }
    const res = pc.response_body_mode ?? BodySendMode.NONE;
    if (res === BodySendMode.FULL_DUPLEX_STREAMED) this.responseMode = 'duplex';
    else if (res === BodySendMode.BUFFERED || res === BodySendMode.BUFFERED_PARTIAL)
      this.responseMode = 'buffered';
    else if (res === BodySendMode.GRPC) this.responseMode = 'passthrough';
    else this.responseMode = 'per_chunk';
  }

  // --- request path ---

  private onRequestHeaders(msg: ProcessingRequest): Promise<void> | undefined {
    if (this.phase !== 'headers') {
      throw new ProtocolViolation(GrpcCode.INVALID_ARGUMENT, 'request_headers received twice');
    }
    this.receivedAtMs = performance.now();
    this.mergeSubset(msg.metadata_context);
    const h = msg.request_headers;
    readHeaderMap(h?.headers, this.headers);
    let id = this.headers.get(REQUEST_ID_HEADER);
    if (!id) {
      id = randomUUID();
      this.headers.set(REQUEST_ID_HEADER, id);
      this.generatedRequestId = true;
    }
    // As logged and reported: the client chooses it, so a long one is cut
    // (the header itself goes on unchanged).
    this.requestId =
      id.length > MAX_REQUEST_ID_CHARS ? `${id.slice(0, MAX_REQUEST_ID_CHARS)}…` : id;

    if (h?.end_of_stream || this.requestMode === 'no_body') {
      this.routeHeaderOnly();
      return undefined;
    }
    const declared = contentLength(this.headers.get(CONTENT_LENGTH));
    this.declaredLength = declared;
    if (declared > this.opts.maxBodyBytes) {
      this.rejectLocally(this.tooLarge(declared));
      return undefined;
    }
    this.reqBody = new BodyBuffer(declared, this.opts.bodyBudget);
    this.phase = 'body';
    if (this.requestMode === 'buffered') {
      // BUFFERED answers the headers before the body is seen, and a request
      // with trailers but no body never sends one: the client's routing
      // headers go now, so no path lets the gateway route on them.
      const strip = clientRoutingHeaders(this.headers.keys());
      this.sink.send({
        request_headers: {
          response: strip.length > 0 ? { header_mutation: { remove_headers: strip } } : {},
        },
      });
    }
    return undefined;
  }

  private onRequestBody(msg: ProcessingRequest): Promise<void> | undefined {
    if (this.phase === 'headers') {
      throw new ProtocolViolation(GrpcCode.INVALID_ARGUMENT, 'request_body before request_headers');
    }
    // After the body ended (Envoy may repeat the EoS chunk) or on a header-only request.
    if (this.phase !== 'body') return undefined;
    this.mergeSubset(msg.metadata_context);
    const b = msg.request_body;
    const chunk = b?.body;
    const buf = this.reqBody as BodyBuffer;
    if (chunk && chunk.length > 0) {
      if (buf.length + chunk.length > this.opts.maxBodyBytes) {
        this.rejectLocally(this.tooLarge(buf.length + chunk.length));
        return undefined;
      }
      if (!buf.append(chunk)) {
        this.rejectLocally(this.overBudget());
        return undefined;
      }
    }
    // BUFFERED_PARTIAL sends what fits in the gateway's buffer without
    // end_of_stream when the body is larger: routing a truncated body would
    // answer a misleading 400, so it is too large. Without end_of_stream but
    // complete, request trailers follow: route. Complete means all of the
    // content-length, or, without one, a whole JSON document (a JSON object
    // cut short never parses).
    if (
      this.partialBuffering &&
      !b?.end_of_stream &&
      (this.declaredLength === 0 ? !isWholeJson(buf.bytes()) : buf.length < this.declaredLength)
    ) {
      this.rejectLocally(
        new KvEppError(
          'body_too_large',
          `request body exceeds the gateway's buffer (BUFFERED_PARTIAL sent ${buf.length} bytes without end_of_stream)`,
        ),
      );
      return undefined;
    }
    // BUFFERED sends the whole body in one message.
    if (b?.end_of_stream || this.requestMode === 'buffered') return this.routeBody();
    return undefined;
  }

  private onRequestTrailers(msg: ProcessingRequest): Promise<void> | undefined {
    if (this.phase === 'headers') {
      throw new ProtocolViolation(
        GrpcCode.INVALID_ARGUMENT,
        'request_trailers before request_headers',
      );
    }
    if (this.phase === 'body') {
      this.mergeSubset(msg.metadata_context);
      // Trailers, not an EoS chunk, mark the end of the body (in BUFFERED mode
      // a request with trailers and no body: an empty body).
      this.requestTrailers = true;
      return this.routeBody();
    }
    this.sink.send({ request_trailers: {} });
    return undefined;
  }

  private routeHeaderOnly(): void {
    this.phase = 'routing';
    let decision: RouteDecision;
    try {
      decision = this.opts.router.routeHeaderOnly(this.gatewayRequest(EMPTY));
    } catch (err) {
      this.reject(err);
      return;
    }
    if (!this.accept(decision)) return;
    this.sink.send({
      request_headers: { response: this.requestCommon(decision, undefined) },
      dynamic_metadata: destinationMetadata(decision.endpoints.join(',')),
    });
  }

  private async routeBody(): Promise<void> {
    this.phase = 'routing';
    const buf = this.reqBody as BodyBuffer;
    this.reqBody = undefined;
    try {
      await this.routeBodyOf(buf);
    } finally {
      // The body (and the routed copy) stay pinned while the router works and
      // until the answer is handed to the transport.
      buf.release();
    }
  }

  private async routeBodyOf(buf: BodyBuffer): Promise<void> {
    const body = buf.bytes();
    let decision: RouteDecision;
    const cancel: Cancellation = { cancelled: false, onCancel: undefined };
    this.routing = cancel;
    try {
      // The stream never reads the request body again: the router may move it.
      decision = await this.opts.router.route({
        ...this.gatewayRequest(body),
        bodyTransferable: buf.owned,
        cancel,
      });
    } catch (err) {
      this.routing = undefined;
      if (!this.closed) this.reject(err);
      return;
    }
    this.routing = undefined;
    if (!this.accept(decision)) return;
    if (this.closed) {
      this.settle();
      return;
    }
    const metadata = destinationMetadata(decision.endpoints.join(','));
    const common = this.requestCommon(decision, decision.body.length);
    if (this.requestMode === 'buffered') {
      if (this.requestTrailers) {
        // Only the trailers are left to answer, and they cannot carry the
        // destination. (An empty body is refused by the router before this.)
        this.reject(
          new KvEppError(
            'invalid_request',
            'a request with trailers and no body cannot be routed in BUFFERED mode',
          ),
        );
        return;
      }
      common.body_mutation = { body: decision.body };
      this.sink.send({ request_body: { response: common }, dynamic_metadata: metadata });
      return;
    }
    this.sink.send({ request_headers: { response: common }, dynamic_metadata: metadata });
    sendStreamed(this.sink, 'request_body', decision.body, !this.requestTrailers);
    if (this.requestTrailers) this.sink.send({ request_trailers: {} });
  }

  /** Stores a decision; false (and a 503 sent) if it names no endpoint. */
  private accept(decision: RouteDecision): boolean {
    if (decision.endpoints.length === 0) {
      if (!this.closed) this.reject(new KvEppError('no_endpoint', 'the router chose no endpoint'));
      return false;
    }
    this.decision = decision;
    this.response = new ResponsePath(
      this.sink,
      this.responseMode,
      ModelRewriter.forDecision(decision),
      this.opts.maxResponseBufferBytes,
      this.settleAfterWrites,
      this.opts.bodyBudget,
    );
    this.phase = 'routed';
    return true;
  }

  private requestCommon(decision: RouteDecision, bodyLength: number | undefined): CommonResponse {
    const set = [setHeader(DESTINATION_ENDPOINT_KEY, decision.endpoints.join(','))];
    const names = new Set<string>([DESTINATION_ENDPOINT_KEY]);
    if (bodyLength !== undefined) {
      set.push(setHeader(CONTENT_LENGTH, String(bodyLength)));
      names.add(CONTENT_LENGTH);
    }
    if (this.generatedRequestId) {
      set.push(setHeader(REQUEST_ID_HEADER, this.requestId, true));
      names.add(REQUEST_ID_HEADER);
    }
    for (const [k, v] of Object.entries(decision.setHeaders)) {
      const key = k.toLowerCase();
      if (names.has(key)) continue;
      names.add(key);
      set.push(setHeader(key, v));
    }
    const mutation: HeaderMutation = { set_headers: set };
    const remove = decision.removeHeaders.map((n) => n.toLowerCase()).filter((n) => !names.has(n));
    if (remove.length > 0) mutation.remove_headers = remove;
    return { header_mutation: mutation, clear_route_cache: true };
  }

  private gatewayRequest(body: Uint8Array): GatewayRequest {
    return {
      headers: this.headers,
      path: this.headers.get(':path') ?? '',
      method: this.headers.get(':method') ?? '',
      body,
      subset: this.subset,
      requestId: this.requestId,
      receivedAtMs: this.receivedAtMs,
    };
  }

  private mergeSubset(md: Metadata | null | undefined): void {
    if (md) this.subset = mergeSubsetHint(this.subset, readSubsetHint(md));
  }

  private overBudget(): KvEppError {
    const budget = this.opts.bodyBudget as BodyBudget;
    return new KvEppError(
      'overloaded',
      `request bodies being buffered have reached the server's limit of ${budget.limit} bytes; retry later`,
    );
  }

  /**
   * Nothing more is handled: queued messages go, a request body still being
   * received gives its budget share back, and a request being routed is
   * cancelled (`why`).
   */
  private markClosed(why: CancelReason = 'abandoned'): void {
    this.closed = true;
    const routing = this.routing;
    if (routing !== undefined) {
      this.routing = undefined;
      routing.reason = why;
      routing.cancelled = true;
      routing.onCancel?.();
    }
    this.queue = [];
    this.queuedBytes = 0;
    this.reqBody?.release();
    this.reqBody = undefined;
  }

  private tooLarge(bytes: number): KvEppError {
    return new KvEppError(
      'body_too_large',
      `request body of ${bytes} bytes exceeds the limit of ${this.opts.maxBodyBytes} bytes`,
    );
  }

  // --- response path ---

  private responsePath(what: string): ResponsePath {
    if (!this.response && (this.phase === 'headers' || this.phase === 'body')) {
      // Response-only stream (request phase skipped by the data plane's
      // processing mode, as GAIE's hermetic tests do), or a local reply from the
      // data plane before the request body completed (Envoy's own 413 when the
      // body exceeds its buffer): pass through, no decision; the partial body is dropped.
      this.reqBody?.release();
      this.reqBody = undefined;
      this.phase = 'routed';
      this.response = new ResponsePath(
        this.sink,
        this.responseMode,
        undefined,
        this.opts.maxResponseBufferBytes,
        this.settleAfterWrites,
        this.opts.bodyBudget,
      );
    }
    if (!this.response) {
      throw new ProtocolViolation(
        GrpcCode.INVALID_ARGUMENT,
        `${what} before the request was routed`,
      );
    }
    return this.response;
  }

  private onResponseHeaders(msg: ProcessingRequest): void {
    const r = this.responsePath('response_headers');
    if (r.headersSeen) {
      throw new ProtocolViolation(GrpcCode.INVALID_ARGUMENT, 'response_headers received twice');
    }
    r.readServed(msg.metadata_context);
    r.headers(msg.response_headers);
  }

  private onResponseBody(msg: ProcessingRequest): void {
    const r = this.responsePath('response_body');
    r.readServed(msg.metadata_context);
    r.body(msg.response_body);
  }

  private onResponseTrailers(msg: ProcessingRequest): void {
    const r = this.responsePath('response_trailers');
    r.readServed(msg.metadata_context);
    r.trailers();
  }

  // --- endings ---

  /** `reject` for an error raised here rather than by the router (which reports its own). */
  private rejectLocally(err: unknown): void {
    this.opts.onLocalReject?.(classifyError(err).category);
    this.reject(err);
  }

  /** Answers the request with an error (ImmediateResponse) and ends the stream. */
  private reject(err: unknown): void {
    const answer = classifyError(err);
    const fields = { requestId: this.requestId, status: answer.status, err: answer.text };
    // Every answer kv-epp gives instead of the worker's leaves a line naming the
    // request (GAIE logs them all at error); only its own faults are errors here.
    if (answer.internal) this.opts.logger.error(fields, 'request failed');
    else this.opts.logger.info(fields, 'request rejected');
    this.sink.send({ immediate_response: immediateResponse(answer, this.opts) });
    this.markClosed();
    this.sink.end();
    this.settle();
  }

  private violation(err: unknown): void {
    if (this.closed) return;
    const code = err instanceof ProtocolViolation ? err.grpcCode : GrpcCode.INTERNAL;
    const message = err instanceof Error ? err.message : String(err);
    const fields = { requestId: this.requestId || undefined, grpcCode: code, err: message };
    if (err instanceof ProtocolViolation) this.opts.logger.warn(fields, 'ext_proc stream rejected');
    else this.opts.logger.error(fields, 'ext_proc stream failed');
    this.markClosed('stream_failed');
    this.sink.fail(code, message);
    this.settle();
  }

  private finish(): void {
    // A half-close while the request body is still open leaves nothing to
    // route (the client sent no end_of_stream): say so rather than end OK with
    // no answer, which a one-shot client would read as success. Not logged:
    // Envoy half-closes this way when its downstream aborts an upload.
    if (this.phase === 'body') {
      this.markClosed();
      this.sink.fail(
        GrpcCode.INVALID_ARGUMENT,
        'the client half-closed before the request body ended (no end_of_stream)',
      );
      this.settle();
      return;
    }
    this.closed = true;
    this.sink.end();
    this.settle();
  }

  /**
   * The response ended: settle once the answer that ended it has been
   * written. The transport flushes a task's writes from a microtask queued at
   * its first write, which precedes this one, so the router's and the
   * metrics' bookkeeping (and reading the usage of a held JSON body) no longer
   * delays the client's response. The stream ending in between settles at once.
   */
  private readonly settleAfterWrites = (): void => {
    queueMicrotask(() => this.settle());
  };

  /** Runs router.complete once, if a decision was made. */
  private settle(): void {
    if (!this.decision) {
      // No decision to complete, but a response path (response-only stream,
      // a local reply) may hold a body: its budget share goes back.
      if (this.response && !this.response.done) this.response.finish();
      return;
    }
    if (this.completed) return;
    this.completed = true;
    const r = this.response;
    const responseComplete = r?.done === true;
    // Usage seen so far counts even if the response never ended.
    if (r && !r.done) r.finish();
    const complete = this.opts.router.complete;
    if (!complete) return;
    try {
      complete.call(this.opts.router, this.decision, {
        requestId: this.requestId,
        servedEndpoint: r?.served,
        status: r?.status,
        promptTokens: r?.usage?.promptTokens,
        completionTokens: r?.usage?.completionTokens,
        promptCachedTokens: r?.usage?.cachedTokens,
        responseBytes: r?.bytes,
        responseComplete,
        gatewayOverflow: r?.gatewayOverflow === true ? true : undefined,
      });
    } catch (err) {
      this.opts.logger.error(
        { requestId: this.requestId, err: err instanceof Error ? err.message : String(err) },
        'router.complete threw',
      );
    }
  }
}

/** Loggers (one per server) already told that the gateway sends no request bodies. */
const warnedNoBody = new WeakSet<Logger>();

/** `bytes` parse as one JSON document (BUFFERED_PARTIAL without a content-length; rare). */
function isWholeJson(bytes: Uint8Array): boolean {
  try {
    JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
    return true;
  } catch {
    return false;
  }
}
