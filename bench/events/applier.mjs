/**
 * Events bench, no transport: the ceiling of one EPP process. Run by run.mjs
 * as a child (`node --expose-gc applier.mjs '<json>'`), prints one JSON line.
 *
 * The same streams as the transport points (gen.mjs), all 64 workers'
 * messages built up front in arrival order (round-robin over workers: the
 * prologue, then `cycles` cycles), then applied three ways, each on a fresh
 * native index, timed separately for the prologue (fill: stores only) and
 * the cycles (steady state: half the blocks stored, half removed):
 *
 * - `napi`:   the addon call alone (`eventApplierApply`: decode, apply under
 *             the write lock, build the JS report object);
 * - `applier`: `NativeEventApplier.apply` (+ the report conversion in JS);
 * - `ingest`: `EventIngest.push` of every message, then `drainAll()`, with the
 *             production metrics observer (prom-client counters, lag histogram).
 */
import {
  createEventApplier,
  createKvIndex,
  EppMetrics,
  EventIngest,
  eventMetricsObserver,
  loadNativeBinding,
  recordingLogger,
} from './dist.mjs';
import { buildDynamo, buildVllm, StreamCursor, workerMessages } from './gen.mjs';

const arg = JSON.parse(process.argv[2] ?? '{}');
const cfg = arg.cfg;
const formats = arg.formats ?? ['dynamo', 'vllm'];
const cycles = arg.cycles ?? 2;
const gc = globalThis.gc ?? (() => {});

function messagesFor(format) {
  const t0 = performance.now();
  const per = [];
  for (let w = 0; w < cfg.workers; w++) {
    const msgs = workerMessages(cfg, w, format);
    per.push({ msgs, cur: new StreamCursor(msgs), workerId: msgs.workerId.big });
  }
  const build = (x) => {
    const t = x.cur.next();
    const seq = x.cur.nextSeq++;
    const id = x.cur.nextEventId;
    x.cur.nextEventId += t.events;
    const now = Date.now();
    const payload =
      format === 'dynamo'
        ? buildDynamo(x.msgs.envelope, t, seq, id, now)
        : buildVllm(t, now / 1000);
    return { payload, workerId: x.workerId, seq: BigInt(seq), blocks: t.blocks };
  };
  const phase = (countOf) => {
    const out = [];
    const left = per.map(countOf);
    for (let more = true; more; ) {
      more = false;
      per.forEach((x, i) => {
        if (left[i] > 0) {
          out.push(build(x));
          left[i]--;
          more = true;
        }
      });
    }
    return out;
  };
  const fill = phase((x) => x.msgs.prologue.length);
  const steady = phase((x) => x.msgs.cycle.length * cycles);
  let bytes = 0;
  for (const m of [...fill, ...steady]) bytes += m.payload.length;
  return { fill, steady, bytes, buildMs: performance.now() - t0 };
}

const sum = (xs, f) => xs.reduce((n, x) => n + f(x), 0);

async function run(format) {
  const codec = format;
  const { fill, steady, bytes, buildMs } = messagesFor(format);
  const addon = await loadNativeBinding();
  const out = {
    format,
    messages: { fill: fill.length, steady: steady.length },
    blocks: { fill: sum(fill, (m) => m.blocks), steady: sum(steady, (m) => m.blocks) },
    bytesPerBlock: bytes / (sum(fill, (m) => m.blocks) + sum(steady, (m) => m.blocks)),
    buildMs,
    ways: {},
  };
  const ctx = (m) =>
    format === 'vllm' ? { workerId: m.workerId, dpRank: 0, sequence: m.seq } : undefined;
  for (const way of ['napi', 'applier', 'ingest']) {
    gc();
    const index = await createKvIndex('native');
    const applier = await createEventApplier(index, { blockSize: cfg.blockSize });
    const rec = recordingLogger();
    const metrics = new EppMetrics({});
    let applied = 0;
    let rejected = 0;
    const count = (r) => {
      applied += r.blocksStored + r.blocksRemoved;
      for (const v of Object.values(r.rejected)) rejected += typeof v === 'number' ? v : 0;
    };
    const prod = eventMetricsObserver(metrics);
    const ingest = new EventIngest({
      applier,
      log: rec.log,
      observer: {
        applied(r, lag) {
          prod.applied(r, lag);
          count(r);
        },
        dropped(n) {
          prod.dropped(n);
        },
      },
      now: Date.now,
      schedule: () => {}, // drainAll() below
      maxQueuedMessages: 1 << 30,
      maxQueuedBytes: 2 ** 40,
    });
    const apply = (list) => {
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      if (way === 'napi') {
        for (const m of list) {
          const c = ctx(m);
          const r = addon.eventApplierApply(
            applier.handle,
            codec,
            m.payload,
            c?.workerId,
            c?.dpRank,
            c?.sequence,
          );
          applied += r.blocksStored + r.blocksRemoved;
          const j = r.rejected;
          for (const k in j) rejected += j[k];
        }
      } else if (way === 'applier') {
        for (const m of list) count(applier.apply(codec, m.payload, ctx(m)));
      } else {
        for (const m of list) {
          ingest.push({ codec, payload: m.payload, context: ctx(m), source: 'bench' });
        }
        ingest.drainAll();
      }
      const ms = performance.now() - t0;
      const cpu = process.cpuUsage(c0);
      return { ms, cpuMs: (cpu.user + cpu.system) / 1000 };
    };
    const before = applied;
    const f = apply(fill);
    const fillBlocks = applied - before;
    const s = apply(steady);
    const steadyBlocks = applied - before - fillBlocks;
    const stats = index.stats();
    out.ways[way] = {
      fill: {
        ms: f.ms,
        blocksPerS: fillBlocks / (f.ms / 1000),
        msgsPerS: fill.length / (f.ms / 1000),
        nsPerBlock: (f.ms * 1e6) / fillBlocks,
      },
      steady: {
        ms: s.ms,
        blocksPerS: steadyBlocks / (s.ms / 1000),
        msgsPerS: steady.length / (s.ms / 1000),
        nsPerBlock: (s.ms * 1e6) / steadyBlocks,
        usPerMsg: (s.ms * 1000) / steady.length,
      },
      appliedBlocks: applied,
      rejected,
      memberships: stats.memberships,
      workers: stats.workers,
      log: rec.summary().counts,
    };
    applier.dispose();
    index.dispose();
  }
  return out;
}

const results = [];
for (const f of formats) results.push(await run(f));
process.stdout.write(`${JSON.stringify({ applierAlone: results })}\n`);
