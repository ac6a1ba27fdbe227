/**
 * Runs the hot path inline for small bodies and on a Piscina pool for large
 * ones, so a large prompt never blocks the event loop. Scoring always happens
 * on the calling thread (microseconds, and the JS index is thread-confined).
 *
 * Contract: `prepare` resolves to exactly what `prepareRouteInline` returns
 * for the same input, whichever way it ran; request errors reject with the
 * same KvEppError codes. The addon must be loaded on the main thread before
 * the pool starts (`create` does that).
 */
import { Piscina } from 'piscina';
import { KvEppError } from '../errors.js';
import { NativeKvIndex } from '../kv/native/radix-index.js';
import {
  type BodyWork,
  type HotPath,
  prepareRouteInline,
  type RoutePrep,
  type RouteSettings,
  UntokenizableBody,
} from '../pipeline/route-prep.js';
import type { Cancellation } from '../server/routing-types.js';
import type { PromptDialect } from '../tokenize/dynamo-dialect.js';
import { NativeTokenizer } from '../tokenize/native/tokenizer.js';
import type { ApiKind } from '../tokenize/types.js';
import { workerEntryFile } from './entry-file.js';
import type { PrepareResult, PrepareTask, TokenizerRef } from './protocol.js';

export interface PreparerOptions {
  /** Worker threads; 0 runs everything inline. */
  poolSize: number;
  /** Bodies of at least this many bytes go to the pool. */
  offloadBytes: number;
  /**
   * Nice increment of the pool's threads over the event loop's (0–19; 0 or
   * absent = the same priority). Lowering needs no privilege. Applied by each
   * worker to its own thread (Piscina's `niceIncrement`, through the optional
   * `@napi-rs/nice`; per-thread on Linux). Without that package, or where nice
   * is per-process, the workers keep the event loop's priority.
   */
  poolNice?: number | undefined;
  /** Chat template override the JS workers must load too. */
  chatTemplate?: string | undefined;
  /** The prompt dialect the JS workers must load too (native workers share the tokenizer). */
  dialect?: PromptDialect | undefined;
}

/** Only where nice is per-thread (Linux): elsewhere it would lower the event loop too. */
function poolNiceApplied(options: PreparerOptions): number {
  return process.platform === 'linux' ? (options.poolNice ?? 0) : 0;
}

/** Measured on the project's 2-core machine; see bench/README.md. */
export const DEFAULT_OFFLOAD_BYTES = 8 * 1024;
/** Measured with 220 KB prompts queueing (bench/README.md finding W). */
export const DEFAULT_POOL_NICE = 10;
export const MAX_POOL_NICE = 19;

/** A pooled task waiting for a free thread. */
interface Waiter {
  /** The thread is the task's now (its slot already counted in `running`). */
  start: () => void;
  fail: (err: KvEppError) => void;
  done: boolean;
}

/** Waiters taken off the front, or dropped, before the array is compacted. */
const COMPACT_AFTER = 1024;

export class RoutePreparer {
  /** Tasks handed to the pool and not finished (at most `threads`). */
  private running = 0;
  /** FIFO of tasks waiting for a thread; entries before `head` are gone. */
  private waiters: Waiter[] = [];
  private head = 0;
  /** Waiters neither started nor dropped. */
  private waiting = 0;
  /** Dropped waiters still in `waiters` (compacted away once they outnumber the live). */
  private dead = 0;
  private dropped = 0;

  private constructor(
    private readonly path: HotPath,
    private readonly pool: Piscina | undefined,
    /** The pool's threads (0 without a pool). */
    private readonly threads: number,
    private readonly ref: TokenizerRef,
    private readonly offloadBytes: number,
    /** The nice increment the pool's threads were started with (0 without a pool). */
    readonly poolNice: number,
  ) {}

  static create(path: HotPath, options: PreparerOptions): RoutePreparer {
    const t = path.tokenizer;
    const fusedNative = path.fused !== undefined && t instanceof NativeTokenizer;
    const ref: TokenizerRef = {
      backend: fusedNative ? 'native' : 'js',
      source: t.source,
      handle: fusedNative ? t.handle : undefined,
      indexHandle:
        fusedNative && path.index instanceof NativeKvIndex ? path.index.handle : undefined,
      chatTemplate: options.chatTemplate,
      dialect: options.dialect,
    };
    const nice = poolNiceApplied(options);
    const pool =
      options.poolSize > 0
        ? new Piscina({
            filename: workerEntryFile('prepare-worker.js'),
            minThreads: options.poolSize,
            maxThreads: options.poolSize,
            idleTimeout: Number.POSITIVE_INFINITY,
            // Tasks wait in RoutePreparer's own FIFO (first come, first
            // tokenized; a cancelled one is dropped), so Piscina's queue stays
            // empty; strict FIFO still in case a thread is being replaced.
            stricterFIFO: true,
            // kv-epp times tokenization itself (kv_epp_tokenization_seconds).
            recordTiming: false,
            niceIncrement: nice,
          })
        : undefined;
    return new RoutePreparer(
      path,
      pool,
      pool ? options.poolSize : 0,
      ref,
      options.offloadBytes,
      pool ? nice : 0,
    );
  }

  /** Tasks waiting for a worker thread (a metric, and the 429 threshold). */
  get queueDepth(): number {
    return this.waiting + (this.pool?.queueSize ?? 0);
  }

  /** Entries of the waiting FIFO, dropped ones not yet removed included (a bound tests hold). */
  get heldWaiters(): number {
    return this.waiters.length - this.head;
  }

  /** Tasks dropped so far because their request was cancelled while they waited. */
  get droppedTasks(): number {
    return this.dropped;
  }

  offloads(bytes: number): boolean {
    return this.pool !== undefined && bytes >= this.offloadBytes;
  }

  async prepare(
    body: Uint8Array,
    api: ApiKind,
    settings: RouteSettings,
    work?: BodyWork,
    cancel?: Cancellation,
  ): Promise<RoutePrep> {
    const pool = this.pool;
    if (!pool || !this.offloads(body.byteLength)) {
      return prepareRouteInline(this.path, body, api, settings, work);
    }
    const nowMs = settings.nowMs ?? Date.now();
    await this.threadFor(cancel);
    let r: PrepareResult;
    try {
      // A private copy: the caller keeps its body, and a pooled Buffer's backing
      // store is never transferred away; unless the caller gave the body up.
      // Made once a thread is free, so a waiting task holds no second copy.
      const copy: Uint8Array<ArrayBuffer> =
        work?.transferBody && body.buffer instanceof ArrayBuffer
          ? (body as Uint8Array<ArrayBuffer>)
          : new Uint8Array(body);
      const task: PrepareTask = {
        tokenizer: this.ref,
        body: copy,
        api,
        settings: { ...settings, nowMs },
        work,
      };
      r = (await pool.run(task, { transferList: [copy.buffer] })) as PrepareResult;
    } finally {
      this.running--;
      this.startNext();
    }
    if (!r.ok) {
      throw r.body === undefined
        ? new KvEppError(r.code, r.message)
        : new UntokenizableBody(r.message, r.body);
    }
    return {
      tokens: r.tokens,
      localHashes: r.localHashes,
      cacheSalt: r.cacheSalt,
      overlap: r.overlap ?? this.path.index.findMatches(r.localHashes, settings.earlyExit ?? false),
      request: r.request,
    };
  }

  /**
   * Resolves once a thread is this task's (`running` counts it); FIFO. Rejects
   * with `cancelled` when `cancel` fires while the task waits.
   */
  private threadFor(cancel: Cancellation | undefined): Promise<void> {
    if (this.running < this.threads && this.waiting === 0) {
      this.running++;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = {
        start: () => {
          if (cancel) cancel.onCancel = undefined;
          resolve();
        },
        fail: reject,
        done: false,
      };
      this.waiters.push(w);
      this.waiting++;
      if (cancel) {
        cancel.onCancel = () => {
          if (w.done) return;
          w.done = true;
          this.waiting--;
          this.dropped++;
          this.dead++;
          w.fail(new KvEppError('cancelled', 'the gateway abandoned the request'));
          this.dropDead();
        };
      }
    });
  }

  /** Hands a freed thread to the first waiter still waiting. */
  private startNext(): void {
    while (this.head < this.waiters.length && this.running < this.threads) {
      const w = this.waiters[this.head] as Waiter;
      this.head++;
      if (w.done) {
        this.dead--;
        continue;
      }
      w.done = true;
      this.waiting--;
      this.running++;
      w.start();
    }
    if (this.head >= COMPACT_AFTER && this.head * 2 >= this.waiters.length) {
      this.waiters = this.waiters.slice(this.head);
      this.head = 0;
    }
  }

  /**
   * Removes dropped waiters once they outnumber the live ones (and 1 024):
   * while a long task holds every thread, requests opened and cancelled at any
   * rate keep no more than that behind them. Amortised O(1) per drop.
   */
  private dropDead(): void {
    if (this.dead <= Math.max(COMPACT_AFTER, this.waiting)) return;
    this.waiters = this.waiters.slice(this.head).filter((w) => !w.done);
    this.head = 0;
    this.dead = 0;
  }

  /** Ends the pool; tasks still waiting for a thread reject with `disposed`. */
  async close(): Promise<void> {
    const left = this.waiters.slice(this.head);
    this.waiters = [];
    this.head = 0;
    this.waiting = 0;
    this.dead = 0;
    for (const w of left) {
      if (w.done) continue;
      w.done = true;
      w.fail(new KvEppError('disposed', 'the tokenization pool was closed'));
    }
    await this.pool?.destroy();
  }
}
