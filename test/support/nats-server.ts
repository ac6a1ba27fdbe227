/**
 * A real nats-server for integration tests: finds the binary
 * (`KV_EPP_NATS_SERVER`, else .venv-tools/bin/nats-server from
 * scripts/install-test-tools.sh, else PATH), runs it on 127.0.0.1 with
 * JetStream on and its store in a private temp dir, and waits until it
 * answers the NATS protocol (INFO, then CONNECT + PING → PONG). No monitoring
 * port is opened.
 *
 * The first start asks the server for a random port (`-p -1`) and reads it
 * back from `--ports_file_dir`, so there is no pick-then-bind race. `restart()`
 * reuses that port and the same store dir (JetStream state survives, as a
 * recovery test needs); `stop()` ends the process and deletes the temp dir.
 * Every server still running when the test process exits is killed.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const VENV_BIN = join(ROOT, '.venv-tools', 'bin', 'nats-server');

/**
 * The nats-server binary: `KV_EPP_NATS_SERVER` if set (undefined when that
 * path does not exist), else the one in .venv-tools, else the first on PATH.
 */
export function findNatsServer(): string | undefined {
  const fromEnv = process.env.KV_EPP_NATS_SERVER;
  if (fromEnv) return existsSync(fromEnv) ? fromEnv : undefined;
  if (existsSync(VENV_BIN)) return VENV_BIN;
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue;
    const bin = join(dir, 'nats-server');
    if (existsSync(bin)) return bin;
  }
  return undefined;
}

/** What the server's INFO line says (the fields the tests use). */
export interface NatsInfo {
  server_id: string;
  version: string;
  port: number;
  jetstream?: boolean;
  [k: string]: unknown;
}

/**
 * One NATS protocol round trip: reads INFO, sends CONNECT + PING, waits for
 * PONG (or, from a server that requires TLS, the INFO alone). Resolves with
 * the INFO; rejects on refusal, -ERR, close or timeout.
 */
export function natsPing(host: string, port: number, timeoutMs = 2000): Promise<NatsInfo> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host, port });
    let buf = '';
    let info: NatsInfo | undefined;
    const done = (err: Error | undefined, v?: NatsInfo) => {
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(v as NatsInfo);
    };
    const timer = setTimeout(
      () => done(new Error(`no PONG from ${host}:${port} in ${timeoutMs} ms`)),
      timeoutMs,
    );
    sock.setEncoding('utf8');
    sock.on('error', (e) => done(e));
    sock.on('close', () => done(new Error(`${host}:${port} closed the connection`)));
    sock.on('data', (chunk: string) => {
      buf += chunk;
      for (;;) {
        const nl = buf.indexOf('\r\n');
        if (nl < 0) return;
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        if (info === undefined) {
          if (!line.startsWith('INFO ')) return done(new Error(`expected INFO, got ${line}`));
          info = JSON.parse(line.slice(5)) as NatsInfo;
          // A server that requires TLS answers only after a handshake: its INFO is the sign of life.
          if (info.tls_required === true) return done(undefined, info);
          sock.write(
            `CONNECT ${JSON.stringify({ verbose: false, pedantic: false, name: 'kv-epp-test-probe' })}\r\nPING\r\n`,
          );
        } else if (line === 'PONG') {
          return done(undefined, info);
        } else if (line.startsWith('-ERR')) {
          return done(new Error(`nats-server: ${line}`));
        }
        // PING from the server, +OK: ignore.
      }
    });
  });
}

export interface NatsServerOptions {
  /** Enable JetStream (default true). */
  jetstream?: boolean;
  /** Extra nats-server arguments. */
  args?: string[];
  /** Start-up timeout per start (default 20 s). */
  timeoutMs?: number;
}

export class NatsServer {
  readonly host = '127.0.0.1';
  port = 0;
  /** The JetStream store dir (`-sd`); survives restart(), deleted by stop(). */
  readonly storeDir: string;
  private child: ChildProcess | undefined;
  private exitedP: Promise<number | null> = Promise.resolve(null);
  private exitCode: number | null | undefined;
  private output = '';
  private stopped = false;
  /** Where the current start's `--ports_file_dir` file appears. */
  private portsDir = '';
  /** How many times the process was started. */
  starts = 0;

  constructor(
    readonly binary: string,
    private readonly dir: string,
    private readonly options: NatsServerOptions,
  ) {
    this.storeDir = join(dir, 'store');
    mkdirSync(this.storeDir, { recursive: true });
  }

  /** `nats://127.0.0.1:<port>`. */
  get url(): string {
    return `nats://${this.host}:${this.port}`;
  }

  get running(): boolean {
    return this.child !== undefined && this.exitCode === undefined;
  }

  get pid(): number | undefined {
    return this.running ? this.child?.pid : undefined;
  }

  /** The server's stdout + stderr (tail), over all starts. */
  log(): string {
    return this.output;
  }

  private spawnOnce(port: number): void {
    const portsDir = join(this.dir, `ports-${this.starts}`);
    mkdirSync(portsDir, { recursive: true });
    const args = [
      '-a',
      this.host,
      '-p',
      String(port),
      '--ports_file_dir',
      portsDir,
      ...(this.options.jetstream === false ? [] : ['-js', '-sd', this.storeDir]),
      ...(this.options.args ?? []),
    ];
    this.starts += 1;
    this.exitCode = undefined;
    const child = spawn(this.binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    const keep = (c: Buffer) => {
      this.output += c.toString('utf8');
      if (this.output.length > 200_000) this.output = this.output.slice(-100_000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    this.exitedP = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        if (this.child === child) this.exitCode = code ?? (signal ? -1 : null);
        resolve(code);
      });
      child.on('error', (e) => {
        this.output += `\nspawn error: ${e.message}\n`;
        if (this.child === child) this.exitCode = -1;
        resolve(-1);
      });
    });
    this.portsDir = portsDir;
  }

  private readPortsFile(): number | undefined {
    if (!existsSync(this.portsDir)) return undefined;
    for (const f of readdirSync(this.portsDir)) {
      if (!f.endsWith('.ports')) continue;
      try {
        const doc = JSON.parse(readFileSync(join(this.portsDir, f), 'utf8')) as { nats?: string[] };
        const m = /:(\d+)$/.exec(doc.nats?.[0] ?? '');
        if (m) return Number(m[1]);
      } catch {
        // half-written: next poll
      }
    }
    return undefined;
  }

  /** Starts the process on `port` (0 = random) and waits until it answers PING. */
  async start(port = 0): Promise<void> {
    if (this.running) throw new Error('nats-server is already running');
    const timeoutMs = this.options.timeoutMs ?? 20_000;
    const deadline = Date.now() + timeoutMs;
    this.spawnOnce(port === 0 ? -1 : port);
    let last = '';
    for (;;) {
      if (!this.running) {
        throw new Error(`nats-server exited (${this.exitCode}) during start-up:\n${this.output}`);
      }
      try {
        const p = port !== 0 ? port : this.readPortsFile();
        if (p !== undefined) {
          const info = await natsPing(this.host, p, 1000);
          if (this.options.jetstream !== false && info.jetstream !== true) {
            throw new Error('INFO does not report jetstream yet');
          }
          this.port = p;
          return;
        }
      } catch (e) {
        last = (e as Error).message;
      }
      if (Date.now() > deadline) {
        await this.kill('SIGKILL');
        throw new Error(
          `nats-server not ready after ${timeoutMs} ms (${last || 'no ports file'}):\n${this.output}`,
        );
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Signals the process and waits for it to exit (no-op when not running). */
  async kill(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (!this.running) return;
    this.child?.kill(signal);
    await this.exitedP;
  }

  /**
   * Stops the process (SIGTERM, or SIGKILL with `hard`: a crash) and starts it
   * again on the same port with the same store dir. Retries briefly if the
   * port is momentarily unavailable.
   */
  async restart(o: { hard?: boolean } = {}): Promise<void> {
    if (this.stopped) throw new Error('nats-server was stopped');
    await this.kill(o.hard ? 'SIGKILL' : 'SIGTERM');
    let lastErr: unknown;
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await this.start(this.port);
        return;
      } catch (e) {
        lastErr = e;
        if (!/address already in use/i.test((e as Error).message)) throw e;
        await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
      }
    }
    throw lastErr;
  }

  /** Ends the process for good and deletes its temp dir (store included). */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.kill('SIGTERM');
    live.delete(this);
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Synchronous last-resort kill (process exit). */
  killNow(): void {
    if (this.running) this.child?.kill('SIGKILL');
  }
}

const live = new Set<NatsServer>();
process.once('exit', () => {
  for (const s of live) s.killNow();
});

/** Starts nats-server on a random loopback port with JetStream; resolves once it answers PING. */
export async function startNatsServer(
  o: NatsServerOptions & { binary?: string } = {},
): Promise<NatsServer> {
  const binary = o.binary ?? findNatsServer();
  if (!binary) {
    throw new Error(
      'no nats-server binary (run `bash scripts/install-test-tools.sh` or set KV_EPP_NATS_SERVER)',
    );
  }
  const dir = mkdtempSync(join(tmpdir(), 'kv-epp-nats-'));
  const server = new NatsServer(binary, dir, o);
  live.add(server);
  try {
    await server.start();
  } catch (e) {
    await server.stop();
    throw e;
  }
  return server;
}
