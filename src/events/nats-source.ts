/**
 * Dynamo's event plane over core NATS (Dynamo 1.6's default): subscribes to
 * the workers' `…kv-events` subjects and hands every message, as raw bytes,
 * to the ingest queue. Adapter module: the only place the event path touches
 * NATS.
 *
 * - Subjects: `namespace.<ns>.component.<comp>.endpoint.<ep>.kv-events`
 *   (Dynamo 1.6.1, observed on the wire); the default subscribes to every
 *   component and endpoint of the namespace with wildcards.
 * - Codec per message: Dynamo 1.6's two-layer msgpack envelope, or the JSON
 *   `RouterEvent` form (`DYN_EVENT_PLANE_CODEC=json`, older releases), told
 *   apart by the first byte (a JSON object/array starts with `{`/`[`, which
 *   no msgpack map/array does).
 * - Reconnects forever (core NATS has no replay: events published while
 *   disconnected are lost and show up as event-id gaps).
 */
import type { Subscription } from '@nats-io/transport-node';
import type { Logger } from '../log/logger.js';
import type { ReportedLoad } from '../routing/worker-load.js';
import { sniffDynamoCodec } from './dynamo-codec.js';
import type { EventIngest } from './ingest.js';
import { connectNats, redactNatsServers } from './nats-connect.js';

export interface NatsEventSourceOptions {
  /** `nats://host:port` (Dynamo's `NATS_SERVER`); several comma-separated. */
  servers: string;
  /** Subjects to subscribe to (wildcards allowed). */
  subjects: readonly string[];
  ingest: EventIngest;
  log: Logger;
  /** Connection name shown by the server; default `kv-epp`. */
  name?: string | undefined;
  /** Worker load reports (`…kv_metrics`) on the same connection. */
  loads?: LoadSubscription | undefined;
  /** Each disconnect, reconnect or connection error (metrics). */
  onConnectionEvent?: ((event: 'disconnect' | 'reconnect' | 'error') => void) | undefined;
}

/** Where `kv_metrics` messages go: decoded (exact u64 ids) and recorded. */
export interface LoadSubscription {
  subjects: readonly string[];
  /** Decodes one message; null when it is not a load report. */
  decode: (payload: Uint8Array) => ReportedLoad | null;
  onLoad: (load: ReportedLoad) => void;
}

export interface NatsEventSource {
  /** Messages received, per subscription subject. */
  received(): number;
  close(): Promise<void>;
}

/** Dynamo's worker-load subject (`KV_METRICS_SUBJECT`) for one component endpoint. */
export function kvMetricsSubject(namespace: string, component = '*', endpoint = '*'): string {
  return `namespace.${namespace}.component.${component}.endpoint.${endpoint}.kv_metrics`;
}

/** Dynamo's event subject for one component endpoint; `*` wildcards allowed. */
export function kvEventsSubject(namespace: string, component = '*', endpoint = '*'): string {
  return `namespace.${namespace}.component.${component}.endpoint.${endpoint}.kv-events`;
}

/**
 * Resolves once the server holds every subscription: an event published after
 * that reaches the ingest. Rejects when the server cannot be reached at start.
 */
export async function startNatsEventSource(opts: NatsEventSourceOptions): Promise<NatsEventSource> {
  const shown = redactNatsServers(opts.servers);
  const { nc, auth } = await connectNats(opts.servers, opts.name ?? 'kv-epp');
  let received = 0;
  const subs: Subscription[] = opts.subjects.map((subject) =>
    nc.subscribe(subject, {
      callback: (err, m) => {
        if (err) {
          opts.log.warn({ subject, err: err.message }, 'NATS subscription error');
          return;
        }
        received++;
        // The message's bytes may be a view into the connection's read buffer; the
        // ingest queue holds them past this callback, so copy.
        const payload = m.data.slice();
        opts.ingest.push({ codec: sniffDynamoCodec(payload), payload, source: m.subject });
      },
    }),
  );
  let badLoads = 0;
  const loads = opts.loads;
  if (loads) {
    for (const subject of loads.subjects) {
      subs.push(
        nc.subscribe(subject, {
          callback: (err, m) => {
            if (err) return;
            const load = loads.decode(m.data);
            if (load) loads.onLoad(load);
            else if (badLoads++ === 0) {
              opts.log.warn({ subject: m.subject }, 'undecodable kv_metrics message ignored');
            }
          },
        }),
      );
    }
  }
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect' || s.type === 'reconnect' || s.type === 'error') {
        opts.log.warn({ servers: shown, status: s.type }, `NATS connection ${s.type}`);
        opts.onConnectionEvent?.(s.type);
      }
    }
  })().catch(() => {});
  // A round trip after the SUBs: the server has them once the PONG is back, so every event
  // published after this resolves is delivered (core NATS never replays one sent earlier).
  try {
    await nc.flush();
  } catch (e) {
    await nc.close().catch(() => {});
    throw e;
  }
  opts.log.info(
    { servers: shown, auth, subjects: opts.subjects },
    'subscribed to KV events on NATS',
  );
  return {
    received: () => received,
    async close() {
      for (const s of subs) s.unsubscribe();
      await nc.drain().catch(() => nc.close());
    },
  };
}
