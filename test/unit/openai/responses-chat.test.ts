import { describe, expect, it } from 'vitest';
import { responsesAsChat } from '../../../src/openai/responses-chat.js';

describe('responsesAsChat: a Responses request as the chat its server renders', () => {
  it('a string input is one user message; instructions lead as the system message', () => {
    expect(responsesAsChat({ model: 'm', input: 'Hi', instructions: 'Be brief.' })).toEqual({
      model: 'm',
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Hi' },
      ],
    });
  });

  it('message items keep their order; developer is system; leading system messages merge', () => {
    const chat = responsesAsChat({
      model: 'm',
      instructions: 'Rules.',
      input: [
        { type: 'message', role: 'developer', content: 'More rules.' },
        {
          role: 'user',
          content: [
            { type: 'input_text', text: 'a' },
            { type: 'input_text', text: 'b' },
          ],
        },
        { role: 'assistant', content: [{ type: 'output_text', text: 'ok' }] },
        {
          role: 'system',
          content: [
            { type: 'input_text', text: 'Late' },
            { type: 'input_text', text: 'system.' },
          ],
        },
      ],
    });
    expect(chat?.messages).toEqual([
      { role: 'system', content: 'Rules.\n\nMore rules.' },
      {
        role: 'user',
        content: [
          { type: 'text', text: 'a' },
          { type: 'text', text: 'b' },
        ],
      },
      { role: 'assistant', content: [{ type: 'text', text: 'ok' }] },
      { role: 'system', content: 'Late\nsystem.' },
    ]);
  });

  it('function tools take the chat shape; hosted tools are left out', () => {
    const params = { type: 'object', properties: {} };
    const chat = responsesAsChat({
      model: 'm',
      input: 'x',
      tools: [
        { type: 'function', name: 'f', description: 'd', parameters: params },
        { type: 'web_search' },
      ],
    });
    expect(chat?.tools).toEqual([
      { type: 'function', function: { name: 'f', description: 'd', parameters: params } },
    ]);
  });

  it('carries the cache salt over (top level or in nvext)', () => {
    expect(responsesAsChat({ model: 'm', input: 'x', cache_salt: 's1' })?.cache_salt).toBe('s1');
    expect(responsesAsChat({ model: 'm', input: 'x', nvext: { cache_salt: 's2' } })?.nvext).toEqual(
      {
        cache_salt: 's2',
      },
    );
  });

  it.each([
    ['previous_response_id', { previous_response_id: 'resp_1' }],
    ['conversation', { conversation: 'conv_1' }],
  ])('is undefined when the server prepends stored turns (%s)', (_n, extra) => {
    expect(responsesAsChat({ model: 'm', input: 'x', ...extra })).toBeUndefined();
  });

  it.each([
    ['a function call output', [{ type: 'function_call_output', call_id: 'c', output: 'x' }]],
    ['an image part', [{ role: 'user', content: [{ type: 'input_image', image_url: 'u' }] }]],
    ['an unknown role', [{ role: 'tool', content: 'x' }]],
    ['a non-object item', ['x']],
    ['no input', undefined],
  ])('is undefined for %s (routed by load)', (_name, input) => {
    expect(responsesAsChat({ model: 'm', input })).toBeUndefined();
  });
});
