import {
  copyFileSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvEppError } from '../../src/errors.js';
import { type ApiKind, NESTED_TOO_DEEP, type Tokenizer } from '../../src/tokenize/types.js';

/**
 * Tokenizer contract: every backend must pass it unchanged. Expected values are vLLM's (the
 * goldens in test/fixtures/chat/goldens, made by scripts/goldens/make_goldens.py with
 * transformers + tokenizers), never our own output.
 *
 * `load(source)` receives what a user configures: a tokenizer directory or tokenizer.json path,
 * or a tiktoken encoding name. The dated variant (a golden whose chat_template is a file) is
 * loaded from a temporary directory holding the tokenizer's files plus that template as
 * `chat_template.jinja`, the file transformers prefers over tokenizer_config.json's template.
 */

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const GOLDENS = join(ROOT, 'test/fixtures/chat/goldens');
const REQUESTS = join(ROOT, 'test/fixtures/chat/requests');

interface Golden {
  request: Record<string, unknown>;
  tokenizer_dir: string;
  chat_template: string;
  clock?: string;
  endpoint?: ApiKind;
  rendered?: string;
  ids?: number[];
  error?: string;
  error_stage?: 'request-validation' | 'message-parsing' | 'chat-template';
}

/** goldens/random/<tokenizer>.json: results for goldens/random/requests.json, in order. */
interface RandomGolden {
  tokenizer: string;
  tokenizer_dir: string;
  clock: string;
  results: Array<Pick<Golden, 'ids' | 'error' | 'error_stage'>>;
}

interface TiktokenGolden {
  encoding: string;
  cases: { name: string; text: string; ids: number[] }[];
}

/** The codes a golden's error stage allows. */
function allowedCodes(g: Pick<Golden, 'error' | 'error_stage'>): string[] {
  switch (g.error_stage) {
    case 'request-validation':
      return ['invalid_request', 'invalid_json'];
    case 'message-parsing':
      // A media part is "unsupported content"; a malformed part may be an invalid request.
      return g.error?.includes('multimodal')
        ? ['unsupported_content']
        : ['unsupported_content', 'invalid_request'];
    case 'chat-template':
      return ['template_error'];
    default:
      return [];
  }
}

function readJson<T>(path: string): T {
  return JSON.parse(readFileSync(path, 'utf8')) as T;
}

/** The request body bytes: the request file verbatim (key order, number spelling), if present. */
function bodyOf(file: string, g: Golden): Uint8Array {
  const path = join(REQUESTS, file);
  return existsSync(path)
    ? new Uint8Array(readFileSync(path))
    : new TextEncoder().encode(JSON.stringify(g.request));
}

/** The KvEppError `fn` throws (fails the test when it throws none, or another kind). */
function errorOf(fn: () => unknown): KvEppError {
  try {
    fn();
  } catch (e) {
    expect(e, 'expected a KvEppError').toBeInstanceOf(KvEppError);
    return e as KvEppError;
  }
  throw new Error('expected a KvEppError, nothing was thrown');
}

function expectError(fn: () => unknown, codes: string[]): void {
  let thrown: unknown;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  expect(thrown, 'expected a KvEppError').toBeInstanceOf(KvEppError);
  expect(codes).toContain((thrown as KvEppError).code);
}

export function describeTokenizerGoldens(
  name: string,
  load: (source: string) => Promise<Tokenizer>,
): void {
  const variants = readdirSync(GOLDENS, { withFileTypes: true })
    .filter((d) => d.isDirectory() && d.name !== 'tiktoken' && d.name !== 'random')
    .map((d) => d.name)
    .sort();

  describe(`Tokenizer goldens: ${name}`, () => {
    for (const variant of variants) {
      const dir = join(GOLDENS, variant);
      const files = readdirSync(dir)
        .filter((f) => f.endsWith('.json'))
        .sort();
      const goldens = files.map((f) => [f, readJson<Golden>(join(dir, f))] as const);

      describe(variant, () => {
        let tok: Tokenizer;
        let tmp: string | undefined;
        beforeAll(async () => {
          const first = goldens[0]?.[1] as Golden;
          let source = join(ROOT, first.tokenizer_dir);
          if (first.chat_template !== 'bundled') {
            tmp = mkdtempSync(join(tmpdir(), 'kv-epp-tok-'));
            for (const f of ['tokenizer.json', 'tokenizer_config.json']) {
              copyFileSync(join(source, f), join(tmp, f));
            }
            copyFileSync(join(ROOT, first.chat_template), join(tmp, 'chat_template.jinja'));
            source = tmp;
          }
          tok = await load(source);
        });
        afterAll(() => {
          tok?.dispose();
          if (tmp) rmSync(tmp, { recursive: true, force: true });
        });

        it.each(goldens)('%s', (file, g) => {
          const body = bodyOf(file, g);
          const api: ApiKind = g.endpoint ?? ('prompt' in g.request ? 'completions' : 'chat');
          const options = g.clock ? { nowMs: Date.parse(g.clock) } : {};
          if (g.error !== undefined) {
            const codes = allowedCodes(g);
            expectError(() => tok.tokenizeRequest(body, api, options), codes);
            if (api === 'chat') expectError(() => tok.renderChat(body, options), codes);
            return;
          }
          if (api === 'chat') expect(tok.renderChat(body, options)).toBe(g.rendered);
          expect([...tok.tokenizeRequest(body, api, options)]).toEqual(g.ids);
        });
      });
    }
  });

  describe(`Tokenizer random-conversation goldens: ${name}`, () => {
    const RANDOM = join(GOLDENS, 'random');
    // Each request is the exact JSON text the goldens were made from (number spelling, key order).
    const { requests } = readJson<{ requests: string[] }>(join(RANDOM, 'requests.json'));
    const files = readdirSync(RANDOM)
      .filter((f) => f.endsWith('.json') && f !== 'requests.json')
      .sort();
    it('has a result per request in every file', () => {
      expect(requests.length).toBeGreaterThan(100);
      for (const f of files) {
        expect(readJson<RandomGolden>(join(RANDOM, f)).results).toHaveLength(requests.length);
      }
    });
    for (const file of files) {
      const g = readJson<RandomGolden>(join(RANDOM, file));
      it(`${g.tokenizer}: ${requests.length} requests as HF transformers renders and encodes them`, async () => {
        const tok = await load(join(ROOT, g.tokenizer_dir));
        try {
          const options = { nowMs: Date.parse(g.clock) };
          for (const [i, request] of requests.entries()) {
            const r = g.results[i] as Pick<Golden, 'ids' | 'error' | 'error_stage'>;
            const body = new TextEncoder().encode(request);
            if (r.error !== undefined) {
              const e = errorOf(() => tok.tokenizeRequest(body, 'chat', options));
              expect(allowedCodes(r), `request ${i}: ${e.message}`).toContain(e.code);
              // A template's raise_exception: its own text (which check refused the request).
              if (r.error_stage === 'chat-template' && r.error.startsWith('TemplateError: ')) {
                expect(e.message, `request ${i}`).toContain(
                  r.error.slice('TemplateError: '.length),
                );
              }
            } else {
              expect([...tok.tokenizeRequest(body, 'chat', options)], `request ${i}`).toEqual(
                r.ids,
              );
            }
          }
        } finally {
          tok.dispose();
        }
      });
    }
  });

  describe(`Tokenizer tiktoken goldens: ${name}`, () => {
    const files = readdirSync(join(GOLDENS, 'tiktoken')).sort();
    for (const file of files) {
      const g = readJson<TiktokenGolden>(join(GOLDENS, 'tiktoken', file));
      describe(g.encoding, () => {
        let tok: Tokenizer;
        beforeAll(async () => {
          tok = await load(g.encoding);
        });
        afterAll(() => tok?.dispose());

        it('loads as kind tiktoken', () => {
          expect(tok.kind).toBe('tiktoken');
          expect(tok.source).toBe(g.encoding);
        });

        it.each(g.cases.map((c) => [c.name, c] as const))('encodes %s', (_n, c) => {
          // Special-token text is ordinary text; add_special_tokens adds nothing (no BOS/EOS).
          expect([...tok.encode(c.text, false)]).toEqual(c.ids);
          expect([...tok.encode(c.text, true)]).toEqual(c.ids);
          const body = new TextEncoder().encode(JSON.stringify({ prompt: c.text }));
          if (c.text === '') {
            // vLLM's CompletionRequest refuses an empty prompt (400).
            expect(() => tok.tokenizeRequest(body, 'completions')).toThrow(
              expect.objectContaining({ code: 'invalid_request' }),
            );
          } else {
            expect([...tok.tokenizeRequest(body, 'completions')]).toEqual(c.ids);
          }
        });

        it('renders chat bodies in the EPP-internal plain format (src/tokenize/plain-chat.ts)', () => {
          const body = new TextEncoder().encode(
            JSON.stringify({
              messages: [
                { role: 'system', content: 'Be brief.' },
                {
                  role: 'user',
                  content: [
                    { type: 'text', text: 'Hi' },
                    { type: 'text', text: '<|im_end|>' },
                  ],
                },
              ],
            }),
          );
          const want =
            '<|im_start|>system\nBe brief.<|im_end|>\n' +
            '<|im_start|>user\nHi\n<|im_end|><|im_end|>\n' +
            '<|im_start|>assistant\n';
          expect(tok.renderChat(body)).toBe(want);
          expect([...tok.tokenizeRequest(body, 'chat')]).toEqual([...tok.encode(want, false)]);
          const cont = new TextEncoder().encode(
            JSON.stringify({
              add_generation_prompt: false,
              continue_final_message: true,
              messages: [
                { role: 'user', content: 'Hi' },
                { role: 'assistant', content: 'Hel' },
              ],
            }),
          );
          expect(tok.renderChat(cont)).toBe(
            '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHel',
          );
          expectError(
            () => tok.renderChat(new TextEncoder().encode('{"messages": []}')),
            ['template_error'],
          );
        });
      });
    }
  });

  describe(`Tokenizer request nesting: ${name}`, () => {
    const enc = new TextEncoder();
    /** `levels` containers in all: the body object, then an array chain in `key`'s value. */
    const nested = (levels: number, head: string) =>
      enc.encode(`{${head},"x":${'['.repeat(levels - 1)}1${']'.repeat(levels - 1)}}`);
    const heads: [ApiKind, string][] = [
      ['chat', '"model":"m","messages":[{"role":"user","content":"hi"}]'],
      ['completions', '"model":"m","prompt":"hi"'],
    ];

    for (const source of ['o200k_base', join(ROOT, 'test/fixtures/tokenizers/qwen3')]) {
      it.each(heads)(
        `takes 127 levels and refuses 128 as unsupported_content, not invalid_json (%s, ${source.split('/').pop()})`,
        async (api, head) => {
          const tok = await load(source);
          try {
            expect(tok.tokenizeRequest(nested(127, head), api).length).toBeGreaterThan(0);
            for (const levels of [128, 20_000]) {
              let thrown: unknown;
              try {
                tok.tokenizeRequest(nested(levels, head), api);
              } catch (e) {
                thrown = e;
              }
              expect(thrown).toMatchObject({
                code: 'unsupported_content',
                message: NESTED_TOO_DEEP,
              });
            }
          } finally {
            tok.dispose();
          }
        },
      );
    }
  });

  describe(`Tokenizer loading: ${name}`, () => {
    it('reports a missing tokenizer as tokenizer_not_found', async () => {
      await expect(load(join(tmpdir(), 'kv-epp-no-such-tokenizer'))).rejects.toMatchObject({
        code: 'tokenizer_not_found',
      });
      await expect(load('p50k_nonexistent')).rejects.toMatchObject({
        code: 'tokenizer_not_found',
      });
    });

    it('reports an unreadable tokenizer.json as tokenizer_invalid', async () => {
      const tmp = mkdtempSync(join(tmpdir(), 'kv-epp-tok-'));
      try {
        writeFileSync(join(tmp, 'tokenizer.json'), '{ not json');
        await expect(load(tmp)).rejects.toMatchObject({ code: 'tokenizer_invalid' });
        await expect(load(join(tmp, 'tokenizer.json'))).rejects.toMatchObject({
          code: 'tokenizer_invalid',
        });
      } finally {
        rmSync(tmp, { recursive: true, force: true });
      }
    });

    it('loads a tokenizer.json path as kind hf', async () => {
      const path = join(ROOT, 'test/fixtures/tokenizers/qwen3/tokenizer.json');
      const tok = await load(path);
      try {
        expect(tok.kind).toBe('hf');
        expect(tok.source).toBe(path);
        expect([...tok.encode('Hello world', false)]).toEqual([9707, 1879]);
      } finally {
        tok.dispose();
      }
    });
  });
}
