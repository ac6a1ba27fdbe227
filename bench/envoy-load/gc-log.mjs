/**
 * Diagnostic preload for kv-epp (`run.mjs --gc-log`): appends every V8 GC pause
 * to the file named by KV_EPP_GC_LOG, one line each, `<start epoch ms>
 * <duration ms> <kind>` (kind: PerformanceObserver's gc kind: 1 scavenge,
 * 2 minor mark-sweep, 4 mark-compact, 8 incremental marking step, 16 weak
 * callbacks). Start times are wall-clock (performance.timeOrigin +
 * startTime), the clock vegeta stamps requests with, so the bench can line
 * pauses up with requests.
 * Lines are written every 100 ms and at exit, so a reader waits ≥ 100 ms after
 * the moment it cares about. No signal handlers: kv-epp's own shutdown is
 * unchanged.
 */
import { appendFileSync } from 'node:fs';
import { PerformanceObserver, performance } from 'node:perf_hooks';

const file = process.env.KV_EPP_GC_LOG;
if (file) {
  const t0 = performance.timeOrigin;
  let lines = '';
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      lines += `${(t0 + e.startTime).toFixed(3)} ${e.duration.toFixed(3)} ${e.detail?.kind ?? 0}\n`;
    }
  }).observe({ entryTypes: ['gc'] });
  const flush = () => {
    if (lines === '') return;
    appendFileSync(file, lines);
    lines = '';
  };
  setInterval(flush, 100).unref();
  process.on('exit', flush);
}
