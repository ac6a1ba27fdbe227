/**
 * Real NVIDIA Dynamo 1.6.1 processes for end-to-end tests (ai-dynamo and
 * ai-dynamo-runtime in .venv-tools, from scripts/install-test-tools.sh):
 * Dynamo's own OpenAI frontend in direct mode (`python -m dynamo.frontend
 * --router-mode direct`, the GAIE sidecar) and mocker workers (`python -m
 * dynamo.mocker`: real KV block manager with prefix caching, no GPU), wired
 * with file discovery in a temp dir, the TCP request plane and a NATS event
 * plane (test/support/nats-server.ts).
 *
 * Everything binds loopback: `--http-host 127.0.0.1`, `DYN_TCP_RPC_HOST`,
 * `DYN_EVENT_PLANE_HOST`, `DYN_TCP_RESPONSE_STREAM_HOST`, `DYN_SYSTEM_PORT=-1`,
 * a private `HOME` (model cards are cached under ~/.cache/dynamo),
 * `HF_HUB_OFFLINE=1`. Logs are JSON lines (`DYN_LOGGING_JSONL=1`), so the
 * mockers' "request received" records (request_id, instance_id) say which
 * worker served each request.
 *
 * Workers start one after another and each one's instance id is the new
 * `generate` record in file discovery (`v1/instances/…`). Readiness is polled:
 * the frontend's /health lists every worker and /v1/models the model, then
 * every worker answers a direct request. Nothing sleeps a fixed time.
 *
 * Also here: `startTap`, a recording HTTP forwarder that stands for a worker
 * pod's address in front of the shared frontend (what Envoy sends upstream,
 * after kv-epp's mutations, is recorded; a request can be held at a gate).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
} from 'node:fs';
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  request,
  type Server,
} from 'node:http';
import { type AddressInfo, createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { httpCall } from './http-client.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const VENV = join(ROOT, '.venv-tools');
/** The model dir fixture: a Qwen3-0.6B-shaped config.json (no weights). */
export const MODEL_CONFIG = join(ROOT, 'test', 'fixtures', 'dynamo-model', 'config.json');
/** The committed Qwen3 tokenizer (tokenizer.json + tokenizer_config.json with the chat template). */
export const QWEN3_TOKENIZER_DIR = join(ROOT, 'test', 'fixtures', 'tokenizers', 'qwen3');

/**
 * The Python that has Dynamo: `KV_EPP_DYNAMO_PYTHON` if set, else
 * .venv-tools/bin/python when both `dynamo.frontend` and `dynamo.mocker` are
 * installed there. Undefined otherwise.
 */
export function findDynamoPython(): string | undefined {
  const fromEnv = process.env.KV_EPP_DYNAMO_PYTHON;
  if (fromEnv) return existsSync(fromEnv) ? fromEnv : undefined;
  const py = join(VENV, 'bin', 'python');
  if (!existsSync(py)) return undefined;
  const lib = join(VENV, 'lib');
  if (!existsSync(lib)) return undefined;
  for (const v of readdirSync(lib)) {
    const pkg = join(lib, v, 'site-packages', 'dynamo');
    if (
      existsSync(join(pkg, 'frontend', '__main__.py')) &&
      existsSync(join(pkg, 'mocker', '__main__.py'))
    ) {
      return py;
    }
  }
  return undefined;
}

/**
 * A model dir the mocker and the frontend accept: the fixture's config.json
 * plus the Qwen3 tokenizer files (symlinked). kv-epp can use the same dir as
 * its `--tokenizer`.
 */
export function makeModelDir(
  dir: string,
  tokenizerDir: string = QWEN3_TOKENIZER_DIR,
  modelConfig: string = MODEL_CONFIG,
): string {
  mkdirSync(dir, { recursive: true });
  copyFileSync(modelConfig, join(dir, 'config.json'));
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) {
    symlinkSync(join(tokenizerDir, f), join(dir, f));
  }
  return dir;
}

/** A port that was free a moment ago on 127.0.0.1 (for CLIs that cannot take 0). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createNetServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** One JSON log record of a Dynamo process (DYN_LOGGING_JSONL=1). */
export interface DynamoLogRecord {
  time?: string;
  level?: string;
  target?: string;
  message?: string;
  [k: string]: unknown;
}

/** A Dynamo Python process: its output kept, its process group killed on stop. */
export class DynamoProcess {
  private output = '';
  private readonly records: DynamoLogRecord[] = [];
  private partial = '';
  private exitCode: number | null | undefined;
  readonly exited: Promise<void>;

  constructor(
    readonly name: string,
    private readonly child: ChildProcess,
  ) {
    const keep = (c: Buffer) => {
      const s = c.toString('utf8');
      this.output += s;
      if (this.output.length > 400_000) this.output = this.output.slice(-200_000);
      this.partial += s;
      const lines = this.partial.split('\n');
      this.partial = lines.pop() ?? '';
      for (const line of lines) {
        if (!line.startsWith('{')) continue;
        try {
          this.records.push(JSON.parse(line) as DynamoLogRecord);
        } catch {
          // not a log record
        }
      }
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exitCode = code ?? (signal ? -1 : null);
        resolve();
      });
      child.on('error', (e) => {
        this.output += `\nspawn error: ${e.message}\n`;
        this.exitCode = -1;
        resolve();
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.exitCode === undefined;
  }

  /** stdout + stderr (tail). */
  log(): string {
    return this.output;
  }

  /** Parsed JSON log records so far. */
  logRecords(): readonly DynamoLogRecord[] {
    return this.records;
  }

  private signal(sig: NodeJS.Signals): void {
    const pid = this.child.pid;
    if (pid === undefined || !this.running) return;
    try {
      process.kill(-pid, sig); // the process group (spawned detached)
    } catch {
      try {
        this.child.kill(sig);
      } catch {
        // gone
      }
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs` (Dynamo's graceful shutdown can hang). */
  async stop(graceMs = 5000): Promise<void> {
    if (!this.running) return;
    this.signal('SIGTERM');
    const timer = setTimeout(() => this.signal('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }

  killNow(): void {
    this.signal('SIGKILL');
  }
}

const live = new Set<DynamoProcess>();
process.once('exit', () => {
  for (const p of live) p.killNow();
});

/** Polls `probe` until it yields a value; fails when a watched process exits or time runs out. */
export async function until<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  o: { timeoutMs: number; watch?: readonly DynamoProcess[]; intervalMs?: number },
): Promise<T> {
  const deadline = Date.now() + o.timeoutMs;
  let last = '';
  for (;;) {
    for (const p of o.watch ?? []) {
      if (!p.running) {
        throw new Error(`${p.name} exited while waiting for ${what}:\n${p.log().slice(-8000)}`);
      }
    }
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (e) {
      last = (e as Error).message;
    }
    if (Date.now() > deadline) {
      const logs = (o.watch ?? []).map((p) => `--- ${p.name}:\n${p.log().slice(-4000)}`);
      throw new Error(`timed out waiting for ${what} (${last})\n${logs.join('\n')}`);
    }
    await new Promise((r) => setTimeout(r, o.intervalMs ?? 100));
  }
}

/** A `generate` instance in file discovery. */
export interface DiscoveredInstance {
  /** Decimal u64 (above 2^53: never a JS number). */
  instanceId: string;
  /** The TCP request-plane address (`127.0.0.1:PORT/…`). */
  tcp?: string | undefined;
  file: string;
}

/**
 * The `generate` endpoint instances registered under `<kvDir>/v1/instances`.
 * The instance id is read from the record's text: it exceeds 2^53.
 */
export function discoveredInstances(kvDir: string): DiscoveredInstance[] {
  const dir = join(kvDir, 'v1', 'instances');
  if (!existsSync(dir)) return [];
  const out: DiscoveredInstance[] = [];
  for (const f of readdirSync(dir)) {
    let text: string;
    try {
      text = readFileSync(join(dir, f), 'utf8');
    } catch {
      continue; // removed meanwhile
    }
    if (!/"endpoint"\s*:\s*"generate"/.test(text)) continue;
    const id = /"instance_id"\s*:\s*(\d+)/.exec(text)?.[1];
    if (id === undefined) continue;
    out.push({ instanceId: id, tcp: /"tcp"\s*:\s*"([^"]+)"/.exec(text)?.[1], file: f });
  }
  return out;
}

/** Every TCP listening address of a process (Linux /proc; empty elsewhere). */
export function listeningAddresses(pid: number): string[] {
  const inodes = new Set<string>();
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m) inodes.add(m[1] as string);
      } catch {
        // closed meanwhile
      }
    }
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const [file, v6] of [
    ['/proc/net/tcp', false],
    ['/proc/net/tcp6', true],
  ] as const) {
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || f[3] !== '0A' || !inodes.has(f[9] as string)) continue; // 0A = LISTEN
      const [hex, portHex] = (f[1] as string).split(':') as [string, string];
      const port = Number.parseInt(portHex, 16);
      let ip: string;
      if (!v6) {
        const n = Number.parseInt(hex, 16);
        ip = [n & 255, (n >>> 8) & 255, (n >>> 16) & 255, n >>> 24].join('.');
      } else if (hex === '00000000000000000000000000000000') ip = '::';
      else if (hex === '00000000000000000000000001000000') ip = '::1';
      else if (hex.startsWith('0000000000000000FFFF0000')) {
        const n = Number.parseInt(hex.slice(24), 16);
        ip = `::ffff:${[n & 255, (n >>> 8) & 255, (n >>> 16) & 255, n >>> 24].join('.')}`;
      } else ip = hex;
      out.push(`${ip}:${port}`);
    }
  }
  return out;
}

/** True for a loopback listening address (`127.x`, `::1`, `::ffff:127.x`). */
export function isLoopback(addr: string): boolean {
  return /^(127\.|::1:|::ffff:127\.)/.test(addr);
}

export interface MockerWorker {
  name: string;
  process: DynamoProcess;
  /** Dynamo's instance id (decimal u64 string), the `x-dynamo-worker-instance-id` value. */
  instanceId: string;
  /** The request ids this mocker logged as received ("request received" records). */
  receivedRequestIds(): string[];
}

export interface DynamoOptions {
  natsUrl: string;
  /** Mocker workers (default 2). */
  workers?: number;
  /** Served model name (default `kv-epp-mock`). */
  modelName?: string;
  /** KV block size of the mockers (default 16). */
  blockSize?: number;
  /** GPU blocks per mocker (default 1024: no eviction during a test). */
  numGpuBlocks?: number;
  /** Mocker speedup (default 100: fast). */
  speedupRatio?: number;
  /** Start-up timeout (default 120 s). */
  timeoutMs?: number;
  /** Tokenizer dir (tokenizer.json + tokenizer_config.json), default Qwen3. */
  tokenizerDir?: string;
  /** config.json of the model (default the Qwen3-shaped fixture). */
  modelConfig?: string;
}

export interface DynamoStack {
  dir: string;
  modelDir: string;
  modelName: string;
  blockSize: number;
  kvDir: string;
  frontend: DynamoProcess;
  /** The frontend's HTTP address (127.0.0.1). */
  host: string;
  port: number;
  workers: MockerWorker[];
  /**
   * The core-NATS subject the mockers publish KV events on (msgpack envelope,
   * dynamo-router.md §2.2a); `kv_metrics` and `forward-pass-metrics` share the prefix.
   */
  kvEventsSubject: string;
  /** GET /health, parsed (instance ids kept as strings). */
  health(): Promise<{ status: string; instanceIds: string[]; raw: string }>;
  /** Start-up phases in ms (for the report). */
  timings: Record<string, number>;
  stop(): Promise<void>;
}

/** The environment of every Dynamo process: loopback only, private HOME, no inherited DYN_*. */
function dynamoEnv(dir: string, kvDir: string, natsUrl: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(DYN_|DYNAMO_|NATS_|ETCD_|HF_|OTEL_)/.test(k)) continue;
    env[k] = v;
  }
  const home = join(dir, 'home');
  mkdirSync(home, { recursive: true });
  return {
    ...env,
    HOME: home,
    XDG_CACHE_HOME: join(home, '.cache'),
    HF_HOME: join(home, '.cache', 'huggingface'),
    HF_HUB_OFFLINE: '1',
    TMPDIR: join(dir, 'tmp'),
    NATS_SERVER: natsUrl,
    DYN_FILE_KV: kvDir,
    DYN_SYSTEM_PORT: '-1',
    DYN_TCP_RPC_HOST: '127.0.0.1',
    DYN_EVENT_PLANE_HOST: '127.0.0.1',
    DYN_TCP_RESPONSE_STREAM_HOST: '127.0.0.1',
    DYN_LOGGING_JSONL: '1',
    DYN_LOG: process.env.KV_EPP_DYNAMO_LOG ?? 'info',
    PYTHONUNBUFFERED: '1',
    NO_COLOR: '1',
  };
}

function spawnPython(
  name: string,
  python: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  cwd: string,
): DynamoProcess {
  const child = spawn(python, args, {
    env,
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const p = new DynamoProcess(name, child);
  live.add(p);
  void p.exited.then(() => live.delete(p));
  return p;
}

/**
 * Starts the frontend (direct mode) and `workers` mockers; resolves once the
 * frontend lists every worker and each one answers a request sent straight to
 * it by instance id.
 */
export async function startDynamo(python: string, o: DynamoOptions): Promise<DynamoStack> {
  const t0 = Date.now();
  const timings: Record<string, number> = {};
  const timeoutMs = o.timeoutMs ?? 120_000;
  const n = o.workers ?? 2;
  const modelName = o.modelName ?? 'kv-epp-mock';
  const blockSize = o.blockSize ?? 16;
  const dir = mkdtempSync(join(tmpdir(), 'kv-epp-dynamo-'));
  const kvDir = join(dir, 'kv');
  mkdirSync(kvDir, { recursive: true });
  mkdirSync(join(dir, 'tmp'), { recursive: true });
  const modelDir = makeModelDir(join(dir, 'model'), o.tokenizerDir, o.modelConfig);
  const env = dynamoEnv(dir, kvDir, o.natsUrl);
  const procs: DynamoProcess[] = [];
  const workers: MockerWorker[] = [];
  const host = '127.0.0.1';
  let port = 0;
  let frontend: DynamoProcess | undefined;

  const stop = async () => {
    await Promise.all(procs.map((p) => p.stop()));
    rmSync(dir, { recursive: true, force: true });
  };

  const health = async () => {
    const r = await httpCall({ port, method: 'GET', path: '/health' });
    const instanceIds: string[] = [];
    // Instance ids exceed 2^53: read them from the text, generate endpoints only.
    for (const m of r.body.matchAll(/\{[^{}]*"endpoint":"generate"[^{}]*"instance_id":(\d+)/g)) {
      instanceIds.push(m[1] as string);
    }
    const status = /"status":"([^"]+)"/.exec(r.body)?.[1] ?? `http ${r.status}`;
    return { status, instanceIds: [...new Set(instanceIds)], raw: r.body };
  };

  try {
    // The frontend cannot take port 0 (it logs the port it was given, not the
    // one bound): pick a free port, retry if another process took it meanwhile.
    const startFrontend = async (): Promise<DynamoProcess> => {
      for (let attempt = 1; ; attempt++) {
        port = await freePort();
        const fe = spawnPython(
          'dynamo.frontend',
          python,
          [
            '-m',
            'dynamo.frontend',
            '--http-host',
            host,
            '--http-port',
            String(port),
            '--router-mode',
            'direct',
            '--discovery-backend',
            'file',
            '--request-plane',
            'tcp',
            '--event-plane',
            'nats',
          ],
          env,
          dir,
        );
        procs.push(fe);
        try {
          await until(
            'the frontend HTTP port',
            async () =>
              (await httpCall({ port, method: 'GET', path: '/health' })).status > 0
                ? true
                : undefined,
            { timeoutMs, watch: [fe], intervalMs: 100 },
          );
          return fe;
        } catch (e) {
          if (attempt < 3 && !fe.running && /in use|AddrInUse|os error 98/i.test(fe.log()))
            continue;
          throw e;
        }
      }
    };
    const frontendStarted = startFrontend();
    // Don't leave an unobserved rejection while the mockers start.
    frontendStarted.catch(() => undefined);

    // Mockers one at a time: each one's id is the new `generate` record.
    for (let i = 0; i < n; i++) {
      const name = `mocker-${String.fromCharCode(97 + i)}`;
      const before = new Set(discoveredInstances(kvDir).map((x) => x.instanceId));
      const p = spawnPython(
        name,
        python,
        [
          '-m',
          'dynamo.mocker',
          '--model-path',
          modelDir,
          '--model-name',
          modelName,
          '--block-size',
          String(blockSize),
          '--num-gpu-blocks-override',
          String(o.numGpuBlocks ?? 1024),
          '--speedup-ratio',
          String(o.speedupRatio ?? 100),
          '--discovery-backend',
          'file',
          '--request-plane',
          'tcp',
          '--event-plane',
          'nats',
        ],
        env,
        dir,
      );
      procs.push(p);
      const id = await until(
        `${name} in file discovery`,
        () => {
          const fresh = discoveredInstances(kvDir).filter((x) => !before.has(x.instanceId));
          if (fresh.length > 1) throw new Error(`several new instances: ${JSON.stringify(fresh)}`);
          return fresh[0]?.instanceId;
        },
        { timeoutMs, watch: [p] },
      );
      const proc = p;
      workers.push({
        name,
        process: proc,
        instanceId: id,
        receivedRequestIds: () =>
          proc
            .logRecords()
            .filter((r) => r.message === 'request received' && r.instance_id === id)
            .map((r) => String(r.request_id)),
      });
      timings[`${name} registered`] = Date.now() - t0;
    }

    frontend = await frontendStarted;
    timings['frontend HTTP up'] = Date.now() - t0;
    const fe = frontend;
    const want = workers.map((w) => w.instanceId);
    await until(
      'the frontend /health listing every worker',
      async () => {
        const h = await health();
        return h.status === 'healthy' && want.every((id) => h.instanceIds.includes(id))
          ? true
          : undefined;
      },
      { timeoutMs, watch: procs },
    );
    await until(
      `the frontend serving model ${modelName}`,
      async () => {
        const r = await httpCall({ port, method: 'GET', path: '/v1/models' });
        return r.status === 200 && r.body.includes(`"id":${JSON.stringify(modelName)}`)
          ? true
          : undefined;
      },
      { timeoutMs, watch: procs },
    );
    timings['frontend ready'] = Date.now() - t0;
    // Each worker answers a request addressed to it (a prompt shorter than a
    // block, so no cache state is left behind that a test could trip on).
    for (const w of workers) {
      await until(
        `${w.name} answering a direct request`,
        async () => {
          const r = await httpCall({
            port,
            path: '/v1/chat/completions',
            headers: {
              'content-type': 'application/json',
              'x-dynamo-worker-instance-id': w.instanceId,
            },
            body: JSON.stringify({
              model: modelName,
              messages: [{ role: 'user', content: 'ping' }],
              max_tokens: 1,
            }),
          });
          return r.status === 200 ? true : undefined;
        },
        { timeoutMs, watch: [fe, w.process], intervalMs: 250 },
      );
    }
    timings['workers answering'] = Date.now() - t0;
  } catch (e) {
    await stop();
    throw e;
  }
  return {
    dir,
    modelDir,
    modelName,
    blockSize,
    kvDir,
    frontend: frontend as DynamoProcess,
    host,
    port,
    workers,
    kvEventsSubject: 'namespace.dynamo.component.backend.endpoint.generate.kv-events',
    health,
    timings,
    stop,
  };
}

// --- a recording forwarder in front of the frontend ---

export interface TapRecord {
  /** The client's `x-test-id`. */
  testId: string | undefined;
  method: string;
  url: string;
  /** Headers as Envoy sent them (after kv-epp's mutations). */
  headers: IncomingHttpHeaders;
  body: Buffer;
  status?: number | undefined;
  /** The frontend's response body (SSE text when streaming). */
  response?: string | undefined;
}

export interface Tap {
  host: string;
  port: number;
  readonly records: TapRecord[];
  find(testId: string): TapRecord | undefined;
  /** Releases a request sent with `x-test-gate: <id>` (held before it is forwarded). */
  open(gate: string): void;
  /** Resolves once a request carrying `x-test-gate: <id>` arrived (and is being held). */
  arrived(gate: string): Promise<TapRecord>;
  close(): Promise<void>;
}

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'proxy-connection',
  'content-length',
]);

function one(h: IncomingHttpHeaders, name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * An HTTP forwarder on `host` (e.g. 127.0.0.2, port 0) to the frontend:
 * buffers each request body, records it, optionally holds it at a gate,
 * forwards it (with content-length), and streams the response back while
 * recording it.
 */
export function startTap(host: string, target: { host: string; port: number }): Promise<Tap> {
  const records: TapRecord[] = [];
  const gates = new Map<string, { promise: Promise<void>; open: () => void }>();
  const arrivals = new Map<
    string,
    { promise: Promise<TapRecord>; arrive: (r: TapRecord) => void }
  >();
  const gate = (id: string) => {
    let g = gates.get(id);
    if (!g) {
      let open!: () => void;
      const promise = new Promise<void>((r) => {
        open = r;
      });
      g = { promise, open };
      gates.set(id, g);
    }
    return g;
  };
  const arrival = (id: string) => {
    let a = arrivals.get(id);
    if (!a) {
      let arrive!: (r: TapRecord) => void;
      const promise = new Promise<TapRecord>((r) => {
        arrive = r;
      });
      a = { promise, arrive };
      arrivals.set(id, a);
    }
    return a;
  };

  const server: Server = createServer((req: IncomingMessage, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', async () => {
      const rec: TapRecord = {
        testId: one(req.headers, 'x-test-id'),
        method: req.method ?? 'GET',
        url: req.url ?? '/',
        headers: req.headers,
        body: Buffer.concat(parts),
      };
      records.push(rec);
      const gateId = one(req.headers, 'x-test-gate');
      if (gateId !== undefined) {
        arrival(gateId).arrive(rec);
        await gate(gateId).promise;
      }
      const headers: Record<string, string | string[]> = {};
      for (const [k, v] of Object.entries(req.headers)) {
        if (v !== undefined && !HOP_BY_HOP.has(k)) headers[k] = v;
      }
      headers['content-length'] = String(rec.body.length);
      const up = request(
        {
          host: target.host,
          port: target.port,
          method: rec.method,
          path: rec.url,
          headers,
          agent: false,
        },
        (upRes) => {
          rec.status = upRes.statusCode;
          const out: Record<string, string | string[]> = {};
          for (const [k, v] of Object.entries(upRes.headers)) {
            if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
          }
          res.writeHead(upRes.statusCode ?? 502, out);
          let text = '';
          upRes.on('data', (c: Buffer) => {
            text += c.toString('utf8');
            res.write(c);
          });
          upRes.on('end', () => {
            rec.response = text;
            res.end();
          });
          upRes.on('error', () => res.destroy());
        },
      );
      up.on('error', (e) => {
        rec.status = 502;
        rec.response = `tap: ${e.message}`;
        if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
        res.end(rec.response);
      });
      up.end(rec.body);
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => {
      const { port } = server.address() as AddressInfo;
      resolve({
        host,
        port,
        records,
        find: (id) => records.find((r) => r.testId === id),
        open: (id) => gate(id).open(),
        arrived: (id) => arrival(id).promise,
        close: () =>
          new Promise<void>((r) => {
            for (const g of gates.values()) g.open();
            server.closeAllConnections();
            server.close(() => r());
          }),
      });
    });
  });
}
