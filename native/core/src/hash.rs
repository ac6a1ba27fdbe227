//! Dynamo-compatible KV block hashing.
//!
//! Contract (equal bit for bit to `dynamo-kv-router` 1.6.1, checked by the
//! oracle crate's differential tests):
//! - local hash of a full block = XXH3-64 over its tokens as little-endian u32,
//!   with the seed from [`block_hash_seed`];
//! - only `floor(len / block_size)` full blocks are hashed;
//! - sequence hash: `seq[0] = local[0]`,
//!   `seq[i] = XXH3-64(LE_u64(seq[i-1]) ‖ LE_u64(local[i]), 1337)`.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::error::CoreError;

/// Seed of both the local block hash (without LoRA/namespace) and the chain.
pub const XXH3_SEED: u64 = 1337;
/// Largest accepted block size; engines use 16..=128, anything larger is a misconfiguration.
pub const MAX_BLOCK_SIZE: u32 = 1024;

/// Rejects block sizes outside `1..=MAX_BLOCK_SIZE`.
pub fn validate_block_size(block_size: u32) -> Result<u32, CoreError> {
    if block_size == 0 || block_size > MAX_BLOCK_SIZE {
        return Err(CoreError::InvalidBlockSize(block_size as u64));
    }
    Ok(block_size)
}

/// The local-hash seed: 1337, plus `XXH3(lora, 0)`, plus `XXH3(namespace, 1)`
/// (wrapping). Empty strings count as absent.
pub fn block_hash_seed(lora_name: Option<&str>, cache_namespace: Option<&str>) -> u64 {
    let mut seed = XXH3_SEED;
    if let Some(name) = lora_name.filter(|s| !s.is_empty()) {
        seed = seed.wrapping_add(xxh3_64_with_seed(name.as_bytes(), 0));
    }
    if let Some(ns) = cache_namespace.filter(|s| !s.is_empty()) {
        seed = seed.wrapping_add(xxh3_64_with_seed(ns.as_bytes(), 1));
    }
    seed
}

/// Number of full blocks in `token_count` tokens.
#[inline]
pub fn full_block_count(token_count: usize, block_size: u32) -> usize {
    token_count / block_size as usize
}

/// Hash of one block's tokens with `seed`.
#[inline]
pub fn hash_block(tokens: &[u32], seed: u64) -> u64 {
    #[cfg(target_endian = "little")]
    {
        // SAFETY: u32 has no padding and on little-endian targets its in-memory
        // bytes are exactly its `to_le_bytes()`; the slice outlives the view.
        let bytes = unsafe {
            std::slice::from_raw_parts(tokens.as_ptr().cast::<u8>(), std::mem::size_of_val(tokens))
        };
        xxh3_64_with_seed(bytes, seed)
    }
    #[cfg(not(target_endian = "little"))]
    {
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        xxh3_64_with_seed(&bytes, seed)
    }
}

/// Writes the local hashes of every full block into `out`; returns how many.
/// `out` must hold at least `full_block_count(tokens.len(), block_size)` slots.
pub fn local_hashes_into(
    tokens: &[u32],
    block_size: u32,
    seed: u64,
    out: &mut [u64],
) -> Result<usize, CoreError> {
    validate_block_size(block_size)?;
    let n = full_block_count(tokens.len(), block_size);
    if out.len() < n {
        return Err(CoreError::BufferTooSmall { needed: n, got: out.len() });
    }
    for (slot, chunk) in out.iter_mut().zip(tokens.chunks_exact(block_size as usize)) {
        *slot = hash_block(chunk, seed);
    }
    Ok(n)
}

/// Allocating form of [`local_hashes_into`].
pub fn local_hashes(tokens: &[u32], block_size: u32, seed: u64) -> Result<Vec<u64>, CoreError> {
    validate_block_size(block_size)?;
    let mut out = vec![0; full_block_count(tokens.len(), block_size)];
    local_hashes_into(tokens, block_size, seed, &mut out)?;
    Ok(out)
}

/// One step of the sequence-hash chain.
#[inline]
pub fn next_sequence_hash(parent: u64, local: u64) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&parent.to_le_bytes());
    bytes[8..].copy_from_slice(&local.to_le_bytes());
    xxh3_64_with_seed(&bytes, XXH3_SEED)
}

/// Writes the sequence hashes of `local` into `out` (`out.len() >= local.len()`).
pub fn sequence_hashes_into(local: &[u64], out: &mut [u64]) -> Result<usize, CoreError> {
    if out.len() < local.len() {
        return Err(CoreError::BufferTooSmall { needed: local.len(), got: out.len() });
    }
    let mut prev = 0u64;
    for (i, (&l, slot)) in local.iter().zip(out.iter_mut()).enumerate() {
        prev = if i == 0 { l } else { next_sequence_hash(prev, l) };
        *slot = prev;
    }
    Ok(local.len())
}

/// Allocating form of [`sequence_hashes_into`].
pub fn sequence_hashes(local: &[u64]) -> Vec<u64> {
    let mut out = vec![0; local.len()];
    sequence_hashes_into(local, &mut out).expect("sized above");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(a: u32, b: u32) -> Vec<u32> {
        (a..=b).collect()
    }

    #[test]
    fn raw_xxh3_vector() {
        assert_eq!(xxh3_64_with_seed(b"test data", 1337), 13226331709069118873);
    }

    #[test]
    fn reference_vectors() {
        let l = local_hashes(&range(0, 15), 16, XXH3_SEED).unwrap();
        assert_eq!(l, vec![15310707395893867146]);
        assert_eq!(sequence_hashes(&l), l);

        let l = local_hashes(&range(1, 32), 16, XXH3_SEED).unwrap();
        assert_eq!(l, vec![16863443419780771464, 2287610619914608821]);
        assert_eq!(sequence_hashes(&l), vec![16863443419780771464, 12466389667045779788]);

        assert_eq!(local_hashes(&range(0, 3), 4, XXH3_SEED).unwrap(), vec![9143094415614847814]);

        let l = local_hashes(&range(1, 8), 4, XXH3_SEED).unwrap();
        assert_eq!(l, vec![14643705804678351452, 16777012769546811212]);
        assert_eq!(sequence_hashes(&l), vec![14643705804678351452, 4945711292740353085]);
        assert_eq!(14643705804678351452u64 as i64, -3803038269031200164);
    }

    #[test]
    fn lora_and_namespace_seed_vectors() {
        let t = range(0, 3);
        let s = block_hash_seed(Some("adapter-a"), None);
        assert_eq!(s, 8842669519798868182);
        assert_eq!(local_hashes(&t, 4, s).unwrap(), vec![6665157333201000639]);
        let s = block_hash_seed(None, Some("tenant-a"));
        assert_eq!(s, 1948188790972764086);
        assert_eq!(local_hashes(&t, 4, s).unwrap(), vec![17009624042690211646]);
        let s = block_hash_seed(Some("adapter-a"), Some("tenant-a"));
        assert_eq!(s, 10790858310771630931);
        assert_eq!(local_hashes(&t, 4, s).unwrap(), vec![8269515957840517240]);
        assert_eq!(block_hash_seed(Some(""), Some("")), XXH3_SEED);
    }

    #[test]
    fn only_full_blocks_are_hashed() {
        for bs in [11u32, 32, 64] {
            let b = bs as usize;
            for (len, want) in [(b, 1), (b + 1, 1), (2 * b + 1, 2), (0, 0), (b - 1, 0)] {
                let t: Vec<u32> = (0..len as u32).collect();
                assert_eq!(local_hashes(&t, bs, XXH3_SEED).unwrap().len(), want);
            }
        }
    }

    #[test]
    fn block_size_bounds() {
        assert!(matches!(validate_block_size(0), Err(CoreError::InvalidBlockSize(0))));
        assert!(validate_block_size(1025).is_err());
        assert_eq!(validate_block_size(1).unwrap(), 1);
        assert_eq!(validate_block_size(1024).unwrap(), 1024);
    }

    #[test]
    fn short_buffer_is_an_error() {
        let t = range(0, 31);
        let mut out = [0u64; 1];
        assert!(matches!(
            local_hashes_into(&t, 16, XXH3_SEED, &mut out),
            Err(CoreError::BufferTooSmall { needed: 2, got: 1 })
        ));
    }
}
