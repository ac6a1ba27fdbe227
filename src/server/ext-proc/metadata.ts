/**
 * The Endpoint Picker Protocol's metadata (gaie-epp.md §1.1): the subset hint
 * the data plane sends with the request, the destination the EPP returns as
 * dynamic metadata, and the endpoint actually served that comes back with the
 * response.
 */
import {
  DESTINATION_ENDPOINT_KEY,
  DESTINATION_ENDPOINT_NAMESPACE,
  DESTINATION_ENDPOINT_SERVED_KEY,
  type Metadata,
  type ProtoStruct,
  type ProtoValue,
  SUBSET_HINT_KEY,
  SUBSET_HINT_NAMESPACE,
} from './messages.js';

function field(
  md: Metadata | null | undefined,
  namespace: string,
  key: string,
): ProtoValue | undefined {
  return md?.filter_metadata?.[namespace]?.fields?.[key] ?? undefined;
}

/**
 * Most entries a subset hint keeps (any pool has fewer endpoints); more are
 * dropped unread, so a hint's cost per message stays bounded.
 */
export const MAX_SUBSET_HINT_ENTRIES = 65_536;

function splitCommas(s: string, out: string[]): void {
  for (const part of s.split(',', MAX_SUBSET_HINT_ENTRIES - out.length)) {
    const t = part.trim();
    if (t) out.push(t);
  }
}

/**
 * The subset hint in `md`: `undefined` when the key is absent, otherwise its
 * entries (a list of strings, or one comma-separated string; entries of a list
 * may themselves hold commas). An empty list is a real answer: no endpoint may
 * be used.
 */
export function readSubsetHint(md: Metadata | null | undefined): string[] | undefined {
  const v = field(md, SUBSET_HINT_NAMESPACE, SUBSET_HINT_KEY);
  if (!v) return undefined;
  const out: string[] = [];
  if (v.listValue) {
    for (const item of v.listValue.values ?? []) {
      if (out.length >= MAX_SUBSET_HINT_ENTRIES) break;
      if (typeof item.stringValue === 'string') splitCommas(item.stringValue, out);
    }
  } else if (typeof v.stringValue === 'string') {
    splitCommas(v.stringValue, out);
  } else {
    return undefined;
  }
  return out;
}

/**
 * Merges a hint from one more request-phase message into what earlier
 * messages said: union in first-seen order, at most MAX_SUBSET_HINT_ENTRIES;
 * absent stays absent. Linear in the two lists: Envoy repeats the same hint
 * on every body chunk, and that case returns `prev` after one comparison.
 */
export function mergeSubsetHint(
  prev: string[] | undefined,
  next: string[] | undefined,
): string[] | undefined {
  if (next === undefined) return prev;
  if (prev === undefined) return next;
  if (next.length <= prev.length && next.every((e, i) => prev[i] === e)) return prev;
  const seen = new Set(prev);
  for (const e of next) {
    if (prev.length >= MAX_SUBSET_HINT_ENTRIES) break;
    if (!seen.has(e)) {
      seen.add(e);
      prev.push(e);
    }
  }
  return prev;
}

/** `envoy.lb` / `x-gateway-destination-endpoint-served` on a response-phase message. */
export function readServedEndpoint(md: Metadata | null | undefined): string | undefined {
  const v = field(md, DESTINATION_ENDPOINT_NAMESPACE, DESTINATION_ENDPOINT_SERVED_KEY);
  return typeof v?.stringValue === 'string' && v.stringValue ? v.stringValue : undefined;
}

/** `{"envoy.lb": {"x-gateway-destination-endpoint": value}}` as a Struct. */
export function destinationMetadata(value: string): ProtoStruct {
  return {
    fields: {
      [DESTINATION_ENDPOINT_NAMESPACE]: {
        structValue: { fields: { [DESTINATION_ENDPOINT_KEY]: { stringValue: value } } },
      },
    },
  };
}
