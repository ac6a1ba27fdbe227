/**
 * The logging seam used by core modules: a pino-compatible subset, so the
 * server can pass a pino logger and tests a recorder. The default writes one
 * JSON line per record to stderr.
 */
export interface Logger {
  info(fields: Record<string, unknown>, msg: string): void;
  warn(fields: Record<string, unknown>, msg: string): void;
  error(fields: Record<string, unknown>, msg: string): void;
}

function line(level: string, fields: Record<string, unknown>, msg: string): void {
  const rec = { level, time: Date.now(), msg, ...fields };
  console.error(JSON.stringify(rec, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)));
}

export const stderrLogger: Logger = {
  info: (f, m) => line('info', f, m),
  warn: (f, m) => line('warn', f, m),
  error: (f, m) => line('error', f, m),
};
