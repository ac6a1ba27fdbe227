/**
 * KvRouter in approximate mode with Dynamo's TTL: a repeated prompt sticks to
 * its worker until the TTL since its last routing runs out, then it does not.
 * The clock is injected; nothing waits.
 */
import { describe, expect, it } from 'vitest';
import { parseEndpoints } from '../../../src/discovery/endpoints.js';
import type { ApproxTracker } from '../../../src/kv/approx/prune-tracker.js';
import { createApproxTracker } from '../../../src/kv/factory.js';
import type { Backend } from '../../../src/kv/types.js';
import { stderrLogger } from '../../../src/log/logger.js';
import { createHotPath } from '../../../src/pipeline/factory.js';
import { type Preparer, prepareRouteInline } from '../../../src/pipeline/route-prep.js';
import { KvRouter, type RoutedRequest } from '../../../src/routing/kv-router.js';
import type { GatewayRequest } from '../../../src/server/routing-types.js';

const endpoints = parseEndpoints(
  {
    endpoints: [
      { address: '127.0.0.2', port: 8001, name: 'a', workerId: '11' },
      { address: '127.0.0.3', port: 8001, name: 'b', workerId: '12' },
    ],
  },
  'test',
);
const A = '127.0.0.2:8001';
const B = '127.0.0.3:8001';

const req = (text: string): GatewayRequest => ({
  headers: new Map(),
  path: '/v1/chat/completions',
  method: 'POST',
  body: new TextEncoder().encode(
    JSON.stringify({ model: 'm', messages: [{ role: 'user', content: text }] }),
  ),
  requestId: 'r',
});
const long = 'The quick brown fox jumps over the lazy dog. '.repeat(40);
const TTL = 120_000;

async function setup(
  backend: Backend,
  approximate = true,
  removalStep?: number,
  onTracker?: (t: ApproxTracker) => void,
) {
  const path = await createHotPath({ source: 'o200k_base' }, backend);
  const preparer: Preparer = {
    prepare: async (body, api, settings) => prepareRouteInline(path, body, api, settings),
  };
  const clock = { t: 0 };
  const routed: RoutedRequest[] = [];
  const r = new KvRouter(
    {
      endpoints: () => endpoints,
      preparer,
      index: path.index,
      hasher: path.hasher,
      log: stderrLogger,
      random: () => 0, // ties to the first name
      now: () => clock.t,
      onRouted: (x) => routed.push(x),
      approxTracker: (settings) => {
        const t = createApproxTracker(path.index, path.hasher, settings);
        onTracker?.(t);
        return t;
      },
    },
    {
      blockSize: 16,
      fallbacks: 0,
      approximate,
      approx: { ttlMs: TTL, maxTreeSize: 2 ** 20, pruneTargetRatio: 0.8, removalStep },
    },
  );
  /** Overlap (blocks) the last routed request saw on endpoint `a`. */
  const overlapOnA = () => {
    const o = routed.at(-1)?.prep?.overlap;
    const i = o?.workers.findIndex((w) => w.workerId === 11n) ?? -1;
    return i < 0 ? 0 : (o?.blocks[i] as number);
  };
  return { r, path, clock, overlapOnA };
}

describe.each(['native', 'js'] as Backend[])('KvRouter approximate TTL (%s)', (backend) => {
  it('hits before the TTL since the last routing, misses after', async () => {
    const { r, path, clock, overlapOnA } = await setup(backend);
    // Keep every request in flight, so `a` is always the busier endpoint:
    // only a cached prefix can send a request there.
    const first = await r.route(req(long));
    expect(first.endpoints).toEqual([A]);
    const blocks = path.index.stats().memberships;
    expect(blocks).toBeGreaterThan(0);

    clock.t = TTL - 1;
    expect(r.maintain()).toEqual({ expired: 0, pruned: 0 });
    const again = await r.route(req(long));
    expect(again.endpoints).toEqual([A]); // hit, although `a` is busier than `b`
    expect(overlapOnA()).toBe(blocks);

    // That routing refreshed the prompt's blocks: still there one TTL after the first.
    clock.t = TTL;
    expect(r.maintain()).toEqual({ expired: 0, pruned: 0 });
    clock.t = 2 * TTL - 2;
    expect(r.maintain()).toEqual({ expired: 0, pruned: 0 });
    expect((await r.route(req(long))).endpoints).toEqual([A]);

    // One TTL after the last routing, the server's upkeep removes them.
    clock.t = 3 * TTL - 2;
    expect(r.maintain()).toEqual({ expired: blocks, pruned: 0 });
    expect(path.index.stats().memberships).toBe(0);
    const after = await r.route(req(long));
    expect(overlapOnA()).toBe(0);
    expect(after.endpoints).toEqual([B]); // miss: the idle endpoint wins
    expect(path.index.treeSize({ workerId: 12n, dpRank: 0 })).toBe(blocks);
    path.index.dispose();
  });

  it('works off a large expiry in bounded steps, reporting the backlog until done', async () => {
    const { r, path, clock } = await setup(backend, true, 8);
    await r.route(req(long));
    await r.route(req(`${long} and once more, differently: ${long}`));
    const blocks = path.index.stats().memberships;
    expect(blocks).toBeGreaterThan(24);
    clock.t = TTL - 1;
    expect(r.maintenanceBacklog()).toBe(false);
    clock.t = 2 * TTL;
    expect(r.maintenanceBacklog()).toBe(true);
    let calls = 0;
    do {
      expect(r.maintain().expired).toBeLessThanOrEqual(8);
      calls++;
    } while (r.maintenanceBacklog());
    expect(calls).toBe(Math.ceil(blocks / 8));
    expect(path.index.stats().memberships).toBe(0);
    path.index.dispose();
  });

  it('hands the upkeep to the tracker’s thread when it has one (native)', async () => {
    let tracker: ApproxTracker | undefined;
    const { r, path, clock } = await setup(backend, true, 8, (t) => {
      tracker = t;
    });
    await r.route(req(long));
    const blocks = path.index.stats().memberships;
    clock.t = 2 * TTL;
    expect(r.maintainOffThread()).toBe(backend === 'native');
    tracker?.settle();
    expect(path.index.stats().memberships).toBe(backend === 'native' ? 0 : blocks);
    expect(r.maintenanceBacklog()).toBe(backend !== 'native');
    path.index.dispose();
  });

  it('records nothing to expire when KV events drive the index', async () => {
    const { r, path, clock } = await setup(backend, false);
    await r.route(req(long));
    expect(path.index.stats().memberships).toBe(0);
    clock.t = 10 * TTL;
    expect(r.maintain()).toEqual({ expired: 0, pruned: 0 });
    expect(r.maintenanceBacklog()).toBe(false);
    path.index.dispose();
  });
});
