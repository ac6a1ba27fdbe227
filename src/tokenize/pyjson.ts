/**
 * JSON with Python's data model, for reproducing what vLLM (Python) sees.
 *
 * vLLM parses request bodies with Python's `json.loads`, and chat templates print data with
 * `json.dumps(..., ensure_ascii=False)` (transformers' `tojson`). Three things JSON.parse /
 * JSON.stringify get wrong for that purpose, all handled here:
 *
 * - Key order. Python dicts keep insertion order for every key; JS objects move integer-like keys
 *   ("1", "42") to the front. Objects therefore parse to `Map<string, PyValue>` (a duplicate key
 *   keeps its first position and takes the last value, like a Python dict).
 * - int vs float. `1` and `1.0` are different Python values (`json.dumps` prints `1` / `1.0`).
 *   Integers parse to `number` (or `bigint` beyond 2^53, so they print exactly), floats to
 *   {@link PyFloat}.
 * - Python's extensions and formats: `NaN`, `Infinity`, `-Infinity` are accepted by `json.loads`;
 *   floats print with Python's `repr` (`1e-05`, `1e+16`, `1.0`).
 *
 * Pure module: no `node:*` imports.
 */

/** A Python float (a JSON number written with a fraction or an exponent, or NaN/Infinity). */
export class PyFloat {
  constructor(readonly value: number) {}
}

export type PyDict = Map<string, PyValue>;
export type PyValue = null | boolean | string | number | bigint | PyFloat | PyValue[] | PyDict;

export class PyJsonError extends Error {
  constructor(
    message: string,
    readonly position: number,
  ) {
    super(message);
    this.name = 'PyJsonError';
  }
}

export function isDict(v: PyValue | undefined): v is PyDict {
  return v instanceof Map;
}

export function isInt(v: PyValue | undefined): v is number | bigint {
  return typeof v === 'number' || typeof v === 'bigint';
}

/** Python's name for a value's type, for error messages. */
export function pyTypeName(v: PyValue | undefined): string {
  if (v === undefined) return 'missing';
  if (v === null) return 'null';
  if (typeof v === 'boolean') return 'boolean';
  if (typeof v === 'string') return 'string';
  if (typeof v === 'number' || typeof v === 'bigint') return 'integer';
  if (v instanceof PyFloat) return 'number';
  if (Array.isArray(v)) return 'array';
  return 'object';
}

// ---------------------------------------------------------------------------------------------
// Parsing (Python json.loads)
// ---------------------------------------------------------------------------------------------

/**
 * Containers nested deepest (the body object counts): serde_json's recursion
 * limit, so the native twin and this one refuse the same bodies
 * (`MAX_JSON_DEPTH` in native/core/src/tokenize/request.rs).
 */
export const MAX_JSON_DEPTH = 127;

/** Valid so far, but nested deeper than {@link MAX_JSON_DEPTH}. */
export class PyJsonTooDeep extends PyJsonError {}

/**
 * Parses JSON text like Python's `json.loads(text)` (strict mode: raw control characters in
 * strings are rejected; lone surrogate escapes are kept).
 * @throws PyJsonError
 */
export function parsePyJson(text: string): PyValue {
  const p = new Parser(text);
  p.ws();
  const v = p.value(0);
  p.ws();
  if (p.i !== text.length) p.fail('Extra data');
  return v;
}

const NUMBER_RE = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/y;

class Parser {
  i = 0;
  constructor(readonly s: string) {}

  fail(msg: string): never {
    throw new PyJsonError(`${msg} at position ${this.i}`, this.i);
  }

  ws(): void {
    const s = this.s;
    let i = this.i;
    for (;;) {
      const c = s.charCodeAt(i);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) i++;
      else break;
    }
    this.i = i;
  }

  /** Opens a container inside `depth` others. */
  enter(depth: number): void {
    if (depth >= MAX_JSON_DEPTH) {
      throw new PyJsonTooDeep(
        `nested deeper than ${MAX_JSON_DEPTH} levels at position ${this.i}`,
        this.i,
      );
    }
  }

  /** `depth`: containers open around this value. */
  value(depth: number): PyValue {
    const s = this.s;
    const c = s.charCodeAt(this.i);
    switch (c) {
      case 0x22: // "
        return this.string();
      case 0x7b: // {
        return this.object(depth);
      case 0x5b: // [
        return this.array(depth);
      case 0x6e: // n
        return this.literal('null', null);
      case 0x74: // t
        return this.literal('true', true);
      case 0x66: // f
        return this.literal('false', false);
      case 0x4e: // N
        return this.literal('NaN', new PyFloat(Number.NaN));
      case 0x49: // I
        return this.literal('Infinity', new PyFloat(Number.POSITIVE_INFINITY));
      default:
        if (c === 0x2d && s.startsWith('-Infinity', this.i)) {
          this.i += 9;
          return new PyFloat(Number.NEGATIVE_INFINITY);
        }
        if (c === 0x2d || (c >= 0x30 && c <= 0x39)) return this.number();
        return this.fail('Expecting value');
    }
  }

  literal(word: string, v: PyValue): PyValue {
    if (!this.s.startsWith(word, this.i)) this.fail('Expecting value');
    this.i += word.length;
    return v;
  }

  number(): PyValue {
    NUMBER_RE.lastIndex = this.i;
    const m = NUMBER_RE.exec(this.s);
    if (!m) return this.fail('Expecting value');
    const text = m[0];
    this.i += text.length;
    if (m[1] === undefined && m[2] === undefined) {
      const n = Number(text);
      if (Number.isSafeInteger(n)) return n === 0 ? 0 : n; // -0 is the int 0 in Python
      return BigInt(text);
    }
    return new PyFloat(Number(text));
  }

  string(): string {
    const s = this.s;
    let i = this.i + 1;
    let out = '';
    let start = i;
    for (;;) {
      const c = s.charCodeAt(i);
      if (c === 0x22) {
        out += s.slice(start, i);
        this.i = i + 1;
        return out;
      }
      if (c === 0x5c) {
        out += s.slice(start, i);
        i++;
        const e = s.charCodeAt(i);
        switch (e) {
          case 0x22:
            out += '"';
            break;
          case 0x5c:
            out += '\\';
            break;
          case 0x2f:
            out += '/';
            break;
          case 0x62:
            out += '\b';
            break;
          case 0x66:
            out += '\f';
            break;
          case 0x6e:
            out += '\n';
            break;
          case 0x72:
            out += '\r';
            break;
          case 0x74:
            out += '\t';
            break;
          case 0x75: {
            const hex = s.slice(i + 1, i + 5);
            if (!/^[0-9a-fA-F]{4}$/.test(hex)) {
              this.i = i - 1;
              this.fail('Invalid \\uXXXX escape');
            }
            out += String.fromCharCode(Number.parseInt(hex, 16));
            i += 4;
            break;
          }
          default:
            this.i = i - 1;
            this.fail('Invalid \\escape');
        }
        i++;
        start = i;
        continue;
      }
      if (c < 0x20 || Number.isNaN(c)) {
        this.i = i;
        this.fail(Number.isNaN(c) ? 'Unterminated string' : 'Invalid control character');
      }
      i++;
    }
  }

  object(depth: number): PyDict {
    this.enter(depth);
    const s = this.s;
    const m: PyDict = new Map();
    this.i++;
    this.ws();
    if (s.charCodeAt(this.i) === 0x7d) {
      this.i++;
      return m;
    }
    for (;;) {
      if (s.charCodeAt(this.i) !== 0x22)
        this.fail('Expecting property name enclosed in double quotes');
      const k = this.string();
      this.ws();
      if (s.charCodeAt(this.i) !== 0x3a) this.fail("Expecting ':' delimiter");
      this.i++;
      this.ws();
      m.set(k, this.value(depth + 1));
      this.ws();
      const c = s.charCodeAt(this.i);
      if (c === 0x2c) {
        this.i++;
        this.ws();
      } else if (c === 0x7d) {
        this.i++;
        return m;
      } else {
        this.fail("Expecting ',' delimiter");
      }
    }
  }

  array(depth: number): PyValue[] {
    this.enter(depth);
    const s = this.s;
    const a: PyValue[] = [];
    this.i++;
    this.ws();
    if (s.charCodeAt(this.i) === 0x5d) {
      this.i++;
      return a;
    }
    for (;;) {
      a.push(this.value(depth + 1));
      this.ws();
      const c = s.charCodeAt(this.i);
      if (c === 0x2c) {
        this.i++;
        this.ws();
      } else if (c === 0x5d) {
        this.i++;
        return a;
      } else {
        this.fail("Expecting ',' delimiter");
      }
    }
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false });

/**
 * Parses a request body (UTF-8 bytes; a leading UTF-8 BOM is skipped, as `json.loads(bytes)` does).
 * @throws PyJsonError (also for invalid UTF-8)
 */
export function parsePyJsonBytes(body: Uint8Array): PyValue {
  let text: string;
  try {
    text = utf8.decode(body);
  } catch {
    throw new PyJsonError('body is not valid UTF-8', 0);
  }
  return parsePyJson(text);
}

// ---------------------------------------------------------------------------------------------
// Serialising (Python json.dumps)
// ---------------------------------------------------------------------------------------------

/** Python's `repr(float)` (also `str(float)`): shortest round-trip digits, Python's layout. */
export function pyFloatRepr(x: number): string {
  if (Number.isNaN(x)) return 'nan';
  if (x === Number.POSITIVE_INFINITY) return 'inf';
  if (x === Number.NEGATIVE_INFINITY) return '-inf';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  // toExponential() without an argument gives the shortest round-trip digits.
  const [mant = '', expText = '0'] = x.toExponential().split('e');
  const exp = Number(expText);
  if (exp >= -4 && exp < 16) {
    // repr uses fixed notation for 1e-4 <= |x| < 1e16; JS does too for this range.
    const s = String(x);
    return s.includes('.') || s.includes('e') ? s : `${s}.0`;
  }
  const sign = exp < 0 ? '-' : '+';
  const e = Math.abs(exp);
  return `${mant}e${sign}${e < 10 ? `0${e}` : e}`;
}

/** json.dumps spelling of a float (`NaN`, `Infinity`, `-Infinity` for the non-finite ones). */
export function pyJsonFloat(x: number): string {
  if (Number.isNaN(x)) return 'NaN';
  if (x === Number.POSITIVE_INFINITY) return 'Infinity';
  if (x === Number.NEGATIVE_INFINITY) return '-Infinity';
  return pyFloatRepr(x);
}

function escapeCode(c: number): string {
  switch (c) {
    case 0x22:
      return '\\"';
    case 0x5c:
      return '\\\\';
    case 0x0a:
      return '\\n';
    case 0x0d:
      return '\\r';
    case 0x09:
      return '\\t';
    case 0x08:
      return '\\b';
    case 0x0c:
      return '\\f';
    default:
      return `\\u${c.toString(16).padStart(4, '0')}`;
  }
}

/** `json.dumps(s, ensure_ascii=...)` for a string (lone surrogates are written as they are). */
export function pyJsonString(s: string, ensureAscii = false): string {
  let out = '"';
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x22 || c === 0x5c || (ensureAscii && c >= 0x7f)) {
      out += s.slice(start, i) + escapeCode(c);
      start = i + 1;
    }
  }
  return `${out}${s.slice(start)}"`;
}

export interface DumpsOptions {
  /** `indent`: null = one line; a number of spaces or an indent string (0 / '' = newlines only). */
  indent?: number | string | null;
  ensureAscii?: boolean;
  /** [item separator, key separator]; default (', ', ': '), or (',', ': ') when indenting. */
  separators?: readonly [string, string] | null;
  sortKeys?: boolean;
}

/**
 * A value that {@link dumpsWith} can serialise: the caller says what it is.
 * Used for both PyValue and the template engine's runtime values.
 */
export type DumpNode =
  | { kind: 'null' }
  | { kind: 'bool'; value: boolean }
  | { kind: 'int'; text: string }
  | { kind: 'float'; value: number }
  | { kind: 'str'; value: string }
  | { kind: 'list'; items: Iterable<unknown> }
  | { kind: 'dict'; entries: Iterable<readonly [string, unknown]> };

/** Compares strings by code point, like Python's `sorted` on str. */
export function comparePyStr(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.codePointAt(i) ?? 0;
    const y = b.codePointAt(i) ?? 0;
    if (x !== y) return x - y;
    if (x > 0xffff) i++;
  }
  return a.length - b.length;
}

/** Python `json.dumps` over any tree, given a function classifying its nodes. */
export function dumpsWith(
  root: unknown,
  classify: (v: unknown) => DumpNode,
  opts: DumpsOptions = {},
): string {
  const ensureAscii = opts.ensureAscii ?? false;
  const indentStr =
    opts.indent === null || opts.indent === undefined
      ? null
      : typeof opts.indent === 'number'
        ? ' '.repeat(Math.max(0, opts.indent))
        : opts.indent;
  const [itemSep, keySep] = opts.separators ?? (indentStr === null ? [', ', ': '] : [',', ': ']);
  const sortKeys = opts.sortKeys ?? false;
  const seen = new Set<unknown>();

  const enc = (v: unknown, level: number): string => {
    const node = classify(v);
    switch (node.kind) {
      case 'null':
        return 'null';
      case 'bool':
        return node.value ? 'true' : 'false';
      case 'int':
        return node.text;
      case 'float':
        return pyJsonFloat(node.value);
      case 'str':
        return pyJsonString(node.value, ensureAscii);
      case 'list':
      case 'dict': {
        if (seen.has(v)) throw new Error('Circular reference detected');
        seen.add(v);
        const parts: string[] = [];
        if (node.kind === 'list') {
          for (const item of node.items) parts.push(enc(item, level + 1));
        } else {
          let entries = [...node.entries];
          if (sortKeys) entries = entries.sort((a, b) => comparePyStr(a[0], b[0]));
          for (const [k, item] of entries) {
            parts.push(`${pyJsonString(k, ensureAscii)}${keySep}${enc(item, level + 1)}`);
          }
        }
        seen.delete(v);
        const [open, close] = node.kind === 'list' ? ['[', ']'] : ['{', '}'];
        if (parts.length === 0) return open + close;
        if (indentStr === null) return open + parts.join(itemSep) + close;
        const inner = `\n${indentStr.repeat(level + 1)}`;
        const outer = `\n${indentStr.repeat(level)}`;
        return open + inner + parts.join(itemSep + inner) + outer + close;
      }
    }
  };
  return enc(root, 0);
}

/** Classifies a PyValue for {@link dumpsWith}. */
export function classifyPyValue(v: unknown): DumpNode {
  if (v === null) return { kind: 'null' };
  if (typeof v === 'boolean') return { kind: 'bool', value: v };
  if (typeof v === 'number') return { kind: 'int', text: String(v) };
  if (typeof v === 'bigint') return { kind: 'int', text: v.toString() };
  if (typeof v === 'string') return { kind: 'str', value: v };
  if (v instanceof PyFloat) return { kind: 'float', value: v.value };
  if (Array.isArray(v)) return { kind: 'list', items: v };
  if (v instanceof Map) return { kind: 'dict', entries: v as PyDict };
  throw new Error(`Object of type ${typeof v} is not JSON serializable`);
}

/** Python `json.dumps(value, ensure_ascii=False, ...)` of a PyValue. */
export function pyJsonDumps(v: PyValue, opts: DumpsOptions = {}): string {
  return dumpsWith(v, classifyPyValue, opts);
}

/** Deep copy (Python `json.loads(json.dumps(x))` for PyValue). */
export function clonePy(v: PyValue): PyValue {
  if (Array.isArray(v)) return v.map(clonePy);
  if (v instanceof Map) {
    const m: PyDict = new Map();
    for (const [k, x] of v) m.set(k, clonePy(x));
    return m;
  }
  return v;
}
