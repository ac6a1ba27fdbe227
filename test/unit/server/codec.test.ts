/**
 * The hand-written ext_proc codec (src/server/ext-proc/codec.ts) against
 * proto-loader/protobufjs, which grpc-js uses: every response kv-epp sends
 * encodes to the same bytes, and every request decodes to the same object,
 * for fixed cases and seeded random messages.
 */
import type { MethodDefinition } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import {
  decodeRequest,
  encodeResponseFrame,
  encodeResponseFrameParts,
  MAX_DECODED_ENTRIES,
} from '../../../src/server/ext-proc/codec.js';
import type {
  HeaderMutation,
  ProcessingMode,
  ProcessingRequest,
  ProcessingResponse,
  ProtoStruct,
  ProtoValue,
} from '../../../src/server/ext-proc/messages.js';
import { destinationMetadata } from '../../../src/server/ext-proc/metadata.js';
import { loadServices } from '../../../src/server/ext-proc/proto.js';
import {
  reqBody,
  reqHeaders,
  respBody,
  respHeaders,
  respTrailers,
} from '../../support/ext-proc.js';

const method = loadServices().extProc.Process as MethodDefinition<
  ProcessingRequest,
  ProcessingResponse
>;
const enc = new TextEncoder();

/** A seeded PRNG (xorshift32), so failures reproduce. */
function rng(seed: number) {
  let x = seed >>> 0 || 1;
  const next = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)] as T;
  const str = () =>
    Array.from({ length: int(12) }, () =>
      pick(['a', 'Z', '-', '/', ' ', 'é', '中', '😀', '%', '"']),
    ).join('');
  const bytes = () => Uint8Array.from({ length: pick([0, 1, 5, 130, 70_000]) }, () => int(256));
  return { next, int, pick, str, bytes };
}

function randomValue(r: ReturnType<typeof rng>, depth: number): ProtoValue {
  switch (r.int(depth > 2 ? 4 : 6)) {
    case 0:
      return { nullValue: 0 };
    case 1:
      return { numberValue: r.pick([0, -1.5, 3e300, 42, Number.MIN_VALUE]) };
    case 2:
      return { stringValue: r.str() };
    case 3:
      return { boolValue: r.next() < 0.5 };
    case 4:
      return { structValue: randomStruct(r, depth + 1) };
    default:
      return {
        listValue: { values: Array.from({ length: r.int(3) }, () => randomValue(r, depth + 1)) },
      };
  }
}

function randomStruct(r: ReturnType<typeof rng>, depth = 0): ProtoStruct {
  const fields: Record<string, ProtoValue> = {};
  for (let i = r.int(3); i > 0; i--) fields[`${r.str()}${i}`] = randomValue(r, depth);
  return r.next() < 0.2 ? {} : { fields };
}

function randomMutation(r: ReturnType<typeof rng>): HeaderMutation {
  const m: HeaderMutation = {};
  if (r.next() < 0.8) {
    m.set_headers = Array.from({ length: r.int(4) }, () => ({
      header: { key: r.str(), raw_value: enc.encode(r.str()) },
      ...(r.next() < 0.3 ? { append_action: r.int(4) } : {}),
    }));
  }
  if (r.next() < 0.4) m.remove_headers = Array.from({ length: r.int(3) }, () => r.str());
  return m;
}

function randomResponse(r: ReturnType<typeof rng>): ProcessingResponse {
  const common = () => {
    const c: NonNullable<NonNullable<ProcessingResponse['request_headers']>['response']> = {};
    if (r.next() < 0.2) c.status = r.int(2);
    if (r.next() < 0.7) c.header_mutation = randomMutation(r);
    if (r.next() < 0.5) {
      c.body_mutation = r.pick([
        { body: r.bytes() },
        { clear_body: r.next() < 0.5 },
        { streamed_response: { body: r.bytes(), end_of_stream: r.next() < 0.5 } },
      ]);
    }
    if (r.next() < 0.5) c.clear_route_cache = r.next() < 0.8;
    return c;
  };
  const kind = r.int(7);
  const m: ProcessingResponse = {};
  if (kind === 0) m.request_headers = r.next() < 0.1 ? {} : { response: common() };
  if (kind === 1) m.response_headers = { response: common() };
  if (kind === 2) m.request_body = { response: common() };
  if (kind === 3) m.response_body = { response: common() };
  if (kind === 4) m.request_trailers = r.next() < 0.5 ? {} : { header_mutation: randomMutation(r) };
  if (kind === 5) m.response_trailers = {};
  if (kind === 6) {
    m.immediate_response = {
      status: { code: r.pick([400, 413, 429, 500, 503]) },
      ...(r.next() < 0.7 ? { headers: randomMutation(r) } : {}),
      ...(r.next() < 0.7 ? { body: r.bytes() } : {}),
      ...(r.next() < 0.7 ? { details: r.str() } : {}),
    };
  }
  if (r.next() < 0.5) m.dynamic_metadata = randomStruct(r);
  if (r.next() < 0.3) {
    const mode: ProcessingMode = {};
    const fields = [
      'request_header_mode',
      'response_header_mode',
      'request_body_mode',
      'response_body_mode',
      'request_trailer_mode',
      'response_trailer_mode',
    ] as const;
    for (const f of fields) if (r.next() < 0.5) mode[f] = r.int(6);
    m.mode_override = mode;
  }
  return m;
}

const reference = (m: ProcessingResponse): Buffer => Buffer.from(method.responseSerialize(m));

describe('encodeResponseFrame', () => {
  const fixed: Array<[string, ProcessingResponse]> = [
    [
      'routed headers + metadata',
      {
        request_headers: {
          response: {
            header_mutation: {
              set_headers: [
                {
                  header: {
                    key: 'x-gateway-destination-endpoint',
                    raw_value: enc.encode('127.0.0.2:8001'),
                  },
                },
                { header: { key: 'content-length', raw_value: enc.encode('4539') } },
              ],
              remove_headers: ['x-dynamo-worker-instance-id'],
            },
            clear_route_cache: true,
          },
        },
        dynamic_metadata: destinationMetadata('127.0.0.2:8001,127.0.0.3:8001'),
      },
    ],
    [
      'streamed body chunk',
      {
        request_body: {
          response: {
            body_mutation: {
              streamed_response: { body: new Uint8Array(62_000).fill(7), end_of_stream: true },
            },
          },
        },
      },
    ],
    ['empty answers', { response_headers: { response: {} } }],
    ['empty trailers', { response_trailers: {} }],
    [
      'immediate response',
      {
        immediate_response: {
          status: { code: 429 },
          headers: {
            set_headers: [{ header: { key: 'retry-after', raw_value: enc.encode('1') } }],
          },
          body: enc.encode('{"error":"busy — réessayez"}'),
          details: 'shed: queue full',
        },
      },
    ],
    ['negative enum', { request_headers: { response: { status: -1 } } }],
    [
      'response headers switching the body to STREAMED',
      {
        response_headers: { response: {} },
        mode_override: {
          response_header_mode: 1,
          response_body_mode: 1,
          response_trailer_mode: 1,
        },
      },
    ],
  ];
  for (const [name, m] of fixed) {
    it(`matches protobufjs: ${name}`, () => {
      const frame = encodeResponseFrame(m);
      expect(frame[0]).toBe(0);
      expect(frame.readUInt32BE(1)).toBe(frame.length - 5);
      expect(frame.subarray(5).equals(reference(m))).toBe(true);
    });
  }

  it("writes large body payloads as parts that reference the caller's bytes", () => {
    const chunk = new Uint8Array(62_000).fill(9);
    const m: ProcessingResponse = {
      request_body: {
        response: { body_mutation: { streamed_response: { body: chunk, end_of_stream: true } } },
      },
    };
    const parts = encodeResponseFrameParts(m);
    expect(parts).toHaveLength(3);
    expect(parts[1]?.buffer).toBe(chunk.buffer);
    expect(Buffer.concat(parts).subarray(5).equals(reference(m))).toBe(true);
    expect(Buffer.concat(parts).readUInt32BE(1)).toBe(reference(m).length);
    // A small body stays one buffer.
    expect(
      encodeResponseFrameParts({
        request_body: { response: { body_mutation: { body: chunk.subarray(0, 100) } } },
      }),
    ).toHaveLength(1);
  });

  it('matches protobufjs on 2000 random responses', () => {
    const r = rng(0xc0dec);
    for (let i = 0; i < 2000; i++) {
      const m = randomResponse(r);
      const mine = encodeResponseFrame(m).subarray(5);
      const theirs = reference(m);
      if (!mine.equals(theirs)) {
        expect({ i, m, mine: mine.toString('hex') }).toEqual({
          i,
          m,
          mine: theirs.toString('hex'),
        });
      }
    }
  });
});

/**
 * proto-loader's object without the fields codec.ts skips (`attributes`, and
 * the metadata namespaces other than `envoy.lb` and `envoy.lb.subset_hint`).
 */
function referenceDecode(bytes: Buffer): ProcessingRequest {
  const o = method.requestDeserialize(bytes) as ProcessingRequest & {
    attributes?: unknown;
  };
  delete o.attributes;
  const fm = o.metadata_context?.filter_metadata;
  if (fm) {
    for (const ns of Object.keys(fm)) {
      if (ns !== 'envoy.lb' && ns !== 'envoy.lb.subset_hint') delete fm[ns];
    }
    if (Object.keys(fm).length === 0) delete o.metadata_context?.filter_metadata;
  }
  for (const k of ['request_headers', 'response_headers'] as const) {
    const h = o[k] as { attributes?: unknown } | undefined;
    if (h) delete h.attributes;
  }
  return o;
}

function randomRequest(r: ReturnType<typeof rng>): ProcessingRequest {
  const headers = Object.fromEntries(
    Array.from({ length: r.int(5) }, (_, i) => [`${r.str()}${i}`, r.str()]),
  );
  const md =
    r.next() < 0.5
      ? {
          'envoy.lb.subset_hint': randomStruct(r),
          [r.str()]: randomStruct(r),
          ...(r.next() < 0.5 ? { 'envoy.lb': randomStruct(r) } : {}),
        }
      : undefined;
  let m: ProcessingRequest;
  switch (r.int(5)) {
    case 0:
      m = reqHeaders(headers, {
        eos: r.next() < 0.5,
        plainValue: r.next() < 0.5,
        ...(md ? { metadata: md } : {}),
        ...(r.next() < 0.5
          ? { protocol: { request_body_mode: r.int(6), response_body_mode: r.int(6) } }
          : {}),
      });
      if (m.protocol_config && r.next() < 0.5) {
        m.protocol_config.send_body_without_waiting_for_header_response = r.next() < 0.5;
      }
      break;
    case 1:
      m = reqBody(r.bytes().subarray(0, 300), r.next() < 0.5, md);
      break;
    case 2:
      m = respHeaders(headers);
      break;
    case 3:
      m = respBody(r.bytes().subarray(0, 300), r.next() < 0.5);
      if (md) m.metadata_context = { filter_metadata: md };
      break;
    default:
      m = respTrailers();
  }
  if (r.next() < 0.2) m.observability_mode = r.next() < 0.5;
  if (r.next() < 0.2)
    (m as { attributes?: unknown }).attributes = { 'envoy.filters': randomStruct(r) };
  return m;
}

describe('decodeRequest', () => {
  it('matches proto-loader on 1000 random requests (bytes are views, not copies)', () => {
    const r = rng(0xdec0de);
    for (let i = 0; i < 1000; i++) {
      const bytes = Buffer.from(method.requestSerialize(randomRequest(r)));
      expect(decodeRequest(bytes)).toEqual(referenceDecode(bytes));
    }
    const body = Buffer.from(method.requestSerialize(reqBody('hello', true)));
    expect(decodeRequest(body).request_body?.body?.buffer).toBe(body.buffer);
  });

  it('refuses a message that would decode into too many entries, and skips unread metadata undecoded', () => {
    const many = (n: number) => ({
      'envoy.lb.subset_hint': {
        fields: {
          x: { listValue: { values: Array.from({ length: n }, () => ({ stringValue: '' })) } },
        },
      },
    });
    const ok = Buffer.from(method.requestSerialize(reqHeaders({}, { metadata: many(100_000) })));
    expect(
      decodeRequest(ok).metadata_context?.filter_metadata?.['envoy.lb.subset_hint'],
    ).toBeDefined();
    const big = Buffer.from(
      method.requestSerialize(reqHeaders({}, { metadata: many(MAX_DECODED_ENTRIES) })),
    );
    expect(() => decodeRequest(big)).toThrow(RangeError);
    const headers = Object.fromEntries(
      Array.from({ length: MAX_DECODED_ENTRIES + 1 }, (_, i) => [`h${i}`, '']),
    );
    expect(() => decodeRequest(Buffer.from(method.requestSerialize(reqHeaders(headers))))).toThrow(
      /more than 200000 header entries and metadata values/,
    );
    // The same values under a namespace kv-epp does not read cost nothing to decode.
    const other = Buffer.from(
      method.requestSerialize(
        reqHeaders(
          {},
          { metadata: { 'some.filter': many(MAX_DECODED_ENTRIES)['envoy.lb.subset_hint'] } },
        ),
      ),
    );
    expect(decodeRequest(other).metadata_context).toEqual({});
    // The count starts again with each message.
    expect(decodeRequest(ok).request).toBe('request_headers');
  });

  it('keeps the last member of a oneof set twice, and skips unknown fields', () => {
    const two = Buffer.concat([
      Buffer.from(method.requestSerialize(reqHeaders({ a: 'b' }))),
      Buffer.from(method.requestSerialize(reqBody('x', true))),
      Buffer.from([0x98, 0x06, 0x01, 0xa2, 0x06, 0x02, 0x01, 0x02, 0xcd, 0x06, 1, 2, 3, 4]),
    ]);
    // protobufjs keeps the stale member too; the oneof name and the live member agree.
    const ref = referenceDecode(two);
    const mine = decodeRequest(two);
    expect([mine.request, ref.request]).toEqual(['request_body', 'request_body']);
    expect(mine.request_body).toEqual(ref.request_body);
    expect(mine.request_headers).toBeUndefined();
  });

  it('throws on every truncation of a message that cuts a field, and never hangs', () => {
    const full = Buffer.from(
      method.requestSerialize(
        reqHeaders(
          { ':path': '/v1/chat/completions', 'x-a': 'b' },
          { metadata: { 'envoy.lb': { fields: { k: { stringValue: 'v' } } } } },
        ),
      ),
    );
    let threw = 0;
    for (let cut = 1; cut < full.length; cut++) {
      try {
        decodeRequest(full.subarray(0, cut));
      } catch (e) {
        expect(e).toBeInstanceOf(RangeError);
        threw++;
      }
    }
    expect(threw).toBeGreaterThan(full.length / 2);
    expect(() => decodeRequest(Buffer.from([0x0b]))).toThrow(RangeError); // wire type 3 (group)
  });
});
