/**
 * The seam between the ext_proc protocol layer (src/server/ext-proc/) and
 * routing. The protocol layer knows gRPC, Envoy messages and HTTP; the router
 * knows OpenAI bodies, tokenization, the index and endpoints. Pure types.
 */

/** One HTTP request as the gateway showed it to the EPP, body complete. */
export interface GatewayRequest {
  /** Lower-cased header names; the first value wins for repeated names. */
  headers: ReadonlyMap<string, string>;
  /** `:path` (e.g. `/v1/chat/completions`), `''` when absent. */
  path: string;
  /** `:method`, `''` when absent. */
  method: string;
  /** The complete request body (empty for header-only requests). */
  body: Uint8Array;
  /**
   * The body's ArrayBuffer belongs to this request alone and nobody reads it
   * after `route()` hands it on: the router may transfer it to a worker thread
   * (it is then detached here) instead of copying it.
   */
  bodyTransferable?: boolean | undefined;
  /**
   * Endpoints the gateway allows (`envoy.lb.subset_hint` /
   * `x-gateway-destination-endpoint-subset`, list or comma string); undefined = no hint.
   * Entries are `ip:port` or a bare `ip` (= every port of that ip).
   */
  subset?: readonly string[] | undefined;
  /** `x-request-id`, generated when the client sent none. */
  requestId: string;
  /** When the request headers arrived (`performance.now()`, ms). */
  receivedAtMs?: number | undefined;
  /** Set when the gateway abandons the request while it is being routed. */
  cancel?: Cancellation | undefined;
}

/**
 * Why a request's answer will never be sent: the gateway abandoned it (stream
 * reset, cancelled, connection lost), or kv-epp failed its ext_proc stream
 * (a protocol violation, such as too much sent while it was routed).
 */
export type CancelReason = 'abandoned' | 'stream_failed';

/**
 * A request whose answer will never be sent, decided while it is routed. The
 * protocol layer sets `reason`, then `cancelled`, once, and then calls
 * `onCancel`, which whoever holds droppable work for the request (a queued
 * tokenization task) sets; a router seeing `cancelled` may stop and reject
 * with KvEppError `cancelled` (never sent: nobody is listening).
 */
export interface Cancellation {
  cancelled: boolean;
  reason?: CancelReason | undefined;
  onCancel: (() => void) | undefined;
}

/** Where to send the request and how to change it. */
export interface RouteDecision {
  /** `ip:port`, primary first, then fallbacks (at least one). */
  endpoints: string[];
  /** Extra request headers to set (overwriting), e.g. `x-dynamo-worker-instance-id`. */
  setHeaders: Record<string, string>;
  /** Request headers to remove (client-sent routing headers that must not reach the worker). */
  removeHeaders: string[];
  /** The body to forward (may be the original bytes). */
  body: Uint8Array;
  /** When the body's model was rewritten: the name the client sent, to restore in responses. */
  clientModel?: string | undefined;
  /** The model name the worker sees (after rewrite). */
  targetModel?: string | undefined;
}

/** What the protocol layer reports back when the response completes. */
export interface ResponseSummary {
  requestId: string;
  /** `x-gateway-destination-endpoint-served` from the response metadata, if sent. */
  servedEndpoint?: string | undefined;
  status?: number | undefined;
  promptTokens?: number | undefined;
  completionTokens?: number | undefined;
  /** The server's `cached_tokens` of the prompt, when its usage carried it. */
  promptCachedTokens?: number | undefined;
  /** Response body bytes from the model server (before any model restore). */
  responseBytes?: number | undefined;
  /** false when the stream ended before the response did (client gone, error, no response). */
  responseComplete?: boolean | undefined;
  /**
   * The gateway answered itself because its own cluster overflowed (Envoy's
   * circuit breakers: `x-envoy-overloaded`, or its local reply "…reset reason:
   * overflow"): no verdict on the endpoint, as Envoy's outlier detection holds.
   */
  gatewayOverflow?: boolean | undefined;
}

export interface RequestRouter {
  /**
   * Decides the destination of a request with a body. Throws KvEppError:
   * request problems (invalid_json, invalid_request, unsupported_content,
   * template_error) → 400; no_endpoint → 503; overloaded → 429;
   * body_too_large → 413; anything else → 500.
   */
  route(req: GatewayRequest): Promise<RouteDecision>;
  /** A header-only request (e.g. `GET /v1/models`): any ready endpoint within the subset. */
  routeHeaderOnly(req: GatewayRequest): RouteDecision;
  /** Called once per stream whose response finished (or was abandoned). */
  complete?(decision: RouteDecision, summary: ResponseSummary): void;
}
