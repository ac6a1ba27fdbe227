/**
 * `kv-epp serve` with ZMQ KV events and no NATS: an endpoint's `kvEvents`
 * alone turns events on (no approximate mode), the engine's batches reach the
 * index, and `--kv-events=true` without any source fails naming the field.
 * The engine is an in-process XPUB that sends once kv-epp has subscribed.
 * Skipped with a reason when zeromq cannot be loaded, unless
 * KV_EPP_REQUIRE_DYNAMO=1.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Serving, startServing } from '../../../src/cli/serve.js';
import { resolveServeOptions, resolveUseKvEvents } from '../../../src/config/serve-options.js';
import { createBlockHasher } from '../../../src/kv/factory.js';
import { RecordingLogger } from '../../support/ext-proc.js';

type Zmq = typeof import('zeromq');
let zmq: Zmq | undefined;
let loadError = '';
try {
  zmq = await import('zeromq');
} catch (e) {
  loadError = (e as Error).message;
}
const SKIP_REASON = `zeromq cannot be loaded (${loadError})`;
if (!zmq) {
  if (process.env.KV_EPP_REQUIRE_DYNAMO === '1') {
    throw new Error(`KV_EPP_REQUIRE_DYNAMO=1 but ${SKIP_REASON}`);
  }
  console.warn(`[serve-zmq] SKIPPED: ${SKIP_REASON}`);
}

/**
 * One vLLM 0.33 batch, as test/support/vllm_publisher.py encodes it:
 * `[1.5, [{type: BlockStored, block_hashes: [2^64-1], parent_block_hash: nil,
 * token_ids: [11, 12, 13, 14], block_size: 4, lora_id: nil, medium: "GPU",
 * lora_name: nil}], 0]`.
 */
const BATCH = Buffer.from(
  '93cb3ff800000000000091de0008a474797065ab426c6f636b53746f726564ac626c6f636b5f686173686573' +
    '91cfffffffffffffffffb1706172656e745f626c6f636b5f68617368c0a9746f6b656e5f696473940b0c0d0e' +
    'aa626c6f636b5f73697a6504a76c6f72615f6964c0a66d656469756da3475055a96c6f72615f6e616d65c000',
  'hex',
);
const WORKER = 18_446_744_073_709_551_000n;

let dir: string;
const running: Serving[] = [];
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'kv-epp-serve-zmq-'));
});
afterAll(async () => {
  await Promise.all(running.map((s) => s.close()));
  rmSync(dir, { recursive: true, force: true });
});

function args(endpointsFile: string, ...extra: string[]): string[] {
  return [
    '--endpoints-file',
    endpointsFile,
    '--secure-serving=false',
    '--grpc-port=0',
    '--grpc-health-port=0',
    '--metrics-port=0',
    '--host=127.0.0.1',
    '--block-size=4',
    ...extra,
  ];
}

describe.skipIf(!zmq)(
  zmq ? 'serve with ZMQ KV events' : `serve with ZMQ KV events (SKIPPED: ${SKIP_REASON})`,
  () => {
    it('turns events on for endpoints with kvEvents and fills the index, without NATS', async () => {
      const Z = zmq as Zmq;
      const pub = new Z.XPublisher({ verbosity: 'allSubs', linger: 0 });
      await pub.bind('tcp://127.0.0.1:*');
      try {
        const file = join(dir, 'endpoints.yaml');
        writeFileSync(
          file,
          [
            'endpoints:',
            '  - name: engine-0',
            '    address: 127.0.0.2',
            '    port: 8000',
            `    workerId: "${WORKER}"`,
            `    kvEvents: { endpoint: "${pub.lastEndpoint}", format: vllm }`,
            '  - name: engine-1',
            '    address: 127.0.0.3',
            '    port: 8000',
            '',
          ].join('\n'),
        );
        const s = await startServing(args(file), { KV_EPP_POOL_SIZE: '0' }, new RecordingLogger());
        running.push(s);
        expect(s.ingest).toBeDefined();
        const [sub] = await pub.receive();
        expect(sub?.[0]).toBe(1);
        await pub.send([Buffer.alloc(0), Buffer.alloc(8), BATCH]);
        const hasher = await createBlockHasher('native');
        const local = hasher.hash(Uint32Array.from([11, 12, 13, 14]), 4).local;
        const deadline = Date.now() + 10_000;
        for (;;) {
          const r = s.index.findMatches(local, false);
          if (r.workers.length > 0) {
            expect(r.workers).toEqual([{ workerId: WORKER, dpRank: 0 }]);
            expect(r.blocks).toEqual([1]);
            break;
          }
          if (Date.now() > deadline) throw new Error('the ZMQ batch never reached the index');
          await new Promise((res) => setTimeout(res, 10));
        }
        const text = await (await fetch(`http://127.0.0.1:${s.metrics.port}/metrics`)).text();
        expect(text).toMatch(/^kv_epp_events_applied_total\{kind="stored"\} 1$/m);
        expect(text).toMatch(/^kv_epp_events_zmq_publishers\{state="connected"\} 1$/m);
        expect(text).toMatch(/^kv_epp_events_zmq_publishers\{state="not_connected"\} 0$/m);
        await s.close();
        running.splice(running.indexOf(s), 1);
      } finally {
        pub.close();
      }
    });

    it('keeps approximate routing when events are turned off', async () => {
      const file = join(dir, 'off.yaml');
      writeFileSync(
        file,
        'endpoints:\n  - { name: e, address: 127.0.0.2, port: 8000, kvEvents: { endpoint: "tcp://127.0.0.1:1" } }\n',
      );
      const s = await startServing(
        args(file, '--kv-events=false'),
        { KV_EPP_POOL_SIZE: '0' },
        new RecordingLogger(),
      );
      running.push(s);
      expect(s.ingest).toBeUndefined();
    });

    it('fails start-up when --kv-events=true has no source, naming the field', async () => {
      const file = join(dir, 'nosource.yaml');
      writeFileSync(file, 'endpoints:\n  - { name: e, address: 127.0.0.2, port: 8000 }\n');
      await expect(
        startServing(
          args(file, '--kv-events=true'),
          { KV_EPP_POOL_SIZE: '0' },
          new RecordingLogger(),
        ),
      ).rejects.toThrow(
        /^--kv-events: KV events need a source: set --nats-server \(NATS_SERVER\) or kvEvents on an endpoint/,
      );
    });
  },
);

describe('the KV-events switch once endpoints are known', () => {
  const zmqEndpoint = { kvEvents: { endpoint: 'tcp://127.0.0.1:5557', format: 'vllm' } };
  const nats = { NATS_SERVER: 'nats://127.0.0.1:4222' };
  const file = { 'endpoints-file': 'endpoints.yaml' };

  it('defaults to on when NATS is configured or an endpoint publishes over ZMQ', () => {
    expect(resolveUseKvEvents(resolveServeOptions(file, {}), [{}])).toBe(false);
    expect(resolveUseKvEvents(resolveServeOptions(file, {}), [{}, zmqEndpoint])).toBe(true);
    expect(resolveUseKvEvents(resolveServeOptions(file, nats), [{}])).toBe(true);
  });

  it('follows an explicit setting, which needs a source when on', () => {
    const off = resolveServeOptions({ ...file, 'kv-events': 'false' }, nats);
    expect(off.kvEventsSetBy).toBe('--kv-events');
    expect(resolveUseKvEvents(off, [zmqEndpoint])).toBe(false);
    const on = resolveServeOptions(file, { DYN_ROUTER_USE_KV_EVENTS: 'true' });
    expect(resolveUseKvEvents(on, [zmqEndpoint])).toBe(true);
    expect(() => resolveUseKvEvents(on, [{}])).toThrow(
      /^DYN_ROUTER_USE_KV_EVENTS: KV events need a source/,
    );
    // Without any endpoint list, an explicit "on" without NATS fails while resolving options.
    expect(() => resolveServeOptions({ 'kv-events': 'true' }, {})).toThrow(
      /^--kv-events: KV events need a source/,
    );
    expect(resolveServeOptions({}, {}).kvEventsSetBy).toBeUndefined();
  });
});
