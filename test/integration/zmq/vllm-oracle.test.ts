/**
 * vLLM/SGLang ZMQ KV events end to end, against Dynamo 1.6.1 as the oracle.
 *
 * A Python publisher (test/support/vllm_publisher.py) sends vLLM's exact wire
 * format: three sockets = worker A dp 0 and dp 1 (vLLM 0.33 map-encoded events,
 * unsigned hashes above 2^63) and worker B dp 0 (older tagged-array events,
 * signed hashes), with parent chains, partial blocks (token_ids one block
 * short; a short block_size), a LoRA name, a cache salt in `extra_keys`, a
 * host-tier (`medium: CPU`) store, removals, AllBlocksCleared, a block-size
 * mismatch and malformed framing (2 frames, a 7-byte sequence, 4 frames).
 *
 * kv-epp side: the ZMQ source (src/events/zmq-source.ts) → EventIngest →
 * native applier → native index, then `findMatches` on the query's local hashes.
 *
 * Oracle (the requirement): Dynamo's own conversion. A
 * `KvEventPublisher(..., zmq_endpoint=…)` per socket, in relay mode, subscribes
 * to the same publisher and republishes on NATS; the relay's messages, fed to
 * Dynamo's `RadixTree` (device tier), give the overlaps kv-epp must equal for
 * every (worker, dp rank). The same NATS messages also go through kv-epp's
 * `dynamo` codec into a second index, which must agree too.
 *
 * Every wait polls for an observable count (messages received per socket,
 * sentinel blocks seen from the relay); the publisher sends only once both
 * subscribers (kv-epp and the relay) have subscribed on each socket.
 * Skipped with a reason when the .venv-tools Python (pyzmq, msgspec,
 * ai-dynamo-runtime), nats-server or zeromq is missing, unless
 * KV_EPP_REQUIRE_DYNAMO=1.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Endpoint } from '../../../src/discovery/endpoints.js';
import { createEventApplier } from '../../../src/events/factory.js';
import { EventIngest, type EventMessage } from '../../../src/events/ingest.js';
import { kvEventsSubject, startNatsEventSource } from '../../../src/events/nats-source.js';
import type { EventApplier } from '../../../src/events/types.js';
import { startZmqEventSources, type ZmqEventSources } from '../../../src/events/zmq-source.js';
import { createBlockHasher, createKvIndex } from '../../../src/kv/factory.js';
import type { KvIndex } from '../../../src/kv/types.js';
import { eventMetricsObserver } from '../../../src/metrics/observer.js';
import { EppMetrics } from '../../../src/metrics/registry.js';
import { RecordingLogger } from '../../support/ext-proc.js';
import { findNatsServer, type NatsServer, startNatsServer } from '../../support/nats-server.js';
import {
  dynamoEnv,
  findToolsPython,
  type LineProcess,
  type OracleQuery,
  type OracleResult,
  runRadixOracle,
  startDynamoRelay,
  startVllmPublisher,
  type VllmEvent,
  type VllmMessage,
  type VllmPublisher,
  type VllmScenario,
} from '../../support/vllm-publisher.js';

// ---- gate ---------------------------------------------------------------------------------------

let zmqError = '';
try {
  await import('zeromq');
} catch (e) {
  zmqError = (e as Error).message;
}
const tools = findToolsPython();
const missingPublisher = [
  zmqError && `zeromq: ${zmqError}`,
  !tools.publisher && (tools.reason || 'no pyzmq/msgspec'),
]
  .filter(Boolean)
  .join('; ');
const missingOracle = [
  missingPublisher,
  !tools.dynamo && !missingPublisher && tools.reason,
  !findNatsServer() && 'no nats-server (run `bash scripts/install-test-tools.sh`)',
]
  .filter(Boolean)
  .join('; ');
for (const missing of new Set([missingPublisher, missingOracle])) {
  if (!missing) continue;
  if (process.env.KV_EPP_REQUIRE_DYNAMO === '1') {
    throw new Error(`KV_EPP_REQUIRE_DYNAMO=1 but ${missing}`);
  }
  console.warn(`[zmq vllm-oracle] SKIPPED (part): ${missing}`);
}

// ---- the scenario -------------------------------------------------------------------------------

const BLOCK = 4;
/** Worker ids above 2^63 and 2^53: they must stay exact end to end. */
const WORKER_A = 12_345_678_901_234_567_890n;
const WORKER_B = 9_007_199_254_740_993n;
const T = Array.from({ length: 24 }, (_, i) => 1000 + i);
const U = Array.from({ length: 8 }, (_, i) => 2000 + i);
const SENTINEL = [9000, 9001, 9002, 9003];
const tok = (from: number, to: number) => T.slice(from, to);
const h = (n: bigint) => String(n);
/**
 * Engine block hashes. As with vLLM under a fixed PYTHONHASHSEED (what Dynamo
 * asks for), the same tokens give the same hash on every worker and dp rank;
 * a LoRA, a cache salt or another medium give other hashes. All are above
 * 2^63: vLLM 0.33 sends them as uint64, the legacy publisher as negative int64.
 */
const H = (i: number) => h(0xf000_0000_0000_0000n + BigInt(i));
const L = (i: number) => h(0xf100_0000_0000_0000n + BigInt(i));
const S = (i: number) => h(0xf200_0000_0000_0000n + BigInt(i));
const C = (i: number) => h(0xf300_0000_0000_0000n + BigInt(i));
const X = (i: number) => h(0xf400_0000_0000_0000n + BigInt(i));
const Z = h(0xfe00_0000_0000_0000n);

function stored(
  hashes: string[],
  parent: string | null,
  tokens: number[],
  extra: Partial<Extract<VllmEvent, { type: 'BlockStored' }>> = {},
): VllmEvent {
  return {
    type: 'BlockStored',
    block_hashes: hashes,
    parent_block_hash: parent,
    token_ids: tokens,
    block_size: BLOCK,
    lora_id: null,
    medium: 'GPU',
    ...extra,
  };
}
const removed = (hashes: string[]): VllmEvent => ({
  type: 'BlockRemoved',
  block_hashes: hashes,
  medium: 'GPU',
});

interface Holder {
  socket: string;
  workerId: bigint;
  dpRank: number;
  encoding: 'v0_33' | 'legacy';
}
const HOLDERS: Holder[] = [
  { socket: 'a0', workerId: WORKER_A, dpRank: 0, encoding: 'v0_33' },
  { socket: 'a1', workerId: WORKER_A, dpRank: 1, encoding: 'v0_33' },
  { socket: 'b0', workerId: WORKER_B, dpRank: 0, encoding: 'legacy' },
];

/**
 * The publisher's messages. Messages of different sockets reach kv-epp and
 * the relay in no fixed order, so no holder's outcome depends on another's.
 */
function scenario(subscribers: number): VllmScenario {
  const batch = (socket: string, events: VllmEvent[]): VllmMessage => {
    const holder = HOLDERS.find((x) => x.socket === socket) as Holder;
    if (holder.encoding === 'v0_33') {
      // vLLM 0.33 always sends lora_name (it has no default).
      for (const e of events) if (e.type === 'BlockStored') e.lora_name ??= null;
    }
    return { socket, encoding: holder.encoding, data_parallel_rank: holder.dpRank, events };
  };
  const messages: VllmMessage[] = [
    // Worker A, dp 0 (vLLM 0.33).
    batch('a0', [stored([H(1), H(2), H(3)], null, tok(0, 12))]),
    // A chained store, then one whose token_ids are one block short of its hashes (H6 dropped).
    batch('a0', [stored([H(4)], H(3), tok(12, 16)), stored([H(5), H(6)], H(4), tok(16, 20))]),
    // A partial block with a short block_size (dropped).
    batch('a0', [stored([H(7)], H(5), tok(20, 22), { block_size: 2 })]),
    batch('a0', [stored([L(1), L(2)], null, tok(0, 8), { lora_name: 'adapter-x' })]),
    // vLLM carries the cache salt in the first block's extra_keys, as Dynamo tags it.
    batch('a0', [
      stored([S(1), S(2)], null, tok(0, 8), { extra_keys: [['dynamo-cache-salt:tenant-a'], null] }),
    ]),
    // Host tier: never in the device index.
    batch('a0', [stored([C(1), C(2)], null, U, { medium: 'CPU' })]),
    batch('a0', [removed([H(5)]), removed([H(4)])]),
    // Worker A, dp 1, on its own socket.
    batch('a1', [stored([H(1), H(2)], null, tok(0, 8))]),
    batch('a1', [{ type: 'AllBlocksCleared' }]),
    batch('a1', [stored([H(1)], null, tok(0, 4))]),
    // Worker B, dp 0 (older vLLM: tagged arrays, signed hashes).
    batch('b0', [stored([H(1), H(2), H(3), H(4)], null, tok(0, 16))]),
    batch('b0', [removed([H(4)])]),
    // Malformed framing: 2 frames, a 7-byte sequence, 4 frames.
    { socket: 'b0', raw: ['', '0000000000000007'] },
    { socket: 'b0', raw: ['', '00000000000007', '90'] },
    { socket: 'b0', raw: ['', '0000000000000007', '90', '90'] },
    // Engine block size 8 against the configured 4.
    batch('b0', [stored([X(1)], H(3), tok(12, 20), { block_size: 8 })]),
  ];
  // Last on every socket: a sentinel block, so "the relay has caught up" is observable.
  for (const x of HOLDERS) messages.push(batch(x.socket, [stored([Z], null, SENTINEL)]));
  return { subscribers, sockets: HOLDERS.map((x) => ({ name: x.socket })), messages };
}

const QUERIES: OracleQuery[] = [
  { name: 'plain', tokens: T, blockSize: BLOCK },
  { name: 'lora', tokens: T, blockSize: BLOCK, loraName: 'adapter-x' },
  { name: 'salt', tokens: T, blockSize: BLOCK, cacheNamespace: 'tenant-a' },
  { name: 'host-tier-only', tokens: U, blockSize: BLOCK },
  { name: 'sentinel', tokens: SENTINEL, blockSize: BLOCK },
];

type Score = { workerId: bigint; dpRank: number; blocks: number };
/** What the scenario must give (the oracle must agree, and so must kv-epp). */
const EXPECTED: Record<string, Score[]> = {
  plain: [
    { workerId: WORKER_B, dpRank: 0, blocks: 3 },
    { workerId: WORKER_A, dpRank: 0, blocks: 3 },
    { workerId: WORKER_A, dpRank: 1, blocks: 1 },
  ],
  lora: [{ workerId: WORKER_A, dpRank: 0, blocks: 2 }],
  salt: [{ workerId: WORKER_A, dpRank: 0, blocks: 2 }],
  'host-tier-only': [],
  sentinel: [
    { workerId: WORKER_B, dpRank: 0, blocks: 1 },
    { workerId: WORKER_A, dpRank: 0, blocks: 1 },
    { workerId: WORKER_A, dpRank: 1, blocks: 1 },
  ],
};

// ---- kv-epp side --------------------------------------------------------------------------------

interface Pipeline {
  index: KvIndex;
  applier: EventApplier;
  ingest: EventIngest;
  metrics: EppMetrics;
  log: RecordingLogger;
  dispose(): void;
}

async function pipeline(onPush?: (m: EventMessage) => void): Promise<Pipeline> {
  const index = await createKvIndex('native');
  const applier = await createEventApplier(index, { blockSize: BLOCK });
  const metrics = new EppMetrics();
  const log = new RecordingLogger();
  class TeeIngest extends EventIngest {
    override push(msg: EventMessage): boolean {
      onPush?.(msg);
      return super.push(msg);
    }
  }
  const ingest = new TeeIngest({
    applier,
    log,
    observer: eventMetricsObserver(metrics),
    now: Date.now,
    schedule: setImmediate,
  });
  return {
    index,
    applier,
    ingest,
    metrics,
    log,
    dispose() {
      applier.dispose();
      index.dispose();
    },
  };
}

function scoresOf(index: KvIndex, local: bigint[]): Score[] {
  const r = index.findMatches(BigUint64Array.from(local), false);
  return r.workers.map((w, i) => ({
    workerId: w.workerId,
    dpRank: w.dpRank,
    blocks: r.blocks[i] as number,
  }));
}

const byHolder = (a: Score, b: Score) =>
  a.workerId === b.workerId ? a.dpRank - b.dpRank : a.workerId < b.workerId ? -1 : 1;
const sorted = (s: Score[]) => [...s].sort(byHolder);

/** A counter's value on the metrics registry (`label` selects a labelled series). */
async function counter(metrics: EppMetrics, name: string, label = ''): Promise<number> {
  const text = await metrics.registry.metrics();
  const line = text
    .split('\n')
    .find((l) =>
      label === '' ? l.startsWith(`${name} `) : l.startsWith(`${name}{`) && l.includes(label),
    );
  return line ? Number(line.split(' ').at(-1)) : 0;
}

function endpointsFor(urls: Record<string, string>): Endpoint[] {
  return HOLDERS.map((x, i) => ({
    address: '127.0.0.1',
    port: 8000 + i,
    hostPort: `127.0.0.1:${8000 + i}`,
    name: x.socket,
    workerId: x.workerId,
    dpRank: x.dpRank,
    role: 'aggregated' as const,
    labels: {},
    kvEvents: { endpoint: urls[x.socket] as string, format: 'vllm' as const },
  }));
}

async function poll(cond: () => boolean, what: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Waits until kv-epp's sockets have received everything the publisher sent, then applies it. */
async function receiveAll(
  pub: VllmPublisher,
  sources: ZmqEventSources,
  p: Pipeline,
): Promise<Record<string, number>> {
  const counts = await pub.sent();
  const want = new Map(Object.entries(counts).map(([name, n]) => [pub.urls[name] as string, n]));
  await poll(
    () => sources.stats().sources.every((s) => s.received === want.get(s.endpoint)),
    `kv-epp to receive ${JSON.stringify(counts)}`,
  );
  p.ingest.drainAll();
  return counts;
}

let work: string;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'kv-epp-zmq-'));
});
afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

// ---- tests --------------------------------------------------------------------------------------

describe.skipIf(missingPublisher !== '')(
  missingPublisher ? `vLLM ZMQ → kv-epp (SKIPPED: ${missingPublisher})` : 'vLLM ZMQ → kv-epp',
  () => {
    it('applies both vLLM encodings and counts what it rejects', async () => {
      const p = await pipeline();
      const pub = await startVllmPublisher(scenario(1), join(work, 'kvepp-only'));
      const sources = await startZmqEventSources({
        endpoints: endpointsFor(pub.urls),
        ingest: p.ingest,
        log: p.log,
      });
      try {
        const counts = await receiveAll(pub, sources, p);
        expect(counts).toEqual({ a0: 8, a1: 4, b0: 7 });
        const hasher = await createBlockHasher('native');
        for (const q of QUERIES) {
          const local = hasher.hash(Uint32Array.from(q.tokens), q.blockSize, {
            loraName: q.loraName,
            cacheNamespace: q.cacheNamespace,
          }).local;
          expect(sorted(scoresOf(p.index, [...local])), q.name).toEqual(
            sorted(EXPECTED[q.name] as Score[]),
          );
        }
        // Framing errors stop at the adapter; payload problems are the applier's.
        const b0 = sources.stats().sources.find((s) => s.endpoint === pub.urls.b0);
        expect(b0).toMatchObject({ received: 7, malformed: 3 });
        const m = p.metrics;
        expect(
          await counter(m, 'kv_epp_events_rejected_total', 'reason="block_size_mismatch"'),
        ).toBe(1);
        expect(await counter(m, 'kv_epp_events_rejected_total', 'reason="partial_block"')).toBe(2);
        expect(await counter(m, 'kv_epp_events_rejected_total', 'reason="malformed"')).toBe(0);
        expect(await counter(m, 'kv_epp_events_gaps_total')).toBe(0);
        expect(await counter(m, 'kv_epp_events_messages_total')).toBe(16);
        const mismatch = p.log.records.filter((r) => /block size differs/.test(r.msg));
        expect(mismatch.map((r) => r.fields)).toEqual([
          expect.objectContaining({
            workerId: WORKER_B,
            dpRank: 0,
            configuredBlockSize: 4,
            eventBlockSize: 8,
          }),
        ]);
        expect(
          p.log.records.filter((r) => r.msg === 'malformed ZMQ KV-event message skipped'),
        ).toHaveLength(1);
      } finally {
        await sources.close();
        expect(await pub.close()).toBe(0);
        p.dispose();
      }
    }, 120_000);
  },
);

describe.skipIf(missingOracle !== '')(
  missingOracle
    ? `vLLM ZMQ: kv-epp vs Dynamo's relay + RadixTree (SKIPPED: ${missingOracle})`
    : "vLLM ZMQ: kv-epp vs Dynamo's relay + RadixTree",
  () => {
    let nats: NatsServer;
    beforeAll(async () => {
      nats = await startNatsServer({ jetstream: false });
    }, 30_000);
    afterAll(async () => {
      await nats?.stop();
    });

    it('gives the overlaps Dynamo gives, per worker and dp rank', async () => {
      const dir = join(work, 'oracle');
      const direct = await pipeline();
      // The relay's NATS messages: kept for the RadixTree, and applied by kv-epp's dynamo codec.
      const envelopes: Uint8Array[] = [];
      const relayed = await pipeline((m) => envelopes.push(m.payload));
      const natsSource = await startNatsEventSource({
        servers: nats.url,
        subjects: [kvEventsSubject('kvepp', 'relay', 'ep')],
        ingest: relayed.ingest,
        log: relayed.log,
      });
      const pub = await startVllmPublisher(scenario(2), join(dir, 'pub'));
      let relay: LineProcess | undefined;
      const sources = await startZmqEventSources({
        endpoints: endpointsFor(pub.urls),
        ingest: direct.ingest,
        log: direct.log,
      });
      try {
        relay = await startDynamoRelay(
          {
            endpoint: 'kvepp.relay.ep',
            blockSize: BLOCK,
            relays: HOLDERS.map((x) => ({
              workerId: x.workerId,
              dpRank: x.dpRank,
              zmqEndpoint: pub.urls[x.socket] as string,
            })),
          },
          join(dir, 'relay'),
          dynamoEnv(join(dir, 'relay'), nats.url),
        );
        await receiveAll(pub, sources, direct);
        // The relay is done when its sentinel store of every holder has come back over NATS.
        const hasher = await createBlockHasher('native');
        const sentinel = [...hasher.hash(Uint32Array.from(SENTINEL), BLOCK).local];
        await poll(() => {
          relayed.ingest.drainAll();
          return scoresOf(relayed.index, sentinel).length === HOLDERS.length;
        }, "the relay's sentinel stores of every holder");
        const relayProc = relay;
        relay = undefined;
        expect(await relayProc.close()).toBe(0);

        const oracle: OracleResult = await runRadixOracle(envelopes, QUERIES, join(dir, 'radix'));
        // Dynamo converted and applied the same stream (stores, removals, the clear).
        expect(oracle.errors).toEqual({});
        expect(oracle.kinds).toMatchObject({ cleared: 1 });
        expect(oracle.applied).toBeGreaterThan(10);
        expect(oracle.skippedTiers).toEqual({ host_pinned: 1 });
        for (const q of QUERIES) {
          const o = oracle.queries.find((x) => x.name === q.name);
          if (!o) throw new Error(`no oracle answer for ${q.name}`);
          // Dynamo's local hashes are kv-epp's.
          const ours = hasher.hash(Uint32Array.from(q.tokens), q.blockSize, {
            loraName: q.loraName,
            cacheNamespace: q.cacheNamespace,
          }).local;
          expect([...ours], `${q.name}: local hashes`).toEqual(o.localHashes);
          const dynamo = sorted(o.scores);
          expect(sorted(scoresOf(direct.index, o.localHashes)), `${q.name}: kv-epp (ZMQ)`).toEqual(
            dynamo,
          );
          expect(
            sorted(scoresOf(relayed.index, o.localHashes)),
            `${q.name}: kv-epp (relay → dynamo codec)`,
          ).toEqual(dynamo);
          expect(dynamo, `${q.name}: Dynamo vs the scenario's expectation`).toEqual(
            sorted(EXPECTED[q.name] as Score[]),
          );
        }
        // Dynamo also drops the mismatched and partial blocks, with no counter to compare.
        expect(
          await counter(
            direct.metrics,
            'kv_epp_events_rejected_total',
            'reason="block_size_mismatch"',
          ),
        ).toBe(1);
      } finally {
        await relay?.close();
        await sources.close();
        await natsSource.close();
        await pub.close();
        direct.dispose();
        relayed.dispose();
      }
    }, 180_000);
  },
);
