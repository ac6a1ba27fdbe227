/**
 * Worker recovery (src/events/recovery.ts) on both appliers and indexes:
 * the end state after a gap or a late start equals the worker's tree plus
 * every later event; failures keep the fallback state; restarts cancel.
 * The query is a scripted function (the real one is tested against Dynamo in
 * test/integration/events/recovery.test.ts); sleeps resolve at once and are recorded.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createEventApplier } from '../../../src/events/factory.js';
import { EventIngest, type EventMessage } from '../../../src/events/ingest.js';
import {
  type DumpAnswer,
  type RecoveryOutcome,
  type RecoveryTrigger,
  WorkerRecovery,
} from '../../../src/events/recovery.js';
import type { EventApplier } from '../../../src/events/types.js';
import { createKvIndex } from '../../../src/kv/factory.js';
import type { Backend, KvIndex, WorkerRank } from '../../../src/kv/types.js';
import { RecordingLogger } from '../../support/ext-proc.js';
import { encode, type M } from '../../support/msgpack.js';
import {
  emptyReport,
  envelope,
  removed,
  routerEvent,
  stored,
} from '../../support/router-events.js';

const W = (1n << 63n) + 7n;

const holder: WorkerRank = { workerId: W, dpRank: 0 };
const quiet = new RecordingLogger();

/** The worker's side: its events in order, and its tree as a dump at any point. */
class FakeWorker {
  readonly events: M[] = [];
  private seq = 0n;
  /** Stores block i (hash 100+i) under block i-1; returns the envelope message. */
  store(i: number): Uint8Array {
    const parent = i === 0 ? null : BigInt(100 + i - 1);
    return this.publish(stored(parent, [[BigInt(100 + i), BigInt(1000 + i)]]));
  }
  remove(i: number): Uint8Array {
    return this.publish(removed([BigInt(100 + i)]));
  }
  private publish(data: M): Uint8Array {
    const ev = routerEvent(W, 0, this.events.length + 1, data);
    this.events.push(ev);
    return encode(envelope(W, this.seq++, [ev]));
  }
  get lastEventId(): bigint {
    return BigInt(this.events.length);
  }
  /** The blocks alive now, as a dump (synthetic ids 0.. as Dynamo's). */
  dump(alive: number[]): DumpAnswer {
    const evs = alive.map((i, n) =>
      routerEvent(
        W,
        0,
        n,
        stored(n === 0 ? null : BigInt(100 + (alive[n - 1] as number)), [
          [BigInt(100 + i), BigInt(1000 + i)],
        ]),
      ),
    );
    return {
      kind: 'tree_dump',
      events: encode(evs),
      count: evs.length,
      lastEventId: this.lastEventId,
      resetScope: 'all',
    };
  }
}

describe.each<Backend>(['native', 'js'])('worker recovery (%s)', (backend) => {
  let index: KvIndex;
  let applier: EventApplier;
  let worker: FakeWorker;
  let outcomes: Array<[RecoveryTrigger, RecoveryOutcome, number]>;
  let sleeps: number[];
  /** Each query takes the next scripted answer (a function runs when the query is made). */
  let answers: Array<() => DumpAnswer | Promise<DumpAnswer>>;
  let queries: number;
  let hasTarget: boolean;
  let release: (() => void) | undefined;

  beforeEach(async () => {
    index = await createKvIndex(backend);
    applier = await createEventApplier(index, { blockSize: 4 });
    worker = new FakeWorker();
    outcomes = [];
    sleeps = [];
    answers = [];
    queries = 0;
    hasTarget = true;
    release = undefined;
  });
  afterEach(() => {
    applier.dispose();
    index.dispose();
  });

  function setup(maxBuffered?: number) {
    const recovery = new WorkerRecovery<string>({
      applier,
      index,
      log: quiet,
      findTarget: () => (hasTarget ? 'target' : undefined),
      dump: async () => {
        queries++;
        const next = answers.shift();
        if (!next) throw new Error('no answer scripted');
        return next();
      },
      sleep: async (ms) => {
        sleeps.push(ms);
      },
      observer: { recovery: (t, o, b) => outcomes.push([t, o, b]) },
      attempts: 3,
      backoffMs: 100,
      maxBuffered,
    });
    const ingest = new EventIngest({
      applier,
      log: quiet,
      now: () => 0,
      schedule: () => {},
      recovery,
    });
    const deliver = (payload: Uint8Array): void => {
      ingest.push({ codec: 'dynamo', payload, source: 'test' } satisfies EventMessage);
      ingest.drainAll();
    };
    return { recovery, deliver };
  }
  const depth = (i: number): number => {
    const q = BigUint64Array.from({ length: i + 1 }, (_, k) => BigInt(1000 + k));
    const s = index.findMatches(q, false);
    return s.workers.length === 0 ? 0 : (s.blocks[0] as number);
  };
  const settle = () => new Promise((r) => setTimeout(r, 0));
  /** An answer that waits until `release()`; live messages can arrive meanwhile. */
  const held = (make: () => DumpAnswer) => () =>
    new Promise<DumpAnswer>((resolve) => {
      release = () => resolve(make());
    });

  it('recovers a late start: the first message triggers a dump of the whole tree', async () => {
    const { deliver } = setup();
    // The EPP missed blocks 0..3 (published before it subscribed).
    for (let i = 0; i < 4; i++) worker.store(i);
    answers.push(() => worker.dump([0, 1, 2, 3, 4]));
    deliver(worker.store(4));
    await settle();
    expect(depth(4)).toBe(5);
    expect(outcomes).toEqual([['discovered', 'recovered', 5]]);
    // The cursor is the worker's last id: the next live event applies without a gap.
    deliver(worker.store(5));
    expect(depth(5)).toBe(6);
    expect(queries).toBe(1);
  });

  it('on a gap replaces the holder with the dump, then replays what arrived meanwhile', async () => {
    const { deliver } = setup();
    answers.push(() => worker.dump([0]));
    deliver(worker.store(0));
    await settle();
    worker.store(1); // lost
    worker.remove(0); // lost: the worker evicted block 0 (its dump puts block 1 at the root)
    worker.store(2); // lost
    // The worker answers with its tree as of event 4 (before the gap message 5 reached it).
    const dumpAtGap = worker.dump([1, 2]);
    answers.push(held(() => dumpAtGap));
    deliver(worker.store(3)); // event 5, a gap: the fallback clears the holder and applies it
    expect(outcomes).toEqual([['discovered', 'recovered', 1]]);
    expect(index.treeSize(holder)).toBe(0); // block 3's parent was never seen
    // While the query runs, more live events arrive and are applied.
    deliver(worker.store(4));
    deliver(worker.remove(4));
    release?.();
    await settle();
    expect(outcomes.at(-1)).toEqual(['gap', 'recovered', 2]);
    // Worker truth: 101, 102 from the dump, 103 from the gap message, 104 stored and removed.
    expect(index.treeSize(holder)).toBe(3);
    expect(depth(0)).toBe(0);
    const chain = index.findMatches(BigUint64Array.from([1001n, 1002n, 1003n, 1004n]), false);
    expect(chain.blocks).toEqual([3]);
    // Later events continue without a gap.
    deliver(worker.remove(3));
    expect(outcomes.length).toBe(2);
    expect(index.treeSize(holder)).toBe(2);
  });

  it('retries with backoff, then keeps the fallback state and counts the failure', async () => {
    const { deliver } = setup();
    answers.push(
      () => Promise.reject(new Error('connect ECONNREFUSED')),
      () => ({ kind: 'tree_dump_failed', lastEventId: 0n, message: 'busy' }),
      () => Promise.reject(new Error('timeout')),
    );
    deliver(worker.store(0));
    await settle();
    await settle();
    expect(queries).toBe(3);
    expect(sleeps).toEqual([100, 200]);
    expect(outcomes).toEqual([['discovered', 'failed', 0]]);
    expect(depth(0)).toBe(1);
  });

  it('retries a dump of one residency domain, and never recovers engine (vLLM) streams', async () => {
    const { recovery, deliver } = setup();
    const partial = { ...(worker.dump([0]) as object), resetScope: 'worker' } as DumpAnswer;
    answers.push(
      () => partial,
      () => partial,
      () => partial,
    );
    deliver(worker.store(0));
    await settle();
    await settle();
    expect(queries).toBe(3);
    expect(outcomes).toEqual([['discovered', 'failed', 0]]);
    recovery.observe(
      { codec: 'vllm', payload: new Uint8Array(1), source: 'zmq' },
      { ...emptyReport(), workers: [{ workerId: 99n, dpRank: 0 }] },
    );
    expect(recovery.inFlight).toBe(0);
    recovery.close();
    deliver(worker.store(1));
    expect(recovery.inFlight).toBe(0);
  });

  it('does nothing without a recovery target', async () => {
    hasTarget = false;
    const { deliver } = setup();
    deliver(worker.store(0));
    worker.store(1);
    deliver(worker.store(2)); // gap: the fallback clears; block 2's parent is unknown
    await settle();
    expect([queries, outcomes]).toEqual([0, []]);
    expect(index.treeSize(holder)).toBe(0);
  });

  it('cancels a recovery when the stream restarts, and when the worker is forgotten', async () => {
    const { recovery, deliver } = setup();
    answers.push(held(() => worker.dump([0, 1])));
    deliver(worker.store(0));
    deliver(worker.store(1));
    expect(recovery.inFlight).toBe(1);
    // A restarted stream: ids back at 1.
    const restarted = encode(
      envelope(W, 0n, [routerEvent(W, 0, 1, stored(null, [[500n, 5000n]]))]),
    );
    deliver(restarted);
    expect(recovery.inFlight).toBe(0);
    release?.();
    await settle();
    expect(outcomes).toEqual([['discovered', 'cancelled', 0]]);
    // The stale answer was dropped: the restarted stream's block stays, blocks 0-1 are not back.
    expect([index.treeSize(holder), depth(0)]).toEqual([1, 0]);

    // A worker that left discovery: its recovery is cancelled and it counts as new again.
    const other = 42n;
    answers.push(held(() => worker.dump([])));
    deliver(encode(envelope(other, 0n, [routerEvent(other, 0, 1, stored(null, [[7n, 70n]]))])));
    expect(recovery.inFlight).toBe(1);
    recovery.forgetWorker(other);
    expect(recovery.inFlight).toBe(0);
    answers.push(() => ({
      kind: 'tree_dump',
      events: encode([]),
      count: 0,
      lastEventId: 1n,
      resetScope: 'all',
    }));
    deliver(encode(envelope(other, 1n, [routerEvent(other, 0, 2, stored(7n, [[8n, 80n]]))])));
    await settle();
    expect(outcomes.at(-1)).toEqual(['discovered', 'recovered', 0]);
  });

  it('keeps at most maxBuffered messages per holder', async () => {
    const { deliver } = setup(2);
    let answer: DumpAnswer | undefined;
    answers.push(held(() => answer as DumpAnswer));
    deliver(worker.store(0)); // event 1: kept, query held
    answer = worker.dump([0]); // as of event 1
    deliver(worker.store(1)); // events 2..4: only the last two are kept
    deliver(worker.store(2));
    deliver(worker.store(3));
    release?.();
    await settle();
    // Event 2 (block 1) fell out of the buffer, so blocks 2 and 3 have no parent.
    expect([index.treeSize(holder), depth(0)]).toEqual([1, 1]);
    expect(outcomes).toEqual([['discovered', 'recovered', 1]]);
  });
});
