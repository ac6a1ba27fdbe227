/**
 * One server's budget of buffered body bytes, shared by all its streams.
 *
 * Contract: every byte a `BodyBuffer` allocates for a request body or a
 * held-back response body is taken from the budget before it is allocated
 * and given back exactly once when the buffer is dropped, so `held` is the
 * memory those buffers pin (their capacity, not only their length). A take
 * that would pass `limit` fails and takes nothing: the caller sheds (request:
 * 429) or stops holding (response: the rest passes through). Without it,
 * `--max-body-bytes` bounds one stream but not how many of them buffer at
 * once: a few hundred slow uploads that declare 64 MiB would exhaust memory.
 */
/** The default budget: 1 GiB, or one largest body when that is more. */
export function bodyBudgetBytes(maxBodyBytes: number): number {
  return Math.max(1024 * 1024 * 1024, maxBodyBytes);
}

export class BodyBudget {
  private used = 0;

  constructor(readonly limit: number) {}

  /** Bytes taken and not given back. */
  get held(): number {
    return this.used;
  }

  /** Takes `bytes` if they fit under the limit; false (nothing taken) if not. */
  tryTake(bytes: number): boolean {
    if (bytes <= 0) return true;
    if (this.used + bytes > this.limit) return false;
    this.used += bytes;
    return true;
  }

  /** Gives back bytes taken earlier. */
  give(bytes: number): void {
    this.used = Math.max(0, this.used - bytes);
  }
}
