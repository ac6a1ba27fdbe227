/**
 * The sliced /metrics writer (src/metrics/exposition.ts): the same text as
 * prom-client's `Registry.metrics()` for kv-epp's whole registry, the event
 * loop free between slices, and prom-client's own writer where its format
 * has default labels.
 */
import { Counter, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { LINES_PER_SLICE, renderExposition } from '../../../src/metrics/exposition.js';
import { FastHistogram } from '../../../src/metrics/fast-metrics.js';
import { EppMetrics, MAX_MODEL_LABEL_PAIRS } from '../../../src/metrics/registry.js';

/** An EppMetrics with every (model, target) label pair taken, names holding characters that need escaping. */
function crowded(): EppMetrics {
  const m = new EppMetrics({ processMetrics: false, readyPods: () => 2, poolName: 'pool' });
  for (let i = 0; i < MAX_MODEL_LABEL_PAIRS + 8; i++) {
    const model = i % 3 === 0 ? `m-${i}"q\\b\nn` : `model-${i}`;
    const s = m.requestSeries(model, `t-${i}`);
    m.requestStarted(model, `t-${i}`);
    m.requestFinished(model, `t-${i}`, 0.25 + i / 1000);
    s.requestSizes.observe(1000 + i);
    s.kvEppPromptTokens.observe(i);
    m.observeInputTokens(model, `t-${i}`, i);
    m.requestError(model, `t-${i}`, 'overloaded');
    s.scheduled({ name: 'a', port: 8000 });
  }
  m.observeRouteSeconds(0.001);
  return m;
}

describe('renderExposition', () => {
  it("writes kv-epp's crowded registry exactly as prom-client does, in many slices", async () => {
    const m = crowded();
    const want = await m.registry.metrics();
    expect(want.length).toBeGreaterThan(5_000_000);
    let pauses = 0;
    const got = await renderExposition(m.registry, async () => {
      pauses++;
    });
    expect(got).toBe(want);
    // LINES_PER_SLICE lines a slice (a histogram series is not split): one pause per slice.
    const lines = want.split('\n').length;
    expect(pauses).toBeGreaterThanOrEqual(Math.floor(lines / (LINES_PER_SLICE + 40)) - 50);
    expect(pauses).toBeLessThanOrEqual(Math.ceil(lines / LINES_PER_SLICE));
  });

  it('lets the event loop run between slices (prom-client does not)', async () => {
    const m = crowded();
    const yieldToIo = () => new Promise<void>((r) => setImmediate(r));
    const ranDuring = async (render: () => Promise<string>) => {
      let ran = 0;
      let done = false;
      const tick = () => {
        if (done) return;
        ran++;
        setImmediate(tick);
      };
      setImmediate(tick);
      await render();
      done = true;
      return ran;
    };
    expect(await ranDuring(() => m.registry.metrics())).toBe(0);
    expect(await ranDuring(() => renderExposition(m.registry, yieldToIo))).toBeGreaterThan(100);
  });

  it("leaves a registry with default labels to prom-client's writer", async () => {
    const reg = new Registry();
    reg.setDefaultLabels({ pod: 'epp-0' });
    const c = new Counter({ name: 'c_total', help: 'c', labelNames: ['x'], registers: [reg] });
    c.inc({ x: 'y' }, 2);
    const h = new FastHistogram({ name: 'h', help: 'h', buckets: [1, 2], registers: [reg] });
    h.observe(1.5);
    let pauses = 0;
    const got = await renderExposition(
      reg,
      async () => {
        pauses++;
      },
      1,
    );
    expect(got).toBe(await reg.metrics());
    expect(got).toContain('c_total{x="y",pod="epp-0"} 2');
    expect(pauses).toBe(0);
  });

  it('writes an empty registry as prom-client does', async () => {
    const reg = new Registry();
    expect(await renderExposition(reg, async () => {})).toBe(await reg.metrics());
  });

  it('writes the HELP and TYPE lines of a family with no series yet, once', async () => {
    const reg = new Registry();
    new FastHistogram({ name: 'h', help: 'h', labelNames: ['a'], buckets: [1], registers: [reg] });
    const got = await renderExposition(reg, async () => {}, 1);
    expect(got).toBe('# HELP h h\n# TYPE h histogram\n');
    expect(got).toBe(await reg.metrics());
  });
});
