import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEventApplier } from '../../../src/events/factory.js';
import { decodeMsgpack, type RouterEvent } from '../../../src/events/js/dynamo.js';
import {
  findRecoveryTarget,
  queryWorkerKvDump,
  queryWorkerKvRange,
  type RecoveryTarget,
  type WorkerKvQueryResult,
  WorkerQueryError,
} from '../../../src/events/worker-query/index.js';
import { createKvIndex } from '../../../src/kv/factory.js';
import type { KvIndex } from '../../../src/kv/types.js';
import { DynamoWorker } from '../../support/dynamo-worker.js';
import { type NatsServer, startNatsServer } from '../../support/nats-server.js';
import { dynamoAndNats, NatsCapture, poll } from './support.js';

const { python: PYTHON, missing } = dynamoAndNats('dynamo worker query');

const BLOCK = 4;
const WORKER_ID = (1n << 63n) + 0x5eedn;
const H = (i: number) => 0xf00d_0000_0000_0000n + BigInt(i); // block hashes above 2^63

const tokens = (first: number, blocks: number) =>
  Array.from({ length: blocks * BLOCK }, (_, i) => first + i);

/** What a decoded event is, for exact comparison (hashes as bigints). */
const view = (e: RouterEvent) => ({
  workerId: e.workerId,
  dpRank: e.dpRank,
  eventId: e.eventId,
  tier: e.tier,
  data: e.data,
});

function decodeEvents(bytes: Uint8Array): RouterEvent[] {
  const d = decodeMsgpack(bytes);
  if (!d.ok) throw new Error(`undecodable events (${d.reason})`);
  return d.value.events.map((e) => {
    if (!e.ok) throw new Error(`undecodable event (${e.reason})`);
    return e.value;
  });
}

describe.skipIf(missing.length > 0)('worker local-indexer query (Dynamo 1.6.1)', () => {
  let nats: NatsServer;
  let capture: NatsCapture;
  let worker: DynamoWorker;
  let workdir: string;
  let kvDir: string;
  /** Live events per dp rank, in arrival order. */
  const live = new Map<number, RouterEvent[]>();
  /** Captured live messages per dp rank (raw bytes, for the applier). */
  const liveMessages = new Map<number, Uint8Array[]>();
  let published = 0;
  const targets = new Map<number, RecoveryTarget>();

  beforeAll(async () => {
    nats = await startNatsServer({ jetstream: false });
    capture = await NatsCapture.start(nats.url, 'namespace.*.component.*.endpoint.*.kv-events');
    workdir = mkdtempSync(join(tmpdir(), 'kv-epp-wq-'));
    ({ worker, kvDir } = await DynamoWorker.startRanks(PYTHON as string, nats.url, {
      endpoint: 'wqns.backend.generate',
      workdir,
      workerId: WORKER_ID,
      blockSize: BLOCK,
      ranks: [0, 1],
    }));
    for (const rank of [0, 1]) {
      targets.set(
        rank,
        await poll(`recovery target of rank ${rank}`, () => {
          try {
            return findRecoveryTarget(kvDir, WORKER_ID, rank);
          } catch (e) {
            if (e instanceof WorkerQueryError && e.code === 'no_recovery_target') return undefined;
            throw e;
          }
        }),
      );
    }

    // rank 0: a 4-block chain, two children, a branch off block 2, then the leaf removed.
    const r0 = [
      {
        op: 'stored',
        token_ids: tokens(0, 4),
        block_hashes: [H(1), H(2), H(3), H(4)],
        parent_hash: null,
      },
      { op: 'stored', token_ids: tokens(100, 1), block_hashes: [H(5)], parent_hash: H(4) },
      { op: 'stored', token_ids: tokens(200, 1), block_hashes: [H(6)], parent_hash: H(5) },
      { op: 'stored', token_ids: tokens(300, 2), block_hashes: [H(7), H(8)], parent_hash: H(2) },
      { op: 'removed', block_hashes: [H(6)] },
      { op: 'stored', token_ids: tokens(400, 1), block_hashes: [H(9)], parent_hash: H(8) },
    ];
    // rank 1: its own chain (same worker id).
    const r1 = [
      {
        op: 'stored',
        token_ids: tokens(500, 3),
        block_hashes: [H(21), H(22), H(23)],
        parent_hash: null,
      },
      { op: 'stored', token_ids: tokens(600, 1), block_hashes: [H(24)], parent_hash: H(23) },
    ];
    for (const c of r0) await worker.send({ ...c, worker: 'r0' });
    for (const c of r1) await worker.send({ ...c, worker: 'r1' });
    published = r0.length + r1.length;

    // Every live event reaches NATS.
    await poll(
      'all live events on NATS',
      () => {
        let n = 0;
        for (const m of capture.messages) n += decodeEvents(m.data).length;
        return n >= published ? true : undefined;
      },
      20_000,
      20,
      () => worker.output,
    );
    for (const m of capture.messages) {
      const evs = decodeEvents(m.data);
      const rank = evs[0]?.dpRank ?? 0;
      for (const e of evs) live.set(e.dpRank, [...(live.get(e.dpRank) ?? []), e]);
      liveMessages.set(rank, [...(liveMessages.get(rank) ?? []), m.data]);
    }
  }, 120_000);

  afterAll(async () => {
    await worker?.stop();
    await capture?.close();
    await nats?.stop();
    if (workdir) rmSync(workdir, { recursive: true, force: true });
  });

  const target = (rank: number) => targets.get(rank) as RecoveryTarget;
  const events = (r: WorkerKvQueryResult) => {
    if (r.kind !== 'events' && r.kind !== 'tree_dump') throw new Error(`got ${r.kind}`);
    return r;
  };

  it('discovery names the recovery endpoint of each rank', () => {
    for (const rank of [0, 1]) {
      const t = target(rank);
      expect(t.workerId).toBe(WORKER_ID);
      expect(t.host).toBe('127.0.0.1');
      expect(t.codec).toBe('msgpack');
      expect(t.endpointPath).toBe(
        `${t.instanceId.toString(16)}/wqns/backend/worker_kv_query_source_${t.publisherId.toString(16)}`,
      );
      expect(t.kvStateEndpoint).toEqual({
        namespace: 'wqns',
        component: 'backend',
        name: 'generate',
      });
    }
    expect(target(0).publisherId).not.toBe(target(1).publisherId);
    // The live envelopes come from the advertised publishers.
    const pubs = new Set(
      capture.messages
        .map((m) => decodeMsgpack(m.data))
        .flatMap((d) => (d.ok && d.value.envelope ? [d.value.envelope.publisherId] : [])),
    );
    expect(pubs).toEqual(new Set([target(0).publisherId, target(1).publisherId]));
  });

  it('a range query returns exactly the live events from its start', async () => {
    for (const rank of [0, 1]) {
      const mine = (live.get(rank) ?? []).map(view);
      const last = mine[mine.length - 1]?.eventId as bigint;
      expect(mine.map((e) => e.eventId)).toEqual(mine.map((_, i) => BigInt(i + 1))); // ids 1..n
      for (const start of [1n, 2n, last]) {
        const r = events(
          await queryWorkerKvRange(target(rank), start, null, { timeoutMs: 10_000 }),
        );
        expect(r.kind).toBe('events');
        expect(r.lastEventId).toBe(last);
        const got = decodeEvents(r.events).map(view);
        expect(got.length).toBe(r.count);
        expect(got).toEqual(mine.filter((e) => e.eventId >= start));
      }
      // The end bound is validation only: the answer runs through the newest event.
      const bounded = events(await queryWorkerKvRange(target(rank), 2n, 2n));
      expect(decodeEvents(bounded.events).map((e) => e.eventId)).toEqual(
        mine.filter((e) => e.eventId >= 2n).map((e) => e.eventId),
      );
    }
  });

  it('a range past the newest event is too_new; end < start is invalid_range; before the buffer is a dump', async () => {
    const last = BigInt((live.get(0) ?? []).length);
    expect(await queryWorkerKvRange(target(0), last + 5n)).toEqual({
      kind: 'too_new',
      requestedStart: last + 5n,
      requestedEnd: last,
      newestAvailable: last,
    });
    expect(await queryWorkerKvRange(target(0), 4n, 3n)).toEqual({
      kind: 'invalid_range',
      startId: 4n,
      endId: 3n,
    });
    // Event ids start at 1: a range from 0 is older than the buffer, so the server dumps.
    expect((await queryWorkerKvRange(target(0), 0n)).kind).toBe('tree_dump');
  });

  it('a dump rebuilds the same index as the live events', async () => {
    const fresh = async (): Promise<[KvIndex, Awaited<ReturnType<typeof createEventApplier>>]> => {
      const index = await createKvIndex('auto');
      return [index, await createEventApplier(index, { blockSize: BLOCK })];
    };
    const [fromLive, liveApplier] = await fresh();
    const [fromDump, dumpApplier] = await fresh();
    try {
      for (const rank of [0, 1]) {
        for (const m of liveMessages.get(rank) ?? []) {
          const rep = liveApplier.apply('dynamo', m);
          expect(rep.rejected).toEqual({});
          expect(rep.gaps).toEqual([]);
        }
        const d = await queryWorkerKvDump(target(rank));
        if (d.kind !== 'tree_dump') throw new Error(`expected a tree dump, got ${d.kind}`);
        expect(d.resetScope).toBe('all');
        expect(d.lastEventId).toBe(BigInt((live.get(rank) ?? []).length));
        const dumped = decodeEvents(d.events);
        expect(dumped.length).toBe(d.count);
        // Synthetic ids 0..count-1, only this rank, only stores.
        expect(dumped.map((e) => e.eventId)).toEqual(dumped.map((_, i) => BigInt(i)));
        expect(new Set(dumped.map((e) => `${e.workerId}/${e.dpRank}/${e.data.kind}`))).toEqual(
          new Set([`${WORKER_ID}/${rank}/stored`]),
        );
        const rep = dumpApplier.apply('dynamo', d.events);
        expect(rep.rejected).toEqual({});
        expect(rep.applied.stored).toBe(d.count);
      }
      for (const rank of [0, 1]) {
        const holder = { workerId: WORKER_ID, dpRank: rank };
        expect(fromDump.treeSize(holder)).toBe(fromLive.treeSize(holder));
        expect(fromDump.treeSize(holder)).toBeGreaterThan(0);
      }
      expect(fromLive.treeSize({ workerId: WORKER_ID, dpRank: 0 })).toBe(8); // H1..H9 minus H6
      // Every prefix of every stored chain scores the same in both indexes.
      const locals = new Map<bigint, bigint>(); // external hash -> local hash
      const parent = new Map<bigint, bigint | null>();
      for (const e of [...(live.get(0) ?? []), ...(live.get(1) ?? [])]) {
        if (e.data.kind !== 'stored') continue;
        let p = e.data.parent;
        e.data.externals.forEach((h, i) => {
          locals.set(h, (e.data as { locals: bigint[] }).locals[i] as bigint);
          parent.set(h, p);
          p = h;
        });
      }
      for (const leaf of locals.keys()) {
        const chain: bigint[] = [];
        for (let h: bigint | null | undefined = leaf; h != null; h = parent.get(h)) {
          chain.unshift(locals.get(h) as bigint);
        }
        const q = BigUint64Array.from(chain);
        expect(fromDump.findMatches(q, false)).toEqual(fromLive.findMatches(q, false));
      }
    } finally {
      liveApplier.dispose();
      dumpApplier.dispose();
      fromLive.dispose();
      fromDump.dispose();
    }
  });

  it('typed errors: worker mismatch, unknown endpoint, refused port, silent peer', async () => {
    const t = target(0);
    const code = async (p: Promise<unknown>) => {
      try {
        await p;
        return 'resolved';
      } catch (e) {
        return e instanceof WorkerQueryError ? e.code : `untyped: ${(e as Error).message}`;
      }
    };
    expect(await code(queryWorkerKvRange({ ...t, workerId: WORKER_ID + 1n }, 1n))).toBe(
      'worker_error',
    );
    expect(await code(queryWorkerKvRange({ ...t, dpRank: 1 }, 1n))).toBe('worker_error');
    expect(
      await code(
        queryWorkerKvRange(
          { ...t, endpointPath: `${t.instanceId.toString(16)}/wqns/backend/nope` },
          1n,
        ),
      ),
    ).toBe('endpoint_missing');
    // A port nobody listens on.
    const closed = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const port = (s.address() as { port: number }).port;
        s.close(() => resolve(port));
      });
    });
    expect(await code(queryWorkerKvRange({ ...t, port: closed }, 1n))).toBe('connection_refused');
    // A peer that accepts and never answers.
    const silent: Server = await new Promise((resolve) => {
      const s = createServer(() => {}).listen(0, '127.0.0.1', () => resolve(s));
    });
    try {
      const port = (silent.address() as { port: number }).port;
      const t0 = Date.now();
      expect(await code(queryWorkerKvRange({ ...t, port }, 1n, null, { timeoutMs: 300 }))).toBe(
        'timeout',
      );
      expect(Date.now() - t0).toBeLessThan(5_000);
    } finally {
      silent.close();
    }
    expect(() => findRecoveryTarget(kvDir, WORKER_ID, 7)).toThrowError(/no live KV event source/);
  });
});
