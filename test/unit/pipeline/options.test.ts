import { describe, expect, it } from 'vitest';
import { preparerOptionsFromEnv } from '../../../src/workers/options.js';
import { DEFAULT_OFFLOAD_BYTES, DEFAULT_POOL_NICE } from '../../../src/workers/route-preparer.js';

describe('preparerOptionsFromEnv', () => {
  it('defaults to cores − 1 workers (at least one) and the measured threshold', () => {
    expect(preparerOptionsFromEnv({}, 2)).toEqual({
      poolSize: 1,
      offloadBytes: DEFAULT_OFFLOAD_BYTES,
      poolNice: DEFAULT_POOL_NICE,
    });
    expect(DEFAULT_POOL_NICE).toBe(10);
    expect(preparerOptionsFromEnv({}, 8).poolSize).toBe(7);
    expect(preparerOptionsFromEnv({}, 1).poolSize).toBe(1);
  });

  it('reads KV_EPP_POOL_SIZE, KV_EPP_OFFLOAD_BYTES and KV_EPP_POOL_NICE', () => {
    expect(
      preparerOptionsFromEnv(
        { KV_EPP_POOL_SIZE: '0', KV_EPP_OFFLOAD_BYTES: '4096', KV_EPP_POOL_NICE: '0' },
        4,
      ),
    ).toEqual({
      poolSize: 0,
      offloadBytes: 4096,
      poolNice: 0,
    });
    expect(preparerOptionsFromEnv({ KV_EPP_POOL_NICE: '19' }, 4).poolNice).toBe(19);
  });

  it.each(['20', '-1', 'low', '2.5'])('rejects KV_EPP_POOL_NICE=%s naming the variable', (v) => {
    expect(() => preparerOptionsFromEnv({ KV_EPP_POOL_NICE: v }, 2)).toThrow(/KV_EPP_POOL_NICE/);
  });

  it.each(['-1', 'two', '1.5'])('rejects KV_EPP_POOL_SIZE=%s naming the variable', (v) => {
    expect(() => preparerOptionsFromEnv({ KV_EPP_POOL_SIZE: v }, 2)).toThrow(/KV_EPP_POOL_SIZE/);
  });
});
