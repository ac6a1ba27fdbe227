/**
 * Lowers the scheduling priority of V8's background threads (adapter:
 * node:fs, node:os, the addon's `setThreadIdlePriority`).
 *
 * Why: V8's platform workers (thread name `V8Worker`: parallel scavenges,
 * concurrent marking and sweeping, optimizing compiles) run at the event
 * loop's priority. On a 2-core machine shared with the gateway they ran in
 * slices of 1–3 ms that took a core from Envoy's worker or from kv-epp's own
 * event loop; at 500 req/s 30 of the 50 slowest requests overlapped one
 * (bench/README.md, finding U). Under `SCHED_IDLE` they run only on a core
 * nobody else wants and yield the moment a normal thread wakes; V8 finishes
 * any GC work they have not done on the main thread, so nothing is lost,
 * only moved to when the CPU is free.
 *
 * Modes: `idle` = SCHED_IDLE (needs the addon on the hot path; else `low`), `low` =
 * nice 19 (`os.setPriority` on the thread id), `normal` = untouched.
 * Contract: only threads named `V8Worker` in /proc/self/task/<tid>/comm
 * change; the event loop, libuv's pool and the Piscina workers keep their
 * priority. Node ≥ 22 names V8's workers; older Nodes leave every thread
 * named `node`, and then nothing changes (reported, not an error). Lowering
 * needs no privilege, and a process cannot raise it back without
 * CAP_SYS_NICE, so this is applied once, at start-up.
 * Failure modes: no /proc (not Linux) → nothing changes, `reason` says why;
 * a thread the kernel refuses (seccomp, a thread gone meanwhile) is counted
 * in `failed` and the rest still change. Never throws.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { setPriority } from 'node:os';

export type V8WorkerPriority = 'idle' | 'low' | 'normal';

export const V8_WORKER_THREAD_NAME = 'V8Worker';
/** The nice value of `low`: the weakest share CFS/EEVDF gives a normal thread. */
export const LOW_NICE = 19;

export interface ThreadPriorityReport {
  requested: V8WorkerPriority;
  /** What the changed threads now run at; `none` when no thread changed. */
  applied: 'idle' | 'low' | 'none';
  /** Threads moved to `applied`. */
  threads: number;
  /** Threads the kernel refused. */
  failed: number;
  reason?: string;
}

/** The process's threads and the two ways of lowering one (injected in tests). */
export interface ThreadOps {
  /** This process's threads; throws when the platform cannot list them. */
  listThreads(): Array<{ tid: number; name: string }>;
  /** SCHED_IDLE for one thread; undefined when the addon is not loaded. */
  setIdle: ((tid: number) => void) | undefined;
  setNice(tid: number, nice: number): void;
}

export function lowerV8WorkerPriority(
  requested: V8WorkerPriority,
  ops: ThreadOps,
): ThreadPriorityReport {
  const report = (
    applied: ThreadPriorityReport['applied'],
    threads: number,
    failed: number,
    reason?: string,
  ): ThreadPriorityReport => ({
    requested,
    applied,
    threads,
    failed,
    ...(reason === undefined ? {} : { reason }),
  });
  if (requested === 'normal') return report('none', 0, 0);
  let workers: number[];
  try {
    workers = ops
      .listThreads()
      .filter((t) => t.name === V8_WORKER_THREAD_NAME)
      .map((t) => t.tid);
  } catch (e) {
    return report('none', 0, 0, `cannot list threads: ${(e as Error).message}`);
  }
  if (workers.length === 0) {
    return report(
      'none',
      0,
      0,
      `no thread named ${V8_WORKER_THREAD_NAME} (Node < 22 leaves them unnamed)`,
    );
  }
  const setIdle = requested === 'idle' ? ops.setIdle : undefined;
  const mode = setIdle ? 'idle' : 'low';
  let failed = 0;
  let lastError = '';
  for (const tid of workers) {
    try {
      if (setIdle) setIdle(tid);
      else ops.setNice(tid, LOW_NICE);
    } catch (e) {
      failed++;
      lastError = (e as Error).message;
    }
  }
  const changed = workers.length - failed;
  const reasons = [
    requested === 'idle' && !setIdle
      ? 'no SCHED_IDLE call (a JS hot path, or no addon): nice 19 instead'
      : '',
    failed > 0 ? `refused: ${lastError}` : '',
  ].filter(Boolean);
  return report(changed > 0 ? mode : 'none', changed, failed, reasons.join('; ') || undefined);
}

/** The real thing: /proc/self/task and, when given, the addon's SCHED_IDLE call. */
export function linuxThreadOps(setIdle?: (tid: number) => void): ThreadOps {
  return {
    listThreads: () =>
      readdirSync('/proc/self/task').map((t) => {
        let name = '';
        try {
          name = readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim();
        } catch {
          // The thread ended between the listing and the read.
        }
        return { tid: Number(t), name };
      }),
    setIdle,
    setNice: (tid, nice) => setPriority(tid, nice),
  };
}
