/**
 * The /metrics page, written in slices. prom-client's `Registry.metrics()`
 * builds the whole page in one task: with hundreds of model label pairs (each
 * on ~160 histogram lines) that is ~10 MB and 85–190 ms during which no
 * request is routed. Here families that write their own text
 * (`SlicedExposition`: kv-epp's fast counters, gauges and histograms) are
 * written a bounded number of lines at a time, each slice handed on at once
 * (the HTTP response), with `pause()` (the adapter passes a macrotask yield)
 * between slices; prom-client's own metrics (process figures, gauges read at
 * scrape time) are small and written whole.
 *
 * Contract: the text equals `registry.metrics()` for a registry without default
 * labels in the Prometheus text format (which EppMetrics uses); any other
 * registry is written by prom-client itself. A series is never split across
 * slices, so each series is self-consistent (a histogram's +Inf bucket equals
 * its count); series of one family may come from moments a few slices apart,
 * as with any concurrent collector.
 */
import { Registry } from 'prom-client';
import { isSlicedExposition } from './fast-metrics.js';

/** What is read of a prom-client Registry (it has these members). */
export interface ExpositionRegistry {
  readonly contentType: string;
  metrics(): Promise<string>;
  getMetricsAsArray(): ReadonlyArray<{ name: string }>;
  getSingleMetricAsString(name: string): Promise<string>;
}

/** Lines written between pauses: ~60 KB of text, about a millisecond of work. */
export const LINES_PER_SLICE = 500;

/**
 * Writes the page to `write` slice by slice (a slice's lines end with '\n'),
 * calling `pause()` between slices; rejects when a metric's collection throws
 * (what was written by then is a truncated page).
 */
export async function writeExposition(
  registry: ExpositionRegistry,
  write: (chunk: string) => void,
  pause: () => Promise<void>,
  linesPerSlice = LINES_PER_SLICE,
): Promise<void> {
  if (!writesPlainText(registry)) {
    write(await registry.metrics());
    return;
  }
  let sinceLastPause = 0;
  let first = true;
  for (const metric of registry.getMetricsAsArray()) {
    // prom-client's page: families joined by a blank line, a newline at the end.
    const gap = first ? '' : '\n';
    first = false;
    if (!isSlicedExposition(metric)) {
      write(`${gap}${await registry.getSingleMetricAsString(metric.name)}\n`);
      continue;
    }
    let next = 0;
    let lead = gap;
    do {
      const lines: string[] = [];
      next = metric.renderLines(lines, next, linesPerSlice - sinceLastPause);
      write(`${lead}${lines.join('\n')}\n`);
      lead = '';
      sinceLastPause += lines.length;
      if (sinceLastPause >= linesPerSlice) {
        await pause();
        sinceLastPause = 0;
      }
    } while (next >= 0);
  }
  if (first) write('\n'); // prom-client's page of no metrics
}

/** The whole page as one string (tests, small registries). */
export async function renderExposition(
  registry: ExpositionRegistry,
  pause: () => Promise<void>,
  linesPerSlice = LINES_PER_SLICE,
): Promise<string> {
  const chunks: string[] = [];
  await writeExposition(registry, (c) => chunks.push(c), pause, linesPerSlice);
  return chunks.join('');
}

/** Prometheus text without default labels: the format SlicedExposition reproduces. */
function writesPlainText(registry: ExpositionRegistry): boolean {
  const defaults = (registry as unknown as { _defaultLabels?: object })._defaultLabels;
  return (
    registry.contentType === Registry.PROMETHEUS_CONTENT_TYPE &&
    (defaults === undefined || Object.keys(defaults).length === 0)
  );
}
