/**
 * What Envoy 1.40 itself demands of an ext_proc server (issue 5's "What Envoy
 * 1.40 demands", the rules kv-epp's stream is built on), pinned against a stub
 * server that answers each request as its `x-stub` header says, behind the
 * same listener and EPP cluster as the kv-epp tests (test/support/envoy.ts):
 *
 * - FULL_DUPLEX_STREAMED: Envoy forwards only the body the server sends back
 *   as `streamed_response`; a plain `BodyResponse{}` is a protocol error the
 *   client sees as HTTP 500.
 * - BUFFERED: a `streamed_response` is ignored (the client's body goes on,
 *   the server's edits are lost: not the HTTP 500 one might expect); an empty
 *   answer forwards the client's body unchanged; `body_mutation.body` replaces it.
 * - FULL_DUPLEX_STREAMED with trailers not SEND is refused at config load.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Server, ServerCredentials, type ServerDuplexStream } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readHeaderMap } from '../../../src/server/ext-proc/headers.js';
import type {
  ProcessingRequest,
  ProcessingResponse,
} from '../../../src/server/ext-proc/messages.js';
import { loadServices } from '../../../src/server/ext-proc/proto.js';
import { healthService } from '../../../src/server/health.js';
import {
  type BodyMode,
  type EnvoyProcess,
  envoyBootstrap,
  findEnvoy,
  processingMode,
  startEnvoy,
} from '../../support/envoy.js';
import { type FakeWorker, startFakeWorkers } from '../../support/fake-openai.js';
import { httpCall } from '../../support/http-client.js';

const ENVOY = findEnvoy();
const enc = new TextEncoder();

/** How the stub answers the request body. */
type Stub = 'echo' | 'replace' | 'empty' | 'streamed';

/**
 * An ext_proc server that routes every request to `worker` and answers its
 * request body as `x-stub` says: `echo` (the body back as the mode requires),
 * `replace` (another body), `empty` (`BodyResponse{}`), `streamed` (another
 * body as `streamed_response`, whatever the mode). Responses pass through.
 */
async function startStub(
  worker: FakeWorker,
  mode: BodyMode,
): Promise<{ server: Server; port: number }> {
  const services = loadServices();
  const server = new Server();
  server.addService(services.extProc, {
    Process(call: ServerDuplexStream<ProcessingRequest, ProcessingResponse>) {
      let stub: Stub = 'echo';
      const send = (r: ProcessingResponse) => call.write(r);
      const streamed = (body: Uint8Array, end_of_stream: boolean) => ({
        response: { body_mutation: { streamed_response: { body, end_of_stream } } },
      });
      call.on('data', (m: ProcessingRequest) => {
        if (m.request_headers) {
          stub = (readHeaderMap(m.request_headers.headers).get('x-stub') ?? 'echo') as Stub;
          send({
            request_headers: {
              response: {
                clear_route_cache: true,
                header_mutation: {
                  set_headers: [
                    {
                      header: {
                        key: 'x-gateway-destination-endpoint',
                        raw_value: enc.encode(worker.hostPort),
                      },
                    },
                  ],
                  remove_headers: ['content-length'],
                },
              },
            },
          });
        } else if (m.request_body) {
          const body = m.request_body.body ?? new Uint8Array(0);
          const end_of_stream = m.request_body.end_of_stream ?? false;
          const bytes =
            (stub === 'replace' || stub === 'streamed') && end_of_stream
              ? enc.encode(JSON.stringify({ model: 'stub', replaced: true }))
              : body;
          if (stub === 'empty') send({ request_body: { response: {} } });
          else if (stub === 'streamed' || mode === 'duplex') {
            // (`replace` sends nothing but the replacement, on the last chunk.)
            if (stub !== 'replace' || end_of_stream) {
              send({ request_body: streamed(bytes, end_of_stream) });
            }
          } else if (stub === 'replace') {
            send({ request_body: { response: { body_mutation: { body: bytes } } } });
          } else send({ request_body: { response: {} } });
        } else if (m.request_trailers) send({ request_trailers: {} });
        else if (m.response_headers) send({ response_headers: { response: {} } });
        else if (m.response_body) {
          const body = m.response_body.body ?? new Uint8Array(0);
          const end_of_stream = m.response_body.end_of_stream ?? false;
          send({
            response_body: mode === 'duplex' ? streamed(body, end_of_stream) : { response: {} },
          });
        } else if (m.response_trailers) send({ response_trailers: {} });
      });
      call.on('end', () => call.end());
      call.on('error', () => {});
    },
  });
  server.addService(services.health, healthService({ isReady: () => true }));
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (e, p) =>
      e ? reject(e) : resolve(p),
    ),
  );
  return { server, port };
}

describe.skipIf(!ENVOY)('what Envoy 1.40 demands of an ext_proc server (stub server)', () => {
  let worker: FakeWorker;
  const stubs: Server[] = [];
  const envoys = new Map<BodyMode, EnvoyProcess>();

  beforeAll(async () => {
    [worker] = (await startFakeWorkers(1)) as [FakeWorker];
    for (const mode of ['duplex', 'buffered'] as const) {
      const { server, port } = await startStub(worker, mode);
      stubs.push(server);
      envoys.set(
        mode,
        await startEnvoy(ENVOY as string, {
          listeners: [{ name: `stub-${mode}`, eppPort: port, eppTls: false }],
          bodyMode: mode,
          bufferLimitBytes: 1024 * 1024,
        }),
      );
    }
  }, 120_000);

  afterAll(async () => {
    await Promise.all([...envoys.values()].map((e) => e.stop()));
    for (const s of stubs) s.forceShutdown();
    await worker?.close();
  });

  let n = 0;
  async function call(mode: BodyMode, stub: Stub) {
    const id = `contract-${mode}-${stub}-${n++}`;
    const body = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: id }] });
    const res = await httpCall({
      port: (envoys.get(mode) as EnvoyProcess).port(`stub-${mode}`),
      method: 'POST',
      path: '/v1/chat/completions',
      headers: { 'x-test-id': id, 'x-stub': stub, 'content-type': 'application/json' },
      body,
    });
    return { res, body, rec: worker.find(id) };
  }

  for (const mode of ['duplex', 'buffered'] as const) {
    it(`${mode}: the stub's echo reaches the worker with the client's body`, async () => {
      const { res, body, rec } = await call(mode, 'echo');
      expect(res.status, res.body).toBe(200);
      expect(rec?.raw.toString('utf8')).toBe(body);
    });

    it(`${mode}: the worker gets the body the server sent back, not the client's`, async () => {
      const { res, rec } = await call(mode, 'replace');
      expect(res.status, res.body).toBe(200);
      expect(rec?.json).toEqual({ model: 'stub', replaced: true });
    });
  }

  it('duplex: a plain BodyResponse{} is a protocol error (500 at the client)', async () => {
    const { res, rec } = await call('duplex', 'empty');
    expect(res.status, res.body).toBe(500);
    expect(rec).toBeUndefined();
  });

  it("buffered: a streamed_response is ignored: the worker gets the client's body", async () => {
    // The stub streams back a different body: Envoy drops it, so a server
    // that answers BUFFERED with streamed_response loses its body edits.
    const { res, body, rec } = await call('buffered', 'streamed');
    expect(res.status, res.body).toBe(200);
    expect(rec?.raw.toString('utf8')).toBe(body);
  });

  it('buffered: BodyResponse{} forwards the client body unchanged', async () => {
    const { res, body, rec } = await call('buffered', 'empty');
    expect(res.status, res.body).toBe(200);
    expect(rec?.raw.toString('utf8')).toBe(body);
  });

  it.each([
    ['response_trailer_mode', 'SKIP', false],
    ['request_trailer_mode', 'SKIP', false],
    ['response_trailer_mode', 'SEND', true],
  ])('duplex with %s %s: config accepted = %s', (field, value, ok) => {
    const bootstrap = envoyBootstrap({
      listeners: [{ name: 'validate', eppPort: 9, eppTls: false }],
      bodyMode: 'duplex',
      bufferLimitBytes: 32768,
    }) as { static_resources: { listeners: unknown[] } };
    // The one processing_mode in the bootstrap, with one field changed.
    const json = JSON.stringify(bootstrap).replace(
      JSON.stringify(processingMode('duplex')),
      JSON.stringify({ ...processingMode('duplex'), [field]: value }),
    );
    expect(json).toContain(`"${field}":"${value}"`);
    const dir = mkdtempSync(join(tmpdir(), 'kv-epp-envoy-validate-'));
    try {
      writeFileSync(join(dir, 'envoy.json'), json);
      const r = spawnSync(
        ENVOY as string,
        ['--mode', 'validate', '-c', join(dir, 'envoy.json'), '--disable-hot-restart'],
        { encoding: 'utf8', timeout: 60_000 },
      );
      // Envoy ran and answered (not a spawn failure or a timeout).
      expect(r.error).toBeUndefined();
      expect(typeof r.status).toBe('number');
      expect(r.status === 0, `${r.stdout}\n${r.stderr}`).toBe(ok);
      if (!ok) expect(`${r.stdout}${r.stderr}`).toMatch(/trailer|FULL_DUPLEX_STREAMED/i);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
