/**
 * What the `kv-epp serve` tests share: loopback serve arguments on ephemeral
 * ports, temporary directories, and closing every started server (and
 * removing every directory) after each test.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach } from 'vitest';
import type { Serving } from '../../src/cli/serve.js';

export const ROOT = join(import.meta.dirname, '../..');
export const DEFAULT_ENDPOINTS = join(ROOT, 'config/endpoints.default.yaml');

/** Loopback, ephemeral ports, plaintext; `extra` overrides. */
export function serveArgs(...extra: string[]): string[] {
  return [
    '--secure-serving=false',
    '--grpc-port=0',
    '--grpc-health-port=0',
    '--metrics-port=0',
    '--host=127.0.0.1',
    ...extra,
  ];
}

/**
 * Registers an afterEach that closes `running` servers, removes `tmp()`
 * directories and runs what `onCleanup` was given.
 */
export function serveHarness(prefix: string): {
  running: Serving[];
  tmp: () => string;
  onCleanup: (fn: () => void) => void;
} {
  const running: Serving[] = [];
  const cleanups: Array<() => void> = [];
  afterEach(async () => {
    for (const s of running.splice(0)) await s.close();
    for (const c of cleanups.splice(0)) c();
  });
  const tmp = (): string => {
    const dir = mkdtempSync(join(tmpdir(), `kv-epp-${prefix}-`));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    return dir;
  };
  return { running, tmp, onCleanup: (fn) => cleanups.push(fn) };
}
