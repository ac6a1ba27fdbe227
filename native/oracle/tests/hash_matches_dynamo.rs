//! Block hashing must equal `dynamo-kv-router` 1.6.1 bit for bit.

use dynamo_kv_router::protocols::{
    BlockHashOptions, LocalBlockHash, compute_block_hash_for_seq, compute_seq_hash_for_block,
};
use kv_epp_core::hash::{block_hash_seed, local_hashes, sequence_hashes};
use rand::{Rng, SeedableRng, rngs::SmallRng};

const LORAS: [Option<&str>; 4] = [None, Some(""), Some("adapter-a"), Some("ünïcode-lora/v2")];
const NAMESPACES: [Option<&str>; 4] = [None, Some(""), Some("tenant-a"), Some("salt:42")];

#[test]
fn ten_thousand_random_sequences_hash_identically() {
    let mut rng = SmallRng::seed_from_u64(0x5EED);
    let mut compared_blocks = 0usize;
    for case in 0..10_000 {
        let len = rng.random_range(0..5_000);
        let tokens: Vec<u32> = (0..len)
            .map(|_| match rng.random_range(0..10) {
                0 => u32::MAX - rng.random_range(0..4),
                1..=3 => rng.random_range(0..32),
                _ => rng.random_range(0..200_000),
            })
            .collect();
        let bs = [1u32, 16, 32, 64, 128][case % 5];
        let lora = LORAS[rng.random_range(0..LORAS.len())];
        let ns = NAMESPACES[rng.random_range(0..NAMESPACES.len())];
        let opts = BlockHashOptions { lora_name: lora, cache_namespace: ns, ..Default::default() };

        let want_local = compute_block_hash_for_seq(&tokens, bs, opts);
        let got_local = local_hashes(&tokens, bs, block_hash_seed(lora, ns)).unwrap();
        let want_local_u64: Vec<u64> = want_local.iter().map(|h| h.0).collect();
        assert_eq!(got_local, want_local_u64, "local hashes, case {case} bs {bs} {lora:?} {ns:?}");

        let want_seq = compute_seq_hash_for_block(&want_local);
        assert_eq!(sequence_hashes(&got_local), want_seq, "sequence hashes, case {case}");
        compared_blocks += got_local.len();
    }
    assert!(compared_blocks > 1_000_000, "compared {compared_blocks} blocks");
}

#[test]
fn sequence_chain_of_arbitrary_locals_matches() {
    let mut rng = SmallRng::seed_from_u64(7);
    for _ in 0..1000 {
        let n = rng.random_range(0..300);
        let locals: Vec<u64> = (0..n).map(|_| rng.random()).collect();
        let want = compute_seq_hash_for_block(
            &locals.iter().copied().map(LocalBlockHash).collect::<Vec<_>>(),
        );
        assert_eq!(sequence_hashes(&locals), want);
    }
}
