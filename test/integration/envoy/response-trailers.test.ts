/**
 * A worker that answers with headers and trailers and no body (a gRPC-style
 * error after its headers, over HTTP/2), through the real Envoy in both body
 * modes: the client must get the worker's status and trailers. In
 * FULL_DUPLEX_STREAMED Envoy sends kv-epp no response_body then, so any body
 * answer is a spurious message, which Envoy turns into a 500.
 */
import { connect, createServer, type Http2Server } from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type BodyMode, type EnvoyProcess, findEnvoy, startEnvoy } from '../../support/envoy.js';
import { createEppStack, type EppInstance, type EppStack } from '../../support/epp-stack.js';
import type { FakeWorker } from '../../support/fake-openai.js';

const ENVOY = findEnvoy();
if (!ENVOY && process.env.KV_EPP_REQUIRE_ENVOY === '1') {
  throw new Error('KV_EPP_REQUIRE_ENVOY=1 but no envoy binary in .venv-tools');
}

interface Answer {
  status: number;
  body: string;
  trailers: Record<string, unknown>;
}

/** One POST over HTTP/2 (`te: trailers`), read to the end. */
function post(port: number, withBody: boolean): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const session = connect(`http://127.0.0.1:${port}`);
    session.on('error', reject);
    const req = session.request({
      ':method': 'POST',
      ':path': '/v1/chat/completions',
      'content-type': 'application/json',
      te: 'trailers',
      ...(withBody ? { 'x-with-body': '1' } : {}),
    });
    let status = 0;
    let trailers: Record<string, unknown> = {};
    const parts: Buffer[] = [];
    req.on('response', (h) => {
      status = Number(h[':status']);
    });
    req.on('trailers', (t) => {
      trailers = Object.fromEntries(Object.entries(t));
    });
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      session.close();
      resolve({ status, body: Buffer.concat(parts).toString('utf8'), trailers });
    });
    req.on('error', reject);
    req.end(JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hello there' }] }));
  });
}

describe.runIf(ENVOY)('headers and trailers with no body, through Envoy', () => {
  let worker: Http2Server;
  let stack: EppStack;
  let epp: EppInstance;
  const envoys = new Map<BodyMode, EnvoyProcess>();

  beforeAll(async () => {
    worker = createServer();
    worker.on('stream', (stream, headers) => {
      stream.on('data', () => {});
      stream.on('end', () => {
        stream.respond(
          { ':status': 200, 'content-type': 'application/json' },
          { waitForTrailers: true },
        );
        stream.on('wantTrailers', () => stream.sendTrailers({ 'x-worker-trailer': 'done' }));
        if (headers['x-with-body']) stream.end('{"ok":true}');
        else stream.end();
      });
    });
    await new Promise<void>((r) => worker.listen(0, '127.0.0.2', r));
    const port = (worker.address() as { port: number }).port;
    stack = await createEppStack([{ name: 'h2-worker', host: '127.0.0.2', port } as FakeWorker]);
    epp = await stack.start({ name: 'plain', tls: false, maxBodyBytes: 1 << 20 });
    for (const mode of ['duplex', 'buffered'] as const) {
      envoys.set(
        mode,
        await startEnvoy(ENVOY as string, {
          listeners: [{ name: 'plain', eppPort: epp.server.port, eppTls: false }],
          bodyMode: mode,
          bufferLimitBytes: 1 << 20,
          // The worker speaks HTTP/2 (trailers without a chunked HTTP/1.1 body).
          bootstrapHook: (b) => {
            const dst = b.static_resources.clusters.find(
              (c: { name: string }) => c.name === 'original_destination_cluster',
            );
            dst.typed_extension_protocol_options = {
              'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': {
                '@type':
                  'type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
                explicit_http_config: { http2_protocol_options: {} },
              },
            };
          },
        }),
      );
    }
  }, 120_000);

  afterAll(async () => {
    await Promise.all([...envoys.values()].map((e) => e.stop()));
    await stack?.close();
    await new Promise((r) => worker?.close(r));
  });

  describe.each(['duplex', 'buffered'] as const)('%s', (mode) => {
    const port = () => envoys.get(mode)?.ports.get('plain') as number;

    it("passes the worker's status and trailers, with no body", async () => {
      const r = await post(port(), false);
      expect(r).toEqual({ status: 200, body: '', trailers: { 'x-worker-trailer': 'done' } });
      const stats = await envoys.get(mode)?.admin('/stats?filter=ext_proc');
      expect(stats?.body).not.toMatch(/spurious_msgs_received: [1-9]/);
    });

    it('and with a body', async () => {
      const r = await post(port(), true);
      expect(r).toEqual({
        status: 200,
        body: '{"ok":true}',
        trailers: { 'x-worker-trailer': 'done' },
      });
    });
  });
});
