/**
 * vLLM / SGLang ZMQ batches decoded into raw events: step 1 of the pipeline
 * in native/core/src/events/vllm.rs (dynamo-kv-router 1.6.1
 * `zmq_wire/deserialize.rs`): `[ts, [events], data_parallel_rank]`, events as
 * maps tagged `type` (vLLM >= 0.19, `omit_defaults`) or as tagged arrays
 * (vLLM <= 0.18, SGLang) with up to five typed trailing metadata slots.
 * Deliberate deviations from Dynamo (as in vllm.rs): a bad event is one
 * rejection, not the whole batch; a two-element batch and trailing batch
 * elements are accepted; `extra_keys` items of any type are accepted.
 */
import {
  attempt,
  type Decoded,
  fail,
  fields,
  hashOf,
  optStr,
  optU32,
  parseBlockExtraInfo,
  UNKNOWN_VARIANT,
} from './decode.js';
import {
  asArray,
  asI64,
  asStr,
  asU32,
  asU64,
  isNil,
  isNumber,
  readFirst,
  utf8Text,
  type Value,
} from './msgpack.js';

/** `DYNAMO_CACHE_SALT_PREFIX` (zmq_wire/extra_keys.rs:9). */
const DYNAMO_CACHE_SALT_PREFIX = 'dynamo-cache-salt:';

// ---- decoded events --------------------------------------------------------------------------

/** `KvCacheSpecKind`. */
export type SpecKind = 'main' | 'other' | 'unknown';

export function specKindOf(s: string): SpecKind {
  switch (s) {
    case 'full_attention':
    case 'mla_attention':
    case 'sink_full_attention':
      return 'main';
    case 'sliding_window':
    case 'sliding_window_mla':
    case 'mamba':
    case 'chunked_local_attention':
    case 'encoder_only_attention':
    case 'cross_attention':
      return 'other';
    default:
      return 'unknown';
  }
}

/** `KvCacheEventMetadata`. */
export interface Meta {
  groupIdx: number | undefined;
  kind: SpecKind | undefined;
  slidingWindow: number | undefined;
}

const noMeta = (): Meta => ({ groupIdx: undefined, kind: undefined, slidingWindow: undefined });

export type Locality = 'local' | 'remote' | 'unknown';

function localityOf(s: string): Locality {
  return s === 'LOCAL' ? 'local' : s === 'REMOTE' ? 'remote' : 'unknown';
}

/** Per block: the multimodal hashes of its objects (null: no info). */
export type MmInfos = Array<bigint[] | null>;

export interface RawStored {
  kind: 'stored';
  blockHashes: bigint[];
  parent: bigint | undefined;
  tokenIds: Uint32Array;
  isEagle: boolean;
  blockSize: bigint;
  medium: string | undefined;
  loraName: string | undefined;
  cacheNamespace: string | undefined;
  mm: MmInfos | undefined;
  meta: Meta;
  locality: Locality | undefined;
  ownership: string | undefined;
  sessionId: string | undefined;
}

export interface RawRemoved {
  kind: 'removed';
  blockHashes: bigint[];
  medium: string | undefined;
  meta: Meta;
  locality: Locality | undefined;
  ownership: string | undefined;
}

/** `RawKvEvent`. */
export type RawEvent =
  | RawStored
  | RawRemoved
  | { kind: 'cleared'; ownership: string | undefined }
  | { kind: 'ignored' };

/** A decoded batch: `data_parallel_rank` and one result per event. */
export interface Batch {
  dpRank: number | undefined;
  events: Array<Decoded<RawEvent>>;
}

// ---- decoding --------------------------------------------------------------------------------

const I32_MIN = -(1n << 31n);
const U32_MAX = 0xffff_ffffn;

/**
 * `[ts, [events], data_parallel_rank]`; null when the message as a whole is
 * unusable (not msgpack, truncated, or not a batch). Trailing bytes are ignored.
 */
export function decodeBatch(bytes: Uint8Array): Batch | null {
  const top = readFirst(bytes);
  if (top === null || top.t !== 'arr') return null;
  const [ts, evs, dp] = top.items;
  if (ts === undefined || !isNumber(ts)) return null;
  const events = evs === undefined ? null : asArray(evs);
  if (events === null) return null;
  // `Option<i32>`, cast bitwise to u32; positive values up to u32::MAX too.
  let dpRank: number | undefined;
  if (dp !== undefined && !isNil(dp)) {
    const r = asI64(dp);
    if (r !== null && r >= I32_MIN && r < 0n) dpRank = Number(r + (1n << 32n));
    else if (r !== null && r >= 0n && r <= U32_MAX) dpRank = Number(r);
    else return null;
  }
  return { dpRank, events: events.map((e) => attempt(() => rawEventOf(e))) };
}

/** `BlockHashValue` list. */
function hashList(v: Value): bigint[] {
  return (asArray(v) ?? fail()).map(hashOf);
}

/** `KvTokenIds`: `[u32]`, or Eagle bigrams flattened to the first of each pair plus the last second. */
function tokenIdsOf(v: Value): { tokens: Uint32Array; eagle: boolean } {
  const a = asArray(v) ?? fail();
  const single = new Uint32Array(a.length);
  let ok = true;
  for (let i = 0; i < a.length; i++) {
    const t = asU32(a[i] as Value);
    if (t === null) {
      ok = false;
      break;
    }
    single[i] = t;
  }
  if (ok) return { tokens: single, eagle: false };
  const out = new Uint32Array(a.length + 1);
  let last: number | undefined;
  for (let i = 0; i < a.length; i++) {
    const p = asArray(a[i] as Value);
    if (p === null || p.length !== 2) fail();
    const first = asU32(p[0] as Value) ?? fail();
    const second = asU32(p[1] as Value) ?? fail();
    out[i] = first;
    last = second;
  }
  if (last === undefined) return { tokens: out.subarray(0, 0), eagle: true };
  out[a.length] = last;
  return { tokens: out, eagle: true };
}

function optHash(v: Value | undefined): bigint | undefined {
  if (v === undefined || isNil(v)) return undefined;
  return hashOf(v);
}

const nonEmpty = (s: string | undefined): string | undefined => (s ? s : undefined);

/** `Vec<Option<BlockExtraInfo>>`. */
function mmInfosOf(v: Value): MmInfos {
  const a = asArray(v) ?? fail();
  return a.map((b) => (isNil(b) ? null : parseBlockExtraInfo(b)));
}

/** `extra_keys` items: only strings (hash) and `[string, int]` pairs (hash with offset) mean something. */
type ExtraKey = { kind: 'hash' | 'offset'; s: string } | null;
/** One entry per block, each null or a list of items. */
type ExtraKeys = Array<ExtraKey[] | null>;

function extraKeysOf(v: Value | undefined): ExtraKeys | undefined {
  if (v === undefined || isNil(v)) return undefined;
  const a = asArray(v) ?? fail();
  const blocks: ExtraKeys = [];
  for (const b of a) {
    if (isNil(b)) {
      blocks.push(null);
      continue;
    }
    const items = asArray(b) ?? fail();
    blocks.push(
      items.map((item): ExtraKey => {
        if (item.t === 'str') {
          const s = asStr(item);
          return s === null ? null : { kind: 'hash', s };
        }
        if (item.t === 'arr' && item.items.length === 2 && item.items[1]?.t === 'int') {
          const s = asStr(item.items[0] as Value);
          return s === null ? null : { kind: 'offset', s };
        }
        return null;
      }),
    );
  }
  return blocks;
}

/** The first block's first `dynamo-cache-salt:` item, after skipping one item equal to the LoRA name. */
function extraKeysNamespace(
  keys: ExtraKeys | undefined,
  lora: string | undefined,
): string | undefined {
  const first = keys?.[0];
  if (!first) return undefined;
  let unmatchedLora = nonEmpty(lora);
  for (const k of first) {
    if (k === null || k.kind !== 'hash') continue;
    if (unmatchedLora !== undefined && unmatchedLora === k.s) {
      unmatchedLora = undefined;
      continue;
    }
    if (k.s.startsWith(DYNAMO_CACHE_SALT_PREFIX)) {
      const ns = k.s.slice(DYNAMO_CACHE_SALT_PREFIX.length);
      if (ns !== '') return ns;
    }
  }
  return undefined;
}

const HEX16 = /^[0-9a-fA-F]{16}0{48}$/;

/** `parse_mm_hash_from_extra_key`: 16 hex digits then 48 zeros (64 bytes). */
function mmHashFromKey(s: string): bigint | null {
  // 64 UTF-16 units of this pattern are 64 ASCII bytes.
  return HEX16.test(s) ? BigInt(`0x${s.slice(0, 16)}`) : null;
}

/** `extra_keys_to_block_mm_infos`. */
function extraKeysMm(keys: ExtraKeys | undefined): MmInfos | undefined {
  if (keys === undefined || keys.length === 0) return undefined;
  const infos: MmInfos = keys.map((b) => {
    const hashes: bigint[] = [];
    for (const k of b ?? []) {
      if (k === null) continue;
      const h = mmHashFromKey(k.s);
      if (h !== null) hashes.push(h);
    }
    return hashes.length > 0 ? hashes : null;
  });
  return infos.every((i) => i === null) ? undefined : infos;
}

function strKey(k: Value): string {
  if (k.t !== 'str' && k.t !== 'bin') return fail();
  return utf8Text(k.b) ?? fail();
}

/** One event in either layout. */
function rawEventOf(v: Value): RawEvent {
  if (v.t === 'map') return rawEventFromMap(v.keys, v.vals);
  if (v.t === 'arr') return rawEventFromArray(v.items);
  return fail();
}

/** The map layout: every known key is type-checked, unknown keys skipped, a repeated key overwrites. */
function rawEventFromMap(keys: Value[], vals: Value[]): RawEvent {
  let ty: string | undefined;
  let blockHashes: bigint[] | undefined;
  let parent: bigint | undefined;
  let tokenIds: { tokens: Uint32Array; eagle: boolean } | undefined;
  let blockSize: bigint | undefined;
  let medium: string | undefined;
  let loraName: string | undefined;
  let cacheSalt: string | undefined;
  let extraKeys: ExtraKeys | undefined;
  let mmInfos: MmInfos | undefined;
  const meta = noMeta();
  let locality: Locality | undefined;
  let ownership: string | undefined;
  let sessionId: string | undefined;
  for (let i = 0; i < keys.length; i++) {
    const key = strKey(keys[i] as Value);
    const val = vals[i] as Value;
    switch (key) {
      case 'type':
        ty = asStr(val) ?? fail();
        break;
      case 'block_hashes':
        blockHashes = hashList(val);
        break;
      case 'parent_block_hash':
        parent = optHash(val);
        break;
      case 'token_ids':
        tokenIds = tokenIdsOf(val);
        break;
      case 'block_size':
        blockSize = asU64(val) ?? fail();
        break;
      case 'medium':
        medium = optStr(val);
        break;
      case 'lora_name':
        loraName = optStr(val);
        break;
      case 'cache_salt':
        cacheSalt = optStr(val);
        break;
      case 'extra_keys':
        extraKeys = extraKeysOf(val);
        break;
      case 'block_mm_infos':
        mmInfos = isNil(val) ? undefined : mmInfosOf(val);
        break;
      case 'group_idx':
        meta.groupIdx = optU32(val);
        break;
      case 'kv_cache_spec_kind': {
        const k = optStr(val);
        meta.kind = k === undefined ? undefined : specKindOf(k);
        break;
      }
      case 'kv_cache_spec_sliding_window':
        meta.slidingWindow = optU32(val);
        break;
      case 'locality': {
        const l = optStr(val);
        locality = l === undefined ? undefined : localityOf(l);
        break;
      }
      case 'ownership':
        ownership = optStr(val);
        break;
      case 'session_id':
        sessionId = optStr(val);
        break;
      default:
        break;
    }
  }
  switch (ty) {
    case 'BlockStored': {
      const hashes = blockHashes ?? fail();
      const tokens = tokenIds ?? fail();
      const size = blockSize ?? fail();
      const cacheNamespace = cacheSalt ?? extraKeysNamespace(extraKeys, loraName);
      return {
        kind: 'stored',
        blockHashes: hashes,
        parent,
        tokenIds: tokens.tokens,
        isEagle: tokens.eagle,
        blockSize: size,
        medium: nonEmpty(medium),
        loraName,
        cacheNamespace,
        mm: mmInfos ?? extraKeysMm(extraKeys),
        meta,
        locality,
        ownership,
        sessionId,
      };
    }
    case 'BlockRemoved':
      return {
        kind: 'removed',
        blockHashes: blockHashes ?? fail(),
        medium: nonEmpty(medium),
        meta,
        locality,
        ownership,
      };
    case 'AllBlocksCleared':
      return { kind: 'cleared', ownership };
    case 'Ignored':
      return { kind: 'ignored' };
    case undefined:
      return fail();
    default:
      throw UNKNOWN_VARIANT;
  }
}

/** `KvCacheEventTrailingField` / `BlockStoredTrailingField`. */
type Trailing =
  | { kind: 'mm'; infos: MmInfos }
  | { kind: 'unsigned'; v: number }
  | { kind: 'text'; s: string }
  | { kind: 'ignored' }
  | null;

function trailingOf(v: Value, allowMm: boolean): Trailing {
  if (isNil(v)) return null;
  if (allowMm && v.t === 'arr') {
    const infos = attempt(() => mmInfosOf(v));
    if (infos.ok) return { kind: 'mm', infos: infos.value };
  }
  const u = asU32(v);
  if (u !== null) return { kind: 'unsigned', v: u };
  if (v.t === 'str' || v.t === 'bin') {
    const s = utf8Text(v.b);
    return s === null ? { kind: 'ignored' } : { kind: 'text', s };
  }
  return { kind: 'ignored' };
}

interface ParsedTrailing {
  meta: Meta;
  mm: MmInfos | undefined;
  locality: Locality | undefined;
  ownership: string | undefined;
}

/**
 * The fixed layout `[group_idx, kind, sliding_window, locality, ownership]`
 * when at least four slots are present and their types fit, else the v1.2
 * opportunistic layout.
 */
function parseTrailing(t: Trailing[]): ParsedTrailing {
  const hasMm = t.some((f) => f?.kind === 'mm');
  const fits = (i: number, kind: 'unsigned' | 'text'): boolean => {
    const f = t[i];
    return f === undefined || f === null || f.kind === kind || f.kind === 'mm';
  };
  if (
    t.length >= 4 &&
    !hasMm &&
    fits(0, 'unsigned') &&
    fits(1, 'text') &&
    fits(2, 'unsigned') &&
    fits(3, 'text') &&
    fits(4, 'text')
  ) {
    const unsigned = (i: number): number | undefined => {
      const f = t[i];
      return f?.kind === 'unsigned' ? f.v : undefined;
    };
    const text = (i: number): string | undefined => {
      const f = t[i];
      return f?.kind === 'text' ? f.s : undefined;
    };
    const kind = text(1);
    const loc = text(3);
    return {
      meta: {
        groupIdx: unsigned(0),
        kind: kind === undefined ? undefined : specKindOf(kind),
        slidingWindow: unsigned(2),
      },
      mm: undefined,
      locality: loc === undefined ? undefined : localityOf(loc),
      ownership: text(4),
    };
  }
  const meta = noMeta();
  let mm: MmInfos | undefined;
  for (const f of t) {
    if (f === null) continue;
    switch (f.kind) {
      case 'unsigned':
        if (meta.groupIdx === undefined) meta.groupIdx = f.v;
        else if (meta.slidingWindow === undefined) meta.slidingWindow = f.v;
        break;
      case 'text':
        meta.kind = specKindOf(f.s);
        break;
      case 'mm':
        mm = f.infos;
        break;
      default:
        break;
    }
  }
  return { meta, mm, locality: undefined, ownership: undefined };
}

/** A tuple reader: `next()` is the next element, `nextOpt()` treats nil as absent. */
class Elements {
  private i = 0;
  constructor(private readonly a: Value[]) {}

  next(): Value | undefined {
    return this.a[this.i++];
  }

  nextOpt(): Value | undefined {
    const v = this.a[this.i++];
    return v === undefined || isNil(v) ? undefined : v;
  }

  trailing(allowMm: boolean): Trailing[] {
    const t: Trailing[] = [];
    while (t.length < 5) {
      const v = this.next();
      if (v === undefined) break;
      t.push(trailingOf(v, allowMm));
    }
    return t;
  }
}

/** The tagged-array layout: a fixed prefix, then up to five typed trailing slots. */
function rawEventFromArray(a: Value[]): RawEvent {
  const it = new Elements(a);
  const tag = asStr(it.next() ?? fail()) ?? fail();
  switch (tag) {
    case 'BlockStored': {
      const blockHashes = hashList(it.next() ?? fail());
      const parent = optHash(it.nextOpt());
      const tokens = tokenIdsOf(it.next() ?? fail());
      const blockSize = asU64(it.next() ?? fail()) ?? fail();
      // Position 5 was `lora_id` (Option<u64>).
      const loraId = it.nextOpt();
      if (loraId !== undefined && asU64(loraId) === null) fail();
      const medium = optStr(it.nextOpt());
      // Position 7: vLLM's `lora_name`, or SGLang's `{cache_salt}` metadata.
      let loraName: string | undefined;
      let sglangSalt: string | undefined;
      const p7 = it.nextOpt();
      if (p7 !== undefined) {
        if (p7.t === 'str') {
          loraName = asStr(p7) ?? fail();
        } else if (p7.t === 'map' || p7.t === 'arr') {
          const salt = asStr(fields(p7, ['cache_salt']).req(0)) ?? fail();
          sglangSalt = nonEmpty(salt);
        } else {
          fail();
        }
      }
      const extraKeys = extraKeysOf(it.nextOpt());
      const parsed = parseTrailing(it.trailing(true));
      return {
        kind: 'stored',
        blockHashes,
        parent,
        tokenIds: tokens.tokens,
        isEagle: tokens.eagle,
        blockSize,
        medium: nonEmpty(medium),
        loraName,
        cacheNamespace: sglangSalt ?? extraKeysNamespace(extraKeys, loraName),
        mm: parsed.mm ?? extraKeysMm(extraKeys),
        meta: parsed.meta,
        locality: parsed.locality,
        ownership: parsed.ownership,
        sessionId: undefined,
      };
    }
    case 'BlockRemoved': {
      const blockHashes = hashList(it.next() ?? fail());
      const medium = optStr(it.nextOpt());
      const parsed = parseTrailing(it.trailing(false));
      return {
        kind: 'removed',
        blockHashes,
        medium: nonEmpty(medium),
        meta: parsed.meta,
        locality: parsed.locality,
        ownership: parsed.ownership,
      };
    }
    case 'AllBlocksCleared':
      return { kind: 'cleared', ownership: optStr(it.nextOpt()) };
    case 'Ignored':
      return { kind: 'ignored' };
    default:
      throw UNKNOWN_VARIANT;
  }
}
