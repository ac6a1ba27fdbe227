/**
 * The ext_proc server as Envoy drives it in FULL_DUPLEX_STREAMED mode (the
 * default): a real gRPC client on an ephemeral port, a fake router.
 */

import net from 'node:net';
import { status as GrpcStatus } from '@grpc/grpc-js';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { KvEppError } from '../../../src/errors.js';
import { MAX_DECODED_ENTRIES } from '../../../src/server/ext-proc/codec.js';
import { BodySendMode } from '../../../src/server/ext-proc/messages.js';
import { startsLikeSse } from '../../../src/server/ext-proc/response.js';
import type { GatewayRequest, RouteDecision } from '../../../src/server/routing-types.js';
import {
  aDecision,
  destinationOf,
  ExtProcClient,
  ExtProcFixture,
  reqBody,
  reqHeaders,
  respBody,
  respHeaders,
  respTrailers,
  servedMetadata,
  setHeadersOf,
  streamedOf,
  subsetMetadata,
  TRANSPORTS,
  text,
  utf8,
} from '../../support/ext-proc.js';

const MAX_BODY = 1024 * 1024;
const CHAT = '{"model":"m","messages":[{"role":"user","content":"hi"}]}';

/** Categories reported through onLocalReject. */
const localRejects: string[] = [];

describe.each(TRANSPORTS)('%s transport', (transport) => {
  const fx = ExtProcFixture.forSuite(transport, {
    maxBodyBytes: MAX_BODY,
    onLocalReject: (c) => localRejects.push(c),
  });

  beforeEach(() => {
    localRejects.length = 0;
  });

  const baseHeaders = {
    ':method': 'POST',
    ':path': '/v1/chat/completions',
    'content-type': 'application/json',
    'x-request-id': 'req-1',
  };

  describe('request path (full duplex)', () => {
    it('buffers the body, routes once, then sends headers + body responses', async () => {
      fx.router.decide = () =>
        aDecision({
          endpoints: ['127.0.0.3:8000', '127.0.0.4:8000'],
          setHeaders: { 'X-Dynamo-Worker': '7' },
          removeHeaders: ['x-secret-routing'],
          body: utf8('{"rewritten":true}'),
        });
      const s = fx.client.open();
      s.send(
        reqHeaders({ ...baseHeaders, 'x-secret-routing': 'a' }),
        reqBody(CHAT.slice(0, 20), false),
        reqBody(CHAT.slice(20), true),
      );
      const [h, b] = await s.take(2);

      expect(fx.router.routed).toHaveLength(1);
      const req = fx.router.routed[0];
      expect(text(req?.body)).toBe(CHAT);
      expect(req?.path).toBe('/v1/chat/completions');
      expect(req?.method).toBe('POST');
      expect(req?.requestId).toBe('req-1');
      expect(req?.subset).toBeUndefined();
      expect(req?.headers.get('content-type')).toBe('application/json');

      const common = h?.request_headers?.response;
      expect(common?.clear_route_cache).toBe(true);
      expect(setHeadersOf(h)).toEqual({
        'x-gateway-destination-endpoint': '127.0.0.3:8000,127.0.0.4:8000',
        'content-length': '18',
        'x-dynamo-worker': '7',
      });
      for (const o of common?.header_mutation?.set_headers ?? []) {
        expect(o.append_action).toBe(2); // OVERWRITE_IF_EXISTS_OR_ADD
      }
      expect(common?.header_mutation?.remove_headers).toEqual(['x-secret-routing']);
      expect(destinationOf(h)).toBe('127.0.0.3:8000,127.0.0.4:8000');
      expect(streamedOf(b, 'request_body')).toEqual({
        body: '{"rewritten":true}',
        eos: true,
        bytes: 18,
      });
      s.cancel();
    });

    it('logs and reports at most 128 characters of a client x-request-id, passing the header on whole', async () => {
      fx.router.decide = () => {
        throw new KvEppError('invalid_request', 'nope');
      };
      const long = 'r'.repeat(100_000);
      const logged = fx.logger.records.length;
      const s = fx.client.open();
      s.send(reqHeaders({ ...baseHeaders, 'x-request-id': long }), reqBody(CHAT, true));
      await s.drain();
      expect(fx.router.routed[0]?.requestId).toBe(`${'r'.repeat(128)}…`);
      expect(fx.router.routed[0]?.headers.get('x-request-id')).toBe(long);
      const line = fx.logger.records.slice(logged).find((r) => r.msg === 'request rejected');
      expect(line?.fields.requestId).toBe(`${'r'.repeat(128)}…`);
    });

    it('generates x-request-id when absent and sets it on the request', async () => {
      const s = fx.client.open();
      const { 'x-request-id': _, ...noId } = baseHeaders;
      s.send(reqHeaders(noId), reqBody(CHAT, true));
      const [h] = await s.take(2);
      const id = fx.router.routed[0]?.requestId ?? '';
      expect(id).toMatch(/^[0-9a-f-]{36}$/);
      expect(fx.router.routed[0]?.headers.get('x-request-id')).toBe(id);
      expect(setHeadersOf(h)['x-request-id']).toBe(id);
      s.cancel();
    });

    it('answers a header-only request at once through routeHeaderOnly', async () => {
      fx.router.decideHeaderOnly = () => aDecision({ endpoints: ['127.0.0.5:8000'] });
      const s = fx.client.open();
      s.send(reqHeaders({ ':method': 'GET', ':path': '/v1/models' }, { eos: true }));
      const h = await s.next();
      expect(fx.router.routed).toHaveLength(0);
      expect(fx.router.headerOnly).toHaveLength(1);
      expect(fx.router.headerOnly[0]?.path).toBe('/v1/models');
      expect(fx.router.headerOnly[0]?.body.length).toBe(0);
      expect(setHeadersOf(h)['x-gateway-destination-endpoint']).toBe('127.0.0.5:8000');
      expect(setHeadersOf(h)['content-length']).toBeUndefined();
      expect(h.request_headers?.response?.clear_route_cache).toBe(true);
      expect(destinationOf(h)).toBe('127.0.0.5:8000');
      s.cancel();
    });

    it('re-chunks a large body into ≤62 000-byte streamed chunks, EoS on the last', async () => {
      const big = new Uint8Array(150_000).fill(0x61);
      fx.router.decide = () => aDecision({ body: big });
      const s = fx.client.open();
      s.send(
        reqHeaders({ ...baseHeaders, 'content-length': '150000' }),
        reqBody(big.subarray(0, 70_000), false),
        reqBody(big.subarray(70_000), true),
      );
      const [h, ...chunks] = await s.take(4);
      expect(fx.router.routed[0]?.body.length).toBe(150_000);
      expect(setHeadersOf(h)['content-length']).toBe('150000');
      expect(chunks.map((c) => streamedOf(c, 'request_body')?.bytes)).toEqual([
        62_000, 62_000, 26_000,
      ]);
      expect(chunks.map((c) => streamedOf(c, 'request_body')?.eos)).toEqual([false, false, true]);
      s.cancel();
    });

    it('sends one empty chunk with EoS for an empty body', async () => {
      fx.router.decide = () => aDecision({ body: new Uint8Array(0) });
      const s = fx.client.open();
      s.send(reqHeaders(baseHeaders), reqBody('', true));
      const [h, b] = await s.take(2);
      expect(setHeadersOf(h)['content-length']).toBe('0');
      expect(streamedOf(b, 'request_body')).toEqual({ body: '', eos: true, bytes: 0 });
      s.cancel();
    });

    it('ignores body chunks after the first EoS (Envoy duplicate EoS)', async () => {
      const s = fx.client.open();
      s.send(reqHeaders(baseHeaders), reqBody(CHAT, true), reqBody(CHAT, true));
      await s.take(2);
      // The next thing answered is the response phase: nothing was sent for the duplicate.
      s.send(respHeaders({ ':status': '200' }));
      const r = await s.next();
      expect(r.response_headers).toBeDefined();
      expect(fx.router.routed).toHaveLength(1);
      s.cancel();
    });

    it.each([
      ['a list', ['127.0.0.2:8000', '127.0.0.3'], ['127.0.0.2:8000', '127.0.0.3']],
      ['a comma string', '127.0.0.2:8000, 127.0.0.3', ['127.0.0.2:8000', '127.0.0.3']],
      ['an empty list', [], []],
    ])('passes the subset hint given as %s to the router', async (_n, hint, want) => {
      const s = fx.client.open();
      s.send(
        reqHeaders(baseHeaders, { metadata: subsetMetadata(hint) }),
        reqBody(CHAT, true, subsetMetadata(hint)),
      );
      await s.take(2);
      expect(fx.router.routed[0]?.subset).toEqual(want);
      s.cancel();
    });

    it('merges subset hints from every request-phase message', async () => {
      const s = fx.client.open();
      s.send(
        reqHeaders(baseHeaders, { metadata: subsetMetadata(['127.0.0.2:8000']) }),
        reqBody(CHAT.slice(0, 5), false),
        reqBody(CHAT.slice(5), true, subsetMetadata('127.0.0.3:8000,127.0.0.2:8000')),
      );
      await s.take(2);
      expect(fx.router.routed[0]?.subset).toEqual(['127.0.0.2:8000', '127.0.0.3:8000']);
      s.cancel();
    });

    it('treats request trailers as the end of the body and answers them after it', async () => {
      const s = fx.client.open();
      s.send(reqHeaders(baseHeaders), reqBody(CHAT, false), {
        request_trailers: { trailers: { headers: [] } },
      });
      const [h, b, t] = await s.take(3);
      expect(h?.request_headers).toBeDefined();
      expect(streamedOf(b, 'request_body')).toMatchObject({ body: CHAT, eos: false });
      expect(t?.request_trailers).toBeDefined();
      s.cancel();
    });
  });

  describe('errors', () => {
    it.each([
      ['invalid_json', 400, 'BadRequest'],
      ['invalid_request', 400, 'BadRequest'],
      ['unsupported_content', 400, 'BadRequest'],
      ['template_error', 400, 'BadRequest'],
      ['no_endpoint', 503, 'ServiceUnavailable'],
      ['overloaded', 429, 'ResourceExhausted'],
      ['body_too_large', 413, 'PayloadTooLarge'],
    ] as const)('%s → ImmediateResponse %i', async (code, status, category) => {
      fx.router.decide = () => {
        throw new KvEppError(code, `boom ${code}`);
      };
      const logged = fx.logger.records.length;
      const s = fx.client.open();
      s.send(reqHeaders(baseHeaders), reqBody(CHAT, true));
      const { responses, status: st } = await s.drain();
      // One info line naming the request, the status and why.
      expect(fx.logger.records.slice(logged)).toEqual([
        {
          level: 'info',
          msg: 'request rejected',
          fields: { requestId: 'req-1', status, err: `${category} - boom ${code}` },
        },
      ]);
      expect(st.code).toBe(GrpcStatus.OK);
      expect(responses).toHaveLength(1);
      const imm = responses[0]?.immediate_response;
      expect(imm?.status.code).toBe(status);
      expect(text(imm?.body)).toBe(`inference error: ${category} - boom ${code}`);
      const retry = imm?.headers?.set_headers?.find((h) => h.header.key === 'retry-after');
      expect(retry ? text(retry.header.raw_value) : undefined).toBe(
        status === 429 ? '1' : undefined,
      );
      expect(fx.router.completions).toHaveLength(0);
    });

    it('maps any other error to 500 with its name and message, and logs it', async () => {
      fx.router.decide = () => {
        throw new TypeError('x is not a function');
      };
      const logged = fx.logger.records.length;
      const s = fx.client.open();
      s.send(reqHeaders(baseHeaders), reqBody(CHAT, true));
      const { responses } = await s.drain();
      const imm = responses[0]?.immediate_response;
      expect(imm?.status.code).toBe(500);
      expect(text(imm?.body)).toBe('inference error: Internal - TypeError: x is not a function');
      // The record names the request by the id the gateway gave.
      const failed = fx.logger.records.slice(logged).filter((r) => r.msg === 'request failed');
      expect(failed).toEqual([
        {
          level: 'error',
          msg: 'request failed',
          fields: {
            requestId: 'req-1',
            status: 500,
            err: 'Internal - TypeError: x is not a function',
          },
        },
      ]);
    });

    it('logs a failed request under the x-request-id it generated when the gateway sent none', async () => {
      fx.router.decide = () => {
        throw new TypeError('x is not a function');
      };
      const logged = fx.logger.records.length;
      const s = fx.client.open();
      const { 'x-request-id': _, ...noId } = baseHeaders;
      s.send(reqHeaders(noId), reqBody(CHAT, true));
      await s.drain();
      const id = fx.router.routed[0]?.requestId ?? '';
      expect(id).toMatch(/^[0-9a-f-]{36}$/);
      const failed = fx.logger.records.slice(logged).filter((r) => r.msg === 'request failed');
      expect(failed.map((r) => [r.level, r.fields.requestId])).toEqual([['error', id]]);
    });

    it('maps a KvEppError with a non-request code to 500 naming the code', async () => {
      fx.router.decide = () => {
        throw new KvEppError('internal', 'index poisoned');
      };
      const s = fx.client.open();
      s.send(reqHeaders(baseHeaders), reqBody(CHAT, true));
      const { responses } = await s.drain();
      expect(text(responses[0]?.immediate_response?.body)).toBe(
        'inference error: Internal - KvEppError [internal]: index poisoned',
      );
    });

    it('maps a header-only routing failure the same way', async () => {
      fx.router.decideHeaderOnly = () => {
        throw new KvEppError('no_endpoint', 'no ready endpoint');
      };
      const s = fx.client.open();
      s.send(reqHeaders({ ':method': 'GET' }, { eos: true }));
      const { responses } = await s.drain();
      expect(responses[0]?.immediate_response?.status.code).toBe(503);
      expect(text(responses[0]?.immediate_response?.body)).toBe(
        'inference error: ServiceUnavailable - no ready endpoint',
      );
      expect(localRejects).toEqual([]); // the router's observer counts its own errors
    });

    it('answers 413 as soon as content-length exceeds the limit', async () => {
      const s = fx.client.open();
      s.send(reqHeaders({ ...baseHeaders, 'content-length': String(MAX_BODY + 1) }));
      const { responses, status } = await s.drain();
      expect(status.code).toBe(GrpcStatus.OK);
      expect(responses[0]?.immediate_response?.status.code).toBe(413);
      expect(text(responses[0]?.immediate_response?.body)).toBe(
        `inference error: PayloadTooLarge - request body of ${MAX_BODY + 1} bytes exceeds the limit of ${MAX_BODY} bytes`,
      );
      expect(fx.router.routed).toHaveLength(0);
      expect(localRejects).toEqual(['PayloadTooLarge']);
    });

    it('answers 413 when the chunks outgrow the limit', async () => {
      const s = fx.client.open();
      const half = new Uint8Array(MAX_BODY / 2 + 1);
      s.send(reqHeaders(baseHeaders), reqBody(half, false), reqBody(half, false));
      const { responses } = await s.drain();
      expect(responses).toHaveLength(1);
      expect(responses[0]?.immediate_response?.status.code).toBe(413);
      expect(fx.router.routed).toHaveLength(0);
      expect(localRejects).toEqual(['PayloadTooLarge']);
    });

    it('a 503 when the fx.router names no endpoint', async () => {
      fx.router.decide = () => aDecision({ endpoints: [] });
      const s = fx.client.open();
      s.send(reqHeaders(baseHeaders), reqBody(CHAT, true));
      const { responses } = await s.drain();
      expect(responses[0]?.immediate_response?.status.code).toBe(503);
    });
  });

  describe('protocol errors end the stream, not the server', () => {
    it('request body before request headers → INVALID_ARGUMENT; the fx.server keeps serving', async () => {
      const bad = fx.client.open();
      bad.send(reqBody(CHAT, true));
      const { responses, status } = await bad.drain();
      expect(responses).toHaveLength(0);
      expect(status.code).toBe(GrpcStatus.INVALID_ARGUMENT);
      expect(status.details).toBe('request_body before request_headers');
      expect(fx.logger.records.some((r) => r.level === 'warn')).toBe(true);

      const good = fx.client.open();
      good.send(reqHeaders(baseHeaders), reqBody(CHAT, true));
      const [h] = await good.take(2);
      expect(destinationOf(h)).toBe('127.0.0.2:8000');
      good.cancel();
    });

    it('request headers twice → INVALID_ARGUMENT', async () => {
      const s = fx.client.open();
      s.send(reqHeaders(baseHeaders), reqHeaders(baseHeaders));
      const { status } = await s.drain();
      expect(status.code).toBe(GrpcStatus.INVALID_ARGUMENT);
      expect(status.details).toBe('request_headers received twice');
    });

    it('a message with no request set → INVALID_ARGUMENT', async () => {
      const s = fx.client.open();
      s.send({});
      const { status } = await s.drain();
      expect(status.code).toBe(GrpcStatus.INVALID_ARGUMENT);
    });

    it('response headers while the request body is still open (a local reply) pass through', async () => {
      const s = fx.client.open();
      s.send(reqHeaders(baseHeaders), reqBody('{', false), respHeaders({ ':status': '413' }));
      const r = await s.next();
      expect(r.response_headers).toBeDefined();
      s.halfClose();
      const { status } = await s.drain();
      expect(status.code).toBe(GrpcStatus.OK);
    });

    it('undecodable bytes → an error status; the fx.server keeps serving', async () => {
      const bad = ExtProcClient.rawStream(fx.server.port, new Uint8Array([0x12, 0xff, 0xff, 0xff]));
      const { status } = await bad.drain();
      expect(status.code).not.toBe(GrpcStatus.OK);

      const good = fx.client.open();
      good.send(reqHeaders(baseHeaders, { eos: true }));
      expect(destinationOf(await good.next())).toBe('127.0.0.2:8000');
      good.cancel();
    });

    it('STREAMED request body mode is refused with UNIMPLEMENTED', async () => {
      const s = fx.client.open();
      s.send(
        reqHeaders(baseHeaders, {
          protocol: { request_body_mode: BodySendMode.STREAMED, response_body_mode: 0 },
        }),
      );
      const { status } = await s.drain();
      expect(status.code).toBe(GrpcStatus.UNIMPLEMENTED);
      expect(status.details).toMatch(/STREAMED is not supported/);
    });
  });

  describe('response path (full duplex)', () => {
    async function routed(decision = aDecision({ body: utf8(CHAT) })) {
      fx.router.decide = () => decision;
      const s = fx.client.open();
      s.send(reqHeaders(baseHeaders), reqBody(CHAT, true));
      await s.take(2);
      return s;
    }

    it('streams SSE chunks back at once and reads usage split across chunks', async () => {
      const s = await routed();
      s.send(
        respHeaders(
          { ':status': '200', 'content-type': 'text/event-stream; charset=utf-8' },
          {
            served: '127.0.0.2:8000',
          },
        ),
      );
      expect((await s.next()).response_headers?.response).toEqual({});

      const events = [
        'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n',
        'data: {"choices":[],"usage":{"prompt_to',
        'kens":12,"completion_tokens":3,"total_tokens":15}}\n\ndata: [DONE]\n\n',
      ];
      for (const e of events.slice(0, 2)) {
        s.send(respBody(e, false));
        // Each chunk comes back before the next is sent: no buffering.
        expect(streamedOf(await s.next(), 'response_body')).toEqual({
          body: e,
          eos: false,
          bytes: utf8(e).length,
        });
      }
      expect(fx.router.completions).toHaveLength(0);
      s.send(respBody(events[2] as string, true));
      expect(streamedOf(await s.next(), 'response_body')?.eos).toBe(true);

      const [c] = await fx.router.completed(1);
      expect(c?.summary).toEqual({
        requestId: 'req-1',
        servedEndpoint: '127.0.0.2:8000',
        status: 200,
        promptTokens: 12,
        completionTokens: 3,
        promptCachedTokens: undefined,
        responseBytes: events.reduce((n, e) => n + utf8(e).length, 0),
        responseComplete: true,
      });
      s.halfClose();
      expect((await s.drain()).status.code).toBe(GrpcStatus.OK);
      expect(fx.router.completions).toHaveLength(1);
    });

    it.each([
      ['without a content type', { ':status': '200' }],
      ['with its headers skipped', undefined],
    ])('streams an SSE body %s chunk by chunk, known by its first bytes', async (_n, headers) => {
      const s = await routed();
      if (headers) {
        s.send(respHeaders(headers));
        expect((await s.next()).response_headers?.response).toEqual({});
      }
      const events = [
        'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n',
        'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n',
      ];
      s.send(respBody(events[0] as string, false));
      // Back before the body ends: not held as a JSON body would be.
      expect(streamedOf(await s.next(), 'response_body')).toMatchObject({
        body: events[0],
        eos: false,
      });
      s.send(respBody(events[1] as string, true));
      expect(streamedOf(await s.next(), 'response_body')).toMatchObject({ eos: true });
      const [c] = await fx.router.completed(1);
      expect(c?.summary).toMatchObject({ promptTokens: 5, completionTokens: 2 });
      s.cancel();
    });

    it('waits for a field name cut by the first chunk, then streams what it held first', async () => {
      const s = await routed();
      s.send(respHeaders({ ':status': '200' }));
      await s.next();
      s.send(respBody('\nda', false));
      const rest = 'ta: {"n":1}\n\n';
      s.send(respBody(rest, false));
      // One answer with both chunks, before the end.
      expect(streamedOf(await s.next(), 'response_body')).toMatchObject({
        body: `\nda${rest}`,
        eos: false,
      });
      s.send(respBody('data: [DONE]\n\n', true));
      expect(streamedOf(await s.next(), 'response_body')).toMatchObject({ eos: true });
      s.cancel();
    });

    it.each([['application/x-ndjson'], ['text/plain; charset=utf-8']])(
      'streams a %s body chunk by chunk (only JSON is held), restoring the model',
      async (type) => {
        const s = await routed(
          aDecision({ body: utf8(CHAT), clientModel: 'my-model', targetModel: 'my-model-12345' }),
        );
        s.send(respHeaders({ ':status': '200', 'content-type': type }));
        await s.next();
        s.send(respBody('{"model":"my-model-12345","n":1}\n', false));
        expect(streamedOf(await s.next(), 'response_body')).toMatchObject({
          body: '{"model":"my-model","n":1}\n',
          eos: false,
        });
        s.send(respBody('{"n":2}\n', true));
        expect(streamedOf(await s.next(), 'response_body')).toMatchObject({
          body: '{"n":2}\n',
          eos: true,
        });
        s.cancel();
      },
    );

    it.each([['application/json; charset=utf-8'], ['application/problem+json']])(
      'holds a %s body to its end',
      async (type) => {
        const s = await routed();
        s.send(respHeaders({ ':status': '200', 'content-type': type }));
        await s.next();
        s.send(respBody('{"a":', false), respBody('1}', true));
        expect(streamedOf(await s.next(), 'response_body')).toMatchObject({
          body: '{"a":1}',
          eos: true,
        });
        s.cancel();
      },
    );

    it('holds a JSON body without a content type to its end', async () => {
      const s = await routed();
      s.send(respHeaders({ ':status': '200' }));
      await s.next();
      const parts = ['{"usage":{"prompt_tokens":3,', '"completion_tokens":1}}'];
      s.send(respBody(parts[0] as string, false));
      s.send(respBody(parts[1] as string, true));
      // One answer, the whole body, after the end.
      expect(streamedOf(await s.next(), 'response_body')).toMatchObject({
        body: parts.join(''),
        eos: true,
      });
      const [c] = await fx.router.completed(1);
      expect(c?.summary).toMatchObject({ promptTokens: 3, completionTokens: 1 });
      s.cancel();
    });

    it('restores the client model in SSE when a chunk cuts the name, holding back only the cut-off match', async () => {
      const s = await routed(
        aDecision({ body: utf8(CHAT), clientModel: 'my-model', targetModel: 'my-model-12345' }),
      );
      s.send(respHeaders({ ':status': '200', 'content-type': 'text/event-stream' }));
      await s.next();
      const first = 'data: {"model":"my-model-12345","n":1}\n\n';
      const second = 'data: {"model":"my-model-1';
      const rest = '2345","n":2}\n\ndata: [DONE]\n\n';
      s.send(respBody(first + second, false));
      // Everything before the cut-off name goes out at once, restored; the name waits.
      expect(streamedOf(await s.next(), 'response_body')).toMatchObject({
        body: 'data: {"model":"my-model","n":1}\n\ndata: {',
        eos: false,
      });
      s.send(respBody(rest, true));
      expect(streamedOf(await s.next(), 'response_body')).toMatchObject({
        body: '"model":"my-model","n":2}\n\ndata: [DONE]\n\n',
        eos: true,
      });
      s.cancel();
    });

    it('restores the fx.client model in a non-streaming body, sent after EoS', async () => {
      const s = await routed(
        aDecision({ body: utf8(CHAT), clientModel: 'my-model', targetModel: 'my-model-12345' }),
      );
      s.send(respHeaders({ ':status': '200', 'content-type': 'application/json' }));
      await s.next();
      const body =
        '{"id":"x","object":"chat.completion","model": "my-model-12345","usage":{"prompt_tokens":9,"completion_tokens":2}}';
      s.send(
        respBody(body.slice(0, 40), false),
        respBody(body.slice(40), false),
        respBody('', true),
      );
      const r = await s.next();
      expect(streamedOf(r, 'response_body')).toEqual({
        body: body.replace('"my-model-12345"', '"my-model"'),
        eos: true,
        bytes: body.length - 6,
      });
      const [c] = await fx.router.completed(1);
      expect(c?.summary).toMatchObject({ status: 200, promptTokens: 9, completionTokens: 2 });
      s.cancel();
    });

    it.runIf(transport === 'raw-h2')(
      'writes the answer that ends the response before the router completes',
      async () => {
        const s = await routed();
        s.send(respHeaders({ ':status': '200', 'content-type': 'application/json' }));
        await s.next();
        // raw-h2 writes through net.Socket; the gRPC client's writes are nghttp2's (native).
        const write = vi.spyOn(net.Socket.prototype, 'write');
        const complete = vi.spyOn(fx.router, 'complete');
        try {
          s.send(respBody('{"usage":{"prompt_tokens":9,"completion_tokens":2}}', true));
          await s.next();
          const [c] = await fx.router.completed(1);
          // The usage of the held body is still read, after the answer went out.
          expect(c?.summary).toMatchObject({ promptTokens: 9, completionTokens: 2 });
          const firstWrite = Math.min(...write.mock.invocationCallOrder);
          expect(complete.mock.invocationCallOrder).toHaveLength(1);
          expect(firstWrite).toBeLessThan(complete.mock.invocationCallOrder[0] as number);
        } finally {
          write.mockRestore();
          complete.mockRestore();
        }
        s.cancel();
      },
    );

    it('answers response trailers, flushing a body that had no EoS', async () => {
      const s = await routed();
      s.send(respHeaders({ ':status': '200', 'content-type': 'application/json' }));
      await s.next();
      s.send(respBody('{"a":', false), respBody('1}', false), respTrailers());
      const [b, t] = await s.take(2);
      expect(streamedOf(b, 'response_body')).toEqual({ body: '{"a":1}', eos: false, bytes: 7 });
      expect(t?.response_trailers).toEqual({});
      await fx.router.completed(1);
      s.cancel();
    });

    it.each([['application/json'], [undefined]])(
      'answers trailers after no body (content-type %s) with the trailers alone',
      async (type) => {
        // Envoy sent no response_body, so a body answer would be spurious (its 500).
        const s = await routed();
        const h: Record<string, string> = { ':status': '200' };
        if (type) h['content-type'] = type;
        s.send(respHeaders(h));
        await s.next();
        s.send(respTrailers());
        const t = await s.next();
        expect(t?.response_trailers).toEqual({});
        const [c] = await fx.router.completed(1);
        expect(c?.summary).toMatchObject({ status: 200, responseComplete: true });
        s.halfClose();
        const { responses } = await s.drain();
        expect(responses).toEqual([]);
      },
    );

    it('finishes on response headers with EoS', async () => {
      const s = await routed();
      s.send(respHeaders({ ':status': '204' }, { eos: true, served: '127.0.0.9:8000' }));
      await s.next();
      const [c] = await fx.router.completed(1);
      expect(c?.summary).toMatchObject({ status: 204, servedEndpoint: '127.0.0.9:8000' });
      s.cancel();
    });

    it('reads the served endpoint from any response-phase message', async () => {
      const s = await routed();
      s.send(respHeaders({ ':status': '200', 'content-type': 'application/json' }));
      await s.next();
      s.send({
        ...respBody('{}', true),
        metadata_context: { filter_metadata: servedMetadata('127.0.0.7:8000') },
      });
      await s.next();
      const [c] = await fx.router.completed(1);
      expect(c?.summary.servedEndpoint).toBe('127.0.0.7:8000');
      s.cancel();
    });

    it('calls complete once when the fx.client goes away mid-response', async () => {
      const s = await routed();
      s.send(respHeaders({ ':status': '200', 'content-type': 'text/event-stream' }));
      await s.next();
      s.cancel();
      const [c] = await fx.router.completed(1);
      expect(c?.summary).toEqual({
        requestId: 'req-1',
        servedEndpoint: undefined,
        status: 200,
        promptTokens: undefined,
        completionTokens: undefined,
        promptCachedTokens: undefined,
        responseBytes: 0,
        responseComplete: false,
      });
    });

    it('refuses a message holding more header entries than the codec decodes, on every transport', async () => {
      const headers = Object.fromEntries(
        Array.from({ length: MAX_DECODED_ENTRIES + 1 }, (_, i) => [`h${i}`, '']),
      );
      const s = fx.client.open();
      s.send(reqHeaders(headers));
      const { status } = await s.drain();
      expect(status.code).not.toBe(GrpcStatus.OK);
      expect(fx.router.routed).toHaveLength(0);
      expect(fx.router.headerOnly).toHaveLength(0);
    });

    it('fails a stream that keeps sending while its request is routed (RESOURCE_EXHAUSTED), and still completes', async () => {
      const { started, release } = fx.router.holdDecisions();
      const s = fx.client.open();
      s.send(reqHeaders(baseHeaders), reqBody(CHAT, true));
      await started;
      // A repeated EoS chunk waits for the router as usual...
      s.send(reqBody('', true));
      // ...but 5 MiB more (over max(maxBodyBytes 1 MiB, 4 MiB)) while routing is refused.
      const chunk = new Uint8Array(256 * 1024);
      for (let i = 0; i < 20; i++) s.send(respBody(chunk, false));
      const { status } = await s.drain();
      expect(status.code).toBe(GrpcStatus.RESOURCE_EXHAUSTED);
      expect(status.details).toMatch(
        /messages \(\d+ bytes\) sent while the request was being routed/,
      );
      // The routing work is cancelled too: its answer can no longer be sent.
      expect(fx.router.routed[0]?.cancel).toMatchObject({
        cancelled: true,
        reason: 'stream_failed',
      });
      release();
      const [c] = await fx.router.completed(1);
      expect(c?.summary.requestId).toBe('req-1');
    });

    it('calls complete once when the fx.client goes away while the fx.router works', async () => {
      const { started, release } = fx.router.holdDecisions();
      const s = fx.client.open();
      s.send(reqHeaders(baseHeaders), reqBody(CHAT, true));
      await started;
      s.cancel();
      await s.status;
      release();
      const [c] = await fx.router.completed(1);
      expect(c?.summary.requestId).toBe('req-1');
    });

    it('tells the router when the client goes away while it routes (its waiting work can be dropped)', async () => {
      let cancel: GatewayRequest['cancel'];
      const asked = new Promise<void>((seen) => {
        fx.router.decide = (req) =>
          new Promise<RouteDecision>((_resolve, reject) => {
            cancel = req.cancel;
            if (cancel) {
              cancel.onCancel = () =>
                reject(new KvEppError('cancelled', 'the gateway abandoned it'));
            }
            seen();
          });
      });
      const s = fx.client.open();
      s.send(reqHeaders(baseHeaders), reqBody(CHAT, true));
      await asked;
      expect(cancel?.cancelled).toBe(false);
      s.cancel();
      await s.status;
      await vi.waitFor(() => expect(cancel?.cancelled).toBe(true));
      expect(cancel?.reason).toBe('abandoned');
      // Nothing was decided, so nothing completes; the server goes on serving.
      fx.router.decide = (req) => aDecision({ body: req.body });
      const next = fx.client.open();
      next.send(reqHeaders(baseHeaders), reqBody(CHAT, true));
      const [h] = await next.take(1);
      expect(destinationOf(h)).toBe('127.0.0.2:8000');
      next.cancel();
      expect(fx.router.completions).toHaveLength(0);
    });

    it('leaves a request routed to the end uncancelled', async () => {
      const s = fx.client.open();
      s.send(reqHeaders(baseHeaders), reqBody(CHAT, true));
      await s.take(2);
      s.cancel();
      await s.status;
      expect(fx.router.routed[0]?.cancel?.cancelled).toBe(false);
    });
  });
});

describe('startsLikeSse', () => {
  const enc = new TextEncoder();
  it.each([
    ['data: {}', true],
    ['data:{}', true],
    ['data\n', true],
    ['\r\nevent: x', true],
    ['id: 1', true],
    ['retry: 5', true],
    [': comment', true],
    ['{"a":1}', false],
    ['datum: 1', false],
    ['dx', false],
    ['  data: x', false],
    ['', undefined],
    ['\n\n', undefined],
    ['da', undefined],
    ['retry', undefined],
    ['\nev', undefined],
  ])('%j → %s', (text, want) => {
    expect(startsLikeSse(enc.encode(text))).toBe(want);
  });
});
