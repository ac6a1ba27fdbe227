/**
 * HTTP/2 settings grpc-js does not expose, for a server that one gateway
 * connection multiplexes thousands of streams over:
 *
 * - Stream-reset allowance. Envoy resets every ext_proc stream when its HTTP
 *   request ends. Node's HTTP/2 server allows 1 000 incoming resets refilled
 *   at 33/s (rapid-reset protection, `streamResetBurst`/`streamResetRate`)
 *   and then sends GOAWAY, failing every request in flight on that
 *   connection (500s at the client past ~33 req/s). The allowance is raised
 *   to a rate well above any one gateway's request rate.
 * - Flow-control windows. Node's default 64 KiB stream and connection windows
 *   make large request bodies on one connection queue behind each other's
 *   WINDOW_UPDATEs; the windows are raised so a gateway can push many bodies
 *   at once.
 *
 * - Silent connections. A connection that has not finished its TLS handshake
 *   and sent the HTTP/2 preface (its SETTINGS) within `DEFAULT_PREFACE_TIMEOUT_MS`
 *   is closed (`limitSilentConnections`): Node waits 120 s for a handshake
 *   and forever for a plaintext preface, and each such socket holds a descriptor.
 *
 * grpc-js builds its http2 servers from the private `commonServerOptions`
 * and keeps them in the private `http2Servers` map (grpc-js 1.14, pinned by
 * the lock file). `tuneHttp2` must run after `new Server()` and before
 * `bindAsync`; `tuneSessions` after binding. When those internals are missing
 * (a grpc-js upgrade moved them) nothing is changed and `false` is returned,
 * so the caller can log it; test/unit/server/http2-tuning.test.ts fails in
 * that case.
 */
import type { Http2Server, ServerHttp2Session } from 'node:http2';
import { Server as TlsServer } from 'node:tls';
import type { Server } from '@grpc/grpc-js';

export interface Http2Tuning {
  /** Incoming RST_STREAMs allowed in a burst. */
  streamResetBurst: number;
  /** Incoming RST_STREAMs allowed per second, sustained. */
  streamResetRate: number;
  /** Per-stream receive window in bytes. */
  streamWindowBytes: number;
  /** Per-connection receive window in bytes. */
  connectionWindowBytes: number;
}

export const DEFAULT_HTTP2_TUNING: Http2Tuning = {
  streamResetBurst: 100_000,
  streamResetRate: 50_000,
  streamWindowBytes: 4 * 1024 * 1024,
  connectionWindowBytes: 64 * 1024 * 1024,
};

interface GrpcServerInternals {
  commonServerOptions?: {
    streamResetBurst?: number;
    streamResetRate?: number;
    settings?: { initialWindowSize?: number; [k: string]: unknown };
  };
  http2Servers?: Map<Http2Server, unknown>;
}

/** Server options for the http2 servers grpc-js will create; false when not possible. */
export function tuneHttp2(server: Server, t: Http2Tuning = DEFAULT_HTTP2_TUNING): boolean {
  const opts = (server as unknown as GrpcServerInternals).commonServerOptions;
  if (typeof opts !== 'object' || opts === null) return false;
  opts.streamResetBurst = t.streamResetBurst;
  opts.streamResetRate = t.streamResetRate;
  opts.settings = { ...opts.settings, initialWindowSize: t.streamWindowBytes };
  return true;
}

/** Raises the connection window of every session the bound servers accept; false when not possible. */
export function tuneSessions(server: Server, t: Http2Tuning = DEFAULT_HTTP2_TUNING): boolean {
  const servers = (server as unknown as GrpcServerInternals).http2Servers;
  if (!(servers instanceof Map) || servers.size === 0) return false;
  for (const h2 of servers.keys()) {
    h2.on('session', (session: ServerHttp2Session) => {
      const raise = () => {
        try {
          session.setLocalWindowSize(t.connectionWindowBytes);
        } catch {
          // The session closed before it was set up: nothing to tune.
        }
      };
      if (session.connecting) session.once('connect', raise);
      else raise();
    });
  }
  return true;
}

/** How long a new connection may take to handshake (TLS) and send its HTTP/2 preface. */
export const DEFAULT_PREFACE_TIMEOUT_MS = 10_000;

/**
 * Sets a TLS server's handshake timeout, which Node reads per connection from
 * an internal field (the `handshakeTimeout` option, not settable once the
 * server exists). Where that field is not found, Node's default stays.
 */
export function setHandshakeTimeout(server: TlsServer, ms: number): void {
  const field = Object.getOwnPropertySymbols(server).find(
    (k) => k.description === 'handshake-timeout',
  );
  if (field) (server as unknown as Record<symbol, number>)[field] = ms;
}

/**
 * Closes connections to the bound servers that have not handshaken (TLS) and
 * sent their HTTP/2 SETTINGS within `ms`, for sessions served by node:http2
 * (the `direct` and `grpc-js` transports; raw-h2 keeps its own preface timer).
 * False when grpc-js's servers are not found.
 */
export function limitSilentConnections(server: Server, ms = DEFAULT_PREFACE_TIMEOUT_MS): boolean {
  const servers = (server as unknown as GrpcServerInternals).http2Servers;
  if (!(servers instanceof Map) || servers.size === 0) return false;
  for (const h2 of servers.keys()) {
    if (h2 instanceof TlsServer) setHandshakeTimeout(h2, ms);
    h2.on('session', (session: ServerHttp2Session) => {
      const deadline = setTimeout(() => session.destroy(), ms);
      deadline.unref();
      const spoke = () => clearTimeout(deadline);
      session.once('remoteSettings', spoke);
      session.once('close', spoke);
    });
  }
  return true;
}
