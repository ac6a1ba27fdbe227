import { describe, expect, it } from 'vitest';
import { PyTemplate, pyStrip } from '../../../src/tokenize/js/jinja-py.js';
import { pyStrftime } from '../../../src/tokenize/js/strftime.js';
import { isDict, parsePyJson } from '../../../src/tokenize/pyjson.js';

// Expected outputs rendered by transformers 5.24.0's sandboxed Jinja2 environment
// (transformers.utils.chat_template_utils._compile_jinja_template) with this context and
// datetime.now() frozen at 2026-03-07 09:05:03.123.
const CONTEXT =
  parsePyJson(String.raw`{"d": {"b": 1, "a": [1.0, 2.5, null, true, "x\u00e9\ud83d\ude00\u0001\n\"\\"], "1": {}, "e": [], "z": 1e-05, "big": 12345678901234567890, "f": 1e16, "neg": -0.0},
 "s": "  \u0085\ufeff\u00a0 hi \n\n", "t": "\n\n  think \n", "n": null, "b": true, "l": ["a", "it's", "say \"x\"", 1, 1.5, null, false, {"k": "v"}]}`);
const NOW = Date.UTC(2026, 2, 7, 9, 5, 3, 123);

const CASES: [template: string, expected: string][] = [
  [
    '{{ d | tojson }}',
    '{"b": 1, "a": [1.0, 2.5, null, true, "xé😀\\u0001\\n\\"\\\\"], "1": {}, "e": [], "z": 1e-05, "big": 12345678901234567890, "f": 1e+16, "neg": -0.0}',
  ],
  [
    '{{ d | tojson(indent=2) }}',
    '{\n  "b": 1,\n  "a": [\n    1.0,\n    2.5,\n    null,\n    true,\n    "xé😀\\u0001\\n\\"\\\\"\n  ],\n  "1": {},\n  "e": [],\n  "z": 1e-05,\n  "big": 12345678901234567890,\n  "f": 1e+16,\n  "neg": -0.0\n}',
  ],
  [
    '{{ d | tojson(indent=0) }}',
    '{\n"b": 1,\n"a": [\n1.0,\n2.5,\nnull,\ntrue,\n"xé😀\\u0001\\n\\"\\\\"\n],\n"1": {},\n"e": [],\n"z": 1e-05,\n"big": 12345678901234567890,\n"f": 1e+16,\n"neg": -0.0\n}',
  ],
  [
    '{{ d | tojson(ensure_ascii=True) }}',
    '{"b": 1, "a": [1.0, 2.5, null, true, "x\\u00e9\\ud83d\\ude00\\u0001\\n\\"\\\\"], "1": {}, "e": [], "z": 1e-05, "big": 12345678901234567890, "f": 1e+16, "neg": -0.0}',
  ],
  [
    "{{ d | tojson(separators=(',', ':')) }}",
    '{"b":1,"a":[1.0,2.5,null,true,"xé😀\\u0001\\n\\"\\\\"],"1":{},"e":[],"z":1e-05,"big":12345678901234567890,"f":1e+16,"neg":-0.0}',
  ],
  [
    '{{ d | tojson(sort_keys=true) }}',
    '{"1": {}, "a": [1.0, 2.5, null, true, "xé😀\\u0001\\n\\"\\\\"], "b": 1, "big": 12345678901234567890, "e": [], "f": 1e+16, "neg": -0.0, "z": 1e-05}',
  ],
  [
    "{{ d | tojson(indent='\t') }}",
    '{\n\t"b": 1,\n\t"a": [\n\t\t1.0,\n\t\t2.5,\n\t\tnull,\n\t\ttrue,\n\t\t"xé😀\\u0001\\n\\"\\\\"\n\t],\n\t"1": {},\n\t"e": [],\n\t"z": 1e-05,\n\t"big": 12345678901234567890,\n\t"f": 1e+16,\n\t"neg": -0.0\n}',
  ],
  ['{{ l | tojson }}', '["a", "it\'s", "say \\"x\\"", 1, 1.5, null, false, {"k": "v"}]'],
  ['{{ d.e | tojson(indent=4) }}', '[]'],
  ['{{ n | tojson }}', 'null'],
  ["{{ 'a' | tojson }}", '"a"'],
  ['{{ 2.50 | tojson }}', '2.5'],
  ['{{ 3 | tojson }}', '3'],
  ['[{{ s | trim }}]', '[﻿  hi]'],
  ['[{{ s.strip() }}]', '[﻿  hi]'],
  ['[{{ s.lstrip() }}]', '[﻿  hi \n\n]'],
  ['[{{ s.rstrip() }}]', '[  ﻿  hi]'],
  ["[{{ t.strip('\\n') }}]", '[  think ]'],
  ["[{{ t.lstrip('\\n') }}]", '[  think \n]'],
  ["[{{ t.rstrip('\\n') }}]", '[\n\n  think ]'],
  ["[{{ t | trim('\\n') }}]", '[  think ]'],
  [
    '{{ n }}|{{ b }}|{{ d.z }}|{{ d.f }}|{{ d.big }}|{{ d.a[0] }}|{{ d.neg }}',
    'None|True|1e-05|1e+16|12345678901234567890|1.0|-0.0',
  ],
  ['{{ l }}', "['a', \"it's\", 'say \"x\"', 1, 1.5, None, False, {'k': 'v'}]"],
  ['{{ d.a }}', "[1.0, 2.5, None, True, 'xé😀\\x01\\n\"\\\\']"],
  [
    "{{ d['1'] }}|{{ d }}",
    "{}|{'b': 1, 'a': [1.0, 2.5, None, True, 'xé😀\\x01\\n\"\\\\'], '1': {}, 'e': [], 'z': 1e-05, 'big': 12345678901234567890, 'f': 1e+16, 'neg': -0.0}",
  ],
  ["{{ 'x' ~ n ~ b ~ 1.0 }}", 'xNoneTrue1.0'],
  ['{{ n | string }}|{{ b | string }}', 'None|True'],
  [
    "{{ strftime_now('%Y-%m-%d %H:%M:%S.%f %a %A %b %B %j %p %I %y %U %W %w %u %V %G %e %-d %-m %_H %%') }}",
    '2026-03-07 09:05:03.123000 Sat Saturday Mar March 066 AM 09 26 09 09 6 6 10 2026  7 7 3  9 %',
  ],
  [
    "{{ strftime_now('%c|%x|%X|%D|%F|%T|%R|%r|%C|%h|%z|%Z|%k|%l|%s') }}",
    'Sat Mar  7 09:05:03 2026|03/07/26|09:05:03|03/07/26|2026-03-07|09:05:03|09:05|09:05:03 AM|20|Mar||| 9| 9|1772874303',
  ],
  ["{{ dict(a=1, b='x') | tojson }}", '{"a": 1, "b": "x"}'],
  [
    '{% set ns = namespace(c=0) %}{% for i in range(3) %}{% set ns.c = ns.c + i %}{% endfor %}{{ ns.c }}',
    '3',
  ],
  ['{% for k, v in d.items() %}{{ k }},{% endfor %}', 'b,a,1,e,z,big,f,neg,'],
  ['{{ d | length }}|{{ l | length }}', '8|8'],
];

describe('PyTemplate renders like transformers Jinja2', () => {
  if (!isDict(CONTEXT)) throw new Error('context must be an object');
  it.each(CASES)('%s', (template, expected) => {
    expect(new PyTemplate(template).render(CONTEXT, NOW)).toBe(expected);
  });

  it('raise_exception throws with the message', () => {
    expect(() =>
      new PyTemplate("{{ raise_exception('bad role') }}").render(new Map(), NOW),
    ).toThrow('bad role');
  });

  it('context values shadow nothing but are visible; globals stay callable', () => {
    const ctx = new Map([['x', 'v']]);
    expect(new PyTemplate("{{ x }}{{ strftime_now('%d %b %Y') }}").render(ctx, NOW)).toBe(
      'v07 Mar 2026',
    );
  });

  it('a parse error surfaces from the constructor', () => {
    expect(() => new PyTemplate('{% if %}')).toThrow();
  });
});

describe('selectattr / rejectattr as Jinja2 (transformers 5.24.0) filters', () => {
  const context = parsePyJson(
    '{"m": [{"role": "user", "c": {"k": 1, "0": 2}}, {"role": "tool", "tool_calls": null}, {"role": "assistant", "tool_calls": [1]}, {"role": "user", "c": {"k": 0}}, {"role": "system"}]}',
  );
  if (!isDict(context)) throw new Error('context must be an object');
  const loop = (filters: string) => `{% for x in m | ${filters} %}{{ x.role }},{% endfor %}`;
  it.each([
    // Mistral's templates: a missing attribute is undefined to the test.
    [loop('selectattr("tool_calls", "undefined")'), 'user,user,system,'],
    [loop('rejectattr("tool_calls", "undefined")'), 'tool,assistant,'],
    [loop('selectattr("tool_calls", "defined") | rejectattr("tool_calls", "none")'), 'assistant,'],
    [
      loop('rejectattr("role", "equalto", "tool") | rejectattr("role", "equalto", "system")'),
      'user,assistant,user,',
    ],
    [loop('selectattr("tool_calls")'), 'assistant,'],
    ['{% for x in (m[:1] + m[3:4]) | selectattr("c.k") %}{{ x.role }},{% endfor %}', 'user,'],
    // A string has no attribute; a digit part is an int key, which no JSON object has.
    [loop('selectattr("role.x", "undefined")'), 'user,tool,assistant,user,system,'],
    ['{% for x in m[:1] | selectattr("c.0", "defined") %}{{ x.role }},{% endfor %}', ''],
    ['{{ m | selectattr("role", "equalto", "user") | list | length }}', '2'],
    // A digit part indexes a string too; an empty sequence is never tested.
    [loop('selectattr("role.0", "equalto", "u")'), 'user,user,'],
    [`${loop('selectattr("role.9", "defined")')}|`, '|'],
    ['{% for x in [] | selectattr("role", "no_such_test") %}{{ x.role }},{% endfor %}|', '|'],
  ])('%s', (template, expected) => {
    expect(new PyTemplate(template).render(context, NOW)).toBe(expected);
  });

  it('raises when a dotted path goes on from a missing attribute (UndefinedError)', () => {
    expect(() =>
      new PyTemplate(loop('selectattr("tool_calls.0", "defined")')).render(context, NOW),
    ).toThrow();
  });
});

describe('pyStrftime', () => {
  it.each([
    ['%d %b %Y', '25 Nov 2026'],
    ['%Y-%m-%dT%H:%M:%S', '2026-11-25T12:00:00'],
    ['%A, %B %-d, %Y', 'Wednesday, November 25, 2026'],
    ['%I %p|%l|%k|%e', '12 PM|12|12|25'],
    ['%^a %^B %5Y %_m %010d', 'WED NOVEMBER 02026 11 0000000025'],
    ['%Q %Ey %Od', '%Q 26 25'],
  ])('%s', (fmt, want) => {
    expect(pyStrftime(fmt, Date.parse('2026-11-25T12:00:00Z'))).toBe(want);
  });

  it('ISO weeks at year boundaries', () => {
    expect(pyStrftime('%G-W%V-%u %U %W', Date.parse('2027-01-01T00:00:00Z'))).toBe(
      '2026-W53-5 00 00',
    );
    expect(pyStrftime('%G-W%V-%u %j', Date.parse('2024-12-30T00:00:00Z'))).toBe('2025-W01-1 365');
  });
});

describe('pyStrip', () => {
  it('strips Python whitespace or the given characters (code points)', () => {
    expect(pyStrip('\u0085\u1680 x \u3000')).toBe('x');
    expect(pyStrip('\ufeffx\ufeff')).toBe('\ufeffx\ufeff');
    expect(pyStrip('😀a😀b😀', '😀')).toBe('a😀b');
    expect(pyStrip('\n\n a \n', '\n', 'l')).toBe(' a \n');
    expect(pyStrip('\n\n a \n', '\n', 'r')).toBe('\n\n a ');
  });
});
