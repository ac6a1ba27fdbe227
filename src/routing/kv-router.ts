/**
 * kv-epp's RequestRouter: OpenAI body → tokens → prefix overlap → endpoint,
 * plus the request edits Dynamo's direct-mode frontend expects
 * (`x-dynamo-worker-instance-id`, `x-dynamo-dp-rank`,
 * `x-dynamo-routing-mode: aggregated`, `nvext.token_data` = the full prompt
 * ids). Client-sent `x-dynamo-*` (except `x-dynamo-request-id`) and `x-gateway-destination-endpoint*`
 * headers are removed and never honoured.
 *
 * Approximate mode (no KV events): after each decision the request's blocks
 * are recorded for the chosen worker, keyed by their sequence hashes, so the
 * next request with the same prefix finds them. They expire `ttlMs` after the
 * last decision that routed them and are pruned oldest first above the size
 * cap, as Dynamo's pruning indexer does (src/kv/approx/prune-tracker.ts);
 * `maintain(nowMs)` runs expiry without traffic. Pure: no I/O.
 */
import { countRoutable, type Endpoint, isRoutable } from '../discovery/endpoints.js';
import { canonicalHostPort } from '../discovery/ip.js';
import { KvEppError } from '../errors.js';
import {
  type ApproxTracker,
  DEFAULT_PRUNE_SETTINGS,
  type PruneResult,
  type PruneSettings,
  PruneTracker,
} from '../kv/approx/prune-tracker.js';
import type { BlockHasher, KvIndex, WorkerRank } from '../kv/types.js';
import type { Logger } from '../log/logger.js';
import {
  apiOfBody,
  apiOfPath,
  modelOfBody,
  type OpenAiApi,
  readRequest,
  rewriteTarget,
  spliceRequestBody,
} from '../openai/request-body.js';
import { responsesAsChat, responsesPromptIds } from '../openai/responses-chat.js';
import {
  type Preparer,
  type RoutePrep,
  tenantNamespace,
  UntokenizableBody,
} from '../pipeline/route-prep.js';
import type {
  GatewayRequest,
  RequestRouter,
  ResponseSummary,
  RouteDecision,
} from '../server/routing-types.js';
import { type AdmissionSettings, admitToPrepare, NO_SHEDDING, notBusy } from './admission.js';
import { clientRoutingHeaders } from './client-headers.js';
import { DEFAULT_OUTLIER_SETTINGS, type OutlierSettings, OutlierTracker } from './outliers.js';
import { candidatesFor, filterBySubset, rank } from './picker.js';
import { debugCompleted, debugRouted } from './route-debug.js';

const utf8 = new TextEncoder();
/** Largest body checked for a 400 before a 503/429 (see bodyFirst). */
const BODY_FIRST_MAX_BYTES = 16 * 1024;
/** Errors a Responses request's routing tokenization may end in, routed by load instead. */
const ROUTE_BY_LOAD = new Set<string>([
  'overloaded',
  'unsupported_content',
  'invalid_json',
  'invalid_request',
  'template_error',
]);

export interface KvRouterSettings {
  blockSize: number;
  /** Endpoints listed after the primary, for the gateway to retry (GAIE fallback list). */
  fallbacks: number;
  /** Record routed prefixes in the index (no KV events). */
  approximate: boolean;
  /**
   * Approximate mode's TTL and size cap (Dynamo's `PruneConfig`); defaults:
   * 120 s, 2^20 memberships, prune to 0.8 of the cap.
   */
  approx?: PruneSettings | undefined;
  /** Stop scoring once one holder remains. */
  earlyExit?: boolean | undefined;
  /** Load shedding (429); default off. */
  admission?: AdmissionSettings | undefined;
  /** Passive outlier ejection on 5xx answers; default Envoy's (5 in a row, 30 s). */
  outliers?: OutlierSettings | undefined;
}

export interface KvRouterDeps {
  endpoints: () => readonly Endpoint[];
  preparer: Preparer;
  index: KvIndex;
  hasher: BlockHasher;
  log: Logger;
  /** Observes every routed request (metrics). */
  onRouted?: ((r: RoutedRequest) => void) | undefined;
  /** Worker-reported load (`kv_metrics`), for tie-breaks after in-flight counts. */
  reportedLoad?: ((e: Endpoint) => number) | undefined;
  /** Requests waiting for tokenization (for `admission.maxPendingPrepare`). */
  pendingPrepare?: (() => number) | undefined;
  /**
   * Draws among endpoints tied on every routing figure (picker.ts `rank`):
   * values in [0, 1); default Math.random. `() => 0` takes the first by name.
   */
  random?: (() => number) | undefined;
  /**
   * Monotonic clock in ms for approximate-mode expiry, outlier ejection and the
   * scheduling span; default `performance.now()`.
   */
  now?: (() => number) | undefined;
  /**
   * Makes approximate mode's tracker (`createApproxTracker` in src/kv/factory.ts
   * puts it in the addon over a native index); default the TypeScript one.
   */
  approxTracker?: ((settings: PruneSettings) => ApproxTracker) | undefined;
  /**
   * Runs approximate mode's record of a decision later, once the decision has
   * been answered (serve passes `setImmediate`: the ~2–50 µs record, longer when
   * caches are cold, then leaves the request's critical path; a request for the
   * same prompt in the same event-loop turn does not see it yet). Default: at once.
   */
  defer?: ((work: () => void) => void) | undefined;
  /**
   * Decisions of at least this many blocks are recorded with the tracker's
   * `routeSoon` instead (native: on kv-epp's approximate-mode thread, so a
   * 50 k-token prompt's ~0.2–1.5 ms of index work leaves the event loop;
   * bench/README.md, finding AS). Default: never.
   */
  recordSoonBlocks?: number | undefined;
}

/** What `onRouted` sees of a request routed by `route()`. */
export interface RoutedRequest {
  decision: RouteDecision;
  prep: RoutePrep | undefined;
  /**
   * The scheduling itself, ms (GAIE's scheduler span): candidates, load
   * filters and ranking by the prefix scores; not the body's parsing, editing
   * or tokenization (the index lookup rides in the tokenizing call).
   */
  scheduleMs?: number | undefined;
  /** The primary endpoint. */
  endpoint: Endpoint;
  /** The body's model (before any rewrite). */
  model: string;
  /** The block size `prep`'s overlap counts in (tokens per block). */
  blockSize?: number | undefined;
}

/**
 * The OpenAI API a request is for: from `:path`, else from the path headers a
 * proxy may pass instead, else (no path at all: NGINX Gateway Fabric's shim
 * sends only the client's headers) from the body's fields.
 */
function apiOfRequest(req: GatewayRequest): OpenAiApi | undefined {
  const path =
    req.path || req.headers.get('x-original-path') || req.headers.get('x-forwarded-path') || '';
  return apiOfPath(path) ?? (path === '' ? apiOfBody(req.body) : undefined);
}

/** An endpoint's holder key: its address and its (worker, dp rank), cached per endpoint object. */
const holderKeys = new WeakMap<Endpoint, string>();
function holderKeyOf(e: Endpoint): string {
  let k = holderKeys.get(e);
  if (k === undefined) {
    k = `${e.hostPort}|${e.workerId}|${e.dpRank}`;
    holderKeys.set(e, k);
  }
  return k;
}

export class KvRouter implements RequestRouter {
  /** Requests in flight by address (`host:port`): what the gateway sends to. */
  private readonly inFlight = new Map<string, number>();
  /**
   * Requests in flight by endpoint (address, worker, dp rank): what ranks the
   * candidates. Data-parallel ranks of one worker share an address; counted by
   * address alone they always tied, and rank 0 took every tie.
   */
  private readonly inFlightByHolder = new Map<string, number>();
  private readonly outliers: OutlierTracker;
  /**
   * Per decision: its primary (`host:port`, charged one in-flight request) and,
   * in approximate mode with fallbacks, the prompt's blocks, recorded again for
   * a fallback the gateway reports it served from.
   */
  private readonly byDecision = new WeakMap<
    RouteDecision,
    { hostPort: string; holder: string; localHashes?: BigUint64Array | undefined }
  >();
  /** Approximate mode's block lifetimes; absent when KV events drive the index. */
  private readonly approx: ApproxTracker | undefined;
  private readonly now: () => number;
  private disposed = false;

  constructor(
    private readonly deps: KvRouterDeps,
    private readonly settings: KvRouterSettings,
  ) {
    this.now = deps.now ?? (() => performance.now());
    this.outliers = new OutlierTracker(settings.outliers ?? DEFAULT_OUTLIER_SETTINGS);
    const prune = settings.approx ?? DEFAULT_PRUNE_SETTINGS;
    this.approx = settings.approximate
      ? (deps.approxTracker?.(prune) ?? new PruneTracker(deps.index, prune, deps.hasher))
      : undefined;
  }

  /** Releases approximate mode's tracker (a native one holds an addon handle). */
  dispose(): void {
    this.disposed = true;
    this.approx?.dispose();
  }

  /**
   * Approximate-mode upkeep for the server to call periodically: removes the
   * blocks whose TTL ran out (and prunes above the size cap). No-op otherwise.
   */
  maintain(nowMs: number = this.now()): PruneResult {
    this.forgetDepartedOutliers();
    return this.approx?.maintain(nowMs) ?? { expired: 0, pruned: 0 };
  }

  /**
   * Whether upkeep is left over (each call removes a bounded number of blocks,
   * see PruneTracker): the server then calls `maintain` again soon, not in a second.
   */
  maintenanceBacklog(nowMs: number = this.now()): boolean {
    return this.approx?.backlog(nowMs) ?? false;
  }

  /**
   * Hands the upkeep to the tracker's own thread when it has one (native):
   * it then works the whole backlog off there. False: the caller runs
   * `maintain` (and repeats it while `maintenanceBacklog`) itself.
   */
  maintainOffThread(nowMs: number = this.now()): boolean {
    this.forgetDepartedOutliers();
    if (!this.approx?.offThread) return false;
    try {
      this.approx.maintainSoon(nowMs);
      return true;
    } catch (e) {
      // No approximate-mode thread: the caller maintains on its own.
      this.deps.log.warn({ err: (e as Error).message }, 'approximate-mode queue failed');
      return false;
    }
  }

  /**
   * A holder or a whole worker left discovery: drop approximate-mode timers
   * (not the index). Call it before removing the worker from the index: it
   * first waits for the decisions queued on the tracker's thread, which would
   * otherwise store the departed worker's blocks again afterwards.
   */
  forget(worker: { workerId: bigint; dpRank?: number | undefined }): void {
    if (this.approx?.offThread) this.approx.settle();
    if (worker.dpRank === undefined) this.approx?.forgetWorker(worker.workerId);
    else this.approx?.forgetHolder({ workerId: worker.workerId, dpRank: worker.dpRank });
  }

  /** Requests in flight on an address (`host:port`), over the endpoints there. */
  load(hostPort: string): number {
    return this.inFlight.get(hostPort) ?? 0;
  }

  /** Requests in flight on one endpoint (its address, worker and dp rank). */
  endpointLoad(e: Endpoint): number {
    return this.inFlightByHolder.get(holderKeyOf(e)) ?? 0;
  }

  /** Requests routed and not yet completed, over every endpoint. */
  inFlightTotal(): number {
    let n = 0;
    for (const v of this.inFlight.values()) n += v;
    return n;
  }

  private candidates(req: GatewayRequest): Endpoint[] {
    const ready = this.deps.endpoints().filter(isRoutable);
    const allowed = filterBySubset(ready, req.subset);
    if (allowed.length === 0) {
      // The reference EPP's text, subset hint or not (clients and its hermetic tests match on it).
      throw new KvEppError(
        'no_endpoint',
        'failed to find endpoint candidates for serving the request',
      );
    }
    return this.outliers.filter(allowed, this.now());
  }

  /** Outlier records of endpoints no longer listed go (part of the periodic upkeep). */
  private forgetDepartedOutliers(): void {
    if (this.outliers.size > 0) {
      this.outliers.retain(new Set(this.deps.endpoints().map((e) => e.hostPort)));
    }
  }

  /** Endpoints left out of routing now for answering 5xx in a row (a gauge). */
  ejectedEndpoints(): number {
    return this.outliers.ejectedCount(this.now());
  }

  private decide(
    req: GatewayRequest,
    chosen: Endpoint[],
    body: Uint8Array,
    models?: { client?: string | undefined; target?: string | undefined },
  ): RouteDecision {
    const primary = chosen[0] as Endpoint;
    const decision: RouteDecision = {
      endpoints: chosen.map((e) => e.hostPort),
      setHeaders: {
        'x-dynamo-worker-instance-id': primary.workerId.toString(),
        'x-dynamo-dp-rank': String(primary.dpRank),
        'x-dynamo-routing-mode': 'aggregated',
      },
      removeHeaders: clientRoutingHeaders(req.headers.keys()).filter(
        (k) =>
          k !== 'x-dynamo-worker-instance-id' &&
          k !== 'x-dynamo-dp-rank' &&
          k !== 'x-dynamo-routing-mode',
      ),
      body,
      clientModel: models?.client,
      targetModel: models?.target,
    };
    // The model name is written back into the response's bytes, which a
    // compressed response would hide (the client would see the worker's name):
    // with a rewrite, the worker is asked for an uncompressed one.
    const rewritten = models?.target !== undefined && models.target !== models.client;
    if (rewritten && req.headers.has('accept-encoding')) {
      decision.removeHeaders.push('accept-encoding');
    }
    this.inFlight.set(primary.hostPort, this.load(primary.hostPort) + 1);
    const holder = holderKeyOf(primary);
    this.inFlightByHolder.set(holder, (this.inFlightByHolder.get(holder) ?? 0) + 1);
    this.byDecision.set(decision, { hostPort: primary.hostPort, holder });
    return decision;
  }

  private get admission(): AdmissionSettings {
    return this.settings.admission ?? NO_SHEDDING;
  }

  /** Candidates that are not busy (429 when all are). */
  private available(endpoints: readonly Endpoint[]): Endpoint[] {
    return notBusy(endpoints, (e) => this.endpointLoad(e), this.admission);
  }

  routeHeaderOnly(req: GatewayRequest): RouteDecision {
    const c = candidatesFor(
      this.available(this.candidates(req)),
      undefined,
      (e) => this.endpointLoad(e),
      this.deps.reportedLoad,
    );
    return this.decide(
      req,
      rank(c, 1 + this.settings.fallbacks, this.deps.random).map((x) => x.endpoint),
      req.body,
    );
  }

  async route(req: GatewayRequest): Promise<RouteDecision> {
    const api = apiOfRequest(req);
    const tokenizable = api === 'chat' || api === 'completions';
    const rewrite = req.headers.get('x-gateway-model-name-rewrite');
    // Tokenized bodies are checked (400s) and spliced by the preparer, in the
    // same native call that tokenizes them (in the pool for large bodies, so a
    // large prompt is never parsed on the event loop). The subset and shedding
    // checks (503/429) cost nothing and so come first, protecting the tokenizer
    // under overload; but a body they refuse is checked first, as the
    // reference EPP does (parse, then admission), unless it is one the pool
    // would parse: a bad body is a 400 whenever checking it is cheap.
    const read = tokenizable ? undefined : readRequest(req.body, api);
    let model = read?.model;
    try {
      this.available(this.candidates(req));
    } catch (e) {
      this.bodyFirst(e, req, api, tokenizable);
    }
    let prep: RoutePrep | undefined;
    // The request's body, or the same bytes handed back by a worker it was transferred to.
    let body = req.body;
    if (tokenizable) {
      try {
        admitToPrepare(this.deps.pendingPrepare?.() ?? 0, this.admission);
      } catch (e) {
        this.bodyFirst(e, req, api, tokenizable);
      }
      const offloaded = this.deps.preparer.offloads?.(req.body.length) ?? false;
      try {
        prep = await this.deps.preparer.prepare(
          req.body,
          api,
          {
            blockSize: this.settings.blockSize,
            cacheNamespace: tenantNamespace(req.headers.get('x-tenant-id')),
            earlyExit: this.settings.earlyExit,
          },
          { rewrite, transferBody: offloaded && req.bodyTransferable === true },
          req.cancel,
        );
      } catch (e) {
        // Content a text tokenizer cannot take (image or audio parts, prompt
        // embeddings) may still be served by the pool's model (a multimodal
        // one): route it by load alone, without token data, and let the
        // worker accept or refuse it, as the reference EPP does.
        if (!(e instanceof KvEppError && e.code === 'unsupported_content')) throw e;
        if (e instanceof UntokenizableBody) body = e.body;
        // Parsed already by the tokenizer: only the model is read, not the (large) rest.
        model = modelOfBody(body);
      }
    } else if (api === 'responses' && read) {
      prep = await this.responsesPrep(read.json, req);
    }
    // Abandoned while it was tokenized: no pick, so no in-flight count and no
    // approximate-mode record for a request no worker will see.
    if (req.cancel?.cancelled) {
      throw new KvEppError('cancelled', 'the gateway abandoned the request while it was tokenized');
    }
    // After tokenizing: endpoints and loads may have changed meanwhile.
    const scheduleStart = this.now();
    const endpoints = this.available(this.candidates(req));
    const ranked = rank(
      candidatesFor(endpoints, prep?.overlap, (e) => this.endpointLoad(e), this.deps.reportedLoad),
      1 + this.settings.fallbacks,
      this.deps.random,
    );
    const chosen = ranked.map((c) => c.endpoint);
    // Scheduling ends at the pick; editing the body (below) is not part of it.
    const scheduleMs = this.now() - scheduleStart;
    let target: string | undefined;
    if (prep?.request) {
      ({ model, target, body } = prep.request);
    } else {
      // A preparer that ignored the body work, or a body that is not tokenized: edit here.
      model ??= readRequest(body, api).model;
      target = rewriteTarget(model, rewrite);
      // Token ids go only into the bodies they were made from (not a Responses
      // request's, tokenized as the chat its server renders, for routing).
      const ids = tokenizable ? prep : undefined;
      if (ids || target !== undefined) {
        body = spliceRequestBody(body, {
          model: target,
          tokenData: ids?.tokens,
          tokenDataJson: ids?.tokenDataJson,
        });
      }
    }
    const decision = this.decide(req, chosen, body, {
      client: target === undefined ? undefined : model,
      target,
    });
    const primary = chosen[0] as Endpoint;
    if (prep && this.approx && prep.localHashes.length > 0) {
      this.recordRouted(
        { workerId: primary.workerId, dpRank: primary.dpRank },
        prep.localHashes,
        this.now(),
      );
      if (chosen.length > 1) {
        const entry = this.byDecision.get(decision);
        // A copy: the view may pin the pool's whole answer (body included).
        if (entry) entry.localHashes = prep.localHashes.slice();
      }
    }
    this.deps.onRouted?.({
      decision,
      prep,
      endpoint: primary,
      model,
      scheduleMs,
      blockSize: this.settings.blockSize,
    });
    debugRouted(this.deps.log, req, decision, primary, prep, model);
    return decision;
  }

  /**
   * Rethrows a 503/429 refusal, unless the body is bad: then its 400, as the
   * reference EPP checks the body first. Only small bodies the loop would
   * tokenize anyway are checked (shedding stays cheap).
   */
  private bodyFirst(
    refusal: unknown,
    req: GatewayRequest,
    api: OpenAiApi | undefined,
    tokenizable: boolean,
  ): never {
    if (
      tokenizable &&
      req.body.length <= BODY_FIRST_MAX_BYTES &&
      !(this.deps.preparer.offloads?.(req.body.length) ?? false)
    ) {
      readRequest(req.body, api);
    }
    throw refusal;
  }

  /**
   * A Responses API request tokenized as the chat conversation its server
   * renders (responsesAsChat), for its prefix overlap, or, when it carries
   * `nvext.token_data`, as those ids (the prompt the server then uses);
   * undefined (routed by load) when its input is not plain text messages, when
   * the tokenization queue is full, or when the chat or the ids cannot be
   * tokenized: routing it never fails.
   */
  private async responsesPrep(
    json: Record<string, unknown>,
    req: GatewayRequest,
  ): Promise<RoutePrep | undefined> {
    const ids = responsesPromptIds(json);
    const prompt = ids ?? responsesAsChat(json);
    if (!prompt) return undefined;
    try {
      admitToPrepare(this.deps.pendingPrepare?.() ?? 0, this.admission);
      const api = ids ? 'completions' : 'chat';
      return await this.deps.preparer.prepare(
        utf8.encode(JSON.stringify(prompt)),
        api,
        {
          blockSize: this.settings.blockSize,
          cacheNamespace: tenantNamespace(req.headers.get('x-tenant-id')),
          earlyExit: this.settings.earlyExit,
        },
        undefined,
        req.cancel,
      );
    } catch (e) {
      // Shed, or a conversation the tokenizer refuses: routed by load. Faults propagate.
      if (e instanceof KvEppError && ROUTE_BY_LOAD.has(e.code)) return undefined;
      throw e;
    }
  }

  /** Approximate mode: `worker` now holds `localHashes` (at once, or deferred by `deps.defer`). */
  private recordRouted(worker: WorkerRank, localHashes: BigUint64Array, nowMs: number): void {
    const soon = this.deps.recordSoonBlocks;
    if (this.approx?.offThread && soon !== undefined && localHashes.length >= soon) {
      try {
        this.approx.routeSoon(worker, localHashes, localHashes.length, nowMs);
        return;
      } catch (e) {
        // No approximate-mode thread: record on this one, as below.
        this.deps.log.warn({ err: (e as Error).message }, 'approximate-mode queue failed');
      }
    }
    const record = (): void => {
      // Records still deferred at shutdown have nowhere to go.
      if (this.disposed) return;
      try {
        this.approx?.route(worker, localHashes, localHashes.length, nowMs);
      } catch (e) {
        // Deferred, nothing above would catch it: the prediction is lost, routing goes on.
        this.deps.log.warn({ err: (e as Error).message }, 'approximate-mode record failed');
      }
    };
    if (this.deps.defer) this.deps.defer(record);
    else record();
  }

  complete(decision: RouteDecision, summary: ResponseSummary): void {
    const entry = this.byDecision.get(decision);
    if (entry === undefined) return;
    debugCompleted(this.deps.log, decision, summary);
    this.byDecision.delete(decision);
    const hp = entry.hostPort;
    const n = this.load(hp) - 1;
    if (n > 0) this.inFlight.set(hp, n);
    else this.inFlight.delete(hp);
    const h = (this.inFlightByHolder.get(entry.holder) ?? 0) - 1;
    if (h > 0) this.inFlightByHolder.set(entry.holder, h);
    else this.inFlightByHolder.delete(entry.holder);
    // The answer is the served endpoint's when the gateway says which one served
    // (one of those kv-epp listed; another is none of its business).
    const served = summary.servedEndpoint;
    const servedKey = served === undefined ? hp : (canonicalHostPort(served.trim()) ?? served);
    // A response cut short (an upstream reset after its headers, or the client
    // going away: ext_proc cannot tell them apart) is no success, so it neither
    // counts toward nor breaks a run of 5xx; a 5xx status counts either way.
    const cut = summary.responseComplete === false && (summary.status ?? 0) < 500;
    // Envoy's own cluster overflowed: the endpoint was never asked (Envoy's
    // outlier detection ignores overflow too, envoy#25487).
    if (decision.endpoints.includes(servedKey) && !cut && summary.gatewayOverflow !== true) {
      this.outliers.observe(servedKey, summary.status, this.now(), () =>
        countRoutable(this.deps.endpoints()),
      );
    }
    // The gateway fell back to another endpoint of the list: that worker now
    // holds the prompt (approximate mode); the primary's guess expires by TTL.
    const answered = summary.status === undefined || summary.status < 400;
    if (this.approx && entry.localHashes && served !== undefined && servedKey !== hp && answered) {
      const e = decision.endpoints.includes(servedKey)
        ? this.deps.endpoints().find((x) => x.hostPort === servedKey)
        : undefined;
      if (e) {
        const worker = { workerId: e.workerId, dpRank: e.dpRank };
        this.approx.route(worker, entry.localHashes, entry.localHashes.length, this.now());
      }
    }
  }
}
