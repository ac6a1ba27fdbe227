//! Hand-built MessagePack for the event decoder tests: a tiny value model with
//! its own encoder (independent of the crate's writer), always choosing the
//! smallest marker, as msgspec and rmp do.

#![allow(dead_code)]

use kv_epp_core::events::{ApplyReport, EventApplier, EventCodec, RejectReason, SourceContext};
use kv_epp_core::{RadixIndex, WorkerKey};

#[derive(Debug, Clone)]
pub enum M {
    Nil,
    Bool(bool),
    U(u64),
    I(i64),
    F(f64),
    S(String),
    B(Vec<u8>),
    A(Vec<M>),
    Map(Vec<(M, M)>),
}

pub fn s(x: &str) -> M {
    M::S(x.to_string())
}

pub fn u(x: u64) -> M {
    M::U(x)
}

pub fn arr(items: impl IntoIterator<Item = M>) -> M {
    M::A(items.into_iter().collect())
}

pub fn map(items: impl IntoIterator<Item = (&'static str, M)>) -> M {
    M::Map(items.into_iter().map(|(k, v)| (s(k), v)).collect())
}

pub fn hashes(h: &[u64]) -> M {
    arr(h.iter().map(|&x| u(x)))
}

pub fn tokens(t: &[u32]) -> M {
    arr(t.iter().map(|&x| u(x as u64)))
}

impl M {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            M::Nil => out.push(0xc0),
            M::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
            M::U(v) => write_uint(out, *v),
            M::I(v) if *v >= 0 => write_uint(out, *v as u64),
            M::I(v) if *v >= -32 => out.push(*v as i8 as u8),
            M::I(v) if *v >= i8::MIN as i64 => {
                out.push(0xd0);
                out.push(*v as i8 as u8);
            }
            M::I(v) if *v >= i16::MIN as i64 => {
                out.push(0xd1);
                out.extend_from_slice(&(*v as i16).to_be_bytes());
            }
            M::I(v) if *v >= i32::MIN as i64 => {
                out.push(0xd2);
                out.extend_from_slice(&(*v as i32).to_be_bytes());
            }
            M::I(v) => {
                out.push(0xd3);
                out.extend_from_slice(&v.to_be_bytes());
            }
            M::F(f) => {
                out.push(0xcb);
                out.extend_from_slice(&f.to_be_bytes());
            }
            M::S(x) => {
                let n = x.len();
                if n < 32 {
                    out.push(0xa0 | n as u8);
                } else if n < 256 {
                    out.push(0xd9);
                    out.push(n as u8);
                } else {
                    out.push(0xda);
                    out.extend_from_slice(&(n as u16).to_be_bytes());
                }
                out.extend_from_slice(x.as_bytes());
            }
            M::B(b) => {
                let n = b.len();
                if n < 256 {
                    out.push(0xc4);
                    out.push(n as u8);
                } else if n < 65536 {
                    out.push(0xc5);
                    out.extend_from_slice(&(n as u16).to_be_bytes());
                } else {
                    out.push(0xc6);
                    out.extend_from_slice(&(n as u32).to_be_bytes());
                }
                out.extend_from_slice(b);
            }
            M::A(items) => {
                let n = items.len();
                if n < 16 {
                    out.push(0x90 | n as u8);
                } else if n < 65536 {
                    out.push(0xdc);
                    out.extend_from_slice(&(n as u16).to_be_bytes());
                } else {
                    out.push(0xdd);
                    out.extend_from_slice(&(n as u32).to_be_bytes());
                }
                for i in items {
                    i.write(out);
                }
            }
            M::Map(items) => {
                let n = items.len();
                if n < 16 {
                    out.push(0x80 | n as u8);
                } else {
                    out.push(0xde);
                    out.extend_from_slice(&(n as u16).to_be_bytes());
                }
                for (k, v) in items {
                    k.write(out);
                    v.write(out);
                }
            }
        }
    }
}

fn write_uint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else if v <= u8::MAX as u64 {
        out.push(0xcc);
        out.push(v as u8);
    } else if v <= u16::MAX as u64 {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= u32::MAX as u64 {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// An applier and its index.
pub struct Rig {
    pub applier: EventApplier,
    pub index: RadixIndex,
}

impl Rig {
    pub fn new(block_size: u32) -> Self {
        Self { applier: EventApplier::new(block_size).unwrap(), index: RadixIndex::new() }
    }

    pub fn apply(&mut self, codec: EventCodec, bytes: &[u8], ctx: SourceContext) -> ApplyReport {
        self.applier.apply(codec, bytes, ctx, &mut self.index)
    }

    pub fn dynamo(&mut self, m: &M) -> ApplyReport {
        self.apply(EventCodec::Dynamo, &m.encode(), SourceContext::default())
    }

    pub fn json(&mut self, text: &str) -> ApplyReport {
        self.apply(EventCodec::DynamoJson, text.as_bytes(), SourceContext::default())
    }

    pub fn vllm(&mut self, m: &M, worker: u64, seq: Option<u64>) -> ApplyReport {
        let ctx = SourceContext {
            worker_id: Some(worker),
            dp_rank: None,
            sequence: seq,
            replay: false,
            ignore_ids: false,
        };
        self.apply(EventCodec::Vllm, &m.encode(), ctx)
    }

    /// Prefix depth of `worker` for `locals` (0 when absent).
    pub fn depth(&self, worker: WorkerKey, locals: &[u64]) -> u32 {
        self.index
            .find_matches(locals, false)
            .scores
            .iter()
            .find(|(w, _)| *w == worker)
            .map_or(0, |&(_, d)| d)
    }
}

/// `(reason, count)` pairs with a non-zero count.
pub fn rejections(r: &ApplyReport) -> Vec<(RejectReason, u32)> {
    r.rejections().collect()
}
