/**
 * Randomized differential of the Dynamo prompt dialect: native and JS give the same ids or the
 * same error code for generated chat and completions bodies mixing every feature the dialect
 * rewrites (thinking controls, reasoning in all shapes, tool calls and schemas, part lists,
 * NULs, tool_choice), on three templates (Qwen3, Llama 3.2, Gemma 3: string content, tool-call
 * arguments printed as JSON, strict role alternation).
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { KvEppError } from '../../src/errors.js';
import { createHotPath } from '../../src/pipeline/factory.js';
import { prepareRouteInline } from '../../src/pipeline/route-prep.js';

const ROOT = join(import.meta.dirname, '..', '..');
const MODELS = {
  qwen3: join(ROOT, 'test', 'fixtures', 'tokenizers', 'qwen3'),
  llama3_2: join(ROOT, 'node_modules', '@lenml', 'tokenizer-llama3_2', 'models'),
  gemma3: join(ROOT, 'node_modules', '@lenml', 'tokenizer-gemma3', 'models'),
};
const N = Number(process.env.KV_EPP_FUZZ_N ?? 400);

function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function gen(r: () => number): { api: 'chat' | 'completions'; body: Record<string, unknown> } {
  const clean = r() < 0.85;
  const pick = <T>(xs: T[]): T =>
    xs[
      Math.floor(
        r() * (clean ? Math.min(xs.length, Math.max(1, Math.ceil(xs.length / 2))) : xs.length),
      )
    ] as T;
  const maybe = (p: number) => r() < p;
  const texts = [
    'Hi.',
    '',
    ' spaced ',
    'a\u0000b',
    'line\n',
    '<think>x</think>y',
    '<|im_end|>',
    'é😀',
    'Q?',
  ];
  const text = () => pick(texts);
  const content = (): unknown =>
    pick([
      () => text(),
      () => null,
      () => [],
      () => [{ type: 'text', text: text() }],
      () => [
        { type: 'text', text: text() },
        { type: 'text', text: text() },
      ],
      () => [{ type: 'text' }, { type: 'text', text: text() }],
      () => [
        { type: 'text', text: text() },
        { type: 'image_url', image_url: { url: 'http://x/y.png' } },
      ],
      () => [{ type: 'refusal', refusal: 'no' }],
      () => 5,
    ])();
  const reasoning = (): unknown => pick(['r', '', null, ['a', '', 'b'], [], 7, { x: 1 }]);
  const args = () =>
    pick(['{"city": "Paris"}', '{"city":"Paris"}', '', 'not json', '[1, 2]', '"s"', 'null']);
  const call = (i: number) => ({
    id: `c${i}`,
    type: pick(['function', 'function', undefined]),
    function: { name: pick(['get_weather', 'f']), arguments: args() },
  });
  const msgs: unknown[] = [];
  const n = 1 + Math.floor(r() * 5);
  for (let i = 0; i < n; i++) {
    const role = pick(['user', 'user', 'assistant', 'system', 'developer', 'tool']);
    const m: Record<string, unknown> = { role, content: content() };
    if (role === 'assistant') {
      if (maybe(0.4))
        m.tool_calls = Array.from({ length: 1 + Math.floor(r() * 2) }, (_, j) => call(j));
      if (maybe(0.4)) m.reasoning_content = reasoning();
      if (maybe(0.1)) m.reasoning = reasoning();
      if (maybe(0.1)) delete m.content;
    }
    if (role === 'tool') m.tool_call_id = 'c0';
    if (maybe(0.1)) m.name = 'nm';
    msgs.push(m);
  }
  if (maybe(0.8)) msgs.push({ role: 'user', content: content() });
  const body: Record<string, unknown> = { model: 'm', messages: msgs };
  const tool = {
    type: 'function',
    function: {
      name: 'get_weather',
      description: pick(['d', null, undefined, 3]),
      parameters: pick([
        {},
        { properties: { c: { type: 'string' } } },
        { type: 'object' },
        null,
        undefined,
      ]),
      strict: pick([true, null, undefined]),
    },
  };
  if (maybe(0.4)) body.tools = pick([[tool], [], null]);
  if (maybe(0.3))
    body.tool_choice = pick([
      'none',
      'auto',
      'required',
      null,
      { type: 'function', function: { name: 'get_weather' } },
    ]);
  if (maybe(0.3))
    body.thinking = pick([
      true,
      false,
      null,
      { type: 'enabled' },
      { type: 'disabled' },
      { type: 'adaptive' },
      { type: 'x' },
      'yes',
    ]);
  if (maybe(0.3)) body.reasoning_effort = pick(['none', 'low', 'high', null, 'bogus', 3]);
  const kw = () => {
    const o: Record<string, unknown> = {};
    if (maybe(0.5)) o.enable_thinking = pick([true, false, 'false', 0, null]);
    if (maybe(0.3)) o.thinking = pick([true, false, null]);
    if (maybe(0.3)) o.thinking_mode = pick(['enabled', 'DISABLED', 'adaptive', 'x', null]);
    if (maybe(0.3)) o.reasoning_effort = pick(['none', 'low', null]);
    if (maybe(0.1)) o.custom = 'v';
    return o;
  };
  if (maybe(0.3)) body.chat_template_kwargs = pick([kw(), null, 'str']);
  if (maybe(0.2)) body.chat_template_args = pick([kw(), null, 5]);
  if (maybe(0.1)) body.add_generation_prompt = pick([false, true]);
  if (maybe(0.1)) body.continue_final_message = pick([true, false]);
  if (maybe(0.1)) {
    return {
      api: 'completions',
      body: {
        model: 'm',
        prompt: pick(['a\u0000b', 'Once', ['x'], [1, 2, 3], [[1, 2]], ['a', 'b'], '', [], [[]]]),
      },
    };
  }
  return { api: 'chat', body };
}

function run(
  path: Awaited<ReturnType<typeof createHotPath>>,
  bytes: Uint8Array,
  api: 'chat' | 'completions',
) {
  try {
    const ids = path.tokenizer.tokenizeRequest(bytes, api, { nowMs: 1_700_000_000_000 });
    const p = prepareRouteInline(path, bytes, api, { blockSize: 16 }, { rewrite: undefined });
    return { ids: Array.from(ids).join(','), prep: Array.from(p.tokens).join(',') };
  } catch (e) {
    if (e instanceof KvEppError) return { code: e.code };
    return { fault: String(e) };
  }
}

describe('dynamo dialect: native = JS', () => {
  for (const [name, dir] of Object.entries(MODELS)) {
    it(name, { timeout: 600_000 }, async () => {
      const native = await createHotPath({ source: dir, dialect: 'dynamo' }, 'native');
      const js = await createHotPath({ source: dir, dialect: 'dynamo' }, 'js');
      const r = rng(name.length * 7919 + 1);
      const diffs: unknown[] = [];
      const stats: Record<string, number> = {};
      for (let i = 0; i < N; i++) {
        const { api, body } = gen(r);
        const bytes = new TextEncoder().encode(JSON.stringify(body));
        const a = run(native, bytes, api);
        const b = run(js, bytes, api);
        const k = 'code' in a ? `err:${a.code}` : 'fault' in a ? 'fault' : 'ids';
        stats[k] = (stats[k] ?? 0) + 1;
        if (JSON.stringify({ ...a, prep: undefined }) !== JSON.stringify({ ...b, prep: undefined }))
          diffs.push({ body, api, native: a, js: b });
      }
      native.tokenizer.dispose();
      js.tokenizer.dispose();
      expect(diffs.slice(0, 3)).toEqual([]);
      expect(stats.fault ?? 0).toBe(0);
      // Enough bodies get ids for the comparison to mean something.
      expect(stats.ids ?? 0).toBeGreaterThan(N / 5);
    });
  }
});
