//! The KV prefix index: a compressed radix tree keyed by local block hashes,
//! with one lookup per (worker, dp rank) from the engine's external block hash
//! to where that block lives in the tree.
//!
//! Contract: for any event stream, `find_matches` returns exactly what
//! `dynamo_kv_router::RadixTree` 1.6.1 returns for the same stream (checked by
//! the oracle crate's differential tests). That includes Dynamo's observable
//! quirks, which are part of the contract:
//! - a removal in the middle of an edge cuts the holder's coverage at that
//!   position and drops its later lookup entries on the same edge only;
//! - an edge with no full holder loses its children (cascade), and detached
//!   subtrees stay reachable from lookups (stores may still attach to them);
//! - a store whose parent is missing or not covered by the holder is dropped.
//!
//! Layout (differs from Dynamo's `Rc<RefCell<_>>` nodes): nodes live in one
//! arena addressed by `u32`, lookups map `external hash -> (node, position)`,
//! holders are interned to dense `u32` slots, and holder sets are sorted `u32`
//! vectors so scoring intersects by merging. Nodes are reference counted
//! (lookup entries + the parent link) and freed at the end of each operation.
//!
//! Failure modes: malformed events return an [`EventError`] and leave the
//! index unchanged apart from what Dynamo also changes; nothing panics.

use hashbrown::{HashMap, HashSet};
use rustc_hash::FxBuildHasher;

type FxMap<K, V> = HashMap<K, V, FxBuildHasher>;
type FxSet<K> = HashSet<K, FxBuildHasher>;

/// A KV-cache holder: one data-parallel rank of one worker instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerKey {
    pub worker_id: u64,
    pub dp_rank: u32,
}

impl WorkerKey {
    pub fn new(worker_id: u64, dp_rank: u32) -> Self {
        Self { worker_id, dp_rank }
    }
}

/// One stored block: the router-computed local hash and the engine's opaque hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBlock {
    pub local_hash: u64,
    pub external_hash: u64,
}

/// Why an event was (partly) not applied. Counted by the caller, never fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventError {
    /// A store named a parent the holder does not (or no longer) hold; dropped.
    ParentBlockNotFound,
    /// A removal named a block the holder does not hold; the rest was applied.
    BlockNotFound,
    /// A store listed its own parent among its blocks; dropped.
    InvalidBlockSequence,
}

impl EventError {
    pub fn code(self) -> &'static str {
        match self {
            EventError::ParentBlockNotFound => "parent_not_found",
            EventError::BlockNotFound => "block_not_found",
            EventError::InvalidBlockSequence => "invalid_block_sequence",
        }
    }
}

/// Prefix depth per holder, sorted by `(worker_id, dp_rank)`; holders with no
/// matching prefix are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlapScores {
    pub scores: Vec<(WorkerKey, u32)>,
}

/// Counters kept by the index itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexCounters {
    pub applied: u64,
    pub parent_not_found: u64,
    pub block_not_found: u64,
    pub invalid_block_sequence: u64,
    pub duplicate_stores: u64,
}

const NONE: u32 = u32::MAX;
const ROOT: u32 = 0;
const SMALL_CHILDREN: usize = 8;

#[derive(Debug)]
enum Children {
    Small(Vec<(u64, u32)>),
    Map(FxMap<u64, u32>),
}

impl Children {
    fn new() -> Self {
        Children::Small(Vec::new())
    }
    #[inline]
    fn get(&self, key: u64) -> Option<u32> {
        match self {
            Children::Small(v) => v.iter().find(|(k, _)| *k == key).map(|&(_, n)| n),
            Children::Map(m) => m.get(&key).copied(),
        }
    }
    fn insert(&mut self, key: u64, node: u32) -> Option<u32> {
        match self {
            Children::Small(v) => {
                if let Some(slot) = v.iter_mut().find(|(k, _)| *k == key) {
                    return Some(std::mem::replace(&mut slot.1, node));
                }
                if v.len() < SMALL_CHILDREN {
                    v.push((key, node));
                } else {
                    let mut m: FxMap<u64, u32> = v.drain(..).collect();
                    m.insert(key, node);
                    *self = Children::Map(m);
                }
                None
            }
            Children::Map(m) => m.insert(key, node),
        }
    }
    fn remove(&mut self, key: u64) -> Option<u32> {
        match self {
            Children::Small(v) => {
                let i = v.iter().position(|(k, _)| *k == key)?;
                Some(v.swap_remove(i).1)
            }
            Children::Map(m) => m.remove(&key),
        }
    }
    fn take_all(&mut self) -> Vec<u32> {
        match std::mem::replace(self, Children::new()) {
            Children::Small(v) => v.into_iter().map(|(_, n)| n).collect(),
            Children::Map(m) => m.into_values().collect(),
        }
    }
    fn values(&self) -> Vec<u32> {
        match self {
            Children::Small(v) => v.iter().map(|&(_, n)| n).collect(),
            Children::Map(m) => m.values().copied().collect(),
        }
    }
    fn is_empty(&self) -> bool {
        match self {
            Children::Small(v) => v.is_empty(),
            Children::Map(m) => m.is_empty(),
        }
    }
}

#[derive(Debug)]
struct Node {
    /// `(local, external)` per block; empty only for the root.
    edge: Vec<(u64, u64)>,
    /// Holders covering the whole edge, sorted.
    full: Vec<u32>,
    /// Holders covering `edge[..cutoff]` with `0 < cutoff < edge.len()`, sorted by slot.
    cutoffs: Vec<(u32, u32)>,
    children: Children,
    /// Parent while linked in the parent's children; `NONE` once detached.
    parent: u32,
    /// Lookup entries pointing here plus one for the parent link.
    refs: u32,
    /// Once a node has had children it is never extended as a leaf again.
    internal: bool,
    live: bool,
}

impl Node {
    fn new(edge: Vec<(u64, u64)>, parent: u32) -> Self {
        Self {
            edge,
            full: Vec::new(),
            cutoffs: Vec::new(),
            children: Children::new(),
            parent,
            refs: 0,
            internal: false,
            live: true,
        }
    }

    #[inline]
    fn is_full(&self, w: u32) -> bool {
        self.full.binary_search(&w).is_ok()
    }
    #[inline]
    fn cutoff_of(&self, w: u32) -> Option<u32> {
        self.cutoffs.binary_search_by_key(&w, |&(s, _)| s).ok().map(|i| self.cutoffs[i].1)
    }
    #[inline]
    fn current_cutoff(&self, w: u32) -> usize {
        if self.is_full(w) { self.edge.len() } else { self.cutoff_of(w).unwrap_or(0) as usize }
    }
    #[inline]
    fn covers_pos(&self, w: u32, pos: usize) -> bool {
        self.is_full(w) || self.cutoff_of(w).is_some_and(|c| pos < c as usize)
    }
    fn has_any_workers(&self) -> bool {
        !self.full.is_empty() || !self.cutoffs.is_empty()
    }
    fn add_full(&mut self, w: u32) -> bool {
        match self.full.binary_search(&w) {
            Ok(_) => false,
            Err(i) => {
                self.full.insert(i, w);
                true
            }
        }
    }
    fn remove_full(&mut self, w: u32) -> bool {
        match self.full.binary_search(&w) {
            Ok(i) => {
                self.full.remove(i);
                true
            }
            Err(_) => false,
        }
    }
    fn set_cutoff(&mut self, w: u32, c: u32) {
        match self.cutoffs.binary_search_by_key(&w, |&(s, _)| s) {
            Ok(i) => self.cutoffs[i].1 = c,
            Err(i) => self.cutoffs.insert(i, (w, c)),
        }
    }
    fn remove_cutoff(&mut self, w: u32) {
        if let Ok(i) = self.cutoffs.binary_search_by_key(&w, |&(s, _)| s) {
            self.cutoffs.remove(i);
        }
    }
    fn drop_worker(&mut self, w: u32) {
        self.remove_full(w);
        self.remove_cutoff(w);
    }
    /// Makes `w` a full holder; true when that changed anything.
    fn promote_to_full(&mut self, w: u32) -> bool {
        if self.is_full(w) {
            return false;
        }
        self.remove_cutoff(w);
        self.add_full(w);
        true
    }
    /// Extends `w`'s coverage to at least `edge[..cutoff]`; true when changed.
    fn cover_prefix(&mut self, w: u32, cutoff: usize) -> bool {
        if cutoff == 0 {
            return false;
        }
        if cutoff >= self.edge.len() {
            return self.promote_to_full(w);
        }
        if self.is_full(w) {
            return false;
        }
        match self.cutoff_of(w) {
            Some(c) if c as usize >= cutoff => false,
            _ => {
                self.set_cutoff(w, cutoff as u32);
                true
            }
        }
    }
    /// Position of `hash` in this edge, searched outwards from `hint`.
    #[inline]
    fn position_of(&self, hash: u64, hint: usize) -> Option<usize> {
        let e = &self.edge;
        if e.is_empty() {
            return None;
        }
        let h = hint.min(e.len() - 1);
        if e[h].1 == hash {
            return Some(h);
        }
        let (mut lo, mut hi) = (h, h + 1);
        loop {
            let mut more = false;
            if lo > 0 {
                lo -= 1;
                if e[lo].1 == hash {
                    return Some(lo);
                }
                more = true;
            }
            if hi < e.len() {
                if e[hi].1 == hash {
                    return Some(hi);
                }
                hi += 1;
                more = true;
            }
            if !more {
                return None;
            }
        }
    }
    /// Where a holder's lookup hash most likely sits: just below its coverage end.
    #[inline]
    fn hint_for(&self, w: u32) -> usize {
        match self.current_cutoff(w) {
            0 => self.edge.len().saturating_sub(1),
            c => c - 1,
        }
    }
    /// `edge[parent_pos+1..]` starts with all of `blocks`.
    fn suffix_matches_store(&self, parent_pos: usize, blocks: &[StoredBlock]) -> bool {
        let suffix = &self.edge[parent_pos + 1..];
        blocks.len() <= suffix.len()
            && suffix
                .iter()
                .zip(blocks)
                .all(|(&(l, e), b)| l == b.local_hash && e == b.external_hash)
    }
    /// `blocks` starts with all of `edge[parent_pos+1..]` and is longer: returns the suffix length.
    fn store_starts_with_suffix(&self, parent_pos: usize, blocks: &[StoredBlock]) -> Option<usize> {
        let suffix = &self.edge[parent_pos + 1..];
        (blocks.len() > suffix.len()
            && suffix
                .iter()
                .zip(blocks)
                .all(|(&(l, e), b)| l == b.local_hash && e == b.external_hash))
        .then_some(suffix.len())
    }
}

/// An external hash stored 4-byte aligned, so a lookup entry is 12 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(4))]
struct Ext(u64);

impl std::hash::Hash for Ext {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let v = self.0;
        state.write_u64(v);
    }
}

impl std::fmt::Debug for Ext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        write!(f, "{v:#x}")
    }
}

/// Per-holder lookup: external hash -> node (the position is found in its edge).
type Lookup = FxMap<Ext, u32>;

#[derive(Debug)]
struct Slot {
    key: WorkerKey,
    /// `None` once the holder was removed. Slots are never reused for another
    /// holder: stale memberships Dynamo keeps must not leak to a newcomer.
    lookup: Option<Lookup>,
}

/// The prefix index. Not internally synchronised: wrap it in a lock to share it.
#[derive(Debug)]
pub struct RadixIndex {
    nodes: Vec<Node>,
    free: Vec<u32>,
    pending_free: Vec<u32>,
    slots: Vec<Slot>,
    slot_of: FxMap<WorkerKey, u32>,
    /// Each slot's rank in `WorkerKey` order, and the slots by rank.
    rank: Vec<u32>,
    by_rank: Vec<u32>,
    counters: IndexCounters,
}

impl Default for RadixIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl RadixIndex {
    pub fn new() -> Self {
        let mut root = Node::new(Vec::new(), NONE);
        root.internal = true;
        root.refs = 1;
        Self {
            nodes: vec![root],
            free: Vec::new(),
            pending_free: Vec::new(),
            slots: Vec::new(),
            slot_of: FxMap::default(),
            rank: Vec::new(),
            by_rank: Vec::new(),
            counters: IndexCounters::default(),
        }
    }

    pub fn counters(&self) -> IndexCounters {
        self.counters
    }

    /// Holders currently known (every event makes its holder known; removal forgets it).
    pub fn worker_count(&self) -> usize {
        self.slots.iter().filter(|s| s.lookup.is_some()).count()
    }

    /// Sum of every holder's lookup size (Dynamo's `current_size`).
    pub fn membership_count(&self) -> usize {
        self.slots.iter().filter_map(|s| s.lookup.as_ref()).map(|l| l.len()).sum()
    }

    /// Blocks held by one holder (its lookup size); 0 when unknown.
    pub fn tree_size(&self, worker: WorkerKey) -> usize {
        self.slot_of
            .get(&worker)
            .and_then(|&s| self.slots[s as usize].lookup.as_ref())
            .map_or(0, |l| l.len())
    }

    /// Live tree nodes, the root included.
    pub fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// Known holders, sorted.
    pub fn workers(&self) -> Vec<WorkerKey> {
        let mut v: Vec<WorkerKey> =
            self.slots.iter().filter(|s| s.lookup.is_some()).map(|s| s.key).collect();
        v.sort_unstable();
        v
    }

    // ---- holders and arena ------------------------------------------------

    /// The holder's slot, making it known (as every Dynamo event does).
    fn ensure_slot(&mut self, key: WorkerKey) -> u32 {
        let s = match self.slot_of.get(&key) {
            Some(&s) => s,
            None => {
                let s = self.slots.len() as u32;
                self.slots.push(Slot { key, lookup: None });
                self.slot_of.insert(key, s);
                // New holders are rare: re-rank all slots by key.
                self.by_rank = (0..self.slots.len() as u32).collect();
                let slots = &self.slots;
                self.by_rank.sort_unstable_by_key(|&x| slots[x as usize].key);
                self.rank = vec![0; self.slots.len()];
                for (r, &x) in self.by_rank.iter().enumerate() {
                    self.rank[x as usize] = r as u32;
                }
                s
            }
        };
        let slot = &mut self.slots[s as usize];
        if slot.lookup.is_none() {
            slot.lookup = Some(Lookup::default());
        }
        s
    }

    #[inline]
    fn lookup(&self, s: u32) -> &Lookup {
        self.slots[s as usize].lookup.as_ref().expect("slot ensured")
    }
    #[inline]
    fn lookup_mut(&mut self, s: u32) -> &mut Lookup {
        self.slots[s as usize].lookup.as_mut().expect("slot ensured")
    }

    fn alloc(&mut self, node: Node) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    #[inline]
    fn incref(&mut self, n: u32) {
        self.nodes[n as usize].refs += 1;
    }
    #[inline]
    fn decref(&mut self, n: u32) {
        let node = &mut self.nodes[n as usize];
        node.refs -= 1;
        if node.refs == 0 {
            self.pending_free.push(n);
        }
    }

    /// Frees nodes whose last reference went away during the operation.
    fn collect(&mut self) {
        while let Some(n) = self.pending_free.pop() {
            let node = &mut self.nodes[n as usize];
            if !node.live || node.refs != 0 {
                continue;
            }
            node.live = false;
            node.edge = Vec::new();
            node.full = Vec::new();
            node.cutoffs = Vec::new();
            let children = node.children.take_all();
            for c in children {
                self.nodes[c as usize].parent = NONE;
                self.decref(c);
            }
            self.free.push(n);
        }
    }

    /// Sets `lookup[s][hash] = node`; true when the node changed.
    fn set_lookup(&mut self, s: u32, hash: u64, node: u32) -> bool {
        // `insert` reserves first, so replacing an entry in a full table
        // would double it; update in place instead.
        let old = match self.lookup_mut(s).get_mut(&Ext(hash)) {
            Some(v) => Some(std::mem::replace(v, node)),
            None => self.lookup_mut(s).insert(Ext(hash), node),
        };
        match old {
            Some(o) if o == node => false,
            Some(o) => {
                self.incref(node);
                self.decref(o);
                true
            }
            None => {
                self.incref(node);
                true
            }
        }
    }

    fn remove_lookup(&mut self, s: u32, hash: u64) -> Option<u32> {
        let old = self.lookup_mut(s).remove(&Ext(hash));
        if let Some(o) = old {
            self.decref(o);
        }
        old
    }

    /// Lookup entries for `blocks` (placed on `node`'s edge); true when any changed.
    fn set_lookups(&mut self, s: u32, blocks: &[StoredBlock], node: u32) -> bool {
        let mut changed = false;
        for b in blocks {
            changed |= self.set_lookup(s, b.external_hash, node);
        }
        changed
    }

    fn link_child(&mut self, parent: u32, key: u64, child: u32) {
        let old = self.nodes[parent as usize].children.insert(key, child);
        self.nodes[child as usize].parent = parent;
        self.incref(child);
        if let Some(o) = old {
            if o != child {
                self.nodes[o as usize].parent = NONE;
                self.decref(o);
            } else {
                self.decref(o);
            }
        }
    }

    /// Dynamo's cascade: an edge with no full holder loses its children; a node
    /// with no holder at all leaves its parent.
    fn prune_unreachable(&mut self, n: u32) {
        let node = &mut self.nodes[n as usize];
        if node.full.is_empty() && !node.children.is_empty() {
            let children = node.children.take_all();
            for c in children {
                self.nodes[c as usize].parent = NONE;
                self.decref(c);
            }
        }
        let node = &self.nodes[n as usize];
        if node.has_any_workers() {
            return;
        }
        let (parent, key) = (node.parent, node.edge.first().map(|&(k, _)| k));
        if let Some(key) = key
            && parent != NONE
            && self.nodes[parent as usize].children.get(key) == Some(n)
        {
            self.nodes[parent as usize].children.remove(key);
            self.nodes[n as usize].parent = NONE;
            self.decref(n);
        }
    }

    // ---- events -----------------------------------------------------------

    /// A `Stored` event: `blocks` extend the holder's chain after `parent`
    /// (`None` = from the root).
    pub fn apply_stored(
        &mut self,
        worker: WorkerKey,
        parent: Option<u64>,
        blocks: &[StoredBlock],
    ) -> Result<(), EventError> {
        let s = self.ensure_slot(worker);
        let r = self.stored(s, parent, blocks);
        self.collect();
        self.count(r)
    }

    /// A `Removed` event for the holder's blocks named by external hash.
    pub fn apply_removed(&mut self, worker: WorkerKey, hashes: &[u64]) -> Result<(), EventError> {
        let s = self.ensure_slot(worker);
        let r = self.removed(s, hashes);
        self.collect();
        self.count(r)
    }

    /// `AllBlocksCleared` for one holder (Dynamo: `remove_worker_dp_rank`).
    pub fn apply_cleared(&mut self, worker: WorkerKey) {
        self.ensure_slot(worker);
        self.remove_worker_dp_rank(worker);
        self.counters.applied += 1;
    }

    /// Forgets one holder and every block it held.
    pub fn remove_worker_dp_rank(&mut self, worker: WorkerKey) {
        if let Some(&s) = self.slot_of.get(&worker) {
            self.drop_slot(s);
            self.collect();
        }
    }

    /// Forgets every dp rank of a worker (it left discovery).
    pub fn remove_worker(&mut self, worker_id: u64) {
        let slots: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, sl)| sl.key.worker_id == worker_id && sl.lookup.is_some())
            .map(|(i, _)| i as u32)
            .collect();
        for s in slots {
            self.drop_slot(s);
        }
        self.collect();
    }

    fn count(&mut self, r: Result<(), EventError>) -> Result<(), EventError> {
        match r {
            Ok(()) => self.counters.applied += 1,
            Err(EventError::ParentBlockNotFound) => self.counters.parent_not_found += 1,
            Err(EventError::BlockNotFound) => {
                self.counters.applied += 1;
                self.counters.block_not_found += 1
            }
            Err(EventError::InvalidBlockSequence) => self.counters.invalid_block_sequence += 1,
        }
        r
    }

    fn drop_slot(&mut self, s: u32) {
        let Some(lookup) = self.slots[s as usize].lookup.take() else {
            return;
        };
        let mut nodes: Vec<u32> = lookup.values().copied().collect();
        nodes.sort_unstable();
        nodes.dedup();
        // The lookup's references go away only after every node was visited,
        // so no node is freed while still listed.
        for &n in &nodes {
            self.nodes[n as usize].drop_worker(s);
            self.prune_unreachable(n);
        }
        for (_, n) in lookup {
            self.decref(n);
        }
    }

    fn stored(
        &mut self,
        s: u32,
        parent_hash: Option<u64>,
        blocks: &[StoredBlock],
    ) -> Result<(), EventError> {
        if let Some(ph) = parent_hash
            && blocks.iter().any(|b| b.external_hash == ph)
        {
            return Err(EventError::InvalidBlockSequence);
        }
        let mut duplicate = !blocks.is_empty();
        let mut parent = match parent_hash {
            None => ROOT,
            Some(ph) => {
                let Some(&n) = self.lookup(s).get(&Ext(ph)) else {
                    return Err(EventError::ParentBlockNotFound);
                };
                let node = &self.nodes[n as usize];
                let Some(pos) = node.position_of(ph, node.hint_for(s)) else {
                    return Err(EventError::ParentBlockNotFound);
                };
                if !node.covers_pos(s, pos) {
                    self.remove_lookup(s, ph);
                    return Err(EventError::ParentBlockNotFound);
                }
                // The store continues inside the parent's edge.
                if node.suffix_matches_store(pos, blocks) {
                    let changed = self.nodes[n as usize].cover_prefix(s, pos + 1 + blocks.len());
                    let lchanged = self.set_lookups(s, blocks, n);
                    if duplicate && !changed && !lchanged {
                        self.counters.duplicate_stores += 1;
                    }
                    return Ok(());
                }
                if !node.internal
                    && let Some(suffix_len) = node.store_starts_with_suffix(pos, blocks)
                {
                    self.append_to_leaf(n, s, &blocks[suffix_len..]);
                    self.set_lookups(s, blocks, n);
                    return Ok(());
                }
                if self.nodes[n as usize].edge.last().map(|&(_, e)| e) != Some(ph) {
                    self.split(n, pos + 1);
                }
                n
            }
        };

        let mut rest = blocks;
        while !rest.is_empty() {
            let first_local = rest[0].local_hash;
            let Some(child) = self.nodes[parent as usize].children.get(first_local) else {
                let p = &self.nodes[parent as usize];
                let can_extend =
                    !p.edge.is_empty() && !p.internal && p.covers_pos(s, p.edge.len() - 1);
                if can_extend {
                    self.append_to_leaf(parent, s, rest);
                    self.set_lookups(s, rest, parent);
                    duplicate = false;
                    break;
                }
                let child = self.new_leaf(rest, s, parent);
                self.nodes[parent as usize].internal = true;
                self.link_child(parent, first_local, child);
                self.set_lookups(s, rest, child);
                duplicate = false;
                break;
            };

            let c = &self.nodes[child as usize];
            let edge_len = c.edge.len();
            let match_len =
                c.edge.iter().zip(rest).take_while(|(e, b)| e.0 == b.local_hash).count();

            if match_len < edge_len {
                if match_len == rest.len() {
                    let changed = self.nodes[child as usize].cover_prefix(s, match_len);
                    duplicate &= !changed;
                    duplicate &= !self.set_lookups(s, rest, child);
                    break;
                }
                self.split(child, match_len);
                self.nodes[child as usize].promote_to_full(s);
                self.set_lookups(s, &rest[..match_len], child);
                let tail = &rest[match_len..];
                let tail_node = self.new_leaf(tail, s, child);
                self.nodes[child as usize].internal = true;
                self.link_child(child, tail[0].local_hash, tail_node);
                self.set_lookups(s, tail, tail_node);
                duplicate = false;
                break;
            }

            if self.nodes[child as usize].promote_to_full(s) {
                duplicate = false;
            }
            if self.set_lookups(s, &rest[..edge_len], child) {
                duplicate = false;
            }
            rest = &rest[edge_len..];
            parent = child;
        }
        if duplicate {
            self.counters.duplicate_stores += 1;
        }
        Ok(())
    }

    fn new_leaf(&mut self, blocks: &[StoredBlock], s: u32, parent: u32) -> u32 {
        let mut node =
            Node::new(blocks.iter().map(|b| (b.local_hash, b.external_hash)).collect(), parent);
        node.full.push(s);
        self.alloc(node)
    }

    /// Appends `blocks` to leaf `n` for holder `s`; other full holders keep only the old edge.
    fn append_to_leaf(&mut self, n: u32, s: u32, blocks: &[StoredBlock]) {
        let node = &mut self.nodes[n as usize];
        let old_len = node.edge.len() as u32;
        let others: Vec<u32> = node.full.iter().copied().filter(|&w| w != s).collect();
        for w in others {
            node.remove_full(w);
            node.set_cutoff(w, old_len);
        }
        node.promote_to_full(s);
        node.edge.reserve_exact(blocks.len());
        node.edge.extend(blocks.iter().map(|b| (b.local_hash, b.external_hash)));
    }

    /// Splits `n` so that it keeps `edge[..pos]` and a new child holds `edge[pos..]`.
    fn split(&mut self, n: u32, pos: usize) {
        let node = &mut self.nodes[n as usize];
        debug_assert!(pos > 0 && pos < node.edge.len());
        let suffix_edge = node.edge.split_off(pos);
        node.edge.shrink_to_fit();
        let first_local = suffix_edge[0].0;
        let suffix_full = node.full.clone();
        let mut suffix_cutoffs = Vec::new();
        let mut promote = Vec::new();
        node.cutoffs.retain(|&(w, c)| {
            if (c as usize) < pos {
                return true;
            }
            promote.push(w);
            let sc = c as usize - pos;
            if sc > 0 {
                suffix_cutoffs.push((w, sc as u32));
            }
            false
        });
        for w in promote {
            node.add_full(w);
        }
        let children = std::mem::replace(&mut node.children, Children::new());
        let internal = node.internal;
        node.internal = true;

        let mut suffix = Node::new(suffix_edge, n);
        suffix.full = suffix_full;
        suffix.cutoffs = suffix_cutoffs;
        suffix.children = children;
        suffix.internal = internal;
        let sfx = self.alloc(suffix);
        for c in self.nodes[sfx as usize].children.values() {
            self.nodes[c as usize].parent = sfx;
        }
        // The suffix takes over the children (their parent references move with
        // them) and becomes the node's only child.
        self.nodes[n as usize].children.insert(first_local, sfx);
        self.incref(sfx);

        let full = self.nodes[sfx as usize].full.clone();
        let cutoffs = self.nodes[sfx as usize].cutoffs.clone();
        let hashes: Vec<u64> = self.nodes[sfx as usize].edge.iter().map(|&(_, e)| e).collect();
        // A forgotten holder can still be listed on a node its lookup no longer
        // references (Dynamo panics on this `unwrap`); it gets no entries.
        let known = |ix: &Self, w: u32| ix.slots[w as usize].lookup.is_some();
        for w in full {
            if !known(self, w) {
                continue;
            }
            for &h in &hashes {
                self.set_lookup(w, h, sfx);
            }
        }
        for (w, c) in cutoffs {
            if !known(self, w) {
                continue;
            }
            for &h in &hashes[..c as usize] {
                self.set_lookup(w, h, sfx);
            }
        }
        self.prune_unreachable(sfx);
    }

    fn removed(&mut self, s: u32, hashes: &[u64]) -> Result<(), EventError> {
        let mut first_error = None;
        // Hashes this event already dropped as stale; a later miss on one of
        // them is expected, not an error. A set: removal batches can be large
        // (approximate-mode pruning sends 10^5 hashes at once).
        let mut eagerly_removed: FxSet<u64> = FxSet::default();
        let mut i = 0;
        while i < hashes.len() {
            let h = hashes[i];
            i += 1;
            let Some(n) = self.lookup_mut(s).remove(&Ext(h)) else {
                if !eagerly_removed.contains(&h) {
                    first_error.get_or_insert(EventError::BlockNotFound);
                }
                continue;
            };
            let node = &self.nodes[n as usize];
            let Some(first_pos) = node.position_of(h, node.hint_for(s)) else {
                self.lookup_mut(s).insert(Ext(h), n);
                first_error.get_or_insert(EventError::BlockNotFound);
                continue;
            };
            let (mut min_pos, mut min_hash) = (first_pos, h);
            let mut last_pos = first_pos;
            if node.covers_pos(s, first_pos) {
                // Consume following hashes on the same edge in one cut.
                while i < hashes.len() {
                    let c = hashes[i];
                    let Some(&cn) = self.lookup(s).get(&Ext(c)) else {
                        break;
                    };
                    if cn != n {
                        break;
                    }
                    let Some(cpos) = node.position_of(c, last_pos) else {
                        break;
                    };
                    last_pos = cpos;
                    if !node.covers_pos(s, cpos) {
                        break;
                    }
                    if cpos < min_pos {
                        min_pos = cpos;
                        min_hash = c;
                    }
                    i += 1;
                }
            }
            // The entry for `h` was taken out above; release its reference now
            // that the node is no longer needed by index.
            let stale = self.remove_at(n, s, min_pos, min_hash);
            self.prune_unreachable(n);
            self.decref(n);
            for &sh in &stale {
                self.remove_lookup(s, sh);
            }
            eagerly_removed.extend(stale);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Cuts holder `s`'s coverage of `n` at `pos`; returns the hashes it no longer covers.
    fn remove_at(&mut self, n: u32, s: u32, pos: usize, removed_hash: u64) -> Vec<u64> {
        let node = &mut self.nodes[n as usize];
        let current = node.current_cutoff(s);
        if pos >= current {
            return vec![removed_hash];
        }
        let stale = node.edge[pos..current].iter().map(|&(_, e)| e).collect();
        if pos == 0 {
            node.drop_worker(s);
        } else {
            node.remove_full(s);
            node.set_cutoff(s, pos as u32);
        }
        stale
    }

    // ---- queries ----------------------------------------------------------

    /// Contiguous prefix depth per holder for the query's local hashes. With
    /// `early_exit`, the walk stops once a single holder remains.
    pub fn find_matches(&self, sequence: &[u64], early_exit: bool) -> OverlapScores {
        let mut scores: Vec<(u32, u32)> = Vec::new();
        if sequence.is_empty() {
            return OverlapScores::default();
        }
        let mut next = self.nodes[ROOT as usize].children.get(sequence[0]);
        let mut active: Vec<u32> = Vec::new();
        let mut scratch: Vec<u32> = Vec::new();
        let mut matched = 0usize;
        let mut first = true;
        while matched < sequence.len() {
            let Some(n) = next.take() else { break };
            let node = &self.nodes[n as usize];
            let q = &sequence[matched..];
            let walk = node.edge.len().min(q.len());
            let m = node.edge[..walk].iter().zip(q).take_while(|(e, h)| e.0 == **h).count();
            if m == 0 {
                break;
            }
            if first {
                active.extend_from_slice(&node.full);
                for &(w, c) in &node.cutoffs {
                    let contribution = (c as usize).min(m);
                    if contribution > 0 {
                        scores.push((w, contribution as u32));
                    }
                }
                first = false;
            } else {
                // Merge-intersect the sorted active set with the node's full holders;
                // leavers score their depth (plus their partial coverage here).
                scratch.clear();
                let full = &node.full;
                let mut j = 0;
                for &w in &active {
                    while j < full.len() && full[j] < w {
                        j += 1;
                    }
                    if j < full.len() && full[j] == w {
                        scratch.push(w);
                        continue;
                    }
                    let extra = node.cutoff_of(w).map_or(0, |c| (c as usize).min(m));
                    scores.push((w, (matched + extra) as u32));
                }
                std::mem::swap(&mut active, &mut scratch);
            }
            matched += m;
            if active.is_empty()
                || m < node.edge.len()
                || matched == sequence.len()
                || (early_exit && active.len() == 1)
            {
                break;
            }
            next = node.children.get(sequence[matched]);
        }
        for &w in &active {
            scores.push((w, matched as u32));
        }
        // Sort packed (rank, depth) words instead of (WorkerKey, depth) tuples.
        let mut packed: Vec<u64> = scores
            .into_iter()
            .map(|(w, d)| (u64::from(self.rank[w as usize]) << 32) | u64::from(d))
            .collect();
        packed.sort_unstable();
        let out = packed
            .into_iter()
            .map(|x| (self.slots[self.by_rank[(x >> 32) as usize] as usize].key, x as u32))
            .collect();
        OverlapScores { scores: out }
    }

    /// Approximate heap bytes held by the index (for memory reports).
    pub fn heap_bytes(&self) -> usize {
        /// Bytes of a hashbrown table from its `capacity()` (7/8 of its buckets).
        fn table_bytes(capacity: usize, entry: usize) -> usize {
            let buckets = match capacity {
                0 => return 0,
                c if c < 8 => (c + 1).next_power_of_two(),
                c => (c / 7 * 8).next_power_of_two(),
            };
            buckets * (entry + 1) + 16
        }
        let mut total = self.nodes.capacity() * std::mem::size_of::<Node>();
        for n in self.nodes.iter().filter(|n| n.live) {
            total += n.edge.capacity() * 16 + n.full.capacity() * 4 + n.cutoffs.capacity() * 8;
            total += match &n.children {
                Children::Small(v) => v.capacity() * 16,
                Children::Map(m) => table_bytes(m.capacity(), std::mem::size_of::<(u64, u32)>()),
            };
        }
        for l in self.slots.iter().filter_map(|s| s.lookup.as_ref()) {
            total += table_bytes(l.capacity(), std::mem::size_of::<(Ext, u32)>());
        }
        total + self.rank.capacity() * 4 + self.by_rank.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: WorkerKey = WorkerKey { worker_id: 1, dp_rank: 0 };
    const B: WorkerKey = WorkerKey { worker_id: u64::MAX, dp_rank: 3 };

    /// Blocks whose external hash is `100 + local`.
    fn blocks(locals: &[u64]) -> Vec<StoredBlock> {
        locals.iter().map(|&l| StoredBlock { local_hash: l, external_hash: 100 + l }).collect()
    }

    fn scores(ix: &RadixIndex, q: &[u64]) -> Vec<(WorkerKey, u32)> {
        ix.find_matches(q, false).scores
    }

    #[test]
    fn chain_scores_contiguous_prefix() {
        let mut ix = RadixIndex::new();
        ix.apply_stored(A, None, &blocks(&[1, 2])).unwrap();
        ix.apply_stored(A, Some(102), &blocks(&[3, 4])).unwrap();
        assert_eq!(scores(&ix, &[1, 2, 3, 4, 5]), vec![(A, 4)]);
        assert_eq!(scores(&ix, &[1, 2, 9, 4]), vec![(A, 2)]);
        assert_eq!(scores(&ix, &[9]), vec![]);
        assert_eq!(ix.tree_size(A), 4);
    }

    #[test]
    fn holders_split_a_shared_edge() {
        let mut ix = RadixIndex::new();
        ix.apply_stored(A, None, &blocks(&[1, 2, 3, 4])).unwrap();
        ix.apply_stored(B, None, &blocks(&[1, 2, 7])).unwrap();
        assert_eq!(scores(&ix, &[1, 2, 3, 4]), vec![(A, 4), (B, 2)]);
        assert_eq!(scores(&ix, &[1, 2, 7]), vec![(A, 2), (B, 3)]);
        // early exit stops once A is alone after the shared edge.
        assert_eq!(ix.find_matches(&[1, 2, 3, 4], true).scores, vec![(A, 4), (B, 2)]);
    }

    #[test]
    fn middle_removal_cuts_only_that_holder() {
        let mut ix = RadixIndex::new();
        ix.apply_stored(A, None, &blocks(&[1, 2, 3])).unwrap();
        ix.apply_stored(B, None, &blocks(&[1, 2, 3])).unwrap();
        ix.apply_removed(A, &[102]).unwrap();
        assert_eq!(scores(&ix, &[1, 2, 3]), vec![(A, 1), (B, 3)]);
        // 103 went stale with the cut, so it is no longer A's.
        assert_eq!(ix.apply_removed(A, &[103]), Err(EventError::BlockNotFound));
        assert_eq!(ix.tree_size(A), 1);
    }

    #[test]
    fn bad_events_are_reported_and_dropped() {
        let mut ix = RadixIndex::new();
        assert_eq!(
            ix.apply_stored(A, Some(999), &blocks(&[1])),
            Err(EventError::ParentBlockNotFound)
        );
        assert_eq!(
            ix.apply_stored(A, Some(101), &blocks(&[1])),
            Err(EventError::InvalidBlockSequence)
        );
        assert_eq!(ix.membership_count(), 0);
        let c = ix.counters();
        assert_eq!((c.parent_not_found, c.invalid_block_sequence), (1, 1));
    }

    #[test]
    fn split_skips_forgotten_holders_instead_of_panicking() {
        // A keeps a stale membership on [(1,11),(2,12)] after its lookup moved
        // to the second chain; once A is cleared, B's split must not touch A.
        let mut ix = RadixIndex::new();
        let b = |l, e| StoredBlock { local_hash: l, external_hash: e };
        ix.apply_stored(A, None, &[b(1, 11), b(2, 12)]).unwrap();
        ix.apply_stored(A, None, &[b(7, 11), b(8, 12)]).unwrap();
        ix.apply_cleared(A);
        ix.apply_stored(B, None, &[b(1, 21), b(9, 29)]).unwrap();
        assert_eq!(ix.tree_size(B), 2);
        assert_eq!(ix.find_matches(&[1, 9], false).scores, vec![(A, 1), (B, 2)]);
    }

    #[test]
    fn clearing_frees_the_tree() {
        let mut ix = RadixIndex::new();
        ix.apply_stored(A, None, &blocks(&[1, 2, 3])).unwrap();
        ix.apply_stored(A, Some(102), &blocks(&[5, 6])).unwrap();
        ix.apply_stored(B, None, &blocks(&[1, 9])).unwrap();
        ix.apply_cleared(A);
        assert_eq!(scores(&ix, &[1, 2, 3]), vec![(B, 1)]);
        ix.remove_worker(B.worker_id);
        assert_eq!(ix.membership_count(), 0);
        assert_eq!(ix.node_count(), 1);
        assert_eq!(ix.workers(), vec![]);
    }
}
