/**
 * Dynamo's JetStream KV-event mode (src/events/jetstream-source.ts) against a real
 * nats-server with JetStream on loopback (test/support/nats-server.ts).
 *
 * Publishers do what Dynamo's older worker publisher did: JSON `RouterEvent`s to
 * `{stream}.queue` through JetStream (the JSON text is written by hand: worker ids and hashes
 * above 2^63 as digits, never a JS number). kv-epp side: native index + native applier +
 * EventIngest (setImmediate, Date.now) + the source. Reference: a second native index fed the
 * same payloads, in stream order, straight through an applier. Every comparison is
 * `findMatches` on every generated prefix, per-holder tree sizes and the membership count.
 *
 * Scenarios: steady state; the EPP restarted mid-stream (clean close, and a consumer left
 * behind as after a crash) with the same consumer name; nats-server restarted mid-stream
 * (SIGTERM, then SIGKILL) while publishing; a Dynamo radix-state snapshot (bincode, and JSON)
 * applied before the stream; reset. Waits poll observable counters; no sleep decides a result.
 * Skipped with a reason when no nats-server is installed, unless KV_EPP_REQUIRE_NATS=1.
 */
import { type JetStreamClient, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Objm } from '@nats-io/obj';
import { connect, type NatsConnection, nanos } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createEventApplier } from '../../../src/events/factory.js';
import { EventIngest } from '../../../src/events/ingest.js';
import {
  kvQueueSubject,
  kvStreamName,
  RADIX_STATE_FILE,
  radixBucketName,
} from '../../../src/events/jetstream-names.js';
import {
  type JetStreamEventSource,
  type JetStreamEventSourceOptions,
  startJetStreamEventSource,
} from '../../../src/events/jetstream-source.js';
import type { EventApplier } from '../../../src/events/types.js';
import { createKvIndex } from '../../../src/kv/factory.js';
import type { KvIndex, WorkerRank } from '../../../src/kv/types.js';
import { RecordingLogger } from '../../support/ext-proc.js';
import { findNatsServer, type NatsServer, startNatsServer } from '../../support/nats-server.js';
import { mulberry32 } from '../../support/random.js';

const BIN = findNatsServer();
const SKIP_REASON =
  'no nats-server (run `bash scripts/install-test-tools.sh`, or set KV_EPP_NATS_SERVER)';
if (!BIN) {
  if (process.env.KV_EPP_REQUIRE_NATS === '1') {
    throw new Error(`KV_EPP_REQUIRE_NATS=1 but ${SKIP_REASON}`);
  }
  console.warn(`[jetstream] SKIPPED: ${SKIP_REASON}`);
}

const BLOCK = 4;
const COMPONENT = 'backend';
const enc = new TextEncoder();

// ---- generated RouterEvents ---------------------------------------------------------------------

/** Holders: worker ids above 2^63 and 2^53, two dp ranks on one worker. */
const HOLDERS: WorkerRank[] = [
  { workerId: 12_345_678_901_234_567_890n, dpRank: 0 },
  { workerId: 12_345_678_901_234_567_890n, dpRank: 1 },
  { workerId: 9_007_199_254_740_993n, dpRank: 0 },
  { workerId: 0xffff_ffff_ffff_fff0n, dpRank: 3 },
];
const key = (h: WorkerRank) => `${h.workerId}/${h.dpRank}`;

/** One stored block of a generated event. */
interface Block {
  local: bigint;
  external: bigint;
}
type Op =
  | { kind: 'stored'; parent: bigint | null; blocks: Block[] }
  | { kind: 'removed'; hashes: bigint[] }
  | { kind: 'cleared' };
interface GenEvent {
  holder: WorkerRank;
  eventId: bigint;
  op: Op;
}

/** The JSON a Dynamo worker published, u64s as digits. */
function routerEventJson(e: GenEvent): string {
  let data: string;
  if (e.op.kind === 'stored') {
    const blocks = e.op.blocks
      .map((b) => `{"block_hash":${b.external},"tokens_hash":${b.local}}`)
      .join(',');
    data = `{"stored":{"parent_hash":${e.op.parent ?? 'null'},"blocks":[${blocks}]}}`;
  } else if (e.op.kind === 'removed') {
    data = `{"removed":{"block_hashes":[${e.op.hashes.join(',')}]}}`;
  } else {
    data = '"cleared"';
  }
  return `{"worker_id":${e.holder.workerId},"storage_tier":"device","event":{"event_id":${e.eventId},"data":${data},"dp_rank":${e.holder.dpRank}}}`;
}

/**
 * Random but valid event streams: prefixes of a few shared "documents" (a trie of blocks;
 * equal prefixes give equal hashes on every holder, as vLLM with a fixed hash seed), stored
 * by extending a holder's longest stored prefix, removed from the leaves, sometimes cleared.
 * Event ids count up by one per holder. All hashes are above 2^63.
 */
class Generator {
  private readonly rand: () => number;
  /** Documents as block lists. */
  readonly docs: Block[][] = [];
  /** Per holder: external hashes stored, with their children count. */
  private readonly stored = new Map<string, Map<bigint, { parent: bigint | null; kids: number }>>();
  private readonly ids = new Map<string, bigint>();

  constructor(seed: number, nDocs = 12, depth = 10) {
    this.rand = mulberry32(seed);
    const ids = new Map<string, number>();
    for (let d = 0; d < nDocs; d++) {
      // Documents branch off earlier ones, so prefixes are shared.
      const base = d > 0 && this.rand() < 0.7 ? this.docs[Math.floor(this.rand() * d)] : undefined;
      const keep = base ? 1 + Math.floor(this.rand() * (depth - 2)) : 0;
      const doc: Block[] = base ? base.slice(0, keep) : [];
      let path = base ? `d${this.docs.indexOf(base)}:${keep}` : `r${d}`;
      while (doc.length < depth) {
        path += `/${d}.${doc.length}`;
        const n = ids.get(path) ?? ids.size + 1;
        ids.set(path, n);
        doc.push({
          local: 0xa000_0000_0000_0000n + BigInt(n),
          external: 0xf000_0000_0000_0000n + BigInt(n) * 7919n,
        });
      }
      this.docs.push(doc);
    }
    for (const h of HOLDERS) {
      this.stored.set(key(h), new Map());
      this.ids.set(key(h), 0n);
    }
  }

  private pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.rand() * xs.length)] as T;
  }

  /** `storeOnly`: stores only; `noClear`: stores and removals. */
  next(mode: 'mixed' | 'storeOnly' | 'noClear' = 'mixed'): GenEvent {
    const storeOnly = mode === 'storeOnly';
    const holder = this.pick(HOLDERS);
    const k = key(holder);
    const mine = this.stored.get(k) as Map<bigint, { parent: bigint | null; kids: number }>;
    const id = (this.ids.get(k) as bigint) + 1n;
    this.ids.set(k, id);
    const r = this.rand();
    let op: Op;
    if (mode === 'mixed' && r < 0.03) {
      mine.clear();
      op = { kind: 'cleared' };
    } else if (!storeOnly && r < 0.3 && mine.size > 0) {
      const leaves = [...mine.entries()].filter(([, v]) => v.kids === 0).map(([h]) => h);
      const hashes = [this.pick(leaves)];
      for (const h of hashes) {
        const p = mine.get(h)?.parent;
        mine.delete(h);
        if (p != null && mine.has(p)) (mine.get(p) as { kids: number }).kids--;
      }
      op = { kind: 'removed', hashes };
    } else {
      const doc = this.pick(this.docs);
      let have = 0;
      while (have < doc.length && mine.has((doc[have] as Block).external)) have++;
      if (have === doc.length) have = 0; // store the whole document again from the root
      const n = Math.min(doc.length - have, 1 + Math.floor(this.rand() * 4));
      const blocks = doc.slice(have, have + n);
      const parent = have === 0 ? null : (doc[have - 1] as Block).external;
      let p = parent;
      for (const b of blocks) {
        if (!mine.has(b.external)) {
          mine.set(b.external, { parent: p, kids: 0 });
          if (p !== null && mine.has(p)) (mine.get(p) as { kids: number }).kids++;
        }
        p = b.external;
      }
      op = { kind: 'stored', parent, blocks };
    }
    return { holder, eventId: id, op };
  }

  /** Every prefix of every document, as local hashes. */
  queries(): BigUint64Array[] {
    const out: BigUint64Array[] = [];
    for (const d of this.docs) {
      for (let n = 1; n <= d.length; n++)
        out.push(BigUint64Array.from(d.slice(0, n), (b) => b.local));
    }
    return out;
  }
}

// ---- the two sides ------------------------------------------------------------------------------

interface Epp {
  index: KvIndex;
  applier: EventApplier;
  ingest: EventIngest;
  log: RecordingLogger;
  source?: JetStreamEventSource | undefined;
}

const disposers: Array<() => Promise<void> | void> = [];

async function newEpp(): Promise<Epp> {
  const index = await createKvIndex('native');
  const applier = await createEventApplier(index, { blockSize: BLOCK });
  const log = new RecordingLogger();
  const ingest = new EventIngest({ applier, log, now: Date.now, schedule: setImmediate });
  const epp: Epp = { index, applier, ingest, log };
  disposers.push(async () => {
    await epp.source?.close();
    try {
      ingest.drainAll();
    } catch {
      // the test disposed the index already
    }
    applier.dispose();
    try {
      index.dispose();
    } catch {
      // disposed by the test already
    }
  });
  return epp;
}

/** A reference index: the snapshot's blocks straight into the index, then payloads in order. */
async function reference(payloads: readonly Uint8Array[], snapshot: GenEvent[] = []) {
  const index = await createKvIndex('native');
  const applier = await createEventApplier(index, { blockSize: BLOCK });
  disposers.push(() => {
    applier.dispose();
    index.dispose();
  });
  for (const e of snapshot) {
    if (e.op.kind !== 'stored') throw new Error('snapshots hold stored events only');
    expect(
      index.applyStored(e.holder, e.op.parent, {
        localHashes: BigUint64Array.from(e.op.blocks, (b) => b.local),
        externalHashes: BigUint64Array.from(e.op.blocks, (b) => b.external),
      }),
    ).toBe('ok');
  }
  for (const p of payloads) applier.apply('dynamo-json', p);
  return index;
}

function expectSameIndex(actual: KvIndex, expected: KvIndex, queries: BigUint64Array[]): void {
  const e = expected.stats();
  expect(e.memberships).toBeGreaterThan(20); // not trivially empty
  expect(actual.stats().memberships).toBe(e.memberships);
  expect(actual.stats().workers).toBe(e.workers);
  for (const h of HOLDERS) expect(actual.treeSize(h), key(h)).toBe(expected.treeSize(h));
  let overlaps = 0;
  for (const q of queries) {
    const want = expected.findMatches(q, false);
    overlaps += want.workers.length;
    expect(actual.findMatches(q, false)).toEqual(want);
  }
  expect(overlaps).toBeGreaterThan(0);
}

async function waitFor(cond: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** All messages applied: the source pushed `pushed`, the ingest applied `applied` in total. */
async function waitApplied(epp: Epp, pushed: number, applied: number, timeoutMs?: number) {
  await waitFor(
    () =>
      epp.source?.stats().pushed === pushed &&
      epp.ingest.stats().messages === applied &&
      epp.ingest.stats().queued === 0,
    `${pushed} pushed / ${applied} applied (now ${epp.source?.stats().pushed} / ${epp.ingest.stats().messages})`,
    timeoutMs,
  );
}

// ---- NATS ---------------------------------------------------------------------------------------

let server: NatsServer;
let pubNc: NatsConnection;
let js: JetStreamClient;

async function publish(stream: string, payload: Uint8Array, msgID: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      await js.publish(kvQueueSubject(stream), payload, { msgID, timeout: 2000 });
      return;
    } catch (e) {
      // Server restarting: try again; the msgID makes a retried publish count once.
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** What `NatsQueue::connect` does on the worker side: get or create the stream. */
async function createStreamAsPublisher(stream: string): Promise<void> {
  const jsm = await jetstreamManager(pubNc);
  await jsm.streams.add({ name: stream, subjects: [`${stream}.*`], max_age: nanos(3600 * 1000) });
}

let nsSeq = 0;
/** A fresh namespace per test: its own stream and bucket. */
function namespace(): string {
  nsSeq++;
  return `kvepp_t${nsSeq}.${process.pid}`;
}

function sourceOptions(epp: Epp, ns: string, extra: Partial<JetStreamEventSourceOptions> = {}) {
  return {
    servers: server.url,
    namespace: ns,
    component: COMPONENT,
    consumerName: 'kv-epp-0.pool',
    ingest: epp.ingest,
    log: epp.log,
    ...extra,
  } satisfies JetStreamEventSourceOptions;
}

afterEach(async () => {
  for (const d of disposers.splice(0).reverse()) await d();
});

describe.skipIf(!BIN)(
  BIN ? 'JetStream KV events' : `JetStream KV events (SKIPPED: ${SKIP_REASON})`,
  () => {
    beforeAll(async () => {
      server = await startNatsServer();
      pubNc = await connect({
        servers: server.url,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 50,
      });
      js = jetstream(pubNc);
    });
    afterAll(async () => {
      await pubNc?.close();
      await server?.stop();
    });

    it('creates Dynamo’s stream and consumer and mirrors the reference index', async () => {
      const ns = namespace();
      const stream = kvStreamName(ns, COMPONENT);
      const epp = await newEpp();
      epp.source = await startJetStreamEventSource(sourceOptions(epp, ns));

      const jsm = await jetstreamManager(pubNc);
      const si = await jsm.streams.info(stream);
      expect(si.config.subjects).toEqual([`${stream}.*`]);
      expect(si.config.max_age).toBe(nanos(3600 * 1000));
      const ci = await jsm.consumers.info(stream, 'kv-epp-0-pool');
      expect(ci.config).toMatchObject({
        durable_name: 'kv-epp-0-pool',
        ack_policy: 'explicit',
        deliver_policy: 'all',
        inactive_threshold: nanos(3600 * 1000),
      });

      const gen = new Generator(1);
      const payloads: Uint8Array[] = [];
      for (let i = 0; i < 400; i++) {
        const p = enc.encode(routerEventJson(gen.next()));
        payloads.push(p);
        await publish(stream, p, `s1-${i}`);
      }
      await waitApplied(epp, 400, 400);
      expectSameIndex(epp.index, await reference(payloads), gen.queries());
      const st = epp.source.stats();
      expect(st).toMatchObject({ received: 400, duplicates: 0, gapFilled: 0, lastSequence: 400 });
      expect(st.snapshot).toEqual({ format: 'none', events: 0, reads: 1 });
      // Acked after each push: the ack floor reaches the last message.
      await waitForAsync(
        async () =>
          (await jsm.consumers.info(stream, 'kv-epp-0-pool')).ack_floor.stream_seq === 400,
        'ack floor 400',
      );
      expect(epp.log.records.filter((r) => r.level !== 'info')).toEqual([]);
    });

    it('rebuilds everything after an EPP restart mid-stream (same consumer name)', async () => {
      const ns = namespace();
      const stream = kvStreamName(ns, COMPONENT);
      const gen = new Generator(2);
      const payloads: Uint8Array[] = [];
      const pub = async (n: number, tag: string) => {
        for (let i = 0; i < n; i++) {
          const p = enc.encode(routerEventJson(gen.next()));
          payloads.push(p);
          await publish(stream, p, `${tag}-${i}`);
        }
      };

      // First process: closed cleanly while the publisher is still sending.
      const a = await newEpp();
      a.source = await startJetStreamEventSource(sourceOptions(a, ns));
      const sending = pub(300, 'a');
      await waitFor(() => (a.source?.stats().pushed ?? 0) >= 50, '50 pushed');
      await a.source.close();
      expect(a.source.stats().pushed).toBeLessThan(300); // the rest was published after
      a.ingest.drainAll();
      a.index.dispose();
      await sending;
      await pub(100, 'b');

      // Second process, same consumer name, empty index.
      const b = await newEpp();
      b.source = await startJetStreamEventSource(sourceOptions(b, ns));
      await waitApplied(b, 400, 400);
      expectSameIndex(b.index, await reference(payloads), gen.queries());

      // Third: the previous process "crashed" (its consumer is left behind, acked up to 400).
      await b.source.close();
      b.source = undefined;
      const crashed = await startJetStreamEventSource({
        ...sourceOptions(b, ns),
        ingest: (await newEpp()).ingest,
        deleteConsumerOnClose: false,
      });
      await waitFor(() => crashed.stats().pushed === 400, 'crashed consumer caught up');
      await crashed.close();
      const jsm = await jetstreamManager(pubNc);
      await waitForAsync(
        async () =>
          (await jsm.consumers.info(stream, 'kv-epp-0-pool')).ack_floor.stream_seq === 400,
        'left-behind ack floor',
      );
      await pub(50, 'c');
      const c = await newEpp();
      c.source = await startJetStreamEventSource(sourceOptions(c, ns));
      await waitApplied(c, 450, 450);
      expectSameIndex(c.index, await reference(payloads), gen.queries());
    });

    it('loses nothing when nats-server restarts mid-stream (SIGTERM, then SIGKILL)', async () => {
      const ns = namespace();
      const stream = kvStreamName(ns, COMPONENT);
      const gen = new Generator(3);
      const epp = await newEpp();
      epp.source = await startJetStreamEventSource(sourceOptions(epp, ns, { batchSize: 16 }));
      const total = 900;
      const published: Uint8Array[] = [];
      let sent = 0;
      const sending = (async () => {
        for (let i = 0; i < total; i++) {
          const p = enc.encode(routerEventJson(gen.next()));
          published.push(p);
          await publish(stream, p, `r-${i}`);
          sent++;
          if (i % 25 === 0) await new Promise((r) => setImmediate(r));
        }
      })();
      const pushed = () => epp.source?.stats().pushed ?? 0;
      await waitFor(() => pushed() >= 150, '150 pushed');
      await server.restart();
      await waitFor(() => pushed() >= 400 && sent >= 450, '400 pushed after the restart', 30_000);
      await server.restart({ hard: true });
      await sending;
      await waitApplied(epp, total, total, 60_000);

      // The stream holds exactly what was published, once each, in order.
      const jsm = await jetstreamManager(pubNc);
      const si = await jsm.streams.info(stream);
      expect(si.state.messages).toBe(total);
      const stored: Uint8Array[] = [];
      for (let s = si.state.first_seq; s <= si.state.last_seq; s++) {
        stored.push(
          ((await jsm.streams.getMessage(stream, { seq: s })) as { data: Uint8Array }).data,
        );
      }
      expect(stored.map((d) => Buffer.from(d).toString())).toEqual(
        published.map((d) => Buffer.from(d).toString()),
      );
      expectSameIndex(epp.index, await reference(stored), gen.queries());
      const st = epp.source.stats();
      expect(st.pushed).toBe(total);
      expect(st.lastSequence).toBe(total);
      expect(epp.ingest.stats().dropped).toBe(0);
    }, 120_000);

    it('recreates a deleted consumer from where it was (Dynamo’s orphan cleanup)', async () => {
      const ns = namespace();
      const stream = kvStreamName(ns, COMPONENT);
      const gen = new Generator(6);
      const epp = await newEpp();
      epp.source = await startJetStreamEventSource(sourceOptions(epp, ns));
      const payloads: Uint8Array[] = [];
      const pub = async (n: number, tag: string) => {
        for (let i = 0; i < n; i++) {
          const p = enc.encode(routerEventJson(gen.next()));
          payloads.push(p);
          await publish(stream, p, `${tag}-${i}`);
        }
      };
      await pub(100, 'a');
      await waitApplied(epp, 100, 100);
      // A Dynamo router starting in this namespace deletes consumers it does not know.
      const jsm = await jetstreamManager(pubNc);
      expect(await jsm.consumers.delete(stream, 'kv-epp-0-pool')).toBe(true);
      await pub(100, 'b');
      await waitApplied(epp, 200, 200);
      expect(epp.source.stats()).toMatchObject({ consumerRecreated: 1, duplicates: 0 });
      expect((await jsm.consumers.info(stream, 'kv-epp-0-pool')).config.opt_start_seq).toBe(101);
      expectSameIndex(epp.index, await reference(payloads), gen.queries());
    });

    it('fills a delivery jump from the stream, in order, and skips deleted messages', async () => {
      const ns = namespace();
      const stream = kvStreamName(ns, COMPONENT);
      await createStreamAsPublisher(stream);
      const gen = new Generator(5);
      const payloads: Uint8Array[] = [];
      for (let i = 0; i < 40; i++) {
        const p = enc.encode(routerEventJson(gen.next('noClear')));
        payloads.push(p);
        await publish(stream, p, `g-${i}`);
      }
      const epp = await newEpp();
      // Paused: the source has pulled one batch and waits (backpressure) at its first message.
      let paused = true;
      const ingest: JetStreamEventSourceOptions['ingest'] = {
        push: (m) => epp.ingest.push(m),
        drainAll: () => epp.ingest.drainAll(),
        forgetWorker: (w) => epp.ingest.forgetWorker(w),
        stats: () => ({ ...epp.ingest.stats(), queued: paused ? 1e9 : epp.ingest.stats().queued }),
      };
      epp.source = await startJetStreamEventSource(
        sourceOptions(epp, ns, { ingest, batchSize: 4, maxPendingMessages: 1000 }),
      );
      await waitFor(() => (epp.source?.stats().received ?? 0) >= 1, 'first delivery');
      // Another client takes the next message from the same consumer and never acks it, as a
      // message delivered just before a crash: the source sees the sequence jump past it.
      const stolen = await (await js.consumers.get(stream, 'kv-epp-0-pool')).next({
        expires: 2000,
      });
      expect(stolen).not.toBeNull();
      const stolenSeq = (stolen as { seq: number }).seq;
      expect(stolenSeq).toBeGreaterThan(1);
      expect(stolenSeq).toBeLessThan(20);
      // And one message is gone from the stream before it is delivered.
      const jsm = await jetstreamManager(pubNc);
      expect(await jsm.streams.deleteMessage(stream, 30)).toBe(true);
      paused = false;
      await waitApplied(epp, 39, 39);
      const st = epp.source.stats();
      expect(st).toMatchObject({ gapFilled: 1, missing: 1, lastSequence: 40 });
      expectSameIndex(
        epp.index,
        await reference(payloads.filter((_, i) => i !== 29)),
        gen.queries(),
      );
      expect(epp.log.records.some((r) => r.msg.includes('delivery jumped'))).toBe(true);
    });

    for (const format of ['bincode', 'json'] as const) {
      it(`applies a Dynamo radix-state snapshot (${format}) before the stream`, async () => {
        const ns = namespace();
        const stream = kvStreamName(ns, COMPONENT);
        const gen = new Generator(4);
        // A dump: stored events only, ids from one counter over the whole tree (0, 1, 2, …).
        const snapshot: GenEvent[] = [];
        for (let i = 0; i < 150; i++) {
          snapshot.push({ ...gen.next('storeOnly'), eventId: BigInt(i) });
        }
        const objm = new Objm(pubNc);
        const os = await objm.create(radixBucketName(ns, COMPONENT));
        const bytes =
          format === 'bincode'
            ? bincodeSnapshot(snapshot)
            : enc.encode(`[${snapshot.map(routerEventJson).join(',')}]`);
        await os.putBlob({ name: RADIX_STATE_FILE }, bytes);

        // The stream: removals and more stores on top of the snapshot's blocks. Published
        // before kv-epp starts, so the publisher creates the stream, as Dynamo's does.
        await createStreamAsPublisher(stream);
        const payloads: Uint8Array[] = [];
        for (let i = 0; i < 250; i++) {
          const p = enc.encode(routerEventJson(gen.next('noClear')));
          payloads.push(p);
          await publish(stream, p, `p-${i}`);
        }
        const epp = await newEpp();
        epp.source = await startJetStreamEventSource(
          sourceOptions(epp, ns, { snapshotStabilityDelayMs: 10 }),
        );
        expect(epp.source.stats().snapshot).toEqual({ format, events: 150, reads: 2 });
        await waitApplied(epp, 250, 251);
        const expected = await reference(payloads, snapshot);
        expectSameIndex(epp.index, expected, gen.queries());
        // Without the snapshot, or with it applied after the stream, the index would differ
        // (the stream removes blocks that only the snapshot stored).
        const streamOnly = await reference(payloads);
        expect(streamOnly.stats().memberships).not.toBe(expected.stats().memberships);
        for (const e of snapshot) {
          if (e.op.kind !== 'stored') continue;
          streamOnly.applyStored(e.holder, e.op.parent, {
            localHashes: BigUint64Array.from(e.op.blocks, (b) => b.local),
            externalHashes: BigUint64Array.from(e.op.blocks, (b) => b.external),
          });
        }
        expect(streamOnly.stats().memberships).not.toBe(expected.stats().memberships);

        // Reset: neither the snapshot nor the retained stream, only what comes next.
        const fresh = await newEpp();
        fresh.source = await startJetStreamEventSource(
          sourceOptions(fresh, ns, { consumerName: 'kv-epp-1', resetStates: true }),
        );
        expect(fresh.source.stats().snapshot.format).toBe('none');
        const later: Uint8Array[] = [];
        for (let i = 0; i < 40; i++) {
          const p = enc.encode(routerEventJson(gen.next('storeOnly')));
          later.push(p);
          await publish(stream, p, `q-${i}`);
        }
        await waitApplied(fresh, 40, 40);
        const expectedFresh = await reference(later);
        expect(fresh.index.stats()).toEqual(expectedFresh.stats());
      });
    }
  },
);

async function waitForAsync(cond: () => Promise<boolean>, what: string, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// ---- bincode, as dynamo-runtime's object_store_upload_data writes Vec<RouterEvent> --------------

/**
 * bincode 1 (`bincode::serialize`: little-endian, fixed-width ints, u64 lengths, u32 enum
 * tags, u8 Option tags) of the newest JetStream-era `RouterEvent` layout; checked against
 * real bincode output in test/unit/events/jetstream-names.test.ts.
 */
function bincodeSnapshot(events: GenEvent[]): Uint8Array {
  const out: number[] = [];
  const u64 = (v: bigint) => {
    for (let i = 0n; i < 8n; i++) out.push(Number((v >> (8n * i)) & 0xffn));
  };
  const u32 = (v: number) => {
    for (let i = 0; i < 4; i++) out.push((v >>> (8 * i)) & 0xff);
  };
  u64(BigInt(events.length));
  for (const e of events) {
    if (e.op.kind !== 'stored') throw new Error('stored events only');
    u64(e.holder.workerId);
    u32(0); // storage_tier: Device
    u64(e.eventId);
    u32(0); // KvCacheEventData::Stored
    if (e.op.parent === null) out.push(0);
    else {
      out.push(1);
      u64(e.op.parent);
    }
    out.push(0); // start_position: None
    u64(BigInt(e.op.blocks.length));
    for (const b of e.op.blocks) {
      u64(b.external);
      u64(b.local);
      out.push(0); // mm_extra_info: None
    }
    u32(e.holder.dpRank);
  }
  return Uint8Array.from(out);
}
