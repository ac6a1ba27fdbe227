//! vLLM / SGLang ZMQ KV events, decoded and turned into index operations the
//! way Dynamo 1.6.1's worker-side relay does before its router sees them.
//!
//! Pipeline per message (one ZMQ payload frame), each step a port of the named
//! Dynamo 1.6.1 source:
//! 1. decode `[ts, [events], data_parallel_rank]`; events as maps tagged
//!    `type` or tagged arrays (dynamo-kv-router `zmq_wire/deserialize.rs`);
//! 2. `ZmqEventNormalizer::preprocess_with_reason` (`zmq_wire/mod.rs`):
//!    ownership, `Ignored`, locality and medium gates, KV-cache-group
//!    metadata filter, cache-namespace propagation along parent chains;
//! 3. `convert_event` / `create_stored_blocks` (`zmq_wire/convert.rs`):
//!    self-referencing stores become an empty removal, local hashes are
//!    recomputed from `token_ids` (LoRA name and cache salt in the seed,
//!    multimodal hashes appended, Eagle windows), blocks that are not full
//!    configured-size blocks are dropped;
//! 4. coalescing of adjacent compatible events of the message
//!    (dynamo-llm `kv_router/publisher/batching.rs`, no batching timeout: the
//!    pending tail is flushed at the end of each ZMQ message, as
//!    `event_processor.rs:146` does);
//! 5. ref-counted store/remove dedup per (dp rank, tier)
//!    (dynamo-llm `kv_router/publisher/dedup.rs`);
//! 6. tier routing: only device-tier events reach the device index
//!    (dynamo-kv-router `indexer/local.rs:666`).
//!
//! Deviations, on purpose: a bad event is counted and skipped while the rest
//! of the message is applied (Dynamo drops the whole batch when one event
//! fails to deserialize); a two-element batch (vLLM's `omit_defaults` drops a
//! `None` rank) and trailing batch elements are accepted; `extra_keys` items
//! of any type are accepted (only strings and `[string, offset]` pairs carry
//! meaning); `image_token_id`/`video_token_id` placeholder normalisation is not
//! done (Dynamo's default normaliser has neither).

use std::sync::Arc;

use hashbrown::HashMap;
use rustc_hash::FxBuildHasher;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::de::{DResult, DecodeError, fields, hash_of, opt_str, opt_u32, u64_of};
use super::dynamo::Tier;
use super::msgpack::{self, Value};
use super::{ApplyReport, Op, OpKind, RejectReason};
use crate::hash;
use crate::index::{StoredBlock, WorkerKey};

type FxMap<K, V> = HashMap<K, V, FxBuildHasher>;

use DecodeError::{Malformed, UnknownVariant};

/// `DEFAULT_MAX_BATCH_BLOCKS` (dynamo-llm publisher/mod.rs:65).
const MAX_BATCH_BLOCKS: usize = 128;
/// `DYNAMO_CACHE_SALT_PREFIX` (zmq_wire/extra_keys.rs:9).
const DYNAMO_CACHE_SALT_PREFIX: &str = "dynamo-cache-salt:";

// ---- decoded events -------------------------------------------------------------------------

/// `KvCacheSpecKind` (zmq_wire/filter.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecKind {
    Main,
    Other,
    Unknown,
}

impl SpecKind {
    fn from_wire(s: &str) -> SpecKind {
        match s {
            "full_attention" | "mla_attention" | "sink_full_attention" => SpecKind::Main,
            "sliding_window"
            | "sliding_window_mla"
            | "mamba"
            | "chunked_local_attention"
            | "encoder_only_attention"
            | "cross_attention" => SpecKind::Other,
            _ => SpecKind::Unknown,
        }
    }
}

/// `KvCacheEventMetadata`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    pub group_idx: Option<u32>,
    pub kind: Option<SpecKind>,
    pub sliding_window: Option<u32>,
}

/// `Locality`: `LOCAL`, `REMOTE`, anything else is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locality {
    Local,
    Remote,
    Unknown,
}

fn locality_of(s: &str) -> Locality {
    match s {
        "LOCAL" => Locality::Local,
        "REMOTE" => Locality::Remote,
        _ => Locality::Unknown,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawStored<'a> {
    pub block_hashes: Vec<u64>,
    pub parent: Option<u64>,
    pub token_ids: Vec<u32>,
    pub is_eagle: bool,
    pub block_size: u64,
    pub medium: Option<&'a str>,
    pub lora_name: Option<&'a str>,
    pub cache_namespace: Option<String>,
    /// Per block: the multimodal hashes of its objects (`None`: no info).
    pub mm: Option<Vec<Option<Vec<u64>>>>,
    pub meta: Meta,
    pub locality: Option<Locality>,
    pub ownership: Option<&'a str>,
    pub session_id: Option<&'a str>,
}

/// `RawKvEvent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent<'a> {
    Stored(RawStored<'a>),
    Removed {
        block_hashes: Vec<u64>,
        medium: Option<&'a str>,
        meta: Meta,
        locality: Option<Locality>,
        ownership: Option<&'a str>,
    },
    Cleared {
        ownership: Option<&'a str>,
    },
    Ignored,
}

impl RawEvent<'_> {
    fn ownership(&self) -> Option<&str> {
        match self {
            RawEvent::Stored(s) => s.ownership,
            RawEvent::Removed { ownership, .. } | RawEvent::Cleared { ownership } => *ownership,
            RawEvent::Ignored => None,
        }
    }

    fn medium(&self) -> Option<&str> {
        match self {
            RawEvent::Stored(s) => s.medium,
            RawEvent::Removed { medium, .. } => *medium,
            _ => None,
        }
    }

    fn locality(&self) -> Option<Locality> {
        match self {
            RawEvent::Stored(s) => s.locality,
            RawEvent::Removed { locality, .. } => *locality,
            _ => None,
        }
    }

    fn meta(&self) -> Meta {
        match self {
            RawEvent::Stored(s) => s.meta,
            RawEvent::Removed { meta, .. } => *meta,
            _ => Meta::default(),
        }
    }
}

/// A decoded batch: `data_parallel_rank` and one result per event.
#[derive(Debug)]
pub struct Batch<'a> {
    pub dp_rank: Option<u32>,
    pub events: Vec<DResult<RawEvent<'a>>>,
}

// ---- decoding -------------------------------------------------------------------------------

/// `[ts, [events], data_parallel_rank]`. `Err` means the message as a whole
/// is unusable (bytes not msgpack — truncated included — or not a batch).
/// Bytes after the batch are ignored, as `rmp_serde::from_slice` does.
pub fn decode_batch(bytes: &[u8]) -> DResult<Batch<'_>> {
    let top = msgpack::read_first(bytes).map_err(|_| Malformed)?;
    let a = top.as_array().ok_or(Malformed)?;
    let mut it = a.iter();
    let ts = it.next().ok_or(Malformed)?;
    if !ts.is_number() {
        return Err(Malformed);
    }
    let events = it.next().ok_or(Malformed)?.as_array().ok_or(Malformed)?;
    // `Option<i32>`, cast bitwise to u32 (zmq_listener.rs:121); positive values
    // up to u32::MAX are accepted too.
    let dp_rank = match it.next() {
        None | Some(Value::Nil) => None,
        Some(v) => match v.as_i64() {
            Some(r) if r >= i32::MIN as i64 && r < 0 => Some(r as i32 as u32),
            Some(r) if r >= 0 && r <= u32::MAX as i64 => Some(r as u32),
            _ => return Err(Malformed),
        },
    };
    let events = events.iter().map(|e| raw_event_of(&e)).collect();
    Ok(Batch { dp_rank, events })
}

/// `BlockHashValue` list.
fn hash_list(v: Value<'_>) -> DResult<Vec<u64>> {
    let a = v.as_array().ok_or(Malformed)?;
    a.iter().map(hash_of).collect()
}

/// `KvTokenIds`: `[u32]`, or Eagle bigrams `[(u32, u32)]` flattened to the
/// first of each pair plus the last second (deserialize.rs:501).
fn token_ids_of(v: Value<'_>) -> DResult<(Vec<u32>, bool)> {
    let a = v.as_array().ok_or(Malformed)?;
    let single: Option<Vec<u32>> = a.iter().map(|t| t.as_u32()).collect();
    if let Some(t) = single {
        return Ok((t, false));
    }
    let mut out = Vec::with_capacity(a.len() + 1);
    let mut last = None;
    for pair in a.iter() {
        let p = pair.as_array().filter(|p| p.len() == 2).ok_or(Malformed)?;
        let first = p.get(0).and_then(|x| x.as_u32()).ok_or(Malformed)?;
        let second = p.get(1).and_then(|x| x.as_u32()).ok_or(Malformed)?;
        out.push(first);
        last = Some(second);
    }
    if let Some(l) = last {
        out.push(l);
    }
    Ok((out, true))
}

fn opt_hash(v: Option<Value<'_>>) -> DResult<Option<u64>> {
    match v {
        None => Ok(None),
        Some(v) if v.is_nil() => Ok(None),
        Some(v) => hash_of(v).map(Some),
    }
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|m| !m.is_empty())
}

/// `BlockExtraInfo {mm_objects: [{mm_hash: u64, offsets: [(usize, usize)]}]}`:
/// the objects' hashes.
pub(crate) fn parse_block_extra_info(v: Value<'_>) -> DResult<Vec<u64>> {
    let f = fields(&v, &["mm_objects"])?;
    let objects = f.req(0)?.as_array().ok_or(Malformed)?;
    let mut hashes = Vec::with_capacity(objects.len());
    for o in objects.iter() {
        let of = fields(&o, &["mm_hash", "offsets"])?;
        hashes.push(u64_of(of.req(0)?)?);
        let offsets = of.req(1)?.as_array().ok_or(Malformed)?;
        for pair in offsets.iter() {
            let p = pair.as_array().filter(|p| p.len() == 2).ok_or(Malformed)?;
            if !p.iter().all(|x| x.as_u64().is_some()) {
                return Err(Malformed);
            }
        }
    }
    Ok(hashes)
}

/// `Vec<Option<BlockExtraInfo>>`.
fn mm_infos_of(v: Value<'_>) -> DResult<Vec<Option<Vec<u64>>>> {
    let a = v.as_array().ok_or(Malformed)?;
    a.iter()
        .map(|b| if b.is_nil() { Ok(None) } else { parse_block_extra_info(b).map(Some) })
        .collect()
}

/// `extra_keys`: one entry per block, each nil or a list of items. Only string
/// items (`Hash`) and `[string, offset]` pairs carry meaning.
#[derive(Debug, Default)]
struct ExtraKeys<'a> {
    blocks: Vec<Option<Vec<ExtraKey<'a>>>>,
}

#[derive(Debug)]
enum ExtraKey<'a> {
    Hash(&'a str),
    HashWithOffset(&'a str),
    Other,
}

fn extra_keys_of(v: Option<Value<'_>>) -> DResult<Option<ExtraKeys<'_>>> {
    let Some(v) = v.filter(|v| !v.is_nil()) else { return Ok(None) };
    let a = v.as_array().ok_or(Malformed)?;
    let mut blocks = Vec::with_capacity(a.len());
    for b in a.iter() {
        if b.is_nil() {
            blocks.push(None);
            continue;
        }
        let items = b.as_array().ok_or(Malformed)?;
        let keys = items
            .iter()
            .map(|item| match item {
                Value::Str(_) => item.as_str().map_or(ExtraKey::Other, ExtraKey::Hash),
                Value::Array(p) if p.len() == 2 && matches!(p.get(1), Some(Value::Int(_))) => p
                    .get(0)
                    .and_then(|s| s.as_str())
                    .map_or(ExtraKey::Other, ExtraKey::HashWithOffset),
                _ => ExtraKey::Other,
            })
            .collect();
        blocks.push(Some(keys));
    }
    Ok(Some(ExtraKeys { blocks }))
}

/// `extra_keys_to_cache_namespace` (extra_keys.rs:43): the first block's
/// first `dynamo-cache-salt:` item, after skipping one item equal to the LoRA name.
fn extra_keys_namespace(keys: Option<&ExtraKeys<'_>>, lora: Option<&str>) -> Option<String> {
    let first = keys?.blocks.first()?.as_ref()?;
    let mut unmatched_lora = lora.filter(|n| !n.is_empty());
    first.iter().find_map(|k| {
        let ExtraKey::Hash(value) = k else { return None };
        if unmatched_lora.is_some_and(|n| n == *value) {
            unmatched_lora = None;
            return None;
        }
        value.strip_prefix(DYNAMO_CACHE_SALT_PREFIX).filter(|ns| !ns.is_empty()).map(str::to_owned)
    })
}

/// `parse_mm_hash_from_extra_key` (extra_keys.rs:24).
fn mm_hash_from_key(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() == 64
        && b[..16].iter().all(u8::is_ascii_hexdigit)
        && b[16..].iter().all(|&c| c == b'0')
    {
        return u64::from_str_radix(&s[..16], 16).ok();
    }
    None
}

/// `extra_keys_to_block_mm_infos` (extra_keys.rs:70).
fn extra_keys_mm(keys: Option<ExtraKeys<'_>>) -> Option<Vec<Option<Vec<u64>>>> {
    let keys = keys?;
    if keys.blocks.is_empty() {
        return None;
    }
    let infos: Vec<Option<Vec<u64>>> = keys
        .blocks
        .iter()
        .map(|b| {
            let hashes: Vec<u64> = b
                .iter()
                .flatten()
                .filter_map(|k| match k {
                    ExtraKey::Hash(s) | ExtraKey::HashWithOffset(s) => mm_hash_from_key(s),
                    ExtraKey::Other => None,
                })
                .collect();
            (!hashes.is_empty()).then_some(hashes)
        })
        .collect();
    if infos.iter().all(Option::is_none) {
        return None;
    }
    Some(infos)
}

fn str_key<'a>(k: &Value<'a>) -> DResult<&'a str> {
    match k {
        Value::Str(b) | Value::Bin(b) => std::str::from_utf8(b).map_err(|_| Malformed),
        _ => Err(Malformed),
    }
}

/// One event in either layout.
fn raw_event_of<'a>(v: &Value<'a>) -> DResult<RawEvent<'a>> {
    match v {
        Value::Map(_) => raw_event_from_map(v),
        Value::Array(_) => raw_event_from_array(v),
        _ => Err(Malformed),
    }
}

/// The map layout (deserialize.rs:51): every known key is type-checked,
/// unknown keys are skipped, a repeated key overwrites.
fn raw_event_from_map<'a>(v: &Value<'a>) -> DResult<RawEvent<'a>> {
    let m = v.as_map().ok_or(Malformed)?;
    let mut ty: Option<&'a str> = None;
    let mut block_hashes = None;
    let mut parent = None;
    let mut token_ids = None;
    let mut block_size = None;
    let mut medium = None;
    let mut lora_name = None;
    let mut cache_salt: Option<&'a str> = None;
    let mut extra_keys = None;
    let mut mm_infos = None;
    let mut meta = Meta::default();
    let mut locality = None;
    let mut ownership = None;
    let mut session_id = None;
    for (k, val) in m.pairs() {
        match str_key(&k)? {
            "type" => ty = Some(val.as_str().ok_or(Malformed)?),
            "block_hashes" => block_hashes = Some(hash_list(val)?),
            "parent_block_hash" => parent = opt_hash(Some(val))?,
            "token_ids" => token_ids = Some(token_ids_of(val)?),
            "block_size" => block_size = Some(val.as_u64().ok_or(Malformed)?),
            "medium" => medium = opt_str(Some(val))?,
            "lora_name" => lora_name = opt_str(Some(val))?,
            "cache_salt" => cache_salt = opt_str(Some(val))?,
            "extra_keys" => extra_keys = extra_keys_of(Some(val))?,
            "block_mm_infos" => {
                mm_infos = if val.is_nil() { None } else { Some(mm_infos_of(val)?) }
            }
            "group_idx" => meta.group_idx = opt_u32(Some(val))?,
            "kv_cache_spec_kind" => meta.kind = opt_str(Some(val))?.map(SpecKind::from_wire),
            "kv_cache_spec_sliding_window" => meta.sliding_window = opt_u32(Some(val))?,
            "locality" => locality = opt_str(Some(val))?.map(locality_of),
            "ownership" => ownership = opt_str(Some(val))?,
            "session_id" => session_id = opt_str(Some(val))?,
            _ => {}
        }
    }
    match ty {
        Some("BlockStored") => {
            let block_hashes = block_hashes.ok_or(Malformed)?;
            let (token_ids, is_eagle) = token_ids.ok_or(Malformed)?;
            let block_size = block_size.ok_or(Malformed)?;
            let cache_namespace = cache_salt
                .map(str::to_owned)
                .or_else(|| extra_keys_namespace(extra_keys.as_ref(), lora_name));
            let mm = mm_infos.or_else(|| extra_keys_mm(extra_keys));
            Ok(RawEvent::Stored(RawStored {
                block_hashes,
                parent,
                token_ids,
                is_eagle,
                block_size,
                medium: non_empty(medium),
                lora_name,
                cache_namespace,
                mm,
                meta,
                locality,
                ownership,
                session_id,
            }))
        }
        Some("BlockRemoved") => Ok(RawEvent::Removed {
            block_hashes: block_hashes.ok_or(Malformed)?,
            medium: non_empty(medium),
            meta,
            locality,
            ownership,
        }),
        Some("AllBlocksCleared") => Ok(RawEvent::Cleared { ownership }),
        Some("Ignored") => Ok(RawEvent::Ignored),
        Some(_) => Err(UnknownVariant),
        None => Err(Malformed),
    }
}

/// `KvCacheEventTrailingField` / `BlockStoredTrailingField` (filter.rs).
#[derive(Debug)]
enum Trailing<'a> {
    MmInfos(Vec<Option<Vec<u64>>>),
    Unsigned(u32),
    Text(&'a str),
    Ignored,
}

fn trailing_of<'a>(v: Value<'a>, allow_mm: bool) -> Option<Trailing<'a>> {
    if v.is_nil() {
        return None;
    }
    if allow_mm
        && let Value::Array(_) = v
        && let Ok(infos) = mm_infos_of(v)
    {
        return Some(Trailing::MmInfos(infos));
    }
    if let Some(u) = v.as_u32() {
        return Some(Trailing::Unsigned(u));
    }
    match v {
        Value::Str(b) | Value::Bin(b) => match std::str::from_utf8(b) {
            Ok(s) => Some(Trailing::Text(s)),
            Err(_) => Some(Trailing::Ignored),
        },
        _ => Some(Trailing::Ignored),
    }
}

struct ParsedTrailing<'a> {
    meta: Meta,
    mm: Option<Vec<Option<Vec<u64>>>>,
    locality: Option<Locality>,
    ownership: Option<&'a str>,
}

/// `parse_block_stored_trailing` / `parse_common_trailing` (deserialize.rs:324,379):
/// the fixed layout `[group_idx, kind, sliding_window, locality, ownership]`
/// when at least four slots are present and their types fit, else the v1.2
/// opportunistic layout.
fn parse_trailing<'a>(t: Vec<Option<Trailing<'a>>>) -> ParsedTrailing<'a> {
    let has_mm = t.iter().flatten().any(|f| matches!(f, Trailing::MmInfos(_)));
    let unsigned_ok = |i: usize| match t.get(i) {
        None | Some(None) => true,
        Some(Some(Trailing::Unsigned(_))) => true,
        Some(Some(Trailing::MmInfos(_))) => true,
        Some(Some(_)) => false,
    };
    let text_ok = |i: usize| match t.get(i) {
        None | Some(None) => true,
        Some(Some(Trailing::Text(_))) => true,
        Some(Some(Trailing::MmInfos(_))) => true,
        Some(Some(_)) => false,
    };
    if t.len() >= 4
        && !has_mm
        && unsigned_ok(0)
        && text_ok(1)
        && unsigned_ok(2)
        && text_ok(3)
        && text_ok(4)
    {
        let unsigned = |i: usize| match t.get(i) {
            Some(Some(Trailing::Unsigned(u))) => Some(*u),
            _ => None,
        };
        let text = |i: usize| match t.get(i) {
            Some(Some(Trailing::Text(s))) => Some(*s),
            _ => None,
        };
        return ParsedTrailing {
            meta: Meta {
                group_idx: unsigned(0),
                kind: text(1).map(SpecKind::from_wire),
                sliding_window: unsigned(2),
            },
            mm: None,
            locality: text(3).map(locality_of),
            ownership: text(4),
        };
    }
    let mut meta = Meta::default();
    let mut mm = None;
    for f in t.into_iter().flatten() {
        match f {
            Trailing::Unsigned(u) => {
                if meta.group_idx.is_none() {
                    meta.group_idx = Some(u);
                } else if meta.sliding_window.is_none() {
                    meta.sliding_window = Some(u);
                }
            }
            Trailing::Text(s) => meta.kind = Some(SpecKind::from_wire(s)),
            Trailing::MmInfos(i) => mm = Some(i),
            Trailing::Ignored => {}
        }
    }
    ParsedTrailing { meta, mm, locality: None, ownership: None }
}

fn read_trailing<'a>(it: &mut msgpack::SeqIter<'a>, allow_mm: bool) -> Vec<Option<Trailing<'a>>> {
    let mut t = Vec::new();
    while t.len() < 5 {
        let Some(v) = it.next() else { break };
        t.push(trailing_of(v, allow_mm));
    }
    t
}

/// `Option<T>` element of a tuple: absent or nil is `None`.
fn next_opt<'a>(it: &mut msgpack::SeqIter<'a>) -> Option<Value<'a>> {
    it.next().filter(|v| !v.is_nil())
}

/// The tagged-array layout (deserialize.rs:187): a fixed prefix, then up to
/// five typed trailing slots; later elements are ignored.
fn raw_event_from_array<'a>(v: &Value<'a>) -> DResult<RawEvent<'a>> {
    let a = v.as_array().ok_or(Malformed)?;
    let mut it = a.iter();
    let tag = it.next().ok_or(Malformed)?.as_str().ok_or(Malformed)?;
    match tag {
        "BlockStored" => {
            let block_hashes = hash_list(it.next().ok_or(Malformed)?)?;
            let parent = opt_hash(next_opt(&mut it))?;
            let (token_ids, is_eagle) = token_ids_of(it.next().ok_or(Malformed)?)?;
            let block_size = it.next().ok_or(Malformed)?.as_u64().ok_or(Malformed)?;
            // Position 5 was `lora_id` (Option<u64>).
            if let Some(lora_id) = next_opt(&mut it) {
                lora_id.as_u64().ok_or(Malformed)?;
            }
            let medium = opt_str(next_opt(&mut it))?;
            // Position 7: vLLM's `lora_name`, or SGLang's `{cache_salt}` metadata.
            let (lora_name, sglang_salt) = match next_opt(&mut it) {
                None => (None, None),
                Some(name @ Value::Str(_)) => (Some(name.as_str().ok_or(Malformed)?), None),
                Some(meta @ (Value::Map(_) | Value::Array(_))) => {
                    let f = fields(&meta, &["cache_salt"])?;
                    let salt = f.req(0)?.as_str().ok_or(Malformed)?;
                    (None, Some(salt).filter(|s| !s.is_empty()))
                }
                Some(_) => return Err(Malformed),
            };
            let extra_keys = extra_keys_of(next_opt(&mut it))?;
            let parsed = parse_trailing(read_trailing(&mut it, true));
            let cache_namespace = sglang_salt
                .map(str::to_owned)
                .or_else(|| extra_keys_namespace(extra_keys.as_ref(), lora_name));
            let mm = parsed.mm.or_else(|| extra_keys_mm(extra_keys));
            Ok(RawEvent::Stored(RawStored {
                block_hashes,
                parent,
                token_ids,
                is_eagle,
                block_size,
                medium: non_empty(medium),
                lora_name,
                cache_namespace,
                mm,
                meta: parsed.meta,
                locality: parsed.locality,
                ownership: parsed.ownership,
                session_id: None,
            }))
        }
        "BlockRemoved" => {
            let block_hashes = hash_list(it.next().ok_or(Malformed)?)?;
            let medium = opt_str(next_opt(&mut it))?;
            let parsed = parse_trailing(read_trailing(&mut it, false));
            Ok(RawEvent::Removed {
                block_hashes,
                medium: non_empty(medium),
                meta: parsed.meta,
                locality: parsed.locality,
                ownership: parsed.ownership,
            })
        }
        "AllBlocksCleared" => Ok(RawEvent::Cleared { ownership: opt_str(next_opt(&mut it))? }),
        "Ignored" => Ok(RawEvent::Ignored),
        _ => Err(UnknownVariant),
    }
}

// ---- normaliser state -----------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Namespace {
    Named(Arc<str>),
    Ambiguous,
}

/// Why the normaliser dropped an event (`ZmqEventFilterReason`), mapped to
/// what the report says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtered {
    /// Known but not for the device index (kvcr ownership, `Ignored`, remote
    /// locality, non-main KV-cache groups, ambiguous namespace).
    Ignored,
    /// An unknown ownership, locality, medium or cache-spec kind.
    Unknown,
}

/// Per-applier state of the vLLM path, for every worker it has seen.
#[derive(Debug, Default)]
pub struct VllmState {
    /// `(worker, dp rank, group_idx) -> (kind, sliding window)` learned from stores.
    groups: FxMap<(u64, u32, u32), (SpecKind, Option<u32>)>,
    /// `(holder, external hash) -> namespace` for salted chains.
    namespaces: FxMap<(WorkerKey, u64), Namespace>,
    /// Device-tier store refcounts per holder (`EventDedupFilter`, RefCounted).
    refcounts: FxMap<WorkerKey, FxMap<u64, u32>>,
}

impl VllmState {
    /// Forgets everything about one holder (its stream restarted).
    pub fn forget_holder(&mut self, w: WorkerKey) {
        self.groups.retain(|&(id, dp, _), _| !(id == w.worker_id && dp == w.dp_rank));
        self.namespaces.retain(|(h, _), _| *h != w);
        self.refcounts.remove(&w);
    }

    /// Forgets every dp rank of a worker.
    pub fn forget_worker(&mut self, worker_id: u64) {
        self.groups.retain(|&(id, _, _), _| id != worker_id);
        self.namespaces.retain(|(h, _), _| h.worker_id != worker_id);
        self.refcounts.retain(|h, _| h.worker_id != worker_id);
    }

    /// `preprocess_with_reason` + `preprocess_residency_with_reason` (zmq_wire/mod.rs:143-215).
    fn preprocess(&mut self, raw: &mut RawEvent<'_>, w: WorkerKey) -> Result<(), Filtered> {
        match raw.ownership() {
            None => {}
            Some("kvcr") => return Err(Filtered::Ignored),
            Some(_) => return Err(Filtered::Unknown),
        }
        if matches!(raw, RawEvent::Ignored) {
            return Err(Filtered::Ignored);
        }
        match raw.locality() {
            Some(Locality::Remote) => return Err(Filtered::Ignored),
            Some(Locality::Unknown) => return Err(Filtered::Unknown),
            _ => {}
        }
        if let Some(m) = raw.medium() {
            match Tier::from_kv_medium(m) {
                Some(Tier::Device | Tier::HostPinned) => {}
                // Lower tiers bypass metadata and namespace state.
                Some(_) => return Ok(()),
                None => return Err(Filtered::Unknown),
            }
        }
        let meta = raw.meta();
        if let (RawEvent::Stored(_), Some(g), Some(kind)) = (&raw, meta.group_idx, meta.kind) {
            self.groups.insert((w.worker_id, w.dp_rank, g), (kind, meta.sliding_window));
        }
        self.group_filter(meta, w)?;
        self.propagate_namespace(raw, w)
    }

    /// `filter_reason` (zmq_wire/mod.rs:356).
    fn group_filter(&self, meta: Meta, w: WorkerKey) -> Result<(), Filtered> {
        if let Some(kind) = meta.kind {
            return match kind {
                SpecKind::Main => Ok(()),
                SpecKind::Unknown => Err(Filtered::Unknown),
                SpecKind::Other => Err(Filtered::Ignored),
            };
        }
        let Some(g) = meta.group_idx else { return Ok(()) };
        match self.groups.get(&(w.worker_id, w.dp_rank, g)) {
            Some((SpecKind::Main, _)) => Ok(()),
            Some((SpecKind::Unknown, _)) => Err(Filtered::Unknown),
            Some((SpecKind::Other, _)) => Err(Filtered::Ignored),
            None if g == 0 => Ok(()),
            None => Err(Filtered::Ignored),
        }
    }

    /// `propagate_cache_namespace` (zmq_wire/mod.rs:256): a salted store names
    /// its blocks; an unsalted store whose parent is named inherits the name;
    /// a hash seen under two names becomes ambiguous and its unsalted children
    /// are dropped.
    fn propagate_namespace(
        &mut self,
        raw: &mut RawEvent<'_>,
        w: WorkerKey,
    ) -> Result<(), Filtered> {
        match raw {
            RawEvent::Stored(s) => {
                if s.cache_namespace.as_deref() == Some("") {
                    s.cache_namespace = None;
                }
                let named: Option<Arc<str>> = if let Some(ns) = s.cache_namespace.as_deref() {
                    let inherited = s.parent.and_then(|p| match self.namespaces.get(&(w, p)) {
                        Some(Namespace::Named(pn)) if pn.as_ref() == ns => Some(Arc::clone(pn)),
                        _ => None,
                    });
                    Some(inherited.unwrap_or_else(|| Arc::from(ns)))
                } else if let Some(p) = s.parent {
                    match self.namespaces.get(&(w, p)) {
                        Some(Namespace::Named(ns)) => {
                            s.cache_namespace = Some(ns.to_string());
                            Some(Arc::clone(ns))
                        }
                        Some(Namespace::Ambiguous) => return Err(Filtered::Ignored),
                        None => None,
                    }
                } else {
                    None
                };
                if let Some(ns) = named {
                    let state = Namespace::Named(ns);
                    for &h in &s.block_hashes {
                        self.namespaces
                            .entry((w, h))
                            .and_modify(|e| {
                                if *e != state {
                                    *e = Namespace::Ambiguous;
                                }
                            })
                            .or_insert_with(|| state.clone());
                    }
                } else {
                    for &h in &s.block_hashes {
                        if let Some(e) = self.namespaces.get_mut(&(w, h)) {
                            *e = Namespace::Ambiguous;
                        }
                    }
                }
            }
            RawEvent::Removed { block_hashes, .. } => {
                for &h in block_hashes.iter() {
                    let key = (w, h);
                    if !matches!(self.namespaces.get(&key), Some(Namespace::Ambiguous)) {
                        self.namespaces.remove(&key);
                    }
                }
            }
            RawEvent::Cleared { .. } => self.namespaces.retain(|(h, _), _| *h != w),
            RawEvent::Ignored => {}
        }
        Ok(())
    }

    /// `EventDedupFilter::track_store_in_domain` (dedup.rs:43), device tier.
    fn track_store(&mut self, w: WorkerKey, blocks: &[StoredBlock]) {
        let rc = self.refcounts.entry(w).or_default();
        for b in blocks {
            *rc.entry(b.external_hash).or_insert(0) += 1;
        }
    }

    /// `filter_remove_in_domain` (dedup.rs:66): keeps hashes whose refcount
    /// drops to zero or that are not tracked.
    fn filter_remove(&mut self, w: WorkerKey, hashes: &mut Vec<u64>) {
        let Some(rc) = self.refcounts.get_mut(&w) else { return };
        hashes.retain(|h| match rc.get_mut(h) {
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    rc.remove(h);
                    true
                } else {
                    false
                }
            }
            None => true,
        });
    }
}

// ---- conversion and coalescing -------------------------------------------------------------

#[derive(Debug)]
enum Data {
    Stored { parent: Option<u64>, blocks: Vec<StoredBlock> },
    Removed { hashes: Vec<u64> },
}

/// A converted event on its way to the index (`PlacementEvent`).
#[derive(Debug)]
struct Placed<'a> {
    tier: Tier,
    session: Option<&'a str>,
    data: Data,
    /// Source events whose fate follows this event's index outcome.
    srcs: u32,
}

impl Placed<'_> {
    fn block_count(&self) -> usize {
        match &self.data {
            Data::Stored { blocks, .. } => blocks.len(),
            Data::Removed { hashes } => hashes.len(),
        }
    }
}

/// `compute_block_hash_for_seq(window, ..)[0]` for one block window: tokens as
/// LE u32, then the sorted multimodal hashes as LE u64 (protocols.rs:151).
fn local_hash(window: &[u32], seed: u64, mm: Option<&[u64]>) -> u64 {
    match mm {
        Some(m) if !m.is_empty() => {
            let mut bytes = Vec::with_capacity(window.len() * 4 + m.len() * 8);
            for t in window {
                bytes.extend_from_slice(&t.to_le_bytes());
            }
            let mut sorted = m.to_vec();
            sorted.sort_unstable();
            for h in sorted {
                bytes.extend_from_slice(&h.to_le_bytes());
            }
            xxh3_64_with_seed(&bytes, seed)
        }
        _ => hash::hash_block(window, seed),
    }
}

/// Runs one decoded batch for one holder through conversion, coalescing,
/// dedup and tier routing, appending index operations to `ops` and counting
/// into `report`.
pub(crate) fn process_batch(
    state: &mut VllmState,
    block_size: u32,
    w: WorkerKey,
    events: Vec<DResult<RawEvent<'_>>>,
    ops: &mut Vec<Op>,
    report: &mut ApplyReport,
) {
    let mut pending: Option<Placed<'_>> = None;
    for ev in events {
        let mut raw = match ev {
            Ok(r) => r,
            Err(Malformed) => {
                report.reject(RejectReason::Malformed, 1);
                continue;
            }
            Err(UnknownVariant) => {
                report.reject(RejectReason::UnknownVariant, 1);
                continue;
            }
        };
        if let Err(f) = state.preprocess(&mut raw, w) {
            match f {
                Filtered::Ignored => report.ignored += 1,
                Filtered::Unknown => report.reject(RejectReason::UnknownVariant, 1),
            }
            continue;
        }
        // `convert_event`: the medium was vetted by `preprocess`.
        let tier = raw.medium().and_then(Tier::from_kv_medium).unwrap_or(Tier::Device);
        let placed = match raw {
            RawEvent::Cleared { .. } => {
                flush(state, w, pending.take(), ops, report);
                state.refcounts.remove(&w);
                ops.push(Op { worker: w, kind: OpKind::Cleared, srcs: 1 });
                continue;
            }
            RawEvent::Ignored => continue,
            RawEvent::Removed { block_hashes, .. } => Placed {
                tier,
                session: None,
                data: Data::Removed { hashes: block_hashes },
                srcs: 1,
            },
            RawEvent::Stored(s) => convert_stored(s, tier, block_size, w, report),
        };
        push(state, w, &mut pending, placed, ops, report);
    }
    flush(state, w, pending.take(), ops, report);
}

/// `convert_event`'s `BlockStored` arm plus `create_stored_blocks`
/// (convert.rs:70-150, 416-484), counting dropped blocks.
///
/// Partial block vs block-size mismatch (Dynamo drops both with a warning,
/// convert.rs:438-459): a store whose `block_size` equals the configured size
/// but whose `token_ids` run out before the last block has its trailing blocks
/// dropped, counted as `partial_block` (one per block). A store whose
/// `block_size` differs loses all its blocks (Dynamo breaks at the first
/// block); it counts as `partial_block` only when it is one block shorter than
/// a configured block, i.e. `block_size < configured`, at most one block hash,
/// and fewer tokens than a configured block (+1 for Eagle) — the shape of a
/// trailing partial block. Any other size difference (bigger blocks, or
/// several smaller ones) is a `block_size_mismatch`: the engine and the router
/// disagree on the block size. Only device-tier stores are classified; lower
/// tiers never reach the device index.
fn convert_stored<'a>(
    s: RawStored<'a>,
    tier: Tier,
    block_size: u32,
    w: WorkerKey,
    report: &mut ApplyReport,
) -> Placed<'a> {
    let session = s.session_id;
    // Self-referencing store: all hashes, the parent included, must be unique
    // (convert.rs:88); Dynamo emits an empty removal instead.
    let mut seen: hashbrown::HashSet<u64, FxBuildHasher> =
        hashbrown::HashSet::with_capacity_and_hasher(s.block_hashes.len() + 1, FxBuildHasher);
    if let Some(p) = s.parent {
        seen.insert(p);
    }
    if s.block_hashes.iter().any(|h| !seen.insert(*h)) {
        if tier == Tier::Device {
            report.reject(RejectReason::InvalidBlockSequence, 1);
        } else {
            report.ignored += 1;
        }
        return Placed { tier, session, data: Data::Removed { hashes: Vec::new() }, srcs: 0 };
    }
    let n = s.block_hashes.len();
    let append = s.is_eagle as usize;
    let mut blocks = Vec::with_capacity(n);
    if s.block_size == block_size as u64 {
        let bs = block_size as usize;
        let seed = hash::block_hash_seed(s.lora_name, s.cache_namespace.as_deref());
        let mut offset = 0usize;
        for (i, &h) in s.block_hashes.iter().enumerate() {
            let end = offset + append + bs;
            if end > s.token_ids.len() {
                break;
            }
            let mm = s.mm.as_ref().and_then(|m| m.get(i)).and_then(|b| b.as_deref());
            blocks.push(StoredBlock {
                local_hash: local_hash(&s.token_ids[offset..end], seed, mm),
                external_hash: h,
            });
            offset += bs;
        }
    }
    let dropped = n - blocks.len();
    let mut srcs = 1;
    if tier == Tier::Device && dropped > 0 {
        let short_single = s.block_size < block_size as u64
            && n <= 1
            && s.token_ids.len() < block_size as usize + append;
        if s.block_size == block_size as u64 || short_single {
            report.reject(RejectReason::PartialBlock, dropped as u32);
        } else {
            report.reject(RejectReason::BlockSizeMismatch, 1);
            report.mismatch(w, block_size, s.block_size);
        }
        if blocks.is_empty() {
            srcs = 0;
        }
    }
    Placed { tier, session, data: Data::Stored { parent: s.parent, blocks }, srcs }
}

/// `PlacementEventCoalescer::push` (batching.rs:42).
fn push<'a>(
    state: &mut VllmState,
    w: WorkerKey,
    pending: &mut Option<Placed<'a>>,
    ev: Placed<'a>,
    ops: &mut Vec<Op>,
    report: &mut ApplyReport,
) {
    let can_merge = pending.as_ref().is_some_and(|p| {
        p.tier == ev.tier
            && p.session == ev.session
            && match (&p.data, &ev.data) {
                (Data::Stored { blocks, .. }, Data::Stored { parent, .. }) => {
                    *parent == blocks.last().map(|b| b.external_hash)
                }
                (Data::Removed { .. }, Data::Removed { .. }) => true,
                _ => false,
            }
    });
    if can_merge && let Some(p) = pending.as_mut() {
        p.srcs += ev.srcs;
        match (&mut p.data, ev.data) {
            (Data::Stored { blocks, .. }, Data::Stored { blocks: more, .. }) => blocks.extend(more),
            (Data::Removed { hashes }, Data::Removed { hashes: more }) => hashes.extend(more),
            _ => {}
        }
        if p.block_count() >= MAX_BATCH_BLOCKS {
            flush(state, w, pending.take(), ops, report);
        }
        return;
    }
    flush(state, w, pending.take(), ops, report);
    if ev.block_count() >= MAX_BATCH_BLOCKS {
        flush(state, w, Some(ev), ops, report);
    } else {
        *pending = Some(ev);
    }
}

/// `BatchingState::emit_ready` (batching.rs:183) plus tier routing.
fn flush(
    state: &mut VllmState,
    w: WorkerKey,
    ev: Option<Placed<'_>>,
    ops: &mut Vec<Op>,
    report: &mut ApplyReport,
) {
    let Some(ev) = ev else { return };
    if ev.tier != Tier::Device {
        // Lower-tier indexers are not the device index.
        report.ignored += ev.srcs;
        return;
    }
    match ev.data {
        Data::Removed { mut hashes } => {
            state.filter_remove(w, &mut hashes);
            if hashes.is_empty() {
                // Absorbed by the refcounts: the blocks are still held.
                report.applied.removed += ev.srcs;
                return;
            }
            ops.push(Op { worker: w, kind: OpKind::Removed { hashes }, srcs: ev.srcs });
        }
        Data::Stored { parent, blocks } => {
            state.track_store(w, &blocks);
            ops.push(Op { worker: w, kind: OpKind::Stored { parent, blocks }, srcs: ev.srcs });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mm_hash_keys() {
        let k = format!("{:016x}{}", 0x0123_4567_89ab_cdefu64, "0".repeat(48));
        assert_eq!(mm_hash_from_key(&k), Some(0x0123_4567_89ab_cdef));
        assert_eq!(
            mm_hash_from_key("0123456789abcdef00112233445566778899aabbccddeefffedcba9876543210"),
            None
        );
        assert_eq!(mm_hash_from_key("123"), None);
    }

    #[test]
    fn spec_kinds() {
        assert_eq!(SpecKind::from_wire("full_attention"), SpecKind::Main);
        assert_eq!(SpecKind::from_wire("mamba"), SpecKind::Other);
        assert_eq!(SpecKind::from_wire("future_kind"), SpecKind::Unknown);
    }
}
