/**
 * The ext_proc port served on kv-epp's own HTTP/2 framing (../h2/), without
 * Node's http2 sessions: grpc-js still binds the port, owns TLS (ALPN h2,
 * certificate reloads) and start/stop, but every accepted connection is
 * handed to an H2Connection instead of a Node Http2Session.
 *
 * Contract:
 * - Serves `Process` (the caller's FastPathOptions, over GrpcCall exactly as
 *   h2-transport.ts does; not on the health port, `installRawHealthTransport`)
 *   and grpc.health.v1.Health `Check`/`Watch`/`List`
 *   with health.ts's statuses; any other method is UNIMPLEMENTED with
 *   grpc-js's message; a non-gRPC content-type gets HTTP 415; a compressed
 *   call (`grpc-encoding` other than identity) is UNIMPLEMENTED (gateways do
 *   not compress ext_proc).
 * - `drain` sends GOAWAY on every connection (open streams finish, then the
 *   socket ends); `destroy` cuts them. grpc-js's own shutdown waits for these
 *   sockets like any other (the net.Server counts them).
 * Uses private grpc-js state (`http2Servers`, as http2-tuning.ts does):
 * `installRawTransport` returns undefined when it is missing and nothing is changed.
 */
import type { Server as NetServer, Socket } from 'node:net';
import { type TLSSocket, Server as TlsServer } from 'node:tls';
import type { Server } from '@grpc/grpc-js';
import { H2Connection, type H2Stream, type H2StreamEvents } from '../h2/connection.js';
import { encodeHeaders } from '../h2/hpack.js';
import { readIntoOwnBuffer } from '../h2/socket-reads.js';
import {
  guardReady,
  LIVENESS_SERVICE,
  READINESS_SERVICES,
  servingStatus,
  type WatchEnders,
  watchServing,
} from '../health.js';
import { DEFAULT_PREFACE_TIMEOUT_MS } from '../http2-tuning.js';
import {
  type FastPathOptions,
  GrpcCall,
  GrpcStatus,
  type GrpcWire,
  RESPONSE_FIELDS,
  statusFields,
} from './grpc-call.js';
import { PROCESS_PATH } from './h2-transport.js';

export interface RawTransportOptions<Req, Res> extends FastPathOptions<Req, Res> {
  /** Readiness for the health services. */
  isReady: () => boolean;
  /** How often open Watch calls re-check readiness (ms); default 1000. */
  watchIntervalMs?: number | undefined;
  /** Unknown health services answer as readiness (health.ts; the health port). */
  unknownHealthAsReadiness?: boolean | undefined;
  /** Open health Watch calls register how to end them here (shutdown: health.ts `WatchEnders`). */
  watches?: WatchEnders | undefined;
  streamWindowBytes: number;
  connectionWindowBytes: number;
  /** A connection ended for a protocol error of the peer's (logging). */
  onProtocolError?: ((code: number, reason: string) => void) | undefined;
  /**
   * How long a new connection may take to send the HTTP/2 preface once
   * connected (default 10 s; a silent socket holds a descriptor). The TLS
   * handshake's deadline is the server's (limitSilentConnections).
   */
  prefaceTimeoutMs?: number | undefined;
}

export interface RawTransport {
  /** Open connections. */
  readonly connections: number;
  /** Connections accepted so far whose reads go into a reused buffer (h2/socket-reads.ts). */
  readonly ownReadBufferConnections: number;
  drain(): void;
  destroy(): void;
}

interface GrpcServerInternals {
  http2Servers?: Map<NetServer, unknown>;
}

const RESPONSE_BLOCK = encodeHeaders(RESPONSE_FIELDS);
const OK_TRAILERS_BLOCK = encodeHeaders(statusFields(GrpcStatus.OK, ''));
const UNSUPPORTED_MEDIA_TYPE = encodeHeaders([[':status', '415']]);

const HEALTH = '/grpc.health.v1.Health/';

/**
 * The GrpcWire of one of our HTTP/2 streams. A class, not an object literal:
 * a literal with a getter is built through a runtime call on every stream.
 */
class StreamWire implements GrpcWire {
  constructor(private readonly stream: H2Stream) {}
  sendHeaders(): void {
    this.stream.respond(RESPONSE_BLOCK);
  }
  sendTrailersOnly(code: number, message: string): void {
    this.stream.respond(encodeHeaders([...RESPONSE_FIELDS, ...statusFields(code, message)]), true);
  }
  write(frame: Buffer | readonly Buffer[]): void {
    this.stream.write(frame);
  }
  sendTrailers(code: number, message: string): void {
    this.stream.end(
      code === GrpcStatus.OK ? OK_TRAILERS_BLOCK : encodeHeaders(statusFields(code, message)),
    );
  }
  get gone(): boolean {
    return !this.stream.writable;
  }
}

/** A call answered with a status before any message. */
function refuse(stream: H2Stream, code: number, message: string): H2StreamEvents {
  new StreamWire(stream).sendTrailersOnly(code, message);
  return IGNORE;
}

const IGNORE: H2StreamEvents = { onData() {}, onEnd() {}, onReset() {} };

function callEvents<Req, Res>(
  stream: H2Stream,
  opts: FastPathOptions<Req, Res>,
  timeout: string | undefined,
): H2StreamEvents {
  const call = new GrpcCall(new StreamWire(stream), opts, timeout);
  return {
    onData: (chunk) => call.onData(chunk),
    onEnd: () => call.onEnd(),
    onReset: () => call.onCancel(),
  };
}

// --- grpc.health.v1 on this port (hand-coded protobuf: two tiny messages) ----------

/** HealthCheckRequest.service (field 1); other fields skipped. */
export function decodeHealthRequest(b: Buffer): string {
  let at = 0;
  let service = '';
  const varint = (): number => {
    let v = 0;
    let mul = 1;
    for (;;) {
      if (at >= b.length) throw new Error('truncated varint');
      const x = b[at++] as number;
      v += (x & 0x7f) * mul;
      if (!(x & 0x80)) return v;
      mul *= 128;
      if (mul > 2 ** 63) throw new Error('varint too long');
    }
  };
  while (at < b.length) {
    const tag = varint();
    const wt = tag & 7;
    if (wt === 0) varint();
    else if (wt === 1) at += 8;
    else if (wt === 5) at += 4;
    else if (wt === 2) {
      const len = varint();
      if (at + len > b.length) throw new Error('truncated field');
      if (tag >>> 3 === 1) service = b.toString('utf8', at, at + len);
      at += len;
    } else throw new Error(`wire type ${wt}`);
    if (at > b.length) throw new Error('truncated field');
  }
  return service;
}

/** One gRPC frame of HealthCheckResponse{status}. */
function healthFrame(status: number): Buffer {
  // proto3 leaves a zero enum out.
  return status === 0 ? Buffer.from([0, 0, 0, 0, 0]) : Buffer.from([0, 0, 0, 0, 2, 0x08, status]);
}

/** One gRPC frame of HealthListResponse{statuses: map<string, HealthCheckResponse>}. */
function listFrame(isReady: () => boolean): Buffer {
  const parts: Buffer[] = [];
  for (const s of [...READINESS_SERVICES, LIVENESS_SERVICE]) {
    const key = Buffer.from(s, 'utf8');
    const value = Buffer.from([0x08, servingStatus(s, isReady) as number]);
    const entry = Buffer.concat([
      Buffer.from([0x0a, key.length]),
      key,
      Buffer.from([0x12, value.length]),
      value,
    ]);
    parts.push(Buffer.from([0x0a, entry.length]), entry);
  }
  const msg = Buffer.concat(parts);
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(msg.length, 1);
  return Buffer.concat([prefix, msg]);
}

function healthOptions<Res>(
  maxReceiveBytes: number,
  frame: (msg: Res) => Buffer,
  open: FastPathOptions<string, Res>['open'],
): FastPathOptions<string, Res> {
  return { deserialize: decodeHealthRequest, frame, maxReceiveBytes, open };
}

interface HealthPort {
  isReady: () => boolean;
  watchIntervalMs: number;
  unknownAsReadiness: boolean;
  watches: WatchEnders | undefined;
}

function healthEvents(
  stream: H2Stream,
  method: string,
  timeout: string | undefined,
  port: HealthPort,
): H2StreamEvents {
  const { watchIntervalMs, unknownAsReadiness } = port;
  const ready = guardReady(port.isReady);
  const limit = 64 * 1024;
  if (method === 'Check') {
    return callEvents(
      stream,
      healthOptions(limit, healthFrame, (sink) => ({
        onMessage(service) {
          const status = servingStatus(service, ready, unknownAsReadiness);
          if (status === undefined) {
            sink.fail(GrpcStatus.NOT_FOUND, `unknown service "${service}"`);
            return;
          }
          sink.send(status);
          sink.end();
        },
        onHalfClose() {
          sink.fail(GrpcStatus.INTERNAL, 'No message received');
        },
        onCancel() {},
      })),
      timeout,
    );
  }
  if (method === 'List') {
    return callEvents(
      stream,
      healthOptions(
        limit,
        () => listFrame(ready),
        (sink) => ({
          onMessage() {
            sink.send(0);
            sink.end();
          },
          onHalfClose() {
            sink.fail(GrpcStatus.INTERNAL, 'No message received');
          },
          onCancel() {},
        }),
      ),
      timeout,
    );
  }
  // Watch: the current status at once, then again whenever it changes, until the client leaves.
  let watching: { stop(): void; refresh(): void } | undefined;
  let end: (() => void) | undefined;
  return callEvents(
    stream,
    healthOptions(limit, healthFrame, (sink) => ({
      onMessage(service) {
        if (watching) return;
        const w = watchServing(
          service,
          ready,
          watchIntervalMs,
          (status) => sink.send(status),
          unknownAsReadiness,
        );
        watching = w;
        const ender = (): void => {
          w.refresh();
          w.stop();
          port.watches?.delete(ender);
          sink.fail(GrpcStatus.UNAVAILABLE, 'server shutting down');
        };
        end = ender;
        port.watches?.add(ender);
      },
      onHalfClose() {},
      onCancel() {
        watching?.stop();
        if (end) port.watches?.delete(end);
      },
    })),
    timeout,
  );
}

// --- installing -------------------------------------------------------------------------------

/** The request headers the router of streams needs (last value wins). */
function pick(headers: string[]): {
  path?: string;
  contentType?: string;
  encoding?: string;
  timeout?: string;
} {
  const out: { path?: string; contentType?: string; encoding?: string; timeout?: string } = {};
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i] as string;
    const value = headers[i + 1] as string;
    if (name === ':path') out.path = value;
    else if (name === 'content-type') out.contentType = value;
    else if (name === 'grpc-encoding') out.encoding = value;
    else if (name === 'grpc-timeout') out.timeout = value;
  }
  return out;
}

/** The options of a port that serves only grpc.health.v1 (no `Process`). */
export type RawHealthTransportOptions = Omit<
  RawTransportOptions<unknown, unknown>,
  keyof FastPathOptions<unknown, unknown>
>;

/** The ext_proc port: `Process` and grpc.health.v1. */
export function installRawTransport<Req, Res>(
  server: Server,
  opts: RawTransportOptions<Req, Res>,
): RawTransport | undefined {
  return install(server, opts, opts);
}

/**
 * The health port: grpc.health.v1 only, every other method (`Process` too)
 * UNIMPLEMENTED as grpc-js answers a method it does not serve.
 */
export function installRawHealthTransport(
  server: Server,
  opts: RawHealthTransportOptions,
): RawTransport | undefined {
  return install(server, opts, undefined);
}

function install<Req, Res>(
  server: Server,
  opts: RawHealthTransportOptions,
  process: FastPathOptions<Req, Res> | undefined,
): RawTransport | undefined {
  const servers = (server as unknown as GrpcServerInternals).http2Servers;
  if (!(servers instanceof Map) || servers.size === 0) return undefined;
  const connections = new Set<H2Connection>();
  let ownBufferConnections = 0;
  const healthPort: HealthPort = {
    isReady: opts.isReady,
    watchIntervalMs: opts.watchIntervalMs ?? 1000,
    unknownAsReadiness: opts.unknownHealthAsReadiness === true,
    watches: opts.watches,
  };

  const open = (stream: H2Stream, headers: string[]): H2StreamEvents => {
    const h = pick(headers);
    if (h.contentType === undefined || !h.contentType.startsWith('application/grpc')) {
      stream.respond(UNSUPPORTED_MEDIA_TYPE, true);
      return IGNORE;
    }
    if (h.encoding !== undefined && h.encoding !== 'identity') {
      return refuse(stream, GrpcStatus.UNIMPLEMENTED, `Unsupported encoding "${h.encoding}"`);
    }
    if (process !== undefined && h.path === PROCESS_PATH) {
      return callEvents(stream, process, h.timeout);
    }
    if (h.path?.startsWith(HEALTH)) {
      const method = h.path.slice(HEALTH.length);
      if (method === 'Check' || method === 'Watch' || method === 'List') {
        return healthEvents(stream, method, h.timeout, healthPort);
      }
    }
    return refuse(
      stream,
      GrpcStatus.UNIMPLEMENTED,
      `The server does not implement the method ${h.path ?? ''}`,
    );
  };

  const serve = (socket: Socket | TLSSocket): void => {
    socket.setNoDelay(true);
    const conn = new H2Connection(socket, {
      open,
      streamWindowBytes: opts.streamWindowBytes,
      connectionWindowBytes: opts.connectionWindowBytes,
      onClose: () => connections.delete(conn),
      onProtocolError: opts.onProtocolError,
      prefaceTimeoutMs: opts.prefaceTimeoutMs ?? DEFAULT_PREFACE_TIMEOUT_MS,
      readsFrom: (deliver) => readIntoOwnBuffer(socket, deliver),
    });
    connections.add(conn);
    if (conn.readsIntoOwnBuffer) ownBufferConnections++;
  };

  for (const h2 of servers.keys()) {
    if (h2 instanceof TlsServer) {
      // Node's http2 session handler is the 'secureConnection' listener; the
      // TLS handshake itself ('connection') stays as it is (its deadline is
      // set for every transport by http2-tuning.ts limitSilentConnections).
      h2.removeAllListeners('secureConnection');
      h2.on('secureConnection', (socket: TLSSocket) => {
        socket.on('error', () => {});
        if (socket.alpnProtocol !== 'h2') {
          socket.destroy();
          return;
        }
        serve(socket);
      });
    } else {
      h2.removeAllListeners('connection');
      h2.on('connection', (socket: Socket) => {
        socket.on('error', () => {});
        serve(socket);
      });
    }
  }
  return {
    get connections() {
      return connections.size;
    },
    get ownReadBufferConnections() {
      return ownBufferConnections;
    },
    drain() {
      for (const c of connections) c.goaway();
    },
    destroy() {
      for (const c of [...connections]) c.destroy();
    },
  };
}
