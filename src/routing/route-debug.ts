/**
 * The router's per-request debug lines (`KV_EPP_LOG_LEVEL=debug`, `-v 3`,
 * `--zap-log-level=debug`): the decision (`request routed`) and the response's
 * outcome (`request completed`), each carrying the request's `requestId`.
 * Hot path: when debug is off, each costs one level check and builds nothing.
 */
import type { Endpoint } from '../discovery/endpoints.js';
import { type Logger, levelEnabled } from '../log/logger.js';
import type { RoutePrep } from '../pipeline/route-prep.js';
import type { GatewayRequest, ResponseSummary, RouteDecision } from '../server/routing-types.js';

/** Prefix depth the index reported for `e`, and the deepest of any holder (blocks). */
function overlapBlocks(prep: RoutePrep, e: Endpoint): { chosen: number; best: number } {
  const { workers, blocks } = prep.overlap;
  let chosen = 0;
  let best = 0;
  for (let i = 0; i < workers.length; i++) {
    const n = blocks[i] ?? 0;
    if (n > best) best = n;
    const w = workers[i];
    if (w !== undefined && w.workerId === e.workerId && w.dpRank === e.dpRank) chosen = n;
  }
  return { chosen, best };
}

/** After `route()` decided: where the request goes and why (its prompt's overlap there). */
export function debugRouted(
  log: Logger,
  req: GatewayRequest,
  decision: RouteDecision,
  primary: Endpoint,
  prep: RoutePrep | undefined,
  model: string,
): void {
  if (!levelEnabled(log, 'debug')) return;
  const overlap = prep === undefined ? undefined : overlapBlocks(prep, primary);
  log.debug(
    {
      requestId: req.requestId,
      endpoint: primary.hostPort,
      fallbacks: decision.endpoints.slice(1),
      workerId: primary.workerId,
      dpRank: primary.dpRank,
      model,
      targetModel: decision.targetModel,
      // Not tokenized (embeddings, content a text tokenizer cannot take): routed by load alone.
      tokens: prep === undefined ? undefined : (prep.request?.tokenCount ?? prep.tokens.length),
      blocks: prep?.localHashes.length,
      overlapBlocks: overlap?.chosen,
      bestOverlapBlocks: overlap?.best,
    },
    'request routed',
  );
}

/** When the stream of a routed request ended: what the gateway and the worker reported. */
export function debugCompleted(log: Logger, decision: RouteDecision, s: ResponseSummary): void {
  if (!levelEnabled(log, 'debug')) return;
  log.debug(
    {
      requestId: s.requestId,
      endpoint: decision.endpoints[0],
      servedEndpoint: s.servedEndpoint,
      status: s.status,
      promptTokens: s.promptTokens,
      promptCachedTokens: s.promptCachedTokens,
      completionTokens: s.completionTokens,
      responseBytes: s.responseBytes,
      responseComplete: s.responseComplete,
    },
    'request completed',
  );
}
