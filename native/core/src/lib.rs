//! kv-epp's hot-path core, free of Node: Dynamo-compatible block hashing, the
//! KV prefix index, KV-event decoding (Dynamo and vLLM wire formats), and
//! vLLM-exact prompt tokenization. The napi crate is a thin
//! layer over this crate.

pub mod approx;
pub mod error;
pub mod events;
pub mod hash;
pub mod index;
pub mod request_edit;
pub mod route;
pub mod tokenize;

pub use error::CoreError;
pub use index::{EventError, IndexCounters, OverlapScores, RadixIndex, StoredBlock, WorkerKey};
