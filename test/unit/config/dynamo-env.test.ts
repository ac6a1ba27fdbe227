/**
 * Dynamo's environment as kv-epp reads it: empty means unset, DYN_MODEL_PATH
 * as the tokenizer, DYN_NAMESPACE_PREFIX / DYN_COMPONENT_NAME with Dynamo's
 * precedence, and the start-up warnings for what kv-epp does not implement
 * (router tuning variables, a model name without tokenizer, an assumed block
 * size, disaggregated roles); plus the endpoints given twice.
 */
import { describe, expect, it } from 'vitest';
import {
  blockSizeWarning,
  normalizeEnv,
  resolveServeOptions,
  roleWarning,
  startupWarnings,
} from '../../../src/config/serve-options.js';

const NATS = { NATS_SERVER: 'nats://127.0.0.1:4222' };

describe('empty environment variables are unset', () => {
  it('normalises: trims, drops empty and blank values', () => {
    expect(normalizeEnv({ A: ' x ', B: '', C: '  ', D: undefined })).toEqual({ A: 'x' });
  });

  it.each([
    'DYN_KV_CACHE_BLOCK_SIZE',
    'DYNAMO_KV_BLOCK_SIZE',
    'DYN_ROUTER_BLOCK_SIZE',
    'DYN_KV_EVENTS',
    'DYN_DURABLE_KV_EVENTS',
    'DYNAMO_NAMESPACE',
    'DYNAMO_COMPONENT',
    'NAMESPACE',
    'DYN_SECURE_SERVING',
    'DYN_ROUTER_USE_KV_EVENTS',
    'DYN_ROUTER_TTL_SECS',
    'DYN_ROUTER_MAX_TREE_SIZE',
    'DYN_ROUTER_PRUNE_TARGET_RATIO',
    'DYN_ROUTER_DURABLE_KV_EVENTS',
    'DYN_ROUTER_RESET_STATES',
    'DYN_NAMESPACE',
    'DYN_NAMESPACE_PREFIX',
    'DYN_COMPONENT_NAME',
    'DYN_NATS_STREAM_MAX_AGE',
    'DYN_FILE_KV',
    'DYN_TCP_RESPONSE_STREAM_HOST',
    'DYN_MODEL_PATH',
    'NATS_SERVER',
    'KV_EPP_BACKEND',
    'KV_EPP_MAX_QUEUED_REQUESTS',
    'KV_EPP_GC_PACE_MB',
    'KV_EPP_V8_WORKER_PRIORITY',
    'POD_NAME',
    'POD_IP',
  ])('%s="" (or blanks) starts with the default', (name) => {
    for (const value of ['', '   ']) {
      expect(resolveServeOptions({}, { [name]: value })).toEqual(resolveServeOptions({}, {}));
    }
  });

  it('an empty variable does not hide the next source', () => {
    const o = resolveServeOptions(
      {},
      { DYN_KV_CACHE_BLOCK_SIZE: '', DYNAMO_KV_BLOCK_SIZE: '32', DYN_NAMESPACE_PREFIX: ' ' },
      { events: { namespace: 'fromfile' } },
    );
    expect([o.blockSize, o.blockSizeSetBy, o.events.namespace]).toEqual([
      32,
      'DYNAMO_KV_BLOCK_SIZE',
      'fromfile',
    ]);
    // Values are trimmed.
    expect(resolveServeOptions({}, { DYN_KV_CACHE_BLOCK_SIZE: ' 64 ' }).blockSize).toBe(64);
  });
});

describe('DYN_MODEL_PATH / DYN_MODEL_NAME', () => {
  it('uses DYN_MODEL_PATH as the tokenizer only when none is configured', () => {
    const env = { DYN_MODEL_PATH: '/models/qwen' };
    expect(resolveServeOptions({}, env)).toMatchObject({
      tokenizer: '/models/qwen',
      tokenizerSetBy: 'DYN_MODEL_PATH',
    });
    expect(resolveServeOptions({}, env, { model: { tokenizer: '/cfg/tok' } })).toMatchObject({
      tokenizer: '/cfg/tok',
      tokenizerSetBy: 'config: model.tokenizer',
    });
    expect(resolveServeOptions({ tokenizer: 'cl100k_base' }, env).tokenizer).toBe('cl100k_base');
    expect(resolveServeOptions({}, {})).toMatchObject({
      tokenizer: 'o200k_base',
      tokenizerSetBy: undefined,
    });
  });

  it('warns when DYN_MODEL_NAME is set but no tokenizer is, naming the ways to give one', () => {
    const env = { DYN_MODEL_NAME: 'Qwen/Qwen3-0.6B' };
    const ws = startupWarnings(resolveServeOptions({}, env), env);
    expect(ws).toHaveLength(1);
    expect(ws[0]?.fields).toEqual({ DYN_MODEL_NAME: 'Qwen/Qwen3-0.6B', tokenizer: 'o200k_base' });
    expect(ws[0]?.msg).toMatch(/o200k_base.*cannot download.*--tokenizer.*DYN_MODEL_PATH/);
    const withPath = { ...env, DYN_MODEL_PATH: '/models/qwen' };
    expect(startupWarnings(resolveServeOptions({}, withPath), withPath)).toEqual([]);
  });
});

describe("Dynamo's KV-events switches", () => {
  it('reads DYN_ROUTER_USE_KV_EVENTS, then DYN_USE_KV_EVENTS, then the Go plugin name DYNAMO_USE_KV_EVENTS', () => {
    const on = (env: Record<string, string>) => resolveServeOptions({}, { ...NATS, ...env });
    expect(on({ DYNAMO_USE_KV_EVENTS: 'false' })).toMatchObject({
      useKvEvents: false,
      kvEventsSetBy: 'DYNAMO_USE_KV_EVENTS',
    });
    expect(on({ DYN_USE_KV_EVENTS: 'true', DYNAMO_USE_KV_EVENTS: 'false' }).kvEventsSetBy).toBe(
      'DYN_USE_KV_EVENTS',
    );
    expect(on({ DYN_ROUTER_USE_KV_EVENTS: '', DYN_USE_KV_EVENTS: 'false' }).useKvEvents).toBe(
      false,
    );
  });
});

describe('DYN_NAMESPACE_PREFIX / DYN_COMPONENT_NAME (Dynamo EPP names)', () => {
  it('reads the prefix over DYN_NAMESPACE, the flag over both, and the component name', () => {
    const env = { DYN_NAMESPACE_PREFIX: 'pre', DYN_NAMESPACE: 'ns', DYN_COMPONENT_NAME: 'worker' };
    const o = resolveServeOptions({}, env, { events: { component: 'filecomp' } });
    expect(o.events).toMatchObject({
      namespace: 'pre',
      namespaceSetBy: 'DYN_NAMESPACE_PREFIX',
      component: 'worker',
      subjects: ['namespace.pre.component.*.endpoint.*.kv-events'],
    });
    const f = resolveServeOptions({ namespace: 'flag', component: 'c' }, env);
    expect([f.events.namespace, f.events.component]).toEqual(['flag', 'c']);
    expect(() => resolveServeOptions({}, { DYN_NAMESPACE_PREFIX: 'a.b' })).toThrow(
      'DYN_NAMESPACE_PREFIX: expected letters',
    );
  });

  it('warns that the prefix is matched exactly when events come from NATS', () => {
    const env = { ...NATS, DYN_NAMESPACE_PREFIX: 'pre' };
    const ws = startupWarnings(resolveServeOptions({}, env), env);
    expect(ws.map((w) => w.msg)).toEqual([
      expect.stringMatching(/^DYN_NAMESPACE_PREFIX is matched as the exact Dynamo namespace/),
    ]);
    const plain = { ...NATS, DYN_NAMESPACE: 'ns' };
    expect(startupWarnings(resolveServeOptions({}, plain), plain)).toEqual([]);
  });
});

describe('Dynamo router variables kv-epp does not implement', () => {
  it('names every one that is set, and unknown DYN_ROUTER_* ones, in one warning', () => {
    const env = {
      DYN_ROUTER_TEMPERATURE: '0.5',
      DYN_ROUTER_KV_OVERLAP_SCORE_WEIGHT: '2',
      DYN_OVERLAP_SCORE_WEIGHT: '1',
      DYN_ROUTER_KV_OVERLAP_SCORE_CREDIT: '1.0',
      DYN_ROUTER_PREFILL_LOAD_SCALE: '0.5',
      DYN_ROUTER_QUEUE_THRESHOLD: '2',
      DYN_ROUTER_TRACK_ACTIVE_BLOCKS: 'true',
      DYNAMO_OVERLAP_SCORE_WEIGHT: '1',
      DYNAMO_ROUTER_TEMPERATURE: '0',
      DYN_ROUTER_MODE: 'round-robin',
      DYN_ROUTER_FANCY_KNOB: '7',
      // Read by kv-epp, empty, or kv-epp's own mode: not listed.
      DYN_ROUTER_TTL_SECS: '60',
      DYN_ROUTER_EVENT_THREADS: '',
    };
    const ws = startupWarnings(resolveServeOptions({}, env), env);
    expect(ws).toHaveLength(1);
    expect(ws[0]?.fields).toEqual({
      noEffect: [
        'DYNAMO_OVERLAP_SCORE_WEIGHT',
        'DYNAMO_ROUTER_TEMPERATURE',
        'DYN_OVERLAP_SCORE_WEIGHT',
        'DYN_ROUTER_KV_OVERLAP_SCORE_CREDIT',
        'DYN_ROUTER_KV_OVERLAP_SCORE_WEIGHT',
        'DYN_ROUTER_MODE',
        'DYN_ROUTER_PREFILL_LOAD_SCALE',
        'DYN_ROUTER_QUEUE_THRESHOLD',
        'DYN_ROUTER_TEMPERATURE',
        'DYN_ROUTER_TRACK_ACTIVE_BLOCKS',
      ],
      unknown: ['DYN_ROUTER_FANCY_KNOB'],
    });
    expect(ws[0]?.msg).toMatch(/no effect in this version of kv-epp/);
  });

  it('stays silent for what kv-epp reads', () => {
    const env = {
      DYN_ROUTER_MODE: 'kv',
      DYN_ROUTER_TTL_SECS: '60',
      DYN_ROUTER_USE_KV_EVENTS: 'false',
      DYN_ROUTER_MAX_TREE_SIZE: '100',
    };
    expect(startupWarnings(resolveServeOptions({}, env), env)).toEqual([]);
  });
});

describe('block size and roles', () => {
  it('warns that 16 is assumed when Dynamo-format events are on and nothing set the size', () => {
    const o = resolveServeOptions({}, NATS);
    const w = blockSizeWarning(o, true, []);
    expect(w?.fields).toEqual({ blockSize: 16 });
    expect(w?.msg).toMatch(/16 is assumed.*workers' block size/);
    // Set anywhere: flag, env, file.
    expect(blockSizeWarning(resolveServeOptions({ 'block-size': '16' }, NATS), true, [])).toBe(
      undefined,
    );
    expect(
      blockSizeWarning(
        resolveServeOptions({}, { ...NATS, DYN_KV_CACHE_BLOCK_SIZE: '16' }),
        true,
        [],
      ),
    ).toBe(undefined);
    expect(
      blockSizeWarning(resolveServeOptions({}, NATS, { model: { blockSize: 32 } }), true, []),
    ).toBe(undefined);
    // Events off, or only vLLM-format ZMQ events (they carry the size): silent.
    expect(blockSizeWarning(o, false, [])).toBe(undefined);
    const plain = resolveServeOptions({}, {});
    expect(blockSizeWarning(plain, true, [{ kvEvents: { format: 'vllm' } }])).toBe(undefined);
    expect(blockSizeWarning(plain, true, [{ kvEvents: { format: 'dynamo' } }])).toBeDefined();
  });

  it('names prefill and decode endpoints and says disaggregated routing is not implemented', () => {
    expect(roleWarning([{ name: 'a', role: 'aggregated' }])).toBe(undefined);
    const w = roleWarning([
      { name: 'a', role: 'aggregated' },
      { name: 'p1', role: 'prefill' },
      { name: 'd1', role: 'decode' },
      { name: 'd2', role: 'decode' },
    ]);
    expect(w?.fields).toEqual({ prefill: ['p1'], decode: ['d1', 'd2'] });
    expect(w?.msg).toMatch(
      /disaggregated routing is not implemented: prefill endpoints are not routed to, decode endpoints are routed to as aggregated/,
    );
  });
});

describe('endpoints given twice', () => {
  it('fails naming --endpoints-file and the config file', () => {
    expect(() =>
      resolveServeOptions({ 'endpoints-file': '/e.yaml' }, {}, { endpoints: [] }, 'cfg.yaml'),
    ).toThrow(
      '--endpoints-file: endpoints are given twice: --endpoints-file /e.yaml and endpoints: in cfg.yaml; keep one',
    );
    expect(resolveServeOptions({}, {}, { endpoints: [] }).endpoints).toEqual([]);
  });
});
