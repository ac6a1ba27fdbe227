/**
 * `kv-epp serve` with its TLS defaults, end to end from the CLI layer:
 * `--secure-serving` is on unless turned off, so the ext_proc port (9002)
 * serves a certificate generated at start-up with ALPN h2, and
 * `--cert-path DIR` serves DIR's tls.crt/tls.key instead. Health checks over
 * TLS answer on 9002 (where Envoy checks); a plaintext client cannot talk to
 * it. The health port (9003) stays plaintext, as GAIE's: kubelet's gRPC probes
 * do not speak TLS.
 */
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:tls';
import {
  type ChannelCredentials,
  credentials,
  makeClientConstructor,
  type ServiceError,
} from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { type Serving, startServing } from '../../../src/cli/serve.js';
import { loadServices } from '../../../src/server/ext-proc/proto.js';
import { selfSignedCert } from '../../../src/server/tls.js';
import {
  destinationOf,
  ExtProcClient,
  RecordingLogger,
  reqHeaders,
} from '../../support/ext-proc.js';
import {
  check,
  type HealthClient,
  healthClient,
  NOT_SERVING,
  SERVING,
} from '../../support/health.js';

const ENV = { KV_EPP_POOL_SIZE: '0' };
const SERVICES = [
  '',
  'liveness',
  'readiness',
  'envoy.service.ext_proc.v3.ExternalProcessor',
  'inference-extension',
];
const ENDPOINTS = ['127.0.0.2:8001', '127.0.0.3:8001'];
const UNAVAILABLE = 14;

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function tmp(): string {
  const dir = mkdtempSync(join(tmpdir(), 'kv-epp-serve-tls-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const TWO_WORKERS =
  'endpoints:\n' +
  '  - { name: a, address: 127.0.0.2, port: 8001 }\n' +
  '  - { name: b, address: 127.0.0.3, port: 8001 }\n';

/** A static endpoints file (by default two loopback workers). */
function endpointsFile(text = TWO_WORKERS): string {
  const file = join(tmp(), 'endpoints.yaml');
  writeFileSync(file, text);
  return file;
}

/** Serve's defaults (TLS on), but loopback, ephemeral ports and a static endpoints file. */
async function serve(
  extra: string[] = [],
  endpoints = endpointsFile(),
): Promise<{ s: Serving; log: RecordingLogger }> {
  const log = new RecordingLogger();
  const s = await startServing(
    [
      '--grpc-port=0',
      '--grpc-health-port=0',
      '--metrics-port=0',
      '--host=127.0.0.1',
      '--endpoints-file',
      endpoints,
      ...extra,
    ],
    ENV,
    log,
  );
  cleanups.push(() => s.close());
  return { s, log };
}

/** The ALPN protocol and certificate a fresh TLS connection to `port` is given. */
function handshake(port: number): Promise<{ alpn: string | false; fingerprint256: string }> {
  return new Promise((resolve, reject) => {
    const sock = connect(
      { host: '127.0.0.1', port, ALPNProtocols: ['h2'], rejectUnauthorized: false },
      () => {
        resolve({
          alpn: sock.alpnProtocol ?? false,
          fingerprint256: sock.getPeerX509Certificate()?.fingerprint256 ?? '',
        });
        sock.end();
      },
    );
    sock.on('error', reject);
  });
}

/** A grpc.health.v1 client over TLS, trusting `certificate` (which names localhost). */
function tlsHealthClient(port: number, certificate: string): HealthClient {
  const Ctor = makeClientConstructor(loadServices().health, 'Health');
  const creds: ChannelCredentials = credentials.createSsl(Buffer.from(certificate));
  const c = new Ctor(`127.0.0.1:${port}`, creds, {
    'grpc.ssl_target_name_override': 'localhost',
  }) as unknown as HealthClient;
  cleanups.push(() => c.close());
  return c;
}

function plainHealthClient(port: number): HealthClient {
  const c = healthClient(port);
  cleanups.push(() => c.close());
  return c;
}

async function statuses(c: HealthClient): Promise<Array<[string, number | ServiceError]>> {
  const out: Array<[string, number | ServiceError]> = [];
  for (const s of SERVICES) out.push([s, await check(c, s)]);
  return out;
}

const allServing = SERVICES.map((s) => [s, SERVING]);

/** The ext_proc port over TLS routes a header-only request to one of the endpoints. */
async function routesOverTls(port: number, certificate: string): Promise<string | undefined> {
  const client = new ExtProcClient(port, credentials.createSsl(Buffer.from(certificate)), {
    'grpc.ssl_target_name_override': 'localhost',
  });
  cleanups.push(() => client.close());
  const st = client.open();
  st.send(reqHeaders({ ':method': 'GET', ':path': '/v1/models' }, { eos: true }));
  const dest = destinationOf(await st.next());
  st.cancel();
  return dest;
}

describe('kv-epp serve over TLS', () => {
  it('by default serves a certificate made at start-up, ALPN h2, health over TLS on 9002', async () => {
    const { s, log } = await serve();
    expect(s.options.secureServing).toBe(true);
    const cert = s.extProc.certificate as string;
    expect(cert).toContain('BEGIN CERTIFICATE');
    const x509 = new X509Certificate(cert);
    expect(x509.subject).toContain('CN=kv-epp');
    expect(x509.checkHost('localhost')).toBe('localhost');

    const served = await handshake(s.extProc.port);
    expect(served).toEqual({ alpn: 'h2', fingerprint256: x509.fingerprint256 });

    // Endpoints are known: every service is SERVING over TLS on the ext_proc port.
    expect(await statuses(tlsHealthClient(s.extProc.port, cert))).toEqual(allServing);
    expect(ENDPOINTS).toContain(await routesOverTls(s.extProc.port, cert));

    // A plaintext client cannot talk to the ext_proc port.
    const plain = await check(plainHealthClient(s.extProc.port), 'liveness');
    expect((plain as ServiceError).code).toBe(UNAVAILABLE);

    // The health port is plaintext (kubelet's gRPC probe); a TLS client cannot talk to it.
    expect(await statuses(plainHealthClient(s.health.port))).toEqual(allServing);
    const tlsOnHealth = await check(tlsHealthClient(s.health.port, cert), 'liveness');
    expect((tlsOnHealth as ServiceError).code).toBe(UNAVAILABLE);

    const listening = log.records.find((r) => r.msg === 'ext_proc server listening');
    expect(listening?.fields.tls).toBe('self-signed');
    expect(log.records.find((r) => r.msg === 'kv-epp serving')?.fields.tls).toBe(true);
  });

  it('with --cert-path DIR serves the tls.crt/tls.key found there', async () => {
    const pair = await selfSignedCert(['epp.test']);
    const dir = tmp();
    writeFileSync(join(dir, 'tls.crt'), pair.cert);
    writeFileSync(join(dir, 'tls.key'), pair.key);
    const { s, log } = await serve(['--cert-path', dir]);
    expect(s.options.certPath).toBe(dir);
    const fingerprint = new X509Certificate(pair.cert).fingerprint256;
    expect(new X509Certificate(s.extProc.certificate as string).fingerprint256).toBe(fingerprint);

    expect(await handshake(s.extProc.port)).toEqual({ alpn: 'h2', fingerprint256: fingerprint });
    // A client trusting only the given certificate completes the handshake and checks health.
    expect(await statuses(tlsHealthClient(s.extProc.port, pair.cert))).toEqual(allServing);
    expect(ENDPOINTS).toContain(await routesOverTls(s.extProc.port, pair.cert));

    // A client trusting another certificate does not accept the one served.
    const other = await selfSignedCert();
    const wrong = await check(tlsHealthClient(s.extProc.port, other.cert), 'liveness');
    expect((wrong as ServiceError).code).toBe(UNAVAILABLE);

    expect(await check(plainHealthClient(s.health.port), 'readiness')).toBe(SERVING);
    const listening = log.records.find((r) => r.msg === 'ext_proc server listening');
    expect(listening?.fields.tls).toBe(`cert-path ${dir} (reloaded on change)`);
  });

  it('is NOT_SERVING on every readiness service, over TLS on 9002, until endpoints are known', async () => {
    const { s } = await serve([], endpointsFile('endpoints: []\n'));
    const cert = s.extProc.certificate as string;
    const notReady = SERVICES.map((x) => [x, x === 'liveness' ? SERVING : NOT_SERVING]);
    expect(await statuses(tlsHealthClient(s.extProc.port, cert))).toEqual(notReady);
    expect(await statuses(plainHealthClient(s.health.port))).toEqual(notReady);
  });
});
