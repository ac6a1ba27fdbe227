/**
 * `kv-epp serve` options: command-line flags (the reference EPP's names and
 * defaults), Dynamo's `DYN_*` environment, and the YAML config file, merged
 * with precedence flags > environment > file > defaults. Pure. Every error
 * is a KvEppError('invalid_argument') whose message starts with the exact
 * field (`--grpc-port`, `DYN_KV_CACHE_BLOCK_SIZE`, `config.yaml: router.fallbacks`);
 * unknown config keys are rejected.
 */
import { KvEppError } from '../errors.js';
import type { BackendChoice } from '../kv/types.js';

export interface ServeOptions {
  host: string;
  grpcPort: number;
  grpcHealthPort: number;
  metricsPort: number;
  secureServing: boolean;
  certPath?: string | undefined;
  /** How `Process` streams are served: `raw-h2` (own HTTP/2 framing, default), `direct` (node:http2) or `grpc-js`. */
  extProcTransport: 'raw-h2' | 'direct' | 'grpc-js';
  endpointsFile?: string | undefined;
  /** Endpoints given inline in the config file. */
  endpoints?: unknown;
  poolName?: string | undefined;
  poolNamespace?: string | undefined;
  tokenizer: string;
  chatTemplateFile?: string | undefined;
  blockSize: number;
  /**
   * KV events on/off as resolved from the options alone. The final value also
   * depends on the endpoints (a `kvEvents` publisher is a source): see
   * `resolveUseKvEvents`.
   */
  useKvEvents: boolean;
  /** The field that set `useKvEvents` explicitly (flag, env var, file key); undefined when defaulted. */
  kvEventsSetBy?: string | undefined;
  /** Approximate mode (`useKvEvents` false): block TTL in seconds (Dynamo `router_ttl_secs`). */
  ttlSecs: number;
  /** Approximate mode: memberships above which pruning starts (`router_max_tree_size`). */
  maxTreeSize: number;
  /** Approximate mode: prune down to this fraction of `maxTreeSize` (`router_prune_target_ratio`). */
  pruneTargetRatio: number;
  backend: BackendChoice;
  fallbacks: number;
  maxBodyBytes: number;
  /** Requests waiting for tokenization at which new ones get 429; 0 = no limit. */
  maxQueuedRequests: number;
  /** Requests in flight at which an endpoint is busy (all busy → 429); 0 = off. */
  maxRequestsPerEndpoint: number;
  /** `retry-after` on 429 answers, in seconds. */
  retryAfterSeconds: number;
  /** A mark-compact every this many MiB of old-space growth (src/cli/gc-pacer.ts); 0 = V8 alone. */
  gcPaceMb: number;
  /** Scheduling priority of V8's background threads (src/cli/thread-priority.ts). */
  v8WorkerPriority: 'idle' | 'low' | 'normal';
  /** KV event sources (used when `useKvEvents`). */
  events: EventOptions;
}

export interface EventOptions {
  /** Dynamo's event plane over NATS: `nats://host:port` (Dynamo's `NATS_SERVER`). */
  natsServer?: string | undefined;
  /** Dynamo namespace (`DYN_NAMESPACE`), for the default subject and JetStream names. */
  namespace: string;
  /** Dynamo component (JetStream stream and snapshot bucket names). */
  component: string;
  /** NATS subjects carrying KV events; default every component/endpoint of the namespace. */
  subjects: string[];
  /** JetStream durable consumer + snapshot instead of core NATS (`DYN_ROUTER_DURABLE_KV_EVENTS`). */
  durable: boolean;
  /** Bound on messages waiting to be applied (beyond: dropped and counted). */
  maxQueuedMessages: number;
  /** JetStream: this EPP's durable consumer (the pod name, else derived from the pool). */
  consumerName: string;
  /** JetStream: stream `max_age` in seconds when kv-epp creates it (`DYN_NATS_STREAM_MAX_AGE`). */
  streamMaxAgeSecs: number;
  /** JetStream: skip the radix snapshot and retained events (`--router-reset-states`). */
  resetStates: boolean;
  /**
   * Dynamo's file-discovery directory (`DYN_FILE_KV`): where workers with a
   * local indexer advertise their recovery endpoint. Set → workers are
   * recovered from it on a gap and when first heard from.
   */
  discoveryDir?: string | undefined;
  /**
   * Address workers connect back to with recovery answers, listened on and
   * advertised (`DYN_TCP_RESPONSE_STREAM_HOST`, else `POD_IP`, else 127.0.0.1).
   */
  responseHost: string;
}

type Env = Record<string, string | undefined>;
export type Flags = Record<string, string | boolean | undefined>;

const fail = (field: string, msg: string): never => {
  throw new KvEppError('invalid_argument', `${field}: ${msg}`);
};

function int(v: unknown, field: string, min: number, max: number): number {
  const n = typeof v === 'string' && /^\s*-?\d+\s*$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) {
    fail(field, `expected an integer in ${min}..=${max}, got ${JSON.stringify(v)}`);
  }
  return n as number;
}

/** A finite decimal number (`120`, `0.5`, `1e3`) with `ok` checking its range. */
function num(v: unknown, field: string, expected: string, ok: (n: number) => boolean): number {
  const n =
    typeof v === 'string' && /^\s*[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?\s*$/i.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isFinite(n) || !ok(n)) {
    fail(field, `expected ${expected}, got ${JSON.stringify(v)}`);
  }
  return n as number;
}

function bool(v: unknown, field: string): boolean {
  if (typeof v === 'boolean') return v;
  if (typeof v === 'string') {
    const s = v.trim().toLowerCase();
    if (['1', 'true', 'yes', 'on'].includes(s)) return true;
    if (['0', 'false', 'no', 'off'].includes(s)) return false;
  }
  return fail(field, `expected true or false, got ${JSON.stringify(v)}`);
}

function str(v: unknown, field: string): string {
  if (typeof v !== 'string' || v === '') fail(field, 'expected a non-empty string');
  return v as string;
}

/** The first defined of (flag, env, file) with its field name for errors. */
function pick(...sources: Array<[unknown, string]>): [unknown, string] | undefined {
  return sources.find(([v]) => v !== undefined);
}

const FILE_SCHEMA: Record<string, Set<string>> = {
  '': new Set(['model', 'router', 'server', 'endpoints', 'events']),
  events: new Set([
    'natsServer',
    'namespace',
    'component',
    'subjects',
    'durable',
    'maxQueuedMessages',
    'consumerName',
    'streamMaxAgeSecs',
    'discoveryDir',
    'responseHost',
    'resetStates',
  ]),
  model: new Set(['tokenizer', 'chatTemplateFile', 'blockSize']),
  router: new Set([
    'useKvEvents',
    'fallbacks',
    'backend',
    'ttlSecs',
    'maxTreeSize',
    'pruneTargetRatio',
    'maxQueuedRequests',
    'maxRequestsPerEndpoint',
    'retryAfterSeconds',
  ]),
  server: new Set([
    'grpcPort',
    'grpcHealthPort',
    'metricsPort',
    'secureServing',
    'certPath',
    'extProcTransport',
    'maxBodyBytes',
    'host',
    'gcPaceMb',
    'v8WorkerPriority',
  ]),
};

function checkFile(doc: unknown, source: string): Record<string, Record<string, unknown>> {
  if (doc === undefined || doc === null) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) fail(source, 'expected a mapping');
  const top = doc as Record<string, unknown>;
  for (const [k, v] of Object.entries(top)) {
    if (!FILE_SCHEMA['']?.has(k)) fail(`${source}: ${k}`, 'unknown key');
    if (k === 'endpoints') continue;
    if (typeof v !== 'object' || v === null || Array.isArray(v))
      fail(`${source}: ${k}`, 'expected a mapping');
    for (const kk of Object.keys(v as object)) {
      if (!FILE_SCHEMA[k]?.has(kk)) fail(`${source}: ${k}.${kk}`, 'unknown key');
    }
  }
  return top as Record<string, Record<string, unknown>>;
}

export function resolveServeOptions(
  flags: Flags,
  env: Env,
  fileDoc?: unknown,
  fileName = 'config',
): ServeOptions {
  const f = checkFile(fileDoc, fileName);
  const file = (sec: string, key: string): [unknown, string] => [
    f[sec]?.[key],
    `${fileName}: ${sec}.${key}`,
  ];
  const get = <T>(
    conv: (v: unknown, field: string) => T,
    dflt: T,
    ...src: Array<[unknown, string]>
  ): T => {
    const hit = pick(...src);
    return hit === undefined ? dflt : conv(hit[0], hit[1]);
  };
  const port = (v: unknown, field: string) => int(v, field, 0, 65535);
  const backend = get(
    (v, field) => {
      const s = str(v, field);
      if (s !== 'auto' && s !== 'native' && s !== 'js')
        fail(field, `expected auto, native or js, got ${s}`);
      return s as BackendChoice;
    },
    'auto' as BackendChoice,
    [flags.backend, '--backend'],
    [env.KV_EPP_BACKEND, 'KV_EPP_BACKEND'],
    file('router', 'backend'),
  );
  const events = eventOptions(flags, env, file, get);
  // KV events by default when a source is configured (Dynamo's default is
  // events on; without a source that would be an index nothing ever fills).
  // Endpoints with `kvEvents` (ZMQ publishers) are sources too, but they are
  // only known once loaded: resolveUseKvEvents finishes the decision; here an
  // explicit "on" fails early only when no endpoint list is given at all.
  let kvEventsSetBy: string | undefined;
  const endpointsGiven = flags['endpoints-file'] !== undefined || f.endpoints !== undefined;
  const useKvEvents = get(
    (v, field) => {
      const on = bool(v, field);
      kvEventsSetBy = field;
      if (on && events.natsServer === undefined && !endpointsGiven) noKvEventSource(field);
      return on;
    },
    events.natsServer !== undefined,
    [flags['kv-events'], '--kv-events'],
    [env.DYN_ROUTER_USE_KV_EVENTS, 'DYN_ROUTER_USE_KV_EVENTS'],
    [env.DYN_USE_KV_EVENTS, 'DYN_USE_KV_EVENTS'],
    file('router', 'useKvEvents'),
  );
  return {
    host: get(str, '0.0.0.0', [flags.host, '--host'], file('server', 'host')),
    grpcPort: get(port, 9002, [flags['grpc-port'], '--grpc-port'], file('server', 'grpcPort')),
    grpcHealthPort: get(
      port,
      9003,
      [flags['grpc-health-port'], '--grpc-health-port'],
      file('server', 'grpcHealthPort'),
    ),
    metricsPort: get(
      port,
      9090,
      [flags['metrics-port'], '--metrics-port'],
      file('server', 'metricsPort'),
    ),
    secureServing: get(
      bool,
      true,
      [flags['secure-serving'], '--secure-serving'],
      [env.DYN_SECURE_SERVING, 'DYN_SECURE_SERVING'],
      file('server', 'secureServing'),
    ),
    certPath: get(str, undefined, [flags['cert-path'], '--cert-path'], file('server', 'certPath')),
    extProcTransport: get(
      (v, field) => {
        if (v === 'raw-h2' || v === 'direct' || v === 'grpc-js') return v;
        return fail(field, `expected raw-h2, direct or grpc-js, got ${JSON.stringify(v)}`);
      },
      'raw-h2' as const,
      [flags['ext-proc-transport'], '--ext-proc-transport'],
      file('server', 'extProcTransport'),
    ),
    endpointsFile: get(str, undefined, [flags['endpoints-file'], '--endpoints-file']),
    endpoints: f.endpoints,
    poolName: get(str, undefined, [flags['pool-name'], '--pool-name']),
    poolNamespace: get(str, undefined, [flags['pool-namespace'], '--pool-namespace']),
    tokenizer: get(str, 'o200k_base', [flags.tokenizer, '--tokenizer'], file('model', 'tokenizer')),
    chatTemplateFile: get(
      str,
      undefined,
      [flags['chat-template'], '--chat-template'],
      file('model', 'chatTemplateFile'),
    ),
    blockSize: get(
      (v, field) => int(v, field, 1, 1024),
      16,
      [flags['block-size'], '--block-size'],
      [env.DYN_KV_CACHE_BLOCK_SIZE, 'DYN_KV_CACHE_BLOCK_SIZE'],
      [env.DYNAMO_KV_BLOCK_SIZE, 'DYNAMO_KV_BLOCK_SIZE'],
      file('model', 'blockSize'),
    ),
    useKvEvents,
    kvEventsSetBy,
    ttlSecs: get(
      (v, field) => num(v, field, 'a number of seconds > 0', (n) => n > 0),
      120,
      [flags['router-ttl-secs'], '--router-ttl-secs'],
      [env.DYN_ROUTER_TTL_SECS, 'DYN_ROUTER_TTL_SECS'],
      [env.DYN_ROUTER_TTL, 'DYN_ROUTER_TTL'],
      file('router', 'ttlSecs'),
    ),
    maxTreeSize: get(
      (v, field) => int(v, field, 1, 2 ** 31 - 1),
      2 ** 20,
      [flags['router-max-tree-size'], '--router-max-tree-size'],
      [env.DYN_ROUTER_MAX_TREE_SIZE, 'DYN_ROUTER_MAX_TREE_SIZE'],
      file('router', 'maxTreeSize'),
    ),
    pruneTargetRatio: get(
      (v, field) => num(v, field, 'a ratio in (0, 1]', (n) => n > 0 && n <= 1),
      0.8,
      [flags['router-prune-target-ratio'], '--router-prune-target-ratio'],
      [env.DYN_ROUTER_PRUNE_TARGET_RATIO, 'DYN_ROUTER_PRUNE_TARGET_RATIO'],
      file('router', 'pruneTargetRatio'),
    ),
    backend,
    fallbacks: get(
      (v, field) => int(v, field, 0, 16),
      0,
      [flags.fallbacks, '--fallbacks'],
      file('router', 'fallbacks'),
    ),
    maxBodyBytes: get(
      (v, field) => int(v, field, 1, 2 ** 31 - 1),
      64 * 1024 * 1024,
      [flags['max-body-bytes'], '--max-body-bytes'],
      file('server', 'maxBodyBytes'),
    ),
    maxQueuedRequests: get(
      (v, field) => int(v, field, 0, 2 ** 31 - 1),
      1024,
      [flags['max-queued-requests'], '--max-queued-requests'],
      [env.KV_EPP_MAX_QUEUED_REQUESTS, 'KV_EPP_MAX_QUEUED_REQUESTS'],
      file('router', 'maxQueuedRequests'),
    ),
    maxRequestsPerEndpoint: get(
      (v, field) => int(v, field, 0, 2 ** 31 - 1),
      0,
      [flags['max-requests-per-endpoint'], '--max-requests-per-endpoint'],
      [env.KV_EPP_MAX_REQUESTS_PER_ENDPOINT, 'KV_EPP_MAX_REQUESTS_PER_ENDPOINT'],
      file('router', 'maxRequestsPerEndpoint'),
    ),
    retryAfterSeconds: get(
      (v, field) => int(v, field, 0, 3600),
      1,
      [flags['retry-after-seconds'], '--retry-after-seconds'],
      file('router', 'retryAfterSeconds'),
    ),
    gcPaceMb: get(
      (v, field) => int(v, field, 0, 65536),
      48,
      [flags['gc-pace-mb'], '--gc-pace-mb'],
      [env.KV_EPP_GC_PACE_MB, 'KV_EPP_GC_PACE_MB'],
      file('server', 'gcPaceMb'),
    ),
    v8WorkerPriority: get(
      (v, field) => {
        if (v === 'idle' || v === 'low' || v === 'normal') return v;
        return fail(field, `expected idle, low or normal, got ${JSON.stringify(v)}`);
      },
      'idle' as const,
      [flags['v8-worker-priority'], '--v8-worker-priority'],
      [env.KV_EPP_V8_WORKER_PRIORITY, 'KV_EPP_V8_WORKER_PRIORITY'],
      file('server', 'v8WorkerPriority'),
    ),
    events,
  };
}

function noKvEventSource(field: string): never {
  return fail(
    field,
    'KV events need a source: set --nats-server (NATS_SERVER) or kvEvents on an endpoint, or turn events off for approximate routing',
  );
}

/**
 * The final KV-events switch, once the endpoints are known: an explicit
 * setting wins (on needs NATS or an endpoint with `kvEvents`, else the error
 * names the field that turned it on); by default events are on when NATS is
 * configured or any endpoint publishes KV events over ZMQ.
 */
export function resolveUseKvEvents(
  options: ServeOptions,
  endpoints: ReadonlyArray<{ kvEvents?: unknown }>,
): boolean {
  const zmq = endpoints.some((e) => e.kvEvents !== undefined);
  const hasSource = options.events.natsServer !== undefined || zmq;
  if (options.kvEventsSetBy === undefined) return hasSource;
  if (options.useKvEvents && !hasSource) noKvEventSource(options.kvEventsSetBy);
  return options.useKvEvents;
}

type Getter = <T>(
  conv: (v: unknown, field: string) => T,
  dflt: T,
  ...src: Array<[unknown, string]>
) => T;

function eventOptions(
  flags: Flags,
  env: Env,
  file: (sec: string, key: string) => [unknown, string],
  get: Getter,
): EventOptions {
  const namespace = get(
    (v, field) => {
      const s = str(v, field);
      if (!/^[A-Za-z0-9_-]+$/.test(s)) fail(field, `expected letters, digits, _ or -, got ${s}`);
      return s;
    },
    'dynamo',
    [flags.namespace, '--namespace'],
    [env.DYN_NAMESPACE, 'DYN_NAMESPACE'],
    file('events', 'namespace'),
  );
  const subjects = get(
    (v, field) => {
      const list = typeof v === 'string' ? v.split(',').map((x) => x.trim()) : v;
      if (!Array.isArray(list) || list.length === 0) fail(field, 'expected a list of subjects');
      return (list as unknown[]).map((x, i) => {
        if (typeof x !== 'string' || !/^[^\s]+$/.test(x))
          fail(`${field}[${i}]`, 'expected a subject');
        return x as string;
      });
    },
    [`namespace.${namespace}.component.*.endpoint.*.kv-events`],
    [flags['kv-events-subject'], '--kv-events-subject'],
    file('events', 'subjects'),
  );
  return {
    natsServer: get(
      (v, field) => {
        const s = str(v, field);
        for (const u of s.split(',')) {
          if (!/^(nats|tls|ws|wss):\/\/[^\s/]+$/.test(u.trim()) && !/^[^\s:/]+:\d+$/.test(u.trim()))
            fail(field, `expected nats://host:port, got ${u}`);
        }
        return s;
      },
      undefined,
      [flags['nats-server'], '--nats-server'],
      [env.NATS_SERVER, 'NATS_SERVER'],
      file('events', 'natsServer'),
    ),
    namespace,
    component: get(str, 'backend', [flags.component, '--component'], file('events', 'component')),
    subjects,
    durable: get(
      bool,
      false,
      [flags['durable-kv-events'], '--durable-kv-events'],
      [env.DYN_ROUTER_DURABLE_KV_EVENTS, 'DYN_ROUTER_DURABLE_KV_EVENTS'],
      file('events', 'durable'),
    ),
    maxQueuedMessages: get(
      (v, field) => int(v, field, 1, 2 ** 31 - 1),
      65_536,
      [flags['max-queued-events'], '--max-queued-events'],
      file('events', 'maxQueuedMessages'),
    ),
    consumerName: get(
      str,
      `kv-epp-${env.POD_NAME ?? env.HOSTNAME ?? (flags['pool-name'] as string | undefined) ?? 'default'}`,
      [flags['consumer-name'], '--consumer-name'],
      file('events', 'consumerName'),
    ),
    streamMaxAgeSecs: get(
      (v, field) => int(v, field, 1, 2 ** 31 - 1),
      3600,
      [env.DYN_NATS_STREAM_MAX_AGE, 'DYN_NATS_STREAM_MAX_AGE'],
      file('events', 'streamMaxAgeSecs'),
    ),
    resetStates: get(
      bool,
      false,
      [flags['router-reset-states'], '--router-reset-states'],
      [env.DYN_ROUTER_RESET_STATES, 'DYN_ROUTER_RESET_STATES'],
      file('events', 'resetStates'),
    ),
    discoveryDir: get(
      str,
      undefined,
      [flags['dynamo-discovery-dir'], '--dynamo-discovery-dir'],
      [env.DYN_FILE_KV, 'DYN_FILE_KV'],
      file('events', 'discoveryDir'),
    ),
    responseHost: get(
      str,
      env.POD_IP ?? '127.0.0.1',
      [env.DYN_TCP_RESPONSE_STREAM_HOST, 'DYN_TCP_RESPONSE_STREAM_HOST'],
      file('events', 'responseHost'),
    ),
  };
}
