/**
 * Byte formats of Dynamo 1.6.1's TCP request plane, as far as a client of the
 * worker local-indexer query needs them (docs/dynamo-request-plane.md has the
 * sources and the captured bytes). Pure functions, no I/O.
 *
 * - Request-plane frame (dynamo-runtime `pipeline/network/codec.rs`
 *   `TcpRequestMessage::encode`): `u16 BE path length, path, u16 BE headers
 *   length, headers (JSON object of strings), u32 BE payload length, payload`.
 *   The ACK that comes back on the same socket (`TcpResponseMessage`):
 *   `u32 BE length, bytes`; empty = accepted.
 * - Two-part frame (`codec/two_part.rs`): `u64 BE header length, u64 BE data
 *   length, u64 checksum (0 = unchecked), header, data`. The request payload is
 *   one of them (header = JSON `RequestControlMessage`, data = the request), and
 *   so is every frame of the response stream.
 * - Payloads: msgpack with field names (`rmp_serde::to_vec_named`) when the
 *   control message says `"payload_codec": "msgpack"`.
 */
import { WorkerQueryError } from './errors.js';

const U64_MAX = (1n << 64n) - 1n;

// ---- msgpack: the few writes the request needs ------------------------------------------------

class Writer {
  private readonly out: number[] = [];
  str(s: string): this {
    const b = Buffer.from(s, 'utf8');
    if (b.length < 32) this.out.push(0xa0 | b.length);
    else if (b.length < 256) this.out.push(0xd9, b.length);
    else throw new WorkerQueryError('invalid_argument', 'msgpack key too long');
    for (const x of b) this.out.push(x);
    return this;
  }
  mapHeader(n: number): this {
    this.out.push(0x80 | n);
    return this;
  }
  nil(): this {
    this.out.push(0xc0);
    return this;
  }
  bool(v: boolean): this {
    this.out.push(v ? 0xc3 : 0xc2);
    return this;
  }
  /** Always the 9-byte uint64 form: rmp_serde reads any integer width into u64. */
  u64(v: bigint): this {
    this.out.push(0xcf);
    for (let i = 7; i >= 0; i--) this.out.push(Number((v >> BigInt(8 * i)) & 0xffn));
    return this;
  }
  u32(v: number): this {
    this.out.push(0xce, (v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff);
    return this;
  }
  bytes(): Uint8Array {
    return Uint8Array.from(this.out);
  }
}

function checkU64(what: string, v: bigint): void {
  if (v < 0n || v > U64_MAX) throw new WorkerQueryError('invalid_argument', `${what} is not a u64`);
}

export interface QueryRequest {
  workerId: bigint;
  dpRank: number;
  /** Inclusive; null = full tree dump. */
  startEventId: bigint | null;
  /** Inclusive; validation only (the worker answers through its newest buffered event). */
  endEventId: bigint | null;
}

/**
 * `WorkerKvQueryRequest` (dynamo-kv-router 1.6.1 `indexer/types.rs`) as named
 * msgpack: `kind` is left out (serde default `Recovery`, the plain recovery
 * query); `supports_tree_dump_failed` is true, so a failed dump comes back as
 * `TreeDumpFailed` rather than a generic `Error`.
 */
export function encodeQueryRequest(r: QueryRequest): Uint8Array {
  checkU64('workerId', r.workerId);
  if (!Number.isInteger(r.dpRank) || r.dpRank < 0 || r.dpRank > 0xffff_ffff) {
    throw new WorkerQueryError('invalid_argument', 'dpRank is not a u32');
  }
  const w = new Writer().mapHeader(5);
  w.str('worker_id').u64(r.workerId);
  w.str('dp_rank').u32(r.dpRank);
  w.str('start_event_id');
  if (r.startEventId === null) w.nil();
  else {
    checkU64('startEventId', r.startEventId);
    w.u64(r.startEventId);
  }
  w.str('end_event_id');
  if (r.endEventId === null) w.nil();
  else {
    checkU64('endEventId', r.endEventId);
    w.u64(r.endEventId);
  }
  w.str('supports_tree_dump_failed').bool(true);
  return w.bytes();
}

// ---- msgpack: a scanner that keeps byte offsets ---------------------------------------------

const bad = (what: string): never => {
  throw new WorkerQueryError('protocol', `malformed msgpack response: ${what}`);
};

type Head =
  | { k: 'nil' | 'bool' | 'float' | 'ext'; next: number }
  | { k: 'int'; v: bigint; next: number }
  | { k: 'str' | 'bin'; start: number; next: number }
  | { k: 'arr' | 'map'; n: number; next: number };

/** The value header at `p` (for str/bin/ext: the whole value). */
function head(b: Uint8Array, p: number): Head {
  if (p >= b.length) return bad('truncated');
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const t = b[p] as number;
  const need = (n: number) => (p + n <= b.length ? p + n : bad('truncated'));
  const blob = (k: 'str' | 'bin', lenBytes: number): Head => {
    need(1 + lenBytes);
    const len =
      lenBytes === 1 ? v.getUint8(p + 1) : lenBytes === 2 ? v.getUint16(p + 1) : v.getUint32(p + 1);
    const start = p + 1 + lenBytes;
    return { k, start, next: need(1 + lenBytes + len) };
  };
  if (t <= 0x7f) return { k: 'int', v: BigInt(t), next: p + 1 };
  if (t <= 0x8f) return { k: 'map', n: t & 0x0f, next: p + 1 };
  if (t <= 0x9f) return { k: 'arr', n: t & 0x0f, next: p + 1 };
  if (t <= 0xbf) {
    const len = t & 0x1f;
    return { k: 'str', start: p + 1, next: need(1 + len) };
  }
  if (t >= 0xe0) return { k: 'int', v: BigInt(t - 0x100), next: p + 1 };
  switch (t) {
    case 0xc0:
      return { k: 'nil', next: p + 1 };
    case 0xc2:
    case 0xc3:
      return { k: 'bool', next: p + 1 };
    case 0xc4:
      return blob('bin', 1);
    case 0xc5:
      return blob('bin', 2);
    case 0xc6:
      return blob('bin', 4);
    case 0xc7:
    case 0xc8:
    case 0xc9: {
      const lb = t === 0xc7 ? 1 : t === 0xc8 ? 2 : 4;
      need(1 + lb);
      const len = lb === 1 ? v.getUint8(p + 1) : lb === 2 ? v.getUint16(p + 1) : v.getUint32(p + 1);
      return { k: 'ext', next: need(1 + lb + 1 + len) };
    }
    case 0xca:
      return { k: 'float', next: need(5) };
    case 0xcb:
      return { k: 'float', next: need(9) };
    case 0xcc:
      return { k: 'int', v: BigInt(v.getUint8(need(2) - 1)), next: p + 2 };
    case 0xcd:
      need(3);
      return { k: 'int', v: BigInt(v.getUint16(p + 1)), next: p + 3 };
    case 0xce:
      need(5);
      return { k: 'int', v: BigInt(v.getUint32(p + 1)), next: p + 5 };
    case 0xcf:
      need(9);
      return { k: 'int', v: v.getBigUint64(p + 1), next: p + 9 };
    case 0xd0:
      need(2);
      return { k: 'int', v: BigInt(v.getInt8(p + 1)), next: p + 2 };
    case 0xd1:
      need(3);
      return { k: 'int', v: BigInt(v.getInt16(p + 1)), next: p + 3 };
    case 0xd2:
      need(5);
      return { k: 'int', v: BigInt(v.getInt32(p + 1)), next: p + 5 };
    case 0xd3:
      need(9);
      return { k: 'int', v: v.getBigInt64(p + 1), next: p + 9 };
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
      return { k: 'ext', next: need(2 + (1 << (t - 0xd4))) };
    case 0xd9:
      return blob('str', 1);
    case 0xda:
      return blob('str', 2);
    case 0xdb:
      return blob('str', 4);
    case 0xdc:
      need(3);
      return { k: 'arr', n: v.getUint16(p + 1), next: p + 3 };
    case 0xdd:
      need(5);
      return { k: 'arr', n: v.getUint32(p + 1), next: p + 5 };
    case 0xde:
      need(3);
      return { k: 'map', n: v.getUint16(p + 1), next: p + 3 };
    case 0xdf:
      need(5);
      return { k: 'map', n: v.getUint32(p + 1), next: p + 5 };
    default:
      return bad(`reserved marker 0x${t.toString(16)}`);
  }
}

/** The offset just past the whole value at `p` (iterative: no recursion on nesting). */
function skip(b: Uint8Array, p: number): number {
  let pending = 1;
  while (pending > 0) {
    const h = head(b, p);
    pending -= 1;
    if (h.k === 'arr') pending += h.n;
    else if (h.k === 'map') pending += 2 * h.n;
    p = h.next;
  }
  return p;
}

function text(b: Uint8Array, h: Head): string | null {
  return h.k === 'str'
    ? Buffer.from(b.buffer, b.byteOffset + h.start, h.next - h.start).toString('utf8')
    : null;
}

/** Fields of the map at `p`: name -> [value start, value end). */
function mapFields(b: Uint8Array, p: number): Map<string, [number, number]> {
  const h = head(b, p);
  if (h.k !== 'map') return bad('expected a map');
  const out = new Map<string, [number, number]>();
  let q = h.next;
  for (let i = 0; i < h.n; i++) {
    const kh = head(b, q);
    const key = text(b, kh) ?? bad('non-string map key');
    const end = skip(b, kh.next);
    out.set(key, [kh.next, end]);
    q = end;
  }
  return out;
}

function u64At(b: Uint8Array, at: [number, number] | undefined, what: string): bigint {
  if (!at) return bad(`missing ${what}`);
  const h = head(b, at[0]);
  return h.k === 'int' && h.v >= 0n ? h.v : bad(`${what} is not a u64`);
}

function optU64At(b: Uint8Array, at: [number, number] | undefined, what: string): bigint | null {
  if (!at) return null;
  const h = head(b, at[0]);
  return h.k === 'nil' ? null : u64At(b, at, what);
}

function strAt(b: Uint8Array, at: [number, number] | undefined, what: string): string {
  if (!at) return bad(`missing ${what}`);
  return text(b, head(b, at[0])) ?? bad(`${what} is not a string`);
}

// ---- responses ---------------------------------------------------------------------------------

/**
 * A `WorkerKvQueryResponse`, the events left as bytes: `events` is the msgpack
 * array of `RouterEvent` maps exactly as the worker encoded it, which the event
 * applier takes with codec `dynamo` (a bare array of RouterEvents). Hashes are
 * u64 and are never decoded here.
 */
export type WorkerKvQueryResult =
  | {
      /** Buffered events with their original ids, from the requested start (or the latest all-domain clear after it) through `lastEventId`. */
      kind: 'events';
      events: Uint8Array;
      count: number;
      lastEventId: bigint;
    }
  | {
      /** The whole tree, replay-ordered, synthetic event ids 0..count-1; replaces the rank. */
      kind: 'tree_dump';
      events: Uint8Array;
      count: number;
      /** The newest real event id the dump covers: the cursor to continue from. */
      lastEventId: bigint;
      /** `all` (the only scope Dynamo's router applies), else the raw scope text. */
      resetScope: string;
    }
  | { kind: 'tree_dump_failed'; lastEventId: bigint; message: string }
  | {
      kind: 'too_new';
      requestedStart: bigint | null;
      requestedEnd: bigint | null;
      newestAvailable: bigint;
    }
  | { kind: 'invalid_range'; startId: bigint; endId: bigint };

function eventsArray(b: Uint8Array, at: [number, number] | undefined): [Uint8Array, number] {
  if (!at) return bad('missing events');
  const h = head(b, at[0]);
  if (h.k !== 'arr') return bad('events is not an array');
  return [b.subarray(at[0], at[1]), h.n];
}

/** `ResetScope`: unit variant `all` is a bare string; `Domain(..)` a one-entry map. */
function resetScopeAt(b: Uint8Array, at: [number, number] | undefined): string {
  if (!at) return 'all'; // serde default (legacy responses omit it)
  const h = head(b, at[0]);
  const s = text(b, h);
  if (s !== null) return s;
  if (h.k === 'map' && h.n === 1) return text(b, head(b, h.next)) ?? 'unknown';
  return 'unknown';
}

/**
 * Decodes one `WorkerKvQueryResponse` (externally tagged: a one-entry map
 * `{Variant: body}`). `Error(message)` throws `worker_error`; the variants
 * the plain recovery query never gets (`Status`, `StateAgentRecovery`) and
 * unknown ones throw `protocol`.
 */
export function decodeQueryResponse(b: Uint8Array): WorkerKvQueryResult {
  const h = head(b, 0);
  if (h.k !== 'map' || h.n !== 1) return bad('response is not a one-entry map');
  const kh = head(b, h.next);
  const variant = text(b, kh) ?? bad('variant is not a string');
  const body = kh.next;
  if (skip(b, body) !== b.length) bad('trailing bytes');
  switch (variant) {
    case 'Events': {
      const f = mapFields(b, body);
      const [events, count] = eventsArray(b, f.get('events'));
      return {
        kind: 'events',
        events,
        count,
        lastEventId: u64At(b, f.get('last_event_id'), 'last_event_id'),
      };
    }
    case 'TreeDump': {
      const f = mapFields(b, body);
      const [events, count] = eventsArray(b, f.get('events'));
      return {
        kind: 'tree_dump',
        events,
        count,
        lastEventId: u64At(b, f.get('last_event_id'), 'last_event_id'),
        resetScope: resetScopeAt(b, f.get('reset_scope')),
      };
    }
    case 'TreeDumpFailed': {
      const f = mapFields(b, body);
      return {
        kind: 'tree_dump_failed',
        lastEventId: u64At(b, f.get('last_event_id'), 'last_event_id'),
        message: strAt(b, f.get('message'), 'message'),
      };
    }
    case 'TooNew': {
      const f = mapFields(b, body);
      return {
        kind: 'too_new',
        requestedStart: optU64At(b, f.get('requested_start'), 'requested_start'),
        requestedEnd: optU64At(b, f.get('requested_end'), 'requested_end'),
        newestAvailable: u64At(b, f.get('newest_available'), 'newest_available'),
      };
    }
    case 'InvalidRange': {
      const f = mapFields(b, body);
      return {
        kind: 'invalid_range',
        startId: u64At(b, f.get('start_id'), 'start_id'),
        endId: u64At(b, f.get('end_id'), 'end_id'),
      };
    }
    case 'Error': {
      const msg = text(b, head(b, body)) ?? '(no message)';
      throw new WorkerQueryError('worker_error', `worker local indexer: ${msg}`);
    }
    default:
      return bad(`unexpected response variant ${variant}`);
  }
}

/**
 * One response-stream data frame: `NetworkStreamWrapper { data?, complete_final }`
 * (dynamo-runtime `pipeline/network.rs`). `data` is returned as a byte range
 * of `b`; it is absent on the final frame.
 */
export function decodeStreamItem(b: Uint8Array): {
  data: Uint8Array | null;
  completeFinal: boolean;
} {
  const f = mapFields(b, 0);
  const cf = f.get('complete_final');
  if (!cf) return bad('missing complete_final');
  const ch = head(b, cf[0]);
  if (ch.k !== 'bool') return bad('complete_final is not a bool');
  const completeFinal = b[cf[0]] === 0xc3;
  const d = f.get('data');
  const data = d && head(b, d[0]).k !== 'nil' ? b.subarray(d[0], d[1]) : null;
  return { data, completeFinal };
}

// ---- frames ------------------------------------------------------------------------------------

/** A two-part frame; checksum 0 (what release builds send; debug builds only check non-zero ones). */
export function encodeTwoPart(header: Uint8Array, data: Uint8Array): Buffer {
  const out = Buffer.alloc(24 + header.length + data.length);
  out.writeBigUInt64BE(BigInt(header.length), 0);
  out.writeBigUInt64BE(BigInt(data.length), 8);
  out.writeBigUInt64BE(0n, 16);
  out.set(header, 24);
  out.set(data, 24 + header.length);
  return out;
}

export interface TwoPart {
  header: Uint8Array;
  data: Uint8Array;
}

/**
 * Incremental two-part decoder for a byte stream. A frame's size is checked
 * against `maxFrameBytes` as soon as its 24-byte prefix is in; its bytes are
 * kept as the chunks that carried them and joined once when complete (linear
 * in the frame however it is chunked; nothing is allocated ahead of the data).
 */
export class TwoPartReader {
  private chunks: Buffer[] = [];
  private have = 0;
  /** Size of the frame at the front, once its prefix is in. */
  private total = -1;
  constructor(private readonly maxFrameBytes: number) {}

  push(chunk: Buffer): TwoPart[] {
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.have += chunk.length;
    }
    const out: TwoPart[] = [];
    for (;;) {
      if (this.total < 0) {
        if (this.have < 24) break;
        const prefix = this.peek(24);
        const hl = prefix.readBigUInt64BE(0);
        const dl = prefix.readBigUInt64BE(8);
        const total = 24n + hl + dl;
        if (total > BigInt(this.maxFrameBytes)) {
          throw new WorkerQueryError(
            'protocol',
            `response frame of ${total} bytes exceeds the limit`,
          );
        }
        this.total = Number(total);
      }
      if (this.have < this.total) break;
      const f = this.take(this.total);
      this.total = -1;
      const h = Number(f.readBigUInt64BE(0));
      out.push({ header: f.subarray(24, 24 + h), data: f.subarray(24 + h) });
    }
    return out;
  }

  /** The first `n` buffered bytes (joined only if they span chunks). */
  private peek(n: number): Buffer {
    const first = this.chunks[0] as Buffer;
    if (first.length >= n) return first.subarray(0, n);
    return Buffer.concat(this.chunks, n);
  }

  /** Removes and returns the first `n` buffered bytes. */
  private take(n: number): Buffer {
    const first = this.chunks[0] as Buffer;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
    } else {
      out = Buffer.concat(this.chunks, n);
    }
    // Drop the consumed bytes.
    let left = n;
    while (left > 0) {
      const c = this.chunks[0] as Buffer;
      if (c.length <= left) {
        this.chunks.shift();
        left -= c.length;
      } else {
        this.chunks[0] = c.subarray(left);
        left = 0;
      }
    }
    this.have -= n;
    return out;
  }
}

/** A request-plane frame: `u16 path len, path, u16 headers len, headers JSON, u32 payload len, payload`. */
export function encodeRequestFrame(
  endpointPath: string,
  headers: Record<string, string>,
  payload: Uint8Array,
): Buffer {
  const path = Buffer.from(endpointPath, 'utf8');
  const hdr = Buffer.from(JSON.stringify(headers), 'utf8');
  if (path.length > 0xffff)
    throw new WorkerQueryError('invalid_argument', 'endpoint path too long');
  if (hdr.length > 0xffff) throw new WorkerQueryError('invalid_argument', 'headers too large');
  if (payload.length > 0xffff_ffff)
    throw new WorkerQueryError('invalid_argument', 'payload too large');
  const out = Buffer.alloc(2 + path.length + 2 + hdr.length + 4 + payload.length);
  let p = out.writeUInt16BE(path.length, 0);
  p += path.copy(out, p);
  p = out.writeUInt16BE(hdr.length, p);
  p += hdr.copy(out, p);
  p = out.writeUInt32BE(payload.length, p);
  out.set(payload, p);
  return out;
}

/** Incremental reader of the request-plane ACK (`u32 BE length, bytes`). */
/** Longest ACK accepted: an empty one or a short error text. */
const MAX_ACK_BYTES = 64 * 1024;

export function readAck(buf: Buffer): { ack: Buffer; rest: Buffer } | null {
  if (buf.length < 4) return null;
  const n = buf.readUInt32BE(0);
  if (n > MAX_ACK_BYTES) throw new WorkerQueryError('protocol', `ACK of ${n} bytes`);
  if (buf.length < 4 + n) return null;
  return { ack: buf.subarray(4, 4 + n), rest: buf.subarray(4 + n) };
}

/**
 * The JSON `RequestControlMessage` header of a unary request whose response
 * stream comes back to `responseAddress` (`host:port`) under `subject`.
 * `connection_info.info` is itself a JSON string (`TcpStreamConnectionInfo`);
 * its `context` must equal `id` (the worker checks it).
 */
export function controlMessage(id: string, responseAddress: string, subject: string): Buffer {
  const info = JSON.stringify({
    address: responseAddress,
    subject,
    context: id,
    stream_type: 'response',
  });
  return Buffer.from(
    JSON.stringify({
      id,
      request_type: 'single_in',
      response_type: 'many_out',
      payload_codec: 'msgpack',
      connection_info: { transport: 'tcp_server', info },
    }),
    'utf8',
  );
}

/** `ControlMessage` JSON (`"stop"`, `"kill"`, `"sentinel"`), sent as header-only frames. */
export type ControlWord = 'stop' | 'kill' | 'sentinel';

/** Parses a header-only frame: the call-home handshake, the prologue, or a control word. */
export function headerJson(header: Uint8Array): unknown {
  try {
    return JSON.parse(
      Buffer.from(header.buffer, header.byteOffset, header.byteLength).toString('utf8'),
    );
  } catch {
    throw new WorkerQueryError('protocol', 'response-stream header is not JSON');
  }
}
