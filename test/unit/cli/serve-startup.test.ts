/**
 * `kv-epp serve` start-up as deployed: GAIE's chart arguments (and its
 * EndpointPickerConfig) start it with one warning; Dynamo's empty variables
 * are unset; a port in use, a DYN_MODEL_PATH that is no tokenizer and
 * endpoints given twice fail with one line naming the setting; disaggregated
 * roles are warned about at start-up and when the endpoints file changes.
 */

import { renameSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { type Serving, startServing } from '../../../src/cli/serve.js';
import { KvEppError } from '../../../src/errors.js';
import { RecordingLogger } from '../../support/ext-proc.js';
import { DEFAULT_ENDPOINTS, serveArgs, serveHarness } from '../../support/serve-harness.js';

const ENV = { KV_EPP_POOL_SIZE: '0' };
const { running, tmp, onCleanup } = serveHarness('startup');

function write(file: string, text: string): void {
  writeFileSync(`${file}.tmp`, text);
  renameSync(`${file}.tmp`, file);
}

const args = serveArgs;

async function occupied(): Promise<{ port: number; server: Server }> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  onCleanup(() => server.close());
  return { port: (server.address() as { port: number }).port, server };
}

async function failure(p: Promise<unknown>): Promise<Error> {
  try {
    const s = await p;
    running.push(s as Serving);
  } catch (e) {
    return e as Error;
  }
  throw new Error('start-up did not fail');
}

/** Resolves true when a TCP connection to host:port opens. */
function opens(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ host, port });
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}

describe('kv-epp serve listening addresses', () => {
  it("listens on IPv6 and IPv4 without --host, as GAIE's EPP does", async () => {
    const log = new RecordingLogger();
    const s = await startServing(
      args()
        .filter((a) => !a.startsWith('--host'))
        .concat(['--endpoints-file', DEFAULT_ENDPOINTS]),
      ENV,
      log,
    );
    running.push(s);
    const ports = [s.extProc.port, s.health.port, s.metrics.port];
    const ipv6 = Object.values(networkInterfaces()).some((l) =>
      l?.some((a) => a.family === 'IPv6'),
    );
    for (const port of ports) {
      expect(await opens('127.0.0.1', port)).toBe(true);
      if (ipv6) expect(await opens('::1', port)).toBe(true);
    }
    // --host still narrows it.
    const v4 = await startServing(args('--endpoints-file', DEFAULT_ENDPOINTS), ENV, log);
    running.push(v4);
    if (ipv6) expect(await opens('::1', v4.extProc.port)).toBe(false);
    expect(await opens('127.0.0.1', v4.extProc.port)).toBe(true);
  });
});

describe('kv-epp serve under GAIE and Dynamo deployments', () => {
  it("starts on GAIE's chart arguments and EndpointPickerConfig, with one warning listing what has no effect", async () => {
    const dir = tmp();
    const gaieConfig = join(dir, 'default-plugins.yaml');
    write(
      gaieConfig,
      'apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- type: queue-scorer\n',
    );
    const log = new RecordingLogger();
    const s = await startServing(
      args(
        '--endpoints-file',
        DEFAULT_ENDPOINTS,
        '--pool-name',
        'llm',
        '--pool-namespace',
        'default',
        '--pool-group',
        'inference.networking.k8s.io',
        '--zap-encoder',
        'json',
        '--config-file',
        gaieConfig,
        '--ha-enable-leader-election',
        '--tracing=false',
        '--metrics-endpoint-auth=false',
        '-v',
        '3',
      ),
      ENV,
      log,
    );
    running.push(s);
    const warnings = log.records.filter((r) => r.level === 'warn');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.fields.flags).toEqual([
      { flag: '--pool-group', value: 'inference.networking.k8s.io' },
      { flag: '--ha-enable-leader-election', value: true },
      { flag: '--config-file', value: `${gaieConfig} (GAIE EndpointPickerConfig)` },
    ]);
    expect(s.options.poolName).toBe('llm');
  });

  it('starts with Dynamo variables set to "" (unset), warning about the router ones it does not implement', async () => {
    const log = new RecordingLogger();
    const s = await startServing(
      args('--endpoints-file', DEFAULT_ENDPOINTS),
      {
        ...ENV,
        DYN_KV_CACHE_BLOCK_SIZE: '',
        DYN_NAMESPACE: '',
        DYN_SECURE_SERVING: ' ',
        KV_EPP_POOL_NICE: '',
        DYN_ROUTER_TEMPERATURE: '0.7',
      },
      log,
    );
    running.push(s);
    expect(s.options.blockSize).toBe(16);
    expect(s.options.events.namespace).toBe('dynamo');
    const warnings = log.records.filter((r) => r.level === 'warn');
    expect(warnings.map((w) => w.fields)).toEqual([
      { noEffect: ['DYN_ROUTER_TEMPERATURE'], unknown: [] },
    ]);
  });

  it.each([
    ['--grpc-port', 'grpc-js'],
    ['--grpc-health-port', 'raw-h2'],
    ['--grpc-health-port', 'grpc-js'],
    ['--metrics-port', 'raw-h2'],
  ])(
    'fails on %s taken (%s transport) with one line naming flag and port',
    async (flag, transport) => {
      const { port } = await occupied();
      // grpc-js's own log line about the failed bind is not written (serve's one line says it).
      const stderr = vi.spyOn(console, 'error');
      const e = await failure(
        startServing(
          args(
            '--endpoints-file',
            DEFAULT_ENDPOINTS,
            `--ext-proc-transport=${transport}`,
            `${flag}=${port}`,
          ),
          ENV,
          new RecordingLogger(),
        ),
      );
      expect(e).toBeInstanceOf(KvEppError);
      expect(e.message).toBe(`${flag} ${port}: address already in use`);
      const written = stderr.mock.calls.flat().map(String);
      stderr.mockRestore();
      expect(written.filter((l) => l.includes('No address added'))).toEqual([]);
    },
  );

  it('takes DYN_MODEL_PATH as the tokenizer and names it when it is none', async () => {
    const e = await failure(
      startServing(args('--endpoints-file', DEFAULT_ENDPOINTS), {
        ...ENV,
        DYN_MODEL_PATH: '/no/such/model',
      }),
    );
    expect(e.message).toMatch(/^DYN_MODEL_PATH: .*\/no\/such\/model/);
  });

  it('fails when endpoints come from both --endpoints-file and the config file', async () => {
    const dir = tmp();
    const cfg = join(dir, 'kv-epp.yaml');
    write(cfg, 'endpoints:\n  - { name: w, address: 127.0.0.2, port: 8001 }\n');
    const e = await failure(
      startServing(args('--endpoints-file', DEFAULT_ENDPOINTS, '--config-file', cfg), ENV),
    );
    expect(e.message).toBe(
      `--endpoints-file: endpoints are given twice: --endpoints-file ${DEFAULT_ENDPOINTS} and endpoints: in ${cfg}; keep one`,
    );
  });

  it('warns about prefill/decode endpoints at start-up and when the file changes them', async () => {
    const dir = tmp();
    const file = join(dir, 'endpoints.yaml');
    const ep = (name: string, last: number, role: string) =>
      `  - { name: ${name}, address: 127.0.0.${last}, port: 8001, role: ${role} }\n`;
    write(file, `endpoints:\n${ep('a', 2, 'aggregated')}${ep('p', 3, 'prefill')}`);
    const log = new RecordingLogger();
    const s = await startServing(args('--endpoints-file', file), ENV, log);
    running.push(s);
    const roleWarnings = () =>
      log.records.filter((r) => r.msg.startsWith('disaggregated routing is not implemented'));
    expect(roleWarnings().map((r) => r.fields)).toEqual([{ prefill: ['p'], decode: [] }]);

    write(
      file,
      `endpoints:\n${ep('a', 2, 'aggregated')}${ep('p', 3, 'prefill')}${ep('d', 4, 'decode')}`,
    );
    await s.reloadEndpoints();
    for (let i = 0; i < 250 && roleWarnings().length < 2; i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(roleWarnings().map((r) => r.fields)).toEqual([
      { prefill: ['p'], decode: [] },
      { prefill: ['p'], decode: ['d'] },
    ]);
  });
});
