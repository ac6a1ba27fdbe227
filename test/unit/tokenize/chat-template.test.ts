import { describe, expect, it } from 'vitest';
import { KvEppError } from '../../../src/errors.js';
import { ChatTemplate } from '../../../src/tokenize/js/chat-template.js';
import { normaliseChatRequest, parseRequestBody } from '../../../src/tokenize/openai-request.js';

// Expected renders from transformers 5.24.0 (apply_chat_template via
// scripts/goldens/make_goldens.py's render(), with the Llama 3.1 fixture tokenizer).
const SPECIAL = new Map([
  ['bos_token', '<|begin_of_text|>'],
  ['eos_token', '<|eot_id|>'],
]);
const CONTEXT_DUMP =
  '{{ messages | tojson }}|{{ tools | tojson }}|{{ documents | tojson }}|{{ bos_token }}|' +
  '{{ eos_token }}|{{ pad_token }}|{{ add_generation_prompt }}|{{ foo }}';
const NOW = Date.parse('2026-11-25T12:00:00Z');

function render(template: string, body: object): string {
  const req = normaliseChatRequest(
    parseRequestBody(new TextEncoder().encode(JSON.stringify(body))),
  );
  return new ChatTemplate(template).render(req, SPECIAL, NOW);
}

function templateError(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(KvEppError);
    expect((e as KvEppError).code).toBe('template_error');
    return (e as Error).message;
  }
  throw new Error('expected a template_error');
}

describe('ChatTemplate (transformers apply_chat_template)', () => {
  it('drops null keys, aliases reasoning as thinking/reasoning_content, passes special tokens', () => {
    expect(
      render(CONTEXT_DUMP, {
        messages: [
          { role: 'assistant', content: 'a', reasoning_content: 'r' },
          { role: 'tool', content: 't', tool_call_id: null },
        ],
      }),
    ).toBe(
      '[{"thinking": "r", "role": "assistant", "content": "a", "reasoning": "r", "reasoning_content": "r"}, ' +
        '{"role": "tool", "content": "t"}]|null|null|<|begin_of_text|>|<|eot_id|>||True|',
    );
  });

  it('lets kwargs override special tokens, tools and documents; ignores kwargs named like Jinja globals', () => {
    expect(
      render(CONTEXT_DUMP, {
        messages: [{ role: 'user', content: 'a' }],
        chat_template_kwargs: {
          foo: 1.5,
          bos_token: '<B>',
          tools: [{ x: 1 }],
          documents: [{ a: 'b' }],
          range: 1,
          strftime_now: 2,
        },
        add_generation_prompt: false,
      }),
    ).toBe('[{"role": "user", "content": "a"}]|[{"x": 1}]|[{"a": "b"}]|<B>|<|eot_id|>||False|1.5');
  });

  it.each([
    ['{% for m in messages %}[{{ m.content }}]{% endfor %}', 'Hel  ', '[q][Hel  '],
    ['{% for m in messages %}[{{ m.content | trim }}]{% endfor %}', 'Hel  ', '[q][Hel'],
    ['{% for m in messages %}[{{ m.content }}]{% endfor %}', ' ', '[q][ '],
  ])('continue_final_message cuts %s at the final message (%j)', (template, last, want) => {
    const body = {
      continue_final_message: true,
      add_generation_prompt: false,
      messages: [
        { role: 'user', content: 'q' },
        { role: 'assistant', content: last },
      ],
    };
    expect(render(template, body)).toBe(want);
  });

  it('continue_final_message errors: template never reads content / drops the message', () => {
    const body = {
      continue_final_message: true,
      add_generation_prompt: false,
      messages: [{ role: 'user', content: 'hello' }],
    };
    expect(
      templateError(() => render('{% for m in messages %}[{{ m.text }}]{% endfor %}', body)),
    ).toMatch(/not an accepted field/);
    expect(
      templateError(() =>
        render("{% for m in messages %}[{{ m['content'][:2] }}]{% endfor %}", body),
      ),
    ).toMatch(/does not appear/);
    expect(
      templateError(() =>
        render('{{ messages[0].content }}', { ...body, add_generation_prompt: undefined }),
      ),
    ).toMatch(/not compatible/);
  });

  it.each([
    [{ sanitize_control_tokens: true }, /sanitize_control_tokens/],
    [{ return_assistant_tokens_mask: true }, /return_assistant_tokens_mask/],
    [{ conversation: [] }, /multiple values/],
    [{ messages: [] }, /multiple values/],
    [{ tools: [5] }, /Tools should/],
    [{ documents: ['x'] }, /Documents should/],
  ])('kwargs %j are template errors', (kwargs, message) => {
    const body = { messages: [{ role: 'user', content: 'a' }], chat_template_kwargs: kwargs };
    expect(templateError(() => render(CONTEXT_DUMP, body))).toMatch(message);
  });

  it('a conversations kwarg is dropped unless the template reads it (then it is bound twice)', () => {
    const body = {
      messages: [{ role: 'user', content: 'a' }],
      chat_template_kwargs: { conversations: 1 },
    };
    expect(render('{{ messages[0].content }}', body)).toBe('a');
    expect(
      templateError(() => render('{{ messages[0].content }}{{ conversations }}', body)),
    ).toMatch(/multiple values/);
  });

  it('an empty conversation, raise_exception and a template that does not parse are template errors', () => {
    expect(templateError(() => render('x', { messages: [] }))).toMatch(/empty conversation/);
    expect(
      templateError(() =>
        render("{{ raise_exception('no ' + messages[0].role) }}", {
          messages: [{ role: 'user', content: 'a' }],
        }),
      ),
    ).toMatch(/no user/);
    expect(templateError(() => new ChatTemplate('{% for %}'))).toMatch(/does not parse/);
  });
});
