/**
 * Endpoint choice until Dynamo's full cost function lands: the longest
 * cached prefix wins; ties go to the least-loaded endpoint (requests in
 * flight here, then the worker's own `kv_metrics` decode load), then the
 * smaller cache (tree size); among candidates tied on all of those the first
 * choice is drawn uniformly at random, as Dynamo's router draws among its
 * tied workers (a fixed order sent every new prompt to one worker whenever
 * the load figures were equal: at low concurrency, or behind a gateway that
 * never reports the response). Fallbacks after it follow in ranked order
 * (the figures, then the name). Pure given the random source.
 */
import type { Endpoint } from '../discovery/endpoints.js';
import { canonicalHostPort, canonicalIp } from '../discovery/ip.js';
import type { OverlapScores } from '../kv/types.js';

export interface Candidate {
  endpoint: Endpoint;
  overlapBlocks: number;
  inFlight: number;
  /** The worker's own load report (`kv_metrics` decode blocks); 0 when unknown. */
  reportedLoad: number;
  treeSize: number;
}

/**
 * Endpoints allowed by a subset hint: `ip:port` entries match exactly, a bare
 * `ip` matches every port of that ip, both as addresses (any written form of
 * one IPv6 address matches it). No hint = all endpoints.
 */
export function filterBySubset(
  endpoints: readonly Endpoint[],
  subset: readonly string[] | undefined,
): Endpoint[] {
  if (subset === undefined) return [...endpoints];
  const exact = new Set<string>();
  const ips = new Set<string>();
  // Addresses compare in canonical form (`[FD00:0::1]:80` is `[fd00::1]:80`); an
  // entry that is no address is kept as written and matches nothing.
  for (const raw of subset) {
    const s = raw.trim();
    if (s === '') continue;
    if (/^\[.*\]:\d+$/.test(s) || /^[^:]+:\d+$/.test(s)) exact.add(canonicalHostPort(s) ?? s);
    else {
      const ip = s.replace(/^\[|\]$/g, '');
      ips.add(canonicalIp(ip) ?? ip);
    }
  }
  return endpoints.filter((e) => exact.has(e.hostPort) || ips.has(e.address));
}

export function candidatesFor(
  endpoints: readonly Endpoint[],
  overlap: OverlapScores | undefined,
  inFlight: (e: Endpoint) => number,
  reportedLoad: (e: Endpoint) => number = () => 0,
): Candidate[] {
  const byHolder = new Map<string, { blocks: number; treeSize: number }>();
  if (overlap) {
    overlap.workers.forEach((w, i) => {
      byHolder.set(`${w.workerId}:${w.dpRank}`, {
        blocks: overlap.blocks[i] as number,
        treeSize: overlap.treeSizes[i] as number,
      });
    });
  }
  return endpoints.map((endpoint) => {
    const o = byHolder.get(`${endpoint.workerId}:${endpoint.dpRank}`);
    return {
      endpoint,
      overlapBlocks: o?.blocks ?? 0,
      inFlight: inFlight(endpoint),
      reportedLoad: reportedLoad(endpoint),
      treeSize: o?.treeSize ?? 0,
    };
  });
}

/** Negative when `a` ranks before `b`; 0 when they tie on every figure. */
function compareScores(a: Candidate, b: Candidate): number {
  return (
    b.overlapBlocks - a.overlapBlocks ||
    a.inFlight - b.inFlight ||
    a.reportedLoad - b.reportedLoad ||
    a.treeSize - b.treeSize
  );
}

function compareNames(a: Candidate, b: Candidate): number {
  return a.endpoint.name < b.endpoint.name ? -1 : a.endpoint.name > b.endpoint.name ? 1 : 0;
}

/** compareScores, then the name: a total order (names are unique). */
function compare(a: Candidate, b: Candidate): number {
  return compareScores(a, b) || compareNames(a, b);
}

/**
 * The best `count` candidates, best first. The first is drawn among those
 * tied best on every figure: the one at `floor(random() * ties)` in name
 * order (`random` in [0, 1); `() => 0` always takes the first name); the rest
 * follow in `compare` order. One scan, no copy, when one is asked for and
 * nothing ties.
 */
export function rank(
  candidates: readonly Candidate[],
  count: number,
  random: () => number = Math.random,
): Candidate[] {
  if (count <= 1) {
    let best = candidates[0];
    let tied: Candidate[] | undefined;
    for (let i = 1; i < candidates.length; i++) {
      const c = candidates[i] as Candidate;
      const d = compareScores(c, best as Candidate);
      if (d < 0) {
        best = c;
        tied = undefined;
      } else if (d === 0) {
        tied ??= [best as Candidate];
        tied.push(c);
      }
    }
    if (best === undefined) return [];
    return [tied ? pick(tied.sort(compareNames), random) : best];
  }
  const sorted = [...candidates].sort(compare);
  let ties = 1;
  while (
    ties < sorted.length &&
    compareScores(sorted[ties] as Candidate, sorted[0] as Candidate) === 0
  ) {
    ties++;
  }
  if (ties > 1) {
    const first = pick(sorted.slice(0, ties), random);
    sorted.splice(sorted.indexOf(first), 1);
    sorted.unshift(first);
  }
  return sorted.slice(0, count);
}

function pick(tied: readonly Candidate[], random: () => number): Candidate {
  const i = Math.floor(random() * tied.length);
  return tied[Math.min(Math.max(i, 0), tied.length - 1)] as Candidate;
}
