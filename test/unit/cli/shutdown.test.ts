/**
 * `kv-epp serve` stopped by SIGTERM (the real CLI as a child process): readiness
 * turns NOT_SERVING at once, a stream still answering its response (a long
 * generation) finishes well past the propagation time, and the process exits
 * 0; a stream still open when the grace period is over is cut, and the log
 * says so; with no gateway connected there is no propagation wait.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  ExtProcClient,
  reqBody,
  reqHeaders,
  respBody,
  respHeaders,
  respTrailers,
  setHeadersOf,
} from '../../support/ext-proc.js';
import { check, healthClient, NOT_SERVING, SERVING } from '../../support/health.js';
import { runCli, serveArgs } from '../../support/serve-harness.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const CLI = join(ROOT, 'dist/src/cli/main.js');
const SIGHUP_LINE =
  'SIGHUP ignored: the endpoints file and certificates are reloaded when they change';
const dir = mkdtempSync(join(tmpdir(), 'kv-epp-shutdown-'));
const EPS = join(dir, 'endpoints.yaml');
writeFileSync(EPS, 'endpoints:\n  - {name: a, address: 127.0.0.2, port: 8001, workerId: "7"}\n');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Serve {
  child: ChildProcess;
  records: Array<Record<string, unknown>>;
  grpcPort: number;
  healthPort: number;
  exit: Promise<number | null>;
}
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
});

async function serve(...extra: string[]): Promise<Serve> {
  const run = await runCli(CLI, ['serve', ...serveArgs('--endpoints-file', EPS, ...extra)], {
    children,
  });
  if (!run.serving) throw new Error(`serve did not start: ${JSON.stringify(run.records)}`);
  return {
    ...run,
    grpcPort: run.serving.grpcPort as number,
    healthPort: run.serving.healthPort as number,
  };
}

const CHAT = JSON.stringify({
  model: 'm',
  messages: [{ role: 'user', content: 'hello there' }],
  stream: true,
});

/** A routed request whose response has begun (the worker is generating). */
async function generating(s: Serve) {
  const client = new ExtProcClient(s.grpcPort);
  const st = client.open();
  st.send(
    reqHeaders({
      ':method': 'POST',
      ':path': '/v1/chat/completions',
      'content-type': 'application/json',
    }),
    reqBody(CHAT, true),
  );
  const [h] = await st.take(2);
  expect(setHeadersOf(h)['x-dynamo-worker-instance-id']).toBe('7');
  st.send(respHeaders({ ':status': '200', 'content-type': 'text/event-stream' }));
  await st.take(1);
  return { client, st };
}

const logged = (s: Serve, msg: string) => s.records.find((r) => r.msg === msg);

describe('kv-epp serve on SIGTERM', () => {
  it.each(['raw-h2', 'direct', 'grpc-js'])(
    'turns NOT_SERVING at once and lets an answering stream finish past the propagation time (%s)',
    async (transport) => {
      const s = await serve(
        '--shutdown-propagation-seconds=1',
        '--shutdown-grace-seconds=30',
        `--ext-proc-transport=${transport}`,
      );
      const { client, st } = await generating(s);
      const health = healthClient(s.healthPort);
      try {
        expect(await check(health, 'readiness')).toBe(SERVING);
        s.child.kill('SIGTERM');
        for (
          let i = 0;
          i < 1500 && !logged(s, 'shutting down: readiness NOT_SERVING; open streams may finish');
          i++
        )
          await new Promise((r) => setTimeout(r, 20));
        expect(await check(health, 'readiness')).toBe(NOT_SERVING);
        // The generation goes on for 2 s, past the 1 s propagation: every chunk is answered.
        for (let i = 0; i < 8; i++) {
          await new Promise((r) => setTimeout(r, 250));
          st.send(respBody(`data: {"i":${i}}\n\n`, false));
          const [r] = await st.take(1);
          expect(r?.response_body).toBeDefined();
        }
        st.send(respBody('data: [DONE]\n\n', true), respTrailers());
        await st.take(2);
        st.halfClose(); // as Envoy ends the ext_proc stream once the HTTP exchange is over
        expect(await s.exit).toBe(0);
      } finally {
        health.close();
        client.close();
      }
      const start = logged(s, 'shutting down: readiness NOT_SERVING; open streams may finish');
      expect(start).toMatchObject({ inFlight: 1, propagationSeconds: 1, graceSeconds: 30 });
      expect(logged(s, 'every open stream finished')).toMatchObject({ inFlightAtDrain: 1 });
    },
    60_000,
  );

  it('ignores SIGHUP (says so, keeps serving), then stops on SIGTERM', async () => {
    const s = await serve('--shutdown-propagation-seconds=0');
    const health = healthClient(s.healthPort);
    try {
      s.child.kill('SIGHUP');
      for (let i = 0; i < 1500 && !logged(s, SIGHUP_LINE); i++) {
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(logged(s, SIGHUP_LINE)).toBeDefined();
      expect(await check(health, 'readiness')).toBe(SERVING);
      expect(s.child.exitCode).toBeNull();
      s.child.kill('SIGTERM');
      expect(await s.exit).toBe(0);
    } finally {
      health.close();
    }
  });

  it('cuts a stream still open when the grace period is over, and says so', async () => {
    const s = await serve('--shutdown-propagation-seconds=0', '--shutdown-grace-seconds=1');
    const { client } = await generating(s);
    try {
      s.child.kill('SIGTERM');
      expect(await s.exit).toBe(0);
    } finally {
      client.close();
    }
    expect(logged(s, 'shutdown grace period over: open streams cut')).toMatchObject({
      inFlightAtDrain: 1,
      cutAfterSeconds: 1,
    });
  }, 60_000);

  it.each([
    ['ext_proc', 'envoy.service.ext_proc.v3.ExternalProcessor'],
    ['health', 'readiness'],
  ] as const)(
    'ends a health Watch open on the %s port at the drain instead of waiting for it',
    async (which, service) => {
      const s = await serve('--shutdown-propagation-seconds=1', '--shutdown-grace-seconds=20');
      const health = healthClient(which === 'ext_proc' ? s.grpcPort : s.healthPort);
      const seen: number[] = [];
      const watch = health.Watch({ service });
      const ended = new Promise<number | undefined>((resolve) => {
        watch.on('error', (e: { code?: number }) => resolve(e.code));
        watch.on('end', () => resolve(0));
      });
      watch.on('data', (m: { status?: number }) => seen.push(m.status ?? 0));
      try {
        for (let i = 0; i < 3000 && seen.length === 0; i++)
          await new Promise((r) => setTimeout(r, 10));
        expect(seen).toEqual([SERVING]);
        s.child.kill('SIGTERM');
        expect(await s.exit).toBe(0);
        expect(await ended).toBe(14); // UNAVAILABLE: server shutting down
      } finally {
        health.close();
      }
      expect(seen).toContain(NOT_SERVING);
      // The Watch did not hold the drain: nothing was cut at the grace period's end.
      expect(logged(s, 'shutdown grace period over: open streams cut')).toBeUndefined();
      expect(logged(s, 'every open stream finished')).toBeDefined();
    },
    60_000,
  );

  it('exits after the drain even when something still holds the event loop', async () => {
    // A preloaded module keeps a referenced timer forever, as a read that never
    // completes or a stray socket would: without the exit timer the process stays.
    const holder = join(dir, 'hold-loop.mjs');
    writeFileSync(holder, 'setInterval(() => {}, 60_000);\n');
    const run = await runCli(CLI, ['serve', ...serveArgs('--endpoints-file', EPS)], {
      children,
      env: { NODE_OPTIONS: `--import=${holder}` },
    });
    expect(run.serving).toBeDefined();
    run.child.kill('SIGTERM');
    // It exits at all (the test's own timeout bounds when): the exit timer ended the held loop.
    expect(await run.exit).toBe(0);
    expect(logged(run as Serve, 'every open stream finished')).toBeDefined();
  }, 60_000);

  it.each(['raw-h2', 'direct', 'grpc-js'])(
    'does not wait for propagation when no gateway is connected (%s)',
    async (transport) => {
      const s = await serve(
        '--shutdown-propagation-seconds=600',
        `--ext-proc-transport=${transport}`,
      );
      s.child.kill('SIGTERM');
      expect(await s.exit).toBe(0);
      expect(
        logged(s, 'shutting down: readiness NOT_SERVING; open streams may finish'),
      ).toMatchObject({ propagationSeconds: 0 });
    },
    60_000,
  );
});
