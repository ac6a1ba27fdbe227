/**
 * The `Process` hot path straight on Node's HTTP/2 server, without grpc-js's
 * per-call machinery (interceptor chain, metadata objects, object-mode Node
 * streams, a later tick per write). Envoy opens one bidi stream per HTTP
 * request, so per-stream cost is what limits a gateway's request rate.
 *
 * Contract:
 * - `installProcessFastPath` takes over the http2 servers grpc-js bound for a
 *   `Server`: a stream for `PROCESS_PATH` with `content-type: application/grpc…`
 *   and no message compression (`grpc-encoding` absent or `identity`, which is
 *   what Envoy sends) is served here; every other stream (health, reflection,
 *   compressed calls, unknown paths) goes to grpc-js's own handler unchanged.
 * - Wire behaviour matches grpc-js's for the same call: response headers
 *   (`:status 200`, `content-type: application/grpc+proto`) before the first
 *   message, trailers `grpc-status`/`grpc-message` (percent-encoded as grpc-js
 *   does), trailers-only on an error before any message, INTERNAL for a
 *   message that cannot be decoded or carries the compressed flag,
 *   RESOURCE_EXHAUSTED for one above the receive limit, DEADLINE_EXCEEDED when
 *   a `grpc-timeout` runs out. The codec is the caller's (grpc-server.ts uses
 *   codec.ts, which decodes to exactly what grpc-js would hand the handler).
 * - Failure modes: a peer reset, a lost connection or a protocol error ends
 *   this stream only (`onCancel` on the handler, never a throw out of an
 *   event); stream errors are always listened for, so none becomes an
 *   uncaught exception.
 * Uses private grpc-js state (`http2Servers`, as http2-tuning.ts does); when it
 * is missing `installProcessFastPath` returns false and grpc-js serves every
 * call as before.
 */
import {
  constants,
  type Http2Server,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
  type ServerHttp2Stream,
} from 'node:http2';
import type { Server } from '@grpc/grpc-js';

export const PROCESS_PATH = '/envoy.service.ext_proc.v3.ExternalProcessor/Process';

/** The handler side of one stream (ExtProcStream's transport events). */
export interface FastPathCall<Req> {
  onMessage(msg: Req): void;
  onHalfClose(): void;
  onCancel(): void;
}

/** Where a handler answers; same shape as ext-proc/sink.ts's StreamSink. */
export interface FastPathSink<Res> {
  send(msg: Res): void;
  end(): void;
  fail(code: number, message: string): void;
}

export interface FastPathOptions<Req, Res> {
  /** Decodes one request message (may keep views of `bytes`). */
  deserialize(bytes: Buffer): Req;
  /**
   * The whole gRPC frame of a response (the 5-byte prefix, uncompressed, and
   * the message), or its parts in order (written corked, as one writev).
   */
  frame(msg: Res): Buffer | readonly Buffer[];
  /** Largest message accepted (bytes after the 5-byte prefix); larger → RESOURCE_EXHAUSTED. */
  maxReceiveBytes: number;
  /** Starts the handler for a new stream. */
  open(sink: FastPathSink<Res>): FastPathCall<Req>;
}

const Status = { OK: 0, DEADLINE_EXCEEDED: 4, RESOURCE_EXHAUSTED: 8, INTERNAL: 13 } as const;
const PREFIX = 5;
const RESPONSE_HEADERS: OutgoingHttpHeaders = {
  [constants.HTTP2_HEADER_STATUS]: 200,
  [constants.HTTP2_HEADER_CONTENT_TYPE]: 'application/grpc+proto',
  'grpc-accept-encoding': 'identity',
  'grpc-encoding': 'identity',
};
const OK_TRAILERS: OutgoingHttpHeaders = { 'grpc-status': '0', 'grpc-message': '' };
const TIMEOUT_UNIT_MS: Record<string, number> = {
  H: 3_600_000,
  M: 60_000,
  S: 1000,
  m: 1,
  u: 0.001,
  n: 0.000_001,
};
const TIMEOUT_RE = /^(\d{1,8})\s*([HMSmun])$/;

interface GrpcServerInternals {
  http2Servers?: Map<Http2Server, unknown>;
}

type StreamListener = (
  stream: ServerHttp2Stream,
  headers: IncomingHttpHeaders,
  flags: number,
) => void;

/** True when grpc-js would accept the stream and it needs no decompression. */
function servable(headers: IncomingHttpHeaders): boolean {
  if (headers[constants.HTTP2_HEADER_PATH] !== PROCESS_PATH) return false;
  const type = headers[constants.HTTP2_HEADER_CONTENT_TYPE];
  if (typeof type !== 'string' || !type.startsWith('application/grpc')) return false;
  const encoding = headers['grpc-encoding'];
  return encoding === undefined || encoding === 'identity';
}

/**
 * Routes `Process` streams of every http2 server `server` has bound to
 * `opts`; must run after binding. False (nothing changed) when grpc-js's
 * internals are not there.
 */
export function installProcessFastPath<Req, Res>(
  server: Server,
  opts: FastPathOptions<Req, Res>,
): boolean {
  const servers = (server as unknown as GrpcServerInternals).http2Servers;
  if (!(servers instanceof Map) || servers.size === 0) return false;
  for (const h2 of servers.keys()) {
    const grpcJs = h2.listeners('stream') as StreamListener[];
    if (grpcJs.length === 0) return false;
    h2.removeAllListeners('stream');
    h2.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, flags: number) => {
      if (servable(headers)) {
        serveStream(stream, headers, opts);
        return;
      }
      for (const l of grpcJs) l.call(h2, stream, headers, flags);
    });
  }
  return true;
}

/** A stream error is reported by 'close'; without a listener it would be thrown. */
function ignoreError(): void {}

let savedStackTraceLimit: number | undefined;

/**
 * Envoy ends every ext_proc stream with RST_STREAM(INTERNAL_ERROR) while our
 * side is still open. Node then builds an ERR_HTTP2_STREAM_ERROR and formats
 * its stack (~6 % of the main thread at a few thousand requests/s) for an
 * error nobody reads: the stream is over and 'close' reports it. 'aborted' is
 * emitted synchronously just before that error is made, so stack capture is
 * switched off until the current task's microtasks run. Nothing but Node's
 * stream teardown runs in that window.
 */
function muteNextStreamError(): void {
  if (savedStackTraceLimit !== undefined) return;
  savedStackTraceLimit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  queueMicrotask(() => {
    Error.stackTraceLimit = savedStackTraceLimit as number;
    savedStackTraceLimit = undefined;
  });
}

/** grpc-js's encoding of `grpc-message` (its clients decode it with decodeURI). */
function grpcMessage(text: string): string {
  return encodeURI(text);
}

function serveStream<Req, Res>(
  stream: ServerHttp2Stream,
  headers: IncomingHttpHeaders,
  opts: FastPathOptions<Req, Res>,
): void {
  let headersSent = false;
  /** False once we ended the stream or it closed: nothing more is sent. */
  let open = true;
  let trailers = OK_TRAILERS;
  let deadline: NodeJS.Timeout | undefined;

  // Without a listener a stream error would be thrown; 'close' follows and reports it.
  stream.on('error', ignoreError);
  stream.on('aborted', muteNextStreamError);
  const onWantTrailers = (): void => {
    try {
      stream.sendTrailers(trailers);
    } catch {
      // Closed under us (peer reset): nothing to tell it.
    }
  };
  stream.on('wantTrailers', onWantTrailers);

  const sendHeaders = (): void => {
    if (headersSent) return;
    headersSent = true;
    stream.respond(RESPONSE_HEADERS, { waitForTrailers: true });
  };

  const finish = (code: number, message: string): void => {
    if (!open) return;
    open = false;
    if (deadline) clearTimeout(deadline);
    if (stream.destroyed || stream.closed) return;
    if (!headersSent) {
      headersSent = true;
      // Trailers-only response.
      stream.respond(
        {
          ...RESPONSE_HEADERS,
          'grpc-status': String(code),
          'grpc-message': grpcMessage(message),
        },
        { endStream: true },
      );
      return;
    }
    trailers =
      code === Status.OK
        ? OK_TRAILERS
        : { 'grpc-status': String(code), 'grpc-message': grpcMessage(message) };
    stream.end();
  };

  const sink: FastPathSink<Res> = {
    send(msg) {
      if (!open || stream.destroyed) return;
      sendHeaders();
      const f = opts.frame(msg);
      if (Buffer.isBuffer(f)) stream.write(f);
      else {
        stream.cork();
        for (const part of f) stream.write(part);
        stream.uncork();
      }
    },
    end() {
      finish(Status.OK, '');
    },
    fail(code, message) {
      finish(code, message);
    },
  };

  const call = opts.open(sink);
  /**
   * Fails the stream for a reason of ours and tells the handler it is over.
   * Later messages from the client are dropped; a gRPC client ends its side
   * when it gets the status (a reset here could overtake the trailers).
   */
  const abort = (code: number, message: string): void => {
    if (!open) return;
    finish(code, message);
    call.onCancel();
  };

  const timeout = headers['grpc-timeout'];
  if (typeof timeout === 'string') {
    const m = TIMEOUT_RE.exec(timeout.trim());
    if (!m) {
      abort(Status.INTERNAL, `Invalid grpc-timeout value "${timeout}"`);
      // Answered trailers-only: no trailers wanted, and nothing of the call stays on the stream.
      stream.off('wantTrailers', onWantTrailers);
      return;
    }
    const ms = Number(m[1]) * (TIMEOUT_UNIT_MS[m[2] as string] as number);
    deadline = setTimeout(() => abort(Status.DEADLINE_EXCEEDED, 'Deadline exceeded'), ms);
    deadline.unref();
  }

  // --- message deframing: [flag u8][length u32 BE][message] ... ---
  const prefix = Buffer.allocUnsafe(PREFIX);
  let prefixHave = 0;
  /** The message being assembled across DATA chunks (its full length allocated up front). */
  let partial: Buffer | undefined;
  let partialHave = 0;

  const deliver = (bytes: Buffer): boolean => {
    let msg: Req;
    try {
      msg = opts.deserialize(bytes);
    } catch {
      abort(Status.INTERNAL, 'Error deserializing request');
      return false;
    }
    call.onMessage(msg);
    return open;
  };

  /** Validates a complete prefix; the message length, or -1 after failing the stream. */
  const readPrefix = (p: Buffer, at: number): number => {
    if (p[at] !== 0) {
      abort(Status.INTERNAL, 'Received compressed message but "grpc-encoding" header was identity');
      return -1;
    }
    const len = p.readUInt32BE(at + 1);
    if (len > opts.maxReceiveBytes) {
      abort(
        Status.RESOURCE_EXHAUSTED,
        `Received message larger than max (${len} vs. ${opts.maxReceiveBytes})`,
      );
      return -1;
    }
    return len;
  };

  const onData = (chunk: Buffer): void => {
    let at = 0;
    while (open && at < chunk.length) {
      if (partial) {
        const n = Math.min(partial.length - partialHave, chunk.length - at);
        chunk.copy(partial, partialHave, at, at + n);
        partialHave += n;
        at += n;
        if (partialHave === partial.length) {
          const whole = partial;
          partial = undefined;
          if (!deliver(whole)) return;
        }
        continue;
      }
      let len: number;
      if (prefixHave === 0 && chunk.length - at >= PREFIX) {
        len = readPrefix(chunk, at);
        at += PREFIX;
      } else {
        const n = Math.min(PREFIX - prefixHave, chunk.length - at);
        chunk.copy(prefix, prefixHave, at, at + n);
        prefixHave += n;
        at += n;
        if (prefixHave < PREFIX) return;
        prefixHave = 0;
        len = readPrefix(prefix, 0);
      }
      if (len < 0) return;
      if (chunk.length - at >= len) {
        // The whole message is in this chunk: decode in place, no copy.
        const view = chunk.subarray(at, at + len);
        at += len;
        if (!deliver(view)) return;
      } else {
        partial = Buffer.allocUnsafe(len);
        partialHave = 0;
      }
    }
  };

  const onEnd = (): void => {
    if (!open) return;
    // A peer reset also ends the readable side (after 'aborted'): that is a cancel, not a half-close.
    if (stream.aborted) {
      open = false;
      if (deadline) clearTimeout(deadline);
      call.onCancel();
      return;
    }
    if (partial || prefixHave > 0) {
      abort(Status.INTERNAL, 'Stream ended in the middle of a message');
      return;
    }
    call.onHalfClose();
  };

  const onClose = (): void => {
    if (deadline) clearTimeout(deadline);
    // Node keeps a closed stream's object alive for a while (past the next
    // young-generation GCs): our listeners would keep this call's whole state
    // (handler, decision, bodies) alive with it.
    stream.off('wantTrailers', onWantTrailers);
    stream.off('data', onData);
    stream.off('end', onEnd);
    stream.off('close', onClose);
    if (!open) return;
    open = false;
    call.onCancel();
  };
  stream.on('data', onData);
  stream.on('end', onEnd);
  stream.on('close', onClose);
}
