//! Reading structs and enums out of [`Value`]s the way `serde` derive +
//! `rmp_serde` / `serde_json` read them, so a payload Dynamo 1.6.1 accepts is
//! accepted here and one it rejects is rejected (per event, see the applier).
//!
//! Rules reproduced (serde_derive's generated visitors):
//! - a struct is a map (keys: field name as `str`/`bin`, or field index as an
//!   unsigned integer; unknown keys ignored; a repeated known key is an error)
//!   or an array (element `i` is field `i`; more elements than fields is an
//!   error, rmp_serde's `LengthMismatch`);
//! - a missing field is an error unless it has `#[serde(default)]`; a missing
//!   `Option` field without `default` is `None` in a map but an error in an
//!   array (serde_derive only special-cases `Option` for maps);
//! - an externally tagged enum is a bare variant name/index (unit variants), or
//!   a one-entry map `{variant: data}`; a unit variant's data must be nil.

use super::msgpack::Value;

/// Why an event could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Wrong shape or types (serde would fail).
    Malformed,
    /// A well-formed event naming a variant (or enum value) we do not know.
    UnknownVariant,
}

pub type DResult<T> = Result<T, DecodeError>;

use DecodeError::{Malformed, UnknownVariant};

/// Whether a struct came as a map or as an array (changes missing-`Option` rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Map,
    Array,
}

/// A struct's fields by position in `names`.
pub struct Fields<'a, const N: usize> {
    pub shape: Shape,
    vals: [Option<Value<'a>>; N],
}

impl<'a, const N: usize> Fields<'a, N> {
    /// A field without `default`, not an `Option`: missing is an error.
    pub fn req(&self, i: usize) -> DResult<Value<'a>> {
        self.vals[i].ok_or(Malformed)
    }

    /// An `Option<T>` field without `#[serde(default)]`: missing is `None` in a
    /// map, an error in an array. Nil is `None`.
    pub fn opt(&self, i: usize) -> DResult<Option<Value<'a>>> {
        match (self.vals[i], self.shape) {
            (None, Shape::Map) => Ok(None),
            (None, Shape::Array) => Err(Malformed),
            (Some(v), _) if v.is_nil() => Ok(None),
            (Some(v), _) => Ok(Some(v)),
        }
    }

    /// A `#[serde(default)]` field: `None` when missing (nil is passed through).
    pub fn dflt(&self, i: usize) -> Option<Value<'a>> {
        self.vals[i]
    }
}

/// Reads a struct with the given field names.
pub fn fields<'a, const N: usize>(v: &Value<'a>, names: &[&str; N]) -> DResult<Fields<'a, N>> {
    let mut vals: [Option<Value<'a>>; N] = [None; N];
    match v {
        Value::Map(m) => {
            for (k, val) in m.pairs() {
                let idx = match k {
                    Value::Str(b) | Value::Bin(b) => names.iter().position(|n| n.as_bytes() == b),
                    Value::Int(_) => k.as_u64().and_then(|i| (i < N as u64).then_some(i as usize)),
                    _ => return Err(Malformed),
                };
                if let Some(i) = idx {
                    if vals[i].is_some() {
                        return Err(Malformed);
                    }
                    vals[i] = Some(val);
                }
            }
            Ok(Fields { shape: Shape::Map, vals })
        }
        Value::Array(a) => {
            if a.len() > N {
                return Err(Malformed);
            }
            for (slot, val) in vals.iter_mut().zip(a.iter()) {
                *slot = Some(val);
            }
            Ok(Fields { shape: Shape::Array, vals })
        }
        _ => Err(Malformed),
    }
}

/// An externally tagged enum: `(variant index, data)`. A name not in
/// `variants` is `UnknownVariant`; an index out of range is malformed (serde
/// reports "invalid value").
pub fn variant<'a>(v: &Value<'a>, variants: &[&str]) -> DResult<(usize, Option<Value<'a>>)> {
    let ident = |k: &Value<'a>| -> DResult<usize> {
        match k {
            Value::Str(b) | Value::Bin(b) => {
                variants.iter().position(|n| n.as_bytes() == *b).ok_or(UnknownVariant)
            }
            Value::Int(_) => k
                .as_u64()
                .and_then(|i| (i < variants.len() as u64).then_some(i as usize))
                .ok_or(Malformed),
            _ => Err(Malformed),
        }
    };
    match v {
        Value::Map(m) => {
            if m.len() != 1 {
                return Err(Malformed);
            }
            let (k, data) = m.pairs().next().ok_or(Malformed)?;
            Ok((ident(&k)?, Some(data)))
        }
        other => Ok((ident(other)?, None)),
    }
}

/// A unit variant's data: absent or nil.
pub fn unit(data: Option<Value<'_>>) -> DResult<()> {
    match data {
        None => Ok(()),
        Some(v) if v.is_nil() => Ok(()),
        Some(_) => Err(Malformed),
    }
}

pub fn u64_of(v: Value<'_>) -> DResult<u64> {
    v.as_u64().ok_or(Malformed)
}

pub fn u32_of(v: Value<'_>) -> DResult<u32> {
    v.as_u32().ok_or(Malformed)
}

pub fn hash_of(v: Value<'_>) -> DResult<u64> {
    v.as_hash().ok_or(Malformed)
}

pub fn str_of<'a>(v: Value<'a>) -> DResult<&'a str> {
    v.as_str().ok_or(Malformed)
}

/// `Option<String>`: nil is `None`.
pub fn opt_str<'a>(v: Option<Value<'a>>) -> DResult<Option<&'a str>> {
    match v {
        None => Ok(None),
        Some(v) if v.is_nil() => Ok(None),
        Some(v) => str_of(v).map(Some),
    }
}

/// `Option<u32>`: nil is `None`.
pub fn opt_u32(v: Option<Value<'_>>) -> DResult<Option<u32>> {
    match v {
        None => Ok(None),
        Some(v) if v.is_nil() => Ok(None),
        Some(v) => u32_of(v).map(Some),
    }
}

/// A `Vec<hash>`.
pub fn hashes_of(v: Value<'_>) -> DResult<Vec<u64>> {
    let a = v.as_array().ok_or(Malformed)?;
    a.iter().map(hash_of).collect()
}
