import { describe, expect, it } from 'vitest';
import { parseEndpoints } from '../../../src/discovery/endpoints.js';
import {
  type ApproxTracker,
  DEFAULT_PRUNE_SETTINGS,
  PruneTracker,
} from '../../../src/kv/approx/prune-tracker.js';
import { createApproxTracker } from '../../../src/kv/factory.js';
import type { Backend } from '../../../src/kv/types.js';
import { stderrLogger } from '../../../src/log/logger.js';
import { createHotPath } from '../../../src/pipeline/factory.js';
import {
  type HotPath,
  type Preparer,
  prepareRouteInline,
  UntokenizableBody,
} from '../../../src/pipeline/route-prep.js';
import type { AdmissionSettings } from '../../../src/routing/admission.js';
import {
  KvRouter,
  type KvRouterDeps,
  type KvRouterSettings,
} from '../../../src/routing/kv-router.js';
import type { GatewayRequest } from '../../../src/server/routing-types.js';
import { RecordingLogger } from '../../support/ext-proc.js';

const endpoints = parseEndpoints(
  {
    endpoints: [
      { address: '127.0.0.2', port: 8001, name: 'a', workerId: '11' },
      { address: '127.0.0.3', port: 8001, name: 'b', workerId: '18446744073709551615', dpRank: 1 },
    ],
  },
  'test',
);

function req(body: unknown, extra: Partial<GatewayRequest> = {}): GatewayRequest {
  return {
    headers: new Map(),
    path: '/v1/chat/completions',
    method: 'POST',
    body: new TextEncoder().encode(typeof body === 'string' ? body : JSON.stringify(body)),
    requestId: 'r1',
    ...extra,
  };
}

const chat = (text: string) => ({ model: 'm', messages: [{ role: 'user', content: text }] });
const long = 'The quick brown fox jumps over the lazy dog. '.repeat(40);

async function router(
  backend: Backend,
  extra: {
    admission?: AdmissionSettings;
    pendingPrepare?: () => number;
    /** The preparer offloads every body (and so checks and splices it). */
    offload?: boolean;
    endpoints?: typeof endpoints;
  } = {},
) {
  const path = await createHotPath({ source: 'o200k_base' }, backend);
  let prepared = 0;
  const works: unknown[] = [];
  const preparer: Preparer = {
    prepare: async (body, api, settings, work) => {
      prepared++;
      works.push(work);
      return prepareRouteInline(path, body, api, settings, work);
    },
    offloads: () => extra.offload ?? false,
  };
  const eps = extra.endpoints ?? endpoints;
  const r = new KvRouter(
    {
      endpoints: () => eps,
      preparer,
      index: path.index,
      hasher: path.hasher,
      log: stderrLogger,
      pendingPrepare: extra.pendingPrepare,
      random: () => 0, // ties to the first name: the outcomes below are exact
    },
    { blockSize: 16, fallbacks: 1, approximate: true, admission: extra.admission },
  );
  return { r, path, prepared: () => prepared, works };
}

/**
 * A router over `path` with an inline preparer, no fallbacks, approximate mode
 * on, and `deps` overriding any of its dependencies.
 */
function inlineRouter(
  path: HotPath,
  deps: Partial<KvRouterDeps> = {},
  settings: Partial<KvRouterSettings> = {},
): KvRouter {
  return new KvRouter(
    {
      endpoints: () => endpoints,
      preparer: { prepare: async (b, api, st, w) => prepareRouteInline(path, b, api, st, w) },
      index: path.index,
      hasher: path.hasher,
      log: stderrLogger,
      random: () => 0, // ties to the first name: the outcomes below are exact
      ...deps,
    },
    { blockSize: 16, fallbacks: 0, approximate: true, ...settings },
  );
}

describe.each(['native', 'js'] as Backend[])('KvRouter (%s)', (backend) => {
  it("leaves out an endpoint that answered 5xx five times in a row, for 30 s (Envoy's outlier defaults)", async () => {
    const path = await createHotPath({ source: 'o200k_base' }, backend);
    let now = 1_000;
    const r = inlineRouter(path, { now: () => now });
    const get = () =>
      r.routeHeaderOnly({ ...req(''), method: 'GET', path: '/v1/models', body: new Uint8Array() });
    /** Where a request would go now (routed, then finished unanswered: nothing counted). */
    const probe = () => {
      const d = get();
      r.complete(d, { requestId: 'probe' });
      return d.endpoints;
    };
    // Both idle: the name orders them, so `a` gets every header-only request.
    expect(probe()).toEqual(['127.0.0.2:8001']);
    for (let i = 0; i < 4; i++) r.complete(get(), { requestId: 'r', status: i % 2 ? 502 : 503 });
    expect(probe()).toEqual(['127.0.0.2:8001']);
    expect(r.ejectedEndpoints()).toBe(0);
    r.complete(get(), { requestId: 'r', status: 503 });
    expect(r.ejectedEndpoints()).toBe(1);
    expect(probe()).toEqual(['127.0.0.3:8001']);
    const chatDecision = await r.route(req(chat('a new prompt while a is out')));
    expect(chatDecision.endpoints).toEqual(['127.0.0.3:8001']);
    r.complete(chatDecision, { requestId: 'c', status: 200 });
    now += 30_000;
    expect(r.ejectedEndpoints()).toBe(0);
    expect(probe()).toEqual(['127.0.0.2:8001']);
  });

  it('a response cut short after a 2xx status neither counts nor clears a run of 5xx', async () => {
    const path = await createHotPath({ source: 'o200k_base' }, backend);
    const r = inlineRouter(path, { now: () => 1_000 });
    const get = () =>
      r.routeHeaderOnly({ ...req(''), method: 'GET', path: '/v1/models', body: new Uint8Array() });
    for (let i = 0; i < 4; i++) {
      r.complete(get(), { requestId: 'r', status: 503, responseComplete: true });
      // An upstream reset after 200 headers, between the 5xx answers.
      r.complete(get(), { requestId: 'cut', status: 200, responseComplete: false });
    }
    expect(r.ejectedEndpoints()).toBe(0);
    r.complete(get(), { requestId: 'r', status: 500, responseComplete: false });
    expect(r.ejectedEndpoints()).toBe(1);
  });

  it('counts a 5xx against the listed endpoint the gateway says served it, in any written form', async () => {
    const path = await createHotPath({ source: 'o200k_base' }, backend);
    const eps = parseEndpoints(
      {
        endpoints: [
          { address: '127.0.0.2', port: 8001, name: 'a' },
          { address: '0:0:0:0:0:0:0:1', port: 8001, name: 'b' },
        ],
      },
      'test',
    );
    // Half the pool may be out: `b` can be ejected.
    const r = inlineRouter(
      path,
      { endpoints: () => eps, now: () => 0 },
      {
        fallbacks: 1,
        outliers: {
          consecutive5xx: 5,
          baseEjectionMs: 1000,
          maxEjectionMs: 1000,
          maxEjectionPercent: 50,
        },
      },
    );
    const get = () => r.routeHeaderOnly({ ...req(''), method: 'GET', body: new Uint8Array() });
    // Served by an endpoint kv-epp did not list: none of its business.
    for (let i = 0; i < 5; i++) {
      r.complete(get(), { requestId: 'r', status: 503, servedEndpoint: '127.0.0.9:1' });
    }
    expect(r.ejectedEndpoints()).toBe(0);
    // The fallback `b` served (written long, as a gateway might) and failed, five times.
    for (let i = 0; i < 5; i++) {
      const d = get();
      expect(d.endpoints).toEqual(['127.0.0.2:8001', '[::1]:8001']);
      r.complete(d, { requestId: 'r', status: 503, servedEndpoint: '[0:0:0:0:0:0:0:1]:8001' });
    }
    expect(r.ejectedEndpoints()).toBe(1);
    // `a` busy: without the ejection the idle `b` would lead; it is left out instead.
    const busy = get();
    expect(get().endpoints).toEqual(['127.0.0.2:8001']);
    r.complete(busy, { requestId: 'busy' });
  });

  it('asks for an uncompressed response when the model name is rewritten (it is written back into the bytes)', async () => {
    const { r } = await router(backend);
    const gz = (extra: [string, string][]) =>
      new Map<string, string>([['accept-encoding', 'gzip'], ...extra]);
    const rewritten = await r.route(
      req(chat('hi'), { headers: gz([['x-gateway-model-name-rewrite', 'served']]) }),
    );
    expect(rewritten.removeHeaders).toContain('accept-encoding');
    const same = await r.route(
      req(chat('hi'), { headers: gz([['x-gateway-model-name-rewrite', 'm']]) }),
    );
    expect(same.removeHeaders).not.toContain('accept-encoding');
    const plain = await r.route(req(chat('hi'), { headers: gz([]) }));
    expect(plain.removeHeaders).not.toContain('accept-encoding');
  });

  it('leaves checking and splicing the body to the preparer, offloaded or not, with the same result', async () => {
    const body = { ...chat(long), nvext: { keep: true } };
    const headers = new Map([['x-gateway-model-name-rewrite', 'served']]);
    const inline = await router(backend);
    const off = await router(backend, { offload: true });
    const a = await inline.r.route(req(body, { headers }));
    const b = await off.r.route(req(body, { headers }));
    expect(new TextDecoder().decode(b.body)).toBe(new TextDecoder().decode(a.body));
    expect([b.clientModel, b.targetModel]).toEqual(['m', 'served']);
    // The preparer does the body work either way; only an offloaded body is given up.
    expect([inline.works, off.works]).toEqual([
      [{ rewrite: 'served', transferBody: false }],
      [{ rewrite: 'served', transferBody: false }],
    ]);
    // With no endpoint, a body checked on the loop is a 400 first, as in the
    // reference EPP; a body the pool would parse is not parsed for a 503.
    for (const [offload, code] of [
      [true, 'no_endpoint'],
      [false, 'invalid_json'],
    ] as const) {
      const none = await router(backend, { offload, endpoints: [] });
      await expect(none.r.route(req('{"bad'))).rejects.toMatchObject({ code });
      await expect(none.r.route(req(chat('fine')))).rejects.toMatchObject({
        code: 'no_endpoint',
        message: 'failed to find endpoint candidates for serving the request',
      });
      none.path.index.dispose();
    }
    // Go's encoding/json wording, as the reference EPP answers.
    for (const x of [off, inline]) {
      await expect(x.r.route(req('{"bad'))).rejects.toMatchObject({
        code: 'invalid_json',
        message: 'error unmarshaling request bodyMap: unexpected end of JSON input',
      });
    }
    for (const x of [inline, off]) x.path.index.dispose();
  });

  it('sends a repeated prompt to the worker holding its prefix, even when busier', async () => {
    const { r, path } = await router(backend);
    const first = await r.route(req(chat(long)));
    expect(first.endpoints).toEqual(['127.0.0.2:8001', '127.0.0.3:8001']);
    // `a` is now busy (first not completed), yet holds the prefix.
    const second = await r.route(req(chat(`${long} And then?`)));
    expect(second.endpoints[0]).toBe('127.0.0.2:8001');
    expect(r.load('127.0.0.2:8001')).toBe(2);
    r.complete(first, { requestId: 'r1' });
    r.complete(second, { requestId: 'r1' });
    expect(r.load('127.0.0.2:8001')).toBe(0);
    // An unrelated prompt goes to the idle, empty worker by name order, `a`.
    const other = await r.route(req(chat('Something else entirely.')));
    expect(other.setHeaders['x-dynamo-worker-instance-id']).toBe('11');
    path.index.dispose();
  });

  it('spreads new prompts over idle workers at random, as Dynamo breaks ties, and keeps each prefix where it went', async () => {
    const path = await createHotPath({ source: 'o200k_base' }, backend);
    const r = inlineRouter(path, { random: Math.random });
    const where = new Map<string, string>();
    for (let i = 0; i < 40; i++) {
      // One at a time, each finished before the next: every worker is idle, every new prompt ties.
      const d = await r.route(req(chat(`Prompt number ${i}: ${long}`.slice(0, 400))));
      r.complete(d, { requestId: `r${i}` });
      where.set(`p${i}`, d.endpoints[0] as string);
    }
    const counts = [...where.values()].reduce(
      (m, e) => m.set(e, (m.get(e) ?? 0) + 1),
      new Map<string, number>(),
    );
    // Both get a share (all 40 on one: probability 2^-39).
    expect([...counts.keys()].sort()).toEqual(['127.0.0.2:8001', '127.0.0.3:8001']);
    // A repeated prompt still goes to the worker that holds it, not by chance.
    for (let i = 0; i < 40; i += 7) {
      const d = await r.route(req(chat(`Prompt number ${i}: ${long}`.slice(0, 400))));
      r.complete(d, { requestId: `again${i}` });
      expect(d.endpoints[0]).toBe(where.get(`p${i}`));
    }
    path.index.dispose();
  });

  it('routes a Responses request by the prefix of the chat it renders, leaving its body as sent', async () => {
    const { r, path, prepared } = await router(backend);
    const first = await r.route(req(chat(long)));
    expect(first.endpoints[0]).toBe('127.0.0.2:8001');
    const responses = (input: unknown, extra = {}) =>
      req({ model: 'm', input, ...extra }, { path: '/v1/responses' });
    // Same conversation as `first` plus a turn: `a` holds its prefix, busy or not.
    const before = prepared();
    const items = [
      { role: 'user', content: [{ type: 'input_text', text: long }] },
      { type: 'message', role: 'assistant', content: 'Sure.' },
      { role: 'user', content: 'And then?' },
    ];
    const same = await r.route(responses(items));
    expect(prepared()).toBe(before + 1);
    expect(same.endpoints[0]).toBe('127.0.0.2:8001');
    // No token ids in a Responses body (its server renders the chat itself).
    expect(new TextDecoder().decode(same.body)).toBe(JSON.stringify({ model: 'm', input: items }));
    // Input the chat translation cannot hold: routed by load (to idle `b`), untokenized.
    const call = [{ type: 'function_call_output', call_id: 'c1', output: long }];
    const byLoad = await r.route(responses(call));
    expect(prepared()).toBe(before + 1);
    expect(byLoad.endpoints[0]).toBe('127.0.0.3:8001');
    // A rewrite edits only the model.
    const rewritten = await r.route({
      ...responses(long),
      headers: new Map([['x-gateway-model-name-rewrite', 'served']]),
    });
    expect(JSON.parse(new TextDecoder().decode(rewritten.body))).toEqual({
      model: 'served',
      input: long,
    });
    path.index.dispose();
  });

  it("routes a Responses request carrying nvext.token_data by those ids (the prompt Dynamo's frontend uses)", async () => {
    const { r, path, prepared } = await router(backend);
    const ids = Array.from({ length: 64 }, (_, i) => 1000 + i);
    const responses = (input: unknown, nvext: unknown) =>
      req({ model: 'm', input, nvext }, { path: '/v1/responses' });
    const hashesOf = (body: unknown) =>
      prepareRouteInline(path, new TextEncoder().encode(JSON.stringify(body)), 'completions', {
        blockSize: 16,
      }).localHashes;
    const before = prepared();
    const d = await r.route(responses(long, { token_data: ids }));
    expect(prepared()).toBe(before + 1);
    // Recorded under the ids' blocks, not the rendered input's.
    const primary = endpoints.find((e) => e.hostPort === d.endpoints[0]);
    expect(path.index.findMatches(hashesOf({ model: 'm', prompt: ids }), false).workers).toEqual([
      { workerId: primary?.workerId, dpRank: primary?.dpRank },
    ]);
    // The body goes as sent (the ids are the client's).
    expect(JSON.parse(new TextDecoder().decode(d.body)).nvext).toEqual({ token_data: ids });
    // A follow-up with the same ids finds that worker whatever its input says.
    const again = await r.route(responses('unrelated text', { token_data: ids }));
    expect(again.endpoints[0]).toBe(d.endpoints[0]);
    // Ids the tokenizer refuses: routed by load, never a failure.
    const bad = await r.route(responses(long, { token_data: [-1] }));
    expect(bad.endpoints.length).toBeGreaterThan(0);
    path.index.dispose();
  });

  it('sets Dynamo headers, splices nvext.token_data and strips client routing headers', async () => {
    const { r, path } = await router(backend);
    const headers = new Map([
      ['x-dynamo-worker-instance-id', '999'],
      ['x-dynamo-prefill-instance-id', '5'],
      ['x-gateway-destination-endpoint', '127.0.0.99:1'],
      ['x-gateway-destination-endpoint-subset', 'x'],
      ['x-dynamo-request-id', 'req-7'],
      // The unprefixed names Dynamo's frontend also reads.
      ['x-worker-instance-id', '999'],
      ['x-prefill-instance-id', '5'],
      ['x-dp-rank', '3'],
      ['x-data-parallel-rank', '3'],
      ['x-prefill-dp-rank', '2'],
      ['x-worker-instance-id-note', 'kept'],
      ['content-type', 'application/json'],
    ]);
    const d = await r.route(req(chat('hello'), { headers, subset: ['127.0.0.3'] }));
    expect(d.endpoints).toEqual(['127.0.0.3:8001']);
    expect(d.setHeaders).toEqual({
      'x-dynamo-worker-instance-id': '18446744073709551615',
      'x-dynamo-dp-rank': '1',
      'x-dynamo-routing-mode': 'aggregated',
    });
    expect(d.removeHeaders.sort()).toEqual([
      'x-data-parallel-rank',
      'x-dp-rank',
      'x-dynamo-prefill-instance-id',
      'x-gateway-destination-endpoint',
      'x-gateway-destination-endpoint-subset',
      'x-prefill-dp-rank',
      'x-prefill-instance-id',
      'x-worker-instance-id',
    ]);
    const body = JSON.parse(new TextDecoder().decode(d.body));
    const expected = path.tokenizer.tokenizeRequest(
      new TextEncoder().encode(JSON.stringify(chat('hello'))),
      'chat',
    );
    expect(body.nvext.token_data).toEqual(Array.from(expected));
    expect(body.messages).toEqual(chat('hello').messages);
  });

  it('rewrites the model when asked and remembers the client name', async () => {
    const { r } = await router(backend);
    const d = await r.route(
      req(chat('hi'), { headers: new Map([['x-gateway-model-name-rewrite', 'target-model']]) }),
    );
    expect(JSON.parse(new TextDecoder().decode(d.body)).model).toBe('target-model');
    expect(d.clientModel).toBe('m');
    expect(d.targetModel).toBe('target-model');
  });

  it.each([
    ['{"messages":[', 'invalid_json'],
    ['[1]', 'invalid_json'],
    ['null', 'invalid_request'],
    [JSON.stringify({ messages: [] }), 'invalid_request'],
    [JSON.stringify({ model: 'm' }), 'invalid_request'],
  ])('rejects %s with %s', async (body, code) => {
    const { r } = await router(backend);
    await expect(r.route(req(body))).rejects.toMatchObject({ code });
  });

  it.each([
    ['inline', false],
    ['offloaded', true],
  ])(
    'routes content a text tokenizer cannot take by load, without token data (%s)',
    async (_name, offload) => {
      const { r } = await router(backend, { offload });
      const image = {
        model: 'm',
        messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }],
      };
      const sent = req(image, { headers: new Map([['x-gateway-model-name-rewrite', 'vlm']]) });
      const d = await r.route(sent);
      expect(d.endpoints.length).toBeGreaterThan(0);
      expect(d.setHeaders['x-dynamo-worker-instance-id']).toBeDefined();
      const forwarded = JSON.parse(new TextDecoder().decode(d.body));
      expect(forwarded).toEqual({ ...image, model: 'vlm' });
      expect(forwarded.nvext).toBeUndefined();
    },
  );

  it.each([
    ['inline', false],
    ['offloaded', true],
  ])('routes batched completions by load, untouched (%s)', async (_name, offload) => {
    const { r } = await router(backend, { offload });
    for (const prompt of [
      ['Once upon', 'a time'],
      [
        [1, 2],
        [3, 4],
      ],
    ]) {
      const batch = { model: 'm', prompt };
      const d = await r.route(req(batch, { path: '/v1/completions' }));
      expect(d.endpoints.length).toBeGreaterThan(0);
      expect(JSON.parse(new TextDecoder().decode(d.body))).toEqual(batch);
    }
    // A list mixing prompts and ids is no batch: still a 400.
    await expect(
      r.route(req({ model: 'm', prompt: ['a', 1] }, { path: '/v1/completions' })),
    ).rejects.toMatchObject({ code: 'invalid_request' });
  });

  /** A chat body with `levels` nested containers in all (the body object counts). */
  const nested = (levels: number) =>
    `{"model":"m","messages":[{"role":"user","content":"hi"}],"x":${'['.repeat(levels - 1)}1${']'.repeat(levels - 1)}}`;

  it.each([
    ['inline', false],
    ['offloaded', true],
  ])(
    "routes JSON nested deeper than the tokenizer parses by load, as is, up to Go's 10 000 levels (%s)",
    async (_name, offload) => {
      const { r } = await router(backend, { offload });
      // 127 levels: tokenized as usual.
      const ok = await r.route(req(nested(127)));
      expect(JSON.parse(new TextDecoder().decode(ok.body)).nvext.token_data.length).toBeGreaterThan(
        0,
      );
      for (const levels of [128, 10_000]) {
        const body = nested(levels);
        const d = await r.route(req(body));
        expect(d.setHeaders['x-dynamo-worker-instance-id']).toBeDefined();
        expect(new TextDecoder().decode(d.body)).toBe(body);
      }
      // Beyond Go's limit: the reference EPP's 400, in Go's words.
      await expect(r.route(req(nested(10_001)))).rejects.toMatchObject({
        code: 'invalid_json',
        message: "error unmarshaling request bodyMap: invalid character '[' exceeded max depth",
      });
    },
  );

  it('splices a model rewrite into a body too deep to tokenize', async () => {
    const { r } = await router(backend);
    const body = nested(9_000);
    const d = await r.route(
      req(body, { headers: new Map([['x-gateway-model-name-rewrite', 'n']]) }),
    );
    expect(new TextDecoder().decode(d.body)).toBe(body.replace('"model":"m"', '"model":"n"'));
  });

  it("gives a worker pool's transferred body back with unsupported_content", async () => {
    const path = await createHotPath({ source: 'o200k_base' }, backend);
    const original = new TextEncoder().encode(
      JSON.stringify({
        model: 'm',
        messages: [{ role: 'user', content: [{ type: 'input_audio' }] }],
      }),
    );
    const kept = original.slice();
    const preparer: Preparer = {
      // A pool that took the body: the caller's copy is gone, the error carries it back.
      prepare: async () => {
        throw new UntokenizableBody('audio parts are not supported', kept);
      },
      offloads: () => true,
    };
    const r = inlineRouter(path, { preparer });
    const d = await r.route(req('', { body: new Uint8Array(0), bodyTransferable: true }));
    expect(d.body).toBe(kept);
  });

  it('defers the approximate-mode record to `defer`, after the decision is made', async () => {
    const path = await createHotPath({ source: 'o200k_base' }, backend);
    const queued: Array<() => void> = [];
    const log = new RecordingLogger();
    const r = inlineRouter(path, { log, defer: (work) => queued.push(work) });
    const body = new TextEncoder().encode(JSON.stringify(chat(long)));
    const d = await r.route(req(chat(long)));
    const { localHashes } = prepareRouteInline(path, body, 'chat', { blockSize: 16 });
    const holders = () => path.index.findMatches(localHashes, false).workers.length;
    expect(holders()).toBe(0);
    expect(queued).toHaveLength(1);
    queued.shift()?.();
    expect(holders()).toBe(1);
    const primary = endpoints.find((e) => e.hostPort === d.endpoints[0]);
    expect(path.index.findMatches(localHashes, false).workers[0]?.workerId).toBe(primary?.workerId);
  });

  it('picks nothing for a request the gateway abandoned while it was tokenized', async () => {
    const path = await createHotPath({ source: 'o200k_base' }, backend);
    const queued: Array<() => void> = [];
    const cancel = { cancelled: false, onCancel: undefined as (() => void) | undefined };
    let handed: unknown;
    const r = inlineRouter(path, {
      defer: (work) => queued.push(work),
      preparer: {
        // The client goes away while its prompt is tokenized (a task already running).
        prepare: async (b, api, st, w, c) => {
          handed = c;
          const prep = prepareRouteInline(path, b, api, st, w);
          cancel.cancelled = true;
          return prep;
        },
      },
    });
    await expect(r.route(req(chat(long), { cancel }))).rejects.toMatchObject({
      code: 'cancelled',
    });
    expect(handed).toBe(cancel);
    // No in-flight count to undo and no approximate-mode record of a request no worker sees.
    for (const e of endpoints) expect(r.load(e.hostPort)).toBe(0);
    expect(queued).toHaveLength(0);
    // The same prompt, not cancelled, is routed and recorded.
    await r.route(req(chat(long)));
    expect(queued).toHaveLength(1);
  });

  it('reports the scheduling time alone to onRouted, not the tokenizing before it', async () => {
    const path = await createHotPath({ source: 'o200k_base' }, backend);
    const seen: Array<number | undefined> = [];
    // A clock that moves only when the tokenizer works (30 ms) and when it is read (1 µs).
    let clock = 1000;
    const r = inlineRouter(path, {
      now: () => (clock += 0.001),
      preparer: {
        prepare: async (b, api, st, w) => {
          clock += 30;
          return prepareRouteInline(path, b, api, st, w);
        },
      },
      onRouted: (x) => seen.push(x.scheduleMs),
    });
    await r.route(req(chat(long)));
    await r.route(req({ model: 'm', input: 'embed me' }, { path: '/v1/embeddings' }));
    expect(seen).toHaveLength(2);
    // Only reads of the clock during the scheduling itself: none of the 30 ms.
    for (const ms of seen) {
      expect(ms).toBeGreaterThan(0);
      expect(ms).toBeLessThan(1);
    }
  });

  it('records a decision of `recordSoonBlocks` or more off-thread (native), the rest on `defer`', async () => {
    const path = await createHotPath({ source: 'o200k_base' }, backend);
    const queued: Array<() => void> = [];
    let tracker: ApproxTracker | undefined;
    const r = inlineRouter(path, {
      defer: (work) => queued.push(work),
      recordSoonBlocks: 8,
      approxTracker: (settings) => {
        tracker = createApproxTracker(path.index, path.hasher, settings);
        return tracker;
      },
    });
    const body = new TextEncoder().encode(JSON.stringify(chat(long)));
    const { localHashes } = prepareRouteInline(path, body, 'chat', { blockSize: 16 });
    expect(localHashes.length).toBeGreaterThanOrEqual(8);
    await r.route(req(chat(long)));
    // A short prompt stays on `defer`; so does a long one without a tracker thread (JS),
    // which would otherwise run before the decision is answered.
    await r.route(req(chat('hi')));
    expect(queued).toHaveLength(backend === 'native' ? 1 : 2);
    if (backend === 'js') expect(tracker?.size).toBe(0); // nothing recorded before `defer` runs
    for (const work of queued.splice(0)) work();
    tracker?.settle();
    expect(path.index.findMatches(localHashes, false).workers).toHaveLength(1);
    expect(tracker?.size).toBeGreaterThanOrEqual(localHashes.length);
  });

  it('falls back to `defer` and to upkeep on its own thread when the tracker thread fails', async () => {
    const path = await createHotPath({ source: 'o200k_base' }, backend);
    const queued: Array<() => void> = [];
    const log = new RecordingLogger();
    const failing = new PruneTracker(path.index, DEFAULT_PRUNE_SETTINGS, path.hasher);
    (failing as { offThread: boolean }).offThread = true;
    failing.routeSoon = () => {
      throw new Error('no thread');
    };
    failing.maintainSoon = () => {
      throw new Error('no thread either');
    };
    const r = inlineRouter(path, {
      log,
      defer: (work) => queued.push(work),
      recordSoonBlocks: 8,
      approxTracker: () => failing,
    });
    await r.route(req(chat(long)));
    const warned = log.records.filter((x) => x.msg === 'approximate-mode queue failed');
    expect(warned.map((x) => x.fields.err)).toEqual(['no thread']);
    expect(queued).toHaveLength(1);
    queued.pop()?.();
    expect(failing.size).toBeGreaterThan(8);
    expect(r.maintainOffThread()).toBe(false);
    expect(log.records.at(-1)?.fields.err).toBe('no thread either');
  });

  it('forget waits for queued records, so a departed worker is not stored again', async () => {
    const path = await createHotPath({ source: 'o200k_base' }, backend);
    let tracker: ApproxTracker | undefined;
    const r = inlineRouter(path, {
      approxTracker: (settings) => {
        tracker = createApproxTracker(path.index, path.hasher, settings);
        return tracker;
      },
    });
    await r.route(req(chat('warm up')));
    const w = { workerId: 11n, dpRank: 0 };
    for (let i = 0; i < 300; i++) {
      const h = BigUint64Array.from({ length: 512 }, (_, k) => BigInt(i * 1000 + k + 1));
      tracker?.routeSoon(w, h, h.length, 0);
    }
    r.forget({ workerId: 11n });
    path.index.removeWorker(11n);
    tracker?.settle();
    expect(path.index.treeSize(w)).toBe(0);
  });

  it('logs a deferred record that fails instead of throwing into the event loop', async () => {
    const path = await createHotPath({ source: 'o200k_base' }, backend);
    const queued: Array<() => void> = [];
    const log = new RecordingLogger();
    const tracker = new PruneTracker(path.index, DEFAULT_PRUNE_SETTINGS, path.hasher);
    tracker.route = () => {
      throw new Error('tracker gone');
    };
    const r = inlineRouter(path, {
      log,
      defer: (work) => queued.push(work),
      approxTracker: () => tracker,
    });
    await r.route(req(chat(long)));
    expect(() => queued.shift()?.()).not.toThrow();
    expect(log.records.find((x) => x.msg === 'approximate-mode record failed')?.fields.err).toBe(
      'tracker gone',
    );
  });

  it('records the prompt for the fallback the gateway served from (approximate mode)', async () => {
    const { r, path } = await router(backend);
    const body = chat(long);
    const d = await r.route(req(body));
    expect(d.endpoints).toHaveLength(2);
    const { localHashes } = prepareRouteInline(
      path,
      new TextEncoder().encode(JSON.stringify(body)),
      'chat',
      { blockSize: 16 },
    );
    const holders = () =>
      path.index
        .findMatches(localHashes, false)
        .workers.map((w) => `${w.workerId}/${w.dpRank}`)
        .sort();
    const [primary, fallback] = d.endpoints.map(
      (hp) => endpoints.find((e) => e.hostPort === hp) as (typeof endpoints)[number],
    );
    expect(holders()).toEqual([`${primary?.workerId}/${primary?.dpRank}`]);
    // A fallback that failed the request holds nothing new.
    const failed = await r.route(req(body));
    r.complete(failed, { requestId: 'r0', servedEndpoint: failed.endpoints[1], status: 503 });
    expect(holders()).toEqual([`${primary?.workerId}/${primary?.dpRank}`]);
    r.complete(d, { requestId: 'r1', servedEndpoint: fallback?.hostPort });
    expect(holders()).toEqual(
      [
        `${primary?.workerId}/${primary?.dpRank}`,
        `${fallback?.workerId}/${fallback?.dpRank}`,
      ].sort(),
    );
    expect(r.load(primary?.hostPort as string)).toBe(0);
  });

  it("hashes under x-tenant-id over the body's cache salt, and only a visible-ASCII one (Dynamo's frontend)", async () => {
    const { r, path } = await router(backend);
    const hashed = (ns: string | undefined) =>
      prepareRouteInline(path, new TextEncoder().encode(JSON.stringify(chat(long))), 'chat', {
        blockSize: 16,
        cacheNamespace: ns,
      }).localHashes;
    const holders = (ns: string | undefined) => path.index.findMatches(hashed(ns), false).workers;
    const salted = { ...chat(long), nvext: { cache_salt: 'body-salt' } };
    const tenant = (v: string) => ({ headers: new Map([['x-tenant-id', v]]) });
    await r.route(req(salted, tenant('tenant-t')));
    expect(holders('tenant-t')).toHaveLength(1);
    expect(holders('body-salt')).toHaveLength(0);
    // A header Dynamo cannot read as a string is ignored: the body's salt counts.
    await r.route(req(salted, tenant('tenant-ü')));
    expect(holders('body-salt')).toHaveLength(1);
    await r.route(req(chat(long), tenant('')));
    expect(holders(undefined)).toHaveLength(1);
  });

  it('applies the rewrite and token data to the last of a repeated key (what the worker reads)', async () => {
    const { r } = await router(backend);
    const body = `{"model":"m","nvext":{},"messages":[{"role":"user","content":"hi"}],"model":"m","nvext":{"k":1}}`;
    const d = await r.route(
      req(body, { headers: new Map([['x-gateway-model-name-rewrite', 'target-model']]) }),
    );
    const seen = JSON.parse(new TextDecoder().decode(d.body));
    expect(seen.model).toBe('target-model');
    expect(seen.nvext.k).toBe(1);
    expect(seen.nvext.token_data.length).toBeGreaterThan(0);
  });

  it.each([
    ['x-original-path', '/v1/chat/completions'],
    ['x-forwarded-path', '/v1/chat/completions?x=1'],
  ])('takes the API from %s when :path is absent', async (name, value) => {
    const { r } = await router(backend);
    const d = await r.route(req(chat(long), { path: '', headers: new Map([[name, value]]) }));
    expect(JSON.parse(new TextDecoder().decode(d.body)).nvext.token_data.length).toBeGreaterThan(0);
  });

  it.each([
    ['chat', chat(long)],
    ['completions', { model: 'm', prompt: long }],
  ])(
    'without any path (NGINX Gateway Fabric), tokenizes a %s body found by its fields',
    async (_api, body) => {
      const { r } = await router(backend);
      const d = await r.route(req(body, { path: '' }));
      const withPath = await (await router(backend)).r.route(
        req(body, { path: _api === 'chat' ? '/v1/chat/completions' : '/v1/completions' }),
      );
      const ids = JSON.parse(new TextDecoder().decode(d.body)).nvext.token_data;
      expect(ids.length).toBeGreaterThan(100);
      expect(ids).toEqual(JSON.parse(new TextDecoder().decode(withPath.body)).nvext.token_data);
    },
  );

  it('without any path, forwards a body that is neither chat nor completions untokenized', async () => {
    const { r } = await router(backend);
    const body = { model: 'm', input: 'embed me' };
    const d = await r.route(req(body, { path: '' }));
    expect(JSON.parse(new TextDecoder().decode(d.body))).toEqual(body);
    await expect(r.route(req('{"model":', { path: '' }))).rejects.toMatchObject({
      code: 'invalid_json',
    });
  });

  it('answers 503-class errors when the subset matches nothing, and routes header-only requests', async () => {
    const { r } = await router(backend);
    await expect(r.route(req(chat('x'), { subset: ['127.0.0.9:1'] }))).rejects.toMatchObject({
      code: 'no_endpoint',
      message: 'failed to find endpoint candidates for serving the request',
    });
    // A bad body is a 400 before the subset's 503 (the reference EPP parses first).
    await expect(r.route(req('{"model":', { subset: ['127.0.0.9:1'] }))).rejects.toMatchObject({
      code: 'invalid_json',
    });
    const busy = await r.route(req(chat('y')));
    const h = r.routeHeaderOnly(req('', { path: '/v1/models', method: 'GET' }));
    expect(h.endpoints[0]).not.toBe(busy.endpoints[0]);
    expect(h.setHeaders['x-dynamo-routing-mode']).toBe('aggregated');
  });

  it('sheds with overloaded (429) when every candidate is busy, and skips busy endpoints', async () => {
    const { r, path, prepared } = await router(backend, {
      admission: { maxPendingPrepare: 0, maxInFlightPerEndpoint: 1 },
    });
    const first = await r.route(req(chat(long)));
    expect(first.endpoints[0]).toBe('127.0.0.2:8001');
    // `a` holds the prefix but is at its limit: the request goes to `b`.
    const second = await r.route(req(chat(long)));
    expect(second.endpoints).toEqual(['127.0.0.3:8001']);
    const before = prepared();
    await expect(r.route(req(chat(long)))).rejects.toMatchObject({
      code: 'overloaded',
      message: expect.stringContaining('all 2 candidate endpoints are busy'),
    });
    expect(prepared()).toBe(before); // shed before tokenizing
    // A bad body is still a 400 when shedding (checked, not tokenized).
    await expect(r.route(req('{"messages":[]}'))).rejects.toMatchObject({
      code: 'invalid_request',
      message: 'model not found in request body',
    });
    expect(prepared()).toBe(before);
    expect(() => r.routeHeaderOnly(req('', { path: '/v1/models', method: 'GET' }))).toThrow(/busy/);
    // An empty subset is still "no endpoint" (503), not overload.
    await expect(r.route(req(chat('x'), { subset: ['127.0.0.9:1'] }))).rejects.toMatchObject({
      code: 'no_endpoint',
    });
    r.complete(first, { requestId: 'r1' });
    expect((await r.route(req(chat(long)))).endpoints[0]).toBe('127.0.0.2:8001');
    path.index.dispose();
  });

  it('balances the data-parallel ranks of one worker, which share an address, by their own requests in flight', async () => {
    const ranks = parseEndpoints(
      {
        endpoints: [
          { address: '127.0.0.2', port: 8001, name: 'w-r0', workerId: '7', dpRank: 0 },
          { address: '127.0.0.2', port: 8001, name: 'w-r1', workerId: '7', dpRank: 1 },
        ],
      },
      'ranks',
    );
    const { r, path } = await router(backend, {
      endpoints: ranks,
      admission: { maxPendingPrepare: 0, maxInFlightPerEndpoint: 2 },
    });
    // Distinct prompts (no shared prefix), all still in flight.
    const decisions = [];
    for (let i = 0; i < 4; i++)
      decisions.push(await r.route(req(chat(`${i} ${'unique '.repeat(40)}`))));
    expect(decisions.map((d) => d.setHeaders['x-dynamo-dp-rank'])).toEqual(['0', '1', '0', '1']);
    expect(r.load('127.0.0.2:8001')).toBe(4);
    expect(ranks.map((e) => r.endpointLoad(e))).toEqual([2, 2]);
    // Each rank is at its own limit of 2: the next request is shed.
    await expect(r.route(req(chat('one more')))).rejects.toMatchObject({ code: 'overloaded' });
    r.complete(decisions[1] as (typeof decisions)[number], { requestId: 'r1' });
    expect(ranks.map((e) => r.endpointLoad(e))).toEqual([2, 1]);
    expect((await r.route(req(chat('after one ended')))).setHeaders['x-dynamo-dp-rank']).toBe('1');
    path.index.dispose();
  });

  it('sheds when the tokenization queue is full', async () => {
    let pending = 5;
    const { r, path, prepared } = await router(backend, {
      admission: { maxPendingPrepare: 5, maxInFlightPerEndpoint: 0 },
      pendingPrepare: () => pending,
    });
    await expect(r.route(req(chat('hi')))).rejects.toMatchObject({
      code: 'overloaded',
      message: expect.stringContaining('5 requests are waiting for tokenization (limit 5)'),
    });
    expect(prepared()).toBe(0);
    pending = 4;
    expect((await r.route(req(chat('hi')))).endpoints).toHaveLength(2);
    path.index.dispose();
  });
});
