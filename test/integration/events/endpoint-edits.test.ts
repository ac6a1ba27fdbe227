/**
 * `serve` following edits of `--endpoints-file` that change the KV event
 * sources: ZMQ publishers named by endpoints (`kvEvents`) are subscribed once
 * each however fast the edits come (two quick edits used to start two ZMQ
 * source sets, one never closed), and an edit asking for events while they
 * were settled off at start-up says so. A real nats-server for the NATS mode;
 * the ZMQ publishers need not exist (subscribing does not dial out first).
 *
 * Skipped with a reason unless nats-server is installed; KV_EPP_REQUIRE_NATS=1
 * makes that a failure.
 */
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { type Serving, startServing } from '../../../src/cli/serve.js';
import { RecordingLogger } from '../../support/ext-proc.js';
import { findNatsServer, type NatsServer, startNatsServer } from '../../support/nats-server.js';
import { poll } from './support.js';

const BIN = findNatsServer();
if (!BIN && process.env.KV_EPP_REQUIRE_NATS === '1') {
  throw new Error(
    'KV_EPP_REQUIRE_NATS=1 but no nats-server (run `bash scripts/install-test-tools.sh`)',
  );
}

const BASE = [
  '--secure-serving=false',
  '--grpc-port=0',
  '--grpc-health-port=0',
  '--metrics-port=0',
  '--host=127.0.0.1',
];
const cleanup: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

function endpointsFile(): { file: string; write(text: string): void } {
  const dir = mkdtempSync(join(tmpdir(), 'kv-epp-edits-'));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'endpoints.yaml');
  return {
    file,
    write(text) {
      writeFileSync(`${file}.tmp`, text);
      renameSync(`${file}.tmp`, file);
    },
  };
}

/** One endpoint line; `zmqPort` names a kvEvents publisher. */
const ep = (name: string, host: number, zmqPort?: number): string =>
  `  - {name: ${name}, address: 127.0.0.${host}, port: 8001${
    zmqPort === undefined ? '' : `, kvEvents: {endpoint: "tcp://127.0.0.1:${zmqPort}"}`
  }}\n`;

describe.skipIf(!BIN)('serve: KV event sources across endpoint-file edits', () => {
  it('subscribes each ZMQ publisher once when two edits follow at once (NATS mode)', async () => {
    const nats: NatsServer = await startNatsServer({ jetstream: false });
    cleanup.push(() => nats.stop());
    const eps = endpointsFile();
    eps.write(`endpoints:\n${ep('a', 2)}${ep('b', 3)}`);
    const log = new RecordingLogger();
    const s: Serving = await startServing(
      [...BASE, '--endpoints-file', eps.file, '--nats-server', nats.url, '--kv-events'],
      { KV_EPP_POOL_SIZE: '0' },
      log,
    );
    cleanup.push(() => s.close());
    // The first publishers (the ZMQ set starts), and at once a second one.
    eps.write(`endpoints:\n${ep('a', 2, 45502)}${ep('b', 3)}`);
    await s.reloadEndpoints();
    eps.write(`endpoints:\n${ep('a', 2, 45502)}${ep('b', 3, 45503)}`);
    await s.reloadEndpoints();
    const zmq = (msg: string) =>
      log.records.filter((r) => r.msg.startsWith(msg)).map((r) => String(r.fields.endpoint));
    await poll('both subscribed', () => (zmq('subscribing').length >= 2 ? true : undefined), 5000);
    // Then none: each is closed once, and nothing is left subscribed.
    eps.write(`endpoints:\n${ep('a', 2)}${ep('b', 3)}`);
    await s.reloadEndpoints();
    await poll('both closed', () => (zmq('unsubscribed').length >= 2 ? true : undefined), 5000);
    await new Promise((r) => setTimeout(r, 300));
    expect(zmq('subscribing').sort()).toEqual(['tcp://127.0.0.1:45502', 'tcp://127.0.0.1:45503']);
    expect(zmq('unsubscribed').sort()).toEqual(['tcp://127.0.0.1:45502', 'tcp://127.0.0.1:45503']);
  });

  it('warns when an edit names kvEvents publishers but events were off at start-up', async () => {
    const eps = endpointsFile();
    eps.write(`endpoints:\n${ep('a', 2)}`);
    const log = new RecordingLogger();
    const s = await startServing(
      [...BASE, '--endpoints-file', eps.file],
      { KV_EPP_POOL_SIZE: '0' },
      log,
    );
    cleanup.push(() => s.close());
    expect(s.ingest).toBeUndefined(); // approximate routing
    eps.write(`endpoints:\n${ep('a', 2, 45504)}`);
    expect(await s.reloadEndpoints()).toBe(true);
    await poll(
      'the warning',
      () =>
        log.records.some((r) => r.level === 'warn' && /restart kv-epp/.test(r.msg))
          ? true
          : undefined,
      2000,
    );
    const warning = log.records.find((r) => /restart kv-epp/.test(r.msg));
    expect(warning?.fields).toEqual({ endpoints: ['a'] });
  });
});
