/**
 * The pipeline gives the same tokens, hashes and scores inline and through
 * the worker pool, for both backends, and maps request errors the same way.
 * Runs the built worker (dist/), as production does.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createBlockHasher, createKvIndex } from '../../../src/kv/factory.js';
import type { Backend } from '../../../src/kv/types.js';
import { prepareRouteInline } from '../../../src/pipeline/route-prep.js';
import { createTokenizer } from '../../../src/tokenize/factory.js';
import { RoutePreparer } from '../../../src/workers/route-preparer.js';

const ROOT = join(import.meta.dirname, '../../..');
const QWEN = join(ROOT, 'test/fixtures/tokenizers/qwen3');
const golden = JSON.parse(
  readFileSync(join(ROOT, 'test/fixtures/chat/goldens/qwen3/multi-turn.json'), 'utf8'),
) as { request: unknown; ids: number[] };
const body = new TextEncoder().encode(JSON.stringify(golden.request));

const preparers: RoutePreparer[] = [];
afterAll(async () => {
  await Promise.all(preparers.map((p) => p.close()));
});

describe.each(['native', 'js'] as Backend[])('RoutePreparer (%s)', (backend) => {
  it('inline and pooled runs agree with the golden ids and the index', async () => {
    const tokenizer = await createTokenizer({ source: QWEN }, backend);
    const hasher = await createBlockHasher(backend);
    const index = await createKvIndex(backend);
    const path = { tokenizer, hasher, index };
    const settings = { blockSize: 4, cacheNamespace: 'tenant-a' };
    const inline = prepareRouteInline(path, body, 'chat', settings);
    expect(Array.from(inline.tokens)).toEqual(golden.ids);
    // Make the index hold the first 3 blocks for one worker.
    const w = { workerId: 42n, dpRank: 0 };
    index.applyStored(w, null, {
      localHashes: inline.localHashes.slice(0, 3),
      externalHashes: BigUint64Array.of(1n, 2n, 3n),
    });
    const pooled = RoutePreparer.create(path, { poolSize: 1, offloadBytes: 1 });
    preparers.push(pooled);
    const viaPool = await pooled.prepare(body, 'chat', settings);
    expect(viaPool.tokens).toEqual(inline.tokens);
    expect(viaPool.localHashes).toEqual(inline.localHashes);
    expect(viaPool.overlap.workers).toEqual([w]);
    expect(viaPool.overlap.blocks).toEqual([3]);
    // Small bodies stay inline on a pooled preparer.
    const small = RoutePreparer.create(path, { poolSize: 1, offloadBytes: 1 << 20 });
    preparers.push(small);
    expect((await small.prepare(body, 'chat', settings)).tokens).toEqual(inline.tokens);
  });

  it('rejects bad requests from the pool with the same codes as inline', async () => {
    const tokenizer = await createTokenizer({ source: QWEN }, backend);
    const path = {
      tokenizer,
      hasher: await createBlockHasher(backend),
      index: await createKvIndex(backend),
    };
    const pooled = RoutePreparer.create(path, { poolSize: 1, offloadBytes: 1 });
    preparers.push(pooled);
    const s = { blockSize: 16 };
    const bad = [
      ['{"messages": [', 'invalid_json'],
      ['{"messages": []}', 'template_error'],
      [
        '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}',
        'unsupported_content',
      ],
    ] as const;
    for (const [text, code] of bad) {
      const b = new TextEncoder().encode(text);
      let inlineCode: string | undefined;
      try {
        prepareRouteInline(path, b, 'chat', s);
      } catch (e) {
        inlineCode = (e as { code?: string }).code;
      }
      await expect(pooled.prepare(b, 'chat', s)).rejects.toMatchObject({ code: inlineCode });
      expect(inlineCode).toBe(code);
    }
  });
});
