#!/usr/bin/env node
/**
 * `kv-epp` entry: dispatches subcommands. Usage errors print one line naming
 * the field and exit 2; other failures print one line and exit 1.
 */
import { serveLogEnv } from '../config/serve-options.js';
import { KvEppError } from '../errors.js';
import { pinoLogger } from '../log/pino.js';
import { UsageError } from './args.js';
import { EVENTS_USAGE, eventsCommand } from './events.js';
import { HASH_USAGE, hashCommand } from './hash.js';
import { SERVE_USAGE, startServing } from './serve.js';
import { TOKENIZE_USAGE, tokenizeCommand } from './tokenize.js';

const USAGE = `usage: kv-epp <command> [options]

commands:
  serve      run the Endpoint Picker (ext_proc on 9002, health on 9003)
  hash       print Dynamo-compatible KV block hashes of token ids
  tokenize   print the prompt token ids (and block hashes) the EPP computes for a request
  events     replay captured KV-event payloads into a fresh index and print a query's overlap

${SERVE_USAGE}
${HASH_USAGE}
${TOKENIZE_USAGE}
${EVENTS_USAGE}`;

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case 'hash':
        process.stdout.write(`${await hashCommand(rest)}\n`);
        return 0;
      case 'serve': {
        if (rest.includes('--help') || rest.includes('-h')) {
          process.stdout.write(`${SERVE_USAGE}\n`);
          return 0;
        }
        const log = pinoLogger(serveLogEnv(rest, process.env));
        const serving = await startServing(rest, process.env, log);
        // SIGHUP would end the process at once, without the drain: there is
        // nothing to reload by signal (the endpoints file and certificates are watched).
        process.on('SIGHUP', () =>
          log.info(
            {},
            'SIGHUP ignored: the endpoints file and certificates are reloaded when they change',
          ),
        );
        await new Promise<void>((resolve) => {
          const stop = () => resolve();
          process.once('SIGINT', stop);
          process.once('SIGTERM', stop);
        });
        // A second signal while draining (Ctrl-C twice) stops at once.
        const now = () => {
          process.stderr.write('kv-epp: second signal, stopping now\n');
          process.exit(130);
        };
        process.once('SIGINT', now);
        process.once('SIGTERM', now);
        await serving.shutdown();
        // Nothing left over (a file read that never completes, a stray socket)
        // may keep a server that has stopped alive: exit soon whatever holds the loop.
        setTimeout(() => process.exit(0), 2000).unref();
        return 0;
      }
      case 'events':
        process.stdout.write(`${await eventsCommand(rest)}\n`);
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
