/**
 * A synthetic vLLM `/metrics` page for the scrape benchmark: the families a
 * vLLM V1 server with one engine exposes through prometheus_client (gauges,
 * counters with `_created`, histograms with `_bucket`/`_count`/`_sum`/`_created`,
 * the Python process and GC collectors), with made-up values. Its size and
 * shape, not its numbers, are what the benchmark needs: kv-epp reads three
 * gauges out of it.
 */

const MODEL = 'Qwen/Qwen3-8B';
const LABELS = `engine="0",model_name="${MODEL}"`;

const LATENCY_BUCKETS = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80,
  160, 640, 2560,
];
const TOKEN_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000];
const ITL_BUCKETS = [
  0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80,
];

function histogram(name: string, help: string, buckets: number[], i: number): string {
  const lines = [`# HELP ${name} ${help}`, `# TYPE ${name} histogram`];
  let cum = 0;
  for (const [k, le] of buckets.entries()) {
    cum += (i * 7 + k * 13) % 97;
    lines.push(`${name}_bucket{${LABELS},le="${le.toFixed(le < 1 ? 3 : 1)}"} ${cum}.0`);
  }
  lines.push(`${name}_bucket{${LABELS},le="+Inf"} ${cum}.0`);
  lines.push(`${name}_count{${LABELS}} ${cum}.0`);
  lines.push(`${name}_sum{${LABELS}} ${(cum * 0.731).toFixed(6)}`);
  lines.push(`# HELP ${name}_created ${help}`, `# TYPE ${name}_created gauge`);
  lines.push(`${name}_created{${LABELS}} 1.7645e+09`);
  return lines.join('\n');
}

function counter(name: string, help: string, value: number, extra = ''): string {
  const labels = extra ? `${LABELS},${extra}` : LABELS;
  return [
    `# HELP ${name}_total ${help}`,
    `# TYPE ${name}_total counter`,
    `${name}_total{${labels}} ${value}.0`,
    `# HELP ${name}_created ${help}`,
    `# TYPE ${name}_created gauge`,
    `${name}_created{${labels}} 1.7645e+09`,
  ].join('\n');
}

function gauge(name: string, help: string, value: number): string {
  return [`# HELP ${name} ${help}`, `# TYPE ${name} gauge`, `${name}{${LABELS}} ${value}`].join(
    '\n',
  );
}

/** The page one model server answers; `seed` varies the values, not the shape. */
export function vllmMetricsPage(seed: number): string {
  const parts = [
    '# HELP python_gc_objects_collected_total Objects collected during gc',
    '# TYPE python_gc_objects_collected_total counter',
    ...[0, 1, 2].map((g) => `python_gc_objects_collected_total{generation="${g}"} ${1000 + g}.0`),
    '# HELP process_resident_memory_bytes Resident memory size in bytes.',
    '# TYPE process_resident_memory_bytes gauge',
    `process_resident_memory_bytes ${2.1e9 + seed}`,
    gauge('vllm:num_requests_running', 'Number of requests in model execution batches.', seed % 17),
    gauge('vllm:num_requests_waiting', 'Number of requests waiting to be processed.', seed % 5),
    gauge('vllm:kv_cache_usage_perc', 'KV-cache usage. 1 means 100 percent usage.', 0.25),
    counter('vllm:num_preemptions', 'Cumulative number of preemption from the engine.', 3),
    counter('vllm:prompt_tokens', 'Number of prefill tokens processed.', 912_345 + seed),
    counter('vllm:generation_tokens', 'Number of generation tokens processed.', 123_456),
    ...['stop', 'length', 'abort', 'error'].map((r) =>
      counter(
        'vllm:request_success',
        'Count of successfully processed requests.',
        100,
        `finished_reason="${r}"`,
      ),
    ),
    counter(
      'vllm:prefix_cache_queries',
      'Prefix cache queries, in terms of number of queried tokens.',
      5e5,
    ),
    counter(
      'vllm:prefix_cache_hits',
      'Prefix cache hits, in terms of number of cached tokens.',
      2e5,
    ),
    histogram(
      'vllm:iteration_tokens_total',
      'Histogram of number of tokens per engine_step.',
      TOKEN_BUCKETS,
      1,
    ),
    histogram(
      'vllm:time_to_first_token_seconds',
      'Histogram of time to first token in seconds.',
      LATENCY_BUCKETS,
      2,
    ),
    histogram(
      'vllm:inter_token_latency_seconds',
      'Histogram of inter-token latency in seconds.',
      ITL_BUCKETS,
      3,
    ),
    histogram(
      'vllm:request_time_per_output_token_seconds',
      'Histogram of time_per_output_token_seconds per request.',
      ITL_BUCKETS,
      4,
    ),
    histogram(
      'vllm:e2e_request_latency_seconds',
      'Histogram of e2e request latency in seconds.',
      LATENCY_BUCKETS,
      5,
    ),
    histogram(
      'vllm:request_queue_time_seconds',
      'Histogram of time spent in WAITING phase for request.',
      LATENCY_BUCKETS,
      6,
    ),
    histogram(
      'vllm:request_inference_time_seconds',
      'Histogram of time spent in RUNNING phase for request.',
      LATENCY_BUCKETS,
      7,
    ),
    histogram(
      'vllm:request_prefill_time_seconds',
      'Histogram of time spent in PREFILL phase for request.',
      LATENCY_BUCKETS,
      8,
    ),
    histogram(
      'vllm:request_decode_time_seconds',
      'Histogram of time spent in DECODE phase for request.',
      LATENCY_BUCKETS,
      9,
    ),
    histogram(
      'vllm:request_prompt_tokens',
      'Number of prefill tokens processed.',
      TOKEN_BUCKETS,
      10,
    ),
    histogram(
      'vllm:request_generation_tokens',
      'Number of generation tokens processed.',
      TOKEN_BUCKETS,
      11,
    ),
    histogram(
      'vllm:request_max_num_generation_tokens',
      'Histogram of maximum number of requested generation tokens.',
      TOKEN_BUCKETS,
      12,
    ),
    histogram(
      'vllm:request_params_n',
      'Histogram of the n request parameter.',
      [1, 2, 5, 10, 20],
      13,
    ),
    histogram(
      'vllm:request_params_max_tokens',
      'Histogram of the max_tokens request parameter.',
      TOKEN_BUCKETS,
      14,
    ),
    '# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig',
    '# TYPE vllm:cache_config_info gauge',
    `vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.9",num_gpu_blocks="27000",prefix_caching_hash_algo="sha256"} 1.0`,
  ];
  return `${parts.join('\n')}\n`;
}
