/**
 * How much of a latency tail GC pauses explain (pure; run.mjs --gc-log).
 *
 * A request "overlaps" a pause when the pause's interval [start, start +
 * duration] intersects the request's [start, start + latency]: the pause
 * could have delayed it (an upper bound: the request may have been waiting on
 * Envoy or the upstream then). The p99 of the requests that overlap no pause
 * bounds what the p99 would be if the process never paused for GC.
 */

/** q-quantile (0..1) of an ascending array, nearest rank; undefined when empty. */
export function quantile(sorted, q) {
  if (sorted.length === 0) return undefined;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}

/**
 * Parses gc-log.mjs lines (`<start ms> <duration ms> <kind>`); bad lines are skipped.
 * @returns {{ startMs: number, durationMs: number, kind: number }[]} sorted by start
 */
export function parseGcLog(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const [a, b, c] = line.trim().split(/\s+/);
    const startMs = Number(a);
    const durationMs = Number(b);
    if (!Number.isFinite(startMs) || !Number.isFinite(durationMs)) continue;
    out.push({ startMs, durationMs, kind: Number(c) || 0 });
  }
  return out.sort((x, y) => x.startMs - y.startMs);
}

/**
 * Requests from `vegeta encode --to csv` (timestamp ns, code, latency ns, …);
 * only the first three columns are read (they are never quoted).
 * @returns {{ startMs: number, latencyMs: number }[]}
 */
export function parseVegetaCsv(text) {
  const out = [];
  for (const line of text.split('\n')) {
    const [ts, , lat] = line.split(',', 3);
    const startMs = Number(ts) / 1e6;
    const latencyMs = Number(lat) / 1e6;
    if (Number.isFinite(startMs) && Number.isFinite(latencyMs) && line !== '') {
      out.push({ startMs, latencyMs });
    }
  }
  return out;
}

const KINDS = {
  1: 'scavenge',
  2: 'minorMarkSweep',
  4: 'markCompact',
  8: 'incremental',
  16: 'weakCallbacks',
};
const r3 = (x) => (x === undefined ? undefined : Math.round(x * 1000) / 1000);

/**
 * @param {{ startMs: number, latencyMs: number }[]} requests
 * @param {{ startMs: number, durationMs: number, kind: number }[]} pauses sorted by start
 */
export function gcOverlap(requests, pauses) {
  if (requests.length === 0) return undefined;
  let from = Infinity;
  let to = -Infinity;
  for (const r of requests) {
    from = Math.min(from, r.startMs);
    to = Math.max(to, r.startMs + r.latencyMs);
  }
  const inWindow = pauses.filter((p) => p.startMs + p.durationMs >= from && p.startMs <= to);
  // Longest pause so far, for the backward scan's stop condition.
  const longest = inWindow.reduce((m, p) => Math.max(m, p.durationMs), 0);
  const overlaps = (r) => {
    const end = r.startMs + r.latencyMs;
    // Last pause starting at or before the request's end.
    let lo = 0;
    let hi = inWindow.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (inWindow[mid].startMs <= end) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo - 1; i >= 0; i--) {
      const p = inWindow[i];
      if (p.startMs + longest < r.startMs) break;
      if (p.startMs + p.durationMs >= r.startMs) return true;
    }
    return false;
  };
  const all = requests.map((r) => ({ lat: r.latencyMs, hit: overlaps(r) }));
  const sorted = all.map((x) => x.lat).sort((a, b) => a - b);
  const p99 = quantile(sorted, 0.99) ?? 0;
  const slowest = all.filter((x) => x.lat >= p99);
  const clear = all
    .filter((x) => !x.hit)
    .map((x) => x.lat)
    .sort((a, b) => a - b);
  const byKind = {};
  for (const p of inWindow) {
    const k = KINDS[p.kind] ?? `kind${p.kind}`;
    if (byKind[k] === undefined) byKind[k] = { count: 0, totalMs: 0, maxMs: 0, durations: [] };
    const e = byKind[k];
    e.count++;
    e.totalMs += p.durationMs;
    e.maxMs = Math.max(e.maxMs, p.durationMs);
    e.durations.push(p.durationMs);
  }
  for (const e of Object.values(byKind)) {
    e.p50Ms = r3(
      quantile(
        e.durations.sort((a, b) => a - b),
        0.5,
      ),
    );
    e.totalMs = r3(e.totalMs);
    e.maxMs = r3(e.maxMs);
    delete e.durations;
  }
  const pct = (n, d) => (d === 0 ? 0 : Math.round((10000 * n) / d) / 100);
  return {
    pauses: byKind,
    requestsOverlappingPct: pct(all.filter((x) => x.hit).length, all.length),
    slowest1PctOverlappingPct: pct(slowest.filter((x) => x.hit).length, slowest.length),
    p99Ms: r3(p99),
    p99WithoutOverlapMs: r3(quantile(clear, 0.99)),
  };
}
