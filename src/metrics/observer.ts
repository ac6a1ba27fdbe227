/**
 * Feeds EppMetrics from the routing seam without touching src/routing. What is
 * recorded when follows the GAIE EPP (pkg/epp/handlers/server.go, response.go,
 * pkg/epp/scheduling/scheduler.go):
 *
 *  - `router(r).route()` success: request total, running + 1, request size
 *    (the client's body bytes), a successful scheduling attempt (target model
 *    and primary endpoint), the scheduling span (below), kv-epp's prompt token
 *    count (`kv_epp_prompt_tokens`) and route time (`kv_epp_route_seconds`).
 *    A rejection counts an error under GAIE's code for the category the
 *    ext_proc layer answers with (classifyError → gaieErrorCode: BadRequest, …),
 *    and, if it came after the preparer had scored the request, a failed
 *    scheduling attempt.
 *  - `complete()` ends the request: running − 1; the model server's usage
 *    (`usage.prompt_tokens` → input tokens, completion tokens → output tokens,
 *    both only when > 0; cached prompt tokens when reported); and, when the
 *    response reached its end: duration since the request headers arrived,
 *    normalized time per output token, response size. Also where the gateway
 *    says it was served (`x-gateway-destination-endpoint-served` against the
 *    list sent: `kv_epp_served_endpoint_total{outcome}`).
 *  - `preparer(p)`: times each tokenize + hash + score call
 *    (`kv_epp_tokenization_seconds`, pool wait included) and marks when the
 *    request's scores were ready.
 *  - `onRouted` (KvRouter's hook): model names, kv-epp's prompt token count,
 *    the primary endpoint and its prefix overlap, and when the pick was made.
 *
 * Scheduling span (`inference_extension_scheduler_e2e_duration_seconds`):
 * GAIE times its scheduler's run (filters, scorers with the prefix match,
 * picker). kv-epp scores inside the preparer, in the same native call that
 * tokenizes, so the router reports the rest (`RoutedRequest.scheduleMs`):
 * candidates, load filters, ranking and the decision, for every request,
 * tokenized or not. It leaves out the index lookup (fused with tokenizing)
 * and includes no tokenization, pool wait or body reading. A router that
 * does not report it is timed from the preparer's result (or route()) to
 * the pick.
 *
 * Facts from the protocol layer, optional (absent: the metric is not
 * recorded, or falls back as stated): `GatewayRequest.receivedAtMs` (when
 * request_headers arrived, on this observer's clock, performance.now();
 * absent: route() start), `ResponseSummary.responseBytes`,
 * `.promptCachedTokens`, `.responseComplete` (absent: every completed stream
 * counts as a finished response).
 *
 * Errors the ext_proc layer raises before routing (an oversized body) are
 * counted by serve.ts through the stream's `onLocalReject`, with empty model labels.
 */
import { canonicalHostPort } from '../discovery/ip.js';
import { KvEppError } from '../errors.js';
import type { EventObserver } from '../events/ingest.js';
import type { EventApplyReport } from '../events/types.js';
import { modelOfBody } from '../openai/request-body.js';
import type { Preparer, RoutePrep } from '../pipeline/route-prep.js';
import type { RoutedRequest } from '../routing/kv-router.js';
import { classifyError } from '../server/ext-proc/immediate.js';
import type {
  GatewayRequest,
  RequestRouter,
  ResponseSummary,
  RouteDecision,
} from '../server/routing-types.js';
import type {
  CacheOutcome,
  EppMetrics,
  RequestSeries,
  ScheduledEndpoint,
  ServedOutcome,
} from './registry.js';

/** What onRouted saw of a decision, until route() resumes. */
interface Routed {
  model: string;
  target: string;
  /** kv-epp's prompt token count (tokenized requests). */
  promptTokens: number | undefined;
  endpoint: ScheduledEndpoint;
  /** When the pick was made (clock ms). */
  pickedAt: number;
  scheduleMs: number | undefined;
  prediction: Prediction | undefined;
}

/** The cached prefix kv-epp expected on the primary endpoint (tokenized requests). */
interface Prediction {
  /** Overlap blocks × block size. */
  tokens: number;
  /** kv-epp's prompt token count. */
  promptTokens: number | undefined;
  blockSize: number;
}

/** One request from route() to complete(). */
interface Flight {
  /** Request duration origin: headers' arrival when known, else route() start (clock ms). */
  startedAt: number;
  /** When the preparer's scores for it were ready (clock ms); -1 until then. */
  scoredAt: number;
  /**
   * Model labels from the preparer's body work, for an error after it: the
   * body may be on a worker thread by then, unreadable here.
   */
  model: string | undefined;
  target: string | undefined;
  /** Its series, once routed. */
  series: RequestSeries | undefined;
  prediction?: Prediction | undefined;
}

/** Model labels of a request that failed routing (parses the body: error path only). */
function labelsOf(req: GatewayRequest): { model: string; target: string } {
  let model = '';
  try {
    // Only the model member is parsed: a failing request (shed under load, say)
    // may carry megabytes of image data.
    model = modelOfBody(req.body);
  } catch {
    // not JSON, no model (or the body was handed to a worker thread)
  }
  const rewrite = req.headers.get('x-gateway-model-name-rewrite');
  return { model, target: rewrite !== undefined && rewrite !== '' ? rewrite : model };
}

export class MetricsObserver {
  private readonly routed = new WeakMap<RouteDecision, Routed>();
  private readonly live = new WeakMap<RouteDecision, Flight>();
  /**
   * Requests inside route(), by body: KvRouter hands `req.body` itself to the
   * preparer, which is how the preparer's timing finds its request. A router
   * that copies the body first loses only the scoring mark (span from route()).
   */
  private readonly flights = new WeakMap<Uint8Array, Flight>();

  constructor(
    private readonly metrics: EppMetrics,
    private readonly clock: () => number = () => performance.now(),
  ) {}

  /** For KvRouterDeps.onRouted. */
  readonly onRouted = (r: RoutedRequest): void => {
    const promptTokens = r.prep?.request?.tokenCount ?? r.prep?.tokens.length;
    let prediction: Prediction | undefined;
    if (r.prep) {
      const blocks = overlapOf(r.prep, r.endpoint);
      this.metrics.observePrefixOverlapBlocks(blocks);
      if (r.blockSize !== undefined) {
        prediction = { tokens: blocks * r.blockSize, promptTokens, blockSize: r.blockSize };
      }
    }
    this.routed.set(r.decision, {
      model: r.model,
      target: r.decision.targetModel ?? r.model,
      promptTokens,
      endpoint: r.endpoint,
      pickedAt: this.clock(),
      scheduleMs: r.scheduleMs,
      prediction,
    });
  };

  /** `p`, timed. */
  preparer(p: Preparer): Preparer {
    return {
      offloads: (bytes) => p.offloads?.(bytes) ?? false,
      prepare: async (body, api, s, work, cancel) => {
        const flight = this.flights.get(body);
        const t0 = this.clock();
        let scored = false;
        let dropped = false;
        try {
          const prep = await p.prepare(body, api, s, work, cancel);
          scored = true;
          if (flight !== undefined && prep.request !== undefined) {
            flight.model = prep.request.model;
            flight.target = prep.request.target ?? prep.request.model;
          }
          return prep;
        } catch (err) {
          // A task dropped while it waited was never tokenized.
          dropped = err instanceof KvEppError && err.code === 'cancelled';
          throw err;
        } finally {
          const t1 = this.clock();
          if (!dropped) this.metrics.observeTokenizationSeconds((t1 - t0) / 1000);
          if (scored && flight !== undefined) flight.scoredAt = t1;
        }
      },
    };
  }

  /** `inner`, counted. */
  router(inner: RequestRouter): RequestRouter {
    const m = this.metrics;
    return {
      route: async (req) => {
        const t0 = this.clock();
        const received = req.receivedAtMs;
        // Read before routing: the router may transfer the body to a worker (detaching it).
        const body = req.body;
        const bytes = body.byteLength;
        const flight: Flight = {
          startedAt: received ?? t0,
          scoredAt: -1,
          model: undefined,
          target: undefined,
          series: undefined,
        };
        this.flights.set(body, flight);
        let decision: RouteDecision;
        try {
          decision = await inner.route(req);
        } catch (err) {
          if (err instanceof KvEppError && err.code === 'cancelled') {
            m.requestCancelled(req.cancel?.reason ?? 'abandoned');
            throw err;
          }
          const { model, target } =
            flight.model !== undefined && flight.target !== undefined
              ? { model: flight.model, target: flight.target }
              : labelsOf(req);
          m.requestError(model, target, classifyError(err).category);
          if (flight.scoredAt >= 0) {
            m.observeSchedulerSeconds((this.clock() - flight.scoredAt) / 1000);
            m.schedulerAttemptFailed(model, target);
          }
          throw err;
        } finally {
          this.flights.delete(body);
        }
        const t1 = this.clock();
        m.observeRouteSeconds((t1 - t0) / 1000);
        const r = this.routed.get(decision);
        let s: RequestSeries;
        if (r !== undefined) {
          this.routed.delete(decision);
          flight.prediction = r.prediction;
          s = m.requestSeries(r.model, r.target);
          const from = flight.scoredAt >= 0 ? flight.scoredAt : t0;
          m.observeSchedulerSeconds((r.scheduleMs ?? r.pickedAt - from) / 1000);
          s.scheduled(r.endpoint);
          if (r.promptTokens !== undefined) s.kvEppPromptTokens.observe(r.promptTokens);
        } else {
          // A router without onRouted: no pick time, no endpoint.
          s = m.requestSeries(
            decision.clientModel ?? decision.targetModel ?? '',
            decision.targetModel ?? '',
          );
          m.observeSchedulerSeconds((t1 - t0) / 1000);
          s.scheduled(undefined);
        }
        s.requests.inc();
        s.running.inc();
        s.requestSizes.observe(bytes);
        flight.series = s;
        this.live.set(decision, flight);
        return decision;
      },
      routeHeaderOnly: (req) => {
        try {
          return inner.routeHeaderOnly(req);
        } catch (err) {
          m.requestError('', '', classifyError(err).category);
          throw err;
        }
      },
      complete: (decision: RouteDecision, summary: ResponseSummary) => {
        try {
          inner.complete?.(decision, summary);
        } finally {
          const f = this.live.get(decision);
          if (f?.series !== undefined) {
            this.live.delete(decision);
            this.finish(f.series, f.startedAt, summary);
            const served = servedOutcome(decision.endpoints, summary.servedEndpoint);
            m.servedEndpoint(served);
            const p = f.prediction;
            const reported = summary.promptCachedTokens;
            // Judged only where the prediction was made: the primary served it.
            if (p && reported !== undefined && (served === 'primary' || served === 'unreported')) {
              m.cachePrediction(
                cacheOutcome(p.tokens, reported, p.promptTokens, p.blockSize),
                p.tokens,
                reported,
              );
            }
          }
        }
      },
    };
  }

  /** GAIE's response-side records (HandleResponseBody and the stream's end). */
  private finish(s: RequestSeries, startedAt: number, summary: ResponseSummary): void {
    s.running.dec();
    const facts = summary;
    const prompt = summary.promptTokens;
    if (prompt !== undefined && prompt > 0) s.inputTokens.observe(prompt);
    const output = summary.completionTokens ?? 0;
    if (output > 0) s.outputTokens.observe(output);
    if (facts.promptCachedTokens !== undefined)
      s.promptCachedTokens.observe(facts.promptCachedTokens);
    if (facts.responseComplete === false) return;
    const seconds = (this.clock() - startedAt) / 1000;
    if (seconds > 0) {
      s.duration.observe(seconds);
      if (output > 0) s.timePerOutputToken.observe(seconds / output);
    }
    if (facts.responseBytes !== undefined) s.responseSizes.observe(facts.responseBytes);
  }
}

/** Where the gateway says it sent the request, relative to the list it was given. */
export function servedOutcome(
  endpoints: readonly string[],
  served: string | undefined,
): ServedOutcome {
  if (served === undefined || served === '') return 'unreported';
  // kv-epp lists endpoints in canonical form; the gateway may write one otherwise
  // ("[0:0:0:0:0:0:0:1]:8000"), which the router counts as the same endpoint.
  const i = endpoints.indexOf(canonicalHostPort(served.trim()) ?? served);
  if (i === 0) return 'primary';
  return i > 0 ? 'fallback' : 'other';
}

/**
 * A predicted cached prefix (`predicted` tokens, whole blocks) against the one
 * the model server reported. An engine computes at least a prompt's last
 * token, so for a prompt of whole blocks predicted whole it may report one
 * block less: that is a hit too.
 */
export function cacheOutcome(
  predicted: number,
  reported: number,
  promptTokens: number | undefined,
  blockSize: number,
): CacheOutcome {
  if (reported === predicted) return 'hit';
  const wholePrompt =
    promptTokens !== undefined &&
    promptTokens > 0 &&
    promptTokens % blockSize === 0 &&
    predicted === promptTokens;
  if (wholePrompt && reported === predicted - blockSize) return 'hit';
  return reported > predicted ? 'under' : 'over';
}

/** Prefix depth the index reported for `endpoint` (0 when it holds none). */
function overlapOf(prep: RoutePrep, endpoint: RoutedRequest['endpoint']): number {
  const { workers, blocks } = prep.overlap;
  for (let i = 0; i < workers.length; i++) {
    const w = workers[i];
    if (w !== undefined && w.workerId === endpoint.workerId && w.dpRank === endpoint.dpRank) {
      return blocks[i] ?? 0;
    }
  }
  return 0;
}

/** EventIngest's observer: KV-event metrics. */
export function eventMetricsObserver(metrics: EppMetrics): EventObserver {
  return {
    applied(r: EventApplyReport, lagMs: number | undefined) {
      metrics.eventMessage(
        {
          applied: r.applied,
          blocksStored: r.blocksStored,
          blocksRemoved: r.blocksRemoved,
          rejected: r.rejected,
          gaps: r.gaps.length,
          publisherGap: r.publisherGap !== null,
          resets: r.resets.length,
        },
        lagMs === undefined ? undefined : lagMs / 1000,
      );
    },
    dropped(messages: number) {
      metrics.eventsDroppedInc(messages);
    },
  };
}
