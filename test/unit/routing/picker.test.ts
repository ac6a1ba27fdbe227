import { describe, expect, it, vi } from 'vitest';
import { type Endpoint, parseEndpoints } from '../../../src/discovery/endpoints.js';
import {
  type Candidate,
  candidatesFor,
  filterBySubset,
  rank,
} from '../../../src/routing/picker.js';
import { mulberry32 } from '../../support/random.js';

const eps: Endpoint[] = parseEndpoints(
  {
    endpoints: [
      { address: '127.0.0.2', port: 8001, name: 'a', workerId: '1' },
      { address: '127.0.0.2', port: 8002, name: 'b', workerId: '2' },
      { address: '127.0.0.3', port: 8001, name: 'c', workerId: '18446744073709551615', dpRank: 1 },
    ],
  },
  'test',
);

describe('filterBySubset', () => {
  it('matches ip:port exactly and a bare ip on every port; no hint = all', () => {
    expect(filterBySubset(eps, undefined).map((e) => e.name)).toEqual(['a', 'b', 'c']);
    expect(filterBySubset(eps, ['127.0.0.2:8002']).map((e) => e.name)).toEqual(['b']);
    expect(filterBySubset(eps, ['127.0.0.2']).map((e) => e.name)).toEqual(['a', 'b']);
    expect(filterBySubset(eps, [' 127.0.0.3:8001 ', '']).map((e) => e.name)).toEqual(['c']);
    expect(filterBySubset(eps, ['127.0.0.9:1'])).toEqual([]);
    expect(filterBySubset(eps, [])).toEqual([]);
  });

  it('compares addresses, not their spelling: the IPv6 loopback written long in the file, short in the hint', () => {
    const v6 = parseEndpoints(
      {
        endpoints: [
          { address: '0:0:0:0:0:0:0:1', port: 8000, name: 'v6' },
          { address: '127.0.0.2', port: 8001, name: 'v4' },
        ],
      },
      'test',
    );
    expect(v6[0]?.address).toBe('::1');
    expect(v6[0]?.hostPort).toBe('[::1]:8000');
    for (const hint of [
      '[::1]:8000',
      '::1',
      '[0:0::1]',
      '[0:0:0:0:0:0:0:1]:8000',
      ' [::1]:8000 ',
    ]) {
      expect(
        filterBySubset(v6, [hint]).map((e) => e.name),
        hint,
      ).toEqual(['v6']);
    }
    expect(filterBySubset(v6, ['[::1]:8001', '127.0.0.02:8001', 'not-an-ip:1'])).toEqual([]);
  });
});

describe('parseEndpoints addresses', () => {
  it('takes IPv4 and IPv6 addresses only, and keeps the written form in the default name', () => {
    const bad = [
      '127.0.0.256',
      '127.0.0',
      '127.0.0.01',
      '::1::2',
      'localhost',
      '1:2:3:4:5:6:7:8:9',
      '',
    ];
    for (const address of bad) {
      expect(() => parseEndpoints({ endpoints: [{ address, port: 1 }] }, 'f'), address).toThrow(
        'f: endpoints[0].address: expected an IPv4 or IPv6 address',
      );
    }
    const [e] = parseEndpoints({ endpoints: [{ address: '0:0:0:0:0:0:0:1', port: 9 }] }, 'f');
    expect([e?.address, e?.hostPort, e?.name]).toEqual(['::1', '[::1]:9', '[0:0:0:0:0:0:0:1]:9']);
  });
});

describe('rank', () => {
  it('prefers the longest prefix, then the least loaded, then the smaller cache, then (ties drawn first-name) the name', () => {
    const overlap = {
      workers: [
        { workerId: 1n, dpRank: 0 },
        { workerId: 18446744073709551615n, dpRank: 1 },
      ],
      blocks: [3, 3],
      treeSizes: [100, 50],
    };
    const load = new Map([['a', 2]]);
    const c = candidatesFor(eps, overlap, (e) => load.get(e.name) ?? 0);
    const first = () => 0;
    expect(rank(c, 3, first).map((x) => x.endpoint.name)).toEqual(['c', 'a', 'b']);
    expect(rank(c, 1, first).map((x) => x.endpoint.name)).toEqual(['c']);
    const none = candidatesFor(eps, undefined, (e) => load.get(e.name) ?? 0);
    expect(rank(none, 2, first).map((x) => x.endpoint.name)).toEqual(['b', 'c']);
    expect(rank([], 1)).toEqual([]);
  });

  it('picks the single best as the head of the full ranking would (random candidates)', () => {
    const rnd = mulberry32(7);
    const pick = (n: number) => Math.floor(rnd() * n);
    for (let trial = 0; trial < 500; trial++) {
      const n = 1 + pick(6);
      const c: Candidate[] = Array.from({ length: n }, (_, i) => ({
        endpoint: { ...(eps[0] as Endpoint), name: `w${pick(1000)}-${i}` },
        overlapBlocks: pick(3),
        inFlight: pick(3),
        reportedLoad: pick(2),
        treeSize: pick(2),
      }));
      const r = rnd();
      const head = rank(c, n, () => r)[0];
      expect(rank(c, 1, () => r)).toEqual([head]);
      expect(rank(c, 0, () => r)).toEqual([head]);
    }
  });

  it('draws the first among candidates tied on every figure, in name order; the rest follow by name', () => {
    const cand = (name: string, overlapBlocks: number, inFlight = 0): Candidate => ({
      endpoint: { ...(eps[0] as Endpoint), name },
      overlapBlocks,
      inFlight,
      reportedLoad: 0,
      treeSize: 0,
    });
    const c = [cand('c', 1), cand('a', 1), cand('x', 0), cand('b', 1), cand('d', 1, 1)];
    const names = (r: number, n: number) => rank(c, n, () => r).map((x) => x.endpoint.name);
    expect(names(0, 1)).toEqual(['a']);
    expect(names(0.34, 1)).toEqual(['b']);
    expect(names(0.99, 1)).toEqual(['c']);
    expect(names(0, 5)).toEqual(['a', 'b', 'c', 'd', 'x']);
    expect(names(0.5, 5)).toEqual(['b', 'a', 'c', 'd', 'x']);
    expect(names(0.99, 3)).toEqual(['c', 'a', 'b']);
    // No tie: the random source is not asked.
    const asked = vi.fn(() => 0.99);
    expect(rank([cand('a', 2), cand('b', 1)], 1, asked).map((x) => x.endpoint.name)).toEqual(['a']);
    expect(asked).not.toHaveBeenCalled();
    // With the default source every tied candidate comes up.
    const seen = new Set<string>();
    for (let i = 0; i < 200; i++) seen.add((rank(c, 1)[0] as Candidate).endpoint.name);
    expect([...seen].sort()).toEqual(['a', 'b', 'c']);
  });
});

describe('parseEndpoints', () => {
  it('derives Dynamo worker ids from names and rejects bad fields by path', () => {
    const [e] = parseEndpoints(
      { endpoints: [{ address: '127.0.0.2', port: 8001, name: 'worker-0' }] },
      'f',
    );
    expect(e?.workerId).toBe(1186445869714687n);
    expect(e?.role).toBe('aggregated');
    expect(() => parseEndpoints({ endpoints: [{ address: '127.0.0.2', port: 0 }] }, 'f')).toThrow(
      'f: endpoints[0].port: expected an integer in 1..=65535',
    );
    expect(() =>
      parseEndpoints({ endpoints: [{ address: '127.0.0.2', port: 1, colour: 1 }] }, 'f'),
    ).toThrow('f: endpoints[0].colour: unknown key');
    expect(() =>
      parseEndpoints({ endpoints: [{ address: '127.0.0.2', port: 1, workerId: 2 ** 60 }] }, 'f'),
    ).toThrow('endpoints[0].workerId');
    expect(() =>
      parseEndpoints(
        {
          endpoints: [
            { address: '127.0.0.2', port: 1, workerId: '5' },
            { address: '127.0.0.3', port: 1, workerId: '5' },
          ],
        },
        'f',
      ),
    ).toThrow('endpoints[1]: worker 5 dp rank 0 already used');
  });

  it('reads an engine ZMQ KV-event endpoint', () => {
    const [e] = parseEndpoints(
      {
        endpoints: [
          { address: '127.0.0.2', port: 8001, kvEvents: { endpoint: 'tcp://127.0.0.2:5557' } },
        ],
      },
      'f',
    );
    expect(e?.kvEvents).toEqual({ endpoint: 'tcp://127.0.0.2:5557', format: 'vllm' });
    const bad = (kvEvents: unknown) => () =>
      parseEndpoints({ endpoints: [{ address: '127.0.0.2', port: 1, kvEvents }] }, 'f');
    expect(bad({ endpoint: 'http://x' })).toThrow(
      'f: endpoints[0].kvEvents.endpoint: expected tcp://HOST:PORT or ipc://PATH',
    );
    expect(bad({ endpoint: 'tcp://127.0.0.2:1', format: 'zmq' })).toThrow(
      'f: endpoints[0].kvEvents.format: expected vllm or dynamo',
    );
    expect(bad({ endpoint: 'tcp://127.0.0.2:1', topic: 'x' })).toThrow(
      'f: endpoints[0].kvEvents.topic: unknown key',
    );
  });
});
