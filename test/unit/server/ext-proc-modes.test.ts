/**
 * The other ways gateways drive the ext_proc server: Envoy in BUFFERED mode
 * (detected from protocol_config), NGINX Gateway Fabric's one-shot shim
 * (canonical-case keys, `value` not `raw_value`, one body message, half-close),
 * and a data plane configured to send no request body.
 */
import { status as GrpcStatus } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { KvEppError } from '../../../src/errors.js';
import { BodySendMode } from '../../../src/server/ext-proc/messages.js';
import {
  aDecision,
  destinationOf,
  ExtProcFixture,
  reqBody,
  reqHeaders,
  respBody,
  respHeaders,
  setHeadersOf,
  streamedOf,
  TRANSPORTS,
  text,
  utf8,
} from '../../support/ext-proc.js';

const CHAT = '{"model":"m","messages":[{"role":"user","content":"hi"}]}';
const BUFFERED = {
  request_body_mode: BodySendMode.BUFFERED,
  response_body_mode: BodySendMode.BUFFERED,
};

describe.each(TRANSPORTS)('%s transport', (transport) => {
  const fx = ExtProcFixture.forSuite(transport, { maxBodyBytes: 1024 * 1024 });

  describe('BUFFERED (protocol_config.request_body_mode)', () => {
    it('answers headers with CONTINUE at once, then routes on the body message', async () => {
      fx.router.decide = () =>
        aDecision({
          endpoints: ['127.0.0.3:8000'],
          setHeaders: { 'x-worker': 'w1' },
          body: utf8('{"routed":1}'),
        });
      const s = fx.client.open();
      s.send(
        reqHeaders(
          { ':path': '/v1/chat/completions', 'x-request-id': 'b-1' },
          { protocol: BUFFERED },
        ),
      );
      // Envoy waits for this answer before it sends the body.
      const h = await s.next();
      expect(h.request_headers).toEqual({ response: {} });
      expect(h.dynamic_metadata).toBeUndefined();

      s.send(reqBody(CHAT, true));
      const b = await s.next();
      expect(text(fx.router.routed[0]?.body)).toBe(CHAT);
      const common = b.request_body?.response;
      expect(common?.clear_route_cache).toBe(true);
      expect(setHeadersOf(b, 'request_body')).toEqual({
        'x-gateway-destination-endpoint': '127.0.0.3:8000',
        'content-length': '12',
        'x-worker': 'w1',
      });
      expect(text(common?.body_mutation?.body)).toBe('{"routed":1}');
      expect(common?.body_mutation?.streamed_response).toBeUndefined();
      expect(destinationOf(b)).toBe('127.0.0.3:8000');
      s.cancel();
    });

    it('replaces a response body only when the model is restored, with its content-length', async () => {
      fx.router.decide = () =>
        aDecision({ body: utf8(CHAT), clientModel: 'alias', targetModel: 'real-model' });
      const s = fx.client.open();
      s.send(reqHeaders({ 'x-request-id': 'b-2' }, { protocol: BUFFERED }));
      await s.next();
      s.send(reqBody(CHAT, true));
      await s.next();

      const body = '{"model":"real-model","usage":{"prompt_tokens":4,"completion_tokens":1}}';
      s.send(
        respHeaders({
          ':status': '200',
          'content-type': 'application/json',
          'content-length': String(body.length),
        }),
      );
      expect((await s.next()).response_headers).toEqual({ response: {} });
      s.send(respBody(body, true));
      const r = await s.next();
      const want = body.replace('real-model', 'alias');
      expect(text(r.response_body?.response?.body_mutation?.body)).toBe(want);
      expect(setHeadersOf(r, 'response_body')).toEqual({ 'content-length': String(want.length) });
      const [c] = await fx.router.completed(1);
      expect(c?.summary).toMatchObject({ status: 200, promptTokens: 4, completionTokens: 1 });
      s.cancel();
    });

    it('answers an unchanged response body with a plain CONTINUE', async () => {
      const s = fx.client.open();
      s.send(reqHeaders({}, { protocol: BUFFERED }));
      await s.next();
      s.send(reqBody(CHAT, true));
      await s.next();
      s.send(respHeaders({ ':status': '200' }), respBody('{"ok":true}', true));
      const [, r] = await s.take(2);
      expect(r?.response_body).toEqual({ response: {} });
      s.cancel();
    });

    it('routes a header-only request from the headers message', async () => {
      const s = fx.client.open();
      s.send(reqHeaders({ ':method': 'GET' }, { eos: true, protocol: BUFFERED }));
      const h = await s.next();
      expect(fx.router.headerOnly).toHaveLength(1);
      expect(destinationOf(h)).toBe('127.0.0.2:8000');
      expect(setHeadersOf(h)['x-gateway-destination-endpoint']).toBe('127.0.0.2:8000');
      s.cancel();
    });

    it("strips the client's routing headers in the headers answer, before any body", async () => {
      const s = fx.client.open();
      s.send(
        reqHeaders(
          {
            ':path': '/v1/chat/completions',
            'x-gateway-destination-endpoint': '127.0.0.9:1',
            'x-dynamo-worker-instance-id': '424242',
            'x-dynamo-request-id': 'kept',
            'x-dp-rank': '3',
          },
          { protocol: BUFFERED },
        ),
      );
      const h = await s.next();
      expect(h.request_headers?.response?.header_mutation?.remove_headers?.sort()).toEqual([
        'x-dp-rank',
        'x-dynamo-worker-instance-id',
        'x-gateway-destination-endpoint',
      ]);
      expect(h.request_headers?.response?.header_mutation?.set_headers).toBeUndefined();
      s.cancel();
    });

    /** A BUFFERED stream whose request sends trailers where its body would be. */
    async function trailersInsteadOfBody() {
      const s = fx.client.open();
      s.send(reqHeaders({ ':path': '/v1/chat/completions' }, { protocol: BUFFERED }));
      await s.next();
      s.send({ request_trailers: { trailers: { headers: [] } } });
      return s.drain();
    }

    it("answers trailers that come instead of a body with the router's 400 for the empty body", async () => {
      fx.router.decide = (req) => {
        expect(req.body.length).toBe(0);
        throw new KvEppError('invalid_json', 'unexpected end of JSON input');
      };
      const { responses, status } = await trailersInsteadOfBody();
      expect(status.code).toBe(GrpcStatus.OK);
      expect(responses[0]?.immediate_response?.status.code).toBe(400);
      expect(fx.router.routed).toHaveLength(1);
    });

    it('refuses a request that trailers end without a body even when the router would route it', async () => {
      fx.router.decide = () => aDecision({ endpoints: ['127.0.0.3:8000'] });
      const { responses, status } = await trailersInsteadOfBody();
      expect(status.code).toBe(GrpcStatus.OK);
      expect(responses).toHaveLength(1);
      expect(responses[0]?.immediate_response?.status.code).toBe(400);
      expect(text(responses[0]?.immediate_response?.body)).toBe(
        'inference error: BadRequest - a request with trailers and no body cannot be routed in BUFFERED mode',
      );
    });

    it('answers a routing error on the body message with an ImmediateResponse', async () => {
      fx.router.decide = () => {
        throw new KvEppError('invalid_request', 'messages must not be empty');
      };
      const s = fx.client.open();
      s.send(reqHeaders({}, { protocol: BUFFERED }));
      await s.next();
      s.send(reqBody('{"model":"m","messages":[]}', true));
      const { responses, status } = await s.drain();
      expect(status.code).toBe(GrpcStatus.OK);
      expect(responses[0]?.immediate_response?.status.code).toBe(400);
      expect(text(responses[0]?.immediate_response?.body)).toBe(
        'inference error: BadRequest - messages must not be empty',
      );
    });
  });

  describe('request_body_mode NONE', () => {
    it('routes on the headers as a header-only request', async () => {
      const s = fx.client.open();
      s.send(
        reqHeaders(
          { ':method': 'POST', 'content-length': '10' },
          {
            protocol: {
              request_body_mode: BodySendMode.NONE,
              response_body_mode: BodySendMode.NONE,
            },
          },
        ),
      );
      const h = await s.next();
      expect(fx.router.headerOnly).toHaveLength(1);
      expect(destinationOf(h)).toBe('127.0.0.2:8000');
      s.cancel();
      // Said once per server, however many such requests come.
      const again = fx.client.open();
      again.send(
        reqHeaders(
          { ':method': 'POST' },
          {
            protocol: {
              request_body_mode: BodySendMode.NONE,
              response_body_mode: BodySendMode.NONE,
            },
          },
        ),
      );
      await again.next();
      again.cancel();
      const warned = fx.logger.records.filter((r) => /sends no request bodies/.test(r.msg));
      expect(warned).toHaveLength(1);
      expect(warned[0]?.level).toBe('warn');
    });
  });

  describe('BUFFERED_PARTIAL', () => {
    const PARTIAL = {
      request_body_mode: BodySendMode.BUFFERED_PARTIAL,
      response_body_mode: BodySendMode.BUFFERED,
    };

    it('answers 413 for a body cut at the gateway buffer (no end_of_stream, short of content-length)', async () => {
      const s = fx.client.open();
      s.send(reqHeaders({ 'content-length': '100000' }, { protocol: PARTIAL }));
      await s.next();
      s.send(reqBody(CHAT.slice(0, 40), false));
      const { responses, status } = await s.drain();
      expect(status.code).toBe(GrpcStatus.OK);
      expect(responses[0]?.immediate_response?.status.code).toBe(413);
      expect(text(responses[0]?.immediate_response?.body)).toMatch(/exceeds the gateway's buffer/);
      expect(fx.router.routed).toHaveLength(0);
    });

    it('routes a body without content-length that trailers end when it is one whole JSON document', async () => {
      fx.router.decide = (req) => aDecision({ body: req.body });
      const s = fx.client.open();
      s.send(reqHeaders({}, { protocol: PARTIAL }));
      await s.next();
      s.send(reqBody(CHAT, false));
      const b = await s.next();
      expect(text(fx.router.routed[0]?.body)).toBe(CHAT);
      expect(destinationOf(b)).toBe('127.0.0.2:8000');
      s.cancel();
    });

    it.each([
      ['an object cut short', Buffer.from(CHAT.slice(0, -1))],
      ['an object cut after an inner object', Buffer.from('{"model":"m","nvext":{"a":1}')],
      ['invalid UTF-8', Buffer.from([...Buffer.from('{"model":"'), 0xff, 0x22, 0x7d])],
    ])(
      'answers 413 for a body without content-length or end_of_stream that is %s',
      async (_n, body) => {
        const s = fx.client.open();
        s.send(reqHeaders({}, { protocol: PARTIAL }));
        await s.next();
        s.send(reqBody(body, false));
        const { responses } = await s.drain();
        expect(responses[0]?.immediate_response?.status.code).toBe(413);
        expect(fx.router.routed).toHaveLength(0);
      },
    );

    it('routes a complete body that trailers end (no end_of_stream, all of content-length)', async () => {
      fx.router.decide = (req) => aDecision({ body: req.body });
      const s = fx.client.open();
      s.send(reqHeaders({ 'content-length': String(CHAT.length) }, { protocol: PARTIAL }));
      await s.next();
      s.send(reqBody(CHAT, false));
      const b = await s.next();
      expect(text(fx.router.routed[0]?.body)).toBe(CHAT);
      expect(destinationOf(b)).toBe('127.0.0.2:8000');
      s.cancel();
    });
  });

  it('fails a stream half-closed while the request body is open with INVALID_ARGUMENT, quietly', async () => {
    const logged = fx.logger.records.length;
    const s = fx.client.open();
    s.send(reqHeaders({ ':path': '/v1/chat/completions' }), reqBody(CHAT.slice(0, 10), false));
    s.halfClose();
    const { responses, status } = await s.drain();
    expect(responses).toHaveLength(0);
    expect(status.code).toBe(GrpcStatus.INVALID_ARGUMENT);
    expect(status.details).toMatch(/half-closed before the request body ended/);
    expect(fx.router.routed).toHaveLength(0);
    // Envoy half-closes like this when its client aborts an upload: no log line per abort.
    expect(fx.logger.records.slice(logged)).toEqual([]);
  });

  describe('NGINX Gateway Fabric one-shot client', () => {
    const ngfHeaders = {
      'Content-Type': 'application/json',
      'X-Request-Id': 'ngf-1',
      ':path': '/v1/completions',
      'X-Gateway-Model-Name-Rewrite': 'target',
    };

    it('reads canonical-case keys and `value`, answers, and ends the stream after half-close', async () => {
      fx.router.decide = (req) => aDecision({ endpoints: ['127.0.0.4:8000'], body: req.body });
      const s = fx.client.open();
      s.send(reqHeaders(ngfHeaders, { plainValue: true }), reqBody(CHAT, true)).halfClose();
      const { responses, status } = await s.drain();
      expect(status.code).toBe(GrpcStatus.OK);
      expect(responses).toHaveLength(2);
      // NGF reads only request_headers.response.header_mutation.set_headers[].raw_value.
      expect(setHeadersOf(responses[0])['x-gateway-destination-endpoint']).toBe('127.0.0.4:8000');
      expect(streamedOf(responses[1], 'request_body')).toMatchObject({ body: CHAT, eos: true });

      const req = fx.router.routed[0];
      expect(req?.requestId).toBe('ngf-1');
      expect(req?.path).toBe('/v1/completions');
      expect(req?.headers.get('content-type')).toBe('application/json');
      expect(req?.headers.get('x-gateway-model-name-rewrite')).toBe('target');
      expect([...(req?.headers.keys() ?? [])].every((k) => k === k.toLowerCase())).toBe(true);

      const [c] = await fx.router.completed(1);
      expect(c?.summary).toEqual({
        requestId: 'ngf-1',
        servedEndpoint: undefined,
        status: undefined,
        promptTokens: undefined,
        completionTokens: undefined,
        promptCachedTokens: undefined,
        responseBytes: 0,
        responseComplete: false,
      });
    });

    it('gets the ImmediateResponse and a closed stream on rejection', async () => {
      fx.router.decide = () => {
        throw new KvEppError('overloaded', 'all workers busy');
      };
      const s = fx.client.open();
      s.send(reqHeaders(ngfHeaders, { plainValue: true }), reqBody(CHAT, true)).halfClose();
      const { responses, status } = await s.drain();
      expect(status.code).toBe(GrpcStatus.OK);
      expect(responses).toHaveLength(1);
      expect(responses[0]?.immediate_response?.status.code).toBe(429);
      expect(text(responses[0]?.immediate_response?.body)).toBe(
        'inference error: ResourceExhausted - all workers busy',
      );
      expect(fx.router.completions).toHaveLength(0);
    });

    it('finishes a half-closed stream even while the fx.router is still working', async () => {
      const { started, release } = fx.router.holdDecisions();
      const s = fx.client.open();
      s.send(reqHeaders(ngfHeaders, { plainValue: true }), reqBody(CHAT, true)).halfClose();
      await started;
      release();
      const { responses, status } = await s.drain();
      expect(status.code).toBe(GrpcStatus.OK);
      expect(responses).toHaveLength(2);
      await fx.router.completed(1);
    });
  });
});

describe.each(TRANSPORTS)('%s transport, bodies above maxBodyBytes in one message', (transport) => {
  const fx = ExtProcFixture.forSuite(transport, { maxBodyBytes: 200_000 });
  const big = (n: number) => `{"model":"m","prompt":"${'x'.repeat(n)}"}`;

  it('answers 413 (not RESOURCE_EXHAUSTED) for a BUFFERED body of 5 MB without content-length', async () => {
    const s = fx.client.open();
    s.send(reqHeaders({}, { protocol: BUFFERED }));
    await s.next();
    s.send(reqBody(big(5_000_000), true));
    const { responses, status } = await s.drain();
    expect(status.code).toBe(GrpcStatus.OK);
    expect(responses[0]?.immediate_response?.status.code).toBe(413);
    expect(fx.router.routed).toHaveLength(0);
  });

  it('passes a BUFFERED response body of 5 MB through', async () => {
    fx.router.decide = (req) => aDecision({ body: req.body });
    const s = fx.client.open();
    s.send(reqHeaders({}, { protocol: BUFFERED }));
    await s.next();
    s.send(reqBody(CHAT, true));
    await s.next();
    s.send(respHeaders({ ':status': '200' }), respBody(big(5_000_000), true));
    const [, r] = await s.take(2);
    expect(r?.response_body).toEqual({ response: {} });
    s.cancel();
  });
});

// The receive limit is max(maxBodyBytes, maxResponseBufferBytes) + 1 MiB, at least 4 MiB: a
// BUFFERED body above it reaches the transport as one message too large to take.
describe.each(TRANSPORTS)('%s transport, a BUFFERED body above the receive limit', (transport) => {
  const fx = ExtProcFixture.forSuite(transport, {
    maxBodyBytes: 200_000,
    maxResponseBufferBytes: 100_000,
  });
  const big = (n: number) => `{"model":"m","prompt":"${'x'.repeat(n)}"}`;

  it(
    transport === 'grpc-js'
      ? 'fails the call with RESOURCE_EXHAUSTED (grpc-js enforces the limit itself)'
      : 'answers 413, drops the bytes unread, and the connection goes on',
    async () => {
      const s = fx.client.open();
      s.send(reqHeaders({}, { protocol: BUFFERED }));
      await s.next();
      s.send(reqBody(big(6_000_000), true));
      const { responses, status } = await s.drain();
      if (transport === 'grpc-js') {
        expect(status.code).toBe(GrpcStatus.RESOURCE_EXHAUSTED);
      } else {
        expect(status.code).toBe(GrpcStatus.OK);
        expect(responses).toHaveLength(1);
        expect(responses[0]?.immediate_response?.status.code).toBe(413);
        expect(responses[0]?.immediate_response?.body?.toString()).toContain(
          'exceeds the limit of 200000 bytes',
        );
      }
      expect(fx.router.routed).toHaveLength(0);
      // The same connection still routes.
      const t = fx.client.open();
      t.send(reqHeaders({}, { protocol: BUFFERED }));
      await t.next();
      t.send(reqBody(CHAT, true));
      const [r] = await t.take(1);
      expect(r?.request_body?.response?.header_mutation).toBeDefined();
      t.cancel();
    },
  );
});
