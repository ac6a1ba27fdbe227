/**
 * A request the gateway abandons while kv-epp routes it, through a real Envoy
 * (FULL_DUPLEX_STREAMED, the reference listener): the client hanging up, and
 * Envoy's own ext_proc `message_timeout`. Either way Envoy ends the ext_proc
 * stream, the router's `GatewayRequest.cancel` fires (so a tokenization task
 * still waiting for a pool thread is dropped), and nothing is picked: no
 * endpoint's in-flight count moves. The preparer here waits for the cancel, so
 * the test orders on events, not time. Loopback only.
 */
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { parseEndpoints } from '../../../src/discovery/endpoints.js';
import { KvEppError } from '../../../src/errors.js';
import { createHotPath } from '../../../src/pipeline/factory.js';
import type { HotPath } from '../../../src/pipeline/route-prep.js';
import { KvRouter } from '../../../src/routing/kv-router.js';
import { type RunningServer, startExtProcServer } from '../../../src/server/grpc-server.js';
import type { Cancellation } from '../../../src/server/routing-types.js';
import { type EnvoyProcess, findEnvoy, processingMode, startEnvoy } from '../../support/envoy.js';
import { RecordingLogger } from '../../support/ext-proc.js';
import { type FakeWorker, startFakeWorkers } from '../../support/fake-openai.js';

const ENVOY = findEnvoy();
if (!ENVOY && process.env.KV_EPP_REQUIRE_ENVOY === '1') {
  throw new Error('KV_EPP_REQUIRE_ENVOY=1 but no envoy binary in .venv-tools');
}

const BODY = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hello there' }] });

/** Preparer calls waiting for their request's cancel, in arrival order. */
class HoldingPreparer {
  readonly held: Array<{ cancel: Cancellation | undefined; dropped: boolean }> = [];
  private arrived: Array<() => void> = [];

  prepare = (
    _b: Uint8Array,
    _api: unknown,
    _s: unknown,
    _w: unknown,
    cancel?: Cancellation,
  ): Promise<never> =>
    new Promise((_resolve, reject) => {
      const entry = { cancel, dropped: false };
      this.held.push(entry);
      if (cancel) {
        cancel.onCancel = () => {
          entry.dropped = true;
          reject(new KvEppError('cancelled', 'the gateway abandoned the request'));
        };
      }
      for (const f of this.arrived.splice(0)) f();
    });

  /** Resolves once `n` requests have reached the preparer. */
  async reached(n: number): Promise<void> {
    while (this.held.length < n) await new Promise<void>((r) => this.arrived.push(r));
  }
}

describe.skipIf(!ENVOY)('a request abandoned while it is routed, behind a real Envoy', () => {
  let worker: FakeWorker;
  let server: RunningServer;
  let envoy: EnvoyProcess;
  let kv: KvRouter;
  let path: HotPath;
  const preparer = new HoldingPreparer();

  beforeAll(async () => {
    [worker] = (await startFakeWorkers(1)) as [FakeWorker];
    const endpoints = parseEndpoints(
      { endpoints: [{ name: 'w', address: worker.host, port: worker.port }] },
      'cancel',
    );
    path = await createHotPath({ source: 'o200k_base' }, 'native');
    kv = new KvRouter(
      {
        endpoints: () => endpoints,
        preparer,
        index: path.index,
        hasher: path.hasher,
        log: new RecordingLogger(),
      },
      { blockSize: 16, fallbacks: 0, approximate: true },
    );
    server = await startExtProcServer({
      port: 0,
      host: '127.0.0.1',
      router: kv,
      maxBodyBytes: 1024 * 1024,
      logger: new RecordingLogger(),
    });
    envoy = await startEnvoy(ENVOY as string, {
      listeners: [
        { name: 'plain', eppPort: server.port, eppTls: false },
        { name: 'short', eppPort: server.port, eppTls: false },
      ],
      bodyMode: 'duplex',
      bufferLimitBytes: 32 * 1024,
      // The second listener gives each ext_proc message 0.5 s, in BUFFERED mode (Envoy
      // 1.40 applies no message_timeout to FULL_DUPLEX_STREAMED bodies).
      bootstrapHook: (boot) => {
        const chain = boot.static_resources.listeners[1].filter_chains[0];
        for (const http of chain.filters[0].typed_config.http_filters ?? []) {
          if (http.name === 'envoy.filters.http.ext_proc') {
            http.typed_config.message_timeout = '0.5s';
            http.typed_config.processing_mode = processingMode('buffered');
          }
        }
      },
    });
  }, 120_000);

  afterAll(async () => {
    await envoy?.stop();
    await server?.close(1000);
    await worker?.close();
    path?.index.dispose();
    path?.tokenizer.dispose();
  });

  it('drops the work of a client that hangs up, and picks no endpoint for it', async () => {
    const req = request({
      host: '127.0.0.1',
      port: envoy.port('plain'),
      method: 'POST',
      path: '/v1/chat/completions',
      headers: { 'content-type': 'application/json', 'content-length': String(BODY.length) },
      agent: false,
    });
    req.on('error', () => {});
    req.end(BODY);
    await preparer.reached(1);
    const held = preparer.held[0];
    expect(held?.cancel?.cancelled).toBe(false);
    req.destroy();
    await vi.waitFor(() => expect(held?.dropped).toBe(true), { timeout: 10_000 });
    expect(held?.cancel?.cancelled).toBe(true);
    expect(kv.load(`${worker.host}:${worker.port}`)).toBe(0);
  });

  it("drops the work Envoy's message_timeout gave up on; the client gets Envoy's error", async () => {
    const before = preparer.held.length;
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(
        {
          host: '127.0.0.1',
          port: envoy.port('short'),
          method: 'POST',
          path: '/v1/chat/completions',
          headers: { 'content-type': 'application/json', 'content-length': String(BODY.length) },
          agent: false,
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        },
      );
      req.on('error', reject);
      req.end(BODY);
    });
    expect(status).toBeGreaterThanOrEqual(500);
    const held = preparer.held[before];
    await vi.waitFor(() => expect(held?.dropped).toBe(true), { timeout: 10_000 });
    expect(kv.load(`${worker.host}:${worker.port}`)).toBe(0);
    expect(worker.records).toHaveLength(0);
  });
});
