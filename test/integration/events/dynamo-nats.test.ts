/**
 * Interop with Dynamo 1.6.1's real KV-event publishers over core NATS:
 *
 *   Dynamo KvEventPublisher (ai-dynamo-runtime, file discovery, NATS event plane)
 *   or Dynamo's mocker engine (stored + LRU-evicted blocks under load)
 *       │ namespace.<ns>.component.<c>.endpoint.<e>.kv-events (msgpack envelopes)
 *       ▼
 *   real nats-server ──▶ kv-epp (`startServing` with NATS_SERVER, in process)
 *                    └─▶ a capture subscriber (nats.js, raw bytes)
 *
 * The oracle is Dynamo's own `RadixTree` from the same wheel, fed the exact
 * bytes kv-epp applied (test/support/dynamo_events.py radix). kv-epp's
 * overlap for every query, for every root-to-block path of RadixTree's dump,
 * and which stored hashes each holder can still extend must equal
 * RadixTree's; tree sizes are checked against its dump (RadixTree exposes no
 * per-worker size). Worker ids and block hashes above 2^63 are used
 * throughout (the Python API takes hashes as signed i64; they arrive as
 * msgpack uint64).
 *
 * Recovery: nats-server is SIGKILLed and started again mid-stream, with
 * events published while it is down. Whether those reach anyone depends on
 * Dynamo's NATS client (async-nats 0.49): publishes made before it notices
 * the dead connection were lost in every run here; later ones are buffered
 * and flushed after it reconnects. That outcome is reported, not asserted.
 * A loss is then made certain by keeping kv-epp away (a loopback TCP gate
 * between kv-epp and NATS) across a second restart while events are
 * published to the others. kv-epp must reconnect, count the gaps, and end up
 * equal to RadixTree fed exactly the delivered bytes under Dynamo's router
 * stream rules (an event-id gap clears the holder, then applies the event:
 * `ResetDegraded`, dynamo-llm 1.6.1 worker_query_state.rs).
 *
 * Skipped with a reason unless Dynamo (.venv-tools) and nats-server are
 * installed; KV_EPP_REQUIRE_DYNAMO=1 or KV_EPP_REQUIRE_NATS=1 makes that a failure.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { eventsCommand } from '../../../src/cli/events.js';
import { type Serving, startServing } from '../../../src/cli/serve.js';
import { createBlockHasher } from '../../../src/kv/factory.js';
import type { BlockHasher } from '../../../src/kv/types.js';
import { type DynamoStack, freePort, startDynamo } from '../../support/dynamo.js';
import { httpCall } from '../../support/http-client.js';
import { type NatsServer, startNatsServer } from '../../support/nats-server.js';
import {
  type Comparison,
  compareWithDynamo,
  describeComparison,
  dynamoAndNats,
  hex,
  IngestTap,
  metric,
  metricsText,
  NatsCapture,
  type OracleQuery,
  PublisherDriver,
  poll,
  QuietLogger,
  runOracle,
  rustClientConnected,
  subscribed,
  TcpGate,
} from './support.js';

const { python: PYTHON, missing } = dynamoAndNats('dynamo events');
const python = () => PYTHON as string;

const ALL_KV_EVENTS = 'namespace.*.component.*.endpoint.*.kv-events';
const NS = 'kvepptest';
const KVEPP_SUBJECT = `namespace.${NS}.component.*.endpoint.*.kv-events`;
const BS = 4;
/** Worker ids: above 2^63 (A, B) and small (C). */
const A = (1n << 64n) - 5n;
const B = (1n << 63n) + 0x1234n;
const C = 7n;
/** Marker blocks (one stored block each, hash above 2^63): "everything before this arrived". */
const marker = (phase: number, w: number) => 0xc0ff_ee00_0000_0000n + BigInt(phase * 16 + w);

const timings: Record<string, number> = {};
const report: string[] = [];
let hasher: BlockHasher;
let work: string;

/** Deterministic pseudo-random token ids (xorshift), in [1, 50000]. */
function toks(seed: number, n: number): number[] {
  let x = (seed * 2654435761) >>> 0 || 1;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out.push(1 + (x % 50000));
  }
  return out;
}

/** Dynamo sequence hashes of `tokens` (what an engine would publish as `block_hash`), as strings. */
function seq(tokens: number[], o: { lora?: string; ns?: string } = {}): string[] {
  return [
    ...hasher.hash(Uint32Array.from(tokens), BS, { loraName: o.lora, cacheNamespace: o.ns })
      .sequence,
  ].map(String);
}

/** A stored step: `tokens` continue `prefix` (whose last block is the parent). */
function stored(
  worker: string,
  prefix: number[],
  tokens: number[],
  o: { lora?: string; ns?: string } = {},
): Record<string, unknown> {
  const all = seq([...prefix, ...tokens], o);
  const first = prefix.length / BS;
  return {
    op: 'stored',
    worker,
    token_ids: tokens,
    block_hashes: all.slice(first, first + Math.floor(tokens.length / BS)),
    parent_hash: first === 0 ? null : all[first - 1],
    ...(o.lora ? { lora_name: o.lora } : {}),
    ...(o.ns ? { cache_salt: o.ns } : {}),
  };
}

function markerStep(worker: string, phase: number, w: number): Record<string, unknown> {
  return {
    op: 'stored',
    worker,
    token_ids: toks(9000 + phase * 16 + w, BS),
    block_hashes: [marker(phase, w).toString()],
    parent_hash: null,
  };
}

interface Kv {
  serving: Serving;
  tap: IngestTap;
  log: QuietLogger;
}

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await Promise.resolve(c()).catch(() => {});
});

async function startKvEpp(
  natsUrl: string,
  endpoints: Array<{ name: string; workerId: bigint; dpRank: number; address: string }>,
  o: { blockSize: number; namespace?: string },
): Promise<Kv> {
  const file = join(work, `endpoints-${Date.now()}-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(
    file,
    `endpoints:\n${endpoints
      .map(
        (e) =>
          `  - name: ${e.name}\n    address: ${e.address}\n    port: 8001\n    workerId: "${e.workerId}"\n    dpRank: ${e.dpRank}\n`,
      )
      .join('')}`,
  );
  const log = new QuietLogger();
  const t0 = Date.now();
  const serving = await startServing(
    [
      '--endpoints-file',
      file,
      '--secure-serving=false',
      '--grpc-port=0',
      '--grpc-health-port=0',
      '--metrics-port=0',
      '--host=127.0.0.1',
      '--block-size',
      String(o.blockSize),
      ...(o.namespace ? ['--namespace', o.namespace] : []),
    ],
    { NATS_SERVER: natsUrl, KV_EPP_POOL_SIZE: '0' },
    log,
  );
  cleanups.push(() => serving.close());
  onTestFailed(() => console.log(`--- kv-epp log:\n${log.lines.slice(-200).join('\n')}`));
  timings['kv-epp serve'] = Date.now() - t0;
  if (!serving.ingest) throw new Error('kv-epp started without KV events');
  return { serving, tap: new IngestTap(serving.ingest), log };
}

async function startNats(monitor = false): Promise<{ nats: NatsServer; monitorPort: number }> {
  const monitorPort = monitor ? await freePort() : 0;
  const t0 = Date.now();
  const nats = await startNatsServer({
    jetstream: false,
    args: monitor ? ['-m', String(monitorPort)] : [],
  });
  cleanups.push(() => nats.stop());
  timings['nats-server'] = Date.now() - t0;
  return { nats, monitorPort };
}

function expectSame(c: Comparison, label: string): void {
  const detail = `${label}\n${describeComparison(c)}\npaths: ${JSON.stringify(c.pathMismatches.slice(0, 5))}\nholders: ${JSON.stringify(c.holders)}\nprobes: ${JSON.stringify(c.probeMismatches)}`;
  expect(c.localHashMismatches, detail).toEqual([]);
  for (const q of c.queries)
    expect(q.kvEpp, `${label} query ${q.name}\n${detail}`).toEqual(q.dynamo);
  expect(c.pathMismatches, detail).toEqual([]);
  expect(c.probeMismatches, detail).toEqual([]);
  expect(c.oracle.unresolved_dump_events).toBe(0);
  for (const h of c.holders) {
    expect(h.replayTreeSize, `${h.holder}: live vs replayed\n${detail}`).toBe(h.treeSize);
    // The blocks RadixTree's dump emits for the holder = kv-epp's tree size.
    expect(h.treeSize, `${h.holder}: tree size vs RadixTree dump\n${detail}`).toBe(h.dynamoDumped);
  }
  expect(c.kvEppMemberships, detail).toBe(c.holders.reduce((n, h) => n + h.treeSize, 0));
}

/** Holders with nothing stale: every block reachable and extendable. */
function expectPlainCounts(c: Comparison): void {
  for (const h of c.holders) {
    expect([h.treeSize, h.dynamoDumped, h.dynamoReachable, h.dynamoUsable], h.holder).toEqual([
      h.treeSize,
      h.treeSize,
      h.treeSize,
      h.treeSize,
    ]);
  }
}

beforeAll(async () => {
  if (missing.length > 0) return;
  hasher = await createBlockHasher('native');
  work = mkdtempSync(join(tmpdir(), 'kv-epp-dynevents-'));
});

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
  if (missing.length === 0) {
    console.log(`[dynamo events] timings (ms): ${JSON.stringify(timings)}\n${report.join('\n')}`);
  }
});

describe.skipIf(missing.length > 0)('kv-epp vs Dynamo 1.6.1 KV events over NATS', () => {
  it('KvEventPublisher: stored/removed/batch, LoRA and cache salt, u64 above 2^63 → same overlap as RadixTree', async () => {
    const { nats, monitorPort } = await startNats(true);
    const capture = await NatsCapture.start(nats.url, ALL_KV_EVENTS);
    cleanups.push(() => capture.close());
    const kv = await startKvEpp(
      nats.url,
      [
        { name: 'worker-a', workerId: A, dpRank: 0, address: '127.0.0.2' },
        { name: 'worker-b', workerId: B, dpRank: 1, address: '127.0.0.3' },
        { name: 'worker-c', workerId: C, dpRank: 0, address: '127.0.0.4' },
      ],
      { blockSize: BS, namespace: NS },
    );
    await poll('kv-epp subscribed on NATS', async () =>
      (await subscribed(monitorPort, 'kv-epp', KVEPP_SUBJECT)) ? true : undefined,
    );

    const S = toks(1, 16);
    const X1 = toks(2, 8);
    const X2 = toks(3, 12);
    const X3 = toks(4, 8);
    const sHashes = seq(S);
    const salted = seq([...S, ...X2], { ns: 'tenant-x' });
    // Segments in a fixed order: each ends with a marker block per worker that
    // published in it, and the next starts only once those reached kv-epp and the
    // capture (messages of different publishers interleave arbitrarily otherwise,
    // and the tree's shape, hence its dump, depends on that order).
    const W = { a: 0, b: 1, c: 2 } as const;
    const segments: Array<{ steps: Array<Record<string, unknown>>; by: Array<keyof typeof W> }> = [
      { steps: [stored('a', [], [...S, ...X1])], by: ['a'] },
      { steps: [stored('b', [], S), stored('b', S, X2)], by: ['b'] },
      {
        steps: [
          {
            op: 'batch',
            worker: 'a',
            events: [
              { type: 'stored', ...stored('a', S, X3) },
              { type: 'removed', block_hashes: [seq([...S, ...X1])[5]] },
            ],
          },
        ],
        by: ['a'],
      },
      {
        steps: [
          stored('c', [], S, { lora: 'adapter-1' }),
          stored('c', [], [...S, ...X2], { ns: 'tenant-x' }),
        ],
        by: ['c'],
      },
      {
        steps: [
          // A partial trailing block: the publisher drops it (14 tokens = 3 full blocks).
          {
            ...stored('a', [...S, ...X1.slice(0, 4)], X2),
            token_ids: [...X2, 11, 12],
            num_block_tokens: [4, 4, 4, 2],
            block_hashes: [...seq([...S, ...X1.slice(0, 4), ...X2]).slice(5, 8), '77'],
          },
          // Unknown block removed, unknown parent: both refused by RadixTree.
          { op: 'removed', worker: 'b', block_hashes: ['16045690984503098046'] },
          { ...stored('b', [], X3), parent_hash: '12345678901234567890' },
        ],
        by: ['a', 'b'],
      },
      // A loses a middle block of S (B still holds S).
      { steps: [{ op: 'removed', worker: 'a', block_hashes: [sHashes[2]] }], by: ['a'] },
      {
        steps: [
          // The same tokens under other external hashes than A's and B's: RadixTree
          // keeps the first holder's hashes on the node, so C's child store finds no parent.
          {
            ...stored('c', [], S),
            block_hashes: sHashes.map((h) => (BigInt(h) ^ 1n).toString()),
          },
          { ...stored('c', S, X1), parent_hash: (BigInt(sHashes[3] as string) ^ 1n).toString() },
          // B drops X2 and stores it again, in one batch.
          {
            op: 'batch',
            worker: 'b',
            events: [
              { type: 'removed', block_hashes: seq([...S, ...X2]).slice(4) },
              { type: 'stored', ...stored('b', S, X2) },
            ],
          },
          { op: 'removed', worker: 'c', block_hashes: [salted[6]] },
        ],
        by: ['b', 'c'],
      },
    ];
    const scenario = {
      endpoint: `${NS}.backend.generate`,
      workers: [
        { name: 'a', worker_id: A.toString(), block_size: BS },
        { name: 'b', worker_id: B.toString(), block_size: BS, dp_rank: 1 },
        { name: 'c', worker_id: C.toString(), block_size: BS },
      ],
      steps: segments.flatMap((seg, i) => [
        ...seg.steps,
        ...seg.by.map((w) => markerStep(w, i, W[w])),
        ...(i + 1 < segments.length ? [{ op: 'pause', name: `s${i}` }] : []),
      ]),
    };
    const t0 = Date.now();
    const driver = PublisherDriver.start(python(), scenario, nats.url, work, 'publisher');
    cleanups.push(() => driver.kill());
    onTestFailed(() => console.log(`--- publisher stderr:\n${driver.stderr().slice(-6000)}`));
    const ready = await driver.next('ready');
    expect(ready.subject).toBe(`namespace.${NS}.component.backend.endpoint.generate.kv-events`);
    timings['publisher runtime up'] = Date.now() - t0;
    for (const [i, seg] of segments.entries()) {
      await driver.next(
        i + 1 < segments.length ? 'paused' : 'done',
        i + 1 < segments.length ? `s${i}` : undefined,
      );
      const markers = seg.by.map((w) => marker(i, W[w]));
      await poll(
        `segment ${i} markers at kv-epp and the capture`,
        () => (markers.every((m) => kv.tap.has(m) && capture.has(m)) ? true : undefined),
        30_000,
        5,
        () => `tap=${kv.tap.messages.length} capture=${capture.messages.length}`,
      );
      if (i + 1 < segments.length) driver.resume();
    }
    timings['publisher scenario delivered'] = Date.now() - t0;

    // kv-epp received exactly what a plain subscriber received, byte for byte (NATS
    // orders messages per publishing connection only, so compare as multisets).
    expect(kv.tap.messages.map((m) => hex(m.payload)).sort()).toEqual(
      capture.messages.map((m) => hex(m.data)).sort(),
    );
    expect(kv.tap.messages.every((m) => m.codec === 'dynamo')).toBe(true);

    const queries: OracleQuery[] = [
      { name: 'S+X1', tokens: [...S, ...X1] },
      { name: 'S+X2', tokens: [...S, ...X2] },
      { name: 'S+X3', tokens: [...S, ...X3] },
      { name: 'S+X1[0]+X2', tokens: [...S, ...X1.slice(0, 4), ...X2, 11, 12] },
      { name: 'S', tokens: S },
      { name: 'S lora', tokens: S, lora_name: 'adapter-1' },
      { name: 'S+X2 salt', tokens: [...S, ...X2], cache_namespace: 'tenant-x' },
      {
        name: 'S+X2 lora+salt',
        tokens: [...S, ...X2],
        lora_name: 'adapter-1',
        cache_namespace: 'tenant-x',
      },
      { name: 'unrelated', tokens: toks(50, 12) },
    ];
    const c = await compareWithDynamo({
      python: python(),
      serving: kv.serving,
      tap: kv.tap,
      hasher,
      blockSize: BS,
      queries,
      routerRules: true,
      holders: [
        { workerId: A, dpRank: 0 },
        { workerId: B, dpRank: 1 },
        { workerId: C, dpRank: 0 },
      ],
    });
    report.push(
      `publisher scenario (${c.applied.length} messages, ${c.oracle.events.length} events, ${c.pathsCompared} paths):\n${describeComparison(c)}`,
    );
    report.push(
      `  RadixTree applied ${JSON.stringify(c.oracle.applied)} rejected ${JSON.stringify(c.oracle.rejected)}\n  holders ${JSON.stringify(c.holders)}`,
    );
    expectSame(c, 'publisher scenario');
    const holder = (w: bigint, r: number) => {
      const h = c.holders.find((x) => x.holder === `${w}/${r}`);
      if (!h) throw new Error(`no holder ${w}/${r}`);
      return h;
    };
    // [tree size, RadixTree dump, reachable in the dump through own blocks, extendable].
    // B: nothing stale. A: after losing a middle block of S (B still holds S), A keeps
    // its entries below it, extendable, as Dynamo does (radix_tree.rs apply_removed,
    // "TODO(CORRECTNESS): … stale descendants can be reused as store parents"), and the
    // dump emits them under a parent A no longer has: only S[0..2] and its 4 marker
    // blocks are reachable. C: the four S blocks it stored under other hashes than the
    // node's are held (counted, dumped) but cannot be extended.
    const counts = (h: Comparison['holders'][number]) => [
      h.treeSize,
      h.dynamoDumped,
      h.dynamoReachable,
      h.dynamoUsable,
    ];
    expect(counts(holder(B, 1))).toEqual([10, 10, 10, 10]);
    expect(counts(holder(A, 0))).toEqual([12, 12, 6, 12]);
    expect(counts(holder(C, 0))).toEqual([16, 16, 16, 12]);

    // u64 above 2^63 arrive as u64 (worker ids and hashes), never sign-flipped.
    const ev = c.oracle.events;
    expect(new Set(ev.map((e) => e.worker_id))).toEqual(new Set([A, B, C].map(String)));
    expect(ev.filter((e) => e.worker_id === B.toString()).every((e) => e.dp_rank === 1)).toBe(true);
    const hashes = ev.flatMap((e) => e.block_hashes ?? []).map((h) => BigInt(h));
    expect(hashes.some((h) => h >= 1n << 63n)).toBe(true);
    expect(hashes.every((h) => h >= 0n && h < 1n << 64n)).toBe(true);
    expect(hashes).toContain(marker(0, W.a));
    const removedByA = ev
      .filter((e) => e.kind === 'removed' && e.worker_id === A.toString())
      .flatMap((e) => e.block_hashes ?? []);
    expect(removedByA).toContain(sHashes[2]);
    // Nothing trivially equal: the scenario has hits on every worker, and refusals.
    const hit = (name: string, w: bigint) =>
      c.queries.find((q) => q.name === name)?.dynamo.find((s) => s.worker_id === w.toString())
        ?.blocks ?? 0;
    expect(hit('S+X2', B)).toBe(7);
    expect(hit('S lora', C)).toBe(4);
    expect(hit('S+X2 salt', C)).toBe(6);
    expect(c.oracle.rejected).toEqual({ block_not_found: 1, parent_not_found: 2 });

    // `kv-epp events replay` on the same bytes prints the same overlap.
    const replayDir = join(work, 'replay');
    mkdirSync(replayDir, { recursive: true });
    c.applied.forEach((m, i) => {
      writeFileSync(join(replayDir, `${String(i).padStart(4, '0')}.bin`), m.payload);
    });
    writeFileSync(join(work, 'query.json'), JSON.stringify([...S, ...X2]));
    const printed = JSON.parse(
      await eventsCommand([
        'replay',
        ...['--codec', 'dynamo', '--block-size', String(BS)],
        ...['--query-tokens', join(work, 'query.json'), '--dir', replayDir],
      ]),
    ) as { overlap: Array<{ workerId: string; dpRank: number; blocks: number }> };
    expect(printed.overlap).toEqual(
      (c.queries.find((q) => q.name === 'S+X2')?.dynamo ?? []).map((x) => ({
        workerId: x.worker_id,
        dpRank: x.dp_rank,
        blocks: x.blocks,
      })),
    );

    // The same counts on kv-epp's /metrics.
    const text = await metricsText(kv.serving.metrics.port);
    const kinds = ['stored', 'removed', 'cleared'] as const;
    for (const k of kinds) {
      expect(metric(text, `kv_epp_events_applied_total{kind="${k}"}`) ?? 0, k).toBe(
        c.oracle.applied[k],
      );
    }
    for (const [reason, n] of Object.entries(c.oracle.rejected)) {
      expect(metric(text, `kv_epp_events_rejected_total{reason="${reason}"}`), reason).toBe(n);
    }
    expect(metric(text, 'kv_epp_events_messages_total')).toBe(c.applied.length);
    expect(metric(text, `kv_epp_index_worker_blocks{worker_id="${A}",dp_rank="0"}`)).toBe(
      kv.serving.index.treeSize({ workerId: A, dpRank: 0 }),
    );
    expect(await driver.finish()).toBe(0);
  });

  it('mocker engines under load (stored + LRU evictions) → same index as RadixTree', async () => {
    const { nats } = await startNats(false);
    const capture = await NatsCapture.start(nats.url, ALL_KV_EVENTS);
    cleanups.push(() => capture.close());
    const t0 = Date.now();
    const dyn: DynamoStack = await startDynamo(python(), {
      natsUrl: nats.url,
      workers: 2,
      blockSize: 16,
      numGpuBlocks: 40,
      speedupRatio: 100,
    });
    cleanups.push(() => dyn.stop());
    timings['dynamo frontend + 2 mockers'] = Date.now() - t0;
    const workers = dyn.workers.map((w) => BigInt(w.instanceId));
    const kv = await startKvEpp(
      nats.url,
      workers.map((id, i) => ({
        name: `mocker-${i}`,
        workerId: id,
        dpRank: 0,
        address: `127.0.0.${2 + i}`,
      })),
      { blockSize: 16 },
    );
    // Prompts: 3 shared system prefixes (4 blocks) × distinct user parts, sent
    // straight to the frontend with the worker chosen by header. 40 blocks per
    // mocker cannot hold them all, so older blocks are evicted.
    const prefixes = [toks(101, 64), toks(102, 64), toks(103, 64)];
    const prompts: Array<{ tokens: number[]; worker: number }> = [];
    for (let i = 0; i < 60; i++) {
      const p = prefixes[i % 3] as number[];
      prompts.push({ tokens: [...p, ...toks(200 + i, 40 + ((i * 17) % 70))], worker: i % 2 });
    }
    // Repeats: cache hits on the same worker (or re-stores after eviction).
    for (const i of [0, 1, 5, 12, 40, 41, 58, 59]) {
      prompts.push(prompts[i] as { tokens: number[]; worker: number });
    }
    const send = async (p: { tokens: number[]; worker: number }) => {
      const r = await httpCall({
        port: dyn.port,
        path: '/v1/chat/completions',
        headers: {
          'content-type': 'application/json',
          'x-dynamo-worker-instance-id': dyn.workers[p.worker]?.instanceId as string,
        },
        body: JSON.stringify({
          model: dyn.modelName,
          messages: [{ role: 'user', content: 'x' }],
          max_tokens: 6,
          nvext: { token_data: p.tokens },
        }),
      });
      if (r.status !== 200)
        throw new Error(`mocker request: HTTP ${r.status} ${r.body.slice(0, 300)}`);
    };
    const t1 = Date.now();
    // 8 requests in flight at a time (4 per mocker).
    for (let i = 0; i < prompts.length; i += 8) {
      await Promise.all(prompts.slice(i, i + 8).map(send));
    }
    timings[`${prompts.length} mocker requests`] = Date.now() - t1;
    // Let the last events land (correctness does not depend on it: the comparison
    // uses exactly the messages kv-epp applied, with the index frozen meanwhile).
    let last = -1;
    let since = Date.now();
    await poll(
      'KV events to settle',
      () => {
        const n = capture.messages.length;
        if (n !== last) {
          last = n;
          since = Date.now();
        }
        return Date.now() - since > 500 && kv.tap.messages.length === n && n > 0 ? true : undefined;
      },
      30_000,
      20,
    );
    timings['mocker events settled'] = Date.now() - t1;
    expect(kv.tap.messages.map((m) => hex(m.payload)).sort()).toEqual(
      capture.messages.map((m) => hex(m.data)).sort(),
    );
    const queries: OracleQuery[] = [
      ...prompts.map((p, i) => ({ name: `p${i}`, tokens: p.tokens })),
      ...prefixes.map((p, i) => ({ name: `prefix${i}`, tokens: p })),
    ];
    const c = await compareWithDynamo({
      python: python(),
      serving: kv.serving,
      tap: kv.tap,
      hasher,
      blockSize: 16,
      queries,
      routerRules: true,
      holders: workers.map((workerId) => ({ workerId, dpRank: 0 })),
    });
    const kinds = c.oracle.events.reduce<Record<string, number>>((m, e) => {
      m[e.kind] = (m[e.kind] ?? 0) + 1;
      return m;
    }, {});
    report.push(
      `mocker: ${c.applied.length} messages, events ${JSON.stringify(kinds)}, RadixTree applied ${JSON.stringify(c.oracle.applied)} rejected ${JSON.stringify(c.oracle.rejected)}, holders ${JSON.stringify(c.holders)}, ${c.pathsCompared} paths compared`,
    );
    expectSame(c, 'mocker');
    expectPlainCounts(c);
    expect(kinds.stored ?? 0).toBeGreaterThan(0);
    expect(kinds.removed ?? 0, 'LRU eviction produced removed events').toBeGreaterThan(0);
    expect(new Set(c.oracle.events.map((e) => e.worker_id))).toEqual(new Set(workers.map(String)));
    for (const w of workers) {
      expect(kv.serving.index.treeSize({ workerId: w, dpRank: 0 })).toBeGreaterThan(0);
      expect(kv.serving.index.treeSize({ workerId: w, dpRank: 0 })).toBeLessThanOrEqual(40);
    }
    // The last prompt sent to each worker is (at least partly) cached there.
    for (let w = 0; w < 2; w++) {
      const lastIdx = prompts.map((p) => p.worker).lastIndexOf(w);
      const q = c.queries[lastIdx];
      expect(
        q?.kvEpp.find((s) => s.worker_id === workers[w]?.toString())?.blocks ?? 0,
      ).toBeGreaterThan(0);
    }
    const text = await metricsText(kv.serving.metrics.port);
    expect(metric(text, 'kv_epp_events_applied_total{kind="removed"}')).toBe(
      c.oracle.applied.removed,
    );
    expect(metric(text, 'kv_epp_events_applied_total{kind="stored"}')).toBe(
      c.oracle.applied.stored,
    );
  }, 300_000);

  it('nats-server killed and restarted mid-stream: kv-epp reconnects, counts the gap, equals RadixTree fed the delivered events', async () => {
    const { nats, monitorPort } = await startNats(true);
    const gate = await TcpGate.start(nats.port);
    cleanups.push(() => gate.stop());
    const capture = await NatsCapture.start(nats.url, ALL_KV_EVENTS);
    cleanups.push(() => capture.close());
    const kv = await startKvEpp(
      gate.url,
      [
        { name: 'worker-a', workerId: A, dpRank: 0, address: '127.0.0.2' },
        { name: 'worker-c', workerId: C, dpRank: 0, address: '127.0.0.3' },
      ],
      { blockSize: BS, namespace: NS },
    );
    const kvEppSubscribed = async () =>
      (await subscribed(monitorPort, 'kv-epp', KVEPP_SUBJECT)) ? true : undefined;
    const captureSubscribed = async () =>
      (await subscribed(monitorPort, 'kv-epp-test-capture', ALL_KV_EVENTS)) ? true : undefined;
    await poll('kv-epp subscribed', kvEppSubscribed);

    const S = toks(11, 16);
    const X = [toks(12, 8), toks(13, 8), toks(14, 8), toks(15, 8), toks(16, 8)];
    const phase = (p: number) => [markerStep('a', p, 0), markerStep('c', p, 1)];
    const scenario = {
      endpoint: `${NS}.backend.generate`,
      workers: [
        { name: 'a', worker_id: A.toString(), block_size: BS },
        { name: 'c', worker_id: C.toString(), block_size: BS },
      ],
      steps: [
        // 1: everyone connected.
        stored('a', [], [...S, ...(X[0] as number[])]),
        stored('c', [], [...S, ...(X[1] as number[])]),
        ...phase(1),
        { op: 'pause', name: 'p1' },
        // 2: published while nats-server is down (buffered by Dynamo's NATS client).
        stored('a', S, X[2] as number[]),
        { op: 'removed', worker: 'c', block_hashes: [seq([...S, ...(X[1] as number[])])[5]] },
        ...phase(2),
        { op: 'pause', name: 'p2' },
        // 3: after the restart, kv-epp resubscribed.
        stored('a', [], X[3] as number[]),
        stored('c', [], X[3] as number[]),
        ...phase(3),
        { op: 'pause', name: 'p3' },
        // 4: published while kv-epp is kept away (lost for kv-epp).
        stored('a', S, X[4] as number[]),
        stored('c', S, X[4] as number[]),
        ...phase(4),
        { op: 'pause', name: 'p4' },
        // 5: kv-epp back: the first event of each worker skips ids.
        stored('a', [], X[1] as number[]),
        stored('c', [], X[0] as number[]),
        ...phase(5),
      ],
    };
    const driver = PublisherDriver.start(python(), scenario, nats.url, work, 'recovery');
    cleanups.push(() => driver.kill());
    onTestFailed(() => console.log(`--- publisher stderr:\n${driver.stderr().slice(-6000)}`));
    const seen = (where: { has(m: bigint): boolean }, p: number) =>
      where.has(marker(p, 0)) && where.has(marker(p, 1));
    const delivered = (p: number, to: Array<{ has(m: bigint): boolean }>) =>
      poll(
        `phase ${p} markers`,
        () => (to.every((x) => seen(x, p)) ? true : undefined),
        30_000,
        10,
        () => `tap=${kv.tap.messages.length} capture=${capture.messages.length}`,
      );

    await driver.next('paused', 'p1');
    await delivered(1, [kv.tap, capture]);
    const before = kv.tap.messages.length;

    // Cycle 1: kill nats-server, publish while it is down, start it again.
    let t = Date.now();
    await nats.kill('SIGKILL');
    driver.resume();
    await driver.next('paused', 'p2');
    await nats.start(nats.port);
    await poll('kv-epp, the capture and the publisher back', async () =>
      (await kvEppSubscribed()) &&
      (await captureSubscribed()) &&
      (await rustClientConnected(monitorPort))
        ? true
        : undefined,
    );
    timings['restart 1: down → kv-epp resubscribed'] = Date.now() - t;
    driver.resume();
    await driver.next('paused', 'p3');
    await delivered(3, [kv.tap, capture]);
    expect(kv.tap.messages.length, 'messages keep arriving after the restart').toBeGreaterThan(
      before,
    );
    const phase2AtKvEpp = seen(kv.tap, 2);
    report.push(
      `recovery: events published while nats-server was down reached kv-epp: ${phase2AtKvEpp}, the capture: ${seen(capture, 2)}`,
    );

    // Cycle 2: kv-epp kept away across a restart while events are published.
    t = Date.now();
    gate.close();
    await nats.restart();
    await poll('the capture and the publisher back without kv-epp', async () =>
      (await captureSubscribed()) &&
      (await rustClientConnected(monitorPort)) &&
      !(await kvEppSubscribed())
        ? true
        : undefined,
    );
    driver.resume();
    await driver.next('paused', 'p4');
    await delivered(4, [capture]);
    expect(seen(kv.tap, 4)).toBe(false);
    gate.open = true;
    await poll('kv-epp resubscribed', kvEppSubscribed, 30_000);
    timings['restart 2: kv-epp away → resubscribed'] = Date.now() - t;
    driver.resume();
    await driver.next('done');
    await delivered(5, [kv.tap, capture]);

    const queries: OracleQuery[] = [
      { name: 'S+X0', tokens: [...S, ...(X[0] as number[])] },
      { name: 'S+X1', tokens: [...S, ...(X[1] as number[])] },
      { name: 'S+X2', tokens: [...S, ...(X[2] as number[])] },
      { name: 'X3', tokens: X[3] as number[] },
      { name: 'S+X4', tokens: [...S, ...(X[4] as number[])] },
      { name: 'X1', tokens: X[1] as number[] },
      { name: 'X0', tokens: X[0] as number[] },
    ];
    const c = await compareWithDynamo({
      python: python(),
      serving: kv.serving,
      tap: kv.tap,
      hasher,
      blockSize: BS,
      queries,
      routerRules: true,
      holders: [
        { workerId: A, dpRank: 0 },
        { workerId: C, dpRank: 0 },
      ],
    });
    report.push(`recovery (router rules: a gap clears the holder):\n${describeComparison(c)}`);
    report.push(
      `  gaps ${JSON.stringify(c.oracle.gaps)} publisher gaps ${JSON.stringify(c.oracle.publisher_gaps)}`,
    );
    expectSame(c, 'recovery');
    expectPlainCounts(c);
    // Both workers skipped ids (phase 4 was lost), and each gap cleared the holder.
    expect(new Set(c.oracle.gaps.map((g) => g.worker_id))).toEqual(new Set([A, C].map(String)));
    const text = await metricsText(kv.serving.metrics.port);
    expect(metric(text, 'kv_epp_events_gaps_total{kind="event_id"}')).toBe(c.oracle.gaps.length);
    expect(metric(text, 'kv_epp_events_gaps_total{kind="publisher"}')).toBe(
      c.oracle.publisher_gaps.length,
    );
    // Plain RadixTree (no stream rules) on the same bytes keeps the pre-gap blocks.
    const plain = await runOracle(python(), {
      payloads: c.applied.map((m) => hex(m.payload)),
      block_size: BS,
      router_rules: false,
      queries,
    });
    const blocksOf = (qs: typeof plain.queries, name: string, w: bigint) =>
      qs.find((q) => q.name === name)?.scores.find((s) => s.worker_id === w.toString())?.blocks ??
      0;
    report.push(
      `  plain RadixTree on the same bytes: S+X0 on A = ${blocksOf(plain.queries, 'S+X0', A)} blocks; with the router's gap rule = ${blocksOf(c.oracle.queries, 'S+X0', A)}`,
    );
    expect(blocksOf(plain.queries, 'S+X0', A)).toBe(6);
    expect(blocksOf(c.oracle.queries, 'S+X0', A)).toBe(0);
    expect(blocksOf(c.oracle.queries, 'X1', A)).toBe(2);
    expect(await driver.finish()).toBe(0);
  }, 120_000);
});
