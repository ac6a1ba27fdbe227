/**
 * `kv-epp tokenize`: the built CLI prints the golden ids for a request body,
 * with block hashes on request, and one-line errors.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '../../..');
const CLI = join(ROOT, 'dist/src/cli/main.js');
const QWEN = join(ROOT, 'test/fixtures/tokenizers/qwen3');

function run(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

function goldenRequest(name: string): { file: string; ids: number[] } {
  const g = JSON.parse(
    readFileSync(join(ROOT, `test/fixtures/chat/goldens/qwen3/${name}.json`), 'utf8'),
  ) as { request: unknown; ids: number[] };
  const file = join(mkdtempSync(join(tmpdir(), 'kv-epp-')), 'body.json');
  writeFileSync(file, JSON.stringify(g.request));
  return { file, ids: g.ids };
}

describe('kv-epp tokenize', () => {
  it.each(['native', 'js'])('prints the golden ids of a chat request (%s)', (backend) => {
    const { file, ids } = goldenRequest('tools');
    const r = run(
      'tokenize',
      '--tokenizer',
      QWEN,
      '--backend',
      backend,
      '--request',
      file,
      '--prompt-dialect',
      'vllm',
    );
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toEqual({ tokens: ids, count: ids.length });
  });

  it("follows serve's default prompt dialect, dynamo (a NUL is removed, as Dynamo's frontend does)", () => {
    const dir = mkdtempSync(join(tmpdir(), 'kv-epp-tok-'));
    const file = join(dir, 'chat.json');
    writeFileSync(file, JSON.stringify({ messages: [{ role: 'user', content: 'a\u0000b' }] }));
    const ids = (...extra: string[]) =>
      JSON.parse(run('tokenize', '--tokenizer', QWEN, '--request', file, ...extra).out).tokens;
    const plain = join(dir, 'plain.json');
    writeFileSync(plain, JSON.stringify({ messages: [{ role: 'user', content: 'ab' }] }));
    expect(ids()).toEqual(ids('--prompt-dialect', 'dynamo'));
    expect(ids()).toEqual(
      JSON.parse(run('tokenize', '--tokenizer', QWEN, '--request', plain).out).tokens,
    );
    expect(ids('--prompt-dialect', 'vllm')).not.toEqual(ids());
    expect(
      run('tokenize', '--tokenizer', QWEN, '--request', file, '--prompt-dialect', 'x').code,
    ).toBe(2);
  });

  it('adds block hashes with --block-size, equal to `kv-epp hash` of the ids', () => {
    const { file, ids } = goldenRequest('multi-turn');
    const r = run('tokenize', '--tokenizer', QWEN, '--request', file, '--block-size', '16');
    const out = JSON.parse(r.out);
    const h = run('hash', '--block-size', '16', '--tokens', ids.join(','));
    expect(out.local).toEqual(JSON.parse(h.out).local);
    expect(out.sequence).toEqual(JSON.parse(h.out).sequence);
    expect(out.local).toHaveLength(Math.floor(ids.length / 16));
  });

  it('encodes plain text with a built-in tiktoken encoding', () => {
    const r = run('tokenize', '--tokenizer', 'o200k_base', '--text', 'hello world');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out).count).toBe(2);
  });

  it.each([
    [['--tokenizer', '/nonexistent/dir', '--text', 'x'], 1, 'tokenizer_not_found'],
    [['--tokenizer', 'o200k_base'], 2, '--text: give exactly one of --text or --request'],
    [['--text', 'x'], 2, '--tokenizer: is required'],
  ])('fails on %j with one line', (args, code, msg) => {
    const r = run('tokenize', ...(args as string[]));
    expect(r.code).toBe(code);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toContain(msg);
  });

  it('names the problem of a bad request body (exit 1)', () => {
    const file = join(mkdtempSync(join(tmpdir(), 'kv-epp-')), 'bad.json');
    writeFileSync(
      file,
      '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}',
    );
    const r = run('tokenize', '--tokenizer', QWEN, '--backend', 'js', '--request', file);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/unsupported_content: messages\[0\]\.content\[0\]/);
  });
});
