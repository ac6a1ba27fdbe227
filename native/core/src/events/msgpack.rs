//! A zero-copy MessagePack reader (and the few writer calls the JSON path
//! needs).
//!
//! Contract:
//! - [`read_value`] validates a whole value (every nested byte, lengths,
//!   markers, nesting depth) before returning it, so iterating a returned
//!   array or map re-parses bytes known to be well formed;
//! - integers keep their exact value: non-negative ones (whatever their
//!   marker) are [`Int::U`], negative ones [`Int::I`]; uint64 above 2^63
//!   stays a `u64`;
//! - strings are returned as raw bytes; UTF-8 is checked where a string is
//!   read as text ([`Value::as_str`]), as `rmp_serde` does;
//! - nothing here allocates or panics on hostile input: a length that runs
//!   past the buffer is an error, never a huge allocation.

use std::fmt;

/// Deepest nesting accepted (Dynamo's deepest legitimate payload nests ~14 levels).
pub const MAX_DEPTH: usize = 64;

/// Why bytes are not one well-formed MessagePack value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgpackError {
    /// The buffer ended inside a value.
    Truncated,
    /// Marker 0xc1 (never used by the format).
    ReservedMarker,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Bytes left over after the top-level value.
    TrailingBytes,
}

impl fmt::Display for MsgpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            MsgpackError::Truncated => "truncated MessagePack value",
            MsgpackError::ReservedMarker => "reserved MessagePack marker 0xc1",
            MsgpackError::TooDeep => "MessagePack value nested too deeply",
            MsgpackError::TrailingBytes => "bytes after the MessagePack value",
        };
        f.write_str(s)
    }
}

/// An exact MessagePack integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int {
    /// Any non-negative value, whatever its marker.
    U(u64),
    /// A negative value.
    I(i64),
}

/// An array or map whose elements are already validated. For a map, `len`
/// counts pairs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Seq<'a> {
    data: &'a [u8],
    len: u32,
}

impl fmt::Debug for Seq<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq(len {})", self.len)
    }
}

/// One decoded value borrowing from the input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Nil,
    Bool(bool),
    Int(Int),
    F32(f32),
    F64(f64),
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(Seq<'a>),
    Map(Seq<'a>),
    Ext(i8, &'a [u8]),
}

impl<'a> Value<'a> {
    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }

    /// The text of a `str` value that is valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            Value::Str(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<Seq<'a>> {
        match self {
            Value::Array(s) => Some(*s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<Seq<'a>> {
        match self {
            Value::Map(s) => Some(*s),
            _ => None,
        }
    }

    /// A non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Int(Int::U(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn as_u32(&self) -> Option<u32> {
        self.as_u64().and_then(|v| u32::try_from(v).ok())
    }

    /// A signed 64-bit integer (`i64` range).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(Int::U(v)) => i64::try_from(*v).ok(),
            Value::Int(Int::I(v)) => Some(*v),
            _ => None,
        }
    }

    /// An engine hash: unsigned, or signed and cast bitwise (`-1` is `u64::MAX`).
    pub fn as_hash(&self) -> Option<u64> {
        match self {
            Value::Int(Int::U(v)) => Some(*v),
            Value::Int(Int::I(v)) => Some(*v as u64),
            _ => None,
        }
    }

    /// Any number (serde's `f64` visitor accepts integers too).
    pub fn is_number(&self) -> bool {
        matches!(self, Value::Int(_) | Value::F32(_) | Value::F64(_))
    }
}

impl<'a> Seq<'a> {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements of an array.
    pub fn iter(&self) -> SeqIter<'a> {
        SeqIter { rest: self.data, left: self.len as usize }
    }

    /// The `(key, value)` pairs of a map.
    pub fn pairs(&self) -> PairIter<'a> {
        PairIter { inner: SeqIter { rest: self.data, left: self.len as usize * 2 } }
    }

    /// Element `i` of an array.
    pub fn get(&self, i: usize) -> Option<Value<'a>> {
        self.iter().nth(i)
    }
}

/// Iterates validated elements; stops early only if the invariant that the
/// bytes were validated were ever broken (it never yields garbage or panics).
pub struct SeqIter<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for SeqIter<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.left == 0 {
            return None;
        }
        match read_value_at(self.rest, 0) {
            Ok((v, used)) => {
                self.rest = &self.rest[used..];
                self.left -= 1;
                Some(v)
            }
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

pub struct PairIter<'a> {
    inner: SeqIter<'a>,
}

impl<'a> Iterator for PairIter<'a> {
    type Item = (Value<'a>, Value<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let k = self.inner.next()?;
        let v = self.inner.next()?;
        Some((k, v))
    }
}

/// Reads exactly one value spanning the whole buffer.
pub fn read_value(buf: &[u8]) -> Result<Value<'_>, MsgpackError> {
    let (v, used) = read_value_at(buf, 0)?;
    if used != buf.len() {
        return Err(MsgpackError::TrailingBytes);
    }
    Ok(v)
}

/// Reads the value at the start of the buffer and ignores any bytes after it,
/// as `rmp_serde::from_slice` does.
pub fn read_first(buf: &[u8]) -> Result<Value<'_>, MsgpackError> {
    read_value_at(buf, 0).map(|(v, _)| v)
}

struct Cur<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MsgpackError> {
        let end = self.pos.checked_add(n).ok_or(MsgpackError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(MsgpackError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, MsgpackError> {
        Ok(self.take(1)?[0])
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], MsgpackError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn len8(&mut self) -> Result<usize, MsgpackError> {
        Ok(self.u8()? as usize)
    }

    fn len16(&mut self) -> Result<usize, MsgpackError> {
        Ok(u16::from_be_bytes(self.be()?) as usize)
    }

    fn len32(&mut self) -> Result<usize, MsgpackError> {
        Ok(u32::from_be_bytes(self.be()?) as usize)
    }
}

fn int_u(v: u64) -> Value<'static> {
    Value::Int(Int::U(v))
}

fn int_i(v: i64) -> Value<'static> {
    if v >= 0 { Value::Int(Int::U(v as u64)) } else { Value::Int(Int::I(v)) }
}

/// Reads one value at the start of `buf`; returns it and the bytes it used.
fn read_value_at(buf: &[u8], depth: usize) -> Result<(Value<'_>, usize), MsgpackError> {
    let mut c = Cur { buf, pos: 0 };
    let v = read(&mut c, depth)?;
    Ok((v, c.pos))
}

fn read<'a>(c: &mut Cur<'a>, depth: usize) -> Result<Value<'a>, MsgpackError> {
    let m = c.u8()?;
    Ok(match m {
        0x00..=0x7f => int_u(m as u64),
        0x80..=0x8f => Value::Map(seq(c, (m & 0x0f) as usize, true, depth)?),
        0x90..=0x9f => Value::Array(seq(c, (m & 0x0f) as usize, false, depth)?),
        0xa0..=0xbf => Value::Str(c.take((m & 0x1f) as usize)?),
        0xc0 => Value::Nil,
        0xc1 => return Err(MsgpackError::ReservedMarker),
        0xc2 => Value::Bool(false),
        0xc3 => Value::Bool(true),
        0xc4 => {
            let n = c.len8()?;
            Value::Bin(c.take(n)?)
        }
        0xc5 => {
            let n = c.len16()?;
            Value::Bin(c.take(n)?)
        }
        0xc6 => {
            let n = c.len32()?;
            Value::Bin(c.take(n)?)
        }
        0xc7 => {
            let n = c.len8()?;
            ext(c, n)?
        }
        0xc8 => {
            let n = c.len16()?;
            ext(c, n)?
        }
        0xc9 => {
            let n = c.len32()?;
            ext(c, n)?
        }
        0xca => Value::F32(f32::from_be_bytes(c.be()?)),
        0xcb => Value::F64(f64::from_be_bytes(c.be()?)),
        0xcc => int_u(c.u8()? as u64),
        0xcd => int_u(u16::from_be_bytes(c.be()?) as u64),
        0xce => int_u(u32::from_be_bytes(c.be()?) as u64),
        0xcf => int_u(u64::from_be_bytes(c.be()?)),
        0xd0 => int_i(i8::from_be_bytes(c.be()?) as i64),
        0xd1 => int_i(i16::from_be_bytes(c.be()?) as i64),
        0xd2 => int_i(i32::from_be_bytes(c.be()?) as i64),
        0xd3 => int_i(i64::from_be_bytes(c.be()?)),
        0xd4 => ext(c, 1)?,
        0xd5 => ext(c, 2)?,
        0xd6 => ext(c, 4)?,
        0xd7 => ext(c, 8)?,
        0xd8 => ext(c, 16)?,
        0xd9 => {
            let n = c.len8()?;
            Value::Str(c.take(n)?)
        }
        0xda => {
            let n = c.len16()?;
            Value::Str(c.take(n)?)
        }
        0xdb => {
            let n = c.len32()?;
            Value::Str(c.take(n)?)
        }
        0xdc => {
            let n = c.len16()?;
            Value::Array(seq(c, n, false, depth)?)
        }
        0xdd => {
            let n = c.len32()?;
            Value::Array(seq(c, n, false, depth)?)
        }
        0xde => {
            let n = c.len16()?;
            Value::Map(seq(c, n, true, depth)?)
        }
        0xdf => {
            let n = c.len32()?;
            Value::Map(seq(c, n, true, depth)?)
        }
        0xe0..=0xff => int_i((m as i8) as i64),
    })
}

fn ext<'a>(c: &mut Cur<'a>, n: usize) -> Result<Value<'a>, MsgpackError> {
    let tag = c.u8()? as i8;
    Ok(Value::Ext(tag, c.take(n)?))
}

/// Validates `n` elements (`2n` values for a map) and returns them as a `Seq`.
fn seq<'a>(c: &mut Cur<'a>, n: usize, map: bool, depth: usize) -> Result<Seq<'a>, MsgpackError> {
    if depth + 1 > MAX_DEPTH {
        return Err(MsgpackError::TooDeep);
    }
    let start = c.pos;
    let values = if map { n.checked_mul(2).ok_or(MsgpackError::Truncated)? } else { n };
    for _ in 0..values {
        // Every value takes at least one byte: a claimed length past the end
        // of the buffer fails here after at most `buf.len()` iterations.
        read(c, depth + 1)?;
    }
    Ok(Seq { data: &c.buf[start..c.pos], len: n as u32 })
}

// ---- writer (JSON -> MessagePack) ---------------------------------------------------------

pub fn write_nil(out: &mut Vec<u8>) {
    out.push(0xc0);
}

pub fn write_bool(out: &mut Vec<u8>, b: bool) {
    out.push(if b { 0xc3 } else { 0xc2 });
}

pub fn write_u64(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        write_u64(out, v as u64);
    } else if v >= -32 {
        out.push(v as i8 as u8);
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    out.push(0xcb);
    out.extend_from_slice(&v.to_be_bytes());
}

pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(0xdb);
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn write_bin(out: &mut Vec<u8>, b: &[u8]) {
    out.push(0xc6);
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

pub fn write_array_len(out: &mut Vec<u8>, n: u32) {
    out.push(0xdd);
    out.extend_from_slice(&n.to_be_bytes());
}

pub fn write_map_len(out: &mut Vec<u8>, n: u32) {
    out.push(0xdf);
    out.extend_from_slice(&n.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_keep_their_exact_values() {
        let v = read_value(&[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb]).unwrap();
        assert_eq!(v.as_u64(), Some(u64::MAX - 4));
        assert_eq!(v.as_hash(), Some(18446744073709551611));
        let v = read_value(&[0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb]).unwrap();
        assert_eq!(v.as_u64(), None);
        assert_eq!(v.as_hash(), Some(18446744073709551611));
        assert_eq!(v.as_i64(), Some(-5));
        // A positive value under a signed marker is unsigned.
        let v = read_value(&[0xd0, 0x05]).unwrap();
        assert_eq!(v.as_u64(), Some(5));
        assert_eq!(read_value(&[0xe0]).unwrap().as_i64(), Some(-32));
    }

    #[test]
    fn truncations_and_garbage_are_errors() {
        let mut buf = Vec::new();
        write_array_len(&mut buf, 2);
        write_str(&mut buf, "abc");
        write_u64(&mut buf, u64::MAX);
        assert!(read_value(&buf).is_ok());
        for cut in 0..buf.len() {
            assert!(read_value(&buf[..cut]).is_err(), "cut {cut}");
        }
        assert_eq!(read_value(&[0xc1]), Err(MsgpackError::ReservedMarker));
        assert_eq!(read_value(&[0xc0, 0xc0]), Err(MsgpackError::TrailingBytes));
        // A huge claimed length with no data is an error, not an allocation.
        assert_eq!(read_value(&[0xdd, 0xff, 0xff, 0xff, 0xff]), Err(MsgpackError::Truncated));
        assert_eq!(read_value(&[0xc6, 0xff, 0xff, 0xff, 0xff]), Err(MsgpackError::Truncated));
    }

    #[test]
    fn depth_is_bounded() {
        let deep = vec![0x91u8; MAX_DEPTH + 1];
        let mut b = deep.clone();
        b.push(0xc0);
        assert_eq!(read_value(&b), Err(MsgpackError::TooDeep));
        let mut ok = vec![0x91u8; MAX_DEPTH - 1];
        ok.push(0xc0);
        assert!(read_value(&ok).is_ok());
    }

    #[test]
    fn maps_and_arrays_iterate() {
        let mut buf = Vec::new();
        write_map_len(&mut buf, 2);
        write_str(&mut buf, "a");
        write_i64(&mut buf, -7);
        write_str(&mut buf, "b");
        write_array_len(&mut buf, 3);
        write_nil(&mut buf);
        write_bool(&mut buf, true);
        write_f64(&mut buf, 1.5);
        let v = read_value(&buf).unwrap();
        let m = v.as_map().unwrap();
        let pairs: Vec<_> = m.pairs().collect();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].0.as_str(), Some("a"));
        assert_eq!(pairs[0].1.as_i64(), Some(-7));
        let a = pairs[1].1.as_array().unwrap();
        let items: Vec<_> = a.iter().collect();
        assert_eq!(items, vec![Value::Nil, Value::Bool(true), Value::F64(1.5)]);
        assert_eq!(a.get(2), Some(Value::F64(1.5)));
    }
}
