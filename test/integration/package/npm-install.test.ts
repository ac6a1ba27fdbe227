/**
 * kv-epp as an npm user gets it: `npm pack` of this checkout (dist/ built, as
 * the test script does first; `--ignore-scripts`, so no rebuild under other
 * tests' feet) installed into a fresh project, then the installed CLI served
 * on the package's own default endpoints: on the native addon the tarball
 * carries for this platform, and on the pure-JS twin when that addon cannot
 * load (with `--backend native` then failing with the loader's real reason).
 */
import { type ChildProcess, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  destinationOf,
  ExtProcClient,
  reqBody,
  reqHeaders,
  streamedOf,
} from '../../support/ext-proc.js';
import { type CliRun, ROOT, runCli, serveArgs } from '../../support/serve-harness.js';

const dir = mkdtempSync(join(tmpdir(), 'kv-epp-pkg-'));
const app = join(dir, 'app');
const pkg = join(app, 'node_modules/kv-epp');
const nodeFiles = readdirSync(join(ROOT, 'native/napi')).filter((f) => f.endsWith('.node'));
let packed: string[] = [];

/** The npm next to the running node (the test script runs Node 24's). */
const npm = existsSync(join(process.execPath, '../npm')) ? join(process.execPath, '../npm') : 'npm';

beforeAll(() => {
  if (!existsSync(join(ROOT, 'dist/src/cli/main.js'))) {
    throw new Error('dist/ is not built: run `npm run build:ts` first');
  }
  const out = execFileSync(npm, ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], {
    cwd: ROOT,
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  const [info] = JSON.parse(out) as Array<{ filename: string; files: Array<{ path: string }> }>;
  packed = (info?.files ?? []).map((f) => f.path);
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), '{"name":"app","private":true}\n');
  execFileSync(
    npm,
    [
      'install',
      '--prefer-offline',
      '--no-audit',
      '--no-fund',
      '--loglevel=error',
      join(dir, info?.filename as string),
    ],
    { cwd: app, encoding: 'utf8', stdio: 'pipe', timeout: 240_000 },
  );
}, 300_000);

afterAll(() => rmSync(dir, { recursive: true, force: true }));

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
});

/** The installed CLI, from outside the checkout. */
const installedCli = (...args: string[]): Promise<CliRun> =>
  runCli(join(pkg, 'dist/src/cli/main.js'), args, { children, cwd: app });

const serveDefault = (...extra: string[]) =>
  installedCli(
    'serve',
    ...serveArgs('--endpoints-file', join(pkg, 'config/endpoints.default.yaml'), ...extra),
  );

/** One chat request over ext_proc: routed to a default endpoint, token ids injected. */
async function routesAChat(port: number): Promise<void> {
  const client = new ExtProcClient(port);
  try {
    const [h, b] = await client
      .open()
      .send(
        reqHeaders({
          ':method': 'POST',
          ':path': '/v1/chat/completions',
          'content-type': 'application/json',
        }),
        reqBody(JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] }), true),
      )
      .take(2);
    expect(['127.0.0.2:8001', '127.0.0.3:8001']).toContain(destinationOf(h));
    const forwarded = JSON.parse(streamedOf(b, 'request_body')?.body ?? '{}');
    expect(forwarded.nvext.token_data.length).toBeGreaterThan(0);
  } finally {
    client.close();
  }
}

/** The labels of `kv_epp_backend_info` on the run's metrics port. */
async function backendInfo(run: CliRun): Promise<string | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${run.serving?.metricsPort}/metrics`)).text();
  return /^kv_epp_backend_info\{(.*)\} 1$/m.exec(text)?.[1];
}

describe('npm pack + npm install', () => {
  it('ships what serving needs (built code, protos, default endpoints, the addon) and no tests', () => {
    expect(packed).toContain('dist/src/cli/main.js');
    expect(packed).toContain('config/endpoints.default.yaml');
    expect(packed.filter((p) => p.startsWith('proto/') && p.endsWith('.proto')).length).toBe(5);
    for (const f of nodeFiles) expect(packed).toContain(`native/napi/${f}`);
    expect(nodeFiles.length).toBeGreaterThan(0);
    expect(packed.filter((p) => /^(test|bench|src|native\/(core|target))\//.test(p))).toEqual([]);
    expect(packed.filter((p) => p.startsWith('dist/') && !p.startsWith('dist/src/'))).toEqual([]);
  });

  it('answers --help with the usage of that command, and names the default endpoints file when none is given', async () => {
    const help = await installedCli('serve', '--help');
    expect(await help.exit).toBe(0);
    const text = help.records.map((r) => String(r.msg)).join('\n');
    expect(text).toMatch(/^usage: kv-epp serve /);
    expect(text).not.toMatch(/kv-epp hash/);
    const bare = await installedCli('serve', ...serveArgs());
    expect(await bare.exit).toBe(1);
    expect(bare.records.map((r) => String(r.msg)).join('\n')).toMatch(
      /--endpoints-file: required .*config\/endpoints\.default\.yaml/,
    );
  });

  it('serves the default endpoints on the native addon', async () => {
    const run = await serveDefault();
    expect(run.serving, JSON.stringify(run.records)).toBeDefined();
    expect(run.serving?.tokenizerBackend).toBe('native');
    await routesAChat(run.serving?.grpcPort as number);
    expect(await backendInfo(run)).toBe('tokenizer="native",hasher="native",index="native"');
  });

  it('falls back to the pure-JS twin when the addon cannot load, and --backend native says why', async () => {
    for (const f of nodeFiles) writeFileSync(join(pkg, 'native/napi', f), 'not an ELF file');
    const run = await serveDefault();
    expect(run.serving, JSON.stringify(run.records)).toBeDefined();
    expect(run.serving?.tokenizerBackend).toBe('js');
    expect(await backendInfo(run)).toBe('tokenizer="js",hasher="js",index="js"');
    expect(
      run.records.filter(
        (r) =>
          r.msg === 'native addon unavailable; using the pure-JS backend (slower, same results)',
      ),
    ).toHaveLength(1);
    await routesAChat(run.serving?.grpcPort as number);

    const native = await serveDefault('--backend', 'native');
    expect(await native.exit).toBe(1);
    const text = native.records.map((r) => String(r.msg)).join('\n');
    // The loader's own reason for the local file, not napi-rs's advice about npm.
    expect(text).toMatch(
      /native_unavailable: native addon failed to load from \S+: \S+kv-epp\.[\w-]+\.node: (invalid ELF header|file too short)/,
    );
    expect(text).toMatch(/npm run build:native/);
    expect(text).not.toMatch(/npm has a bug/);
  });
});
