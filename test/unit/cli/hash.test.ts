/**
 * `kv-epp hash`: stable JSON output and one-line errors naming the field.
 * Runs the built CLI (dist/, made by `npm run build:ts`) as a user would.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const CLI = join(import.meta.dirname, '../../../dist/src/cli/main.js');

function run(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

describe('kv-epp hash', () => {
  it.each(['native', 'js'])('prints Dynamo hashes as decimal strings (%s)', (backend) => {
    const r = run(
      'hash',
      '--block-size',
      '4',
      '--backend',
      backend,
      '--tokens',
      '1,2,3,4,5,6,7,8,9',
    );
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toEqual({
      local: ['14643705804678351452', '16777012769546811212'],
      sequence: ['14643705804678351452', '4945711292740353085'],
    });
  });

  it('reads a tokens file and folds LoRA and namespace into the seed', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kv-epp-'));
    const file = join(dir, 't.json');
    writeFileSync(file, '[0,1,2,3]');
    const r = run(
      'hash',
      '--block-size',
      '4',
      '--lora-name',
      'adapter-a',
      '--cache-namespace',
      'tenant-a',
      '--tokens-file',
      file,
    );
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out).local).toEqual(['8269515957840517240']);
  });

  it.each([
    [['--tokens', '1,2'], '--block-size: is required'],
    [['--block-size', '0', '--tokens', '1'], '--block-size: must be in 1..=1024'],
    [['--block-size', '4', '--tokens', '1,x'], '--tokens: token 1 is not a non-negative integer'],
    [['--block-size', '4', '--tokens', '4294967296'], '--tokens: token 0 exceeds 2^32-1'],
    [['--block-size', '4', '--tokens=-1'], '--tokens: token 0 is not a non-negative integer'],
    [['--block-size', '4', '--tokens', '-1'], "'--tokens'"],
    [['--block-size', '4'], '--tokens: give exactly one of --tokens or --tokens-file'],
    [['--block-size', '4', '--tokens-file', '/nonexistent.json'], '--tokens-file: cannot read'],
    [['--block-size', '4', '--backend', 'gpu', '--tokens', '1'], '--backend: must be auto'],
  ])('rejects %j with one line naming the field', (args, msg) => {
    const r = run('hash', ...args);
    expect(r.code).toBe(2);
    expect(r.out).toBe('');
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toContain(msg);
  });

  it('rejects a tokens file with a token above 2^32-1', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kv-epp-'));
    const file = join(dir, 't.json');
    writeFileSync(file, '{"tokens":[1, 4294967296]}');
    const r = run('hash', '--block-size', '4', '--tokens-file', file);
    expect(r.code).toBe(2);
    expect(r.err).toContain('--tokens-file: token 1 exceeds 2^32-1');
  });
});
