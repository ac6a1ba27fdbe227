#!/usr/bin/env node
/**
 * `kv-epp` entry: dispatches subcommands. Usage errors print one line naming
 * the field and exit 2; other failures print one line and exit 1.
 */
import { KvEppError } from '../errors.js';
import { UsageError } from './args.js';
import { HASH_USAGE, hashCommand } from './hash.js';
import { TOKENIZE_USAGE, tokenizeCommand } from './tokenize.js';

const USAGE = `usage: kv-epp <command> [options]

commands:
  hash       print Dynamo-compatible KV block hashes of token ids
  tokenize   print the prompt token ids (and block hashes) the EPP computes for a request

${HASH_USAGE}
${TOKENIZE_USAGE}`;

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case 'hash':
        process.stdout.write(`${await hashCommand(rest)}\n`);
        return 0;
      case 'tokenize':
        process.stdout.write(`${await tokenizeCommand(rest)}\n`);
        return 0;
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(`${USAGE}\n`);
        return cmd === undefined ? 2 : 0;
      default:
        process.stderr.write(`kv-epp: error: unknown command ${JSON.stringify(cmd)}\n${USAGE}\n`);
        return 2;
    }
  } catch (e) {
    if (e instanceof UsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      // One line, always: parseArgs messages may span several.
      const msg = (e as Error).message.replace(/\s*\n\s*/g, ' ');
      process.stderr.write(`kv-epp ${cmd}: error: ${msg}\n`);
      return 2;
    }
    if (e instanceof KvEppError) {
      process.stderr.write(`kv-epp ${cmd}: error: ${e.code}: ${e.message}\n`);
      return 1;
    }
    process.stderr.write(`kv-epp ${cmd}: error: ${(e as Error).stack ?? String(e)}\n`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
