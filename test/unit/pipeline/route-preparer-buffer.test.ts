/**
 * Regression: a pooled prepare must not detach the caller's body. gRPC hands
 * the ext_proc server request bodies as Node Buffers (views into the received
 * message), and `Buffer#slice` is a view, not a copy: transferring its
 * `.buffer` to the worker detached the caller's bytes, so the router's splice
 * of `nvext.token_data` then failed (seen through Envoy in BUFFERED mode).
 */
import { afterAll, expect, it } from 'vitest';
import { createHotPath } from '../../../src/pipeline/factory.js';
import { prepareRouteInline } from '../../../src/pipeline/route-prep.js';
import { RoutePreparer } from '../../../src/workers/route-preparer.js';

const preparers: RoutePreparer[] = [];
afterAll(async () => {
  await Promise.all(preparers.map((p) => p.close()));
});

it('leaves a Buffer body (and the message around it) intact', async () => {
  const path = await createHotPath({ source: 'o200k_base' }, 'native');
  const preparer = RoutePreparer.create(path, { poolSize: 1, offloadBytes: 1024 });
  preparers.push(preparer);
  const json = JSON.stringify({
    model: 'm',
    messages: [{ role: 'user', content: 'x '.repeat(2000) }],
  });
  // A view into a larger buffer, like a decoded gRPC message's bytes field.
  const message = Buffer.concat([Buffer.from('head'), Buffer.from(json), Buffer.from('tail')]);
  const body = message.subarray(4, 4 + Buffer.byteLength(json));
  const pooled = await preparer.prepare(body, 'chat', { blockSize: 16 });
  expect(message.buffer.byteLength).toBeGreaterThan(0);
  expect(body.toString('utf8')).toBe(json);
  expect(message.subarray(-4).toString('utf8')).toBe('tail');
  const inline = prepareRouteInline(path, body, 'chat', { blockSize: 16 });
  expect(pooled.tokens).toEqual(inline.tokens);
});
