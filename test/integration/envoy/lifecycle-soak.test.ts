/**
 * Soak behind a real Envoy 1.40 (both modes): a few hundred concurrent
 * requests, streaming and not, cancelled by the client at random points or
 * failed by the worker; afterwards every in-flight count and the running
 * gauge are 0, each decision completed once, no ext_proc stream is open, and
 * the endpoints take new requests (no 429 from leaked in-flight counts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BodyMode, EnvoyProcess } from '../../support/envoy.js';
import { findEnvoy } from '../../support/envoy.js';
import { Gates } from '../../support/fake-openai.js';
import { mulberry32 } from '../../support/random.js';
import {
  atRest,
  ChaosWorker,
  type ClientCall,
  client,
  type Stack,
  startLifecycleEnvoy,
  startStack,
} from './lifecycle-support.js';

const ENVOY = findEnvoy();
const MODES: BodyMode[] = ['duplex', 'buffered'];
const TRANSPORT = (process.env.SOAK_TRANSPORT ?? 'raw-h2') as 'raw-h2' | 'direct' | 'grpc-js';
const TLS = process.env.SOAK_TLS === '1';
const BIG = Number(process.env.SOAK_BIG ?? 400);
const N = Number(process.env.SOAK_N ?? 300);
const CONCURRENCY = Number(process.env.SOAK_C ?? 24);

describe.skipIf(!ENVOY).each(MODES)('soak behind Envoy (%s)', (mode) => {
  const gates = new Gates();
  let workers: ChaosWorker[];
  let stack: Stack;
  let envoy: EnvoyProcess;

  beforeAll(async () => {
    workers = await Promise.all(
      ['a', 'b'].map((n, i) => new ChaosWorker(`w-${n}`, `127.0.0.${i + 2}`, gates).start()),
    );
    // Ejection off: the soak fails workers on purpose.
    stack = await startStack(workers, {
      consecutive5xx: 0,
      maxInFlightPerEndpoint: 64,
      transport: TRANSPORT,
      tls: TLS,
    });
    envoy = await startLifecycleEnvoy(ENVOY as string, stack.server.port, mode, TLS);
  }, 60_000);

  afterAll(async () => {
    await envoy?.stop();
    await stack?.close();
    await Promise.all(workers.map((w) => w.close()));
  });

  it(`${N} requests cancelled or failed at random points leave nothing behind`, async () => {
    const rand = mulberry32(mode === 'duplex' ? 11 : 12);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
    const port = envoy.port('plain');
    const outcomes = new Map<string, number>();
    let next = 0;
    const one = async (i: number): Promise<void> => {
      const stream = rand() < 0.7;
      const chaos = pick([
        '',
        '',
        'sse-bytes:9',
        'reset-mid',
        'status:500',
        'hang',
        'reset-before',
        'truncated-json',
      ]);
      const abort = pick(['none', 'body', 'headers', 'response', 'ms', 'ms']);
      const b = JSON.stringify({
        model: 'client-model',
        messages: [
          { role: 'user', content: `soak ${i} ${'lorem ipsum '.repeat(Math.floor(rand() * BIG))}` },
        ],
        stream,
        ...(stream ? { stream_options: { include_usage: true } } : {}),
      });
      const headers: Record<string, string> = { 'x-test-id': `soak-${mode}-${i}` };
      if (chaos) headers['x-chaos'] = chaos;
      if (rand() < 0.3) headers['x-gateway-model-name-rewrite'] = 'target-model';
      // A hanging worker must end: the client aborts, or Envoy's 1 s route timeout does.
      if (chaos === 'hang' && (abort === 'none' || abort === 'headers' || abort === 'response')) {
        headers['x-test-route'] = 'timeout';
      }
      const call: ClientCall = { port, headers, body: b };
      if (abort === 'body') call.abortAfterBodyBytes = Math.floor(rand() * b.length);
      if (abort === 'body') call.abortDelayMs = Math.floor(rand() * 30);
      if (abort === 'headers') call.abortOnHeaders = true;
      if (abort === 'response') call.abortAfterResponseBytes = 1 + Math.floor(rand() * 400);
      if (abort === 'ms') call.abortAfterMs = Math.floor(rand() * 40);
      const r = await client(call);
      const key = `${r.aborted ? 'aborted' : r.status}`;
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
    };
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < N) await one(next++);
      }),
    );
    const a = await atRest(stack, envoy);
    const warnings = stack.logger.records.filter((r) => r.level === 'warn' || r.level === 'error');
    expect(warnings).toEqual([]);
    expect(a.badCompletions).toEqual([]);
    expect(a.running).toBe(0);
    expect(a.eppStreamsActive).toBe(0);
    expect(Object.values(a.inFlight)).toEqual(Object.values(a.inFlight).map(() => 0));
    // New requests are routed (no 429 from leaked counts), and complete.
    const after = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        client({
          port,
          headers: { 'x-test-id': `after-${mode}-${i}` },
          body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: `after ${i}` }] }),
        }),
      ),
    );
    expect(after.map((r) => r.status)).toEqual(after.map(() => 200));
  }, 300_000);
});
