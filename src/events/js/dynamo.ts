/**
 * Dynamo 1.6.1 KV events: the event-plane envelope and `RouterEvent`.
 * Mirrors native/core/src/events/dynamo.rs (wire shapes and Dynamo source
 * references are in its header):
 * ```text
 * envelope    {publisher_id, sequence, published_at, topic, payload: bin}  (or positional)
 * payload     [RouterEvent, ...]
 * RouterEvent {worker_id, storage_tier = device, residency_domain?, event: KvCacheEvent,
 *              state_source?, session_id?}
 * KvCacheEvent {event_id, data: {"stored": {...}} | {"removed": {...}} | "cleared", dp_rank = 0}
 * ```
 * A negative integer where a hash is expected is cast bitwise to u64 (Dynamo
 * rejects it); `state_source` is skipped without validation.
 */
import {
  attempt,
  type Decoded,
  fail,
  fields,
  hashesOf,
  hashOf,
  optStr,
  optU32,
  parseBlockExtraInfo,
  u32Of,
  u64Of,
  unit,
  variant,
} from './decode.js';
import { parseJson } from './json.js';
import { asArray, asStr, asU64, bytesAre, readFirst, utf8Text, type Value } from './msgpack.js';

/** `StorageTier` (protocols.rs:490). */
export type Tier = 'device' | 'host_pinned' | 'disk' | 'external';

/** `StorageTier::from_kv_medium` (protocols.rs:878). */
export function tierFromKvMedium(medium: string): Tier | null {
  switch (medium) {
    case 'GPU':
    case 'DEVICE':
      return 'device';
    case 'CPU':
    case 'CPU_PINNED':
    case 'CPU_TIER1':
      return 'host_pinned';
    case 'CPU_TIER2':
    case 'DISK':
    case 'NVME':
    case 'STORAGE':
      return 'disk';
    case 'EXTERNAL':
    case 'NETWORK':
    case 'REMOTE':
    case 'SHARED':
      return 'external';
    default:
      return null;
  }
}

/** `WireResidencyDomain`: missing, known, unknown string, or present but not a string. */
export type Residency = 'missing' | 'worker' | 'cache_owner' | 'unknown' | 'invalid';

export type EventData =
  | { kind: 'stored'; parent: bigint | null; locals: bigint[]; externals: bigint[] }
  | { kind: 'removed'; hashes: bigint[] }
  | { kind: 'cleared' };

export interface RouterEvent {
  workerId: bigint;
  tier: Tier;
  residency: Residency;
  eventId: bigint;
  dpRank: number;
  data: EventData;
}

/** Where a decoded `RouterEvent` goes in Dynamo 1.6.1's router. */
export type Route = 'primary' | 'elsewhere' | 'unsupported_unknown' | 'unsupported_invalid';

/** `RouterEvent::targets_primary` as used by `LocalKvIndexer::apply_event_by_tier`. */
export function routeOf(ev: RouterEvent): Route {
  if (ev.residency === 'unknown') return 'unsupported_unknown';
  if (ev.residency === 'invalid') return 'unsupported_invalid';
  if (ev.data.kind === 'cleared') {
    return ev.residency === 'cache_owner' ? 'elsewhere' : 'primary';
  }
  if (ev.residency === 'cache_owner') return 'elsewhere';
  return ev.tier === 'device' ? 'primary' : 'elsewhere';
}

/** A legacy clear without a domain (`ResetScope::All`). */
export function isResetAll(ev: RouterEvent): boolean {
  return ev.data.kind === 'cleared' && ev.residency === 'missing';
}

export interface Envelope {
  publisherId: bigint;
  sequence: bigint;
  publishedAtMs: bigint;
}

const STORAGE_TIERS: readonly Tier[] = ['device', 'host_pinned', 'disk', 'external'];
const DATA_VARIANTS = ['stored', 'removed', 'cleared'] as const;
const ROUTER_EVENT_FIELDS = [
  'worker_id',
  'storage_tier',
  'residency_domain',
  'event',
  'state_source',
  'session_id',
] as const;
const ENVELOPE_FIELDS = ['publisher_id', 'sequence', 'published_at', 'topic', 'payload'] as const;

function tierOf(v: Value | undefined): Tier {
  if (v === undefined) return 'device';
  const [i, data] = variant(v, STORAGE_TIERS);
  unit(data);
  return STORAGE_TIERS[i] as Tier;
}

function residencyOf(v: Value | undefined): Residency {
  if (v === undefined) return 'missing';
  // Non-strings (explicit nil included) are invalid (protocols.rs:784-861).
  const s = asStr(v);
  if (s === null) return 'invalid';
  if (s === 'worker') return 'worker';
  if (s === 'cache_owner') return 'cache_owner';
  return 'unknown';
}

function dataOf(v: Value): EventData {
  const [i, data] = variant(v, DATA_VARIANTS);
  if (i === 0) {
    const f = fields(data ?? fail(), ['parent_hash', 'start_position', 'blocks']);
    const p = f.opt(0);
    const parent = p === undefined ? null : hashOf(p);
    optU32(f.opt(1));
    const blocks = asArray(f.req(2)) ?? fail();
    const locals: bigint[] = [];
    const externals: bigint[] = [];
    for (const b of blocks) {
      const bf = fields(b, ['block_hash', 'tokens_hash', 'mm_extra_info']);
      externals.push(hashOf(bf.req(0)));
      locals.push(hashOf(bf.req(1)));
      const info = bf.opt(2);
      if (info !== undefined) parseBlockExtraInfo(info);
    }
    return { kind: 'stored', parent, locals, externals };
  }
  if (i === 1) {
    const f = fields(data ?? fail(), ['block_hashes']);
    return { kind: 'removed', hashes: hashesOf(f.req(0)) };
  }
  unit(data);
  return { kind: 'cleared' };
}

/** Decodes one `RouterEvent` value (throws `DecodeError`). */
export function routerEventOf(v: Value): RouterEvent {
  const f = fields(v, ROUTER_EVENT_FIELDS);
  const workerId = u64Of(f.req(0));
  const tier = tierOf(f.dflt(1));
  const residency = residencyOf(f.dflt(2));
  const ev = fields(f.req(3), ['event_id', 'data', 'dp_rank']);
  const eventId = u64Of(ev.req(0));
  const data = dataOf(ev.req(1));
  const dp = ev.dflt(2);
  const dpRank = dp === undefined ? 0 : u32Of(dp);
  optStr(f.dflt(5));
  return { workerId, tier, residency, eventId, dpRank, data };
}

/** A decoded message: the envelope header (if any) and one result per event. */
export interface DynamoMessage {
  envelope: Envelope | null;
  events: Array<Decoded<RouterEvent>>;
}

function looksLikeEnvelope(v: Value): boolean {
  if (v.t === 'map') {
    return v.keys.some(
      (k) => k.t === 'str' && (bytesAre(k.b, 'payload') || bytesAre(k.b, 'publisher_id')),
    );
  }
  if (v.t === 'arr') {
    const a = v.items;
    const first = a[0];
    return a.length === 5 && a[4]?.t === 'bin' && first !== undefined && asU64(first) !== null;
  }
  return false;
}

function envelopeOf(v: Value): { envelope: Envelope; payload: Uint8Array } {
  const f = fields(v, ENVELOPE_FIELDS);
  const publisherId = u64Of(f.req(0));
  const sequence = u64Of(f.req(1));
  const publishedAtMs = u64Of(f.req(2));
  // `topic: &str`: a string, or bytes that are UTF-8.
  const topic = f.req(3);
  if ((topic.t !== 'str' && topic.t !== 'bin') || utf8Text(topic.b) === null) fail();
  const payload = f.req(4);
  if (payload.t !== 'bin' && payload.t !== 'str') return fail();
  return { envelope: { publisherId, sequence, publishedAtMs }, payload: payload.b };
}

/**
 * The events of a payload value: an array of `RouterEvent`s, a single map,
 * or a positional `RouterEvent` (an array whose first element is an integer).
 */
function eventsOf(v: Value): Array<Decoded<RouterEvent>> {
  if (v.t === 'arr') {
    if (v.items[0]?.t === 'int') return [attempt(() => routerEventOf(v))];
    return v.items.map((e) => attempt(() => routerEventOf(e)));
  }
  if (v.t === 'map') return [attempt(() => routerEventOf(v))];
  return [{ ok: false, reason: 'malformed' }];
}

/** Decodes a `dynamo` (msgpack) message; not ok when nothing of it is usable (malformed). */
export function decodeMsgpack(bytes: Uint8Array): Decoded<DynamoMessage> {
  const top = readFirst(bytes);
  if (top === null) return { ok: false, reason: 'malformed' };
  if (looksLikeEnvelope(top)) {
    const env = attempt(() => envelopeOf(top));
    if (!env.ok) return env;
    const inner = readFirst(env.value.payload);
    const events: Array<Decoded<RouterEvent>> =
      inner === null ? [{ ok: false, reason: 'malformed' }] : eventsOf(inner);
    return { ok: true, value: { envelope: env.value.envelope, events } };
  }
  return { ok: true, value: { envelope: null, events: eventsOf(top) } };
}

/** Decodes a `dynamo-json` message: a JSON `RouterEvent` or an array of them. */
export function decodeJson(bytes: Uint8Array): Decoded<DynamoMessage> {
  const top = parseJson(bytes);
  if (top === null) return { ok: false, reason: 'malformed' };
  return { ok: true, value: { envelope: null, events: eventsOf(top) } };
}
