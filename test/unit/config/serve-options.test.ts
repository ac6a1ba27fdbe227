import { describe, expect, it } from 'vitest';
import { resolveServeOptions } from '../../../src/config/serve-options.js';

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
