/**
 * The GC pacer: its rule against a fake heap, and, against the real V8, that
 * old-space growth past a step starts a mark-compact (seen as a GC
 * performance entry), while no growth starts nothing.
 */
import { type PerformanceEntry, PerformanceObserver } from 'node:perf_hooks';
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
  function majorGcs(): { count(): number; stop(): void } {
    let n = 0;
    const obs = new PerformanceObserver((list) => {
      for (const e of list.getEntries() as PerformanceEntry[]) {
        // NODE_PERFORMANCE_GC_MAJOR = 4 (perf_hooks constants)
        if ((e as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind === 4) n++;
      }
    });
    obs.observe({ entryTypes: ['gc'] });
    return { count: () => n, stop: () => obs.disconnect() };
  }

  it('starts a mark-compact once old space grew past the step, and none without growth', async () => {
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
      const majors = majorGcs();
      try {
        expect(pacer.tick()).toBe(true);
        // Incremental: V8 finishes it from the event loop.
        for (let i = 0; i < 10_000 && majors.count() === 0; i++) {
          await new Promise((r) => setImmediate(r));
        }
        expect(majors.count()).toBeGreaterThan(0);
      } finally {
        majors.stop();
      }
      expect(keep.length).toBe(200_000);
    } finally {
      pacer.stop();
    }
  });
});
