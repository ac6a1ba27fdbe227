/**
 * Request lifecycle and accounting behind a real Envoy 1.40 (both body modes,
 * and BUFFERED with SSE switched to STREAMED):
 * after aborts, resets, 5xx, timeouts, local replies and retries the
 * in-flight count per endpoint and the running gauge return to 0, exactly one
 * completion is recorded per decision, and no ext_proc stream stays open.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BodyMode, EnvoyBootstrap, EnvoyProcess } from '../../support/envoy.js';
import { findEnvoy } from '../../support/envoy.js';
import { Gates } from '../../support/fake-openai.js';
import {
  atRest,
  ChaosWorker,
  client,
  envoyStat,
  metricText,
  type Stack,
  startLifecycleEnvoy,
  startStack,
  sumOf,
} from './lifecycle-support.js';

const ENVOY = findEnvoy();
/**
 * `buffered-override`: Envoy AI Gateway's buffered pool with
 * `allow_mode_override` and trailers SEND, where kv-epp switches SSE
 * responses to STREAMED (they reach the client as they are made).
 */
type Mode = BodyMode | 'buffered-override';
const MODES: Mode[] = ['duplex', 'buffered', 'buffered-override'];

/** Lets ext_proc override the processing mode and sends trailers both ways. */
function allowModeOverride(b: EnvoyBootstrap): void {
  for (const l of b.static_resources.listeners) {
    for (const http of l.filter_chains[0].filters[0].typed_config.http_filters ?? []) {
      if (http.name !== 'envoy.filters.http.ext_proc') continue;
      http.typed_config.allow_mode_override = true;
      http.typed_config.processing_mode.request_trailer_mode = 'SEND';
      http.typed_config.processing_mode.response_trailer_mode = 'SEND';
    }
  }
}

describe.skipIf(!ENVOY).each(MODES)('lifecycle behind Envoy (%s)', (mode) => {
  /** SSE reaches the client as the worker writes it. */
  const sseStreams = mode !== 'buffered';
  const gates = new Gates();
  let workers: ChaosWorker[];
  let stack: Stack;
  let envoy: EnvoyProcess;
  let seq = 0;
  const nextId = () => `${mode}-${++seq}`;

  beforeAll(async () => {
    workers = await Promise.all(
      ['a', 'b'].map((n, i) => new ChaosWorker(`w-${n}`, `127.0.0.${i + 2}`, gates).start()),
    );
    stack = await startStack(workers, { consecutive5xx: 3 });
    envoy =
      mode === 'buffered-override'
        ? await startLifecycleEnvoy(
            ENVOY as string,
            stack.server.port,
            'buffered',
            false,
            allowModeOverride,
          )
        : await startLifecycleEnvoy(ENVOY as string, stack.server.port, mode);
  }, 60_000);

  afterAll(async () => {
    await envoy?.stop();
    await stack?.close();
    await Promise.all(workers.map((w) => w.close()));
  });

  function body(extra: Record<string, unknown> = {}, tag = ''): string {
    return JSON.stringify({
      model: 'client-model',
      messages: [{ role: 'user', content: `hello ${tag} ${Math.random()}` }],
      max_tokens: 8,
      ...extra,
    });
  }

  async function expectAtRest(): Promise<void> {
    const a = await atRest(stack, envoy);
    expect(a).toMatchObject({ running: 0, eppStreamsActive: 0, badCompletions: [] });
    expect(
      Object.values(a.inFlight).every((n) => n === 0),
      JSON.stringify(a.inFlight),
    ).toBe(true);
  }

  it('plain JSON and SSE requests', async () => {
    const id1 = nextId();
    const r1 = await client({
      port: envoy.port('plain'),
      headers: { 'x-test-id': id1 },
      body: body(),
    });
    expect(r1.status, r1.body.toString()).toBe(200);
    const id2 = nextId();
    const r2 = await client({
      port: envoy.port('plain'),
      headers: { 'x-test-id': id2 },
      body: body({ stream: true, stream_options: { include_usage: true } }),
    });
    expect(r2.status).toBe(200);
    await expectAtRest();
    expect(stack.router.summaryOf(id1)).toMatchObject({
      status: 200,
      completionTokens: 6,
      promptCachedTokens: 3,
    });
    expect(stack.router.summaryOf(id2)).toMatchObject({
      status: 200,
      completionTokens: 6,
      promptCachedTokens: 3,
    });
  });

  it('client aborts mid request body', async () => {
    const id = nextId();
    const b = body({}, 'x'.repeat(2000));
    const r = await client({
      port: envoy.port('plain'),
      headers: { 'x-test-id': id },
      body: b,
      abortAfterBodyBytes: 100,
    });
    expect(r.aborted).toBe(true);
    await expectAtRest();
  });

  it('client aborts before response headers (worker hangs)', async () => {
    const id = nextId();
    const r = await client({
      port: envoy.port('plain'),
      headers: { 'x-test-id': id, 'x-chaos': 'hang' },
      body: body(),
      abortAfterMs: 300,
    });
    expect(r.aborted).toBe(true);
    await expectAtRest();
    expect(stack.router.summaryOf(id)).toMatchObject({ responseComplete: false });
  });

  it('client aborts mid SSE', async () => {
    const id = nextId();
    const gate = `g-${id}`;
    const p = client({
      port: envoy.port('plain'),
      headers: { 'x-test-id': id, 'x-chaos': `gate-sse:${gate}` },
      body: body({ stream: true }),
      abortAfterResponseBytes: 1,
      abortAfterMs: sseStreams ? undefined : 300,
    });
    const r = await p;
    gates.open(gate);
    expect(r.aborted).toBe(true);
    await expectAtRest();
  });

  it('upstream resets before headers: the client gets a 503, outlier sees a 5xx', async () => {
    const id = nextId();
    const r = await client({
      port: envoy.port('plain'),
      headers: { 'x-test-id': id, 'x-chaos': 'reset-before' },
      body: body(),
    });
    expect(r.status).toBe(503);
    await expectAtRest();
    expect(stack.router.summaryOf(id)?.status).toBe(503);
  });

  it('upstream resets mid SSE', async () => {
    const id = nextId();
    const r = await client({
      port: envoy.port('plain'),
      headers: { 'x-test-id': id, 'x-chaos': 'reset-mid' },
      body: body({ stream: true }),
    });
    // the client sees a truncated 200 (duplex) or Envoy's 502 (buffered: nothing sent yet)
    expect(sseStreams ? r.status : r.status === 502 || r.status === 503).toBe(
      sseStreams ? 200 : true,
    );
    await expectAtRest();
    expect(stack.router.summaryOf(id)?.responseComplete).toBe(false);
  });

  it('upstream truncated JSON (content-length not met)', async () => {
    const id = nextId();
    const r = await client({
      port: envoy.port('plain'),
      headers: { 'x-test-id': id, 'x-chaos': 'truncated-json' },
      body: body(),
    });
    expect(r.body.length).toBeLessThan(1000);
    await expectAtRest();
    expect(stack.router.summaryOf(id)?.responseComplete).toBe(false);
  });

  it('upstream 500', async () => {
    const id = nextId();
    const r = await client({
      port: envoy.port('plain'),
      headers: { 'x-test-id': id, 'x-chaos': 'status:500' },
      body: body(),
    });
    expect(r.status).toBe(500);
    await expectAtRest();
    expect(stack.router.summaryOf(id)?.status).toBe(500);
  });

  it("Envoy's route timeout (504)", async () => {
    const id = nextId();
    const r = await client({
      port: envoy.port('plain'),
      headers: { 'x-test-id': id, 'x-chaos': 'hang', 'x-test-route': 'timeout' },
      body: body(),
    });
    expect(r.status).toBe(504);
    await expectAtRest();
    expect(stack.router.summaryOf(id)?.status).toBe(504);
  });

  it('retry on 5xx and reset', async () => {
    for (const chaos of ['status:503', 'reset-before']) {
      const id = nextId();
      const r = await client({
        port: envoy.port('plain'),
        headers: { 'x-test-id': id, 'x-chaos': chaos, 'x-test-route': 'retry' },
        body: body(),
      });
      const tries = workers.flatMap((w) => w.records.filter((x) => x.id === id)).length;
      expect([r.status, tries]).toEqual([503, 3]);
      await expectAtRest();
    }
  });

  it('malformed SSE, gzip JSON, gzip SSE', async () => {
    for (const [chaos, stream] of [
      ['malformed-sse', true],
      ['gzip-json', false],
      ['gzip-sse', true],
    ] as const) {
      const id = nextId();
      const r = await client({
        port: envoy.port('plain'),
        headers: {
          'x-test-id': id,
          'x-chaos': chaos,
          'x-gateway-model-name-rewrite': 'target-model',
        },
        body: body({ stream }),
      });
      expect(r.status).toBe(200);
      await expectAtRest();
    }
  });

  it('ends at rest: every ext_proc stream Envoy opened closed, nothing running, no stream failed', async () => {
    const text = await metricText(stack.metrics);
    expect(sumOf(text, 'inference_objective_running_requests')).toBe(0);
    const started = await envoyStat(envoy, 'http.plain.ext_proc.streams_started');
    expect(started).toBeGreaterThan(0);
    expect(await envoyStat(envoy, 'http.plain.ext_proc.streams_closed')).toBe(started);
    expect(await envoyStat(envoy, 'http.plain.ext_proc.streams_failed')).toBe(0);
  });
});
