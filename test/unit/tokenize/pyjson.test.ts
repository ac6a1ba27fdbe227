import { describe, expect, it } from 'vitest';
import {
  type PyDict,
  PyFloat,
  PyJsonError,
  parsePyJson,
  pyFloatRepr,
  pyJsonDumps,
  pyJsonString,
} from '../../../src/tokenize/pyjson.js';

// Expected strings are Python 3.11's repr() / json.dumps() output.

describe('pyFloatRepr', () => {
  it.each([
    [1.0, '1.0'],
    [1e16, '1e+16'],
    [1e15, '1000000000000000.0'],
    [0.0001, '0.0001'],
    [0.00001, '1e-05'],
    [-0.0, '-0.0'],
    [0.1 + 0.2, '0.30000000000000004'],
    [1e22, '1e+22'],
    [5e-324, '5e-324'],
    [123456789.125, '123456789.125'],
    [1.5e300, '1.5e+300'],
    [1e-7, '1e-07'],
    [2.5e-5, '2.5e-05'],
    [Number('1234567890123456.7'), '1234567890123456.8'],
    [2 ** 53 + 1, '9007199254740992.0'],
    [1e5, '100000.0'],
    [Number.NaN, 'nan'],
    [Number.POSITIVE_INFINITY, 'inf'],
  ])('%d -> %s', (x, want) => {
    expect(pyFloatRepr(x)).toBe(want);
  });
});

describe('parsePyJson', () => {
  it('keeps key order (integer-like keys too), int vs float, big ints exactly', () => {
    const v = parsePyJson('{"b": 1, "2": 1.0, "1": 1e2, "a": 12345678901234567890, "n": -0}');
    expect(v).toBeInstanceOf(Map);
    const m = v as PyDict;
    expect([...m.keys()]).toEqual(['b', '2', '1', 'a', 'n']);
    expect(m.get('b')).toBe(1);
    expect(m.get('2')).toEqual(new PyFloat(1));
    expect(m.get('1')).toEqual(new PyFloat(100));
    expect(m.get('a')).toBe(12345678901234567890n);
    expect(Object.is(m.get('n'), 0)).toBe(true);
    expect(pyJsonDumps(m)).toBe(
      '{"b": 1, "2": 1.0, "1": 100.0, "a": 12345678901234567890, "n": 0}',
    );
  });

  it.each([
    '',
    '{',
    '[1,]',
    '{"a" 1}',
    '01',
    '1.',
    '.5',
    '"\\x"',
    '"\\u12"',
    '"a\nb"',
    'nul',
    '{} x',
    "{'a': 1}",
  ])('rejects %j', (text) => {
    expect(() => parsePyJson(text)).toThrow(PyJsonError);
  });

  it('accepts Python extensions and surrogate escapes', () => {
    expect(
      pyJsonDumps(parsePyJson('[NaN, Infinity, -Infinity, "\\ud83d\\ude00", "\\udc00"]')),
    ).toBe('[NaN, Infinity, -Infinity, "\ud83d\ude00", "\udc00"]');
  });
});

describe('pyJsonDumps (json.dumps)', () => {
  const v = parsePyJson(
    '{"b": [1, 2.0, {}, [], "\\u00e9\\ud83d\\ude00\\u001f\\u007f\\u2028"], "1": null, "a": {"z": true}}',
  );

  it('ensure_ascii=True, default separators', () => {
    expect(pyJsonDumps(v, { ensureAscii: true })).toBe(
      '{"b": [1, 2.0, {}, [], "\\u00e9\\ud83d\\ude00\\u001f\\u007f\\u2028"], "1": null, "a": {"z": true}}',
    );
  });

  it('indent=2 and indent=0 (newlines without indentation), empty containers stay inline', () => {
    expect(pyJsonDumps(v, { indent: 2 })).toBe(
      '{\n  "b": [\n    1,\n    2.0,\n    {},\n    [],\n    "\u00e9\ud83d\ude00\\u001f\u007f\u2028"\n  ],\n  "1": null,\n  "a": {\n    "z": true\n  }\n}',
    );
    expect(pyJsonDumps(v, { indent: 0 })).toBe(
      '{\n"b": [\n1,\n2.0,\n{},\n[],\n"\u00e9\ud83d\ude00\\u001f\u007f\u2028"\n],\n"1": null,\n"a": {\n"z": true\n}\n}',
    );
  });

  it('sort_keys by code point, custom separators', () => {
    expect(pyJsonDumps(v, { sortKeys: true, separators: [',', ':'] })).toBe(
      '{"1":null,"a":{"z":true},"b":[1,2.0,{},[],"\u00e9\ud83d\ude00\\u001f\u007f\u2028"]}',
    );
    const m = new Map<string, number>([
      ['\ue000', 1],
      ['\ud83d\ude00', 2],
      ['a', 3],
    ]);
    expect(pyJsonDumps(m, { sortKeys: true })).toBe('{"a": 3, "\ue000": 1, "\ud83d\ude00": 2}');
  });

  it('escapes like json.dumps', () => {
    expect(pyJsonString('"\\\b\f\n\r\t\u0000\u001f\u007f</script>')).toBe(
      '"\\"\\\\\\b\\f\\n\\r\\t\\u0000\\u001f\u007f</script>"',
    );
  });
});
