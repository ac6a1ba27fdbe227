//! Shared pieces of the oracle tests and benches: one event model that can be
//! applied both to kv-epp's index and to `dynamo_kv_router::RadixTree`.

use dynamo_kv_router::protocols::{
    ExternalSequenceBlockHash, KvCacheEvent, KvCacheEventData, KvCacheRemoveData, KvCacheStoreData,
    KvCacheStoredBlockData, LocalBlockHash, RouterEvent, WorkerWithDpRank,
};
use dynamo_kv_router::radix_tree::RadixTree;
use kv_epp_core::{RadixIndex, StoredBlock, WorkerKey};
use rand::{Rng, SeedableRng, rngs::SmallRng};

/// One index event, independent of either implementation.
#[derive(Debug, Clone)]
pub enum Event {
    Stored { worker: WorkerKey, parent: Option<u64>, blocks: Vec<StoredBlock> },
    Removed { worker: WorkerKey, hashes: Vec<u64> },
    Cleared { worker: WorkerKey },
    RemoveWorker { worker_id: u64 },
}

pub fn to_router_event(e: &Event, event_id: u64) -> Option<RouterEvent> {
    let (worker, data) = match e {
        Event::Stored { worker, parent, blocks } => (
            worker,
            KvCacheEventData::Stored(KvCacheStoreData {
                parent_hash: parent.map(ExternalSequenceBlockHash),
                start_position: None,
                blocks: blocks
                    .iter()
                    .map(|b| KvCacheStoredBlockData {
                        block_hash: ExternalSequenceBlockHash(b.external_hash),
                        tokens_hash: LocalBlockHash(b.local_hash),
                        mm_extra_info: None,
                    })
                    .collect(),
            }),
        ),
        Event::Removed { worker, hashes } => (
            worker,
            KvCacheEventData::Removed(KvCacheRemoveData {
                block_hashes: hashes.iter().copied().map(ExternalSequenceBlockHash).collect(),
            }),
        ),
        Event::Cleared { worker } => (worker, KvCacheEventData::Cleared),
        Event::RemoveWorker { .. } => return None,
    };
    Some(RouterEvent::new(
        worker.worker_id,
        KvCacheEvent { event_id, data, dp_rank: worker.dp_rank },
    ))
}

/// Applies an event to Dynamo's tree; returns whether it reported an error.
pub fn apply_dynamo(tree: &mut RadixTree, e: &Event, event_id: u64) -> bool {
    match e {
        Event::RemoveWorker { worker_id } => {
            tree.remove_worker(*worker_id);
            false
        }
        _ => tree.apply_event(to_router_event(e, event_id).expect("not RemoveWorker")).is_err(),
    }
}

/// Applies an event to kv-epp's index; returns whether it reported an error.
pub fn apply_ours(index: &mut RadixIndex, e: &Event) -> bool {
    match e {
        Event::Stored { worker, parent, blocks } => {
            index.apply_stored(*worker, *parent, blocks).is_err()
        }
        Event::Removed { worker, hashes } => index.apply_removed(*worker, hashes).is_err(),
        Event::Cleared { worker } => {
            index.apply_cleared(*worker);
            false
        }
        Event::RemoveWorker { worker_id } => {
            index.remove_worker(*worker_id);
            false
        }
    }
}

/// Dynamo's scores as sorted `(worker, depth)` pairs, comparable with ours.
pub fn dynamo_scores(tree: &RadixTree, query: &[u64], early_exit: bool) -> Vec<(WorkerKey, u32)> {
    let s = tree.find_matches(query.iter().copied().map(LocalBlockHash).collect(), early_exit);
    let mut v: Vec<(WorkerKey, u32)> =
        s.scores.iter().map(|(w, &d)| (WorkerKey::new(w.worker_id, w.dp_rank), d)).collect();
    v.sort_unstable_by_key(|&(k, _)| k);
    v
}

pub fn dynamo_worker(w: WorkerKey) -> WorkerWithDpRank {
    WorkerWithDpRank::new(w.worker_id, w.dp_rank)
}

/// A corpus of "documents": chains of local hashes sharing prefixes, like
/// prompts sharing system prompts and conversation history.
pub struct Corpus {
    pub docs: Vec<Vec<u64>>,
}

impl Corpus {
    pub fn new(rng: &mut SmallRng, docs: usize, max_len: usize, hash_space: u64) -> Self {
        let mut out: Vec<Vec<u64>> = Vec::with_capacity(docs);
        for _ in 0..docs {
            let mut d = if !out.is_empty() && rng.random_bool(0.6) {
                // Share a prefix with an earlier document.
                let base = &out[rng.random_range(0..out.len())];
                let keep = rng.random_range(0..=base.len());
                base[..keep].to_vec()
            } else {
                Vec::new()
            };
            let target = rng.random_range(1..=max_len).max(d.len());
            while d.len() < target {
                d.push(rng.random_range(0..hash_space));
            }
            out.push(d);
        }
        Self { docs: out }
    }
}

/// The engine-side hash of block `i` of a document: a chain, so equal prefixes
/// get equal hashes (as vLLM's and Dynamo's are); `salt` models engines whose
/// hashes differ per worker.
pub fn external_hash(doc: &[u64], i: usize, salt: u64) -> u64 {
    let mut h = salt ^ 0x9E37_79B9_7F4A_7C15;
    for &l in &doc[..=i] {
        h = (h ^ l).wrapping_mul(0x100_0000_01B3).rotate_left(23);
    }
    h
}

/// Random event streams covering stores with and without parents, partial
/// and whole-chain removals, removals of unknown blocks, missing parents,
/// self-referencing stores, clears and worker removals, over several dp ranks.
pub struct StreamGen {
    pub rng: SmallRng,
    pub corpus: Corpus,
    pub workers: Vec<WorkerKey>,
    /// Per-worker salt for external hashes (0 = shared hash space).
    salts: Vec<u64>,
    /// What each worker has stored: (doc, start, end) ranges.
    held: Vec<Vec<(usize, usize, usize)>>,
}

impl StreamGen {
    pub fn new(seed: u64, workers: u64, dp_ranks: u32, docs: usize, max_len: usize) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let hash_space = if rng.random_bool(0.3) { 8 } else { u64::MAX };
        let corpus = Corpus::new(&mut rng, docs, max_len, hash_space);
        let mut ws = Vec::new();
        for w in 0..workers {
            for r in 0..dp_ranks {
                // Worker ids above 2^63 on purpose: they must survive as u64.
                let id = if w % 2 == 0 { 1000 + w } else { u64::MAX - w };
                ws.push(WorkerKey::new(id, r));
            }
        }
        let shared = rng.random_bool(0.5);
        let salts = ws.iter().map(|_| if shared { 0 } else { rng.random() }).collect();
        let held = vec![Vec::new(); ws.len()];
        Self { rng, corpus, workers: ws, salts, held }
    }

    fn ext(&self, wi: usize, doc: usize, i: usize) -> u64 {
        external_hash(&self.corpus.docs[doc], i, self.salts[wi])
    }

    pub fn next_event(&mut self) -> Event {
        let wi = self.rng.random_range(0..self.workers.len());
        let worker = self.workers[wi];
        let roll = self.rng.random_range(0..1000);
        match roll {
            0..=549 => self.stored(wi),
            550..=939 => self.removed(wi),
            940..=969 => {
                // Unknown or garbage parent / self reference / empty store.
                let d = self.rng.random_range(0..self.corpus.docs.len());
                let len = self.corpus.docs[d].len();
                let end = self.rng.random_range(1..=len);
                let blocks = self.blocks(wi, d, 0, end);
                match self.rng.random_range(0..3) {
                    0 => Event::Stored { worker, parent: Some(self.rng.random()), blocks },
                    1 => {
                        let p = blocks[self.rng.random_range(0..blocks.len())].external_hash;
                        Event::Stored { worker, parent: Some(p), blocks }
                    }
                    _ => Event::Stored { worker, parent: None, blocks: Vec::new() },
                }
            }
            970..=989 => {
                self.held[wi].clear();
                Event::Cleared { worker }
            }
            _ => {
                let id = worker.worker_id;
                for (j, w) in self.workers.iter().enumerate() {
                    if w.worker_id == id {
                        self.held[j].clear();
                    }
                }
                Event::RemoveWorker { worker_id: id }
            }
        }
    }

    fn blocks(&self, wi: usize, d: usize, a: usize, b: usize) -> Vec<StoredBlock> {
        (a..b)
            .map(|i| StoredBlock {
                local_hash: self.corpus.docs[d][i],
                external_hash: self.ext(wi, d, i),
            })
            .collect()
    }

    fn stored(&mut self, wi: usize) -> Event {
        let worker = self.workers[wi];
        // Mostly continue something held (parent known), else start from the root.
        let (d, a) = if !self.held[wi].is_empty() && self.rng.random_bool(0.6) {
            let &(d, s, e) = &self.held[wi][self.rng.random_range(0..self.held[wi].len())];
            let len = self.corpus.docs[d].len();
            let a = if self.rng.random_bool(0.7) { e } else { self.rng.random_range(s..=e) };
            (d, a.min(len))
        } else {
            (self.rng.random_range(0..self.corpus.docs.len()), 0)
        };
        let len = self.corpus.docs[d].len();
        if a >= len {
            return Event::Stored { worker, parent: None, blocks: self.blocks(wi, d, 0, len) };
        }
        let b = self.rng.random_range(a + 1..=len);
        let parent = (a > 0).then(|| self.ext(wi, d, a - 1));
        self.held[wi].push((d, a, b));
        Event::Stored { worker, parent, blocks: self.blocks(wi, d, a, b) }
    }

    fn removed(&mut self, wi: usize) -> Event {
        let worker = self.workers[wi];
        if self.held[wi].is_empty() || self.rng.random_bool(0.05) {
            return Event::Removed { worker, hashes: vec![self.rng.random()] };
        }
        let k = self.rng.random_range(0..self.held[wi].len());
        let (d, s, e) = self.held[wi][k];
        if s >= e {
            self.held[wi].swap_remove(k);
            return Event::Removed { worker, hashes: Vec::new() };
        }
        let hashes = match self.rng.random_range(0..4) {
            // Tail first, as engines evict.
            0 => {
                let from = self.rng.random_range(s..e);
                self.held[wi][k].2 = from;
                (from..e).rev().map(|i| self.ext(wi, d, i)).collect()
            }
            // The whole range in order.
            1 => {
                self.held[wi].swap_remove(k);
                (s..e).map(|i| self.ext(wi, d, i)).collect()
            }
            // One block in the middle.
            2 => {
                let i = self.rng.random_range(s..e);
                vec![self.ext(wi, d, i)]
            }
            // A random scattered subset, plus sometimes an unknown hash.
            _ => {
                let picked: Vec<usize> = (s..e).filter(|_| self.rng.random_bool(0.3)).collect();
                let mut v: Vec<u64> = picked.into_iter().map(|i| self.ext(wi, d, i)).collect();
                if self.rng.random_bool(0.2) {
                    v.push(self.rng.random());
                }
                v
            }
        };
        Event::Removed { worker, hashes }
    }

    /// A query: a prefix of a document, sometimes with a diverging tail.
    pub fn query(&mut self) -> Vec<u64> {
        let d = self.rng.random_range(0..self.corpus.docs.len());
        let doc = &self.corpus.docs[d];
        let n = self.rng.random_range(1..=doc.len());
        let mut q = doc[..n].to_vec();
        if self.rng.random_bool(0.2) {
            q.push(self.rng.random());
        }
        q
    }
}
