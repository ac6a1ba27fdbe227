/**
 * Dynamo's ZMQ event plane (`DYN_EVENT_PLANE=zmq`) into kv-epp, against
 * Dynamo 1.6.1 itself: a direct-mode `KvEventPublisher` on a runtime with
 * `event_plane="zmq"` (file discovery names its PUB socket) publishes stores
 * (signed hash inputs, a parent chain, a partial last block, a LoRA name, a
 * cache salt) and a removal. kv-epp subscribes with `format: dynamo` (4 frames:
 * topic, publisher id, sequence, 0x01 + u32 length + envelope); a raw SUB in
 * the Python process sees the same messages and feeds Dynamo's RadixTree. The
 * overlaps must be equal.
 *
 * Slow joiners: the script re-publishes a sentinel store until kv-epp's index
 * holds it and the script's own SUB has seen it; only then does it publish
 * the scenario, and an end marker tells both sides it is complete.
 * Skipped with a reason when the .venv-tools Python (ai-dynamo-runtime, pyzmq,
 * msgspec) or zeromq is missing, unless KV_EPP_REQUIRE_DYNAMO=1.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEventApplier } from '../../../src/events/factory.js';
import { EventIngest } from '../../../src/events/ingest.js';
import { startZmqEventSources } from '../../../src/events/zmq-source.js';
import { createBlockHasher, createKvIndex } from '../../../src/kv/factory.js';
import type { KvIndex } from '../../../src/kv/types.js';
import { RecordingLogger } from '../../support/ext-proc.js';
import {
  dynamoEnv,
  findToolsPython,
  type OracleQuery,
  parseOracle,
  startDynamoZmqPlane,
} from '../../support/vllm-publisher.js';

let zmqError = '';
try {
  await import('zeromq');
} catch (e) {
  zmqError = (e as Error).message;
}
const tools = findToolsPython();
const missing = [
  zmqError && `zeromq: ${zmqError}`,
  !(tools.publisher && tools.dynamo) && (tools.reason || 'no Dynamo Python'),
]
  .filter(Boolean)
  .join('; ');
if (missing) {
  if (process.env.KV_EPP_REQUIRE_DYNAMO === '1') {
    throw new Error(`KV_EPP_REQUIRE_DYNAMO=1 but ${missing}`);
  }
  console.warn(`[zmq dynamo-zmq-plane] SKIPPED: ${missing}`);
}

const BLOCK = 4;
/** Above 2^63: exact end to end. */
const WORKER = 18_446_744_073_709_551_557n;
const DP_RANK = 1;
const T = Array.from({ length: 24 }, (_, i) => 500 + i);
const SENTINEL = { tokens: [9000, 9001, 9002, 9003], hash: '1000' };
const END = { tokens: [9100, 9101, 9102, 9103], hash: '1001' };
const QUERIES: OracleQuery[] = [
  { name: 'plain', tokens: T, blockSize: BLOCK },
  { name: 'lora', tokens: T, blockSize: BLOCK, loraName: 'adapter-x' },
  { name: 'salt', tokens: T, blockSize: BLOCK, cacheNamespace: 'tenant-a' },
];

type Score = { workerId: bigint; dpRank: number; blocks: number };
function scoresOf(index: KvIndex, local: bigint[]): Score[] {
  const r = index.findMatches(BigUint64Array.from(local), false);
  return r.workers.map((w, i) => ({
    workerId: w.workerId,
    dpRank: w.dpRank,
    blocks: r.blocks[i] as number,
  }));
}

async function poll(cond: () => boolean, what: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

let work: string;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'kv-epp-zmqplane-'));
});
afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

describe.skipIf(missing !== '')(
  missing
    ? `Dynamo ZMQ event plane → kv-epp (SKIPPED: ${missing})`
    : 'Dynamo ZMQ event plane → kv-epp',
  () => {
    it("applies Dynamo's 4-frame messages as Dynamo's RadixTree does", async () => {
      const index = await createKvIndex('native');
      const applier = await createEventApplier(index, { blockSize: BLOCK });
      const log = new RecordingLogger();
      const ingest = new EventIngest({ applier, log, now: Date.now, schedule: setImmediate });
      const hasher = await createBlockHasher('native');
      const local = (tokens: number[]) => [...hasher.hash(Uint32Array.from(tokens), BLOCK).local];
      const dir = join(work, 'plane');
      const { proc, endpoint } = await startDynamoZmqPlane(
        {
          endpoint: 'kvepp.zmqplane.ep',
          workerId: WORKER,
          dpRank: DP_RANK,
          blockSize: BLOCK,
          sentinel: SENTINEL,
          end: END,
          queries: QUERIES,
          calls: [
            // Signed inputs, as the Python API takes them (-5 is 2^64-5 on the wire).
            {
              op: 'stored',
              tokens: T.slice(0, 12),
              numBlockTokens: [4, 4, 4],
              blockHashes: ['-5', '-6', '7'],
            },
            {
              op: 'stored',
              tokens: T.slice(12, 16),
              numBlockTokens: [4],
              blockHashes: ['8'],
              parentHash: '7',
            },
            // The partial last block is dropped by Dynamo's publisher.
            {
              op: 'stored',
              tokens: T.slice(16, 22),
              numBlockTokens: [4, 2],
              blockHashes: ['9', '10'],
              parentHash: '8',
            },
            {
              op: 'stored',
              tokens: T.slice(0, 8),
              numBlockTokens: [4, 4],
              blockHashes: ['20', '21'],
              loraName: 'adapter-x',
            },
            {
              op: 'stored',
              tokens: T.slice(0, 8),
              numBlockTokens: [4, 4],
              blockHashes: ['30', '31'],
              cacheSalt: 'tenant-a',
            },
            { op: 'removed', blockHashes: ['9'] },
          ],
        },
        dir,
        dynamoEnv(dir),
      );
      const sources = await startZmqEventSources({
        endpoints: [
          {
            address: '127.0.0.1',
            port: 8000,
            hostPort: '127.0.0.1:8000',
            name: 'dynamo-worker',
            workerId: WORKER,
            dpRank: DP_RANK,
            role: 'aggregated',
            labels: {},
            kvEvents: { endpoint, format: 'dynamo' },
          },
        ],
        ingest,
        log,
      });
      const holds = (tokens: number[]) => {
        ingest.drainAll();
        return scoresOf(index, local(tokens)).length === 1;
      };
      try {
        await poll(() => holds(SENTINEL.tokens), 'the sentinel in kv-epp');
        proc.send('go');
        const result = parseOracle(await proc.waitFor('result'));
        const raw = proc.lines.find((l) => l.event === 'result') as Record<string, unknown>;
        expect(raw.frame_counts).toEqual([4]);
        expect(raw.topics).toEqual(['kv-events']);
        await poll(() => holds(END.tokens), 'the end marker in kv-epp');
        expect(result.errors).toEqual({});

        const expected: Record<string, number> = { plain: 4, lora: 2, salt: 2 };
        for (const q of QUERIES) {
          const o = result.queries.find((x) => x.name === q.name);
          if (!o) throw new Error(`no oracle answer for ${q.name}`);
          expect(scoresOf(index, o.localHashes), q.name).toEqual(o.scores);
          expect(o.scores, `${q.name}: Dynamo`).toEqual([
            { workerId: WORKER, dpRank: DP_RANK, blocks: expected[q.name] },
          ]);
        }
        const st = sources.stats();
        expect(st.malformed).toBe(0);
        expect(st.sources[0]).toMatchObject({ format: 'dynamo', otherTopic: 0, connected: true });
      } finally {
        await sources.close();
        await proc.close();
        applier.dispose();
        index.dispose();
      }
    }, 120_000);
  },
);
