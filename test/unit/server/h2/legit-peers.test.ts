/**
 * raw-h2's robustness limits against legitimate peers: a peer that reads slowly with a large
 * window is never cut off, and every stream blocked on flow control resumes after
 * INITIAL_WINDOW_SIZE shrinks and grows.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import {
  H2Connection,
  type H2Stream,
  type H2StreamEvents,
} from '../../../../src/server/h2/connection.js';
import { encodeHeaders } from '../../../../src/server/h2/hpack.js';

const PREFACE = 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n';
const frame = (type: number, flags: number, id: number, payload: Buffer): Buffer => {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(id, 5);
  return Buffer.concat([h, payload]);
};
const POST = (path: string): Buffer =>
  encodeHeaders([
    [':method', 'POST'],
    [':scheme', 'http'],
    [':path', path],
    [':authority', 'x'],
  ]);
const setting = (key: number, value: number): Buffer => {
  const b = Buffer.alloc(6);
  b.writeUInt16BE(key, 0);
  b.writeUInt32BE(value, 2);
  return b;
};
const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v, 0);
  return b;
};

/** Echo; `async` answers a little later, as kv-epp's prepare-worker pool does. */
const echo = (stream: H2Stream, async = false): H2StreamEvents => {
  const parts: Buffer[] = [];
  return {
    onData: (c) => parts.push(Buffer.from(c)),
    onEnd: () => (async ? setTimeout(answer, 20) : answer()),
    onReset: () => {},
  };
  function answer() {
    stream.respond(encodeHeaders([[':status', '200']]));
    stream.write(Buffer.concat(parts));
    stream.end(encodeHeaders([['grpc-status', '0']]));
  }
};

const closers: (() => void)[] = [];
afterEach(() => {
  for (const c of closers.splice(0)) c();
});

async function serve(extra: { maxUnsentBytes?: number } = {}, async = false) {
  const errors: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    new H2Connection(socket, {
      streamWindowBytes: 1 << 20,
      connectionWindowBytes: 64 << 20,
      open: (stream) => echo(stream, async),
      onProtocolError: (code, reason) => errors.push(`${code}:${reason}`),
      ...extra,
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  closers.push(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return { port: (server.address() as net.AddressInfo).port, errors };
}

/** Frames parsed from the server; counts END_STREAM per stream and GOAWAYs / RSTs. */
function reader(sock: net.Socket, slow?: (f: (d: Buffer) => void) => void) {
  const st = { bytes: 0, ended: new Set<number>(), goaway: -1, rst: [] as number[], dataBytes: 0 };
  let carry = Buffer.alloc(0);
  (slow ?? ((f) => sock.on('data', f)))((d: Buffer) => {
    st.bytes += d.length;
    carry = Buffer.concat([carry, d]);
    while (carry.length >= 9) {
      const len = carry.readUIntBE(0, 3);
      if (carry.length < 9 + len) break;
      const type = carry[3] as number;
      const flags = carry[4] as number;
      const id = carry.readUInt32BE(5) & 0x7fffffff;
      if (type === 0) st.dataBytes += len;
      if ((type === 0 || type === 1) && flags & 1) st.ended.add(id);
      if (type === 7) st.goaway = carry.readUInt32BE(9 + 4);
      if (type === 3) st.rst.push(carry.readUInt32BE(9));
      carry = carry.subarray(9 + len);
    }
  });
  return st;
}

function requests(n: number, body: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const id = 2 * i + 1;
    out.push(frame(1, 0x4, id, POST('/x')));
    for (let at = 0; at < body.length; at += 16_384) {
      const chunk = body.subarray(at, Math.min(at + 16_384, body.length));
      out.push(frame(0, at + 16_384 >= body.length ? 0x1 : 0, id, chunk));
    }
  }
  return out;
}

describe('raw-h2 and legitimate peers', () => {
  it('a peer that reads slowly (~1 MB/s) with a large window gets every response (not cut off)', async () => {
    // maxUnsentBytes scaled down 64x from the 64 MiB default: 1 MiB, which 10 MB of answers to a
    // slow reader pass (reading pauses; nothing is cut off).
    const h = await serve({ maxUnsentBytes: 1 << 20 }, true);
    const sock = net.connect(h.port, '127.0.0.1');
    sock.on('error', () => {});
    // The peer reads, only slowly: 16 KiB every 16 ms (~1 MB/s), pulled in paused mode.
    const st = reader(sock, (f) => {
      const tick = setInterval(() => {
        for (;;) {
          const d = sock.read(16_384) as Buffer | null;
          if (d) f(d);
          else if (sock.readableLength > 0) f(sock.read() as Buffer);
          break;
        }
      }, 16);
      closers.push(() => clearInterval(tick));
    });
    // A legal window (what a client with a large static window, or Envoy with its
    // 256 MiB defaults, advertises): 40 echoes of 250 KB = 10 MB of answers.
    sock.write(
      Buffer.concat([
        Buffer.from(PREFACE, 'latin1'),
        frame(4, 0, 0, setting(0x4, 0x7fff_ffff)),
        frame(8, 0, 0, u32(0x7fff_ffff - 65_535)),
        ...requests(40, Buffer.alloc(250_000, 0x61)),
      ]),
    );
    for (let i = 0; i < 2500 && st.ended.size < 40 && st.goaway < 0 && !sock.destroyed; i++)
      await new Promise((r) => setTimeout(r, 10));
    expect({ errors: h.errors, completed: st.ended.size }).toEqual({ errors: [], completed: 40 });
    sock.destroy();
  }, 40_000);

  for (const sameFrame of [false, true]) {
    it(`every blocked stream resumes after INITIAL_WINDOW_SIZE shrinks then grows (${sameFrame ? 'one SETTINGS frame' : 'two frames'})`, async () => {
      const h = await serve();
      const sock = net.connect(h.port, '127.0.0.1');
      sock.on('error', () => {});
      const st = reader(sock);
      // Default 65 535 windows: 6 echoes of 200 KB block on the stream windows
      // (the connection window is opened wide).
      sock.write(
        Buffer.concat([
          Buffer.from(PREFACE, 'latin1'),
          frame(4, 0, 0, Buffer.alloc(0)),
          frame(8, 0, 0, u32(0x7fff_ffff - 65_535)),
          ...requests(6, Buffer.alloc(200_000, 0x62)),
        ]),
      );
      for (let i = 0; i < 300 && st.dataBytes < 6 * 65_535; i++)
        await new Promise((r) => setTimeout(r, 10));
      expect(st.dataBytes).toBe(6 * 65_535);
      const shrink = setting(0x4, 0);
      const grow = setting(0x4, 1 << 20);
      sock.write(
        sameFrame
          ? frame(4, 0, 0, Buffer.concat([shrink, grow]))
          : Buffer.concat([frame(4, 0, 0, shrink), frame(4, 0, 0, grow)]),
      );
      for (let i = 0; i < 300 && st.ended.size < 6; i++)
        await new Promise((r) => setTimeout(r, 10));
      expect({ errors: h.errors, ended: st.ended.size, rst: st.rst }).toEqual({
        errors: [],
        ended: 6,
        rst: [],
      });
      sock.destroy();
    });
  }

  it('shrink below what is in flight, grow a little, then per-stream WINDOW_UPDATEs: all resume', async () => {
    const h = await serve();
    const sock = net.connect(h.port, '127.0.0.1');
    sock.on('error', () => {});
    const st = reader(sock);
    sock.write(
      Buffer.concat([
        Buffer.from(PREFACE, 'latin1'),
        frame(4, 0, 0, Buffer.alloc(0)),
        frame(8, 0, 0, u32(0x7fff_ffff - 65_535)),
        ...requests(4, Buffer.alloc(200_000, 0x63)),
      ]),
    );
    for (let i = 0; i < 300 && st.dataBytes < 4 * 65_535; i++)
      await new Promise((r) => setTimeout(r, 10));
    // 65 535 -> 0 -> 32 768: every window is still negative after the grow.
    sock.write(
      Buffer.concat([frame(4, 0, 0, setting(0x4, 0)), frame(4, 0, 0, setting(0x4, 32_768))]),
    );
    await new Promise((r) => setTimeout(r, 50));
    const ups = [1, 3, 5, 7].map((id) => frame(8, 0, id, u32(1 << 20)));
    sock.write(Buffer.concat(ups));
    for (let i = 0; i < 300 && st.ended.size < 4; i++) await new Promise((r) => setTimeout(r, 10));
    expect({ errors: h.errors, ended: st.ended.size }).toEqual({ errors: [], ended: 4 });
    sock.destroy();
  });
});
