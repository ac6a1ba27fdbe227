/**
 * `--cert-path`: the served certificate follows tls.crt/tls.key in the
 * directory (Kubernetes Secret rotation), a bad pair is ignored, and the
 * server keeps answering ext_proc over the new certificate.
 */
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:tls';
import { credentials } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { KvEppError } from '../../../src/errors.js';
import { CertReloader } from '../../../src/server/cert-reloader.js';
import { type RunningServer, startExtProcServer } from '../../../src/server/grpc-server.js';
import { selfSignedCert } from '../../../src/server/tls.js';
import {
  destinationOf,
  ExtProcClient,
  FakeRouter,
  RecordingLogger,
  reqHeaders,
} from '../../support/ext-proc.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function certDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'kv-epp-certs-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Writes the pair the way a Secret volume changes: new files renamed into place. */
function install(dir: string, pair: { cert: string; key: string }): void {
  writeFileSync(join(dir, 'tls.crt.tmp'), pair.cert);
  writeFileSync(join(dir, 'tls.key.tmp'), pair.key);
  renameSync(join(dir, 'tls.key.tmp'), join(dir, 'tls.key'));
  renameSync(join(dir, 'tls.crt.tmp'), join(dir, 'tls.crt'));
}

function fingerprint(pem: string): string {
  return new X509Certificate(pem).fingerprint256;
}

/** The fingerprint of the certificate a fresh TLS connection is offered. */
function servedFingerprint(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect(
      { host: '127.0.0.1', port, ALPNProtocols: ['h2'], rejectUnauthorized: false },
      () => {
        resolve(sock.getPeerX509Certificate()?.fingerprint256 ?? '');
        sock.end();
      },
    );
    sock.on('error', reject);
  });
}

async function until(cond: () => Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function serve(reloader: CertReloader): Promise<RunningServer> {
  const srv = await startExtProcServer({
    port: 0,
    host: '127.0.0.1',
    router: new FakeRouter(),
    maxBodyBytes: 1024,
    logger: new RecordingLogger(),
    tls: reloader,
  });
  cleanups.push(() => srv.close());
  return srv;
}

async function routes(port: number, certificate: string): Promise<string | undefined> {
  const client = new ExtProcClient(port, credentials.createSsl(Buffer.from(certificate)), {
    'grpc.ssl_target_name_override': 'localhost',
  });
  try {
    const s = client.open();
    s.send(reqHeaders({ ':method': 'GET' }, { eos: true }));
    const dest = destinationOf(await s.next());
    s.cancel();
    return dest;
  } finally {
    client.close();
  }
}

describe('CertReloader', () => {
  it('fails start-up naming the files when the key does not match the certificate', async () => {
    const [a, b] = await Promise.all([selfSignedCert(), selfSignedCert()]);
    const dir = certDir();
    install(dir, { cert: a.cert, key: b.key });
    const err = await CertReloader.open(dir, { log: new RecordingLogger(), pollMs: 0 }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(KvEppError);
    expect((err as KvEppError).message).toMatch(/--cert-path: cannot use .*tls\.crt/);
  });

  it('fails start-up when tls.key is missing', async () => {
    const a = await selfSignedCert();
    const dir = certDir();
    writeFileSync(join(dir, 'tls.crt'), a.cert);
    await expect(CertReloader.open(dir, { log: new RecordingLogger(), pollMs: 0 })).rejects.toThrow(
      /--cert-path/,
    );
  });

  it('serves the new certificate after a rotation, over the same port', async () => {
    const [first, second] = await Promise.all([selfSignedCert(['one.test']), selfSignedCert()]);
    const dir = certDir();
    install(dir, first);
    const reloads: string[] = [];
    const reloader = await CertReloader.open(dir, {
      log: new RecordingLogger(),
      pollMs: 0,
      onReload: (fp) => reloads.push(fp),
    });
    cleanups.push(() => reloader.close());
    const srv = await serve(reloader);
    expect(await servedFingerprint(srv.port)).toBe(fingerprint(first.cert));
    expect(await routes(srv.port, first.cert)).toBe('127.0.0.2:8000');

    install(dir, second);
    // The directory watch picks the change up; reload() makes it certain without waiting.
    await reloader.reload();
    await until(
      async () => (await servedFingerprint(srv.port)) === fingerprint(second.cert),
      'the rotated certificate',
    );
    expect(reloads).toEqual([fingerprint(second.cert)]);
    expect(reloader.certificate).toBe(second.cert);
    expect(await routes(srv.port, second.cert)).toBe('127.0.0.2:8000');
  });

  it('notices a rotation by itself (directory watch or poll)', async () => {
    const [first, second] = await Promise.all([selfSignedCert(), selfSignedCert()]);
    const dir = certDir();
    install(dir, first);
    const reloader = await CertReloader.open(dir, { log: new RecordingLogger(), pollMs: 50 });
    cleanups.push(() => reloader.close());
    install(dir, second);
    await until(async () => reloader.certificate === second.cert, 'the reloader to notice');
  });

  it('keeps serving the last good pair when the new one is bad', async () => {
    const [first, second] = await Promise.all([selfSignedCert(), selfSignedCert()]);
    const dir = certDir();
    install(dir, first);
    const log = new RecordingLogger();
    const reloader = await CertReloader.open(dir, { log, pollMs: 0 });
    cleanups.push(() => reloader.close());
    const srv = await serve(reloader);

    install(dir, { cert: second.cert, key: first.key });
    expect(await reloader.reload()).toBe(false);
    expect(await servedFingerprint(srv.port)).toBe(fingerprint(first.cert));
    expect(log.records.some((r) => r.msg.includes('still serving the previous one'))).toBe(true);

    install(dir, second);
    await reloader.reload(); // the directory watch may have got there first
    await until(async () => reloader.certificate === second.cert, 'the good pair');
    expect(await servedFingerprint(srv.port)).toBe(fingerprint(second.cert));
  });
});
