/**
 * The kv-epp modules the events bench drives, loaded from dist/ (build with
 * `npm run build:ts`): the production event path, nothing re-implemented.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DIST = join(ROOT, 'dist');

const need = [
  'src/kv/factory.js',
  'src/kv/native/binding.js',
  'src/events/factory.js',
  'src/events/ingest.js',
  'src/events/nats-source.js',
  'src/events/zmq-source.js',
  'src/metrics/registry.js',
  'src/metrics/observer.js',
  'test/support/nats-server.js',
];
for (const f of need) {
  if (!existsSync(join(DIST, f))) {
    throw new Error(`dist/${f} missing: run \`source scripts/env.sh && npm run build:ts\` first`);
  }
}
const load = (f) => import(pathToFileURL(join(DIST, f)).href);

export const { createKvIndex } = await load('src/kv/factory.js');
export const { loadNativeBinding } = await load('src/kv/native/binding.js');
export const { createEventApplier } = await load('src/events/factory.js');
export const { EventIngest } = await load('src/events/ingest.js');
export const { startNatsEventSource, kvEventsSubject } = await load('src/events/nats-source.js');
export const { startZmqEventSources } = await load('src/events/zmq-source.js');
export const { EppMetrics } = await load('src/metrics/registry.js');
export const { eventMetricsObserver } = await load('src/metrics/observer.js');
export const { startNatsServer } = await load('test/support/nats-server.js');

/** A logger that counts records by message and keeps the first few (the bench prints them). */
export function recordingLogger(echo = false) {
  const counts = new Map();
  const first = [];
  const rec = (level) => (fields, msg) => {
    const key = `${level}: ${msg}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
    if (first.length < 20) {
      first.push({
        level,
        msg,
        fields: JSON.parse(
          JSON.stringify(fields, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)),
        ),
      });
    }
    if (echo) console.error(level, msg, fields);
  };
  return {
    log: { info: rec('info'), warn: rec('warn'), error: rec('error') },
    summary: () => ({ counts: Object.fromEntries(counts), first }),
    reset: () => {
      counts.clear();
      first.length = 0;
    },
  };
}
