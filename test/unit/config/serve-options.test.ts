import { describe, expect, it } from 'vitest';
import { resolveServeOptions } from '../../../src/config/serve-options.js';

describe('resolveServeOptions', () => {
  it('uses the reference EPP defaults', () => {
    const o = resolveServeOptions({}, {});
    expect(o).toMatchObject({
      grpcPort: 9002,
      grpcHealthPort: 9003,
      metricsPort: 9090,
      secureServing: true,
      blockSize: 16,
      useKvEvents: true,
      tokenizer: 'o200k_base',
      fallbacks: 0,
    });
  });

  it('takes flags over DYN_* environment over the file', () => {
    const file = {
      model: { blockSize: 32 },
      server: { secureServing: true },
      router: { useKvEvents: true },
    };
    const env = {
      DYN_KV_CACHE_BLOCK_SIZE: '64',
      DYN_SECURE_SERVING: 'false',
      DYN_ROUTER_USE_KV_EVENTS: 'false',
    };
    expect(resolveServeOptions({}, {}, file).blockSize).toBe(32);
    const o = resolveServeOptions({}, env, file);
    expect([o.blockSize, o.secureServing, o.useKvEvents]).toEqual([64, false, false]);
    expect(
      resolveServeOptions({ 'block-size': '128', 'secure-serving': true }, env, file),
    ).toMatchObject({
      blockSize: 128,
      secureServing: true,
    });
  });

  it.each([
    [{ 'grpc-port': 'x' }, {}, undefined, '--grpc-port: expected an integer'],
    [
      {},
      { DYN_KV_CACHE_BLOCK_SIZE: '0' },
      undefined,
      'DYN_KV_CACHE_BLOCK_SIZE: expected an integer in 1..=1024',
    ],
    [{}, { DYN_SECURE_SERVING: 'maybe' }, undefined, 'DYN_SECURE_SERVING: expected true or false'],
    [
      {},
      {},
      { router: { fallbacks: 99 } },
      'cfg.yaml: router.fallbacks: expected an integer in 0..=16',
    ],
    [{}, {}, { router: { colour: 1 } }, 'cfg.yaml: router.colour: unknown key'],
    [{}, {}, { extra: 1 }, 'cfg.yaml: extra: unknown key'],
    [{ backend: 'gpu' }, {}, undefined, '--backend: expected auto, native or js'],
  ])('names the field: %j %j %j', (flags, env, file, msg) => {
    expect(() => resolveServeOptions(flags, env, file, 'cfg.yaml')).toThrow(msg);
  });
});
