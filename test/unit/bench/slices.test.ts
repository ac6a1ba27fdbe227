import { describe, expect, it } from 'vitest';
import {
  addDelta,
  pooledThroughput,
  sliceOrder,
  zeroLike,
} from '../../../bench/envoy-load/slices.mjs';

describe('envoy-load slices', () => {
  it('rotates the set-up order per slice, so each set-up follows each other one', () => {
    const order = ['plain', 'noop', 'kvepp'];
    expect([0, 1, 2, 3].map((k) => sliceOrder(order, k))).toEqual([
      ['plain', 'noop', 'kvepp'],
      ['noop', 'kvepp', 'plain'],
      ['kvepp', 'plain', 'noop'],
      ['plain', 'noop', 'kvepp'],
    ]);
    expect(order).toEqual(['plain', 'noop', 'kvepp']);
  });

  it('sums what changed during each slice and nothing from the gaps between them', () => {
    const acc = {};
    // slice 1: t 10 → 12; the counters move on by 100 in the gap before slice 2
    addDelta(
      acc,
      { at: 10, procs: { kvepp: 1.0 }, kvMetrics: { routed: 5 } },
      { at: 12, procs: { kvepp: 1.5 }, kvMetrics: { routed: 1005 } },
    );
    addDelta(
      acc,
      { at: 20, procs: { kvepp: 9.0 }, kvMetrics: { routed: 1105 } },
      { at: 22, procs: { kvepp: 9.25 }, kvMetrics: { routed: 2105 } },
    );
    expect(acc).toEqual({ at: 4, procs: { kvepp: 0.75 }, kvMetrics: { routed: 2000 } });
  });

  it('counts a leaf that appeared during a slice from 0 and skips one that vanished', () => {
    const acc = addDelta(
      {},
      { envoy: { gone: 3 }, upstream: undefined, self: { self: 1 } },
      { envoy: { fresh: 7 }, upstream: { requests: 4 }, self: { self: 2, children: undefined } },
    );
    expect(acc).toEqual({ envoy: { fresh: 7 }, upstream: { requests: 4 }, self: { self: 1 } });
  });

  it('gives a pooled delta a zero "before" of the same shape', () => {
    const d = { at: 4, procs: { kvepp: 0.75, envoy: 0.5 }, kvThreads: { main: 0.2 } };
    expect(zeroLike(d)).toEqual({ at: 0, procs: { kvepp: 0, envoy: 0 }, kvThreads: { main: 0 } });
  });

  it('pools throughput over attack time only', () => {
    // two 2 s slices (plus 1 ms wait each) of 1000 requests, all and 90 % successful
    const reps = [
      { requests: 1000, success: 1, duration: 2e9, wait: 1e6 },
      { requests: 1000, success: 0.9, duration: 2e9, wait: 1e6 },
    ];
    expect(pooledThroughput(reps)).toBeCloseTo(1900 / 4.002, 6);
    expect(pooledThroughput([])).toBe(0);
  });
});
