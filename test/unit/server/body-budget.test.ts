/**
 * The server-wide budget of buffered body bytes: what it counts, and what the
 * ext_proc streams do when it is spent (request → 429, held response → passed
 * through unheld), on every transport with a real gRPC client.
 */
import { status as GrpcStatus } from '@grpc/grpc-js';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { BodyBuffer } from '../../../src/server/ext-proc/body.js';
import { BodyBudget, bodyBudgetBytes } from '../../../src/server/ext-proc/body-budget.js';
import { ExtProcStream, type StreamSink } from '../../../src/server/ext-proc/stream.js';
import {
  aDecision,
  ExtProcFixture,
  FakeRouter,
  RecordingLogger,
  reqBody,
  reqHeaders,
  respBody,
  respHeaders,
  streamedOf,
  TRANSPORTS,
  text,
  utf8,
} from '../../support/ext-proc.js';

const headers = (extra: Record<string, string> = {}) =>
  reqHeaders({
    ':method': 'POST',
    ':path': '/v1/chat/completions',
    'content-type': 'application/json',
    'x-request-id': 'req-b',
    ...extra,
  });

/** An ExtProcStream with no transport (messages in by hand), on `budget`. */
function bareStream(
  budget: BodyBudget,
  sink: StreamSink = { send: () => {}, end: () => {}, fail: () => {} },
): ExtProcStream {
  return new ExtProcStream(sink, {
    router: new FakeRouter(),
    logger: new RecordingLogger(),
    maxBodyBytes: 1000,
    retryAfterSeconds: 1,
    maxResponseBufferBytes: 100_000,
    bodyBudget: budget,
  });
}

describe('BodyBudget and BodyBuffer', () => {
  it('counts what a buffer pins (its capacity), and gives it back once', () => {
    const budget = new BodyBudget(1000);
    const b = new BodyBuffer(0, budget);
    expect(b.append(new Uint8Array(100))).toBe(true);
    expect(budget.held).toBe(100);
    expect(b.append(new Uint8Array(50))).toBe(true); // copied into 300 (double what arrived)
    expect(budget.held).toBe(300);
    expect(b.append(new Uint8Array(10))).toBe(true); // fits
    expect(budget.held).toBe(300);
    expect(b.length).toBe(160);
    b.release();
    b.release();
    expect(budget.held).toBe(0);
  });

  it('grows by doubling what arrived, capped at the declared length, never reserving it', () => {
    const budget = new BodyBudget(1000);
    const b = new BodyBuffer(100, budget);
    b.append(new Uint8Array(10));
    b.append(new Uint8Array(10));
    expect(budget.held).toBe(40);
    b.append(new Uint8Array(30)); // 50: doubled to 80
    expect(budget.held).toBe(80);
    b.append(new Uint8Array(40)); // 90: doubled to 160, capped at the declared 100
    expect(budget.held).toBe(100);
    b.append(new Uint8Array(10));
    expect(budget.held).toBe(100);
    // More than declared: grows past it as needed.
    b.append(new Uint8Array(1));
    expect(budget.held).toBe(200);
    expect(b.length).toBe(101);
  });

  it('refuses a chunk that does not fit, leaving the buffer as it was', () => {
    const budget = new BodyBudget(100);
    const b = new BodyBuffer(0, budget);
    expect(b.append(utf8('abcdefghij'))).toBe(true);
    expect(b.append(new Uint8Array(95))).toBe(false);
    expect(text(b.bytes())).toBe('abcdefghij');
    expect(budget.held).toBe(10);
    // Growth falls back from doubling to exactly what is needed.
    expect(b.append(new Uint8Array(85))).toBe(true);
    expect(b.length).toBe(95);
    expect(budget.held).toBe(95);
  });

  it('a stream whose connection is lost mid-body gives its share back (no transport)', () => {
    const own = new BodyBudget(1000);
    const sent: unknown[] = [];
    const stream = bareStream(own, {
      send: (m) => sent.push(m),
      end: () => sent.push('end'),
      fail: (code, message) => sent.push({ code, message }),
    });
    // Decoded messages name their oneof case (as the codec and grpc-js give them).
    stream.onMessage({ ...headers(), request: 'request_headers' });
    stream.onMessage({ ...reqBody(new Uint8Array(300), false), request: 'request_body' });
    expect(own.held).toBe(300);
    stream.onCancel();
    expect(own.held).toBe(0);
    expect(sent).toEqual([]);
  });

  it('a response-only stream (no decision) gives a held body back however it ends', () => {
    const own = new BodyBudget(10_000);
    const ended: Array<(st: ExtProcStream) => void> = [
      (st) => st.onCancel(),
      (st) => st.onHalfClose(),
      // A second response_headers is a protocol violation.
      (st) => st.onMessage({ ...respHeaders({ ':status': '200' }), request: 'response_headers' }),
    ];
    for (const end of ended) {
      const stream = bareStream(own);
      stream.onMessage({
        ...respHeaders({ ':status': '200', 'content-type': 'application/json' }),
        request: 'response_headers',
      });
      stream.onMessage({ ...respBody(new Uint8Array(300), false), request: 'response_body' });
      stream.onMessage({ ...respBody(new Uint8Array(300), false), request: 'response_body' });
      expect(own.held).toBeGreaterThan(0);
      end(stream);
      expect(own.held).toBe(0);
    }
  });

  it('holds nothing for a body message after the response ended (STREAMED mode)', () => {
    const own = new BodyBudget(10_000);
    const stream = bareStream(own);
    const streamed = { request_body_mode: 0, response_body_mode: 1 };
    stream.onMessage({
      ...respHeaders({ ':status': '200', 'content-type': 'application/json' }),
      protocol_config: streamed,
      request: 'response_headers',
    });
    stream.onMessage({ ...respBody('{"a":1}', true), request: 'response_body' });
    stream.onMessage({ ...respBody(new Uint8Array(500), false), request: 'response_body' });
    expect(own.held).toBe(0);
    stream.onCancel();
    expect(own.held).toBe(0);
  });

  it('defaults to 1 GiB, or one largest body when that is more', () => {
    expect(bodyBudgetBytes(64 * 1024 * 1024)).toBe(1024 * 1024 * 1024);
    expect(bodyBudgetBytes(2 ** 31 - 1)).toBe(2 ** 31 - 1);
  });
});

const MAX_BODY = 32 * 1024;
const LIMIT = 72 * 1024;
const budget = new BodyBudget(LIMIT);
const localRejects: string[] = [];

/** Waits until the server has taken `bytes` from the budget (it answers nothing while a body buffers). */
async function heldReaches(bytes: number): Promise<void> {
  await vi.waitFor(() => expect(budget.held).toBe(bytes), { timeout: 10_000, interval: 5 });
}

describe.each(TRANSPORTS)('%s transport', (transport) => {
  const fx = ExtProcFixture.forSuite(transport, {
    maxBodyBytes: MAX_BODY,
    bodyBudget: budget,
    onLocalReject: (c) => localRejects.push(c),
  });

  beforeEach(async () => {
    localRejects.length = 0;
    // Every stream of the previous test has ended and given its share back.
    await heldReaches(0);
  });

  it('answers 429 with retry-after when other streams hold the budget, and routes once they finish', async () => {
    const a = fx.client.open();
    a.send(headers(), reqBody(new Uint8Array(30_000), false));
    await heldReaches(30_000);
    const b = fx.client.open();
    b.send(headers(), reqBody(new Uint8Array(30_000), false));
    await heldReaches(60_000);

    // 60 000 held: 20 000 more would pass the 73 728-byte limit.
    const c = fx.client.open();
    c.send(headers(), reqBody(new Uint8Array(20_000), false));
    const { responses, status } = await c.drain();
    expect(status.code).toBe(GrpcStatus.OK);
    const imm = responses[0]?.immediate_response;
    expect(imm?.status.code).toBe(429);
    expect(text(imm?.body)).toBe(
      `inference error: ResourceExhausted - request bodies being buffered have reached the server's limit of ${LIMIT} bytes; retry later`,
    );
    const retry = imm?.headers?.set_headers?.find((h) => h.header.key === 'retry-after');
    expect(retry && text(retry.header.raw_value)).toBe('1');
    expect(localRejects).toEqual(['ResourceExhausted']);
    expect(fx.logger.records.at(-1)).toMatchObject({ level: 'info', msg: 'request rejected' });

    // a's second chunk needs a buffer of 30 002 bytes: 60 002 held, under the limit.
    a.send(reqBody(utf8('{}'), true));
    const [ah, ab] = await a.take(2);
    expect(ah?.request_headers).toBeDefined();
    expect(streamedOf(ab, 'request_body')?.bytes).toBe(30_002);
    // Routed and answered: a's share is back, b's is still held.
    await heldReaches(30_000);
    b.cancel();
    await heldReaches(0);
    a.cancel();
    expect(fx.router.routed).toHaveLength(1);
  });

  it('does not let a declared content-length reserve what was never sent', async () => {
    // Streams that declare the largest body and send two bytes hold four bytes each.
    const declared = { 'content-length': String(MAX_BODY) };
    const streams = [fx.client.open(), fx.client.open(), fx.client.open()];
    let held = 0;
    for (const s of streams) {
      s.send(headers(declared), reqBody(utf8('{'), false), reqBody(utf8('}'), false));
      held += 4;
      await heldReaches(held);
    }
    // Another request is routed as usual.
    const other = fx.client.open();
    other.send(headers(), reqBody(new Uint8Array(30_000), true));
    const [h] = await other.take(2);
    expect(h?.request_headers).toBeDefined();
    for (const s of [...streams, other]) s.cancel();
    await heldReaches(0);
  });

  it('gives a stream share back when the client goes away mid-body', async () => {
    const s = fx.client.open();
    s.send(headers(), reqBody(new Uint8Array(20_000), false));
    await heldReaches(20_000);
    s.cancel();
    await heldReaches(0);
    expect(fx.router.routed).toHaveLength(0);
  });

  it('passes a JSON response through unheld while the budget is spent', async () => {
    fx.router.decide = (req) => aDecision({ body: req.body });
    const s = fx.client.open();
    s.send(headers(), reqBody(utf8('{"model":"m"}'), true));
    await s.take(2);
    // Another stream holds the whole budget: the response has no room to be held.
    const hog = fx.client.open();
    hog.send(headers(), reqBody(new Uint8Array(MAX_BODY), false));
    await heldReaches(MAX_BODY);
    const hog2 = fx.client.open();
    hog2.send(headers(), reqBody(new Uint8Array(MAX_BODY), false));
    await heldReaches(2 * MAX_BODY);
    const hog3 = fx.client.open();
    hog3.send(headers(), reqBody(new Uint8Array(LIMIT - 2 * MAX_BODY), false));
    await heldReaches(LIMIT);

    s.send(respHeaders({ ':status': '200', 'content-type': 'application/json' }));
    expect((await s.next()).response_headers).toBeDefined();
    // Held, this first chunk would not be answered before the body ends.
    s.send(respBody('{"id":"x",', false));
    expect(streamedOf(await s.next(), 'response_body')).toEqual({
      body: '{"id":"x",',
      eos: false,
      bytes: 10,
    });
    s.send(respBody('"usage":null}', true));
    expect(streamedOf(await s.next(), 'response_body')).toMatchObject({
      body: '"usage":null}',
      eos: true,
    });
    for (const h of [hog, hog2, hog3]) h.cancel();
    await heldReaches(0);
    s.cancel();
  });

  it('holds a JSON response when there is room, and gives it back at its end', async () => {
    const s = fx.client.open();
    s.send(headers(), reqBody(utf8('{"model":"m"}'), true));
    await s.take(2);
    s.send(respHeaders({ ':status': '200', 'content-type': 'application/json' }));
    await s.next();
    s.send(respBody('{"id":"x",', false));
    await heldReaches(10);
    s.send(respBody('"usage":null}', true));
    expect(streamedOf(await s.next(), 'response_body')).toMatchObject({
      body: '{"id":"x","usage":null}',
      eos: true,
    });
    await heldReaches(0);
    s.cancel();
  });
});

describe.each(TRANSPORTS)('%s transport, a JSON response past the hold limit', (transport) => {
  const fx = ExtProcFixture.forSuite(transport, {
    maxBodyBytes: MAX_BODY,
    maxResponseBufferBytes: 16,
  });

  it("passes the rest through with the client's model name restored, even cut by a chunk's end", async () => {
    fx.router.decide = (req) =>
      aDecision({ body: req.body, clientModel: 'my-model', targetModel: 'my-model-12345' });
    const s = fx.client.open();
    s.send(headers(), reqBody(utf8('{"model":"m"}'), true));
    await s.take(2);
    s.send(respHeaders({ ':status': '200', 'content-type': 'application/json' }));
    await s.next();
    // 30 bytes: past the 16-byte hold limit, cut inside the served model's name.
    s.send(respBody('{"id":"x","object":"y","model":"my-mod', false));
    const first = streamedOf(await s.next(), 'response_body');
    s.send(respBody('el-12345","usage":null}', true));
    const second = streamedOf(await s.next(), 'response_body');
    expect(`${first?.body}${second?.body}`).toBe(
      '{"id":"x","object":"y","model":"my-model","usage":null}',
    );
    expect(second?.eos).toBe(true);
    s.cancel();
  });
});
