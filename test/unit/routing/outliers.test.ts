/** Passive outlier ejection (Envoy's consecutive_5xx detector), on a clock the test moves. */
import { describe, expect, it } from 'vitest';
import { OutlierTracker } from '../../../src/routing/outliers.js';

const S = { consecutive5xx: 3, baseEjectionMs: 1000, maxEjectionMs: 2500 };
const A = '127.0.0.2:8000';
const B = '127.0.0.3:8000';

describe('OutlierTracker', () => {
  it('ejects after N 5xx in a row, for the base time; a good answer resets the run', () => {
    const t = new OutlierTracker(S);
    t.observe(A, 503, 0);
    t.observe(A, 502, 1);
    t.observe(A, 200, 2);
    t.observe(A, 500, 3);
    t.observe(A, 504, 4);
    expect(t.ejected(A, 5)).toBe(false);
    t.observe(A, 503, 5);
    expect(t.ejected(A, 5)).toBe(true);
    expect(t.ejected(A, 1004)).toBe(true);
    expect(t.ejected(A, 1005)).toBe(false);
    expect(t.ejected(B, 5)).toBe(false);
    expect(t.ejectedCount(6)).toBe(1);
  });

  it('ignores 4xx, unanswered requests and answers that arrive while ejected; backs off up to the cap', () => {
    const t = new OutlierTracker(S);
    for (const s of [404, 429, undefined, 400]) t.observe(A, s, 0);
    expect(t.size).toBe(1 - 1);
    const ejectAt = (now: number) => {
      for (let i = 0; i < 3; i++) t.observe(A, 503, now);
    };
    ejectAt(0);
    // Requests routed before the ejection answer during it: no longer ejection.
    for (let i = 0; i < 10; i++) t.observe(A, 503, 500);
    expect(t.ejected(A, 999)).toBe(true);
    expect(t.ejected(A, 1000)).toBe(false);
    ejectAt(1000); // second ejection: 2 × base
    expect(t.ejected(A, 2999)).toBe(true);
    expect(t.ejected(A, 3000)).toBe(false);
    ejectAt(3000); // third: 3 × base, capped at 2.5 s
    expect(t.ejected(A, 5499)).toBe(true);
    expect(t.ejected(A, 5500)).toBe(false);
    // Success forgets the history: the next ejection is the base time again.
    t.observe(A, 200, 5500);
    ejectAt(6000);
    expect(t.ejected(A, 6999)).toBe(true);
    expect(t.ejected(A, 7000)).toBe(false);
  });

  it('never leaves nothing to route to, and forgets endpoints that left', () => {
    const t = new OutlierTracker(S);
    const eps = [A, B];
    for (let i = 0; i < 3; i++) t.observe(A, 503, 0);
    expect(t.filter(eps, (x) => x, 1)).toEqual([B]);
    for (let i = 0; i < 3; i++) t.observe(B, 503, 0);
    expect(t.filter(eps, (x) => x, 1)).toEqual(eps);
    t.retain(new Set([B]));
    expect(t.size).toBe(1);
    expect(t.filter(eps, (x) => x, 1)).toEqual([A]);
  });

  it('does nothing with consecutive5xx 0', () => {
    const t = new OutlierTracker({ ...S, consecutive5xx: 0 });
    for (let i = 0; i < 100; i++) t.observe(A, 503, 0);
    expect(t.ejected(A, 1)).toBe(false);
    expect(t.size).toBe(0);
  });
});
