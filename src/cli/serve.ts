/**
 * `kv-epp serve`: the EPP process. Wiring only: options → endpoints →
 * hot path (addon loaded on the main thread before the pool) → router →
 * ext_proc server (9002), health server (9003) and Prometheus metrics (9090,
 * fed by src/metrics/observer.ts). Failures at start-up
 * (bad options, unreadable endpoints or chat template, unknown tokenizer, a
 * port that cannot be bound) reject with a KvEppError naming the field (a
 * UsageError for bad arguments); the CLI prints one line and exits 1 (2). Configurations that
 * serve but not as asked (GAIE flags kv-epp ignores, Dynamo router variables
 * it does not implement, an assumed block size, disaggregated roles) are
 * logged as warnings at start-up, never fatal.
 */
import { readFile } from 'node:fs/promises';
import { availableParallelism, networkInterfaces } from 'node:os';
import { parse as parseYaml } from 'yaml';
import {
  blockSizeWarning,
  type IgnoredFlag,
  isGaieEndpointPickerConfig,
  normalizeEnv,
  parseServeArgs,
  resolveServeOptions,
  resolveUseKvEvents,
  roleWarning,
  type ServeOptions,
  type StartupWarning,
  startupWarnings,
} from '../config/serve-options.js';
import { diffEndpoints } from '../discovery/endpoint-changes.js';
import {
  countRoutable,
  type Endpoint,
  hostPortOf,
  parseEndpoints,
} from '../discovery/endpoints.js';
import { loadEndpointsFile } from '../discovery/endpoints-file.js';
import { type EndpointsWatch, watchEndpointsFile } from '../discovery/endpoints-watch.js';
import { KvEppError } from '../errors.js';
import { createEventApplier } from '../events/factory.js';
import { EventIngest } from '../events/ingest.js';
import { startJetStreamEventSource } from '../events/jetstream-source.js';
import { decodeActiveLoadJs } from '../events/js/load.js';
import { nativeLoadDecoder } from '../events/native/load.js';
import { redactNatsServers } from '../events/nats-connect.js';
import {
  kvMetricsSubject,
  type LoadSubscription,
  startNatsEventSource,
} from '../events/nats-source.js';
import { createWorkerRecovery } from '../events/recovery-wiring.js';
import type { EventApplier } from '../events/types.js';
import { startZmqEventSources } from '../events/zmq-source.js';
import { approxQueueReader, createApproxTracker } from '../kv/factory.js';
import { loadNativeBinding } from '../kv/native/binding.js';
import type { Backend, KvIndex } from '../kv/types.js';
import { type Logger, stderrLogger } from '../log/logger.js';
import { type MetricsServer, startMetricsServer } from '../metrics/http.js';
import { engineOf } from '../metrics/model-server-metrics.js';
import { eventMetricsObserver, MetricsObserver } from '../metrics/observer.js';
import { EppMetrics, OVERFLOW_MODEL } from '../metrics/registry.js';
import { ScraperThread } from '../metrics/scraper-thread.js';
import { createHotPath } from '../pipeline/factory.js';
import { KvRouter } from '../routing/kv-router.js';
import { type ReportedLoad, WorkerLoadTable } from '../routing/worker-load.js';
import { CertReloader } from '../server/cert-reloader.js';
import { BodyBudget } from '../server/ext-proc/body-budget.js';
import {
  type RunningServer,
  startExtProcServer,
  startHealthServer,
} from '../server/grpc-server.js';
import type { TlsOption } from '../server/tls.js';
import { NativeTokenizer } from '../tokenize/native/tokenizer.js';
import { preparerOptionsFromEnv, segmentCacheBytesFromEnv } from '../workers/options.js';
import { RoutePreparer } from '../workers/route-preparer.js';
import { accountExternalMemoryInGlobalLimit, launcherFlagsPresent } from './gc-flags.js';
import { startGcPacer } from './gc-pacer.js';
import { gcOnMainThreadOnly, linuxThreadOps, lowerV8WorkerPriority } from './thread-priority.js';

/**
 * Approximate mode: decisions of this many blocks (4 096 tokens at block size
 * 16) or more are recorded off the event loop (KvRouterDeps.recordSoonBlocks);
 * smaller ones cost less on the event loop than a thread hand-off.
 */
const RECORD_SOON_BLOCKS = 256;

export const SERVE_USAGE = `usage: kv-epp serve [--host ADDR] [--grpc-port 9002] [--grpc-health-port 9003]
                    [--metrics-port 9090] [--secure-serving[=true|false]] [--cert-path DIR]
                    [--config-file FILE.yaml] [--max-body-bytes 67108864]
                    [--max-buffered-body-bytes 1073741824]
                    [--endpoints-file FILE] [--pool-name N --pool-namespace NS]
                    [--tokenizer DIR|o200k_base] [--chat-template FILE] [--block-size N]
                    [--prompt-dialect dynamo|vllm]
                    [--kv-events[=true|false]] [--fallbacks N] [--backend auto|native|js]
                    [--router-ttl-secs 120] [--router-max-tree-size 1048576]
                    [--router-prune-target-ratio 0.8] [--max-queued-requests 1024]
                    [--max-requests-per-endpoint 0] [--retry-after-seconds 1]
                    [--outlier-consecutive-5xx 5] [--outlier-ejection-seconds 30]
                    [--ext-proc-transport raw-h2|direct|grpc-js]
                    [--nats-server nats://HOST:PORT] [--namespace dynamo] [--component backend]
                    [--kv-events-subject S[,S…]] [--durable-kv-events[=true|false]]
                    [--max-queued-events 65536] [--consumer-name NAME] [--router-reset-states[=true]]
                    [--dynamo-discovery-dir DIR] [--gc-pace-mb MB]
                    [--v8-worker-priority idle|low|normal]
                    [--shutdown-propagation-seconds 5] [--shutdown-grace-seconds 30]
                    [--refresh-metrics-interval DURATION] [--metrics-staleness-threshold 2s]
                    [--model-server-metrics-port 0] [--model-server-metrics-path /metrics]
                    [--model-server-metrics-scheme http|https]
                    [--model-server-metrics-https-insecure-skip-verify[=true|false]]
                    [-v N | --zap-log-level debug|info|warn|error]
                    (booleans: bare = true, else --flag=true|false or --flag true|false; GAIE
                    EPP flags such as --pool-group, --zap-encoder are accepted, see README)`;

export interface Serving {
  options: ServeOptions;
  extProc: RunningServer;
  health: RunningServer;
  metrics: MetricsServer;
  /** The prefix index (debugging, tests). */
  index: KvIndex;
  /** The KV event queue, when events are on. */
  ingest: EventIngest | undefined;
  /** The endpoints in force. */
  endpoints(): readonly Endpoint[];
  /** Re-reads `--endpoints-file` now (it is also watched); true when the list changed. */
  reloadEndpoints(): Promise<boolean>;
  /**
   * The graceful stop (SIGTERM): readiness turns NOT_SERVING at once; new
   * streams are still served for the propagation time (skipped when no
   * gateway is connected), then the ext_proc port stops accepting and open
   * streams (a long generation's response) finish, until the grace period
   * from the call is over: what is still open then is cut. Then `close`.
   */
  shutdown(): Promise<void>;
  /** Stops everything now (open streams get 5 s). */
  close(): Promise<void>;
}

/**
 * The addon's SCHED_IDLE call when the hot path already runs on the addon;
 * undefined otherwise (then nice 19 serves). A JS hot path never loads the
 * addon for this: `--backend js` may be how a host avoids an addon it cannot run.
 */
async function addonIdlePolicy(
  hotPathBackend: Backend,
): Promise<((tid: number) => void) | undefined> {
  if (hotPathBackend !== 'native') return undefined;
  try {
    const binding = await loadNativeBinding();
    return typeof binding.setThreadIdlePriority === 'function'
      ? (tid) => binding.setThreadIdlePriority(tid)
      : undefined;
  } catch {
    return undefined;
  }
}

async function readConfig(file: string | undefined): Promise<unknown> {
  if (file === undefined) return undefined;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new KvEppError(
      'invalid_argument',
      `--config-file: cannot read ${file}: ${(e as Error).message}`,
    );
  }
  try {
    return parseYaml(text);
  } catch (e) {
    throw new KvEppError('invalid_argument', `${file}: not valid YAML: ${(e as Error).message}`);
  }
}

/**
 * The `--chat-template` / `model.chatTemplateFile` text; an unreadable file
 * fails start-up naming the setting (`--chat-template: cannot read …`).
 */
async function readChatTemplate(options: ServeOptions): Promise<string | undefined> {
  const file = options.chatTemplateFile;
  if (file === undefined) return undefined;
  try {
    return await readFile(file, 'utf8');
  } catch (e) {
    throw new KvEppError(
      'invalid_argument',
      `${options.chatTemplateSetBy ?? '--chat-template'}: cannot read ${file}: ${(e as Error).message}`,
    );
  }
}

export async function startServing(
  argv: string[],
  rawEnv: Record<string, string | undefined>,
  log: Logger = stderrLogger,
): Promise<Serving> {
  const externalMemoryInGlobalLimit = accountExternalMemoryInGlobalLimit();
  // Empty variables are unset for every reader below (Dynamo's and Helm's convention).
  const env = normalizeEnv(rawEnv);
  const { flags, ignored } = parseServeArgs(argv);
  const configFile = flags['config-file'] as string | undefined;
  let configDoc = await readConfig(configFile);
  const ignoredFlags: IgnoredFlag[] = [...ignored];
  if (configFile !== undefined && isGaieEndpointPickerConfig(configDoc)) {
    // GAIE's chart mounts its own EndpointPickerConfig here.
    ignoredFlags.push({
      flag: '--config-file',
      value: `${configFile} (GAIE EndpointPickerConfig)`,
    });
    configDoc = undefined;
  }
  const options = resolveServeOptions(flags, env, configDoc, configFile);
  const warn = (w: StartupWarning | undefined): void => {
    if (w) log.warn(w.fields, w.msg);
  };
  for (const w of startupWarnings(options, env, ignoredFlags)) warn(w);

  let endpoints: Endpoint[];
  if (options.endpointsFile !== undefined) {
    // Name the flag, as every other start-up error does.
    endpoints = await loadEndpointsFile(options.endpointsFile).catch((e: unknown) => {
      if (e instanceof KvEppError) throw new KvEppError(e.code, `--endpoints-file ${e.message}`);
      throw e;
    });
  } else if (options.endpoints !== undefined) {
    endpoints = parseEndpoints({ endpoints: options.endpoints }, configFile ?? 'config');
  } else if (options.poolName !== undefined) {
    throw new KvEppError(
      'invalid_argument',
      '--pool-name: Kubernetes discovery is not available yet; use --endpoints-file',
    );
  } else {
    throw new KvEppError(
      'invalid_argument',
      '--endpoints-file: required (or endpoints in --config-file); to try kv-epp, the package has loopback endpoints in config/endpoints.default.yaml',
    );
  }
  // Endpoints with `kvEvents` are event sources too, so the switch is final only now.
  const useKvEvents = resolveUseKvEvents(options, endpoints);
  warn(blockSizeWarning(options, useKvEvents, endpoints));
  let roles = roleWarning(endpoints);
  warn(roles);

  const chatTemplate = await readChatTemplate(options);
  const dialect = options.promptDialect;
  const path = await createHotPath(
    { source: options.tokenizer, chatTemplate, dialect },
    options.backend,
    { log },
  ).catch((e: unknown) => {
    // Name the setting that chose the tokenizer (DYN_MODEL_PATH is easy to miss);
    // with the built-in one, the chat template is what the user gave (the addon
    // refuses a template for an encoding such as o200k_base).
    const code = (e as { code?: unknown } | null)?.code;
    const setBy =
      code === 'template_error'
        ? options.chatTemplateSetBy
        : code === 'tokenizer_not_found' || code === 'tokenizer_invalid'
          ? (options.tokenizerSetBy ?? options.chatTemplateSetBy)
          : undefined;
    if (setBy !== undefined) {
      throw new KvEppError(code as KvEppError['code'], `${setBy}: ${(e as Error).message}`);
    }
    throw e;
  });
  const segmentCacheBytes = segmentCacheBytesFromEnv(env);
  const tokenizer = path.tokenizer;
  if (tokenizer instanceof NativeTokenizer) {
    NativeTokenizer.setSegmentCacheBytes(await loadNativeBinding(), segmentCacheBytes);
  }
  const preparerOptions = preparerOptionsFromEnv(env, availableParallelism());
  const preparer = RoutePreparer.create(path, { ...preparerOptions, chatTemplate, dialect });
  let ingest: EventIngest | undefined;
  const workerLoads = new WorkerLoadTable();
  // The model servers' own load figures, for the pool gauges (off unless an interval is set).
  const ms = options.modelServerMetrics;
  const scraper =
    ms.intervalMs > 0
      ? new ScraperThread({
          intervalMs: ms.intervalMs,
          insecureSkipVerify: ms.insecureSkipVerify,
          // Below the event loop, as the tokenizer pool (KV_EPP_POOL_NICE).
          nice: preparerOptions.poolNice,
          log,
          targets: () =>
            endpoints.map((e) => ({
              pod: e.name,
              // An IPv6 zone (`fe80::1%eth0`) is `%25` in a URL.
              url: `${ms.scheme}://${hostPortOf(e.address.replaceAll('%', '%25'), ms.port || e.port)}${ms.path}`,
              engine: engineOf(e.labels),
              dpRank: e.dpRank,
            })),
        })
      : undefined;
  // Made after the metrics it reports to; scrapes start once serving.
  let kvRouterRef: KvRouter | undefined;
  let eventSourcesRef: EventSources | undefined;
  const bodyBudget = new BodyBudget(options.maxBufferedBodyBytes);
  const metrics = new EppMetrics({
    bufferedBodyBytes: () => bodyBudget.held,
    droppedLogRecords: log.droppedRecords ? () => log.droppedRecords?.() ?? 0 : undefined,
    onModelLabelOverflow: (why) =>
      log.warn(
        { model: OVERFLOW_MODEL, why },
        'metrics: new model names are counted under model_name="__other__" from now on (logged once)',
      ),
    backends: {
      tokenizer: path.tokenizer.backend,
      hasher: path.hasher.backend,
      index: path.index.backend,
    },
    modelServers: scraper ? () => scraper.fresh(Date.now(), ms.stalenessMs) : undefined,
    poolName: options.poolName,
    poolNamespace: options.poolNamespace,
    // Routable endpoints only, as `isReady` counts them: prefill-only ones get no requests.
    readyPods: () => countRoutable(endpoints),
    queueDepth: () => preparer.queueDepth,
    ejectedEndpoints: () => kvRouterRef?.ejectedEndpoints() ?? 0,
    indexMemberships: () => path.index.stats().memberships,
    segmentCache:
      tokenizer instanceof NativeTokenizer ? () => tokenizer.segmentCacheStats() : undefined,
    workerBlocks: () =>
      endpoints.map((e) => ({
        workerId: e.workerId,
        dpRank: e.dpRank,
        blocks: path.index.treeSize(e),
      })),
    eventsQueued: () => ingest?.stats().queued ?? 0,
    zmqPublishers: () => eventSourcesRef?.zmqPublishers(),
    approxQueue: approxQueueReader(path.index),
  });
  const observer = new MetricsObserver(metrics);
  const kvRouter = new KvRouter(
    {
      endpoints: () => endpoints,
      preparer: observer.preparer(preparer),
      index: path.index,
      hasher: path.hasher,
      log,
      onRouted: observer.onRouted,
      pendingPrepare: () => preparer.queueDepth,
      reportedLoad: (e) => workerLoads.load(e.workerId, e.dpRank, Date.now()),
      approxTracker: (settings) => createApproxTracker(path.index, path.hasher, settings),
      // The approximate-mode record runs after the decision is written out.
      defer: (work) => setImmediate(work),
      recordSoonBlocks: RECORD_SOON_BLOCKS,
    },
    {
      blockSize: options.blockSize,
      fallbacks: options.fallbacks,
      // Without KV events, predict cache state from routing decisions.
      approximate: !useKvEvents,
      approx: {
        ttlMs: options.ttlSecs * 1000,
        maxTreeSize: options.maxTreeSize,
        pruneTargetRatio: options.pruneTargetRatio,
        // A hot prefix is re-queued at most every 5 s (4 % of the default TTL): fewer queue
        // compactions on the event loop, for blocks that may expire up to that much early.
        refreshGranularityMs: Math.min(5000, (options.ttlSecs * 1000) / 24),
      },
      admission: {
        maxPendingPrepare: options.maxQueuedRequests,
        maxInFlightPerEndpoint: options.maxRequestsPerEndpoint,
      },
      // Envoy's outlier detection: a dead static endpoint stops taking new prompts.
      outliers: {
        consecutive5xx: options.outlierConsecutive5xx,
        baseEjectionMs: options.outlierEjectionSeconds * 1000,
        maxEjectionMs: options.outlierEjectionSeconds * 10_000,
        maxEjectionPercent: 10,
      },
    },
  );
  kvRouterRef = kvRouter;
  const router = observer.router(kvRouter);
  // Ready once a routable endpoint has been known (GAIE's EPP: once the pool
  // synced), and from then on: a pool that empties later (scale to zero, a
  // rollout) gets kv-epp's own 503s rather than the gateway's error for an
  // unhealthy ext_proc cluster. Prefill-only endpoints are never routed to.
  let seenRoutable = false;
  let shuttingDown = false;
  const isReady = () => {
    if (shuttingDown) return false;
    seenRoutable ||= countRoutable(endpoints) > 0;
    return seenRoutable;
  };
  let tls: TlsOption;
  if (options.secureServing)
    tls = options.certPath ? await CertReloader.open(options.certPath, { log }) : 'self-signed';
  // Start the servers in order; if one cannot bind, close those already up and
  // everything loaded, so a failed start-up leaves nothing running.
  const started: Array<{ close(graceMs?: number): Promise<unknown> }> = [];
  // Approximate mode: expire routed blocks without waiting for traffic. A
  // native tracker does it on its own thread; otherwise each call does a
  // bounded amount and a backlog is worked off in further calls, each its own
  // macrotask, so requests and health checks interleave with it.
  let upkeepChain: NodeJS.Immediate | undefined;
  const maintain = (): void => {
    upkeepChain = undefined;
    try {
      if (kvRouter.maintainOffThread()) return;
      kvRouter.maintain();
      if (kvRouter.maintenanceBacklog()) upkeepChain = setImmediate(maintain);
    } catch (e) {
      log.warn({ err: (e as Error).message }, 'approximate-mode expiry failed');
    }
  };
  const upkeep = setInterval(() => {
    if (upkeepChain === undefined) maintain();
  }, 1000);
  upkeep.unref();
  started.push({
    close: async () => {
      clearInterval(upkeep);
      if (upkeepChain !== undefined) clearImmediate(upkeepChain);
    },
  });
  if (scraper) {
    scraper.start();
    started.push({ close: () => scraper.stop() });
  }
  const gcPacer = options.gcPaceMb > 0 ? startGcPacer(options.gcPaceMb * 1024 * 1024) : undefined;
  if (gcPacer) started.push({ close: async () => gcPacer.stop() });
  const v8WorkerPriority = lowerV8WorkerPriority(
    options.v8WorkerPriority,
    linuxThreadOps(await addonIdlePolicy(path.tokenizer.backend)),
    !gcOnMainThreadOnly(),
  );
  /** `graceMs`: how long servers still open may let their streams finish (default theirs, 5 s). */
  const releaseAll = async (graceMs?: number): Promise<void> => {
    await Promise.allSettled(started.splice(0).map((x) => x.close(graceMs)));
    // A drain slice may already be scheduled: it must not reach the disposed applier.
    ingest?.close();
    applier?.dispose();
    if (tls instanceof CertReloader) tls.close();
    await preparer.close();
    kvRouter.dispose();
    path.tokenizer.dispose();
    path.index.dispose();
  };
  const host = options.host ?? everyAddress();
  let extProc: RunningServer;
  let health: RunningServer;
  let metricsServer: MetricsServer;
  let applier: EventApplier | undefined;
  let eventSources: EventSources | undefined;
  try {
    if (useKvEvents) {
      applier = await createEventApplier(path.index, { blockSize: options.blockSize });
      const discoveryDir = options.events.discoveryDir;
      const recovery =
        discoveryDir === undefined
          ? undefined
          : createWorkerRecovery({
              discoveryDir,
              responseHost: options.events.responseHost,
              applier,
              index: path.index,
              log,
              observer: { recovery: (t, o, b) => metrics.recovery(t, o, b) },
            });
      if (recovery) started.push({ close: async () => recovery.close() });
      ingest = new EventIngest({
        applier,
        log,
        observer: eventMetricsObserver(metrics),
        recovery,
        now: Date.now,
        schedule: setImmediate,
        maxQueuedMessages: options.events.maxQueuedMessages,
      });
      eventSources = await startEventSources(
        options,
        endpoints,
        ingest,
        log,
        workerLoads,
        (source, event) => metrics.eventConnectionEvent(source, event),
      );
      started.push(eventSources);
      eventSourcesRef = eventSources;
    }
    extProc = await bindOrExplain('--grpc-port', options.grpcPort, host, () =>
      startExtProcServer({
        port: options.grpcPort,
        host,
        router,
        tls,
        maxBodyBytes: options.maxBodyBytes,
        bodyBudget,
        logger: log,
        isReady,
        retryAfterSeconds: options.retryAfterSeconds,
        transport: options.extProcTransport,
        onLocalReject: (category) => metrics.requestError('', '', category),
      }),
    );
    started.push(extProc);
    health = await bindOrExplain('--grpc-health-port', options.grpcHealthPort, host, () =>
      startHealthServer({
        port: options.grpcHealthPort,
        host,
        isReady,
        logger: log,
        // grpc-js on the ext_proc port (the fallback) means grpc-js here too.
        transport: options.extProcTransport === 'grpc-js' ? 'grpc-js' : 'raw-h2',
      }),
    );
    started.push(health);
    metricsServer = await bindOrExplain('--metrics-port', options.metricsPort, host, () =>
      startMetricsServer({
        port: options.metricsPort,
        host,
        registry: metrics.registry,
      }),
    );
    started.push(metricsServer);
  } catch (e) {
    await releaseAll();
    throw e;
  }
  // Static discovery follows its file: departed workers leave the index.
  const hasPublishers = (list: readonly Endpoint[]): boolean =>
    list.some((e) => e.kvEvents !== undefined);
  let publishers = hasPublishers(endpoints);
  const applyEndpoints = async (next: Endpoint[]): Promise<void> => {
    const changes = diffEndpoints(endpoints, next);
    endpoints = next;
    // kvRouter.forget first: it waits for queued approximate-mode records.
    for (const w of changes.removedWorkers) {
      kvRouter.forget({ workerId: w });
      path.index.removeWorker(w);
      ingest?.forgetWorker(w);
      workerLoads.forgetWorker(w);
    }
    for (const h of changes.removedHolders) {
      kvRouter.forget(h);
      path.index.removeHolder(h);
    }
    await eventSources?.syncEndpoints(next);
    // Whether KV events are used is settled at start-up; say when an edit asks otherwise.
    const nextPublishers = hasPublishers(next);
    if (nextPublishers !== publishers) {
      publishers = nextPublishers;
      if (!useKvEvents && publishers) {
        log.warn(
          { endpoints: next.filter((e) => e.kvEvents !== undefined).map((e) => e.name) },
          'endpoints now name kvEvents publishers, but KV events were off at start-up (approximate routing); restart kv-epp to use them',
        );
      } else if (useKvEvents && !publishers && options.events.natsServer === undefined) {
        log.warn(
          {},
          'no endpoint names a kvEvents publisher any more and there is no NATS source: the KV index is no longer fed',
        );
      }
    }
    // Re-warn only when the disaggregated endpoints change, not on every edit.
    const nextRoles = roleWarning(next);
    if (JSON.stringify(nextRoles?.fields) !== JSON.stringify(roles?.fields)) warn(nextRoles);
    roles = nextRoles;
    log.info(
      {
        endpoints: next.length,
        added: changes.added.map((e) => e.name),
        removedWorkers: changes.removedWorkers,
        removedHolders: changes.removedHolders.length,
      },
      'endpoints changed',
    );
  };
  // One list at a time: applying one awaits the event sources (a ZMQ set starting),
  // and two edits applied at once started two sets, one never closed. A list that
  // comes in meanwhile waits; of several, only the latest is applied.
  let applying = false;
  let waiting: Endpoint[] | undefined;
  const applyInOrder = (next: Endpoint[]): void => {
    if (applying) {
      waiting = next;
      return;
    }
    applying = true;
    void (async () => {
      for (let list: Endpoint[] | undefined = next; list !== undefined; ) {
        try {
          await applyEndpoints(list);
        } catch (e) {
          log.error({ err: (e as Error).message }, 'applying new endpoints failed');
        }
        list = waiting;
        waiting = undefined;
      }
      applying = false;
    })();
  };
  let watcher: EndpointsWatch | undefined;
  if (options.endpointsFile !== undefined) {
    watcher = watchEndpointsFile(options.endpointsFile, endpoints, {
      log,
      onChange: applyInOrder,
    });
    const w = watcher;
    started.push({ close: async () => w.close() });
  }
  let stopping: Promise<void> | undefined;
  const shutdown = (): Promise<void> => {
    stopping ??= (async () => {
      shuttingDown = true;
      const graceMs = options.shutdownGraceSeconds * 1000;
      const deadline = Date.now() + graceMs;
      // Without a gateway connected nothing needs to notice the readiness change.
      const connected = extProc.connections !== 0;
      const propagationMs = connected
        ? Math.min(options.shutdownPropagationSeconds * 1000, graceMs)
        : 0;
      log.info(
        {
          inFlight: kvRouter.inFlightTotal(),
          propagationSeconds: propagationMs / 1000,
          graceSeconds: options.shutdownGraceSeconds,
        },
        'shutting down: readiness NOT_SERVING; open streams may finish',
      );
      if (propagationMs > 0) await new Promise((r) => setTimeout(r, propagationMs));
      const open = kvRouter.inFlightTotal();
      const cut = await extProc.close(Math.max(0, deadline - Date.now()));
      const fields = { inFlightAtDrain: open, cutAfterSeconds: options.shutdownGraceSeconds };
      if (cut) log.warn(fields, 'shutdown grace period over: open streams cut');
      else log.info({ inFlightAtDrain: open }, 'every open stream finished');
      // Whatever is left (the health port) gets only what remains of the grace period.
      await releaseAll(Math.max(0, deadline - Date.now()));
    })();
    return stopping;
  };
  log.info(
    {
      grpcPort: extProc.port,
      healthPort: health.port,
      metricsPort: metricsServer.port,
      tls: options.secureServing,
      endpoints: endpoints.length,
      tokenizer: options.tokenizer,
      tokenizerBackend: path.tokenizer.backend,
      // Whose prompt the injected ids are (HF tokenizers; a tiktoken encoding has its own format).
      promptDialect: path.tokenizer.kind === 'hf' ? dialect : undefined,
      segmentCacheMb: tokenizer instanceof NativeTokenizer ? segmentCacheBytes / 2 ** 20 : 0,
      blockSize: options.blockSize,
      gcTuned: launcherFlagsPresent(),
      externalMemoryInGlobalLimit,
      gcPaceMb: gcPacer ? options.gcPaceMb : 0,
      v8WorkerPriority,
      poolNice: preparer.poolNice,
    },
    'kv-epp serving',
  );
  return {
    options,
    extProc,
    health,
    metrics: metricsServer,
    index: path.index,
    ingest,
    endpoints: () => endpoints,
    reloadEndpoints: () => watcher?.reload() ?? Promise.resolve(false),
    shutdown,
    close: () => releaseAll(),
  };
}

/**
 * Starts one listening server; a bind failure (port taken, not permitted,
 * address not local) becomes one line naming the flag and port, e.g.
 * `--grpc-health-port 9003: address already in use`. grpc-js reports it only
 * in its message (`No address added … [listen EADDRINUSE: …]`), node:http in
 * `code`. Other failures pass through unchanged.
 */
/**
 * Every address of the machine: `::` (IPv6 and, with Linux's default
 * bindv6only=0, IPv4 too, as Go's `net.Listen("tcp", ":port")` that GAIE's EPP
 * uses), or `0.0.0.0` where the machine has no IPv6 at all. IPv4-only
 * listening left single-stack IPv6 clusters' probes and gateways refused.
 */
function everyAddress(): string {
  const ipv6 = Object.values(networkInterfaces()).some((list) =>
    list?.some((a) => a.family === 'IPv6'),
  );
  return ipv6 ? '::' : '0.0.0.0';
}

async function bindOrExplain<T>(
  flag: string,
  port: number,
  host: string,
  start: () => Promise<T>,
): Promise<T> {
  try {
    return await start();
  } catch (e) {
    const err = (e ?? {}) as { code?: unknown; message?: unknown };
    const text = `${String(err.code ?? '')} ${String(err.message ?? '')}`;
    const why = /\bEADDRINUSE\b/.test(text)
      ? 'address already in use'
      : /\bEACCES\b/.test(text)
        ? 'permission denied (ports below 1024 need privileges)'
        : /\bEADDRNOTAVAIL\b/.test(text)
          ? `address not available (--host ${host} is not an address of this machine)`
          : undefined;
    if (why === undefined) throw e;
    throw new KvEppError('invalid_argument', `${flag} ${port}: ${why}`);
  }
}

/**
 * The KV event transports: core NATS when `--nats-server` is set, and one ZMQ
 * subscription per endpoint with `kvEvents` (vLLM/SGLang engines, or
 * Dynamo's ZMQ event plane). Either alone is enough.
 */
async function startEventSources(
  options: ServeOptions,
  endpoints: readonly Endpoint[],
  ingest: EventIngest,
  log: Logger,
  workerLoads: WorkerLoadTable,
  onConnectionEvent: (source: 'nats' | 'jetstream' | 'zmq', event: string) => void,
): Promise<EventSources> {
  const { natsServer, subjects, durable } = options.events;
  const zmqEndpoints = endpoints.filter((e) => e.kvEvents !== undefined);
  if (natsServer === undefined && zmqEndpoints.length === 0) {
    throw new KvEppError(
      'invalid_argument',
      '--nats-server: required with KV events on (or kvEvents on an endpoint)',
    );
  }
  const sources: Array<{ close(): Promise<void> }> = [];
  let zmq: Awaited<ReturnType<typeof startZmqEventSources>> | undefined;
  const onZmqEvent = (event: string) => onConnectionEvent('zmq', event);
  const closeAll = async (): Promise<void> => {
    await Promise.allSettled(sources.splice(0).map((s) => s.close()));
  };
  try {
    if (natsServer !== undefined) {
      try {
        sources.push(
          durable
            ? await startJetStreamEventSource({
                servers: natsServer,
                namespace: options.events.namespace,
                component: options.events.component,
                consumerName: options.events.consumerName,
                streamMaxAgeSecs: options.events.streamMaxAgeSecs,
                resetStates: options.events.resetStates,
                // Stop pulling well before the ingest would drop.
                maxPendingMessages: Math.max(1, Math.floor(options.events.maxQueuedMessages / 2)),
                ingest,
                log,
                onConnectionEvent: (event) => onConnectionEvent('jetstream', event),
              })
            : await startNatsEventSource({
                servers: natsServer,
                subjects,
                ingest,
                log,
                loads: await loadSubscription(options, workerLoads),
                onConnectionEvent: (event) => onConnectionEvent('nats', event),
              }),
        );
      } catch (e) {
        throw new KvEppError(
          'invalid_argument',
          `--nats-server: cannot connect to ${redactNatsServers(natsServer)}: ${(e as Error).message}`,
        );
      }
    }
    if (zmqEndpoints.length > 0) {
      zmq = await startZmqEventSources({
        endpoints: zmqEndpoints,
        ingest,
        log,
        onConnectionEvent: onZmqEvent,
      });
      sources.push(zmq);
    }
  } catch (e) {
    await closeAll();
    throw e;
  }
  return {
    close: closeAll,
    zmqPublishers() {
      const all = zmq?.stats().sources ?? [];
      const connected = all.filter((x) => x.connected).length;
      return { connected, notConnected: all.length - connected };
    },
    async syncEndpoints(next) {
      const withEvents = next.filter((e) => e.kvEvents !== undefined);
      if (zmq) await zmq.sync(withEvents);
      else if (withEvents.length > 0) {
        zmq = await startZmqEventSources({
          endpoints: withEvents,
          ingest,
          log,
          onConnectionEvent: onZmqEvent,
        });
        sources.push(zmq);
      }
    },
  };
}

interface EventSources {
  close(): Promise<void>;
  /** ZMQ publishers subscribed to, by whether a connection to them is up now. */
  zmqPublishers(): { connected: number; notConnected: number };
  /** Discovery changed: open/close ZMQ subscriptions to match. */
  syncEndpoints(endpoints: readonly Endpoint[]): Promise<void>;
}

/**
 * Worker load reports (`kv_metrics`) for the picker's tie-breaks, decoded
 * with exact u64 worker ids (the addon, else its JS twin).
 */
async function loadSubscription(
  options: ServeOptions,
  table: WorkerLoadTable,
): Promise<LoadSubscription> {
  let decode: (payload: Uint8Array) => ReportedLoad | null = decodeActiveLoadJs;
  if (options.backend !== 'js') {
    try {
      decode = nativeLoadDecoder(await loadNativeBinding());
    } catch {
      // auto without the addon: the JS twin decodes.
    }
  }
  return {
    subjects: [kvMetricsSubject(options.events.namespace)],
    decode,
    onLoad: (l) => table.update(l, Date.now()),
  };
}
