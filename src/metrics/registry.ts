/**
 * kv-epp's Prometheus metrics: one prom-client Registry per EppMetrics, the
 * GAIE EPP's metric names, types, labels, help texts and buckets (gaie-epp.md
 * §3.3, `pkg/epp/metrics/metrics.go`, help strings prefixed `[ALPHA]`), Node's
 * process metrics (prom-client's defaults, unprefixed: `process_*` as GAIE's Go
 * collector names them, plus `nodejs_*`), and kv-epp's own `kv_epp_*`.
 * Callers see only the typed methods below; no prom-client type leaves this
 * module except through `MetricsRegistry`, which only src/metrics/http.ts reads.
 *
 * Which value feeds which GAIE metric, and when, is src/metrics/observer.ts's
 * contract; this module only holds the series.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Counter, collectDefaultMetrics, Gauge, Registry } from 'prom-client';
import type { CancelReason } from '../server/routing-types.js';
import type { ExpositionRegistry } from './exposition.js';
import { FastCounter, FastGauge, FastHistogram } from './fast-metrics.js';
import type { PodLoad } from './model-server-metrics.js';

/** Where a finished request was served, relative to the endpoint list kv-epp sent. */
export type ServedOutcome = 'primary' | 'fallback' | 'other' | 'unreported';

/** The registry handle the metrics HTTP server renders (opaque to everyone else). */
export type MetricsRegistry = ExpositionRegistry;

export interface MetricsSources {
  /** InferencePool name, the `name` label of `inference_pool_*` ('' without one). */
  poolName?: string | undefined;
  /**
   * Namespace of the pool's pods, the `namespace` label of successful
   * `inference_extension_scheduler_attempts_total` ('' without one).
   */
  poolNamespace?: string | undefined;
  /**
   * `inference_extension_info{commit,build_ref}`; default: commit from
   * `KV_EPP_COMMIT`, build_ref kv-epp's package.json version ('unknown' when absent).
   */
  build?: { commit: string; buildRef: string } | undefined;
  /**
   * Which implementation each hot-path piece runs on (`kv_epp_backend_info`,
   * value 1): `js` where the native addon did not load, so it can be alerted on.
   */
  backends?: { tokenizer: string; hasher: string; index: string } | undefined;
  /**
   * Node's process metrics (prom-client's collectDefaultMetrics); default on.
   * Costs nothing per request; it keeps an event-loop-delay monitor (a native
   * 10 ms timer) and a GC observer (a JS callback per GC, ~15 µs measured),
   * neither of which can be removed again, so keep it off for short-lived instances.
   */
  processMetrics?: boolean | undefined;
  /** Ready endpoints (`inference_pool_ready_pods`), read at scrape time. */
  readyPods?: (() => number) | undefined;
  /**
   * The model servers' own load figures, fresh ones only (model-server-scraper.ts):
   * `inference_pool_average_*` and `inference_pool_per_pod_queue_size`. Absent: not exported.
   */
  modelServers?:
    | (() => Array<{
        pod: string;
        waiting?: number | undefined;
        running?: number | undefined;
        kvUsage?: number | undefined;
      }>)
    | undefined;
  /**
   * Called once, the first time a (model, target) pair is counted under
   * OVERFLOW_MODEL (a name too long, or the label budget spent), to log it.
   */
  onModelLabelOverflow?: ((why: string) => void) | undefined;
  /** ZMQ KV-event publishers by connection state (`kv_epp_events_zmq_publishers{state}`); undefined: none. */
  zmqPublishers?: (() => { connected: number; notConnected: number } | undefined) | undefined;
  /** Log records dropped so far for a full stderr buffer (`kv_epp_log_records_dropped_total`). */
  droppedLogRecords?: (() => number) | undefined;
  /** Bytes of request and response bodies the ext_proc streams buffer now (`kv_epp_buffered_body_bytes`). */
  bufferedBodyBytes?: (() => number) | undefined;
  /** Requests waiting for a tokenization worker (`kv_epp_pool_queue_depth`). */
  queueDepth?: (() => number) | undefined;
  /** Worker-block memberships in the prefix index (`kv_epp_index_memberships`). */
  indexMemberships?: (() => number) | undefined;
  /** Endpoints left out of routing now for answering 5xx in a row (`kv_epp_ejected_endpoints`). */
  ejectedEndpoints?: (() => number) | undefined;
  /** Blocks each known (worker, dp rank) holds in the index (`kv_epp_index_worker_blocks`). */
  workerBlocks?: (() => Array<{ workerId: bigint; dpRank: number; blocks: number }>) | undefined;
  /** KV event messages waiting to be applied (`kv_epp_events_queued`). */
  eventsQueued?: (() => number) | undefined;
  /** The tokenizer's segment cache lookups so far (`kv_epp_segment_cache_lookups_total`). */
  segmentCache?: (() => { hits: number; misses: number }) | undefined;
  /**
   * The approximate-mode thread's queue: jobs waiting (`kv_epp_approx_queue_depth`)
   * and running totals of jobs lost (`kv_epp_approx_jobs_lost_total`).
   */
  approxQueue?: (() => { queued: number; disposed: number; panicked: number }) | undefined;
}

/** How a request's predicted cached prefix compared with the reported one. */
export type CacheOutcome = 'hit' | 'over' | 'under';

/** What one applied KV-event message contributes to the event metrics. */
export interface EventCounts {
  applied: { stored: number; removed: number; cleared: number };
  blocksStored: number;
  blocksRemoved: number;
  rejected: Partial<Record<string, number>>;
  gaps: number;
  publisherGap: boolean;
  resets: number;
}

/*
 * GAIE's bucket lists, value for value (metrics.go): dashboards and recording
 * rules written for the GAIE EPP see the same `le` labels. Do not "fix" them:
 * 32778 (not 32768) is GAIE's own value.
 */
/** GAIE's `generalLatencyBuckets` (0.005 s … 1 h). */
const DURATION_BUCKETS = [
  0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 45,
  60, 120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600,
];
/** GAIE's `input_tokens` buckets. */
const INPUT_TOKEN_BUCKETS = [
  1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536, 131072, 262144,
  524288, 1048576,
];
const OUTPUT_TOKEN_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192];
/** GAIE's `request_sizes` buckets (64 B … 1 GiB). */
const REQUEST_SIZE_BUCKETS = [
  64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288, 1048576,
  2097152, 4194304, 8388608, 16777216, 33554432, 67108864, 134217728, 268435456, 536870912,
  1073741824,
];
/** GAIE's `response_sizes` buckets. */
const RESPONSE_SIZE_BUCKETS = [
  1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536,
];
/** GAIE's `normalized_time_per_output_token_seconds` buckets. */
const NTPOT_BUCKETS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];
/** GAIE's scheduler buckets (0.1 ms … 100 ms). */
const SCHEDULER_BUCKETS = [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1];
/** kv-epp's route time: the scheduler's range, then up to 10 s (a saturated tokenizer pool). */
const ROUTE_BUCKETS = [
  0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];
/** Event lag buckets (1 ms … 30 s). */
const LAG_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const TOKENIZATION_BUCKETS = [
  0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1,
];
const BLOCK_BUCKETS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192];

const MODEL_LABELS = ['model_name', 'target_model_name'] as const;

/** GAIE's error codes (pkg/common/error/error.go), the only `error_code` values GAIE emits. */
const GAIE_ERROR_CODES: ReadonlySet<string> = new Set([
  'Unknown',
  'BadRequest',
  'Unauthorized',
  'Forbidden',
  'NotFound',
  'Internal',
  'ServiceUnavailable',
  'ModelServerError',
  'ResourceExhausted',
]);

/**
 * The `error_code` label for an error category. kv-epp answers an oversized
 * body with 413 `PayloadTooLarge`, a code GAIE does not have: it is counted as
 * GAIE's `BadRequest` (the client's request was refused as invalid). Any other
 * category GAIE lacks is `Unknown`, as GAIE's CanonicalCode labels an error
 * that carries no GAIE code.
 */
export function gaieErrorCode(category: string): string {
  if (category === 'PayloadTooLarge') return 'BadRequest';
  return GAIE_ERROR_CODES.has(category) ? category : 'Unknown';
}

/** Priority label value: kv-epp has no InferenceObjectives, so GAIE's default. */
const DEFAULT_PRIORITY = '0';

interface Inc {
  inc(): void;
}
interface Observe {
  observe(v: number): void;
}

/** The endpoint a request was scheduled to, as scheduler attempts label it. */
export interface ScheduledEndpoint {
  /** `pod_name`: the endpoint's name (kv-epp's endpoints are not pods; default `address:port`). */
  readonly name: string;
  /** `port`. */
  readonly port: number;
}

/**
 * The series of one (model, target) pair, resolved once per pair and then per
 * request only held: the GAIE per-request metrics plus kv-epp's prompt tokens.
 * Values are recorded as given (the observer applies GAIE's conditions).
 */
export interface RequestSeries {
  /** `inference_objective_request_total{…,priority}`. */
  readonly requests: Inc;
  /** `inference_objective_running_requests{model_name}`. */
  readonly running: Inc & { dec(): void };
  readonly duration: Observe;
  /** `inference_objective_input_tokens`: the model server's `usage.prompt_tokens`. */
  readonly inputTokens: Observe;
  readonly outputTokens: Observe;
  readonly promptCachedTokens: Observe;
  readonly requestSizes: Observe;
  readonly responseSizes: Observe;
  readonly timePerOutputToken: Observe;
  /** `kv_epp_prompt_tokens`: the prompt tokens kv-epp counted when tokenizing. */
  readonly kvEppPromptTokens: Observe;
  /** A successful scheduling attempt for this target, to `endpoint` (labels '' without one). */
  scheduled(endpoint: ScheduledEndpoint | undefined): void;
}

const MAX_CACHED_SERIES = 1024;
/** A (model, target) pair as one key; length-prefixed, since names are client-controlled. */
const pairKey = (model: string, target: string): string => `${model.length}:${model}${target}`;
/**
 * Distinct (model, target) label pairs exported; later new pairs count under
 * OVERFLOW_MODEL. Model names come from clients, and prom-client never drops a
 * series: without a bound, random names would grow /metrics without end.
 */
export const MAX_MODEL_LABEL_PAIRS = 512;
/**
 * A model name longer than this counts under OVERFLOW_MODEL, and so does every
 * new pair once the admitted pairs' names total MAX_MODEL_LABEL_BYTES: each
 * pair is repeated on ~370 lines of /metrics (every histogram bucket), so one
 * 1 MiB name made a 380 MB page that stalled the event loop on every scrape.
 * Kubernetes names stop at 253 characters; Hugging Face ids are far shorter.
 */
export const MAX_MODEL_LABEL_CHARS = 256;
export const MAX_MODEL_LABEL_BYTES = 64 * 1024;
export const OVERFLOW_MODEL = '__other__';
/** Attempt children kept per (model, target) pair (one per endpoint object). */
const MAX_CACHED_ATTEMPTS = 256;

type AttemptLabels = 'status' | 'target_model_name' | 'pod_name' | 'namespace' | 'port';

class ModelSeries implements RequestSeries {
  readonly requests: Inc;
  readonly running: Inc & { dec(): void };
  readonly duration: Observe;
  readonly inputTokens: Observe;
  readonly outputTokens: Observe;
  readonly promptCachedTokens: Observe;
  readonly requestSizes: Observe;
  readonly responseSizes: Observe;
  readonly timePerOutputToken: Observe;
  readonly kvEppPromptTokens: Observe;
  /** Keyed by endpoint object: endpoints live until the endpoint list changes. */
  private readonly attempts = new Map<ScheduledEndpoint | undefined, Inc>();

  constructor(
    m: Metrics,
    model: string,
    private readonly target: string,
    private readonly attemptCounter: FastCounter<AttemptLabels>,
    private readonly namespace: string,
  ) {
    const pair = { model_name: model, target_model_name: target };
    this.requests = m.requests.labels({ ...pair, priority: DEFAULT_PRIORITY });
    this.running = m.running.labels({ model_name: model });
    this.duration = m.duration.labels(pair);
    this.inputTokens = m.inputTokens.labels(pair);
    this.outputTokens = m.outputTokens.labels(pair);
    this.promptCachedTokens = m.promptCachedTokens.labels(pair);
    this.requestSizes = m.requestSizes.labels(pair);
    this.responseSizes = m.responseSizes.labels(pair);
    this.timePerOutputToken = m.timePerOutputToken.labels(pair);
    this.kvEppPromptTokens = m.kvEppPromptTokens.labels(pair);
  }

  scheduled(endpoint: ScheduledEndpoint | undefined): void {
    let c = this.attempts.get(endpoint);
    if (c === undefined) {
      if (this.attempts.size >= MAX_CACHED_ATTEMPTS) this.attempts.clear();
      c = this.attemptCounter.labels({
        status: 'success',
        target_model_name: this.target,
        pod_name: endpoint?.name ?? '',
        namespace: endpoint === undefined ? '' : this.namespace,
        port: endpoint === undefined ? '' : String(endpoint.port),
      });
      this.attempts.set(endpoint, c);
    }
    c.inc();
  }
}

type ModelLabels = 'model_name' | 'target_model_name';

/** The per-(model, target) metric families ModelSeries takes children of. */
interface Metrics {
  requests: FastCounter<ModelLabels | 'priority'>;
  running: FastGauge<'model_name'>;
  duration: FastHistogram<ModelLabels>;
  inputTokens: FastHistogram<ModelLabels>;
  outputTokens: FastHistogram<ModelLabels>;
  promptCachedTokens: FastHistogram<ModelLabels>;
  requestSizes: FastHistogram<ModelLabels>;
  responseSizes: FastHistogram<ModelLabels>;
  timePerOutputToken: FastHistogram<ModelLabels>;
  kvEppPromptTokens: FastHistogram<ModelLabels>;
}

/** kv-epp's package.json version: the nearest package.json named kv-epp above this module (src or dist). */
function packageVersion(): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as {
        name?: unknown;
        version?: unknown;
      };
      if (pkg.name === 'kv-epp' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // none here (or unreadable): look further up
    }
    const up = dirname(dir);
    if (up === dir) return undefined;
    dir = up;
  }
}

/** The build labels of `inference_extension_info` when the caller gives none. */
export function defaultBuildInfo(env: NodeJS.ProcessEnv = process.env): {
  commit: string;
  buildRef: string;
} {
  const commit = env.KV_EPP_COMMIT;
  return {
    commit: commit !== undefined && commit !== '' ? commit : 'unknown',
    buildRef: packageVersion() ?? 'unknown',
  };
}

export class EppMetrics {
  readonly registry: MetricsRegistry;
  private readonly series = new Map<string, ModelSeries>();
  /** The (model, target) pairs admitted as labels (at most MAX_MODEL_LABEL_PAIRS). */
  private readonly labelPairs = new Set<string>();
  /** The admitted pairs' model and target names, in characters. */
  private labelPairChars = 0;
  private overflowReported = false;
  private readonly onModelLabelOverflow: ((why: string) => void) | undefined;
  private readonly perRequest: Metrics;
  private readonly errors: FastCounter<ModelLabels | 'error_code'>;
  private readonly schedulerE2e: FastHistogram;
  private readonly attempts: FastCounter<AttemptLabels>;
  private readonly poolNamespace: string;
  private readonly route: FastHistogram;
  private readonly overlapBlocks: FastHistogram;
  private readonly tokenization: FastHistogram;
  private readonly served: FastCounter<'outcome'>;
  private readonly cancelled: FastCounter<'reason'>;
  private readonly cachePredictions: FastCounter<'outcome'>;
  private readonly cachedTokensPredicted: FastCounter;
  private readonly cachedTokensReported: FastCounter;
  private readonly eventsApplied: FastCounter<'kind'>;
  private readonly eventBlocks: FastCounter<'op'>;
  private readonly eventsRejected: FastCounter<'reason'>;
  private readonly eventGaps: FastCounter<'kind'>;
  private readonly recoveries: FastCounter<'trigger' | 'outcome'>;
  private readonly recoveredBlocks: FastCounter;
  private readonly eventResets: FastCounter;
  private readonly eventsDropped: FastCounter;
  private readonly eventConnection: FastCounter<'source' | 'event'>;
  private readonly eventMessages: FastCounter;
  private readonly eventLag: FastHistogram;

  constructor(sources: MetricsSources = {}) {
    const reg = new Registry();
    this.registry = reg;
    const registers = [reg];
    this.poolNamespace = sources.poolNamespace ?? '';
    this.onModelLabelOverflow = sources.onModelLabelOverflow;
    const modelHistogram = (name: string, help: string, buckets: number[]) =>
      new FastHistogram({ name, help, labelNames: MODEL_LABELS, buckets, registers });
    this.perRequest = {
      requests: new FastCounter({
        name: 'inference_objective_request_total',
        help: '[ALPHA] Counter of inference objective requests broken out for each model and target model.',
        labelNames: [...MODEL_LABELS, 'priority'],
        registers,
      }),
      running: new FastGauge({
        name: 'inference_objective_running_requests',
        help: '[ALPHA] Inference objective number of running requests in each model.',
        labelNames: ['model_name'],
        registers,
      }),
      duration: modelHistogram(
        'inference_objective_request_duration_seconds',
        '[ALPHA] Inference objective response latency distribution in seconds for each model and target model.',
        DURATION_BUCKETS,
      ),
      requestSizes: modelHistogram(
        'inference_objective_request_sizes',
        '[ALPHA] Inference objective requests size distribution in bytes for each model and target model.',
        REQUEST_SIZE_BUCKETS,
      ),
      responseSizes: modelHistogram(
        'inference_objective_response_sizes',
        '[ALPHA] Inference objective responses size distribution in bytes for each model and target model.',
        RESPONSE_SIZE_BUCKETS,
      ),
      inputTokens: modelHistogram(
        'inference_objective_input_tokens',
        '[ALPHA] Inference objective input token count distribution for requests in each model.',
        INPUT_TOKEN_BUCKETS,
      ),
      outputTokens: modelHistogram(
        'inference_objective_output_tokens',
        '[ALPHA] Inference objective output token count distribution for requests in each model.',
        OUTPUT_TOKEN_BUCKETS,
      ),
      promptCachedTokens: modelHistogram(
        'inference_objective_prompt_cached_tokens',
        '[ALPHA] Inference objective prompt cached token count distribution for requests in each model.',
        INPUT_TOKEN_BUCKETS,
      ),
      timePerOutputToken: modelHistogram(
        'inference_objective_normalized_time_per_output_token_seconds',
        '[ALPHA] Inference objective latency divided by number of output tokens in seconds for each model and target model.',
        NTPOT_BUCKETS,
      ),
      kvEppPromptTokens: modelHistogram(
        'kv_epp_prompt_tokens',
        "Prompt tokens kv-epp counted when tokenizing each routed request (GAIE's buckets); inference_objective_input_tokens is the model server's usage.prompt_tokens.",
        INPUT_TOKEN_BUCKETS,
      ),
    };
    this.errors = new FastCounter({
      name: 'inference_objective_request_error_total',
      help: '[ALPHA] Counter of inference objective requests errors broken out for each model and target model.',
      labelNames: [...MODEL_LABELS, 'error_code'],
      registers,
    });
    this.schedulerE2e = new FastHistogram({
      name: 'inference_extension_scheduler_e2e_duration_seconds',
      help: '[ALPHA] End-to-end scheduling latency distribution in seconds.',
      buckets: SCHEDULER_BUCKETS,
      registers,
    });
    this.attempts = new FastCounter({
      name: 'inference_extension_scheduler_attempts_total',
      help: '[ALPHA] Total number of scheduling attempts.',
      labelNames: ['status', 'target_model_name', 'pod_name', 'namespace', 'port'],
      registers,
    });
    const build = sources.build ?? defaultBuildInfo();
    new Gauge({
      name: 'inference_extension_info',
      help: '[ALPHA] General information of the current build of Inference Extension.',
      labelNames: ['commit', 'build_ref'],
      registers,
    }).set({ commit: build.commit, build_ref: build.buildRef }, 1);
    if (sources.backends) {
      new Gauge({
        name: 'kv_epp_backend_info',
        help: 'The implementation of each hot-path piece: native (the Rust addon) or js (its pure-JS twin, where the addon did not load). Always 1.',
        labelNames: ['tokenizer', 'hasher', 'index'],
        registers,
      }).set(sources.backends, 1);
    }
    this.route = new FastHistogram({
      name: 'kv_epp_route_seconds',
      help: "Time from a complete request body to kv-epp's routing decision (body checks, admission, tokenization with any wait for the tokenizer pool, scoring, picking), in seconds.",
      buckets: ROUTE_BUCKETS,
      registers,
    });
    if (sources.processMetrics !== false) collectDefaultMetrics({ register: reg });
    const poolName = sources.poolName ?? '';
    const readyPods = sources.readyPods;
    new Gauge({
      name: 'inference_pool_ready_pods',
      help: '[ALPHA] The number of ready pods in the inference server pool.',
      labelNames: ['name'],
      registers,
      collect() {
        if (readyPods) this.set({ name: poolName }, readyPods());
      },
    });
    const modelServers = sources.modelServers;
    if (modelServers) {
      // Averages over the endpoints whose figure was read recently; no sample while none was.
      const average = (name: string, help: string, figure: (p: PodLoad) => number | undefined) =>
        new Gauge({
          name,
          help,
          labelNames: ['name'],
          registers,
          collect() {
            this.reset();
            const values = modelServers()
              .map(figure)
              .filter((v): v is number => v !== undefined);
            if (values.length > 0) {
              this.set({ name: poolName }, values.reduce((a, b) => a + b, 0) / values.length);
            }
          },
        });
      average(
        'inference_pool_average_kv_cache_utilization',
        '[ALPHA] The average kv cache utilization for an inference server pool.',
        (p) => p.kvUsage,
      );
      average(
        'inference_pool_average_queue_size',
        '[ALPHA] The average number of requests pending in the model server queue.',
        (p) => p.waiting,
      );
      average(
        'inference_pool_average_running_requests',
        '[ALPHA] The average number of running requests across model servers in the pool.',
        (p) => p.running,
      );
      new Gauge({
        name: 'inference_pool_per_pod_queue_size',
        help: '[ALPHA] The total number of requests pending in the model server queue for each underlying pod.',
        labelNames: ['name', 'model_server_pod'],
        registers,
        collect() {
          this.reset();
          for (const p of modelServers()) {
            if (p.waiting !== undefined) {
              // Labels in Go's sorted order, the text GAIE's e2e check matches.
              this.set({ model_server_pod: p.pod, name: poolName }, p.waiting);
            }
          }
        },
      });
    }
    this.overlapBlocks = new FastHistogram({
      name: 'kv_epp_prefix_overlap_blocks',
      help: 'Cached prefix blocks (index overlap) of the endpoint each request was routed to.',
      buckets: BLOCK_BUCKETS,
      registers,
    });
    this.tokenization = new FastHistogram({
      name: 'kv_epp_tokenization_seconds',
      help: 'Time to tokenize, hash and score one request body against the prefix index, in seconds.',
      buckets: TOKENIZATION_BUCKETS,
      registers,
    });
    this.served = new FastCounter({
      name: 'kv_epp_served_endpoint_total',
      help: 'Finished requests by the endpoint the gateway reported serving them (x-gateway-destination-endpoint-served): primary, fallback (a later entry of the list), other (not in the list) or unreported.',
      labelNames: ['outcome'],
      registers,
    });
    this.cancelled = new FastCounter({
      name: 'kv_epp_requests_cancelled_total',
      help: 'Requests whose ext_proc stream ended while kv-epp was tokenizing them, by reason: abandoned (by the gateway) or stream_failed (kv-epp failed the stream for a protocol violation). A task still waiting for a tokenization thread is dropped; no endpoint is picked.',
      labelNames: ['reason'],
      registers,
    });
    this.cachePredictions = new FastCounter({
      name: 'kv_epp_cache_predictions_total',
      help: "Requests whose response reported cached_tokens and that the primary endpoint served, by how kv-epp's prefix overlap for it compared: hit (as reported, allowing the last block an engine recomputes), over (the engine had fewer blocks: evicted, or events missed) or under (it had more).",
      labelNames: ['outcome'],
      registers,
    });
    this.cachedTokensPredicted = new FastCounter({
      name: 'kv_epp_cached_tokens_predicted_total',
      help: 'Prompt tokens kv-epp expected the primary endpoint to hold (prefix overlap × block size), over the requests kv_epp_cache_predictions_total counts.',
      registers,
    });
    this.cachedTokensReported = new FastCounter({
      name: 'kv_epp_cached_tokens_reported_total',
      help: 'cached_tokens the model server reported, over the requests kv_epp_cache_predictions_total counts.',
      registers,
    });
    this.eventMessages = new FastCounter({
      name: 'kv_epp_events_messages_total',
      help: 'KV event messages (NATS/ZMQ/JetStream) decoded and applied.',
      registers,
    });
    this.eventsApplied = new FastCounter({
      name: 'kv_epp_events_applied_total',
      help: 'KV events applied to the prefix index, by kind (stored, removed, cleared).',
      labelNames: ['kind'],
      registers,
    });
    this.eventBlocks = new FastCounter({
      name: 'kv_epp_events_blocks_total',
      help: 'Blocks carried by applied KV events, by operation (stored, removed).',
      labelNames: ['op'],
      registers,
    });
    this.eventsRejected = new FastCounter({
      name: 'kv_epp_events_rejected_total',
      help: 'KV events not applied, by reason (malformed, unknown_variant, block_size_mismatch, partial_block (blocks), parent_not_found, block_not_found, invalid_block_sequence, no_worker, duplicate).',
      labelNames: ['reason'],
      registers,
    });
    this.eventGaps = new FastCounter({
      name: 'kv_epp_events_gaps_total',
      help: 'Lost KV events detected: event_id (a worker skipped ids) or publisher (an envelope sequence skipped).',
      labelNames: ['kind'],
      registers,
    });
    this.eventResets = new FastCounter({
      name: 'kv_epp_events_stream_resets_total',
      help: 'Worker event streams that restarted (ids back at the start); the worker was cleared.',
      registers,
    });
    this.recoveries = new FastCounter({
      name: 'kv_epp_events_recoveries_total',
      help: "Worker KV-state recoveries from the worker's local indexer, by trigger (gap, discovered) and outcome (recovered, failed, cancelled).",
      labelNames: ['trigger', 'outcome'],
      registers,
    });
    this.recoveredBlocks = new FastCounter({
      name: 'kv_epp_events_recovered_blocks_total',
      help: "Blocks stored from workers' local-indexer dumps.",
      registers,
    });
    this.eventsDropped = new FastCounter({
      name: 'kv_epp_events_dropped_total',
      help: 'KV event messages dropped because the apply queue was full.',
      registers,
    });
    this.eventConnection = new FastCounter({
      name: 'kv_epp_events_connection_events_total',
      help: "The KV event transport's connection events, by source (nats, jetstream, zmq) and event (disconnect, reconnect, error).",
      labelNames: ['source', 'event'],
      registers,
    });
    this.eventLag = new FastHistogram({
      name: 'kv_epp_events_lag_seconds',
      help: 'Time from a KV event message being published (envelope published_at) to it being applied.',
      buckets: LAG_BUCKETS,
      registers,
    });
    const eventsQueued = sources.eventsQueued;
    new Gauge({
      name: 'kv_epp_events_queued',
      help: 'KV event messages waiting to be applied.',
      registers,
      collect() {
        if (eventsQueued) this.set(eventsQueued());
      },
    });
    const zmqPublishers = sources.zmqPublishers;
    new Gauge({
      name: 'kv_epp_events_zmq_publishers',
      help: 'ZMQ KV-event publishers subscribed to, by state: connected, or not_connected (being retried; no events from them meanwhile).',
      labelNames: ['state'],
      registers,
      collect() {
        const now = zmqPublishers?.();
        this.set({ state: 'connected' }, now?.connected ?? 0);
        this.set({ state: 'not_connected' }, now?.notConnected ?? 0);
      },
    });
    const workerBlocks = sources.workerBlocks;
    new Gauge({
      name: 'kv_epp_index_worker_blocks',
      help: 'Blocks each worker (and dp rank) holds in the prefix index.',
      labelNames: ['worker_id', 'dp_rank'],
      registers,
      collect() {
        if (!workerBlocks) return;
        this.reset();
        for (const w of workerBlocks()) {
          this.set({ worker_id: w.workerId.toString(), dp_rank: String(w.dpRank) }, w.blocks);
        }
      },
    });
    const buffered = sources.bufferedBodyBytes;
    new Gauge({
      name: 'kv_epp_buffered_body_bytes',
      help: 'Bytes of request and held-back response bodies buffered by ext_proc streams (limit: --max-buffered-body-bytes).',
      registers,
      collect() {
        if (buffered) this.set(buffered());
      },
    });
    const droppedLogRecords = sources.droppedLogRecords;
    let droppedReported = 0;
    new Counter({
      name: 'kv_epp_log_records_dropped_total',
      help: 'Log records dropped because stderr was not read fast enough (more than 16 MiB of records waiting).',
      registers,
      collect() {
        if (!droppedLogRecords) return;
        const now = droppedLogRecords();
        if (now > droppedReported) this.inc(now - droppedReported);
        droppedReported = now;
      },
    });
    const queueDepth = sources.queueDepth;
    new Gauge({
      name: 'kv_epp_pool_queue_depth',
      help: 'Requests waiting for a tokenization worker thread.',
      registers,
      collect() {
        if (queueDepth) this.set(queueDepth());
      },
    });
    const ejected = sources.ejectedEndpoints;
    new Gauge({
      name: 'kv_epp_ejected_endpoints',
      help: 'Endpoints left out of routing for answering 5xx in a row (outlier ejection).',
      registers,
      collect() {
        if (ejected) this.set(ejected());
      },
    });
    const memberships = sources.indexMemberships;
    new Gauge({
      name: 'kv_epp_index_memberships',
      help: 'Worker-block memberships held by the prefix index.',
      registers,
      collect() {
        if (memberships) this.set(memberships());
      },
    });
    const segments = sources.segmentCache;
    // The tokenizer keeps the running totals; a scrape adds what is new.
    let seen = { hits: 0, misses: 0 };
    new Counter({
      name: 'kv_epp_segment_cache_lookups_total',
      help: 'Lookups of long prompt segments (text between special tokens) in the tokenizer segment cache, by outcome.',
      labelNames: ['outcome'],
      registers,
      collect() {
        if (!segments) return;
        let now: { hits: number; misses: number };
        try {
          now = segments();
        } catch {
          return; // the tokenizer is gone (shutting down): nothing new to count
        }
        this.inc({ outcome: 'hit' }, Math.max(0, now.hits - seen.hits));
        this.inc({ outcome: 'miss' }, Math.max(0, now.misses - seen.misses));
        seen = now;
      },
    });
    const approxQueue = sources.approxQueue;
    // The addon keeps the running totals; a scrape adds what is new.
    let approxSeen = { disposed: 0, panicked: 0 };
    const readApprox = () => {
      if (!approxQueue) return undefined;
      try {
        return approxQueue();
      } catch {
        return undefined; // the addon is shutting down: nothing to report
      }
    };
    new Gauge({
      name: 'kv_epp_approx_queue_depth',
      help: 'Approximate-mode decisions and upkeep waiting for the kv-epp-approx thread (callers blocked on its full queue included).',
      registers,
      collect() {
        // Unreadable (the addon shutting down): nothing is known to be waiting.
        this.set(readApprox()?.queued ?? 0);
      },
    });
    new Counter({
      name: 'kv_epp_approx_jobs_lost_total',
      help: 'Approximate-mode jobs the kv-epp-approx thread dropped, by reason: tracker_disposed (the tracker went first), panicked (a bug).',
      labelNames: ['reason'],
      registers,
      collect() {
        const now = readApprox();
        if (!now) return;
        this.inc({ reason: 'tracker_disposed' }, Math.max(0, now.disposed - approxSeen.disposed));
        this.inc({ reason: 'panicked' }, Math.max(0, now.panicked - approxSeen.panicked));
        approxSeen = now;
      },
    });
  }

  /**
   * The label children of one (model, target) pair, made once (prom-client
   * hashes label objects per call). A request resolves them once and holds them
   * to its end; a child outlives a cache reset and still counts in its series.
   */
  requestSeries(model: string, target: string): RequestSeries {
    [model, target] = this.labelPair(model, target);
    const key = pairKey(model, target);
    let c = this.series.get(key);
    if (c === undefined) {
      // Model names come from clients: bound the cache (prom-client keeps its own series).
      if (this.series.size >= MAX_CACHED_SERIES) this.series.clear();
      c = new ModelSeries(this.perRequest, model, target, this.attempts, this.poolNamespace);
      this.series.set(key, c);
    }
    return c;
  }

  /** A request was routed (its body processed successfully). */
  requestStarted(model: string, target: string): void {
    const c = this.requestSeries(model, target);
    c.requests.inc();
    c.running.inc();
  }

  /** A routed request's response finished (or the stream ended); `seconds` since it arrived. */
  requestFinished(model: string, target: string, seconds: number): void {
    const c = this.requestSeries(model, target);
    c.running.dec();
    c.duration.observe(seconds);
  }

  /**
   * A request was answered with an error; `category` is the ext_proc layer's
   * (classifyError), recorded as GAIE's error code (gaieErrorCode).
   */
  /** The labels a (model, target) pair is exported under: itself, or OVERFLOW_MODEL past the bound. */
  private labelPair(model: string, target: string): [string, string] {
    if (model.length > MAX_MODEL_LABEL_CHARS || target.length > MAX_MODEL_LABEL_CHARS) {
      return this.overflow(`a model name longer than ${MAX_MODEL_LABEL_CHARS} characters`);
    }
    const key = pairKey(model, target);
    if (this.labelPairs.has(key)) return [model, target];
    const chars = model.length + target.length;
    if (
      this.labelPairs.size >= MAX_MODEL_LABEL_PAIRS ||
      this.labelPairChars + chars > MAX_MODEL_LABEL_BYTES
    ) {
      return this.overflow(
        `more than ${MAX_MODEL_LABEL_PAIRS} (model, target) pairs or ${MAX_MODEL_LABEL_BYTES} characters of their names`,
      );
    }
    this.labelPairs.add(key);
    this.labelPairChars += chars;
    return [model, target];
  }

  private overflow(why: string): [string, string] {
    if (!this.overflowReported) {
      this.overflowReported = true;
      this.onModelLabelOverflow?.(why);
    }
    return [OVERFLOW_MODEL, OVERFLOW_MODEL];
  }

  requestError(model: string, target: string, category: string): void {
    [model, target] = this.labelPair(model, target);
    this.errors.inc({
      model_name: model,
      target_model_name: target,
      error_code: gaieErrorCode(category),
    });
  }

  /** The model server's `usage.prompt_tokens` (kv-epp's own count: RequestSeries.kvEppPromptTokens). */
  observeInputTokens(model: string, target: string, tokens: number): void {
    this.requestSeries(model, target).inputTokens.observe(tokens);
  }

  observeOutputTokens(model: string, target: string, tokens: number): void {
    this.requestSeries(model, target).outputTokens.observe(tokens);
  }

  /** One scheduling (scoring + picking) span, successful or not. */
  observeSchedulerSeconds(seconds: number): void {
    this.schedulerE2e.observe(seconds);
  }

  /**
   * A scheduling attempt that found no endpoint (GAIE: `status="failure"`, no
   * endpoint labels). The target counts under the label-pair bound with `model`.
   */
  schedulerAttemptFailed(model: string, target: string): void {
    [, target] = this.labelPair(model, target);
    this.attempts.inc({
      status: 'failure',
      target_model_name: target,
      pod_name: '',
      namespace: '',
      port: '',
    });
  }

  /** kv-epp's whole route() call (`kv_epp_route_seconds`). */
  observeRouteSeconds(seconds: number): void {
    this.route.observe(seconds);
  }

  observeTokenizationSeconds(seconds: number): void {
    this.tokenization.observe(seconds);
  }

  observePrefixOverlapBlocks(blocks: number): void {
    this.overlapBlocks.observe(blocks);
  }

  /** One applied KV-event message; `lagSeconds` when it carried a publish time. */
  eventMessage(c: EventCounts, lagSeconds: number | undefined): void {
    this.eventMessages.inc();
    for (const kind of ['stored', 'removed', 'cleared'] as const) {
      if (c.applied[kind] > 0) this.eventsApplied.inc({ kind }, c.applied[kind]);
    }
    if (c.blocksStored > 0) this.eventBlocks.inc({ op: 'stored' }, c.blocksStored);
    if (c.blocksRemoved > 0) this.eventBlocks.inc({ op: 'removed' }, c.blocksRemoved);
    for (const [reason, n] of Object.entries(c.rejected)) {
      if (n !== undefined && n > 0) this.eventsRejected.inc({ reason }, n);
    }
    if (c.gaps > 0) this.eventGaps.inc({ kind: 'event_id' }, c.gaps);
    if (c.publisherGap) this.eventGaps.inc({ kind: 'publisher' });
    if (c.resets > 0) this.eventResets.inc(c.resets);
    if (lagSeconds !== undefined) this.eventLag.observe(lagSeconds);
  }

  recovery(trigger: string, outcome: string, blocks: number): void {
    this.recoveries.inc({ trigger, outcome });
    if (blocks > 0) this.recoveredBlocks.inc(blocks);
  }

  eventsDroppedInc(messages: number): void {
    this.eventsDropped.inc(messages);
  }

  eventConnectionEvent(source: 'nats' | 'jetstream' | 'zmq', event: string): void {
    this.eventConnection.inc({ source, event });
  }

  servedEndpoint(outcome: ServedOutcome): void {
    this.served.inc({ outcome });
  }

  /** A routed request's predicted cached prefix against the one its server reported. */
  cachePrediction(outcome: CacheOutcome, predictedTokens: number, reportedTokens: number): void {
    this.cachePredictions.inc({ outcome });
    this.cachedTokensPredicted.inc(predictedTokens);
    this.cachedTokensReported.inc(reportedTokens);
  }

  requestCancelled(reason: CancelReason): void {
    this.cancelled.inc({ reason });
  }
}
