/**
 * EventIngest: bounded queue, order, slicing, observer and log throttling,
 * against a recording applier (the appliers have their own contract suite).
 */
import { describe, expect, it } from 'vitest';
import { EventIngest, type EventObserver } from '../../../src/events/ingest.js';
import type {
  EventApplier,
  EventApplyReport,
  EventCodec,
  EventSourceContext,
} from '../../../src/events/types.js';
import { RecordingLogger } from '../../support/ext-proc.js';
import { emptyReport } from '../../support/router-events.js';

class ScriptedApplier implements EventApplier {
  readonly backend = 'js' as const;
  readonly seen: Array<{ codec: EventCodec; first: number; ctx?: EventSourceContext | undefined }> =
    [];
  readonly forgotten: bigint[] = [];
  constructor(
    private readonly reportFor: (payload: Uint8Array) => EventApplyReport = emptyReport,
  ) {}
  apply(codec: EventCodec, payload: Uint8Array, ctx?: EventSourceContext): EventApplyReport {
    this.seen.push({ codec, first: payload[0] ?? -1, ctx });
    return this.reportFor(payload);
  }
  forgetWorker(workerId: bigint): void {
    this.forgotten.push(workerId);
  }
  setCursor(): void {}
  dispose(): void {}
}

class ManualScheduler {
  private tasks: Array<() => void> = [];
  readonly schedule = (fn: () => void): void => {
    this.tasks.push(fn);
  };
  get pending(): number {
    return this.tasks.length;
  }
  runOne(): void {
    const t = this.tasks.shift();
    t?.();
  }
}

function setup(
  opts: { maxQueuedMessages?: number; maxQueuedBytes?: number; sliceMs?: number } = {},
) {
  const applier = new ScriptedApplier();
  const sched = new ManualScheduler();
  const log = new RecordingLogger();
  let now = 1_000_000;
  const applied: Array<{ report: EventApplyReport; lagMs: number | undefined }> = [];
  let dropped = 0;
  const observer: EventObserver = {
    applied: (report, lagMs) => applied.push({ report, lagMs }),
    dropped: (n) => {
      dropped += n;
    },
  };
  const ingest = new EventIngest({
    applier,
    log,
    observer,
    now: () => now,
    schedule: sched.schedule,
    ...opts,
  });
  return {
    applier,
    sched,
    log,
    ingest,
    applied,
    dropped: () => dropped,
    advance: (ms: number) => {
      now += ms;
    },
  };
}

const msg = (n: number, size = 1) => {
  const payload = new Uint8Array(size);
  payload[0] = n;
  return { codec: 'dynamo' as const, payload, source: 'test' };
};

describe('EventIngest', () => {
  it('applies in push order on the scheduled drain, scheduling once', () => {
    const t = setup();
    for (let i = 0; i < 5; i++) expect(t.ingest.push(msg(i))).toBe(true);
    expect(t.applier.seen).toHaveLength(0);
    expect(t.sched.pending).toBe(1);
    t.sched.runOne();
    expect(t.applier.seen.map((s) => s.first)).toEqual([0, 1, 2, 3, 4]);
    expect(t.applied).toHaveLength(5);
    expect(t.ingest.stats()).toEqual({ queued: 0, queuedBytes: 0, dropped: 0, messages: 5 });
    expect(t.sched.pending).toBe(0);
  });

  it('drops and counts past the message limit, then accepts again once drained', () => {
    const t = setup({ maxQueuedMessages: 3 });
    const accepted = [0, 1, 2, 3, 4].map((i) => t.ingest.push(msg(i)));
    expect(accepted).toEqual([true, true, true, false, false]);
    expect(t.dropped()).toBe(2);
    expect(t.ingest.stats().dropped).toBe(2);
    expect(t.log.records.filter((r) => r.msg.includes('queue full'))).toHaveLength(1);
    t.sched.runOne();
    expect(t.applier.seen.map((s) => s.first)).toEqual([0, 1, 2]);
    expect(t.ingest.push(msg(9))).toBe(true);
  });

  it('bounds queued payload bytes', () => {
    const t = setup({ maxQueuedBytes: 100 });
    expect(t.ingest.push(msg(0, 60))).toBe(true);
    expect(t.ingest.push(msg(1, 60))).toBe(false);
    expect(t.ingest.push(msg(2, 40))).toBe(true);
    expect(t.ingest.stats().queuedBytes).toBe(100);
  });

  it('yields after a slice and reschedules the rest', () => {
    const t = setup({ sliceMs: 0 });
    for (let i = 0; i < 3; i++) t.ingest.push(msg(i));
    t.sched.runOne();
    expect(t.applier.seen).toHaveLength(1);
    expect(t.sched.pending).toBe(1);
    t.sched.runOne();
    t.sched.runOne();
    expect(t.applier.seen.map((s) => s.first)).toEqual([0, 1, 2]);
    expect(t.sched.pending).toBe(0);
  });

  it('drainAll applies everything regardless of the slice', () => {
    const t = setup({ sliceMs: 0 });
    for (let i = 0; i < 4; i++) t.ingest.push(msg(i));
    t.ingest.drainAll();
    expect(t.applier.seen).toHaveLength(4);
  });

  it('reports lag from the envelope and passes context through', () => {
    const applier = new ScriptedApplier(() => ({
      ...emptyReport(),
      envelope: { publisherId: 1n, sequence: 0n, publishedAtMs: 1_000_000 - 40 },
    }));
    const sched = new ManualScheduler();
    const lags: Array<number | undefined> = [];
    const ingest = new EventIngest({
      applier,
      log: new RecordingLogger(),
      observer: { applied: (_r, lag) => lags.push(lag), dropped: () => {} },
      now: () => 1_000_000,
      schedule: sched.schedule,
    });
    ingest.push({ ...msg(0), codec: 'vllm', context: { workerId: 5n, sequence: 3n } });
    sched.runOne();
    expect(lags).toEqual([40]);
    expect(applier.seen[0]?.ctx).toEqual({ workerId: 5n, sequence: 3n });
  });

  it('logs a block-size mismatch once per holder and sizes, gaps at most once a minute', () => {
    const report: EventApplyReport = {
      ...emptyReport(),
      rejected: { block_size_mismatch: 1 },
      blockSizeMismatches: [{ workerId: 7n, dpRank: 0, expected: 16, got: 32 }],
      gaps: [{ workerId: 7n, dpRank: 0, expected: 4n, got: 9n }],
    };
    const applier = new ScriptedApplier(() => report);
    const sched = new ManualScheduler();
    const log = new RecordingLogger();
    let now = 0;
    const ingest = new EventIngest({ applier, log, now: () => now, schedule: sched.schedule });
    for (let i = 0; i < 3; i++) ingest.push(msg(i));
    ingest.drainAll();
    now += 61_000;
    ingest.push(msg(3));
    ingest.drainAll();
    const mismatch = log.records.filter((r) => r.msg.includes('block size differs'));
    expect(mismatch).toHaveLength(1);
    expect(mismatch[0]?.fields).toMatchObject({ configuredBlockSize: 16, eventBlockSize: 32 });
    expect(log.records.filter((r) => r.msg.startsWith('KV event gap'))).toHaveLength(2);
  });

  it('after close applies nothing more, even from a slice already scheduled, and queues nothing', () => {
    const t = setup();
    t.ingest.push(msg(1));
    t.ingest.push(msg(2));
    expect(t.sched.pending).toBe(1);
    t.ingest.close();
    t.applier.apply = () => {
      throw new Error('the event applier was disposed');
    };
    t.sched.runOne(); // the slice scheduled before close
    expect(t.applied).toEqual([]);
    expect(t.ingest.push(msg(3))).toBe(false);
    expect(t.sched.pending).toBe(0);
    expect(t.ingest.stats()).toMatchObject({ queued: 0, queuedBytes: 0 });
  });

  it('an applier that throws costs that message only, logged once a minute', () => {
    const t = setup();
    t.applier.apply = (_codec, payload) => {
      if (payload[0] === 2) throw new Error('boom');
      return emptyReport();
    };
    for (const n of [1, 2, 3, 2]) t.ingest.push(msg(n));
    t.sched.runOne();
    expect(t.applied).toHaveLength(2);
    const errors = t.log.records.filter((r) => r.level === 'error');
    expect(errors).toEqual([
      expect.objectContaining({
        msg: 'applying a KV event message failed; skipped',
        fields: { source: 'test', err: 'boom' },
      }),
    ]);
  });

  it('forgetWorker reaches the applier', () => {
    const t = setup();
    t.ingest.forgetWorker(42n);
    expect(t.applier.forgotten).toEqual([42n]);
  });
});

describe('EventIngest.isFull', () => {
  it('reports a full queue until it drains', () => {
    const t = setup({ maxQueuedMessages: 2 });
    expect(t.ingest.isFull()).toBe(false);
    t.ingest.push(msg(0));
    t.ingest.push(msg(1));
    expect(t.ingest.isFull()).toBe(true);
    t.sched.runOne();
    expect(t.ingest.isFull()).toBe(false);
  });
});
