/**
 * `kv-epp events replay`: applies captured raw KV-event payloads to a fresh
 * index and prints the overlap of a query, to answer "why did this request
 * not hit the cache". Output (stable, one JSON line):
 * `{"applied":N,"rejected":{reason:count},"gaps":G,"overlap":[{"workerId":"…","dpRank":0,"blocks":K}]}`
 * with worker ids as decimal strings (u64).
 *
 * Inputs: `*.bin` files, one transport message each (a NATS message body, or
 * the payload frame of a ZMQ message), applied in file-name order. `--dir`
 * holds Dynamo payloads (they name their worker); `--source
 * WORKER_ID[/DP_RANK]=DIR` (repeatable) names the worker of an engine stream
 * (vLLM/SGLang); for vLLM the batch's `data_parallel_rank` wins over the rank
 * given here.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { sniffDynamoCodec } from '../events/dynamo-codec.js';
import { createEventApplier } from '../events/factory.js';
import type { EventCodec, EventSourceContext } from '../events/types.js';
import { createBlockHasher, createKvIndex } from '../kv/factory.js';
import type { BackendChoice } from '../kv/types.js';
import { parseIntOption, tokensFromJson, UsageError } from './args.js';

export const EVENTS_USAGE = `usage: kv-epp events replay --codec dynamo|dynamo-json|vllm --block-size N
                    --query-tokens F.json [--lora-name S] [--cache-namespace S]
                    [--backend auto|native|js] (--dir D | --source WORKER_ID[/DP_RANK]=DIR ...)`;

const CODECS: readonly EventCodec[] = ['dynamo', 'dynamo-json', 'vllm'];

interface Source {
  dir: string;
  context?: EventSourceContext;
}

function parseSource(spec: string): Source {
  const m = /^(\d+)(?:\/(\d+))?=(.+)$/.exec(spec);
  if (!m) throw new UsageError('--source', `expected WORKER_ID[/DP_RANK]=DIR, got ${spec}`);
  const workerId = BigInt(m[1] as string);
  if (workerId >= 1n << 64n) throw new UsageError('--source', `worker id exceeds 2^64-1: ${m[1]}`);
  const dpRank = m[2] === undefined ? 0 : Number(m[2]);
  if (!Number.isSafeInteger(dpRank) || dpRank > 0xffff_ffff)
    throw new UsageError('--source', `dp rank out of range: ${m[2]}`);
  return { dir: m[3] as string, context: { workerId, dpRank } };
}

async function payloadFiles(dir: string, field: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    throw new UsageError(field, `cannot read ${dir}: ${(e as Error).message}`);
  }
  return names
    .filter((n) => n.endsWith('.bin'))
    .sort()
    .map((n) => join(dir, n));
}

export async function eventsCommand(argv: string[]): Promise<string> {
  const [sub, ...rest] = argv;
  if (sub !== 'replay') throw new UsageError('events', `unknown subcommand ${JSON.stringify(sub)}`);
  const { values } = parseArgs({
    args: rest,
    strict: true,
    options: {
      codec: { type: 'string' },
      'block-size': { type: 'string' },
      'query-tokens': { type: 'string' },
      'lora-name': { type: 'string' },
      'cache-namespace': { type: 'string' },
      backend: { type: 'string', default: 'auto' },
      dir: { type: 'string' },
      source: { type: 'string', multiple: true },
    },
  });
  const codec = values.codec as EventCodec | undefined;
  if (codec === undefined || !CODECS.includes(codec)) {
    throw new UsageError('--codec', `expected one of ${CODECS.join(', ')}, got ${String(codec)}`);
  }
  const blockSize = parseIntOption(values['block-size'], '--block-size', 1, 1024);
  const backend = values.backend as string;
  if (!['auto', 'native', 'js'].includes(backend)) {
    throw new UsageError('--backend', `must be auto, native or js, got ${backend}`);
  }
  const sources: Source[] = (values.source ?? []).map(parseSource);
  if (values.dir !== undefined) sources.unshift({ dir: values.dir });
  if (sources.length === 0) throw new UsageError('--dir', 'give --dir or at least one --source');
  if (codec === 'vllm' && values.dir !== undefined) {
    throw new UsageError('--dir', 'vLLM payloads do not name their worker: use --source ID=DIR');
  }
  const queryFile = values['query-tokens'];
  if (queryFile === undefined) throw new UsageError('--query-tokens', 'required');
  let query: Uint32Array;
  try {
    query = tokensFromJson(JSON.parse(await readFile(queryFile, 'utf8')), '--query-tokens');
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError('--query-tokens', `cannot read ${queryFile}: ${(e as Error).message}`);
  }

  const choice = backend as BackendChoice;
  const index = await createKvIndex(choice);
  const applier = await createEventApplier(index, { blockSize });
  try {
    let applied = 0;
    let gaps = 0;
    const rejected: Record<string, number> = {};
    for (const src of sources) {
      for (const file of await payloadFiles(src.dir, src.context ? '--source' : '--dir')) {
        const bytes = new Uint8Array(await readFile(file));
        // Dynamo's event plane carries msgpack envelopes or JSON RouterEvents: as the
        // live subscription does, a `dynamo` payload that is JSON is read as such.
        const r = applier.apply(
          codec === 'dynamo' ? sniffDynamoCodec(bytes) : codec,
          bytes,
          src.context,
        );
        applied += r.applied.stored + r.applied.removed + r.applied.cleared;
        gaps += r.gaps.length;
        for (const [k, n] of Object.entries(r.rejected))
          rejected[k] = (rejected[k] ?? 0) + (n ?? 0);
      }
    }
    const hasher = await createBlockHasher(choice);
    const { local } = hasher.hash(query, blockSize, {
      loraName: values['lora-name'],
      cacheNamespace: values['cache-namespace'],
    });
    const scores = index.findMatches(local, false);
    return JSON.stringify({
      applied,
      rejected,
      gaps,
      overlap: scores.workers.map((w, i) => ({
        workerId: w.workerId.toString(),
        dpRank: w.dpRank,
        blocks: scores.blocks[i],
      })),
    });
  } finally {
    applier.dispose();
    index.dispose();
  }
}
