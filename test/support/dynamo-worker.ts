/**
 * Drives test/support/dynamo_worker_query.py: a Dynamo 1.6.1 worker process
 * whose KvEventPublishers have the local indexer on (NATS event plane, file
 * discovery, TCP request plane). One JSON command per stdin line, one JSON
 * reply per stdout line; u64s cross as decimal strings.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const WORKER = join(dirname(fileURLToPath(import.meta.url)), 'dynamo_worker_query.py');

/** The Python worker: one JSON command per line on stdin, one JSON reply per line on stdout. */
export class DynamoWorker {
  private readonly replies: Array<(line: Record<string, unknown>) => void> = [];
  private readonly early: Record<string, unknown>[] = [];
  output = '';
  private constructor(readonly child: ChildProcess) {
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (l) => {
      this.output += `${l}\n`;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(l) as Record<string, unknown>;
      } catch {
        return;
      }
      const waiter = this.replies.shift();
      if (waiter) waiter(msg);
      else this.early.push(msg);
    });
    child.stderr?.on('data', (d: Buffer) => {
      this.output += d.toString();
    });
  }
  static start(python: string, natsUrl: string, cfg: object): DynamoWorker {
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (!/^(DYN_|DYNAMO_|NATS_|ETCD_)/.test(k)) env[k] = v;
    }
    env.NATS_SERVER = natsUrl;
    env.DYN_LOG = process.env.KV_EPP_DYNAMO_LOG ?? 'warn';
    const child = spawn(python, [WORKER, JSON.stringify(cfg)], {
      env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    return new DynamoWorker(child);
  }
  /**
   * One worker process with a publisher per dp rank (`name` r<rank>), waited
   * for until ready; `kvDir` is its file-discovery directory.
   */
  static async startRanks(
    python: string,
    natsUrl: string,
    o: { endpoint: string; workdir: string; workerId: bigint; blockSize: number; ranks: number[] },
  ): Promise<{ worker: DynamoWorker; kvDir: string }> {
    const worker = DynamoWorker.start(python, natsUrl, {
      endpoint: o.endpoint,
      workdir: o.workdir,
      workers: o.ranks.map((rank) => ({
        name: `r${rank}`,
        worker_id: `${o.workerId}`,
        dp_rank: rank,
        block_size: o.blockSize,
      })),
    });
    const ready = await worker.next();
    if (ready.event !== 'ready') {
      await worker.stop();
      throw new Error(`worker not ready: ${JSON.stringify(ready)}\n${worker.output}`);
    }
    return { worker, kvDir: ready.kv_dir as string };
  }

  next(timeoutMs = 30_000): Promise<Record<string, unknown>> {
    const e = this.early.shift();
    if (e) return Promise.resolve(e);
    return new Promise((resolve, reject) => {
      const t = setTimeout(
        () => reject(new Error(`no reply from the worker:\n${this.output}`)),
        timeoutMs,
      );
      this.replies.push((m) => {
        clearTimeout(t);
        resolve(m);
      });
    });
  }
  async send(cmd: object): Promise<void> {
    this.child.stdin?.write(
      `${JSON.stringify(cmd, (_k, v) => (typeof v === 'bigint' ? `${v}` : v))}\n`,
    );
    const r = await this.next();
    if (r.event !== 'ok') throw new Error(`worker: ${JSON.stringify(r)}\n${this.output}`);
  }
  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.stdin?.end(`${JSON.stringify({ op: 'quit' })}\n`);
    const t = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(t);
  }
}
