/**
 * RFC 9113 §8.2–§8.3 checks of a decoded request header block: what makes a
 * request (or its trailers) malformed, which the connection answers with a
 * stream error of type PROTOCOL_ERROR for that stream only.
 *
 * Contract: `headers` is the flat `[name, value, …]` list the HPACK decoder
 * returns. `checkRequestHeaders` returns the declared content-length (≥ 0),
 * NO_LENGTH when there is none, or MALFORMED. It allocates nothing on the
 * path a well-formed gRPC request takes (one pass over names and values,
 * character-code tests).
 */

export const MALFORMED = -2;
export const NO_LENGTH = -1;

const PSEUDO_METHOD = 1;
const PSEUDO_SCHEME = 2;
const PSEUDO_PATH = 4;
const PSEUDO_AUTHORITY = 8;

/**
 * §8.2.1: a regular field name with a control or non-ASCII octet, a space, a
 * colon or an uppercase letter.
 */
function badName(name: string): boolean {
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f || c === 0x3a || (c >= 65 && c <= 90)) return true;
  }
  return false;
}

/**
 * §8.2.1: a field value with NUL, CR or LF (which could split it into two
 * fields downstream), or that starts or ends with a space or tab.
 */
function badValue(value: string): boolean {
  const n = value.length;
  if (n === 0) return false;
  const first = value.charCodeAt(0);
  const last = value.charCodeAt(n - 1);
  if (first === 0x20 || first === 0x09 || last === 0x20 || last === 0x09) return true;
  for (let i = 0; i < n; i++) {
    const c = value.charCodeAt(i);
    if (c <= 0x0d && (c === 0x00 || c === 0x0a || c === 0x0d)) return true;
  }
  return false;
}

/** Connection-specific fields, never valid in HTTP/2 (§8.2.2); `te` is checked apart. */
function isConnectionSpecific(name: string): boolean {
  switch (name) {
    case 'connection':
    case 'keep-alive':
    case 'proxy-connection':
    case 'transfer-encoding':
    case 'upgrade':
      return true;
    default:
      return false;
  }
}

function pseudoBit(name: string): number {
  switch (name) {
    case ':method':
      return PSEUDO_METHOD;
    case ':scheme':
      return PSEUDO_SCHEME;
    case ':path':
      return PSEUDO_PATH;
    case ':authority':
      return PSEUDO_AUTHORITY;
    default:
      // `:status` is a response field; `:protocol` needs
      // SETTINGS_ENABLE_CONNECT_PROTOCOL, which we never send.
      return 0;
  }
}

/** A non-negative decimal content-length, or MALFORMED. */
function parseLength(value: string): number {
  if (value.length === 0 || value.length > 15) return MALFORMED;
  let n = 0;
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i) - 48;
    if (c < 0 || c > 9) return MALFORMED;
    n = n * 10 + c;
  }
  return n;
}

/**
 * Checks a request's opening header block: names and values as §8.2.1
 * allows (lowercase names of visible ASCII without a colon; no NUL/CR/LF in
 * values, nor a space or tab at either end), only the four
 * request pseudo-headers, each at most once and before every regular field,
 * `:method` always and `:scheme` + a non-empty `:path` unless CONNECT, no
 * connection-specific field, `te` only as "trailers", at most one
 * content-length value. Returns the content-length, NO_LENGTH or MALFORMED.
 */
export function checkRequestHeaders(headers: readonly string[]): number {
  let seen = 0;
  let regular = false;
  let isConnect = false;
  let pathEmpty = false;
  let length = NO_LENGTH;
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i] as string;
    const value = headers[i + 1] as string;
    if (badValue(value)) return MALFORMED;
    if (name.charCodeAt(0) === 58 /* ':' */) {
      const bit = pseudoBit(name);
      if (bit === 0 || regular || seen & bit) return MALFORMED;
      seen |= bit;
      if (bit === PSEUDO_METHOD) isConnect = value === 'CONNECT';
      else if (bit === PSEUDO_PATH) pathEmpty = value.length === 0;
      continue;
    }
    regular = true;
    if (name.length === 0 || badName(name)) return MALFORMED;
    if (isConnectionSpecific(name)) return MALFORMED;
    if (name === 'te') {
      // Tokens are case-insensitive (nghttp2 compares so); an empty value names none (as Go).
      if (value !== 'trailers' && value !== '' && value.toLowerCase() !== 'trailers') {
        return MALFORMED;
      }
    } else if (name === 'content-length') {
      const n = parseLength(value);
      if (n === MALFORMED || (length !== NO_LENGTH && n !== length)) return MALFORMED;
      length = n;
    }
  }
  if (!(seen & PSEUDO_METHOD)) return MALFORMED;
  if (isConnect) {
    // §8.5: CONNECT names only the authority.
    if (seen & (PSEUDO_SCHEME | PSEUDO_PATH) || !(seen & PSEUDO_AUTHORITY)) return MALFORMED;
  } else if (!(seen & PSEUDO_SCHEME) || !(seen & PSEUDO_PATH) || pathEmpty) {
    return MALFORMED;
  }
  return length;
}

/**
 * Checks a trailer block: no pseudo-headers (§8.1), names and values as
 * §8.2.1 allows, no connection-specific field.
 */
export function trailersMalformed(headers: readonly string[]): boolean {
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i] as string;
    if (name.length === 0 || name.charCodeAt(0) === 58 || badName(name)) return true;
    if (isConnectionSpecific(name) || badValue(headers[i + 1] as string)) return true;
  }
  return false;
}
