/**
 * kv-epp behind a real Envoy whose ext_proc filter uses the Google gRPC client
 * (`grpc_service.google_grpc`, gRPC C++) instead of Envoy's own, as some
 * gateways configure it: plaintext and TLS (kv-epp's self-signed certificate
 * as the channel's root), FULL_DUPLEX_STREAMED and BUFFERED. Each request must
 * reach the worker with the destination and the injected token ids, and a bad
 * request must come back as kv-epp's 400. Loopback only.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseEndpoints } from '../../../src/discovery/endpoints.js';
import { createHotPath } from '../../../src/pipeline/factory.js';
import { prepareRouteInline } from '../../../src/pipeline/route-prep.js';
import { KvRouter } from '../../../src/routing/kv-router.js';
import { type RunningServer, startExtProcServer } from '../../../src/server/grpc-server.js';
import {
  type EnvoyBootstrap,
  type EnvoyProcess,
  findEnvoy,
  startEnvoy,
} from '../../support/envoy.js';
import { RecordingLogger } from '../../support/ext-proc.js';
import { type FakeWorker, startFakeWorkers } from '../../support/fake-openai.js';
import { httpCall } from '../../support/http-client.js';

const ENVOY = findEnvoy();
if (!ENVOY && process.env.KV_EPP_REQUIRE_ENVOY === '1') {
  throw new Error('KV_EPP_REQUIRE_ENVOY=1 but no envoy binary in .venv-tools');
}

/** Every ext_proc filter of the bootstrap talks to kv-epp through gRPC C++. */
function useGoogleGrpc(eppPort: number, rootCert: string | undefined) {
  return (boot: EnvoyBootstrap): void => {
    for (const listener of boot.static_resources.listeners) {
      for (const chain of listener.filter_chains) {
        for (const filter of chain.filters) {
          for (const http of filter.typed_config.http_filters ?? []) {
            if (http.name !== 'envoy.filters.http.ext_proc') continue;
            http.typed_config.grpc_service = {
              google_grpc: {
                target_uri: `127.0.0.1:${eppPort}`,
                stat_prefix: 'epp',
                ...(rootCert
                  ? {
                      channel_credentials: {
                        ssl_credentials: { root_certs: { inline_string: rootCert } },
                      },
                      // The self-signed certificate names localhost, not 127.0.0.1.
                      channel_args: {
                        args: { 'grpc.ssl_target_name_override': { string_value: 'localhost' } },
                      },
                    }
                  : {}),
              },
              timeout: '10s',
            };
          }
        }
      }
    }
  };
}

describe.skipIf(!ENVOY).each([
  ['plaintext', 'duplex'],
  ['plaintext', 'buffered'],
  ['TLS', 'duplex'],
] as const)("ext_proc over Envoy's Google gRPC client (%s, %s)", (security, bodyMode) => {
  let worker: FakeWorker;
  let server: RunningServer;
  let envoy: EnvoyProcess;
  let dispose: () => Promise<void>;

  beforeAll(async () => {
    [worker] = (await startFakeWorkers(1)) as [FakeWorker];
    const endpoints = parseEndpoints(
      { endpoints: [{ name: 'w', address: worker.host, port: worker.port, workerId: '42' }] },
      'google-grpc',
    );
    const path = await createHotPath({ source: 'o200k_base' }, 'native');
    const kv = new KvRouter(
      {
        endpoints: () => endpoints,
        preparer: { prepare: async (b, api, st, w) => prepareRouteInline(path, b, api, st, w) },
        index: path.index,
        hasher: path.hasher,
        log: new RecordingLogger(),
        random: () => 0, // ties to the first name: outcomes below are exact
      },
      { blockSize: 16, fallbacks: 0, approximate: true },
    );
    server = await startExtProcServer({
      port: 0,
      host: '127.0.0.1',
      router: kv,
      maxBodyBytes: 1024 * 1024,
      logger: new RecordingLogger(),
      tls: security === 'TLS' ? 'self-signed' : undefined,
    });
    envoy = await startEnvoy(ENVOY as string, {
      // The EPP cluster stays for Envoy's health check of kv-epp; requests go through gRPC C++.
      listeners: [{ name: 'plain', eppPort: server.port, eppTls: security === 'TLS' }],
      bodyMode,
      bufferLimitBytes: 32 * 1024,
      bootstrapHook: useGoogleGrpc(server.port, server.certificate),
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

  it('routes each request to the worker with the destination and the token ids', async () => {
    for (let i = 0; i < 5; i++) {
      const res = await httpCall({
        port: envoy.port('plain'),
        method: 'POST',
        path: '/v1/chat/completions',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          model: 'm',
          messages: [{ role: 'user', content: `question ${i}: ${'some words '.repeat(30)}` }],
        }),
      });
      expect(res.status).toBe(200);
    }
    expect(worker.records).toHaveLength(5);
    for (const r of worker.records) {
      expect(r.headers['x-gateway-destination-endpoint']).toBe(worker.hostPort);
      expect(r.headers['x-dynamo-worker-instance-id']).toBe('42');
      const ids = (r.json?.nvext as { token_data?: unknown } | undefined)?.token_data;
      expect(Array.isArray(ids) && ids.length > 50).toBe(true);
    }
  });

  it("answers a body that is not JSON with kv-epp's 400", async () => {
    const res = await httpCall({
      port: envoy.port('plain'),
      method: 'POST',
      path: '/v1/chat/completions',
      headers: { 'content-type': 'application/json' },
      body: '{not json',
    });
    expect(res.status).toBe(400);
  });
});
