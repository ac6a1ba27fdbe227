/**
 * The logging seam used by core modules: a pino-compatible subset, so the
 * server can pass a pino logger and tests a recorder. The default writes one
 * JSON line per record to stderr, at info and above.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface Logger {
  /** Off unless the level asks for it (`KV_EPP_LOG_LEVEL=debug`, `-v 3`, `--zap-log-level=debug`). */
  debug(fields: Record<string, unknown>, msg: string): void;
  info(fields: Record<string, unknown>, msg: string): void;
  warn(fields: Record<string, unknown>, msg: string): void;
  error(fields: Record<string, unknown>, msg: string): void;
  /**
   * Whether a record at `level` would be written, so the hot path builds a
   * record's fields only when it will be (as pino's `isLevelEnabled`).
   * Absent: every level is (test recorders).
   */
  isLevelEnabled?(level: LogLevel): boolean;
  /**
   * Records dropped so far because the destination's buffer was full (a
   * stderr nobody reads); absent: the logger never drops.
   */
  droppedRecords?(): number;
}

/** `log.isLevelEnabled(level)`, true for a logger that cannot tell. */
export function levelEnabled(log: Logger, level: LogLevel): boolean {
  return log.isLevelEnabled?.(level) ?? true;
}

function line(level: string, fields: Record<string, unknown>, msg: string): void {
  const rec = { level, time: Date.now(), msg, ...fields };
  console.error(JSON.stringify(rec, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)));
}

export const stderrLogger: Logger = {
  debug: () => {},
  info: (f, m) => line('info', f, m),
  warn: (f, m) => line('warn', f, m),
  error: (f, m) => line('error', f, m),
  isLevelEnabled: (level) => level !== 'debug',
};
