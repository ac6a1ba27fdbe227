//! Worker load reports on the `kv_metrics` subject: Dynamo 1.6.1's
//! `ActiveLoad { worker_id, dp_rank (default 0), active_decode_blocks,
//! active_prefill_tokens, kv_used_blocks }` (dynamo-kv-router
//! `protocols.rs:1104-1122`), published by workers through the same event
//! plane as KV events (dynamo-llm `kv_router/publisher/worker_metrics.rs`):
//! the msgpack envelope whose `payload` is the msgpack `ActiveLoad`, or JSON.
//! Contract: exact u64 worker ids; anything else is `Malformed`, never a panic.

use super::de::{DResult, DecodeError, fields, u32_of, u64_of};
use super::dynamo::json_to_msgpack;
use super::msgpack::{self, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveLoad {
    pub worker_id: u64,
    pub dp_rank: u32,
    pub active_decode_blocks: Option<u64>,
    pub active_prefill_tokens: Option<u64>,
    pub kv_used_blocks: Option<u64>,
    /// The envelope's `published_at` (ms since the epoch), when it had one.
    pub published_at_ms: Option<u64>,
}

const LOAD_FIELDS: [&str; 5] =
    ["worker_id", "dp_rank", "active_decode_blocks", "active_prefill_tokens", "kv_used_blocks"];

fn opt_u64(v: Option<Value<'_>>) -> DResult<Option<u64>> {
    v.map(u64_of).transpose()
}

fn load_of(v: &Value<'_>) -> DResult<ActiveLoad> {
    let f = fields(v, &LOAD_FIELDS)?;
    Ok(ActiveLoad {
        worker_id: u64_of(f.req(0)?)?,
        dp_rank: f.dflt(1).filter(|x| !x.is_nil()).map(u32_of).transpose()?.unwrap_or(0),
        active_decode_blocks: opt_u64(f.opt(2)?)?,
        active_prefill_tokens: opt_u64(f.opt(3)?)?,
        kv_used_blocks: opt_u64(f.opt(4)?)?,
        published_at_ms: None,
    })
}

fn is_envelope(v: &Value<'_>) -> bool {
    v.as_map().is_some_and(|m| {
        m.pairs()
            .any(|(k, _)| matches!(k, Value::Str(b) if b == b"payload" || b == b"publisher_id"))
    })
}

/// Decodes one `kv_metrics` message (msgpack envelope, bare msgpack, or JSON).
pub fn decode_active_load(bytes: &[u8]) -> Result<ActiveLoad, DecodeError> {
    if matches!(bytes.first(), Some(b'{') | Some(b'[')) {
        let json: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|_| DecodeError::Malformed)?;
        let mut buf = Vec::with_capacity(bytes.len());
        json_to_msgpack(&json, &mut buf);
        let v = msgpack::read_value(&buf).map_err(|_| DecodeError::Malformed)?;
        return load_of(&v);
    }
    let top = msgpack::read_first(bytes).map_err(|_| DecodeError::Malformed)?;
    if !is_envelope(&top) {
        return load_of(&top);
    }
    let f = fields(&top, &["publisher_id", "sequence", "published_at", "topic", "payload"])?;
    let published_at_ms = u64_of(f.req(2)?)?;
    let payload = match f.req(4)? {
        Value::Bin(b) | Value::Str(b) => b,
        _ => return Err(DecodeError::Malformed),
    };
    let inner = msgpack::read_first(payload).map_err(|_| DecodeError::Malformed)?;
    let mut load = load_of(&inner)?;
    load.published_at_ms = Some(published_at_ms);
    Ok(load)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, Option<u64>)]) -> Vec<u8> {
        let mut out = vec![0x80 | pairs.len() as u8];
        for (k, v) in pairs {
            out.push(0xa0 | k.len() as u8);
            out.extend_from_slice(k.as_bytes());
            match v {
                None => out.push(0xc0),
                Some(x) => {
                    out.push(0xcf);
                    out.extend_from_slice(&x.to_be_bytes());
                }
            }
        }
        out
    }

    #[test]
    fn bare_map_and_envelope_keep_u64_and_defaults() {
        let load = map(&[
            ("worker_id", Some(u64::MAX - 4)),
            ("active_decode_blocks", Some(12)),
            ("active_prefill_tokens", None),
            ("kv_used_blocks", Some(30)),
        ]);
        let got = decode_active_load(&load).unwrap();
        assert_eq!(got.worker_id, u64::MAX - 4);
        assert_eq!(got.dp_rank, 0);
        assert_eq!(got.active_decode_blocks, Some(12));
        assert_eq!(got.active_prefill_tokens, None);
        assert_eq!(got.kv_used_blocks, Some(30));
        assert_eq!(got.published_at_ms, None);

        let mut env = vec![0x85];
        for (k, v) in [("publisher_id", 1u64), ("sequence", 2), ("published_at", 1_700_000_000_000)]
        {
            env.push(0xa0 | k.len() as u8);
            env.extend_from_slice(k.as_bytes());
            env.push(0xcf);
            env.extend_from_slice(&v.to_be_bytes());
        }
        env.extend_from_slice(b"\xa5topic\xaakv_metrics\xa7payload\xc4");
        env.push(load.len() as u8);
        env.extend_from_slice(&load);
        let got = decode_active_load(&env).unwrap();
        assert_eq!(got.worker_id, u64::MAX - 4);
        assert_eq!(got.published_at_ms, Some(1_700_000_000_000));
    }

    #[test]
    fn json_and_bad_input() {
        let got = decode_active_load(
            br#"{"worker_id":18446744073709551615,"dp_rank":3,"active_decode_blocks":null,"active_prefill_tokens":5,"kv_used_blocks":7}"#,
        )
        .unwrap();
        assert_eq!((got.worker_id, got.dp_rank), (u64::MAX, 3));
        assert_eq!((got.active_prefill_tokens, got.kv_used_blocks), (Some(5), Some(7)));
        for bad in [&b""[..], b"\xc1", b"{\"dp_rank\":1}", b"\x81\xa9worker_id\xa1x", b"[1,2"] {
            assert!(decode_active_load(bad).is_err(), "{bad:?}");
        }
    }
}
