/** The pure pieces of the ext_proc layer: bodies, headers, metadata, usage, model rewrite, errors. */
import { describe, expect, it } from 'vitest';
import { KvEppError } from '../../../src/errors.js';
import { BODY_CHUNK_BYTES, BodyBuffer, splitBody } from '../../../src/server/ext-proc/body.js';
import { readHeaderMap, setHeader } from '../../../src/server/ext-proc/headers.js';
import { classifyError, immediateResponse } from '../../../src/server/ext-proc/immediate.js';
import { AppendAction } from '../../../src/server/ext-proc/messages.js';
import {
  MAX_SUBSET_HINT_ENTRIES,
  mergeSubsetHint,
  readServedEndpoint,
  readSubsetHint,
} from '../../../src/server/ext-proc/metadata.js';
import { ModelRewriter } from '../../../src/server/ext-proc/model-rewrite.js';
import { SseUsageParser, usageOf, usageOfJsonBody } from '../../../src/server/ext-proc/usage.js';
import { servedMetadata, subsetMetadata, text, utf8 } from '../../support/ext-proc.js';
import { mulberry32 } from '../../support/random.js';

describe('BodyBuffer', () => {
  it('keeps a single chunk without copying', () => {
    const chunk = utf8('hello');
    const b = new BodyBuffer(5);
    b.append(chunk);
    expect(b.bytes()).toBe(chunk);
  });

  it('joins chunks, growing past a wrong content-length', () => {
    const b = new BodyBuffer(4);
    for (const part of ['ab', '', 'cde', 'fghij']) b.append(utf8(part));
    expect(text(b.bytes())).toBe('abcdefghij');
    expect(b.length).toBe(10);
  });

  it('is empty before any chunk', () => {
    expect(new BodyBuffer().bytes().length).toBe(0);
  });
});

describe('splitBody', () => {
  it('pins the 62 000-byte chunk size (Envoy/gRPC 64 KiB limits)', () => {
    expect(BODY_CHUNK_BYTES).toBe(62_000);
  });

  it.each([
    [0, [0]],
    [62_000, [62_000]],
    [62_001, [62_000, 1]],
    [124_000, [62_000, 62_000]],
  ])('%i bytes → %j', (n, sizes) => {
    expect(splitBody(new Uint8Array(n)).map((p) => p.length)).toEqual(sizes);
  });
});

describe('readHeaderMap', () => {
  it('lower-cases keys, prefers raw_value, falls back to value, keeps the first of repeats', () => {
    const m = readHeaderMap({
      headers: [
        { key: 'Content-Type', value: 'application/json' },
        { key: 'x-a', raw_value: utf8('raw'), value: 'plain' },
        { key: 'X-A', value: 'second' },
        { key: '', value: 'no key' },
        { key: 'x-empty', raw_value: new Uint8Array(0), value: '' },
      ],
    });
    expect([...m]).toEqual([
      ['content-type', 'application/json'],
      ['x-a', 'raw'],
      ['x-empty', ''],
    ]);
  });
});

describe('setHeader', () => {
  it('lower-cases the key, overwrites, and writes the value as UTF-8 bytes', () => {
    const h = setHeader('X-Dynamo-Worker-Instance-Id', 'wörker 7');
    expect(h.header?.key).toBe('x-dynamo-worker-instance-id');
    expect(text(h.header?.raw_value)).toBe('wörker 7');
    expect(h.append_action).toBe(AppendAction.OVERWRITE_IF_EXISTS_OR_ADD);
  });

  it('shares the bytes of a repeated value, but not of a unique one', () => {
    const a = setHeader('x-gateway-destination-endpoint', '127.0.0.2:8001');
    const b = setHeader('x-gateway-destination-endpoint', '127.0.0.2:8001');
    expect(b.header?.raw_value).toBe(a.header?.raw_value);
    const c = setHeader('x-request-id', 'id-1', true);
    const d = setHeader('x-request-id', 'id-1', true);
    expect(d.header?.raw_value).not.toBe(c.header?.raw_value);
    expect(text(d.header?.raw_value)).toBe('id-1');
  });

  it('stays right past its bound (many distinct values)', () => {
    for (let i = 0; i < 10_000; i++) {
      expect(text(setHeader('content-length', String(i)).header?.raw_value)).toBe(String(i));
    }
    expect(text(setHeader('content-length', '42').header?.raw_value)).toBe('42');
  });
});

describe('subset hint and served endpoint metadata', () => {
  it('reads a list, a comma string, entries with commas, and absence', () => {
    expect(readSubsetHint({ filter_metadata: subsetMetadata(['a:1', 'b']) })).toEqual(['a:1', 'b']);
    expect(readSubsetHint({ filter_metadata: subsetMetadata(' a:1 ,b,, ') })).toEqual(['a:1', 'b']);
    expect(readSubsetHint({ filter_metadata: subsetMetadata(['a:1,b:2']) })).toEqual([
      'a:1',
      'b:2',
    ]);
    expect(readSubsetHint({ filter_metadata: subsetMetadata([]) })).toEqual([]);
    expect(readSubsetHint({ filter_metadata: {} })).toBeUndefined();
    expect(readSubsetHint(undefined)).toBeUndefined();
  });

  it('merges as a union in first-seen order; absent stays absent', () => {
    expect(mergeSubsetHint(undefined, undefined)).toBeUndefined();
    expect(mergeSubsetHint(['a'], undefined)).toEqual(['a']);
    expect(mergeSubsetHint(undefined, [])).toEqual([]);
    expect(mergeSubsetHint(['a', 'b'], ['b', 'c'])).toEqual(['a', 'b', 'c']);
    expect(mergeSubsetHint(['a', 'b', 'c'], ['a', 'b'])).toEqual(['a', 'b', 'c']);
    expect(mergeSubsetHint(['a', 'a'], ['a', 'b'])).toEqual(['a', 'a', 'b']);
  });

  it('keeps at most MAX_SUBSET_HINT_ENTRIES entries, read or merged', () => {
    const many = Array.from(
      { length: MAX_SUBSET_HINT_ENTRIES + 10 },
      (_, i) => `127.0.${i >> 8}.${i & 255}:8000`,
    );
    expect(readSubsetHint({ filter_metadata: subsetMetadata(many) })).toEqual(
      many.slice(0, MAX_SUBSET_HINT_ENTRIES),
    );
    expect(readSubsetHint({ filter_metadata: subsetMetadata(many.join(',')) })).toEqual(
      many.slice(0, MAX_SUBSET_HINT_ENTRIES),
    );
    const half = MAX_SUBSET_HINT_ENTRIES / 2;
    const merged = mergeSubsetHint(many.slice(0, half + 5), many.slice(half - 5));
    expect(merged).toEqual(many.slice(0, MAX_SUBSET_HINT_ENTRIES));
    // Envoy repeats one hint on every body chunk: the same list comes back.
    const hint = many.slice(0, 500);
    expect(mergeSubsetHint(hint, hint.slice())).toBe(hint);
  });

  it('reads the served endpoint', () => {
    expect(readServedEndpoint({ filter_metadata: servedMetadata('127.0.0.21:8000') })).toBe(
      '127.0.0.21:8000',
    );
    expect(readServedEndpoint({ filter_metadata: {} })).toBeUndefined();
  });
});

describe('SseUsageParser', () => {
  function parse(chunks: string[]) {
    const p = new SseUsageParser();
    for (const c of chunks) p.push(utf8(c));
    p.end();
    return p.usage;
  }

  it('reads usage from the last event that has it', () => {
    expect(
      parse([
        'data: {"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n',
        'data: {"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\ndata: [DONE]\n\n',
      ]),
    ).toEqual({ promptTokens: 5, completionTokens: 2 });
  });

  it('joins a data line split at any byte, including inside a UTF-8 character', () => {
    const line =
      'data: {"choices":[{"delta":{"content":"é"}}],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n';
    const bytes = utf8(line);
    for (const cut of [1, 10, 44, 45, 60, bytes.length - 1]) {
      const p = new SseUsageParser();
      p.push(bytes.subarray(0, cut));
      p.push(bytes.subarray(cut));
      p.end();
      expect(p.usage).toEqual({ promptTokens: 3, completionTokens: 4 });
    }
  });

  it('handles CRLF, no space after the colon, and a last line without newline', () => {
    expect(parse(['data:{"usage":{"prompt_tokens":8,"completion_tokens":1}}\r\n\r\n'])).toEqual({
      promptTokens: 8,
      completionTokens: 1,
    });
    expect(parse(['data: {"usage":{"prompt_tokens":8,"completion_tokens":9}}'])).toEqual({
      promptTokens: 8,
      completionTokens: 9,
    });
  });

  it('reads the Responses API completed event', () => {
    expect(
      parse([
        'event: response.completed\ndata: {"type":"response.completed","response":{"usage":{"input_tokens":11,"output_tokens":6}}}\n\n',
      ]),
    ).toEqual({ promptTokens: 11, completionTokens: 6 });
  });

  it('tolerates chunks that end without a newline before the next event (GAIE test data)', () => {
    expect(
      parse([
        'data: {}',
        'data: {"usage":{"prompt_tokens":7,"total_tokens":17,"completion_tokens":10}}\ndata: [DONE]',
        '',
      ]),
    ).toEqual({ promptTokens: 7, completionTokens: 10 });
  });

  it('ignores non-JSON and usage-free events', () => {
    expect(parse(['data: [DONE]\n', 'data: {not json_tokens\n', ': comment\n'])).toBeUndefined();
  });
});

describe('usageOfJsonBody', () => {
  it('reads chat/completions and Responses API usage', () => {
    expect(usageOfJsonBody(utf8('{"usage":{"prompt_tokens":3,"completion_tokens":4}}'))).toEqual({
      promptTokens: 3,
      completionTokens: 4,
    });
    expect(
      usageOfJsonBody(utf8('{"object":"response","usage":{"input_tokens":3,"output_tokens":4}}')),
    ).toEqual({
      promptTokens: 3,
      completionTokens: 4,
    });
  });

  it.each([
    [
      '{"usage":{"prompt_tokens":9,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":8}}}',
    ],
    ['{"usage":{"input_tokens":9,"output_tokens":1,"input_tokens_details":{"cached_tokens":8}}}'],
    [
      '{"usage":{"prompt_tokens":9,"completion_tokens":1,"prompt_token_details":{"cached_tokens":8}}}',
    ],
  ])('reads the cached prompt tokens of %s', (body) => {
    expect(usageOfJsonBody(utf8(body))).toEqual({
      promptTokens: 9,
      completionTokens: 1,
      cachedTokens: 8,
    });
  });

  it('is undefined for bodies without usage or not JSON', () => {
    expect(usageOfJsonBody(utf8('{"id":1}'))).toBeUndefined();
    expect(usageOfJsonBody(utf8('no healthy upstream'))).toBeUndefined();
    expect(usageOfJsonBody(new Uint8Array(0))).toBeUndefined();
  });

  describe('a body above 1 MiB: only its top-level usage near the end is parsed', () => {
    const pad = 'x'.repeat(1024 * 1024);
    const usage = { prompt_tokens: 5, total_tokens: 5 };
    const big = (doc: Record<string, unknown>) => utf8(JSON.stringify({ pad, ...doc }));

    it('finds the usage of a large embeddings answer, ignoring usage-looking text and nesting', () => {
      const embedding = Array.from({ length: 300_000 }, (_, i) => (i % 97) / 97);
      const body = utf8(
        JSON.stringify({ object: 'list', data: [{ embedding }], model: 'm', usage }),
      );
      expect(body.length).toBeGreaterThan(1024 * 1024);
      expect(usageOfJsonBody(body)).toEqual({ promptTokens: 5, completionTokens: undefined });
      // A string with the key in it, and a nested usage, are not the top-level member.
      expect(usageOfJsonBody(big({ note: '"usage":{"prompt_tokens":9}' }))).toBeUndefined();
      expect(usageOfJsonBody(big({ data: [{ usage }] }))).toBeUndefined();
      // A key that ends in `"usage` (an escaped quote) is not `usage`.
      expect(usageOfJsonBody(big({ 'x"usage': usage }))).toBeUndefined();
      expect(usageOfJsonBody(big({ usage, after: { k: [1, '}'] } }))).toEqual({
        promptTokens: 5,
        completionTokens: undefined,
      });
      // Usage further than 64 KiB from the end is not looked for.
      expect(usageOfJsonBody(utf8(JSON.stringify({ usage, pad })))).toBeUndefined();
    });

    it('agrees with parsing the whole body, on random documents', () => {
      const rand = mulberry32(0x5eed);
      const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
      const tricky = ['"usage":', '\\', '\\"', '}', ']', '{', 'usage', '"', 'x"usage'];
      const value = (depth: number): unknown => {
        const r = rand();
        if (depth > 2 || r < 0.3) return pick([1, -0.5, true, null, pick(tricky), 'plain']);
        if (r < 0.5) return Array.from({ length: Math.floor(rand() * 3) }, () => value(depth + 1));
        if (r < 0.7)
          return { usage: { prompt_tokens: Math.floor(rand() * 9) }, x: value(depth + 1) };
        return { [pick(['a', 'usage', 'b', 'x"usage'])]: value(depth + 1) };
      };
      for (let n = 0; n < 300; n++) {
        const members: Array<[string, unknown]> = [['pad', pad]];
        for (let m = Math.floor(rand() * 4); m > 0; m--) {
          const key = pick(['usage', 'data', 'model', 'usage', 'x"usage']);
          const v =
            key === 'usage' && rand() < 0.7
              ? { prompt_tokens: Math.floor(rand() * 99), completion_tokens: 1 }
              : value(0);
          members.push([key, v]);
        }
        // Repeated keys kept as written (JSON.stringify of an object would merge them).
        const text = `{${members.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',')}}`;
        const body = utf8(text);
        expect(usageOfJsonBody(body), text.slice(pad.length + 10)).toEqual(
          usageOf(JSON.parse(text)),
        );
      }
    });
  });
});

describe('ModelRewriter', () => {
  it('restores the client name whatever the spacing, and only in "model" fields', () => {
    const r = new ModelRewriter('target/x', 'alias');
    const body = '{"model" : "target/x","note":"target/x","choices":[{"model":"target/x"}]}';
    expect(text(r.rewrite(utf8(body)))).toBe(
      '{"model" : "alias","note":"target/x","choices":[{"model":"alias"}]}',
    );
  });

  it('escapes names for JSON and regex, and leaves other bodies untouched (same object)', () => {
    const r = new ModelRewriter('a.b"c', 'c$1"d');
    const body = utf8(`{"model":${JSON.stringify('a.b"c')}}`);
    expect(text(r.rewrite(body))).toBe(`{"model":${JSON.stringify('c$1"d')}}`);
    const other = utf8('{"model":"aXb"}');
    expect(r.rewrite(other)).toBe(other);
  });

  it('is only made when the names differ', () => {
    expect(ModelRewriter.forDecision({})).toBeUndefined();
    expect(ModelRewriter.forDecision({ clientModel: 'a', targetModel: 'a' })).toBeUndefined();
    expect(ModelRewriter.forDecision({ clientModel: 'a', targetModel: 'b' })).toBeDefined();
  });

  it('works on bytes: a chunk cut inside a multi-byte character keeps its bytes', () => {
    const r = new ModelRewriter('tgt', 'client');
    const whole = utf8('data: {"model":"tgt","c":"你好"}\n\n');
    const cut = whole.length - 6; // inside 好
    const out = Buffer.concat([r.rewrite(whole.subarray(0, cut)), r.rewrite(whole.subarray(cut))]);
    expect(text(out)).toBe('data: {"model":"client","c":"你好"}\n\n');
    expect(text(r.rewrite(utf8('{"model"\n :\t"tgt","x":"model:tgt","y":{"model": "tgt"}}')))).toBe(
      '{"model"\n :\t"client","x":"model:tgt","y":{"model": "client"}}',
    );
  });

  it('finds where a chunk cuts a match off, and nothing else', () => {
    const r = new ModelRewriter('m-1', 'alias');
    const cut = (s: string) => r.cutMatchStart(utf8(s), 64);
    for (const tail of ['"', '"mo', '"model"', '"model" ', '"model" :', '"model": "m-']) {
      expect(cut(`data: {"n":1} ${tail}`), tail).toBe(14);
    }
    // Complete matches, other keys and other values are not held.
    expect(cut('{"model":"m-1"}')).toBe(15);
    expect(cut('{"usage":{"prompt_tokens":1}}')).toBe(29);
    expect(cut('{"model":"other')).toBe(15);
    expect(cut('{"mode":"x')).toBe(10);
    // Only the window is searched.
    expect(r.cutMatchStart(utf8(`"mo${'x'.repeat(10)}`), 4)).toBe(13);
    // Split at every byte, the restore equals the whole body's.
    const body = 'data: {"model" : "m-1","x":"m-1"}\n\ndata: {"model":"m-1"}\n\n';
    const whole = text(r.rewrite(utf8(body)));
    for (let i = 0; i <= body.length; i++) {
      const first = utf8(body.slice(0, i));
      const at = r.cutMatchStart(first, 64);
      const out =
        text(r.rewrite(first.subarray(0, at))) +
        text(r.rewrite(utf8(body.slice(0, i).slice(at) + body.slice(i))));
      expect(out, `split at ${i}`).toBe(whole);
    }
  });
});

describe('error mapping', () => {
  it('classifies KvEppErrors and anything else', () => {
    expect(classifyError(new KvEppError('template_error', 't'))).toEqual({
      status: 400,
      category: 'BadRequest',
      text: 'BadRequest - t',
      internal: false,
    });
    expect(classifyError('weird').text).toBe('Internal - weird');
    expect(classifyError(new RangeError('r'))).toMatchObject({ status: 500, internal: true });
  });

  it('adds retry-after only to 429', () => {
    const opts = { retryAfterSeconds: 3 };
    const busy = immediateResponse(classifyError(new KvEppError('overloaded', 'o')), opts);
    expect(busy.headers?.set_headers?.map((h) => [h.header.key, text(h.header.raw_value)])).toEqual(
      [['retry-after', '3']],
    );
    const bad = immediateResponse(classifyError(new KvEppError('invalid_json', 'j')), opts);
    expect(bad.headers).toBeUndefined();
    expect(text(bad.body)).toBe('inference error: BadRequest - j');
  });
});
