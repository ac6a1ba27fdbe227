//! Dynamo 1.6.1 KV events: the event-plane envelope and `RouterEvent`
//! (`dynamo_kv_router::protocols`, msgpack via `rmp_serde::to_vec_named` or
//! positional `to_vec`, and JSON via `serde_json`).
//!
//! Wire shapes (serde names, dynamo-kv-router 1.6.1 `protocols.rs`):
//! ```text
//! envelope    {publisher_id: u64, sequence: u64, published_at: u64, topic: str, payload: bin}
//!             (dynamo-runtime 1.6.1 transports/event_plane/codec.rs, BorrowedEventEnvelope)
//! payload     [RouterEvent, ...]      (lib/llm subscriber decodes Vec<RouterEvent>)
//! RouterEvent {worker_id: u64, storage_tier: "device"|"host_pinned"|"disk"|"external" = device,
//!              residency_domain?: "worker"|"cache_owner", event: KvCacheEvent,
//!              state_source?: CacheOwnerId, session_id?: str}              (protocols.rs:1478)
//! KvCacheEvent {event_id: u64, data: KvCacheEventData, dp_rank: u32 = 0}   (protocols.rs:1235)
//! KvCacheEventData  {"stored": {parent_hash: u64|nil, start_position: u32|nil,
//!                               blocks: [{block_hash, tokens_hash, mm_extra_info}]}}
//!                 | {"removed": {block_hashes: [u64]}} | "cleared"          (protocols.rs:1250)
//! ```
//! Numbers are exact u64 on every path (msgpack uint64, JSON integers up to
//! `u64::MAX`). Deviation, on purpose: a negative integer where a hash is
//! expected is cast bitwise to u64 (the contract of `src/events/types.ts`);
//! Dynamo's `u64` deserializers reject it. `state_source` is skipped without
//! validating its content (it only matters for cache-owner events, which
//! never reach the device index).

use super::de::{
    DResult, DecodeError, fields, hash_of, hashes_of, opt_str, opt_u32, u32_of, u64_of, unit,
    variant,
};
use super::msgpack::{self, Value};
use super::vllm::parse_block_extra_info;
use crate::index::StoredBlock;

/// `StorageTier` (protocols.rs:490).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    Device,
    HostPinned,
    Disk,
    External,
}

impl Tier {
    /// `StorageTier::from_kv_medium` (protocols.rs:878).
    pub fn from_kv_medium(medium: &str) -> Option<Tier> {
        match medium {
            "GPU" | "DEVICE" => Some(Tier::Device),
            "CPU" | "CPU_PINNED" | "CPU_TIER1" => Some(Tier::HostPinned),
            "CPU_TIER2" | "DISK" | "NVME" | "STORAGE" => Some(Tier::Disk),
            "EXTERNAL" | "NETWORK" | "REMOTE" | "SHARED" => Some(Tier::External),
            _ => None,
        }
    }
}

/// `WireResidencyDomain` (protocols.rs:742): missing, known, or unsupported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// Field absent: the legacy wire (a `Cleared` then resets every domain).
    Missing,
    Worker,
    CacheOwner,
    /// A string Dynamo does not know.
    Unknown,
    /// Present but not a string (explicit nil included).
    Invalid,
}

/// One decoded `KvCacheEventData`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventData {
    Stored { parent: Option<u64>, blocks: Vec<StoredBlock> },
    Removed { hashes: Vec<u64> },
    Cleared,
}

/// One decoded `RouterEvent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterEvent {
    pub worker_id: u64,
    pub tier: Tier,
    pub residency: Residency,
    pub event_id: u64,
    pub dp_rank: u32,
    pub data: EventData,
}

/// Where a decoded `RouterEvent` goes in Dynamo 1.6.1's router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The device (primary) tree.
    Primary,
    /// A lower-tier indexer or a cache-owner index (or a cache-owner event
    /// in the device tier, which Dynamo rejects): not the device tree.
    Elsewhere,
    /// `targets_primary()` fails (unknown residency string): dropped.
    UnsupportedUnknown,
    /// `targets_primary()` fails (residency present but not a string): dropped.
    UnsupportedInvalid,
}

impl RouterEvent {
    /// `RouterEvent::targets_primary` (protocols.rs:1604) as used by
    /// `LocalKvIndexer::apply_event_by_tier` (indexer/local.rs:666): a clear
    /// with no domain or the worker domain and any tier reaches the device
    /// tree; other events reach it only in the device tier and worker domain
    /// (a cache-owner domain in the device tier is unsupported).
    pub fn route(&self) -> Route {
        let unsupported = match self.residency {
            Residency::Unknown => Some(Route::UnsupportedUnknown),
            Residency::Invalid => Some(Route::UnsupportedInvalid),
            _ => None,
        };
        if let Some(r) = unsupported {
            return r;
        }
        if matches!(self.data, EventData::Cleared) {
            return if self.residency == Residency::CacheOwner {
                Route::Elsewhere
            } else {
                Route::Primary
            };
        }
        match (self.residency, self.tier) {
            // Unsupported by Dynamo (`resolved_residency_domain`), dropped like
            // the other cache-owner events: never the device tree.
            (Residency::CacheOwner, _) => Route::Elsewhere,
            (_, Tier::Device) => Route::Primary,
            _ => Route::Elsewhere,
        }
    }

    /// `reset_scope() == Some(ResetScope::All)`: a legacy clear without a domain.
    pub fn is_reset_all(&self) -> bool {
        matches!(self.data, EventData::Cleared) && self.residency == Residency::Missing
    }
}

/// The event-plane envelope's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    pub publisher_id: u64,
    pub sequence: u64,
    pub published_at_ms: u64,
}

const STORAGE_TIERS: [&str; 4] = ["device", "host_pinned", "disk", "external"];
const DATA_VARIANTS: [&str; 3] = ["stored", "removed", "cleared"];

fn tier_of(v: Option<Value<'_>>) -> DResult<Tier> {
    let Some(v) = v else { return Ok(Tier::Device) };
    let (i, data) = variant(&v, &STORAGE_TIERS)?;
    unit(data)?;
    Ok([Tier::Device, Tier::HostPinned, Tier::Disk, Tier::External][i])
}

fn residency_of(v: Option<Value<'_>>) -> Residency {
    match v {
        None => Residency::Missing,
        // Non-strings (explicit nil included) are `Invalid` (protocols.rs:784-861).
        Some(v) => match v.as_str() {
            Some("worker") => Residency::Worker,
            Some("cache_owner") => Residency::CacheOwner,
            Some(_) => Residency::Unknown,
            None => Residency::Invalid,
        },
    }
}

fn stored_block_of(v: Value<'_>) -> DResult<StoredBlock> {
    let f = fields(&v, &["block_hash", "tokens_hash", "mm_extra_info"])?;
    let external_hash = hash_of(f.req(0)?)?;
    let local_hash = hash_of(f.req(1)?)?;
    if let Some(info) = f.opt(2)? {
        parse_block_extra_info(info)?;
    }
    Ok(StoredBlock { local_hash, external_hash })
}

fn data_of(v: Value<'_>) -> DResult<EventData> {
    let (i, data) = variant(&v, &DATA_VARIANTS)?;
    match i {
        0 => {
            let d = data.ok_or(DecodeError::Malformed)?;
            let f = fields(&d, &["parent_hash", "start_position", "blocks"])?;
            let parent = f.opt(0)?.map(hash_of).transpose()?;
            opt_u32(f.opt(1)?)?;
            let blocks = f.req(2)?.as_array().ok_or(DecodeError::Malformed)?;
            let blocks = blocks.iter().map(stored_block_of).collect::<DResult<Vec<_>>>()?;
            Ok(EventData::Stored { parent, blocks })
        }
        1 => {
            let d = data.ok_or(DecodeError::Malformed)?;
            let f = fields(&d, &["block_hashes"])?;
            Ok(EventData::Removed { hashes: hashes_of(f.req(0)?)? })
        }
        _ => {
            unit(data)?;
            Ok(EventData::Cleared)
        }
    }
}

/// Decodes one `RouterEvent` value.
pub fn router_event_of(v: &Value<'_>) -> DResult<RouterEvent> {
    let f = fields(
        v,
        &["worker_id", "storage_tier", "residency_domain", "event", "state_source", "session_id"],
    )?;
    let worker_id = u64_of(f.req(0)?)?;
    let tier = tier_of(f.dflt(1))?;
    let residency = residency_of(f.dflt(2));
    let ev = fields(&f.req(3)?, &["event_id", "data", "dp_rank"])?;
    let event_id = u64_of(ev.req(0)?)?;
    let data = data_of(ev.req(1)?)?;
    let dp_rank = match ev.dflt(2) {
        None => 0,
        Some(v) => u32_of(v)?,
    };
    opt_str(f.dflt(5))?;
    Ok(RouterEvent { worker_id, tier, residency, event_id, dp_rank, data })
}

/// A decoded `dynamo` / `dynamo-json` message: the envelope header (if any)
/// and one decode result per event.
#[derive(Debug)]
pub struct DynamoMessage {
    pub envelope: Option<Envelope>,
    pub events: Vec<DResult<RouterEvent>>,
}

const ENVELOPE_FIELDS: [&str; 5] = ["publisher_id", "sequence", "published_at", "topic", "payload"];

fn looks_like_envelope(v: &Value<'_>) -> bool {
    match v {
        Value::Map(m) => m
            .pairs()
            .any(|(k, _)| matches!(k, Value::Str(b) if b == b"payload" || b == b"publisher_id")),
        // The positional form `[publisher_id, sequence, published_at, topic, payload]`.
        Value::Array(a) => {
            a.len() == 5
                && matches!(a.get(4), Some(Value::Bin(_)))
                && a.get(0).is_some_and(|x| x.as_u64().is_some())
        }
        _ => false,
    }
}

fn envelope_of<'a>(v: &Value<'a>) -> DResult<(Envelope, &'a [u8])> {
    let f = fields(v, &ENVELOPE_FIELDS)?;
    let publisher_id = u64_of(f.req(0)?)?;
    let sequence = u64_of(f.req(1)?)?;
    let published_at_ms = u64_of(f.req(2)?)?;
    // `topic: &str`: a string, or bytes that are UTF-8.
    match f.req(3)? {
        Value::Str(b) | Value::Bin(b) if std::str::from_utf8(b).is_ok() => {}
        _ => return Err(DecodeError::Malformed),
    }
    let payload = match f.req(4)? {
        Value::Bin(b) | Value::Str(b) => b,
        _ => return Err(DecodeError::Malformed),
    };
    Ok((Envelope { publisher_id, sequence, published_at_ms }, payload))
}

/// The events of a payload value: an array of `RouterEvent`s, a single
/// `RouterEvent` map, or a positional `RouterEvent` (an array whose first
/// element is the worker id).
fn events_of(v: &Value<'_>) -> Vec<DResult<RouterEvent>> {
    match v {
        Value::Array(a) if a.get(0).is_some_and(|x| matches!(x, Value::Int(_))) => {
            vec![router_event_of(v)]
        }
        Value::Array(a) => a.iter().map(|e| router_event_of(&e)).collect(),
        Value::Map(_) => vec![router_event_of(v)],
        _ => vec![Err(DecodeError::Malformed)],
    }
}

/// Decodes a `dynamo` (msgpack) message. `Err` means the bytes are not a
/// well-formed message at all (nothing can be applied).
pub fn decode_msgpack(bytes: &[u8]) -> Result<DynamoMessage, DecodeError> {
    let top = msgpack::read_first(bytes).map_err(|_| DecodeError::Malformed)?;
    if looks_like_envelope(&top) {
        let (envelope, payload) = envelope_of(&top)?;
        let inner = msgpack::read_first(payload).map_err(|_| DecodeError::Malformed);
        let events = match inner {
            Ok(v) => events_of(&v),
            Err(e) => vec![Err(e)],
        };
        return Ok(DynamoMessage { envelope: Some(envelope), events });
    }
    Ok(DynamoMessage { envelope: None, events: events_of(&top) })
}

/// Decodes a `dynamo-json` message: a JSON `RouterEvent` or an array of them.
/// The JSON is re-encoded as msgpack (integers stay exact: serde_json keeps
/// every integer up to `u64::MAX` as an integer) and read by the same code.
pub fn decode_json(bytes: &[u8]) -> Result<DynamoMessage, DecodeError> {
    let json: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|_| DecodeError::Malformed)?;
    let mut buf = Vec::with_capacity(bytes.len());
    json_to_msgpack(&json, &mut buf);
    let top = msgpack::read_value(&buf).map_err(|_| DecodeError::Malformed)?;
    Ok(DynamoMessage { envelope: None, events: events_of(&top) })
}

pub(crate) fn json_to_msgpack(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value as J;
    match v {
        J::Null => msgpack::write_nil(out),
        J::Bool(b) => msgpack::write_bool(out, *b),
        J::Number(n) => {
            if let Some(u) = n.as_u64() {
                msgpack::write_u64(out, u);
            } else if let Some(i) = n.as_i64() {
                msgpack::write_i64(out, i);
            } else {
                msgpack::write_f64(out, n.as_f64().unwrap_or(f64::NAN));
            }
        }
        J::String(s) => msgpack::write_str(out, s),
        J::Array(a) => {
            msgpack::write_array_len(out, a.len() as u32);
            for x in a {
                json_to_msgpack(x, out);
            }
        }
        J::Object(o) => {
            msgpack::write_map_len(out, o.len() as u32);
            for (k, x) in o {
                msgpack::write_str(out, k);
                json_to_msgpack(x, out);
            }
        }
    }
}
