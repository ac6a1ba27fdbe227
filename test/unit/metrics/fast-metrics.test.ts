/**
 * The fast metric families against prom-client's own: the same calls on both
 * must render the same exposition text and the same JSON, and fail the same way.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { renderExposition } from '../../../src/metrics/exposition.js';
import { FastCounter, FastGauge, FastHistogram } from '../../../src/metrics/fast-metrics.js';
import { mulberry32 } from '../../support/random.js';

// GAIE's input-token buckets (with its 32778) and a short seconds list.
const TOKEN_BUCKETS = [
  1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536, 131072, 262144,
  524288, 1048576,
];
const SECOND_BUCKETS = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1];

interface Pair {
  ref: Registry;
  fast: Registry;
}

function registries(): Pair {
  return { ref: new Registry(), fast: new Registry() };
}

async function expectSameExport(p: Pair): Promise<void> {
  const want = await p.ref.metrics();
  expect(await p.fast.metrics()).toBe(want);
  expect(await p.fast.getMetricsAsJSON()).toEqual(await p.ref.getMetricsAsJSON());
  // kv-epp's own sliced writer (the /metrics page) too, at any slice size.
  for (const lines of [1, 2, 3, 17, 2000]) {
    expect(await renderExposition(p.fast, async () => {}, lines), `${lines} lines`).toBe(want);
  }
}

describe('fast metrics render exactly what prom-client renders', () => {
  it('histograms: random values on, between, below and above the bounds, labelled and not', async () => {
    const p = registries();
    const labelled = {
      name: 'h_labelled',
      help: 'help with a \\ backslash\nand a newline',
      labelNames: ['model_name', 'target_model_name'] as const,
      buckets: TOKEN_BUCKETS,
    };
    const plain = { name: 'h_plain', help: 'plain', buckets: SECOND_BUCKETS };
    const refL = new Histogram({ ...labelled, registers: [p.ref] });
    const fastL = new FastHistogram({ ...labelled, registers: [p.fast] });
    const refU = new Histogram({ ...plain, registers: [p.ref] });
    const fastU = new FastHistogram({ ...plain, registers: [p.fast] });
    // Before any observation: the unlabelled one has its zero series, the labelled one none.
    await expectSameExport(p);

    const rand = mulberry32(7);
    const models = ['m', 'quote"d', 'back\\slash', 'new\nline', ''];
    const refChildren = new Map<string, { observe(v: number): void }>();
    const fastChildren = new Map<string, { observe(v: number): void }>();
    for (let i = 0; i < 3000; i++) {
      const model = models[Math.floor(rand() * models.length)] as string;
      const target = rand() < 0.5 ? model : 't';
      const key = `${model}|${target}`;
      // Label objects in either key order: the export keeps the first one's order.
      const labels =
        rand() < 0.5
          ? { model_name: model, target_model_name: target }
          : { target_model_name: target, model_name: model };
      if (!refChildren.has(key)) {
        refChildren.set(key, refL.labels(labels));
        fastChildren.set(key, fastL.labels(labels));
      }
      const r = rand();
      const v =
        r < 0.2
          ? (TOKEN_BUCKETS[Math.floor(rand() * TOKEN_BUCKETS.length)] as number)
          : r < 0.25
            ? 2_000_000 + rand() * 1e6
            : r < 0.3
              ? -rand() * 10
              : Math.floor(rand() * 70_000) + (rand() < 0.5 ? 0.5 : 0);
      refChildren.get(key)?.observe(v);
      fastChildren.get(key)?.observe(v);
      const s = rand() < 0.1 ? (SECOND_BUCKETS[Math.floor(rand() * 9)] as number) : rand() * 1.5;
      refU.observe(s);
      fastU.observe(s);
    }
    await expectSameExport(p);
  });

  it('counters and gauges, with and without labels', async () => {
    const p = registries();
    const ref = [p.ref];
    const fast = [p.fast];
    const rc = new Counter({ name: 'c_plain', help: 'c', registers: ref });
    const fc = new FastCounter({ name: 'c_plain', help: 'c', registers: fast });
    const cl = { name: 'c_labelled_total', help: 'c', labelNames: ['kind', 'outcome'] as const };
    const rcl = new Counter({ ...cl, registers: ref });
    const fcl = new FastCounter({ ...cl, registers: fast });
    const gl = { name: 'g_labelled', help: 'g', labelNames: ['model_name'] as const };
    const rg = new Gauge({ ...gl, registers: ref });
    const fg = new FastGauge({ ...gl, registers: fast });
    const ru = new Gauge({ name: 'g_plain', help: 'g', registers: ref });
    const fu = new FastGauge({ name: 'g_plain', help: 'g', registers: fast });
    // Children resolved before anything is recorded are not exported yet.
    rcl.labels({ kind: 'early', outcome: 'a' });
    fcl.labels({ kind: 'early', outcome: 'a' });
    await expectSameExport(p);

    const rand = mulberry32(11);
    for (let i = 0; i < 500; i++) {
      const by = Math.floor(rand() * 5);
      rc.inc(by);
      fc.inc(by);
      rc.inc();
      fc.inc();
      const labels = { kind: `k${Math.floor(rand() * 3)}`, outcome: rand() < 0.5 ? 'a' : 'b' };
      rcl.inc(labels, 2);
      fcl.inc(labels, 2);
      rcl.labels(labels).inc();
      fcl.labels(labels).inc();
      const model = `m${Math.floor(rand() * 4)}`;
      const step = rand() * 3;
      if (rand() < 0.5) {
        rg.labels({ model_name: model }).inc(step);
        fg.labels({ model_name: model }).inc(step);
      } else {
        rg.labels({ model_name: model }).dec(step);
        fg.labels({ model_name: model }).dec(step);
      }
    }
    rg.labels({ model_name: 'set' }).set(42.5);
    fg.labels({ model_name: 'set' }).set(42.5);
    ru.inc(3);
    fu.labels({}).inc(3);
    await expectSameExport(p);
  });

  it('reset drops series as prom-client does', async () => {
    const p = registries();
    const rh = new Histogram({ name: 'h', help: 'h', buckets: [1, 2], registers: [p.ref] });
    const fh = new FastHistogram({ name: 'h', help: 'h', buckets: [1, 2], registers: [p.fast] });
    const rc = new Counter({ name: 'c', help: 'c', labelNames: ['x'], registers: [p.ref] });
    const fc = new FastCounter({ name: 'c', help: 'c', labelNames: ['x'], registers: [p.fast] });
    rh.observe(1.5);
    fh.observe(1.5);
    rc.inc({ x: 'a' });
    fc.inc({ x: 'a' });
    rh.reset();
    fh.reset();
    rc.reset();
    fc.reset();
    // A histogram without labels has no series until its next observation, a counter its zero.
    await expectSameExport(p);
    rh.observe(0.5);
    fh.observe(0.5);
    await expectSameExport(p);
  });
});

describe('fast metrics keep label sets apart', () => {
  it('label values holding a separator do not share a series', async () => {
    const p = registries();
    const cfg = { name: 'pairs', help: 'p', labelNames: ['model_name', 'target_model_name'] };
    const rc = new Counter({ ...cfg, registers: [p.ref] });
    const fc = new FastCounter({ ...cfg, registers: [p.fast] });
    for (const [m, t] of [
      ['a\u0000', 'b'],
      ['a', '\u0000b'],
      ['1:a', ''],
      ['', 'a1:'],
    ] as const) {
      rc.inc({ model_name: m, target_model_name: t });
      fc.inc({ model_name: m, target_model_name: t });
    }
    await expectSameExport(p);
    expect(fc.get().values).toHaveLength(4);
  });
});

describe('fast metrics refuse what prom-client refuses', () => {
  const reg = new Registry();
  const h = new FastHistogram({ name: 'bad_h', help: 'h', buckets: [1, 2], registers: [reg] });
  const c = new FastCounter({ name: 'bad_c', help: 'c', labelNames: ['a'], registers: [reg] });
  const g = new FastGauge({ name: 'bad_g', help: 'g', registers: [reg] });

  it('rejects values that are not finite numbers', () => {
    for (const v of [Number.NaN, Number.POSITIVE_INFINITY, '3' as unknown as number]) {
      expect(() => h.observe(v)).toThrow(TypeError);
      expect(() => c.inc({ a: 'x' }, v)).toThrow(TypeError);
      expect(() => g.labels({}).set(v)).toThrow(TypeError);
    }
    expect(h.get().values.at(-1)?.value).toBe(0); // _count untouched
  });

  it('rejects a negative counter increment, unknown labels, le as a label, unordered buckets', () => {
    expect(() => c.inc({ a: 'x' }, -1)).toThrow(/decrease/);
    expect(() => c.labels({ b: 'x' } as never)).toThrow(/not included/);
    expect(
      () => new FastHistogram({ name: 'x', help: 'x', labelNames: ['le'], buckets: [1] }),
    ).toThrow(/reserved/);
    expect(() => new FastHistogram({ name: 'y', help: 'y', buckets: [2, 1] })).toThrow(
      /increasing/,
    );
  });

  it('refuses a second metric of the same name in one registry', () => {
    expect(() => new FastCounter({ name: 'bad_c', help: 'again', registers: [reg] })).toThrow(
      /already been registered/,
    );
  });
});
