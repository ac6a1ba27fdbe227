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

/** One `set_headers` entry that replaces any existing value. */
export function setHeader(key: string, value: string): HeaderValueOption {
  return {
    header: { key: key.toLowerCase(), raw_value: encoder.encode(value) },
    append_action: AppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
  };
}
