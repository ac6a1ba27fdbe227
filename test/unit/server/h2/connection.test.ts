/**
 * H2Connection against a real HTTP/2 peer (Node's client, i.e. nghttp2: HPACK
 * with Huffman and its dynamic table, CONTINUATION, flow control) and against
 * hand-written frames for the protocol errors a client must not get away with.
 */
import http2 from 'node:http2';
import net from 'node:net';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  ErrorCode,
  H2Connection,
  type H2Stream,
  type H2StreamEvents,
} from '../../../../src/server/h2/connection.js';
import { encodeHeaders } from '../../../../src/server/h2/hpack.js';
import { readIntoOwnBuffer } from '../../../../src/server/h2/socket-reads.js';

/**
 * Both ways the connection can read: 'data' events, and one reused buffer per
 * socket (socket-reads.ts, what raw-transport.ts uses). The suites run once each.
 */
const READ_MODES = ['data events', 'own read buffer'] as const;
let readMode: (typeof READ_MODES)[number] = 'data events';

type Handler = (stream: H2Stream, headers: Record<string, string>) => H2StreamEvents;

interface Harness {
  port: number;
  conns: H2Connection[];
  errors: string[];
  close(): Promise<void>;
}

const open: Harness[] = [];
afterEach(async () => {
  for (const h of open.splice(0)) await h.close();
});

async function serve(
  handler: Handler,
  windows = { stream: 1 << 20, conn: 4 << 20 },
  extra: {
    maxUnsentBytes?: number;
    maxQueuedControlAnswers?: number;
    prefaceTimeoutMs?: number;
  } = {},
): Promise<Harness> {
  const conns: H2Connection[] = [];
  const errors: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    conns.push(
      new H2Connection(socket, {
        streamWindowBytes: windows.stream,
        connectionWindowBytes: windows.conn,
        open: (stream, flat) => {
          const headers: Record<string, string> = {};
          for (let i = 0; i < flat.length; i += 2)
            headers[flat[i] as string] = flat[i + 1] as string;
          return handler(stream, headers);
        },
        onProtocolError: (code, reason) => errors.push(`${code}:${reason}`),
        readsFrom:
          readMode === 'own read buffer'
            ? (deliver) => readIntoOwnBuffer(socket, deliver)
            : undefined,
        ...extra,
      }),
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const h: Harness = {
    port: (server.address() as net.AddressInfo).port,
    conns,
    errors,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
  open.push(h);
  return h;
}

/** Echoes the request body back with a header naming the path, then trailers. */
const echo: Handler = (stream, headers) => {
  const parts: Buffer[] = [];
  return {
    onData: (c) => parts.push(Buffer.from(c)),
    onEnd: () => {
      stream.respond(
        encodeHeaders([
          [':status', '200'],
          ['x-path', headers[':path'] ?? ''],
        ]),
      );
      stream.write(Buffer.concat(parts));
      stream.end(encodeHeaders([['x-bytes', String(parts.reduce((n, p) => n + p.length, 0))]]));
    },
    onReset: () => {},
  };
};

interface Reply {
  headers: http2.IncomingHttpHeaders;
  body: Buffer;
  trailers: http2.IncomingHttpHeaders;
}

function request(
  client: http2.ClientHttp2Session,
  path: string,
  body: Buffer,
  extra: http2.OutgoingHttpHeaders = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = client.request({ ':method': 'POST', ':path': path, ...extra });
    const chunks: Buffer[] = [];
    let headers: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    req.on('response', (h) => {
      headers = h;
    });
    req.on('trailers', (t) => {
      trailers = t;
    });
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve({ headers, body: Buffer.concat(chunks), trailers }));
    req.on('error', reject);
    req.end(body);
  });
}

function connect(port: number, settings: http2.Settings = {}): http2.ClientHttp2Session {
  const c = http2.connect(`http://127.0.0.1:${port}`, { settings });
  c.on('error', () => {});
  return c;
}

for (const mode of READ_MODES) {
  describe(`H2Connection with a real HTTP/2 client (${mode})`, () => {
    beforeAll(() => {
      readMode = mode;
    });
    it('reads the way it was asked to', async () => {
      const h = await serve(echo);
      const client = http2.connect(`http://127.0.0.1:${h.port}`);
      await new Promise<void>((r) => client.once('remoteSettings', () => r()));
      expect(h.conns.map((c) => c.readsIntoOwnBuffer)).toEqual([mode === 'own read buffer']);
      client.close();
    });

    it('serves many streams over one connection (HPACK state kept in step)', async () => {
      const h = await serve(echo);
      const client = connect(h.port);
      for (let round = 0; round < 3; round++) {
        const replies = await Promise.all(
          Array.from({ length: 50 }, (_, i) =>
            request(client, `/p/${round}/${i}`, Buffer.from(`body ${round} ${i}`), {
              'x-custom': `value-${i % 7}`,
            }),
          ),
        );
        replies.forEach((r, i) => {
          expect(r.headers[':status']).toBe(200);
          expect(r.headers['x-path']).toBe(`/p/${round}/${i}`);
          expect(r.body.toString()).toBe(`body ${round} ${i}`);
          expect(r.trailers['x-bytes']).toBe(String(`body ${round} ${i}`.length));
        });
      }
      client.close();
    });

    it('honours both directions of flow control on large bodies', async () => {
      // Small receive windows on our side: the client must wait for our WINDOW_UPDATEs;
      // small windows on the client's side: our answer must wait for its updates.
      const h = await serve(echo, { stream: 65_535, conn: 65_535 });
      const client = connect(h.port, { initialWindowSize: 16_384 });
      const big = Buffer.alloc(3 * 1024 * 1024 + 17);
      for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff;
      const [a, b] = await Promise.all([
        request(client, '/a', big),
        request(client, '/b', big.subarray(0, 200_001)),
      ]);
      expect(a.body.equals(big)).toBe(true);
      expect(b.body.equals(big.subarray(0, 200_001))).toBe(true);
      client.close();
    });

    it('reads a header block split over CONTINUATION frames', async () => {
      const h = await serve(echo);
      const client = connect(h.port);
      const r = await request(client, '/long', Buffer.from('x'), { 'x-big': 'v'.repeat(40_000) });
      expect(r.headers['x-path']).toBe('/long');
      client.close();
    });

    it('tells the handler about a client reset, and resets on request', async () => {
      let gotData: () => void = () => {};
      const dataSeen = new Promise<void>((r) => (gotData = r));
      let gotReset: (code: number) => void = () => {};
      const reset = new Promise<number>((r) => (gotReset = r));
      const h = await serve((stream, headers) => {
        if (headers[':path'] === '/reset-me') {
          stream.reset(ErrorCode.REFUSED_STREAM);
          return { onData() {}, onEnd() {}, onReset() {} };
        }
        return { onData: () => gotData(), onEnd() {}, onReset: (code) => gotReset(code) };
      });
      const client = connect(h.port);
      const req = client.request({ ':method': 'POST', ':path': '/wait' });
      req.on('error', () => {});
      req.write('partial');
      // The stream is open on the server before the client cancels it.
      await dataSeen;
      req.close(http2.constants.NGHTTP2_CANCEL);
      expect(await reset).toBe(ErrorCode.CANCEL);

      const refused = client.request({ ':method': 'POST', ':path': '/reset-me' });
      refused.on('error', () => {});
      const code = await new Promise<number>((r) => refused.on('close', () => r(refused.rstCode)));
      expect(code).toBe(http2.constants.NGHTTP2_REFUSED_STREAM);
      client.close();
    });

    it('acknowledges a lowered header table size in its next header block', async () => {
      // nghttp2 refuses a response block that does not start with the size update.
      const h = await serve(echo);
      const client = connect(h.port, { headerTableSize: 0 });
      await new Promise((r) => client.once('connect', r));
      await new Promise((r) => setTimeout(r, 20)); // our SETTINGS ACK round trip
      for (const path of ['/one', '/two']) {
        const r = await request(client, path, Buffer.from(path));
        expect(r.headers['x-path']).toBe(path);
        expect(r.trailers['x-bytes']).toBe(String(path.length));
      }
      client.close();
    });

    it('announces its windows and limits in SETTINGS', async () => {
      const h = await serve(echo, { stream: 123_456, conn: 4 << 20 });
      const client = connect(h.port);
      const s = await new Promise<http2.Settings>((r) => client.once('remoteSettings', r));
      expect(s.initialWindowSize).toBe(123_456);
      expect(s.maxConcurrentStreams).toBe(10_000);
      expect(s.maxHeaderListSize).toBe(256 * 1024);
      expect(s.maxFrameSize).toBe(16_384);
      client.close();
    });

    it('answers PING and drains on GOAWAY', async () => {
      const h = await serve(echo);
      const client = connect(h.port);
      await new Promise((r) => client.once('connect', r));
      await new Promise<void>((resolve, reject) =>
        client.ping(Buffer.from('12345678'), (err) => (err ? reject(err) : resolve())),
      );
      const goaway = new Promise<number>((r) => client.on('goaway', (code) => r(code)));
      const closed = new Promise<void>((r) => client.on('close', () => r()));
      await request(client, '/before', Buffer.from('1'));
      h.conns[0]?.goaway();
      expect(await goaway).toBe(0);
      await closed;
    });
  });

  describe(`H2Connection against protocol errors (${mode})`, () => {
    beforeAll(() => {
      readMode = mode;
    });
    const PREFACE = 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n';
    const frame = (type: number, flags: number, id: number, payload: Buffer): Buffer => {
      const h = Buffer.alloc(9);
      h.writeUIntBE(payload.length, 0, 3);
      h[3] = type;
      h[4] = flags;
      h.writeUInt32BE(id, 5);
      return Buffer.concat([h, payload]);
    };
    const SETTINGS = frame(4, 0, 0, Buffer.alloc(0));

    it('closes a connection that sends no preface in time, and keeps one that did', async () => {
      const h = await serve(() => ({ onData() {}, onEnd() {}, onReset() {} }), undefined, {
        prefaceTimeoutMs: 200,
      });
      const silent = net.connect(h.port, '127.0.0.1');
      silent.on('error', () => {});
      silent.resume(); // reads our SETTINGS, so it sees the close
      const spoke = net.connect(h.port, '127.0.0.1');
      spoke.on('error', () => {});
      spoke.resume();
      spoke.write(Buffer.concat([Buffer.from(PREFACE, 'latin1'), SETTINGS]));
      let spokeClosed = false;
      spoke.on('close', () => {
        spokeClosed = true;
      });
      await new Promise<void>((r) => silent.on('close', () => r()));
      // Well past the deadline, the one that spoke is still open.
      await new Promise((r) => setTimeout(r, 400));
      expect(spokeClosed).toBe(false);
      spoke.destroy();
    });

    /** Sends bytes after the preface; resolves with the GOAWAY error code we got back (or -1). */
    async function goawayFor(h: Harness, bytes: Buffer): Promise<number> {
      const sock = net.connect(h.port, '127.0.0.1');
      const got: Buffer[] = [];
      sock.on('data', (c) => got.push(c));
      sock.on('error', () => {});
      sock.write(Buffer.concat([Buffer.from(PREFACE, 'latin1'), SETTINGS, bytes]));
      await new Promise<void>((r) => sock.on('close', () => r()));
      const all = Buffer.concat(got);
      for (let at = 0; at + 9 <= all.length; ) {
        const len = all.readUIntBE(at, 3);
        if (all[at + 3] === 7) return all.readUInt32BE(at + 9 + 4);
        at += 9 + len;
      }
      return -1;
    }

    it('GOAWAY(PROTOCOL_ERROR) for DATA on an idle stream', async () => {
      const h = await serve(echo);
      expect(await goawayFor(h, frame(0, 0, 1, Buffer.from('x')))).toBe(ErrorCode.PROTOCOL_ERROR);
      expect(h.errors[0]).toMatch(/idle stream/);
    });

    it('GOAWAY(FRAME_SIZE_ERROR) for a frame above 16 KiB', async () => {
      const h = await serve(echo);
      expect(await goawayFor(h, frame(0, 0, 1, Buffer.alloc(20_000)))).toBe(
        ErrorCode.FRAME_SIZE_ERROR,
      );
    });

    it('GOAWAY(COMPRESSION_ERROR) for an undecodable header block', async () => {
      const h = await serve(echo);
      expect(await goawayFor(h, frame(1, 0x4, 1, Buffer.from([0xff])))).toBe(
        ErrorCode.COMPRESSION_ERROR,
      );
    });

    it('RST_STREAM(FLOW_CONTROL_ERROR) for DATA beyond the stream window', async () => {
      // Windows are replenished as DATA arrives, so only one frame larger than
      // the whole window can overrun it.
      const h = await serve(echo, { stream: 10_000, conn: 1 << 20 });
      const sock = net.connect(h.port, '127.0.0.1');
      const got: Buffer[] = [];
      sock.on('data', (c) => got.push(c));
      sock.on('error', () => {});
      const headers = frame(
        1,
        0x4,
        1,
        encodeHeaders([
          [':method', 'POST'],
          [':scheme', 'http'],
          [':path', '/x'],
        ]),
      );
      sock.write(
        Buffer.concat([
          Buffer.from(PREFACE, 'latin1'),
          SETTINGS,
          headers,
          frame(0, 0, 1, Buffer.alloc(16_384)),
        ]),
      );
      const rst = await new Promise<number>((resolve) => {
        const look = (): void => {
          const all = Buffer.concat(got);
          for (let at = 0; at + 9 <= all.length; ) {
            const len = all.readUIntBE(at, 3);
            if (all[at + 3] === 3 && at + 13 <= all.length) {
              resolve(all.readUInt32BE(at + 9));
              return;
            }
            at += 9 + len;
          }
          setTimeout(look, 10);
        };
        look();
      });
      expect(rst).toBe(ErrorCode.FLOW_CONTROL_ERROR);
      sock.destroy();
    });

    it('closes a connection that does not start with the HTTP/2 preface', async () => {
      const h = await serve(echo);
      const sock = net.connect(h.port, '127.0.0.1');
      sock.on('error', () => {});
      sock.resume(); // read (and so see the end of) what we are sent
      sock.write('GET / HTTP/1.1\r\nhost: x\r\n\r\n');
      await new Promise<void>((r) => sock.on('close', () => r()));
      expect(h.errors[0]).toMatch(/preface/);
    });

    it('a handler that throws resets its stream only', async () => {
      const h = await serve((stream, headers) => {
        if (headers[':path'] === '/throw') throw new Error('boom');
        return echo(stream, headers);
      });
      const client = connect(h.port);
      const bad = client.request({ ':method': 'POST', ':path': '/throw' });
      bad.on('error', () => {});
      const code = await new Promise<number>((r) => bad.on('close', () => r(bad.rstCode)));
      expect(code).toBe(http2.constants.NGHTTP2_INTERNAL_ERROR);
      const ok = await request(client, '/fine', Buffer.from('still here'));
      expect(ok.body.toString()).toBe('still here');
      client.close();
    });

    /** A raw client: writes bytes, collects the frames it is sent. */
    function rawClient(h: Harness) {
      const sock = net.connect(h.port, '127.0.0.1');
      const frames: { type: number; flags: number; id: number; payload: Buffer }[] = [];
      let buf = Buffer.alloc(0);
      let closed = false;
      sock.on('data', (c: Buffer) => {
        buf = Buffer.concat([buf, c]);
        while (buf.length >= 9) {
          const len = buf.readUIntBE(0, 3);
          if (buf.length < 9 + len) break;
          frames.push({
            type: buf[3] as number,
            flags: buf[4] as number,
            id: buf.readUInt32BE(5) & 0x7fffffff,
            payload: buf.subarray(9, 9 + len),
          });
          buf = buf.subarray(9 + len);
        }
      });
      sock.on('error', () => {});
      sock.on('close', () => {
        closed = true;
      });
      sock.write(Buffer.concat([Buffer.from(PREFACE, 'latin1'), SETTINGS]));
      const until = async (f: () => boolean): Promise<void> => {
        for (let i = 0; i < 500 && !f(); i++) await new Promise((r) => setTimeout(r, 5));
        expect(f()).toBe(true);
      };
      return { sock, frames, until, closed: () => closed };
    }
    const POST = (path: string): Buffer =>
      encodeHeaders([
        [':method', 'POST'],
        [':scheme', 'http'],
        [':path', path],
      ]);

    it('GOAWAY(PROTOCOL_ERROR) for SETTINGS_ENABLE_PUSH above 1', async () => {
      const h = await serve(echo);
      const p = Buffer.alloc(6);
      p.writeUInt16BE(0x2, 0);
      p.writeUInt32BE(2, 2);
      expect(await goawayFor(h, frame(4, 0, 0, p))).toBe(ErrorCode.PROTOCOL_ERROR);
    });

    it('RST_STREAM for a malformed PRIORITY and for a stream that depends on itself', async () => {
      let opened = 0;
      const h = await serve((stream, headers) => {
        opened += 1;
        return echo(stream, headers);
      });
      const c = rawClient(h);
      const rstCode = (id: number) => {
        const f = c.frames.find((x) => x.type === 3 && x.id === id);
        return f ? f.payload.readUInt32BE(0) : -1;
      };
      const selfDep = Buffer.alloc(5);
      selfDep.writeUInt32BE(3, 0);
      c.sock.write(
        Buffer.concat([
          frame(2, 0, 1, Buffer.alloc(4)), // PRIORITY of 4 bytes
          frame(1, 0x4 | 0x1 | 0x20, 3, Buffer.concat([selfDep, POST('/x')])), // depends on 3
          frame(1, 0x4 | 0x1, 5, POST('/y')), // the connection goes on
        ]),
      );
      await c.until(() => c.frames.some((f) => f.type === 1 && f.id === 5));
      expect(rstCode(1)).toBe(ErrorCode.FRAME_SIZE_ERROR);
      expect(rstCode(3)).toBe(ErrorCode.PROTOCOL_ERROR);
      expect(opened).toBe(1);
      c.sock.destroy();
    });

    it('drains in two steps: streams opened after the first GOAWAY still run', async () => {
      const h = await serve(echo);
      const c = rawClient(h);
      await c.until(() => h.conns.length === 1 && c.frames.some((f) => f.type === 4));
      h.conns[0]?.goaway();
      await c.until(() => c.frames.some((f) => f.type === 6 && !(f.flags & 1)));
      const first = c.frames.find((f) => f.type === 7);
      expect(first?.payload.readUInt32BE(0)).toBe(0x7fffffff);
      // A request the peer opened before it saw the final GOAWAY is served.
      c.sock.write(
        Buffer.concat([frame(1, 0x4, 1, POST('/late')), frame(0, 0x1, 1, Buffer.from('late'))]),
      );
      await c.until(() => c.frames.some((f) => f.type === 0 && f.id === 1));
      const ping = c.frames.find((f) => f.type === 6 && !(f.flags & 1));
      c.sock.write(frame(6, 0x1, 0, Buffer.from(ping?.payload ?? Buffer.alloc(8))));
      await c.until(() => c.frames.filter((f) => f.type === 7).length === 2);
      const last = c.frames.filter((f) => f.type === 7)[1];
      expect(last?.payload.readUInt32BE(0)).toBe(1);
      await c.until(c.closed);
    });

    it('answers a unary call closed by the client without resetting it', async () => {
      const h = await serve((stream) => ({
        onData: () => {
          stream.respond(encodeHeaders([[':status', '200']]));
          stream.end(encodeHeaders([['grpc-status', '0']]));
        },
        onEnd: () => {},
        onReset: () => {},
      }));
      const c = rawClient(h);
      c.sock.write(
        Buffer.concat([frame(1, 0x4, 1, POST('/u')), frame(0, 0x1, 1, Buffer.from('x'))]),
      );
      await c.until(() => c.frames.some((f) => f.type === 1 && f.id === 1 && f.flags & 1));
      await new Promise((r) => setTimeout(r, 20));
      expect(c.frames.filter((f) => f.type === 3)).toEqual([]);
      c.sock.destroy();
    });

    it('answers 431 to one stream with too many header bytes; the connection goes on', async () => {
      const h = await serve(echo);
      const c = rawClient(h);
      const big = encodeHeaders([
        [':method', 'POST'],
        [':scheme', 'http'],
        [':path', '/big'],
        ['x-big', 'v'.repeat(300 * 1024)],
      ]);
      // Split over HEADERS + CONTINUATIONs of 16 KiB.
      const parts: Buffer[] = [];
      for (let at = 0; at < big.length; at += 16_384) {
        const piece = big.subarray(at, at + 16_384);
        const endHeaders = at + 16_384 >= big.length ? 0x4 : 0;
        parts.push(frame(at === 0 ? 1 : 9, (at === 0 ? 0x1 : 0) | endHeaders, 1, piece));
      }
      c.sock.write(Buffer.concat(parts));
      await c.until(() => c.frames.some((f) => f.type === 1 && f.id === 1));
      const hdr = c.frames.find((f) => f.type === 1 && f.id === 1);
      expect(hdr?.payload.toString('hex')).toBe(
        encodeHeaders([[':status', '431']]).toString('hex'),
      );
      c.sock.write(
        Buffer.concat([frame(1, 0x4, 3, POST('/ok')), frame(0, 0x1, 3, Buffer.from('ok'))]),
      );
      await c.until(() => c.frames.some((f) => f.type === 0 && f.id === 3));
      expect(h.errors).toEqual([]);
      c.sock.destroy();
    });

    it('GOAWAY(PROTOCOL_ERROR) for a flood of empty CONTINUATION frames', async () => {
      const h = await serve(echo);
      const flood = Array.from({ length: 120_000 }, () => frame(9, 0, 1, Buffer.alloc(0)));
      expect(await goawayFor(h, Buffer.concat([frame(1, 0, 1, POST('/x')), ...flood]))).toBe(
        ErrorCode.PROTOCOL_ERROR,
      );
      expect(h.errors[0]).toMatch(/header block too large/);
    });

    it('closes with ENHANCE_YOUR_CALM a peer that floods PINGs and does not read the answers', async () => {
      const h = await serve(echo);
      const sock = net.connect(h.port, '127.0.0.1');
      sock.on('error', () => {});
      sock.pause(); // never read
      const pings = Array.from({ length: 300_000 }, () => frame(6, 0, 0, Buffer.alloc(8)));
      sock.write(Buffer.concat([Buffer.from(PREFACE, 'latin1'), SETTINGS, ...pings]));
      const flood = () =>
        h.errors.some((e) => e.startsWith(`${ErrorCode.ENHANCE_YOUR_CALM}:control frame flood`));
      for (let i = 0; i < 2000 && !flood(); i++) await new Promise((r) => setTimeout(r, 5));
      expect(h.errors).toEqual([expect.stringMatching(/^11:control frame flood/)]);
      sock.destroy();
    });

    it('answers PINGs without end from a peer that reads them', async () => {
      const h = await serve(echo);
      const sock = net.connect(h.port, '127.0.0.1');
      sock.on('error', () => {});
      let acks = 0;
      let carry = Buffer.alloc(0);
      sock.on('data', (d: Buffer) => {
        carry = Buffer.concat([carry, d]);
        while (carry.length >= 9) {
          const len = carry.readUIntBE(0, 3);
          if (carry.length < 9 + len) break;
          if (carry[3] === 6 && (carry[4] as number) & 1) acks += 1;
          carry = carry.subarray(9 + len);
        }
      });
      sock.write(Buffer.concat([Buffer.from(PREFACE, 'latin1'), SETTINGS]));
      const burst = Buffer.concat(
        Array.from({ length: 2000 }, () => frame(6, 0, 0, Buffer.alloc(8))),
      );
      for (let i = 1; i <= 15; i++) {
        sock.write(burst);
        for (let j = 0; j < 400 && acks < i * 2000; j++) await new Promise((r) => setTimeout(r, 5));
      }
      expect(acks).toBe(30_000);
      expect(h.errors).toEqual([]);
      sock.destroy();
    });

    describe('malformed requests and frames on closed streams (RFC 9113 §5.1, §8)', () => {
      const REQ: [string, string][] = [
        [':method', 'POST'],
        [':scheme', 'http'],
        [':path', '/m'],
        [':authority', 'epp'],
      ];
      const without = (name: string): [string, string][] => REQ.filter(([n]) => n !== name);
      const MALFORMED: [string, [string, string][]][] = [
        ['an unknown pseudo-header', [...REQ, [':foo', 'x']]],
        ['a response pseudo-header', [[':status', '200'], ...REQ]],
        [
          'a pseudo-header after a regular field',
          [...without(':path'), ['x-a', '1'], [':path', '/m']],
        ],
        ['a duplicated :method', [...REQ.slice(0, 1), ...REQ]],
        ['a duplicated :scheme', [...REQ.slice(0, 2), [':scheme', 'https'], ...REQ.slice(2)]],
        ['a duplicated :path', [[':path', '/m'], ...REQ]],
        ['no :method', without(':method')],
        ['no :scheme', without(':scheme')],
        ['no :path', without(':path')],
        ['an empty :path', [...without(':path'), [':path', '']]],
        ['a connection-specific field', [...REQ, ['connection', 'keep-alive']]],
        ['transfer-encoding', [...REQ, ['transfer-encoding', 'chunked']]],
        ['te other than trailers', [...REQ, ['te', 'gzip']]],
        ['an uppercase field name', [...REQ, ['X-Upper', '1']]],
        ['a field name with a space', [...REQ, ['x a', '1']]],
        ['a field name with NUL', [...REQ, ['x\u0000a', '1']]],
        ['a field name with a non-ASCII octet', [...REQ, ['x\u00e9', '1']]],
        ['a field value with CR LF', [...REQ, ['x-a', '1\r\nx-b: 2']]],
        ['a field value with LF', [...REQ, ['x-a', '1\n2']]],
        ['a field value with NUL', [...REQ, ['x-a', '1\u00002']]],
        ['a pseudo-header value with CR', [...without(':path'), [':path', '/m\r']]],
        ['a colon inside a field name', [...REQ, ['x:a', '1']]],
        ['a field value with a leading space', [...REQ, ['x-a', ' 1']]],
        ['a field value with a trailing tab', [...REQ, ['x-a', '1\t']]],
        ['a content-length that is not a number', [...REQ, ['content-length', '1x']]],
        [
          'two different content-lengths',
          [...REQ, ['content-length', '1'], ['content-length', '2']],
        ],
      ];
      for (const [what, fields] of MALFORMED) {
        it(`RST_STREAM(PROTOCOL_ERROR) for ${what}; the stream never opens, the connection goes on`, async () => {
          let opened = 0;
          const h = await serve((stream, headers) => {
            opened += 1;
            return echo(stream, headers);
          });
          const c = rawClient(h);
          c.sock.write(
            Buffer.concat([
              frame(1, 0x4 | 0x1, 1, encodeHeaders(fields)),
              frame(1, 0x4 | 0x1, 3, encodeHeaders(REQ)),
            ]),
          );
          await c.until(() => c.frames.some((f) => f.type === 1 && f.id === 3));
          const rst = c.frames.find((f) => f.type === 3 && f.id === 1);
          expect(rst?.payload.readUInt32BE(0)).toBe(ErrorCode.PROTOCOL_ERROR);
          expect(opened).toBe(1);
          expect(h.errors).toEqual([]);
          c.sock.destroy();
        });
      }

      it('accepts te: trailers, inner and empty values, CONNECT with only :authority, and a matching content-length', async () => {
        const h = await serve(echo);
        const c = rawClient(h);
        c.sock.write(
          Buffer.concat([
            frame(
              1,
              0x4 | 0x1,
              1,
              encodeHeaders([...REQ, ['te', 'Trailers'], ['x-inner', 'a b\tc'], ['x-empty', '']]),
            ),
            frame(
              1,
              0x4 | 0x1,
              3,
              encodeHeaders([
                [':method', 'CONNECT'],
                [':authority', 'epp:1'],
              ]),
            ),
            frame(1, 0x4, 5, encodeHeaders([...REQ, ['content-length', '5']])),
            frame(0, 0, 5, Buffer.from('ab')),
            frame(0, 0x1, 5, Buffer.from('cde')),
          ]),
        );
        await c.until(() => c.frames.filter((f) => f.type === 1 && f.flags & 1).length === 3);
        expect(c.frames.filter((f) => f.type === 3)).toEqual([]);
        const body = c.frames.filter((f) => f.type === 0 && f.id === 5);
        expect(Buffer.concat(body.map((f) => f.payload)).toString()).toBe('abcde');
        c.sock.destroy();
      });

      it('RST_STREAM(PROTOCOL_ERROR) for a body shorter or longer than its content-length', async () => {
        const resets: number[] = [];
        const h = await serve((stream, headers) => ({
          ...echo(stream, headers),
          onReset: (code) => resets.push(code),
        }));
        const c = rawClient(h);
        const req = encodeHeaders([...REQ, ['content-length', '3']]);
        c.sock.write(
          Buffer.concat([
            frame(1, 0x4, 1, req),
            frame(0, 0x1, 1, Buffer.from('ab')), // short
            frame(1, 0x4, 3, req),
            frame(0, 0, 3, Buffer.from('abcd')), // long, before its end
            frame(1, 0x4 | 0x1, 5, req), // ends with no body at all
            frame(1, 0x4, 7, req),
            frame(0, 0, 7, Buffer.from('ab')),
            frame(1, 0x4 | 0x1, 7, encodeHeaders([['x-t', '1']])), // trailers end it short
          ]),
        );
        await c.until(() => c.frames.filter((f) => f.type === 3).length === 4);
        for (const id of [1, 3, 5, 7]) {
          const rst = c.frames.find((f) => f.type === 3 && f.id === id);
          expect(rst?.payload.readUInt32BE(0)).toBe(ErrorCode.PROTOCOL_ERROR);
        }
        expect(resets).toEqual([
          ErrorCode.PROTOCOL_ERROR,
          ErrorCode.PROTOCOL_ERROR,
          ErrorCode.PROTOCOL_ERROR,
        ]);
        expect(h.errors).toEqual([]);
        c.sock.destroy();
      });

      it.each([
        ['a pseudo-header', [':path', '/t']],
        ['a value with CR LF', ['x-t', 'a\r\nb']],
        ['an uppercase name', ['X-T', 'a']],
      ] as const)('RST_STREAM(PROTOCOL_ERROR) for trailers carrying %s', async (_what, field) => {
        const h = await serve(echo);
        const c = rawClient(h);
        c.sock.write(
          Buffer.concat([
            frame(1, 0x4, 1, encodeHeaders(REQ)),
            frame(1, 0x4 | 0x1, 1, encodeHeaders([field])),
          ]),
        );
        await c.until(() => c.frames.some((f) => f.type === 3 && f.id === 1));
        const rst = c.frames.find((f) => f.type === 3 && f.id === 1);
        expect(rst?.payload.readUInt32BE(0)).toBe(ErrorCode.PROTOCOL_ERROR);
        c.sock.destroy();
      });

      /** A stream the client ended and the server answered: closed by both sides. */
      async function answeredStream(h: Harness) {
        const c = rawClient(h);
        c.sock.write(frame(1, 0x4 | 0x1, 1, encodeHeaders(REQ)));
        await c.until(() => c.frames.some((f) => f.type === 1 && f.id === 1 && f.flags & 1));
        return c;
      }

      it('RST_STREAM(STREAM_CLOSED) for DATA on a stream the client had ended', async () => {
        const h = await serve(echo);
        const c = await answeredStream(h);
        c.sock.write(frame(0, 0x1, 1, Buffer.from('late')));
        await c.until(() => c.frames.some((f) => f.type === 3 && f.id === 1));
        const rst = c.frames.find((f) => f.type === 3 && f.id === 1);
        expect(rst?.payload.readUInt32BE(0)).toBe(ErrorCode.STREAM_CLOSED);
        expect(h.errors).toEqual([]);
        c.sock.destroy();
      });

      it('GOAWAY(STREAM_CLOSED) for HEADERS on a stream the client had ended', async () => {
        const h = await serve(echo);
        const c = await answeredStream(h);
        c.sock.write(frame(1, 0x4 | 0x1, 1, encodeHeaders([['x-t', '1']])));
        await c.until(c.closed);
        const goaway = c.frames.find((f) => f.type === 7);
        expect(goaway?.payload.readUInt32BE(4)).toBe(ErrorCode.STREAM_CLOSED);
      });

      it('GOAWAY(PROTOCOL_ERROR) for HEADERS on a lower stream id never opened', async () => {
        const h = await serve(echo);
        const c = rawClient(h);
        c.sock.write(
          Buffer.concat([
            frame(1, 0x4 | 0x1, 5, encodeHeaders(REQ)),
            frame(1, 0x4 | 0x1, 3, encodeHeaders(REQ)),
          ]),
        );
        await c.until(c.closed);
        const goaway = c.frames.find((f) => f.type === 7);
        expect(goaway?.payload.readUInt32BE(4)).toBe(ErrorCode.PROTOCOL_ERROR);
        expect(h.errors[0]).toMatch(/spent stream id 3/);
      });

      it('ignores DATA and trailers still in flight on a stream it reset', async () => {
        // The server answers before the client has ended its side: that
        // stream is reset with NO_ERROR, and what the client already sent
        // must not cost it the connection (§5.1, closed state).
        const h = await serve((stream) => {
          stream.respond(encodeHeaders([[':status', '200']]));
          stream.end(encodeHeaders([['grpc-status', '0']]));
          return { onData: () => {}, onEnd: () => {}, onReset: () => {} };
        });
        const c = rawClient(h);
        c.sock.write(frame(1, 0x4, 1, encodeHeaders(REQ)));
        await c.until(() => c.frames.some((f) => f.type === 3 && f.id === 1));
        c.sock.write(
          Buffer.concat([
            frame(0, 0, 1, Buffer.from('in flight')),
            frame(1, 0x4 | 0x1, 1, encodeHeaders([['x-t', '1']])),
            frame(1, 0x4 | 0x1, 3, encodeHeaders(REQ)),
          ]),
        );
        await c.until(() => c.frames.some((f) => f.type === 1 && f.id === 3));
        // Only the NO_ERROR reset of stream 1; nothing for what followed it.
        expect(c.frames.filter((f) => f.type === 3).map((f) => f.payload.readUInt32BE(0))).toEqual([
          ErrorCode.NO_ERROR,
        ]);
        expect(c.frames.some((f) => f.type === 7)).toBe(false);
        expect(h.errors).toEqual([]);
        c.sock.destroy();
      });
    });

    it('stops reading from a peer that does not read its answers', async () => {
      const h = await serve(echo, undefined, {
        maxUnsentBytes: 64 * 1024,
        maxQueuedControlAnswers: Number.POSITIVE_INFINITY,
      });
      const sock = net.connect(h.port, '127.0.0.1');
      sock.on('error', () => {});
      sock.pause(); // never read
      // 5.1 MB of PING ACKs: more than the kernel can hold for a peer that does not read
      // (our send buffer grows to tcp_wmem's 4 MiB at most; the peer's receive window stays
      // small), so some must wait in the socket's writable queue, whatever the timing.
      const pings = Array.from({ length: 300_000 }, () => frame(6, 0, 0, Buffer.alloc(8)));
      sock.write(Buffer.concat([Buffer.from(PREFACE, 'latin1'), SETTINGS, ...pings]));
      for (let i = 0; i < 400 && !h.conns[0]?.paused; i++)
        await new Promise((r) => setTimeout(r, 5));
      expect(h.conns[0]?.paused).toBe(true);
      sock.resume(); // now read: the server drains and reads again
      for (let i = 0; i < 400 && h.conns[0]?.paused; i++)
        await new Promise((r) => setTimeout(r, 5));
      expect(h.conns[0]?.paused).toBe(false);
      sock.destroy();
    });
  });
}
