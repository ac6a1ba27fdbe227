/**
 * Server credentials for the ext_proc port. Like the GAIE EPP
 * (`--secure-serving`), TLS may use a given certificate or one generated at
 * start-up; gateways that talk to the EPP over TLS skip verification (Envoy's
 * empty validation context, Istio's insecureSkipVerify). ALPN: grpc-js's
 * HTTP/2 server offers `h2`.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ServerCredentials } from '@grpc/grpc-js';
import { generate } from 'selfsigned';

export interface CertKey {
  /** PEM certificate chain. */
  cert: string | Uint8Array;
  /** PEM private key. */
  key: string | Uint8Array;
}

export type TlsOption = CertKey | 'self-signed' | undefined;

const TEN_YEARS_MS = 10 * 365 * 24 * 3600 * 1000;

/** A fresh self-signed EC P-256 certificate for localhost, 127.0.0.1 and `hostnames`. */
export async function selfSignedCert(
  hostnames: string[] = [],
): Promise<{ cert: string; key: string }> {
  const now = Date.now();
  const altNames = [
    { type: 2 as const, value: 'localhost' },
    { type: 7 as const, ip: '127.0.0.1' },
    { type: 7 as const, ip: '::1' },
    ...hostnames.map((value) => ({ type: 2 as const, value })),
  ];
  const pems = await generate([{ name: 'commonName', value: 'kv-epp' }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate: new Date(now - 3600_000),
    notAfterDate: new Date(now + TEN_YEARS_MS),
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames },
    ],
  });
  return { cert: pems.cert, key: pems.private };
}

/** `tls.crt` and `tls.key` from a directory (GAIE's `--cert-path`, a mounted Secret). */
export async function certFromDir(dir: string): Promise<CertKey> {
  const [cert, key] = await Promise.all([
    readFile(join(dir, 'tls.crt'), 'utf8'),
    readFile(join(dir, 'tls.key'), 'utf8'),
  ]);
  return { cert, key };
}

export interface ResolvedCredentials {
  credentials: ServerCredentials;
  /** The PEM certificate served, when TLS is on. */
  certificate?: string | undefined;
}

export async function serverCredentials(tls: TlsOption): Promise<ResolvedCredentials> {
  if (tls === undefined) return { credentials: ServerCredentials.createInsecure() };
  const pair = tls === 'self-signed' ? await selfSignedCert() : tls;
  const cert = Buffer.from(pair.cert);
  const credentials = ServerCredentials.createSsl(
    null,
    [{ cert_chain: cert, private_key: Buffer.from(pair.key) }],
    false,
  );
  return { credentials, certificate: cert.toString('utf8') };
}
