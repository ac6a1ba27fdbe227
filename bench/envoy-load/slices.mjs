/**
 * Interleaved slices: one point measured as several short attacks, rotated
 * across the set-ups, then pooled per set-up. Pure functions (no I/O) so the
 * pooling is unit-tested (test/unit/bench/slices.test.ts).
 *
 * Contract: pooling N slices gives the point the measurement of one attack as
 * long as their sum (CPU, counters and wall time summed over the slices only,
 * never over the gaps between them).
 */

/**
 * The set-up order of slice `k`: `order` rotated by k, so that no set-up
 * always measures right after the same one.
 */
export function sliceOrder(order, k) {
  return order.map((_, i) => order[(i + k) % order.length]);
}

/**
 * Adds `after − before` into `acc`, leaf by leaf (snapshots hold only numbers
 * and objects of numbers). A leaf missing before (a counter that appeared
 * during the slice) counts from 0; one missing after (a process that exited)
 * is skipped.
 */
export function addDelta(acc, before, after) {
  for (const [k, b] of Object.entries(after)) {
    if (b === undefined || b === null) continue;
    const a = before?.[k];
    if (typeof b === 'number') {
      acc[k] = (acc[k] ?? 0) + (b - (typeof a === 'number' ? a : 0));
    } else if (typeof b === 'object') {
      acc[k] ??= {};
      addDelta(acc[k], a, b);
    }
  }
  return acc;
}

/** The same shape as `x` with every number 0: the "before" of a pooled delta. */
export function zeroLike(x) {
  if (typeof x === 'number') return 0;
  return Object.fromEntries(Object.entries(x).map(([k, v]) => [k, zeroLike(v)]));
}

/**
 * Successful requests per second over several slices' vegeta reports
 * (`requests`, `success` ratio, `duration` and `wait` in ns). vegeta's own
 * throughput over several files would count the gaps between slices as time.
 */
export function pooledThroughput(reps) {
  const ok = reps.reduce((a, r) => a + r.requests * r.success, 0);
  const ns = reps.reduce((a, r) => a + r.duration + r.wait, 0);
  return ns > 0 ? ok / (ns / 1e9) : 0;
}
