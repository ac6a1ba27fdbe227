/**
 * `kv-epp hash`: prints the Dynamo-compatible block hashes of a token list.
 * Output (stable): `{"local":["<u64>",...],"sequence":["<u64>",...]}` with
 * hashes as decimal strings, since JSON numbers cannot carry u64.
 */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { createBlockHasher } from '../kv/factory.js';
import type { BackendChoice } from '../kv/types.js';
import { parseIntOption, parseTokenList, tokensFromJson, UsageError } from './args.js';

export const HASH_USAGE = `usage: kv-epp hash --block-size N [--lora-name S] [--cache-namespace S]
                    [--backend auto|native|js] (--tokens 1,2,3 | --tokens-file F.json)`;

export async function hashCommand(argv: string[]): Promise<string> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'block-size': { type: 'string' },
      'lora-name': { type: 'string' },
      'cache-namespace': { type: 'string' },
      backend: { type: 'string', default: 'auto' },
      tokens: { type: 'string' },
      'tokens-file': { type: 'string' },
    },
    strict: true,
  });
  const blockSize = parseIntOption(values['block-size'], '--block-size', 1, 1024);
  const backend = values.backend as string;
  if (!['auto', 'native', 'js'].includes(backend)) {
    throw new UsageError('--backend', `must be auto, native or js, got ${backend}`);
  }
  if ((values.tokens === undefined) === (values['tokens-file'] === undefined)) {
    throw new UsageError('--tokens', 'give exactly one of --tokens or --tokens-file');
  }
  let tokens: Uint32Array;
  if (values.tokens !== undefined) {
    tokens = parseTokenList(values.tokens);
  } else {
    const file = values['tokens-file'] as string;
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (e) {
      throw new UsageError('--tokens-file', `cannot read ${file}: ${(e as Error).message}`);
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new UsageError('--tokens-file', `invalid JSON in ${file}: ${(e as Error).message}`);
    }
    tokens = tokensFromJson(json);
  }
  const hasher = await createBlockHasher(backend as BackendChoice);
  const { local, sequence } = hasher.hash(tokens, blockSize, {
    loraName: values['lora-name'],
    cacheNamespace: values['cache-namespace'],
  });
  return JSON.stringify({
    local: Array.from(local, (h) => h.toString()),
    sequence: Array.from(sequence, (h) => h.toString()),
  });
}
