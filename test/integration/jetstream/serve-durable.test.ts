/**
 * `kv-epp serve --durable-kv-events`: the served index is fed from Dynamo's
 * JetStream stream (JSON RouterEvents published to `{stream}.queue`), and a
 * restarted EPP rebuilds the same index from the retained stream.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstream } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { type Serving, startServing } from '../../../src/cli/serve.js';
import { kvQueueSubject, kvStreamName } from '../../../src/events/jetstream-names.js';
import { createBlockHasher } from '../../../src/kv/factory.js';
import { RecordingLogger } from '../../support/ext-proc.js';
import { findNatsServer, type NatsServer, startNatsServer } from '../../support/nats-server.js';

const BIN = findNatsServer();
if (!BIN && process.env.KV_EPP_REQUIRE_NATS === '1') {
  throw new Error('KV_EPP_REQUIRE_NATS=1 but no nats-server');
}

const WORKER = 18446744073709551557n; // above 2^63: must survive the JSON path
const TOKENS = Uint32Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);

describe.skipIf(!BIN)('serve --durable-kv-events (JetStream)', () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let dir: string;
  const running: Serving[] = [];

  beforeAll(async () => {
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    dir = mkdtempSync(join(tmpdir(), 'kv-epp-durable-'));
  });

  afterAll(async () => {
    for (const s of running) await s.close();
    await nc?.close();
    await nats?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function serve(): Promise<Serving> {
    const file = join(dir, 'endpoints.yaml');
    writeFileSync(
      file,
      `endpoints:\n  - { name: w, address: 127.0.0.2, port: 8000, workerId: "${WORKER}" }\n`,
    );
    const s = await startServing(
      [
        '--endpoints-file',
        file,
        '--secure-serving=false',
        '--grpc-port=0',
        '--grpc-health-port=0',
        '--metrics-port=0',
        '--host=127.0.0.1',
        '--block-size=4',
        '--durable-kv-events=true',
        '--consumer-name=epp-test',
      ],
      { KV_EPP_POOL_SIZE: '0', NATS_SERVER: nats.url, DYN_NAMESPACE: 'ns' },
      new RecordingLogger(),
    );
    running.push(s);
    return s;
  }

  async function depth(s: Serving, local: BigUint64Array, want: number): Promise<void> {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const r = s.index.findMatches(local, false);
      const got = r.workers[0]?.workerId === WORKER ? (r.blocks[0] ?? 0) : 0;
      if (got === want) return;
      if (Date.now() > deadline) throw new Error(`overlap ${got}, want ${want}`);
      await new Promise((res) => setTimeout(res, 20));
    }
  }

  it('applies stream events and rebuilds them after an EPP restart', async () => {
    const hasher = await createBlockHasher('native');
    const { local } = hasher.hash(TOKENS, 4);
    const s1 = await serve();
    const js = jetstream(nc);
    const subject = kvQueueSubject(kvStreamName('ns', 'backend'));
    // Hand-written JSON: u64 values as digits, never through a JS number.
    const blocks = [...local].map(
      (h, i) => `{"block_hash":${1000n + BigInt(i)},"tokens_hash":${h}}`,
    );
    const stored = (id: number, parent: string, b: string[]) =>
      `{"worker_id":${WORKER},"storage_tier":"device","event":{"event_id":${id},"data":{"stored":{"parent_hash":${parent},"blocks":[${b.join(',')}]}},"dp_rank":0}}`;
    await js.publish(subject, stored(1, 'null', blocks.slice(0, 2)));
    await depth(s1, local, 2);
    await js.publish(subject, stored(2, '1001', blocks.slice(2)));
    await depth(s1, local, 3);

    await s1.close();
    running.splice(running.indexOf(s1), 1);
    const s2 = await serve();
    await depth(s2, local, 3);
  });
});
