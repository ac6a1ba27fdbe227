import type { Case } from './token-parity-cases.js';

const CHAT = '/v1/chat/completions';
const CMPL = '/v1/completions';
const U = (content: unknown) => ({ role: 'user', content });
const A = (content: unknown, extra: Record<string, unknown> = {}) => ({
  role: 'assistant',
  content,
  ...extra,
});
const TOOL = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'The weather in a city.',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};

export function extraCases(): Case[] {
  const chat = (name: string, body: Record<string, unknown>): Case => ({
    name: `X ${name}`,
    path: CHAT,
    body: { max_tokens: 2, ...body },
  });
  return [
    // thinking controls: Dynamo's second normalization (normalize_thinking_aliases)
    chat('kwargs enable_thinking "false" string', {
      messages: [U('Hi.')],
      chat_template_kwargs: { enable_thinking: 'false' },
    }),
    chat('kwargs enable_thinking 0', {
      messages: [U('Hi.')],
      chat_template_kwargs: { enable_thinking: 0 },
    }),
    chat('kwargs thinking_mode "off"', {
      messages: [U('Hi.')],
      chat_template_kwargs: { thinking_mode: 'off' },
    }),
    chat('kwargs thinking "maybe"', {
      messages: [U('Hi.')],
      chat_template_kwargs: { thinking: 'maybe' },
    }),
    chat('kwargs thinking_mode DISABLED', {
      messages: [U('Hi.')],
      chat_template_kwargs: { thinking_mode: 'DISABLED' },
    }),
    chat('effort null + kwargs effort none', {
      messages: [U('Hi.')],
      reasoning_effort: null,
      chat_template_kwargs: { reasoning_effort: 'none' },
    }),
    chat('effort high + kwargs enable_thinking false', {
      messages: [U('Hi.')],
      reasoning_effort: 'high',
      chat_template_kwargs: { enable_thinking: false },
    }),
    chat('thinking enabled + kwargs enable_thinking false', {
      messages: [U('Hi.')],
      thinking: { type: 'enabled' },
      chat_template_kwargs: { enable_thinking: false },
    }),
    chat('thinking null', { messages: [U('Hi.')], thinking: null }),
    chat('thinking {type: enabled, budget_tokens}', {
      messages: [U('Hi.')],
      thinking: { type: 'enabled', budget_tokens: 100 },
    }),
    chat('args and kwargs both', {
      messages: [U('Hi.')],
      chat_template_args: { enable_thinking: true },
      chat_template_kwargs: { enable_thinking: false },
    }),
    chat('kwargs null + args', {
      messages: [U('Hi.')],
      chat_template_args: { enable_thinking: false },
      chat_template_kwargs: null,
    }),
    chat('kwargs continue_final_message', {
      messages: [U('Hi.'), A('Hel')],
      chat_template_kwargs: { continue_final_message: true },
    }),
    chat('kwargs bos_token', { messages: [U('Hi.')], chat_template_kwargs: { bos_token: 'BOS!' } }),
    chat('kwargs chat_template', {
      messages: [U('Hi.')],
      chat_template_kwargs: { chat_template: 'x' },
    }),
    chat('kwargs messages', {
      messages: [U('Hi.')],
      chat_template_kwargs: { messages: [U('Other.')] },
    }),
    chat('kwargs tools', { messages: [U('Hi.')], chat_template_kwargs: { tools: [TOOL] } }),
    chat('kwargs tokenize true', {
      messages: [U('Hi.')],
      chat_template_kwargs: { tokenize: true },
    }),
    // reasoning
    chat('reasoning alias (history)', {
      messages: [U('Q1?'), A('A1.', { reasoning: 'r1' }), U('Q2?')],
    }),
    chat('reasoning alias (last)', {
      messages: [U('Q1?'), A('A1.', { reasoning: 'r1' })],
      add_generation_prompt: false,
    }),
    chat('reasoning_content array (history)', {
      messages: [U('Q1?'), A('A1.', { reasoning_content: ['x', 'y'] }), U('Q2?')],
    }),
    chat('reasoning_content array (last)', {
      messages: [U('Q1?'), A('A1.', { reasoning_content: ['x', '', 'y'] })],
      add_generation_prompt: false,
    }),
    chat('reasoning_content array + tool call', {
      messages: [
        U('Weather?'),
        A('', {
          reasoning_content: ['a', 'b'],
          tool_calls: [
            {
              id: 'c1',
              type: 'function',
              function: { name: 'get_weather', arguments: '{"city": "Oslo"}' },
            },
          ],
        }),
        { role: 'tool', tool_call_id: 'c1', content: 'cold' },
      ],
      tools: [TOOL],
    }),
    chat('reasoning_content + content parts', {
      messages: [
        U('Q1?'),
        A(
          [
            { type: 'text', text: 'A' },
            { type: 'text', text: 'B' },
          ],
          { reasoning_content: 'r' },
        ),
        U('Q2?'),
      ],
    }),
    chat('reasoning_content + content ""', {
      messages: [U('Q1?'), A('', { reasoning_content: 'r' }), U('Q2?')],
    }),
    chat('reasoning_content + content null', {
      messages: [U('Q1?'), A(null, { reasoning_content: 'r' }), U('Q2?')],
    }),
    chat('reasoning_content "" + content', {
      messages: [U('Q1?'), A('A1', { reasoning_content: '' }), U('Q2?')],
    }),
    chat('reasoning_content on user', {
      messages: [{ role: 'user', content: 'Q', reasoning_content: 'r' }],
    }),
    // tools
    chat('tools [] + tool_choice none', { messages: [U('Hi.')], tools: [], tool_choice: 'none' }),
    chat('tools []', { messages: [U('Hi.')], tools: [] }),
    chat('tool_choice none, no tools', { messages: [U('Hi.')], tool_choice: 'none' }),
    chat('tool_choice none, tools null', {
      messages: [U('Hi.')],
      tools: null,
      tool_choice: 'none',
    }),
    chat('tool_choice none + tool history', {
      messages: [
        U('Weather?'),
        A('', {
          tool_calls: [
            {
              id: 'c1',
              type: 'function',
              function: { name: 'get_weather', arguments: '{"city": "Oslo"}' },
            },
          ],
        }),
        { role: 'tool', tool_call_id: 'c1', content: 'cold' },
      ],
      tools: [TOOL],
      tool_choice: 'none',
    }),
    chat('qwen tool call content "" spaced args', {
      messages: [
        U('Weather?'),
        A('', {
          tool_calls: [
            {
              id: 'c1',
              type: 'function',
              function: { name: 'get_weather', arguments: '{"city":   "Oslo"}' },
            },
          ],
        }),
        { role: 'tool', tool_call_id: 'c1', content: 'cold' },
      ],
      tools: [TOOL],
    }),
    chat('tool parameters null', {
      messages: [U('Hi.')],
      tools: [{ type: 'function', function: { name: 'now', parameters: null } }],
    }),
    chat('tool strict false + desc', {
      messages: [U('Hi.')],
      tools: [
        {
          type: 'function',
          function: {
            name: 'now',
            description: 'd',
            parameters: { properties: {}, type: 'object' },
            strict: false,
          },
        },
      ],
    }),
    chat('tool params nested key order', {
      messages: [U('Hi.')],
      tools: [
        {
          type: 'function',
          function: {
            parameters: {
              required: ['z'],
              properties: { z: { type: 'string' }, a: { type: 'integer' } },
            },
            name: 'zz',
            description: 'D',
          },
        },
      ],
    }),
    // text parts
    chat('text part missing text', {
      messages: [U([{ type: 'text' }, { type: 'text', text: 'A' }])],
    }),
    chat('parts with extra non-text, text', {
      messages: [
        U([
          { type: 'text', text: 'A' },
          { type: 'input_text', text: 'B' },
        ]),
      ],
    }),
    chat('system parts joined', {
      messages: [
        {
          role: 'system',
          content: [
            { type: 'text', text: 'S1' },
            { type: 'text', text: 'S2' },
          ],
        },
        U('Hi'),
      ],
    }),
    chat('developer parts', {
      messages: [
        {
          role: 'developer',
          content: [
            { type: 'text', text: 'D1' },
            { type: 'text', text: 'D2' },
          ],
        },
        U('Hi'),
      ],
    }),
    chat('continue_final with parts', {
      messages: [
        U('Hi.'),
        A([
          { type: 'text', text: 'Hel' },
          { type: 'text', text: 'lo' },
        ]),
      ],
      continue_final_message: true,
      add_generation_prompt: false,
    }),
    chat('continue_final trailing space', {
      messages: [U('Hi.'), A('Hello ')],
      continue_final_message: true,
      add_generation_prompt: false,
    }),
    // NUL in kwargs / tools
    chat('NUL in tool description', {
      messages: [U('Hi.')],
      tools: [
        {
          type: 'function',
          function: {
            name: 'now',
            description: 'a\u0000b',
            parameters: { type: 'object', properties: {} },
          },
        },
      ],
    }),
    // misc
    chat('name on assistant + tool', { messages: [U('Hi.'), A('Yo', { name: 'bot' })] }),
    chat('float in tool schema', {
      messages: [U('Hi.')],
      tools: [
        {
          type: 'function',
          function: {
            name: 'f',
            description: 'd',
            parameters: {
              type: 'object',
              properties: { x: { type: 'number', minimum: 1.0, maximum: 1e20, default: 0.1 } },
            },
          },
        },
      ],
    }),
    chat('tool args float forms (llama)', {
      messages: [
        U('Hi'),
        A('', {
          tool_calls: [
            {
              id: 'c',
              type: 'function',
              function: { name: 'f', arguments: '{"x": 1.0, "y": 1e20, "z": 1.5e-7}' },
            },
          ],
        }),
        { role: 'tool', tool_call_id: 'c', content: 'ok' },
      ],
    }),
    chat('tool args key order', {
      messages: [
        U('Hi'),
        A('', {
          tool_calls: [
            {
              id: 'c',
              type: 'function',
              function: { name: 'f', arguments: '{"z": 1, "a": 2, "m": {"y": 1, "b": 2}}' },
            },
          ],
        }),
        { role: 'tool', tool_call_id: 'c', content: 'ok' },
      ],
    }),
    chat('tool extra keys', {
      messages: [U('Hi.')],
      tools: [
        {
          type: 'function',
          cache_control: { type: 'ephemeral' },
          function: {
            name: 'now',
            description: 'd',
            parameters: { type: 'object', properties: {} },
            examples: ['x'],
          },
        },
      ],
    }),
    chat('tool_call extra keys + order', {
      messages: [
        U('Hi'),
        A('', {
          tool_calls: [
            { function: { arguments: '{"a": 1}', name: 'f' }, type: 'function', id: 'c', index: 0 },
          ],
        }),
        { role: 'tool', tool_call_id: 'c', content: 'ok' },
      ],
    }),
    chat('V tool_choice required no tools', { messages: [U('Hi.')], tool_choice: 'required' }),
    chat('V tool_choice auto no tools', { messages: [U('Hi.')], tool_choice: 'auto' }),
    chat('V tool_choice named no tools', {
      messages: [U('Hi.')],
      tool_choice: { type: 'function', function: { name: 'x' } },
    }),
    chat('V tool_choice named unknown', {
      messages: [U('Hi.')],
      tools: [TOOL],
      tool_choice: { type: 'function', function: { name: 'x' } },
    }),
    chat('V name null', { messages: [{ role: 'user', content: 'Hi.', name: null }] }),
    chat('V system content null', { messages: [{ role: 'system', content: null }, U('Hi.')] }),
    chat('V tool content null', {
      messages: [
        U('Hi.'),
        A('', {
          tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: '{}' } }],
        }),
        { role: 'tool', tool_call_id: 'c', content: null },
      ],
    }),
    chat('V reasoning_effort minimal', { messages: [U('Hi.')], reasoning_effort: 'minimal' }),
    chat('V reasoning_effort xhigh', { messages: [U('Hi.')], reasoning_effort: 'xhigh' }),
    chat('V kwargs reasoning_effort bogus', {
      messages: [U('Hi.')],
      chat_template_kwargs: { reasoning_effort: 'bogus' },
    }),
    chat('V add_generation_prompt false + continue true', {
      messages: [U('Hi.'), A('He')],
      add_generation_prompt: false,
      continue_final_message: true,
    }),
    chat('V assistant function_call legacy', {
      messages: [
        U('Hi.'),
        A(null, { function_call: { name: 'f', arguments: '{"a": 1}' } }),
        U('x'),
      ],
    }),
    chat('V tool_call type missing', {
      messages: [
        U('Hi'),
        A('', { tool_calls: [{ id: 'c', function: { name: 'f', arguments: '{}' } }] }),
        { role: 'tool', tool_call_id: 'c', content: 'ok' },
      ],
    }),
    { name: 'X cmpl [""]', path: CMPL, body: { prompt: [''], max_tokens: 2 } },
    { name: 'X cmpl [s] NUL', path: CMPL, body: { prompt: ['a\u0000b'], max_tokens: 2 } },
    { name: 'X cmpl [[]]', path: CMPL, body: { prompt: [[]], max_tokens: 2 } },
  ];
}

export function customCases(): Case[] {
  const chat = (name: string, body: Record<string, unknown>): Case => ({
    name: `C ${name}`,
    path: '/v1/chat/completions',
    body: { max_tokens: 2, ...body },
  });
  return [
    chat('string with trailing newline', { messages: [{ role: 'user', content: 'Hi there.\n' }] }),
    chat('string with spaces', {
      messages: [
        { role: 'system', content: '  Be brief.  ' },
        { role: 'user', content: 'Hi.' },
      ],
    }),
    chat('two text parts', {
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: ' A ' },
            { type: 'text', text: 'B\n' },
          ],
        },
      ],
    }),
    chat('plain', { messages: [{ role: 'user', content: 'Hi.' }] }),
  ];
}
