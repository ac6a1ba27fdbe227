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
 * KV usage; NaN and infinite samples are ignored; a family that is absent
 * leaves its figure undefined.
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

export function readLoadFigures(text: string, engine: EngineMetrics): LoadFigures {
  return {
    waiting: first(text, engine.waiting, 'sum'),
    running: first(text, engine.running, 'sum'),
    kvUsage: first(text, engine.kvUsage, 'mean'),
  };
}

function first(
  text: string,
  selectors: readonly SeriesSelector[],
  fold: 'sum' | 'mean',
): number | undefined {
  for (const s of selectors) {
    const values = samples(text, s);
    if (values.length === 0) continue;
    const sum = values.reduce((a, b) => a + b, 0);
    return fold === 'sum' ? sum : sum / values.length;
  }
  return undefined;
}

/** The finite sample values of the series `s` selects (text exposition format 0.0.4). */
export function samples(text: string, s: SeriesSelector): number[] {
  const out: number[] = [];
  let from = 0;
  for (;;) {
    const at = text.indexOf(s.name, from);
    if (at < 0) return out;
    from = at + s.name.length;
    // Only at the start of a line, and the whole name (not a prefix of another).
    if (at > 0 && text.charCodeAt(at - 1) !== 10) continue;
    const next = text[from];
    if (next !== '{' && next !== ' ' && next !== '\t') continue;
    const eol = text.indexOf('\n', from);
    const line = text.slice(from, eol < 0 ? text.length : eol);
    let rest = line;
    if (next === '{') {
      const close = labelsEnd(line);
      if (close < 0) continue;
      if (s.labels && !labelsMatch(line.slice(1, close), s.labels)) continue;
      rest = line.slice(close + 1);
    } else if (s.labels && Object.keys(s.labels).length > 0) {
      continue;
    }
    const token = rest.trim().split(/[ \t]+/)[0];
    // An empty token is no sample (Number('') would be 0).
    const value = token ? Number(token) : Number.NaN;
    if (Number.isFinite(value)) out.push(value);
  }
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
