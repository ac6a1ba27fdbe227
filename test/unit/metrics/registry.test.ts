/**
 * EppMetrics renders the GAIE EPP's metric names, types and labels plus
 * kv-epp's own after simulated events; MetricsObserver turns router
 * outcomes into those events.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseEndpoints } from '../../../src/discovery/endpoints.js';
import { KvEppError } from '../../../src/errors.js';
import {
  eventMetricsObserver,
  MetricsObserver,
  servedOutcome,
} from '../../../src/metrics/observer.js';
import {
  defaultBuildInfo,
  EppMetrics,
  gaieErrorCode,
  MAX_MODEL_LABEL_BYTES,
  MAX_MODEL_LABEL_CHARS,
  MAX_MODEL_LABEL_PAIRS,
  type MetricsSources,
  OVERFLOW_MODEL,
} from '../../../src/metrics/registry.js';
import type { RoutePrep } from '../../../src/pipeline/route-prep.js';
import type {
  GatewayRequest,
  RequestRouter,
  RouteDecision,
} from '../../../src/server/routing-types.js';
import { sample } from '../../support/prom-text.js';

function typeOf(text: string, name: string): string | undefined {
  return new RegExp(`^# TYPE ${name} (\\w+)$`, 'm').exec(text)?.[1];
}

const ML = 'model_name="m",target_model_name="t"';

/** An instance without process metrics (their monitors cannot be removed again). */
function metrics(sources: MetricsSources = {}): EppMetrics {
  return new EppMetrics({ processMetrics: false, ...sources });
}

/** GAIE's help texts (metrics.go, `[ALPHA] ` + text), for every GAIE metric kv-epp exports. */
const GAIE_HELP: Record<string, string> = {
  inference_objective_request_total:
    'Counter of inference objective requests broken out for each model and target model.',
  inference_objective_request_error_total:
    'Counter of inference objective requests errors broken out for each model and target model.',
  inference_objective_request_duration_seconds:
    'Inference objective response latency distribution in seconds for each model and target model.',
  inference_objective_request_sizes:
    'Inference objective requests size distribution in bytes for each model and target model.',
  inference_objective_response_sizes:
    'Inference objective responses size distribution in bytes for each model and target model.',
  inference_objective_input_tokens:
    'Inference objective input token count distribution for requests in each model.',
  inference_objective_output_tokens:
    'Inference objective output token count distribution for requests in each model.',
  inference_objective_prompt_cached_tokens:
    'Inference objective prompt cached token count distribution for requests in each model.',
  inference_objective_running_requests:
    'Inference objective number of running requests in each model.',
  inference_objective_normalized_time_per_output_token_seconds:
    'Inference objective latency divided by number of output tokens in seconds for each model and target model.',
  inference_pool_ready_pods: 'The number of ready pods in the inference server pool.',
  inference_extension_scheduler_e2e_duration_seconds:
    'End-to-end scheduling latency distribution in seconds.',
  inference_extension_scheduler_attempts_total: 'Total number of scheduling attempts.',
  inference_extension_info: 'General information of the current build of Inference Extension.',
};

/** The `le` bounds of the first series of histogram `name`, +Inf left out. */
function bucketsOf(text: string, name: string): number[] {
  const out: number[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}_bucket{`)) continue;
    const le = /le="([^"]+)"/.exec(line)?.[1];
    if (le === '+Inf') break;
    out.push(Number(le));
  }
  return out;
}

/** GAIE's lists, copied from pkg/epp/metrics/metrics.go (32778 is GAIE's own value). */
const GAIE_BUCKETS = {
  latency: [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30,
    45, 60, 120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600,
  ],
  inputTokens: [
    1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536, 131072, 262144,
    524288, 1048576,
  ],
  outputTokens: [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192],
  scheduler: [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1],
  requestSizes: [
    64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288, 1048576,
    2097152, 4194304, 8388608, 16777216, 33554432, 67108864, 134217728, 268435456, 536870912,
    1073741824,
  ],
  responseSizes: [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536],
  ntpot: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0],
};

describe('EppMetrics', () => {
  it('renders GAIE names, types and labels after simulated events', async () => {
    const m = metrics({
      poolName: 'pool',
      readyPods: () => 2,
      queueDepth: () => 3,
      indexMemberships: () => 42,
      ejectedEndpoints: () => 1,
    });
    m.requestStarted('m', 't');
    m.requestStarted('m', 't');
    const s = m.requestSeries('m', 't');
    s.requestSizes.observe(100);
    s.responseSizes.observe(50);
    s.promptCachedTokens.observe(16);
    s.timePerOutputToken.observe(0.01);
    s.kvEppPromptTokens.observe(9);
    s.scheduled({ name: 'a', port: 8001 });
    m.schedulerAttemptFailed('m', 't');
    m.observeRouteSeconds(0.004);
    m.observeInputTokens('m', 't', 7);
    m.observeOutputTokens('m', 't', 5);
    m.requestFinished('m', 't', 0.25);
    m.requestError('m', 't', 'BadRequest');
    m.observeSchedulerSeconds(0.0003);
    m.observeTokenizationSeconds(0.001);
    m.observePrefixOverlapBlocks(4);
    const text = await m.registry.metrics();
    expect(m.registry.contentType).toMatch(/^text\/plain/);

    for (const [name, type] of [
      ['inference_objective_request_total', 'counter'],
      ['inference_objective_request_error_total', 'counter'],
      ['inference_objective_request_duration_seconds', 'histogram'],
      ['inference_objective_input_tokens', 'histogram'],
      ['inference_objective_output_tokens', 'histogram'],
      ['inference_objective_running_requests', 'gauge'],
      ['inference_pool_ready_pods', 'gauge'],
      ['inference_extension_scheduler_e2e_duration_seconds', 'histogram'],
      ['inference_objective_request_sizes', 'histogram'],
      ['inference_objective_response_sizes', 'histogram'],
      ['inference_objective_prompt_cached_tokens', 'histogram'],
      ['inference_objective_normalized_time_per_output_token_seconds', 'histogram'],
      ['inference_extension_scheduler_attempts_total', 'counter'],
      ['inference_extension_info', 'gauge'],
      ['kv_epp_prompt_tokens', 'histogram'],
      ['kv_epp_route_seconds', 'histogram'],
      ['kv_epp_prefix_overlap_blocks', 'histogram'],
      ['kv_epp_tokenization_seconds', 'histogram'],
      ['kv_epp_pool_queue_depth', 'gauge'],
      ['kv_epp_requests_cancelled_total', 'counter'],
      ['kv_epp_index_memberships', 'gauge'],
      ['kv_epp_ejected_endpoints', 'gauge'],
    ]) {
      expect(typeOf(text, name as string), name).toBe(type);
    }
    for (const [name, help] of Object.entries(GAIE_HELP)) {
      expect(text, name).toContain(`# HELP ${name} [ALPHA] ${help}\n`);
    }
    expect(sample(text, `inference_objective_request_sizes_sum{${ML}}`)).toBe(100);
    expect(sample(text, `inference_objective_response_sizes_sum{${ML}}`)).toBe(50);
    expect(sample(text, `inference_objective_prompt_cached_tokens_sum{${ML}}`)).toBe(16);
    expect(
      sample(text, `inference_objective_normalized_time_per_output_token_seconds_sum{${ML}}`),
    ).toBe(0.01);
    expect(sample(text, `kv_epp_prompt_tokens_sum{${ML}}`)).toBe(9);
    expect(sample(text, 'kv_epp_route_seconds_sum')).toBe(0.004);
    expect(
      sample(
        text,
        'inference_extension_scheduler_attempts_total{status="success",target_model_name="t",pod_name="a",namespace="",port="8001"}',
      ),
    ).toBe(1);
    expect(
      sample(
        text,
        'inference_extension_scheduler_attempts_total{status="failure",target_model_name="t",pod_name="",namespace="",port=""}',
      ),
    ).toBe(1);
    expect(sample(text, `inference_objective_request_total{${ML},priority="0"}`)).toBe(2);
    expect(
      sample(text, `inference_objective_request_error_total{${ML},error_code="BadRequest"}`),
    ).toBe(1);
    expect(sample(text, 'inference_objective_running_requests{model_name="m"}')).toBe(1);
    expect(sample(text, `inference_objective_request_duration_seconds_sum{${ML}}`)).toBe(0.25);
    expect(
      sample(text, `inference_objective_request_duration_seconds_bucket{le="0.4",${ML}}`),
    ).toBe(1);
    expect(sample(text, `inference_objective_input_tokens_sum{${ML}}`)).toBe(7);
    expect(sample(text, `inference_objective_output_tokens_count{${ML}}`)).toBe(1);
    expect(sample(text, 'inference_pool_ready_pods{name="pool"}')).toBe(2);
    expect(sample(text, 'inference_extension_scheduler_e2e_duration_seconds_count')).toBe(1);
    expect(
      sample(text, 'inference_extension_scheduler_e2e_duration_seconds_bucket{le="0.0005"}'),
    ).toBe(1);
    expect(sample(text, 'kv_epp_prefix_overlap_blocks_sum')).toBe(4);
    expect(sample(text, 'kv_epp_tokenization_seconds_count')).toBe(1);
    expect(sample(text, 'kv_epp_pool_queue_depth')).toBe(3);
    expect(sample(text, 'kv_epp_index_memberships')).toBe(42);
    expect(sample(text, 'kv_epp_ejected_endpoints')).toBe(1);
  });

  it("uses GAIE's bucket lists value for value", async () => {
    const m = metrics();
    m.requestFinished('m', 't', 1);
    m.observeInputTokens('m', 't', 1);
    m.observeOutputTokens('m', 't', 1);
    m.observeSchedulerSeconds(0.001);
    const s = m.requestSeries('m', 't');
    for (const h of [
      s.requestSizes,
      s.responseSizes,
      s.promptCachedTokens,
      s.timePerOutputToken,
      s.kvEppPromptTokens,
    ]) {
      h.observe(1);
    }
    const text = await m.registry.metrics();
    expect(bucketsOf(text, 'inference_objective_request_sizes')).toEqual(GAIE_BUCKETS.requestSizes);
    expect(bucketsOf(text, 'inference_objective_response_sizes')).toEqual(
      GAIE_BUCKETS.responseSizes,
    );
    expect(bucketsOf(text, 'inference_objective_prompt_cached_tokens')).toEqual(
      GAIE_BUCKETS.inputTokens,
    );
    expect(bucketsOf(text, 'inference_objective_normalized_time_per_output_token_seconds')).toEqual(
      GAIE_BUCKETS.ntpot,
    );
    // kv-epp's own count shares GAIE's input buckets, so the two compare bucket by bucket.
    expect(bucketsOf(text, 'kv_epp_prompt_tokens')).toEqual(GAIE_BUCKETS.inputTokens);
    expect(bucketsOf(text, 'inference_objective_request_duration_seconds')).toEqual(
      GAIE_BUCKETS.latency,
    );
    expect(bucketsOf(text, 'inference_objective_input_tokens')).toEqual(GAIE_BUCKETS.inputTokens);
    expect(bucketsOf(text, 'inference_objective_output_tokens')).toEqual(GAIE_BUCKETS.outputTokens);
    expect(bucketsOf(text, 'inference_extension_scheduler_e2e_duration_seconds')).toEqual(
      GAIE_BUCKETS.scheduler,
    );
  });

  it("labels errors with GAIE's codes only: a 413 (PayloadTooLarge) is GAIE's BadRequest", async () => {
    const m = metrics();
    const obs = new MetricsObserver(m);
    const router = obs.router({
      route: async () => {
        throw new KvEppError('body_too_large', 'too big');
      },
      routeHeaderOnly: () => {
        throw new KvEppError('body_too_large', 'too big');
      },
    });
    await expect(router.route(req({ model: 'm' }))).rejects.toThrow('too big');
    m.requestError('', '', 'PayloadTooLarge'); // the ext_proc layer's own 413 (onLocalReject)
    m.requestError('', '', 'SomethingNew');
    const text = await m.registry.metrics();
    const err = (labels: string) =>
      sample(text, `inference_objective_request_error_total{${labels}}`);
    expect(err('model_name="m",target_model_name="m",error_code="BadRequest"')).toBe(1);
    expect(err('model_name="",target_model_name="",error_code="BadRequest"')).toBe(1);
    expect(err('model_name="",target_model_name="",error_code="Unknown"')).toBe(1);
    expect(text).not.toContain('PayloadTooLarge');
    expect(gaieErrorCode('ResourceExhausted')).toBe('ResourceExhausted');
    expect(gaieErrorCode('ServiceUnavailable')).toBe('ServiceUnavailable');
    expect(gaieErrorCode('Internal')).toBe('Internal');
  });

  it('bounds the model label pairs clients can create, counting the rest under __other__', async () => {
    const overflows: string[] = [];
    const m = metrics({ onModelLabelOverflow: (why) => overflows.push(why) });
    for (let i = 0; i < MAX_MODEL_LABEL_PAIRS / 2; i++) {
      m.requestSeries(`model-${i}`, `model-${i}`).requests.inc();
      m.requestError(`bad-${i}`, `bad-${i}`, 'BadRequest');
    }
    expect(overflows).toEqual([]);
    for (let i = MAX_MODEL_LABEL_PAIRS / 2; i < MAX_MODEL_LABEL_PAIRS + 50; i++) {
      m.requestSeries(`model-${i}`, `model-${i}`).requests.inc();
      m.requestError(`bad-${i}`, `bad-${i}`, 'BadRequest');
    }
    // Reported once, when the first pair overflowed.
    expect(overflows).toEqual([
      `more than ${MAX_MODEL_LABEL_PAIRS} (model, target) pairs or ${MAX_MODEL_LABEL_BYTES} characters of their names`,
    ]);
    // An admitted pair keeps its own labels.
    m.requestSeries('model-0', 'model-0').requests.inc();
    const text = await m.registry.metrics();
    const requests = text
      .split('\n')
      .filter((l) => l.startsWith('inference_objective_request_total{'));
    const errors = text
      .split('\n')
      .filter((l) => l.startsWith('inference_objective_request_error_total{'));
    expect(requests.length + errors.length).toBe(MAX_MODEL_LABEL_PAIRS + 2);
    // Failed attempts carry clients' names too: none past the bound.
    const shed = metrics();
    for (let i = 0; i < MAX_MODEL_LABEL_PAIRS + 50; i++) {
      shed.schedulerAttemptFailed(`shed-${i}`, `shed-${i}`);
    }
    const failures = (await shed.registry.metrics())
      .split('\n')
      .filter((l) => l.startsWith('inference_extension_scheduler_attempts_total{status="failure"'));
    expect(failures).toHaveLength(MAX_MODEL_LABEL_PAIRS + 1);
    const other = `model_name="${OVERFLOW_MODEL}",target_model_name="${OVERFLOW_MODEL}"`;
    expect(sample(text, `inference_objective_request_total{${other},priority="0"}`)).toBe(
      MAX_MODEL_LABEL_PAIRS / 2 + 50,
    );
    expect(
      sample(
        text,
        'inference_objective_request_total{model_name="model-0",target_model_name="model-0",priority="0"}',
      ),
    ).toBe(2);
  });

  it('counts over-long model names, and new pairs past the label budget, under __other__', async () => {
    const overflows: string[] = [];
    const m = metrics({ onModelLabelOverflow: (why) => overflows.push(why) });
    const long = 'm'.repeat(MAX_MODEL_LABEL_CHARS + 1);
    m.requestSeries(long, 'short').requests.inc();
    m.requestSeries('short', long).requests.inc();
    expect(overflows).toEqual([`a model name longer than ${MAX_MODEL_LABEL_CHARS} characters`]);
    m.requestError(long, long, 'BadRequest');
    m.schedulerAttemptFailed(long, long);
    const edge = 'e'.repeat(MAX_MODEL_LABEL_CHARS);
    m.requestSeries(edge, edge).requests.inc();
    const text = await m.registry.metrics();
    expect(text).not.toContain('m'.repeat(64));
    expect(text.length).toBeLessThan(400_000);
    const other = `model_name="${OVERFLOW_MODEL}",target_model_name="${OVERFLOW_MODEL}"`;
    expect(sample(text, `inference_objective_request_total{${other},priority="0"}`)).toBe(2);
    expect(
      sample(text, `inference_objective_request_error_total{${other},error_code="BadRequest"}`),
    ).toBe(1);
    expect(
      sample(
        text,
        `inference_objective_request_total{model_name="${edge}",target_model_name="${edge}",priority="0"}`,
      ),
    ).toBe(1);

    // The names' total is bounded too: 200 pairs of 2 x 256 characters is past 64 KiB.
    const many = metrics();
    for (let i = 0; i < 200; i++) {
      const name = `${i}-`.padEnd(MAX_MODEL_LABEL_CHARS, 'x');
      many.requestSeries(name, name).requests.inc();
    }
    const pairs = (await many.registry.metrics())
      .split('\n')
      .filter((l) => l.startsWith('inference_objective_request_total{'));
    const admitted = Math.floor(MAX_MODEL_LABEL_BYTES / (2 * MAX_MODEL_LABEL_CHARS));
    expect(pairs).toHaveLength(admitted + 1);
    expect(pairs.at(-1)).toContain(OVERFLOW_MODEL);
  });

  it('keeps (model, target) pairs apart whatever characters the names hold', async () => {
    const m = metrics();
    m.requestStarted('a\u0000', 'b');
    m.requestStarted('a', '\u0000b');
    m.requestStarted('a', '\u0000b');
    const text = await m.registry.metrics();
    expect(
      sample(
        text,
        'inference_objective_request_total{model_name="a\u0000",target_model_name="b",priority="0"}',
      ),
    ).toBe(1);
    expect(
      sample(
        text,
        'inference_objective_request_total{model_name="a",target_model_name="\u0000b",priority="0"}',
      ),
    ).toBe(2);
  });

  it('reports the build: KV_EPP_COMMIT and the package.json version', async () => {
    const pkg = JSON.parse(
      readFileSync(new URL('../../../package.json', import.meta.url), 'utf8'),
    ) as { version: string };
    expect(defaultBuildInfo({ KV_EPP_COMMIT: 'abc123' })).toEqual({
      commit: 'abc123',
      buildRef: pkg.version,
    });
    expect(defaultBuildInfo({}).commit).toBe('unknown');
    expect(defaultBuildInfo({ KV_EPP_COMMIT: '' }).commit).toBe('unknown');
    const text = await metrics({ build: { commit: 'c1', buildRef: 'r1' } }).registry.metrics();
    expect(sample(text, 'inference_extension_info{commit="c1",build_ref="r1"}')).toBe(1);
    const byDefault = await metrics().registry.metrics();
    expect(
      sample(
        byDefault,
        `inference_extension_info{commit="${defaultBuildInfo().commit}",build_ref="${pkg.version}"}`,
      ),
    ).toBe(1);
  });

  it("exports Node's process metrics unprefixed unless turned off", async () => {
    const text = await new EppMetrics().registry.metrics();
    // The names GAIE's Go process collector uses too.
    for (const [name, type] of [
      ['process_cpu_seconds_total', 'counter'],
      ['process_start_time_seconds', 'gauge'],
      ['process_resident_memory_bytes', 'gauge'],
      ['process_virtual_memory_bytes', 'gauge'],
      ['process_open_fds', 'gauge'],
      ['process_max_fds', 'gauge'],
      ['nodejs_eventloop_lag_seconds', 'gauge'],
      ['nodejs_gc_duration_seconds', 'histogram'],
    ]) {
      expect(typeOf(text, name as string), name).toBe(type);
    }
    expect(await metrics().registry.metrics()).not.toContain('process_cpu_seconds_total');
  });

  it("reports the approximate-mode thread's queue depth and adds each scrape's new lost jobs", async () => {
    let stats = { queued: 3, disposed: 2, panicked: 0 };
    const m = metrics({ approxQueue: () => stats });
    let text = await m.registry.metrics();
    expect(typeOf(text, 'kv_epp_approx_queue_depth')).toBe('gauge');
    expect(typeOf(text, 'kv_epp_approx_jobs_lost_total')).toBe('counter');
    expect(sample(text, 'kv_epp_approx_queue_depth')).toBe(3);
    expect(sample(text, 'kv_epp_approx_jobs_lost_total{reason="tracker_disposed"}')).toBe(2);
    expect(sample(text, 'kv_epp_approx_jobs_lost_total{reason="panicked"}')).toBe(0);
    stats = { queued: 0, disposed: 5, panicked: 1 };
    text = await m.registry.metrics();
    expect(sample(text, 'kv_epp_approx_queue_depth')).toBe(0);
    expect(sample(text, 'kv_epp_approx_jobs_lost_total{reason="tracker_disposed"}')).toBe(5);
    expect(sample(text, 'kv_epp_approx_jobs_lost_total{reason="panicked"}')).toBe(1);
    // A failing read (the addon shutting down) reports nothing waiting and keeps the totals;
    // the next good read adds only what is new since the last good one.
    let failing = false;
    stats = { queued: 4, disposed: 5, panicked: 1 };
    const m2 = metrics({
      approxQueue: () => {
        if (failing) throw new Error('disposed');
        return stats;
      },
    });
    text = await m2.registry.metrics();
    expect(sample(text, 'kv_epp_approx_queue_depth')).toBe(4);
    failing = true;
    text = await m2.registry.metrics();
    expect(sample(text, 'kv_epp_approx_queue_depth')).toBe(0);
    expect(sample(text, 'kv_epp_approx_jobs_lost_total{reason="tracker_disposed"}')).toBe(5);
    failing = false;
    stats = { queued: 0, disposed: 7, panicked: 1 };
    text = await m2.registry.metrics();
    expect(sample(text, 'kv_epp_approx_jobs_lost_total{reason="tracker_disposed"}')).toBe(7);
    expect(sample(text, 'kv_epp_approx_jobs_lost_total{reason="panicked"}')).toBe(1);
  });

  it('reports ZMQ publishers by connection state, 0 and 0 without ZMQ sources', async () => {
    let now: { connected: number; notConnected: number } | undefined = {
      connected: 2,
      notConnected: 1,
    };
    const m = metrics({ zmqPublishers: () => now });
    let text = await m.registry.metrics();
    expect(typeOf(text, 'kv_epp_events_zmq_publishers')).toBe('gauge');
    expect(sample(text, 'kv_epp_events_zmq_publishers{state="connected"}')).toBe(2);
    expect(sample(text, 'kv_epp_events_zmq_publishers{state="not_connected"}')).toBe(1);
    now = undefined;
    text = await m.registry.metrics();
    expect(sample(text, 'kv_epp_events_zmq_publishers{state="connected"}')).toBe(0);
    expect(sample(text, 'kv_epp_events_zmq_publishers{state="not_connected"}')).toBe(0);
  });

  it('adds the log records dropped since the last scrape to kv_epp_log_records_dropped_total', async () => {
    let dropped = 0;
    const m = metrics({ droppedLogRecords: () => dropped });
    let text = await m.registry.metrics();
    expect(typeOf(text, 'kv_epp_log_records_dropped_total')).toBe('counter');
    expect(sample(text, 'kv_epp_log_records_dropped_total')).toBe(0);
    dropped = 7;
    text = await m.registry.metrics();
    expect(sample(text, 'kv_epp_log_records_dropped_total')).toBe(7);
    dropped = 9;
    text = await m.registry.metrics();
    expect(sample(text, 'kv_epp_log_records_dropped_total')).toBe(9);
    // Without a source (a logger that never drops) the counter stays 0.
    expect(sample(await metrics().registry.metrics(), 'kv_epp_log_records_dropped_total')).toBe(0);
  });

  it("averages the model servers' fresh figures into GAIE's pool gauges, per pod for the queue", async () => {
    let pods: Array<{ pod: string; waiting?: number; running?: number; kvUsage?: number }> = [
      { pod: 'a', waiting: 3, running: 2, kvUsage: 0.5 },
      { pod: 'b', waiting: 0, running: 5 },
    ];
    const m = metrics({ poolName: 'pool', modelServers: () => pods });
    let text = await m.registry.metrics();
    for (const [name, help] of [
      [
        'inference_pool_average_kv_cache_utilization',
        'The average kv cache utilization for an inference server pool.',
      ],
      [
        'inference_pool_average_queue_size',
        'The average number of requests pending in the model server queue.',
      ],
      [
        'inference_pool_average_running_requests',
        'The average number of running requests across model servers in the pool.',
      ],
      [
        'inference_pool_per_pod_queue_size',
        'The total number of requests pending in the model server queue for each underlying pod.',
      ],
    ] as const) {
      expect(text).toContain(`# HELP ${name} [ALPHA] ${help}\n`);
      expect(typeOf(text, name)).toBe('gauge');
    }
    // The KV figure only where a server reported one; the queue as a true mean (GAIE truncates).
    expect(sample(text, 'inference_pool_average_kv_cache_utilization{name="pool"}')).toBe(0.5);
    expect(sample(text, 'inference_pool_average_queue_size{name="pool"}')).toBe(1.5);
    expect(sample(text, 'inference_pool_average_running_requests{name="pool"}')).toBe(3.5);
    expect(
      sample(text, 'inference_pool_per_pod_queue_size{model_server_pod="a",name="pool"}'),
    ).toBe(3);
    expect(
      sample(text, 'inference_pool_per_pod_queue_size{model_server_pod="b",name="pool"}'),
    ).toBe(0);
    // A pod gone stale leaves the averages and its per-pod series.
    pods = [{ pod: 'b', waiting: 1 }];
    text = await m.registry.metrics();
    expect(sample(text, 'inference_pool_average_queue_size{name="pool"}')).toBe(1);
    expect(text).not.toContain('model_server_pod="a"');
    expect(text).not.toMatch(/^inference_pool_average_kv_cache_utilization\{/m);
    // Without a source the gauges are not exported at all.
    expect(await metrics().registry.metrics()).not.toContain('inference_pool_average_queue_size');
  });

  it('keeps registries separate per instance', async () => {
    const a = metrics();
    const b = metrics();
    a.requestStarted('m', 'm');
    expect(await b.registry.metrics()).not.toContain('model_name="m"');
  });
});

const [ep] = parseEndpoints(
  { endpoints: [{ address: '127.0.0.2', port: 8001, name: 'a', workerId: '11', dpRank: 1 }] },
  'test',
);

function req(body: unknown, headers: Record<string, string> = {}): GatewayRequest {
  return {
    headers: new Map(Object.entries(headers)),
    path: '/v1/chat/completions',
    method: 'POST',
    body: new TextEncoder().encode(typeof body === 'string' ? body : JSON.stringify(body)),
    requestId: 'r',
  };
}

describe('MetricsObserver', () => {
  it('counts routed requests, tokens, overlap, duration and errors', async () => {
    let now = 1000;
    const m = metrics({ poolNamespace: 'ns' });
    const obs = new MetricsObserver(m, () => now);
    const prep: RoutePrep = {
      tokens: new Uint32Array(9),
      localHashes: new BigUint64Array(2),
      overlap: {
        workers: [
          { workerId: 11n, dpRank: 0 },
          { workerId: 11n, dpRank: 1 },
        ],
        blocks: [1, 2],
        treeSizes: [1, 2],
      },
    };
    const inner: RequestRouter = {
      route: async (r) => {
        const body = JSON.parse(new TextDecoder().decode(r.body)) as { model: string };
        if (body.model === 'bad') throw new KvEppError('no_endpoint', 'none');
        const decision: RouteDecision = {
          endpoints: [ep?.hostPort ?? ''],
          setHeaders: {},
          removeHeaders: [],
          body: r.body,
          clientModel: body.model,
          targetModel: 't',
        };
        now += 2; // 2 ms of routing
        obs.onRouted({ decision, prep, endpoint: ep as never, model: body.model });
        return decision;
      },
      routeHeaderOnly: () => {
        throw new KvEppError('no_endpoint', 'none');
      },
    };
    const router = obs.router(inner);
    const request = req({ model: 'm' });
    const d = await router.route(request);
    let text = await m.registry.metrics();
    expect(sample(text, `inference_objective_request_total{${ML},priority="0"}`)).toBe(1);
    expect(sample(text, 'inference_objective_running_requests{model_name="m"}')).toBe(1);
    // kv-epp's own count; GAIE's input tokens wait for the model server's usage.
    expect(sample(text, `kv_epp_prompt_tokens_sum{${ML}}`)).toBe(9);
    expect(sample(text, `inference_objective_input_tokens_count{${ML}}`)).toBeUndefined();
    expect(sample(text, `inference_objective_request_sizes_sum{${ML}}`)).toBe(
      request.body.byteLength,
    );
    expect(
      sample(
        text,
        'inference_extension_scheduler_attempts_total{status="success",target_model_name="t",pod_name="a",namespace="ns",port="8001"}',
      ),
    ).toBe(1);
    expect(sample(text, 'kv_epp_prefix_overlap_blocks_sum')).toBe(2);
    // No preparer saw it: timed from route() to the pick.
    expect(sample(text, 'inference_extension_scheduler_e2e_duration_seconds_sum')).toBe(0.002);
    expect(sample(text, 'kv_epp_route_seconds_sum')).toBe(0.002);

    now += 498;
    router.complete?.(d, {
      requestId: 'r',
      promptTokens: 12,
      completionTokens: 10,
      status: 200,
      servedEndpoint: ep?.hostPort,
    });
    router.complete?.(d, { requestId: 'r', completionTokens: 11, status: 200 }); // once only
    await expect(
      router.route(req({ model: 'bad' }, { 'x-gateway-model-name-rewrite': 'x' })),
    ).rejects.toThrow('none');
    await expect(router.route(req('{not json'))).rejects.toThrow();
    expect(() => router.routeHeaderOnly(req(''))).toThrow('none');

    text = await m.registry.metrics();
    expect(sample(text, 'inference_objective_running_requests{model_name="m"}')).toBe(0);
    expect(sample(text, `inference_objective_request_duration_seconds_sum{${ML}}`)).toBe(0.5);
    expect(sample(text, `inference_objective_request_duration_seconds_count{${ML}}`)).toBe(1);
    expect(sample(text, `inference_objective_input_tokens_sum{${ML}}`)).toBe(12);
    expect(sample(text, `inference_objective_output_tokens_sum{${ML}}`)).toBe(10);
    expect(
      sample(text, `inference_objective_normalized_time_per_output_token_seconds_sum{${ML}}`),
    ).toBe(0.05);
    expect(sample(text, 'kv_epp_served_endpoint_total{outcome="primary"}')).toBe(1);
    expect(
      sample(
        text,
        'inference_objective_request_error_total{model_name="bad",target_model_name="x",error_code="ServiceUnavailable"}',
      ),
    ).toBe(1);
    expect(
      sample(
        text,
        'inference_objective_request_error_total{model_name="",target_model_name="",error_code="Internal"}',
      ),
    ).toBe(1); // the fake router's SyntaxError
    expect(
      sample(
        text,
        'inference_objective_request_error_total{model_name="",target_model_name="",error_code="ServiceUnavailable"}',
      ),
    ).toBe(1);
  });

  it('times the preparer', async () => {
    let now = 0;
    const m = metrics();
    const obs = new MetricsObserver(m, () => now);
    const p = obs.preparer({
      prepare: async () => {
        now += 3;
        throw new KvEppError('invalid_request', 'x');
      },
    });
    await expect(p.prepare(new Uint8Array(), 'chat', { blockSize: 16 })).rejects.toThrow('x');
    const text = await m.registry.metrics();
    expect(sample(text, 'kv_epp_tokenization_seconds_sum')).toBe(0.003);
  });
});

describe('servedOutcome', () => {
  it('places the served endpoint in the list kv-epp sent', () => {
    const list = ['127.0.0.2:8000', '127.0.0.3:8000'];
    expect(servedOutcome(list, '127.0.0.2:8000')).toBe('primary');
    expect(servedOutcome(list, '127.0.0.3:8000')).toBe('fallback');
    expect(servedOutcome(list, '127.0.0.4:8000')).toBe('other');
    expect(servedOutcome(list, undefined)).toBe('unreported');
    expect(servedOutcome(list, '')).toBe('unreported');
  });

  it('matches a served endpoint written in another form as the router does', () => {
    const list = ['[::1]:8000', '[::1]:8001'];
    expect(servedOutcome(list, '[0:0:0:0:0:0:0:1]:8000')).toBe('primary');
    expect(servedOutcome(list, ' [::0001]:8001 ')).toBe('fallback');
    expect(servedOutcome(['127.0.0.2:8000'], '127.0.0.2:8000 ')).toBe('primary');
    expect(servedOutcome(list, '[::2]:8000')).toBe('other');
    expect(servedOutcome(list, 'not an address')).toBe('other');
  });
});

describe('KV event metrics', () => {
  it('counts applied messages, kinds, blocks, rejections, gaps, resets, drops and lag', async () => {
    const m = metrics({
      workerBlocks: () => [{ workerId: 18446744073709551615n, dpRank: 1, blocks: 7 }],
      eventsQueued: () => 3,
    });
    const obs = eventMetricsObserver(m);
    obs.applied(
      {
        envelope: { publisherId: 1n, sequence: 5n, publishedAtMs: 0 },
        publisherGap: { publisherId: 1n, expected: 4n, got: 5n },
        applied: { stored: 2, removed: 1, cleared: 0 },
        blocksStored: 9,
        blocksRemoved: 3,
        rejected: { block_size_mismatch: 1, malformed: 0 },
        gaps: [{ workerId: 1n, dpRank: 0, expected: 2n, got: 4n }],
        resets: [{ workerId: 1n, dpRank: 0 }],
        blockSizeMismatches: [],
        workers: [],
      },
      25,
    );
    obs.dropped(2);
    m.eventConnectionEvent('nats', 'disconnect');
    m.eventConnectionEvent('nats', 'reconnect');
    m.eventConnectionEvent('nats', 'disconnect');
    const text = await m.registry.metrics();
    expect(sample(text, 'kv_epp_events_messages_total')).toBe(1);
    expect(sample(text, 'kv_epp_events_applied_total{kind="stored"}')).toBe(2);
    expect(sample(text, 'kv_epp_events_applied_total{kind="removed"}')).toBe(1);
    expect(sample(text, 'kv_epp_events_blocks_total{op="stored"}')).toBe(9);
    expect(sample(text, 'kv_epp_events_blocks_total{op="removed"}')).toBe(3);
    expect(sample(text, 'kv_epp_events_rejected_total{reason="block_size_mismatch"}')).toBe(1);
    expect(sample(text, 'kv_epp_events_rejected_total{reason="malformed"}')).toBeUndefined();
    expect(sample(text, 'kv_epp_events_gaps_total{kind="event_id"}')).toBe(1);
    expect(sample(text, 'kv_epp_events_gaps_total{kind="publisher"}')).toBe(1);
    expect(sample(text, 'kv_epp_events_stream_resets_total')).toBe(1);
    expect(sample(text, 'kv_epp_events_dropped_total')).toBe(2);
    expect(
      sample(text, 'kv_epp_events_connection_events_total{source="nats",event="disconnect"}'),
    ).toBe(2);
    expect(
      sample(text, 'kv_epp_events_connection_events_total{source="nats",event="reconnect"}'),
    ).toBe(1);
    expect(sample(text, 'kv_epp_events_lag_seconds_sum')).toBe(0.025);
    expect(sample(text, 'kv_epp_events_queued')).toBe(3);
    expect(
      sample(text, 'kv_epp_index_worker_blocks{worker_id="18446744073709551615",dp_rank="1"}'),
    ).toBe(7);
  });
});
