import { describe, expect, it } from 'vitest';
import {
  blockSizeWarning,
  LEGACY_NAMES,
  resolveServeOptions,
  startupWarnings,
} from '../../../src/config/serve-options.js';

describe('resolveServeOptions', () => {
  it('uses the reference EPP defaults', () => {
    const o = resolveServeOptions({}, {});
    expect(o).toMatchObject({
      grpcPort: 9002,
      grpcHealthPort: 9003,
      metricsPort: 9090,
      secureServing: true,
      blockSize: 16,
      // No event source configured: approximate routing.
      useKvEvents: false,
      tokenizer: 'o200k_base',
      fallbacks: 0,
      maxQueuedRequests: 1024,
      maxRequestsPerEndpoint: 0,
      retryAfterSeconds: 1,
      outlierConsecutive5xx: 5,
      outlierEjectionSeconds: 30,
      events: {
        namespace: 'dynamo',
        component: 'backend',
        subjects: ['namespace.dynamo.component.*.endpoint.*.kv-events'],
        durable: false,
        maxQueuedMessages: 65_536,
      },
    });
  });

  it("resolves the pool namespace as GAIE's runner: --pool-namespace, else NAMESPACE, else default", () => {
    expect(resolveServeOptions({}, { NAMESPACE: 'team-a' }).poolNamespace).toBe('team-a');
    expect(
      resolveServeOptions({ 'pool-namespace': 'flag' }, { NAMESPACE: 'team-a' }).poolNamespace,
    ).toBe('flag');
    expect(resolveServeOptions({}, {}).poolNamespace).toBe('default');
    // An empty NAMESPACE (a chart's `value: ""`) is unset, so never an empty namespace.
    expect(resolveServeOptions({}, { NAMESPACE: '  ' }).poolNamespace).toBe('default');
    expect(() => resolveServeOptions({ 'pool-namespace': '' }, {})).toThrow(
      '--pool-namespace: expected a non-empty string',
    );
  });

  it('remembers which field named the chat template (flag over the config file)', () => {
    const file = { model: { chatTemplateFile: '/cfg/t.jinja' } };
    expect(resolveServeOptions({}, {}, file, 'cfg.yaml')).toMatchObject({
      chatTemplateFile: '/cfg/t.jinja',
      chatTemplateSetBy: 'cfg.yaml: model.chatTemplateFile',
    });
    expect(
      resolveServeOptions({ 'chat-template': '/flag/t.jinja' }, {}, file, 'cfg.yaml'),
    ).toMatchObject({ chatTemplateFile: '/flag/t.jinja', chatTemplateSetBy: '--chat-template' });
    expect(resolveServeOptions({}, {})).toMatchObject({
      chatTemplateFile: undefined,
      chatTemplateSetBy: undefined,
    });
    expect(() =>
      resolveServeOptions({}, {}, { model: { chatTemplateFile: 3 } }, 'cfg.yaml'),
    ).toThrow('cfg.yaml: model.chatTemplateFile: expected a non-empty string');
  });

  it('turns KV events on when a NATS server is given (Dynamo names)', () => {
    const o = resolveServeOptions(
      {},
      { NATS_SERVER: 'nats://127.0.0.1:4222', DYN_NAMESPACE: 'ns1' },
    );
    expect(o.useKvEvents).toBe(true);
    expect(o.events).toMatchObject({
      natsServer: 'nats://127.0.0.1:4222',
      namespace: 'ns1',
      subjects: ['namespace.ns1.component.*.endpoint.*.kv-events'],
    });
    const off = resolveServeOptions(
      { 'kv-events': 'false' },
      { NATS_SERVER: 'nats://127.0.0.1:4222' },
    );
    expect(off.useKvEvents).toBe(false);
    const durable = resolveServeOptions(
      { 'kv-events-subject': 'a.kv-events,b.kv-events' },
      { NATS_SERVER: '127.0.0.1:4222', DYN_ROUTER_DURABLE_KV_EVENTS: 'true' },
      { events: { component: 'worker' } },
    );
    expect(durable.events).toMatchObject({
      subjects: ['a.kv-events', 'b.kv-events'],
      durable: true,
      component: 'worker',
    });
  });

  it('reads the shedding limits', () => {
    const o = resolveServeOptions(
      { 'max-requests-per-endpoint': '8' },
      { KV_EPP_MAX_QUEUED_REQUESTS: '0' },
      { router: { retryAfterSeconds: 5 } },
    );
    expect([o.maxRequestsPerEndpoint, o.maxQueuedRequests, o.retryAfterSeconds]).toEqual([8, 0, 5]);
  });

  it('reads the buffered-body budget: 1 GiB or one largest body by default, never below one body', () => {
    expect(resolveServeOptions({}, {}).maxBufferedBodyBytes).toBe(1024 ** 3);
    const big = String(2 ** 31 - 1);
    expect(resolveServeOptions({ 'max-body-bytes': big }, {}).maxBufferedBodyBytes).toBe(
      2 ** 31 - 1,
    );
    expect(
      resolveServeOptions(
        { 'max-buffered-body-bytes': '5000000000' },
        { KV_EPP_MAX_BUFFERED_BODY_BYTES: '1' },
        { server: { maxBufferedBodyBytes: 2 } },
      ).maxBufferedBodyBytes,
    ).toBe(5_000_000_000);
    expect(
      resolveServeOptions(
        {},
        { KV_EPP_MAX_BUFFERED_BODY_BYTES: '134217728' },
        {
          server: { maxBufferedBodyBytes: 2 },
        },
      ).maxBufferedBodyBytes,
    ).toBe(134_217_728);
    expect(
      resolveServeOptions({}, {}, { server: { maxBufferedBodyBytes: 100_000_000 } }, 'cfg.yaml')
        .maxBufferedBodyBytes,
    ).toBe(100_000_000);
    expect(() =>
      resolveServeOptions({}, {}, { server: { maxBufferedBodyBytes: 1000 } }, 'cfg.yaml'),
    ).toThrow(
      'cfg.yaml: server.maxBufferedBodyBytes: expected at least the largest request body (max body bytes 67108864), got 1000',
    );
    expect(() => resolveServeOptions({ 'max-buffered-body-bytes': 'lots' }, {})).toThrow(
      '--max-buffered-body-bytes: expected an integer',
    );
  });

  it('reads the outlier ejection settings, from flags or the file, and names a bad one', () => {
    const o = resolveServeOptions(
      { 'outlier-consecutive-5xx': '0' },
      {},
      { router: { outlierEjectionSeconds: 7 } },
    );
    expect([o.outlierConsecutive5xx, o.outlierEjectionSeconds]).toEqual([0, 7]);
    expect(() => resolveServeOptions({ 'outlier-ejection-seconds': '0' }, {})).toThrow(
      /^--outlier-ejection-seconds: /,
    );
    expect(() => resolveServeOptions({}, {}, { router: { outlierConsecutive5xx: -1 } })).toThrow(
      /router\.outlierConsecutive5xx/,
    );
  });

  it("reads GAIE's model-server metric flags: off by default, Go durations, bad values name the flag", () => {
    expect(resolveServeOptions({}, {}).modelServerMetrics).toEqual({
      intervalMs: 0,
      stalenessMs: 2000,
      port: 0,
      path: '/metrics',
      scheme: 'http',
      insecureSkipVerify: true,
    });
    const o = resolveServeOptions(
      {
        'refresh-metrics-interval': '1m30.5s',
        'metrics-staleness-threshold': '200ms',
        'model-server-metrics-port': '9100',
        'model-server-metrics-path': '"/prometheus/metrics"',
        'model-server-metrics-scheme': 'https',
        'model-server-metrics-https-insecure-skip-verify': 'false',
      },
      {},
    );
    expect(o.modelServerMetrics).toEqual({
      intervalMs: 90_500,
      stalenessMs: 200,
      port: 9100,
      path: '/prometheus/metrics',
      scheme: 'https',
      insecureSkipVerify: false,
    });
    const interval = (v: string) =>
      resolveServeOptions({ 'refresh-metrics-interval': v }, {}).modelServerMetrics;
    expect(interval('0').intervalMs).toBe(0);
    expect(interval('1.5h').intervalMs).toBe(5_400_000);
    expect(interval('+.5s').intervalMs).toBe(500);
    expect(interval('10000μs').intervalMs).toBe(10);
    // The staleness threshold outlives two intervals unless set.
    expect(interval('50ms').stalenessMs).toBe(2000);
    expect(interval('5s').stalenessMs).toBe(10_000);
    for (const [flag, value, message] of [
      ['refresh-metrics-interval', '50', '--refresh-metrics-interval: expected a duration'],
      ['refresh-metrics-interval', '5 s', '--refresh-metrics-interval: expected a duration'],
      [
        'refresh-metrics-interval',
        '-1s',
        '--refresh-metrics-interval: expected a duration that is not negative',
      ],
      [
        'refresh-metrics-interval',
        '5ms',
        '--refresh-metrics-interval: expected 0 (off) or a duration from 10ms to 24h',
      ],
      [
        'refresh-metrics-interval',
        '25h',
        '--refresh-metrics-interval: expected 0 (off) or a duration from 10ms to 24h',
      ],
      ['metrics-staleness-threshold', 'soon', '--metrics-staleness-threshold: expected a duration'],
      [
        'model-server-metrics-scheme',
        'ftp',
        '--model-server-metrics-scheme: expected http or https',
      ],
      ['model-server-metrics-path', 'metrics', '--model-server-metrics-path: expected a path'],
      ['model-server-metrics-port', '70000', '--model-server-metrics-port'],
    ] as const) {
      expect(() => resolveServeOptions({ [flag]: value }, {}), flag).toThrow(message);
    }
  });

  it('reads the GC pacing step (flag over env over file; 0 turns it off; bad values name the field)', () => {
    // Off on raw-h2 (the default transport), on for the node:http2 ones.
    expect(resolveServeOptions({}, {}).gcPaceMb).toBe(0);
    expect(resolveServeOptions({ 'ext-proc-transport': 'direct' }, {}).gcPaceMb).toBe(48);
    expect(resolveServeOptions({}, {}, { server: { extProcTransport: 'grpc-js' } }).gcPaceMb).toBe(
      48,
    );
    expect(
      resolveServeOptions({ 'ext-proc-transport': 'direct', 'gc-pace-mb': '0' }, {}).gcPaceMb,
    ).toBe(0);
    expect(resolveServeOptions({}, {}, { server: { gcPaceMb: 0 } }).gcPaceMb).toBe(0);
    expect(
      resolveServeOptions({}, { KV_EPP_GC_PACE_MB: '96' }, { server: { gcPaceMb: 0 } }).gcPaceMb,
    ).toBe(96);
    expect(resolveServeOptions({ 'gc-pace-mb': '16' }, { KV_EPP_GC_PACE_MB: '96' }).gcPaceMb).toBe(
      16,
    );
    expect(() => resolveServeOptions({ 'gc-pace-mb': '-1' }, {})).toThrow(/--gc-pace-mb/);
    expect(() => resolveServeOptions({}, {}, { server: { gcPaceMb: 'lots' } })).toThrow(
      /server\.gcPaceMb/,
    );
  });

  it('reads the V8 worker priority (flag over env over file; idle by default; bad values name the field)', () => {
    const p = (flags: Record<string, string>, env: Record<string, string>, doc?: unknown) =>
      resolveServeOptions(flags, env, doc).v8WorkerPriority;
    expect(p({}, {})).toBe('idle');
    expect(p({}, {}, { server: { v8WorkerPriority: 'normal' } })).toBe('normal');
    expect(
      p({}, { KV_EPP_V8_WORKER_PRIORITY: 'low' }, { server: { v8WorkerPriority: 'normal' } }),
    ).toBe('low');
    expect(p({ 'v8-worker-priority': 'normal' }, { KV_EPP_V8_WORKER_PRIORITY: 'low' })).toBe(
      'normal',
    );
    expect(() => p({}, { KV_EPP_V8_WORKER_PRIORITY: 'realtime' })).toThrow(
      'KV_EPP_V8_WORKER_PRIORITY: expected idle, low or normal, got "realtime"',
    );
    expect(() => p({}, {}, { server: { v8WorkerPriority: 1 } })).toThrow(
      /server\.v8WorkerPriority/,
    );
  });

  it('takes --host as an IP address (IPv6 with or without brackets) or host name', () => {
    const host = (h: string) => resolveServeOptions({ host: h }, {}).host;
    expect(host('::1')).toBe('::1');
    expect(host('[::1]')).toBe('::1');
    expect(host('[fe80::1%eth0]')).toBe('fe80::1%eth0');
    expect(host('127.0.0.1')).toBe('127.0.0.1');
    expect(host('localhost')).toBe('localhost');
    expect(host('epp.example-ns.svc')).toBe('epp.example-ns.svc');
    expect(resolveServeOptions({}, {}, { server: { host: '[::]' } }).host).toBe('::');
    for (const bad of ['[127.0.0.1]', '[::1', '::1]', '[::1]:9002', 'a b', '-x', '[]']) {
      expect(() => host(bad), bad).toThrow(
        `--host: expected an IP address (IPv6 with or without brackets) or host name, got ${JSON.stringify(bad)}`,
      );
    }
    expect(() => resolveServeOptions({}, {}, { server: { host: '[x]' } })).toThrow(
      /server\.host: expected an IP address/,
    );
  });

  it('reads the recovery discovery directory and response host (Dynamo names) and the transport', () => {
    const d = resolveServeOptions({}, {});
    expect([d.events.discoveryDir, d.events.responseHost, d.extProcTransport]).toEqual([
      undefined,
      '127.0.0.1',
      'raw-h2',
    ]);
    expect(resolveServeOptions({ 'ext-proc-transport': 'direct' }, {}).extProcTransport).toBe(
      'direct',
    );
    const o = resolveServeOptions(
      { 'ext-proc-transport': 'grpc-js' },
      { DYN_FILE_KV: '/tmp/kv', DYN_TCP_RESPONSE_STREAM_HOST: '127.0.0.9' },
    );
    expect([o.events.discoveryDir, o.events.responseHost, o.extProcTransport]).toEqual([
      '/tmp/kv',
      '127.0.0.9',
      'grpc-js',
    ]);
    const f = resolveServeOptions(
      { 'dynamo-discovery-dir': '/tmp/flag' },
      { DYN_FILE_KV: '/tmp/env' },
    );
    expect(f.events.discoveryDir).toBe('/tmp/flag');
    expect(() => resolveServeOptions({ 'ext-proc-transport': 'h3' }, {})).toThrow(
      /--ext-proc-transport: expected raw-h2, direct or grpc-js/,
    );
  });

  it('takes flags over DYN_* environment over the file', () => {
    const file = {
      model: { blockSize: 32 },
      server: { secureServing: true },
      router: { useKvEvents: true },
      events: { natsServer: 'nats://127.0.0.1:4222' },
    };
    const env = {
      DYN_KV_CACHE_BLOCK_SIZE: '64',
      DYN_SECURE_SERVING: 'false',
      DYN_ROUTER_USE_KV_EVENTS: 'false',
    };
    expect(resolveServeOptions({}, {}, file).blockSize).toBe(32);
    const o = resolveServeOptions({}, env, file);
    expect([o.blockSize, o.secureServing, o.useKvEvents]).toEqual([64, false, false]);
    expect(
      resolveServeOptions({ 'block-size': '128', 'secure-serving': true }, env, file),
    ).toMatchObject({
      blockSize: 128,
      secureServing: true,
    });
  });

  it.each([
    [{ 'grpc-port': 'x' }, {}, undefined, '--grpc-port: expected an integer'],
    [
      {},
      { DYN_KV_CACHE_BLOCK_SIZE: '0' },
      undefined,
      'DYN_KV_CACHE_BLOCK_SIZE: expected an integer in 1..=1024',
    ],
    [{}, { DYN_SECURE_SERVING: 'maybe' }, undefined, 'DYN_SECURE_SERVING: expected true or false'],
    [
      {},
      {},
      { router: { fallbacks: 99 } },
      'cfg.yaml: router.fallbacks: expected an integer in 0..=16',
    ],
    [{}, {}, { router: { colour: 1 } }, 'cfg.yaml: router.colour: unknown key'],
    [{}, {}, { extra: 1 }, 'cfg.yaml: extra: unknown key'],
    [{ backend: 'gpu' }, {}, undefined, '--backend: expected auto, native or js'],
    [
      { 'kv-events': 'true' },
      {},
      undefined,
      '--kv-events: KV events need a source: set --nats-server',
    ],
    [{}, { NATS_SERVER: 'http://x' }, undefined, 'NATS_SERVER: expected nats://host:port'],
    [{}, { DYN_NAMESPACE: 'a.b' }, undefined, 'DYN_NAMESPACE: expected letters'],
    [{}, {}, { events: { durable: 'x' } }, 'cfg.yaml: events.durable: expected true or false'],
    [{}, {}, { events: { topic: 'x' } }, 'cfg.yaml: events.topic: unknown key'],
    [
      { 'max-queued-requests': '-1' },
      {},
      undefined,
      '--max-queued-requests: expected an integer in 0..',
    ],
  ])('names the field: %j %j %j', (flags, env, file, msg) => {
    expect(() => resolveServeOptions(flags, env, file, 'cfg.yaml')).toThrow(msg);
  });
});

/** The one start-up warning about Dynamo router variables, or undefined. */
function routerWarning(env: Record<string, string>) {
  return startupWarnings(resolveServeOptions({}, env), env).find((w) => 'noEffect' in w.fields)
    ?.fields;
}

describe("DYN_ROUTER_BLOCK_SIZE (the standalone Dynamo router's --router-block-size)", () => {
  it('sets the block size when nothing else does, and is not reported as unknown', () => {
    const env = { DYN_ROUTER_BLOCK_SIZE: '64' };
    expect(resolveServeOptions({}, env)).toMatchObject({
      blockSize: 64,
      blockSizeSetBy: 'DYN_ROUTER_BLOCK_SIZE',
    });
    expect(startupWarnings(resolveServeOptions({}, env), env)).toEqual([]);
    // Set, so no "16 is assumed" warning with Dynamo events.
    const nats = { ...env, NATS_SERVER: 'nats://127.0.0.1:4222' };
    expect(blockSizeWarning(resolveServeOptions({}, nats), true, [])).toBeUndefined();
    expect(() => resolveServeOptions({}, { DYN_ROUTER_BLOCK_SIZE: 'big' })).toThrow(
      'DYN_ROUTER_BLOCK_SIZE: expected an integer in 1..=1024',
    );
  });

  it('comes after the flag, DYN_KV_CACHE_BLOCK_SIZE, DYNAMO_KV_BLOCK_SIZE and model.blockSize', () => {
    const router = { DYN_ROUTER_BLOCK_SIZE: '128' };
    const by = (flags: Record<string, string>, env: Record<string, string>, doc?: unknown) => {
      const o = resolveServeOptions(flags, { ...router, ...env }, doc, 'cfg.yaml');
      return [o.blockSize, o.blockSizeSetBy];
    };
    expect(by({ 'block-size': '8' }, {})).toEqual([8, '--block-size']);
    expect(by({}, { DYN_KV_CACHE_BLOCK_SIZE: '32' })).toEqual([32, 'DYN_KV_CACHE_BLOCK_SIZE']);
    expect(by({}, { DYNAMO_KV_BLOCK_SIZE: '32' })).toEqual([32, 'DYNAMO_KV_BLOCK_SIZE']);
    expect(by({}, {}, { model: { blockSize: 32 } })).toEqual([32, 'cfg.yaml: model.blockSize']);
  });

  it('warns when it is overridden by a different size, not when the sizes agree', () => {
    const env = { DYN_ROUTER_BLOCK_SIZE: '128', DYN_KV_CACHE_BLOCK_SIZE: '32' };
    const ws = startupWarnings(resolveServeOptions({}, env), env);
    expect(ws.map((w) => w.fields)).toEqual([
      { DYN_ROUTER_BLOCK_SIZE: '128', blockSize: 32, blockSizeSetBy: 'DYN_KV_CACHE_BLOCK_SIZE' },
    ]);
    expect(ws[0]?.msg).toMatch(/^DYN_ROUTER_BLOCK_SIZE .* is overridden/);
    const same = { DYN_ROUTER_BLOCK_SIZE: '32', DYN_KV_CACHE_BLOCK_SIZE: '32' };
    expect(startupWarnings(resolveServeOptions({}, same), same)).toEqual([]);
  });
});

describe('legacy Dynamo variable names', () => {
  it("reads the frontend's pre-1.0 KV-event names, each below its current name", () => {
    const nats = { NATS_SERVER: 'nats://127.0.0.1:4222' };
    expect(resolveServeOptions({}, { ...nats, DYN_KV_EVENTS: 'false' })).toMatchObject({
      useKvEvents: false,
      kvEventsSetBy: 'DYN_KV_EVENTS',
    });
    expect(
      resolveServeOptions({}, { ...nats, DYN_KV_EVENTS: 'false', DYN_ROUTER_USE_KV_EVENTS: 'true' })
        .useKvEvents,
    ).toBe(true);
    expect(resolveServeOptions({}, { DYN_DURABLE_KV_EVENTS: 'true' }).events.durable).toBe(true);
    expect(
      resolveServeOptions(
        {},
        { DYN_DURABLE_KV_EVENTS: 'true', DYN_ROUTER_DURABLE_KV_EVENTS: 'false' },
      ).events.durable,
    ).toBe(false);
  });

  it("reads the Go EPP plugin's DYNAMO_NAMESPACE / DYNAMO_COMPONENT below the DYN_* names", () => {
    const o = resolveServeOptions({}, { DYNAMO_NAMESPACE: 'vllm-agg', DYNAMO_COMPONENT: 'worker' });
    expect(o.events).toMatchObject({
      namespace: 'vllm-agg',
      namespaceSetBy: 'DYNAMO_NAMESPACE',
      component: 'worker',
      subjects: ['namespace.vllm-agg.component.*.endpoint.*.kv-events'],
    });
    const both = resolveServeOptions(
      {},
      {
        DYNAMO_NAMESPACE: 'old',
        DYN_NAMESPACE: 'new',
        DYNAMO_COMPONENT: 'a',
        DYN_COMPONENT_NAME: 'b',
      },
      { events: { namespace: 'file' } },
    );
    expect([both.events.namespace, both.events.component]).toEqual(['new', 'b']);
    // The environment beats the file, the legacy names too.
    expect(
      resolveServeOptions({}, { DYNAMO_NAMESPACE: 'old' }, { events: { namespace: 'file' } }).events
        .namespace,
    ).toBe('old');
  });

  it('lists every legacy name that is set, with the name to use, in one warning', () => {
    const env = {
      DYN_KV_EVENTS: 'false',
      DYN_DURABLE_KV_EVENTS: 'false',
      DYN_ROUTER_TTL: '60',
      DYNAMO_NAMESPACE: 'ns',
      DYNAMO_COMPONENT: 'backend',
      DYNAMO_KV_BLOCK_SIZE: '16',
      DYNAMO_USE_KV_EVENTS: 'false',
    };
    const ws = startupWarnings(resolveServeOptions({}, env), env);
    expect(ws.map((w) => w.fields)).toEqual([
      {
        legacy: {
          DYNAMO_COMPONENT: 'DYN_COMPONENT_NAME',
          DYNAMO_KV_BLOCK_SIZE: 'DYN_KV_CACHE_BLOCK_SIZE',
          DYNAMO_NAMESPACE: 'DYN_NAMESPACE',
          DYNAMO_USE_KV_EVENTS: 'DYN_ROUTER_USE_KV_EVENTS',
          DYN_DURABLE_KV_EVENTS: 'DYN_ROUTER_DURABLE_KV_EVENTS',
          DYN_KV_EVENTS: 'DYN_ROUTER_USE_KV_EVENTS',
          DYN_ROUTER_TTL: 'DYN_ROUTER_TTL_SECS',
        },
      },
    ]);
    expect(Object.keys(LEGACY_NAMES).sort()).toEqual(Object.keys(env).sort());
    expect(ws[0]?.msg).toMatch(/only when its current name is unset/);
  });
});

describe('Dynamo variables classified as without effect', () => {
  it.each([
    // Documented router settings kv-epp accepts but does not act on.
    'DYN_ROUTER_SNAPSHOT_THRESHOLD',
    'DYN_ROUTER_WORKER_SELECTION_POLICY',
    // The frontend's pre-1.0 names of settings kv-epp does not implement.
    'DYN_KV_OVERLAP_SCORE_WEIGHT',
    'DYN_TRACK_ACTIVE_BLOCKS',
    'DYN_ASSUME_KV_REUSE',
    // The Go EPP plugin's.
    'DYNAMO_ROUTER_REPLICA_SYNC',
    'DYNAMO_BUSY_THRESHOLD',
  ])('%s is noEffect, not unknown', (name) => {
    expect(routerWarning({ [name]: '1' })).toEqual({ noEffect: [name], unknown: [] });
  });

  it('reports DYNAMO_USE_KV_ROUTING and DYN_ENFORCE_DISAGG only for the value kv-epp cannot honour', () => {
    expect(routerWarning({ DYNAMO_USE_KV_ROUTING: 'false', DYN_ENFORCE_DISAGG: 'true' })).toEqual({
      noEffect: ['DYNAMO_USE_KV_ROUTING', 'DYN_ENFORCE_DISAGG'],
      unknown: [],
    });
    // KV routing and an aggregated fallback are what kv-epp always does.
    expect(routerWarning({ DYNAMO_USE_KV_ROUTING: 'true', DYN_ENFORCE_DISAGG: 'false' })).toBe(
      undefined,
    );
    expect(routerWarning({ DYN_ENFORCE_DISAGG: 'sometimes' })?.noEffect).toEqual([
      'DYN_ENFORCE_DISAGG',
    ]);
  });

  it("keeps DYN_ROUTER_* names not found in Dynamo's source as unknown", () => {
    expect(routerWarning({ DYN_ROUTER_MAX_PENDING_PER_WORKER: '4' })).toEqual({
      noEffect: [],
      unknown: ['DYN_ROUTER_MAX_PENDING_PER_WORKER'],
    });
  });
});
