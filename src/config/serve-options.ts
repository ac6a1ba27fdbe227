/**
 * `kv-epp serve` options: command-line flags (the reference EPP's names and
 * defaults), Dynamo's `DYN_*` environment, and the YAML config file, merged
 * with precedence flags > environment > file > defaults. Pure. Every error
 * is a KvEppError('invalid_argument') (a UsageError from `parseServeArgs`)
 * whose message starts with the exact field (`--grpc-port`, `DYN_KV_CACHE_BLOCK_SIZE`, `config.yaml: router.fallbacks`);
 * unknown config keys are rejected. An environment variable that is empty or
 * only blanks counts as unset (as in Dynamo and Helm); values are trimmed.
 * GAIE's EPP flags are accepted (`parseServeArgs`); those kv-epp cannot act on
 * are reported for one start-up warning, never fatal.
 */
import { type FlagSpec, goBool, parseFlags, UsageError } from '../cli/args.js';
import { canonicalIp } from '../discovery/ip.js';
import { KvEppError } from '../errors.js';
import { redactNatsServers } from '../events/nats-url.js';
import type { BackendChoice } from '../kv/types.js';
import { bodyBudgetBytes } from '../server/ext-proc/body-budget.js';
import type { PromptDialect } from '../tokenize/dynamo-dialect.js';

export interface ServeOptions {
  /** Where the ports listen; undefined: every address, IPv6 and IPv4 (see `serve`). */
  host: string | undefined;
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
  /** `--pool-namespace`, else `NAMESPACE`, else `default` (GAIE's runner). */
  poolNamespace: string;
  tokenizer: string;
  /** The field that chose `tokenizer` (`--tokenizer`, the file key, `DYN_MODEL_PATH`); undefined when defaulted. */
  tokenizerSetBy?: string | undefined;
  chatTemplateFile?: string | undefined;
  /** The field that set `chatTemplateFile` (`--chat-template`, `<file>: model.chatTemplateFile`), for errors. */
  chatTemplateSetBy?: string | undefined;
  /**
   * Whose prompt construction the injected ids follow (src/tokenize/dynamo-dialect.ts):
   * `dynamo` (default: Dynamo's frontend takes them as the prompt) or `vllm` (vLLM's
   * OpenAI server renders the prompt itself; the ids only route).
   */
  promptDialect: PromptDialect;
  blockSize: number;
  /** The field that set `blockSize`; undefined when 16 was assumed. */
  blockSizeSetBy?: string | undefined;
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
  /**
   * Bytes of request and held-back response bodies all streams together may
   * buffer; a request body that would pass it gets 429 (a held response body
   * passes through unheld instead). At least `maxBodyBytes`.
   */
  maxBufferedBodyBytes: number;
  /** Requests waiting for tokenization at which new ones get 429; 0 = no limit. */
  maxQueuedRequests: number;
  /** Requests in flight at which an endpoint is busy (all busy → 429); 0 = off. */
  maxRequestsPerEndpoint: number;
  /** `retry-after` on 429 answers, in seconds. */
  retryAfterSeconds: number;
  /**
   * On SIGTERM: how long kv-epp keeps serving new streams after readiness
   * turns NOT_SERVING, so gateways and Services notice first (Dynamo's EPP:
   * `DYN_EPP_GRACEFUL_SHUTDOWN_PROPAGATION_SECS`, 5).
   */
  shutdownPropagationSeconds: number;
  /** On SIGTERM: the whole shutdown's bound, propagation included; streams still open then are cut. */
  shutdownGraceSeconds: number;
  /** 5xx answers in a row that leave an endpoint out of routing (Envoy's consecutive_5xx); 0 = never. */
  outlierConsecutive5xx: number;
  /** The first time an endpoint is left out, in seconds; each further time adds as much, up to 10×. */
  outlierEjectionSeconds: number;
  /**
   * A mark-compact every this many MiB of old-space growth (src/cli/gc-pacer.ts); 0 = V8 alone
   * (the default on raw-h2; 48 on the node:http2 transports).
   */
  gcPaceMb: number;
  /** Scheduling priority of V8's background threads (src/cli/thread-priority.ts). */
  v8WorkerPriority: 'idle' | 'low' | 'normal';
  /** KV event sources (used when `useKvEvents`). */
  events: EventOptions;
  /** Model-server metrics scraping, for the pool gauges only (routing does not read them). */
  modelServerMetrics: ModelServerMetricsOptions;
}

/**
 * GAIE's model-server metric flags. Unlike GAIE's EPP (50 ms), kv-epp scrapes
 * only when `--refresh-metrics-interval` is given: its load signals come from the
 * requests it routes and Dynamo's events, so the gauges are all the scrape feeds.
 */
export interface ModelServerMetricsOptions {
  /** 0 = off. */
  intervalMs: number;
  /** Figures older than this leave the averages (`--metrics-staleness-threshold`, 2s). */
  stalenessMs: number;
  /** 0 = each endpoint's own port. */
  port: number;
  path: string;
  scheme: 'http' | 'https';
  insecureSkipVerify: boolean;
}

export interface EventOptions {
  /** Dynamo's event plane over NATS: `nats://host:port` (Dynamo's `NATS_SERVER`). */
  natsServer?: string | undefined;
  /**
   * Dynamo namespace (`DYN_NAMESPACE_PREFIX`, else `DYN_NAMESPACE`, as Dynamo's
   * EPP reads them, else the Go plugin's `DYNAMO_NAMESPACE`), for the default
   * subject and JetStream names. Matched exactly: a prefix does not reach
   * `<prefix>-<suffix>` namespaces.
   */
  namespace: string;
  /** The field that set `namespace`; undefined when defaulted. */
  namespaceSetBy?: string | undefined;
  /** Dynamo component (`DYN_COMPONENT_NAME`, else `DYNAMO_COMPONENT`; JetStream stream and snapshot bucket names). */
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

/**
 * The environment as kv-epp reads it: values trimmed, and a variable that is
 * empty or only blanks dropped (unset), as Dynamo's EPP and Helm charts treat
 * them (`value: ""` in a chart must not fail start-up or override a default).
 */
export function normalizeEnv(env: Readonly<Env>): Env {
  const out: Env = {};
  for (const [k, v] of Object.entries(env)) {
    const t = v?.trim();
    if (t !== undefined && t !== '') out[k] = t;
  }
  return out;
}

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
    // Go's spellings (pflag `--x=t`) and the usual env ones.
    if (['1', 't', 'true', 'yes', 'on'].includes(s)) return true;
    if (['0', 'f', 'false', 'no', 'off'].includes(s)) return false;
  }
  return fail(field, `expected true or false, got ${JSON.stringify(v)}`);
}

/** A Go duration (`50ms`, `1.5s`, `1m30s`, `0`) in milliseconds. */
function goDurationMs(v: unknown, field: string): number {
  // Go's time.ParseDuration: an optional sign, then number-unit pairs; a bare 0.
  const signed = str(v, field);
  const text = signed.replace(/^[+-]/, '');
  if (text === '0') return 0;
  if (signed.startsWith('-'))
    fail(field, `expected a duration that is not negative, got ${signed}`);
  const unitMs: Record<string, number> = {
    ns: 1e-6,
    us: 1e-3,
    µs: 1e-3,
    μs: 1e-3,
    ms: 1,
    s: 1e3,
    m: 6e4,
    h: 36e5,
  };
  const re = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/y;
  let ms = 0;
  let at = 0;
  if (text.length === 0)
    fail(field, `expected a duration such as 50ms, 1s or 1m30s, got ${signed}`);
  while (at < text.length) {
    re.lastIndex = at;
    const m = re.exec(text);
    if (m === null)
      return fail(field, `expected a duration such as 50ms, 1s or 1m30s, got ${signed}`);
    ms += Number(m[1]) * (unitMs[m[2] as string] as number);
    at = re.lastIndex;
  }
  return ms;
}

/**
 * The address the ports listen on: an IP address (IPv6 also in brackets, as
 * in a URL: `[::1]`) or a host name; the brackets are taken off for listen().
 */
function listenHost(v: unknown, field: string): string {
  const h = str(v, field);
  const bracketed = /^\[([^\]]*)\]$/.exec(h);
  const host = bracketed ? (bracketed[1] as string) : h;
  if (bracketed ? isIpv6(host) : isIpv6(host) || isIpv4OrName(host)) return host;
  return fail(
    field,
    `expected an IP address (IPv6 with or without brackets) or host name, got ${JSON.stringify(h)}`,
  );
}

/** An IPv6 address, with a zone (`fe80::1%eth0`) or without. */
function isIpv6(s: string): boolean {
  const [ip, zone, ...rest] = s.split('%');
  if (rest.length > 0 || (zone !== undefined && !/^[\w.-]+$/.test(zone))) return false;
  return canonicalIp(ip as string)?.includes(':') ?? false;
}

function isIpv4OrName(s: string): boolean {
  return canonicalIp(s) !== undefined || /^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(s);
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
  model: new Set(['tokenizer', 'chatTemplateFile', 'promptDialect', 'blockSize']),
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
    'outlierConsecutive5xx',
    'outlierEjectionSeconds',
  ]),
  server: new Set([
    'grpcPort',
    'grpcHealthPort',
    'metricsPort',
    'secureServing',
    'certPath',
    'extProcTransport',
    'maxBodyBytes',
    'maxBufferedBodyBytes',
    'host',
    'gcPaceMb',
    'v8WorkerPriority',
    'shutdownPropagationSeconds',
    'shutdownGraceSeconds',
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
  rawEnv: Env,
  fileDoc?: unknown,
  fileName = 'config',
): ServeOptions {
  const env = normalizeEnv(rawEnv);
  const f = checkFile(fileDoc, fileName);
  // Two lists would be one too many: which one is meant cannot be guessed.
  if (flags['endpoints-file'] !== undefined && f.endpoints !== undefined) {
    fail(
      '--endpoints-file',
      `endpoints are given twice: --endpoints-file ${String(flags['endpoints-file'])} and endpoints: in ${fileName}; keep one`,
    );
  }
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
  const scrapeIntervalMs = get(
    (v, field) => {
      const ms = goDurationMs(v, field);
      // Each scrape reads every endpoint's text on the event loop; a timer cannot go past 2^31 ms.
      if (ms !== 0 && (ms < 10 || ms > 24 * 36e5))
        fail(field, `expected 0 (off) or a duration from 10ms to 24h, got ${String(v)}`);
      return ms;
    },
    0,
    [flags['refresh-metrics-interval'], '--refresh-metrics-interval'],
  );
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
    // Dynamo's earlier Go EPP plugin's name.
    [env.DYNAMO_USE_KV_EVENTS, 'DYNAMO_USE_KV_EVENTS'],
    // The frontend's name before Dynamo 1.0 (LEGACY_NAMES).
    [env.DYN_KV_EVENTS, 'DYN_KV_EVENTS'],
    file('router', 'useKvEvents'),
  );
  // A local model directory (DYN_MODEL_PATH) serves as the tokenizer only when
  // none is configured: an explicit --tokenizer or model.tokenizer wins.
  const tokenizerHit = pick([flags.tokenizer, '--tokenizer'], file('model', 'tokenizer'), [
    env.DYN_MODEL_PATH,
    'DYN_MODEL_PATH',
  ]);
  // DYN_ROUTER_BLOCK_SIZE is the standalone router's (`python -m dynamo.router
  // --router-block-size`, the block size its KvRouter hashes with). It belongs to
  // another Dynamo component and may come from an environment shared with it, so
  // it counts last: the frontend/EPP name and the config file (kv-epp's own) win.
  const blockSizeHit = pick(
    [flags['block-size'], '--block-size'],
    [env.DYN_KV_CACHE_BLOCK_SIZE, 'DYN_KV_CACHE_BLOCK_SIZE'],
    [env.DYNAMO_KV_BLOCK_SIZE, 'DYNAMO_KV_BLOCK_SIZE'],
    file('model', 'blockSize'),
    [env.DYN_ROUTER_BLOCK_SIZE, 'DYN_ROUTER_BLOCK_SIZE'],
  );
  const chatTemplateHit = pick(
    [flags['chat-template'], '--chat-template'],
    file('model', 'chatTemplateFile'),
  );
  const promptDialect = get(
    (v, field) => {
      if (v === 'dynamo' || v === 'vllm') return v;
      return fail(field, `expected dynamo or vllm, got ${JSON.stringify(v)}`);
    },
    'dynamo' as PromptDialect,
    [flags['prompt-dialect'], '--prompt-dialect'],
    file('model', 'promptDialect'),
  );
  const extProcTransport = get(
    (v, field) => {
      if (v === 'raw-h2' || v === 'direct' || v === 'grpc-js') return v;
      return fail(field, `expected raw-h2, direct or grpc-js, got ${JSON.stringify(v)}`);
    },
    'raw-h2' as const,
    [flags['ext-proc-transport'], '--ext-proc-transport'],
    file('server', 'extProcTransport'),
  );
  const maxBodyBytes = get(
    (v, field) => int(v, field, 1, 2 ** 31 - 1),
    64 * 1024 * 1024,
    [flags['max-body-bytes'], '--max-body-bytes'],
    file('server', 'maxBodyBytes'),
  );
  const bufferedHit = pick(
    [flags['max-buffered-body-bytes'], '--max-buffered-body-bytes'],
    [env.KV_EPP_MAX_BUFFERED_BODY_BYTES, 'KV_EPP_MAX_BUFFERED_BODY_BYTES'],
    file('server', 'maxBufferedBodyBytes'),
  );
  let maxBufferedBodyBytes = bodyBudgetBytes(maxBodyBytes);
  if (bufferedHit) {
    maxBufferedBodyBytes = int(bufferedHit[0], bufferedHit[1], 1, Number.MAX_SAFE_INTEGER);
    if (maxBufferedBodyBytes < maxBodyBytes) {
      fail(
        bufferedHit[1],
        `expected at least the largest request body (max body bytes ${maxBodyBytes}), got ${maxBufferedBodyBytes}`,
      );
    }
  }
  return {
    host: get(listenHost, undefined, [flags.host, '--host'], file('server', 'host')),
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
    extProcTransport,
    endpointsFile: get(str, undefined, [flags['endpoints-file'], '--endpoints-file']),
    endpoints: f.endpoints,
    poolName: get(str, undefined, [flags['pool-name'], '--pool-name']),
    // GAIE's runner: the flag, else NAMESPACE (its chart sets it from the pod's
    // namespace), else "default".
    poolNamespace: get(
      str,
      'default',
      [flags['pool-namespace'], '--pool-namespace'],
      [env.NAMESPACE, 'NAMESPACE'],
    ),
    tokenizer: tokenizerHit === undefined ? 'o200k_base' : str(...tokenizerHit),
    tokenizerSetBy: tokenizerHit?.[1],
    chatTemplateFile: chatTemplateHit === undefined ? undefined : str(...chatTemplateHit),
    chatTemplateSetBy: chatTemplateHit?.[1],
    promptDialect,
    blockSize: blockSizeHit === undefined ? 16 : int(blockSizeHit[0], blockSizeHit[1], 1, 1024),
    blockSizeSetBy: blockSizeHit?.[1],
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
    maxBodyBytes,
    maxBufferedBodyBytes,
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
    shutdownPropagationSeconds: get(
      (v, field) => int(v, field, 0, 600),
      5,
      [flags['shutdown-propagation-seconds'], '--shutdown-propagation-seconds'],
      [
        env.DYN_EPP_GRACEFUL_SHUTDOWN_PROPAGATION_SECS,
        'DYN_EPP_GRACEFUL_SHUTDOWN_PROPAGATION_SECS',
      ],
      file('server', 'shutdownPropagationSeconds'),
    ),
    shutdownGraceSeconds: get(
      (v, field) => int(v, field, 0, 86_400),
      30,
      [flags['shutdown-grace-seconds'], '--shutdown-grace-seconds'],
      [env.KV_EPP_SHUTDOWN_GRACE_SECONDS, 'KV_EPP_SHUTDOWN_GRACE_SECONDS'],
      file('server', 'shutdownGraceSeconds'),
    ),
    outlierConsecutive5xx: get(
      (v, field) => int(v, field, 0, 1000),
      5,
      [flags['outlier-consecutive-5xx'], '--outlier-consecutive-5xx'],
      file('router', 'outlierConsecutive5xx'),
    ),
    outlierEjectionSeconds: get(
      (v, field) => int(v, field, 1, 3600),
      30,
      [flags['outlier-ejection-seconds'], '--outlier-ejection-seconds'],
      file('router', 'outlierEjectionSeconds'),
    ),
    modelServerMetrics: {
      intervalMs: scrapeIntervalMs,
      // GAIE's 2 s, but never shorter than two intervals: a reading must outlive the next one.
      stalenessMs: get(goDurationMs, Math.max(2000, 2 * scrapeIntervalMs), [
        flags['metrics-staleness-threshold'],
        '--metrics-staleness-threshold',
      ]),
      port: get(port, 0, [flags['model-server-metrics-port'], '--model-server-metrics-port']),
      path: get(
        (v, field) => {
          // GAIE's charts may render the value with its quotes.
          const p = str(v, field).replace(/^"(.*)"$/, '$1');
          if (!p.startsWith('/')) fail(field, `expected a path starting with /, got ${p}`);
          return p;
        },
        '/metrics',
        [flags['model-server-metrics-path'], '--model-server-metrics-path'],
      ),
      scheme: get(
        (v, field) => {
          const x = str(v, field);
          if (x !== 'http' && x !== 'https') fail(field, `expected http or https, got ${x}`);
          return x as 'http' | 'https';
        },
        'http' as 'http' | 'https',
        [flags['model-server-metrics-scheme'], '--model-server-metrics-scheme'],
      ),
      insecureSkipVerify: get(bool, true, [
        flags['model-server-metrics-https-insecure-skip-verify'],
        '--model-server-metrics-https-insecure-skip-verify',
      ]),
    },
    gcPaceMb: get(
      (v, field) => int(v, field, 0, 65536),
      // On for the node:http2 transports only (their per-stream objects pile up in old space);
      // on raw-h2 its forced mark-compacts cost more than V8's own (bench/README.md, finding AJ).
      extProcTransport === 'raw-h2' ? 0 : 48,
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
  let namespaceSetBy: string | undefined;
  // Dynamo's EPP: DYN_NAMESPACE_PREFIX wins over DYN_NAMESPACE.
  const namespace = get(
    (v, field) => {
      const s = str(v, field);
      if (!/^[A-Za-z0-9_-]+$/.test(s)) fail(field, `expected letters, digits, _ or -, got ${s}`);
      namespaceSetBy = field;
      return s;
    },
    'dynamo',
    [flags.namespace, '--namespace'],
    [env.DYN_NAMESPACE_PREFIX, 'DYN_NAMESPACE_PREFIX'],
    [env.DYN_NAMESPACE, 'DYN_NAMESPACE'],
    // Dynamo's Go EPP plugin's name (LEGACY_NAMES).
    [env.DYNAMO_NAMESPACE, 'DYNAMO_NAMESPACE'],
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
            fail(field, `expected nats://host:port, got ${redactNatsServers(u)}`);
        }
        return s;
      },
      undefined,
      [flags['nats-server'], '--nats-server'],
      [env.NATS_SERVER, 'NATS_SERVER'],
      file('events', 'natsServer'),
    ),
    namespace,
    namespaceSetBy,
    component: get(
      str,
      'backend',
      [flags.component, '--component'],
      [env.DYN_COMPONENT_NAME, 'DYN_COMPONENT_NAME'],
      [env.DYNAMO_COMPONENT, 'DYNAMO_COMPONENT'],
      file('events', 'component'),
    ),
    subjects,
    durable: get(
      bool,
      false,
      [flags['durable-kv-events'], '--durable-kv-events'],
      [env.DYN_ROUTER_DURABLE_KV_EVENTS, 'DYN_ROUTER_DURABLE_KV_EVENTS'],
      [env.DYN_DURABLE_KV_EVENTS, 'DYN_DURABLE_KV_EVENTS'],
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

/** kv-epp's own `serve` flags. Booleans follow pflag: bare = true, else `--x=true|false`. */
export const SERVE_FLAGS: Readonly<Record<string, FlagSpec>> = Object.fromEntries([
  ...[
    'host',
    'grpc-port',
    'grpc-health-port',
    'metrics-port',
    'cert-path',
    'config-file',
    'endpoints-file',
    'pool-name',
    'pool-namespace',
    'tokenizer',
    'chat-template',
    'prompt-dialect',
    'block-size',
    'fallbacks',
    'backend',
    'max-body-bytes',
    'max-buffered-body-bytes',
    'router-ttl-secs',
    'router-max-tree-size',
    'router-prune-target-ratio',
    'max-queued-requests',
    'max-requests-per-endpoint',
    'retry-after-seconds',
    'shutdown-propagation-seconds',
    'shutdown-grace-seconds',
    'outlier-consecutive-5xx',
    'outlier-ejection-seconds',
    'ext-proc-transport',
    'nats-server',
    'namespace',
    'component',
    'kv-events-subject',
    'max-queued-events',
    'consumer-name',
    'dynamo-discovery-dir',
    'gc-pace-mb',
    'v8-worker-priority',
    // GAIE's model-server metric flags (ModelServerMetricsOptions).
    'refresh-metrics-interval',
    'metrics-staleness-threshold',
    'model-server-metrics-port',
    'model-server-metrics-path',
    'model-server-metrics-scheme',
  ].map((k) => [k, { kind: 'string' as const }]),
  // Booleans take a separate `true`/`false` too: GAIE's charts v1.1–v1.5 render
  // `inferenceExtension.flags` as two arguments (`--secure-serving`, `false`).
  ...[
    'secure-serving',
    'kv-events',
    'durable-kv-events',
    'router-reset-states',
    'model-server-metrics-https-insecure-skip-verify',
  ].map((k) => [k, { kind: 'boolean' as const, separateValue: true }]),
]);

/**
 * A flag of GAIE's EPP that kv-epp only accepts. `same`: the value with which
 * GAIE's EPP behaves as kv-epp always does (no warning for it); without
 * `same`, any value is reported as having no effect.
 */
interface GaieFlag extends FlagSpec {
  same?: string | boolean;
}

/**
 * GAIE's EPP flag set (pflag, `cmd/epp/runner/runner.go` and
 * `pkg/epp/server/options.go`, v1.0 to the last main commit before the EPP
 * left the repository in 2026-06, plus controller-runtime's zap flags), less
 * the flags kv-epp implements (ports, `--secure-serving`, `--cert-path`,
 * `--config-file`, `--pool-name`, `--pool-namespace`). GAIE's Helm charts pass
 * `--pool-group`, `--zap-encoder json`, `--tracing=…`, `--metrics-endpoint-auth=false`,
 * `--ha-enable-leader-election`, the model-server metric flags, and
 * `inferenceExtension.flags` as `--key=value` (charts v1.1–v1.5 as `--key value`).
 * `-v` / `--zap-log-level` set the log level (`logLevel`), so they are not here.
 */
const GAIE_FLAG_LIST: Readonly<Record<string, GaieFlag>> = {
  'pool-group': { kind: 'string' },
  'endpoint-selector': { kind: 'string' },
  'endpoint-target-ports': { kind: 'string' },
  // kv-epp always honours x-gateway-destination-endpoint-subset.
  'disable-endpoint-subset-filter': { kind: 'boolean', same: false },
  // Every kv-epp replica serves; there is no leader.
  'ha-enable-leader-election': { kind: 'boolean', same: false },
  // The pool gauges are computed at each scrape of kv-epp's /metrics.
  'refresh-prometheus-metrics-interval': { kind: 'string' },
  // Metric names come from the engine (ENGINES in src/metrics/model-server-metrics.ts).
  'total-queued-requests-metric': { kind: 'string' },
  'total-running-requests-metric': { kind: 'string' },
  'kv-cache-usage-percentage-metric': { kind: 'string' },
  'lora-info-metric': { kind: 'string' },
  'cache-info-metric': { kind: 'string' },
  'enable-multi-engine': { kind: 'boolean', same: false },
  'engine-label-key': { kind: 'string' },
  // kv-epp emits no traces and serves no pprof.
  tracing: { kind: 'boolean', same: false },
  'enable-pprof': { kind: 'boolean', same: false },
  // grpc.health.v1 is always served on the ext_proc port too.
  'health-checking': { kind: 'boolean', same: true },
  // --cert-path is always watched and reloaded.
  'enable-cert-reload': { kind: 'boolean', same: true },
  // The metrics port has no authentication.
  'metrics-endpoint-auth': { kind: 'boolean', same: false },
  // GAIE's EndpointPickerConfig (plugins, scheduling profiles) has no kv-epp meaning.
  'config-text': { kind: 'string' },
  // kv-epp logs JSON lines (pino), timestamps in epoch milliseconds.
  'zap-encoder': { kind: 'string', same: 'json' },
  'zap-devel': { kind: 'boolean', same: false },
  'zap-stacktrace-level': { kind: 'string' },
  'zap-time-encoding': { kind: 'string', same: 'millis' },
  // controller-runtime's flag (GAIE v1.0–v1.2); kv-epp reads no Kubernetes API yet.
  kubeconfig: { kind: 'string' },
};

/** GAIE_FLAG_LIST, its booleans also taking a separate `true`/`false` (GAIE v1.1's chart). */
const GAIE_FLAGS: Readonly<Record<string, GaieFlag>> = Object.fromEntries(
  Object.entries(GAIE_FLAG_LIST).map(([name, f]) => [
    name,
    f.kind === 'boolean' ? { ...f, separateValue: true } : f,
  ]),
);

const LOG_FLAGS: Readonly<Record<string, FlagSpec>> = {
  v: { kind: 'string', short: 'v' },
  'zap-log-level': { kind: 'string' },
};

/** A GAIE EPP flag that was accepted but changes nothing. */
export interface IgnoredFlag {
  flag: string;
  value: string | boolean;
}

export interface ServeArgs {
  /** kv-epp's own options, for `resolveServeOptions`. */
  flags: Flags;
  /** GAIE EPP flags whose value kv-epp does not act on, for one start-up warning. */
  ignored: IgnoredFlag[];
  /**
   * The pino level asked for by GAIE's `--zap-log-level` (debug, info, warn,
   * error, fatal; an integer N as `-v N`) or `-v N` / `--v N` (N ≥ 5 trace,
   * N ≥ 3 debug); undefined when neither asks for one. Lower `-v` values
   * change nothing: at any `-v`, GAIE's EPP still logs info, warnings and errors.
   */
  logLevel?: string | undefined;
}

const ZAP_LEVELS: Readonly<Record<string, string>> = {
  debug: 'debug',
  info: 'info',
  warn: 'warn',
  error: 'error',
  dpanic: 'fatal',
  panic: 'fatal',
  fatal: 'fatal',
};

function verbosityLevel(n: number): string | undefined {
  return n >= 5 ? 'trace' : n >= 3 ? 'debug' : undefined;
}

/**
 * `kv-epp serve` arguments, read as GAIE's EPP (pflag) reads them: kv-epp's
 * flags plus GAIE's (`GAIE_FLAGS`, `-v`, `--zap-log-level`).
 * @throws UsageError for an unknown flag, a missing value, a stray argument,
 *   or a GAIE boolean / verbosity that pflag would reject too.
 */
export function parseServeArgs(argv: readonly string[]): ServeArgs {
  const all = parseFlags(argv, { ...SERVE_FLAGS, ...GAIE_FLAGS, ...LOG_FLAGS });
  const flags: Flags = {};
  const ignored: IgnoredFlag[] = [];
  for (const [name, value] of Object.entries(all)) {
    const gaie = Object.hasOwn(GAIE_FLAGS, name) ? GAIE_FLAGS[name] : undefined;
    if (Object.hasOwn(SERVE_FLAGS, name)) flags[name] = value;
    else if (gaie !== undefined) {
      let v = value;
      if (gaie.kind === 'boolean' && typeof v === 'string') {
        const b = goBool(v);
        if (b === undefined)
          throw new UsageError(`--${name}`, `expected true or false, got ${JSON.stringify(v)}`);
        v = b;
      }
      if (gaie.same === undefined || v !== gaie.same) ignored.push({ flag: `--${name}`, value: v });
    }
  }
  let logLevel: string | undefined;
  const v = all.v;
  if (v !== undefined) {
    const s = String(v).trim();
    if (!/^-?\d+$/.test(s))
      throw new UsageError('-v', `expected an integer, got ${JSON.stringify(v)}`);
    logLevel = verbosityLevel(Number(s));
  }
  const zap = all['zap-log-level'];
  if (zap !== undefined) {
    const s = String(zap).trim().toLowerCase();
    if (/^\d+$/.test(s) && Number(s) > 0) logLevel = verbosityLevel(Number(s)) ?? 'info';
    else if (Object.hasOwn(ZAP_LEVELS, s)) logLevel = ZAP_LEVELS[s];
    else {
      throw new UsageError(
        '--zap-log-level',
        `expected debug, info, warn, error, dpanic, panic, fatal or an integer > 0, got ${JSON.stringify(zap)}`,
      );
    }
  }
  return { flags, ignored, logLevel };
}

/**
 * Whether a parsed `--config-file` is GAIE's EndpointPickerConfig (its chart
 * mounts one) rather than kv-epp's file: such a file is skipped with a
 * warning, since its plugins and scheduling profiles have no kv-epp meaning.
 */
export function isGaieEndpointPickerConfig(doc: unknown): boolean {
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return false;
  const { kind, apiVersion } = doc as Record<string, unknown>;
  return (
    kind === 'EndpointPickerConfig' ||
    (typeof apiVersion === 'string' && apiVersion.startsWith('inference.networking.'))
  );
}

/** A warning to log once at start-up: pino-style fields and message. */
export interface StartupWarning {
  fields: Record<string, unknown>;
  msg: string;
}

/**
 * Dynamo's router settings (DYN_* as its KV router reads them, and the
 * DYNAMO_* names of its earlier Go EPP plugin) that kv-epp does not implement:
 * its picker ranks by longest cached prefix, then load, without Dynamo's
 * cost function, queue, replica sync, snapshots or disaggregation policies.
 * Sources (ai-dynamo/dynamo): components/src/dynamo/common/configuration/groups/kv_router_args.py,
 * components/src/dynamo/frontend/frontend_args.py, lib/kv-router/src/scheduling/config.rs,
 * deploy/inference-gateway/epp/pkg/plugins/dynamo_kv_scorer/plugin.go.
 */
const DYNAMO_ROUTER_UNIMPLEMENTED: ReadonlySet<string> = new Set([
  'DYN_ROUTER_KV_OVERLAP_SCORE_CREDIT',
  'DYN_ROUTER_KV_OVERLAP_SCORE_CREDIT_DECAY',
  'DYN_ROUTER_PREFILL_LOAD_SCALE',
  'DYN_ROUTER_DECODE_ACTIVE_REQUEST_WEIGHT',
  'DYN_ROUTER_KV_OVERLAP_SCORE_WEIGHT',
  'DYN_OVERLAP_SCORE_WEIGHT',
  'DYN_ROUTER_TEMPERATURE',
  'DYN_ROUTER_REPLICA_SYNC',
  'DYN_ROUTER_SNAPSHOT_THRESHOLD',
  'DYN_ROUTER_TRACK_ACTIVE_BLOCKS',
  'DYN_ROUTER_TRACK_OUTPUT_BLOCKS',
  'DYN_ROUTER_TRACK_PREFILL_TOKENS',
  'DYN_ROUTER_ASSUME_KV_REUSE',
  'DYN_ROUTER_TRACKING_HASH',
  'DYN_ROUTER_TRACKING_KEY_FILE',
  'DYN_ROUTER_TRACKING_KEY_ID',
  'DYN_ROUTER_QUEUE_THRESHOLD',
  'DYN_ROUTER_QUEUE_POLICY',
  'DYN_ROUTER_POLICY_CONFIG',
  'DYN_ROUTER_PREFILL_POLICY',
  'DYN_ROUTER_DECODE_POLICY',
  'DYN_ROUTER_WORKER_SELECTION_POLICY',
  'DYN_ROUTER_CONDITIONAL_DISAGG',
  'DYN_ROUTER_CONDITIONAL_DISAGG_POLICY',
  'DYN_ROUTER_CONDITIONAL_DISAGG_EFF_ISL_THRESHOLD',
  'DYN_ROUTER_CONDITIONAL_DISAGG_EFF_ISL_RATIO_THRESHOLD',
  'DYN_ROUTER_CONDITIONAL_DISAGG_PREFILL_BUSY_THRESHOLD',
  'DYN_ROUTER_CONDITIONAL_DISAGG_DECODE_BUSY_THRESHOLD',
  'DYN_ROUTER_PREDICTED_TTL_SECS',
  'DYN_ROUTER_APPROXIMATE_CACHE_POLICY',
  'DYN_ROUTER_EVENT_THREADS',
  'DYN_ROUTER_HOST_CACHE_HIT_WEIGHT',
  'DYN_ROUTER_DISK_CACHE_HIT_WEIGHT',
  'DYN_ROUTER_PREFILL_LOAD_MODEL',
  'DYN_ROUTER_MIN_INITIAL_WORKERS',
  'DYN_ROUTER_LOAD_AWARE',
  'DYN_USE_REMOTE_INDEXER',
  'DYN_SHARED_CACHE_MULTIPLIER',
  'DYN_SHARED_CACHE_TYPE',
  // The frontend's names before Dynamo 1.0 (docs: "CLI Flag and Env Var Migration Table").
  'DYN_KV_OVERLAP_SCORE_WEIGHT',
  'DYN_TRACK_ACTIVE_BLOCKS',
  'DYN_ASSUME_KV_REUSE',
  // The Go EPP plugin's.
  'DYNAMO_OVERLAP_SCORE_WEIGHT',
  'DYNAMO_ROUTER_TEMPERATURE',
  'DYNAMO_ROUTER_REPLICA_SYNC',
  'DYNAMO_BUSY_THRESHOLD',
]);

/**
 * Dynamo switches with one value meaning what kv-epp always does (no warning
 * then; any other value has no effect): KV routing (`DYN_ROUTER_MODE=kv`, the
 * Go plugin's `DYNAMO_USE_KV_ROUTING=true`) and aggregated fallback when no
 * prefill worker serves (`DYN_ENFORCE_DISAGG=false`).
 */
const DYNAMO_SWITCHES: Readonly<Record<string, (v: string) => boolean>> = {
  DYN_ROUTER_MODE: (v) => v === 'kv',
  DYNAMO_USE_KV_ROUTING: (v) => goEnvBool(v) === true,
  DYN_ENFORCE_DISAGG: (v) => goEnvBool(v) === false,
};

function goEnvBool(v: string): boolean | undefined {
  const s = v.toLowerCase();
  if (['true', '1', 'yes', 'on'].includes(s)) return true;
  if (['false', '0', 'no', 'off'].includes(s)) return false;
  return undefined;
}

/**
 * Earlier names kv-epp still reads, each below its current name: the
 * frontend's before Dynamo 1.0 (Dynamo itself no longer reads them) and the Go
 * EPP plugin's DYNAMO_* names. Set ones are listed in a start-up warning.
 */
export const LEGACY_NAMES: Readonly<Record<string, string>> = {
  DYN_KV_EVENTS: 'DYN_ROUTER_USE_KV_EVENTS',
  DYN_DURABLE_KV_EVENTS: 'DYN_ROUTER_DURABLE_KV_EVENTS',
  DYN_ROUTER_TTL: 'DYN_ROUTER_TTL_SECS',
  DYNAMO_USE_KV_EVENTS: 'DYN_ROUTER_USE_KV_EVENTS',
  DYNAMO_KV_BLOCK_SIZE: 'DYN_KV_CACHE_BLOCK_SIZE',
  DYNAMO_NAMESPACE: 'DYN_NAMESPACE',
  DYNAMO_COMPONENT: 'DYN_COMPONENT_NAME',
};

/** DYN_ROUTER_* variables kv-epp reads (`resolveServeOptions`). */
const DYN_ROUTER_READ: ReadonlySet<string> = new Set([
  'DYN_ROUTER_USE_KV_EVENTS',
  'DYN_ROUTER_DURABLE_KV_EVENTS',
  'DYN_ROUTER_TTL_SECS',
  'DYN_ROUTER_TTL',
  'DYN_ROUTER_MAX_TREE_SIZE',
  'DYN_ROUTER_PRUNE_TARGET_RATIO',
  'DYN_ROUTER_RESET_STATES',
  'DYN_ROUTER_BLOCK_SIZE',
]);

/**
 * The start-up warnings the options and environment alone call for, in a
 * fixed order: GAIE flags without effect, Dynamo router variables without
 * effect (or unknown), legacy Dynamo names read, an overridden
 * DYN_ROUTER_BLOCK_SIZE, a model name without a tokenizer, a metrics staleness
 * threshold shorter than the scrape interval, and a namespace prefix matched
 * exactly. Never throws: these configurations still serve.
 */
export function startupWarnings(
  options: ServeOptions,
  rawEnv: Env,
  ignored: readonly IgnoredFlag[] = [],
): StartupWarning[] {
  const env = normalizeEnv(rawEnv);
  const out: StartupWarning[] = [];
  if (ignored.length > 0) {
    out.push({
      fields: { flags: ignored.map((f) => ({ flag: f.flag, value: f.value })) },
      msg: "GAIE EPP flags accepted but without effect in kv-epp (their features are GAIE's: Kubernetes discovery, configurable model-server metric names, tracing, leader election, zap logging)",
    });
  }
  const names = Object.keys(env).sort();
  const noEffect = names.filter((k) => {
    const same = Object.hasOwn(DYNAMO_SWITCHES, k) ? DYNAMO_SWITCHES[k] : undefined;
    if (same !== undefined) return !same(env[k] as string);
    return DYNAMO_ROUTER_UNIMPLEMENTED.has(k);
  });
  const unknown = names.filter(
    (k) =>
      k.startsWith('DYN_ROUTER_') &&
      !Object.hasOwn(DYNAMO_SWITCHES, k) &&
      !DYN_ROUTER_READ.has(k) &&
      !DYNAMO_ROUTER_UNIMPLEMENTED.has(k),
  );
  if (noEffect.length > 0 || unknown.length > 0) {
    out.push({
      fields: { noEffect, unknown },
      msg: "Dynamo router variables have no effect in this version of kv-epp: its picker ranks endpoints by longest cached prefix, then load (Dynamo's cost function, temperature, queue and disaggregation settings are not implemented); `unknown` lists DYN_ROUTER_* variables kv-epp does not know",
    });
  }
  const legacy = names.filter((k) => Object.hasOwn(LEGACY_NAMES, k));
  if (legacy.length > 0) {
    out.push({
      fields: { legacy: Object.fromEntries(legacy.map((k) => [k, LEGACY_NAMES[k]])) },
      msg: "legacy Dynamo variable names are read, each only when its current name is unset: Dynamo 1.0 renamed the frontend's (and no longer reads the old names), the DYNAMO_* ones are its Go EPP plugin's; `legacy` maps each to the name to use",
    });
  }
  const routerBlockSize = env.DYN_ROUTER_BLOCK_SIZE;
  if (
    routerBlockSize !== undefined &&
    options.blockSizeSetBy !== 'DYN_ROUTER_BLOCK_SIZE' &&
    Number(routerBlockSize) !== options.blockSize
  ) {
    out.push({
      fields: {
        DYN_ROUTER_BLOCK_SIZE: routerBlockSize,
        blockSize: options.blockSize,
        blockSizeSetBy: options.blockSizeSetBy,
      },
      msg: "DYN_ROUTER_BLOCK_SIZE (the standalone Dynamo router's) is overridden: --block-size, DYN_KV_CACHE_BLOCK_SIZE, DYNAMO_KV_BLOCK_SIZE and model.blockSize come first; the block size must equal the workers'",
    });
  }
  if (env.DYN_MODEL_NAME !== undefined && options.tokenizerSetBy === undefined) {
    out.push({
      fields: { DYN_MODEL_NAME: env.DYN_MODEL_NAME, tokenizer: options.tokenizer },
      msg: "DYN_MODEL_NAME is set but no tokenizer is: kv-epp tokenizes with the built-in o200k_base and cannot download the model's tokenizer, so its block hashes will not match the workers'; give a local directory with tokenizer.json via --tokenizer, model.tokenizer in --config-file, or DYN_MODEL_PATH",
    });
  }
  const ms = options.modelServerMetrics;
  if (ms.intervalMs > 0 && ms.stalenessMs < ms.intervalMs) {
    out.push({
      fields: {
        refreshMetricsIntervalMs: ms.intervalMs,
        metricsStalenessThresholdMs: ms.stalenessMs,
      },
      msg: "--metrics-staleness-threshold is shorter than --refresh-metrics-interval: each endpoint's reading expires before its next scrape, so the pool load gauges lose their samples between scrapes; give a threshold of at least two intervals",
    });
  }
  if (options.events.namespaceSetBy === 'DYN_NAMESPACE_PREFIX' && options.events.natsServer) {
    out.push({
      fields: { namespace: options.events.namespace, subjects: options.events.subjects },
      msg: 'DYN_NAMESPACE_PREFIX is matched as the exact Dynamo namespace: workers in namespaces that only start with it (<prefix>-<hash> during a rolling update) are not heard; list their subjects with --kv-events-subject',
    });
  }
  return out;
}

/**
 * The warning for KV events whose block size nobody set: Dynamo-format events
 * (NATS, JetStream, Dynamo's ZMQ plane) carry block hashes only, so a worker
 * block size other than the assumed 16 fails silently (no prefix ever
 * matches). vLLM-format events carry the size and are checked per event.
 */
export function blockSizeWarning(
  options: ServeOptions,
  useKvEvents: boolean,
  endpoints: ReadonlyArray<{ kvEvents?: { format: string } | undefined }>,
): StartupWarning | undefined {
  if (!useKvEvents || options.blockSizeSetBy !== undefined) return undefined;
  const dynamoFormat =
    options.events.natsServer !== undefined ||
    endpoints.some((e) => e.kvEvents?.format === 'dynamo');
  if (!dynamoFormat) return undefined;
  return {
    fields: { blockSize: options.blockSize },
    msg: "KV block size not set (--block-size, DYN_KV_CACHE_BLOCK_SIZE, model.blockSize or DYN_ROUTER_BLOCK_SIZE): 16 is assumed; it must equal the workers' block size, since Dynamo's KV events carry only block hashes and a mismatch is silent (no cached prefix is ever found)",
  };
}

/**
 * The warning for endpoints with a disaggregated role: kv-epp routes
 * aggregated only, so prefill endpoints get no requests and decode endpoints
 * are routed to as aggregated workers (prefill and decode on one worker).
 */
export function roleWarning(
  endpoints: ReadonlyArray<{ name: string; role: string }>,
): StartupWarning | undefined {
  const prefill = endpoints.filter((e) => e.role === 'prefill').map((e) => e.name);
  const decode = endpoints.filter((e) => e.role === 'decode').map((e) => e.name);
  if (prefill.length === 0 && decode.length === 0) return undefined;
  return {
    fields: { prefill, decode },
    msg: 'disaggregated routing is not implemented: prefill endpoints are not routed to, decode endpoints are routed to as aggregated workers',
  };
}

/**
 * The environment for the serve logger (`KV_EPP_LOG_LEVEL`): normalised, with
 * the level GAIE's `-v` / `--zap-log-level` ask for put first (flags beat the
 * environment). Arguments that do not parse leave it alone: `startServing`
 * reports them.
 * @throws UsageError for a `KV_EPP_LOG_LEVEL` in force that names no level.
 */
export function serveLogEnv(argv: readonly string[], rawEnv: Readonly<Env>): Env {
  const env = normalizeEnv(rawEnv);
  let level: string | undefined;
  try {
    level = parseServeArgs(argv).logLevel;
  } catch {
    level = undefined;
  }
  if (level !== undefined) return { ...env, KV_EPP_LOG_LEVEL: level };
  const fromEnv = env.KV_EPP_LOG_LEVEL;
  if (fromEnv !== undefined && !LOG_LEVELS.includes(fromEnv.toLowerCase())) {
    throw new UsageError(
      'KV_EPP_LOG_LEVEL',
      `expected ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(fromEnv)}`,
    );
  }
  return env;
}

/** pino's level names (`KV_EPP_LOG_LEVEL`, any case). */
const LOG_LEVELS: readonly string[] = [
  'trace',
  'debug',
  'info',
  'warn',
  'error',
  'fatal',
  'silent',
];
