/**
 * What the `kv-epp serve` tests share: loopback serve arguments on ephemeral
 * ports, temporary directories, and closing every started server (and
 * removing every directory) after each test.
 */
import { type ChildProcess, spawn } from 'node:child_process';
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

/** A `kv-epp` process: its log records (JSON lines; other lines as `{msg}`) and exit code. */
export interface CliRun {
  child: ChildProcess;
  records: Array<Record<string, unknown>>;
  exit: Promise<number | null>;
  /** The 'kv-epp serving' record, when it got that far. */
  serving?: Record<string, unknown>;
}

/**
 * Spawns `node main ...args` (stdout and stderr read as log records) and
 * resolves once it logs 'kv-epp serving' or exits. `children` collects the
 * process, for the caller's afterEach to kill.
 */
export async function runCli(
  main: string,
  args: string[],
  o: { children: ChildProcess[]; cwd?: string; env?: NodeJS.ProcessEnv },
): Promise<CliRun> {
  const child = spawn(process.execPath, [main, ...args], {
    cwd: o.cwd,
    env: { ...process.env, KV_EPP_POOL_SIZE: '0', ...o.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  o.children.push(child);
  const records: Array<Record<string, unknown>> = [];
  let carry = '';
  const read = (d: Buffer) => {
    const lines = (carry + d.toString('utf8')).split('\n');
    carry = lines.pop() ?? '';
    for (const l of lines) {
      try {
        records.push(JSON.parse(l) as Record<string, unknown>);
      } catch {
        records.push({ msg: l });
      }
    }
  };
  child.stdout?.on('data', read);
  child.stderr?.on('data', read);
  const exit = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  for (;;) {
    const serving = records.find((r) => r.msg === 'kv-epp serving');
    if (serving) return { child, records, exit, serving };
    if (child.exitCode !== null) return { child, records, exit };
    await Promise.race([exit, new Promise((r) => setTimeout(r, 50))]);
  }
}
