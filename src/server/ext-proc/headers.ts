/**
 * Reading header maps from the data plane and writing header mutations back.
 *
 * Envoy lower-cases keys and puts values in `raw_value`; NGINX Gateway Fabric's
 * shim sends Go-canonical keys (`Content-Type`) with values in `value`. Both
 * read the same here. Mutations always use `raw_value` (NGF reads only that)
 * and OVERWRITE_IF_EXISTS_OR_ADD, so a header the client sent is replaced, not
 * duplicated.
 */
import { AppendAction, type HeaderMap, type HeaderValueOption } from './messages.js';

const utf8 = new TextDecoder();
const encoder = new TextEncoder();

/**
 * Adds the entries of `map` to `into` with lower-cased keys; a name already
 * present keeps its first value.
 */
export function readHeaderMap(
  map: HeaderMap | null | undefined,
  into: Map<string, string> = new Map(),
): Map<string, string> {
  const list = map?.headers;
  if (!list) return into;
  for (const h of list) {
    if (!h.key) continue;
    const key = h.key.toLowerCase();
    if (into.has(key)) continue;
    const raw = h.raw_value;
    into.set(key, raw && raw.length > 0 ? utf8.decode(raw) : (h.value ?? ''));
  }
  return into;
}

/**
 * UTF-8 of header values seen before. Most values repeat across requests
 * (endpoint, worker id, rank, routing mode, content-length), and encoding
 * each anew made a small off-heap buffer per header per request for the GC to
 * sweep. Bounded (cleared when full); the bytes are shared, so nothing may
 * write into a mutation's `raw_value`.
 */
const valueBytes = new Map<string, Uint8Array>();
const MAX_VALUES = 4096;

function encodeValue(value: string): Uint8Array {
  const known = valueBytes.get(value);
  if (known !== undefined) return known;
  const bytes = encoder.encode(value);
  if (valueBytes.size >= MAX_VALUES) valueBytes.clear();
  valueBytes.set(value, bytes);
  return bytes;
}

/** One `set_headers` entry that replaces any existing value (`raw_value` shared: read only). */
export function setHeader(key: string, value: string, unique = false): HeaderValueOption {
  return {
    header: {
      key: key.toLowerCase(),
      raw_value: unique ? encoder.encode(value) : encodeValue(value),
    },
    append_action: AppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
  };
}
