/**
 * Where a worker's local-indexer query endpoint is, from Dynamo 1.6.1's file
 * discovery (`DYN_FILE_KV`; dynamo-runtime `storage/kv/file.rs`,
 * `discovery/kv_store.rs`).
 *
 * A `KvEventPublisher` with the local indexer on advertises one record per
 * (worker, dp rank) under `<root>/v1/event_sources/`, file name = the key
 * `namespace/<ns>/component/<c>/endpoint/<e>/topic/kv-events/<publisher_id hex>`
 * percent-encoded. Its JSON (`DiscoverySpec::EventSource`) carries
 * `metadata` = dynamo-llm's `DiscoveredKvEventSource`:
 * `{kv_state_endpoint, worker: {worker_id, dp_rank}, publisher_id,
 * recovery_target: Instance | null}`, and the recovery target's
 * `transport: {"tcp": "host:port/<instance hex>/<ns>/<c>/<endpoint>"}` is the
 * request-plane address plus the endpoint path the worker dispatches on.
 * A live owner re-touches its files every few seconds; files older than the
 * store's TTL (10 s) belong to dead processes and are skipped, as are
 * `.tmp_*` files (atomic writes in progress).
 *
 * The records hold u64s above 2^53: they are parsed with a reviver that
 * reads each integer from its source text (`JSON.parse` source access,
 * Node >= 21), never through a double.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { WorkerQueryError } from './errors.js';

/** dynamo-runtime `storage/kv/file.rs` `DEFAULT_TTL`. */
const FILE_KV_TTL_MS = 10_000;

export interface EndpointId {
  namespace: string;
  component: string;
  name: string;
}

export interface RecoveryTarget {
  workerId: bigint;
  dpRank: number;
  /** The event-plane publisher (envelope `publisher_id`) this record belongs to. */
  publisherId: bigint;
  /** The worker's runtime instance (connection) id. */
  instanceId: bigint;
  host: string;
  port: number;
  /** Request-plane endpoint path: `<instance hex>/<ns>/<component>/<endpoint>`. */
  endpointPath: string;
  /** `request_plane_codec` the worker advertised (`msgpack` in 1.6.1; absent = legacy JSON-only). */
  codec: string | null;
  kvStateEndpoint: EndpointId;
  /** The discovery file, and its mtime. */
  file: string;
  mtimeMs: number;
}

type Json = null | boolean | bigint | number | string | Json[] | { [k: string]: Json };

/** Node >= 21 hands revivers the source text of each value (exact integers); Node 20 does not. */
const HAS_SOURCE_ACCESS =
  JSON.parse(
    '1',
    ((_k: string, _v: unknown, ctx?: { source?: string }) => ctx?.source) as (
      k: string,
      v: unknown,
    ) => unknown,
  ) === '1';
/** Marks an integer literal quoted by `quoteIntegers` (a control character JSON strings cannot hold raw). */
const INT_MARK = '\u0001';

/**
 * For Node 20: every integer literal outside strings becomes a marked
 * string (`123` → `"\u0001123"`), so JSON.parse cannot round it.
 */
function quoteIntegers(text: string): string {
  let out = '';
  let i = 0;
  let from = 0;
  while (i < text.length) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      // Skip a string, honouring escapes.
      i++;
      while (i < text.length && text.charCodeAt(i) !== 0x22)
        i += text.charCodeAt(i) === 0x5c ? 2 : 1;
      i++;
      continue;
    }
    if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
      let j = i + 1;
      while (j < text.length && /[0-9.eE+-]/.test(text[j] as string)) j++;
      const tok = text.slice(i, j);
      if (/^-?\d+$/.test(tok)) {
        out += `${text.slice(from, i)}"\\u0001${tok}"`;
        from = j;
      }
      i = j;
      continue;
    }
    i++;
  }
  return out + text.slice(from);
}

/** JSON.parse with every integer literal as an exact bigint. */
export function parseJsonExact(text: string): Json {
  if (!HAS_SOURCE_ACCESS) {
    return parseJsonExactByQuoting(text);
  }
  const reviver = (_k: string, v: unknown, ctx?: { source?: string }): unknown => {
    if (typeof v === 'number' && ctx?.source !== undefined && /^-?\d+$/.test(ctx.source)) {
      return BigInt(ctx.source);
    }
    return v;
  };
  return JSON.parse(text, reviver as (k: string, v: unknown) => unknown) as Json;
}

/** Exposed for tests: the Node 20 path on any Node. */
export function parseJsonExactByQuoting(text: string): Json {
  return JSON.parse(quoteIntegers(text), (_k, v: unknown) =>
    typeof v === 'string' && v.startsWith(INT_MARK) && DIGITS.test(v.slice(1))
      ? BigInt(v.slice(1))
      : v,
  ) as Json;
}
/** What follows the mark of a quoted integer (a document string that merely starts with U+0001 stays a string). */
const DIGITS = /^-?\d+$/;

const obj = (v: Json | undefined): { [k: string]: Json } | null =>
  v !== null && typeof v === 'object' && !Array.isArray(v) ? v : null;
const str = (v: Json | undefined): string | null => (typeof v === 'string' ? v : null);
const big = (v: Json | undefined): bigint | null => (typeof v === 'bigint' && v >= 0n ? v : null);

/** `host:port` or `[v6]:port`, optionally `tcp://`-prefixed, then `/path`. */
export function parseTcpAddress(address: string): { host: string; port: number; path: string } {
  const a = address.startsWith('tcp://') ? address.slice(6) : address;
  const slash = a.indexOf('/');
  if (slash < 0) throw new WorkerQueryError('invalid_argument', `no endpoint path in ${address}`);
  const sock = a.slice(0, slash);
  const path = a.slice(slash + 1);
  const colon = sock.lastIndexOf(':');
  let host = sock.slice(0, colon);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  const port = Number(sock.slice(colon + 1));
  if (colon <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535 || path === '') {
    throw new WorkerQueryError('invalid_argument', `malformed request-plane address ${address}`);
  }
  return { host, port, path };
}

function endpointOf(v: Json | undefined): EndpointId | null {
  const o = obj(v);
  const namespace = str(o?.namespace);
  const component = str(o?.component);
  const name = str(o?.name);
  return namespace !== null && component !== null && name !== null
    ? { namespace, component, name }
    : null;
}

/** A record as a recovery target; null when it is not a KV source with a TCP recovery target. */
function targetOf(doc: Json, file: string, mtimeMs: number): RecoveryTarget | null {
  const d = obj(doc);
  if (d?.type !== 'EventSource' || d.topic !== 'kv-events') return null;
  const meta = obj(d.metadata);
  const worker = obj(meta?.worker);
  const workerId = big(worker?.worker_id);
  const dpRank = big(worker?.dp_rank);
  const publisherId = big(meta?.publisher_id) ?? big(d.publisher_id);
  const kvStateEndpoint = endpointOf(meta?.kv_state_endpoint);
  const rt = obj(meta?.recovery_target);
  const tcp = str(obj(rt?.transport)?.tcp);
  const instanceId = big(rt?.instance_id);
  if (
    workerId === null ||
    dpRank === null ||
    publisherId === null ||
    kvStateEndpoint === null ||
    tcp === null ||
    instanceId === null
  ) {
    return null;
  }
  const { host, port, path } = parseTcpAddress(tcp);
  return {
    workerId,
    dpRank: Number(dpRank),
    publisherId,
    instanceId,
    host,
    port,
    endpointPath: path,
    codec: str(rt?.request_plane_codec),
    kvStateEndpoint,
    file,
    mtimeMs,
  };
}

export interface ListOptions {
  /** Include records older than the store TTL (dead owners). Default false. */
  includeStale?: boolean;
  /** Clock for the staleness check (tests). */
  nowMs?: number;
}

/** Every live KV event source in `root` (the `DYN_FILE_KV` directory) that has a TCP recovery target. */
export function listRecoveryTargets(root: string, opts: ListOptions = {}): RecoveryTarget[] {
  const dir = join(root, 'v1', 'event_sources');
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new WorkerQueryError('discovery', `cannot read ${dir}: ${(e as Error).message}`);
  }
  const now = opts.nowMs ?? Date.now();
  const out: RecoveryTarget[] = [];
  for (const name of names) {
    if (name.startsWith('.tmp_')) continue;
    const file = join(dir, name);
    let text: string;
    let mtimeMs: number;
    try {
      mtimeMs = statSync(file).mtimeMs;
      text = readFileSync(file, 'utf8');
    } catch {
      continue; // expired and removed between readdir and read
    }
    if (!opts.includeStale && now - mtimeMs > FILE_KV_TTL_MS) continue;
    let doc: Json;
    try {
      doc = parseJsonExact(text);
    } catch {
      continue; // a partial write by a non-atomic writer; the next look sees it whole
    }
    // One malformed record must not hide the others.
    let t: RecoveryTarget | null;
    try {
      t = targetOf(doc, file, mtimeMs);
    } catch {
      continue;
    }
    if (t) out.push(t);
  }
  return out;
}

/**
 * The recovery target of one (worker, dp rank): the most recently touched
 * live record when several match (a restarted worker's old record lingers
 * until its TTL runs out). Optionally restricted to one KV-state endpoint;
 * `targets` (a recent `listRecoveryTargets` of `root`) saves reading the directory.
 * Throws `no_recovery_target` when there is none.
 */
export function findRecoveryTarget(
  root: string,
  workerId: bigint,
  dpRank: number,
  opts: ListOptions & { kvStateEndpoint?: EndpointId; targets?: readonly RecoveryTarget[] } = {},
): RecoveryTarget {
  const ep = opts.kvStateEndpoint;
  const matches = (opts.targets ?? listRecoveryTargets(root, opts)).filter(
    (t) =>
      t.workerId === workerId &&
      t.dpRank === dpRank &&
      (!ep ||
        (t.kvStateEndpoint.namespace === ep.namespace &&
          t.kvStateEndpoint.component === ep.component &&
          t.kvStateEndpoint.name === ep.name)),
  );
  if (matches.length === 0) {
    throw new WorkerQueryError(
      'no_recovery_target',
      `no live KV event source with a recovery target for worker ${workerId} dp rank ${dpRank} in ${root}`,
    );
  }
  matches.sort((a, b) => b.mtimeMs - a.mtimeMs);
  return matches[0] as RecoveryTarget;
}
