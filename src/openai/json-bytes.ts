/**
 * Byte-level JSON scanning over UTF-8 bodies: enough to find a value's extent
 * without decoding or parsing it. Contract: the input is valid JSON where the
 * functions are pointed; on invalid input they never throw but may return the
 * end of the input or past it, which callers treat as "not found".
 */

export function skipWs(b: Uint8Array, i: number): number {
  while (i < b.length && (b[i] === 0x20 || b[i] === 0x0a || b[i] === 0x0d || b[i] === 0x09)) i++;
  return i;
}

/** End (exclusive) of the JSON value starting at `i`; assumes valid JSON. */
export function valueEnd(b: Uint8Array, i: number): number {
  const c = b[i];
  if (c === 0x22) {
    // The closing quote is the first one after an even run of backslashes;
    // indexOf keeps a long string (a base64 image) off a byte-by-byte loop.
    for (let from = i + 1; ; ) {
      const q = b.indexOf(0x22, from);
      if (q === -1) return b.length + 1;
      let k = q - 1;
      while (k > i && b[k] === 0x5c) k--;
      if ((q - 1 - k) % 2 === 0) return q + 1;
      from = q + 1;
    }
  }
  if (c === 0x7b || c === 0x5b) {
    let depth = 0;
    for (; i < b.length; i++) {
      const x = b[i];
      if (x === 0x22) {
        i = valueEnd(b, i) - 1;
      } else if (x === 0x7b || x === 0x5b) {
        depth++;
      } else if (x === 0x7d || x === 0x5d) {
        depth--;
        if (depth === 0) return i + 1;
      }
    }
    return b.length;
  }
  while (i < b.length && ![0x2c, 0x7d, 0x5d, 0x20, 0x0a, 0x0d, 0x09].includes(b[i] as number)) i++;
  return i;
}
