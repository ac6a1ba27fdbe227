/**
 * Drop-in proof against real Dynamo 1.6.1:
 *
 *   client → Envoy 1.40 (ext_proc FULL_DUPLEX_STREAMED → kv-epp, ORIGINAL_DST)
 *          → 127.0.0.2 / 127.0.0.3 (one recording tap per worker "pod")
 *          → Dynamo's own frontend, `--router-mode direct` (file discovery, NATS, TCP)
 *          → two Dynamo mocker workers (block size 16, prefix caching)
 *
 * kv-epp runs as `kv-epp serve` does (src/cli/serve.ts, in process) from a
 * config file this test writes: the mocker's tokenizer (Qwen3, with its chat
 * template), the mocker's block size, and one endpoint per worker whose
 * `workerId` is the mocker's Dynamo instance id. The taps stand for the
 * worker pods' addresses (each would run a frontend sidecar); both forward to
 * the one frontend, which picks the worker from `x-dynamo-worker-instance-id`
 * alone — so each endpoint's traffic reaching the right mocker proves the
 * header, not the address, routed it.
 *
 * Evidence per request: the header and `nvext.token_data` kv-epp set (as the
 * tap received them), the frontend's `nvext.worker_id` in the response, and
 * the mocker's own "request received" log record for the response's request
 * id. KV cache hits: `usage.prompt_tokens_details.cached_tokens` reported by
 * the mocker's block manager.
 *
 * Skipped with a message when Dynamo, nats-server or Envoy is missing
 * (`bash scripts/install-test-tools.sh`); KV_EPP_REQUIRE_DYNAMO=1 makes that a failure.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Serving, startServing } from '../../../src/cli/serve.js';
import type { Logger } from '../../../src/log/logger.js';
import {
  type DynamoStack,
  findDynamoPython,
  isLoopback,
  listeningAddresses,
  type MockerWorker,
  startDynamo,
  startTap,
  type Tap,
  type TapRecord,
  until,
} from '../../support/dynamo.js';
import { type EnvoyProcess, findEnvoy, startEnvoy } from '../../support/envoy.js';
import { type HttpResult, httpCall } from '../../support/http-client.js';
import { findNatsServer, type NatsServer, startNatsServer } from '../../support/nats-server.js';
import { sample } from '../../support/prom-text.js';

const PYTHON = findDynamoPython();
const NATS = findNatsServer();
const ENVOY = findEnvoy();
const missing = [
  PYTHON ? undefined : 'Dynamo (ai-dynamo 1.6.1 in .venv-tools, or KV_EPP_DYNAMO_PYTHON)',
  NATS ? undefined : 'nats-server (.venv-tools/bin, KV_EPP_NATS_SERVER or PATH)',
  ENVOY ? undefined : 'envoy (.venv-tools, or KV_EPP_ENVOY)',
].filter((x): x is string => x !== undefined);
const SKIP_REASON = `missing ${missing.join(', ')} (run \`bash scripts/install-test-tools.sh\`)`;
if (missing.length > 0) {
  if (process.env.KV_EPP_REQUIRE_DYNAMO === '1') {
    throw new Error(`KV_EPP_REQUIRE_DYNAMO=1 but ${SKIP_REASON}`);
  }
  console.warn(`[dynamo drop-in] SKIPPED: ${SKIP_REASON}`);
}

const TEST_ID = 'x-test-id';
/** The frontend's warning when it has a worker id but must tokenize the prompt itself. */
const TOKENIZING_WARNING = 'backend_instance_id provided but no token_data; tokenizing prompt';
const GATE = 'x-test-gate';
const BLOCK = 16;
const STARTUP_MS = 240_000;
const TEST_MS = 60_000;

/** kv-epp's log records (printed when start-up fails). */
class QuietLogger implements Logger {
  readonly lines: string[] = [];
  private put(level: string, fields: Record<string, unknown>, msg: string): void {
    this.lines.push(
      `${level} ${msg} ${JSON.stringify(fields, (_k, v) => (typeof v === 'bigint' ? `${v}` : v))}`,
    );
  }
  debug(f: Record<string, unknown>, m: string): void {
    this.put('debug', f, m);
  }
  info(f: Record<string, unknown>, m: string): void {
    this.put('info', f, m);
  }
  warn(f: Record<string, unknown>, m: string): void {
    this.put('warn', f, m);
  }
  error(f: Record<string, unknown>, m: string): void {
    this.put('error', f, m);
  }
}

let nats: NatsServer | undefined;
let dyn: DynamoStack | undefined;
let taps: Tap[] = [];
let serving: Serving | undefined;
let envoy: EnvoyProcess | undefined;
let cfgDir: string | undefined;
const eppLog = new QuietLogger();
const timings: Record<string, number> = {};
/** One line per kv-epp-routed request (printed at the end). */
const evidence: string[] = [];

const d = () => dyn as DynamoStack;
const model = () => d().modelName;

/** The request id Dynamo gave a response (`chatcmpl-<uuid>` / `cmpl-<uuid>`). */
function requestIdOf(body: string): string {
  const m = /"id":"(?:chatcmpl|cmpl)-([0-9a-f-]{36})"/.exec(body);
  if (!m) throw new Error(`no request id in response: ${body.slice(0, 300)}`);
  return m[1] as string;
}

/** `nvext.worker_id.decode_worker_id` (u64, from the text: above 2^53). */
function reportedWorkerOf(body: string): string | undefined {
  return /"decode_worker_id":(\d+)/.exec(body)?.[1];
}

/** `usage` of a JSON response, or of the last SSE chunk that has one. */
function usageOf(body: string): { prompt_tokens: number; cached_tokens: number } {
  const docs = body.trimStart().startsWith('{')
    ? [body]
    : body
        .split('\n')
        .filter((l) => l.startsWith('data: {'))
        .map((l) => l.slice('data: '.length));
  let found: { prompt_tokens: number; cached_tokens: number } | undefined;
  for (const doc of docs) {
    const u = (
      JSON.parse(doc) as {
        usage?: {
          prompt_tokens: number;
          prompt_tokens_details?: { cached_tokens?: number | null } | null;
        } | null;
      }
    ).usage;
    if (u) {
      found = {
        prompt_tokens: u.prompt_tokens,
        cached_tokens: u.prompt_tokens_details?.cached_tokens ?? 0,
      };
    }
  }
  if (!found) throw new Error(`no usage in response: ${body.slice(-400)}`);
  return found;
}

/** kv-epp's cache-prediction counters, from its /metrics page. */
async function predictionCounts(): Promise<{
  hit: number;
  over: number;
  under: number;
  reported: number;
}> {
  const res = await httpCall({ port: (serving as Serving).metrics.port, path: '/metrics' });
  const v = (series: string) => sample(res.body, series) ?? 0;
  return {
    hit: v('kv_epp_cache_predictions_total{outcome="hit"}'),
    over: v('kv_epp_cache_predictions_total{outcome="over"}'),
    under: v('kv_epp_cache_predictions_total{outcome="under"}'),
    reported: v('kv_epp_cached_tokens_reported_total'),
  };
}

/** The ids of Dynamo's `token_ids` annotation in an SSE body. */
function annotatedTokenIds(sse: string): number[] {
  const m = /event: token_ids\n: ("(?:[^"\\]|\\.)*")/.exec(sse);
  if (!m) throw new Error(`no token_ids annotation in: ${sse.slice(0, 400)}`);
  return JSON.parse(JSON.parse(m[1] as string) as string) as number[];
}

/** The generated text of a JSON or SSE chat/completions response. */
function generatedText(body: string): string {
  if (body.trimStart().startsWith('{')) {
    const j = JSON.parse(body) as {
      choices: Array<{ message?: { content?: string }; text?: string }>;
    };
    return j.choices.map((c) => c.message?.content ?? c.text ?? '').join('');
  }
  let out = '';
  for (const line of body.split('\n')) {
    if (!line.startsWith('data: {')) continue;
    const j = JSON.parse(line.slice(6)) as {
      choices?: Array<{ delta?: { content?: string }; text?: string }>;
    };
    for (const c of j.choices ?? []) out += c.delta?.content ?? c.text ?? '';
  }
  return out;
}

function header(r: TapRecord, name: string): string | undefined {
  const v = r.headers[name];
  return Array.isArray(v) ? v.join(',') : v;
}

function tokenDataOf(r: TapRecord): number[] {
  const body = JSON.parse(r.body.toString('utf8')) as { nvext?: { token_data?: number[] } };
  const td = body.nvext?.token_data;
  if (!Array.isArray(td)) throw new Error(`no nvext.token_data in ${r.body.toString('utf8')}`);
  return td;
}

/** A prompt of about `words` words starting with `lead` (distinct leads → no shared block). */
function prose(lead: string, words = 90): string {
  const vocab = [
    'river',
    'lantern',
    'copper',
    'meadow',
    'signal',
    'harbor',
    'violet',
    'engine',
    'quiet',
    'orbit',
    'marble',
    'thunder',
  ];
  const out = [lead];
  for (let i = 0; out.length < words; i++)
    out.push(vocab[(i * 7 + lead.length) % vocab.length] as string);
  return out.join(' ');
}

/**
 * The cached-token counts that mean "every full block of an n-token prompt
 * was a hit" (an engine may recompute the last token when n is a multiple of
 * the block size).
 */
function fullBlocks(n: number): number[] {
  return [BLOCK * Math.floor(n / BLOCK), BLOCK * Math.floor((n - 1) / BLOCK)];
}

interface Routed {
  id: string;
  res: HttpResult;
  /** What the frontend received (through the tap kv-epp's endpoint named). */
  rec: TapRecord;
  tapIndex: number;
  /** The worker kv-epp chose (by its endpoint's workerId). */
  chosen: MockerWorker;
}

async function viaKvEpp(
  path: string,
  body: Record<string, unknown>,
  o: { id?: string; gate?: string } = {},
): Promise<Routed> {
  const id = o.id ?? randomUUID();
  const headers: Record<string, string> = { 'content-type': 'application/json', [TEST_ID]: id };
  if (o.gate) headers[GATE] = o.gate;
  const res = await httpCall({
    port: (envoy as EnvoyProcess).port('dynamo'),
    path,
    headers,
    body: JSON.stringify(body),
  });
  return resolveRouted(id, res);
}

function resolveRouted(id: string, res: HttpResult): Routed {
  const hits = taps.flatMap((t, i) => {
    const rec = t.find(id);
    return rec ? [{ rec, tapIndex: i }] : [];
  });
  expect(
    hits,
    `request ${id} reached ${hits.length} taps (status ${res.status}: ${res.body.slice(0, 300)})`,
  ).toHaveLength(1);
  const { rec, tapIndex } = hits[0] as { rec: TapRecord; tapIndex: number };
  const chosen = d().workers[tapIndex] as MockerWorker;
  return { id, res, rec, tapIndex, chosen };
}

/** Sends a body straight to the frontend (no Envoy, no kv-epp). */
function direct(
  path: string,
  body: Record<string, unknown>,
  workerId?: string,
): Promise<HttpResult> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (workerId !== undefined) headers['x-dynamo-worker-instance-id'] = workerId;
  return httpCall({ port: d().port, path, headers, body: JSON.stringify(body) });
}

/** Waits for the mocker log record of `requestId`; returns the workers that logged it. */
async function servedBy(requestId: string): Promise<MockerWorker[]> {
  const ws = d().workers;
  await until(
    `a mocker logging request ${requestId}`,
    () => (ws.some((w) => w.receivedRequestIds().includes(requestId)) ? true : undefined),
    { timeoutMs: 15_000, watch: ws.map((w) => w.process), intervalMs: 20 },
  );
  return ws.filter((w) => w.receivedRequestIds().includes(requestId));
}

/**
 * The request went where kv-epp said: the tap of the chosen endpoint got it
 * with that endpoint's worker id and rank 0 and kv-epp's token ids, and the
 * chosen mocker — only it — served it.
 */
async function expectServedByChosen(r: Routed): Promise<void> {
  expect(r.res.status, r.res.body.slice(0, 400)).toBe(200);
  expect(header(r.rec, 'x-dynamo-worker-instance-id')).toBe(r.chosen.instanceId);
  expect(header(r.rec, 'x-dynamo-dp-rank')).toBe('0');
  expect(header(r.rec, 'x-gateway-destination-endpoint')).toBe(
    `${taps[r.tapIndex]?.host}:${taps[r.tapIndex]?.port}`,
  );
  expect(tokenDataOf(r.rec).length).toBeGreaterThan(0);
  const rid = requestIdOf(r.res.body);
  const served = await servedBy(rid);
  expect(served.map((w) => w.name)).toEqual([r.chosen.name]);
  const reported = reportedWorkerOf(r.res.body);
  if (reported !== undefined) expect(reported).toBe(r.chosen.instanceId);
  // The frontend did not tokenize: once it logged the response, it has not
  // logged its "no token_data; tokenizing prompt" warning for this request.
  const fe = d().frontend;
  const mine = () => fe.logRecords().filter((x) => x.request_id === rid);
  await until(
    `the frontend logging the response to ${rid}`,
    () => (mine().some((x) => x.message === 'http response sent') ? true : undefined),
    { timeoutMs: 15_000, watch: [fe], intervalMs: 20 },
  );
  expect(mine().map((x) => x.message)).not.toContain(TOKENIZING_WARNING);
  let usage = '';
  try {
    const u = usageOf(r.res.body);
    usage = ` prompt_tokens=${u.prompt_tokens} cached_tokens=${u.cached_tokens}`;
  } catch {
    // no usage asked for
  }
  evidence.push(
    `${r.rec.url} → ${header(r.rec, 'x-gateway-destination-endpoint')} ` +
      `x-dynamo-worker-instance-id=${r.chosen.instanceId} token_data=${tokenDataOf(r.rec).length} ` +
      `served by ${served.map((w) => w.name).join(',')} (request ${rid})${usage}`,
  );
}

const ready = missing.length === 0;

describe.skipIf(!ready)(
  ready
    ? 'kv-epp as a drop-in EPP for Dynamo 1.6.1 (direct-mode frontend + mockers)'
    : `kv-epp drop-in for Dynamo (SKIPPED: ${SKIP_REASON})`,
  { timeout: TEST_MS },
  () => {
    beforeAll(async () => {
      const t0 = Date.now();
      nats = await startNatsServer();
      timings.nats = Date.now() - t0;
      dyn = await startDynamo(PYTHON as string, { natsUrl: nats.url, blockSize: BLOCK });
      for (const [k, v] of Object.entries(dyn.timings)) timings[`dynamo: ${k}`] = v + timings.nats;
      taps = await Promise.all(
        dyn.workers.map((_, i) =>
          startTap(`127.0.0.${2 + i}`, { host: dyn?.host as string, port: dyn?.port as number }),
        ),
      );
      // kv-epp's configuration, as an operator would write it.
      cfgDir = mkdtempSync(join(tmpdir(), 'kv-epp-dropin-'));
      const cfg = join(cfgDir, 'kv-epp.yaml');
      writeFileSync(
        cfg,
        JSON.stringify(
          {
            model: { tokenizer: dyn.modelDir, blockSize: BLOCK },
            router: { useKvEvents: false, fallbacks: 0 },
            server: {
              host: '127.0.0.1',
              grpcPort: 0,
              grpcHealthPort: 0,
              metricsPort: 0,
              secureServing: false,
            },
            endpoints: dyn.workers.map((w, i) => ({
              name: `worker-${String.fromCharCode(97 + i)}`,
              address: taps[i]?.host,
              port: taps[i]?.port,
              workerId: w.instanceId,
              dpRank: 0,
              role: 'aggregated',
            })),
          },
          null,
          2,
        ),
      );
      const t1 = Date.now();
      try {
        serving = await startServing(['--config-file', cfg], {}, eppLog);
      } catch (e) {
        throw new Error(`kv-epp serve failed: ${(e as Error).message}\n${eppLog.lines.join('\n')}`);
      }
      timings['kv-epp serve'] = Date.now() - t1;
      const t2 = Date.now();
      envoy = await startEnvoy(ENVOY as string, {
        listeners: [{ name: 'dynamo', eppPort: serving.extProc.port, eppTls: false }],
        bodyMode: 'duplex',
        bufferLimitBytes: 32768,
      });
      timings.envoy = Date.now() - t2;
      timings['set-up total'] = Date.now() - t0;
    }, STARTUP_MS);

    afterAll(async () => {
      await envoy?.stop();
      await serving?.close();
      await Promise.all(taps.map((t) => t.close()));
      await dyn?.stop();
      await nats?.stop();
      if (cfgDir) rmSync(cfgDir, { recursive: true, force: true });
      // Dynamo's warnings, once each (KV_EPP_DYNAMO_VERBOSE=1: whole records).
      const warnings = new Set(
        [dyn?.frontend, ...(dyn?.workers ?? []).map((w) => w.process)].flatMap((p) =>
          (p?.logRecords() ?? [])
            .filter((r) => r.level === 'WARN' || r.level === 'ERROR')
            .map((r) =>
              process.env.KV_EPP_DYNAMO_VERBOSE === '1'
                ? `${p?.name} ${JSON.stringify(r)}`
                : `${p?.name} ${r.level}: ${String(r.message).slice(0, 160)}`,
            ),
        ),
      );
      console.info(
        `[dynamo drop-in] timings (ms): ${JSON.stringify(timings)}\n${evidence.join('\n')}\n${[...warnings].join('\n')}`,
      );
    }, 60_000);

    it('every Dynamo listener binds loopback only', () => {
      const procs = [d().frontend, ...d().workers.map((w) => w.process)];
      const all = procs.flatMap((p) =>
        listeningAddresses(p.pid as number).map((a) => `${p.name} ${a}`),
      );
      if (all.length === 0) return; // no /proc: nothing to check
      evidence.push(`listeners: ${all.join(', ')}`);
      expect(all.some((a) => a.endsWith(`127.0.0.1:${d().port}`))).toBe(true);
      expect(all.filter((a) => !isLoopback(a.split(' ')[1] as string))).toEqual([]);
    });

    it("Dynamo's direct-mode frontend serves the worker named by x-dynamo-worker-instance-id, and refuses a request without one (400)", async () => {
      const body = {
        model: model(),
        messages: [{ role: 'user', content: 'Who serves this?' }],
        max_tokens: 2,
      };
      const none = await direct('/v1/chat/completions', body);
      expect(none.status).toBe(400);
      const unknown = await direct('/v1/chat/completions', body, '12345');
      expect(unknown.status).toBe(400);
      for (const w of d().workers) {
        const r = await direct(
          '/v1/chat/completions',
          { ...body, nvext: { extra_fields: ['worker_id'] } },
          w.instanceId,
        );
        expect(r.status, r.body).toBe(200);
        expect(reportedWorkerOf(r.body)).toBe(w.instanceId);
        const rid = requestIdOf(r.body);
        expect((await servedBy(rid)).map((x) => x.name)).toEqual([w.name]);
        // Without token_data the frontend says it tokenizes (the control for
        // the check in expectServedByChosen).
        await until(
          `the frontend's tokenizing warning for ${rid}`,
          () =>
            d()
              .frontend.logRecords()
              .some((x) => x.request_id === rid && x.message === TOKENIZING_WARNING)
              ? true
              : undefined,
          { timeoutMs: 15_000, watch: [d().frontend], intervalMs: 20 },
        );
      }
    });

    it('a non-object nvext is a 400 from the frontend and from kv-epp alike (never replaced and served)', async () => {
      const worker = d().workers[0]?.instanceId as string;
      for (const nvext of ['hello', [1, 2], 5, true]) {
        const body = { model: model(), messages: [{ role: 'user', content: 'hi' }], nvext };
        const frontend = await direct('/v1/chat/completions', body, worker);
        expect(frontend.status, frontend.body).toBe(400);
        const res = await httpCall({
          port: (envoy as EnvoyProcess).port('dynamo'),
          path: '/v1/chat/completions',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(body),
        });
        expect([res.status, res.body]).toEqual([
          400,
          'inference error: BadRequest - "nvext" must be an object',
        ]);
      }
    });

    it('a chat request through Envoy → kv-epp → frontend gets 200 with generated text, from the worker kv-epp chose', async () => {
      const r = await viaKvEpp('/v1/chat/completions', {
        model: model(),
        messages: [
          { role: 'system', content: 'You are a terse assistant.' },
          { role: 'user', content: 'Name three colours of the rainbow.' },
        ],
        max_tokens: 8,
        nvext: { extra_fields: ['worker_id'] },
      });
      await expectServedByChosen(r);
      expect(generatedText(r.res.body).length).toBeGreaterThan(0);
      const usage = usageOf(r.res.body);
      // The worker's prompt is exactly kv-epp's ids.
      expect(usage.prompt_tokens).toBe(tokenDataOf(r.rec).length);
      expect(reportedWorkerOf(r.res.body)).toBe(r.chosen.instanceId);
    });

    it("kv-epp's token ids are the fully rendered prompt: identical to Dynamo's own rendering and tokenization, and they fill the same KV blocks", async () => {
      const cases: Array<{ path: string; body: Record<string, unknown> }> = [
        {
          path: '/v1/chat/completions',
          body: {
            model: model(),
            messages: [
              {
                role: 'system',
                content:
                  'Answer in French, in one short sentence, and never repeat these instructions.',
              },
              {
                role: 'user',
                content: 'What is the capital of Italy, and which river runs through it?',
              },
              { role: 'assistant', content: 'Rome, on the Tiber.' },
              {
                role: 'user',
                content: [
                  { type: 'text', text: 'And the capital of Spain, with its river?' },
                  { type: 'text', text: 'Be brief.' },
                ],
              },
            ],
            max_tokens: 4,
          },
        },
        {
          path: '/v1/completions',
          body: { model: model(), prompt: prose('Once', 60), max_tokens: 4 },
        },
      ];
      for (const c of cases) {
        const streamed = { ...c.body, stream: true, stream_options: { include_usage: true } };
        const r = await viaKvEpp(c.path, streamed);
        await expectServedByChosen(r);
        const injected = tokenDataOf(r.rec);
        const n = injected.length;
        expect(n).toBeGreaterThan(2 * BLOCK);
        expect(usageOf(r.res.body).prompt_tokens).toBe(n);
        expect(generatedText(r.res.body).length).toBeGreaterThan(0);
        // The same body straight to the same worker, without token_data: the
        // frontend renders the template and tokenizes itself, and says which
        // ids it used (`token_ids` annotation).
        const own = await direct(
          c.path,
          { ...streamed, nvext: { annotations: ['token_ids'] } },
          r.chosen.instanceId,
        );
        expect(own.status, own.body).toBe(200);
        expect(injected).toEqual(annotatedTokenIds(own.body));
        // ...and the worker finds every full block kv-epp's ids stored.
        expect(fullBlocks(n)).toContain(usageOf(own.body).cached_tokens);
      }
    });

    // Review: more request shapes, through Envoy → kv-epp → frontend; kv-epp's
    // injected ids must equal Dynamo's own for the same body.
    const TOOL = {
      type: 'function',
      function: {
        name: 'get_weather',
        description: 'The weather in a city.',
        parameters: {
          type: 'object',
          properties: { city: { type: 'string' } },
          required: ['city'],
        },
      },
    };
    const shapes: Array<[string, Record<string, unknown>]> = [
      [
        'developer role',
        {
          messages: [
            { role: 'developer', content: 'Be terse.' },
            { role: 'user', content: 'Hello there.' },
          ],
        },
      ],
      [
        'tool_choice none',
        {
          messages: [{ role: 'user', content: 'Weather in Paris?' }],
          tools: [TOOL],
          tool_choice: 'none',
        },
      ],
      [
        'replayed compact tool-call arguments',
        {
          messages: [
            { role: 'user', content: 'Weather in Paris?' },
            {
              role: 'assistant',
              content: '',
              tool_calls: [
                {
                  id: 'c1',
                  type: 'function',
                  function: { name: 'get_weather', arguments: '{"city":"Paris"}' },
                },
              ],
            },
            { role: 'tool', tool_call_id: 'c1', content: 'sunny' },
          ],
          tools: [TOOL],
        },
      ],
      [
        'tool without parameters',
        {
          messages: [{ role: 'user', content: 'Time?' }],
          tools: [{ type: 'function', function: { name: 'now' } }],
        },
      ],
      [
        'chat_template_args',
        {
          messages: [{ role: 'user', content: 'Hi.' }],
          chat_template_args: { enable_thinking: false },
        },
      ],
      [
        'thinking disabled',
        { messages: [{ role: 'user', content: 'Hi.' }], thinking: { type: 'disabled' } },
      ],
      [
        'text parts with an empty one',
        {
          messages: [
            {
              role: 'user',
              content: [
                { type: 'text', text: 'A' },
                { type: 'text', text: '' },
                { type: 'text', text: 'B' },
              ],
            },
          ],
        },
      ],
      ['NUL in content', { messages: [{ role: 'user', content: 'a\u0000b' }] }],
    ];
    it.each(shapes)(
      "review: kv-epp's token_data equals Dynamo's ids for %s",
      async (_name, shape) => {
        const body = {
          model: model(),
          ...shape,
          max_tokens: 2,
          stream: true,
          stream_options: { include_usage: true },
        };
        const r = await viaKvEpp('/v1/chat/completions', body);
        expect(r.res.status, r.res.body.slice(0, 300)).toBe(200);
        const injected = tokenDataOf(r.rec);
        const own = await direct(
          '/v1/chat/completions',
          { ...body, nvext: { annotations: ['token_ids'] } },
          r.chosen.instanceId,
        );
        expect(own.status, own.body).toBe(200);
        expect(injected).toEqual(annotatedTokenIds(own.body));
      },
    );

    // Each case: a Responses request and the chat Dynamo's translation should render it as.
    const responsesCases: Array<
      [string, (c: string) => Record<string, unknown>, (c: string) => Record<string, unknown>]
    > = [
      [
        'a string input',
        (c) => ({ input: c }),
        (c) => ({ messages: [{ role: 'user', content: c }] }),
      ],
      [
        'instructions, a developer item and earlier turns',
        (c) => ({
          instructions: 'Answer briefly.',
          input: [
            { role: 'developer', content: 'Use plain words.' },
            { role: 'user', content: c },
            { type: 'message', role: 'assistant', content: 'Noted.' },
            { role: 'user', content: 'Go on.' },
          ],
        }),
        (c) => ({
          messages: [
            { role: 'system', content: 'Answer briefly.\n\nUse plain words.' },
            { role: 'user', content: c },
            { role: 'assistant', content: 'Noted.' },
            { role: 'user', content: 'Go on.' },
          ],
        }),
      ],
      [
        'function tools',
        (c) => ({
          instructions: 'Use tools when useful.',
          input: c,
          tools: [
            {
              type: 'function',
              name: 'get_weather',
              description: 'The weather in a city.',
              parameters: {
                type: 'object',
                properties: { city: { type: 'string' } },
                required: ['city'],
              },
            },
          ],
        }),
        (c) => ({
          messages: [
            { role: 'system', content: 'Use tools when useful.' },
            { role: 'user', content: c },
          ],
          tools: [
            {
              type: 'function',
              function: {
                name: 'get_weather',
                description: 'The weather in a city.',
                parameters: {
                  type: 'object',
                  properties: { city: { type: 'string' } },
                  required: ['city'],
                },
              },
            },
          ],
        }),
      ],
      [
        'a user message of text parts',
        (c) => ({
          input: [
            {
              role: 'user',
              content: [
                { type: 'input_text', text: c },
                { type: 'input_text', text: 'Second part.' },
              ],
            },
          ],
        }),
        (c) => ({
          messages: [
            {
              role: 'user',
              content: [
                { type: 'text', text: c },
                { type: 'text', text: 'Second part.' },
              ],
            },
          ],
        }),
      ],
    ];
    it.each(responsesCases)(
      "a Responses request (%s) goes to the worker holding its chat prefix and hits that worker's KV cache (the frontend renders it; no token ids in its body)",
      async (name, asResponses, asChat) => {
        const content = prose(`Romeo ${name}`);
        const viaChat = await viaKvEpp('/v1/chat/completions', {
          model: model(),
          ...asChat(content),
          max_tokens: 4,
          nvext: { extra_fields: ['worker_id'] },
        });
        await expectServedByChosen(viaChat);
        const n = tokenDataOf(viaChat.rec).length;
        expect(n).toBeGreaterThan(3 * BLOCK);

        // The chat's worker is kept busy (a request held at its tap), so routing
        // by load alone would pick the other one.
        const gate = `hold-${randomUUID()}`;
        const pending = httpCall({
          port: (envoy as EnvoyProcess).port('dynamo'),
          path: '/v1/chat/completions',
          headers: { 'content-type': 'application/json', [TEST_ID]: randomUUID(), [GATE]: gate },
          body: JSON.stringify({
            model: model(),
            ...asChat(content),
            messages: [
              ...(asChat(content).messages as unknown[]),
              { role: 'user', content: 'And once more.' },
            ],
            max_tokens: 4,
          }),
        });
        const heldAt = await Promise.race(taps.map((t, i) => t.arrived(gate).then(() => i)));
        expect(heldAt).toBe(viaChat.tapIndex);

        const body = {
          model: model(),
          ...asResponses(content),
          max_output_tokens: 4,
          stream: false,
        };
        const r = await viaKvEpp('/v1/responses', body);
        for (const t of taps) t.open(gate);
        expect((await pending).status).toBe(200);
        expect(r.res.status, r.res.body.slice(0, 400)).toBe(200);
        // kv-epp tokenized the chat Dynamo translates this into: same prefix, same worker.
        expect(r.chosen.name).toBe(viaChat.chosen.name);
        expect(header(r.rec, 'x-dynamo-worker-instance-id')).toBe(r.chosen.instanceId);
        // The body went on as the client sent it.
        expect(JSON.parse(r.rec.body.toString('utf8'))).toEqual(body);
        // The worker found the chat's blocks: Dynamo's rendering of the Responses
        // request shares them, as kv-epp's translation assumed.
        const usage = (
          JSON.parse(r.res.body) as {
            usage?: { input_tokens: number; input_tokens_details?: { cached_tokens?: number } };
          }
        ).usage;
        expect(usage?.input_tokens).toBe(n);
        expect(fullBlocks(n)).toContain(usage?.input_tokens_details?.cached_tokens);
      },
    );

    it("a Responses request carrying nvext.token_data goes to the worker holding those ids' prefix (the frontend serves the ids, not its input)", async () => {
      const viaChat = await viaKvEpp('/v1/chat/completions', {
        model: model(),
        messages: [{ role: 'user', content: prose('Juliet by ids') }],
        max_tokens: 4,
      });
      await expectServedByChosen(viaChat);
      const ids = tokenDataOf(viaChat.rec);
      expect(ids.length).toBeGreaterThan(3 * BLOCK);
      // The chat's worker is kept busy, so routing by load (or by the input) picks the other.
      const gate = `hold-${randomUUID()}`;
      const pending = httpCall({
        port: (envoy as EnvoyProcess).port('dynamo'),
        path: '/v1/chat/completions',
        headers: { 'content-type': 'application/json', [TEST_ID]: randomUUID(), [GATE]: gate },
        body: JSON.stringify({
          model: model(),
          messages: [{ role: 'user', content: prose('Juliet by ids') }],
          max_tokens: 4,
        }),
      });
      const heldAt = await Promise.race(taps.map((t, i) => t.arrived(gate).then(() => i)));
      expect(heldAt).toBe(viaChat.tapIndex);
      const r = await viaKvEpp('/v1/responses', {
        model: model(),
        input: 'Something unrelated.',
        max_output_tokens: 4,
        stream: false,
        nvext: { token_data: ids },
      });
      for (const t of taps) t.open(gate);
      expect((await pending).status).toBe(200);
      expect(r.res.status, r.res.body.slice(0, 400)).toBe(200);
      expect(r.chosen.name).toBe(viaChat.chosen.name);
      const usage = (
        JSON.parse(r.res.body) as {
          usage?: { input_tokens: number; input_tokens_details?: { cached_tokens?: number } };
        }
      ).usage;
      // The frontend served the ids as the prompt, and found their blocks on that worker.
      expect(usage?.input_tokens).toBe(ids.length);
      expect(fullBlocks(ids.length)).toContain(usage?.input_tokens_details?.cached_tokens);
    });

    it("a repeated prompt goes back to the worker kv-epp chose and hits that worker's KV cache; a concurrent new prompt goes to the other worker", async () => {
      const chat = (content: string) => ({
        model: model(),
        messages: [{ role: 'user', content }],
        max_tokens: 4,
        stream: true,
        stream_options: { include_usage: true },
        nvext: { extra_fields: ['worker_id'] },
      });
      const P = chat(prose('Alpha'));
      const Q = chat(prose('Zulu'));
      const before = await predictionCounts();

      // P is held at its tap (after kv-epp routed it), so it is in flight on its worker...
      const gate = `hold-${randomUUID()}`;
      const pId = randomUUID();
      const pending = httpCall({
        port: (envoy as EnvoyProcess).port('dynamo'),
        path: '/v1/chat/completions',
        headers: { 'content-type': 'application/json', [TEST_ID]: pId, [GATE]: gate },
        body: JSON.stringify(P),
      });
      const held = await Promise.race(taps.map((t) => t.arrived(gate)));
      expect(held.testId).toBe(pId);
      // ...so Q, sharing no block with P, goes to the idle worker (least in flight).
      const q1 = await viaKvEpp('/v1/chat/completions', Q);
      await expectServedByChosen(q1);
      for (const t of taps) t.open(gate);
      const p1 = resolveRouted(pId, await pending);
      await expectServedByChosen(p1);
      expect(q1.chosen.name).not.toBe(p1.chosen.name);
      expect(usageOf(p1.res.body).cached_tokens).toBe(0);
      expect(usageOf(q1.res.body).cached_tokens).toBe(0);
      let reported = 0;

      // Repeats: kv-epp's prefix index sends each back to its worker, which has the blocks.
      for (const [first, body] of [
        [p1, P],
        [q1, Q],
      ] as const) {
        const again = await viaKvEpp('/v1/chat/completions', body);
        await expectServedByChosen(again);
        expect(again.chosen.name).toBe(first.chosen.name);
        expect(tokenDataOf(again.rec)).toEqual(tokenDataOf(first.rec));
        const n = tokenDataOf(again.rec).length;
        expect(n).toBeGreaterThan(3 * BLOCK);
        expect(fullBlocks(n)).toContain(usageOf(again.res.body).cached_tokens);
        reported += usageOf(again.res.body).cached_tokens;
      }

      // kv-epp's predictions (approximate mode: its own decisions) matched the
      // mocker's reported cache for all four: none cached, then each whole prompt.
      const after = await until(
        'four cache predictions judged',
        async () => {
          const c = await predictionCounts();
          return c.hit + c.over + c.under - (before.hit + before.over + before.under) >= 4
            ? c
            : undefined;
        },
        { timeoutMs: 10_000, intervalMs: 20 },
      );
      expect(after.hit - before.hit).toBe(4);
      expect([after.over - before.over, after.under - before.under]).toEqual([0, 0]);
      expect(after.reported - before.reported).toBe(reported);

      // The cache is the worker's own: Q sent straight to P's worker finds nothing.
      const cross = await direct('/v1/chat/completions', Q, p1.chosen.instanceId);
      expect(cross.status).toBe(200);
      expect(reportedWorkerOf(cross.body)).toBe(p1.chosen.instanceId);
      expect(usageOf(cross.body).cached_tokens).toBe(0);
    });
  },
);
