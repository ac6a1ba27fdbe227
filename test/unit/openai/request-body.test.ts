import { describe, expect, it } from 'vitest';
import {
  apiOfBody,
  apiOfPath,
  idsJsonBytes,
  modelOfBody,
  spliceRequestBody,
} from '../../../src/openai/request-body.js';

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);
const ids = Uint32Array.of(1, 2, 4294967295);

describe('apiOfPath', () => {
  it.each([
    ['/v1/chat/completions', 'chat'],
    ['/v1/completions?x=1', 'completions'],
    ['/openai/v1/responses', 'responses'],
    ['/v1/embeddings', 'embeddings'],
    ['/v1/models', undefined],
  ])('%s → %s', (p, api) => expect(apiOfPath(p)).toBe(api));
});

describe('apiOfBody', () => {
  it.each([
    ['{"model":"m","messages":[]}', 'chat'],
    [' {"prompt":"x","model":"m"}', 'completions'],
    ['{"model":"m","input":"x"}', undefined],
    ['{"model":"m","messages":[', 'chat'], // the tokenizer answers its 400
    ['{"model":', undefined],
    ['[1]', undefined],
    ['', undefined],
    ['{"a":"\\"messages\\""}', undefined],
  ])('%s → %s', (b, api) => expect(apiOfBody(enc(b))).toBe(api));
});

describe('modelOfBody', () => {
  it('reads the last top-level model past strings with escapes and large values', () => {
    const image = 'A'.repeat(200_000);
    const body = JSON.stringify({
      a: 'q\\"model\\":\\"no\\\\',
      messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: image } }] }],
      model: 'first',
      b: { model: 'nested' },
      model2: 'x',
    }).replace('"model2"', '"model"');
    expect(modelOfBody(enc(body))).toBe('x');
    expect(modelOfBody(enc('{"model":"m","x":"\\\\"}'))).toBe('m');
  });

  it.each([
    ['{"messages":[]}', 'invalid_request'],
    ['{"model":""}', 'invalid_request'],
    ['{"model":1}', 'invalid_request'],
    ['[1]', 'invalid_json'],
    ['{"model":"m', 'invalid_json'],
  ])('%s → %s', (b, code) => {
    expect(() => modelOfBody(enc(b))).toThrow(expect.objectContaining({ code }));
  });
});

describe('spliceRequestBody', () => {
  it('appends nvext.token_data keeping every other byte', () => {
    const body =
      '{"model":"m", "temperature":1.0,"seed":12345678901234567890,"messages":[{"role":"user","content":"a}\\"{"}]}';
    const out = dec(spliceRequestBody(enc(body), { tokenData: ids }));
    expect(out).toBe(`${body.slice(0, -1)},"nvext":{"token_data":[1,2,4294967295]}}`);
  });

  it('adds token_data inside an existing nvext and replaces an old one', () => {
    expect(dec(spliceRequestBody(enc('{"nvext":{"cache_salt":"t"}}'), { tokenData: ids }))).toBe(
      '{"nvext":{"cache_salt":"t","token_data":[1,2,4294967295]}}',
    );
    expect(dec(spliceRequestBody(enc('{"nvext":{}}'), { tokenData: ids }))).toBe(
      '{"nvext":{"token_data":[1,2,4294967295]}}',
    );
    expect(
      dec(
        spliceRequestBody(enc('{ "nvext" : { "token_data" : [9, 9] , "x":1 } }'), {
          tokenData: ids,
        }),
      ),
    ).toBe('{ "nvext" : { "token_data" : [1,2,4294967295] , "x":1 } }');
  });

  it('rewrites the model and splices both at once', () => {
    const out = dec(
      spliceRequestBody(enc('{"model":"client","prompt":"hi"}'), {
        model: 'target',
        tokenData: ids,
      }),
    );
    expect(out).toBe('{"model":"target","prompt":"hi","nvext":{"token_data":[1,2,4294967295]}}');
    expect(JSON.parse(out).model).toBe('target');
  });

  it('handles an empty object and whitespace', () => {
    expect(dec(spliceRequestBody(enc(' { } '), { tokenData: Uint32Array.of(7) }))).toBe(
      ' { "nvext":{"token_data":[7]}} ',
    );
  });

  it('edits the last of a repeated key, the one JSON.parse and the worker keep', () => {
    const body =
      '{"model":"a","nvext":{"k":1},"model":"dup","nvext":{"token_data":[7],"token_data":[8]}}';
    const out = dec(spliceRequestBody(enc(body), { model: 'target', tokenData: ids }));
    expect(out).toBe(
      '{"model":"a","nvext":{"k":1},"model":"target","nvext":{"token_data":[7],"token_data":[1,2,4294967295]}}',
    );
    const seen = JSON.parse(out);
    expect(seen.model).toBe('target');
    expect(seen.nvext.token_data).toEqual([1, 2, 4294967295]);
  });

  it('always yields valid JSON for varied bodies', () => {
    const bodies = [
      '{"a":"\\\\","nvext":null}',
      '{"a":[{"b":"}]"}],"nvext":{"nested":{"token_data":1}}}',
      '{"model":"m","nvext":{"token_data":[],"cache_salt":"s"}}',
    ];
    for (const b of bodies) {
      const out = JSON.parse(dec(spliceRequestBody(enc(b), { model: 'z', tokenData: ids })));
      expect(out.nvext.token_data).toEqual([1, 2, 4294967295]);
      expect(out.model).toBe('z');
    }
  });
});

describe('idsJsonBytes', () => {
  it('writes the same text as JSON.stringify for edge values', () => {
    const cases = [
      [],
      [0],
      [9, 10, 11, 99, 100, 101],
      [4294967295, 0, 1000000000, 999999999, 151643],
    ];
    for (const c of cases) {
      const bytes = idsJsonBytes(Uint32Array.from(c));
      expect(new TextDecoder().decode(bytes)).toBe(JSON.stringify(c));
    }
  });

  it('agrees with JSON.stringify on random ids', () => {
    let seed = 12345;
    const next = () => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed;
    };
    const ids = Uint32Array.from({ length: 5000 }, (_, i) =>
      i % 3 === 0 ? next() : next() % 200000,
    );
    expect(new TextDecoder().decode(idsJsonBytes(ids))).toBe(JSON.stringify(Array.from(ids)));
  });
});
