/**
 * Body bytes in and out of the ext_proc stream: an accumulator that avoids
 * copies (one chunk is kept as is; several are copied once into a buffer
 * pre-sized from content-length) and the splitter for streamed responses.
 */

/**
 * Largest body piece per StreamedBodyResponse: some Envoy builds cap streamed
 * chunks at 64 KiB, and gRPC clients cap whole messages (GAIE's BodyByteLimit).
 */
export const BODY_CHUNK_BYTES = 62_000;

export class BodyBuffer {
  private first: Uint8Array | undefined;
  private buf: Uint8Array | undefined;
  private len = 0;

  /** `expected`: the content-length, if the sender gave one (a sizing hint only). */
  constructor(private readonly expected = 0) {}

  get length(): number {
    return this.len;
  }

  append(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    if (this.len === 0) {
      this.first = chunk;
      this.len = chunk.length;
      return;
    }
    const need = this.len + chunk.length;
    if (!this.buf) {
      this.buf = new Uint8Array(Math.max(need, this.expected));
      this.buf.set(this.first as Uint8Array, 0);
      this.first = undefined;
    } else if (need > this.buf.length) {
      const grown = new Uint8Array(Math.max(need, this.buf.length * 2));
      grown.set(this.buf.subarray(0, this.len), 0);
      this.buf = grown;
    }
    this.buf.set(chunk, this.len);
    this.len = need;
  }

  /** True when `bytes()` is a view of a buffer this accumulator allocated (no one else holds it). */
  get owned(): boolean {
    return this.buf !== undefined;
  }

  /** The bytes so far (a view; valid until the next append). */
  bytes(): Uint8Array {
    if (this.buf) return this.buf.subarray(0, this.len);
    return this.first ?? new Uint8Array(0);
  }
}

/**
 * Views of `body` of at most `max` bytes each, in order. An empty body gives
 * one empty piece, so the end of stream can still be signalled.
 */
export function splitBody(body: Uint8Array, max = BODY_CHUNK_BYTES): Uint8Array[] {
  if (body.length <= max) return [body];
  const out: Uint8Array[] = [];
  for (let off = 0; off < body.length; off += max) {
    out.push(body.subarray(off, Math.min(off + max, body.length)));
  }
  return out;
}

/** A non-negative integer content-length header value, else 0. */
export function contentLength(value: string | undefined): number {
  if (!value) return 0;
  const n = Number(value);
  return Number.isSafeInteger(n) && n > 0 ? n : 0;
}
