/**
 * `kv-epp serve` as a drop-in for GAIE's EPP: the argument lists GAIE's Helm
 * charts render parse, kv-epp's booleans follow pflag, GAIE flags kv-epp does
 * not act on are reported (name and value) for one warning, and `-v` /
 * `--zap-log-level` set the log level.
 */
import { describe, expect, it } from 'vitest';
import {
  isGaieEndpointPickerConfig,
  parseServeArgs,
  resolveServeOptions,
  serveLogEnv,
  startupWarnings,
} from '../../../src/config/serve-options.js';

/** What GAIE's epplib `_deployment.yaml` renders (vLLM pool, one replica, tracing off, no auth). */
const CHART = [
  '--pool-name',
  'llm',
  '--pool-namespace',
  'default',
  '--pool-group',
  'inference.networking.k8s.io',
  '--zap-encoder',
  'json',
  '--config-file',
  '/config/default-plugins.yaml',
  '--tracing=false',
  '--metrics-endpoint-auth=false',
];

describe('parseServeArgs: GAIE chart compatibility', () => {
  it("parses the chart's arguments; only --pool-group has no effect, the rest is honoured", () => {
    const a = parseServeArgs(CHART);
    expect(a.flags).toEqual({
      'pool-name': 'llm',
      'pool-namespace': 'default',
      'config-file': '/config/default-plugins.yaml',
    });
    // json logs, no tracing, no metrics auth: what kv-epp does anyway.
    expect(a.ignored).toEqual([{ flag: '--pool-group', value: 'inference.networking.k8s.io' }]);
    expect(a.logLevel).toBeUndefined();
  });

  it('parses the conditional arguments (other model servers, HA, inferenceExtension.flags) and lists them', () => {
    const a = parseServeArgs([
      ...CHART,
      '--total-queued-requests-metric="sglang:num_queue_reqs"',
      '--kv-cache-usage-percentage-metric',
      'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction}',
      '--lora-info-metric',
      '',
      '--model-server-metrics-path="/prometheus/metrics"',
      '--ha-enable-leader-election',
      '--endpoint-selector',
      'app=vllm',
      '--endpoint-target-ports',
      '8000,8001',
      '--refresh-metrics-interval=50ms',
      '--enable-cert-reload=true',
      '--secure-serving=false',
      '--tracing',
    ]);
    expect(a.flags['secure-serving']).toBe('false');
    expect(a.ignored).toEqual([
      { flag: '--pool-group', value: 'inference.networking.k8s.io' },
      { flag: '--tracing', value: true },
      { flag: '--total-queued-requests-metric', value: '"sglang:num_queue_reqs"' },
      {
        flag: '--kv-cache-usage-percentage-metric',
        value: 'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction}',
      },
      { flag: '--lora-info-metric', value: '' },
      { flag: '--ha-enable-leader-election', value: true },
      { flag: '--endpoint-selector', value: 'app=vllm' },
      { flag: '--endpoint-target-ports', value: '8000,8001' },
    ]);
    // The model-server scrape flags are kv-epp's own now (ModelServerMetricsOptions).
    expect(a.flags['model-server-metrics-path']).toBe('"/prometheus/metrics"');
    expect(a.flags['refresh-metrics-interval']).toBe('50ms');
  });

  it("parses GAIE v1.1's chart, which renders a boolean and its value as two arguments", () => {
    const a = parseServeArgs([
      '--pool-name',
      'p',
      '--tracing',
      'false',
      '--ha-enable-leader-election',
      'TRUE',
      '--kubeconfig',
      '',
      '--grpc-port',
      '9002',
    ]);
    expect(a.flags['pool-name']).toBe('p');
    expect(a.flags['grpc-port']).toBe('9002');
    expect(a.ignored).toEqual([
      { flag: '--ha-enable-leader-election', value: true },
      { flag: '--kubeconfig', value: '' },
    ]);
    // kv-epp's own booleans too: the chart renders `flags.secure-serving=false` so.
    expect(parseServeArgs(['--secure-serving', 'false']).flags['secure-serving']).toBe('false');
  });

  it('reports a GAIE boolean only when its value differs from what kv-epp does', () => {
    // kv-epp always reloads --cert-path: only =false is without effect.
    expect(parseServeArgs(['--enable-cert-reload']).ignored).toEqual([]);
    expect(parseServeArgs(['--enable-cert-reload=false']).ignored).toEqual([
      { flag: '--enable-cert-reload', value: false },
    ]);
    expect(parseServeArgs(['--health-checking=F']).ignored).toEqual([
      { flag: '--health-checking', value: false },
    ]);
    expect(() => parseServeArgs(['--tracing=maybe'])).toThrow(
      '--tracing: expected true or false, got "maybe"',
    );
  });

  it("accepts kv-epp's booleans bare (true), with =value, and with a Go boolean after a space (GAIE charts v1.1-v1.5)", () => {
    const bare = parseServeArgs([
      '--secure-serving',
      '--kv-events',
      '--durable-kv-events',
      '--router-reset-states',
    ]).flags;
    const o = resolveServeOptions(bare, { NATS_SERVER: 'nats://127.0.0.1:4222' });
    expect([o.secureServing, o.useKvEvents, o.events.durable, o.events.resetStates]).toEqual([
      true,
      true,
      true,
      true,
    ]);
    const off = resolveServeOptions(
      parseServeArgs(['--secure-serving=false', '--kv-events=f', '--durable-kv-events=0']).flags,
      { NATS_SERVER: 'nats://127.0.0.1:4222' },
    );
    expect([off.secureServing, off.useKvEvents, off.events.durable]).toEqual([false, false, false]);
    const chart = resolveServeOptions(
      parseServeArgs([
        '--secure-serving',
        'false',
        '--kv-events',
        'FALSE',
        '--durable-kv-events',
        '1',
        '--router-reset-states',
        't',
      ]).flags,
      { NATS_SERVER: 'nats://127.0.0.1:4222' },
    );
    expect([chart.secureServing, chart.useKvEvents, chart.events.durable]).toEqual([
      false,
      false,
      true,
    ]);
    expect(chart.events.resetStates).toBe(true);
    // Anything but a Go boolean after it is not its value.
    expect(() => parseServeArgs(['--secure-serving', 'no'])).toThrow('no: unexpected argument');
    expect(() => parseServeArgs(['--no-such-flag'])).toThrow('--no-such-flag: unknown option');
  });
});

describe('GAIE log flags', () => {
  it.each([
    [['-v', '2'], undefined],
    [['--v=1'], undefined],
    [['-v3'], 'debug'],
    [['--v', '4'], 'debug'],
    [['-v=5'], 'trace'],
    [['--zap-log-level', 'error'], 'error'],
    [['--zap-log-level=debug'], 'debug'],
    [['--zap-log-level=panic'], 'fatal'],
    [['--zap-log-level=1'], 'info'],
    // --zap-log-level wins over -v, as in GAIE.
    [['-v', '5', '--zap-log-level', 'info'], 'info'],
  ])('%j → %s', (argv, level) => {
    expect(parseServeArgs(argv).logLevel).toBe(level);
    // The log flags are honoured, so never listed as without effect.
    expect(parseServeArgs(argv).ignored).toEqual([]);
  });

  it('rejects values pflag would reject', () => {
    expect(() => parseServeArgs(['-v', 'x'])).toThrow('-v: expected an integer');
    expect(() => parseServeArgs(['--zap-log-level=loud'])).toThrow('--zap-log-level: expected');
  });

  it('puts the asked-for level in the logger environment (flags beat KV_EPP_LOG_LEVEL)', () => {
    expect(serveLogEnv(['-v', '4'], { KV_EPP_LOG_LEVEL: 'warn' }).KV_EPP_LOG_LEVEL).toBe('debug');
    expect(serveLogEnv(['-v', '1'], { KV_EPP_LOG_LEVEL: 'warn' }).KV_EPP_LOG_LEVEL).toBe('warn');
    // Empty means unset here too; bad arguments are left for startServing to report.
    expect(serveLogEnv([], { KV_EPP_LOG_LEVEL: ' ' }).KV_EPP_LOG_LEVEL).toBeUndefined();
    expect(serveLogEnv(['--bogus'], { KV_EPP_LOG_LEVEL: 'error' }).KV_EPP_LOG_LEVEL).toBe('error');
  });

  it('refuses a KV_EPP_LOG_LEVEL in force that names no level, naming it', () => {
    expect(() => serveLogEnv([], { KV_EPP_LOG_LEVEL: 'loud' })).toThrow(
      'KV_EPP_LOG_LEVEL: expected trace, debug, info, warn, error, fatal, silent, got "loud"',
    );
    expect(serveLogEnv([], { KV_EPP_LOG_LEVEL: 'DEBUG' }).KV_EPP_LOG_LEVEL).toBe('DEBUG');
    // A flag in force decides; the variable is not read.
    expect(serveLogEnv(['-v', '4'], { KV_EPP_LOG_LEVEL: 'loud' }).KV_EPP_LOG_LEVEL).toBe('debug');
  });
});

describe('GAIE config file and the one warning', () => {
  it("recognises GAIE's EndpointPickerConfig, not kv-epp's file", () => {
    expect(
      isGaieEndpointPickerConfig({
        apiVersion: 'inference.networking.x-k8s.io/v1alpha1',
        kind: 'EndpointPickerConfig',
        plugins: [],
      }),
    ).toBe(true);
    expect(isGaieEndpointPickerConfig({ model: { blockSize: 16 } })).toBe(false);
    expect(isGaieEndpointPickerConfig(null)).toBe(false);
  });

  it('names every ignored flag with its value in one warning', () => {
    const a = parseServeArgs([...CHART, '--zap-encoder=console', '--ha-enable-leader-election']);
    const ws = startupWarnings(resolveServeOptions(a.flags, {}), {}, a.ignored);
    expect(ws).toHaveLength(1);
    expect(ws[0]?.msg).toMatch(/^GAIE EPP flags accepted but without effect/);
    expect(ws[0]?.fields).toEqual({
      flags: [
        { flag: '--pool-group', value: 'inference.networking.k8s.io' },
        { flag: '--zap-encoder', value: 'console' },
        { flag: '--ha-enable-leader-election', value: true },
      ],
    });
    expect(startupWarnings(resolveServeOptions({}, {}), {}, [])).toEqual([]);
  });

  it('warns when readings would expire before the next scrape', () => {
    const warn = (args: string[]) => {
      const a = parseServeArgs(args);
      return startupWarnings(resolveServeOptions(a.flags, {}), {}, a.ignored);
    };
    const short = warn(['--refresh-metrics-interval=1s', '--metrics-staleness-threshold=500ms']);
    expect(short.map((w) => w.fields)).toEqual([
      { refreshMetricsIntervalMs: 1000, metricsStalenessThresholdMs: 500 },
    ]);
    expect(short[0]?.msg).toMatch(/^--metrics-staleness-threshold is shorter than/);
    expect(warn(['--refresh-metrics-interval=1s', '--metrics-staleness-threshold=1s'])).toEqual([]);
    expect(warn(['--refresh-metrics-interval=5s'])).toEqual([]);
    // Off: no interval, no warning whatever the threshold.
    expect(warn(['--metrics-staleness-threshold=1ms'])).toEqual([]);
  });
});
