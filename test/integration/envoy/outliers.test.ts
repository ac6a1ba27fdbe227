/**
 * Outlier ejection through a real Envoy (FULL_DUPLEX_STREAMED, the reference
 * listener): one endpoint whose port refuses connections and sorts first, one
 * live fake worker. Envoy answers the requests routed to the dead one with its
 * own 503 (connect failure), which kv-epp's response path sees; after
 * `consecutive5xx` of them kv-epp stops routing there. Loopback only.
 */
import { createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseEndpoints } from '../../../src/discovery/endpoints.js';
import { createHotPath } from '../../../src/pipeline/factory.js';
import { prepareRouteInline } from '../../../src/pipeline/route-prep.js';
import { KvRouter } from '../../../src/routing/kv-router.js';
import { type RunningServer, startExtProcServer } from '../../../src/server/grpc-server.js';
import { type EnvoyProcess, findEnvoy, startEnvoy } from '../../support/envoy.js';
import { RecordingLogger } from '../../support/ext-proc.js';
import { type FakeWorker, startFakeWorkers } from '../../support/fake-openai.js';
import { httpCall } from '../../support/http-client.js';

const ENVOY = findEnvoy();
if (!ENVOY && process.env.KV_EPP_REQUIRE_ENVOY === '1') {
  throw new Error('KV_EPP_REQUIRE_ENVOY=1 but no envoy binary in .venv-tools');
}

/** A loopback port nothing listens on (bound, then closed). */
async function closedPort(host: string): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, host, r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

describe.skipIf(!ENVOY)('outlier ejection behind a real Envoy', () => {
  let worker: FakeWorker;
  let server: RunningServer;
  let envoy: EnvoyProcess;
  let kv: KvRouter;
  let dispose: () => Promise<void>;

  beforeAll(async () => {
    [worker] = (await startFakeWorkers(1)) as [FakeWorker];
    const deadHost = '127.0.0.5';
    const endpoints = parseEndpoints(
      {
        endpoints: [
          // First by name: every tie goes to it until it is ejected.
          { name: 'a-dead', address: deadHost, port: await closedPort(deadHost) },
          { name: 'b-live', address: worker.host, port: worker.port },
        ],
      },
      'outliers',
    );
    const path = await createHotPath({ source: 'o200k_base' }, 'native');
    kv = new KvRouter(
      {
        endpoints: () => endpoints,
        preparer: { prepare: async (b, api, st, w) => prepareRouteInline(path, b, api, st, w) },
        index: path.index,
        hasher: path.hasher,
        log: new RecordingLogger(),
        random: () => 0, // ties to the first name
      },
      {
        blockSize: 16,
        fallbacks: 0,
        approximate: true,
        outliers: {
          consecutive5xx: 3,
          baseEjectionMs: 600_000,
          maxEjectionMs: 600_000,
          maxEjectionPercent: 10,
        },
      },
    );
    server = await startExtProcServer({
      port: 0,
      host: '127.0.0.1',
      router: kv,
      maxBodyBytes: 1024 * 1024,
      logger: new RecordingLogger(),
    });
    envoy = await startEnvoy(ENVOY as string, {
      listeners: [{ name: 'plain', eppPort: server.port, eppTls: false }],
      bodyMode: 'duplex',
      // GAIE's reference listener limit.
      bufferLimitBytes: 32 * 1024,
    });
    dispose = async () => {
      path.index.dispose();
      path.tokenizer.dispose();
    };
  }, 120_000);

  afterAll(async () => {
    await envoy?.stop();
    await server?.close(1000);
    await worker?.close();
    await dispose?.();
  });

  it("stops routing to an endpoint after Envoy's 503s for it, and the live one serves the rest", async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) {
      const body = JSON.stringify({
        model: 'm',
        messages: [{ role: 'user', content: `prompt ${i}: ${'new text '.repeat(20)}` }],
        max_tokens: 4,
      });
      const res = await httpCall({
        port: envoy.port('plain'),
        method: 'POST',
        path: '/v1/chat/completions',
        headers: { 'content-type': 'application/json' },
        body,
      });
      statuses.push(res.status);
    }
    expect(statuses).toEqual([503, 503, 503, 200, 200, 200, 200, 200]);
    expect(kv.ejectedEndpoints()).toBe(1);
    expect(worker.records.length).toBe(5);
  });
});
