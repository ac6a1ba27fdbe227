#!/usr/bin/env node
/**
 * Events bench: KV events applied per second end to end, through the
 * production event path of kv-epp (dist/), from 64 publishing workers.
 *
 *   nats  publishers (child processes, one NATS connection per worker) →
 *         nats-server (127.0.0.1, started here) → startNatsEventSource →
 *         EventIngest (setImmediate, Date.now, default limits) → native
 *         EventApplier (Dynamo 1.6.1 msgpack envelopes) → native index
 *   zmq   publishers (child processes, one XPUB socket per worker on
 *         127.0.0.1) → startZmqEventSources (64 `vllm` endpoints) →
 *         EventIngest → native EventApplier (vLLM batches: token ids hashed
 *         in the applier) → native index
 *
 * The EPP side of each transport runs in its own process (run.mjs re-run with
 * --transport-child; its CPU and memory are that process's), with the
 * production metrics observer; the bench adds a thin wrapper around the
 * applier (per-worker counts for flow control, publish-to-apply lag) and an
 * observer (blocks, drops, gaps). Workload: bench/events/gen.mjs.
 *
 * Points, each on a fresh index/applier/ingest (the streams restart at event
 * id 1): the prologue (~700 k blocks: every worker's held chains) is sent in
 * closed loop first ("fill"), then the point's load for warm-up + duration:
 *
 *   rate:N  open loop, N blocks/s over all workers (paced per worker)
 *   max     closed loop: each worker keeps at most --window messages sent and
 *           not yet applied (the sustained maximum, without drops by design)
 *   blast   open loop, publishers as fast as they can (NATS publishers flush
 *           every 16 rounds; ZMQ PUB semantics, dropping at the send HWM):
 *           shows what the EPP sustains under overload and what it drops
 *
 * Before the transports, `applier.mjs` (a child) applies the same streams
 * with no transport: the ceiling of one process.
 *
 *   node --expose-gc bench/events/run.mjs [--quick] [--transports nats,zmq]
 *        [--points rate:100000,rate:500000,max,blast] [--duration S]
 *        [--warmup S] [--publisher-procs 2] [--window 16]
 *        [--events-per-message 1] [--zmq-send-hwm 1000] [--no-applier]
 *        [--applier-cycles 2] [--profile DIR] [--perf DIR] [--out FILE] [--verbose]
 *
 *   --profile DIR  V8 CPU profile of the EPP process over each point's
 *                  measured window; top functions go into the JSON (native
 *                  addon frames are mislabelled by V8: use --perf for those)
 *   --perf DIR     `perf record` of the EPP process over each point's measured
 *                  window (EPP child under --perf-basic-prof); self time by
 *                  symbol and by category (msgpack decode, index, napi report
 *                  objects, GC, transport client …) go into the JSON; node
 *                  leaves its /tmp/perf-<pid>.map files behind
 *
 * Needs `npm run build:ts` (dist/), the native addon, and nats-server
 * (.venv-tools from `bash scripts/install-test-tools.sh`, KV_EPP_NATS_SERVER,
 * or PATH). Loopback only. Writes results/events-<time>.json (or --out).
 */
import { execFileSync, fork, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { dirname, join, relative, resolve as resolvePath } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { machineCpu, num, printHelpAndExit, statCpu, table } from '../lib/common.mjs';
import {
  createEventApplier,
  createKvIndex,
  EppMetrics,
  EventIngest,
  eventMetricsObserver,
  kvEventsSubject,
  ROOT,
  recordingLogger,
  startNatsEventSource,
  startNatsServer,
  startZmqEventSources,
} from './dist.mjs';
import { DEFAULTS, preciseNowMs, workerIdOf } from './gen.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const NAMESPACE = 'dynamo';
const PUB_SUBJECT = `namespace.${NAMESPACE}.component.backend.endpoint.generate.kv-events`;

// ---- options ----

const { values: argv } = parseArgs({
  strict: true,
  options: {
    quick: { type: 'boolean', default: false },
    transports: { type: 'string', default: 'nats,zmq' },
    points: { type: 'string', default: 'rate:100000,rate:500000,max,blast' },
    duration: { type: 'string' },
    warmup: { type: 'string' },
    'publisher-procs': { type: 'string', default: '2' },
    window: { type: 'string', default: '16' },
    'events-per-message': { type: 'string', default: '1' },
    'zmq-send-hwm': { type: 'string', default: '1000' },
    'no-applier': { type: 'boolean', default: false },
    'applier-cycles': { type: 'string' },
    profile: { type: 'string' },
    perf: { type: 'string' },
    out: { type: 'string' },
    verbose: { type: 'boolean', default: false },
    /** Internal: run one transport in this process (the EPP side) and print its JSON. */
    'transport-child': { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (argv.help) printHelpAndExit(import.meta.url);
const quick = argv.quick;
const opt = {
  quick,
  transports: argv.transports.split(',').filter(Boolean),
  points: argv.points
    .split(',')
    .filter(Boolean)
    .map((p) => {
      if (p === 'max' || p === 'blast') return { mode: p, name: p };
      const m = /^rate:(\d+(?:\.\d+)?)(k|m)?$/i.exec(p);
      if (!m) throw new Error(`--points: unknown ${p} (rate:N, max, blast)`);
      const mult = { k: 1e3, m: 1e6 }[m[2]?.toLowerCase()] ?? 1;
      const rate = Number(m[1]) * mult;
      return { mode: 'paced', rate, name: `rate ${rate.toLocaleString('en-US')}/s` };
    }),
  durationS: num('duration', argv.duration ?? (quick ? 3 : 10)),
  warmupS: num('warmup', argv.warmup ?? (quick ? 1 : 3)),
  procs: Math.max(1, Math.min(8, num('publisher-procs', argv['publisher-procs']))),
  window: num('window', argv.window),
  zmqSendHwm: num('zmq-send-hwm', argv['zmq-send-hwm']),
  applierCycles: num('applier-cycles', argv['applier-cycles'] ?? (quick ? 1 : 2)),
};
for (const t of opt.transports) {
  if (t !== 'nats' && t !== 'zmq') throw new Error(`--transports: unknown ${t}`);
}
const cfg = {
  ...DEFAULTS,
  eventsPerMessage: num('events-per-message', argv['events-per-message']),
};

// ---- /proc accounting ----

/** CPU seconds of this process by thread kind (main, V8 workers, libuv, ZMQ I/O, other). */
function threadCpu(pid) {
  const out = {};
  let dir = [];
  try {
    dir = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of dir) {
    let comm = '';
    try {
      comm = readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
    } catch {
      continue;
    }
    const c = statCpu(`/proc/${pid}/task/${tid}/stat`)?.self;
    if (c === undefined) continue;
    const kind =
      Number(tid) === pid
        ? 'main'
        : comm.startsWith('ZMQbg')
          ? 'zmq-io'
          : /^V8 ?Worker/i.test(comm) || comm === 'V8Worker'
            ? 'v8-workers'
            : comm.startsWith('libuv')
              ? 'libuv'
              : 'other';
    out[kind] = (out[kind] ?? 0) + c;
  }
  return out;
}

// ---- helpers ----

const round = (x, d = 1) => (x === undefined || !Number.isFinite(x) ? x : Number(x.toFixed(d)));
const fmtInt = (x) => (x === undefined ? '' : Math.round(x).toLocaleString('en-US'));
const fmtM = (x) => (x === undefined ? '' : `${(x / 1e6).toFixed(2)} M`);

function percentiles(arr, n) {
  if (n === 0) return {};
  const a = Float64Array.from(arr.subarray(0, n)).sort();
  const q = (p) => a[Math.min(n - 1, Math.floor((p / 100) * n))];
  return {
    count: n,
    p50: q(50),
    p90: q(90),
    p99: q(99),
    max: a[n - 1],
    mean: a.reduce((s, x) => s + x, 0) / n,
  };
}

function machineInfo() {
  let natsVersion;
  try {
    natsVersion = execFileSync(findNats(), ['--version'], { encoding: 'utf8' }).trim();
  } catch {
    natsVersion = undefined;
  }
  const pkg = (p) => {
    try {
      return JSON.parse(readFileSync(join(ROOT, 'node_modules', p, 'package.json'), 'utf8'))
        .version;
    } catch {
      return undefined;
    }
  };
  return {
    cpu: cpus()[0]?.model,
    cores: cpus().length,
    memGiB: round(totalmem() / 2 ** 30, 1),
    os: `Linux ${release()}`,
    node: process.version,
    natsServer: natsVersion,
    natsClient: pkg('@nats-io/transport-node'),
    zeromq: pkg('zeromq'),
  };
}

/** nats-server: KV_EPP_NATS_SERVER, else .venv-tools (scripts/install-test-tools.sh), else PATH. */
function findNats() {
  if (process.env.KV_EPP_NATS_SERVER) return process.env.KV_EPP_NATS_SERVER;
  const venv = join(ROOT, '.venv-tools', 'bin', 'nats-server');
  if (existsSync(venv)) return venv;
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (dir && existsSync(join(dir, 'nats-server'))) return join(dir, 'nats-server');
  }
  throw new Error(
    'no nats-server (run `bash scripts/install-test-tools.sh` or set KV_EPP_NATS_SERVER)',
  );
}

// ---- publisher processes ----

class Publisher {
  constructor(index, workers) {
    this.index = index;
    this.workers = workers;
    this.waiters = [];
    this.child = fork(join(HERE, 'publisher.mjs'), [], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv: [], // not the EPP's --perf-basic-prof / --expose-gc
    });
    this.child.on('message', (m) => {
      if (m.type === 'error') {
        console.error(`publisher ${index}: ${m.message}`);
        return;
      }
      const i = this.waiters.findIndex((w) => w.type === m.type);
      if (i >= 0) this.waiters.splice(i, 1)[0].resolve(m);
      else if (m.type === 'filled') this.filled = true;
    });
    this.exited = new Promise((resolve) => this.child.on('exit', resolve));
  }

  get pid() {
    return this.child.pid;
  }

  send(m) {
    this.child.send(m);
  }

  /** Sends `m` and waits for the reply of type `type`. */
  request(m, type, timeoutMs = 120_000) {
    return new Promise((resolve, reject) => {
      const w = { type, resolve };
      this.waiters.push(w);
      const t = setTimeout(() => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new Error(`publisher ${this.index}: no ${type} in ${timeoutMs} ms`));
      }, timeoutMs);
      t.unref();
      const done = w.resolve;
      w.resolve = (v) => {
        clearTimeout(t);
        done(v);
      };
      this.child.send(m);
    });
  }

  async close() {
    try {
      this.child.send({ type: 'exit' });
    } catch {
      // gone
    }
    const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(t);
  }
}

async function startPublishers(transport, natsUrl) {
  const pubs = [];
  for (let p = 0; p < opt.procs; p++) {
    const workers = [];
    for (let w = p; w < cfg.workers; w += opt.procs) workers.push(w);
    pubs.push(new Publisher(p, workers));
  }
  const readies = await Promise.all(
    pubs.map((p) =>
      p.request(
        {
          type: 'init',
          transport,
          subject: PUB_SUBJECT,
          natsUrl,
          workers: p.workers,
          cfg,
          sendHighWaterMark: opt.zmqSendHwm,
        },
        'ready',
        300_000,
      ),
    ),
  );
  const info = { genMs: 0, bytes: 0, urls: {}, workers: [] };
  for (const r of readies) {
    info.genMs = Math.max(info.genMs, r.genMs);
    info.bytes += r.bytes;
    Object.assign(info.urls, r.urls);
    info.workers.push(...r.workers);
  }
  info.workers.sort((a, b) => a.w - b.w);
  return { pubs, info };
}

// ---- EPP side ----

/** Per-point counters fed by the applier wrapper and the observer. */
class PointStats {
  constructor(workerIndex) {
    this.workerIndex = workerIndex;
    this.appliedMsgs = new Float64Array(cfg.workers);
    this.msgs = 0;
    this.blocksStored = 0;
    this.blocksRemoved = 0;
    this.eventsStored = 0;
    this.eventsRemoved = 0;
    this.rejected = {};
    this.gaps = 0;
    this.gapEvents = 0;
    this.publisherGaps = 0;
    this.publisherGapMsgs = 0;
    this.resets = 0;
    this.drops = 0;
    this.unknownWorker = 0;
    this.measuring = false;
    this.lag = new Float64Array(1 << 16);
    this.lagN = 0;
  }

  get blocks() {
    return this.blocksStored + this.blocksRemoved;
  }

  recordLag(ms) {
    if (this.lagN === this.lag.length) {
      const a = new Float64Array(this.lag.length * 2);
      a.set(this.lag);
      this.lag = a;
    }
    this.lag[this.lagN++] = ms;
  }
}

/** The applier as the ingest sees it, plus per-worker counts and lag (publish → applied). */
function instrumented(applier, st) {
  return {
    backend: applier.backend,
    apply(codec, payload, context) {
      const r = applier.apply(codec, payload, context);
      let wid;
      let lag;
      if (codec === 'vllm') {
        wid = context?.workerId;
        if (st.measuring && payload[0] === 0x93 && payload[1] === 0xcb) {
          const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
          lag = preciseNowMs() - dv.getFloat64(2) * 1000;
        }
      } else if (r.envelope) {
        wid = r.envelope.publisherId;
        // As the ingest computes it for kv_epp_events_lag_seconds (published_at is whole ms).
        if (st.measuring) lag = Math.max(0, Date.now() - r.envelope.publishedAtMs);
      }
      const i = wid === undefined ? undefined : st.workerIndex.get(wid);
      if (i === undefined) st.unknownWorker++;
      else st.appliedMsgs[i]++;
      if (lag !== undefined) st.recordLag(lag);
      return r;
    },
    forgetWorker: (w) => applier.forgetWorker(w),
    dispose: () => applier.dispose(),
  };
}

function benchObserver(st, prod) {
  return {
    applied(r, lagMs) {
      prod.applied(r, lagMs);
      st.msgs++;
      st.blocksStored += r.blocksStored;
      st.blocksRemoved += r.blocksRemoved;
      st.eventsStored += r.applied.stored;
      st.eventsRemoved += r.applied.removed;
      for (const k in r.rejected) st.rejected[k] = (st.rejected[k] ?? 0) + r.rejected[k];
      if (r.gaps.length > 0) {
        st.gaps += r.gaps.length;
        for (const g of r.gaps) st.gapEvents += Number(g.got - g.expected);
      }
      if (r.publisherGap) {
        st.publisherGaps++;
        st.publisherGapMsgs += Number(r.publisherGap.got - r.publisherGap.expected);
      }
      st.resets += r.resets.length;
    },
    dropped(n) {
      prod.dropped(n);
      st.drops += n;
    },
  };
}

// ---- one transport ----

async function runTransport(transport, log) {
  const out = { transport, points: [] };
  let server;
  let source;
  let pubs = [];
  const proxy = {
    target: undefined,
    sunk: 0,
    push(m) {
      if (this.target) return this.target.push(m);
      this.sunk++;
      return true;
    },
  };
  try {
    if (transport === 'nats') {
      server = await startNatsServer({ jetstream: false, binary: findNats() });
      out.natsPid = server.pid;
    }
    const started = await startPublishers(transport, server?.url);
    pubs = started.pubs;
    out.publishers = {
      processes: pubs.length,
      generateMs: round(started.info.genMs, 0),
      templateMiB: round(started.info.bytes / 2 ** 20, 1),
    };
    out.stream = summariseStreams(started.info.workers);
    const workerIndex = new Map(started.info.workers.map((x) => [BigInt(x.workerId), x.w]));
    if (transport === 'nats') {
      source = await startNatsEventSource({
        servers: server.url,
        subjects: [kvEventsSubject(NAMESPACE)],
        ingest: proxy,
        log: log.log,
        name: 'kv-epp-events-bench',
      });
      await natsProbe(server.url, proxy);
    } else {
      const endpoints = started.info.workers.map((x) => ({
        address: '127.0.0.1',
        port: 8000 + x.w,
        hostPort: `127.0.0.1:${8000 + x.w}`,
        name: `worker-${x.w}`,
        workerId: BigInt(x.workerId),
        dpRank: 0,
        role: 'aggregated',
        labels: {},
        kvEvents: { endpoint: started.info.urls[x.w], format: 'vllm' },
      }));
      source = await startZmqEventSources({ endpoints, ingest: proxy, log: log.log });
      await zmqSubscribed(pubs, source);
    }
    const received = () => (transport === 'nats' ? source.received() : source.stats().received);
    for (const point of opt.points) {
      console.error(`[events bench] ${transport}: ${point.name} …`);
      const res = await runPoint({
        transport,
        point,
        pubs,
        proxy,
        received,
        workerIndex,
        prologue: started.info.workers,
        server,
        log,
      });
      out.points.push(res);
      console.error(
        `[events bench] ${transport}: ${point.name}: ${fmtM(res.measured.appliedBlocksPerS)} blocks/s applied, lag p99 ${round(res.measured.lagMs.p99, 1)} ms, drops ${res.totals.ingestDropped}, lost ${res.totals.transportLost}`,
      );
    }
  } finally {
    await source?.close().catch(() => {});
    await Promise.all(pubs.map((p) => p.close()));
    if (server) {
      out.natsServerLog = server
        .log()
        .split('\n')
        .filter((l) => /slow consumer|error|warn/i.test(l))
        .slice(0, 20);
      await server.stop();
    }
  }
  return out;
}

function summariseStreams(workers) {
  const s = (f) => workers.reduce((n, x) => n + x[f], 0);
  return {
    workers: workers.length,
    prologueMsgs: s('prologueMsgs'),
    prologueBlocks: s('prologueBlocks'),
    cycleMsgs: s('cycleMsgs'),
    cycleBlocks: s('cycleBlocks'),
    blocksPerMsg: round(s('cycleBlocks') / s('cycleMsgs'), 1),
  };
}

/** Waits until a message published now reaches the subscription (SUB registered at the server). */
async function natsProbe(url, proxy) {
  const { connect } = await import('@nats-io/transport-node');
  const nc = await connect({ servers: url, name: 'kv-epp-events-bench-probe' });
  try {
    const deadline = Date.now() + 10_000;
    const before = proxy.sunk;
    while (proxy.sunk === before) {
      if (Date.now() > deadline) throw new Error('NATS probe never reached the EPP subscription');
      // An envelope-less empty array: nothing to apply, and it goes to the sink anyway.
      nc.publish(PUB_SUBJECT, new Uint8Array([0x90]));
      await nc.flush();
      await sleep(50);
    }
  } finally {
    await nc.close();
  }
}

async function zmqSubscribed(pubs, source) {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const counts = await Promise.all(pubs.map((p) => p.request({ type: 'subs' }, 'subs')));
    const all = counts.every((c) => c.counts.every((n) => n >= 1));
    const connected = source.stats().sources.every((s) => s.connected);
    if (all && connected) return;
    if (Date.now() > deadline) {
      throw new Error('ZMQ: not every publisher saw its subscriber within 20 s');
    }
    await sleep(50);
  }
}

async function runPoint(ctx) {
  const { transport, point, pubs, proxy, received } = ctx;
  const index = await createKvIndex('native');
  const applier = await createEventApplier(index, { blockSize: cfg.blockSize });
  const st = new PointStats(ctx.workerIndex);
  let ingest;
  const metrics = new EppMetrics({
    indexMemberships: () => index.stats().memberships,
    eventsQueued: () => ingest?.stats().queued ?? 0,
  });
  ingest = new EventIngest({
    applier: instrumented(applier, st),
    log: ctx.log.log,
    observer: benchObserver(st, eventMetricsObserver(metrics)),
    now: Date.now,
    schedule: setImmediate,
  });
  ctx.log.reset();
  const cpu0 = process.cpuUsage();
  const t0 = preciseNowMs();
  proxy.target = ingest;
  const received0 = received();
  await Promise.all(pubs.map((p) => p.request({ type: 'reset' }, 'reset')));

  let crediting = true;
  const credit = () => {
    if (!crediting) return;
    for (const p of pubs) {
      p.send({ type: 'credit', applied: p.workers.map((w) => st.appliedMsgs[w]) });
    }
  };
  const creditTimer = setInterval(credit, 5);

  // Fill: the prologue in closed loop.
  const fill0 = { t: preciseNowMs(), blocks: st.blocks, cpu: process.cpuUsage() };
  for (const p of pubs) p.send({ type: 'run', mode: 'fill', window: opt.window });
  const fillDeadline = Date.now() + 300_000;
  while (!ctx.prologue.every((x) => st.appliedMsgs[x.w] >= x.prologueMsgs)) {
    if (Date.now() > fillDeadline) throw new Error(`${transport}: fill did not complete`);
    await sleep(5);
  }
  const fillMs = preciseNowMs() - fill0.t;
  const fillCpu = process.cpuUsage(fill0.cpu);
  const fill = {
    blocks: st.blocks - fill0.blocks,
    seconds: round(fillMs / 1000, 2),
    blocksPerS: round((st.blocks - fill0.blocks) / (fillMs / 1000), 0),
    eppCpuS: round((fillCpu.user + fillCpu.system) / 1e6, 2),
    memberships: index.stats().memberships,
  };
  for (const p of pubs) p.filled = false;

  // Load.
  crediting = point.mode === 'max';
  for (const p of pubs) {
    p.send({
      type: 'run',
      mode: point.mode,
      ratePerWorker: point.rate === undefined ? undefined : point.rate / cfg.workers,
      window: opt.window,
    });
  }
  await sleep(opt.warmupS * 1000);
  const eld = monitorEventLoopDelay({ resolution: 1 });
  let profiler;
  if (argv.profile) {
    profiler = new Session();
    profiler.connect();
    await profiler.post('Profiler.enable');
    await profiler.post('Profiler.setSamplingInterval', { interval: 250 });
    await profiler.post('Profiler.start');
  }
  const perfRun = argv.perf ? startPerf(transport, point) : undefined;
  const a = await snapshot(ctx, st, ingest, received);
  st.measuring = true;
  eld.enable();
  const perSecond = [];
  let last = { t: a.t, blocks: a.blocks };
  const endAt = a.t + opt.durationS * 1000;
  // One sample per whole second of the window (the rate over each second).
  for (let i = 1; i * 1000 <= opt.durationS * 1000 + 1; i++) {
    await sleep(Math.max(1, a.t + i * 1000 - preciseNowMs()));
    const t = preciseNowMs();
    perSecond.push({
      s: round((t - a.t) / 1000, 2),
      blocksPerS: round(((st.blocks - last.blocks) * 1000) / (t - last.t), 0),
      queued: ingest.stats().queued,
      dropped: st.drops,
    });
    last = { t, blocks: st.blocks };
  }
  if (preciseNowMs() < endAt) await sleep(endAt - preciseNowMs());
  const b = await snapshot(ctx, st, ingest, received);
  st.measuring = false;
  eld.disable();
  let profile;
  if (profiler) {
    const { profile: prof } = await profiler.post('Profiler.stop');
    profiler.disconnect();
    mkdirSync(argv.profile, { recursive: true });
    const file = join(
      argv.profile,
      `events-${transport}-${point.name.replace(/[^a-z0-9]+/gi, '_')}.cpuprofile`,
    );
    writeFileSync(file, JSON.stringify(prof));
    profile = { file, ...summariseProfile(prof) };
  }

  const perf = perfRun ? await perfRun.done() : undefined;

  // Stop and drain.
  crediting = false;
  const stops = await Promise.all(pubs.map((p) => p.request({ type: 'stop' }, 'stopped')));
  const drained = await drain(ingest, received);
  clearInterval(creditTimer);
  proxy.target = undefined;

  const cpuAll = process.cpuUsage(cpu0);
  const sent = stops.reduce((n, s) => n + s.msgs, 0);
  const sentBlocks = stops.reduce((n, s) => n + s.blocks, 0);
  const recvd = received() - received0;
  const dt = (b.t - a.t) / 1000;
  const cpu = (k) => (b.cpu[k] - a.cpu[k]) / 1e6;
  const eppCpu = cpu('user') + cpu('system');
  const threads = {};
  for (const k of new Set([...Object.keys(a.threads), ...Object.keys(b.threads)])) {
    threads[k] = round(((b.threads[k] ?? 0) - (a.threads[k] ?? 0)) / dt, 2);
  }
  const pubCpu = b.pubCpu - a.pubCpu;
  const natsCpu = b.natsCpu !== undefined ? b.natsCpu - a.natsCpu : undefined;
  const machineBusy = b.machine.busy - a.machine.busy;
  const lag = percentiles(st.lag, st.lagN);
  const mem = process.memoryUsage();
  const istats = index.stats();
  const rates = perSecond.map((x) => x.blocksPerS);
  const res = {
    point: point.name,
    mode: point.mode,
    rate: point.rate,
    fill,
    measured: {
      seconds: round(dt, 2),
      offeredBlocksPerS: round((b.sent.blocks - a.sent.blocks) / dt, 0),
      offeredMsgsPerS: round((b.sent.msgs - a.sent.msgs) / dt, 0),
      appliedBlocksPerS: round((b.blocks - a.blocks) / dt, 0),
      appliedMsgsPerS: round((b.msgs - a.msgs) / dt, 0),
      perSecondMin: rates.length ? Math.min(...rates) : undefined,
      perSecondMax: rates.length ? Math.max(...rates) : undefined,
      droppedInWindow: b.drops - a.drops,
      lagMs: Object.fromEntries(Object.entries(lag).map(([k, v]) => [k, round(v, 2)])),
      lagResolution: transport === 'nats' ? '1 ms (published_at is whole ms)' : 'sub-ms',
      eventLoopDelayMs: {
        p50: round(eld.percentile(50) / 1e6, 2),
        p99: round(eld.percentile(99) / 1e6, 2),
        max: round(eld.max / 1e6, 2),
      },
      eppCpuCores: round(eppCpu / dt, 2),
      eppCpuByThread: threads,
      blocksPerEppCpuSecond: round((b.blocks - a.blocks) / eppCpu, 0),
      publishersCpuCores: round(pubCpu / dt, 2),
      natsServerCpuCores: natsCpu === undefined ? undefined : round(natsCpu / dt, 2),
      machineBusyCores: round(machineBusy / dt, 2),
      otherCpuCores: round((machineBusy - eppCpu - pubCpu - (natsCpu ?? 0)) / dt, 2),
      queuedAtEnd: b.queued,
    },
    perSecond,
    totals: {
      sentMsgs: sent,
      sentBlocks,
      receivedMsgs: recvd,
      appliedMsgs: st.msgs,
      appliedBlocks: st.blocks,
      storedBlocks: st.blocksStored,
      removedBlocks: st.blocksRemoved,
      ingestDropped: st.drops,
      transportLost: sent - recvd,
      rejected: st.rejected,
      holderGaps: st.gaps,
      holderGapEvents: st.gapEvents,
      publisherGaps: st.publisherGaps,
      publisherGapMsgs: st.publisherGapMsgs,
      resets: st.resets,
      unknownWorkerMsgs: st.unknownWorker,
      zmqSendsQueuedBehindPending: stops.reduce((n, s) => n + (s.backlogged ?? 0), 0),
      publisherSendErrors: stops.reduce((n, s) => n + s.sendErrors, 0),
      drained,
      seconds: round((preciseNowMs() - t0) / 1000, 1),
      eppCpuSeconds: round((cpuAll.user + cpuAll.system) / 1e6, 2),
    },
    end: {
      rssMiB: round(mem.rss / 2 ** 20, 0),
      heapUsedMiB: round(mem.heapUsed / 2 ** 20, 0),
      externalMiB: round(mem.external / 2 ** 20, 0),
      memberships: istats.memberships,
      indexWorkers: istats.workers,
      indexCounters: istats.counters,
    },
    log: ctx.log.summary().counts,
    profile,
    perf,
  };
  applier.dispose();
  index.dispose();
  globalThis.gc?.();
  return res;
}

async function snapshot(ctx, st, ingest, received) {
  const marks = await Promise.all(ctx.pubs.map((p) => p.request({ type: 'mark' }, 'marked')));
  let pubCpu = 0;
  for (const p of ctx.pubs) pubCpu += statCpu(`/proc/${p.pid}/stat`)?.self ?? 0;
  return {
    t: preciseNowMs(),
    blocks: st.blocks,
    msgs: st.msgs,
    drops: st.drops,
    queued: ingest.stats().queued,
    received: received(),
    sent: {
      msgs: marks.reduce((n, m) => n + m.msgs, 0),
      blocks: marks.reduce((n, m) => n + m.blocks, 0),
    },
    cpu: process.cpuUsage(),
    threads: threadCpu(process.pid),
    pubCpu,
    natsCpu: ctx.server ? statCpu(`/proc/${ctx.server.pid}/stat`)?.self : undefined,
    machine: machineCpu(),
  };
}

/** Waits until the ingest queue is empty and nothing arrived for 500 ms (max 60 s). */
async function drain(ingest, received) {
  const t0 = Date.now();
  let quiet = 0;
  let last = received();
  while (Date.now() - t0 < 60_000) {
    await sleep(100);
    const r = received();
    if (r === last && ingest.stats().queued === 0) quiet++;
    else quiet = 0;
    last = r;
    if (quiet >= 5) return { ms: Date.now() - t0 };
  }
  return { ms: Date.now() - t0, timedOut: true };
}

/** Self time by function over a V8 CPU profile (idle apart; shares of busy time). */
function summariseProfile(prof) {
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const self = new Map();
  prof.samples.forEach((id, i) => {
    self.set(id, (self.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0));
  });
  const by = new Map();
  let idle = 0;
  let total = 0;
  for (const [id, us] of self) {
    const cf = byId.get(id).callFrame;
    total += us;
    if (cf.functionName === '(idle)') {
      idle += us;
      continue;
    }
    const file = cf.url ? cf.url.split('/').slice(-2).join('/') : '';
    const key = `${cf.functionName || '(anonymous)'} ${file}${file ? `:${cf.lineNumber + 1}` : ''}`;
    by.set(key, (by.get(key) ?? 0) + us);
  }
  const busy = total - idle;
  return {
    totalMs: round(total / 1000, 0),
    idleMs: round(idle / 1000, 0),
    top: [...by.entries()]
      .sort((x, y) => y[1] - x[1])
      .slice(0, 20)
      .map(([fn, us]) => ({ fn, ms: round(us / 1000, 0), pctOfBusy: round((100 * us) / busy, 1) })),
  };
}

// ---- --perf ----

/** What a native/JS symbol is part of (first match wins). */
const PERF_CATEGORIES = [
  ['msgpack decode', /events::msgpack|events::de::|GenericShunt|try_process|events::dynamo/],
  [
    'vLLM relay (token ids, hashing, dedup, coalescing)',
    /events::vllm|xxh3|kv_epp_core::hash|retain/,
  ],
  ['index', /kv_epp_core::index|hashbrown/],
  ['applier (other)', /events::applier|kv_epp_napi::event_applier/],
  [
    'napi report objects (V8 strings/properties)',
    /StringTable|InternalizeString|TryFastAddDataProperty|MigrateToMap|UpdateDescriptor|strlen|TryStringToIndex|SearchTransition|CreateDataProperty|Utf8Decoder|to_napi_value|napi_|bindgen_runtime|v8::Object::|BigInt/,
  ],
  ['malloc/free', /malloc|_int_free|realloc|unlink_chunk|\bcfree\b/],
  ['GC', /Marking|Sweep|Scaveng|Evacuat|Heap|GC/],
  ['NATS client (JS)', /nats-io|nats-core/],
  ['zeromq', /zeromq|zmq::/],
  [
    'ingest + metrics + applier wrapper (JS)',
    /ingest\.js|registry\.js|prom-client|observer\.js|event-applier\.js|run\.mjs/,
  ],
  ['kernel', /\[k\]/],
];

function startPerf(transport, point) {
  mkdirSync(argv.perf, { recursive: true });
  const file = join(argv.perf, `perf-${transport}-${point.name.replace(/[^a-z0-9]+/gi, '_')}.data`);
  const child = spawn(
    'perf',
    [
      'record',
      '-F',
      '999',
      '-g',
      '-p',
      String(process.pid),
      '-o',
      file,
      '--',
      'sleep',
      String(opt.durationS),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let err = '';
  child.stderr.on('data', (c) => {
    err += c;
  });
  const exited = new Promise((resolve) => {
    child.on('exit', resolve);
    child.on('error', (e) => {
      err += e.message;
      resolve(-1);
    });
  });
  return {
    async done() {
      const code = await exited;
      if (code !== 0) return { file, error: err.trim().split('\n').slice(-3).join(' ') };
      let text = '';
      try {
        text = execFileSync(
          'perf',
          ['report', '-i', file, '--no-children', '--sort', 'symbol', '--stdio', '-g', 'none'],
          { encoding: 'utf8', maxBuffer: 64 * 2 ** 20, stdio: ['ignore', 'pipe', 'ignore'] },
        );
      } catch (e) {
        return { file, error: e.message };
      }
      const top = [];
      const byCat = {};
      for (const line of text.split('\n')) {
        const m = /^\s+([\d.]+)%\s+(\[.\])\s+(.*?)(?:\s+-\s+-)?\s*$/.exec(line);
        if (!m) continue;
        const pct = Number(m[1]);
        const sym = `${m[2]} ${m[3].trim()}`;
        const cat = PERF_CATEGORIES.find(([, rx]) => rx.test(sym))?.[0] ?? 'other';
        byCat[cat] = (byCat[cat] ?? 0) + pct;
        if (top.length < 25) top.push({ pct, sym: sym.slice(0, 160) });
      }
      const categories = Object.fromEntries(
        Object.entries(byCat)
          .sort((x, y) => y[1] - x[1])
          .map(([k, v]) => [k, round(v, 1)]),
      );
      return { file, categories, top };
    },
  };
}

// ---- applier alone ----

function runApplierAlone() {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [
        '--expose-gc',
        join(HERE, 'applier.mjs'),
        JSON.stringify({ cfg, cycles: opt.applierCycles }),
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let out = '';
    child.stdout.on('data', (c) => {
      out += c;
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`applier.mjs exited ${code}`));
      try {
        resolve(JSON.parse(out.trim().split('\n').at(-1)).applierAlone);
      } catch (e) {
        reject(e);
      }
    });
  });
}

// ---- output ----

function printTables(result) {
  const m = result.machine;
  console.log(
    `\nEvents bench (${result.conditions.quick ? 'quick' : 'full'}: ${result.conditions.durationS} s measured after ${result.conditions.warmupS} s warm-up per point) — ${m.cpu}, ${m.cores} cores, ${m.os}, Node ${m.node}, ${m.natsServer ?? 'nats-server ?'}, load avg ${result.loadavgStart.join('/')} → ${result.loadavgEnd.join('/')}`,
  );
  if (result.applierAlone) {
    console.log(
      '\nApplier alone (no transport, one thread; fill = stores only, steady = stores + LRU removals):\n',
    );
    const rows = [];
    for (const f of result.applierAlone) {
      for (const [way, v] of Object.entries(f.ways)) {
        rows.push([
          `${f.format === 'dynamo' ? 'dynamo envelope' : 'vLLM batch (+hashing)'}: ${way}`,
          fmtM(v.fill.blocksPerS),
          fmtM(v.steady.blocksPerS),
          round(v.steady.usPerMsg, 1),
          round(v.steady.nsPerBlock, 0),
          v.rejected,
        ]);
      }
    }
    console.log(
      table(
        ['format: layer', 'fill blocks/s', 'steady blocks/s', 'µs/msg', 'ns/block', 'rejected'],
        rows,
      ),
    );
  }
  for (const t of result.transports) {
    console.log(
      `\n${t.transport === 'nats' ? 'NATS (Dynamo 1.6.1 envelopes)' : 'ZMQ (vLLM batches, token ids hashed by the applier)'}: 64 workers, ${t.publishers.processes} publisher processes, ${t.stream.blocksPerMsg} blocks/message\n`,
    );
    const rows = t.points.map((p) => {
      const x = p.measured;
      return [
        p.point,
        fmtM(x.offeredBlocksPerS),
        `${fmtM(x.appliedBlocksPerS)} (${fmtM(x.perSecondMin)}–${fmtM(x.perSecondMax)})`,
        `${round(x.lagMs.p50, 1)} / ${round(x.lagMs.p99, 1)} / ${round(x.lagMs.max, 0)}`,
        `${fmtInt(p.totals.ingestDropped)} / ${fmtInt(p.totals.transportLost)}`,
        `${round(x.eppCpuCores, 2)}`,
        fmtM(x.blocksPerEppCpuSecond),
        `${round(x.publishersCpuCores, 2)} / ${x.natsServerCpuCores ?? '–'} / ${round(Math.max(0, x.otherCpuCores), 2)}`,
        `${round(x.eventLoopDelayMs.p99, 1)} / ${round(x.eventLoopDelayMs.max, 1)}`,
        `${p.end.rssMiB}`,
        fmtInt(p.end.memberships),
      ];
    });
    console.log(
      table(
        [
          'point',
          'offered/s',
          'applied blocks/s (per-s min–max)',
          'lag p50/p99/max ms',
          'dropped / lost msgs',
          'EPP cores',
          'blocks per EPP CPU-s',
          'pub / nats / other cores',
          'loop delay p99/max ms',
          'RSS MiB',
          'memberships',
        ],
        rows,
      ),
    );
    const fills = t.points.map((p) => p.fill.blocksPerS);
    console.log(
      `fill (prologue, closed loop): ${fmtM(Math.min(...fills))}–${fmtM(Math.max(...fills))} blocks/s; rejected: ${JSON.stringify(t.points.map((p) => p.totals.rejected))}`,
    );
  }
  console.log(
    '\nTargets (issue): ≥ 500 000 blocks/s per EPP process; lag < 50 ms at 100 000 blocks/s',
  );
  for (const s of result.targets) console.log(`  ${s}`);
}

function targets(result) {
  const out = [];
  for (const t of result.transports) {
    const max = t.points.find((p) => p.mode === 'max');
    const r100 = t.points.find((p) => p.mode === 'paced' && p.rate === 100_000);
    const r500 = t.points.find((p) => p.mode === 'paced' && p.rate === 500_000);
    if (max) {
      const x = max.measured;
      out.push(
        `${t.transport}: max (closed loop) ${fmtM(x.appliedBlocksPerS)} blocks/s, no loss: ${max.totals.ingestDropped + max.totals.transportLost === 0} → ${x.appliedBlocksPerS >= 500_000 ? 'met' : 'MISSED'} (EPP ${x.eppCpuCores} cores; ${fmtM(x.blocksPerEppCpuSecond)} blocks per EPP CPU-second)`,
      );
    }
    if (r500) {
      const x = r500.measured;
      const ok =
        x.appliedBlocksPerS >= 0.98 * 500_000 &&
        r500.totals.ingestDropped + r500.totals.transportLost === 0 &&
        x.queuedAtEnd < 1000;
      out.push(
        `${t.transport}: paced 500 000/s → applied ${fmtM(x.appliedBlocksPerS)}, lag p99 ${x.lagMs.p99} ms, drops ${r500.totals.ingestDropped}, lost ${r500.totals.transportLost} → ${ok ? 'kept up' : 'DID NOT KEEP UP'}`,
      );
    }
    if (r100) {
      const x = r100.measured;
      out.push(
        `${t.transport}: lag at 100 000 blocks/s p50 ${x.lagMs.p50} / p99 ${x.lagMs.p99} / max ${x.lagMs.max} ms → ${x.lagMs.p99 < 50 ? 'met (p99)' : 'MISSED (p99)'}`,
      );
    }
  }
  return out;
}

// ---- main ----

async function main() {
  const t0 = new Date();
  const result = {
    bench: 'events',
    startedAt: t0.toISOString(),
    conditions: {
      quick,
      durationS: opt.durationS,
      warmupS: opt.warmupS,
      publisherProcesses: opt.procs,
      window: opt.window,
      zmqSendHighWaterMark: opt.zmqSendHwm,
      points: opt.points.map((p) => p.name),
      workload: cfg,
    },
    machine: machineInfo(),
    loadavgStart: loadavg().map((x) => round(x, 2)),
    workerIdsAtOrAbove2e63: Array.from({ length: cfg.workers }, (_, w) =>
      workerIdOf(cfg, w),
    ).filter((x) => x.hi >= 0x80000000).length,
  };
  if (!argv['no-applier']) {
    console.error('[events bench] applier alone …');
    result.applierAlone = await runApplierAlone();
  }
  result.transports = [];
  for (const t of opt.transports) result.transports.push(await runTransportChild(t));
  result.loadavgEnd = loadavg().map((x) => round(x, 2));
  result.finishedAt = new Date().toISOString();
  result.targets = targets(result);
  printTables(result);
  const file =
    argv.out ??
    join(HERE, 'results', `events-${t0.toISOString().replace(/[:.]/g, '-').slice(0, 19)}.json`);
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  console.log(`\nJSON: ${relative(process.cwd(), file)}`);
}

/** Each transport's EPP side runs in a fresh process: its CPU, RSS and heap are its own. */
function runTransportChild(transport) {
  return new Promise((resolve, reject) => {
    // Output dirs as absolute paths (the last value of an option wins).
    const args = [...process.argv.slice(2)];
    if (argv.perf) {
      mkdirSync(resolvePath(argv.perf), { recursive: true });
      args.push('--perf', resolvePath(argv.perf));
    }
    if (argv.profile) args.push('--profile', resolvePath(argv.profile));
    const child = spawn(
      process.execPath,
      [
        ...process.execArgv,
        ...(argv.perf ? ['--perf-basic-prof'] : []),
        fileURLToPath(import.meta.url),
        ...args,
        '--transport-child',
        transport,
      ],
      // Under --perf, V8 also writes isolate-*-v8.log files into the cwd: keep them in DIR.
      {
        stdio: ['ignore', 'pipe', 'inherit'],
        cwd: argv.perf ? resolvePath(argv.perf) : process.cwd(),
      },
    );
    let out = '';
    child.stdout.on('data', (c) => {
      out += c;
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`${transport} run exited ${code}`));
      try {
        resolve(JSON.parse(out.trim().split('\n').at(-1)));
      } catch (e) {
        reject(e);
      }
    });
  });
}

async function transportChild(transport) {
  const res = await runTransport(transport, recordingLogger(argv.verbose));
  process.stdout.write(`${JSON.stringify(res)}\n`);
}

(argv['transport-child'] ? transportChild(argv['transport-child']) : main()).then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
