/**
 * A MessagePack reader for the JS event applier. Mirrors
 * native/core/src/events/msgpack.rs (read side only).
 *
 * Contract:
 * - `readFirst` / `readValue` validate a whole value (every nested byte,
 *   lengths, markers, nesting depth ≤ MAX_DEPTH) and return it as a tree, or
 *   `null` when the bytes are not one well-formed value;
 * - integers keep their exact value as `bigint`: non-negative ones (whatever
 *   their marker) are `>= 0n`, negative ones come only from a negative wire
 *   value; uint64 above 2^63 stays positive;
 * - strings and binaries are views into the input (no copy); UTF-8 is checked
 *   where a string is read as text (`asStr`), as `rmp_serde` does;
 * - nothing allocates from a claimed length before the bytes are known to be
 *   there: a length that runs past the buffer is an error.
 */

/** Deepest nesting accepted (as the Rust reader's `MAX_DEPTH`). */
export const MAX_DEPTH = 64;

export type Value =
  | { readonly t: 'nil' }
  | { readonly t: 'bool'; readonly v: boolean }
  /** Exact integer: `v < 0n` only for a negative wire value. */
  | { readonly t: 'int'; readonly v: bigint }
  /** f32 or f64 (only "is a number" matters to the decoders). */
  | { readonly t: 'float'; readonly v: number }
  | { readonly t: 'str'; readonly b: Uint8Array }
  | { readonly t: 'bin'; readonly b: Uint8Array }
  | { readonly t: 'arr'; readonly items: Value[] }
  /** `keys[i]` maps to `vals[i]`, in wire order (duplicates kept). */
  | { readonly t: 'map'; readonly keys: Value[]; readonly vals: Value[] }
  | { readonly t: 'ext'; readonly tag: number; readonly b: Uint8Array };

export type ArrValue = Extract<Value, { t: 'arr' }>;
export type MapValue = Extract<Value, { t: 'map' }>;

export const NIL: Value = { t: 'nil' };
const TRUE: Value = { t: 'bool', v: true };
const FALSE: Value = { t: 'bool', v: false };

const I64_MAX = (1n << 63n) - 1n;
const U32_MAX = 0xffff_ffffn;

/** Thrown inside the reader; never escapes this module. */
class Bad {}
const BAD = new Bad();

class Cursor {
  pos = 0;
  readonly view: DataView;
  constructor(readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  /** Advances past `n` bytes that must be present; returns where they start. */
  need(n: number): number {
    if (n > this.buf.length - this.pos) throw BAD;
    const at = this.pos;
    this.pos += n;
    return at;
  }

  u8(): number {
    return this.buf[this.need(1)] as number;
  }

  u16(): number {
    return this.view.getUint16(this.need(2));
  }

  u32(): number {
    return this.view.getUint32(this.need(4));
  }

  bytes(n: number): Uint8Array {
    const at = this.need(n);
    return this.buf.subarray(at, at + n);
  }
}

const int = (v: bigint): Value => ({ t: 'int', v });

function read(c: Cursor, depth: number): Value {
  const m = c.u8();
  if (m <= 0x7f) return int(BigInt(m));
  if (m <= 0x8f) return readMap(c, m & 0x0f, depth);
  if (m <= 0x9f) return readArr(c, m & 0x0f, depth);
  if (m <= 0xbf) return { t: 'str', b: c.bytes(m & 0x1f) };
  if (m >= 0xe0) return int(BigInt(m - 0x100));
  switch (m) {
    case 0xc0:
      return NIL;
    case 0xc2:
      return FALSE;
    case 0xc3:
      return TRUE;
    case 0xc4:
      return { t: 'bin', b: c.bytes(c.u8()) };
    case 0xc5:
      return { t: 'bin', b: c.bytes(c.u16()) };
    case 0xc6:
      return { t: 'bin', b: c.bytes(c.u32()) };
    case 0xc7:
      return ext(c, c.u8());
    case 0xc8:
      return ext(c, c.u16());
    case 0xc9:
      return ext(c, c.u32());
    case 0xca:
      return { t: 'float', v: c.view.getFloat32(c.need(4)) };
    case 0xcb:
      return { t: 'float', v: c.view.getFloat64(c.need(8)) };
    case 0xcc:
      return int(BigInt(c.u8()));
    case 0xcd:
      return int(BigInt(c.u16()));
    case 0xce:
      return int(BigInt(c.u32()));
    case 0xcf:
      return int(c.view.getBigUint64(c.need(8)));
    case 0xd0:
      return int(BigInt(c.view.getInt8(c.need(1))));
    case 0xd1:
      return int(BigInt(c.view.getInt16(c.need(2))));
    case 0xd2:
      return int(BigInt(c.view.getInt32(c.need(4))));
    case 0xd3:
      return int(c.view.getBigInt64(c.need(8)));
    case 0xd4:
      return ext(c, 1);
    case 0xd5:
      return ext(c, 2);
    case 0xd6:
      return ext(c, 4);
    case 0xd7:
      return ext(c, 8);
    case 0xd8:
      return ext(c, 16);
    case 0xd9:
      return { t: 'str', b: c.bytes(c.u8()) };
    case 0xda:
      return { t: 'str', b: c.bytes(c.u16()) };
    case 0xdb:
      return { t: 'str', b: c.bytes(c.u32()) };
    case 0xdc:
      return readArr(c, c.u16(), depth);
    case 0xdd:
      return readArr(c, c.u32(), depth);
    case 0xde:
      return readMap(c, c.u16(), depth);
    case 0xdf:
      return readMap(c, c.u32(), depth);
    default:
      // 0xc1: never used by the format.
      throw BAD;
  }
}

function ext(c: Cursor, n: number): Value {
  const tag = c.view.getInt8(c.need(1));
  return { t: 'ext', tag, b: c.bytes(n) };
}

// Every value takes at least one byte: a claimed length past the end of the
// buffer fails after at most `buf.length` iterations, and nothing is
// preallocated from the claimed count.
function readArr(c: Cursor, n: number, depth: number): Value {
  if (depth + 1 > MAX_DEPTH) throw BAD;
  const items: Value[] = [];
  for (let i = 0; i < n; i++) items.push(read(c, depth + 1));
  return { t: 'arr', items };
}

function readMap(c: Cursor, n: number, depth: number): Value {
  if (depth + 1 > MAX_DEPTH) throw BAD;
  const keys: Value[] = [];
  const vals: Value[] = [];
  for (let i = 0; i < n; i++) {
    keys.push(read(c, depth + 1));
    vals.push(read(c, depth + 1));
  }
  return { t: 'map', keys, vals };
}

function readAt(buf: Uint8Array): { v: Value; used: number } | null {
  const c = new Cursor(buf);
  try {
    return { v: read(c, 0), used: c.pos };
  } catch (e) {
    if (e === BAD) return null;
    throw e;
  }
}

/** Reads the value at the start of `buf`, ignoring bytes after it (`rmp_serde::from_slice`). */
export function readFirst(buf: Uint8Array): Value | null {
  return readAt(buf)?.v ?? null;
}

/** Reads exactly one value spanning the whole buffer. */
export function readValue(buf: Uint8Array): Value | null {
  const r = readAt(buf);
  return r && r.used === buf.length ? r.v : null;
}

// ---- typed access (msgpack.rs `Value::as_*`) ------------------------------------------------

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** The text of valid UTF-8 bytes, else null (Rust `str::from_utf8`). */
export function utf8Text(b: Uint8Array): string | null {
  // ASCII fast path: most keys and names.
  let ascii = true;
  for (let i = 0; i < b.length; i++) {
    if ((b[i] as number) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) return b.length <= 64 ? String.fromCharCode(...b) : utf8.decode(b);
  try {
    return utf8.decode(b);
  } catch {
    return null;
  }
}

export const isNil = (v: Value): boolean => v.t === 'nil';

/** The text of a `str` value that is valid UTF-8. */
export function asStr(v: Value): string | null {
  return v.t === 'str' ? utf8Text(v.b) : null;
}

export function asArray(v: Value): Value[] | null {
  return v.t === 'arr' ? v.items : null;
}

/** A non-negative integer. */
export function asU64(v: Value): bigint | null {
  return v.t === 'int' && v.v >= 0n ? v.v : null;
}

export function asU32(v: Value): number | null {
  return v.t === 'int' && v.v >= 0n && v.v <= U32_MAX ? Number(v.v) : null;
}

/** A signed 64-bit integer (`i64` range). */
export function asI64(v: Value): bigint | null {
  if (v.t !== 'int') return null;
  return v.v <= I64_MAX ? v.v : null;
}

/** An engine hash: unsigned, or signed and cast bitwise (`-1` is `u64::MAX`). */
export function asHash(v: Value): bigint | null {
  if (v.t !== 'int') return null;
  return v.v >= 0n ? v.v : BigInt.asUintN(64, v.v);
}

/** Any number (serde's `f64` visitor accepts integers too). */
export const isNumber = (v: Value): boolean => v.t === 'int' || v.t === 'float';

/** True when `b` holds exactly the bytes of the ASCII string `s`. */
export function bytesAre(b: Uint8Array, s: string): boolean {
  if (b.length !== s.length) return false;
  for (let i = 0; i < b.length; i++) if (b[i] !== s.charCodeAt(i)) return false;
  return true;
}
