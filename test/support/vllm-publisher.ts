/**
 * Runs the Python side of the ZMQ KV-event tests (.venv-tools from
 * scripts/install-test-tools.sh):
 * - test/support/vllm_publisher.py: vLLM's exact ZMQ wire format (pyzmq +
 *   msgspec), XPUB sockets that publish only once the expected subscribers
 *   have subscribed;
 * - test/support/dynamo_kv_oracle.py: Dynamo 1.6.1's relay
 *   (`KvEventPublisher(..., zmq_endpoint=…)` → NATS), its `RadixTree`, and a
 *   direct publisher on Dynamo's ZMQ event plane watched by a raw SUB.
 *
 * Each process talks JSON lines on stdout; `waitFor(event)` resolves on the
 * first line with that `event` (or rejects when the process exits first or
 * the deadline passes). Every process still running when the test process
 * exits is killed.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SUPPORT = join(ROOT, 'test', 'support');
export const PUBLISHER_PY = join(SUPPORT, 'vllm_publisher.py');
export const ORACLE_PY = join(SUPPORT, 'dynamo_kv_oracle.py');

export interface ToolsPython {
  /** The interpreter (`KV_EPP_DYNAMO_PYTHON`, else .venv-tools/bin/python). */
  python: string | undefined;
  /** pyzmq and msgspec import. */
  publisher: boolean;
  /** ai-dynamo-runtime (`dynamo._core` with KvEventPublisher, RadixTree) imports. */
  dynamo: boolean;
  /** Why something is missing (empty when all is there). */
  reason: string;
}

let tools: ToolsPython | undefined;

/** Which Python tools are usable here (probed once). */
export function findToolsPython(): ToolsPython {
  if (tools) return tools;
  const fromEnv = process.env.KV_EPP_DYNAMO_PYTHON;
  const python = fromEnv || join(ROOT, '.venv-tools', 'bin', 'python');
  if (!existsSync(python)) {
    tools = {
      python: undefined,
      publisher: false,
      dynamo: false,
      reason: `no Python at ${python} (run \`bash scripts/install-test-tools.sh\`)`,
    };
    return tools;
  }
  const probe = (code: string): string => {
    const r = spawnSync(python, ['-c', code], { encoding: 'utf8', timeout: 60_000 });
    return r.status === 0
      ? ''
      : ((r.stderr || r.error?.message || 'failed').trim().split('\n').at(-1) ?? '');
  };
  const pubErr = probe('import zmq, msgspec');
  const dynErr = probe('from dynamo._core import KvEventPublisher, RadixTree, DistributedRuntime');
  tools = {
    python,
    publisher: pubErr === '',
    dynamo: dynErr === '',
    reason: [pubErr && `pyzmq/msgspec: ${pubErr}`, dynErr && `ai-dynamo-runtime: ${dynErr}`]
      .filter(Boolean)
      .join('; '),
  };
  return tools;
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

type Line = Record<string, unknown> & { event?: string };

/** A Python child speaking JSON lines on stdout. */
export class LineProcess {
  readonly lines: Line[] = [];
  private output = '';
  private partial = '';
  private exitCode: number | null | undefined;
  private readonly waiters: Array<() => void> = [];
  readonly exited: Promise<void>;

  constructor(
    readonly name: string,
    private readonly child: ChildProcess,
  ) {
    live.add(child);
    child.stdout?.on('data', (c: Buffer) => {
      const s = c.toString('utf8');
      this.keep(s);
      this.partial += s;
      const parts = this.partial.split('\n');
      this.partial = parts.pop() ?? '';
      for (const p of parts) {
        if (!p.startsWith('{')) continue;
        try {
          this.lines.push(JSON.parse(p) as Line);
        } catch {
          // not ours
        }
      }
      this.wake();
    });
    child.stderr?.on('data', (c: Buffer) => this.keep(c.toString('utf8')));
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.exitCode = code ?? (signal ? -1 : null);
        live.delete(child);
        this.wake();
        resolve();
      });
      child.on('error', (e) => {
        this.keep(`\nspawn error: ${e.message}\n`);
        this.exitCode = -1;
        live.delete(child);
        this.wake();
        resolve();
      });
    });
  }

  private keep(s: string): void {
    this.output += s;
    if (this.output.length > 400_000) this.output = this.output.slice(-200_000);
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** stdout + stderr (tail). */
  log(): string {
    return this.output;
  }

  get running(): boolean {
    return this.exitCode === undefined;
  }

  /** The first line whose `event` is `event`. */
  async waitFor(event: string, timeoutMs = 60_000): Promise<Line> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines.find((l) => l.event === event);
      if (hit) return hit;
      const err = this.lines.find((l) => l.event === 'error');
      if (err) throw new Error(`${this.name}: ${String(err.error)}\n${this.output}`);
      if (!this.running) {
        throw new Error(
          `${this.name} exited (${this.exitCode}) before "${event}":\n${this.output}`,
        );
      }
      const left = deadline - Date.now();
      if (left <= 0)
        throw new Error(`${this.name}: no "${event}" in ${timeoutMs} ms:\n${this.output}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 1000));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Writes one line to stdin. */
  send(line: string): void {
    this.child.stdin?.write(`${line}\n`);
  }

  /** Closes stdin (the scripts' signal to finish), then waits; SIGKILL after `graceMs`. */
  async close(graceMs = 10_000): Promise<number | null | undefined> {
    this.child.stdin?.end();
    const t = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(t);
    return this.exitCode;
  }
}

function runPython(name: string, args: string[], env?: NodeJS.ProcessEnv): LineProcess {
  const { python } = findToolsPython();
  if (!python) throw new Error(findToolsPython().reason);
  const child = spawn(python, ['-u', ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, PYTHONUNBUFFERED: '1', ...env },
  });
  return new LineProcess(name, child);
}

// ---- the vLLM publisher ------------------------------------------------------------------------

/** One vLLM event; hashes are decimal u64 strings. */
export type VllmEvent =
  | {
      type: 'BlockStored';
      block_hashes: string[];
      parent_block_hash: string | null;
      token_ids: number[];
      block_size: number;
      lora_id?: number | null;
      medium?: string | null;
      lora_name?: string | null;
      extra_keys?: Array<unknown[] | null>;
      group_idx?: number;
      kv_cache_spec_kind?: string;
    }
  | { type: 'BlockRemoved'; block_hashes: string[]; medium?: string | null }
  | { type: 'AllBlocksCleared' };

export type VllmMessage =
  | {
      socket: string;
      encoding: 'v0_33' | 'legacy';
      data_parallel_rank?: number | null;
      ts?: number;
      events: VllmEvent[];
    }
  | { socket: string; raw: string[] };

export interface VllmScenario {
  host?: string;
  /** Subscriptions each socket waits for before publishing. */
  subscribers: number;
  timeout_s?: number;
  sockets: Array<{ name: string; topic?: string }>;
  messages: VllmMessage[];
}

export interface VllmPublisher {
  proc: LineProcess;
  /** Socket name → `tcp://host:port`. */
  urls: Record<string, string>;
  /** Resolves with messages sent per socket, once all are sent. */
  sent(): Promise<Record<string, number>>;
  close(): Promise<number | null | undefined>;
}

/** Starts the publisher; resolves once its sockets are bound. */
export async function startVllmPublisher(
  scenario: VllmScenario,
  dir: string,
): Promise<VllmPublisher> {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'scenario.json');
  writeFileSync(file, JSON.stringify(scenario));
  const proc = runPython('vllm_publisher', [PUBLISHER_PY, file]);
  try {
    const bound = await proc.waitFor('bound', 30_000);
    return {
      proc,
      urls: bound.sockets as Record<string, string>,
      sent: async () => (await proc.waitFor('sent')).counts as Record<string, number>,
      close: () => proc.close(),
    };
  } catch (e) {
    await proc.close(1000);
    throw e;
  }
}

// ---- Dynamo ------------------------------------------------------------------------------------

/** Environment for a loopback-only Dynamo runtime with file discovery and NATS. */
export function dynamoEnv(dir: string, natsUrl?: string): NodeJS.ProcessEnv {
  const home = join(dir, 'home');
  const kv = join(dir, 'discovery');
  mkdirSync(home, { recursive: true });
  mkdirSync(kv, { recursive: true });
  return {
    HOME: home,
    ...(natsUrl === undefined ? {} : { NATS_SERVER: natsUrl }),
    DYN_FILE_KV: kv,
    DYN_TCP_RPC_HOST: '127.0.0.1',
    DYN_EVENT_PLANE_HOST: '127.0.0.1',
    DYN_TCP_RESPONSE_STREAM_HOST: '127.0.0.1',
    DYN_SYSTEM_PORT: '-1',
    HF_HUB_OFFLINE: '1',
  };
}

export interface RelaySpec {
  workerId: bigint;
  dpRank: number;
  zmqEndpoint: string;
}

/** Dynamo's vLLM relay (one KvEventPublisher per socket); resolves once all are constructed. */
export async function startDynamoRelay(
  o: { endpoint: string; blockSize: number; relays: RelaySpec[] },
  dir: string,
  env: NodeJS.ProcessEnv,
): Promise<LineProcess> {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'relay.json');
  writeFileSync(
    file,
    JSON.stringify({
      endpoint: o.endpoint,
      block_size: o.blockSize,
      relays: o.relays.map((r) => ({
        worker_id: String(r.workerId),
        dp_rank: r.dpRank,
        zmq_endpoint: r.zmqEndpoint,
      })),
    }),
  );
  const proc = runPython('dynamo_relay', [ORACLE_PY, 'relay', file], env);
  try {
    await proc.waitFor('ready', 60_000);
    return proc;
  } catch (e) {
    await proc.close(1000);
    throw e;
  }
}

/** One `KvEventPublisher` call (hashes as decimal strings; negative = the Python API's i64). */
export type PublisherCall =
  | {
      op: 'stored';
      tokens: number[];
      numBlockTokens: number[];
      blockHashes: string[];
      parentHash?: string | null;
      loraName?: string | null;
      cacheSalt?: string | null;
    }
  | { op: 'removed'; blockHashes: string[] };

export interface ZmqPlaneSpec {
  endpoint: string;
  workerId: bigint;
  dpRank: number;
  blockSize: number;
  /** Re-published until the test says "go" (slow joiners). */
  sentinel: { tokens: number[]; hash: string };
  calls: PublisherCall[];
  /** Published last; the script reports once it is back. */
  end: { tokens: number[]; hash: string };
  queries: OracleQuery[];
}

/**
 * Dynamo's ZMQ event plane (a direct KvEventPublisher with `event_plane="zmq"`):
 * resolves with the process and its PUB endpoint once bound. Send "go" when
 * your subscriber has the sentinel; the "result" line then carries the
 * RadixTree answer for what the script's own SUB saw.
 */
export async function startDynamoZmqPlane(
  spec: ZmqPlaneSpec,
  dir: string,
  env: NodeJS.ProcessEnv,
): Promise<{ proc: LineProcess; endpoint: string }> {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'zmq-plane.json');
  writeFileSync(
    file,
    JSON.stringify({
      endpoint: spec.endpoint,
      worker_id: String(spec.workerId),
      dp_rank: spec.dpRank,
      block_size: spec.blockSize,
      sentinel: spec.sentinel,
      end: spec.end,
      calls: spec.calls.map((c) =>
        c.op === 'removed'
          ? { op: 'removed', block_hashes: c.blockHashes }
          : {
              op: 'stored',
              tokens: c.tokens,
              num_block_tokens: c.numBlockTokens,
              block_hashes: c.blockHashes,
              parent_hash: c.parentHash ?? null,
              lora_name: c.loraName ?? null,
              cache_salt: c.cacheSalt ?? null,
            },
      ),
      queries: spec.queries.map(queryDoc),
    }),
  );
  const proc = runPython('dynamo_zmq_plane', [ORACLE_PY, 'zmq-plane', file], env);
  try {
    const bound = await proc.waitFor('bound', 60_000);
    return { proc, endpoint: bound.endpoint as string };
  } catch (e) {
    await proc.close(1000);
    throw e;
  }
}

type RawOracle = {
  applied: number;
  errors: Record<string, number>;
  kinds: Record<string, number>;
  skipped_tiers: Record<string, number>;
  queries: Array<{
    name: string;
    local_hashes: string[];
    scores: Array<{ worker_id: string; dp_rank: number; blocks: number }>;
  }>;
};

/** The oracle's JSON answer with u64 as bigint. */
export function parseOracle(out: Record<string, unknown>): OracleResult {
  const o = out as unknown as RawOracle;
  return {
    applied: o.applied,
    errors: o.errors,
    kinds: o.kinds,
    skippedTiers: o.skipped_tiers,
    queries: o.queries.map((q) => ({
      name: q.name,
      localHashes: q.local_hashes.map(BigInt),
      scores: q.scores.map((s) => ({
        workerId: BigInt(s.worker_id),
        dpRank: s.dp_rank,
        blocks: s.blocks,
      })),
    })),
  };
}

function queryDoc(q: OracleQuery) {
  return {
    name: q.name,
    tokens: q.tokens,
    block_size: q.blockSize,
    lora_name: q.loraName ?? null,
    cache_namespace: q.cacheNamespace ?? null,
  };
}

export interface OracleQuery {
  name: string;
  tokens: number[];
  blockSize: number;
  loraName?: string;
  cacheNamespace?: string;
}

export interface OracleResult {
  applied: number;
  /** Events the RadixTree refused, by its error message. */
  errors: Record<string, number>;
  kinds: Record<string, number>;
  skippedTiers: Record<string, number>;
  queries: Array<{
    name: string;
    localHashes: bigint[];
    scores: Array<{ workerId: bigint; dpRank: number; blocks: number }>;
  }>;
}

/** Dynamo's RadixTree fed with the event-plane envelopes; scores per query. */
export async function runRadixOracle(
  envelopes: Uint8Array[],
  queries: OracleQuery[],
  dir: string,
): Promise<OracleResult> {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'radix.json');
  writeFileSync(
    file,
    JSON.stringify({
      envelopes: envelopes.map((e) => Buffer.from(e).toString('hex')),
      queries: queries.map(queryDoc),
    }),
  );
  const proc = runPython('dynamo_radix', [ORACLE_PY, 'radix', file]);
  const code = await proc.close(120_000);
  const out = proc.lines.at(-1);
  if (code !== 0 || !out) throw new Error(`RadixTree oracle failed (${code}):\n${proc.log()}`);
  return parseOracle(out);
}
