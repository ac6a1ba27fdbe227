/**
 * The server's logger: pino, one JSON line per record on stderr, level from
 * `KV_EPP_LOG_LEVEL` (default `info`; serve puts `-v` / `--zap-log-level`
 * there). Each line: `level` (the label), `time` (ms since the epoch),
 * `name: "kv-epp"`, the record's fields, `msg`. bigint values (worker ids,
 * hashes), in arrays and plain objects too, are written as decimal strings so
 * no log reader rounds them. Adapter module: core code only sees the `Logger`
 * interface.
 */
import { type DestinationStream, pino } from 'pino';
import type { Logger } from './logger.js';

const LEVELS = new Set(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']);
/** Deeper values are left to pino (whose JSON writes a bigint as a bare number). */
const MAX_DEPTH = 8;

function isPlainObject(v: object): v is Record<string, unknown> {
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/** `v` with its bigints as decimal strings; `v` itself when it holds none (copied on write). */
function bigintsAsStrings(v: unknown, depth: number): unknown {
  if (typeof v === 'bigint') return v.toString();
  if (typeof v !== 'object' || v === null || depth >= MAX_DEPTH) return v;
  if (Array.isArray(v)) {
    let out: unknown[] | undefined;
    for (let i = 0; i < v.length; i++) {
      const x = v[i];
      const y = bigintsAsStrings(x, depth + 1);
      if (y !== x) {
        out ??= v.slice();
        out[i] = y;
      }
    }
    return out ?? v;
  }
  if (!isPlainObject(v)) return v;
  let out: Record<string, unknown> | undefined;
  for (const k in v) {
    const x = v[k];
    const y = bigintsAsStrings(x, depth + 1);
    if (y !== x) {
      out ??= { ...v };
      out[k] = y;
    }
  }
  return out ?? v;
}

/** Bytes of records waiting for stderr before later ones are dropped (counted by `droppedRecords`). */
export const STDERR_BUFFER_BYTES = 16 * 1024 * 1024;

/** A destination that says when it drops a record (sonic-boom's 'drop' event, one per record). */
type DroppingDestination = DestinationStream & {
  on?(event: 'drop', listener: (data: unknown) => void): unknown;
};

/**
 * The pino logger for `env`. `destination` (tests) replaces stderr; pino then
 * writes each record to it synchronously. Records a destination drops (its
 * 'drop' event) are counted by the logger's `droppedRecords`.
 */
export function pinoLogger(
  env: Record<string, string | undefined>,
  // A stderr nobody reads holds at most STDERR_BUFFER_BYTES; later records are dropped, not buffered without end.
  destination: DroppingDestination = pino.destination({
    fd: 2,
    sync: false,
    maxLength: STDERR_BUFFER_BYTES,
  }),
): Logger {
  let dropped = 0;
  destination.on?.('drop', () => {
    dropped++;
  });
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
            method.apply(this, [bigintsAsStrings(first, 0), ...rest] as never);
          } else {
            method.apply(this, args);
          }
        },
      },
    },
    destination,
  );
  if (!LEVELS.has(wanted)) log.warn({ KV_EPP_LOG_LEVEL: wanted }, 'unknown log level; using info');
  return {
    debug: (f, m) => log.debug(f, m),
    info: (f, m) => log.info(f, m),
    warn: (f, m) => log.warn(f, m),
    error: (f, m) => log.error(f, m),
    isLevelEnabled: (l) => log.isLevelEnabled(l),
    droppedRecords: () => dropped,
  };
}
