/**
 * `kv-epp serve` (the real CLI, a child process) SIGTERMed while its KV-event
 * queue still holds messages from a real nats-server: it exits 0. (A drain
 * slice already scheduled used to reach the applier serve had disposed and
 * throw out of setImmediate: exit 1 on a routine rolling update.)
 *
 * Skipped with a reason unless nats-server is installed; KV_EPP_REQUIRE_NATS=1
 * makes that a failure.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { kvEventsSubject } from '../../../src/events/nats-source.js';
import { encode } from '../../support/msgpack.js';
import { findNatsServer, type NatsServer, startNatsServer } from '../../support/nats-server.js';
import { envelope, routerEvent, stored } from '../../support/router-events.js';

const BIN = findNatsServer();
if (!BIN && process.env.KV_EPP_REQUIRE_NATS === '1') {
  throw new Error(
    'KV_EPP_REQUIRE_NATS=1 but no nats-server (run `bash scripts/install-test-tools.sh`)',
  );
}
const MAIN = join(import.meta.dirname, '..', '..', '..', 'dist', 'src', 'cli', 'main.js');

function queued(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    get({ host: '127.0.0.1', port, path: '/metrics', agent: false }, (res) => {
      let t = '';
      res.on('data', (c) => (t += c));
      res.on('end', () => resolve(Number(/^kv_epp_events_queued (\d+)/m.exec(t)?.[1] ?? 0)));
    }).on('error', reject);
  });
}

describe.skipIf(!BIN)('SIGTERM with a KV-event backlog', () => {
  let nats: NatsServer;
  let dir: string;
  beforeAll(async () => {
    nats = await startNatsServer({ jetstream: false });
    dir = mkdtempSync(join(tmpdir(), 'kv-epp-sigterm-'));
  });
  // A failed run must not leave its kv-epp behind (it would run on, subscribed).
  const children: ChildProcess[] = [];
  afterEach(() => {
    for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
  });
  afterAll(async () => {
    await nats?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('exits 0 without an uncaught exception', async () => {
    const file = join(dir, 'endpoints.yaml');
    writeFileSync(
      file,
      'endpoints:\n  - { name: a, address: 127.0.0.2, port: 8000, workerId: "1" }\n',
    );
    const child: ChildProcess = spawn(
      process.execPath,
      [
        MAIN,
        'serve',
        '--host=127.0.0.1',
        '--grpc-port=0',
        '--grpc-health-port=0',
        '--metrics-port=0',
        '--secure-serving=false',
        '--endpoints-file',
        file,
        `--nats-server=${nats.url}`,
        '--kv-events=true',
        '--block-size=16',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, KV_EPP_POOL_SIZE: '0' } },
    );
    children.push(child);
    let out = '';
    child.stdout?.on('data', (c) => (out += c));
    child.stderr?.on('data', (c) => (out += c));
    const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    let metricsPort = 0;
    while (metricsPort === 0) {
      const m = /"metricsPort":(\d+).*"kv-epp serving"/.exec(out);
      if (m) metricsPort = Number(m[1]);
      else await new Promise((r) => setTimeout(r, 50));
    }
    const pub = await connect({ servers: [nats.url] });
    let h = 1n;
    const msgs: Uint8Array[] = [];
    for (let i = 0; i < 3000; i++) {
      const blocks: Array<[bigint, bigint]> = [];
      for (let k = 0; k < 600; k++) blocks.push([h, h++]);
      msgs.push(encode(envelope(1n, BigInt(i), [routerEvent(1n, 0, i + 1, stored(null, blocks))])));
    }
    for (const m of msgs) pub.publish(kvEventsSubject('dynamo', 'backend', 'generate'), m);
    await pub.flush();
    const deadline = Date.now() + 30_000;
    for (;;) {
      const q = await queued(metricsPort);
      if (q >= 10) break;
      if (Date.now() > deadline)
        throw new Error(`no backlog seen (queued ${q}):\n${out.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 1));
    }
    child.kill('SIGTERM');
    const code = await exited;
    await pub.close();
    expect(out).not.toContain('the event applier was disposed');
    expect(code).toBe(0);
  }, 120_000);
});
