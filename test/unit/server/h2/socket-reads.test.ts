/**
 * readIntoOwnBuffer on real loopback sockets (plain TCP and TLS): every byte
 * arrives once, in order, in buffers that stay valid after later reads.
 */
import net from 'node:net';
import tls from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import {
  READ_BUFFER_BYTES,
  readBufferCounts,
  readIntoOwnBuffer,
} from '../../../../src/server/h2/socket-reads.js';
import { selfSignedCert } from '../../../../src/server/tls.js';
import { mulberry32 } from '../../../support/random.js';

const closers: Array<() => void> = [];
afterEach(() => {
  for (const c of closers.splice(0)) c();
});

interface Received {
  switched: boolean;
  chunks: Buffer[];
  ended: Promise<void>;
  socket: net.Socket;
}

type Accept = (onSocket: (s: net.Socket) => void) => Promise<{ connect(): net.Socket }>;

const plain: Accept = async (onSocket) => {
  const server = net.createServer(onSocket);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  closers.push(() => server.close());
  const port = (server.address() as net.AddressInfo).port;
  return { connect: () => net.connect(port, '127.0.0.1') };
};

const secure: Accept = async (onSocket) => {
  const { cert, key } = await selfSignedCert();
  const server = tls.createServer({ cert, key }, onSocket);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  closers.push(() => server.close());
  const port = (server.address() as net.AddressInfo).port;
  return {
    connect: () => tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false }),
  };
};

/** A server that switches each accepted socket, and a client connected to it. */
async function pair(
  accept: Accept,
  before?: (s: net.Socket) => void,
): Promise<{ client: net.Socket; server: Promise<Received> }> {
  let resolve: (r: Received) => void = () => {};
  const server = new Promise<Received>((r) => {
    resolve = r;
  });
  const { connect } = await accept((socket) => {
    closers.push(() => socket.destroy());
    socket.on('error', () => {});
    const start = (): void => {
      const chunks: Buffer[] = [];
      const ended = new Promise<void>((r) => socket.once('end', () => r()));
      const switched = readIntoOwnBuffer(socket, (b) => chunks.push(b));
      if (!switched) socket.on('data', (b: Buffer) => chunks.push(b));
      resolve({ switched, chunks, ended, socket });
    };
    if (before) {
      before(socket);
      socket.once('readable', () => {
        socket.removeAllListeners('readable');
        start();
      });
    } else {
      start();
    }
  });
  const client = connect();
  closers.push(() => client.destroy());
  client.on('error', () => {});
  return { client, server };
}

function payload(seed: number, total: number): Buffer[] {
  const rnd = mulberry32(seed);
  const parts: Buffer[] = [];
  let left = total;
  while (left > 0) {
    // 1 B to ~3 read buffers: small reads, reads that fill the buffer, reads split across it.
    const n = Math.min(left, 1 + Math.floor(rnd() ** 3 * READ_BUFFER_BYTES * 3));
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = Math.floor(rnd() * 256);
    parts.push(b);
    left -= n;
  }
  return parts;
}

async function writeAll(client: net.Socket, parts: Buffer[]): Promise<void> {
  for (const p of parts) {
    if (!client.write(p)) await new Promise((r) => client.once('drain', r));
  }
  client.end();
}

describe.each([
  ['TCP', plain],
  ['TLS', secure],
] as const)('readIntoOwnBuffer over %s', (_name, accept) => {
  it('delivers every byte once, in order, in buffers later reads do not overwrite', async () => {
    const { client, server } = await pair(accept);
    const parts = payload(7, 4 * 1024 * 1024);
    await writeAll(client, parts);
    const r = await server;
    await r.ended;
    expect(r.switched).toBe(true);
    // Kept as delivered: a buffer aliasing the reused one would now hold a later read.
    expect(Buffer.concat(r.chunks).equals(Buffer.concat(parts))).toBe(true);
    expect(r.chunks.length).toBeGreaterThan(1);
  });

  it('stops delivering while paused and resumes where it left off', async () => {
    const { client, server } = await pair(accept);
    const first = Buffer.from('first;');
    client.write(first);
    const r = await server;
    while (r.chunks.length === 0) await new Promise((x) => setImmediate(x));
    r.socket.pause();
    const seen = Buffer.concat(r.chunks).length;
    const rest = payload(11, 512 * 1024);
    // Written into the kernel (the client's callback), then a few turns of our loop.
    await new Promise<void>((x) => client.write(Buffer.concat(rest), () => x()));
    for (let i = 0; i < 20; i++) await new Promise((x) => setImmediate(x));
    expect(Buffer.concat(r.chunks).length).toBe(seen);
    r.socket.resume();
    client.end();
    await r.ended;
    expect(Buffer.concat(r.chunks).equals(Buffer.concat([first, ...rest]))).toBe(true);
  });

  it("gives a closed socket's read buffer to the next socket, which still reads every byte intact", async () => {
    const first = await pair(accept);
    const firstParts = payload(5, 300 * 1024);
    await writeAll(first.client, firstParts);
    const r1 = await first.server;
    await r1.ended;
    r1.socket.destroy();
    await new Promise((x) => r1.socket.once('close', x));
    const before = readBufferCounts();
    expect(before.spare).toBeGreaterThan(0);
    const second = await pair(accept);
    const parts = payload(9, 1024 * 1024);
    await writeAll(second.client, parts);
    const r2 = await second.server;
    await r2.ended;
    expect(r2.switched).toBe(true);
    expect(readBufferCounts()).toMatchObject({
      reused: before.reused + 1,
      allocated: before.allocated,
    });
    expect(Buffer.concat(r2.chunks).equals(Buffer.concat(parts))).toBe(true);
    // What the first socket was handed is its own: reading into its old buffer changed none of it.
    expect(Buffer.concat(r1.chunks).equals(Buffer.concat(firstParts))).toBe(true);
  });

  it('delivers first what the socket had buffered before the switch', async () => {
    const { client, server } = await pair(accept, () => {});
    const parts = payload(3, 256 * 1024);
    await writeAll(client, parts);
    const r = await server;
    await r.ended;
    expect(r.switched).toBe(true);
    expect(Buffer.concat(r.chunks).equals(Buffer.concat(parts))).toBe(true);
  });
});

describe('readIntoOwnBuffer refusals', () => {
  it('leaves a socket that someone already reads alone', async () => {
    const { client, server } = await pair(plain, (s) => s.on('data', () => {}));
    client.end('x');
    const r = await server;
    expect(r.switched).toBe(false);
  });

  it('refuses a stream that is not a socket with a handle', () => {
    const s = new net.Socket();
    expect(readIntoOwnBuffer(s, () => {})).toBe(false);
    s.destroy();
  });
});
