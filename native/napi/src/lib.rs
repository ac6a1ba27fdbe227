//! napi-rs glue over kv-epp-core. Contracts:
//! - one call per request-level operation; hashes cross as `BigUint64Array`
//!   views written in place (caller-owned, reused buffers), never as arrays of
//!   JS values;
//! - indexes live in a process-wide registry addressed by a numeric handle, so
//!   every thread of the process (main thread, Piscina workers) reaches the
//!   same index; reads share a read lock, event application takes the write lock;
//! - errors carry the core's stable code as the message prefix `code: text`,
//!   which the TypeScript adapter turns into `KvEppError`;
//! - tokenizers live in the same registry (their own handles); a call clones the
//!   tokenizer's `Arc` and runs outside the lock on the calling thread; calls into
//!   the tokenizer libraries catch panics (`catch_unwind`) so a bug there is a JS
//!   error, never a crashed process;
//! - KV-event appliers live in their own process-wide registry (handles from
//!   the same counter); one `eventApplierApply` call decodes a whole transport
//!   message outside the index lock, then takes the index's write lock once to
//!   apply it.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod recorder;
mod sched;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use kv_epp_core::approx::{PruneSettings, PruneTracker};
use kv_epp_core::events::{ApplyReport, EventApplier, EventCodec, RejectReason, SourceContext};
use kv_epp_core::hash;
use kv_epp_core::route::{
    BodyWork, PackedScore, RouteError, RouteInput, pack_route, prepare_request,
};
use kv_epp_core::tokenize::{ApiKind, TokenizeError, Tokenizer};
use kv_epp_core::{CoreError, EventError, RadixIndex, StoredBlock, WorkerKey};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use parking_lot::{Mutex, RwLock};

type SharedIndex = Arc<RwLock<RadixIndex>>;
/// Caller-owned output views. Aliases make napi-derive convert them as values
/// (zero-copy `&mut [T]` over the typed array) rather than as `&mut` handles.
type OutU64<'a> = &'a mut [u64];
type OutU32<'a> = &'a mut [u32];

struct Registry {
    next: u32,
    indexes: HashMap<u32, SharedIndex>,
    tokenizers: HashMap<u32, Arc<Tokenizer>>,
}

static REGISTRY: LazyLock<RwLock<Registry>> = LazyLock::new(|| {
    RwLock::new(Registry { next: 1, indexes: HashMap::new(), tokenizers: HashMap::new() })
});

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

/// Drops one holder (a dp rank of a worker that left) without counting an event.
#[napi]
pub fn index_remove_holder(handle: u32, worker_id: BigInt, dp_rank: u32) -> Result<()> {
    let worker = WorkerKey::new(u64_of(&worker_id, "workerId")?, dp_rank);
    index(handle)?.write().remove_worker_dp_rank(worker);
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

/// `indexStats(handle).memberships` alone.
#[napi]
pub fn index_memberships(handle: u32) -> Result<f64> {
    Ok(index(handle)?.read().membership_count() as f64)
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

// ---------------------------------------------------------------------------------------------
// Tokenization
// ---------------------------------------------------------------------------------------------

fn tok_err(e: TokenizeError) -> Error {
    err(e.code(), e.message)
}

fn tokenizer(handle: u32) -> Result<Arc<Tokenizer>> {
    REGISTRY
        .read()
        .tokenizers
        .get(&handle)
        .cloned()
        .ok_or_else(|| err("disposed", format!("no tokenizer with handle {handle}")))
}

/// The clock for `strftime_now`, ms since the epoch (a JS number).
fn now_ms_of(now_ms: f64) -> Result<i64> {
    if !now_ms.is_finite() {
        return Err(err("invalid_argument", "nowMs must be a finite number"));
    }
    Ok(now_ms as i64)
}

/// Loads a tokenizer (`o200k_base` / `cl100k_base`, a directory with
/// tokenizer.json, or a tokenizer.json path); `chat_template` replaces its chat
/// template. Returns a process-wide handle.
#[napi(catch_unwind)]
pub fn tokenizer_load(source: String, chat_template: Option<String>) -> Result<u32> {
    let mut t = Tokenizer::load(&source).map_err(tok_err)?;
    if let Some(template) = chat_template {
        t.set_chat_template(&template).map_err(tok_err)?;
    }
    let mut reg = REGISTRY.write();
    let h = reg.next;
    reg.next += 1;
    reg.tokenizers.insert(h, Arc::new(t));
    Ok(h)
}

/// Replaces a tokenizer's chat template (vLLM's `--chat-template`; HF tokenizers
/// only). Meant right after loading: fails with `invalid_argument` while another
/// call is using the tokenizer. A template that does not compile fails every
/// later chat request with `template_error`.
#[napi(catch_unwind)]
pub fn tokenizer_set_chat_template(handle: u32, chat_template: String) -> Result<()> {
    let mut reg = REGISTRY.write();
    let t = reg
        .tokenizers
        .get_mut(&handle)
        .ok_or_else(|| err("disposed", format!("no tokenizer with handle {handle}")))?;
    let t = Arc::get_mut(t)
        .ok_or_else(|| err("invalid_argument", "the tokenizer is in use by another call"))?;
    t.set_chat_template(&chat_template).map_err(tok_err)
}

/// Sets whose prompt construction a tokenizer follows: `vllm` (the default,
/// vLLM's OpenAI server) or `dynamo` (Dynamo's frontend, which takes the ids as
/// the prompt). HF tokenizers only; tiktoken encodings ignore it. Meant right
/// after loading, like `tokenizer_set_chat_template`.
#[napi(catch_unwind)]
pub fn tokenizer_set_dialect(handle: u32, dialect: String) -> Result<()> {
    let dialect = kv_epp_core::tokenize::Dialect::parse(&dialect).map_err(tok_err)?;
    let mut reg = REGISTRY.write();
    let t = reg
        .tokenizers
        .get_mut(&handle)
        .ok_or_else(|| err("disposed", format!("no tokenizer with handle {handle}")))?;
    let t = Arc::get_mut(t)
        .ok_or_else(|| err("invalid_argument", "the tokenizer is in use by another call"))?;
    t.set_dialect(dialect);
    Ok(())
}

/// Sets the budget of the process's segment caches (the ids of long text
/// segments between special tokens, reused when a segment repeats: system
/// prompts, earlier turns), in bytes; 0 turns them off. Default 64 MiB.
#[napi]
pub fn set_segment_cache_bytes(bytes: f64) -> Result<()> {
    if !(bytes.is_finite() && bytes >= 0.0 && bytes <= 2f64.powi(40)) {
        return Err(err("invalid_argument", "segment cache bytes must be in 0..=2^40"));
    }
    kv_epp_core::tokenize::segment_cache::set_segment_cache_bytes(bytes as usize);
    Ok(())
}

/// `[hits, misses]` of a tokenizer's segment cache (zeros where it has none).
#[napi]
pub fn tokenizer_segment_cache_stats(handle: u32) -> Result<Vec<f64>> {
    let s = tokenizer(handle)?.segment_cache_stats();
    Ok(vec![s.hits as f64, s.misses as f64])
}

/// Frees a tokenizer. Later calls with the handle fail with `disposed`.
#[napi]
pub fn tokenizer_dispose(handle: u32) -> bool {
    REGISTRY.write().tokenizers.remove(&handle).is_some()
}

/// `hf` or `tiktoken`.
#[napi]
pub fn tokenizer_kind(handle: u32) -> Result<String> {
    Ok(tokenizer(handle)?.kind().to_string())
}

/// Plain encode of `text`.
#[napi(catch_unwind)]
pub fn tokenizer_encode(
    handle: u32,
    text: String,
    add_special_tokens: bool,
) -> Result<Uint32Array> {
    let ids = tokenizer(handle)?.encode(&text, add_special_tokens).map_err(tok_err)?;
    Ok(Uint32Array::new(ids))
}

/// The rendered chat prompt of a chat/completions body (UTF-8 JSON bytes).
#[napi(catch_unwind)]
pub fn tokenizer_render_chat(handle: u32, body: &[u8], now_ms: f64) -> Result<String> {
    tokenizer(handle)?.render_chat(body, now_ms_of(now_ms)?).map_err(tok_err)
}

/// vLLM's content format for a chat template's text: `string` or `openai`.
#[napi(catch_unwind)]
pub fn chat_template_content_format(source: String) -> String {
    kv_epp_core::tokenize::chat::content_format_of(&source).as_str().to_string()
}

/// The prompt token ids of a request body; `api` is `chat` or `completions`.
#[napi(catch_unwind)]
pub fn tokenizer_tokenize_request(
    handle: u32,
    body: &[u8],
    api: String,
    now_ms: f64,
) -> Result<Uint32Array> {
    let api = api_of(&api)?;
    let ids =
        tokenizer(handle)?.tokenize_request(body, api, now_ms_of(now_ms)?).map_err(tok_err)?;
    Ok(Uint32Array::new(ids))
}

// ---------------------------------------------------------------------------------------------
// The fused hot path
// ---------------------------------------------------------------------------------------------

fn api_of(api: &str) -> Result<ApiKind> {
    match api {
        "chat" => Ok(ApiKind::Chat),
        "completions" => Ok(ApiKind::Completions),
        other => {
            Err(err("invalid_argument", format!("api must be chat or completions, got {other:?}")))
        }
    }
}

/// Tokenize, hash and score one request body in one call; with `body_work`,
/// also run the router's body checks and splice `nvext.token_data` (and the
/// model rewrite, `rewrite`) into the body. Returns one JS-owned ArrayBuffer
/// in `kv_epp_core::route::pack_route`'s layout. `index_handle` 0 skips scoring. `namespace` is used when the
/// body names no cache salt (the `x-tenant-id` header).
#[napi(catch_unwind, ts_return_type = "ArrayBuffer")]
#[allow(clippy::too_many_arguments)]
pub fn prepare_route<'env>(
    env: &'env Env,
    tokenizer_handle: u32,
    index_handle: u32,
    body: &[u8],
    api: String,
    block_size: u32,
    lora_name: Option<String>,
    namespace: Option<String>,
    now_ms: f64,
    early_exit: bool,
    body_work: bool,
    rewrite: Option<String>,
) -> Result<ArrayBuffer<'env>> {
    let tok = tokenizer(tokenizer_handle)?;
    let input = RouteInput {
        body,
        api: api_of(&api)?,
        block_size,
        lora_name: lora_name.as_deref(),
        header_namespace: namespace.as_deref(),
        now_ms: now_ms_of(now_ms)?,
    };
    let work = BodyWork { rewrite: rewrite.as_deref() };
    let (p, edited) =
        prepare_request(&tok, &input, body_work.then_some(&work)).map_err(|e| match e {
            RouteError::Tokenize(e) => tok_err(e),
            RouteError::Core(e) => core_err(e),
        })?;
    let mut scores = Vec::new();
    if index_handle != 0 {
        let idx = index(index_handle)?;
        let g = idx.read();
        for (w, depth) in g.find_matches(&p.local_hashes, early_exit).scores {
            let tree_size = g.tree_size(w).min(u32::MAX as usize) as u32;
            scores.push(PackedScore {
                worker_id: w.worker_id,
                dp_rank: w.dp_rank,
                depth,
                tree_size,
            });
        }
    }
    let packed = pack_route(&p, edited.as_ref(), &scores);
    ArrayBuffer::copy_from(env, packed)
}

// ---------------------------------------------------------------------------------------------
// Approximate mode
// ---------------------------------------------------------------------------------------------

/// An object bound to an index (its index is looked up per call, so a disposed
/// index fails with `disposed` instead of being kept alive).
struct Bound<T> {
    index_handle: u32,
    inner: T,
}

type Shared<T> = Arc<Mutex<Bound<T>>>;
type BoundRegistry<T> = LazyLock<Mutex<HashMap<u32, Shared<T>>>>;

fn bound<T>(registry: &BoundRegistry<T>, handle: u32, what: &str) -> Result<Shared<T>> {
    registry
        .lock()
        .get(&handle)
        .cloned()
        .ok_or_else(|| err("disposed", format!("no {what} with handle {handle}")))
}

/// Registers `inner` under a fresh process-wide handle (the index registry's counter).
fn register<T>(registry: &BoundRegistry<T>, index_handle: u32, inner: T) -> u32 {
    let mut reg = REGISTRY.write();
    let handle = reg.next;
    reg.next += 1;
    registry.lock().insert(handle, Arc::new(Mutex::new(Bound { index_handle, inner })));
    handle
}

static TRACKERS: BoundRegistry<PruneTracker> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn tracker(handle: u32) -> Result<Shared<PruneTracker>> {
    bound(&TRACKERS, handle, "prune tracker")
}

/// Runs `f` on a tracker and its index's write lock (tracker first, then index).
fn with_tracker<T>(
    handle: u32,
    f: impl FnOnce(&mut PruneTracker, &mut RadixIndex) -> T,
) -> Result<T> {
    with_tracker_locked(handle, false, f)
}

/// [`with_tracker`]; `fair` releases both locks fairly: a thread waiting for
/// them (the event loop scoring a request) goes next, not this one again.
fn with_tracker_locked<T>(
    handle: u32,
    fair: bool,
    f: impl FnOnce(&mut PruneTracker, &mut RadixIndex) -> T,
) -> Result<T> {
    let t = tracker(handle)?;
    let mut t = t.lock();
    let idx = index(t.index_handle)?;
    let mut g = idx.write();
    let r = f(&mut t.inner, &mut g);
    if fair {
        parking_lot::RwLockWriteGuard::unlock_fair(g);
        parking_lot::MutexGuard::unlock_fair(t);
    }
    Ok(r)
}

/// Approximate mode's TTL + size-cap tracker bound to an index
/// (`kv_epp_core::approx`); settings are validated as the TypeScript twin does.
#[napi]
pub fn approx_tracker_create(
    index_handle: u32,
    ttl_ms: f64,
    max_tree_size: f64,
    prune_target_ratio: f64,
    refresh_granularity_ms: f64,
    removal_step: f64,
) -> Result<u32> {
    index(index_handle)?;
    // A count outside 1..=2^53 becomes 0, which validation refuses.
    let count = |x: f64| {
        if x.fract() == 0.0 && x > 0.0 && x <= 9.007_199_254_740_991e15 { x as usize } else { 0 }
    };
    let settings = PruneSettings {
        ttl_ms,
        max_tree_size: count(max_tree_size),
        prune_target_ratio,
        refresh_granularity_ms,
        removal_step: count(removal_step),
    };
    let t = PruneTracker::new(settings).map_err(|m| err("invalid_argument", m))?;
    Ok(register(&TRACKERS, index_handle, t))
}

#[napi]
pub fn approx_tracker_dispose(handle: u32) -> bool {
    TRACKERS.lock().remove(&handle).is_some()
}

/// After a routing decision: expire what is due, store the decision's blocks
/// (`local[..count]`, their sequence hashes computed here) for the holder and
/// track them, pruning above the cap. Returns the memberships removed.
#[napi]
pub fn approx_route(
    handle: u32,
    worker_id: BigInt,
    dp_rank: u32,
    local: &[u64],
    count: u32,
    now_ms: f64,
) -> Result<f64> {
    let worker = WorkerKey::new(u64_of(&worker_id, "workerId")?, dp_rank);
    let local = &local[..(count as usize).min(local.len())];
    with_tracker(handle, |t, idx| {
        let r = t.route(idx, worker, local, now_ms);
        (r.expired + r.pruned) as f64
    })
}

/// Removals per lock hold on the approximate-mode thread (~0.25 ms).
const RECORD_CHUNK: usize = 1024;

fn with_tracker_fair<T>(
    handle: u32,
    f: impl FnOnce(&mut PruneTracker, &mut RadixIndex) -> T,
) -> Result<T> {
    with_tracker_locked(handle, true, f)
}

/// `approx_route` in chunks of `RECORD_CHUNK` removals, each under its own
/// lock hold, up to the decision's budget, in `route`'s order: what is due
/// expires first (so the cap is checked after it, as `route` checks it), then
/// the store, then the prune. False when the tracker is gone.
fn route_in_chunks(handle: u32, worker: WorkerKey, local: &[u64], now_ms: f64) -> bool {
    // The budget needs the tracker's settings only, not the index lock.
    let Ok(t) = tracker(handle) else { return false };
    let mut left = t.lock().inner.budget(local.len());
    while left > 0 {
        let want = RECORD_CHUNK.min(left);
        let Ok(n) = with_tracker_fair(handle, |t, idx| t.expire_up_to(idx, now_ms, want)) else {
            return false;
        };
        left -= n;
        if n < want {
            break; // nothing more is due
        }
    }
    let first = with_tracker_fair(handle, |t, idx| {
        let r = t.route_within(idx, worker, local, now_ms, RECORD_CHUNK.min(left));
        (r.expired + r.pruned, t.backlog(now_ms))
    });
    let Ok((n, mut more)) = first else { return false };
    left -= n;
    while more && left > 0 {
        let Ok((n, m)) = with_tracker_fair(handle, |t, idx| {
            let r = t.maintain_within(idx, now_ms, RECORD_CHUNK.min(left));
            (r.expired + r.pruned, t.backlog(now_ms))
        }) else {
            return false;
        };
        left = left.saturating_sub(n);
        more = m && n > 0;
    }
    true
}

/// `approx_maintain` until no backlog is left, in chunks. False when the tracker is gone.
fn maintain_in_chunks(handle: u32, now_ms: f64) -> bool {
    loop {
        let Ok((n, more)) = with_tracker_fair(handle, |t, idx| {
            let r = t.maintain_within(idx, now_ms, RECORD_CHUNK);
            (r.expired + r.pruned, t.backlog(now_ms))
        }) else {
            return false;
        };
        if !more || n == 0 {
            return true;
        }
    }
}

/// `approx_route`, run later on kv-epp's approximate-mode thread in queue
/// order (native/napi/src/recorder.rs), its removals in chunks of 1 024 with
/// the locks released fairly between them: the caller's thread pays a copy
/// of the hashes. Blocks only while 1 024 jobs are already queued.
#[napi]
pub fn approx_route_queued(
    handle: u32,
    worker_id: BigInt,
    dp_rank: u32,
    local: &[u64],
    count: u32,
    now_ms: f64,
) -> Result<()> {
    tracker(handle)?;
    let worker = WorkerKey::new(u64_of(&worker_id, "workerId")?, dp_rank);
    let local = local[..(count as usize).min(local.len())].to_vec();
    recorder::queue(Box::new(move || route_in_chunks(handle, worker, &local, now_ms)))
        .map_err(|e| err("internal", e))
}

/// `approx_maintain` on the approximate-mode thread, repeated in chunks until
/// no backlog is left.
#[napi]
pub fn approx_maintain_queued(handle: u32, now_ms: f64) -> Result<()> {
    tracker(handle)?;
    recorder::queue(Box::new(move || maintain_in_chunks(handle, now_ms)))
        .map_err(|e| err("internal", e))
}

/// Returns once every decision queued before it was recorded.
#[napi]
pub fn approx_flush() -> Result<()> {
    recorder::flush().map_err(|e| err("internal", e))
}

/// The approximate-mode thread's queue (process-wide, every tracker's jobs).
#[napi(object)]
pub struct ApproxQueueStats {
    /// Jobs waiting for the thread.
    pub queued: f64,
    /// Jobs dropped because their tracker had been disposed.
    pub disposed: f64,
    /// Jobs that panicked (a bug; their work was lost, the thread went on).
    pub panicked: f64,
}

#[napi]
pub fn approx_queue_stats() -> ApproxQueueStats {
    let s = recorder::stats();
    ApproxQueueStats {
        queued: s.queued as f64,
        disposed: s.disposed as f64,
        panicked: s.panicked as f64,
    }
}

/// Tracks `sequence[..count]` for the holder (the index already stored them); returns the pruned count.
#[napi]
pub fn approx_record(
    handle: u32,
    worker_id: BigInt,
    dp_rank: u32,
    sequence: &[u64],
    count: u32,
    now_ms: f64,
) -> Result<f64> {
    let worker = WorkerKey::new(u64_of(&worker_id, "workerId")?, dp_rank);
    let sequence = &sequence[..(count as usize).min(sequence.len())];
    with_tracker(handle, |t, idx| t.record(idx, worker, sequence, now_ms) as f64)
}

#[napi]
pub fn approx_expire(handle: u32, now_ms: f64) -> Result<f64> {
    with_tracker(handle, |t, idx| t.expire(idx, now_ms) as f64)
}

#[napi(object)]
pub struct NativePruneResult {
    pub expired: f64,
    pub pruned: f64,
}

#[napi]
pub fn approx_maintain(handle: u32, now_ms: f64) -> Result<NativePruneResult> {
    with_tracker(handle, |t, idx| {
        let r = t.maintain(idx, now_ms);
        NativePruneResult { expired: r.expired as f64, pruned: r.pruned as f64 }
    })
}

#[napi]
pub fn approx_forget_holder(handle: u32, worker_id: BigInt, dp_rank: u32) -> Result<()> {
    let worker = WorkerKey::new(u64_of(&worker_id, "workerId")?, dp_rank);
    tracker(handle)?.lock().inner.forget_holder(worker);
    Ok(())
}

#[napi]
pub fn approx_forget_worker(handle: u32, worker_id: BigInt) -> Result<()> {
    let id = u64_of(&worker_id, "workerId")?;
    tracker(handle)?.lock().inner.forget_worker(id);
    Ok(())
}

#[napi(object)]
pub struct NativePruneStats {
    pub size: f64,
    pub queued: f64,
}

#[napi]
pub fn approx_stats(handle: u32) -> Result<NativePruneStats> {
    let t = tracker(handle)?;
    let t = t.lock();
    Ok(NativePruneStats { size: t.inner.size() as f64, queued: t.inner.queued() as f64 })
}

/// Whether removals are left over for another `approx_maintain` (see `PruneTracker::backlog`).
#[napi]
pub fn approx_backlog(handle: u32, now_ms: f64) -> Result<bool> {
    let t = tracker(handle)?;
    let mut t = t.lock();
    Ok(t.inner.backlog(now_ms))
}

/// The earliest pending expiry (drops stale entries at the head first).
#[napi]
pub fn approx_next_expiry(handle: u32) -> Result<Option<f64>> {
    Ok(tracker(handle)?.lock().inner.next_expiry())
}

// ---------------------------------------------------------------------------------------------
// KV events
// ---------------------------------------------------------------------------------------------

static APPLIERS: BoundRegistry<EventApplier> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn applier(handle: u32) -> Result<Shared<EventApplier>> {
    bound(&APPLIERS, handle, "event applier")
}

/// Creates an event applier bound to an index; `block_size` is the configured
/// KV block size (`1..=1024`). Returns a process-wide handle.
#[napi]
pub fn event_applier_create(index_handle: u32, block_size: u32) -> Result<u32> {
    index(index_handle)?;
    let applier = EventApplier::new(block_size).map_err(core_err)?;
    Ok(register(&APPLIERS, index_handle, applier))
}

#[napi(object)]
pub struct NativeWorkerRank {
    pub worker_id: BigInt,
    pub dp_rank: u32,
}

#[napi(object)]
pub struct NativeEventEnvelope {
    pub publisher_id: BigInt,
    pub sequence: BigInt,
    pub published_at_ms: f64,
}

#[napi(object)]
pub struct NativePublisherGap {
    pub publisher_id: BigInt,
    pub expected: BigInt,
    pub got: BigInt,
}

#[napi(object)]
pub struct NativeHolderGap {
    pub worker_id: BigInt,
    pub dp_rank: u32,
    pub expected: BigInt,
    pub got: BigInt,
}

#[napi(object)]
pub struct NativeBlockSizeMismatch {
    pub worker_id: BigInt,
    pub dp_rank: u32,
    pub expected: u32,
    pub got: f64,
}

/// Rejections by reason: events, or blocks for `partialBlock`.
#[napi(object)]
pub struct NativeEventRejections {
    pub malformed: u32,
    pub unknown_variant: u32,
    pub block_size_mismatch: u32,
    pub partial_block: u32,
    pub parent_not_found: u32,
    pub block_not_found: u32,
    pub invalid_block_sequence: u32,
    pub no_worker: u32,
    pub duplicate: u32,
}

/// One message's outcome (see `EventApplyReport` in src/events/types.ts).
/// `ignored` counts well-formed events Dynamo also keeps out of the device
/// index (lower storage tiers, cache-owner domains, remote locality, non-main
/// KV-cache groups, vLLM `Ignored`).
#[napi(object)]
pub struct NativeEventApplyReport {
    pub envelope: Option<NativeEventEnvelope>,
    pub publisher_gap: Option<NativePublisherGap>,
    pub applied_stored: u32,
    pub applied_removed: u32,
    pub applied_cleared: u32,
    pub blocks_stored: f64,
    pub blocks_removed: f64,
    pub rejected: NativeEventRejections,
    pub ignored: u32,
    pub gaps: Vec<NativeHolderGap>,
    pub resets: Vec<NativeWorkerRank>,
    pub block_size_mismatches: Vec<NativeBlockSizeMismatch>,
    pub workers: Vec<NativeWorkerRank>,
}

fn worker_rank(w: WorkerKey) -> NativeWorkerRank {
    NativeWorkerRank { worker_id: BigInt::from(w.worker_id), dp_rank: w.dp_rank }
}

fn report_to_js(r: ApplyReport) -> NativeEventApplyReport {
    let n = |reason| r.rejected(reason);
    NativeEventApplyReport {
        envelope: r.envelope.map(|e| NativeEventEnvelope {
            publisher_id: BigInt::from(e.publisher_id),
            sequence: BigInt::from(e.sequence),
            published_at_ms: e.published_at_ms as f64,
        }),
        publisher_gap: r.publisher_gap.map(|g| NativePublisherGap {
            publisher_id: BigInt::from(g.publisher_id),
            expected: BigInt::from(g.expected),
            got: BigInt::from(g.got),
        }),
        applied_stored: r.applied.stored,
        applied_removed: r.applied.removed,
        applied_cleared: r.applied.cleared,
        blocks_stored: r.blocks_stored as f64,
        blocks_removed: r.blocks_removed as f64,
        rejected: NativeEventRejections {
            malformed: n(RejectReason::Malformed),
            unknown_variant: n(RejectReason::UnknownVariant),
            block_size_mismatch: n(RejectReason::BlockSizeMismatch),
            partial_block: n(RejectReason::PartialBlock),
            parent_not_found: n(RejectReason::ParentNotFound),
            block_not_found: n(RejectReason::BlockNotFound),
            invalid_block_sequence: n(RejectReason::InvalidBlockSequence),
            no_worker: n(RejectReason::NoWorker),
            duplicate: n(RejectReason::Duplicate),
        },
        ignored: r.ignored,
        gaps: r
            .gaps
            .iter()
            .map(|g| NativeHolderGap {
                worker_id: BigInt::from(g.worker.worker_id),
                dp_rank: g.worker.dp_rank,
                expected: BigInt::from(g.expected),
                got: BigInt::from(g.got),
            })
            .collect(),
        resets: r.resets.iter().map(|&w| worker_rank(w)).collect(),
        block_size_mismatches: r
            .block_size_mismatches
            .iter()
            .map(|m| NativeBlockSizeMismatch {
                worker_id: BigInt::from(m.worker.worker_id),
                dp_rank: m.worker.dp_rank,
                expected: m.expected,
                got: m.got as f64,
            })
            .collect(),
        workers: r.workers.iter().map(|&w| worker_rank(w)).collect(),
    }
}

/// Decodes one transport message (`codec`: `dynamo`, `dynamo-json` or `vllm`)
/// and applies its events to the bound index under one write lock. Bad bytes
/// and bad events are counted in the report, never thrown; a disposed applier
/// or index, an unknown codec or an out-of-range argument throws.
#[napi(catch_unwind)]
#[allow(clippy::too_many_arguments)]
pub fn event_applier_apply(
    handle: u32,
    codec: String,
    payload: &[u8],
    worker_id: Option<BigInt>,
    dp_rank: Option<u32>,
    sequence: Option<BigInt>,
    replay: Option<bool>,
    ignore_ids: Option<bool>,
) -> Result<NativeEventApplyReport> {
    let codec = EventCodec::parse(&codec).ok_or_else(|| {
        err("invalid_argument", format!("codec must be dynamo, dynamo-json or vllm, got {codec:?}"))
    })?;
    let ctx = SourceContext {
        worker_id: worker_id.as_ref().map(|w| u64_of(w, "workerId")).transpose()?,
        dp_rank,
        sequence: sequence.as_ref().map(|s| u64_of(s, "sequence")).transpose()?,
        replay: replay.unwrap_or(false),
        ignore_ids: ignore_ids.unwrap_or(false),
    };
    let shared = applier(handle)?;
    let mut bound = shared.lock();
    let idx = index(bound.index_handle)?;
    let prepared = bound.inner.prepare(codec, payload, ctx);
    let report =
        if prepared.is_noop() { prepared.into_report() } else { prepared.commit(&mut idx.write()) };
    Ok(report_to_js(report))
}

/// Forgets the stream state kept for a worker that left discovery.
#[napi]
pub fn event_applier_forget_worker(handle: u32, worker_id: BigInt) -> Result<()> {
    let id = u64_of(&worker_id, "workerId")?;
    applier(handle)?.lock().inner.forget_worker(id);
    Ok(())
}

/// Sets the last event id of a Dynamo-stream holder (`undefined` forgets it):
/// after a worker recovery the index is current up to the worker's last id.
#[napi]
pub fn event_applier_set_cursor(
    handle: u32,
    worker_id: BigInt,
    dp_rank: u32,
    last_event_id: Option<BigInt>,
) -> Result<()> {
    let id = u64_of(&worker_id, "workerId")?;
    let last = last_event_id.as_ref().map(|l| u64_of(l, "lastEventId")).transpose()?;
    applier(handle)?.lock().inner.set_cursor(WorkerKey::new(id, dp_rank), last);
    Ok(())
}

/// Frees an applier (not its index). Later calls with the handle fail with `disposed`.
#[napi]
pub fn event_applier_dispose(handle: u32) -> bool {
    APPLIERS.lock().remove(&handle).is_some()
}

/// A worker load report (`kv_metrics`), with u64 counters as JS numbers
/// (block and token counts stay far below 2^53).
#[napi(object)]
pub struct NativeActiveLoad {
    pub worker_id: BigInt,
    pub dp_rank: u32,
    pub active_decode_blocks: Option<f64>,
    pub active_prefill_tokens: Option<f64>,
    pub kv_used_blocks: Option<f64>,
    pub published_at_ms: Option<f64>,
}

/// Decodes one `kv_metrics` message (Dynamo envelope, bare msgpack or JSON
/// `ActiveLoad`); `null` when it is not one.
#[napi]
pub fn decode_active_load(payload: Uint8Array) -> Option<NativeActiveLoad> {
    let l = kv_epp_core::events::load::decode_active_load(&payload).ok()?;
    Some(NativeActiveLoad {
        worker_id: BigInt::from(l.worker_id),
        dp_rank: l.dp_rank,
        active_decode_blocks: l.active_decode_blocks.map(|v| v as f64),
        active_prefill_tokens: l.active_prefill_tokens.map(|v| v as f64),
        kv_used_blocks: l.kv_used_blocks.map(|v| v as f64),
        published_at_ms: l.published_at_ms.map(|v| v as f64),
    })
}

/// Moves thread `tid` of this process to `SCHED_IDLE` (Linux; see sched.rs).
/// Throws `os_error: …` with the OS's reason and changes nothing then.
#[napi]
pub fn set_thread_idle_priority(tid: i32) -> Result<()> {
    sched::set_idle(tid).map_err(|e| err("os_error", e))
}
