/**
 * Feeds EppMetrics from the routing seam without touching src/routing:
 *
 *  - `onRouted` (KvRouter's hook): model names, prompt token count and the
 *    chosen endpoint's prefix overlap for each routed request;
 *  - `preparer(p)`: times each tokenize + hash + score call
 *    (`kv_epp_tokenization_seconds`);
 *  - `router(r)`: wraps a RequestRouter. `route()` success counts the request
 *    (total, running) and its wall time (`inference_extension_scheduler_e2e_duration_seconds`:
 *    body parse, tokenization, scoring and picking); a rejection counts an
 *    error under the GAIE category the ext_proc layer answers with
 *    (classifyError: BadRequest, ServiceUnavailable, …). `complete()` ends
 *    the request: running − 1, duration since route() started, output tokens,
 *    and where the gateway says it was served (`x-gateway-destination-endpoint-served`
 *    against the list sent: `kv_epp_served_endpoint_total{outcome}`).
 *
 * Errors the ext_proc layer raises before routing (an oversized body) are
 * counted by serve.ts through the stream's `onLocalReject`, with empty model labels.
 */
import type { EventObserver } from '../events/ingest.js';
import type { EventApplyReport } from '../events/types.js';
import type { Preparer, RoutePrep } from '../pipeline/route-prep.js';
import type { RoutedRequest } from '../routing/kv-router.js';
import { classifyError } from '../server/ext-proc/immediate.js';
import type {
  GatewayRequest,
  RequestRouter,
  ResponseSummary,
  RouteDecision,
} from '../server/routing-types.js';
import type { EppMetrics, ServedOutcome } from './registry.js';

interface Routed {
  model: string;
  target: string;
  inputTokens: number | undefined;
}

interface Live extends Routed {
  startedAt: number;
}

/** Model labels of a request that failed routing (parses the body: error path only). */
function labelsOf(req: GatewayRequest): { model: string; target: string } {
  let model = '';
  try {
    const v: unknown = JSON.parse(new TextDecoder().decode(req.body));
    const m = (v as { model?: unknown } | null)?.model;
    if (typeof m === 'string') model = m;
  } catch {
    // not JSON: no model
  }
  const rewrite = req.headers.get('x-gateway-model-name-rewrite');
  return { model, target: rewrite !== undefined && rewrite !== '' ? rewrite : model };
}

export class MetricsObserver {
  private readonly routed = new WeakMap<RouteDecision, Routed>();
  private readonly live = new WeakMap<RouteDecision, Live>();

  constructor(
    private readonly metrics: EppMetrics,
    private readonly clock: () => number = () => performance.now(),
  ) {}

  /** For KvRouterDeps.onRouted. */
  readonly onRouted = (r: RoutedRequest): void => {
    const target = r.decision.targetModel ?? r.model;
    const inputTokens = r.prep?.request?.tokenCount ?? r.prep?.tokens.length;
    this.routed.set(r.decision, { model: r.model, target, inputTokens });
    if (r.prep) this.metrics.observePrefixOverlapBlocks(overlapOf(r.prep, r.endpoint));
  };

  /** `p`, timed. */
  preparer(p: Preparer): Preparer {
    return {
      offloads: (bytes) => p.offloads?.(bytes) ?? false,
      prepare: async (body, api, s, work) => {
        const t0 = this.clock();
        try {
          return await p.prepare(body, api, s, work);
        } finally {
          this.metrics.observeTokenizationSeconds((this.clock() - t0) / 1000);
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
        let decision: RouteDecision;
        try {
          decision = await inner.route(req);
        } catch (err) {
          const { model, target } = labelsOf(req);
          m.requestError(model, target, classifyError(err).category);
          throw err;
        }
        m.observeSchedulerSeconds((this.clock() - t0) / 1000);
        const r = this.routed.get(decision) ?? {
          model: decision.clientModel ?? decision.targetModel ?? '',
          target: decision.targetModel ?? '',
          inputTokens: undefined,
        };
        this.routed.delete(decision);
        m.requestStarted(r.model, r.target);
        if (r.inputTokens !== undefined) m.observeInputTokens(r.model, r.target, r.inputTokens);
        this.live.set(decision, { ...r, startedAt: t0 });
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
          const r = this.live.get(decision);
          if (r !== undefined) {
            this.live.delete(decision);
            m.requestFinished(r.model, r.target, (this.clock() - r.startedAt) / 1000);
            if (r.inputTokens === undefined && summary.promptTokens !== undefined) {
              m.observeInputTokens(r.model, r.target, summary.promptTokens);
            }
            if (summary.completionTokens !== undefined) {
              m.observeOutputTokens(r.model, r.target, summary.completionTokens);
            }
            m.servedEndpoint(servedOutcome(decision.endpoints, summary.servedEndpoint));
          }
        }
      },
    };
  }
}

/** Where the gateway says it sent the request, relative to the list it was given. */
export function servedOutcome(
  endpoints: readonly string[],
  served: string | undefined,
): ServedOutcome {
  if (served === undefined || served === '') return 'unreported';
  const i = endpoints.indexOf(served);
  if (i === 0) return 'primary';
  return i > 0 ? 'fallback' : 'other';
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
