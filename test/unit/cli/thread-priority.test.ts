/**
 * V8 worker priority: the selection and fallback rules against fake thread
 * tables, then the real thing in a child Node process (its threads' policy and
 * nice value read back from /proc), so this test process keeps its own.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import {
  gcOnMainThreadOnly,
  LOW_NICE,
  lowerV8WorkerPriority,
  type ThreadOps,
} from '../../../src/cli/thread-priority.js';

function fakeOps(names: string[], opts: { idle?: boolean; refuse?: number[] } = {}) {
  const calls: string[] = [];
  const refuse = (tid: number) => {
    if (opts.refuse?.includes(tid)) throw new Error(`EPERM on ${tid}`);
  };
  const ops: ThreadOps = {
    listThreads: () => names.map((name, i) => ({ tid: 100 + i, name })),
    setIdle: opts.idle
      ? (tid) => {
          refuse(tid);
          calls.push(`idle ${tid}`);
        }
      : undefined,
    setNice: (tid, nice) => {
      refuse(tid);
      calls.push(`nice ${tid} ${nice}`);
    },
  };
  return { ops, calls };
}

const NODE24_NAMES = ['MainThread', 'DelayedTaskSche', 'V8Worker', 'V8Worker', 'libuv-worker'];

describe('lowerV8WorkerPriority', () => {
  it('moves only the V8Worker threads to SCHED_IDLE', () => {
    const { ops, calls } = fakeOps(NODE24_NAMES, { idle: true });
    expect(lowerV8WorkerPriority('idle', ops)).toEqual({
      requested: 'idle',
      applied: 'idle',
      threads: 2,
      failed: 0,
    });
    expect(calls).toEqual(['idle 102', 'idle 103']);
  });

  it('falls back to nice 19 without the addon, and says so', () => {
    const { ops, calls } = fakeOps(NODE24_NAMES);
    const r = lowerV8WorkerPriority('idle', ops);
    expect(r).toMatchObject({ requested: 'idle', applied: 'low', threads: 2, failed: 0 });
    expect(r.reason).toMatch(/no SCHED_IDLE call.*nice 19 instead/);
    expect(calls).toEqual([`nice 102 ${LOW_NICE}`, `nice 103 ${LOW_NICE}`]);
  });

  it('leaves them alone while GC pauses wait for them (no --single-threaded-gc)', () => {
    for (const requested of ['idle', 'low'] as const) {
      const { ops, calls } = fakeOps(NODE24_NAMES, { idle: true });
      const r = lowerV8WorkerPriority(requested, ops, true);
      expect(r).toMatchObject({ requested, applied: 'none', threads: 0, failed: 0 });
      expect(r.reason).toMatch(/no --single-threaded-gc/);
      expect(calls).toEqual([]);
    }
  });

  it('knows GC runs on the main thread alone from the command line or NODE_OPTIONS', () => {
    expect(gcOnMainThreadOnly(['--single-threaded-gc'], undefined)).toBe(true);
    expect(gcOnMainThreadOnly([], '--max-old-space-size=384 --single-threaded-gc')).toBe(true);
    expect(gcOnMainThreadOnly(['--max-semi-space-size=4'], '')).toBe(false);
    expect(gcOnMainThreadOnly(['--single-threaded'], undefined)).toBe(false);
  });

  it('uses nice 19 for low even when SCHED_IDLE is available', () => {
    const { ops, calls } = fakeOps(NODE24_NAMES, { idle: true });
    expect(lowerV8WorkerPriority('low', ops)).toMatchObject({ applied: 'low', threads: 2 });
    expect(calls).toEqual([`nice 102 ${LOW_NICE}`, `nice 103 ${LOW_NICE}`]);
  });

  it('leaves everything alone for normal', () => {
    const { ops, calls } = fakeOps(NODE24_NAMES, { idle: true });
    expect(lowerV8WorkerPriority('normal', ops)).toEqual({
      requested: 'normal',
      applied: 'none',
      threads: 0,
      failed: 0,
    });
    expect(calls).toEqual([]);
  });

  it('changes nothing when the threads are unnamed (Node 20) or cannot be listed', () => {
    const { ops, calls } = fakeOps(['node', 'node', 'node'], { idle: true });
    expect(lowerV8WorkerPriority('idle', ops)).toMatchObject({
      applied: 'none',
      threads: 0,
      reason: expect.stringMatching(/no thread named V8Worker/),
    });
    expect(calls).toEqual([]);
    const broken: ThreadOps = {
      listThreads: () => {
        throw new Error('ENOENT: /proc/self/task');
      },
      setIdle: undefined,
      setNice: () => {},
    };
    expect(lowerV8WorkerPriority('low', broken)).toMatchObject({
      applied: 'none',
      reason: expect.stringMatching(/cannot list threads: ENOENT/),
    });
  });

  it('counts a refused thread and still changes the others', () => {
    const { ops, calls } = fakeOps(NODE24_NAMES, { idle: true, refuse: [102] });
    const r = lowerV8WorkerPriority('idle', ops);
    expect(r).toMatchObject({ applied: 'idle', threads: 1, failed: 1 });
    expect(r.reason).toMatch(/refused: EPERM on 102/);
    expect(calls).toEqual(['idle 103']);
    const all = fakeOps(NODE24_NAMES, { idle: true, refuse: [102, 103] });
    expect(lowerV8WorkerPriority('idle', all.ops)).toMatchObject({
      applied: 'none',
      threads: 0,
      failed: 2,
    });
  });
});

const ROOT = join(import.meta.dirname, '../../..');
const DIST_MODULE = join(ROOT, 'dist/src/cli/thread-priority.js');
const DIST_BINDING = join(ROOT, 'dist/src/kv/native/binding.js');
const namedV8Workers = Number(process.versions.node.split('.')[0]) >= 22;

/**
 * Runs `mode` in a fresh Node process and returns its report and, per thread,
 * the name, scheduling policy (field 41 of /proc/<tid>/stat; 0 = SCHED_OTHER,
 * 5 = SCHED_IDLE) and nice value (field 19).
 */
function applyInChild(mode: string) {
  const script = `
    import { readdirSync, readFileSync } from 'node:fs';
    const { lowerV8WorkerPriority, linuxThreadOps } = await import(${JSON.stringify(pathToFileURL(DIST_MODULE).href)});
    const { loadNativeBinding } = await import(${JSON.stringify(pathToFileURL(DIST_BINDING).href)});
    const b = await loadNativeBinding();
    const report = lowerV8WorkerPriority(${JSON.stringify(mode)}, linuxThreadOps((t) => b.setThreadIdlePriority(t)));
    const threads = readdirSync('/proc/self/task').map((t) => {
      const stat = readFileSync('/proc/self/task/' + t + '/stat', 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return { tid: Number(t), name: readFileSync('/proc/self/task/' + t + '/comm', 'utf8').trim(),
               policy: Number(f[41 - 3]), nice: Number(f[19 - 3]) };
    });
    console.log(JSON.stringify({ report, pid: process.pid, threads }));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    encoding: 'utf8',
  });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return JSON.parse(r.stdout) as {
    report: ReturnType<typeof lowerV8WorkerPriority>;
    pid: number;
    threads: Array<{ tid: number; name: string; policy: number; nice: number }>;
  };
}

describe.runIf(process.platform === 'linux' && namedV8Workers && existsSync(DIST_MODULE))(
  'on this machine (a child Node process, the built addon)',
  () => {
    const SCHED_OTHER = 0;
    const SCHED_IDLE = 5;

    it('idle puts exactly the V8Worker threads on SCHED_IDLE', () => {
      const { report, pid, threads } = applyInChild('idle');
      const workers = threads.filter((t) => t.name === 'V8Worker');
      expect(workers.length).toBeGreaterThan(0);
      expect(report).toEqual({
        requested: 'idle',
        applied: 'idle',
        threads: workers.length,
        failed: 0,
      });
      for (const t of threads) {
        expect({ name: t.name, policy: t.policy }).toEqual({
          name: t.name,
          policy: t.name === 'V8Worker' ? SCHED_IDLE : SCHED_OTHER,
        });
      }
      expect(threads.find((t) => t.tid === pid)?.name).toBe('MainThread');
    });

    it('low gives the V8Worker threads nice 19 and nobody else', () => {
      const { report, threads } = applyInChild('low');
      expect(report).toMatchObject({ applied: 'low', failed: 0 });
      for (const t of threads) {
        expect({ name: t.name, policy: t.policy, nice: t.nice }).toEqual({
          name: t.name,
          policy: SCHED_OTHER,
          nice: t.name === 'V8Worker' ? LOW_NICE : 0,
        });
      }
    });
  },
);
