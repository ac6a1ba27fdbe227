/**
 * V8 settings kv-epp applies to itself at start-up (adapter: node:v8).
 *
 * `--external-memory-accounted-in-global-limit` makes V8 count ArrayBuffer
 * memory (request bodies, the addon's answers) in its global heap limit
 * instead of starting a mark-compact for every 64 MB of it; with large
 * prompts that was a mark-compact every ~0.3 s (health-check p99 13-19 ms →
 * 4-6 ms, ~15 % more throughput at 220 KB; peak RSS higher, see
 * bench/README.md). It is set at run time because Node 20's V8 refuses it on
 * the command line (start-up would fail); V8 reads it at each limit
 * computation, so setting it before serving takes full effect. V8 ≥ 13
 * (Node 24) has it; older V8s are left alone. An explicit
 * `--no-external-memory-accounted-in-global-limit` on the command line wins.
 */
import { setFlagsFromString } from 'node:v8';

/**
 * The V8 flags the shipped launchers pass on the node command line (Dockerfile,
 * `npm start`, scripts/serve.sh, the Envoy bench); test/unit/cli/gc-flags.test.ts
 * holds every launcher to this list. They only work on the command line (V8
 * reads them when the heap is set up).
 * - `--max-semi-space-size=4`: a small young generation keeps scavenges short.
 * - `--initial-old-space-size=256`: stops V8 from starting a mark-compact every
 *   ~0.6 s on a small heap (p99 at 500 req/s through Envoy: ~10 ms → ~2.6 ms).
 * - `--single-threaded-gc`: the event loop does its GC work itself instead of
 *   waiting in each pause for V8's helper threads, which `serve` puts on
 *   SCHED_IDLE (thread-priority.ts) and which a saturated machine starves:
 *   under 220 KB prompts at c=150 pauses then reached 10-16 ms (bench/README.md
 *   finding Z).
 */
export const LAUNCHER_V8_FLAGS: readonly string[] = [
  '--max-semi-space-size=4',
  '--initial-old-space-size=256',
  '--single-threaded-gc',
];

/** Whether `execArgv` carries every launcher flag (by name; values may differ). */
export function launcherFlagsPresent(execArgv: readonly string[] = process.execArgv): boolean {
  return LAUNCHER_V8_FLAGS.every((f) => {
    const name = f.split('=')[0] as string;
    return execArgv.some((a) => a === name || a.startsWith(`${name}=`));
  });
}

const FLAG = 'external-memory-accounted-in-global-limit';

/** Applies the flag when this V8 has it; returns whether it is on. */
export function accountExternalMemoryInGlobalLimit(
  execArgv: readonly string[] = process.execArgv,
  v8Version: string = process.versions.v8,
): boolean {
  if (execArgv.some((a) => a === `--no-${FLAG}` || a === `--no_${FLAG.replaceAll('-', '_')}`)) {
    return false;
  }
  if (execArgv.some((a) => a === `--${FLAG}`)) return true;
  if (Number(v8Version.split('.')[0]) < 13) return false;
  setFlagsFromString(`--${FLAG}`);
  return true;
}
