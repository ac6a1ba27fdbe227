/**
 * The server's logger: pino, one JSON line per record on stderr, level from
 * `KV_EPP_LOG_LEVEL` (default `info`). bigint fields (worker ids, hashes) are
 * written as decimal strings so no log reader rounds them. Adapter module:
 * core code only sees the `Logger` interface.
 */
import { pino } from 'pino';
import type { Logger } from './logger.js';

const LEVELS = new Set(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']);

function bigintsAsStrings(fields: Record<string, unknown>): Record<string, unknown> {
  let out: Record<string, unknown> | undefined;
  for (const [k, v] of Object.entries(fields)) {
    if (typeof v === 'bigint') {
      out ??= { ...fields };
      out[k] = v.toString();
    }
  }
  return out ?? fields;
}

export function pinoLogger(env: Record<string, string | undefined>): Logger {
  const wanted = (env.KV_EPP_LOG_LEVEL ?? 'info').toLowerCase();
  const level = LEVELS.has(wanted) ? wanted : 'info';
  const log = pino(
    {
      level,
      base: { name: 'kv-epp' },
      formatters: { level: (label) => ({ level: label }) },
      hooks: {
        logMethod(args, method) {
          const [first, ...rest] = args;
          if (typeof first === 'object' && first !== null) {
            method.apply(this, [
              bigintsAsStrings(first as Record<string, unknown>),
              ...rest,
            ] as never);
          } else {
            method.apply(this, args);
          }
        },
      },
    },
    pino.destination({ fd: 2, sync: false }),
  );
  if (!LEVELS.has(wanted)) log.warn({ KV_EPP_LOG_LEVEL: wanted }, 'unknown log level; using info');
  return {
    info: (f, m) => log.info(f, m),
    warn: (f, m) => log.warn(f, m),
    error: (f, m) => log.error(f, m),
  };
}
