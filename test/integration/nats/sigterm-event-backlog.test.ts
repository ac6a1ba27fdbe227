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
import { createEventApplier } from '../../../src/events/factory.js';
import { kvEventsSubject } from '../../../src/events/nats-source.js';
import { createKvIndex } from '../../../src/kv/factory.js';
import { encode, map } from '../../support/msgpack.js';
import { findNatsServer, type NatsServer, startNatsServer } from '../../support/nats-server.js';
import { envelope, routerEvent, stored } from '../../support/router-events.js';

const BIN = findNatsServer();
if (!BIN && process.env.KV_EPP_REQUIRE_NATS === '1') {
  throw new Error(
    'KV_EPP_REQUIRE_NATS=1 but no nats-server (run `bash scripts/install-test-tools.sh`)',
  );
}
const MAIN = join(import.meta.dirname, '..', '..', '..', 'dist', 'src', 'cli', 'main.js');

/** kv-epp's last /metrics page (its event figures go into a failure's message). */
let lastPage = '';
function queued(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    get({ host: '127.0.0.1', port, path: '/metrics', agent: false }, (res) => {
      let t = '';
      res.on('data', (c) => (t += c));
      res.on('end', () => {
        lastPage = t;
        resolve(Number(/^kv_epp_events_queued (\d+)/m.exec(t)?.[1] ?? 0));
      });
    }).on('error', reject);
  });
}

/** `marker` in `bytes` replaced by `by` (a value spliced into an encoded template). */
function splice(bytes: Uint8Array, marker: number[], by: Uint8Array): Buffer {
  const b = Buffer.from(bytes);
  const at = b.indexOf(Buffer.from(marker));
  if (at < 0) throw new Error('template marker not found');
  return Buffer.concat([b.subarray(0, at), by, b.subarray(at + marker.length)]);
}

const BLOCK_TEMPLATE = Buffer.from(
  encode(map({ block_hash: 1n << 63n, tokens_hash: 1n << 63n, mm_extra_info: null })),
);
const HASH_AT = [BLOCK_TEMPLATE.indexOf(0xcf), BLOCK_TEMPLATE.lastIndexOf(0xcf)];

/**
 * Envelope `n` (event id n + 1) storing `count` new blocks, as the helpers in
 * router-events.ts build it, but written straight into bytes: the generic
 * writer took ~20 s for the 1.8 M blocks of a batch.
 */
function storedMessage(n: number, count: number): Uint8Array {
  const blocks = Buffer.alloc(3 + count * BLOCK_TEMPLATE.length);
  blocks[0] = 0xdc;
  blocks.writeUInt16BE(count, 1);
  for (let k = 0; k < count; k++) {
    const off = 3 + k * BLOCK_TEMPLATE.length;
    BLOCK_TEMPLATE.copy(blocks, off);
    const h = n * count + k + 1;
    for (const at of HASH_AT) {
      blocks.writeUInt32BE(Math.floor(h / 2 ** 32), off + (at as number) + 1);
      blocks.writeUInt32BE(h >>> 0, off + (at as number) + 5);
    }
  }
  const events = splice(
    encode([routerEvent(1n, 0, n + 1, stored(null, []))]),
    [0xa6, ...Buffer.from('blocks'), 0x90],
    Buffer.concat([Buffer.from([0xa6, ...Buffer.from('blocks')]), blocks]),
  );
  const bin = Buffer.alloc(5);
  bin[0] = 0xc6;
  bin.writeUInt32BE(events.length, 1);
  return splice(
    encode(envelope(1n, BigInt(n), [])),
    [0xa7, ...Buffer.from('payload'), 0xc4, 0x01, 0x90],
    Buffer.concat([Buffer.from([0xa7, ...Buffer.from('payload')]), bin, events]),
  );
}

describe('the fast-written KV-event messages', () => {
  it('apply exactly as the generic writer encodes them', async () => {
    const reports = [];
    for (const fast of [true, false]) {
      const index = await createKvIndex('native');
      const applier = await createEventApplier(index, { blockSize: 16 });
      const blocks: Array<[bigint, bigint]> = [];
      for (let k = 0; k < 5; k++) blocks.push([BigInt(5 * 7 + k + 1), BigInt(5 * 7 + k + 1)]);
      const msg = fast
        ? storedMessage(7, 5)
        : encode(envelope(1n, 7n, [routerEvent(1n, 0, 8, stored(null, blocks))]));
      reports.push(applier.apply('dynamo', msg));
      applier.dispose();
      index.dispose();
    }
    expect(reports[0]).toEqual(reports[1]);
    expect(reports[0]).toMatchObject({ applied: { stored: 1 }, blocksStored: 5 });
  });
});

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
    // A backlog is there once kv-epp reports one; a batch it drained before the
    // first look (a busy machine can starve this process that long) is followed
    // by another, with fresh event ids.
    let next = 0;
    let seen = 0;
    for (let attempt = 1; seen < 10; attempt++) {
      if (attempt > 5) {
        throw new Error(
          `no backlog seen in 5 batches:\n${out.slice(-2000)}\n${lastPage
            .split('\n')
            .filter((l) => l.startsWith('kv_epp_events'))
            .join('\n')}`,
        );
      }
      for (let i = 0; i < 3000; i++, next++) {
        pub.publish(kvEventsSubject('dynamo', 'backend', 'generate'), storedMessage(next, 600));
      }
      await pub.flush();
      const deadline = Date.now() + 10_000;
      while (seen < 10 && Date.now() < deadline) {
        seen = await queued(metricsPort);
        if (seen < 10) await new Promise((r) => setTimeout(r, 1));
      }
    }
    child.kill('SIGTERM');
    const code = await exited;
    await pub.close();
    expect(out).not.toContain('the event applier was disposed');
    expect(code).toBe(0);
  }, 120_000);
});
