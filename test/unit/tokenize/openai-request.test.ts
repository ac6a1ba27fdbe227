import { describe, expect, it } from 'vitest';
import { KvEppError } from '../../../src/errors.js';
import {
  type ChatRequest,
  normaliseChatRequest,
  normaliseCompletionRequest,
  parseRequestBody,
} from '../../../src/tokenize/openai-request.js';
import { pyJsonDumps } from '../../../src/tokenize/pyjson.js';

// Expected conversations/tools are what scripts/goldens/make_goldens.py's validate_chat_request
// + parse_messages (pydantic 2.14.4, openai 3.57.0) produced for the same bodies, printed with
// json.dumps(ensure_ascii=False): key order and int/float spelling are part of the expectation.

const enc = (s: string) => new TextEncoder().encode(s);
const chat = (body: string): ChatRequest => normaliseChatRequest(parseRequestBody(enc(body)));
const dumps = (r: ChatRequest) => pyJsonDumps(r.conversation);

function codeOf(fn: () => unknown): { code: string; message: string } {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(KvEppError);
    return { code: (e as KvEppError).code, message: (e as Error).message };
  }
  throw new Error('expected a KvEppError');
}

describe('parseRequestBody', () => {
  it('rejects bad JSON and bad UTF-8 as invalid_json', () => {
    expect(codeOf(() => parseRequestBody(enc('{"messages": [}'))).code).toBe('invalid_json');
    expect(codeOf(() => parseRequestBody(enc('{"a": 1,}'))).code).toBe('invalid_json');
    expect(codeOf(() => parseRequestBody(Uint8Array.of(0x7b, 0xff, 0x7d))).code).toBe(
      'invalid_json',
    );
    expect(codeOf(() => parseRequestBody(enc('{"a": "\u0001"}'))).code).toBe('invalid_json');
  });

  it('rejects a body that is not an object as invalid_request', () => {
    expect(codeOf(() => parseRequestBody(enc('[1]'))).code).toBe('invalid_request');
  });

  it("accepts what Python's json.loads accepts: a BOM, NaN/Infinity, duplicate keys (last wins)", () => {
    const body = parseRequestBody(
      Uint8Array.of(0xef, 0xbb, 0xbf, ...enc('{"a": NaN, "b": -Infinity, "a": 1, "c": "\\ud800"}')),
    );
    expect([...body.keys()]).toEqual(['a', 'b', 'c']);
    expect(pyJsonDumps(body)).toBe('{"a": 1, "b": -Infinity, "c": "\ud800"}');
  });
});

describe('normaliseChatRequest: messages (steps 1-2)', () => {
  it('flattens text-like parts with "\\n", skips null text, turns missing content into ""', () => {
    const r = chat(
      JSON.stringify({
        messages: [
          {
            role: 'system',
            content: [
              { type: 'text', text: 'a' },
              { type: 'text', text: 'b\n' },
            ],
          },
          { role: 'user' },
          {
            role: 'narrator',
            content: [
              's',
              { type: 'refusal', refusal: 'r' },
              { type: 'text', text: null },
              { type: 'thinking', thinking: 't' },
              { type: 'output_text', text: 'o' },
            ],
            name: 'n',
            task: 'k',
          },
        ],
      }),
    );
    expect(dumps(r)).toBe(
      '[{"role": "system", "content": "a\\nb\\n"}, {"role": "user", "content": ""}, ' +
        '{"role": "narrator", "content": "s\\nr\\nt\\no", "name": "n", "task": "k"}]',
    );
  });

  it('keeps what vLLM keeps per role; tool-call arguments parsed like json.loads; pydantic picks the member', () => {
    const r = chat(
      JSON.stringify({
        messages: [
          { role: 'user', content: 'q' },
          // The OpenAI assistant member has more fields set than vLLM's custom one, wins, and
          // drops `reasoning` (an extra key for it).
          { role: 'assistant', content: 'x', reasoning: 'r', refusal: null },
          { role: 'assistant', content: 'y', reasoning_content: 'rc' },
          {
            role: 'assistant',
            content: null,
            reasoning: 'r2',
            tool_calls: [
              {
                type: 'function',
                id: 'c1',
                function: {
                  name: 'f',
                  arguments: '{"b": 1.0, "a": 2, "1": [1e-7, 12345678901234567890]}',
                },
                index: 0,
              },
              { id: 'c2', type: 'function', function: { name: 'g', arguments: 'oops' } },
            ],
            refusal: null,
            audio: null,
            function_call: null,
            name: 'bot',
          },
          { role: 'tool', tool_call_id: 'c1', content: 'ok', name: 'f' },
          { role: 'assistant', content: 'z', tool_calls: [] },
          {
            role: 'developer',
            content: 'd',
            tools: [{ type: 'function', function: { name: 't', strict: 'yes', zz: 1 } }],
          },
        ],
      }),
    );
    // vLLM validates inside its request model (extra="allow"): whichever member wins, keys it
    // does not declare survive (`reasoning` on the OpenAI assistant member, `index` on a tool
    // call, `zz` on a function), after its own keys in schema order. Expected: make_goldens.py's
    // validation + vLLM 0.33.0's own parse_chat_message_content on this body.
    expect(dumps(r)).toBe(
      '[{"role": "user", "content": "q"}, ' +
        '{"role": "assistant", "content": "x", "reasoning": "r", "reasoning_content": "r"}, ' +
        '{"role": "assistant", "content": "y", "reasoning": "rc", "reasoning_content": "rc"}, ' +
        '{"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "function": {"arguments": ' +
        '{"b": 1.0, "a": 2, "1": [1e-07, 12345678901234567890]}, "name": "f"}, "type": "function", "index": 0}, ' +
        '{"id": "c2", "function": {"arguments": {}, "name": "g"}, "type": "function"}], ' +
        '"reasoning": "r2", "reasoning_content": "r2", "name": "bot"}, ' +
        '{"role": "tool", "content": "ok", "tool_call_id": "c1", "name": "f"}, ' +
        '{"role": "assistant", "content": "z"}, ' +
        '{"role": "developer", "content": "d", "tools": [{"function": {"name": "t", "strict": true, "zz": 1}, "type": "function"}]}]',
    );
  });

  it('validates the chosen member lazily: an input_text part fails a user message, not a custom one', () => {
    // vLLM's custom member types its parts: a text part sets 2 fields, so with one the custom
    // member outscores the user member (whose parts are a lazily validated Iterable) ...
    const parts = [
      { type: 'text', text: 'a' },
      { type: 'input_text', text: 'b' },
    ];
    const r = chat(JSON.stringify({ messages: [{ role: 'user', content: parts }] }));
    expect(dumps(r)).toBe('[{"role": "user", "content": "a\\nb"}]');
    // ... without one it ties, the user member (first) wins, and input_text fails its parts.
    const only = [{ type: 'input_text', text: 'b' }];
    const e = codeOf(() => chat(JSON.stringify({ messages: [{ role: 'user', content: only }] })));
    expect(e.code).toBe('invalid_request');
    expect(e.message).toMatch(/^messages\[0\]/);
    // With `task` (a custom-member key) the custom member has more fields and accepts them.
    const t = chat(JSON.stringify({ messages: [{ role: 'user', content: only, task: 't' }] }));
    expect(dumps(t)).toBe('[{"role": "user", "content": "b", "task": "t"}]');
  });

  it.each([
    ['name null', { role: 'user', content: 'Hi', name: null }],
    ['content null on a user message', { role: 'user', content: null }],
    [
      'a null text part on a system message',
      { role: 'system', content: [{ type: 'text', text: null }] },
    ],
    ['a role that is not a string', { role: 5, content: 'x' }],
    ['a message that is not an object', 'hello'],
  ])('rejects %s as invalid_request naming the message', (_name, message) => {
    const e = codeOf(() => chat(JSON.stringify({ messages: [message] })));
    expect(e.code).toBe('invalid_request');
    expect(e.message).toMatch(/^messages\[0\]/);
  });

  it('rejects media parts as unsupported_content with the part path', () => {
    const e = codeOf(() =>
      chat(
        JSON.stringify({
          messages: [
            { role: 'user', content: 'x' },
            { role: 'user', content: 'y' },
            {
              role: 'user',
              content: [
                { type: 'text', text: 'What is this?' },
                { type: 'image_url', image_url: { url: 'data:image/png;base64,AA' } },
              ],
            },
          ],
        }),
      ),
    );
    expect(e).toEqual({
      code: 'unsupported_content',
      message: 'messages[2].content[1]: image_url parts are not supported by a text-only model',
    });
  });

  it('rejects an unknown part type as invalid_request', () => {
    const body = { messages: [{ role: 'narrator', content: [{ type: 'weird' }] }] };
    const e = codeOf(() => chat(JSON.stringify(body)));
    expect(e.code).toBe('invalid_request');
    expect(e.message).toBe("messages[0].content[0]: unsupported content part type 'weird'");
  });

  it('rejects continue_final_message with an explicit add_generation_prompt: true', () => {
    const body = {
      add_generation_prompt: true,
      continue_final_message: true,
      messages: [{ role: 'user', content: 'x' }],
    };
    expect(codeOf(() => chat(JSON.stringify(body))).code).toBe('invalid_request');
    // Left at its default, the combination is the template step's error (transformers').
    const r = chat(JSON.stringify({ ...body, add_generation_prompt: undefined }));
    expect(r.addGenerationPrompt).toBe(true);
    expect(r.continueFinalMessage).toBe(true);
  });

  it('accepts an empty messages list (transformers rejects it at render time)', () => {
    expect(chat('{"messages": []}').conversation).toEqual([]);
    expect(codeOf(() => chat('{"messages": null}')).code).toBe('invalid_request');
  });
});

describe('normaliseChatRequest: tools (step 3) and kwargs (step 4)', () => {
  it("reorders tools like vLLM's pydantic dump (declared fields only), keeping integer-like keys and floats", () => {
    const r = chat(
      '{"tools": [{"function": {"parameters": {"type": "object", "properties": {"2": {"minimum": 0.5}, ' +
        '"1": {"default": 1.0}}}, "x-extra": [1], "name": "f"}, "type": "function", "top": 1}, ' +
        '{"function": {"name": "g", "description": "d", "parameters": null}}], ' +
        '"messages": [{"role": "user", "content": "q"}]}',
    );
    expect(pyJsonDumps(r.tools)).toBe(
      '[{"type": "function", "function": {"name": "f", "description": null, "parameters": ' +
        '{"type": "object", "properties": {"2": {"minimum": 0.5}, "1": {"default": 1.0}}}}}, ' +
        '{"type": "function", "function": {"name": "g", "description": "d", "parameters": null}}]',
    );
  });

  it.each([
    ['tools not an array', { tools: { a: 1 } }],
    ['a tool without function', { tools: [{ type: 'function' }] }],
    ['a tool name that is not a string', { tools: [{ function: { name: 5 } }] }],
    [
      'parameters that are not an object',
      { tools: [{ function: { name: 'f', parameters: 's' } }] },
    ],
  ])('rejects %s', (_n, extra) => {
    const body = { ...extra, messages: [{ role: 'user', content: 'q' }] };
    expect(codeOf(() => chat(JSON.stringify(body))).code).toBe('invalid_request');
  });

  it('merges kwargs: request fields win, reasoning_effort sets enable_thinking unless given', () => {
    const kw = (body: object) =>
      pyJsonDumps(
        chat(JSON.stringify({ messages: [{ role: 'user', content: 'q' }], ...body })).kwargs,
      );
    expect(kw({})).toBe('{"add_generation_prompt": true, "continue_final_message": false}');
    expect(
      kw({
        reasoning_effort: 'none',
        chat_template_kwargs: { foo: 1, add_generation_prompt: false },
      }),
    ).toBe(
      '{"foo": 1, "add_generation_prompt": true, "continue_final_message": false, ' +
        '"reasoning_effort": "none", "enable_thinking": false}',
    );
    expect(kw({ reasoning_effort: 'high', documents: [{ title: 't', text: 'x' }] })).toBe(
      '{"add_generation_prompt": true, "continue_final_message": false, ' +
        '"documents": [{"title": "t", "text": "x"}], "reasoning_effort": "high", "enable_thinking": true}',
    );
    // vLLM's merge_kwargs: None and "auto" values are unset, the request's own kwargs' too.
    expect(
      kw({ chat_template_kwargs: { foo: null, bar: 'auto', baz: 0, chat_template: null } }),
    ).toBe('{"baz": 0, "add_generation_prompt": true, "continue_final_message": false}');
    expect(kw({ reasoning_effort: 'low', chat_template_kwargs: { enable_thinking: false } })).toBe(
      '{"enable_thinking": false, "add_generation_prompt": true, "continue_final_message": false, ' +
        '"reasoning_effort": "low"}',
    );
  });

  it('takes tokenize from chat_template_kwargs as apply_chat_template does: ids without special tokens', () => {
    const body = (kw: object) =>
      JSON.stringify({
        add_special_tokens: true,
        chat_template_kwargs: kw,
        messages: [{ role: 'user', content: 'q' }],
      });
    expect(chat(body({ tokenize: true })).addSpecialTokens).toBe(false);
    expect(chat(body({ tokenize: false })).addSpecialTokens).toBe(true);
    expect(chat(body({ tokenize: 'auto' })).addSpecialTokens).toBe(true);
  });

  it('rejects a chat template in the request, tool_choice vLLM refuses and mistyped fields', () => {
    const weather = [{ type: 'function', function: { name: 'weather' } }];
    for (const body of [
      { chat_template_kwargs: { chat_template: 'x' } },
      { chat_template: 'x' },
      { tools: [] },
      { tool_choice: 'auto' },
      { tools: weather, tool_choice: 'bogus' },
      { tools: weather, tool_choice: { type: 'function', function: { name: 'other' } } },
      { tools: weather, tool_choice: { type: 'function', function: {} } },
      { reasoning_effort: 'auto' },
      { reasoning_effort: 'extreme' },
      { chat_template_kwargs: [] },
      { add_generation_prompt: null },
      { continue_final_message: 'maybe' },
      { add_special_tokens: 2 },
      { documents: 'x' },
      { reasoning_effort: 5 },
    ]) {
      const full = { ...body, messages: [{ role: 'user', content: 'q' }] };
      expect(codeOf(() => chat(JSON.stringify(full))).code).toBe('invalid_request');
    }
  });

  it("parses booleans like pydantic's lax mode", () => {
    const r = chat(
      '{"add_generation_prompt": "no", "add_special_tokens": 1, "messages": [{"role": "user", "content": "q"}]}',
    );
    expect(r.addGenerationPrompt).toBe(false);
    expect(r.addSpecialTokens).toBe(true);
  });
});

describe('normaliseCompletionRequest', () => {
  const prompt = (body: string) => normaliseCompletionRequest(parseRequestBody(enc(body)));

  it('takes a string prompt with add_special_tokens (default true)', () => {
    expect(prompt('{"prompt": "hi"}')).toEqual({
      kind: 'text',
      text: 'hi',
      addSpecialTokens: true,
    });
    expect(prompt('{"prompt": ["hi"], "add_special_tokens": false}')).toEqual({
      kind: 'text',
      text: 'hi',
      addSpecialTokens: false,
    });
  });

  it('passes token ids through', () => {
    expect(prompt('{"prompt": [1, 2, 4294967295]}')).toEqual({
      kind: 'ids',
      ids: Uint32Array.of(1, 2, 4294967295),
    });
    expect(prompt('{"prompt": [[7, 8.0]]}')).toEqual({ kind: 'ids', ids: Uint32Array.of(7, 8) });
  });

  it.each([
    '{"prompt": [1, -1]}',
    '{"prompt": [4294967296]}',
    '{"prompt": [1, 2.5]}',
    '{"prompt": [12345678901234567890]}',
    '{"prompt": []}',
    '{"prompt": [[]]}',
    '{"prompt": ["a", 1]}',
    '{"prompt": [true]}',
    '{"prompt": 5}',
    '{}',
  ])('rejects %s as invalid_request', (body) => {
    expect(codeOf(() => prompt(body)).code).toBe('invalid_request');
  });

  it.each(['{"prompt": ["a", "b"]}', '{"prompt": [[1], [2]]}'])(
    'leaves the batch %s to route by load (unsupported_content)',
    (body) => {
      expect(codeOf(() => prompt(body)).code).toBe('unsupported_content');
    },
  );

  it('rejects prompt_embeds as unsupported_content', () => {
    expect(codeOf(() => prompt('{"prompt_embeds": "AAAA"}')).code).toBe('unsupported_content');
  });
});
