/**
 * The GC pacer: its rule against a fake heap, and, against the real V8, that
 * old-space growth past a step starts a mark-compact (seen as a forced
 * major-GC performance entry), while no growth starts nothing.
 */
import { constants, type PerformanceEntry, PerformanceObserver } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { GcPacer, startGcPacer } from '../../../src/cli/gc-pacer.js';

const MB = 1024 * 1024;

function fakeHeap(start: number) {
  const heap = { used: start, gcs: 0 };
  const pacer = new GcPacer(10 * MB, {
    oldSpaceUsed: () => heap.used,
    startMajorGc: () => {
      heap.gcs++;
    },
  });
  return { heap, pacer };
}

describe('GcPacer', () => {
  it('asks for one GC per step of growth over the last low point', () => {
    const { heap, pacer } = fakeHeap(20 * MB);
    heap.used = 30 * MB;
    expect(pacer.tick()).toBe(false); // exactly one step: not past it
    heap.used = 30 * MB + 1;
    expect(pacer.tick()).toBe(true);
    expect(heap.gcs).toBe(1);
    // Still growing while the GC it asked for runs: not again within the next step.
    heap.used = 35 * MB;
    expect(pacer.tick()).toBe(false);
    heap.used = 41 * MB;
    expect(pacer.tick()).toBe(true);
    expect(heap.gcs).toBe(2);
  });

  it('re-bases on any drop in old-space use (a mark-compact, ours or V8 own)', () => {
    const { heap, pacer } = fakeHeap(20 * MB);
    heap.used = 29 * MB;
    expect(pacer.tick()).toBe(false);
    heap.used = 12 * MB; // V8 collected on its own
    expect(pacer.tick()).toBe(false);
    heap.used = 23 * MB; // 11 MB over the new low
    expect(pacer.tick()).toBe(true);
    expect(heap.gcs).toBe(1);
  });
});

describe('startGcPacer', () => {
  /**
   * Resolves at the first major GC someone asked for (the forced flag: V8's
   * own GCs, such as its memory reducer's when the loop idles, lack it).
   */
  function nextRequestedMajorGc(): { seen: Promise<void>; stop(): void } {
    let obs: PerformanceObserver | undefined;
    const seen = new Promise<void>((resolve) => {
      obs = new PerformanceObserver((list) => {
        for (const e of list.getEntries() as PerformanceEntry[]) {
          const d = (e as PerformanceEntry & { detail?: { kind?: number; flags?: number } }).detail;
          if (
            d?.kind === constants.NODE_PERFORMANCE_GC_MAJOR &&
            ((d.flags ?? 0) & constants.NODE_PERFORMANCE_GC_FLAGS_FORCED) !== 0
          )
            resolve();
        }
      });
      obs.observe({ entryTypes: ['gc'] });
    });
    return { seen, stop: () => obs?.disconnect() };
  }

  it('starts a mark-compact once old space grew past the step, and not before', async () => {
    // A GC function of the test's own, to promote objects into old space.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as (o: { type: 'minor' }) => void;
    const pacer = startGcPacer(4 * MB, 3_600_000);
    expect(pacer).toBeDefined();
    if (!pacer) return;
    try {
      expect(pacer.tick()).toBe(false);
      const keep: number[][] = [];
      for (let i = 0; i < 200_000; i++) keep.push([i, i + 1, i + 2, i + 3]);
      gc({ type: 'minor' });
      gc({ type: 'minor' });
      const major = nextRequestedMajorGc();
      try {
        expect(pacer.tick()).toBe(true);
        // Incremental: V8 finishes it from the event loop; the test's timeout bounds the wait
        // (without the pacer's request no forced major GC ever comes).
        await major.seen;
      } finally {
        major.stop();
      }
      expect(keep.length).toBe(200_000);
    } finally {
      pacer.stop();
    }
  }, 30_000);
});
