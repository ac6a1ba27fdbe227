/**
 * Approximate-mode options (Dynamo's `--router-ttl-secs`, `--router-max-tree-size`,
 * `--router-prune-target-ratio` and their `DYN_ROUTER_*` variables).
 */
import { describe, expect, it } from 'vitest';
import { resolveServeOptions } from '../../../src/config/serve-options.js';

describe('approximate-mode options', () => {
  it("uses Dynamo's PruneConfig defaults", () => {
    expect(resolveServeOptions({}, {})).toMatchObject({
      ttlSecs: 120,
      maxTreeSize: 1_048_576,
      pruneTargetRatio: 0.8,
    });
  });

  it('takes flags over DYN_* environment over the file', () => {
    const file = { router: { ttlSecs: 30, maxTreeSize: 1000, pruneTargetRatio: 0.5 } };
    const env = {
      DYN_ROUTER_TTL_SECS: '60.5',
      DYN_ROUTER_MAX_TREE_SIZE: '2000',
      DYN_ROUTER_PRUNE_TARGET_RATIO: '0.9',
    };
    const pick = (o: ReturnType<typeof resolveServeOptions>) => [
      o.ttlSecs,
      o.maxTreeSize,
      o.pruneTargetRatio,
    ];
    expect(pick(resolveServeOptions({}, {}, file))).toEqual([30, 1000, 0.5]);
    expect(pick(resolveServeOptions({}, env, file))).toEqual([60.5, 2000, 0.9]);
    const flags = {
      'router-ttl-secs': '5',
      'router-max-tree-size': '64',
      'router-prune-target-ratio': '1',
    };
    expect(pick(resolveServeOptions(flags, env, file))).toEqual([5, 64, 1]);
  });

  it('reads the older DYN_ROUTER_TTL after DYN_ROUTER_TTL_SECS', () => {
    expect(resolveServeOptions({}, { DYN_ROUTER_TTL: '7' }).ttlSecs).toBe(7);
    expect(resolveServeOptions({}, { DYN_ROUTER_TTL: '7', DYN_ROUTER_TTL_SECS: '8' }).ttlSecs).toBe(
      8,
    );
  });

  it('accepts decimal forms', () => {
    const o = resolveServeOptions(
      { 'router-ttl-secs': ' 0.25 ', 'router-prune-target-ratio': '.5' },
      { DYN_ROUTER_MAX_TREE_SIZE: '1' },
    );
    expect([o.ttlSecs, o.pruneTargetRatio, o.maxTreeSize]).toEqual([0.25, 0.5, 1]);
    expect(resolveServeOptions({ 'router-ttl-secs': '1e2' }, {}).ttlSecs).toBe(100);
  });

  it.each([
    [
      { 'router-ttl-secs': '0' },
      {},
      undefined,
      '--router-ttl-secs: expected a number of seconds > 0, got "0"',
    ],
    [
      { 'router-ttl-secs': 'soon' },
      {},
      undefined,
      '--router-ttl-secs: expected a number of seconds > 0',
    ],
    [
      {},
      { DYN_ROUTER_TTL_SECS: '-1' },
      undefined,
      'DYN_ROUTER_TTL_SECS: expected a number of seconds > 0',
    ],
    [{}, { DYN_ROUTER_TTL_SECS: 'Infinity' }, undefined, 'DYN_ROUTER_TTL_SECS: expected a number'],
    [
      {},
      {},
      { router: { ttlSecs: '2m' } },
      'cfg.yaml: router.ttlSecs: expected a number of seconds > 0',
    ],
    [
      { 'router-max-tree-size': '0' },
      {},
      undefined,
      '--router-max-tree-size: expected an integer in 1..=2147483647',
    ],
    [
      {},
      { DYN_ROUTER_MAX_TREE_SIZE: '1.5' },
      undefined,
      'DYN_ROUTER_MAX_TREE_SIZE: expected an integer',
    ],
    [
      {},
      {},
      { router: { maxTreeSize: -5 } },
      'cfg.yaml: router.maxTreeSize: expected an integer in 1..=2147483647',
    ],
    [
      { 'router-prune-target-ratio': '0' },
      {},
      undefined,
      '--router-prune-target-ratio: expected a ratio in (0, 1], got "0"',
    ],
    [
      {},
      { DYN_ROUTER_PRUNE_TARGET_RATIO: '1.01' },
      undefined,
      'DYN_ROUTER_PRUNE_TARGET_RATIO: expected a ratio in (0, 1]',
    ],
    [
      {},
      {},
      { router: { pruneTargetRatio: true } },
      'cfg.yaml: router.pruneTargetRatio: expected a ratio in (0, 1], got true',
    ],
    [{}, {}, { router: { ttl: 5 } }, 'cfg.yaml: router.ttl: unknown key'],
  ])('names the field: %j %j %j', (flags, env, file, msg) => {
    expect(() => resolveServeOptions(flags, env, file, 'cfg.yaml')).toThrow(msg);
  });
});
