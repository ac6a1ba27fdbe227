/**
 * Client headers that could pin a worker, never honoured: the gateway's
 * destination headers, every `x-dynamo-*`, and the unprefixed names Dynamo's
 * frontend also reads (`apply_header_routing_overrides`: worker and prefill
 * instance ids, data-parallel ranks). Pure.
 */
const ROUTING_HEADER =
  /^(x-dynamo-|x-gateway-destination-endpoint|(x-worker-instance-id|x-prefill-instance-id|x-dp-rank|x-data-parallel-rank|x-prefill-dp-rank)$)/;
/** Client `x-dynamo-*` headers that do not route: Dynamo's request id (its response `id`, worker logs). */
const PASSED_DYNAMO_HEADERS = new Set(['x-dynamo-request-id']);

/** Of the (lower-case) header names a client sent, those to remove before the request goes on. */
export function clientRoutingHeaders(names: Iterable<string>): string[] {
  const out: string[] = [];
  for (const k of names) if (ROUTING_HEADER.test(k) && !PASSED_DYNAMO_HEADERS.has(k)) out.push(k);
  return out;
}
