/**
 * Dynamo's durable KV-event mode over JetStream (`--durable-kv-events`,
 * `DYN_ROUTER_DURABLE_KV_EVENTS`): one stream per component that workers publish JSON
 * `RouterEvent`s to, a durable pull consumer per router, and a `radix-state` snapshot in
 * the object store. Adapter module: every message goes, as raw bytes, to the ingest queue.
 * Names and formats (checked against Dynamo's sources): src/events/jetstream-names.ts.
 *
 * Start-up, so that a restarted EPP rebuilds the whole index:
 * 1. The stream is created if missing, with Dynamo's config (subjects `{stream}.*`, `max_age`
 *    = `DYN_NATS_STREAM_MAX_AGE`, default 3600 s, everything else default).
 * 2. The durable consumer `consumerName` (stable per EPP instance, e.g. the pod name) is
 *    deleted and created again with deliver policy "all", explicit acks and
 *    `inactive_threshold` 3600 s. A new process has an empty index, so it needs the whole
 *    retained stream, not the rest after the previous process's ack floor. Dynamo gets the
 *    same effect differently: its consumer is named after the router's instance id, which is
 *    new in every process (and deleted on a clean shutdown, as here).
 * 3. Unless `resetStates`, the snapshot object is read (again every 100 ms until two reads in
 *    a row are equal, at most 10 more reads, as `download_stable_snapshot`), decoded (Dynamo
 *    writes bincode; a JSON array is accepted too), and applied before any stream message:
 *    pushed as `dynamo-json` messages, drained, then each snapshot worker's event-id state is
 *    forgotten so the stream's ids start afresh. Event ids are renumbered per holder (see
 *    `snapshotMessages`): Dynamo's dump numbers them with one counter for the whole tree.
 * 4. Messages are consumed in stream order. Events in the stream older than the snapshot are
 *    applied again, as in Dynamo (it replays the retained stream on top of the snapshot);
 *    replaying a suffix in order on a state that already includes it converges to the same
 *    state.
 *
 * Delivery and acks:
 * - Each message's bytes are pushed to the ingest (codec sniffed: JSON → `dynamo-json`), then
 *   acked. The ingest applies asynchronously, so an ack means "queued in this process", not
 *   "applied": Dynamo's `NatsQueue::dequeue_task` likewise acks when it dequeues, before the
 *   indexer applies. A crash between ack and apply loses nothing that matters: the next
 *   process rebuilds from the stream start (step 2).
 * - Exactly once, in stream order, per process: the last pushed stream sequence is kept. A
 *   redelivery at or below it (an ack lost in a NATS restart) is acked and skipped; a jump
 *   past it (a message delivered by a server that then crashed, redelivered only after
 *   `ack_wait`) is filled at once by reading the missing sequences from the stream (those
 *   deleted or aged out are skipped). So NATS restarts, even SIGKILL, neither lose nor
 *   reorder events, and nobody waits for `ack_wait`.
 * - Backpressure: while the ingest holds `maxPendingMessages` / `maxPendingBytes` or more,
 *   no message is pushed (the pull stops), so a flood is never dropped here (keep both below
 *   the ingest's own bounds; a message the ingest still refuses is counted there as dropped,
 *   as for every source, and acked).
 * - `consumerName` must be unique among live EPP processes: two processes on one durable
 *   consumer would each get part of the stream (and each start deletes the other's).
 * - The connection reconnects forever. If the consumer disappears (inactive threshold, or a
 *   Dynamo router's orphan-consumer cleanup, which deletes consumers not named after a live
 *   router) it is created again from the next stream sequence; a stream recreated from
 *   sequence 1 resets the position.
 *
 * Not done: writing snapshots. A faithful snapshot is a dump of the index as `RouterEvent`s,
 * and `KvIndex` has no dump API; `snapshot.enabled` only logs that. `resetStates` skips the
 * snapshot and delivers only new messages; unlike Dynamo it neither purges the shared stream
 * nor deletes the shared bucket (that would reset every other router of the component).
 */
import {
  AckPolicy,
  type ConsumerMessages,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  type JetStreamManager,
  type JsMsg,
  jetstream,
  jetstreamManager,
} from '@nats-io/jetstream';
import { Objm } from '@nats-io/obj';
import { nanos } from '@nats-io/transport-node';
import type { Logger } from '../log/logger.js';
import { sniffDynamoCodec } from './dynamo-codec.js';
import type { EventIngest } from './ingest.js';
import {
  CONSUMER_INACTIVE_THRESHOLD_SECS,
  DEFAULT_STREAM_MAX_AGE_SECS,
  decodeRadixSnapshot,
  durableConsumerName,
  kvStreamName,
  kvStreamSubjects,
  RADIX_STATE_FILE,
  radixBucketName,
  snapshotMessages,
} from './jetstream-names.js';
import { connectNats, redactNatsServers } from './nats-connect.js';

export interface JetStreamEventSourceOptions {
  /** Each disconnect, reconnect or connection error (metrics). */
  onConnectionEvent?: ((event: 'disconnect' | 'reconnect' | 'error') => void) | undefined;
  /** `nats://host:port` (Dynamo's `NATS_SERVER`); several comma-separated. */
  servers: string;
  /** Dynamo namespace and component of the workers (`--namespace`, `--component`). */
  namespace: string;
  component: string;
  /**
   * This EPP instance's durable consumer (the pod name, else `--pool-name`): stable across
   * restarts of the same instance, distinct between instances. Slugified (`.` → `-`).
   */
  consumerName: string;
  ingest: Pick<EventIngest, 'push' | 'drainAll' | 'forgetWorker' | 'stats'>;
  log: Logger;
  /** kv-epp's own snapshots: not supported yet (no index dump); `enabled` logs a warning. */
  snapshot?: { enabled: boolean; everyMessages: number } | undefined;
  /** Ignore the snapshot and the retained stream; consume only new messages. */
  resetStates?: boolean | undefined;
  /** Stream `max_age` when this source creates the stream (`DYN_NATS_STREAM_MAX_AGE`). */
  streamMaxAgeSecs?: number | undefined;
  /** Consumer `inactive_threshold`, seconds; default 3600. */
  inactiveThresholdSecs?: number | undefined;
  /** Stop pulling while the ingest holds this many messages; default 8192. */
  maxPendingMessages?: number | undefined;
  /** Stop pulling while the ingest holds this many payload bytes; default 64 MiB. */
  maxPendingBytes?: number | undefined;
  /** Messages per pull request; default 256. */
  batchSize?: number | undefined;
  /** Delay between snapshot reads; default 100 ms (Dynamo's `SNAPSHOT_STABILITY_DELAY`). */
  snapshotStabilityDelayMs?: number | undefined;
  /** Snapshot events per `dynamo-json` message; default 50 000. */
  snapshotChunkEvents?: number | undefined;
  /** Delete the durable consumer on `close()` (Dynamo does, on shutdown); default true. */
  deleteConsumerOnClose?: boolean | undefined;
  /** Connection name shown by the server; default `kv-epp`. */
  name?: string | undefined;
}

export interface JetStreamEventSourceStats {
  stream: string;
  consumer: string;
  bucket: string;
  snapshot: {
    /** `none`: no object (or reset); `unreadable`: present but neither JSON nor bincode. */
    format: 'none' | 'json' | 'bincode' | 'unreadable';
    events: number;
    /** Object reads made by the stability check. */
    reads: number;
  };
  /** Messages delivered by the consumer (redeliveries included). */
  received: number;
  /** Messages handed to the ingest (consumer and gap fill), each stream sequence once. */
  pushed: number;
  /** Redeliveries at or below the last pushed sequence: acked, not pushed again. */
  duplicates: number;
  /** Sequences read straight from the stream to fill a jump. */
  gapFilled: number;
  /** Sequences of a jump that the stream no longer has (deleted, aged out, purged). */
  missing: number;
  /** Last stream sequence pushed; 0 before the first. */
  lastSequence: number;
  /** Times the consumer was created after start-up (it had disappeared). */
  consumerRecreated: number;
  connected: boolean;
}

export interface JetStreamEventSource {
  stats(): JetStreamEventSourceStats;
  /** Stops consuming, deletes the durable consumer (unless told not to), closes the connection. */
  close(): Promise<void>;
}

const MAX_SNAPSHOT_STABILITY_ATTEMPTS = 10;
const DIRECT_FILL_CHECK = 64;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function apiCode(e: unknown): number | undefined {
  return e instanceof JetStreamApiError ? e.code : undefined;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export async function startJetStreamEventSource(
  opts: JetStreamEventSourceOptions,
): Promise<JetStreamEventSource> {
  const { ingest, log } = opts;
  const stream = kvStreamName(opts.namespace, opts.component);
  const bucket = radixBucketName(opts.namespace, opts.component);
  const durable = durableConsumerName(opts.consumerName);
  const maxAgeSecs = opts.streamMaxAgeSecs ?? DEFAULT_STREAM_MAX_AGE_SECS;
  const inactiveSecs = opts.inactiveThresholdSecs ?? CONSUMER_INACTIVE_THRESHOLD_SECS;
  const maxPending = opts.maxPendingMessages ?? 8192;
  const maxPendingBytes = opts.maxPendingBytes ?? 64 * 1024 * 1024;
  const batch = opts.batchSize ?? 256;
  const where = { servers: redactNatsServers(opts.servers), stream, consumer: durable };

  const st: JetStreamEventSourceStats = {
    stream,
    consumer: durable,
    bucket,
    snapshot: { format: 'none', events: 0, reads: 0 },
    received: 0,
    pushed: 0,
    duplicates: 0,
    gapFilled: 0,
    missing: 0,
    lastSequence: 0,
    consumerRecreated: 0,
    connected: true,
  };

  if (opts.snapshot?.enabled) {
    log.warn(
      where,
      'writing KV-index snapshots is not supported (the index has no dump); only Dynamo’s radix-state snapshot is read',
    );
  }

  const { nc } = await connectNats(opts.servers, opts.name ?? 'kv-epp');
  let closed = false;
  /** Next stream sequence to push; undefined until the first message of a fresh consumer. */
  let next: number | undefined;
  let current: ConsumerMessages | undefined;
  let needConsumer = false;

  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') st.connected = false;
      if (s.type === 'reconnect') st.connected = true;
      if (s.type === 'disconnect' || s.type === 'reconnect' || s.type === 'error') {
        log.warn({ ...where, status: s.type }, `NATS connection ${s.type}`);
        opts.onConnectionEvent?.(s.type);
      }
    }
  })().catch(() => {});

  let jsm: JetStreamManager;
  try {
    jsm = await jetstreamManager(nc);
    await ensureStream(jsm);
    await createConsumer(jsm, opts.resetStates ? DeliverPolicy.New : DeliverPolicy.All);
    if (!opts.resetStates) await loadSnapshot();
  } catch (e) {
    await nc.close().catch(() => {});
    throw e;
  }
  const js = jetstream(nc);

  async function ensureStream(m: JetStreamManager): Promise<void> {
    try {
      await m.streams.info(stream);
      return;
    } catch (e) {
      if (apiCode(e) !== JetStreamApiCodes.StreamNotFound) throw e;
    }
    try {
      await m.streams.add({
        name: stream,
        subjects: kvStreamSubjects(stream),
        max_age: nanos(maxAgeSecs * 1000),
      });
      log.info({ ...where, maxAgeSecs }, 'created the KV-event stream');
    } catch (e) {
      // Another router created it meanwhile.
      await m.streams.info(stream).catch(() => {
        throw e;
      });
    }
  }

  async function createConsumer(
    m: JetStreamManager,
    policy: DeliverPolicy,
    startSeq?: number,
  ): Promise<void> {
    try {
      await m.consumers.delete(stream, durable);
    } catch (e) {
      if (apiCode(e) !== JetStreamApiCodes.ConsumerNotFound) throw e;
    }
    await m.consumers.add(stream, {
      durable_name: durable,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: policy,
      ...(startSeq !== undefined ? { opt_start_seq: startSeq } : {}),
      inactive_threshold: nanos(inactiveSecs * 1000),
    });
  }

  /** Read the snapshot object as Dynamo does: until two reads agree (or reads fail). */
  async function readStableSnapshot(): Promise<Uint8Array | null> {
    const objm = new Objm(nc);
    const read = async () => {
      st.snapshot.reads++;
      const os = await objm.open(bucket);
      return os.getBlob(RADIX_STATE_FILE);
    };
    let prev: Uint8Array | null;
    try {
      prev = await read();
    } catch (e) {
      const msg = (e as Error).message;
      if (/not found/i.test(msg)) {
        log.info({ ...where, bucket }, 'no radix-state snapshot bucket; replaying the stream only');
      } else {
        log.warn({ ...where, bucket, err: msg }, 'radix-state snapshot unreadable; stream only');
      }
      return null;
    }
    if (prev === null) return null;
    const delay = opts.snapshotStabilityDelayMs ?? 100;
    for (let attempt = 1; attempt <= MAX_SNAPSHOT_STABILITY_ATTEMPTS; attempt++) {
      await sleep(delay);
      let cur: Uint8Array | null;
      try {
        cur = await read();
      } catch (e) {
        cur = null;
        log.warn({ ...where, attempt, err: (e as Error).message }, 'snapshot re-read failed');
      }
      if (cur === null || sameBytes(prev, cur)) break;
      prev = cur;
    }
    return prev;
  }

  async function loadSnapshot(): Promise<void> {
    const bytes = await readStableSnapshot();
    if (bytes === null) return;
    let snap: ReturnType<typeof decodeRadixSnapshot>;
    try {
      snap = decodeRadixSnapshot(bytes);
    } catch (e) {
      st.snapshot.format = 'unreadable';
      log.warn(
        { ...where, bucket, bytes: bytes.length, err: (e as Error).message },
        'radix-state snapshot is neither JSON nor a known bincode layout; replaying the stream only',
      );
      return;
    }
    const { payloads, workerIds } = snapshotMessages(snap.events, opts.snapshotChunkEvents);
    const enc = new TextEncoder();
    for (const p of payloads) {
      if (
        !ingest.push({
          codec: 'dynamo-json',
          payload: enc.encode(p),
          source: `${bucket}/radix-state`,
        })
      ) {
        log.warn({ ...where, bucket }, 'KV event queue full while applying the snapshot');
      }
      // Applied now, in order, before anything from the stream.
      ingest.drainAll();
    }
    // The stream's event ids are unrelated to the renumbered snapshot ones.
    for (const w of workerIds) ingest.forgetWorker(w);
    st.snapshot.format = snap.format;
    st.snapshot.events = snap.events.length;
    log.info(
      {
        ...where,
        bucket,
        format: snap.format,
        events: snap.events.length,
        workers: workerIds.length,
      },
      'applied the radix-state snapshot',
    );
  }

  async function backpressure(): Promise<void> {
    for (;;) {
      const s = ingest.stats();
      if (closed || (s.queued < maxPending && s.queuedBytes < maxPendingBytes)) return;
      await sleep(2);
    }
  }

  function push(data: Uint8Array, subject: string, seq: number): void {
    // The bytes may be a view into the connection's read buffer; the queue keeps them.
    const payload = data.slice();
    ingest.push({ codec: sniffDynamoCodec(payload), payload, source: subject });
    st.pushed++;
    st.lastSequence = seq;
    next = seq + 1;
  }

  /** Pushes sequences `from..=to` read straight from the stream (a jump in delivery). */
  async function fill(from: number, to: number): Promise<void> {
    let q = from;
    if (to - q + 1 > DIRECT_FILL_CHECK) {
      const si = await jsm.streams.info(stream);
      if (si.state.first_seq > q) {
        st.missing += Math.min(si.state.first_seq, to + 1) - q;
        q = Math.min(si.state.first_seq, to + 1);
        next = q;
      }
    }
    for (; q <= to && !closed; q++) {
      const sm = await jsm.streams.getMessage(stream, { seq: q });
      if (sm) {
        await backpressure();
        push(sm.data, sm.subject, q);
        st.gapFilled++;
      } else {
        st.missing++;
        next = q + 1;
      }
    }
  }

  async function handle(m: JsMsg): Promise<void> {
    st.received++;
    const s = m.seq;
    if (next !== undefined && s < next) {
      st.duplicates++;
      m.ack();
      return;
    }
    if (next !== undefined && s > next) {
      log.warn({ ...where, expected: next, got: s }, 'JetStream delivery jumped; reading the gap');
      await fill(next, s - 1);
      if (closed) return;
    }
    await backpressure();
    if (closed) return;
    push(m.data, m.subject, s);
    m.ack();
  }

  /** After the consumer vanished: create it again from where this process is. */
  async function restoreConsumer(): Promise<void> {
    await ensureStream(jsm);
    try {
      await jsm.consumers.info(stream, durable);
      return; // back by itself (a NATS restart)
    } catch (e) {
      if (apiCode(e) !== JetStreamApiCodes.ConsumerNotFound) throw e;
    }
    const si = await jsm.streams.info(stream);
    if (next !== undefined && si.state.last_seq < next - 1) {
      log.warn(
        { ...where, lastSequence: si.state.last_seq, expected: next },
        'KV-event stream was recreated; consuming it from its start',
      );
      next = undefined;
    }
    await createConsumer(
      jsm,
      next === undefined ? DeliverPolicy.All : DeliverPolicy.StartSequence,
      next,
    );
    st.consumerRecreated++;
    log.warn({ ...where, from: next ?? 'start' }, 'recreated the durable KV-event consumer');
  }

  const loop = (async () => {
    let backoff = 100;
    while (!closed) {
      let messages: ConsumerMessages | undefined;
      try {
        if (needConsumer) {
          await restoreConsumer();
          needConsumer = false;
        }
        const consumer = await js.consumers.get(stream, durable);
        messages = await consumer.consume({ max_messages: batch });
        current = messages;
        const watched = messages;
        void (async () => {
          for await (const s of watched.status()) {
            if (
              s.type === 'consumer_deleted' ||
              s.type === 'consumer_not_found' ||
              s.type === 'stream_not_found'
            ) {
              log.warn({ ...where, status: s.type }, 'JetStream consumer gone');
              needConsumer = true;
              watched.stop();
              return;
            }
          }
        })().catch(() => {});
        if (closed) break;
        for await (const m of messages) {
          await handle(m);
          backoff = 100;
          if (closed) break;
        }
        // Ended without an error (stopped because the consumer vanished, or the client gave
        // up on it): start again after a pause, never in a tight loop.
        if (!closed) await sleep(backoff);
      } catch (e) {
        if (closed) break;
        const code = apiCode(e);
        if (
          code === JetStreamApiCodes.ConsumerNotFound ||
          code === JetStreamApiCodes.StreamNotFound
        ) {
          needConsumer = true;
        }
        log.warn({ ...where, err: (e as Error).message }, 'JetStream consume failed; retrying');
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 5000);
      } finally {
        messages?.stop();
        current = undefined;
      }
    }
  })();

  log.info(
    { ...where, bucket, snapshotEvents: st.snapshot.events, reset: opts.resetStates === true },
    'consuming KV events from JetStream',
  );

  return {
    stats: () => ({ ...st, snapshot: { ...st.snapshot } }),
    async close() {
      if (closed) return;
      closed = true;
      current?.stop();
      await loop;
      if (!st.connected) {
        // Nothing to tell a server we cannot reach (the consumer expires by itself).
        await nc.close().catch(() => {});
        return;
      }
      if (opts.deleteConsumerOnClose !== false) {
        await jsm.consumers.delete(stream, durable).catch(() => {});
      }
      await nc.drain().catch(() => nc.close());
    },
  };
}
