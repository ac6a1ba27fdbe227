//! napi-rs glue over kv-epp-core. Contracts:
//! - one call per request-level operation; hashes cross as `BigUint64Array`
//!   views written in place (caller-owned, reused buffers), never as arrays of
//!   JS values;
//! - indexes live in a process-wide registry addressed by a numeric handle, so
//!   every thread of the process (main thread, Piscina workers) reaches the
//!   same index; reads share a read lock, event application takes the write lock;
//! - errors carry the core's stable code as the message prefix `code: text`,
//!   which the TypeScript adapter turns into `KvEppError`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use kv_epp_core::hash;
use kv_epp_core::{CoreError, EventError, RadixIndex, StoredBlock, WorkerKey};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use parking_lot::RwLock;

type SharedIndex = Arc<RwLock<RadixIndex>>;
/// Caller-owned output views. Aliases make napi-derive convert them as values
/// (zero-copy `&mut [T]` over the typed array) rather than as `&mut` handles.
type OutU64<'a> = &'a mut [u64];
type OutU32<'a> = &'a mut [u32];

struct Registry {
    next: u32,
    indexes: HashMap<u32, SharedIndex>,
}

static REGISTRY: LazyLock<RwLock<Registry>> =
    LazyLock::new(|| RwLock::new(Registry { next: 1, indexes: HashMap::new() }));

fn err(code: &str, msg: impl std::fmt::Display) -> Error {
    Error::new(Status::InvalidArg, format!("{code}: {msg}"))
}

fn core_err(e: CoreError) -> Error {
    err(e.code(), e)
}

fn index(handle: u32) -> Result<SharedIndex> {
    REGISTRY
        .read()
        .indexes
        .get(&handle)
        .cloned()
        .ok_or_else(|| err("disposed", format!("no index with handle {handle}")))
}

fn u64_of(v: &BigInt, field: &str) -> Result<u64> {
    let (negative, value, lossless) = v.get_u64();
    if negative || !lossless {
        return Err(err("invalid_argument", format!("{field} must be an unsigned 64-bit integer")));
    }
    Ok(value)
}

/// The local-hash seed for a LoRA name and cache namespace (empty = absent).
#[napi]
pub fn block_hash_seed(lora_name: Option<String>, cache_namespace: Option<String>) -> BigInt {
    BigInt::from(hash::block_hash_seed(lora_name.as_deref(), cache_namespace.as_deref()))
}

/// Writes the local hashes of every full block of `tokens` into `out`; returns the count.
#[napi]
pub fn local_hashes_into(
    tokens: &[u32],
    block_size: u32,
    seed: BigInt,
    #[napi(ts_arg_type = "BigUint64Array")] out: OutU64,
) -> Result<u32> {
    let seed = u64_of(&seed, "seed")?;
    hash::local_hashes_into(tokens, block_size, seed, out).map(|n| n as u32).map_err(core_err)
}

/// Writes the sequence hashes of `local[..count]` into `out` (must not alias `local`); returns the count.
#[napi]
pub fn sequence_hashes_into(
    local: &[u64],
    count: u32,
    #[napi(ts_arg_type = "BigUint64Array")] out: OutU64,
) -> Result<u32> {
    let count = count as usize;
    if count > local.len() {
        return Err(core_err(CoreError::BufferTooSmall { needed: count, got: local.len() }));
    }
    hash::sequence_hashes_into(&local[..count], out).map(|n| n as u32).map_err(core_err)
}

/// Creates an empty index and returns its process-wide handle.
#[napi]
pub fn index_create() -> u32 {
    let mut reg = REGISTRY.write();
    let h = reg.next;
    reg.next += 1;
    reg.indexes.insert(h, Arc::new(RwLock::new(RadixIndex::new())));
    h
}

/// Frees an index. Later calls with the handle fail with `disposed`.
#[napi]
pub fn index_dispose(handle: u32) -> bool {
    REGISTRY.write().indexes.remove(&handle).is_some()
}

/// Outcome codes of event application (mirrored in the TypeScript adapter).
const OK: u32 = 0;
const PARENT_NOT_FOUND: u32 = 1;
const BLOCK_NOT_FOUND: u32 = 2;
const INVALID_BLOCK_SEQUENCE: u32 = 3;
const LENGTH_MISMATCH: u32 = 4;

fn outcome(r: std::result::Result<(), EventError>) -> u32 {
    match r {
        Ok(()) => OK,
        Err(EventError::ParentBlockNotFound) => PARENT_NOT_FOUND,
        Err(EventError::BlockNotFound) => BLOCK_NOT_FOUND,
        Err(EventError::InvalidBlockSequence) => INVALID_BLOCK_SEQUENCE,
    }
}

/// A `Stored` event. `parent` is `null` for a chain from the root.
#[napi]
pub fn index_apply_stored(
    handle: u32,
    worker_id: BigInt,
    dp_rank: u32,
    parent: Option<BigInt>,
    local_hashes: &[u64],
    external_hashes: &[u64],
) -> Result<u32> {
    if local_hashes.len() != external_hashes.len() {
        return Ok(LENGTH_MISMATCH);
    }
    let worker = WorkerKey::new(u64_of(&worker_id, "workerId")?, dp_rank);
    let parent = parent.as_ref().map(|p| u64_of(p, "parentHash")).transpose()?;
    let blocks: Vec<StoredBlock> = local_hashes
        .iter()
        .zip(external_hashes)
        .map(|(&l, &e)| StoredBlock { local_hash: l, external_hash: e })
        .collect();
    let idx = index(handle)?;
    let r = idx.write().apply_stored(worker, parent, &blocks);
    Ok(outcome(r))
}

/// A `Removed` event.
#[napi]
pub fn index_apply_removed(
    handle: u32,
    worker_id: BigInt,
    dp_rank: u32,
    external_hashes: &[u64],
) -> Result<u32> {
    let worker = WorkerKey::new(u64_of(&worker_id, "workerId")?, dp_rank);
    let idx = index(handle)?;
    let r = idx.write().apply_removed(worker, external_hashes);
    Ok(outcome(r))
}

/// `AllBlocksCleared` for one (worker, dp rank).
#[napi]
pub fn index_clear(handle: u32, worker_id: BigInt, dp_rank: u32) -> Result<()> {
    let worker = WorkerKey::new(u64_of(&worker_id, "workerId")?, dp_rank);
    index(handle)?.write().apply_cleared(worker);
    Ok(())
}

/// Drops every dp rank of a worker.
#[napi]
pub fn index_remove_worker(handle: u32, worker_id: BigInt) -> Result<()> {
    let id = u64_of(&worker_id, "workerId")?;
    index(handle)?.write().remove_worker(id);
    Ok(())
}

/// Scores `local_hashes` and writes up to `capacity` holders into the output
/// arrays (sorted by worker id, then dp rank). Returns the total number of
/// holders with a match; when it exceeds the arrays' length, call again with
/// larger arrays.
#[napi]
pub fn index_find_matches(
    handle: u32,
    local_hashes: &[u64],
    early_exit: bool,
    #[napi(ts_arg_type = "BigUint64Array")] out_worker_ids: OutU64,
    #[napi(ts_arg_type = "Uint32Array")] out_dp_ranks: OutU32,
    #[napi(ts_arg_type = "Uint32Array")] out_depths: OutU32,
    #[napi(ts_arg_type = "Uint32Array")] out_tree_sizes: OutU32,
) -> Result<u32> {
    let idx = index(handle)?;
    let guard = idx.read();
    let scores = guard.find_matches(local_hashes, early_exit).scores;
    let cap = out_worker_ids
        .len()
        .min(out_dp_ranks.len())
        .min(out_depths.len())
        .min(out_tree_sizes.len());
    if scores.len() <= cap {
        for (i, &(w, d)) in scores.iter().enumerate() {
            out_worker_ids[i] = w.worker_id;
            out_dp_ranks[i] = w.dp_rank;
            out_depths[i] = d;
            out_tree_sizes[i] = guard.tree_size(w).min(u32::MAX as usize) as u32;
        }
    }
    Ok(scores.len() as u32)
}

/// Blocks held by one (worker, dp rank).
#[napi]
pub fn index_tree_size(handle: u32, worker_id: BigInt, dp_rank: u32) -> Result<u32> {
    let worker = WorkerKey::new(u64_of(&worker_id, "workerId")?, dp_rank);
    Ok(index(handle)?.read().tree_size(worker).min(u32::MAX as usize) as u32)
}

#[napi(object)]
pub struct NativeIndexStats {
    pub workers: u32,
    pub memberships: f64,
    pub nodes: f64,
    pub heap_bytes: f64,
    pub applied: f64,
    pub parent_not_found: f64,
    pub block_not_found: f64,
    pub invalid_block_sequence: f64,
}

#[napi]
pub fn index_stats(handle: u32) -> Result<NativeIndexStats> {
    let idx = index(handle)?;
    let g = idx.read();
    let c = g.counters();
    Ok(NativeIndexStats {
        workers: g.worker_count() as u32,
        memberships: g.membership_count() as f64,
        nodes: g.node_count() as f64,
        heap_bytes: g.heap_bytes() as f64,
        applied: c.applied as f64,
        parent_not_found: c.parent_not_found as f64,
        block_not_found: c.block_not_found as f64,
        invalid_block_sequence: c.invalid_block_sequence as f64,
    })
}
