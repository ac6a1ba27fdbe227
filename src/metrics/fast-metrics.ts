/**
 * Counters, gauges and histograms for the per-request and per-event paths,
 * registered in a prom-client Registry and exported exactly as prom-client's
 * own would be (same `get()` / `getForPromString()` shapes, so the same text).
 *
 * Why not prom-client's: its `observe`/`inc` re-validate and re-hash the label
 * object on every call, even through a `labels()` child, and a histogram finds
 * its bucket by a property lookup keyed by the bound's string. At 500 req/s
 * that was ~12 µs of the event loop per request, much of it before the routing
 * answer was written. Here a child is resolved once (`labels()`), and
 * `observe` is a bounded search over a Float64Array and two adds.
 *
 * Contracts (as prom-client): a value that is not a finite number throws a
 * TypeError, as does a counter increment below 0 or a label name outside
 * `labelNames`; a family without labels exports a zero series from the start,
 * a labelled one exports a series from its first `labels()` call on; series are
 * exported in the order they were created; label values are exported in the
 * order of the object they were created with.
 */
import type { Registry } from 'prom-client';

type Labels<L extends string> = Partial<Record<L, string | number>>;

/** prom-client's metric export shape (`Registry.getMetricsAsString` reads it). */
interface ExportValue {
  value: number;
  labels: Record<string, string | number>;
  metricName?: string;
  /** prom-client's histogram buckets carry `exemplar: null` (exemplars off). */
  exemplar?: null;
  sharedLabels?: Record<string, string | number>;
}
interface MetricExport {
  name: string;
  help: string;
  type: 'counter' | 'gauge' | 'histogram';
  values: ExportValue[];
  aggregator: 'sum';
}

interface FamilyConfig<L extends string> {
  name: string;
  help: string;
  labelNames?: readonly L[];
  registers?: readonly Registry[];
}

function finite(v: number, what: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new TypeError(`${what} is not a valid number: ${String(v)}`);
  }
  return v;
}

/** prom-client's escaping of names and help texts. */
function escapeString(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

/** prom-client's label list: values escaped (and quoted) as its text format does. */
function formatLabels(labels: Record<string, string | number>): string {
  let out = '';
  for (const [name, value] of Object.entries(labels)) {
    const v = typeof value === 'string' ? escapeString(value).replace(/"/g, '\\"') : value;
    out += `${out === '' ? '' : ','}${name}="${v}"`;
  }
  return out;
}

/** prom-client's sample value text. */
function valueText(v: number): string {
  if (Number.isNaN(v)) return 'Nan';
  if (!Number.isFinite(v)) return v < 0 ? '-Inf' : '+Inf';
  return `${v}`;
}

/**
 * A family that writes its own exposition text, in slices: exactly the text
 * prom-client's `Registry.getMetricsAsString` makes from its `get()` (no
 * default labels, Prometheus text format), split between whole series so a
 * large page can be written with the event loop free between slices.
 */
export interface SlicedExposition {
  /**
   * Appends the lines of the series from index `from` on (the HELP and TYPE
   * lines first when `from` is 0): at least one series, then more until
   * `maxLines` lines were added or the series end; returns the next series'
   * index (greater than `from`), or -1 after the last.
   */
  renderLines(lines: string[], from: number, maxLines: number): number;
}

export function isSlicedExposition(m: unknown): m is SlicedExposition {
  return typeof (m as Partial<SlicedExposition>).renderLines === 'function';
}

/** Where a child announces its first recorded value (from then on it is exported). */
interface Publisher {
  publish(child: Child): void;
}

abstract class Child {
  /** Exported: something was recorded since creation or the family's last reset. */
  live = false;
  private text: string | undefined;
  constructor(
    private readonly family: Publisher,
    readonly labels: Record<string, string | number>,
  ) {}
  /** The labels as exposition text, `a="x",b="y"` ('' without labels); made once. */
  labelText(): string {
    this.text ??= formatLabels(this.labels);
    return this.text;
  }
  /** Marks the series recorded (exported from now on). */
  touch(): void {
    if (!this.live) {
      this.live = true;
      this.family.publish(this);
    }
  }
  /** Back to zero, not exported. */
  abstract clear(): void;
}

/**
 * Children by label values, resolved once each; exported from their first
 * recorded value on, in that order (as prom-client creates a series on first
 * use, not on `labels()`).
 */
abstract class Family<L extends string, C extends Child> implements Publisher {
  readonly name: string;
  readonly help: string;
  abstract readonly type: MetricExport['type'];
  readonly aggregator = 'sum' as const;
  protected readonly labelNames: readonly L[];
  private readonly children = new Map<string, C>();
  protected exported: C[] = [];

  constructor(cfg: FamilyConfig<L>) {
    if (!/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(cfg.name)) {
      throw new Error(`invalid metric name: ${cfg.name}`);
    }
    this.name = cfg.name;
    this.help = cfg.help;
    this.labelNames = cfg.labelNames ?? [];
    for (const r of cfg.registers ?? []) {
      r.registerMetric(this as unknown as Parameters<Registry['registerMetric']>[0]);
    }
  }

  protected abstract makeChild(labels: Record<string, string | number>): C;

  publish(child: Child): void {
    this.exported.push(child as C);
  }

  /** The child for these label values, made on first use (exported once it records a value). */
  labels(labels: Labels<L>): C {
    let key = '';
    // Length-prefixed: values are client-controlled (model names) and may hold any separator.
    for (const n of this.labelNames) {
      const v = String(labels[n] ?? '');
      key += `${v.length}:${v}`;
    }
    const hit = this.children.get(key);
    if (hit !== undefined) return hit;
    for (const n of Object.keys(labels)) {
      if (!(this.labelNames as readonly string[]).includes(n)) {
        throw new Error(
          `Added label "${n}" is not included in initial labelset: ${this.labelNames.join(', ')}`,
        );
      }
    }
    const child = this.makeChild({ ...(labels as Record<string, string | number>) });
    this.children.set(key, child);
    return child;
  }

  /** The only child of a family without labels (children outlive `reset`, so it is kept). */
  private solo: C | undefined;
  protected unlabelled(): C {
    if (this.solo === undefined) this.solo = this.labels({});
    return this.solo;
  }

  /**
   * Zeroes every series and stops exporting them, as prom-client's `reset`
   * does; a child recording again is exported again (counters and gauges
   * without labels export their zero at once, histograms from their next
   * observation).
   */
  reset(): void {
    for (const c of this.children.values()) c.clear();
    this.exported = [];
  }

  abstract getForPromString(): MetricExport;

  get(): MetricExport {
    return this.getForPromString();
  }

  /** Appends one exported series' lines. */
  protected abstract renderSeries(lines: string[], child: C): void;

  renderLines(lines: string[], from: number, maxLines: number): number {
    const start = lines.length;
    if (from === 0) {
      const name = escapeString(this.name);
      lines.push(`# HELP ${name} ${escapeString(this.help)}`, `# TYPE ${name} ${this.type}`);
    }
    const series = this.exported;
    let i = from;
    // At least one series per call, so a caller always moves on.
    while (i < series.length && (i === from || lines.length - start < maxLines)) {
      this.renderSeries(lines, series[i] as C);
      i++;
    }
    return i < series.length ? i : -1;
  }
}

/** One number per series: a counter's or a gauge's. */
abstract class ScalarChild extends Child {
  value = 0;
  clear(): void {
    this.value = 0;
    this.live = false;
  }
}

/** Counters and gauges: a family without labels exports its zero series from the start (and after reset). */
abstract class ScalarFamily<L extends string, C extends ScalarChild> extends Family<L, C> {
  constructor(cfg: FamilyConfig<L>) {
    super(cfg);
    this.zeroSeries();
  }

  private zeroSeries(): void {
    if (this.labelNames.length === 0) this.unlabelled().touch();
  }

  override reset(): void {
    super.reset();
    this.zeroSeries();
  }

  protected renderSeries(lines: string[], c: C): void {
    const lt = c.labelText();
    lines.push(`${this.name}${lt === '' ? '' : `{${lt}}`} ${valueText(c.value)}`);
  }

  getForPromString(): MetricExport {
    const values: ExportValue[] = [];
    for (const c of this.exported) values.push({ value: c.value, labels: c.labels });
    return { name: this.name, help: this.help, type: this.type, values, aggregator: 'sum' };
  }
}

export class CounterChild extends ScalarChild {
  inc(v = 1): void {
    if (finite(v, 'Value') < 0) throw new Error('It is not possible to decrease a counter');
    this.touch();
    this.value += v;
  }
}

export class FastCounter<L extends string = string> extends ScalarFamily<L, CounterChild> {
  readonly type = 'counter' as const;

  protected makeChild(labels: Record<string, string | number>): CounterChild {
    return new CounterChild(this, labels);
  }

  /** `inc(value?)` without labels, `inc(labels, value?)` with. */
  inc(labelsOrValue?: Labels<L> | number, value?: number): void {
    if (typeof labelsOrValue === 'object') this.labels(labelsOrValue).inc(value);
    else this.unlabelled().inc(labelsOrValue);
  }
}

export class GaugeChild extends ScalarChild {
  inc(v = 1): void {
    this.set(this.value + finite(v, 'Value'));
  }
  dec(v = 1): void {
    this.set(this.value - finite(v, 'Value'));
  }
  set(v: number): void {
    finite(v, 'Value');
    this.touch();
    this.value = v;
  }
}

export class FastGauge<L extends string = string> extends ScalarFamily<L, GaugeChild> {
  readonly type = 'gauge' as const;

  protected makeChild(labels: Record<string, string | number>): GaugeChild {
    return new GaugeChild(this, labels);
  }
}

export class HistogramChild extends Child {
  /** Observations per bucket, not cumulative; values above the last bound count only in `count`. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(
    family: Publisher,
    labels: Record<string, string | number>,
    private readonly bounds: Float64Array,
  ) {
    super(family, labels);
    this.counts = new Float64Array(bounds.length);
  }

  observe(v: number): void {
    finite(v, 'Value');
    this.touch();
    const b = this.bounds;
    // The first bound >= v (prom-client's findBound), by binary search.
    let lo = 0;
    let hi = b.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((b[mid] as number) < v) lo = mid + 1;
      else hi = mid;
    }
    if (lo < b.length) this.counts[lo] = (this.counts[lo] as number) + 1;
    this.sum += v;
    this.count += 1;
  }

  clear(): void {
    this.counts.fill(0);
    this.sum = 0;
    this.count = 0;
    this.live = false;
  }
}

export class FastHistogram<L extends string = string> extends Family<L, HistogramChild> {
  readonly type = 'histogram' as const;
  private readonly bounds: Float64Array;

  constructor(cfg: FamilyConfig<L> & { buckets: readonly number[] }) {
    super(cfg);
    if ((cfg.labelNames ?? []).includes('le' as L))
      throw new Error('le is a reserved label keyword');
    for (let i = 1; i < cfg.buckets.length; i++) {
      if (!((cfg.buckets[i] as number) > (cfg.buckets[i - 1] as number))) {
        throw new Error(`${cfg.name}: buckets must be strictly increasing`);
      }
    }
    this.bounds = Float64Array.from(cfg.buckets);
    if (this.labelNames.length === 0) this.zeroSeries();
  }

  /** prom-client's unlabelled histogram exports a zero series from its construction. */
  private zeroSeries(): void {
    this.unlabelled().touch();
  }

  protected makeChild(labels: Record<string, string | number>): HistogramChild {
    return new HistogramChild(this, labels, this.bounds);
  }

  observe(v: number): void {
    this.unlabelled().observe(v);
  }

  protected renderSeries(lines: string[], child: HistogramChild): void {
    const lt = child.labelText();
    const after = lt === '' ? '' : `,${lt}`;
    const bucket = `${this.name}_bucket{le="`;
    let acc = 0;
    for (let i = 0; i < this.bounds.length; i++) {
      acc += child.counts[i] as number;
      lines.push(`${bucket}${this.bounds[i]}"${after}} ${valueText(acc)}`);
    }
    lines.push(`${bucket}+Inf"${after}} ${valueText(child.count)}`);
    const braces = lt === '' ? '' : `{${lt}}`;
    lines.push(`${this.name}_sum${braces} ${valueText(child.sum)}`);
    lines.push(`${this.name}_count${braces} ${valueText(child.count)}`);
  }

  /** prom-client's layout: per series its buckets (`le` first, then the series' labels as shared labels), +Inf, _sum, _count. */
  getForPromString(): MetricExport {
    const values: ExportValue[] = [];
    const bucket = `${this.name}_bucket`;
    for (const child of this.exported) {
      const labels = child.labels;
      let acc = 0;
      for (let i = 0; i < this.bounds.length; i++) {
        acc += child.counts[i] as number;
        values.push({
          labels: { le: this.bounds[i] as number },
          sharedLabels: labels,
          value: acc,
          metricName: bucket,
          exemplar: null,
        });
      }
      values.push({
        labels: { le: '+Inf' },
        sharedLabels: labels,
        value: child.count,
        metricName: bucket,
        exemplar: null,
      });
      values.push({
        labels: {},
        sharedLabels: labels,
        value: child.sum,
        metricName: `${this.name}_sum`,
      });
      values.push({
        labels: {},
        sharedLabels: labels,
        value: child.count,
        metricName: `${this.name}_count`,
      });
    }
    return {
      name: this.name,
      help: this.help,
      type: this.type,
      values,
      aggregator: this.aggregator,
    };
  }

  /** prom-client's `get()`: each value's shared labels merged into its own. */
  override get(): MetricExport {
    const data = this.getForPromString();
    data.values = data.values.map(({ sharedLabels, labels, ...rest }) => ({
      ...rest,
      labels: { ...labels, ...sharedLabels },
    }));
    return data;
  }
}
