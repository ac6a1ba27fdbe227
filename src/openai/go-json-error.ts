/**
 * What Go's `encoding/json` says about a body it cannot unmarshal into a
 * `map[string]any`: the reference EPP answers such a body with
 * `400 error unmarshaling request bodyMap: <this text>`, and clients and
 * tests match on it (GAIE's hermetic test "invalid json body").
 *
 * Contract: `goJsonUnmarshalError(body)` is `undefined` exactly when Go would
 * unmarshal `body` into a map without error (a JSON object, or `null`);
 * otherwise it is Go's error text — the first syntax error of its byte
 * scanner (`invalid character 'x' <context>`, `unexpected end of JSON input`,
 * `invalid character '[' exceeded max depth`), or, for a valid non-object, the type error
 * (`json: cannot unmarshal array into Go value of type map[string]interface {}`).
 * Bytes are scanned as Go does: one byte at a time, so a non-ASCII byte is
 * quoted as the Latin-1 character of its value. Only called on the error
 * path, but a client picks the body's size: string bytes are skipped in a
 * tight loop, so a body costs about what `JSON.parse` does.
 */
export function goJsonUnmarshalError(body: Uint8Array): string | undefined {
  const syntax = scanForSyntaxError(body);
  if (syntax !== undefined) return syntax;
  const first = body[skipSpace(body, 0)];
  switch (first) {
    case 0x7b /* { */:
      return undefined;
    case 0x6e /* n: null */:
      return undefined;
    case 0x5b /* [ */:
      return typeError('array');
    case 0x22 /* " */:
      return typeError('string');
    case 0x74 /* t */:
    case 0x66 /* f */:
      return typeError('bool');
    default:
      return typeError('number');
  }
}

function typeError(value: string): string {
  return `json: cannot unmarshal ${value} into Go value of type map[string]interface {}`;
}

const MAX_DEPTH = 10000;

function isSpace(c: number): boolean {
  return c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d;
}

function skipSpace(b: Uint8Array, i: number): number {
  while (i < b.length && isSpace(b[i] as number)) i++;
  return i;
}

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

/** A string byte that neither ends the string, starts an escape, nor is a control character. */
function isOrdinaryStringByte(c: number): boolean {
  return c !== 0x22 && c !== 0x5c && c >= 0x20;
}

function isHex(c: number): boolean {
  return isDigit(c) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46);
}

/** Go's `quoteChar`: the byte as a Go-quoted character in single quotes. */
export function quoteByte(c: number): string {
  if (c === 0x27) return "'\\''";
  if (c === 0x22) return `'"'`;
  return `'${goQuoteRune(c)}'`;
}

/** The inside of `strconv.Quote(string(rune(c)))` for a rune below 0x100. */
function goQuoteRune(c: number): string {
  switch (c) {
    case 0x07:
      return '\\a';
    case 0x08:
      return '\\b';
    case 0x0c:
      return '\\f';
    case 0x0a:
      return '\\n';
    case 0x0d:
      return '\\r';
    case 0x09:
      return '\\t';
    case 0x0b:
      return '\\v';
    case 0x5c:
      return '\\\\';
  }
  if (c < 0x20 || c === 0x7f) return `\\x${c.toString(16).padStart(2, '0')}`;
  // Not printable for strconv.IsPrint: C1 controls, NBSP (Zs), soft hyphen (Cf).
  if ((c >= 0x80 && c <= 0xa0) || c === 0xad) return `\\u${c.toString(16).padStart(4, '0')}`;
  return String.fromCharCode(c);
}

/** A byte the scanner did not expect, in the scanner's words. */
class Refusal {
  constructor(readonly message: string) {}
}

const refuse = (c: number, context: string): Refusal =>
  new Refusal(`invalid character ${quoteByte(c)} ${context}`);

type Container = 'objectKey' | 'objectValue' | 'arrayValue';

/**
 * A step-per-byte scanner with the states and messages of Go's
 * `encoding/json` scanner (RFC 8259 grammar). `undefined` when `b` is valid.
 */
function scanForSyntaxError(b: Uint8Array): string | undefined {
  const stack: Container[] = [];
  let endTop = false;
  type Step = (c: number) => Refusal | undefined;
  let step: Step;

  const open = (c: number, kind: Container, next: Step): Refusal | undefined => {
    if (stack.length >= MAX_DEPTH) return refuse(c, 'exceeded max depth');
    stack.push(kind);
    step = next;
    return undefined;
  };
  // A container closed: the top-level value ends with the outermost one.
  const close = (): undefined => {
    stack.pop();
    if (stack.length === 0) {
      endTop = true;
      step = endTopValue;
    } else {
      step = endValue;
    }
    return undefined;
  };

  const beginValue: Step = (c) => {
    if (isSpace(c)) return undefined;
    switch (c) {
      case 0x7b:
        return open(c, 'objectKey', beginKeyOrEmpty);
      case 0x5b:
        return open(c, 'arrayValue', beginValueOrEmpty);
      case 0x22:
        step = inString;
        return undefined;
      case 0x2d:
        step = neg;
        return undefined;
      case 0x30:
        step = zero;
        return undefined;
      case 0x74:
        step = literal('true', 1);
        return undefined;
      case 0x66:
        step = literal('false', 1);
        return undefined;
      case 0x6e:
        step = literal('null', 1);
        return undefined;
    }
    if (c >= 0x31 && c <= 0x39) {
      step = digits;
      return undefined;
    }
    return refuse(c, 'looking for beginning of value');
  };

  const beginValueOrEmpty: Step = (c) => {
    if (isSpace(c)) return undefined;
    if (c === 0x5d) return endValue(c);
    return beginValue(c);
  };

  const beginKeyOrEmpty: Step = (c) => {
    if (isSpace(c)) return undefined;
    if (c === 0x7d) {
      stack[stack.length - 1] = 'objectValue';
      return endValue(c);
    }
    return beginKey(c);
  };

  const beginKey: Step = (c) => {
    if (isSpace(c)) return undefined;
    if (c === 0x22) {
      step = inString;
      return undefined;
    }
    return refuse(c, 'looking for beginning of object key string');
  };

  const endTopValue: Step = (c) => (isSpace(c) ? undefined : refuse(c, 'after top-level value'));

  const endValue: Step = (c) => {
    const n = stack.length;
    if (n === 0) {
      step = endTopValue;
      endTop = true;
      return endTopValue(c);
    }
    if (isSpace(c)) {
      step = endValue;
      return undefined;
    }
    switch (stack[n - 1]) {
      case 'objectKey':
        if (c === 0x3a) {
          stack[n - 1] = 'objectValue';
          step = beginValue;
          return undefined;
        }
        return refuse(c, 'after object key');
      case 'objectValue':
        if (c === 0x2c) {
          stack[n - 1] = 'objectKey';
          step = beginKey;
          return undefined;
        }
        if (c === 0x7d) return close();
        return refuse(c, 'after object key:value pair');
      default:
        if (c === 0x2c) {
          step = beginValue;
          return undefined;
        }
        if (c === 0x5d) return close();
        return refuse(c, 'after array element');
    }
  };

  const inString: Step = (c) => {
    if (c === 0x22) {
      step = endValue;
      return undefined;
    }
    if (c === 0x5c) {
      step = inEscape;
      return undefined;
    }
    if (c < 0x20) return refuse(c, 'in string literal');
    return undefined;
  };

  const inEscape: Step = (c) => {
    switch (c) {
      case 0x62:
      case 0x66:
      case 0x6e:
      case 0x72:
      case 0x74:
      case 0x5c:
      case 0x2f:
      case 0x22:
        step = inString;
        return undefined;
      case 0x75:
        step = hexEscape(4);
        return undefined;
    }
    return refuse(c, 'in string escape code');
  };

  const hexEscape =
    (left: number): Step =>
    (c) => {
      if (!isHex(c)) return refuse(c, 'in \\u hexadecimal character escape');
      step = left === 1 ? inString : hexEscape(left - 1);
      return undefined;
    };

  const neg: Step = (c) => {
    if (c === 0x30) {
      step = zero;
      return undefined;
    }
    if (c >= 0x31 && c <= 0x39) {
      step = digits;
      return undefined;
    }
    return refuse(c, 'in numeric literal');
  };

  const digits: Step = (c) => (isDigit(c) ? undefined : zero(c));

  const zero: Step = (c) => {
    if (c === 0x2e) {
      step = dot;
      return undefined;
    }
    if (c === 0x65 || c === 0x45) {
      step = exponent;
      return undefined;
    }
    return endValue(c);
  };

  const dot: Step = (c) => {
    if (isDigit(c)) {
      step = fraction;
      return undefined;
    }
    return refuse(c, 'after decimal point in numeric literal');
  };

  const fraction: Step = (c) => {
    if (isDigit(c)) return undefined;
    if (c === 0x65 || c === 0x45) {
      step = exponent;
      return undefined;
    }
    return endValue(c);
  };

  const exponent: Step = (c) => {
    if (c === 0x2b || c === 0x2d) {
      step = exponentSign;
      return undefined;
    }
    return exponentSign(c);
  };

  const exponentSign: Step = (c) => {
    if (isDigit(c)) {
      step = exponentDigits;
      return undefined;
    }
    return refuse(c, 'in exponent of numeric literal');
  };

  const exponentDigits: Step = (c) => (isDigit(c) ? undefined : endValue(c));

  const literal =
    (word: string, at: number): Step =>
    (c) => {
      const want = word.charCodeAt(at);
      if (c !== want) return refuse(c, `in literal ${word} (expecting '${word[at]}')`);
      step = at + 1 === word.length ? endValue : literal(word, at + 1);
      return undefined;
    };

  step = beginValue;
  const n = b.length;
  let i = 0;
  while (i < n) {
    // Inside a string, ordinary bytes change nothing: skip them in a tight
    // loop (a body is mostly strings; a client picks its size).
    if (step === inString) {
      while (i < n && isOrdinaryStringByte(b[i] as number)) i++;
      if (i === n) break;
    }
    const r = step(b[i] as number);
    if (r) return r.message;
    i++;
  }
  // Go's end of input: one more space, which completes a top-level number and
  // turns a cut literal into that literal's error.
  if (endTop) return undefined;
  const r = step(0x20);
  if (r) return r.message;
  return endTop ? undefined : 'unexpected end of JSON input';
}
