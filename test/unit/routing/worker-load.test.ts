import { describe, expect, it } from 'vitest';
import { parseEndpoints } from '../../../src/discovery/endpoints.js';
import { candidatesFor, rank } from '../../../src/routing/picker.js';
import { WorkerLoadTable } from '../../../src/routing/worker-load.js';

const eps = parseEndpoints(
  {
    endpoints: [
      { address: '127.0.0.2', port: 8001, name: 'a', workerId: '18446744073709551615' },
      { address: '127.0.0.3', port: 8001, name: 'b', workerId: '2', dpRank: 1 },
    ],
  },
  'test',
);

describe('WorkerLoadTable', () => {
  it('keeps the latest decode load per holder, forgets stale reports and departed workers', () => {
    const t = new WorkerLoadTable(1000);
    t.update({ workerId: 18446744073709551615n, dpRank: 0, activeDecodeBlocks: 30 }, 0);
    t.update({ workerId: 2n, dpRank: 1, kvUsedBlocks: 5 }, 0); // no decode blocks: used blocks
    t.update({ workerId: 2n, dpRank: 0, activePrefillTokens: 9 }, 0); // nothing usable
    expect(t.load(18446744073709551615n, 0, 500)).toBe(30);
    expect(t.load(2n, 1, 500)).toBe(5);
    expect(t.load(2n, 0, 500)).toBe(0);
    expect(t.load(18446744073709551615n, 0, 1001)).toBe(0); // stale
    t.forgetWorker(2n);
    expect(t.size).toBe(1);
  });

  it('breaks prefix and in-flight ties by the reported load', () => {
    const t = new WorkerLoadTable();
    t.update({ workerId: 18446744073709551615n, dpRank: 0, activeDecodeBlocks: 30 }, 0);
    t.update({ workerId: 2n, dpRank: 1, activeDecodeBlocks: 3 }, 0);
    const load = (e: (typeof eps)[number]) => t.load(e.workerId, e.dpRank, 0);
    const idle = () => 0;
    expect(rank(candidatesFor(eps, undefined, idle, load), 1)[0]?.endpoint.name).toBe('b');
    // Without reports they tie: the draw decides (`() => 0`: the first name, `a`).
    expect(rank(candidatesFor(eps, undefined, idle), 1, () => 0)[0]?.endpoint.name).toBe('a');
    // Our own in-flight count comes first.
    const busyB = (e: (typeof eps)[number]) => (e.name === 'b' ? 1 : 0);
    expect(rank(candidatesFor(eps, undefined, busyB, load), 1)[0]?.endpoint.name).toBe('a');
  });
});
