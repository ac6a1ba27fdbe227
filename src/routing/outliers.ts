/**
 * Passive outlier ejection, as Envoy's `consecutive_5xx` detector does it:
 * an endpoint whose requests end in a 5xx `consecutive5xx` times in a row is
 * left out of routing for `baseEjectionMs` × (times ejected so far), at most
 * `maxEjectionMs`; a request it answers below 500 resets its run. Static
 * endpoints have no readiness signal, and without this a dead worker keeps its
 * share of new prompts (and, in approximate mode, every prompt it was given).
 *
 * Contract: pure bookkeeping (the caller passes the clock); `filter` never
 * leaves a request without a candidate (when every endpoint is ejected it
 * returns them all, as Envoy's panic mode would). Keys are `host:port`.
 * Memory: one entry per endpoint that failed since it last succeeded;
 * `retain` drops endpoints that left.
 */
export interface OutlierSettings {
  /** 5xx answers in a row that eject an endpoint; 0 = never eject. */
  consecutive5xx: number;
  baseEjectionMs: number;
  maxEjectionMs: number;
}

/** Envoy's outlier-detection defaults: 5 in a row, 30 s, at most 300 s. */
export const DEFAULT_OUTLIER_SETTINGS: OutlierSettings = {
  consecutive5xx: 5,
  baseEjectionMs: 30_000,
  maxEjectionMs: 300_000,
};

interface Outlier {
  /** 5xx answers since the last good one. */
  failures: number;
  /** Times ejected (the multiplier of the next ejection; decays to 0 only on success). */
  ejections: number;
  /** Ejected until this time (ms). */
  untilMs: number;
}

export class OutlierTracker {
  private readonly records = new Map<string, Outlier>();

  constructor(private readonly settings: OutlierSettings = DEFAULT_OUTLIER_SETTINGS) {}

  /** A request routed to `hostPort` ended with `status` (undefined: no answer seen). */
  observe(hostPort: string, status: number | undefined, nowMs: number): void {
    if (this.settings.consecutive5xx <= 0 || status === undefined) return;
    if (status < 500) {
      this.records.delete(hostPort);
      return;
    }
    let r = this.records.get(hostPort);
    if (r === undefined) {
      r = { failures: 0, ejections: 0, untilMs: 0 };
      this.records.set(hostPort, r);
    }
    // Answers of requests routed before the ejection do not extend it.
    if (nowMs < r.untilMs) return;
    r.failures++;
    if (r.failures >= this.settings.consecutive5xx) {
      r.ejections++;
      r.failures = 0;
      r.untilMs =
        nowMs + Math.min(this.settings.baseEjectionMs * r.ejections, this.settings.maxEjectionMs);
    }
  }

  ejected(hostPort: string, nowMs: number): boolean {
    const r = this.records.get(hostPort);
    return r !== undefined && nowMs < r.untilMs;
  }

  /** The items whose endpoint is not ejected; all of them when every one is. */
  filter<T>(items: readonly T[], hostPort: (item: T) => string, nowMs: number): readonly T[] {
    if (this.records.size === 0) return items;
    const kept = items.filter((x) => !this.ejected(hostPort(x), nowMs));
    return kept.length > 0 ? kept : items;
  }

  /** Endpoints ejected now (a gauge). */
  ejectedCount(nowMs: number): number {
    let n = 0;
    for (const r of this.records.values()) if (nowMs < r.untilMs) n++;
    return n;
  }

  /** Endpoints with a record (failing or ejected). */
  get size(): number {
    return this.records.size;
  }

  /** Forgets endpoints not in `live`. */
  retain(live: ReadonlySet<string>): void {
    for (const k of this.records.keys()) if (!live.has(k)) this.records.delete(k);
  }
}
