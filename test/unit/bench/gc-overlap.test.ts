import { describe, expect, it } from 'vitest';
import {
  gcOverlap,
  parseGcLog,
  parseVegetaCsv,
  quantile,
} from '../../../bench/envoy-load/gc-overlap.mjs';

describe('envoy-load gc overlap', () => {
  it('takes nearest-rank quantiles', () => {
    const xs = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(quantile(xs, 0.99)).toBe(99);
    expect(quantile(xs, 0.5)).toBe(50);
    expect(quantile(xs, 1)).toBe(100);
    expect(quantile([], 0.5)).toBeUndefined();
  });

  it('parses gc-log lines and vegeta csv rows, skipping junk', () => {
    expect(parseGcLog('20.5 0.4 1\nnot a line\n\n10 2 4\n')).toEqual([
      { startMs: 10, durationMs: 2, kind: 4 },
      { startMs: 20.5, durationMs: 0.4, kind: 1 },
    ]);
    const csv =
      '1795750777082423841,200,3681423,2048,0,,,,0,POST,http://127.0.0.1:1/x,SGk=\n' +
      '1795750777084195775,500,"2601352",2048,0,"a, quoted error",,,1,POST,http://127.0.0.1:1/x,\n';
    const reqs = parseVegetaCsv(csv);
    expect(reqs).toHaveLength(1);
    expect(reqs[0]?.latencyMs).toBeCloseTo(3.681423, 6);
    expect(reqs[0]?.startMs).toBeCloseTo(1795750777082.4238, 3);
  });

  it('counts a request as delayed only when a pause intersects its interval', () => {
    // 100 requests, one every 10 ms, 1 ms each; two slow ones (5 ms) at 500 and 600 ms.
    const requests = Array.from({ length: 100 }, (_, i) => ({
      startMs: i * 10,
      latencyMs: i === 50 || i === 60 ? 5 : 1,
    }));
    const pauses = [
      { startMs: 502, durationMs: 2, kind: 1 }, // inside request 50 (500–505)
      { startMs: 601, durationMs: 0.5, kind: 1 }, // inside request 60 (600–605)
      { startMs: 700.5, durationMs: 0.2, kind: 1 }, // inside request 70 (700–701)
      { startMs: 853, durationMs: 5, kind: 4 }, // between requests 85 (850–851) and 86 (860)
      { startMs: 99_999, durationMs: 1, kind: 1 }, // after the window: ignored
    ];
    const r = gcOverlap(requests, pauses);
    // requests 50, 60 and 70 overlap one
    expect(r?.requestsOverlappingPct).toBe(3);
    // the slowest 1 % (≥ p99 = 5 ms) are requests 50 and 60, both overlapping
    expect(r?.p99Ms).toBe(5);
    expect(r?.slowest1PctOverlappingPct).toBe(100);
    // the other 97 all took 1 ms
    expect(r?.p99WithoutOverlapMs).toBe(1);
    expect(r?.pauses).toEqual({
      scavenge: { count: 3, totalMs: 2.7, maxMs: 2, p50Ms: 0.5 },
      markCompact: { count: 1, totalMs: 5, maxMs: 5, p50Ms: 5 },
    });
  });

  it('finds a long pause that started before a request that follows shorter ones', () => {
    const requests = [{ startMs: 100, latencyMs: 1 }];
    const pauses = [
      { startMs: 50, durationMs: 60, kind: 4 }, // 50–110 covers the request
      { startMs: 90, durationMs: 1, kind: 1 },
      { startMs: 95, durationMs: 1, kind: 1 },
    ];
    expect(gcOverlap(requests, pauses)?.requestsOverlappingPct).toBe(100);
    expect(gcOverlap([], pauses)).toBeUndefined();
  });
});
