/**
 * Dynamo's JetStream KV-event mode (`--durable-kv-events`), the pure part:
 * stream, subject and bucket names, and the `radix-state` snapshot object.
 * No I/O; the adapter is src/events/jetstream-source.ts.
 *
 * Checked against Dynamo's sources (ai-dynamo/dynamo):
 * - `lib/llm/src/kv_router/jetstream.rs` @0b112b4b: stream =
 *   `Slug::slugify("namespace.{ns}.component.{comp}.{KV_EVENT_SUBJECT}")` with `_`
 *   replaced by `-`; bucket = `Slug::slugify("namespace.{ns}.component.{comp}-radix-bucket")`
 *   with `_` replaced by `-`; object `radix-state` (RADIX_STATE_BUCKET/RADIX_STATE_FILE in
 *   `lib/llm/src/kv_router.rs`). `KV_EVENT_SUBJECT` was `kv_events` in older releases and is
 *   `kv-events` now; after the `_` → `-` replacement both give the same stream name.
 * - `lib/runtime/src/transports/nats.rs` (`NatsQueue`): the stream name is slugified again
 *   (a no-op on a name made only of `[a-z0-9-]`), its subjects are `{stream}.*`, publishers send
 *   JSON `RouterEvent`s to `{stream}.queue` (`QUEUE_NAME`), the stream's `max_age` is
 *   `DYN_NATS_STREAM_MAX_AGE` seconds (default 3600), the router's durable pull consumer has
 *   `inactive_threshold` 3600 s (300 s in dynamo-runtime 1.6.1, where the mode is gone) and
 *   otherwise default settings (deliver all, explicit ack).
 * - `lib/runtime/src/slug.rs` (dynamo-runtime 1.6.1 crate): `Slug::slugify` lower-cases, keeps
 *   `[a-z0-9_-]`, replaces every other character with `_`, then strips leading `_`.
 * - The snapshot is NOT JSON: `Client::object_store_upload_data` / `object_store_download_data`
 *   (nats.rs, every version that has them, 1.6.1 included) serialize with
 *   `bincode::serialize` (bincode 1, default options). `protocols.rs` says so too
 *   ("Do NOT use skip_serializing_if with bincode ... bincode is positional").
 *   `decodeRadixSnapshot` reads that, and also a JSON array of `RouterEvent`s (what a JSON
 *   writer would store; kv-epp accepts it, Dynamo routers would not).
 */

/** `KV_EVENT_SUBJECT` (current spelling). */
export const KV_EVENT_SUBJECT = 'kv-events';
/** `RADIX_STATE_BUCKET`: suffix of the snapshot bucket name. */
export const RADIX_STATE_BUCKET = 'radix-bucket';
/** `RADIX_STATE_FILE`: the snapshot object's name. */
export const RADIX_STATE_FILE = 'radix-state';
/** `QUEUE_NAME`: publishers send to `{stream}.queue`. */
export const QUEUE_NAME = 'queue';
/** `DYN_NATS_STREAM_MAX_AGE` default, seconds. */
export const DEFAULT_STREAM_MAX_AGE_SECS = 3600;
/** The router consumer's `inactive_threshold`, seconds. */
export const CONSUMER_INACTIVE_THRESHOLD_SECS = 3600;

/** `Slug::slugify`: lower-case; `[a-z0-9_-]` kept, anything else → `_`; leading `_` stripped. */
export function slugify(s: string): string {
  let out = '';
  for (const c of s.toLowerCase()) {
    out += /^[a-z0-9_-]$/.test(c) ? c : '_';
  }
  return out.replace(/^_+/, '');
}

/** The name Dynamo gives a slug-derived NATS resource: slugify, then `_` → `-`. */
function dashed(s: string): string {
  return slugify(s).replaceAll('_', '-');
}

/** The KV-event stream of a component, e.g. `namespace-dynamo-component-backend-kv-events`. */
export function kvStreamName(namespace: string, component: string): string {
  // NatsQueue slugifies the name once more; that is a no-op on `[a-z0-9-]`.
  return slugify(dashed(`namespace.${namespace}.component.${component}.${KV_EVENT_SUBJECT}`));
}

/** The stream's subjects (`NatsQueue`: `{stream}.*`). */
export function kvStreamSubjects(stream: string): string[] {
  return [`${stream}.*`];
}

/** Where publishers send (`NatsQueue::publish`: `{stream}.queue`). */
export function kvQueueSubject(stream: string): string {
  return `${stream}.${QUEUE_NAME}`;
}

/** The snapshot bucket, e.g. `namespace-dynamo-component-backend-radix-bucket`. */
export function radixBucketName(namespace: string, component: string): string {
  return dashed(`namespace.${namespace}.component.${component}-${RADIX_STATE_BUCKET}`);
}

/**
 * A durable consumer name from an instance name (a pod name, a pool name): NATS does not
 * allow `.`, `*`, `>`, whitespace or path separators in consumer names, so the name is
 * slugified with `_` → `-` (`kv-epp-0.pool` → `kv-epp-0-pool`). Throws on an empty result.
 */
export function durableConsumerName(instance: string): string {
  const name = dashed(instance).replace(/^-+/, '');
  if (name === '') throw new Error(`consumer name "${instance}" has no usable character`);
  return name;
}

// ---- JSON with exact integers ------------------------------------------------------------------

/** A JSON value whose integers are `bigint` (exact up to u64::MAX and beyond). */
export type JsonValue = null | boolean | bigint | number | string | JsonValue[] | JsonObject;
/** A JSON object, key order kept. */
export type JsonObject = Map<string, JsonValue>;

const MAX_DEPTH = 128;

/**
 * Parses JSON text, integers (no fraction, no exponent) as `bigint`, other numbers as
 * `number`. Throws `SyntaxError` on malformed input or nesting deeper than 128.
 */
export function parseJsonExact(text: string): JsonValue {
  let i = 0;
  const ws = () => {
    while (i < text.length) {
      const c = text.charCodeAt(i);
      if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) break;
      i++;
    }
  };
  const fail = (what: string): never => {
    throw new SyntaxError(`JSON: ${what} at offset ${i}`);
  };
  const numRe = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
  // Raw control characters are left to JSON.parse, which rejects them.
  const strRe = /"(?:[^"\\]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
  const value = (depth: number): JsonValue => {
    if (depth > MAX_DEPTH) fail('nesting too deep');
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const obj: JsonObject = new Map();
      ws();
      if (text[i] === '}') {
        i++;
        return obj;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail('expected a key');
        const key = str();
        ws();
        if (text[i] !== ':') fail("expected ':'");
        i++;
        obj.set(key, value(depth + 1));
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          return obj;
        }
        fail("expected ',' or '}'");
      }
    }
    if (c === '[') {
      i++;
      const arr: JsonValue[] = [];
      ws();
      if (text[i] === ']') {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(value(depth + 1));
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return arr;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c === '"') return str();
    if (text.startsWith('true', i)) {
      i += 4;
      return true;
    }
    if (text.startsWith('false', i)) {
      i += 5;
      return false;
    }
    if (text.startsWith('null', i)) {
      i += 4;
      return null;
    }
    numRe.lastIndex = i;
    const m = numRe.exec(text);
    if (!m) return fail('unexpected character');
    i += m[0].length;
    return m[1] === undefined && m[2] === undefined ? BigInt(m[0]) : Number(m[0]);
  };
  const str = (): string => {
    strRe.lastIndex = i;
    const m = strRe.exec(text);
    if (!m) return fail('bad string');
    i += m[0].length;
    return JSON.parse(m[0]) as string;
  };
  const v = value(0);
  ws();
  if (i !== text.length) fail('trailing characters');
  return v;
}

/** JSON text of a value; `bigint`s are written as their digits. */
export function stringifyJsonExact(v: JsonValue): string {
  if (v === null) return 'null';
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'number') return Number.isFinite(v) ? JSON.stringify(v) : 'null';
  if (typeof v === 'boolean' || typeof v === 'string') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(stringifyJsonExact).join(',')}]`;
  const parts: string[] = [];
  for (const [k, x] of v) parts.push(`${JSON.stringify(k)}:${stringifyJsonExact(x)}`);
  return `{${parts.join(',')}}`;
}

// ---- the radix-state snapshot ------------------------------------------------------------------

/**
 * Which optional fields a bincode `RouterEvent` carries. bincode is positional, so each
 * Dynamo release that added a field changed the layout:
 * `RouterEvent {worker_id: u64, storage_tier?: StorageTier, event: KvCacheEvent}`,
 * `KvCacheEvent {event_id: u64, data: KvCacheEventData, dp_rank?: u32}`,
 * `KvCacheStoreData {parent_hash: Option<u64>, start_position?: Option<u32>, blocks: Vec<_>}`,
 * `KvCacheStoredBlockData {block_hash: u64, tokens_hash: u64, mm_extra_info?: Option<BlockExtraInfo>}`.
 */
export interface BincodeLayout {
  storageTier: boolean;
  dpRank: boolean;
  startPosition: boolean;
  mmExtraInfo: boolean;
}

/** Layouts tried in order, most fields first (newest release first). */
export const BINCODE_LAYOUTS: readonly BincodeLayout[] = (() => {
  const out: BincodeLayout[] = [];
  for (let bits = 15; bits >= 0; bits--) {
    out.push({
      storageTier: (bits & 8) !== 0,
      startPosition: (bits & 4) !== 0,
      mmExtraInfo: (bits & 2) !== 0,
      dpRank: (bits & 1) !== 0,
    });
  }
  // Fewer optional fields last; among equals keep the bit order above.
  const n = (l: BincodeLayout) =>
    Number(l.storageTier) + Number(l.dpRank) + Number(l.startPosition) + Number(l.mmExtraInfo);
  return out.sort((a, b) => n(b) - n(a));
})();

/** `StorageTier` variants in declaration order (serde names). */
const STORAGE_TIERS = ['device', 'host_pinned', 'disk', 'external'] as const;

class BincodeReader {
  private off = 0;
  private readonly view: DataView;
  constructor(private readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  get done(): boolean {
    return this.off === this.buf.length;
  }
  private need(n: number): void {
    if (this.off + n > this.buf.length) throw new RangeError('bincode: truncated');
  }
  u8(): number {
    this.need(1);
    return this.buf[this.off++] as number;
  }
  u32(): number {
    this.need(4);
    const v = this.view.getUint32(this.off, true);
    this.off += 4;
    return v;
  }
  u64(): bigint {
    this.need(8);
    const v = this.view.getBigUint64(this.off, true);
    this.off += 8;
    return v;
  }
  /** A sequence length; rejects one that cannot fit in what is left (`minItem` bytes each). */
  len(minItem: number): number {
    const n = this.u64();
    const left = BigInt(this.buf.length - this.off);
    if (n * BigInt(minItem) > left) throw new RangeError('bincode: length past the end');
    return Number(n);
  }
  option<T>(read: () => T): T | null {
    const tag = this.u8();
    if (tag === 0) return null;
    if (tag === 1) return read();
    throw new RangeError('bincode: bad Option tag');
  }
}

function bincodeMmInfo(r: BincodeReader): JsonObject {
  const objects: JsonValue[] = [];
  const n = r.len(16);
  for (let k = 0; k < n; k++) {
    const mmHash = r.u64();
    const offsets: JsonValue[] = [];
    const m = r.len(16);
    for (let j = 0; j < m; j++) offsets.push([r.u64(), r.u64()]);
    objects.push(
      new Map<string, JsonValue>([
        ['mm_hash', mmHash],
        ['offsets', offsets],
      ]),
    );
  }
  return new Map([['mm_objects', objects]]);
}

function bincodeEvent(r: BincodeReader, l: BincodeLayout): JsonObject {
  const workerId = r.u64();
  let tier: string | undefined;
  if (l.storageTier) {
    tier = STORAGE_TIERS[r.u32()];
    if (tier === undefined) throw new RangeError('bincode: bad StorageTier');
  }
  const eventId = r.u64();
  const tag = r.u32();
  let data: JsonValue;
  if (tag === 0) {
    const parent = r.option(() => r.u64());
    const start = l.startPosition ? r.option(() => BigInt(r.u32())) : null;
    const blocks: JsonValue[] = [];
    const n = r.len(l.mmExtraInfo ? 17 : 16);
    for (let k = 0; k < n; k++) {
      const b = new Map<string, JsonValue>([
        ['block_hash', r.u64()],
        ['tokens_hash', r.u64()],
      ]);
      if (l.mmExtraInfo) {
        b.set(
          'mm_extra_info',
          r.option(() => bincodeMmInfo(r)),
        );
      }
      blocks.push(b);
    }
    const stored = new Map<string, JsonValue>([['parent_hash', parent]]);
    if (l.startPosition) stored.set('start_position', start);
    stored.set('blocks', blocks);
    data = new Map([['stored', stored]]);
  } else if (tag === 1) {
    const hashes: JsonValue[] = [];
    const n = r.len(8);
    for (let k = 0; k < n; k++) hashes.push(r.u64());
    data = new Map([['removed', new Map([['block_hashes', hashes]])]]);
  } else if (tag === 2) {
    data = 'cleared';
  } else {
    throw new RangeError('bincode: bad KvCacheEventData tag');
  }
  const event = new Map<string, JsonValue>([
    ['event_id', eventId],
    ['data', data],
  ]);
  if (l.dpRank) event.set('dp_rank', BigInt(r.u32()));
  const out = new Map<string, JsonValue>([['worker_id', workerId]]);
  if (tier !== undefined) out.set('storage_tier', tier);
  out.set('event', event);
  return out;
}

/**
 * Decodes a bincode-1 `Vec<RouterEvent>` with one layout; throws unless the bytes are
 * exactly one well-formed vector (every tag in range, nothing left over). The result is what
 * `serde_json` writes for the same Rust value (fields of the layout present, `None` as null).
 */
export function decodeBincodeRouterEvents(bytes: Uint8Array, layout: BincodeLayout): JsonObject[] {
  const r = new BincodeReader(bytes);
  // The smallest event: worker_id + event_id + data tag (Cleared).
  const n = r.len(20);
  const out: JsonObject[] = [];
  for (let k = 0; k < n; k++) out.push(bincodeEvent(r, layout));
  if (!r.done) throw new RangeError('bincode: trailing bytes');
  return out;
}

export interface RadixSnapshot {
  /** `json`: a JSON array; `bincode`: Dynamo's own object (`layout` says which release shape). */
  format: 'json' | 'bincode';
  layout?: BincodeLayout;
  /** The `RouterEvent`s as JSON values (bincode ones converted; JSON ones as stored). */
  events: JsonValue[];
}

/**
 * Reads a `radix-state` object: a JSON array of `RouterEvent`s (first non-blank byte `[`),
 * else Dynamo's bincode `Vec<RouterEvent>` in the first layout of `BINCODE_LAYOUTS` that
 * decodes the whole object. Throws when neither fits.
 */
export function decodeRadixSnapshot(bytes: Uint8Array): RadixSnapshot {
  let first = 0;
  while (first < bytes.length && /\s/.test(String.fromCharCode(bytes[first] as number))) first++;
  if (bytes[first] === 0x5b) {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    const v = parseJsonExact(text);
    if (!Array.isArray(v)) throw new SyntaxError('snapshot JSON is not an array');
    return { format: 'json', events: v };
  }
  let last: unknown;
  for (const layout of BINCODE_LAYOUTS) {
    try {
      return { format: 'bincode', layout, events: decodeBincodeRouterEvents(bytes, layout) };
    } catch (e) {
      last = e;
    }
  }
  throw new RangeError(
    `radix-state is neither a JSON array nor a bincode Vec<RouterEvent> (${(last as Error).message})`,
  );
}

function asObject(v: JsonValue | undefined): JsonObject | undefined {
  return v instanceof Map ? v : undefined;
}

export interface SnapshotMessages {
  /** JSON arrays of `RouterEvent`s, in snapshot order, each at most `maxEvents` long. */
  payloads: string[];
  /** Worker ids the snapshot names (to reset their event-id state once it is applied). */
  workerIds: bigint[];
}

/**
 * Turns snapshot events into `dynamo-json` messages for the applier.
 *
 * Event ids are renumbered 1, 2, 3, … per (worker, dp rank), in snapshot order. A Dynamo dump
 * numbers its events with one counter over the whole tree, so one holder's ids jump
 * (0, 3, 7, …); the applier would take each jump for lost events and clear the holder.
 * Dynamo's JetStream-mode router applied snapshot events whatever their ids, and so does this
 * after renumbering. Elements that are not `RouterEvent`-shaped are passed unchanged (the
 * applier counts them as malformed).
 */
export function snapshotMessages(
  events: readonly JsonValue[],
  maxEvents = 50_000,
): SnapshotMessages {
  const next = new Map<string, bigint>();
  const workers = new Map<bigint, true>();
  const payloads: string[] = [];
  let chunk: string[] = [];
  for (const ev of events) {
    const top = asObject(ev);
    const inner = asObject(top?.get('event'));
    const worker = top?.get('worker_id');
    if (top && inner && typeof worker === 'bigint') {
      const dp = inner.get('dp_rank');
      const key = `${worker}/${typeof dp === 'bigint' ? dp : 0n}`;
      const id = (next.get(key) ?? 0n) + 1n;
      next.set(key, id);
      workers.set(worker, true);
      const renumbered = new Map(inner);
      renumbered.set('event_id', id);
      const out = new Map(top);
      out.set('event', renumbered);
      chunk.push(stringifyJsonExact(out));
    } else {
      chunk.push(stringifyJsonExact(ev));
    }
    if (chunk.length >= maxEvents) {
      payloads.push(`[${chunk.join(',')}]`);
      chunk = [];
    }
  }
  if (chunk.length > 0) payloads.push(`[${chunk.join(',')}]`);
  return { payloads, workerIds: [...workers.keys()] };
}
