/**
 * `--cert-path DIR`: serves `DIR/tls.crt` + `DIR/tls.key` and swaps them in
 * when they change, without dropping the port or open streams (GAIE's cert
 * reloader). Kubernetes rotates a mounted Secret by re-pointing the
 * directory's `..data` symlink, so the directory is watched (fs.watch) and
 * also re-read on an interval, because watch events are lost on some
 * filesystems.
 *
 * Contract:
 * - `open` fails start-up (KvEppError `invalid_argument`) when the pair
 *   cannot be read or the key does not match the certificate.
 * - A later bad pair (half-written rotation, mismatched key, unreadable
 *   file) is logged and ignored: the last good pair keeps being served, and
 *   the next change is tried again.
 * - Implements grpc-js's CertificateProvider (identity only); a new listener
 *   gets the current pair on the next microtask, before the server it belongs
 *   to can accept a connection.
 */

import { X509Certificate } from 'node:crypto';
import { type FSWatcher, watch } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createSecureContext } from 'node:tls';
import type { experimental } from '@grpc/grpc-js';
import { KvEppError } from '../errors.js';
import type { Logger } from '../log/logger.js';

type CertificateProvider = experimental.CertificateProvider;
type IdentityListener = Parameters<CertificateProvider['addIdentityCertificateListener']>[0];

export const DEFAULT_CERT_POLL_MS = 10_000;

export interface CertPair {
  cert: Buffer;
  key: Buffer;
}

export interface CertReloaderOptions {
  log: Logger;
  /** Re-read interval in ms (0 disables polling; the watch still runs). Default 10 s. */
  pollMs?: number | undefined;
  /** Called after each successful swap (metrics, tests). */
  onReload?: ((fingerprint256: string) => void) | undefined;
}

async function readPair(dir: string): Promise<CertPair> {
  const [cert, key] = await Promise.all([
    readFile(join(dir, 'tls.crt')),
    readFile(join(dir, 'tls.key')),
  ]);
  // Throws when the key does not belong to the certificate or either is not PEM.
  createSecureContext({ cert, key });
  return { cert, key };
}

export class CertReloader implements CertificateProvider {
  private readonly listeners = new Set<IdentityListener>();
  private watcher: FSWatcher | undefined;
  private timer: ReturnType<typeof setInterval> | undefined;
  private reading: Promise<boolean> | undefined;
  private again = false;

  private constructor(
    readonly dir: string,
    private current: CertPair,
    private readonly opts: CertReloaderOptions,
  ) {}

  /** Reads and validates the pair, then starts watching `dir`. */
  static async open(dir: string, opts: CertReloaderOptions): Promise<CertReloader> {
    let pair: CertPair;
    try {
      pair = await readPair(dir);
    } catch (e) {
      throw new KvEppError(
        'invalid_argument',
        `--cert-path: cannot use ${join(dir, 'tls.crt')} / tls.key: ${(e as Error).message}`,
      );
    }
    const r = new CertReloader(dir, pair, opts);
    r.start();
    return r;
  }

  /** The PEM certificate being served. */
  get certificate(): string {
    return this.current.cert.toString('utf8');
  }

  /** SHA-256 fingerprint of the certificate being served. */
  get fingerprint256(): string {
    return new X509Certificate(this.current.cert).fingerprint256;
  }

  private start(): void {
    try {
      this.watcher = watch(this.dir, { persistent: false }, () => void this.reload());
      this.watcher.on('error', (err) => {
        this.opts.log.warn(
          { dir: this.dir, err: err.message },
          'certificate directory watch failed',
        );
      });
    } catch (e) {
      this.opts.log.warn(
        { dir: this.dir, err: (e as Error).message },
        'cannot watch the certificate directory; polling only',
      );
    }
    const pollMs = this.opts.pollMs ?? DEFAULT_CERT_POLL_MS;
    if (pollMs > 0) {
      this.timer = setInterval(() => void this.reload(), pollMs);
      this.timer.unref();
    }
  }

  /**
   * Re-reads the directory now; resolves true when a new pair was installed.
   * Concurrent calls share one read, and a change seen during a read triggers
   * one more read after it.
   */
  reload(): Promise<boolean> {
    if (this.reading) {
      this.again = true;
      return this.reading;
    }
    this.reading = this.readOnce().finally(() => {
      this.reading = undefined;
      if (this.again) {
        this.again = false;
        void this.reload();
      }
    });
    return this.reading;
  }

  private async readOnce(): Promise<boolean> {
    let pair: CertPair;
    try {
      pair = await readPair(this.dir);
    } catch (e) {
      this.opts.log.warn(
        { dir: this.dir, err: (e as Error).message },
        'new certificate not usable; still serving the previous one',
      );
      return false;
    }
    if (pair.cert.equals(this.current.cert) && pair.key.equals(this.current.key)) return false;
    this.current = pair;
    const update = { certificate: pair.cert, privateKey: pair.key };
    for (const l of this.listeners) l(update);
    const fp = this.fingerprint256;
    this.opts.log.info({ dir: this.dir, fingerprint256: fp }, 'TLS certificate reloaded');
    this.opts.onReload?.(fp);
    return true;
  }

  addIdentityCertificateListener(listener: IdentityListener): void {
    this.listeners.add(listener);
    // grpc-js registers its server watcher only after this call returns, so the
    // current pair is delivered on the next microtask (still before any
    // connection can be accepted: binding is asynchronous).
    queueMicrotask(() => {
      if (this.listeners.has(listener))
        listener({ certificate: this.current.cert, privateKey: this.current.key });
    });
  }

  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.listeners.delete(listener);
  }

  // No client-certificate verification: gateways connect without client certs.
  addCaCertificateListener(): void {}
  removeCaCertificateListener(): void {}

  close(): void {
    this.watcher?.close();
    if (this.timer) clearInterval(this.timer);
    this.listeners.clear();
  }
}
