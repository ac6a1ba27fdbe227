/**
 * The pool's threads run at the configured nice increment and nothing else in
 * the process moves: read back from /proc/self/task/<tid>/stat (field 19),
 * with the built worker (dist/) as production runs it. Linux only: elsewhere
 * nice is per-process and the preparer leaves it alone.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createHotPath } from '../../../src/pipeline/factory.js';
import { RoutePreparer } from '../../../src/workers/route-preparer.js';

const ROOT = join(import.meta.dirname, '../../..');
const QWEN = join(ROOT, 'test/fixtures/tokenizers/qwen3');
const body = new TextEncoder().encode(
  JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hello there' }] }),
);

/** Every thread of this process: tid → nice. */
function threadNices(): Map<number, number> {
  const out = new Map<number, number>();
  for (const t of readdirSync('/proc/self/task')) {
    try {
      const stat = readFileSync(`/proc/self/task/${t}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(Number(t), Number(f[19 - 3]));
    } catch {
      // the thread exited meanwhile
    }
  }
  return out;
}

/**
 * Runs a pool of `poolSize` threads at `poolNice`: the nice values of the
 * threads it started, and every older thread whose nice changed.
 */
async function newThreads(poolNice: number | undefined, poolSize: number) {
  const before = threadNices();
  const path = await createHotPath({ source: QWEN }, 'native');
  const preparer = RoutePreparer.create(path, { poolSize, offloadBytes: 1, poolNice });
  try {
    // One task per worker, at once: every worker has started and applied its nice.
    const preps = await Promise.all(
      Array.from({ length: poolSize * 2 }, () => preparer.prepare(body, 'chat', { blockSize: 4 })),
    );
    expect(preps.every((p) => p.tokens.length > 0)).toBe(true);
    const after = threadNices();
    return {
      reported: preparer.poolNice,
      mainNice: after.get(process.pid),
      changedOld: [...before].filter(([tid, n]) => after.has(tid) && after.get(tid) !== n),
      fresh: [...after].filter(([tid]) => !before.has(tid)).map(([, n]) => n),
    };
  } finally {
    await preparer.close();
  }
}

describe.runIf(process.platform === 'linux')('RoutePreparer pool nice (Linux)', () => {
  it('starts each pool thread at the nice increment and leaves every other thread alone', async () => {
    const r = await newThreads(7, 2);
    expect(r.reported).toBe(7);
    expect(r.mainNice).toBe(0);
    expect(r.changedOld).toEqual([]);
    // The two workers at 7; any other thread started meanwhile (V8's, libuv's) stays at 0.
    expect(r.fresh.filter((n) => n === 7)).toHaveLength(2);
    expect(r.fresh.filter((n) => n !== 7 && n !== 0)).toEqual([]);
  });

  it('with 0, or unset, the pool runs at the event loop priority', async () => {
    for (const nice of [0, undefined]) {
      const r = await newThreads(nice, 1);
      expect(r.reported).toBe(0);
      expect(r.fresh.every((n) => n === 0)).toBe(true);
    }
  });
});
