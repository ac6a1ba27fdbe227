/**
 * Body bytes in and out of the ext_proc stream: an accumulator that avoids
 * copies (one chunk is kept as is; several are copied into a buffer that
 * doubles, capped at content-length) and the splitter for streamed responses.
 */
import type { BodyBudget } from './body-budget.js';

/**
 * Largest body piece per StreamedBodyResponse: some Envoy builds cap streamed
 * chunks at 64 KiB, and gRPC clients cap whole messages (GAIE's BodyByteLimit).
 */
export const BODY_CHUNK_BYTES = 62_000;

export class BodyBuffer {
  private first: Uint8Array | undefined;
  private buf: Uint8Array | undefined;
  private len = 0;
  /** Bytes taken from `budget` for what this buffer pins (see BodyBudget). */
  private taken = 0;

  /**
   * `expected`: the content-length, if the sender gave one (a cap on growth,
   * not a reservation: the buffer grows by doubling what arrived). `budget`:
   * where the buffer's memory is accounted, if anywhere.
   */
  constructor(
    private readonly expected = 0,
    private readonly budget?: BodyBudget,
  ) {}

  get length(): number {
    return this.len;
  }

  /**
   * Appends `chunk`; false (nothing appended) when the budget has no room for
   * it. Then the buffer is unchanged and still holds its budget share.
   */
  append(chunk: Uint8Array): boolean {
    if (chunk.length === 0) return true;
    if (this.len === 0) {
      if (!this.take(chunk.length)) return false;
      this.first = chunk;
      this.len = chunk.length;
      return true;
    }
    const need = this.len + chunk.length;
    if (!this.buf) {
      const size = this.takeCapacity(this.roomFor(need, need * 2), need);
      if (size === 0) return false;
      this.buf = new Uint8Array(size);
      this.buf.set(this.first as Uint8Array, 0);
      this.first = undefined;
    } else if (need > this.buf.length) {
      const size = this.takeCapacity(this.roomFor(need, this.buf.length * 2), need);
      if (size === 0) return false;
      const grown = new Uint8Array(size);
      grown.set(this.buf.subarray(0, this.len), 0);
      this.buf = grown;
    }
    this.buf.set(chunk, this.len);
    this.len = need;
    return true;
  }

  /** Gives the buffer's budget share back (idempotent); the buffer is not appended to again. */
  release(): void {
    if (this.taken > 0) this.budget?.give(this.taken);
    this.taken = 0;
  }

  /**
   * The size to grow to for `need` bytes: `doubled`, but never past the
   * declared length when that holds them. Never the declared length alone: a
   * client may declare 64 MiB and send nothing more, and what it declared
   * would pin that much budget (or memory) per stream.
   */
  private roomFor(need: number, doubled: number): number {
    return this.expected >= need ? Math.min(doubled, this.expected) : Math.max(need, doubled);
  }

  /** Takes budget for a total of `bytes` pinned bytes (this buffer's share becomes `bytes`). */
  private take(bytes: number): boolean {
    if (!this.budget) return true;
    if (!this.budget.tryTake(bytes - this.taken)) return false;
    this.taken = bytes;
    return true;
  }

  /** A new buffer of `want` bytes if the budget allows, else of `need`; 0 when neither fits. */
  private takeCapacity(want: number, need: number): number {
    if (this.take(want)) return want;
    if (want !== need && this.take(need)) return need;
    return 0;
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
