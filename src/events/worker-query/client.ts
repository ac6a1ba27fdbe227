/**
 * A one-shot client of a Dynamo 1.6.1 worker's local-indexer query endpoint
 * (`worker_kv_query_source_<publisher hex>`) over the TCP request plane.
 * Adapter module: the only place this feature touches sockets.
 *
 * One call:
 * 1. listen on an ephemeral port (`responseHost`, loopback by default) for
 *    the response stream: the worker dials back ("call home");
 * 2. connect to the worker's request-plane port, send one request-plane frame
 *    (endpoint path, headers, a two-part payload: JSON control message naming
 *    the listener and a fresh subject, msgpack `WorkerKvQueryRequest`), read
 *    the ACK (empty = accepted), close that socket;
 * 3. on the call-home socket: handshake `{subject, stream_type: "response"}`,
 *    prologue `{error: null}` (or the handler's error), one data frame
 *    `{data: WorkerKvQueryResponse, complete_final: false}`, a final
 *    `{complete_final: true}`, then the `"sentinel"` control frame.
 *
 * Every call has a deadline (`timeoutMs`); on expiry it sends `"kill"` on an
 * established response stream and closes everything.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';
import { WorkerQueryError } from './errors.js';
import {
  controlMessage,
  decodeQueryResponse,
  decodeStreamItem,
  encodeQueryRequest,
  encodeRequestFrame,
  encodeTwoPart,
  headerJson,
  readAck,
  TwoPartReader,
  type WorkerKvQueryResult,
} from './wire.js';

/** Where to send the query (a discovery `RecoveryTarget` fits). */
export interface QueryTarget {
  workerId: bigint;
  dpRank: number;
  host: string;
  port: number;
  /** `<instance hex>/<ns>/<component>/worker_kv_query_source_<publisher hex>`. */
  endpointPath: string;
}

export interface QueryOptions {
  /** Deadline of the whole call, ms. Default 10 000. */
  timeoutMs?: number;
  /** Interface the response-stream listener binds. Default `127.0.0.1`. */
  responseHost?: string;
  /** Host the worker is told to dial back; default `responseHost` (must be routable from the worker). */
  advertiseHost?: string;
  /** Largest response-stream frame accepted, bytes. Default 256 MiB. */
  maxFrameBytes?: number;
}

const DEFAULT_TIMEOUT_MS = 10_000;
const DEFAULT_MAX_FRAME = 256 * 1024 * 1024;
/** How long a finished call waits for the worker's sentinel before dropping the socket. */
const SENTINEL_GRACE_MS = 1_000;

const hostPort = (host: string, port: number): string =>
  host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;

function socketError(e: NodeJS.ErrnoException, what: string): WorkerQueryError {
  return new WorkerQueryError(
    e.code === 'ECONNREFUSED' ? 'connection_refused' : 'connection_failed',
    `${what}: ${e.message}`,
  );
}

function ackError(ack: Buffer): WorkerQueryError {
  const text = ack.toString('utf8');
  if (text.startsWith('Server unavailable:')) return new WorkerQueryError('endpoint_missing', text);
  if (text.startsWith('Server overloaded:')) return new WorkerQueryError('overloaded', text);
  return new WorkerQueryError('rejected', text);
}

/**
 * Calls the worker's local-indexer query: `startEventId` null = full tree dump,
 * else the buffered events from `startEventId` (the server may still answer
 * with a dump when that history is gone, or `too_new`).
 */
export function queryWorkerKv(
  target: QueryTarget,
  startEventId: bigint | null,
  endEventId: bigint | null,
  opts: QueryOptions = {},
): Promise<WorkerKvQueryResult> {
  const payload = encodeQueryRequest({
    workerId: target.workerId,
    dpRank: target.dpRank,
    startEventId,
    endEventId,
  });
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const bindHost = opts.responseHost ?? '127.0.0.1';
  const advertiseHost = opts.advertiseHost ?? bindHost;
  const maxFrame = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME;
  const id = randomUUID();
  const subject = randomUUID();

  return new Promise<WorkerKvQueryResult>((resolve, reject) => {
    let settled = false;
    let server: Server | null = null;
    let request: Socket | null = null;
    let stream: Socket | null = null;
    const strays = new Set<Socket>();

    const cleanup = (kill: boolean) => {
      clearTimeout(timer);
      server?.close();
      for (const s of strays) s.destroy();
      request?.destroy();
      const s = stream;
      if (s && !s.destroyed) {
        if (kill) {
          s.end(encodeTwoPart(Buffer.from('"kill"'), new Uint8Array(0)));
          setTimeout(() => s.destroy(), SENTINEL_GRACE_MS).unref();
        } else {
          setTimeout(() => s.destroy(), SENTINEL_GRACE_MS).unref();
        }
      }
    };
    const fail = (e: WorkerQueryError) => {
      if (settled) return;
      settled = true;
      cleanup(true);
      reject(e);
    };
    const done = (r: WorkerKvQueryResult) => {
      if (settled) return;
      settled = true;
      cleanup(false);
      resolve(r);
    };
    const timer = setTimeout(
      () =>
        fail(
          new WorkerQueryError(
            'timeout',
            `worker KV query to ${hostPort(target.host, target.port)}/${target.endpointPath} timed out after ${timeoutMs} ms`,
          ),
        ),
      timeoutMs,
    );
    // A query in flight does not keep the process alive (shutdown).
    timer.unref();

    const onStream = (sock: Socket) => {
      if (settled) {
        sock.destroy();
        return;
      }
      strays.add(sock);
      const frames = new TwoPartReader(maxFrame);
      let state: 'handshake' | 'prologue' | 'data' | 'ended' = 'handshake';
      let result: WorkerKvQueryResult | null = null;
      sock.on('error', () => {}); // reported through 'close'
      sock.on('data', (chunk: Buffer) => {
        try {
          for (const f of frames.push(chunk)) {
            if (state === 'handshake') {
              const hs = headerJson(f.header) as { subject?: unknown; stream_type?: unknown };
              if (hs?.subject !== subject || hs?.stream_type !== 'response') {
                sock.destroy(); // not our call
                return;
              }
              strays.delete(sock);
              stream = sock;
              state = 'prologue';
            } else if (state === 'prologue') {
              if (f.header.length === 0 || f.data.length !== 0) {
                throw new WorkerQueryError('protocol', 'expected a header-only prologue');
              }
              const p = headerJson(f.header) as { error?: unknown };
              if (p === null || typeof p !== 'object') {
                throw new WorkerQueryError('protocol', 'prologue is not an object');
              }
              if (typeof p.error === 'string') {
                throw new WorkerQueryError('prologue_error', `worker handler failed: ${p.error}`);
              }
              state = 'data';
            } else if (state === 'data') {
              if (f.header.length > 0) {
                const word = headerJson(f.header);
                if (word === 'sentinel') {
                  state = 'ended';
                  sock.end();
                  if (result) done(result);
                  else
                    throw new WorkerQueryError(
                      'protocol',
                      'response stream ended without an answer',
                    );
                  return;
                }
                throw new WorkerQueryError(
                  'protocol',
                  `unexpected control frame ${JSON.stringify(word)}`,
                );
              }
              if (f.data.length === 0) continue;
              const item = decodeStreamItem(f.data);
              // Dynamo's router reads the first item only; the endpoint sends exactly one.
              if (item.data && !result) result = decodeQueryResponse(item.data);
              if (item.completeFinal) {
                if (result) done(result);
                else
                  throw new WorkerQueryError(
                    'protocol',
                    'response stream completed without an answer',
                  );
              }
            }
          }
        } catch (e) {
          // Before its handshake a connection is not known to be the worker's: drop it alone.
          if (state === 'handshake') {
            sock.destroy();
            return;
          }
          fail(
            e instanceof WorkerQueryError
              ? e
              : new WorkerQueryError('protocol', `response stream: ${(e as Error).message}`),
          );
        }
      });
      sock.on('close', () => {
        strays.delete(sock);
        if (stream === sock && !settled) {
          if (result) done(result);
          else
            fail(
              new WorkerQueryError(
                'connection_failed',
                `response stream closed before the answer (state ${state})`,
              ),
            );
        }
      });
    };

    server = createServer((sock) => {
      sock.unref();
      onStream(sock);
    });
    server.unref();
    server.on('error', (e: NodeJS.ErrnoException) =>
      fail(socketError(e, `response-stream listener on ${bindHost}`)),
    );
    server.listen(0, bindHost, () => {
      if (settled) return;
      const addr = server?.address();
      if (!addr || typeof addr === 'string') {
        fail(new WorkerQueryError('connection_failed', 'response-stream listener has no port'));
        return;
      }
      const header = controlMessage(id, hostPort(advertiseHost, addr.port), subject);
      const frame = encodeRequestFrame(
        target.endpointPath,
        { 'x-endpoint-path': target.endpointPath, 'request-id': id },
        encodeTwoPart(header, payload),
      );
      let acked: Buffer = Buffer.alloc(0);
      let gotAck = false;
      const req = tcpConnect({ host: target.host, port: target.port });
      req.unref();
      request = req;
      req.on('connect', () => req.write(frame));
      req.on('data', (chunk: Buffer) => {
        if (gotAck) return;
        acked = acked.length === 0 ? chunk : Buffer.concat([acked, chunk]);
        let r: ReturnType<typeof readAck>;
        try {
          r = readAck(acked);
        } catch (e) {
          fail(e as WorkerQueryError);
          return;
        }
        if (!r) return;
        gotAck = true;
        req.end();
        if (r.ack.length > 0) fail(ackError(r.ack));
      });
      req.on('error', (e: NodeJS.ErrnoException) =>
        fail(socketError(e, `request plane ${hostPort(target.host, target.port)}`)),
      );
      req.on('close', () => {
        if (!gotAck)
          fail(
            new WorkerQueryError(
              'connection_failed',
              `request plane ${hostPort(target.host, target.port)} closed before the ACK`,
            ),
          );
      });
    });
  });
}

/** Range query `[startEventId, endEventId]` (what Dynamo's router sends on a gap, with `endEventId` null). */
export function queryWorkerKvRange(
  target: QueryTarget,
  startEventId: bigint,
  endEventId: bigint | null = null,
  opts: QueryOptions = {},
): Promise<WorkerKvQueryResult> {
  return queryWorkerKv(target, startEventId, endEventId, opts);
}

/** Full tree dump (what Dynamo's router sends when it first binds a source). */
export function queryWorkerKvDump(
  target: QueryTarget,
  opts: QueryOptions = {},
): Promise<WorkerKvQueryResult> {
  return queryWorkerKv(target, null, null, opts);
}
