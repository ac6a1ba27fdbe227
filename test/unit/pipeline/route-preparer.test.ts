/**
 * The pipeline gives the same tokens, hashes and scores inline and through
 * the worker pool, for both backends, and maps request errors the same way.
 * Runs the built worker (dist/), as production does.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { KvEppError } from '../../../src/errors.js';
import type { Backend } from '../../../src/kv/types.js';
import { createHotPath } from '../../../src/pipeline/factory.js';
import {
  prepareRouteInline,
  tenantNamespace,
  UntokenizableBody,
} from '../../../src/pipeline/route-prep.js';
import { RoutePreparer } from '../../../src/workers/route-preparer.js';
import { mulberry32 } from '../../support/random.js';

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
    const path = await createHotPath({ source: QWEN }, backend);
    const index = path.index;
    expect(path.fused !== undefined).toBe(backend === 'native');
    const settings = { blockSize: 4, cacheNamespace: 'tenant-a' };
    const inline = prepareRouteInline(path, body, 'chat', settings);
    expect(Array.from(inline.tokens)).toEqual(golden.ids);
    // The generic path (no fused call) gives the same answer.
    const generic = prepareRouteInline({ ...path, fused: undefined }, body, 'chat', settings);
    const { tokenDataJson: genericJson, ...genericRest } = generic;
    const { tokenDataJson: inlineJson, ...inlineRest } = inline;
    expect(genericRest).toEqual(inlineRest);
    // The ids as JSON bytes, native (Rust) and JS alike, are exactly JSON.stringify's.
    expect(new TextDecoder().decode(inlineJson)).toBe(JSON.stringify(golden.ids));
    expect(new TextDecoder().decode(genericJson)).toBe(JSON.stringify(golden.ids));
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

  it("takes the cache namespace from x-tenant-id before the body's salt (Dynamo's frontend order)", async () => {
    const path = await createHotPath({ source: 'o200k_base' }, backend);
    const pooled = RoutePreparer.create(path, { poolSize: 1, offloadBytes: 1 });
    preparers.push(pooled);
    const enc = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));
    const hashes = (ids: number[], ns: string | undefined) =>
      path.hasher.hash(Uint32Array.from(ids), 2, { cacheNamespace: ns }).local;
    const cases: Array<[unknown, string | undefined, string | undefined, string | undefined]> = [
      // body, header namespace, expected cacheSalt (the body's), namespace hashed under
      [{ prompt: [1, 2, 3, 4], nvext: { cache_salt: 'tenant-a' } }, 'hdr', 'tenant-a', 'hdr'],
      [
        { prompt: [1, 2, 3, 4], nvext: { cache_salt: 'tenant-a' } },
        undefined,
        'tenant-a',
        'tenant-a',
      ],
      [{ prompt: [1, 2], cache_salt: 't2' }, undefined, 't2', 't2'],
      [{ prompt: [1, 2], cache_salt: 't2', nvext: { cache_salt: '' } }, undefined, 't2', 't2'],
      [{ prompt: [1, 2] }, 'hdr', undefined, 'hdr'],
      [{ prompt: [1, 2] }, undefined, undefined, undefined],
    ];
    for (const [req, header, salt, ns] of cases) {
      const s = { blockSize: 2, cacheNamespace: header };
      const ids = (req as { prompt: number[] }).prompt;
      const runs = [
        prepareRouteInline(path, enc(req), 'completions', s),
        prepareRouteInline({ ...path, fused: undefined }, enc(req), 'completions', s),
        await pooled.prepare(enc(req), 'completions', s),
      ];
      for (const r of runs) {
        expect(r.cacheSalt, JSON.stringify(req)).toBe(salt);
        expect(r.localHashes, JSON.stringify([req, header])).toEqual(hashes(ids, ns));
      }
    }
    // The namespaces differ, so the cases above tell the orders apart.
    expect(hashes([1, 2], 'hdr')).not.toEqual(hashes([1, 2], 'tenant-a'));
  });

  it('rejects bad requests from the pool with the same codes as inline', async () => {
    const path = await createHotPath({ source: QWEN }, backend);
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

  it('hands a transferred body back with unsupported_content, so it can be forwarded untokenized', async () => {
    const path = await createHotPath({ source: QWEN }, backend);
    const pooled = RoutePreparer.create(path, { poolSize: 1, offloadBytes: 1 });
    preparers.push(pooled);
    const text =
      '{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}';
    const body = new TextEncoder().encode(text);
    const err = await pooled
      .prepare(body, 'chat', { blockSize: 16 }, { transferBody: true })
      .catch((e: unknown) => e);
    expect(body.byteLength).toBe(0); // transferred to the worker
    expect(err).toBeInstanceOf(UntokenizableBody);
    expect((err as UntokenizableBody).code).toBe('unsupported_content');
    expect(new TextDecoder().decode((err as UntokenizableBody).body)).toBe(text);
  });
});

describe.each(['native', 'js'] as Backend[])('RoutePreparer body work (%s)', (backend) => {
  const enc = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));
  const text = (b: Uint8Array | undefined) => new TextDecoder().decode(b);

  it('checks and splices the body the same inline and in the pool', async () => {
    const path = await createHotPath({ source: QWEN }, backend);
    const pooled = RoutePreparer.create(path, { poolSize: 1, offloadBytes: 1 });
    preparers.push(pooled);
    expect([pooled.offloads(1), pooled.offloads(0)]).toEqual([true, false]);
    const s = { blockSize: 4 };
    const withModel = enc({ ...(golden.request as object), model: 'm', nvext: { keep: 1 } });
    for (const work of [{}, { rewrite: 'm' }, { rewrite: 'served-name' }]) {
      const inline = prepareRouteInline(path, withModel, 'chat', s, work);
      const viaPool = await pooled.prepare(withModel, 'chat', s, work);
      expect(viaPool.request).toEqual(inline.request);
      const sent = JSON.parse(text(viaPool.request?.body)) as {
        model: string;
        nvext: { keep: number; token_data: number[] };
      };
      expect(sent.nvext).toEqual({ keep: 1, token_data: golden.ids });
      const rewritten = work.rewrite === 'served-name';
      expect([sent.model, viaPool.request?.model, viaPool.request?.target]).toEqual([
        rewritten ? 'served-name' : 'm',
        'm',
        rewritten ? 'served-name' : undefined,
      ]);
    }
    // Without body work nothing is spliced.
    expect((await pooled.prepare(withModel, 'chat', s)).request).toBeUndefined();
    // A body the caller gives up is moved to the worker, not copied: same answer, detached here.
    const given = new Uint8Array(withModel);
    const moved = await pooled.prepare(given, 'chat', s, { transferBody: true });
    expect(moved.request).toEqual(prepareRouteInline(path, withModel, 'chat', s, {}).request);
    expect(given.byteLength).toBe(0);
    // Kept when the caller keeps it.
    const kept = new Uint8Array(withModel);
    await pooled.prepare(kept, 'chat', s, {});
    expect(kept.byteLength).toBe(withModel.byteLength);
  });

  it("raises the router's 400s from the pool, before tokenizing", async () => {
    const path = await createHotPath({ source: QWEN }, backend);
    const pooled = RoutePreparer.create(path, { poolSize: 1, offloadBytes: 1 });
    preparers.push(pooled);
    const cases = [
      [
        '{"messages": [',
        'invalid_json',
        /^error unmarshaling request bodyMap: unexpected end of JSON input$/,
      ],
      ['[1]', 'invalid_json', /cannot unmarshal array into Go value of type map/],
      ['{"messages": []}', 'invalid_request', /model not found/],
      ['{"model": "m", "prompt": "x"}', 'invalid_request', /"messages" list/],
      // Dynamo's frontend refuses these too (`invalid type … expected struct NvExt`).
      [
        '{"model":"m","messages":[],"nvext":"hello"}',
        'invalid_request',
        /^"nvext" must be an object$/,
      ],
      ['{"model":"m","messages":[],"nvext":[1]}', 'invalid_request', /^"nvext" must be an object$/],
      ['{"model":"m","messages":[],"nvext":{},"nvext":5}', 'invalid_request', /"nvext" must be/],
    ] as const;
    for (const [t, code, msg] of cases) {
      const b = new TextEncoder().encode(t);
      await expect(pooled.prepare(b, 'chat', { blockSize: 4 }, {})).rejects.toMatchObject({
        code,
        message: expect.stringMatching(msg),
      });
      expect(() => prepareRouteInline(path, b, 'chat', { blockSize: 4 }, {})).toThrow(msg);
    }
  });
});

describe('RoutePreparer pool order', () => {
  it('tokenizes queued bodies first come, first served', async () => {
    const path = await createHotPath({ source: QWEN }, 'native');
    const pooled = RoutePreparer.create(path, { poolSize: 1, offloadBytes: 1 });
    preparers.push(pooled);
    const settings = { blockSize: 4 };
    await pooled.prepare(body, 'chat', settings);
    // One worker: the first runs at once, the rest queue behind it.
    const done: number[] = [];
    await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        pooled.prepare(body, 'chat', settings).then(() => done.push(i)),
      ),
    );
    expect(done).toEqual(Array.from({ length: 12 }, (_, i) => i));
  });

  it('drops a task whose request is cancelled while it waits; a running one finishes', async () => {
    const path = await createHotPath({ source: QWEN }, 'native');
    const pooled = RoutePreparer.create(path, { poolSize: 1, offloadBytes: 1 });
    preparers.push(pooled);
    const settings = { blockSize: 4 };
    const expected = prepareRouteInline(path, body, 'chat', settings).tokens;
    const cancels = Array.from({ length: 4 }, () => ({
      cancelled: false,
      onCancel: undefined as (() => void) | undefined,
    }));
    const runs = cancels.map((c) => pooled.prepare(body, 'chat', settings, undefined, c));
    // One thread: the first runs, three wait (counted for the 429 threshold).
    expect(pooled.queueDepth).toBe(3);
    // Cancel the running one and the second waiting one.
    for (const i of [0, 2]) {
      const c = cancels[i] as (typeof cancels)[number];
      c.cancelled = true;
      c.onCancel?.();
    }
    expect(pooled.queueDepth).toBe(2);
    const [r0, r1, r2, r3] = await Promise.allSettled(runs);
    expect(r0).toMatchObject({ status: 'fulfilled', value: { tokens: expected } });
    expect(r1).toMatchObject({ status: 'fulfilled', value: { tokens: expected } });
    expect(r2).toMatchObject({ status: 'rejected', reason: { code: 'cancelled' } });
    expect(r3).toMatchObject({ status: 'fulfilled', value: { tokens: expected } });
    expect(pooled.droppedTasks).toBe(1);
    expect(pooled.queueDepth).toBe(0);
    // A cancel after the task ended changes nothing.
    (cancels[3] as (typeof cancels)[number]).onCancel?.();
    expect(pooled.droppedTasks).toBe(1);
  });

  it('keeps no more dropped tasks than live ones (and 1 024) while a task holds the thread', async () => {
    const path = await createHotPath({ source: QWEN }, 'native');
    const pooled = RoutePreparer.create(path, { poolSize: 1, offloadBytes: 1 });
    preparers.push(pooled);
    const settings = { blockSize: 4 };
    const first = pooled.prepare(body, 'chat', settings);
    const live = pooled.prepare(body, 'chat', settings);
    // Opened and abandoned at once, 5 000 times, with the only thread busy all along.
    const gone: Array<Promise<unknown>> = [];
    for (let i = 0; i < 5000; i++) {
      const c = { cancelled: false, onCancel: undefined as (() => void) | undefined };
      gone.push(pooled.prepare(body, 'chat', settings, undefined, c).catch((e) => e));
      c.cancelled = true;
      c.onCancel?.();
      expect(pooled.heldWaiters).toBeLessThanOrEqual(1 + 1024 + 1);
    }
    expect(pooled.queueDepth).toBe(1);
    expect(pooled.droppedTasks).toBe(5000);
    for (const e of await Promise.all(gone)) expect(e).toMatchObject({ code: 'cancelled' });
    await Promise.all([first, live]);
    expect(pooled.queueDepth).toBe(0);
  });

  it('rejects tasks still waiting when the pool closes', async () => {
    const path = await createHotPath({ source: QWEN }, 'native');
    const pooled = RoutePreparer.create(path, { poolSize: 1, offloadBytes: 1 });
    const settings = { blockSize: 4 };
    const first = pooled.prepare(body, 'chat', settings);
    const waiting = pooled.prepare(body, 'chat', settings);
    const closed = pooled.close();
    await expect(waiting).rejects.toMatchObject({ code: 'disposed' });
    await Promise.allSettled([first, closed]);
  });
});

describe('token_data bytes', () => {
  it('native and JS write the same JSON for ids at every digit boundary', async () => {
    const ids = [0, 9, 10, 99, 100, 999, 1000, 65535, 99999, 100000, 199_997];
    const body = new TextEncoder().encode(JSON.stringify({ model: 'm', prompt: ids }));
    for (const backend of ['native', 'js'] as Backend[]) {
      const path = await createHotPath({ source: 'o200k_base' }, backend);
      const p = prepareRouteInline(path, body, 'completions', { blockSize: 4 });
      expect([backend, new TextDecoder().decode(p.tokenDataJson)]).toEqual([
        backend,
        JSON.stringify(Array.from(p.tokens)),
      ]);
      expect(Array.from(p.tokens)).toEqual(ids);
    }
  });
});

describe('body work, native (Rust) against the TypeScript twin', () => {
  const enc = (s: string) => new TextEncoder().encode(s);
  const text = (b: Uint8Array | undefined) => new TextDecoder().decode(b);

  /** Bodies around every branch of the splice: nvext shapes, key escapes, whitespace, duplicates. */
  function bodies(): string[] {
    const rand = mulberry32(7);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
    const ws = ['', ' ', '\n', '\t ', ' \r\n '];
    const nvexts = [
      undefined,
      'null',
      '7',
      '"x"',
      '[1,{"token_data":2}]',
      '{}',
      '{ }',
      '{"token_data":[9,9]}',
      '{"k":{"token_data":1},"token_data":"old"}',
      '{"cache_salt":"s","k":"}]\\"{"}',
      '{"tok\\u0065n_data":[1]}',
    ];
    const out: string[] = [];
    for (let i = 0; i < 300; i++) {
      const w = () => pick(ws);
      const members: string[] = [];
      const modelKey = pick(['"model"', '"mod\\u0065l"', '"model"']);
      members.push(
        `${modelKey}${w()}:${w()}${JSON.stringify(pick(['m', 'é ü', 'a"b\\c', 'x\u0001']))}`,
      );
      members.push(`"prompt":${w()}[1,2,3,${i},4,5,6,7,8]`);
      if (rand() < 0.3) members.push(`"extra":{"nvext":{"token_data":0}},"n":-1.5e+3`);
      const nv = pick(nvexts);
      if (nv !== undefined) members.push(`${pick(['"nvext"', '"nv\\u0065xt"'])}${w()}:${w()}${nv}`);
      if (rand() < 0.15) members.push('"model":"dup"');
      if (rand() < 0.15) members.push('"nvext":{"second":true}');
      for (let j = members.length - 1; j > 0; j--) {
        if (rand() < 0.3) {
          const k = Math.floor(rand() * (j + 1));
          [members[j], members[k]] = [members[k] as string, members[j] as string];
        }
      }
      out.push(`${w()}{${w()}${members.join(`${w()},${w()}`)}${w()}}${w()}`);
    }
    return out;
  }

  it('splices byte for byte as spliceRequestBody does, with and without a rewrite', async () => {
    const native = await createHotPath({ source: 'o200k_base' }, 'native');
    expect(native.fused).toBeDefined();
    const twin = { ...native, fused: undefined };
    const s = { blockSize: 2 };
    let compared = 0;
    let refused = 0;
    for (const b of bodies()) {
      const body = enc(b);
      JSON.parse(b); // every generated body is valid JSON
      for (const rewrite of [undefined, '', 'm', 'served "x"\n\u00e9\u2028']) {
        const work = { rewrite };
        const run = (path: typeof native) => {
          try {
            return prepareRouteInline(path, body, 'completions', s, work);
          } catch (e) {
            return `${(e as KvEppError).code}: ${(e as Error).message}`;
          }
        };
        const a = run(native);
        const t = run(twin);
        if (typeof a === 'string' || typeof t === 'string') {
          // A non-object `nvext` (the last one) is refused by both, in the same words.
          expect([b, a]).toEqual([b, t]);
          expect(a).toBe('invalid_request: "nvext" must be an object');
          refused++;
          continue;
        }
        expect(text(a.request?.body)).toBe(text(t.request?.body));
        expect([a.request?.model, a.request?.target, a.request?.tokenCount]).toEqual([
          t.request?.model,
          t.request?.target,
          t.request?.tokenCount,
        ]);
        expect(a.localHashes).toEqual(t.localHashes);
        expect(a.cacheSalt).toBe(t.cacheSalt);
        compared++;
      }
    }
    expect(compared + refused).toBe(1200);
    expect(refused).toBeGreaterThan(0);
    expect(compared).toBeGreaterThan(600);
  });

  it('refuses bad bodies with the same codes and messages', async () => {
    const native = await createHotPath({ source: QWEN }, 'native');
    const twin = { ...native, fused: undefined };
    const bad: [string, 'chat' | 'completions'][] = [
      ['{"model": "m", "messages": [', 'chat'],
      ['', 'chat'],
      ['[1]', 'chat'],
      ['"m"', 'completions'],
      ['{"messages": []}', 'chat'],
      ['{"model": "", "messages": []}', 'chat'],
      ['{"model": 3, "prompt": "x"}', 'completions'],
      ['{"model": "m", "prompt": "x"}', 'chat'],
      ['{"model": "m", "messages": {}}', 'chat'],
      ['{"model": "m"}', 'completions'],
      ['{"model": "m", "messages": []}', 'chat'],
      ['{"model": "m", "messages": [{"role": "user"}], "add_generation_prompt": []}', 'chat'],
      ['{"model": "m", "prompt": {"a": 1}}', 'completions'],
      ['{"model": "m", "prompt": "\\ud800"}', 'completions'],
      ['{"model": "m", "prompt": "x", "nvext": "hello"}', 'completions'],
      ['{"model": "m", "messages": [], "nvext": {}, "nvext": [1]}', 'chat'],
    ];
    for (const [b, api] of bad) {
      const outcome = (path: typeof native) => {
        try {
          prepareRouteInline(path, enc(b), api, { blockSize: 4 }, {});
          return 'accepted';
        } catch (e) {
          const { code, message } = e as { code?: string; message: string };
          return `${code}: ${message}`;
        }
      };
      const n = outcome(native);
      expect([b, n]).toEqual([b, outcome(twin)]);
      expect([b, n]).not.toEqual([b, 'accepted']);
    }
  });
});

describe('tenantNamespace (x-tenant-id as Dynamo reads it)', () => {
  it('takes non-empty visible ASCII (space and tab too) and nothing else', () => {
    expect(tenantNamespace('tenant-a')).toBe('tenant-a');
    expect(tenantNamespace('a b\tc~')).toBe('a b\tc~');
    expect(tenantNamespace('')).toBeUndefined();
    expect(tenantNamespace(undefined)).toBeUndefined();
    expect(tenantNamespace('tenant-ü')).toBeUndefined();
    expect(tenantNamespace('a\u007f')).toBeUndefined();
    expect(tenantNamespace('a\u0001')).toBeUndefined();
  });
});
