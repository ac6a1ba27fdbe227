/**
 * Outlier ejection fed through a real Envoy 1.40, against what Envoy's own
 * consecutive_5xx detector counts (source/common/router/router.cc,
 * Filter::onUpstreamReset: every upstream reset is LocalOriginConnectFailed,
 * i.e. a 5xx, except an overflow of the cluster's circuit breakers, which is
 * ignored so an overloaded cluster does not lose hosts; envoy#25487). A reset
 * after the response headers is the one difference: ext_proc cannot tell it
 * from a client going away, so kv-epp takes it as no verdict.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BodyMode, EnvoyProcess } from '../../support/envoy.js';
import { findEnvoy, SUBSET_HINT_TEST_HEADER } from '../../support/envoy.js';
import { Gates } from '../../support/fake-openai.js';
import {
  atRest,
  ChaosWorker,
  client,
  type Stack,
  sleep,
  startLifecycleEnvoy,
  startStack,
} from './lifecycle-support.js';

const ENVOY = findEnvoy();
const MODES: BodyMode[] = ['duplex', 'buffered'];

describe.skipIf(!ENVOY).each(MODES)('outlier ejection fed by Envoy (%s)', (mode) => {
  const gates = new Gates();
  let workers: ChaosWorker[];
  let stack: Stack;
  let envoy: EnvoyProcess;
  let seq = 0;

  beforeAll(async () => {
    workers = await Promise.all(
      ['a', 'b', 'c'].map((n, i) => new ChaosWorker(`w-${n}`, `127.0.0.${i + 2}`, gates).start()),
    );
    stack = await startStack(workers, { consecutive5xx: 3 });
    envoy = await startLifecycleEnvoy(ENVOY as string, stack.server.port, mode, false, (b) => {
      // The upstream cluster allows one request at a time (and one pending): more overflow.
      const c = b.static_resources.clusters.find(
        (x: { name: string }) => x.name === 'original_destination_cluster',
      );
      c.circuit_breakers = {
        thresholds: [
          { max_connections: 1, max_pending_requests: 1, max_requests: 1, max_retries: 0 },
        ],
      };
    });
  }, 60_000);

  afterAll(async () => {
    await envoy?.stop();
    await stack?.close();
    await Promise.all(workers.map((w) => w.close()));
  });

  const body = () =>
    JSON.stringify({
      model: 'm',
      messages: [{ role: 'user', content: `hi ${Math.random()}` }],
      stream: true,
    });

  async function pinned(worker: ChaosWorker, chaos: string) {
    const id = `${mode}-o-${++seq}`;
    const r = await client({
      port: envoy.port('plain'),
      headers: { 'x-test-id': id, 'x-chaos': chaos, [SUBSET_HINT_TEST_HEADER]: worker.hostPort },
      body: body(),
    });
    await atRest(stack, envoy);
    return { r, summary: stack.router.summaryOf(id) };
  }

  it('a stream the worker resets after its 200 headers is no verdict: neither counted nor a success', async () => {
    // Envoy counts such a reset as a failure; through ext_proc it looks like a
    // client going away, so kv-epp counts neither (README, outlier ejection).
    const w = workers[0] as ChaosWorker;
    for (let i = 0; i < 3; i++) {
      const { summary } = await pinned(w, 'reset-mid');
      expect([summary?.status, summary?.responseComplete]).toEqual([200, false]);
    }
    expect(stack.kv.ejectedEndpoints()).toBe(0);
  });

  it('a reset mid-response does not clear a run of 5xx answers', async () => {
    const w = workers[1] as ChaosWorker;
    const before = stack.kv.ejectedEndpoints();
    await pinned(w, 'status:500');
    await pinned(w, 'status:500');
    await pinned(w, 'reset-mid');
    await pinned(w, 'status:500');
    // Envoy's detector saw 4 failures in a row (threshold 3); kv-epp at least 3 answers ≥ 500.
    expect(stack.kv.ejectedEndpoints() - before).toBe(1);
  });

  it("circuit-breaker overflow (the cluster's limit, not the host's) ejects no endpoint", async () => {
    const w = workers[2] as ChaosWorker;
    const before = stack.kv.ejectedEndpoints();
    const gate = `cb-${mode}`;
    const held = client({
      port: envoy.port('plain'),
      headers: {
        'x-test-id': `${mode}-held`,
        'x-chaos': `gate-before-headers:${gate}`,
        [SUBSET_HINT_TEST_HEADER]: w.hostPort,
      },
      body: body(),
    });
    // Wait until the held request reached the worker (it holds the cluster's one slot).
    for (let i = 0; i < 3000 && !w.records.some((r) => r.id === `${mode}-held`); i++)
      await sleep(10);
    expect(w.records.some((r) => r.id === `${mode}-held`)).toBe(true);
    const results = await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        client({
          port: envoy.port('plain'),
          headers: { 'x-test-id': `${mode}-ovf-${i}`, [SUBSET_HINT_TEST_HEADER]: w.hostPort },
          body: body(),
          abortAfterMs: 1500,
        }),
      ),
    );
    const statuses = results.map((r) => r.status);
    gates.open(gate);
    await held;
    await atRest(stack, envoy);
    expect(statuses.filter((s) => s === 503).length).toBeGreaterThanOrEqual(3);
    // Envoy ignores overflow for outlier detection; kv-epp should not eject the worker either.
    expect(stack.kv.ejectedEndpoints() - before).toBe(0);
  });
});
