/** Passive outlier ejection (Envoy's consecutive_5xx detector), on a clock the test moves. */
import { describe, expect, it } from 'vitest';
import { type OutlierSettings, OutlierTracker } from '../../../src/routing/outliers.js';

const S: OutlierSettings = {
  consecutive5xx: 3,
  baseEjectionMs: 1000,
  maxEjectionMs: 2500,
  maxEjectionPercent: 100,
};
const A = '127.0.0.2:8000';
const B = '127.0.0.3:8000';
const C = '127.0.0.4:8000';

/** A tracker over a pool of `pool` endpoints, and its `observe` with that size. */
function tracker(settings: OutlierSettings = S, pool = 3) {
  const t = new OutlierTracker(settings);
  const obs = (hp: string, status: number | undefined, now: number) =>
    t.observe(hp, status, now, () => pool);
  const ejectAt = (hp: string, now: number) => {
    for (let i = 0; i < settings.consecutive5xx; i++) obs(hp, 503, now);
  };
  return { t, obs, ejectAt };
}

describe('OutlierTracker', () => {
  it('ejects after N 5xx in a row, for the base time; a good answer resets the run', () => {
    const { t, obs } = tracker();
    obs(A, 503, 0);
    obs(A, 502, 1);
    obs(A, 200, 2);
    obs(A, 500, 3);
    obs(A, 504, 4);
    expect(t.ejected(A, 5)).toBe(false);
    obs(A, 503, 5);
    expect(t.ejected(A, 5)).toBe(true);
    expect(t.ejected(A, 1004)).toBe(true);
    expect(t.ejected(A, 1005)).toBe(false);
    expect(t.ejected(B, 5)).toBe(false);
    expect(t.ejectedCount(6)).toBe(1);
  });

  it('ignores 4xx and unanswered requests; answers that arrive while ejected neither extend nor end it', () => {
    const { t, obs, ejectAt } = tracker();
    for (const s of [404, 429, undefined, 400]) obs(A, s, 0);
    expect(t.size).toBe(0);
    ejectAt(A, 0);
    // Requests routed before the ejection answer during it.
    for (let i = 0; i < 10; i++) obs(A, 503, 500);
    obs(A, 200, 600);
    expect(t.ejected(A, 999)).toBe(true);
    expect(t.ejected(A, 1000)).toBe(false);
  });

  it('backs off with each ejection up to the cap; a good answer after one forgets the history', () => {
    const { t, obs, ejectAt } = tracker();
    ejectAt(A, 0);
    ejectAt(A, 1000); // second ejection: 2 × base
    expect(t.ejected(A, 2999)).toBe(true);
    expect(t.ejected(A, 3000)).toBe(false);
    ejectAt(A, 3000); // third: 3 × base, capped at 2.5 s
    expect(t.ejected(A, 5499)).toBe(true);
    expect(t.ejected(A, 5500)).toBe(false);
    obs(A, 200, 5500);
    ejectAt(A, 6000);
    expect(t.ejected(A, 6999)).toBe(true);
    expect(t.ejected(A, 7000)).toBe(false);
  });

  it("keeps at most its share of the pool out (Envoy's max_ejection_percent), always one", () => {
    // 10 % of 3 endpoints rounds to none: one may still be out.
    const { t, ejectAt } = tracker({ ...S, maxEjectionPercent: 10 }, 3);
    ejectAt(A, 0);
    ejectAt(B, 0);
    ejectAt(C, 0);
    expect([t.ejected(A, 1), t.ejected(B, 1), t.ejected(C, 1)]).toEqual([true, false, false]);
    // B's run went on while A was out: its next 5xx after A is back ejects it.
    t.observe(B, 503, 1000, () => 3);
    expect([t.ejected(A, 1000), t.ejected(B, 1000)]).toEqual([false, true]);
    // 50 % of 4: two.
    const half = tracker({ ...S, maxEjectionPercent: 50 }, 4);
    for (const hp of [A, B, C]) half.ejectAt(hp, 0);
    expect(half.t.ejectedCount(1)).toBe(2);
  });

  it('never leaves nothing to route to, and forgets endpoints that left', () => {
    const { t, ejectAt } = tracker();
    const eps = [{ hostPort: A }, { hostPort: B }];
    const kept = () => t.filter(eps, 1).map((e) => e.hostPort);
    ejectAt(A, 0);
    expect(kept()).toEqual([B]);
    ejectAt(B, 0);
    expect(kept()).toEqual([A, B]);
    t.retain(new Set([B]));
    expect(t.size).toBe(1);
    expect(kept()).toEqual([A]);
  });

  it('does nothing with consecutive5xx 0', () => {
    const { t, obs } = tracker({ ...S, consecutive5xx: 0 });
    for (let i = 0; i < 100; i++) obs(A, 503, 0);
    expect(t.ejected(A, 1)).toBe(false);
    expect(t.size).toBe(0);
  });
});
