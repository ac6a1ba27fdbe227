/**
 * Shared pieces of the KV-event interop tests against Dynamo 1.6.1
 * (dynamo-nats.test.ts): the Python driver and oracle
 * (test/support/dynamo_events.py), a raw-message capture subscriber on NATS,
 * a tap on kv-epp's ingest queue (the exact messages kv-epp applied, frozen
 * while a comparison runs), a loopback TCP gate that can keep kv-epp away
 * from NATS, and the comparison of kv-epp's index with Dynamo's RadixTree.
 *
 * Every u64 crosses the Python boundary as a decimal string.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { Serving } from '../../../src/cli/serve.js';
import { createEventApplier } from '../../../src/events/factory.js';
import type { EventIngest, EventMessage } from '../../../src/events/ingest.js';
import { createKvIndex } from '../../../src/kv/factory.js';
import type { BlockHasher, KvIndex } from '../../../src/kv/types.js';
import type { Logger } from '../../../src/log/logger.js';
import { findDynamoPython } from '../../support/dynamo.js';
import { httpCall } from '../../support/http-client.js';
import { findNatsServer } from '../../support/nats-server.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/**
 * The Dynamo venv and nats-server these suites need: `missing` names what is
 * absent (the suite skips), and KV_EPP_REQUIRE_DYNAMO / KV_EPP_REQUIRE_NATS=1
 * turn absence into a failure at import time (CI).
 */
export function dynamoAndNats(label: string): {
  python: string | undefined;
  nats: string | undefined;
  missing: string[];
} {
  const python = findDynamoPython();
  const nats = findNatsServer();
  const missing = [
    python ? undefined : 'Dynamo (ai-dynamo 1.6.1 in .venv-tools, or KV_EPP_DYNAMO_PYTHON)',
    nats ? undefined : 'nats-server (.venv-tools/bin, KV_EPP_NATS_SERVER or PATH)',
  ].filter((x): x is string => x !== undefined);
  if (missing.length > 0) {
    const reason = `missing ${missing.join(', ')} (run \`bash scripts/install-test-tools.sh\`)`;
    if (process.env.KV_EPP_REQUIRE_DYNAMO === '1' || process.env.KV_EPP_REQUIRE_NATS === '1') {
      throw new Error(`KV_EPP_REQUIRE_DYNAMO/KV_EPP_REQUIRE_NATS=1 but ${reason}`);
    }
    console.warn(`[${label}] SKIPPED: ${reason}`);
  }
  return { python: python ?? undefined, nats: nats ?? undefined, missing };
}
export const DRIVER = join(ROOT, 'test', 'support', 'dynamo_events.py');

/** Polls `probe` every `intervalMs` until it returns a value (not undefined). */
export async function poll<T>(
  what: string,
  probe: () => T | undefined | Promise<T | undefined>,
  timeoutMs = 20_000,
  intervalMs = 10,
  detail: () => string = () => '',
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} ${detail()}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** kv-epp's log, kept quiet (printed on failure). */
export class QuietLogger implements Logger {
  readonly lines: string[] = [];
  private put(level: string, fields: Record<string, unknown>, msg: string): void {
    this.lines.push(
      `${level} ${msg} ${JSON.stringify(fields, (_k, v) => (typeof v === 'bigint' ? `${v}` : v))}`,
    );
  }
  debug(f: Record<string, unknown>, m: string): void {
    this.put('debug', f, m);
  }
  info(f: Record<string, unknown>, m: string): void {
    this.put('info', f, m);
  }
  warn(f: Record<string, unknown>, m: string): void {
    this.put('warn', f, m);
  }
  error(f: Record<string, unknown>, m: string): void {
    this.put('error', f, m);
  }
}

/** Does a msgpack message carry `value` as a uint64 (0xcf + 8 bytes big-endian)? */
export function carriesU64(payload: Uint8Array, value: bigint): boolean {
  const needle = Buffer.alloc(9);
  needle[0] = 0xcf;
  needle.writeBigUInt64BE(value, 1);
  return Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).includes(needle);
}

export const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** Probe blocks (test/support/dynamo_events.py PROBE_*): hashes no test uses. */
const PROBE_BLOCK = 0xf00dn << 48n;
const PROBE_TOKENS = 0xbeefn << 48n;

// --- the Python side -------------------------------------------------------------

export interface OracleScore {
  worker_id: string;
  dp_rank: number;
  blocks: number;
}

export interface OracleEvent {
  worker_id: string;
  dp_rank: number;
  event_id: string;
  kind: 'stored' | 'removed' | 'cleared';
  storage_tier: string;
  parent_hash?: string | null;
  block_hashes?: string[];
  tokens_hashes?: string[];
}

export interface OracleResult {
  messages: number;
  envelopes: Array<{ publisher_id: string; sequence: string; events: number }>;
  events: OracleEvent[];
  applied: { stored: number; removed: number; cleared: number };
  rejected: Record<string, number>;
  gaps: Array<{ worker_id: string; dp_rank: number; expected: string; got: string }>;
  publisher_gaps: Array<{ publisher_id: string; expected: string; got: string }>;
  skipped_tiers: Record<string, number>;
  queries: Array<{ name: string; local_hashes: string[]; scores: OracleScore[] }>;
  unresolved_dump_events: number;
  /** Blocks per holder in `dump_tree_as_events`, and those reachable through its own blocks. */
  dump_blocks: Array<OracleScore & { reachable: number }>;
  /** Per holder: the hashes it stored, and those it can still extend (child store probed). */
  probes: Array<{ worker_id: string; dp_rank: number; candidates: string[]; usable: string[] }>;
  paths?: Array<{ local_hashes: string[]; scores: OracleScore[] }>;
}

export interface OracleQuery {
  name: string;
  tokens: number[];
  lora_name?: string;
  cache_namespace?: string;
}

/** Runs `python dynamo_events.py radix -` on `doc`; rejects with its stderr on failure. */
export function runOracle(
  python: string,
  doc: {
    payloads: string[];
    block_size: number;
    router_rules: boolean;
    queries: OracleQuery[];
    paths?: boolean;
    codec?: 'dynamo' | 'dynamo-json';
  },
): Promise<OracleResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(python, [DRIVER, 'radix', '-'], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, DYN_LOG: 'error' },
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString('utf8');
    });
    child.stderr.on('data', (c: Buffer) => {
      err += c.toString('utf8');
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`oracle exited ${code}:\n${err.slice(-4000)}`));
      try {
        resolve(JSON.parse(out) as OracleResult);
      } catch (e) {
        reject(
          new Error(`oracle output is not JSON (${(e as Error).message}): ${out.slice(0, 400)}`),
        );
      }
    });
    child.stdin.end(JSON.stringify(doc));
  });
}

export interface DriverLine {
  event: string;
  name?: string;
  calls?: number;
  error?: string;
  subject?: string;
  [k: string]: unknown;
}

/** `python dynamo_events.py publish SCENARIO`: Dynamo's KvEventPublisher, paced by stdin. */
export class PublisherDriver {
  readonly lines: DriverLine[] = [];
  private out = '';
  private err = '';
  private exitCode: number | null | undefined;
  private readonly exited: Promise<void>;

  private constructor(private readonly child: ChildProcess) {
    child.stdout?.on('data', (c: Buffer) => {
      this.out += c.toString('utf8');
      const parts = this.out.split('\n');
      this.out = parts.pop() ?? '';
      for (const p of parts) if (p.startsWith('{')) this.lines.push(JSON.parse(p) as DriverLine);
    });
    child.stderr?.on('data', (c: Buffer) => {
      this.err += c.toString('utf8');
      if (this.err.length > 200_000) this.err = this.err.slice(-100_000);
    });
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exitCode = code ?? (signal ? -1 : null);
        resolve();
      });
      child.on('error', (e) => {
        this.err += `\nspawn error: ${e.message}`;
        this.exitCode = -1;
        resolve();
      });
    });
  }

  static start(
    python: string,
    scenario: unknown,
    natsUrl: string,
    dir: string,
    name = 'scenario',
  ): PublisherDriver {
    const file = join(dir, `${name}.json`);
    writeFileSync(file, JSON.stringify(scenario));
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (!/^(DYN_|DYNAMO_|NATS_|ETCD_)/.test(k)) env[k] = v;
    }
    const child = spawn(python, [DRIVER, 'publish', file, '--workdir', join(dir, name)], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: {
        ...env,
        NATS_SERVER: natsUrl,
        DYN_LOG: process.env.KV_EPP_DYNAMO_LOG ?? 'warn',
        PYTHONUNBUFFERED: '1',
        NO_COLOR: '1',
      },
    });
    return new PublisherDriver(child);
  }

  get running(): boolean {
    return this.exitCode === undefined;
  }

  stderr(): string {
    return this.err;
  }

  /** Resolves with the first line of `event` (and `name`) not consumed yet. */
  async next(event: string, name?: string, timeoutMs = 60_000): Promise<DriverLine> {
    return poll(
      `publisher ${event}${name ? ` ${name}` : ''}`,
      () => {
        const bad = this.lines.find((l) => l.event === 'error' || l.event === 'aborted');
        if (bad) throw new Error(`publisher: ${JSON.stringify(bad)}\n${this.err.slice(-4000)}`);
        const l = this.lines.find(
          (x) => x.event === event && (name === undefined || x.name === name),
        );
        if (l) return l;
        if (!this.running) {
          throw new Error(`publisher exited (${this.exitCode}):\n${this.err.slice(-6000)}`);
        }
        return undefined;
      },
      timeoutMs,
      20,
    );
  }

  /** Lets a paused scenario go on. */
  resume(): void {
    this.child.stdin?.write('go\n');
  }

  /** Closes stdin (the driver shuts its runtime down) and waits for the exit. */
  async finish(): Promise<number | null | undefined> {
    this.child.stdin?.end();
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(timer);
    return this.exitCode;
  }

  kill(): void {
    if (this.running) this.child.kill('SIGKILL');
  }
}

// --- NATS ------------------------------------------------------------------------

export interface CapturedMessage {
  subject: string;
  data: Uint8Array;
}

/** A nats.js subscriber recording every raw message on `subject` (reconnects forever). */
export class NatsCapture {
  readonly messages: CapturedMessage[] = [];
  reconnects = 0;
  disconnects = 0;

  private constructor(private readonly nc: NatsConnection) {}

  static async start(url: string, subject: string, name = 'kv-epp-test-capture') {
    const nc = await connect({
      servers: [url],
      name,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 50,
    });
    const cap = new NatsCapture(nc);
    nc.subscribe(subject, {
      callback: (err, m) => {
        if (!err) cap.messages.push({ subject: m.subject, data: m.data.slice() });
      },
    });
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === 'reconnect') cap.reconnects++;
        if (s.type === 'disconnect') cap.disconnects++;
      }
    })().catch(() => {});
    await nc.flush();
    return cap;
  }

  has(marker: bigint): boolean {
    return this.messages.some((m) => carriesU64(m.data, marker));
  }

  async close(): Promise<void> {
    await this.nc.close().catch(() => {});
  }
}

/**
 * Wraps kv-epp's ingest queue: records every message the NATS source hands
 * over (the exact bytes kv-epp applies). While `hold()` is on, new messages
 * are kept back instead of queued, so the index does not move during a
 * comparison; `release()` queues them in order.
 */
export class IngestTap {
  readonly messages: EventMessage[] = [];
  private held: EventMessage[] | undefined;
  private readonly push: (m: EventMessage) => boolean;

  constructor(private readonly ingest: EventIngest) {
    this.push = ingest.push.bind(ingest);
    ingest.push = (m: EventMessage) => {
      if (this.held) {
        this.held.push(m);
        return true;
      }
      this.messages.push(m);
      return this.push(m);
    };
  }

  has(marker: bigint): boolean {
    return this.messages.some((m) => carriesU64(m.payload, marker));
  }

  /** Freezes: drains what is queued, keeps later messages back. Returns the applied ones. */
  hold(): EventMessage[] {
    this.held = [];
    this.ingest.drainAll();
    return this.messages.slice();
  }

  release(): void {
    const held = this.held ?? [];
    this.held = undefined;
    for (const m of held) {
      this.messages.push(m);
      this.push(m);
    }
  }
}

/**
 * A loopback TCP forwarder to `target` that can refuse connections: kv-epp
 * reaches NATS through it, so a test can keep kv-epp disconnected while the
 * publisher and the capture are connected.
 */
export class TcpGate {
  open = true;
  accepted = 0;
  refused = 0;
  private readonly pairs = new Set<[Socket, Socket]>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static start(targetPort: number): Promise<TcpGate> {
    return new Promise((resolve, reject) => {
      let gate: TcpGate | undefined;
      const server = createServer((client) => {
        const g = gate as TcpGate;
        if (!g.open) {
          g.refused++;
          client.destroy();
          return;
        }
        g.accepted++;
        const up = tcpConnect({ host: '127.0.0.1', port: targetPort });
        const pair: [Socket, Socket] = [client, up];
        g.pairs.add(pair);
        const end = () => {
          g.pairs.delete(pair);
          client.destroy();
          up.destroy();
        };
        client.on('error', end).on('close', end);
        up.on('error', end).on('close', end);
        client.pipe(up);
        up.pipe(client);
      });
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        const addr = server.address();
        gate = new TcpGate(server, typeof addr === 'object' && addr ? addr.port : 0);
        resolve(gate);
      });
    });
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  /** Refuses new connections and cuts the current ones. */
  close(): void {
    this.open = false;
    for (const [a, b] of this.pairs) {
      a.destroy();
      b.destroy();
    }
    this.pairs.clear();
  }

  stop(): Promise<void> {
    this.close();
    return new Promise((r) => this.server.close(() => r()));
  }
}

/** nats-server's `/connz?subs=1`: the client connections and their subscriptions. */
export async function connz(
  monitorPort: number,
): Promise<Array<{ name?: string; lang?: string; subscriptions_list?: string[] }>> {
  const r = await httpCall({ port: monitorPort, method: 'GET', path: '/connz?subs=1' });
  if (r.status !== 200) return [];
  return (JSON.parse(r.body) as { connections?: Array<{ name?: string }> }).connections ?? [];
}

/** True when a connection named `name` is subscribed to `subject`. */
export async function subscribed(monitorPort: number, name: string, subject: string) {
  const conns = await connz(monitorPort).catch(() => []);
  return conns.some((c) => c.name === name && (c.subscriptions_list ?? []).includes(subject));
}

/** True when a Rust client (Dynamo's runtime: async-nats, no connection name) is connected. */
export async function rustClientConnected(monitorPort: number) {
  const conns = await connz(monitorPort).catch(() => []);
  return conns.some((c) => c.lang === 'rust');
}

// --- metrics ---------------------------------------------------------------------

export async function metricsText(port: number): Promise<string> {
  const r = await httpCall({ port, method: 'GET', path: '/metrics' });
  if (r.status !== 200) throw new Error(`/metrics: HTTP ${r.status}`);
  return r.body;
}

/** The value of one series (`name{labels}` exactly as printed), or undefined. */
export function metric(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

// --- the comparison --------------------------------------------------------------

export interface Comparison {
  oracle: OracleResult;
  /** Per query: [kv-epp, RadixTree] scores. */
  queries: Array<{ name: string; kvEpp: OracleScore[]; dynamo: OracleScore[] }>;
  /** Root-to-block paths of RadixTree's dump where kv-epp's scores differ. */
  pathMismatches: Array<{ localHashes: string[]; kvEpp: OracleScore[]; dynamo: OracleScore[] }>;
  pathsCompared: number;
  /**
   * Per holder: kv-epp's tree size (live, and replayed from the same bytes),
   * RadixTree's blocks in its dump (all, and reachable from the root through
   * the holder's own blocks), and how many of the holder's stored hashes each
   * side can still extend.
   */
  holders: Array<{
    holder: string;
    treeSize: number;
    replayTreeSize: number;
    dynamoDumped: number;
    dynamoReachable: number;
    kvEppUsable: number;
    dynamoUsable: number;
  }>;
  /** Holders whose extendable hashes differ between kv-epp and RadixTree. */
  probeMismatches: Array<{ holder: string; onlyKvEpp: string[]; onlyDynamo: string[] }>;
  localHashMismatches: string[];
  kvEppMemberships: number;
  applied: EventMessage[];
}

function scoresOf(index: KvIndex, local: BigUint64Array): OracleScore[] {
  const s = index.findMatches(local, false);
  return s.workers
    .map((w, i) => ({
      worker_id: w.workerId.toString(),
      dp_rank: w.dpRank,
      blocks: s.blocks[i] as number,
    }))
    .filter((x) => x.blocks > 0)
    .sort((a, b) =>
      BigInt(a.worker_id) === BigInt(b.worker_id)
        ? a.dp_rank - b.dp_rank
        : BigInt(a.worker_id) < BigInt(b.worker_id)
          ? -1
          : 1,
    );
}

/**
 * Freezes kv-epp's index at exactly the messages it applied, feeds the same
 * bytes to Dynamo's RadixTree (test/support/dynamo_events.py radix) and
 * compares: the queries' overlap, every root-to-block path of the tree's
 * dump, and per holder the block counts and which stored hashes can still be
 * extended (probed on a fresh kv-epp index replayed from the same bytes, so
 * the live one never moves). `holders` are (worker, dp rank) pairs to report
 * besides those that stored anything. The caller asserts on the result.
 */
export async function compareWithDynamo(o: {
  python: string;
  serving: Serving;
  tap: IngestTap;
  hasher: BlockHasher;
  blockSize: number;
  queries: OracleQuery[];
  routerRules: boolean;
  holders?: Array<{ workerId: bigint; dpRank: number }>;
}): Promise<Comparison> {
  const applied = o.tap.hold();
  const keep = process.env.KV_EPP_EVENTS_KEEP;
  if (keep) {
    // Debugging: the exact bytes kv-epp applied, replayable with `kv-epp events replay`.
    const dir = join(keep, `${Date.now()}`);
    mkdirSync(dir, { recursive: true });
    applied.forEach((m, i) => {
      writeFileSync(join(dir, `${String(i).padStart(5, '0')}.bin`), m.payload);
    });
  }
  try {
    const index = o.serving.index;
    const oracle = await runOracle(o.python, {
      payloads: applied.map((m) => hex(m.payload)),
      block_size: o.blockSize,
      router_rules: o.routerRules,
      queries: o.queries,
      paths: true,
    });
    const localHashMismatches: string[] = [];
    const queries = o.queries.map((q, i) => {
      const { local } = o.hasher.hash(Uint32Array.from(q.tokens), o.blockSize, {
        loraName: q.lora_name,
        cacheNamespace: q.cache_namespace,
      });
      const dyn = oracle.queries[i];
      if (!dyn) throw new Error(`oracle lost query ${q.name}`);
      if ([...local].map(String).join(',') !== dyn.local_hashes.join(',')) {
        localHashMismatches.push(q.name);
      }
      return { name: q.name, kvEpp: scoresOf(index, local), dynamo: dyn.scores };
    });
    const pathMismatches: Comparison['pathMismatches'] = [];
    for (const p of oracle.paths ?? []) {
      const k = scoresOf(index, BigUint64Array.from(p.local_hashes.map((h) => BigInt(h))));
      if (JSON.stringify(k) !== JSON.stringify(p.scores)) {
        pathMismatches.push({ localHashes: p.local_hashes, kvEpp: k, dynamo: p.scores });
      }
    }
    // The same probe on a fresh kv-epp index fed the same bytes (the live one must not move).
    const replay = await createKvIndex('native');
    const applier = await createEventApplier(replay, { blockSize: o.blockSize });
    const holders: Comparison['holders'] = [];
    const probeMismatches: Comparison['probeMismatches'] = [];
    try {
      for (const m of applied) applier.apply(m.codec, m.payload, m.context);
      const keys = new Map<string, { workerId: bigint; dpRank: number }>();
      for (const h of o.holders ?? []) keys.set(`${h.workerId}/${h.dpRank}`, h);
      for (const p of oracle.probes) {
        keys.set(`${p.worker_id}/${p.dp_rank}`, {
          workerId: BigInt(p.worker_id),
          dpRank: p.dp_rank,
        });
      }
      const dumpOf = (key: string) =>
        oracle.dump_blocks.find((x) => `${x.worker_id}/${x.dp_rank}` === key);
      const replaySizes = new Map([...keys].map(([k, w]) => [k, replay.treeSize(w)]));
      let n = 0n;
      for (const [key, w] of keys) {
        const p = oracle.probes.find((x) => `${x.worker_id}/${x.dp_rank}` === key);
        const usable: string[] = [];
        for (const h of p?.candidates ?? []) {
          n += 1n;
          const child = PROBE_BLOCK + n;
          const r = replay.applyStored(w, BigInt(h), {
            localHashes: BigUint64Array.of(PROBE_TOKENS + n),
            externalHashes: BigUint64Array.of(child),
          });
          if (r !== 'ok') continue;
          usable.push(h);
          replay.applyRemoved(w, BigUint64Array.of(child));
        }
        const dyn = p?.usable ?? [];
        const onlyKvEpp = usable.filter((h) => !dyn.includes(h));
        const onlyDynamo = dyn.filter((h) => !usable.includes(h));
        if (onlyKvEpp.length > 0 || onlyDynamo.length > 0) {
          probeMismatches.push({ holder: key, onlyKvEpp, onlyDynamo });
        }
        holders.push({
          holder: key,
          treeSize: index.treeSize(w),
          replayTreeSize: replaySizes.get(key) ?? -1,
          dynamoDumped: dumpOf(key)?.blocks ?? 0,
          dynamoReachable: dumpOf(key)?.reachable ?? 0,
          kvEppUsable: usable.length,
          dynamoUsable: dyn.length,
        });
      }
    } finally {
      applier.dispose();
      replay.dispose();
    }
    return {
      oracle,
      queries,
      pathMismatches,
      pathsCompared: oracle.paths?.length ?? 0,
      holders,
      probeMismatches,
      localHashMismatches,
      kvEppMemberships: index.stats().memberships,
      applied,
    };
  } finally {
    o.tap.release();
  }
}

/** One line per query for the report: `name: kv-epp […] dynamo […]`. */
export function describeComparison(c: Comparison): string {
  const fmt = (s: OracleScore[]) =>
    s.map((x) => `${x.worker_id}/${x.dp_rank}:${x.blocks}`).join(' ') || '-';
  return c.queries
    .map((q) => `${q.name}: kv-epp [${fmt(q.kvEpp)}] dynamo [${fmt(q.dynamo)}]`)
    .join('\n');
}
