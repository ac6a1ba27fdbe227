/**
 * Reading structs and enums out of msgpack `Value`s the way `serde` derive +
 * `rmp_serde` / `serde_json` read them. Mirrors native/core/src/events/de.rs
 * (see its header for the serde_derive rules reproduced):
 * - a struct is a map (keys: field name as str/bin, or field index as an
 *   unsigned integer; unknown keys ignored; a repeated known key, or a key of
 *   another type, is an error) or an array (element i is field i; more
 *   elements than fields is an error);
 * - a missing non-`Option` field is an error; a missing `Option` field
 *   without `default` is None in a map but an error in an array;
 * - an externally tagged enum is a bare variant name/index or a one-entry
 *   map `{variant: data}`; an unknown name is `unknown_variant`, an index out
 *   of range is malformed; a unit variant's data must be absent or nil.
 * Errors are thrown as `DecodeError` (two preallocated instances) and caught
 * per event by the callers.
 */
import { asArray, asHash, asStr, asU32, asU64, bytesAre, isNil, type Value } from './msgpack.js';

export type DecodeReason = 'malformed' | 'unknown_variant';

/** Why an event could not be decoded. Not an `Error`: thrown often, no stack needed. */
export class DecodeError {
  constructor(readonly reason: DecodeReason) {}
}

export const MALFORMED = new DecodeError('malformed');
export const UNKNOWN_VARIANT = new DecodeError('unknown_variant');

/** Decode result per event (Rust `DResult<T>`). */
export type Decoded<T> = { ok: true; value: T } | { ok: false; reason: DecodeReason };

/** Runs `f`, turning a thrown `DecodeError` into a result (other errors propagate). */
export function attempt<T>(f: () => T): Decoded<T> {
  try {
    return { ok: true, value: f() };
  } catch (e) {
    if (e instanceof DecodeError) return { ok: false, reason: e.reason };
    throw e;
  }
}

export function fail(): never {
  throw MALFORMED;
}

/** A struct's fields by position in the names list. */
export class Fields {
  constructor(
    readonly shape: 'map' | 'array',
    private readonly vals: Array<Value | undefined>,
  ) {}

  /** A field without `default`, not an `Option`: missing is an error. */
  req(i: number): Value {
    return this.vals[i] ?? fail();
  }

  /** An `Option<T>` field without `#[serde(default)]`: missing is None in a map, an error in an array; nil is None. */
  opt(i: number): Value | undefined {
    const v = this.vals[i];
    if (v === undefined) return this.shape === 'map' ? undefined : fail();
    return isNil(v) ? undefined : v;
  }

  /** A `#[serde(default)]` field: undefined when missing (nil is passed through). */
  dflt(i: number): Value | undefined {
    return this.vals[i];
  }
}

/** Reads a struct with the given field names. */
export function fields(v: Value, names: readonly string[]): Fields {
  const n = names.length;
  const vals: Array<Value | undefined> = new Array(n).fill(undefined);
  if (v.t === 'map') {
    for (let p = 0; p < v.keys.length; p++) {
      const k = v.keys[p] as Value;
      let idx = -1;
      if (k.t === 'str' || k.t === 'bin') {
        idx = names.findIndex((name) => bytesAre(k.b, name));
      } else if (k.t === 'int') {
        if (k.v >= 0n && k.v < BigInt(n)) idx = Number(k.v);
      } else {
        fail();
      }
      if (idx >= 0) {
        if (vals[idx] !== undefined) fail();
        vals[idx] = v.vals[p];
      }
    }
    return new Fields('map', vals);
  }
  if (v.t === 'arr') {
    if (v.items.length > n) fail();
    for (let i = 0; i < v.items.length; i++) vals[i] = v.items[i];
    return new Fields('array', vals);
  }
  return fail();
}

/** An externally tagged enum: `[variant index, data]` (data undefined for a bare variant). */
export function variant(v: Value, variants: readonly string[]): [number, Value | undefined] {
  const ident = (k: Value): number => {
    if (k.t === 'str' || k.t === 'bin') {
      const i = variants.findIndex((name) => bytesAre(k.b, name));
      if (i < 0) throw UNKNOWN_VARIANT;
      return i;
    }
    if (k.t === 'int') {
      if (k.v >= 0n && k.v < BigInt(variants.length)) return Number(k.v);
      return fail();
    }
    return fail();
  };
  if (v.t === 'map') {
    if (v.keys.length !== 1) fail();
    return [ident(v.keys[0] as Value), v.vals[0]];
  }
  return [ident(v), undefined];
}

/** A unit variant's data: absent or nil. */
export function unit(data: Value | undefined): void {
  if (data !== undefined && !isNil(data)) fail();
}

export function u64Of(v: Value): bigint {
  return asU64(v) ?? fail();
}

export function u32Of(v: Value): number {
  return asU32(v) ?? fail();
}

export function hashOf(v: Value): bigint {
  return asHash(v) ?? fail();
}

export function strOf(v: Value): string {
  return asStr(v) ?? fail();
}

/** `Option<String>`: nil is None. */
export function optStr(v: Value | undefined): string | undefined {
  if (v === undefined || isNil(v)) return undefined;
  return strOf(v);
}

/** `Option<u32>`: nil is None. */
export function optU32(v: Value | undefined): number | undefined {
  if (v === undefined || isNil(v)) return undefined;
  return u32Of(v);
}

/** A `Vec<hash>`. */
export function hashesOf(v: Value): bigint[] {
  const a = asArray(v) ?? fail();
  return a.map(hashOf);
}

/**
 * `BlockExtraInfo {mm_objects: [{mm_hash: u64, offsets: [(usize, usize)]}]}`:
 * the objects' hashes (vllm.rs `parse_block_extra_info`, shared with the
 * Dynamo `mm_extra_info` check).
 */
export function parseBlockExtraInfo(v: Value): bigint[] {
  const f = fields(v, ['mm_objects']);
  const objects = asArray(f.req(0)) ?? fail();
  const hashes: bigint[] = [];
  for (const o of objects) {
    const of = fields(o, ['mm_hash', 'offsets']);
    hashes.push(u64Of(of.req(0)));
    const offsets = asArray(of.req(1)) ?? fail();
    for (const pair of offsets) {
      const p = asArray(pair);
      if (p === null || p.length !== 2) fail();
      if (!p.every((x) => asU64(x) !== null)) fail();
    }
  }
  return hashes;
}
