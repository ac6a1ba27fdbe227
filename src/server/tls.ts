/**
 * Server credentials for the ext_proc port. Like the GAIE EPP
 * (`--secure-serving`), TLS may use a given certificate or one generated at
 * start-up; gateways that talk to the EPP over TLS skip verification (Envoy's
 * empty validation context, Istio's insecureSkipVerify). ALPN: grpc-js's
 * HTTP/2 server offers `h2`.
 */
import { experimental, ServerCredentials } from '@grpc/grpc-js';
import { generate } from 'selfsigned';
import { CertReloader } from './cert-reloader.js';

export interface CertKey {
  /** PEM certificate chain. */
  cert: string | Uint8Array;
  /** PEM private key. */
  key: string | Uint8Array;
}

/** A fixed pair, one generated at start-up, a watched `--cert-path` directory, or plaintext. */
export type TlsOption = CertKey | 'self-signed' | CertReloader | undefined;

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

export interface ResolvedCredentials {
  credentials: ServerCredentials;
  /** The PEM certificate served, when TLS is on. */
  certificate?: string | undefined;
}

export async function serverCredentials(tls: TlsOption): Promise<ResolvedCredentials> {
  if (tls === undefined) return { credentials: ServerCredentials.createInsecure() };
  if (tls instanceof CertReloader) {
    // grpc-js passes its first argument on as the identity provider; no client CA.
    const credentials = experimental.createCertificateProviderServerCredentials(tls, null, false);
    return { credentials, certificate: tls.certificate };
  }
  const pair = tls === 'self-signed' ? await selfSignedCert() : tls;
  const cert = Buffer.from(pair.cert);
  const credentials = ServerCredentials.createSsl(
    null,
    [{ cert_chain: cert, private_key: Buffer.from(pair.key) }],
    false,
  );
  return { credentials, certificate: cert.toString('utf8') };
}
