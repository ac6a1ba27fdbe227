/**
 * `kv-epp serve` and the files it reads at start-up: an unreadable chat
 * template fails with one KvEppError naming the setting that gave it (the
 * flag or the config file's field), and `inference_pool_ready_pods` counts
 * the endpoints requests can go to (not prefill-only ones).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { type Serving, startServing } from '../../../src/cli/serve.js';
import { countRoutable } from '../../../src/discovery/endpoints.js';
import { KvEppError } from '../../../src/errors.js';
import { loadNativeBinding } from '../../../src/kv/native/binding.js';
import { RecordingLogger } from '../../support/ext-proc.js';
import { DEFAULT_ENDPOINTS, serveArgs, serveHarness } from '../../support/serve-harness.js';

const ENV = { KV_EPP_POOL_SIZE: '0' };
const hasAddon = await loadNativeBinding().then(
  () => true,
  () => false,
);
const { running, tmp } = serveHarness('files');

const args = serveArgs;

async function failure(p: Promise<Serving>): Promise<Error> {
  try {
    running.push(await p);
  } catch (e) {
    return e as Error;
  }
  throw new Error('start-up did not fail');
}

describe('kv-epp serve: the chat template file', () => {
  it('fails naming --chat-template when the flag names a file that cannot be read', async () => {
    const e = await failure(
      startServing(
        args('--endpoints-file', DEFAULT_ENDPOINTS, '--chat-template', '/nonexistent.jinja'),
        ENV,
        new RecordingLogger(),
      ),
    );
    expect(e).toBeInstanceOf(KvEppError);
    expect((e as KvEppError).code).toBe('invalid_argument');
    expect(e.message).toMatch(/^--chat-template: cannot read \/nonexistent\.jinja: ENOENT/);
  });

  it('fails naming the config file field when model.chatTemplateFile cannot be read', async () => {
    const dir = tmp();
    const cfg = join(dir, 'kv-epp.yaml');
    writeFileSync(cfg, `model:\n  chatTemplateFile: ${dir}\n`);
    const e = await failure(
      startServing(
        args('--endpoints-file', DEFAULT_ENDPOINTS, '--config-file', cfg),
        ENV,
        new RecordingLogger(),
      ),
    );
    expect(e).toBeInstanceOf(KvEppError);
    // A directory: EISDIR.
    expect(e.message).toMatch(
      new RegExp(`^${cfg}: model\\.chatTemplateFile: cannot read ${dir}: EISDIR`),
    );
  });

  it.skipIf(!hasAddon)(
    'names --chat-template when the addon refuses a template for the built-in encoding',
    async () => {
      const dir = tmp();
      const template = join(dir, 't.jinja');
      writeFileSync(template, '{{ messages[0].content }}');
      const e = await failure(
        startServing(
          args(
            '--endpoints-file',
            DEFAULT_ENDPOINTS,
            '--chat-template',
            template,
            '--backend=native',
          ),
          ENV,
          new RecordingLogger(),
        ),
      );
      expect(e.message).toBe('--chat-template: o200k_base has no chat template support');
    },
  );
});

describe('kv-epp serve: inference_pool_ready_pods', () => {
  it('counts routable endpoints only (prefill-only ones get no requests)', async () => {
    const dir = tmp();
    const file = join(dir, 'endpoints.yaml');
    const ep = (name: string, last: number, role: string) =>
      `  - { name: ${name}, address: 127.0.0.${last}, port: 8001, role: ${role} }\n`;
    writeFileSync(
      file,
      `endpoints:\n${ep('a', 2, 'aggregated')}${ep('d', 3, 'decode')}${ep('p', 4, 'prefill')}${ep('q', 5, 'prefill')}`,
    );
    const s = await startServing(args('--endpoints-file', file), ENV, new RecordingLogger());
    running.push(s);
    expect(s.endpoints()).toHaveLength(4);
    const text = await (await fetch(`http://127.0.0.1:${s.metrics.port}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith('inference_pool_ready_pods{'));
    expect(line).toBe('inference_pool_ready_pods{name=""} 2');
  });

  it('countRoutable skips role prefill only', () => {
    const e = (role: string) => ({ role }) as Parameters<typeof countRoutable>[0][number];
    expect(countRoutable([])).toBe(0);
    expect(countRoutable([e('prefill'), e('prefill')])).toBe(0);
    expect(countRoutable([e('aggregated'), e('decode'), e('prefill')])).toBe(2);
  });
});
