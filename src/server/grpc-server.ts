/**
 * The gRPC servers: ext_proc (`envoy.service.ext_proc.v3.ExternalProcessor`,
 * plus grpc.health.v1 so Envoy's cluster health check on the same port works)
 * and the plaintext health-only server for the separate health port (9003).
 * One ExtProcStream per `Process` call; a bad stream ends with a gRPC status,
 * never the process.
 */
import {
  type ChannelOptions,
  Server,
  type ServerCredentials,
  type ServerDuplexStream,
  setLogger,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { LogBudget } from '../log/log-budget.js';
import type { Logger } from '../log/logger.js';
import { CertReloader } from './cert-reloader.js';
import { BodyBudget, bodyBudgetBytes } from './ext-proc/body-budget.js';
import { decodeRequest, encodeResponseFrameParts } from './ext-proc/codec.js';
import { installProcessFastPath } from './ext-proc/h2-transport.js';
import type { ProcessingRequest, ProcessingResponse } from './ext-proc/messages.js';
import { loadServices } from './ext-proc/proto.js';
import {
  installRawHealthTransport,
  installRawTransport,
  type RawHealthTransportOptions,
  type RawTransport,
} from './ext-proc/raw-transport.js';
import { ExtProcStream, type ExtProcStreamOptions } from './ext-proc/stream.js';
import { healthService, type WatchEnders } from './health.js';
import {
  DEFAULT_HTTP2_TUNING,
  limitSilentConnections,
  tuneHttp2,
  tuneSessions,
} from './http2-tuning.js';
import type { RequestRouter } from './routing-types.js';
import { serverCredentials, type TlsOption } from './tls.js';

/** GAIE's defaults: ext_proc on 9002, health on 9003. */
export const DEFAULT_GRPC_PORT = 9002;
export const DEFAULT_HEALTH_PORT = 9003;
export const DEFAULT_RETRY_AFTER_SECONDS = 1;
export const DEFAULT_MAX_RESPONSE_BUFFER_BYTES = 64 * 1024 * 1024;
/** Slack over a body's bytes for one gRPC message (framing, headers, metadata). */
const MESSAGE_OVERHEAD_BYTES = 1024 * 1024;
const MIN_RECEIVE_BYTES = 4 * 1024 * 1024;

export interface ExtProcServerOptions {
  /** 0 = an ephemeral port (the bound one is returned). */
  port: number;
  /** Default `0.0.0.0`. */
  host?: string | undefined;
  router: RequestRouter;
  /** Certificate + key, `'self-signed'` (generated now), or undefined = plaintext h2c. */
  tls?: TlsOption;
  /** Largest request body accepted (413 beyond). */
  maxBodyBytes: number;
  logger: Logger;
  /** Readiness for the health services; default always ready. */
  isReady?: (() => boolean) | undefined;
  retryAfterSeconds?: number | undefined;
  maxResponseBufferBytes?: number | undefined;
  /**
   * Buffered body bytes across all streams (see BodyBudget); default
   * `bodyBudgetBytes(maxBodyBytes)`.
   */
  bodyBudget?: BodyBudget | undefined;
  /**
   * How long a connection may take for its TLS handshake and then its HTTP/2
   * preface, on every transport (default 10 s; tests shorten it).
   */
  prefaceTimeoutMs?: number | undefined;
  /** See ExtProcStreamOptions.onLocalReject. */
  onLocalReject?: ((category: string) => void) | undefined;
  /**
   * `raw-h2` (default): kv-epp's own HTTP/2 framing serves every stream of
   * the port (raw-transport.ts); `direct`: `Process` streams are served on
   * Node's HTTP/2 server directly (h2-transport.ts), grpc-js serves the rest;
   * `grpc-js`: grpc-js serves all.
   */
  transport?: ExtProcTransport | undefined;
}

export type ExtProcTransport = 'raw-h2' | 'direct' | 'grpc-js';
export const EXT_PROC_TRANSPORTS: readonly ExtProcTransport[] = ['raw-h2', 'direct', 'grpc-js'];

export interface HealthServerOptions {
  port: number;
  host?: string | undefined;
  isReady: () => boolean;
  logger: Logger;
  /** How often open Watch calls re-check readiness (ms); default 1000. */
  watchIntervalMs?: number | undefined;
  /**
   * `raw-h2` (default): kv-epp's own HTTP/2 framing, as on the ext_proc port,
   * a few times cheaper per check on the event loop than node:http2;
   * `grpc-js`: grpc-js's own server (kept for `--ext-proc-transport grpc-js`).
   */
  transport?: 'raw-h2' | 'grpc-js' | undefined;
  /** How long a connection may take to send its HTTP/2 preface (default 10 s; tests shorten it). */
  prefaceTimeoutMs?: number | undefined;
}

export interface RunningServer {
  port: number;
  /** The PEM certificate served, when TLS is on. */
  certificate?: string | undefined;
  /** The HTTP/2 path in force: `raw-h2`, `direct` (node:http2, ext_proc only) or `grpc-js`. */
  transport?: 'raw-h2' | 'direct' | 'grpc-js' | undefined;
  /**
   * raw-h2: connections accepted so far that read into a reused buffer
   * (h2/socket-reads.ts); the others read 'data' events. 0 on other transports.
   */
  readonly ownReadBufferConnections?: number;
  /**
   * Stops accepting (GOAWAY), lets open calls finish for up to `graceMs`
   * (default 5 s), then cuts them; resolves true when some had to be cut.
   */
  close(graceMs?: number): Promise<boolean>;
  /** Open gateway connections (HTTP/2); undefined when they cannot be counted (grpc-js internals changed). */
  readonly connections?: number | undefined;
}

function address(host: string | undefined, port: number): string {
  const h = host ?? '0.0.0.0';
  return `${h.includes(':') && !h.startsWith('[') ? `[${h}]` : h}:${port}`;
}

/**
 * grpc-js logs a failed bind itself ("No address added out of total …") before
 * rejecting; serve reports it in one line of its own naming the flag, so that
 * line is dropped. Everything else grpc-js logs reaches stderr as grpc-js's
 * own logger writes it (a severity letter, then the message).
 */
let grpcLoggerSet = false;
function quietBindFailures(): void {
  if (grpcLoggerSet) return;
  grpcLoggerSet = true;
  const write =
    (letter: string) =>
    (message?: unknown, ...rest: unknown[]): void => {
      if (typeof message === 'string' && message.startsWith('No address added out of total'))
        return;
      console.error(`${letter} ${String(message)}`, ...rest);
    };
  setLogger({ error: write('E'), info: write('I'), debug: write('D') });
}

function bind(server: Server, addr: string, creds: ServerCredentials): Promise<number> {
  quietBindFailures();
  return new Promise((resolve, reject) => {
    server.bindAsync(addr, creds, (err, port) => (err ? reject(err) : resolve(port)));
  });
}

/**
 * The HTTP/2 sessions grpc-js itself serves (its private `sessions` map: the
 * `direct` and `grpc-js` transports' connections); undefined when that
 * internal is gone (callers then assume a gateway may be connected).
 */
function grpcJsSessions(server: Server): number | undefined {
  const sessions = (server as unknown as { sessions?: unknown }).sessions;
  return sessions instanceof Map ? sessions.size : undefined;
}

function closer(
  server: Server,
  raw: RawTransport | undefined,
  watches: WatchEnders,
): (graceMs?: number) => Promise<boolean> {
  let closing: Promise<boolean> | undefined;
  return (graceMs = 5000) => {
    closing ??= new Promise<boolean>((resolve) => {
      // Health Watch calls never end by themselves: end them, or they hold the drain.
      for (const end of [...watches]) end();
      raw?.drain();
      const timer = setTimeout(() => {
        raw?.destroy();
        server.forceShutdown();
        resolve(true);
      }, graceMs);
      timer.unref();
      server.tryShutdown(() => {
        clearTimeout(timer);
        resolve(false);
      });
    });
    return closing;
  };
}

type ProcessCall = ServerDuplexStream<ProcessingRequest, ProcessingResponse>;

function streamOptions(opts: ExtProcServerOptions): ExtProcStreamOptions {
  return {
    router: opts.router,
    logger: opts.logger,
    maxBodyBytes: opts.maxBodyBytes,
    retryAfterSeconds: opts.retryAfterSeconds ?? DEFAULT_RETRY_AFTER_SECONDS,
    maxResponseBufferBytes: opts.maxResponseBufferBytes ?? DEFAULT_MAX_RESPONSE_BUFFER_BYTES,
    bodyBudget: opts.bodyBudget ?? new BodyBudget(bodyBudgetBytes(opts.maxBodyBytes)),
    onLocalReject: opts.onLocalReject,
  };
}

/** grpc-js's `Process` handler: serves the calls the fast path leaves to grpc-js (or all, with `transport: 'grpc-js'`). */
function processHandler(streamOpts: ExtProcStreamOptions): (call: ProcessCall) => void {
  return (call) => {
    let open = true;
    const stream = new ExtProcStream(
      {
        send: (msg) => {
          if (open) call.write(msg);
        },
        end: () => {
          if (!open) return;
          open = false;
          call.end();
        },
        fail: (code, message) => {
          if (!open) return;
          open = false;
          call.emit('error', { code, details: message });
        },
      },
      streamOpts,
    );
    call.on('data', (msg: ProcessingRequest) => stream.onMessage(msg));
    call.on('end', () => stream.onHalfClose());
    call.on('cancelled', () => {
      open = false;
      stream.onCancel();
    });
    // Write-after-cancel and transport errors land here; the stream is already over.
    call.on('error', () => {
      open = false;
      stream.onCancel();
    });
  };
}

/** Starts the ext_proc server (and health on the same port). */
export async function startExtProcServer(opts: ExtProcServerOptions): Promise<RunningServer> {
  const services = loadServices();
  const streamOpts = streamOptions(opts);
  // One message may carry a whole request body (BUFFERED, up to maxBodyBytes:
  // beyond, the stream answers 413) or a whole response body to restore the
  // model in (up to maxResponseBufferBytes): the limit covers both.
  const receive = Math.max(
    MIN_RECEIVE_BYTES,
    Math.max(opts.maxBodyBytes, streamOpts.maxResponseBufferBytes) + MESSAGE_OVERHEAD_BYTES,
  );
  const channelOptions: ChannelOptions = {
    'grpc.max_receive_message_length': receive,
    'grpc.max_send_message_length': -1,
  };
  const server = new Server(channelOptions);
  const tuned = tuneHttp2(server);
  // grpc-js decodes with kv-epp's codec too, so its bounds (entries per
  // message, unread metadata skipped) hold on every transport.
  const extProc = {
    ...services.extProc,
    Process: { ...services.extProc.Process, requestDeserialize: decodeRequest },
  } as typeof services.extProc;
  server.addService(extProc, {
    Process: processHandler(streamOpts),
  } as UntypedServiceImplementation);
  const watches: WatchEnders = new Set();
  server.addService(
    services.health,
    healthService({ isReady: opts.isReady ?? (() => true), watches }),
  );
  const { credentials, certificate } = await serverCredentials(opts.tls);
  const port = await bind(server, address(opts.host, opts.port), credentials);
  limitSilentConnections(server, opts.prefaceTimeoutMs);
  if (!(tuned && tuneSessions(server))) {
    opts.logger.warn(
      { port },
      'cannot tune HTTP/2 (grpc-js internals changed): gateways may see GOAWAY after 1000 stream resets',
    );
  }
  const transport = opts.transport ?? 'raw-h2';
  let raw: RawTransport | undefined;
  if (transport === 'raw-h2') {
    raw = installRawTransport<ProcessingRequest, ProcessingResponse>(server, {
      deserialize: decodeRequest,
      frame: encodeResponseFrameParts,
      maxReceiveBytes: receive,
      open: (sink) => new ExtProcStream(sink, streamOpts),
      isReady: opts.isReady ?? (() => true),
      watches,
      prefaceTimeoutMs: opts.prefaceTimeoutMs,
      ...rawConnections(opts.logger, port, 'ext_proc'),
    });
  }
  const direct = transport === 'direct' && installDirect(server, receive, streamOpts);
  if ((transport === 'raw-h2' && !raw) || (transport === 'direct' && !direct)) {
    opts.logger.warn(
      { port, transport },
      'cannot serve ext_proc on the chosen HTTP/2 path (grpc-js internals changed): grpc-js serves it',
    );
  }
  const inForce = raw ? 'raw-h2' : direct ? 'direct' : 'grpc-js';
  opts.logger.info(
    { port, tls: tlsMode(opts.tls), transport: inForce },
    'ext_proc server listening',
  );
  return {
    port,
    certificate,
    transport: inForce,
    get ownReadBufferConnections() {
      return raw?.ownReadBufferConnections ?? 0;
    },
    get connections() {
      const js = grpcJsSessions(server);
      return raw ? raw.connections + (js ?? 0) : js;
    },
    close: closer(server, raw, watches),
  };
}

/** Protocol-error lines written per port and minute; the rest are counted on the next line. */
export const PROTOCOL_ERROR_LINES_PER_MINUTE = 10;

/**
 * The raw-h2 connections' windows and protocol-error log line, shared by both
 * ports. The line is capped (PROTOCOL_ERROR_LINES_PER_MINUTE): each bad
 * connection would otherwise write one, and a scanner makes thousands.
 */
function rawConnections(
  logger: Logger,
  port: number,
  what: 'ext_proc' | 'health',
): Pick<
  RawHealthTransportOptions,
  'streamWindowBytes' | 'connectionWindowBytes' | 'onProtocolError'
> {
  const budget = new LogBudget(PROTOCOL_ERROR_LINES_PER_MINUTE, 60_000, () => performance.now());
  return {
    streamWindowBytes: DEFAULT_HTTP2_TUNING.streamWindowBytes,
    connectionWindowBytes: DEFAULT_HTTP2_TUNING.connectionWindowBytes,
    onProtocolError: (code, reason) => {
      const skipped = budget.take();
      if (skipped === undefined) return;
      const fields = skipped > 0 ? { port, code, reason, skipped } : { port, code, reason };
      logger.warn(fields, `${what} connection closed: HTTP/2 protocol error`);
    },
  };
}

function installDirect(
  server: Server,
  maxReceiveBytes: number,
  streamOpts: ExtProcStreamOptions,
): boolean {
  return installProcessFastPath<ProcessingRequest, ProcessingResponse>(server, {
    deserialize: decodeRequest,
    frame: encodeResponseFrameParts,
    maxReceiveBytes,
    open: (sink) => new ExtProcStream(sink, streamOpts),
  });
}

function tlsMode(tls: TlsOption): string {
  if (tls === undefined) return 'off';
  if (tls === 'self-signed') return 'self-signed';
  return tls instanceof CertReloader ? `cert-path ${tls.dir} (reloaded on change)` : 'on';
}

/** Starts the plaintext health-only server (GAIE's `--grpc-health-port`). */
export async function startHealthServer(opts: HealthServerOptions): Promise<RunningServer> {
  const services = loadServices();
  const server = new Server();
  const watches: WatchEnders = new Set();
  server.addService(
    services.health,
    healthService({
      isReady: opts.isReady,
      watchIntervalMs: opts.watchIntervalMs,
      unknownAsReadiness: true,
      watches,
    }),
  );
  const { credentials } = await serverCredentials(undefined);
  const port = await bind(server, address(opts.host, opts.port), credentials);
  limitSilentConnections(server, opts.prefaceTimeoutMs);
  const raw =
    (opts.transport ?? 'raw-h2') === 'raw-h2'
      ? installRawHealthTransport(server, {
          isReady: opts.isReady,
          watchIntervalMs: opts.watchIntervalMs,
          unknownHealthAsReadiness: true,
          watches,
          prefaceTimeoutMs: opts.prefaceTimeoutMs,
          ...rawConnections(opts.logger, port, 'health'),
        })
      : undefined;
  if (opts.transport !== 'grpc-js' && !raw) {
    opts.logger.warn(
      { port },
      "cannot serve health on kv-epp's HTTP/2 framing (grpc-js internals changed): grpc-js serves it",
    );
  }
  const transport = raw ? 'raw-h2' : 'grpc-js';
  opts.logger.info({ port, transport }, 'health server listening');
  return {
    port,
    transport,
    get ownReadBufferConnections() {
      return raw?.ownReadBufferConnections ?? 0;
    },
    close: closer(server, raw, watches),
  };
}
