/**
 * `kv-epp events replay` (src/cli/events.ts) on payloads captured from Dynamo
 * 1.6.1's real KvEventPublisher (test/fixtures/events/, made by
 * scripts/capture-events/capture.sh): the printed overlap must equal what
 * Dynamo's own RadixTree reported for the same files (expected.json), worker
 * ids above 2^63 as decimal strings. Plus usage errors naming the field.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { UsageError } from '../../../src/cli/args.js';
import { eventsCommand } from '../../../src/cli/events.js';

const FIXTURES = join(import.meta.dirname, '../../fixtures/events');

interface Overlap {
  workerId: string;
  dpRank: number;
  blocks: number;
}
interface Expected {
  codec: string;
  blockSize: number;
  messages: number;
  applied: number;
  rejected: Record<string, number>;
  gaps: number;
  overlap: Overlap[];
  queries: Array<{ file: string; loraName?: string; cacheNamespace?: string; overlap: Overlap[] }>;
}
interface Output {
  applied: number;
  rejected: Record<string, number>;
  gaps: number;
  overlap: Overlap[];
}

function expected(codec: string): Expected {
  return JSON.parse(readFileSync(join(FIXTURES, codec, 'expected.json'), 'utf8')) as Expected;
}

async function replay(...args: string[]): Promise<Output> {
  return JSON.parse(await eventsCommand(['replay', ...args])) as Output;
}

/** Replays the captures in `dir` under `codec` for one of its expected queries. */
function replayQuery(
  codec: string,
  exp: Expected,
  dir: string,
  q: Expected['queries'][number],
): Promise<Output> {
  return replay(
    '--codec',
    codec,
    '--block-size',
    String(exp.blockSize),
    '--query-tokens',
    join(dir, q.file),
    ...(q.loraName ? ['--lora-name', q.loraName] : []),
    ...(q.cacheNamespace ? ['--cache-namespace', q.cacheNamespace] : []),
    '--dir',
    dir,
  );
}

describe('kv-epp events replay on captured Dynamo 1.6.1 payloads', () => {
  it.each(['dynamo', 'dynamo-json'])(
    '%s: the overlap Dynamo RadixTree reported, for every query',
    async (codec) => {
      const exp = expected(codec);
      const dir = join(FIXTURES, codec);
      expect(exp.queries[0]?.overlap).toEqual(exp.overlap);
      // Worker ids above 2^63 stay exact.
      expect(exp.overlap.map((o) => o.workerId)).toContain('18446744073709551611');
      for (const q of exp.queries) {
        const out = await replayQuery(codec, exp, dir, q);
        expect(out.overlap, q.file).toEqual(q.overlap);
        expect(out.applied).toBe(exp.applied);
        expect(out.rejected).toEqual(exp.rejected);
        expect(out.gaps).toBe(exp.gaps);
      }
    },
  );

  it('dynamo reads JSON RouterEvents too, as the live subscription does', async () => {
    const exp = expected('dynamo-json');
    const dir = join(FIXTURES, 'dynamo-json');
    const q = exp.queries[0] as Expected['queries'][number];
    const out = await replayQuery('dynamo', exp, dir, q);
    expect(out.overlap).toEqual(q.overlap);
    expect(out.applied).toBe(exp.applied);
    expect(out.rejected).toEqual(exp.rejected);
  });

  it('prints exactly the documented shape', async () => {
    const dir = join(FIXTURES, 'dynamo');
    const text = await eventsCommand([
      'replay',
      '--codec',
      'dynamo',
      '--block-size',
      '4',
      '--query-tokens',
      join(dir, 'query-tokens.json'),
      '--dir',
      dir,
    ]);
    expect(text).not.toContain('\n');
    expect(Object.keys(JSON.parse(text))).toEqual(['applied', 'rejected', 'gaps', 'overlap']);
    expect(text).toContain('"workerId":"18446744073709551611"');
  });

  it('dynamo payloads name their worker: a --source id is ignored', async () => {
    const exp = expected('dynamo');
    const dir = join(FIXTURES, 'dynamo');
    const out = await replay(
      '--codec',
      'dynamo',
      '--block-size',
      '4',
      '--query-tokens',
      join(dir, 'query-tokens.json'),
      '--source',
      `5/3=${dir}`,
    );
    expect(out.overlap).toEqual(exp.overlap);
  });

  it('the wrong codec rejects every message as malformed and finds nothing', async () => {
    const exp = expected('dynamo');
    const dir = join(FIXTURES, 'dynamo');
    const out = await replay(
      '--codec',
      'dynamo-json',
      '--block-size',
      '4',
      '--query-tokens',
      join(dir, 'query-tokens.json'),
      '--dir',
      dir,
    );
    expect(out).toEqual({
      applied: 0,
      rejected: { malformed: exp.messages },
      gaps: 0,
      overlap: [],
    });
  });

  it('vllm: the worker and dp rank come from --source', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kv-epp-replay-'));
    // msgpack [ts, [["BlockStored", [hash], nil, [1,2,3,4], 4, nil, "GPU"]], nil]: one
    // full block, the tagged-array layout of older vLLM; hash 2^64-1 as uint64.
    const payload = Buffer.concat([
      Buffer.from([0x93, 0xcb]),
      Buffer.alloc(8),
      Buffer.from([0x91, 0x97, 0xab]),
      Buffer.from('BlockStored'),
      Buffer.from([0x91, 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
      Buffer.from([0xc0, 0x94, 0x01, 0x02, 0x03, 0x04, 0x04, 0xc0, 0xa3]),
      Buffer.from('GPU'),
      Buffer.from([0xc0]),
    ]);
    writeFileSync(join(dir, '0000.bin'), payload);
    const query = join(dir, 'q.json');
    writeFileSync(query, '[1,2,3,4,5]');
    const out = await replay(
      '--codec',
      'vllm',
      '--block-size',
      '4',
      '--query-tokens',
      query,
      '--source',
      `18446744073709551615/2=${dir}`,
    );
    expect(out).toEqual({
      applied: 1,
      rejected: {},
      gaps: 0,
      overlap: [{ workerId: '18446744073709551615', dpRank: 2, blocks: 1 }],
    });
  });

  const dir = join(FIXTURES, 'dynamo');
  const q = join(dir, 'query-tokens.json');
  it.each([
    [['--block-size', '4', '--query-tokens', q, '--dir', dir], '--codec: expected one of'],
    [['--codec', 'zmq', '--block-size', '4', '--query-tokens', q, '--dir', dir], '--codec'],
    [['--codec', 'dynamo', '--query-tokens', q, '--dir', dir], '--block-size: is required'],
    [['--codec', 'dynamo', '--block-size', '4', '--dir', dir], '--query-tokens: required'],
    [['--codec', 'dynamo', '--block-size', '4', '--query-tokens', q], '--dir: give --dir'],
    [
      ['--codec', 'vllm', '--block-size', '4', '--query-tokens', q, '--dir', dir],
      '--dir: vLLM payloads do not name their worker',
    ],
    [
      ['--codec', 'vllm', '--block-size', '4', '--query-tokens', q, '--source', dir],
      '--source: expected WORKER_ID[/DP_RANK]=DIR',
    ],
    [
      ['--codec', 'vllm', '--block-size', '4', '--query-tokens', q, '--source', `w1=${dir}`],
      '--source: expected WORKER_ID[/DP_RANK]=DIR',
    ],
    [
      ['--codec', 'vllm', '--block-size', '4', '--query-tokens', q, '--source', `1/x=${dir}`],
      '--source: expected WORKER_ID[/DP_RANK]=DIR',
    ],
    [
      [
        ...['--codec', 'vllm', '--block-size', '4', '--query-tokens', q],
        ...['--source', `18446744073709551616=${dir}`],
      ],
      '--source: worker id exceeds 2^64-1',
    ],
    [
      ['--codec', 'dynamo', '--block-size', '4', '--query-tokens', q, '--dir', '/nonexistent/x'],
      '--dir: cannot read /nonexistent/x',
    ],
    [
      [
        '--codec',
        'dynamo',
        '--block-size',
        '4',
        '--query-tokens',
        '/nonexistent/q.json',
        '--dir',
        dir,
      ],
      '--query-tokens: cannot read /nonexistent/q.json',
    ],
  ])('usage error: %j', async (args, message) => {
    const p = eventsCommand(['replay', ...args]);
    await expect(p).rejects.toBeInstanceOf(UsageError);
    await expect(p).rejects.toThrow(message);
  });

  it('rejects an unknown subcommand', async () => {
    await expect(eventsCommand(['dump'])).rejects.toThrow('events: unknown subcommand "dump"');
  });
});
