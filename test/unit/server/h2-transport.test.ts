/**
 * The direct HTTP/2 transport for `Process` (h2-transport.ts), at the wire:
 * a raw HTTP/2 client frames gRPC messages in ways grpc-js clients never do
 * (split byte by byte, several per DATA frame, bad prefixes) and checks the
 * statuses, that other calls still reach grpc-js, and that a reset stream
 * tells the handler and leaves the server serving.
 */
import {
  type ClientHttp2Session,
  connect,
  type Http2Server,
  type IncomingHttpHeaders,
  type ServerHttp2Stream,
} from 'node:http2';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import {
  type MethodDefinition,
  Server,
  ServerCredentials,
  type ServerDuplexStream,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  type FastPathSink,
  installProcessFastPath,
  PROCESS_PATH,
} from '../../../src/server/ext-proc/h2-transport.js';
import type {
  ProcessingRequest,
  ProcessingResponse,
} from '../../../src/server/ext-proc/messages.js';
import { loadServices } from '../../../src/server/ext-proc/proto.js';
import { healthService } from '../../../src/server/health.js';
import { reqBody, reqHeaders } from '../../support/ext-proc.js';

const MAX = 64 * 1024;
const method = loadServices().extProc.Process as MethodDefinition<
  ProcessingRequest,
  ProcessingResponse
>;

/** What a handler saw, per stream, in order. */
const events: string[] = [];
let server: Server;
let port: number;
let session: ClientHttp2Session;
/** The server side of every stream opened, in order. */
const serverStreams: ServerHttp2Stream[] = [];
/** The handler of every stream the transport served, in order, held weakly. */
const handlers: WeakRef<object>[] = [];

/** Answers each message with a header mutation naming the path that served it and the message kind. */
function reply(servedBy: string, msg: ProcessingRequest): ProcessingResponse {
  return {
    request_headers: {
      response: {
        header_mutation: {
          set_headers: [
            { header: { key: 'served-by', raw_value: Buffer.from(servedBy) } },
            { header: { key: 'kind', raw_value: Buffer.from(String(msg.request)) } },
          ],
        },
      },
    },
  };
}

beforeAll(async () => {
  server = new Server();
  server.addService(loadServices().extProc, {
    Process: (call: ServerDuplexStream<ProcessingRequest, ProcessingResponse>) => {
      call.on('data', (m: ProcessingRequest) => call.write(reply('grpc-js', m)));
      call.on('end', () => call.end());
    },
  } as UntypedServiceImplementation);
  server.addService(loadServices().health, healthService({ isReady: () => true }));
  port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (e, p) =>
      e ? reject(e) : resolve(p),
    ),
  );
  const ok = installProcessFastPath<ProcessingRequest, ProcessingResponse>(server, {
    deserialize: method.requestDeserialize,
    frame: (msg) => {
      const body = method.responseSerialize(msg);
      const f = Buffer.alloc(5 + body.length);
      f.writeUInt32BE(body.length, 1);
      body.copy(f, 5);
      return f;
    },
    maxReceiveBytes: MAX,
    open: (sink: FastPathSink<ProcessingResponse>) => {
      const call = {
        onMessage: (m: ProcessingRequest) => {
          events.push(`message ${m.request}`);
          // A body message asks for a failure, to check mid-stream statuses.
          if (m.request === 'request_body') sink.fail(3, 'bad body: ünïcode 100%');
          else sink.send(reply('direct', m));
        },
        onHalfClose: () => {
          events.push('half-close');
          sink.end();
        },
        onCancel: () => events.push('cancel'),
      };
      handlers.push(new WeakRef(call));
      return call;
    },
  });
  expect(ok).toBe(true);
  // Holds every server-side stream, as Node itself does for a while after they close.
  const h2 = (server as unknown as { http2Servers: Map<Http2Server, unknown> }).http2Servers;
  for (const srv of h2.keys()) srv.on('stream', (s: ServerHttp2Stream) => serverStreams.push(s));
  session = connect(`http://127.0.0.1:${port}`);
  session.on('error', () => {});
});

afterAll(async () => {
  session.close();
  await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
});

beforeEach(() => {
  events.length = 0;
});

function frame(msg: ProcessingRequest, flag = 0): Buffer {
  const body = Buffer.from(method.requestSerialize(msg));
  const f = Buffer.alloc(5 + body.length);
  f[0] = flag;
  f.writeUInt32BE(body.length, 1);
  body.copy(f, 5);
  return f;
}

interface Exchange {
  headers: IncomingHttpHeaders;
  trailers: IncomingHttpHeaders;
  messages: ProcessingResponse[];
}

/** Opens a Process stream, writes `chunks` one by one, half-closes unless `keepOpen`, collects everything. */
function exchange(
  chunks: Buffer[],
  extraHeaders: Record<string, string> = {},
  path = PROCESS_PATH,
): Promise<Exchange> {
  return new Promise((resolve, reject) => {
    const s = session.request({
      ':method': 'POST',
      ':path': path,
      'content-type': 'application/grpc',
      te: 'trailers',
      ...extraHeaders,
    });
    const out: Exchange = { headers: {}, trailers: {}, messages: [] };
    const data: Buffer[] = [];
    s.on('response', (h) => {
      out.headers = h;
    });
    s.on('trailers', (t) => {
      out.trailers = t;
    });
    s.on('data', (d: Buffer) => data.push(d));
    s.on('error', reject);
    s.on('close', () => {
      let all = Buffer.concat(data);
      while (path === PROCESS_PATH && all.length >= 5) {
        const len = all.readUInt32BE(1);
        out.messages.push(method.responseDeserialize(all.subarray(5, 5 + len)));
        all = all.subarray(5 + len);
      }
      resolve(out);
    });
    for (const c of chunks) s.write(c);
    s.end();
  });
}

/** Opens a Process stream on a connection of its own and drops that connection once the server answered. */
async function loseConnectionMidStream(path: string): Promise<void> {
  const other = connect(`http://127.0.0.1:${port}`);
  other.on('error', () => {});
  await new Promise<void>((resolve) => {
    const s = other.request({
      ':method': 'POST',
      ':path': PROCESS_PATH,
      'content-type': 'application/grpc',
    });
    s.on('error', () => {});
    s.on('data', () => other.destroy());
    s.on('close', () => resolve());
    s.write(frame(reqHeaders({ ':path': path })));
  });
}

/** grpc-status and grpc-message, from trailers or a trailers-only response. */
function status(x: Exchange): { code: string | undefined; message: string | undefined } {
  const h = x.trailers['grpc-status'] !== undefined ? x.trailers : x.headers;
  const m = h['grpc-message'];
  return {
    code: h['grpc-status'] as string | undefined,
    message: typeof m === 'string' ? decodeURI(m) : undefined,
  };
}

const servedBy = (m: ProcessingResponse): string | undefined =>
  Buffer.from(
    m.request_headers?.response?.header_mutation?.set_headers?.[0]?.header?.raw_value ?? [],
  ).toString();

describe('direct Process transport', () => {
  it('reassembles a message split byte by byte and answers with grpc+proto and status 0', async () => {
    const f = frame(reqHeaders({ ':path': '/v1/chat/completions', 'x-a': 'b'.repeat(300) }));
    const chunks = [...f].map((b) => Buffer.from([b]));
    const x = await exchange(chunks);
    expect(x.headers['content-type']).toBe('application/grpc+proto');
    expect(x.messages.map(servedBy)).toEqual(['direct']);
    expect(status(x)).toEqual({ code: '0', message: '' });
    expect(events).toEqual(['message request_headers', 'half-close']);
  });

  it('delivers several messages carried in one DATA chunk, in order', async () => {
    const h = frame(reqHeaders({ ':path': '/a' }));
    const t = frame({ request_trailers: {} });
    const x = await exchange([Buffer.concat([h, t, h])]);
    expect(x.messages).toHaveLength(3);
    expect(events).toEqual([
      'message request_headers',
      'message request_trailers',
      'message request_headers',
      'half-close',
    ]);
  });

  it('ends with the handler status after messages were sent (grpc-message percent-encoded)', async () => {
    const x = await exchange([
      frame(reqHeaders({ ':path': '/a' })),
      frame(reqBody('{}', true)),
      frame(reqBody('ignored', true)),
    ]);
    expect(x.messages).toHaveLength(1);
    expect(status(x)).toEqual({ code: '3', message: 'bad body: ünïcode 100%' });
    // Nothing after the failure reaches the handler, and no cancel is reported for our own end.
    expect(events).toEqual(['message request_headers', 'message request_body']);
  });

  it('fails a compressed message with INTERNAL (trailers-only) and tells the handler', async () => {
    const x = await exchange([frame(reqHeaders({ ':path': '/a' }), 1)]);
    expect(x.messages).toHaveLength(0);
    expect(status(x).code).toBe('13');
    expect(events).toEqual(['cancel']);
  });

  it('fails a message above the receive limit with RESOURCE_EXHAUSTED before buffering it', async () => {
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(MAX + 1, 1);
    const x = await exchange([prefix, Buffer.alloc(100)]);
    expect(status(x)).toEqual({
      code: '8',
      message: `Received message larger than max (${MAX + 1} vs. ${MAX})`,
    });
  });

  it('fails an undecodable message with INTERNAL', async () => {
    const junk = Buffer.from([0, 0, 0, 0, 3, 0xff, 0xff, 0xff]);
    const x = await exchange([junk]);
    expect(status(x)).toEqual({ code: '13', message: 'Error deserializing request' });
  });

  it('fails a stream that ends in the middle of a message', async () => {
    const f = frame(reqHeaders({ ':path': '/a' }));
    const x = await exchange([f.subarray(0, f.length - 2)]);
    expect(status(x).code).toBe('13');
    expect(events).toEqual(['cancel']);
  });

  it('honours grpc-timeout with DEADLINE_EXCEEDED', async () => {
    // The handler answers the headers message but the stream stays open (no half-close).
    const x = await new Promise<Exchange>((resolve) => {
      const s = session.request({
        ':method': 'POST',
        ':path': PROCESS_PATH,
        'content-type': 'application/grpc',
        'grpc-timeout': '30m',
      });
      const out: Exchange = { headers: {}, trailers: {}, messages: [] };
      s.on('response', (h) => {
        out.headers = h;
      });
      s.on('trailers', (t) => {
        out.trailers = t;
        // The status arrived; the client ends its side as a gRPC client does.
        s.end();
      });
      s.on('data', () => {});
      s.on('error', () => {});
      s.on('close', () => resolve(out));
      s.write(frame(reqHeaders({ ':path': '/a' })));
    });
    expect(status(x)).toEqual({ code: '4', message: 'Deadline exceeded' });
    expect(events).toEqual(['message request_headers', 'cancel']);
  });

  it('rejects a malformed grpc-timeout with INTERNAL', async () => {
    const x = await exchange([frame(reqHeaders({ ':path': '/a' }))], { 'grpc-timeout': 'soon' });
    expect(status(x).code).toBe('13');
  });

  it('reports a lost connection to the handler and keeps serving', async () => {
    await loseConnectionMidStream('/a');
    await expect.poll(() => events).toEqual(['message request_headers', 'cancel']);
    const x = await exchange([frame(reqHeaders({ ':path': '/b' }))]);
    expect(x.messages.map(servedBy)).toEqual(['direct']);
  });

  it("lets a closed stream's handler be collected while Node still holds the stream", async () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const closed = (s: ServerHttp2Stream) =>
      new Promise<void>((resolve) => (s.closed ? resolve() : s.once('close', () => resolve())));
    const before = handlers.length;
    const streamsBefore = serverStreams.length;
    // Refused at once (a malformed grpc-timeout), ended by the client (half-close,
    // status 0), then reset by a lost connection.
    const refused = await exchange([frame(reqHeaders({ ':path': '/a' }))], {
      'grpc-timeout': 'soon',
    });
    expect(status(refused).code).toBe('13');
    await exchange([frame(reqHeaders({ ':path': '/a' }))]);
    await loseConnectionMidStream('/b');
    await expect.poll(() => events.filter((e) => e === 'cancel')).toHaveLength(2);
    const streams = serverStreams.slice(streamsBefore);
    expect(streams).toHaveLength(3);
    for (const s of streams) await closed(s);
    await new Promise((resolve) => setImmediate(resolve));
    gc();
    expect(handlers.slice(before).map((h) => h.deref() === undefined)).toEqual([true, true, true]);
  });

  it('leaves compressed-encoding calls and other methods to grpc-js', async () => {
    const gz = await exchange([frame(reqHeaders({ ':path': '/a' }))], { 'grpc-encoding': 'gzip' });
    expect(gz.messages.map(servedBy)).toEqual(['grpc-js']);
    expect(events).toEqual([]);

    const health = await exchange(
      [Buffer.from([0, 0, 0, 0, 0])],
      {},
      '/grpc.health.v1.Health/Check',
    );
    expect(health.trailers['grpc-status']).toBe('0');
    const unknown = await exchange([], {}, '/nope.Service/Method');
    expect(status(unknown).code).toBe('12');
  });
});
