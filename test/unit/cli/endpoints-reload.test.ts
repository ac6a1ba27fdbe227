/**
 * `--endpoints-file` is followed: a worker removed from the file leaves the
 * index (and routing); a broken file keeps the last good list.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { type Serving, startServing } from '../../../src/cli/serve.js';
import { diffEndpoints } from '../../../src/discovery/endpoint-changes.js';
import { parseEndpoints } from '../../../src/discovery/endpoints.js';
import { RecordingLogger } from '../../support/ext-proc.js';
import { check, healthClient, NOT_SERVING, SERVING } from '../../support/health.js';
import { serveArgs } from '../../support/serve-harness.js';

const running: Serving[] = [];
const dirs: string[] = [];
afterEach(async () => {
  for (const s of running.splice(0)) await s.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const A = { address: '127.0.0.2', port: 8001, name: 'a', workerId: '18446744073709551615' };
const B = { address: '127.0.0.3', port: 8001, name: 'b', workerId: '2' };
const B1 = { ...B, address: '127.0.0.4', dpRank: 1 };

function write(file: string, doc: unknown): void {
  writeFileSync(`${file}.tmp`, typeof doc === 'string' ? doc : JSON.stringify(doc));
  renameSync(`${file}.tmp`, file);
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** `serve` on a fresh endpoints file holding `doc`, with a recording logger. */
async function serveWithFile(
  doc: unknown,
): Promise<{ file: string; log: RecordingLogger; s: Serving }> {
  const dir = mkdtempSync(join(tmpdir(), 'kv-epp-eps-'));
  dirs.push(dir);
  const file = join(dir, 'endpoints.json');
  write(file, doc);
  const log = new RecordingLogger();
  const s = await startServing(serveArgs('--endpoints-file', file), { KV_EPP_POOL_SIZE: '0' }, log);
  running.push(s);
  return { file, log, s };
}

describe('diffEndpoints', () => {
  it('tells added endpoints, removed holders and removed workers apart', () => {
    const prev = parseEndpoints({ endpoints: [A, B, B1] }, 't');
    const next = parseEndpoints({ endpoints: [B, { ...A, name: 'a2', workerId: '9' }] }, 't');
    const d = diffEndpoints(prev, next);
    expect(d.added.map((e) => e.name)).toEqual(['a2']);
    expect(d.removedWorkers).toEqual([18446744073709551615n]);
    expect(d.removedHolders).toEqual([{ workerId: 2n, dpRank: 1 }]);
  });
});

describe('serve follows --endpoints-file', () => {
  it('removes a departed worker from the index and keeps the list when the file breaks', async () => {
    const { file, log, s } = await serveWithFile({ endpoints: [A, B] });
    const a = { workerId: 18446744073709551615n, dpRank: 0 };
    const b = { workerId: 2n, dpRank: 0 };
    const blocks = {
      localHashes: BigUint64Array.of(1n, 2n),
      externalHashes: BigUint64Array.of(11n, 12n),
    };
    expect(s.index.applyStored(a, null, blocks)).toBe('ok');
    expect(s.index.applyStored(b, null, blocks)).toBe('ok');

    write(file, '{"endpoints": [ broken');
    expect(await s.reloadEndpoints()).toBe(false);
    expect(await s.reloadEndpoints()).toBe(false);
    expect(s.endpoints()).toHaveLength(2);
    // Warned once for the same problem, however often it is read.
    const warned = () =>
      log.records.filter((r) => r.msg.includes('keeping the previous endpoints')).length;
    expect(warned()).toBe(1);

    write(file, { endpoints: [B] });
    await s.reloadEndpoints(); // the directory watch may have got there first
    await until(() => s.endpoints().length === 1, 'the new list');
    expect(s.index.treeSize(a)).toBe(0);
    expect(s.index.treeSize(b)).toBe(2);
    expect(log.records.some((r) => r.msg === 'endpoints changed')).toBe(true);
  });
});

describe('serve refuses an endpoints file that is not a regular file', () => {
  it('warns about a FIFO in its place at once (never waits for a writer) and picks up the next good file', async () => {
    const { file, log, s } = await serveWithFile({ endpoints: [A, B] });
    // A FIFO with no writer: reading it would block until one came.
    execFileSync('mkfifo', [`${file}.fifo`]);
    renameSync(`${file}.fifo`, file);
    expect(await s.reloadEndpoints()).toBe(false);
    const warning = log.records.find((r) => r.msg.includes('keeping the previous endpoints'));
    expect(String(warning?.fields.err)).toMatch(/cannot read: not a regular file/);
    expect(s.endpoints()).toHaveLength(2);
    write(file, { endpoints: [B] });
    await s.reloadEndpoints();
    await until(() => s.endpoints().length === 1, 'the new list');
  });
});

describe('serve reads an endpoints file only once it has settled', () => {
  it('never installs the shorter list a file written in two pieces shows half-way', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kv-epp-torn-'));
    dirs.push(dir);
    const file = join(dir, 'endpoints.yaml');
    const yaml = (names: string[]): string =>
      `endpoints:\n${names
        .map((n, i) => `  - name: ${n}\n    address: 127.0.0.${i + 2}\n    port: 8001\n`)
        .join('')}`;
    writeFileSync(file, yaml(['a', 'b', 'c']));
    const log = new RecordingLogger();
    const s = await startServing(
      serveArgs('--endpoints-file', file),
      { KV_EPP_POOL_SIZE: '0' },
      log,
    );
    running.push(s);
    const seen = new Set<number>();
    const watch = setInterval(() => seen.add(s.endpoints().length), 2);
    try {
      // In place, as an editor or `>` then `>>` writes it: the first piece alone
      // is a valid list of two.
      const full = yaml(['a', 'b', 'c', 'd']);
      const cut = full.indexOf('  - name: c');
      writeFileSync(file, full.slice(0, cut));
      await new Promise((r) => setTimeout(r, 30));
      writeFileSync(file, full);
      await until(() => s.endpoints().length === 4, 'the whole new list');
      // The sampler may not have ticked since; what matters is that it never saw 2.
      seen.add(s.endpoints().length);
    } finally {
      clearInterval(watch);
    }
    expect([...seen].sort()).toEqual([3, 4]);
    expect(log.records.filter((r) => r.msg === 'endpoints changed')).toHaveLength(1);
  });
});

describe('serve readiness', () => {
  it('is NOT_SERVING until a routable endpoint is known, then stays SERVING', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kv-epp-ready-'));
    dirs.push(dir);
    const file = join(dir, 'endpoints.json');
    const prefill = { ...B, role: 'prefill' };
    write(file, { endpoints: [prefill] });
    const s = await startServing(
      serveArgs('--endpoints-file', file),
      { KV_EPP_POOL_SIZE: '0' },
      new RecordingLogger(),
    );
    running.push(s);
    const client = healthClient(s.health.port);
    try {
      // Prefill endpoints are never routed to: not ready.
      expect(await check(client, 'readiness')).toBe(NOT_SERVING);
      write(file, { endpoints: [prefill, A] });
      expect(await s.reloadEndpoints()).toBe(true);
      expect(await check(client, 'readiness')).toBe(SERVING);
      // The pool shrinks to nothing routable: kv-epp stays ready and answers 503s itself.
      write(file, { endpoints: [prefill] });
      expect(await s.reloadEndpoints()).toBe(true);
      expect(await check(client, 'readiness')).toBe(SERVING);
      expect(await check(client, '')).toBe(SERVING);
    } finally {
      client.close();
    }
  });
});
