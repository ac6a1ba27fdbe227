/**
 * Starts V8's mark-compact early, every `stepBytes` of old-space growth, so
 * that each one has a bounded amount of garbage to clear (adapter: node:v8,
 * node:vm).
 *
 * Why: every ext_proc stream's Node objects (the Http2Stream, its header
 * strings, which Node makes external) outlive young-generation GCs and die
 * only in a mark-compact, and the mark-compact's atomic pause grows with them
 * (clearing the external string table and weak references: ~0.5–0.8 ms per MB
 * of that garbage). With the 256 MB initial old space the launchers set (which
 * the large-prompt path needs: it also sets the global limit ArrayBuffers count
 * against), a busy EPP paused 100–140 ms every 20–40 s. Pacing in steps of
 * 48 MB keeps those pauses at 30–45 ms; where ArrayBuffers already drive
 * mark-compacts (large prompts) the pacer finds no growth and stays idle.
 *
 * Contract: `tick` asks for at most one GC per step of growth; a drop in
 * old-space use (any mark-compact, ours or V8's) re-bases the step. The GC it
 * asks for is a full, atomic mark-compact: `execution: 'async'` only runs it
 * from a task (empty stack), it does not make it incremental (`--trace-gc-nvp`:
 * `incremental=0`, the whole live heap marked in the pause, ~21 ms for 26 MB).
 * That is why `serve` turns it on only for the node:http2 transports, whose
 * garbage made V8's own pauses far longer (bench/README.md, findings O, AJ).
 * Failure modes: if V8 refuses `--expose-gc` at run time, `startGcPacer`
 * returns undefined and nothing is paced.
 */
import { getHeapSpaceStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

export interface GcPacerDeps {
  /** Bytes in use in V8's old space now. */
  oldSpaceUsed(): number;
  /** Starts a major GC without waiting for it. */
  startMajorGc(): void;
}

/** The pacing rule, separate from V8 (tested with a fake heap). */
export class GcPacer {
  /** Old-space use after the last mark-compact seen, or at the last request. */
  private base: number;
  private last: number;

  constructor(
    private readonly stepBytes: number,
    private readonly deps: GcPacerDeps,
  ) {
    this.base = deps.oldSpaceUsed();
    this.last = this.base;
  }

  /** Samples the heap; true when it started a GC. */
  tick(): boolean {
    const used = this.deps.oldSpaceUsed();
    if (used < this.last) this.base = used;
    this.last = used;
    if (used - this.base <= this.stepBytes) return false;
    // Not again until another step: the GC just asked for takes a while.
    this.base = used;
    this.deps.startMajorGc();
    return true;
  }
}

type GcFunction = (options: { type: 'major'; execution: 'async' }) => void;

/**
 * V8's `gc` function, from a fresh context (the main context gets no `gc`
 * global); undefined if this V8 does not provide it.
 */
function exposedGc(): GcFunction | undefined {
  try {
    setFlagsFromString('--expose-gc');
    const gc: unknown = runInNewContext('typeof gc === "function" ? gc : undefined');
    return typeof gc === 'function' ? (gc as GcFunction) : undefined;
  } catch {
    return undefined;
  }
}

function oldSpaceUsed(): number {
  for (const s of getHeapSpaceStatistics()) {
    if (s.space_name === 'old_space') return s.space_used_size;
  }
  return 0;
}

export interface RunningGcPacer {
  /** One sample now (what the timer does every `intervalMs`). */
  tick(): boolean;
  stop(): void;
}

/** Paces mark-compacts every `stepBytes` of old-space growth, sampled every `intervalMs`. */
export function startGcPacer(stepBytes: number, intervalMs = 250): RunningGcPacer | undefined {
  const gc = exposedGc();
  if (gc === undefined) return undefined;
  const pacer = new GcPacer(stepBytes, {
    oldSpaceUsed,
    startMajorGc: () => gc({ type: 'major', execution: 'async' }),
  });
  const timer = setInterval(() => pacer.tick(), intervalMs);
  timer.unref();
  return { tick: () => pacer.tick(), stop: () => clearInterval(timer) };
}
