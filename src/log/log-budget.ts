/**
 * A cap on how often one kind of log line is written: at most `lines` per
 * `windowMs`. Lines over the cap are not written but counted, and the next
 * line written reports how many were left out, so a peer that repeats a fault
 * (a port scanner, a broken client reconnecting in a loop) cannot flood the
 * log while the fault still shows. Pure: the clock is passed in.
 */
export class LogBudget {
  private windowStart = Number.NEGATIVE_INFINITY;
  private used = 0;
  private skipped = 0;

  constructor(
    private readonly lines: number,
    private readonly windowMs: number,
    private readonly now: () => number,
  ) {}

  /**
   * undefined: leave this line out. Otherwise write it: the value is how many
   * lines were left out since the last one written.
   */
  take(): number | undefined {
    const t = this.now();
    if (t - this.windowStart >= this.windowMs) {
      this.windowStart = t;
      this.used = 0;
    }
    if (this.used >= this.lines) {
      this.skipped++;
      return undefined;
    }
    this.used++;
    const skipped = this.skipped;
    this.skipped = 0;
    return skipped;
  }
}
