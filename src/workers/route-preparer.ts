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

export class RoutePreparer {
  private constructor(
    private readonly path: HotPath,
    private readonly pool: Piscina | undefined,
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
            // First come, first tokenized. Piscina's default puts a task it
            // could not hand to a busy worker back at the tail of the queue, so
            // under sustained load some requests were passed over again and
            // again (220 KB prompts at c = 150: p50 0.21 s, p99 2.6 s, max 8 s).
            stricterFIFO: true,
            // kv-epp times tokenization itself (kv_epp_tokenization_seconds).
            recordTiming: false,
            niceIncrement: nice,
          })
        : undefined;
    return new RoutePreparer(path, pool, ref, options.offloadBytes, pool ? nice : 0);
  }

  /** Tasks waiting for a worker (a metric). */
  get queueDepth(): number {
    return this.pool?.queueSize ?? 0;
  }

  offloads(bytes: number): boolean {
    return this.pool !== undefined && bytes >= this.offloadBytes;
  }

  async prepare(
    body: Uint8Array,
    api: ApiKind,
    settings: RouteSettings,
    work?: BodyWork,
  ): Promise<RoutePrep> {
    const pool = this.pool;
    if (!pool || !this.offloads(body.byteLength)) {
      return prepareRouteInline(this.path, body, api, settings, work);
    }
    // A private copy: the caller keeps its body, and a pooled Buffer's backing
    // store is never transferred away; unless the caller gave the body up.
    const copy: Uint8Array<ArrayBuffer> =
      work?.transferBody && body.buffer instanceof ArrayBuffer
        ? (body as Uint8Array<ArrayBuffer>)
        : new Uint8Array(body);
    const nowMs = settings.nowMs ?? Date.now();
    const task: PrepareTask = {
      tokenizer: this.ref,
      body: copy,
      api,
      settings: { ...settings, nowMs },
      work,
    };
    const r = (await pool.run(task, { transferList: [copy.buffer] })) as PrepareResult;
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

  async close(): Promise<void> {
    await this.pool?.destroy();
  }
}
