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
import {
  type FastPathOptions,
  GrpcCall,
  GrpcStatus,
  type GrpcWire,
  RESPONSE_FIELDS,
  statusFields,
} from './grpc-call.js';

export const PROCESS_PATH = '/envoy.service.ext_proc.v3.ExternalProcessor/Process';

export type { FastPathCall, FastPathOptions, FastPathSink } from './grpc-call.js';

const RESPONSE_HEADERS: OutgoingHttpHeaders = Object.fromEntries(RESPONSE_FIELDS);
const trailersOf = (code: number, message: string): OutgoingHttpHeaders =>
  Object.fromEntries(statusFields(code, message));
const OK_TRAILERS = trailersOf(GrpcStatus.OK, '');
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

function serveStream<Req, Res>(
  stream: ServerHttp2Stream,
  headers: IncomingHttpHeaders,
  opts: FastPathOptions<Req, Res>,
): void {
  let trailers = OK_TRAILERS;
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

  const wire: GrpcWire = {
    sendHeaders: () => stream.respond(RESPONSE_HEADERS, { waitForTrailers: true }),
    sendTrailersOnly: (code, message) => {
      // Answered trailers-only: no trailers wanted.
      stream.off('wantTrailers', onWantTrailers);
      stream.respond({ ...RESPONSE_HEADERS, ...trailersOf(code, message) }, { endStream: true });
    },
    write: (f) => {
      if (Buffer.isBuffer(f)) {
        stream.write(f);
        return;
      }
      stream.cork();
      for (const part of f) stream.write(part);
      stream.uncork();
    },
    sendTrailers: (code, message) => {
      trailers = code === GrpcStatus.OK ? OK_TRAILERS : trailersOf(code, message);
      stream.end();
    },
    get gone() {
      return stream.destroyed || stream.closed;
    },
  };
  const timeout = headers['grpc-timeout'];
  const call = new GrpcCall(wire, opts, typeof timeout === 'string' ? timeout : undefined);
  if (!call.active) return;

  const onData = (chunk: Buffer): void => call.onData(chunk);
  const onEnd = (): void => {
    // A peer reset also ends the readable side (after 'aborted'): that is a cancel, not a half-close.
    if (stream.aborted) call.onCancel();
    else call.onEnd();
  };
  const onClose = (): void => {
    // Node keeps a closed stream's object alive for a while (past the next
    // young-generation GCs): our listeners would keep this call's whole state
    // (handler, decision, bodies) alive with it.
    stream.off('wantTrailers', onWantTrailers);
    stream.off('data', onData);
    stream.off('end', onEnd);
    stream.off('close', onClose);
    call.onCancel();
  };
  stream.on('data', onData);
  stream.on('end', onEnd);
  stream.on('close', onClose);
}
