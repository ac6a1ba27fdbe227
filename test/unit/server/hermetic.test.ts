/**
 * Replays the GAIE EPP hermetic integration scenarios (gaie-epp.md §6.2;
 * GAIE test/integration/epp at 1748e829) that exercise the protocol layer:
 * the same request messages (headers in `value`, metadata on the header and
 * body messages, GAIE's header names), the same expected response shapes,
 * statuses and body texts. Scheduling itself is the router's job, so a fake
 * router stands in for GAIE's scheduler with the choice each scenario expects
 * (GAIE pod i at 192.168.1.(i+1) ↔ kv-epp test pod i at 127.0.0.(i+2)) and
 * GAIE's error messages. Differences from GAIE are listed at each case.
 */
import { status as GrpcStatus } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseEndpoints } from '../../../src/discovery/endpoints.js';
import { KvEppError } from '../../../src/errors.js';
import { createHotPath } from '../../../src/pipeline/factory.js';
import { prepareRouteInline } from '../../../src/pipeline/route-prep.js';
import { KvRouter } from '../../../src/routing/kv-router.js';
import type {
  ProcessingRequest,
  ProcessingResponse,
  ProtoStruct,
} from '../../../src/server/ext-proc/messages.js';
import { type RunningServer, startExtProcServer } from '../../../src/server/grpc-server.js';
import type { GatewayRequest } from '../../../src/server/routing-types.js';
import {
  aDecision,
  destinationOf,
  ExtProcClient,
  ExtProcFixture,
  RecordingLogger,
  reqBody,
  reqHeaders,
  respBody,
  respHeaders,
  setHeadersOf,
  streamedOf,
  subsetMetadata,
  TRANSPORTS,
  text,
  utf8,
} from '../../support/ext-proc.js';

const pod = (i: number) => `127.0.0.${i + 2}:8000`;

// --- GAIE's request builders, re-expressed ---

function metadataFor(subset: string[] | undefined): Record<string, ProtoStruct> {
  return subset ? subsetMetadata(subset) : {};
}

/** ReqLLM / ReqSubset: headers (+ objective, rewrite) and one JSON body with EoS. */
function reqLLM(prompt: string, model: string, target: string, subset?: string[]) {
  const headers: Record<string, string> = { hi: 'mom', 'x-request-id': 'test-request-id' };
  if (model) headers['x-gateway-inference-objective'] = model;
  if (target) headers['x-gateway-model-name-rewrite'] = target;
  const body: Record<string, unknown> = { prompt, max_tokens: 100, temperature: 0 };
  if (model) body.model = model;
  return [
    reqHeaders(headers, { plainValue: true, metadata: metadataFor(subset) }),
    reqBody(goJson(body), true, metadataFor(subset)),
  ];
}

function reqRaw(headers: Record<string, string>, ...chunks: string[]): ProcessingRequest[] {
  return [
    reqHeaders(headers, { plainValue: true }),
    ...chunks.map((c, i) => reqBody(c, i === chunks.length - 1)),
  ];
}

function reqHeaderOnly(headers: Record<string, string>): ProcessingRequest[] {
  return [reqHeaders(headers, { plainValue: true, eos: true })];
}

function reqResponseOnly(headers: Record<string, string>, ...chunks: string[]) {
  return [respHeaders(headers), ...chunks.map((c, i) => respBody(c, i === chunks.length - 1))];
}

/** Go's json.Marshal of a map: keys sorted, compact. */
function goJson(o: Record<string, unknown>): string {
  return JSON.stringify(Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : 1))));
}

/** GAIE's director in miniature: model required, rewrite header wins, body re-marshalled. */
function gaieRoute(endpoint: string) {
  return (req: GatewayRequest) => {
    const body = JSON.parse(text(req.body)) as Record<string, unknown>;
    if (typeof body.model !== 'string') {
      throw new KvEppError('invalid_request', 'model not found in request body');
    }
    const clientModel = body.model;
    const targetModel = req.headers.get('x-gateway-model-name-rewrite') || clientModel;
    body.model = targetModel;
    return aDecision({ endpoints: [endpoint], body: utf8(goJson(body)), clientModel, targetModel });
  };
}

// --- GAIE's expectations, re-expressed ---

/** ExpectRouteTo: headers response (destination, content-length, clear_route_cache, metadata) + one body chunk. */
function expectRouteTo(responses: ProcessingResponse[], endpoint: string, body: string): void {
  expect(responses).toHaveLength(2);
  const [h, b] = responses;
  expect(h?.request_headers?.response?.clear_route_cache).toBe(true);
  // GAIE also echoes every client header (hi: mom, x-request-id); kv-epp sets only what changes.
  expect(setHeadersOf(h)).toEqual({
    'x-gateway-destination-endpoint': endpoint,
    'content-length': String(utf8(body).length),
  });
  expect(destinationOf(h)).toBe(endpoint);
  expect(streamedOf(b, 'request_body')).toMatchObject({ body, eos: true });
}

async function expectReject(
  run: Promise<{ responses: ProcessingResponse[]; status: { code: number } }>,
  status: number,
  body: string,
): Promise<void> {
  const { responses, status: st } = await run;
  expect(st.code).toBe(GrpcStatus.OK);
  expect(responses).toHaveLength(1);
  expect(responses[0]?.immediate_response?.status.code).toBe(status);
  expect(text(responses[0]?.immediate_response?.body)).toBe(body);
}

/** ExpectBufferResp / ExpectStreamResp: response headers, then the body chunks. */
function expectResponse(responses: ProcessingResponse[], chunks: string[]): void {
  expect(responses).toHaveLength(1 + chunks.length);
  // GAIE adds x-went-into-resp-headers and echoes the response headers; kv-epp passes them through.
  expect(responses[0]?.response_headers).toEqual({ response: {} });
  chunks.forEach((c, i) => {
    expect(streamedOf(responses[i + 1], 'response_body')).toMatchObject({
      body: c,
      eos: i === chunks.length - 1,
    });
  });
}

describe.each(TRANSPORTS)('%s transport', (transport) => {
  const fx = ExtProcFixture.forSuite(transport, { maxBodyBytes: 4 * 1024 * 1024 });

  async function exchange(reqs: ProcessingRequest[], n: number): Promise<ProcessingResponse[]> {
    const s = fx.client.open();
    s.send(...reqs);
    const out = await s.take(n);
    s.cancel();
    return out;
  }

  function rejected(reqs: ProcessingRequest[]) {
    const s = fx.client.open();
    s.send(...reqs);
    return s.drain();
  }

  describe('GAIE hermetic scenarios: routing', () => {
    it.each([
      ['select lower queue and kv cache', 'test1', 'my-model', 'my-model-12345', 1],
      ['select active lora, low queue', 'test2', 'sql-lora', 'sql-lora-1fdg2', 1],
      ['select lora despite higher kv cache (affinity)', 'test3', 'sql-lora', 'sql-lora-1fdg2', 1],
      ['do not shed requests by default', 'test4', 'sql-lora', 'sql-lora-1fdg2', 0],
      ['rewrite request model', 'test-rewrite', 'model-to-be-rewritten', 'rewritten-model', 0],
    ])('%s', async (_name, prompt, model, target, winner) => {
      fx.router.decide = gaieRoute(pod(winner));
      const responses = await exchange(reqLLM(prompt, model, target), 2);
      expectRouteTo(
        responses,
        pod(winner),
        `{"max_tokens":100,"model":"${target}","prompt":"${prompt}","temperature":0}`,
      );
      const req = fx.router.routed[0];
      expect(req?.requestId).toBe('test-request-id');
      expect(req?.headers.get('x-gateway-inference-objective')).toBe(model);
      expect(req?.headers.get('hi')).toBe('mom');
    });

    it('passthrough parser success: the body is forwarded unchanged', async () => {
      fx.router.decide = (req) => aDecision({ endpoints: [pod(1)], body: req.body });
      const responses = await exchange(
        reqRaw(
          {
            hi: 'mom',
            'x-request-id': 'test-request-id',
            'x-gateway-inference-objective': 'my-model',
          },
          'passthrough-parser',
        ),
        2,
      );
      expectRouteTo(responses, pod(1), 'passthrough-parser');
    });

    it('split body across chunks', async () => {
      fx.router.decide = gaieRoute(pod(0));
      const responses = await exchange(
        reqRaw(
          {
            hi: 'mom',
            'x-gateway-inference-objective': 'sql-lora-sheddable',
            'x-gateway-model-name-rewrite': 'sql-lora-1fdg3',
            'x-request-id': 'test-request-id',
          },
          '{"max_tokens":100,"model":"sql-lo',
          'ra-sheddable","prompt":"test6","temperature":0}',
        ),
        2,
      );
      expect(text(fx.router.routed[0]?.body)).toBe(
        '{"max_tokens":100,"model":"sql-lora-sheddable","prompt":"test6","temperature":0}',
      );
      expectRouteTo(
        responses,
        pod(0),
        '{"max_tokens":100,"model":"sql-lora-1fdg3","prompt":"test6","temperature":0}',
      );
    });

    it('passthrough: model not in objectives', async () => {
      fx.router.decide = gaieRoute(pod(0));
      const responses = await exchange(
        reqRaw(
          {
            hi: 'mom',
            'x-gateway-inference-objective': 'direct-model',
            'x-gateway-model-name-rewrite': 'direct-model',
            'x-request-id': 'test-request-id',
          },
          '{"max_tokens":100,"model":"direct-',
          'model","prompt":"test6","temperature":0}',
        ),
        2,
      );
      expectRouteTo(
        responses,
        pod(0),
        '{"max_tokens":100,"model":"direct-model","prompt":"test6","temperature":0}',
      );
    });

    it('protocol: simple GET (header only) gets only a request-headers response', async () => {
      const s = fx.client.open();
      s.send(...reqHeaderOnly({ 'content-type': 'text/event-stream', status: '200' }));
      const h = await s.next();
      expect(fx.router.headerOnly).toHaveLength(1);
      expect(h.request_headers?.response?.clear_route_cache).toBe(true);
      expect(destinationOf(h)).toBe(pod(0));
      s.halfClose();
      const { responses, status } = await s.drain();
      expect(responses).toHaveLength(0);
      expect(status.code).toBe(GrpcStatus.OK);
    });
  });

  describe('GAIE hermetic scenarios: subsetting', () => {
    const subset = [pod(0), pod(1), pod(2)];

    it('select best from subset: the subset reaches the router', async () => {
      fx.router.decide = gaieRoute(pod(1));
      const responses = await exchange(reqLLM('test2', 'sql-lora', 'sql-lora-1fdg2', subset), 2);
      expect(fx.router.routed[0]?.subset).toEqual(subset);
      expectRouteTo(
        responses,
        pod(1),
        '{"max_tokens":100,"model":"sql-lora-1fdg2","prompt":"test2","temperature":0}',
      );
    });

    it('partial match', async () => {
      fx.router.decide = gaieRoute(pod(2));
      const responses = await exchange(reqLLM('test2', 'sql-lora', 'sql-lora-1fdg2', [pod(2)]), 2);
      expect(fx.router.routed[0]?.subset).toEqual([pod(2)]);
      expectRouteTo(
        responses,
        pod(2),
        '{"max_tokens":100,"model":"sql-lora-1fdg2","prompt":"test2","temperature":0}',
      );
    });

    it('no pods match → 503', async () => {
      fx.router.decide = () => {
        throw new KvEppError(
          'no_endpoint',
          'failed to find endpoint candidates for serving the request',
        );
      };
      await expectReject(
        rejected(reqLLM('test2', 'sql-lora', 'sql-lora-1fdg2', ['127.0.0.99:8000'])),
        503,
        'inference error: ServiceUnavailable - failed to find endpoint candidates for serving the request',
      );
      expect(fx.router.routed[0]?.subset).toEqual(['127.0.0.99:8000']);
    });
  });

  describe('GAIE hermetic scenarios: errors', () => {
    it('invalid json body → 400', async () => {
      fx.router.decide = () => {
        throw new KvEppError(
          'invalid_json',
          "error unmarshaling request bodyMap: invalid character 'o' in literal null (expecting 'u')",
        );
      };
      await expectReject(
        rejected(reqRaw({ hi: 'mom' }, 'no healthy upstream')),
        400,
        "inference error: BadRequest - error unmarshaling request bodyMap: invalid character 'o' in literal null (expecting 'u')",
      );
    });

    it('request missing model field → 400', async () => {
      fx.router.decide = gaieRoute(pod(0));
      await expectReject(
        rejected(reqRaw({ 'content-type': 'application/json' }, '{"prompt":"hello world"}')),
        400,
        'inference error: BadRequest - model not found in request body',
      );
    });

    it('no backend pods available (header-only) → 503, where GAIE answers 500', async () => {
      // GAIE: 500 "Internal - no pods available in datastore". kv-epp follows the
      // Endpoint Picker Protocol ("503 if no ready endpoints") through the router's no_endpoint.
      fx.router.decideHeaderOnly = () => {
        throw new KvEppError('no_endpoint', 'no pods available in datastore');
      };
      await expectReject(
        rejected(reqHeaderOnly({ 'content-type': 'application/json' })),
        503,
        'inference error: ServiceUnavailable - no pods available in datastore',
      );
    });
  });

  describe('GAIE hermetic scenarios: response processing (response-only streams)', () => {
    const json = '{"max_tokens":100,"model":"sql-lora-sheddable","prompt":"test6","temperature":0}';

    it('response buffering: multi-chunk JSON is re-emitted whole', async () => {
      const responses = await exchange(
        reqResponseOnly(
          { 'content-type': 'application/json' },
          '{"max_tokens":100,"model":"sql-lo',
          'ra-sheddable","prompt":"test6","temperature":0}',
        ),
        2,
      );
      expectResponse(responses, [json]);
    });

    it('response buffering: invalid JSON is re-emitted as is', async () => {
      const responses = await exchange(
        reqResponseOnly({ 'content-type': 'application/json' }, 'no healthy upstream'),
        2,
      );
      expectResponse(responses, ['no healthy upstream']);
    });

    it('response buffering: empty EOS chunk', async () => {
      const responses = await exchange(
        reqResponseOnly({ 'content-type': 'application/json' }, json, ''),
        2,
      );
      expectResponse(responses, [json]);
    });

    const sse = [
      'data: {}',
      'data: {"usage":{"prompt_tokens":7,"total_tokens":17,"completion_tokens":10}}\ndata: [DONE]',
      '',
    ];

    it('response streaming: SSE chunks pass through one for one', async () => {
      const responses = await exchange(
        reqResponseOnly({ 'content-type': 'text/event-stream', status: '200' }, ...sse),
        4,
      );
      expectResponse(responses, sse);
    });

    it('response streaming: SSE token counting (after a routed request) reports 7 input tokens', async () => {
      fx.router.decide = gaieRoute(pod(0));
      const s = fx.client.open();
      s.send(...reqLLM('test6', 'sql-lora-sheddable', 'sql-lora-1fdg3'));
      await s.take(2);
      s.send(...reqResponseOnly({ 'content-type': 'text/event-stream', ':status': '200' }, ...sse));
      expectResponse(await s.take(4), sse);
      const [c] = await fx.router.completed(1);
      expect(c?.summary).toMatchObject({ status: 200, promptTokens: 7, completionTokens: 10 });
      s.cancel();
    });
  });
});

/**
 * The error scenarios again, with kv-epp's real router (tokenizer, index,
 * request checks) behind the server instead of the fake: its own texts must be
 * the reference EPP's.
 */
describe('GAIE hermetic error scenarios with the real router', () => {
  let server: RunningServer;
  let client: ExtProcClient;
  let dispose: () => void;
  beforeAll(async () => {
    const path = await createHotPath({ source: 'o200k_base' }, 'native');
    const eps = parseEndpoints(
      {
        endpoints: [0, 1, 2].map((i) => ({
          address: `127.0.0.${i + 2}`,
          port: 8000,
          name: `p${i}`,
        })),
      },
      'test',
    );
    const router = new KvRouter(
      {
        endpoints: () => eps,
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
      router,
      logger: new RecordingLogger(),
      maxBodyBytes: 4 * 1024 * 1024,
    });
    client = new ExtProcClient(server.port);
    dispose = () => {
      router.dispose();
      path.index.dispose();
      path.tokenizer.dispose();
    };
  });
  afterAll(async () => {
    client.close();
    await server.close(0);
    dispose();
  });

  function drain(reqs: ProcessingRequest[]) {
    const s = client.open();
    s.send(...reqs);
    return s.drain();
  }

  it("invalid json body → 400 with Go's JSON error", async () => {
    await expectReject(
      drain(reqRaw({ hi: 'mom' }, 'no healthy upstream')),
      400,
      "inference error: BadRequest - error unmarshaling request bodyMap: invalid character 'o' in literal null (expecting 'u')",
    );
  });

  it('request missing model field → 400', async () => {
    await expectReject(
      drain(reqRaw({ 'content-type': 'application/json' }, '{"prompt":"hello world"}')),
      400,
      'inference error: BadRequest - model not found in request body',
    );
  });

  it('subsetting: no pods match → 503', async () => {
    await expectReject(
      drain(reqLLM('test2', 'sql-lora', 'sql-lora-1fdg2', ['127.0.0.99:8000'])),
      503,
      'inference error: ServiceUnavailable - failed to find endpoint candidates for serving the request',
    );
  });

  it('subsetting: partial match routes inside the subset', async () => {
    const s = client.open();
    s.send(...reqLLM('test2', 'sql-lora', 'sql-lora-1fdg2', [pod(2)]));
    const [h] = await s.take(2);
    s.cancel();
    expect(destinationOf(h)).toBe(pod(2));
  });
});
