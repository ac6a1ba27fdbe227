/**
 * serve's V8 setting: on a V8 that has it, ArrayBuffer churn no longer forces
 * mark-compacts (counted through the GC performance entries); elsewhere, and
 * when the command line turns it off, nothing is set.
 */
import { type PerformanceEntry, PerformanceObserver } from 'node:perf_hooks';
import { describe, expect, it } from 'vitest';
import { accountExternalMemoryInGlobalLimit } from '../../../src/cli/gc-flags.js';

const modernV8 = Number(process.versions.v8.split('.')[0]) >= 13;

describe('accountExternalMemoryInGlobalLimit', () => {
  it('leaves old V8s and an explicit --no-… alone, and trusts an explicit flag', () => {
    expect(accountExternalMemoryInGlobalLimit([], '11.3.244.8-node.38')).toBe(false);
    expect(
      accountExternalMemoryInGlobalLimit(
        ['--no-external-memory-accounted-in-global-limit'],
        '13.6',
      ),
    ).toBe(false);
    expect(
      accountExternalMemoryInGlobalLimit(['--external-memory-accounted-in-global-limit'], '11.3'),
    ).toBe(true);
  });

  it.runIf(modernV8)(
    'stops 1 GB of short-lived ArrayBuffers from forcing mark-compacts',
    async () => {
      expect(accountExternalMemoryInGlobalLimit([])).toBe(true);
      let majors = 0;
      const obs = new PerformanceObserver((list) => {
        for (const e of list.getEntries()) {
          const detail = (e as PerformanceEntry & { detail?: { kind?: number } }).detail;
          if (detail?.kind === 4) majors++;
        }
      });
      obs.observe({ entryTypes: ['gc'] });
      // Without the setting V8 runs a mark-compact per 64 MB of ArrayBuffers: ~15 here.
      const live: Uint8Array[] = [];
      for (let i = 0; i < 4096; i++) {
        live.push(new Uint8Array(256 * 1024));
        if (live.length > 64) live.shift();
        if (i % 256 === 0) await new Promise((r) => setImmediate(r));
      }
      await new Promise((r) => setTimeout(r, 20));
      obs.disconnect();
      expect(majors).toBeLessThanOrEqual(2);
    },
  );
});
