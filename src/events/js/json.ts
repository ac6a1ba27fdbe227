/**
 * JSON bytes to the msgpack `Value` tree, with serde_json's acceptance rules
 * and exact integers. Mirrors `decode_json` in native/core/src/events/dynamo.rs,
 * which parses with `serde_json::from_slice::<serde_json::Value>` (features
 * `preserve_order`, `float_roundtrip`) and re-encodes to MessagePack before
 * reading it with the msgpack reader (nesting ≤ 64).
 *
 * Rules reproduced (serde_json 1.0.154 `de.rs` / `read.rs`):
 * - whitespace is space, tab, LF, CR only; anything but whitespace after the
 *   value is an error (no BOM skipping);
 * - numbers: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`; an integer
 *   literal in u64 range is a u64, a negative one in i64 range an i64 (`-0`
 *   is the float -0.0), anything else an f64, and an f64 that rounds to
 *   infinity is an error ("number out of range");
 * - strings: no raw control characters (< 0x20), escapes `\" \\ \/ \b \f \n
 *   \r \t \uXXXX`, surrogates must be paired, raw bytes must be UTF-8;
 * - objects: a repeated key keeps its first position and takes the last
 *   value (IndexMap insert); no trailing commas;
 * - nesting deeper than 64 containers is an error (the msgpack reader's
 *   limit; serde_json's own limit of 128 is never reached first).
 * Integers are never converted through `number`.
 */
import { MAX_DEPTH, NIL, type Value } from './msgpack.js';

class Bad {}
const BAD = new Bad();

const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);

const TRUE: Value = { t: 'bool', v: true };
const FALSE: Value = { t: 'bool', v: false };

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const encoder = new TextEncoder();

const isWs = (c: number | undefined): boolean =>
  c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
const isDigit = (c: number | undefined): boolean => c !== undefined && c >= 0x30 && c <= 0x39;

class Parser {
  pos = 0;
  constructor(readonly s: Uint8Array) {}

  ws(): void {
    while (isWs(this.s[this.pos])) this.pos++;
  }

  value(depth: number): Value {
    const c = this.s[this.pos];
    switch (c) {
      case 0x7b: // {
        return this.object(depth);
      case 0x5b: // [
        return this.array(depth);
      case 0x22: // "
        return { t: 'str', b: this.string().b };
      case 0x74: // t
        this.ident('true');
        return TRUE;
      case 0x66: // f
        this.ident('false');
        return FALSE;
      case 0x6e: // n
        this.ident('null');
        return NIL;
      default:
        if (c === 0x2d || isDigit(c)) return this.number();
        throw BAD;
    }
  }

  ident(word: string): void {
    for (let i = 0; i < word.length; i++) {
      if (this.s[this.pos + i] !== word.charCodeAt(i)) throw BAD;
    }
    this.pos += word.length;
  }

  array(depth: number): Value {
    if (depth + 1 > MAX_DEPTH) throw BAD;
    this.pos++;
    const items: Value[] = [];
    this.ws();
    if (this.s[this.pos] === 0x5d) {
      this.pos++;
      return { t: 'arr', items };
    }
    for (;;) {
      items.push(this.value(depth + 1));
      this.ws();
      const c = this.s[this.pos++];
      if (c === 0x5d) return { t: 'arr', items };
      if (c !== 0x2c) throw BAD;
      this.ws();
    }
  }

  object(depth: number): Value {
    if (depth + 1 > MAX_DEPTH) throw BAD;
    this.pos++;
    const keys: Value[] = [];
    const vals: Value[] = [];
    const at = new Map<string, number>();
    this.ws();
    if (this.s[this.pos] === 0x7d) {
      this.pos++;
      return { t: 'map', keys, vals };
    }
    for (;;) {
      if (this.s[this.pos] !== 0x22) throw BAD;
      const key = this.string();
      this.ws();
      if (this.s[this.pos++] !== 0x3a) throw BAD;
      this.ws();
      const v = this.value(depth + 1);
      const i = at.get(key.text);
      if (i === undefined) {
        at.set(key.text, keys.length);
        keys.push({ t: 'str', b: key.b });
        vals.push(v);
      } else {
        vals[i] = v;
      }
      this.ws();
      const c = this.s[this.pos++];
      if (c === 0x7d) return { t: 'map', keys, vals };
      if (c !== 0x2c) throw BAD;
      this.ws();
    }
  }

  /** A string at `pos` (its opening quote); returns its UTF-8 bytes and text. */
  string(): { b: Uint8Array; text: string } {
    const s = this.s;
    const start = ++this.pos;
    // Fast path: no escapes.
    for (;;) {
      const c = s[this.pos];
      if (c === undefined || c < 0x20) throw BAD;
      if (c === 0x22) {
        const b = s.subarray(start, this.pos++);
        return { b, text: decode(b) };
      }
      if (c === 0x5c) break;
      this.pos++;
    }
    const out: number[] = [];
    for (let i = start; i < this.pos; i++) out.push(s[i] as number);
    for (;;) {
      const c = s[this.pos++];
      if (c === undefined || c < 0x20) throw BAD;
      if (c === 0x22) break;
      if (c !== 0x5c) {
        out.push(c);
        continue;
      }
      const e = s[this.pos++];
      switch (e) {
        case 0x22:
        case 0x5c:
        case 0x2f:
          out.push(e);
          break;
        case 0x62:
          out.push(0x08);
          break;
        case 0x66:
          out.push(0x0c);
          break;
        case 0x6e:
          out.push(0x0a);
          break;
        case 0x72:
          out.push(0x0d);
          break;
        case 0x74:
          out.push(0x09);
          break;
        case 0x75:
          this.unicodeEscape(out);
          break;
        default:
          throw BAD;
      }
    }
    const b = Uint8Array.from(out);
    return { b, text: decode(b) };
  }

  hex4(): number {
    let n = 0;
    for (let i = 0; i < 4; i++) {
      const c = this.s[this.pos++];
      let d: number;
      if (c === undefined) throw BAD;
      if (c >= 0x30 && c <= 0x39) d = c - 0x30;
      else if (c >= 0x61 && c <= 0x66) d = c - 0x61 + 10;
      else if (c >= 0x41 && c <= 0x46) d = c - 0x41 + 10;
      else throw BAD;
      n = n * 16 + d;
    }
    return n;
  }

  /** `\u` was read: one code point, surrogates paired (serde_json's validate mode). */
  unicodeEscape(out: number[]): void {
    const n = this.hex4();
    let cp = n;
    if (n >= 0xdc00 && n <= 0xdfff) throw BAD;
    if (n >= 0xd800 && n <= 0xdbff) {
      if (this.s[this.pos] !== 0x5c || this.s[this.pos + 1] !== 0x75) throw BAD;
      this.pos += 2;
      const n2 = this.hex4();
      if (n2 < 0xdc00 || n2 > 0xdfff) throw BAD;
      cp = (((n - 0xd800) << 10) | (n2 - 0xdc00)) + 0x10000;
    }
    for (const byte of encoder.encode(String.fromCodePoint(cp))) out.push(byte);
  }

  number(): Value {
    const s = this.s;
    const start = this.pos;
    const negative = s[this.pos] === 0x2d;
    if (negative) this.pos++;
    const first = s[this.pos];
    if (first === 0x30) {
      this.pos++;
      if (isDigit(s[this.pos])) throw BAD;
    } else if (isDigit(first)) {
      while (isDigit(s[this.pos])) this.pos++;
    } else {
      throw BAD;
    }
    let integer = true;
    if (s[this.pos] === 0x2e) {
      integer = false;
      this.pos++;
      if (!isDigit(s[this.pos])) throw BAD;
      while (isDigit(s[this.pos])) this.pos++;
    }
    const e = s[this.pos];
    if (e === 0x65 || e === 0x45) {
      integer = false;
      this.pos++;
      const sign = s[this.pos];
      if (sign === 0x2b || sign === 0x2d) this.pos++;
      if (!isDigit(s[this.pos])) throw BAD;
      while (isDigit(s[this.pos])) this.pos++;
    }
    // Only ASCII digits, sign, '.', 'e' here. More than 20 digits is never a 64-bit integer.
    const text = utf8.decode(s.subarray(start, this.pos));
    if (integer && this.pos - start - (negative ? 1 : 0) <= 20) {
      const v = BigInt(text);
      if (!negative && v <= U64_MAX) return { t: 'int', v };
      if (negative && v !== 0n && v >= I64_MIN) return { t: 'int', v };
    }
    const f = Number(text);
    if (!Number.isFinite(f)) throw BAD;
    return { t: 'float', v: f };
  }
}

function decode(b: Uint8Array): string {
  try {
    return utf8.decode(b);
  } catch {
    throw BAD;
  }
}

/** Parses one JSON document; null when serde_json (or the msgpack re-read) would fail. */
export function parseJson(bytes: Uint8Array): Value | null {
  const p = new Parser(bytes);
  try {
    p.ws();
    const v = p.value(0);
    p.ws();
    return p.pos === bytes.length ? v : null;
  } catch (e) {
    if (e === BAD) return null;
    throw e;
  }
}
