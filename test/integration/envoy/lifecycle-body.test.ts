/**
 * Response bodies behind a real Envoy 1.40 (both modes): SSE usage read across
 * every chunk boundary, CRLF lines, a last line without newline, gzip bodies,
 * and the model-name rewrite-back (`x-gateway-model-name-rewrite`) in JSON and
 * SSE with a correct content-length; plus outlier ejection fed by upstream
 * resets.
 */
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BodyMode, EnvoyProcess } from '../../support/envoy.js';
import { findEnvoy } from '../../support/envoy.js';
import { Gates } from '../../support/fake-openai.js';
import {
  atRest,
  ChaosWorker,
  client,
  type Stack,
  startLifecycleEnvoy,
  startStack,
} from './lifecycle-support.js';

const ENVOY = findEnvoy();
const MODES: BodyMode[] = ['duplex', 'buffered'];
const TARGET = process.env.TARGET ?? 'the-much-longer-target-model-name';

describe.skipIf(!ENVOY).each(MODES)('response bodies behind Envoy (%s)', (mode) => {
  const gates = new Gates();
  let workers: ChaosWorker[];
  let stack: Stack;
  let envoy: EnvoyProcess;
  let seq = 0;
  const nextId = () => `${mode}-body-${++seq}`;

  beforeAll(async () => {
    workers = await Promise.all(
      ['a', 'b', 'c'].map((n, i) => new ChaosWorker(`w-${n}`, `127.0.0.${i + 2}`, gates).start()),
    );
    stack = await startStack(workers, { consecutive5xx: 3 });
    envoy = await startLifecycleEnvoy(ENVOY as string, stack.server.port, mode);
  }, 60_000);

  afterAll(async () => {
    await envoy?.stop();
    await stack?.close();
    await Promise.all(workers.map((w) => w.close()));
  });

  function body(extra: Record<string, unknown> = {}): string {
    return JSON.stringify({
      model: 'client-model',
      messages: [{ role: 'user', content: `hello ${Math.random()}` }],
      max_tokens: 8,
      ...extra,
    });
  }

  async function call(headers: Record<string, string>, b: string) {
    const id = nextId();
    const r = await client({
      port: envoy.port('plain'),
      headers: { 'x-test-id': id, ...headers },
      body: b,
    });
    await atRest(stack, envoy);
    return { id, r, summary: stack.router.summaryOf(id) };
  }

  function models(text: string): string[] {
    return [...text.matchAll(/"model":"([^"]*)"/g)].map((m) => m[1] as string);
  }

  it('SSE split at every byte: usage read, model restored, nothing lost', async () => {
    const probe = await call(
      { 'x-chaos': 'sse-split:0', 'x-gateway-model-name-rewrite': TARGET },
      body({ stream: true }),
    );
    const full = probe.r.body.toString('utf8');
    expect(
      models(full).every((m) => m === 'client-model'),
      full,
    ).toBe(true);
    const length = Buffer.byteLength(full.replaceAll('client-model', TARGET));
    const failures: string[] = [];
    for (let at = 1; at < length; at += 1) {
      for (const extra of [{}, { 'x-chaos-crlf': '1' }, { 'x-chaos-nonl': '1' }]) {
        const { r, summary } = await call(
          { 'x-chaos': `sse-split:${at}`, 'x-gateway-model-name-rewrite': TARGET, ...extra },
          body({ stream: true }),
        );
        const text = r.body.toString('utf8');
        const ms = models(text);
        const ok =
          r.status === 200 &&
          ms.length === 5 &&
          ms.every((m) => m === 'client-model') &&
          text.includes('[DONE]') &&
          summary?.completionTokens === 6 &&
          summary?.promptCachedTokens === 3 &&
          summary?.responseComplete === true;
        if (!ok)
          failures.push(
            `at=${at} ${JSON.stringify(extra)} status=${r.status} models=${ms} usage=${JSON.stringify(summary)}`,
          );
      }
      if (failures.length > 10) break;
    }
    expect(failures).toEqual([]);
  }, 300_000);

  it('JSON split at every 7th byte: usage read, model restored, content-length right', async () => {
    const failures: string[] = [];
    for (let at = 1; at < 300; at += 7) {
      const { r, summary } = await call(
        { 'x-chaos': `json-split:${at}`, 'x-gateway-model-name-rewrite': TARGET },
        body(),
      );
      const text = r.body.toString('utf8');
      const cl = r.headers['content-length'];
      const ok =
        r.status === 200 &&
        JSON.parse(text).model === 'client-model' &&
        (cl === undefined || Number(cl) === r.body.length) &&
        summary?.completionTokens === 6;
      if (!ok)
        failures.push(
          `at=${at} status=${r.status} cl=${cl} len=${r.body.length} ${text.slice(0, 80)}`,
        );
    }
    expect(failures).toEqual([]);
  }, 120_000);

  it('gzip: with a model rewrite the worker is asked for identity and the client sees its own name; without one, gzip passes', async () => {
    for (const [chaos, stream] of [
      ['gzip-json', false],
      ['gzip-sse', true],
    ] as const) {
      const rewritten = await call(
        { 'x-chaos': chaos, 'accept-encoding': 'gzip', 'x-gateway-model-name-rewrite': TARGET },
        body({ stream }),
      );
      expect(rewritten.r.status).toBe(200);
      expect(rewritten.r.headers['content-encoding']).toBeUndefined();
      const plain = rewritten.r.body.toString('utf8');
      expect(models(plain).length).toBeGreaterThan(0);
      expect(models(plain), `${chaos}: ${plain.slice(0, 120)}`).toEqual(
        models(plain).map(() => 'client-model'),
      );
      expect(rewritten.summary?.completionTokens).toBe(6);
      const kept = await call({ 'x-chaos': chaos, 'accept-encoding': 'gzip' }, body({ stream }));
      expect(kept.r.headers['content-encoding']).toBe('gzip');
      expect(models(gunzipSync(kept.r.body).toString('utf8')).length).toBeGreaterThan(0);
    }
  });
});
