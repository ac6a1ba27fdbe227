/**
 * `kv-epp tokenize`: the prompt token ids the EPP computes for a text or an
 * OpenAI request body, exactly as the server would (same normalisation and
 * chat template, and the same prompt dialect: `dynamo` unless
 * `--prompt-dialect vllm`). Output (stable): `{"tokens":[...],"count":N}`, plus
 * `"local"`/`"sequence"` block hashes (decimal strings) with `--block-size`.
 */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { createBlockHasher } from '../kv/factory.js';
import type { BackendChoice } from '../kv/types.js';
import { createTokenizer } from '../tokenize/factory.js';
import type { ApiKind } from '../tokenize/types.js';
import { parseIntOption, UsageError } from './args.js';

export const TOKENIZE_USAGE = `usage: kv-epp tokenize --tokenizer DIR|tokenizer.json|o200k_base|cl100k_base
                    [--backend auto|native|js] [--chat-template FILE.jinja]
                    [--prompt-dialect dynamo|vllm]
                    (--text S [--add-special-tokens] | --request BODY.json [--api chat|completions])
                    [--block-size N [--lora-name S] [--cache-namespace S]] [--now ISO-8601]`;

export async function tokenizeCommand(argv: string[]): Promise<string> {
  const { values } = parseArgs({
    args: argv,
    options: {
      tokenizer: { type: 'string' },
      backend: { type: 'string', default: 'auto' },
      'chat-template': { type: 'string' },
      'prompt-dialect': { type: 'string', default: 'dynamo' },
      text: { type: 'string' },
      'add-special-tokens': { type: 'boolean', default: false },
      request: { type: 'string' },
      api: { type: 'string' },
      'block-size': { type: 'string' },
      'lora-name': { type: 'string' },
      'cache-namespace': { type: 'string' },
      now: { type: 'string' },
    },
    strict: true,
  });
  if (values.tokenizer === undefined) throw new UsageError('--tokenizer', 'is required');
  const backend = values.backend as string;
  if (!['auto', 'native', 'js'].includes(backend)) {
    throw new UsageError('--backend', `must be auto, native or js, got ${backend}`);
  }
  const dialect = values['prompt-dialect'] as string;
  if (dialect !== 'dynamo' && dialect !== 'vllm') {
    throw new UsageError('--prompt-dialect', `must be dynamo or vllm, got ${dialect}`);
  }
  if ((values.text === undefined) === (values.request === undefined)) {
    throw new UsageError('--text', 'give exactly one of --text or --request');
  }
  let nowMs = Date.now();
  if (values.now !== undefined) {
    nowMs = Date.parse(values.now);
    if (Number.isNaN(nowMs)) throw new UsageError('--now', `not an ISO-8601 time: ${values.now}`);
  }
  const chatTemplate =
    values['chat-template'] === undefined
      ? undefined
      : await readText(values['chat-template'], '--chat-template');
  const tokenizer = await createTokenizer(
    { source: values.tokenizer, chatTemplate, dialect },
    backend as BackendChoice,
  );
  let tokens: Uint32Array;
  if (values.text !== undefined) {
    tokens = tokenizer.encode(values.text, values['add-special-tokens'] ?? false);
  } else {
    const file = values.request as string;
    const body = new TextEncoder().encode(await readText(file, '--request'));
    const api = (values.api ?? (file.includes('completion') ? 'completions' : 'chat')) as ApiKind;
    if (api !== 'chat' && api !== 'completions') {
      throw new UsageError('--api', `must be chat or completions, got ${api}`);
    }
    tokens = tokenizer.tokenizeRequest(body, api, { nowMs });
  }
  const out: Record<string, unknown> = { tokens: Array.from(tokens), count: tokens.length };
  if (values['block-size'] !== undefined) {
    const blockSize = parseIntOption(values['block-size'], '--block-size', 1, 1024);
    const hasher = await createBlockHasher(backend as BackendChoice);
    const h = hasher.hash(tokens, blockSize, {
      loraName: values['lora-name'],
      cacheNamespace: values['cache-namespace'],
    });
    out.local = Array.from(h.local, String);
    out.sequence = Array.from(h.sequence, String);
  }
  tokenizer.dispose();
  return JSON.stringify(out);
}

async function readText(file: string, field: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (e) {
    throw new UsageError(field, `cannot read ${file}: ${(e as Error).message}`);
  }
}
