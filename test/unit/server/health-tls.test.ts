import { connect as netConnect } from 'node:net';
import { connect } from 'node:tls';
import { credentials, type ServiceError } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import {
  EXT_PROC_TRANSPORTS,
  type RunningServer,
  startExtProcServer,
  startHealthServer,
} from '../../../src/server/grpc-server.js';
import { selfSignedCert } from '../../../src/server/tls.js';
import {
  destinationOf,
  ExtProcClient,
  FakeRouter,
  RecordingLogger,
  reqHeaders,
} from '../../support/ext-proc.js';
import {
  check,
  healthClient,
  NOT_SERVING,
  SERVICE_UNKNOWN,
  SERVING,
} from '../../support/health.js';

const servers: RunningServer[] = [];
const clients: Array<{ close(): void }> = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await Promise.all(servers.splice(0).map((s) => s.close(0)));
});

describe.each(['raw-h2', 'grpc-js'] as const)('health server on %s', (transport) => {
  it('reports readiness on "", readiness, ExternalProcessor and inference-extension; liveness always', async () => {
    let ready = false;
    const srv = await startHealthServer({
      port: 0,
      host: '127.0.0.1',
      isReady: () => ready,
      logger: new RecordingLogger(),
      transport,
    });
    servers.push(srv);
    expect(srv.transport).toBe(transport);
    const c = healthClient(srv.port);
    clients.push(c);
    const readiness = [
      '',
      'readiness',
      'envoy.service.ext_proc.v3.ExternalProcessor',
      'inference-extension',
    ];

    for (const s of readiness) expect(await check(c, s)).toBe(NOT_SERVING);
    expect(await check(c, 'liveness')).toBe(SERVING);
    ready = true;
    for (const s of readiness) expect(await check(c, s)).toBe(SERVING);
    expect(await check(c, 'liveness')).toBe(SERVING);
    ready = false;
    expect(await check(c, 'readiness')).toBe(NOT_SERVING);

    // Any other name answers as readiness here, as GAIE's health port without
    // leader election does (its ext_proc port answers NOT_FOUND: below).
    expect(await check(c, 'nope')).toBe(NOT_SERVING);
    ready = true;
    expect(await check(c, 'nope')).toBe(SERVING);
    ready = false;

    const list = await new Promise<Record<string, { status?: number }>>((resolve, reject) =>
      c.List({}, (err, res) => (err ? reject(err) : resolve(res?.statuses ?? {}))),
    );
    expect(list.liveness?.status).toBe(SERVING);
    expect(list.readiness?.status).toBe(NOT_SERVING);
    // raw-h2 reads the one connection into a reused buffer (h2/socket-reads.ts).
    expect(srv.ownReadBufferConnections).toBe(transport === 'raw-h2' ? 1 : 0);
  });

  it('Watch sends the current status, then each change', async () => {
    let ready = false;
    const srv = await startHealthServer({
      port: 0,
      host: '127.0.0.1',
      isReady: () => ready,
      logger: new RecordingLogger(),
      watchIntervalMs: 5,
      transport,
    });
    servers.push(srv);
    const c = healthClient(srv.port);
    clients.push(c);

    const seen: number[] = [];
    const waiters: Array<() => void> = [];
    const call = c.Watch({ service: 'readiness' });
    call.on('data', (m: { status?: number }) => {
      seen.push(m.status ?? 0);
      for (const w of waiters.splice(0)) w();
    });
    call.on('error', () => {});
    const until = async (n: number) => {
      while (seen.length < n) await new Promise<void>((r) => waiters.push(r));
    };
    await until(1);
    expect(seen).toEqual([NOT_SERVING]);
    ready = true;
    await until(2);
    expect(seen).toEqual([NOT_SERVING, SERVING]);
    call.cancel();

    const unknown = c.Watch({ service: 'nope' });
    unknown.on('error', () => {});
    const first = await new Promise<number>((r) => unknown.once('data', (m) => r(m.status ?? 0)));
    expect(first).toBe(SERVING); // as readiness, on the health port
    unknown.cancel();
  });
  it('closing ends open Watch calls (UNAVAILABLE, after the status as it is now) instead of waiting for them', async () => {
    let ready = true;
    const srv = await startHealthServer({
      port: 0,
      host: '127.0.0.1',
      isReady: () => ready,
      logger: new RecordingLogger(),
      watchIntervalMs: 60_000, // only the close itself can report the change
      transport,
    });
    const c = healthClient(srv.port);
    clients.push(c);
    const seen: number[] = [];
    const call = c.Watch({ service: 'readiness' });
    call.on('data', (m: { status?: number }) => seen.push(m.status ?? 0));
    const ended = new Promise<number | undefined>((r) =>
      call.on('error', (e: ServiceError) => r(e.code)),
    );
    for (let i = 0; i < 200 && seen.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect(seen).toEqual([SERVING]);
    ready = false;
    // Not cut at the end of a 30 s grace: ended at once.
    expect(await srv.close(30_000)).toBe(false);
    expect(await ended).toBe(14);
    expect(seen).toEqual([SERVING, NOT_SERVING]);
  });

  it('does not serve ext_proc: Process is UNIMPLEMENTED', async () => {
    const srv = await startHealthServer({
      port: 0,
      host: '127.0.0.1',
      isReady: () => true,
      logger: new RecordingLogger(),
      transport,
    });
    servers.push(srv);
    const client = new ExtProcClient(srv.port);
    clients.push(client);
    const s = client.open();
    s.send(reqHeaders({ ':method': 'GET' }, { eos: true }));
    const { status } = await s.drain();
    expect(status.code).toBe(12); // UNIMPLEMENTED
    expect(status.details).toContain('/envoy.service.ext_proc.v3.ExternalProcessor/Process');
  });
});

/** The five services health.ts knows; all but `liveness` follow readiness. */
const READINESS = [
  '',
  'readiness',
  'envoy.service.ext_proc.v3.ExternalProcessor',
  'inference-extension',
];

describe.each(EXT_PROC_TRANSPORTS)('ext_proc server on %s', (transport) => {
  it('also answers health checks on every service (Envoy checks the ext_proc port)', async () => {
    // Not ready until endpoints are known, as serve's isReady.
    let ready = false;
    const srv = await startExtProcServer({
      port: 0,
      host: '127.0.0.1',
      router: new FakeRouter(),
      maxBodyBytes: 1024,
      logger: new RecordingLogger(),
      isReady: () => ready,
      transport,
    });
    servers.push(srv);
    expect(srv.transport).toBe(transport);
    const c = healthClient(srv.port);
    clients.push(c);

    for (const s of READINESS) expect([s, await check(c, s)]).toEqual([s, NOT_SERVING]);
    expect(await check(c, 'liveness')).toBe(SERVING);
    ready = true;
    for (const s of READINESS) expect([s, await check(c, s)]).toEqual([s, SERVING]);
    expect(await check(c, 'liveness')).toBe(SERVING);
    ready = false;
    for (const s of READINESS) expect([s, await check(c, s)]).toEqual([s, NOT_SERVING]);
    expect(await check(c, 'liveness')).toBe(SERVING);

    const unknown = await check(c, 'nope');
    expect((unknown as ServiceError).code).toBe(5); // NOT_FOUND

    const list = await new Promise<Record<string, { status?: number }>>((resolve, reject) =>
      c.List({}, (err, res) => (err ? reject(err) : resolve(res?.statuses ?? {}))),
    );
    expect(Object.fromEntries(Object.entries(list).map(([k, v]) => [k, v.status]))).toEqual({
      '': NOT_SERVING,
      readiness: NOT_SERVING,
      'envoy.service.ext_proc.v3.ExternalProcessor': NOT_SERVING,
      'inference-extension': NOT_SERVING,
      liveness: SERVING,
    });

    // Watch: the current status first (later changes are polled every second here).
    ready = true;
    const watch = c.Watch({ service: 'inference-extension' });
    watch.on('error', () => {});
    const first = await new Promise<number>((r) => watch.once('data', (m) => r(m.status ?? 0)));
    expect(first).toBe(SERVING);
    watch.cancel();
    const unknownWatch = c.Watch({ service: 'nope' });
    unknownWatch.on('error', () => {});
    expect(
      await new Promise<number>((r) => unknownWatch.once('data', (m) => r(m.status ?? 0))),
    ).toBe(SERVICE_UNKNOWN);
    unknownWatch.cancel();

    // raw-h2 reads the one connection into a reused buffer (h2/socket-reads.ts).
    expect(srv.ownReadBufferConnections).toBe(transport === 'raw-h2' ? 1 : 0);
  });
});

describe('ext_proc server', () => {
  it.each(['self-signed', 'given'] as const)(
    'serves TLS (%s certificate) with ALPN h2',
    async (kind) => {
      const tls = kind === 'self-signed' ? 'self-signed' : await selfSignedCert(['epp.test']);
      const srv = await startExtProcServer({
        port: 0,
        host: '127.0.0.1',
        router: new FakeRouter(),
        maxBodyBytes: 1024,
        logger: new RecordingLogger(),
        tls,
      });
      servers.push(srv);
      expect(srv.certificate).toContain('BEGIN CERTIFICATE');
      if (kind === 'given' && typeof tls === 'object') expect(srv.certificate).toBe(tls.cert);

      const alpn = await new Promise<string | false>((resolve, reject) => {
        const sock = connect(
          { host: '127.0.0.1', port: srv.port, ALPNProtocols: ['h2'], rejectUnauthorized: false },
          () => {
            resolve(sock.alpnProtocol ?? false);
            sock.end();
          },
        );
        sock.on('error', reject);
      });
      expect(alpn).toBe('h2');

      const creds = credentials.createSsl(Buffer.from(srv.certificate as string));
      const client = new ExtProcClient(srv.port, creds, {
        'grpc.ssl_target_name_override': 'localhost',
      });
      clients.push(client);
      const s = client.open();
      s.send(reqHeaders({ ':method': 'GET' }, { eos: true }));
      expect(destinationOf(await s.next())).toBe('127.0.0.2:8000');
      s.cancel();
      // The ALPN probe's connection and the client's, both read into a reused buffer.
      expect(srv.ownReadBufferConnections).toBe(2);

      // A plaintext client cannot talk to it.
      const plain = new ExtProcClient(srv.port);
      clients.push(plain);
      const p = plain.open();
      p.send(reqHeaders({ ':method': 'GET' }, { eos: true }));
      expect((await p.drain()).status.code).toBe(14); // UNAVAILABLE
    },
  );
});

/** A TCP connection that never sends a byte; resolves when the server closes it. */
function silentConnection(port: number): Promise<void> {
  const silent = netConnect(port, '127.0.0.1');
  silent.on('error', () => {});
  silent.resume();
  return new Promise<void>((r) => silent.on('close', () => r()));
}

describe.each(
  EXT_PROC_TRANSPORTS.flatMap((transport) => [
    [transport, 'self-signed'] as const,
    [transport, 'plaintext'] as const,
  ]),
)('ext_proc server on %s (%s): a connection that never speaks', (transport, tls) => {
  it('is closed after the preface timeout, while a client that speaks is served', async () => {
    const srv = await startExtProcServer({
      port: 0,
      host: '127.0.0.1',
      router: new FakeRouter(),
      tls: tls === 'plaintext' ? undefined : tls,
      maxBodyBytes: 1024,
      logger: new RecordingLogger(),
      prefaceTimeoutMs: 300,
      transport,
    });
    servers.push(srv);
    const closed = silentConnection(srv.port);
    // A real gRPC client, before and after the silent one is dropped.
    const client =
      tls === 'plaintext'
        ? new ExtProcClient(srv.port)
        : new ExtProcClient(
            srv.port,
            credentials.createSsl(Buffer.from(srv.certificate as string)),
            { 'grpc.ssl_target_name_override': 'localhost' },
          );
    clients.push(client);
    const routed = async () => {
      const s = client.open();
      s.send(reqHeaders({ ':method': 'GET' }, { eos: true }));
      expect(destinationOf(await s.next())).toBe('127.0.0.2:8000');
      s.cancel();
    };
    await routed();
    await closed;
    await routed();
  });
});

describe.each(['raw-h2', 'grpc-js'] as const)(
  'health server on %s: a connection that never speaks',
  (transport) => {
    it('is closed after the preface timeout, while a probe that speaks is answered', async () => {
      const srv = await startHealthServer({
        port: 0,
        host: '127.0.0.1',
        isReady: () => true,
        logger: new RecordingLogger(),
        transport,
        prefaceTimeoutMs: 300,
      });
      servers.push(srv);
      const closed = silentConnection(srv.port);
      const health = healthClient(srv.port);
      clients.push(health);
      expect(await check(health, 'readiness')).toBe(SERVING);
      await closed;
      expect(await check(health, 'readiness')).toBe(SERVING);
    });
  },
);
