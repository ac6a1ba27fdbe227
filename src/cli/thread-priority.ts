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
 * nobody else wants and yield the moment a normal thread wakes. That is safe
 * only where the main thread never waits for them: with `--single-threaded-gc`
 * (the launchers' flags) GC does not use them; without it they are left alone
 * (`gcOnWorkers`). Work the main thread joins late still can wait for one
 * (compile jobs cancelled at the isolate's teardown, after the drain).
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

/**
 * Whether V8 collects garbage on the main thread alone (`--single-threaded-gc`
 * on the command line or in NODE_OPTIONS). Without it each GC pause splits
 * its work with the `V8Worker` threads and waits for them.
 */
export function gcOnMainThreadOnly(
  execArgv: readonly string[] = process.execArgv,
  nodeOptions: string | undefined = process.env.NODE_OPTIONS,
): boolean {
  const flags = [...execArgv, ...(nodeOptions ?? '').split(/\s+/)];
  return flags.some((f) => f === '--single-threaded-gc' || f === '--single_threaded_gc');
}

/**
 * `gcOnWorkers`: GC pauses wait for these threads (no `--single-threaded-gc`).
 * They are then left alone: a pause, and the isolate's teardown at exit, that
 * waits for a thread starved under SCHED_IDLE or nice 19 on a saturated
 * machine waited tens of seconds (a priority inversion, not a delay).
 */
export function lowerV8WorkerPriority(
  requested: V8WorkerPriority,
  ops: ThreadOps,
  gcOnWorkers = false,
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
  if (gcOnWorkers) {
    return report(
      'none',
      0,
      0,
      "V8's GC shares its pauses with these threads (no --single-threaded-gc): left at normal priority",
    );
  }
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
