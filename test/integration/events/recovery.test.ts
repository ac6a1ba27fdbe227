/**
 * Worker recovery end to end, against a real Dynamo 1.6.1 worker with its
 * local indexer on (test/support/dynamo_worker_query.py) over a real
 * nats-server:
 *
 *   worker ──kv-events──▶ nats-server ──▶ kv-epp NATS source ─▶ ingest ─▶ applier ─▶ index
 *                                    └──▶ capture (every message) ─▶ reference index
 *   kv-epp ──worker_kv_query_source_<publisher> (TCP request plane, DYN_FILE_KV)──▶ worker
 *
 * 1. An EPP that starts after the workers published: the first message of
 *    each rank triggers a dump, and kv-epp's index equals the reference built
 *    from every message.
 * 2. Messages lost on the way (dropped between the NATS source and the
 *    ingest, as a lost NATS message would be): the event-id gap triggers a
 *    dump; kv-epp's index equals the reference again, while the same stream
 *    without recovery does not (so the comparison can fail).
 *
 * Skipped with a reason unless Dynamo (.venv-tools) and nats-server are
 * installed; KV_EPP_REQUIRE_DYNAMO=1 or KV_EPP_REQUIRE_NATS=1 makes that a failure.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEventApplier } from '../../../src/events/factory.js';
import { EventIngest, type EventMessage } from '../../../src/events/ingest.js';
import { decodeMsgpack } from '../../../src/events/js/dynamo.js';
import { kvEventsSubject, startNatsEventSource } from '../../../src/events/nats-source.js';
import type { RecoveryOutcome, RecoveryTrigger } from '../../../src/events/recovery.js';
import { createWorkerRecovery } from '../../../src/events/recovery-wiring.js';
import type { EventApplier } from '../../../src/events/types.js';
import {
  findRecoveryTarget,
  type RecoveryTarget,
  WorkerQueryError,
} from '../../../src/events/worker-query/index.js';
import { createKvIndex } from '../../../src/kv/factory.js';
import type { KvIndex } from '../../../src/kv/types.js';
import { DynamoWorker } from '../../support/dynamo-worker.js';
import { type NatsServer, startNatsServer } from '../../support/nats-server.js';
import { dynamoAndNats, NatsCapture, poll, QuietLogger } from './support.js';

const { python: PYTHON, missing } = dynamoAndNats('worker recovery');

const BLOCK = 4;
const NS = 'rcns';
const WORKER_ID = (1n << 63n) + 0xbeefn;
const H = (i: number) => 0xc0de_0000_0000_0000n + BigInt(i); // block hashes above 2^63
const tokens = (first: number, blocks: number) =>
  Array.from({ length: blocks * BLOCK }, (_, i) => first + i);

interface Stored {
  op: 'stored';
  token_ids: number[];
  block_hashes: bigint[];
  parent_hash: bigint | null;
}
type Command = Stored | { op: 'removed'; block_hashes: bigint[] };

describe.skipIf(missing.length > 0)('worker recovery from the local indexer (Dynamo 1.6.1)', () => {
  let nats: NatsServer;
  let capture: NatsCapture;
  let worker: DynamoWorker;
  let workdir: string;
  let kvDir: string;
  let published = 0;
  /** Every stored chain, for comparisons: local hashes from the root. */
  const chains: bigint[][] = [];
  const localsOf = new Map<bigint, bigint[]>(); // external hash -> local hashes root..it

  // kv-epp's event path with recovery, and a twin without it fed the same messages.
  const log = new QuietLogger();
  let index: KvIndex;
  let applier: EventApplier;
  let ingest: EventIngest;
  let plainIndex: KvIndex;
  let plainApplier: EventApplier;
  let source: Awaited<ReturnType<typeof startNatsEventSource>> | undefined;
  const outcomes: Array<[RecoveryTrigger, RecoveryOutcome, number]> = [];
  let dropping = false;
  let droppedMessages = 0;
  /** What a timed-out wait prints: the outcomes so far, kv-epp's log and the worker's output. */
  const diagnostics = (): string =>
    `\noutcomes: ${JSON.stringify(outcomes)}\nkv-epp log:\n${log.lines.join('\n')}\nworker:\n${worker.output}`;

  beforeAll(async () => {
    nats = await startNatsServer({ jetstream: false });
    capture = await NatsCapture.start(nats.url, kvEventsSubject(NS));
    workdir = mkdtempSync(join(tmpdir(), 'kv-epp-rc-'));
    ({ worker, kvDir } = await DynamoWorker.startRanks(PYTHON as string, nats.url, {
      endpoint: `${NS}.backend.generate`,
      workdir,
      workerId: WORKER_ID,
      blockSize: BLOCK,
      ranks: [0, 1],
    }));
    for (const rank of [0, 1]) {
      await poll(`recovery target of rank ${rank}`, (): RecoveryTarget | undefined => {
        try {
          return findRecoveryTarget(kvDir, WORKER_ID, rank);
        } catch (e) {
          if (e instanceof WorkerQueryError && e.code === 'no_recovery_target') return undefined;
          throw e;
        }
      });
    }
  }, 120_000);

  afterAll(async () => {
    await source?.close();
    applier?.dispose();
    plainApplier?.dispose();
    index?.dispose();
    plainIndex?.dispose();
    await worker?.stop();
    await capture?.close();
    await nats?.stop();
    if (workdir) rmSync(workdir, { recursive: true, force: true });
  });

  /** Publishes through the worker and waits until the capture has seen every message. */
  async function publish(rank: 0 | 1, cmds: Command[]): Promise<void> {
    for (const c of cmds) {
      if (c.op === 'stored') {
        const hasher = await localHasher();
        const locals = hasher(c.token_ids);
        const base = c.parent_hash === null ? [] : (localsOf.get(c.parent_hash) ?? []);
        c.block_hashes.forEach((h, i) => {
          const chain = [...base, ...locals.slice(0, i + 1)];
          localsOf.set(h, chain);
          chains.push(chain);
        });
      }
      await worker.send({ ...c, worker: `r${rank}` });
      published++;
    }
    await poll(
      'the published events on NATS',
      () => {
        let n = 0;
        for (const m of capture.messages) {
          const d = decodeMsgpack(m.data);
          if (d.ok) n += d.value.events.length;
        }
        return n >= published ? true : undefined;
      },
      20_000,
      20,
      () => worker.output,
    );
  }

  let hasherFn: ((t: number[]) => bigint[]) | undefined;
  async function localHasher(): Promise<(t: number[]) => bigint[]> {
    if (hasherFn) return hasherFn;
    const { createBlockHasher } = await import('../../../src/kv/factory.js');
    const h = await createBlockHasher('js');
    hasherFn = (t) => [...h.hash(Uint32Array.from(t), BLOCK).local];
    return hasherFn;
  }

  /** An index built from every message the worker published (the truth). */
  async function reference(): Promise<{ index: KvIndex; dispose(): void }> {
    const idx = await createKvIndex('js');
    const app = await createEventApplier(idx, { blockSize: BLOCK });
    for (const m of capture.messages) {
      const r = app.apply('dynamo', m.data);
      expect(r.gaps).toEqual([]);
    }
    return {
      index: idx,
      dispose() {
        app.dispose();
        idx.dispose();
      },
    };
  }

  function sameIndex(a: KvIndex, b: KvIndex): boolean {
    for (const rank of [0, 1]) {
      const w = { workerId: WORKER_ID, dpRank: rank };
      if (a.treeSize(w) !== b.treeSize(w)) return false;
    }
    for (const chain of chains) {
      const q = BigUint64Array.from(chain);
      const x = a.findMatches(q, false);
      const y = b.findMatches(q, false);
      if (
        JSON.stringify(x, (_k, v) => (typeof v === 'bigint' ? `${v}` : v)) !==
        JSON.stringify(y, (_k, v) => (typeof v === 'bigint' ? `${v}` : v))
      ) {
        return false;
      }
    }
    return true;
  }

  /** The recovering EPP's index equals one built from every message; the plain one's does not. */
  async function expectRecoveredAndPlainDiffers(): Promise<void> {
    const ref = await reference();
    try {
      expect(sameIndex(index, ref.index)).toBe(true);
      expect(sameIndex(plainIndex, ref.index)).toBe(false);
    } finally {
      ref.dispose();
    }
  }

  it('an EPP that starts after the workers published recovers them from their local indexers', async () => {
    // Published before kv-epp subscribes: only a recovery can bring these in.
    await publish(0, [
      {
        op: 'stored',
        token_ids: tokens(0, 4),
        block_hashes: [H(1), H(2), H(3), H(4)],
        parent_hash: null,
      },
      { op: 'stored', token_ids: tokens(100, 2), block_hashes: [H(5), H(6)], parent_hash: H(2) },
      { op: 'removed', block_hashes: [H(6)] },
    ]);
    await publish(1, [
      {
        op: 'stored',
        token_ids: tokens(500, 3),
        block_hashes: [H(21), H(22), H(23)],
        parent_hash: null,
      },
    ]);

    index = await createKvIndex('native');
    applier = await createEventApplier(index, { blockSize: BLOCK });
    plainIndex = await createKvIndex('js');
    plainApplier = await createEventApplier(plainIndex, { blockSize: BLOCK });
    ingest = new EventIngest({
      applier,
      log,
      now: Date.now,
      schedule: setImmediate,
      recovery: createWorkerRecovery({
        discoveryDir: kvDir,
        responseHost: '127.0.0.1',
        applier,
        index,
        log,
        observer: { recovery: (t, o, b) => outcomes.push([t, o, b]) },
      }),
    });
    // Between the NATS source and the ingest: the twin without recovery sees
    // what kv-epp sees; `dropping` loses messages as a broken link would.
    const push = ingest.push.bind(ingest);
    ingest.push = (msg: EventMessage): boolean => {
      if (dropping) {
        droppedMessages++;
        return true;
      }
      plainApplier.apply(msg.codec, msg.payload, msg.context);
      return push(msg);
    };
    source = await startNatsEventSource({
      servers: nats.url,
      subjects: [kvEventsSubject(NS)],
      ingest,
      log,
    });

    await publish(0, [
      { op: 'stored', token_ids: tokens(200, 1), block_hashes: [H(7)], parent_hash: H(4) },
    ]);
    await publish(1, [
      { op: 'stored', token_ids: tokens(600, 1), block_hashes: [H(24)], parent_hash: H(23) },
    ]);
    await poll(
      'both ranks recovered',
      () =>
        outcomes.filter(([t, o]) => t === 'discovered' && o === 'recovered').length === 2
          ? true
          : undefined,
      30_000,
      10,
      diagnostics,
    );
    // Without recovery the late EPP knows only the last block of each rank, and not even
    // that one: its parent was never seen.
    await expectRecoveredAndPlainDiffers();
  }, 120_000);

  it('lost messages (an event-id gap) are recovered from the worker', async () => {
    const before = outcomes.length;
    dropping = true;
    await publish(0, [
      { op: 'removed', block_hashes: [H(4)] }, // evicts H4 and so H7 below it
      { op: 'stored', token_ids: tokens(300, 2), block_hashes: [H(8), H(9)], parent_hash: H(5) },
    ]);
    // The dropped messages went past the NATS source (the capture has them) before we stop dropping.
    await poll('kv-epp dropped both', () => (droppedMessages >= 2 ? true : undefined));
    dropping = false;
    await publish(0, [
      { op: 'stored', token_ids: tokens(400, 1), block_hashes: [H(10)], parent_hash: H(9) },
    ]);
    await poll(
      'the gap recovered',
      () =>
        outcomes.slice(before).some(([t, o]) => t === 'gap' && o === 'recovered')
          ? true
          : undefined,
      30_000,
      10,
      diagnostics,
    );
    // Rank 1 keeps going alongside, untouched.
    await publish(1, [
      { op: 'stored', token_ids: tokens(700, 1), block_hashes: [H(25)], parent_hash: H(24) },
    ]);
    await poll('rank 1 applied', () =>
      index.treeSize({ workerId: WORKER_ID, dpRank: 1 }) === 5 ? true : undefined,
    );
    await expectRecoveredAndPlainDiffers();
    expect(outcomes.slice(before).filter(([, o]) => o !== 'recovered')).toEqual([]);
  }, 120_000);
});
