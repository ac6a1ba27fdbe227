/**
 * serve's V8 setting: on a V8 that has it, ArrayBuffer churn no longer forces
 * mark-compacts (counted through the GC performance entries); elsewhere, and
 * when the command line turns it off, nothing is set. Every launcher passes
 * the same command-line V8 flags.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { type PerformanceEntry, PerformanceObserver } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import {
  accountExternalMemoryInGlobalLimit,
  LAUNCHER_V8_FLAGS,
  launcherFlagsPresent,
} from '../../../src/cli/gc-flags.js';

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

describe('the launchers’ V8 flags', () => {
  const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
  const read = (f: string) => readFileSync(join(root, f), 'utf8');
  /** The node flags each launcher passes, as written in it. */
  const launchers: Record<string, () => string[]> = {
    Dockerfile: () => {
      const line = read('Dockerfile')
        .split('\n')
        .find((l) => l.startsWith('ENTRYPOINT'));
      return (JSON.parse((line as string).slice('ENTRYPOINT'.length)) as string[]).filter((a) =>
        a.startsWith('--'),
      );
    },
    'npm start': () => {
      const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string> };
      return (pkg.scripts.start as string).split(/\s+/).filter((a) => a.startsWith('--'));
    },
    'scripts/serve.sh': () => {
      const line = read('scripts/serve.sh')
        .split('\n')
        .find((l) => l.startsWith('exec node'));
      return (line as string).split(/\s+/).filter((a) => a.startsWith('--'));
    },
    'bench/envoy-load/run.mjs': () => {
      const m = /^const GC_FLAGS = '([^']*)';$/m.exec(read('bench/envoy-load/run.mjs'));
      return (m?.[1] ?? '').split(/\s+/);
    },
  };

  it.each(Object.keys(launchers))('%s passes every one of them', (name) => {
    const flags = (launchers[name] as () => string[])();
    for (const f of LAUNCHER_V8_FLAGS) expect(flags).toContain(f);
    expect(launcherFlagsPresent(flags)).toBe(true);
  });

  it('gcTuned needs each flag by name, whatever its value', () => {
    expect(launcherFlagsPresent([...LAUNCHER_V8_FLAGS])).toBe(true);
    expect(
      launcherFlagsPresent([
        '--max-semi-space-size=8',
        '--initial-old-space-size=512',
        '--single-threaded-gc',
      ]),
    ).toBe(true);
    for (const f of LAUNCHER_V8_FLAGS) {
      expect(launcherFlagsPresent(LAUNCHER_V8_FLAGS.filter((x) => x !== f))).toBe(false);
    }
    // A flag that merely starts with another's name is not it.
    expect(
      launcherFlagsPresent([
        '--max-semi-space-size=4',
        '--initial-old-space-size=256',
        '--single-threaded-gc-in-background',
      ]),
    ).toBe(false);
  });
});
