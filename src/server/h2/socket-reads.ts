/**
 * Reads of an accepted socket into one buffer of its own, reused for every
 * read (adapter: node:net).
 *
 * Why: a socket read the usual way costs, per read, a 64 KiB allocation that
 * libuv fills and Node shrinks into a new ArrayBuffer (which young-generation
 * GC must then free), a Buffer, and the Readable machinery (`push`, a
 * `maybeReadMore` tick, the 'data' event). Envoy sends an EPP 2–3 reads per
 * request. Node offers the reused-buffer mode (`onread`) only to sockets it is
 * asked to create; this applies it to one a server created.
 *
 * Contract: `readIntoOwnBuffer(socket, deliver)` either switches the socket
 * and returns true — from then on `deliver` gets every byte read, in order,
 * each time in a fresh Buffer that the caller may keep (bytes already
 * buffered by the socket come first, before it returns) — or changes nothing
 * and returns false (then read 'data' as usual). End of stream, errors,
 * 'close', `pause()` and `resume()` keep working: net.Socket implements them
 * for this mode.
 * Failure modes: it relies on net.Socket's private state (the `kBuffer`,
 * `kBufferCb`, `kBufferGen` symbol properties every Socket has and the
 * handle's `useUserBuffer`); when a Node release changes them, it returns
 * false and nothing is different. Never throws.
 */
import type { Socket } from 'node:net';

/** The read buffer per connection: what libuv suggests for a read. */
export const READ_BUFFER_BYTES = 64 * 1024;
/**
 * Read buffers of closed sockets kept for the next ones (4 MiB at most): a
 * gateway that opens a connection per request (NGINX Gateway Fabric's shim)
 * otherwise leaves 64 KiB of external memory per request for a full GC.
 */
const MAX_SPARE_BUFFERS = 64;
const spare: Buffer[] = [];
const counts = { allocated: 0, reused: 0 };

/** Read buffers made and taken back from closed sockets so far (tests, diagnostics). */
export function readBufferCounts(): { allocated: number; reused: number; spare: number } {
  return { ...counts, spare: spare.length };
}

interface OnreadSymbols {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

interface UserBufferHandle {
  useUserBuffer(buffer: Uint8Array): void;
}

type OnreadCallback = (nread: number, buffer: Buffer) => boolean;

/** Node's module-level symbols: found on the first socket, the same on every other. */
let symbols: OnreadSymbols | undefined;

function onreadSymbols(socket: Socket): OnreadSymbols | undefined {
  if (symbols !== undefined) return symbols;
  const find = (name: string): symbol | undefined =>
    Object.getOwnPropertySymbols(socket).find((s) => s.description === name);
  const buffer = find('kBuffer');
  const callback = find('kBufferCb');
  const generator = find('kBufferGen');
  if (buffer === undefined || callback === undefined || generator === undefined) return undefined;
  symbols = { buffer, callback, generator };
  return symbols;
}

export function readIntoOwnBuffer(socket: Socket, deliver: (bytes: Buffer) => void): boolean {
  if (!switchReads(socket, deliver)) return false;
  // Bytes the socket read before the switch (a TLS socket may have some).
  for (let b = socket.read() as Buffer | null; b !== null; b = socket.read() as Buffer | null) {
    deliver(b);
  }
  return true;
}

function switchReads(socket: Socket, deliver: (bytes: Buffer) => void): boolean {
  try {
    const state = socket as unknown as Record<symbol, unknown> & { _handle?: unknown };
    const handle = state._handle as Partial<UserBufferHandle> | null | undefined;
    if (typeof handle?.useUserBuffer !== 'function') return false;
    const sym = onreadSymbols(socket);
    // Already in this mode (someone else's buffer), or a generator we would bypass.
    if (sym === undefined || state[sym.buffer] != null || state[sym.generator] != null) {
      return false;
    }
    if (socket.listenerCount('data') > 0 || socket.readableFlowing === true) return false;
    let buffer = spare.pop();
    if (buffer) counts.reused++;
    else {
      buffer = Buffer.allocUnsafe(READ_BUFFER_BYTES);
      counts.allocated++;
    }
    const own = buffer;
    // Once closed, the handle reads no more: the buffer may serve another socket.
    socket.once('close', () => {
      if (spare.length < MAX_SPARE_BUFFERS) spare.push(own);
    });
    const onRead: OnreadCallback = (nread, into) => {
      // The buffer is reused by the next read: hand out a copy (a pool slice
      // below 4 KiB, so small reads make no ArrayBuffer at all).
      const bytes = Buffer.allocUnsafe(nread);
      into.copy(bytes, 0, 0, nread);
      deliver(bytes);
      return true;
    };
    // Reads arrive in later ticks, so the handle and the socket switch together.
    handle.useUserBuffer(buffer);
    state[sym.buffer] = buffer;
    state[sym.callback] = onRead;
    return true;
  } catch {
    return false;
  }
}
