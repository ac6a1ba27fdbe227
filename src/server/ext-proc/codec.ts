/**
 * A hand-written protobuf codec for the ext_proc messages kv-epp exchanges,
 * used by the direct transport (h2-transport.ts) instead of protobufjs
 * (`fromObject` + `encode` + a frame copy per answer, `decode` + `toObject`
 * per request: a quarter of kv-epp's allocations at a few thousand req/s).
 *
 * Contract (test/unit/server/codec.test.ts compares against proto-loader):
 * - `encodeResponseFrame(msg)` = the 5-byte gRPC prefix + the same bytes
 *   protobufjs writes for `msg` (a field is written when it is present and
 *   not null, in field-number order; map entries in key insertion order).
 *   Only the fields in messages.ts's ProcessingResponse shapes are written.
 * - `decodeRequest(bytes)` = what proto-loader's `requestDeserialize` gives
 *   (keepCase, oneof names, no defaults, bytes as Buffer views of the input)
 *   for the fields in messages.ts's ProcessingRequest; other fields
 *   (`attributes`, future ones) are skipped, and so are the metadata
 *   namespaces kv-epp does not read (all but `envoy.lb` and
 *   `envoy.lb.subset_hint`). Malformed input throws; so does a message that
 *   would decode into more than MAX_DECODED_ENTRIES header entries and
 *   metadata values (each ~100 bytes of heap for ~2 bytes of wire: a 16 MiB
 *   message made ~900 MB of objects).
 */
import type {
  BodyMutation,
  CommonResponse,
  HeaderMap,
  HeaderMutation,
  HeaderValue,
  HeaderValueOption,
  HttpBody,
  HttpHeaders,
  HttpTrailers,
  ImmediateResponse,
  Metadata,
  ProcessingMode,
  ProcessingRequest,
  ProcessingResponse,
  ProtocolConfiguration,
  ProtoStruct,
  ProtoValue,
  RequestKind,
} from './messages.js';
import { DESTINATION_ENDPOINT_NAMESPACE, SUBSET_HINT_NAMESPACE } from './messages.js';

// ---------------------------------------------------------------- sizes

const utf8Length = (s: string): number => Buffer.byteLength(s, 'utf8');

/** `bytes` payloads this large are written as their own frame part, not copied. */
const DEFER_BYTES = 16 * 1024;

function varintSize(v: number): number {
  if (v < 0) return 10; // negative int32/enum: sign-extended to 64 bits
  if (v < 0x80) return 1;
  if (v < 0x4000) return 2;
  if (v < 0x200000) return 3;
  if (v < 0x10000000) return 4;
  return 5;
}

/** Tag + length prefix + payload of a length-delimited field (tags here are all one byte). */
const lenField = (n: number): number => 1 + varintSize(n) + n;

/**
 * Sizes are computed once per message and kept here in visit order, so the
 * write pass does not recompute nested sizes (the same order is replayed).
 */
class Sizes {
  list: number[] = [];
  at = 0;
  /** Payload bytes of large `bytes` fields, written as their own parts (not copied). */
  deferred = 0;
  bytes(n: number): number {
    if (n >= DEFER_BYTES) this.deferred += n;
    return lenField(n);
  }
  push(n: number): number {
    this.list.push(n);
    return n;
  }
  next(): number {
    return this.list[this.at++] as number;
  }
}

function sizeHeaderValue(h: HeaderValue, s: Sizes): number {
  const slot = s.list.length;
  s.push(0);
  let n = 0;
  if (h.key != null) n += lenField(utf8Length(h.key));
  if (h.value != null) n += lenField(utf8Length(h.value));
  if (h.raw_value != null) n += s.bytes(h.raw_value.length);
  s.list[slot] = n;
  return n;
}

function sizeHeaderValueOption(o: HeaderValueOption, s: Sizes): number {
  const slot = s.list.length;
  s.push(0);
  let n = 0;
  if (o.header != null) n += lenField(sizeHeaderValue(o.header, s));
  if (o.append_action != null) n += 1 + varintSize(o.append_action);
  s.list[slot] = n;
  return n;
}

function sizeHeaderMutation(m: HeaderMutation, s: Sizes): number {
  const slot = s.list.length;
  s.push(0);
  let n = 0;
  if (m.set_headers) for (const o of m.set_headers) n += lenField(sizeHeaderValueOption(o, s));
  if (m.remove_headers) for (const r of m.remove_headers) n += lenField(utf8Length(r));
  s.list[slot] = n;
  return n;
}

function sizeBodyMutation(b: BodyMutation, s: Sizes): number {
  const slot = s.list.length;
  s.push(0);
  let n = 0;
  if (b.body != null) n += s.bytes(b.body.length);
  if (b.clear_body != null) n += 2;
  if (b.streamed_response != null) {
    const r = b.streamed_response;
    let m = 0;
    if (r.body != null) m += s.bytes(r.body.length);
    if (r.end_of_stream != null) m += 2;
    s.push(m);
    n += lenField(m);
  }
  s.list[slot] = n;
  return n;
}

function sizeCommon(c: CommonResponse, s: Sizes): number {
  const slot = s.list.length;
  s.push(0);
  let n = 0;
  if (c.status != null) n += 1 + varintSize(c.status);
  if (c.header_mutation != null) n += lenField(sizeHeaderMutation(c.header_mutation, s));
  if (c.body_mutation != null) n += lenField(sizeBodyMutation(c.body_mutation, s));
  if (c.clear_route_cache != null) n += 2;
  s.list[slot] = n;
  return n;
}

/** HeadersResponse / BodyResponse: `{response?: CommonResponse}`. */
function sizeWrapped(w: { response?: CommonResponse }, s: Sizes): number {
  const slot = s.list.length;
  s.push(0);
  const n = w.response != null ? lenField(sizeCommon(w.response, s)) : 0;
  s.list[slot] = n;
  return n;
}

function sizeValue(v: ProtoValue, s: Sizes): number {
  const slot = s.list.length;
  s.push(0);
  let n = 0;
  if (v.nullValue != null) n += 1 + varintSize(v.nullValue);
  if (v.numberValue != null) n += 9;
  if (v.stringValue != null) n += lenField(utf8Length(v.stringValue));
  if (v.boolValue != null) n += 2;
  if (v.structValue != null) n += lenField(sizeStruct(v.structValue, s));
  if (v.listValue != null) {
    const lslot = s.list.length;
    s.push(0);
    let m = 0;
    if (v.listValue.values) for (const x of v.listValue.values) m += lenField(sizeValue(x, s));
    s.list[lslot] = m;
    n += lenField(m);
  }
  s.list[slot] = n;
  return n;
}

function sizeStruct(st: ProtoStruct, s: Sizes): number {
  const slot = s.list.length;
  s.push(0);
  let n = 0;
  if (st.fields) {
    for (const k of Object.keys(st.fields)) {
      const eslot = s.list.length;
      s.push(0);
      const e = lenField(utf8Length(k)) + lenField(sizeValue(st.fields[k] as ProtoValue, s));
      s.list[eslot] = e;
      n += lenField(e);
    }
  }
  s.list[slot] = n;
  return n;
}

function sizeImmediate(r: ImmediateResponse, s: Sizes): number {
  const slot = s.list.length;
  s.push(0);
  let n = 0;
  if (r.status != null) {
    const m = r.status.code != null ? 1 + varintSize(r.status.code) : 0;
    s.push(m);
    n += lenField(m);
  }
  if (r.headers != null) n += lenField(sizeHeaderMutation(r.headers, s));
  if (r.body != null) n += s.bytes(r.body.length);
  if (r.details != null) n += lenField(utf8Length(r.details));
  s.list[slot] = n;
  return n;
}

function sizeResponse(m: ProcessingResponse, s: Sizes): number {
  let n = 0;
  if (m.request_headers != null) n += lenField(sizeWrapped(m.request_headers, s));
  if (m.response_headers != null) n += lenField(sizeWrapped(m.response_headers, s));
  if (m.request_body != null) n += lenField(sizeWrapped(m.request_body, s));
  if (m.response_body != null) n += lenField(sizeWrapped(m.response_body, s));
  for (const t of [m.request_trailers, m.response_trailers]) {
    if (t == null) continue;
    const slot = s.list.length;
    s.push(0);
    const x = t.header_mutation != null ? lenField(sizeHeaderMutation(t.header_mutation, s)) : 0;
    s.list[slot] = x;
    n += lenField(x);
  }
  if (m.immediate_response != null) n += lenField(sizeImmediate(m.immediate_response, s));
  if (m.dynamic_metadata != null) n += lenField(sizeStruct(m.dynamic_metadata, s));
  if (m.mode_override != null) n += lenField(s.push(sizeMode(m.mode_override)));
  return n;
}

/** ProcessingMode's six enum fields (1–6), in field order. */
function modeFields(m: ProcessingMode): Array<number | undefined> {
  return [
    m.request_header_mode,
    m.response_header_mode,
    m.request_body_mode,
    m.response_body_mode,
    m.request_trailer_mode,
    m.response_trailer_mode,
  ];
}

function sizeMode(m: ProcessingMode): number {
  let n = 0;
  for (const v of modeFields(m)) if (v != null) n += 1 + varintSize(v);
  return n;
}

// ---------------------------------------------------------------- writing

class Out {
  pos: number;
  /** Finished parts: slices of `buf` and deferred payloads, in wire order. */
  readonly parts: Buffer[] = [];
  private partStart = 0;
  constructor(
    readonly buf: Buffer,
    start: number,
    readonly sizes: Sizes,
  ) {
    this.pos = start;
  }
  /** Everything written, as parts (one when nothing was deferred). */
  finish(): Buffer[] {
    if (this.pos > this.partStart || this.parts.length === 0) {
      this.parts.push(this.buf.subarray(this.partStart, this.pos));
    }
    return this.parts;
  }
  byte(b: number): void {
    this.buf[this.pos++] = b;
  }
  varint(v: number): void {
    if (v < 0) {
      // Sign-extended 64-bit two's complement, as protobufjs writes negative int32.
      let lo = v >>> 0;
      let hi = 0xffffffff;
      for (let i = 0; i < 9; i++) {
        this.byte((lo & 0x7f) | 0x80);
        lo = ((lo >>> 7) | (hi << 25)) >>> 0;
        hi >>>= 7;
      }
      this.byte(1);
      return;
    }
    while (v >= 0x80) {
      this.byte((v & 0x7f) | 0x80);
      v = Math.floor(v / 128);
    }
    this.byte(v);
  }
  /** A length-delimited field whose length is the next recorded size. */
  open(tag: number): void {
    this.byte(tag);
    this.varint(this.sizes.next());
  }
  bytes(tag: number, b: Uint8Array): void {
    this.byte(tag);
    this.varint(b.length);
    if (b.length >= DEFER_BYTES) {
      // A large payload is its own part: referenced, not copied.
      this.parts.push(this.buf.subarray(this.partStart, this.pos));
      this.parts.push(Buffer.from(b.buffer, b.byteOffset, b.length));
      this.partStart = this.pos;
      return;
    }
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
  string(tag: number, s: string): void {
    this.byte(tag);
    const n = utf8Length(s);
    this.varint(n);
    this.buf.write(s, this.pos, n, 'utf8');
    this.pos += n;
  }
  bool(tag: number, b: boolean): void {
    this.byte(tag);
    this.byte(b ? 1 : 0);
  }
}

function writeHeaderValue(h: HeaderValue, o: Out): void {
  if (h.key != null) o.string(0x0a, h.key);
  if (h.value != null) o.string(0x12, h.value);
  if (h.raw_value != null) o.bytes(0x1a, h.raw_value);
}

function writeHeaderMutation(m: HeaderMutation, o: Out): void {
  if (m.set_headers) {
    for (const h of m.set_headers) {
      o.open(0x0a);
      if (h.header != null) {
        o.open(0x0a);
        writeHeaderValue(h.header, o);
      }
      if (h.append_action != null) {
        o.byte(0x18);
        o.varint(h.append_action);
      }
    }
  }
  if (m.remove_headers) for (const r of m.remove_headers) o.string(0x12, r);
}

function writeBodyMutation(b: BodyMutation, o: Out): void {
  if (b.body != null) o.bytes(0x0a, b.body);
  if (b.clear_body != null) o.bool(0x10, b.clear_body);
  if (b.streamed_response != null) {
    const r = b.streamed_response;
    o.open(0x1a);
    if (r.body != null) o.bytes(0x0a, r.body);
    if (r.end_of_stream != null) o.bool(0x10, r.end_of_stream);
  }
}

function writeCommon(c: CommonResponse, o: Out): void {
  if (c.status != null) {
    o.byte(0x08);
    o.varint(c.status);
  }
  if (c.header_mutation != null) {
    o.open(0x12);
    writeHeaderMutation(c.header_mutation, o);
  }
  if (c.body_mutation != null) {
    o.open(0x1a);
    writeBodyMutation(c.body_mutation, o);
  }
  if (c.clear_route_cache != null) o.bool(0x28, c.clear_route_cache);
}

function writeWrapped(tag: number, w: { response?: CommonResponse }, o: Out): void {
  o.open(tag);
  if (w.response != null) {
    o.open(0x0a);
    writeCommon(w.response, o);
  }
}

function writeValue(v: ProtoValue, o: Out): void {
  if (v.nullValue != null) {
    o.byte(0x08);
    o.varint(v.nullValue);
  }
  if (v.numberValue != null) {
    o.byte(0x11);
    o.buf.writeDoubleLE(v.numberValue, o.pos);
    o.pos += 8;
  }
  if (v.stringValue != null) o.string(0x1a, v.stringValue);
  if (v.boolValue != null) o.bool(0x20, v.boolValue);
  if (v.structValue != null) {
    o.open(0x2a);
    writeStruct(v.structValue, o);
  }
  if (v.listValue != null) {
    o.open(0x32);
    if (v.listValue.values) {
      for (const x of v.listValue.values) {
        o.open(0x0a);
        writeValue(x, o);
      }
    }
  }
}

function writeStruct(st: ProtoStruct, o: Out): void {
  if (!st.fields) return;
  for (const k of Object.keys(st.fields)) {
    o.open(0x0a);
    o.string(0x0a, k);
    o.open(0x12);
    writeValue(st.fields[k] as ProtoValue, o);
  }
}

function writeImmediate(r: ImmediateResponse, o: Out): void {
  if (r.status != null) {
    o.open(0x0a);
    if (r.status.code != null) {
      o.byte(0x08);
      o.varint(r.status.code);
    }
  }
  if (r.headers != null) {
    o.open(0x12);
    writeHeaderMutation(r.headers, o);
  }
  if (r.body != null) o.bytes(0x1a, r.body);
  if (r.details != null) o.string(0x2a, r.details);
}

function writeResponse(m: ProcessingResponse, o: Out): void {
  if (m.request_headers != null) writeWrapped(0x0a, m.request_headers, o);
  if (m.response_headers != null) writeWrapped(0x12, m.response_headers, o);
  if (m.request_body != null) writeWrapped(0x1a, m.request_body, o);
  if (m.response_body != null) writeWrapped(0x22, m.response_body, o);
  const trailers: Array<[number, typeof m.request_trailers]> = [
    [0x2a, m.request_trailers],
    [0x32, m.response_trailers],
  ];
  for (const [tag, t] of trailers) {
    if (t == null) continue;
    o.open(tag);
    if (t.header_mutation != null) {
      o.open(0x0a);
      writeHeaderMutation(t.header_mutation, o);
    }
  }
  if (m.immediate_response != null) {
    o.open(0x3a);
    writeImmediate(m.immediate_response, o);
  }
  if (m.dynamic_metadata != null) {
    o.open(0x42);
    writeStruct(m.dynamic_metadata, o);
  }
  if (m.mode_override != null) {
    o.open(0x4a);
    modeFields(m.mode_override).forEach((v, i) => {
      if (v == null) return;
      o.byte((i + 1) << 3);
      o.varint(v);
    });
  }
}

/**
 * The gRPC frame (uncompressed flag, u32 BE length, message) of `msg`, as
 * parts to write in order: `bytes` payloads of at least DEFER_BYTES (body
 * chunks) are views of the caller's arrays, not copies, so they must not
 * change until written.
 */
export function encodeResponseFrameParts(msg: ProcessingResponse): Buffer[] {
  const sizes = new Sizes();
  const n = sizeResponse(msg, sizes);
  const buf = Buffer.allocUnsafe(5 + n - sizes.deferred);
  buf[0] = 0;
  buf.writeUInt32BE(n, 1);
  const o = new Out(buf, 5, sizes);
  writeResponse(msg, o);
  if (o.pos !== buf.length) {
    throw new Error(`ext_proc encoder wrote ${o.pos - 5} bytes for a ${n}-byte message`);
  }
  return o.finish();
}

/** `encodeResponseFrameParts` as one buffer. */
export function encodeResponseFrame(msg: ProcessingResponse): Buffer {
  const parts = encodeResponseFrameParts(msg);
  return parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts);
}

// ---------------------------------------------------------------- reading

class In {
  pos: number;
  constructor(
    readonly buf: Buffer,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }
  get more(): boolean {
    return this.pos < this.end;
  }
  varint(): number {
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new RangeError('truncated varint');
      const b = this.buf[this.pos++] as number;
      if (i < 7) v += (b & 0x7f) * mul;
      mul *= 128;
      if (b < 0x80) return v;
    }
    throw new RangeError('varint too long');
  }
  /** An int32/enum varint (the low 32 bits, signed). */
  int32(): number {
    const start = this.pos;
    let lo = 0;
    let shift = 0;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new RangeError('truncated varint');
      const b = this.buf[this.pos++] as number;
      if (shift < 32) lo |= (b & 0x7f) << shift;
      shift += 7;
      if (b < 0x80) return lo | 0;
    }
    this.pos = start;
    throw new RangeError('varint too long');
  }
  bool(): boolean {
    return this.varint() !== 0;
  }
  /** End of the payload `open` last found. */
  private payloadEnd = 0;
  /**
   * The start of a length-delimited payload (its end in `payloadEnd`);
   * advances past it. Two numbers without a tuple: this runs per field.
   */
  private open(): number {
    const n = this.varint();
    const start = this.pos;
    const end = start + n;
    if (end > this.end) throw new RangeError('length beyond the message');
    this.pos = end;
    this.payloadEnd = end;
    return start;
  }
  bytes(): Buffer {
    const a = this.open();
    return this.buf.subarray(a, this.payloadEnd);
  }
  string(): string {
    const a = this.open();
    return this.buf.toString('utf8', a, this.payloadEnd);
  }
  double(): number {
    if (this.pos + 8 > this.end) throw new RangeError('truncated double');
    const v = this.buf.readDoubleLE(this.pos);
    this.pos += 8;
    return v;
  }
  sub(): In {
    const a = this.open();
    return new In(this.buf, a, this.payloadEnd);
  }
  skip(wire: number): void {
    switch (wire) {
      case 0:
        this.varint();
        return;
      case 1:
        this.pos += 8;
        break;
      case 2:
        this.open();
        return;
      case 5:
        this.pos += 4;
        break;
      default:
        throw new RangeError(`invalid wire type ${wire}`);
    }
    if (this.pos > this.end) throw new RangeError('truncated field');
  }
}

function readHeaderValue(r: In): HeaderValue {
  const h: HeaderValue = {};
  while (r.more) {
    const tag = r.varint();
    switch (tag) {
      case 0x0a:
        h.key = r.string();
        break;
      case 0x12:
        h.value = r.string();
        break;
      case 0x1a:
        h.raw_value = r.bytes();
        break;
      default:
        r.skip(tag & 7);
    }
  }
  return h;
}

/** Header entries plus metadata values one message may decode into (see the contract). */
export const MAX_DECODED_ENTRIES = 200_000;
/** Entries decoded so far in the current decodeRequest (decoding is synchronous). */
let decodedEntries = 0;

function countEntry(): void {
  if (++decodedEntries > MAX_DECODED_ENTRIES) {
    throw new RangeError(
      `message holds more than ${MAX_DECODED_ENTRIES} header entries and metadata values`,
    );
  }
}

function readHeaderMap(r: In): HeaderMap {
  const m: HeaderMap = {};
  while (r.more) {
    const tag = r.varint();
    if (tag === 0x0a) {
      countEntry();
      m.headers ??= [];
      m.headers.push(readHeaderValue(r.sub()));
    } else r.skip(tag & 7);
  }
  return m;
}

function readHttpHeaders(r: In): HttpHeaders {
  const h: HttpHeaders = {};
  while (r.more) {
    const tag = r.varint();
    if (tag === 0x0a) h.headers = readHeaderMap(r.sub());
    else if (tag === 0x18) h.end_of_stream = r.bool();
    else r.skip(tag & 7);
  }
  return h;
}

function readHttpBody(r: In): HttpBody {
  const b: HttpBody = {};
  while (r.more) {
    const tag = r.varint();
    if (tag === 0x0a) b.body = r.bytes();
    else if (tag === 0x10) b.end_of_stream = r.bool();
    else r.skip(tag & 7);
  }
  return b;
}

function readHttpTrailers(r: In): HttpTrailers {
  const t: HttpTrailers = {};
  while (r.more) {
    const tag = r.varint();
    if (tag === 0x0a) t.trailers = readHeaderMap(r.sub());
    else r.skip(tag & 7);
  }
  return t;
}

function readValue(r: In): ProtoValue {
  countEntry();
  const v: ProtoValue = {};
  while (r.more) {
    const tag = r.varint();
    switch (tag) {
      case 0x08:
        v.nullValue = r.int32();
        v.kind = 'nullValue';
        break;
      case 0x11:
        v.numberValue = r.double();
        v.kind = 'numberValue';
        break;
      case 0x1a:
        v.stringValue = r.string();
        v.kind = 'stringValue';
        break;
      case 0x20:
        v.boolValue = r.bool();
        v.kind = 'boolValue';
        break;
      case 0x2a:
        v.structValue = readStruct(r.sub());
        v.kind = 'structValue';
        break;
      case 0x32: {
        const l = r.sub();
        const values: ProtoValue[] = [];
        while (l.more) {
          const t = l.varint();
          if (t === 0x0a) values.push(readValue(l.sub()));
          else l.skip(t & 7);
        }
        v.listValue = values.length > 0 ? { values } : {};
        v.kind = 'listValue';
        break;
      }
      default:
        r.skip(tag & 7);
    }
  }
  // A oneof set twice keeps the last member only (protobufjs clears the others).
  if (v.kind !== undefined) {
    for (const k of ONEOF_VALUE_KEYS) if (k !== v.kind) delete v[k];
  }
  return v;
}

const ONEOF_VALUE_KEYS = [
  'nullValue',
  'numberValue',
  'stringValue',
  'boolValue',
  'structValue',
  'listValue',
] as const;

/** A map<string, M> entry: key (1) and value (2). */
function readEntry<T>(r: In, value: (r: In) => T, empty: () => T): [string, T] {
  let k = '';
  let v: T | undefined;
  while (r.more) {
    const tag = r.varint();
    if (tag === 0x0a) k = r.string();
    else if (tag === 0x12) v = value(r.sub());
    else r.skip(tag & 7);
  }
  return [k, v ?? empty()];
}

function readStruct(r: In): ProtoStruct {
  const s: ProtoStruct = {};
  while (r.more) {
    const tag = r.varint();
    if (tag === 0x0a) {
      const [k, v] = readEntry(r.sub(), readValue, () => ({}));
      s.fields ??= {};
      s.fields[k] = v;
    } else r.skip(tag & 7);
  }
  return s;
}

/** The metadata namespaces kv-epp reads; the others are skipped undecoded. */
const READ_NAMESPACES = new Set([DESTINATION_ENDPOINT_NAMESPACE, SUBSET_HINT_NAMESPACE]);

function readMetadata(r: In): Metadata {
  const m: Metadata = {};
  while (r.more) {
    const tag = r.varint();
    if (tag === 0x0a) {
      // A map entry: the key (1) and the Struct (2), in either order.
      const e = r.sub();
      let k = '';
      let value: In | undefined;
      while (e.more) {
        const t = e.varint();
        if (t === 0x0a) k = e.string();
        else if (t === 0x12) value = e.sub();
        else e.skip(t & 7);
      }
      if (!READ_NAMESPACES.has(k)) continue;
      m.filter_metadata ??= {};
      m.filter_metadata[k] = value ? readStruct(value) : {};
    } else r.skip(tag & 7);
  }
  return m;
}

function readProtocolConfig(r: In): ProtocolConfiguration {
  const p: ProtocolConfiguration = {};
  while (r.more) {
    const tag = r.varint();
    if (tag === 0x08) p.request_body_mode = r.int32();
    else if (tag === 0x10) p.response_body_mode = r.int32();
    else if (tag === 0x18) p.send_body_without_waiting_for_header_response = r.bool();
    else r.skip(tag & 7);
  }
  return p;
}

const REQUEST_KINDS: Record<number, RequestKind> = {
  18: 'request_headers',
  26: 'response_headers',
  34: 'request_body',
  42: 'response_body',
  50: 'request_trailers',
  58: 'response_trailers',
};

/** Decodes a ProcessingRequest (`bytes` is referenced, not copied, by `body`/`raw_value`). */
export function decodeRequest(bytes: Buffer): ProcessingRequest {
  decodedEntries = 0;
  const r = new In(bytes, 0, bytes.length);
  const m: ProcessingRequest = {};
  while (r.more) {
    const tag = r.varint();
    const kind = REQUEST_KINDS[tag];
    if (kind !== undefined) {
      if (m.request !== undefined && m.request !== kind) delete m[m.request];
      m.request = kind;
      const sub = r.sub();
      if (kind === 'request_headers' || kind === 'response_headers') m[kind] = readHttpHeaders(sub);
      else if (kind === 'request_body' || kind === 'response_body') m[kind] = readHttpBody(sub);
      else m[kind] = readHttpTrailers(sub);
      continue;
    }
    switch (tag) {
      case 0x42:
        m.metadata_context = readMetadata(r.sub());
        break;
      case 0x50:
        m.observability_mode = r.bool();
        break;
      case 0x5a:
        m.protocol_config = readProtocolConfig(r.sub());
        break;
      default:
        r.skip(tag & 7);
    }
  }
  return m;
}
