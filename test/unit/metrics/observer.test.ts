/**
 * MetricsObserver's timing spans and response-side records, against GAIE's
 * contract: scheduling is timed from the preparer's scores to the pick,
 * request duration from the headers' arrival, and the response metrics follow
 * the model server's usage and the response's end.
 */
import { describe, expect, it } from 'vitest';
import { type Endpoint, parseEndpoints } from '../../../src/discovery/endpoints.js';
import { KvEppError } from '../../../src/errors.js';
import { cacheOutcome, MetricsObserver } from '../../../src/metrics/observer.js';
import { EppMetrics } from '../../../src/metrics/registry.js';
import type { Preparer, RoutePrep } from '../../../src/pipeline/route-prep.js';
import type { RoutedRequest } from '../../../src/routing/kv-router.js';
import type {
  GatewayRequest,
  RequestRouter,
  ResponseSummary,
  RouteDecision,
} from '../../../src/server/routing-types.js';
import { sample } from '../../support/prom-text.js';

const ML = 'model_name="m",target_model_name="m"';
const [ep] = parseEndpoints(
  { endpoints: [{ address: '127.0.0.2', port: 8001, name: 'a', workerId: '11', dpRank: 0 }] },
  'test',
) as [Endpoint];

/** What a pool preparer returns: the body work done there (model read, body spliced). */
const prep: RoutePrep = {
  tokens: new Uint32Array(0),
  localHashes: new BigUint64Array(0),
  overlap: { workers: [], blocks: [], treeSizes: [] },
  request: { model: 'm', tokenCount: 4, body: new Uint8Array(1) },
};

function req(
  model: string,
  extra: Partial<GatewayRequest> & { receivedAtMs?: number } = {},
): GatewayRequest {
  return {
    headers: new Map(),
    path: '/v1/chat/completions',
    method: 'POST',
    body: new TextEncoder().encode(JSON.stringify({ model, prompt: 'hello' })),
    requestId: 'r',
    ...extra,
  };
}

/**
 * A KvRouter-shaped fake on a hand-driven clock: admission (1 ms), the
 * preparer (5 ms, through the observer's wrapper, with `req.body` itself),
 * picking (`pickMs`), then onRouted. `fail` throws at that stage instead.
 */
function setup(opts: { pickMs?: number; fail?: 'before_scoring' | 'at_pick' | 'dropped' } = {}) {
  const clock = { now: 1000 };
  const m = new EppMetrics({ processMetrics: false });
  const obs = new MetricsObserver(m, () => clock.now);
  const preparer: Preparer = obs.preparer({
    prepare: async () => {
      clock.now += 5;
      // A pool task dropped while it waited for a thread.
      if (opts.fail === 'dropped') throw new KvEppError('cancelled', 'abandoned');
      return prep;
    },
  });
  const routed: Array<Partial<RoutedRequest> & { scheduleMs?: number }> = [];
  const inner: RequestRouter = {
    route: async (r) => {
      clock.now += 1;
      if (opts.fail === 'before_scoring') throw new KvEppError('overloaded', 'queue full');
      const p = await preparer.prepare(r.body, 'chat', { blockSize: 16 });
      // The pool took the body (transferred): its bytes are gone on this thread.
      structuredClone(r.body.buffer, { transfer: [r.body.buffer as ArrayBuffer] });
      clock.now += opts.pickMs ?? 1;
      if (opts.fail === 'at_pick') throw new KvEppError('no_endpoint', 'all endpoints left');
      const decision: RouteDecision = {
        endpoints: [ep.hostPort],
        setHeaders: {},
        removeHeaders: [],
        body: new Uint8Array(1),
      };
      const extra = routed.shift() ?? {};
      obs.onRouted({ decision, prep: p, endpoint: ep, model: 'm', ...extra });
      return decision;
    },
    routeHeaderOnly: () => {
      throw new Error('unused');
    },
  };
  return { clock, m, router: obs.router(inner), routed };
}

describe('MetricsObserver spans', () => {
  it('counts a request abandoned while it waited for tokenizing as cancelled, not as an error', async () => {
    const { m, router } = setup({ fail: 'dropped' });
    await expect(router.route(req('m'))).rejects.toMatchObject({ code: 'cancelled' });
    const failed = { cancelled: true, reason: 'stream_failed' as const, onCancel: undefined };
    await expect(router.route(req('m', { cancel: failed }))).rejects.toMatchObject({
      code: 'cancelled',
    });
    const text = await m.registry.metrics();
    expect(sample(text, 'kv_epp_requests_cancelled_total{reason="abandoned"}')).toBe(1);
    expect(sample(text, 'kv_epp_requests_cancelled_total{reason="stream_failed"}')).toBe(1);
    expect(text).not.toMatch(/^inference_objective_request_error_total\{/m);
    // Waiting is not tokenizing.
    expect(sample(text, 'kv_epp_tokenization_seconds_count')).toBe(0);
  });

  it('times scheduling from the scores to the pick, and keeps the whole route time', async () => {
    const { m, router } = setup({ pickMs: 2 });
    const r = req('m');
    const bytes = r.body.byteLength;
    await router.route(r);
    const text = await m.registry.metrics();
    expect(sample(text, 'inference_extension_scheduler_e2e_duration_seconds_sum')).toBe(0.002);
    expect(sample(text, 'kv_epp_tokenization_seconds_sum')).toBe(0.005);
    expect(sample(text, 'kv_epp_route_seconds_sum')).toBe(0.008);
    // The size read before the router gave the body away.
    expect(r.body.byteLength).toBe(0);
    expect(sample(text, `inference_objective_request_sizes_sum{${ML}}`)).toBe(bytes);
  });

  it("uses the router's own scheduling time when it reports one", async () => {
    const { m, router, routed } = setup({ pickMs: 2 });
    routed.push({ scheduleMs: 0.3 });
    await router.route(req('m'));
    const text = await m.registry.metrics();
    expect(sample(text, 'inference_extension_scheduler_e2e_duration_seconds_sum')).toBe(0.0003);
  });

  it('counts a failed scheduling attempt only after the request was scored', async () => {
    const failure =
      'inference_extension_scheduler_attempts_total{status="failure",target_model_name="m",pod_name="",namespace="",port=""}';
    const early = setup({ fail: 'before_scoring' });
    await expect(early.router.route(req('m'))).rejects.toThrow('queue full');
    let text = await early.m.registry.metrics();
    expect(sample(text, failure)).toBeUndefined();
    expect(sample(text, 'inference_extension_scheduler_e2e_duration_seconds_count')).toBe(0);
    expect(
      sample(
        text,
        'inference_objective_request_error_total{model_name="m",target_model_name="m",error_code="ResourceExhausted"}',
      ),
    ).toBe(1);

    const late = setup({ fail: 'at_pick', pickMs: 3 });
    await expect(late.router.route(req('m'))).rejects.toThrow('all endpoints left');
    text = await late.m.registry.metrics();
    // Labelled from the preparer's body work: the body itself was on the pool by then.
    expect(sample(text, failure)).toBe(1);
    expect(
      sample(
        text,
        'inference_objective_request_error_total{model_name="m",target_model_name="m",error_code="ServiceUnavailable"}',
      ),
    ).toBe(1);
    expect(sample(text, 'inference_extension_scheduler_e2e_duration_seconds_sum')).toBe(0.003);
  });
});

describe('cacheOutcome', () => {
  it.each([
    [48, 48, 100, 'hit'],
    [48, 32, 100, 'over'],
    [48, 64, 100, 'under'],
    [0, 0, 10, 'hit'],
    [0, 16, 40, 'under'],
    // A whole prompt of whole blocks: the engine recomputes the last block.
    [64, 48, 64, 'hit'],
    [64, 64, 64, 'hit'],
    [64, 32, 64, 'over'],
    // Not the whole prompt: one block less is one block less.
    [48, 32, 64, 'over'],
    [48, 32, undefined, 'over'],
  ] as const)('predicted %i, reported %i of a %s-token prompt: %s', (p, r, n, outcome) => {
    expect(cacheOutcome(p, r, n, 16)).toBe(outcome);
  });
});

describe('MetricsObserver cache predictions', () => {
  /** Routed to `ep` with `blocks` of overlap there (block size 16, 100 prompt tokens). */
  async function predicted(blocks: number, summary: Partial<ResponseSummary>) {
    const { m, router, routed } = setup();
    routed.push({
      blockSize: 16,
      prep: {
        ...prep,
        overlap: {
          workers: [{ workerId: ep.workerId, dpRank: 0 }],
          blocks: [blocks],
          treeSizes: [],
        },
        request: { model: 'm', tokenCount: 100, body: new Uint8Array(1) },
      },
    });
    const d = await router.route(req('m'));
    router.complete?.(d, { requestId: 'r', status: 200, ...summary });
    const text = await m.registry.metrics();
    return (name: string) => sample(text, name);
  }

  it('compares the overlap of the primary with the cached tokens its server reported', async () => {
    let v = await predicted(3, { promptCachedTokens: 48, servedEndpoint: ep.hostPort });
    expect(v('kv_epp_cache_predictions_total{outcome="hit"}')).toBe(1);
    expect(v('kv_epp_cached_tokens_predicted_total')).toBe(48);
    expect(v('kv_epp_cached_tokens_reported_total')).toBe(48);
    v = await predicted(3, { promptCachedTokens: 16 });
    expect(v('kv_epp_cache_predictions_total{outcome="over"}')).toBe(1);
    expect(v('kv_epp_cached_tokens_reported_total')).toBe(16);
    v = await predicted(0, { promptCachedTokens: 32 });
    expect(v('kv_epp_cache_predictions_total{outcome="under"}')).toBe(1);
  });

  it('judges nothing without reported cached tokens, or when another endpoint served', async () => {
    let v = await predicted(3, {});
    expect(v('kv_epp_cached_tokens_predicted_total')).toBe(0);
    v = await predicted(3, { promptCachedTokens: 48, servedEndpoint: '127.0.0.9:1' });
    expect(v('kv_epp_cached_tokens_predicted_total')).toBe(0);
    expect(v('kv_epp_cache_predictions_total{outcome="hit"}')).toBeUndefined();
  });
});

describe('MetricsObserver responses', () => {
  async function routedAndCompleted(
    summary: Partial<ResponseSummary> & Record<string, unknown>,
    receivedAtMs?: number,
  ): Promise<string> {
    const { clock, m, router } = setup();
    const d = await router.route(req('m', receivedAtMs === undefined ? {} : { receivedAtMs }));
    clock.now = 2000;
    router.complete?.(d, { requestId: 'r', status: 200, ...summary });
    return m.registry.metrics();
  }

  it('times the request from the arrival of its headers', async () => {
    // Route starts at 1000 ms; the headers arrived at 900 ms; the response ends at 2000 ms.
    let text = await routedAndCompleted({ completionTokens: 11 }, 900);
    expect(sample(text, `inference_objective_request_duration_seconds_sum{${ML}}`)).toBe(1.1);
    expect(
      sample(text, `inference_objective_normalized_time_per_output_token_seconds_sum{${ML}}`),
    ).toBe(0.1);
    // Without the arrival time: from route().
    text = await routedAndCompleted({ completionTokens: 10 });
    expect(sample(text, `inference_objective_request_duration_seconds_sum{${ML}}`)).toBe(1);
  });

  it("records the model server's usage, cached tokens and response size", async () => {
    const text = await routedAndCompleted({
      promptTokens: 30,
      completionTokens: 5,
      promptCachedTokens: 16,
      responseBytes: 700,
    });
    expect(sample(text, `inference_objective_input_tokens_sum{${ML}}`)).toBe(30);
    expect(sample(text, `inference_objective_output_tokens_sum{${ML}}`)).toBe(5);
    expect(sample(text, `inference_objective_prompt_cached_tokens_sum{${ML}}`)).toBe(16);
    expect(sample(text, `inference_objective_response_sizes_sum{${ML}}`)).toBe(700);
    expect(sample(text, `kv_epp_prompt_tokens_sum{${ML}}`)).toBe(4);
  });

  it('skips zero token counts but records zero cached tokens, as GAIE does', async () => {
    const text = await routedAndCompleted({
      promptTokens: 0,
      completionTokens: 0,
      promptCachedTokens: 0,
    });
    expect(sample(text, `inference_objective_input_tokens_count{${ML}}`)).toBeUndefined();
    expect(sample(text, `inference_objective_output_tokens_count{${ML}}`)).toBeUndefined();
    expect(
      sample(text, `inference_objective_normalized_time_per_output_token_seconds_count{${ML}}`),
    ).toBeUndefined();
    expect(sample(text, `inference_objective_prompt_cached_tokens_count{${ML}}`)).toBe(1);
    expect(sample(text, `inference_objective_request_duration_seconds_count{${ML}}`)).toBe(1);
  });

  it('keeps an unfinished response out of duration, NTPOT and size, but ends it', async () => {
    const text = await routedAndCompleted({
      promptTokens: 30,
      completionTokens: 5,
      responseBytes: 10,
      responseComplete: false,
    });
    expect(sample(text, 'inference_objective_running_requests{model_name="m"}')).toBe(0);
    expect(sample(text, `inference_objective_input_tokens_sum{${ML}}`)).toBe(30);
    expect(sample(text, `inference_objective_request_duration_seconds_count{${ML}}`)).toBe(
      undefined,
    );
    expect(
      sample(text, `inference_objective_normalized_time_per_output_token_seconds_count{${ML}}`),
    ).toBeUndefined();
    expect(sample(text, `inference_objective_response_sizes_count{${ML}}`)).toBeUndefined();
  });
});
