/**
 * `parseFlags`: command lines read as Go's pflag (GAIE's EPP) reads them —
 * bare booleans, `=value`, values taken whatever they look like, the `-v`
 * shorthand — and the failures named by argument.
 */
import { describe, expect, it } from 'vitest';
import { type FlagSpec, goBool, parseFlags, UsageError } from '../../../src/cli/args.js';

const SPECS: Record<string, FlagSpec> = {
  'secure-serving': { kind: 'boolean' },
  'kv-events': { kind: 'boolean' },
  'pool-name': { kind: 'string' },
  'lora-info-metric': { kind: 'string' },
  v: { kind: 'string', short: 'v' },
};
const parse = (...argv: string[]) => parseFlags(argv, SPECS);

describe('parseFlags (pflag-compatible)', () => {
  it('reads a bare boolean as true and `=value` as its value, without taking the next argument', () => {
    expect(parse('--secure-serving')).toEqual({ 'secure-serving': true });
    expect(parse('--secure-serving=false', '--kv-events=true')).toEqual({
      'secure-serving': 'false',
      'kv-events': 'true',
    });
    // The next flag is not swallowed as the boolean's value.
    expect(parse('--secure-serving', '--pool-name', 'p')).toEqual({
      'secure-serving': true,
      'pool-name': 'p',
    });
  });

  it('takes the next argument as a string value whatever it is, empty and dash-led included', () => {
    expect(parse('--pool-name', 'p', '--lora-info-metric', '')).toEqual({
      'pool-name': 'p',
      'lora-info-metric': '',
    });
    expect(parse('--pool-name', '--odd')).toEqual({ 'pool-name': '--odd' });
    expect(parse('--pool-name=a=b')).toEqual({ 'pool-name': 'a=b' });
    // The last occurrence wins.
    expect(parse('--pool-name=a', '--pool-name=b')).toEqual({ 'pool-name': 'b' });
  });

  it('reads the -v shorthand in all of pflag forms, and --v', () => {
    for (const argv of [['-v', '3'], ['-v=3'], ['-v3'], ['--v', '3'], ['--v=3']]) {
      expect(parse(...argv)).toEqual({ v: '3' });
    }
  });

  it('stops at `--` and rejects anything after it', () => {
    expect(parse('--kv-events', '--')).toEqual({ 'kv-events': true });
    expect(() => parse('--', 'x')).toThrow('x: unexpected argument');
  });

  it.each([
    [['--zap-encoder', 'json'], '--zap-encoder: unknown option'],
    [['--constructor=1'], '--constructor: unknown option'],
    [['-pool-name', 'x'], '-pool-name: unknown option (long options take two dashes: --pool-name)'],
    [['-x'], '-x: unknown option'],
    [['--pool-name'], '--pool-name: needs a value'],
    [['-v'], '-v: needs a value'],
    [['stray'], 'stray: unexpected argument (only options are accepted)'],
    [
      ['--secure-serving', 'maybe'],
      'maybe: unexpected argument (only options are accepted; if it is meant for --secure-serving, that flag takes true or false)',
    ],
    [
      ['--secure-serving', 'false'],
      '--secure-serving: a boolean flag takes its value after "=" (--secure-serving=false)',
    ],
  ])('rejects %j naming the argument', (argv, msg) => {
    let err: unknown;
    try {
      parse(...argv);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UsageError);
    expect((err as Error).message).toContain(msg);
  });

  it("reads Go's boolean spellings", () => {
    expect(['1', 't', 'T', 'true', 'TRUE', 'True'].map(goBool)).toEqual(Array(6).fill(true));
    expect(['0', 'f', 'F', 'false', 'FALSE', 'False'].map(goBool)).toEqual(Array(6).fill(false));
    expect(goBool('maybe')).toBeUndefined();
  });
});
