//! `vllm` codec: hand-built ZMQ payloads in both event layouts (vLLM 0.33 maps
//! with `omit_defaults`, vLLM <= 0.18 / SGLang tagged arrays), recomputed
//! local hashes (LoRA name and cache salt in the seed), partial blocks vs
//! block-size mismatches, Dynamo's relay behaviour (dedup, merging, tiers,
//! namespace propagation, group filter), stream ids, and fuzzing.

mod events_support;

use events_support::{M, Rig, arr, hashes, map, rejections, s, tokens, u};
use kv_epp_core::WorkerKey;
use kv_epp_core::events::{BlockSizeMismatch, EventCodec, HolderGap, RejectReason, SourceContext};
use kv_epp_core::hash::{XXH3_SEED, block_hash_seed, hash_block, local_hashes};
use xxhash_rust::xxh3::xxh3_64_with_seed;

const BIG: u64 = 0xFFFF_FFFF_FFFF_FFFB;
const BIG_SIGNED: i64 = -5;

fn batch(events: Vec<M>, dp: Option<u64>) -> M {
    arr([M::F(1_764_000_000.25), arr(events), dp.map_or(M::Nil, u)])
}

/// vLLM 0.33 `BlockStored` as a tagged map (`omit_defaults`: optional trailing fields absent).
fn stored_map(h: &[u64], parent: Option<u64>, t: &[u32], bs: u64) -> M {
    map([
        ("type", s("BlockStored")),
        ("block_hashes", hashes(h)),
        ("parent_block_hash", parent.map_or(M::Nil, u)),
        ("token_ids", tokens(t)),
        ("block_size", u(bs)),
        ("lora_id", M::Nil),
        ("medium", s("GPU")),
        ("lora_name", M::Nil),
    ])
}

fn with(mut m: M, key: &'static str, v: M) -> M {
    let M::Map(items) = &mut m else { panic!("not a map") };
    items.retain(|(k, _)| !matches!(k, M::S(x) if x == key));
    items.push((s(key), v));
    m
}

fn removed_map(h: &[u64]) -> M {
    map([("type", s("BlockRemoved")), ("block_hashes", hashes(h)), ("medium", s("GPU"))])
}

fn cleared_map() -> M {
    map([("type", s("AllBlocksCleared"))])
}

fn range(a: u32, b: u32) -> Vec<u32> {
    (a..b).collect()
}

fn locals(t: &[u32], bs: u32, lora: Option<&str>, ns: Option<&str>) -> Vec<u64> {
    local_hashes(t, bs, block_hash_seed(lora, ns)).unwrap()
}

fn wk(w: u64, d: u32) -> WorkerKey {
    WorkerKey::new(w, d)
}

#[test]
fn map_and_tagged_array_layouts_store_the_same_blocks() {
    let mut rig = Rig::new(4);
    let t = range(1, 9);
    let l = locals(&t, 4, None, None);
    assert_eq!(l, vec![14643705804678351452, 16777012769546811212]);
    let r = rig.vllm(&batch(vec![stored_map(&[BIG, 7], None, &t, 4)], Some(0)), 1, None);
    assert_eq!((r.applied.stored, r.blocks_stored), (1, 2), "{r:?}");
    // vLLM <= 0.18 tagged array with signed hashes: -5 is 18446744073709551611.
    let as_array = arr([
        s("BlockStored"),
        arr([M::I(BIG_SIGNED), M::I(7)]),
        M::Nil,
        tokens(&t),
        u(4),
        M::Nil,
        s("GPU"),
    ]);
    let r = rig.vllm(&batch(vec![as_array], Some(0)), 2, None);
    assert_eq!(r.applied.stored, 1, "{r:?}");
    assert_eq!(rig.depth(wk(1, 0), &l), 2);
    assert_eq!(rig.depth(wk(2, 0), &l), 2);
    // Removals in both layouts, each naming the > 2^63 block in the other spelling.
    let r = rig.vllm(
        &batch(vec![arr([s("BlockRemoved"), arr([M::I(BIG_SIGNED)]), s("GPU")])], None),
        1,
        None,
    );
    assert_eq!((r.applied.removed, r.blocks_removed), (1, 1));
    let r = rig.vllm(&batch(vec![removed_map(&[BIG])], None), 2, None);
    assert_eq!(r.applied.removed, 1);
    assert_eq!((rig.depth(wk(1, 0), &l), rig.depth(wk(2, 0), &l)), (0, 0));
    // AllBlocksCleared in both layouts.
    rig.vllm(&batch(vec![stored_map(&[1], None, &range(0, 4), 4)], None), 1, None);
    let r = rig.vllm(&batch(vec![arr([s("AllBlocksCleared")])], None), 1, None);
    assert_eq!(r.applied.cleared, 1);
    let r = rig.vllm(&batch(vec![cleared_map()], None), 2, None);
    assert_eq!(r.applied.cleared, 1);
    assert_eq!(rig.index.membership_count(), 0);
}

#[test]
fn lora_name_and_cache_salt_seed_the_local_hashes() {
    let t = range(0, 4);
    // The spec's vectors (lora "adapter-a", namespace "tenant-a", both).
    assert_eq!(locals(&t, 4, Some("adapter-a"), None), vec![6665157333201000639]);
    assert_eq!(locals(&t, 4, None, Some("tenant-a")), vec![17009624042690211646]);
    assert_eq!(locals(&t, 4, Some("adapter-a"), Some("tenant-a")), vec![8269515957840517240]);
    let cases: Vec<(M, Option<&str>, Option<&str>)> = vec![
        (stored_map(&[1], None, &t, 4), None, None),
        (with(stored_map(&[1], None, &t, 4), "lora_name", s("adapter-a")), Some("adapter-a"), None),
        (with(stored_map(&[1], None, &t, 4), "cache_salt", s("tenant-a")), None, Some("tenant-a")),
        (
            with(
                with(stored_map(&[1], None, &t, 4), "cache_salt", s("tenant-a")),
                "lora_name",
                s("adapter-a"),
            ),
            Some("adapter-a"),
            Some("tenant-a"),
        ),
        // vLLM carries Dynamo's salt in the first block's extra_keys (after the LoRA name).
        (
            with(
                with(stored_map(&[1], None, &t, 4), "lora_name", s("adapter-a")),
                "extra_keys",
                arr([arr([s("adapter-a"), s("dynamo-cache-salt:tenant-a")])]),
            ),
            Some("adapter-a"),
            Some("tenant-a"),
        ),
        // An empty salt is no salt.
        (with(stored_map(&[1], None, &t, 4), "cache_salt", s("")), None, None),
        // Tagged arrays: vLLM's lora_name at position 7, SGLang's {cache_salt} metadata.
        (
            arr([
                s("BlockStored"),
                hashes(&[1]),
                M::Nil,
                tokens(&t),
                u(4),
                M::Nil,
                M::Nil,
                s("adapter-a"),
            ]),
            Some("adapter-a"),
            None,
        ),
        (
            arr([
                s("BlockStored"),
                hashes(&[1]),
                M::Nil,
                tokens(&t),
                u(4),
                u(3),
                M::Nil,
                map([("cache_salt", s("tenant-a"))]),
            ]),
            None,
            Some("tenant-a"),
        ),
    ];
    for (i, (ev, lora, ns)) in cases.into_iter().enumerate() {
        let mut rig = Rig::new(4);
        let r = rig.vllm(&batch(vec![ev], None), 1, None);
        assert_eq!(r.applied.stored, 1, "case {i}: {r:?}");
        let want = locals(&t, 4, lora, ns);
        assert_eq!(rig.depth(wk(1, 0), &want), 1, "case {i}: hashed with lora {lora:?} ns {ns:?}");
        let plain = locals(&t, 4, None, None);
        if lora.is_some() || ns.is_some() {
            assert_eq!(rig.depth(wk(1, 0), &plain), 0, "case {i}: the seed must differ");
        }
    }
}

#[test]
fn an_unsalted_child_inherits_its_parents_namespace() {
    let mut rig = Rig::new(4);
    let t = range(0, 12);
    let parent = with(stored_map(&[1, 2], None, &t[..8], 4), "cache_salt", s("tenant-a"));
    let child = stored_map(&[3], Some(2), &t[8..], 4);
    rig.vllm(&batch(vec![parent], None), 1, None);
    let r = rig.vllm(&batch(vec![child], None), 1, None);
    assert_eq!(r.applied.stored, 1);
    assert_eq!(rig.depth(wk(1, 0), &locals(&t, 4, None, Some("tenant-a"))), 3);
}

#[test]
fn partial_blocks_and_block_size_mismatches() {
    let mut rig = Rig::new(4);
    let w = wk(1, 0);
    // token_ids shorter than block_hashes x block_size: trailing blocks dropped.
    let t = range(0, 10);
    let r = rig.vllm(&batch(vec![stored_map(&[1, 2, 3], None, &t, 4)], None), 1, None);
    assert_eq!((r.applied.stored, r.blocks_stored), (1, 2));
    assert_eq!(rejections(&r), vec![(RejectReason::PartialBlock, 1)]);
    assert!(r.block_size_mismatches.is_empty());
    assert_eq!(rig.depth(w, &locals(&t, 4, None, None)), 2);
    // One short trailing block (block_size < configured, one hash, < one block of tokens).
    let r = rig.vllm(&batch(vec![stored_map(&[4], Some(2), &[8, 9], 2)], None), 1, None);
    assert_eq!(rejections(&r), vec![(RejectReason::PartialBlock, 1)]);
    assert_eq!(r.applied.stored, 0);
    assert!(r.block_size_mismatches.is_empty());
    // Engine blocks bigger than ours.
    let r = rig.vllm(&batch(vec![stored_map(&[5], None, &range(0, 8), 8)], None), 1, None);
    assert_eq!(rejections(&r), vec![(RejectReason::BlockSizeMismatch, 1)]);
    assert_eq!(r.block_size_mismatches, vec![BlockSizeMismatch { worker: w, expected: 4, got: 8 }]);
    // Several engine blocks smaller than ours.
    let r = rig.vllm(&batch(vec![stored_map(&[6, 7], None, &range(0, 4), 2)], None), 1, None);
    assert_eq!(rejections(&r), vec![(RejectReason::BlockSizeMismatch, 1)]);
    assert_eq!(r.block_size_mismatches[0].got, 2);
    // One small block with a full configured block of tokens is a mismatch too.
    let r = rig.vllm(&batch(vec![stored_map(&[8], None, &range(0, 4), 2)], None), 1, None);
    assert_eq!(rejections(&r), vec![(RejectReason::BlockSizeMismatch, 1)]);
    // Nothing of the above reached the index.
    assert_eq!(rig.index.tree_size(w), 2);
    // Lower tiers are not classified (vLLM offloads in other block sizes).
    let cpu = with(stored_map(&[9], None, &range(0, 16), 16), "medium", s("CPU"));
    let r = rig.vllm(&batch(vec![cpu], None), 1, None);
    assert!(rejections(&r).is_empty() && r.ignored == 1, "{r:?}");
}

#[test]
fn decode_errors_are_per_event() {
    let mut rig = Rig::new(4);
    let t = range(0, 4);
    let events = vec![
        stored_map(&[1], None, &t, 4),
        map([("type", s("BlockMoved")), ("block_hashes", hashes(&[1]))]),
        arr([s("BlockTeleported"), hashes(&[1])]),
        map([("type", s("BlockStored")), ("block_hashes", hashes(&[2]))]), // no token_ids
        with(stored_map(&[3], None, &t, 4), "medium", u(7)),               // wrong type
        with(stored_map(&[3], None, &t, 4), "token_ids", arr([M::I(-1)])),
        arr([M::Nil, hashes(&[1])]), // no tag
        u(5),
        removed_map(&[424242]),
        stored_map(&[2], Some(1), &range(4, 8), 4),
    ];
    let r = rig.vllm(&batch(events, None), 1, None);
    assert_eq!(r.applied.stored, 2, "{r:?}");
    assert_eq!(
        rejections(&r),
        vec![
            (RejectReason::Malformed, 5),
            (RejectReason::UnknownVariant, 2),
            (RejectReason::BlockNotFound, 1)
        ]
    );
    assert_eq!(rig.depth(wk(1, 0), &locals(&range(0, 8), 4, None, None)), 2);
    // A message that is not a batch is one malformed message.
    for bad in [u(1), arr([M::F(0.0)]), arr([s("ts"), arr([])]), arr([M::F(0.0), arr([]), s("x")])]
    {
        assert_eq!(rejections(&rig.vllm(&bad, 1, None)), vec![(RejectReason::Malformed, 1)]);
    }
}

#[test]
fn worker_dp_rank_and_layout_of_the_batch() {
    let mut rig = Rig::new(4);
    let t = range(0, 4);
    let l = locals(&t, 4, None, None);
    let ev = || stored_map(&[1], None, &t, 4);
    // No worker: every event is rejected.
    let no_worker = SourceContext {
        worker_id: None,
        dp_rank: None,
        sequence: None,
        replay: false,
        ignore_ids: false,
    };
    let r = rig.apply(EventCodec::Vllm, &batch(vec![ev(), ev()], None).encode(), no_worker);
    assert_eq!(rejections(&r), vec![(RejectReason::NoWorker, 2)]);
    // The batch's rank beats the context's; the context's beats 0.
    let ctx = |seq| SourceContext {
        worker_id: Some(5),
        dp_rank: Some(2),
        sequence: seq,
        replay: false,
        ignore_ids: false,
    };
    let r = rig.apply(EventCodec::Vllm, &batch(vec![ev()], Some(3)).encode(), ctx(None));
    assert_eq!(r.workers, vec![wk(5, 3)]);
    let r = rig.apply(EventCodec::Vllm, &batch(vec![ev()], None).encode(), ctx(None));
    assert_eq!(r.workers, vec![wk(5, 2)]);
    let r = rig.vllm(&batch(vec![ev()], None), 5, None);
    assert_eq!(r.workers, vec![wk(5, 0)]);
    for d in [0, 2, 3] {
        assert_eq!(rig.depth(wk(5, d), &l), 1);
    }
    // vLLM's omit_defaults drops a None rank: a two-element batch.
    let two = arr([M::F(0.5), arr([ev()])]);
    assert_eq!(rig.vllm(&two, 6, None).workers, vec![wk(6, 0)]);
    // An integer timestamp and extra trailing elements are accepted.
    let long = arr([u(1), arr([ev()]), u(1), s("future")]);
    assert_eq!(rig.vllm(&long, 6, None).workers, vec![wk(6, 1)]);
}

#[test]
fn zmq_sequence_duplicates_gaps_and_restarts() {
    let mut rig = Rig::new(4);
    let w = wk(1, 0);
    let t = range(0, 12);
    let l = locals(&t, 4, None, None);
    let ev = |i: usize| {
        stored_map(&[i as u64 + 1], (i > 0).then_some(i as u64), &t[4 * i..4 * i + 4], 4)
    };
    assert!(rejections(&rig.vllm(&batch(vec![ev(0)], None), 1, Some(0))).is_empty());
    // Seen again: the whole message is skipped.
    let r = rig.vllm(&batch(vec![ev(1), removed_map(&[1])], None), 1, Some(0));
    assert_eq!(rejections(&r), vec![(RejectReason::Duplicate, 2)]);
    assert_eq!(rig.depth(w, &l), 1);
    rig.vllm(&batch(vec![ev(1)], None), 1, Some(1));
    // A gap: reported, applied, nothing cleared.
    let r = rig.vllm(&batch(vec![ev(2)], None), 1, Some(4));
    assert_eq!(r.gaps, vec![HolderGap { worker: w, expected: 2, got: 4 }]);
    assert_eq!(rig.depth(w, &l), 3);
    // The engine restarted: sequence back at 0 clears the holder first.
    let r = rig.vllm(&batch(vec![ev(0)], None), 1, Some(0));
    assert_eq!(r.resets, vec![w]);
    assert_eq!(rig.index.tree_size(w), 1);
    assert_eq!(rig.depth(w, &l), 1);
}

#[test]
fn media_locality_ownership_and_groups() {
    let mut rig = Rig::new(4);
    let t = range(0, 4);
    let l = locals(&t, 4, None, None);
    let w = wk(1, 0);
    let st = |h| stored_map(&[h], None, &t, 4);
    let r = rig.vllm(
        &batch(
            vec![
                with(st(1), "medium", s("CPU_PINNED")),  // lower tier: ignored
                with(st(2), "medium", s("FS")),          // unknown medium
                with(st(3), "locality", s("REMOTE")),    // not this worker's
                with(st(4), "locality", s("ELSEWHERE")), // unknown locality
                with(st(5), "ownership", s("kvcr")),     // kvcr-owned
                with(st(6), "ownership", s("bob")),      // unknown ownership
                with(st(7), "kv_cache_spec_kind", s("sliding_window")),
                with(st(8), "kv_cache_spec_kind", s("warp_attention")),
                with(st(9), "group_idx", u(1)), // a group never described
                map([("type", s("Ignored")), ("anything", u(1))]),
            ],
            None,
        ),
        1,
        None,
    );
    assert_eq!(r.applied.stored, 0, "{r:?}");
    assert_eq!(r.ignored, 6);
    assert_eq!(rejections(&r), vec![(RejectReason::UnknownVariant, 4)]);
    assert_eq!(rig.depth(w, &l), 0);
    // Group 2 described as main attention by a store; later events naming it pass.
    let described =
        with(with(st(10), "group_idx", u(2)), "kv_cache_spec_kind", s("full_attention"));
    rig.vllm(&batch(vec![described], None), 1, None);
    let r = rig.vllm(&batch(vec![with(removed_map(&[10]), "group_idx", u(2))], None), 1, None);
    assert_eq!(r.applied.removed, 1);
    // An empty medium is the device tier; local locality and group 0 pass.
    let r = rig.vllm(
        &batch(
            vec![with(
                with(with(st(11), "medium", s("")), "locality", s("LOCAL")),
                "group_idx",
                u(0),
            )],
            None,
        ),
        1,
        None,
    );
    assert_eq!(r.applied.stored, 1);
    assert_eq!(rig.depth(w, &l), 1);
}

#[test]
fn tagged_array_trailing_metadata() {
    let mut rig = Rig::new(4);
    let t = range(0, 4);
    let head = |h: u64| {
        vec![
            s("BlockStored"),
            hashes(&[h]),
            M::Nil,
            tokens(&t),
            u(4),
            M::Nil,
            s("GPU"),
            M::Nil,
            M::Nil,
        ]
    };
    // Fixed layout [group_idx, kind, sliding_window, locality, ownership].
    let mut sw = head(1);
    sw.extend([u(1), s("sliding_window"), u(128), s("LOCAL"), M::Nil]);
    let mut full = head(2);
    full.extend([u(0), s("full_attention"), M::Nil, s("LOCAL")]);
    let mut remote = head(3);
    remote.extend([M::Nil, M::Nil, M::Nil, s("REMOTE"), M::Nil, s("ignored tail")]);
    // v1.2 opportunistic layout: a lone kind string.
    let mut legacy = head(4);
    legacy.extend([s("mamba")]);
    let r = rig.vllm(&batch(vec![arr(sw), arr(full), arr(remote), arr(legacy)], None), 1, None);
    assert_eq!((r.applied.stored, r.ignored), (1, 3), "{r:?}");
    // Removals: [tag, hashes, medium, trailing...].
    let r = rig.vllm(
        &batch(
            vec![arr([
                s("BlockRemoved"),
                hashes(&[2]),
                M::Nil,
                u(0),
                s("full_attention"),
                M::Nil,
                M::Nil,
            ])],
            None,
        ),
        1,
        None,
    );
    assert_eq!(r.applied.removed, 1, "{r:?}");
}

#[test]
fn duplicate_stores_are_refcounted_like_dynamos_relay() {
    let mut rig = Rig::new(4);
    let w = wk(1, 0);
    let t = range(0, 4);
    let l = locals(&t, 4, None, None);
    // Two stores of one block (e.g. two KV-cache groups), then one removal: still held.
    rig.vllm(&batch(vec![stored_map(&[1], None, &t, 4)], None), 1, None);
    rig.vllm(&batch(vec![stored_map(&[1], None, &t, 4)], None), 1, None);
    let r = rig.vllm(&batch(vec![removed_map(&[1])], None), 1, None);
    assert_eq!((r.applied.removed, r.blocks_removed), (1, 0));
    assert_eq!(rig.depth(w, &l), 1);
    let r = rig.vllm(&batch(vec![removed_map(&[1])], None), 1, None);
    assert_eq!(r.blocks_removed, 1);
    assert_eq!(rig.depth(w, &l), 0);
    // AllBlocksCleared resets the refcounts.
    rig.vllm(
        &batch(vec![stored_map(&[1], None, &t, 4), stored_map(&[1], None, &t, 4)], None),
        1,
        None,
    );
    rig.vllm(&batch(vec![cleared_map(), stored_map(&[1], None, &t, 4)], None), 1, None);
    rig.vllm(&batch(vec![removed_map(&[1])], None), 1, None);
    assert_eq!(rig.depth(w, &l), 0);
}

#[test]
fn chained_stores_of_one_message_merge_like_dynamos_relay() {
    let mut rig = Rig::new(4);
    let w = wk(1, 0);
    let t = range(0, 12);
    let l = locals(&t, 4, None, None);
    let r = rig.vllm(
        &batch(
            vec![
                stored_map(&[1], None, &t[0..4], 4),
                stored_map(&[2], Some(1), &t[4..8], 4),
                stored_map(&[3], Some(2), &t[8..12], 4),
            ],
            None,
        ),
        1,
        None,
    );
    assert_eq!((r.applied.stored, r.blocks_stored), (3, 3));
    assert_eq!(rig.depth(w, &l), 3);
    // Dynamo's coalescer quirk: a store whose blocks were all dropped still
    // carries its parent, and the next root store (parent None == its last
    // block) merges into it: the blocks land under that parent, or are lost
    // when the holder does not have it.
    let r = rig.vllm(
        &batch(
            vec![
                stored_map(&[9], Some(777), &range(0, 8), 8),
                stored_map(&[10], None, &range(50, 54), 4),
            ],
            None,
        ),
        2,
        None,
    );
    assert_eq!(
        rejections(&r),
        vec![(RejectReason::BlockSizeMismatch, 1), (RejectReason::ParentNotFound, 1)]
    );
    assert_eq!(rig.index.tree_size(wk(2, 0)), 0);
}

#[test]
fn self_referencing_stores_are_invalid() {
    let mut rig = Rig::new(4);
    let r = rig.vllm(&batch(vec![stored_map(&[1, 1], None, &range(0, 8), 4)], None), 1, None);
    assert_eq!(rejections(&r), vec![(RejectReason::InvalidBlockSequence, 1)]);
    let r = rig.vllm(&batch(vec![stored_map(&[5], Some(5), &range(0, 4), 4)], None), 1, None);
    assert_eq!(rejections(&r), vec![(RejectReason::InvalidBlockSequence, 1)]);
    assert_eq!(rig.index.membership_count(), 0);
}

#[test]
fn eagle_bigrams_and_multimodal_hashes() {
    // Eagle: token_ids as bigrams; each block hashes block_size + 1 tokens.
    let mut rig = Rig::new(4);
    let t = range(100, 109); // 9 tokens: two Eagle windows of 5
    let bigrams = arr(t.windows(2).map(|p| arr([u(p[0] as u64), u(p[1] as u64)])));
    let ev = with(stored_map(&[1, 2], None, &[], 4), "token_ids", bigrams);
    let r = rig.vllm(&batch(vec![ev], None), 1, None);
    assert_eq!(r.blocks_stored, 2, "{r:?}");
    let want = [hash_block(&t[0..5], XXH3_SEED), hash_block(&t[4..9], XXH3_SEED)];
    assert_eq!(rig.depth(wk(1, 0), &want), 2);

    // Multimodal: the block's sorted mm hashes (LE u64) follow its tokens.
    let t = range(0, 8);
    let mm = |hashes: &[u64]| {
        map([(
            "mm_objects",
            arr(hashes
                .iter()
                .map(|&h| map([("mm_hash", u(h)), ("offsets", arr([arr([u(0), u(2)])]))]))),
        )])
    };
    let mut bytes: Vec<u8> = t[0..4].iter().flat_map(|x| x.to_le_bytes()).collect();
    for h in [3u64, BIG] {
        bytes.extend_from_slice(&h.to_le_bytes());
    }
    let block0 = xxh3_64_with_seed(&bytes, XXH3_SEED);
    let want = [block0, hash_block(&t[4..8], XXH3_SEED)];
    let explicit =
        with(stored_map(&[1, 2], None, &t, 4), "block_mm_infos", arr([mm(&[BIG, 3]), M::Nil]));
    let marker = |h: u64| s(&format!("{h:016x}{}", "0".repeat(48)));
    let via_extra_keys = with(
        stored_map(&[1, 2], None, &t, 4),
        "extra_keys",
        arr([arr([marker(BIG), arr([marker(3), u(0)]), s("not-a-hash")]), M::Nil]),
    );
    for (i, ev) in [explicit, via_extra_keys].into_iter().enumerate() {
        let mut rig = Rig::new(4);
        let r = rig.vllm(&batch(vec![ev], None), 1, None);
        assert_eq!(r.blocks_stored, 2, "case {i}: {r:?}");
        assert_eq!(rig.depth(wk(1, 0), &want), 2, "case {i}");
    }
}

#[test]
fn truncated_and_random_vllm_bytes_never_panic() {
    let t = range(0, 8);
    let msg = batch(
        vec![
            stored_map(&[BIG, 2], None, &t, 4),
            arr([s("BlockRemoved"), arr([M::I(BIG_SIGNED)]), M::Nil]),
            cleared_map(),
        ],
        Some(1),
    )
    .encode();
    let mut rig = Rig::new(4);
    assert_eq!(rig.vllm_bytes(&msg).applied.stored, 1);
    for cut in 0..msg.len() {
        let mut rig = Rig::new(4);
        let r = rig.vllm_bytes(&msg[..cut]);
        assert_eq!(rejections(&r), vec![(RejectReason::Malformed, 1)], "cut {cut}");
        assert_eq!(rig.index.membership_count(), 0);
    }
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut rig = Rig::new(4);
    for _ in 0..20_000 {
        let mut m = msg.clone();
        for _ in 0..(1 + next() % 3) {
            let at = (next() as usize) % m.len();
            m[at] = next() as u8;
        }
        rig.vllm_bytes(&m);
        let junk: Vec<u8> = (0..(next() % 48)).map(|_| next() as u8).collect();
        rig.vllm_bytes(&junk);
    }
}

trait VllmBytes {
    fn vllm_bytes(&mut self, b: &[u8]) -> kv_epp_core::events::ApplyReport;
}

impl VllmBytes for Rig {
    fn vllm_bytes(&mut self, b: &[u8]) -> kv_epp_core::events::ApplyReport {
        let ctx = SourceContext {
            worker_id: Some(1),
            dp_rank: None,
            sequence: None,
            replay: false,
            ignore_ids: false,
        };
        self.apply(EventCodec::Vllm, b, ctx)
    }
}
