/**
 * Load figures from a model server's Prometheus text (GAIE's model-server
 * protocol, gaie-epp.md §5.7): waiting and running requests and KV-cache
 * usage (0..1), by engine: vLLM (the default), SGLang, trtllm-serve and
 * Triton's TensorRT-LLM backend, chosen by an endpoint's
 * `inference.networking.k8s.io/engine-type` label as GAIE chooses it.
 *
 * Contract: pure (no I/O). Only the wanted families are read: a line scan
 * for their names, never a parse of the whole exposition, which for vLLM is
 * mostly histograms. Several matching series (one per engine of a
 * data-parallel server) add up for the request counts and average for the
 * KV usage, unless the endpoint is one of several ranks sharing the page
 * (`readRankFigures`); NaN and infinite samples are ignored; a family that is
 * absent leaves its figure undefined.
 */

/** A Prometheus series selector: a metric name and labels that must match exactly. */
export interface SeriesSelector {
  name: string;
  labels?: Readonly<Record<string, string>>;
}

export interface EngineMetrics {
  /** Tried in order: the first family present gives the figure. */
  waiting: readonly SeriesSelector[];
  running: readonly SeriesSelector[];
  kvUsage: readonly SeriesSelector[];
}

/** The pod label GAIE reads the engine from. */
export const ENGINE_LABEL = 'inference.networking.k8s.io/engine-type';

export const ENGINES: Readonly<Record<string, EngineMetrics>> = {
  vllm: {
    waiting: [{ name: 'vllm:num_requests_waiting' }],
    running: [{ name: 'vllm:num_requests_running' }],
    // vLLM renamed it; GAIE's default followed in 2025-11.
    kvUsage: [{ name: 'vllm:kv_cache_usage_perc' }, { name: 'vllm:gpu_cache_usage_perc' }],
  },
  sglang: {
    waiting: [{ name: 'sglang:num_queue_reqs' }],
    running: [{ name: 'sglang:num_running_reqs' }],
    kvUsage: [{ name: 'sglang:token_usage' }],
  },
  'trtllm-serve': {
    waiting: [{ name: 'trtllm_num_requests_waiting' }],
    running: [{ name: 'trtllm_num_requests_running' }],
    kvUsage: [{ name: 'trtllm_kv_cache_utilization' }],
  },
  'triton-tensorrt-llm': {
    waiting: [{ name: 'nv_trt_llm_request_metrics', labels: { request_type: 'waiting' } }],
    running: [{ name: 'nv_trt_llm_request_metrics', labels: { request_type: 'scheduled' } }],
    kvUsage: [
      { name: 'nv_trt_llm_kv_cache_block_metrics', labels: { kv_cache_block_type: 'fraction' } },
    ],
  },
};

/** The engine of an endpoint with these labels; vLLM unless the label names another one known here. */
export function engineOf(labels: Readonly<Record<string, string>>): EngineMetrics {
  const name = labels[ENGINE_LABEL];
  return (
    name !== undefined && Object.hasOwn(ENGINES, name) ? ENGINES[name] : ENGINES.vllm
  ) as EngineMetrics;
}

export interface LoadFigures {
  waiting?: number | undefined;
  running?: number | undefined;
  kvUsage?: number | undefined;
}

/** One endpoint's figures. */
export interface PodLoad extends LoadFigures {
  pod: string;
}

/**
 * `page`: the exposition's bytes (UTF-8), as read from the socket; a string is
 * taken too. Only the lines of the wanted series are decoded.
 */
export function readLoadFigures(
  page: Uint8Array | string,
  engine: EngineMetrics,
  labels?: Readonly<Record<string, string>>,
): LoadFigures {
  const bytes = asBuffer(page);
  const only = (list: readonly SeriesSelector[]): readonly SeriesSelector[] =>
    labels === undefined ? list : list.map((s) => ({ ...s, labels: { ...s.labels, ...labels } }));
  return {
    waiting: first(bytes, only(engine.waiting), 'sum'),
    running: first(bytes, only(engine.running), 'sum'),
    kvUsage: first(bytes, only(engine.kvUsage), 'mean'),
  };
}

/**
 * The figures of each data-parallel rank of one server that serves them all
 * on one metrics page: the series labelled `engine="<rank>"` (vLLM's label
 * for its engine cores); on a page without that label, the server's totals
 * split evenly over `ranks` (KV usage is a mean, so it stays). Without this,
 * every rank got the whole server's counts and the pool gauges counted each
 * waiting request once per rank.
 */
export function readRankFigures(
  page: Uint8Array | string,
  engine: EngineMetrics,
  rank: number,
  ranks: number,
): LoadFigures {
  const own = readLoadFigures(page, engine, { engine: String(rank) });
  if (own.waiting !== undefined || own.running !== undefined || own.kvUsage !== undefined) {
    return own;
  }
  const all = readLoadFigures(page, engine);
  const share = (n: number | undefined) => (n === undefined ? undefined : n / ranks);
  return { waiting: share(all.waiting), running: share(all.running), kvUsage: all.kvUsage };
}

function asBuffer(page: Uint8Array | string): Buffer {
  if (typeof page === 'string') return Buffer.from(page, 'utf8');
  return Buffer.isBuffer(page) ? page : Buffer.from(page.buffer, page.byteOffset, page.byteLength);
}

function first(
  page: Buffer,
  selectors: readonly SeriesSelector[],
  fold: 'sum' | 'mean',
): number | undefined {
  for (const s of selectors) {
    const values = samples(page, s);
    if (values.length === 0) continue;
    const sum = values.reduce((a, b) => a + b, 0);
    return fold === 'sum' ? sum : sum / values.length;
  }
  return undefined;
}

const NEWLINE = 10;
/** `\n` + a metric name, by name: what a sample line of it starts with after the first line. */
const lineStarts = new Map<string, Buffer>();

function lineStart(name: string): Buffer {
  let b = lineStarts.get(name);
  if (b === undefined) {
    b = Buffer.from(`\n${name}`, 'utf8');
    lineStarts.set(name, b);
  }
  return b;
}

/** Where the name of the next line starting with it begins, from `from` on; -1: none. */
function next(bytes: Buffer, needle: Buffer, from: number): number {
  const at = bytes.indexOf(needle, from);
  return at < 0 ? -1 : at + 1;
}

/** The finite sample values of the series `s` selects (text exposition format 0.0.4). */
export function samples(page: Uint8Array | string, s: SeriesSelector): number[] {
  const bytes = asBuffer(page);
  const needle = lineStart(s.name);
  const out: number[] = [];
  // A name is only a sample at the start of a line: the page's first, or after a newline.
  const nameBytes = needle.length - 1;
  let start = bytes.subarray(0, nameBytes).equals(needle.subarray(1)) ? 0 : next(bytes, needle, 0);
  while (start >= 0) {
    const from = start + nameBytes;
    const eol = bytes.indexOf(NEWLINE, from);
    const value = sampleValue(bytes.toString('utf8', from, eol < 0 ? bytes.length : eol), s);
    if (value !== undefined) out.push(value);
    start = eol < 0 ? -1 : next(bytes, needle, eol);
  }
  return out;
}

/**
 * The value of one line that starts with the series' name (`line` is the rest
 * after the name), or undefined when it is not a sample of `s`: another
 * metric's name that `s.name` prefixes, labels that do not match, or a value
 * that is not a finite number.
 */
function sampleValue(line: string, s: SeriesSelector): number | undefined {
  const next = line[0];
  if (next !== '{' && next !== ' ' && next !== '\t') return undefined;
  let rest = line;
  if (next === '{') {
    const close = labelsEnd(line);
    if (close < 0) return undefined;
    if (s.labels && !labelsMatch(line.slice(1, close), s.labels)) return undefined;
    rest = line.slice(close + 1);
  } else if (s.labels && Object.keys(s.labels).length > 0) {
    return undefined;
  }
  const token = rest.trim().split(/[ \t]+/)[0];
  // An empty token is no sample (Number('') would be 0).
  const value = token ? Number(token) : Number.NaN;
  return Number.isFinite(value) ? value : undefined;
}

/** The index of the `}` closing a label set that starts at 0 (quotes and escapes honoured). */
function labelsEnd(line: string): number {
  let quoted = false;
  for (let i = 1; i < line.length; i++) {
    const c = line[i];
    if (quoted) {
      if (c === '\\') i++;
      else if (c === '"') quoted = false;
    } else if (c === '"') quoted = true;
    else if (c === '}') return i;
  }
  return -1;
}

function labelsMatch(body: string, want: Readonly<Record<string, string>>): boolean {
  const have = new Map<string, string>();
  const re = /\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?/g;
  for (let m = re.exec(body); m !== null; m = re.exec(body)) {
    have.set(
      m[1] as string,
      (m[2] as string).replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c)),
    );
  }
  return Object.entries(want).every(([k, v]) => have.get(k) === v);
}
