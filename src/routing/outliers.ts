/**
 * Passive outlier ejection, as Envoy's `consecutive_5xx` detector does it:
 * an endpoint whose requests end in a 5xx `consecutive5xx` times in a row is
 * left out of routing for `baseEjectionMs` × (times ejected so far), at most
 * `maxEjectionMs`; once that time is over, a request it answers below 500
 * resets its run and its multiplier (answers that arrive while it is out,
 * from requests routed before, change nothing). At most `maxEjectionPercent`
 * of the pool is out at once, but always one endpoint may be (Envoy's
 * `max_ejection_percent`), so a pool-wide overload cannot squeeze all traffic
 * onto one worker. Static endpoints have no readiness signal, and without this
 * a dead worker keeps its share of new prompts (and, in approximate mode,
 * every prompt it was given).
 *
 * Contract: pure bookkeeping (the caller passes the clock and the pool size);
 * `filter` never leaves a request without a candidate (when every endpoint is
 * ejected it returns them all, as Envoy's panic mode would). Keys are
 * canonical `host:port` (src/discovery/ip.ts).
 * Memory: one entry per endpoint that failed since it last succeeded;
 * `retain` drops endpoints that left.
 */
export interface OutlierSettings {
  /** 5xx answers in a row that eject an endpoint; 0 = never eject. */
  consecutive5xx: number;
  baseEjectionMs: number;
  maxEjectionMs: number;
  /** Share of the pool that may be out at once (at least one endpoint always may). */
  maxEjectionPercent: number;
}

/** Envoy's outlier-detection defaults: 5 in a row, 30 s, at most 300 s. */
export const DEFAULT_OUTLIER_SETTINGS: OutlierSettings = {
  consecutive5xx: 5,
  baseEjectionMs: 30_000,
  maxEjectionMs: 300_000,
  maxEjectionPercent: 10,
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

  /**
   * A request routed to `hostPort` ended with `status` (undefined: no answer
   * seen); `poolSize` counts the routable endpoints (asked only when an
   * ejection is due).
   */
  observe(
    hostPort: string,
    status: number | undefined,
    nowMs: number,
    poolSize: () => number,
  ): void {
    if (this.settings.consecutive5xx <= 0 || status === undefined) return;
    const r = this.records.get(hostPort);
    // Answers of requests routed before the ejection neither extend nor end it.
    if (r !== undefined && nowMs < r.untilMs) return;
    if (status < 500) {
      this.records.delete(hostPort);
      return;
    }
    const rec = r ?? { failures: 0, ejections: 0, untilMs: 0 };
    if (r === undefined) this.records.set(hostPort, rec);
    rec.failures++;
    if (rec.failures < this.settings.consecutive5xx) return;
    const cap = Math.max(1, Math.floor((poolSize() * this.settings.maxEjectionPercent) / 100));
    // At the cap the run goes on, and ejects once another endpoint is back.
    if (this.ejectedCount(nowMs) >= cap) return;
    rec.ejections++;
    rec.failures = 0;
    rec.untilMs =
      nowMs + Math.min(this.settings.baseEjectionMs * rec.ejections, this.settings.maxEjectionMs);
  }

  ejected(hostPort: string, nowMs: number): boolean {
    const r = this.records.get(hostPort);
    return r !== undefined && nowMs < r.untilMs;
  }

  /** The endpoints not ejected; all of them when every one is. */
  filter<T extends { hostPort: string }>(endpoints: T[], nowMs: number): T[] {
    if (this.records.size === 0) return endpoints;
    const kept = endpoints.filter((e) => !this.ejected(e.hostPort, nowMs));
    return kept.length > 0 ? kept : endpoints;
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
