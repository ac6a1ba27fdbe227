//! `dynamo` and `dynamo-json` codecs: hand-built envelopes and `RouterEvent`s
//! (named maps, positional arrays, JSON), hashes above 2^63, per-event
//! tolerance, truncation, unknown variants, tiers/domains, event-id handling.

mod events_support;

use events_support::{M, Rig, arr, map, rejections, s, u};
use kv_epp_core::WorkerKey;
use kv_epp_core::events::{EventCodec, HolderGap, PublisherGap, RejectReason, SourceContext};

const BIG: u64 = 0xFFFF_FFFF_FFFF_FFFB; // 18446744073709551611, > 2^63

fn block(bh: u64, th: u64) -> M {
    map([("block_hash", u(bh)), ("tokens_hash", u(th)), ("mm_extra_info", M::Nil)])
}

fn router_event(worker: u64, dp: u64, id: u64, data: M) -> M {
    map([
        ("worker_id", u(worker)),
        ("storage_tier", s("device")),
        ("residency_domain", s("worker")),
        ("event", map([("event_id", u(id)), ("data", data), ("dp_rank", u(dp))])),
    ])
}

fn stored(parent: Option<u64>, blocks: &[(u64, u64)]) -> M {
    map([(
        "stored",
        map([
            ("parent_hash", parent.map_or(M::Nil, u)),
            ("start_position", M::Nil),
            ("blocks", arr(blocks.iter().map(|&(b, t)| block(b, t)))),
        ]),
    )])
}

fn removed(h: &[u64]) -> M {
    map([("removed", map([("block_hashes", arr(h.iter().map(|&x| u(x))))]))])
}

fn cleared() -> M {
    s("cleared")
}

fn envelope(publisher: u64, seq: u64, events: &[M]) -> M {
    map([
        ("publisher_id", u(publisher)),
        ("sequence", u(seq)),
        ("published_at", u(1_700_000_000_000)),
        ("topic", s("kv-events")),
        ("payload", M::B(arr(events.to_vec()).encode())),
    ])
}

fn wk(w: u64, d: u32) -> WorkerKey {
    WorkerKey::new(w, d)
}

#[test]
fn envelope_with_named_router_events_and_big_hashes() {
    let mut rig = Rig::new(4);
    let w = u64::MAX - 1;
    let msg = envelope(
        7,
        0,
        &[
            router_event(w, 0, 1, stored(None, &[(BIG, u64::MAX), (BIG - 1, 1 << 63)])),
            router_event(w, 0, 2, stored(Some(BIG - 1), &[(BIG - 2, 3)])),
            router_event(w, 0, 3, removed(&[BIG - 2])),
        ],
    );
    let r = rig.dynamo(&msg);
    let env = r.envelope.unwrap();
    assert_eq!((env.publisher_id, env.sequence, env.published_at_ms), (7, 0, 1_700_000_000_000));
    assert_eq!((r.applied.stored, r.applied.removed, r.applied.cleared), (2, 1, 0));
    assert_eq!((r.blocks_stored, r.blocks_removed), (3, 1));
    assert!(rejections(&r).is_empty(), "{r:?}");
    assert_eq!(r.workers, vec![wk(w, 0)]);
    assert_eq!(rig.depth(wk(w, 0), &[u64::MAX, 1 << 63, 3]), 2);
    assert_eq!(rig.index.tree_size(wk(w, 0)), 2);
}

#[test]
fn hash_bytes_on_the_wire_are_uint64() {
    // The exact bytes of `block_hash: 18446744073709551611` (0xcf + 8 bytes BE).
    let bytes = block(BIG, 1).encode();
    let needle = [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb];
    assert!(bytes.windows(9).any(|w| w == needle));
}

#[test]
fn bare_event_array_and_positional_forms() {
    let mut rig = Rig::new(4);
    // A bare RouterEvent map (no envelope).
    let r = rig.dynamo(&router_event(1, 0, 1, stored(None, &[(10, 100)])));
    assert_eq!((r.envelope, r.applied.stored), (None, 1));
    // An array of RouterEvents.
    let r = rig.dynamo(&arr([
        router_event(1, 0, 2, stored(Some(10), &[(11, 101)])),
        router_event(2, 1, 1, stored(None, &[(10, 100)])),
    ]));
    assert_eq!(r.applied.stored, 2);
    assert_eq!(r.workers, vec![wk(1, 0), wk(2, 1)]);
    // Positional: [worker_id, storage_tier, residency_domain, event], with a
    // positional KvCacheEvent [event_id, data, dp_rank] and KvCacheStoreData.
    let positional = arr([
        u(3),
        s("device"),
        s("worker"),
        arr([
            u(1),
            map([(
                "stored",
                arr([
                    M::Nil,
                    M::Nil,
                    arr([arr([u(10), u(100), M::Nil]), arr([u(11), u(101), M::Nil])]),
                ]),
            )]),
            u(0),
        ]),
    ]);
    let r = rig.dynamo(&positional);
    assert_eq!(r.applied.stored, 1, "{r:?}");
    assert_eq!(rig.depth(wk(3, 0), &[100, 101]), 2);
    // Field indexes as map keys and variant indexes, as serde accepts them.
    let by_index = M::Map(vec![
        (u(0), u(4)),
        (
            u(3),
            M::Map(vec![
                (u(0), u(1)),
                (
                    u(1),
                    M::Map(vec![(
                        u(0),
                        map([("parent_hash", M::Nil), ("blocks", arr([block(10, 100)]))]),
                    )]),
                ),
            ]),
        ),
    ]);
    let r = rig.dynamo(&by_index);
    assert_eq!(r.applied.stored, 1, "{r:?}");
    assert_eq!(rig.depth(wk(4, 0), &[100]), 1);
}

#[test]
fn positional_rules_follow_serde() {
    let mut rig = Rig::new(4);
    // A missing Option field is None in a map but an error in an array.
    let map_form = router_event(1, 0, 1, map([("stored", map([("blocks", arr([block(1, 1)]))]))]));
    assert_eq!(rig.dynamo(&map_form).applied.stored, 1);
    let short_array = router_event(1, 0, 2, map([("stored", arr([M::Nil, M::Nil]))]));
    assert_eq!(rejections(&rig.dynamo(&short_array)), vec![(RejectReason::Malformed, 1)]);
    // More elements than fields is an error (rmp_serde LengthMismatch).
    let long = router_event(1, 0, 3, map([("removed", arr([arr([u(1)]), u(9)]))]));
    assert_eq!(rejections(&rig.dynamo(&long)), vec![(RejectReason::Malformed, 1)]);
    // A repeated field is an error; unknown fields are ignored.
    let dup = M::Map(vec![
        (s("worker_id"), u(1)),
        (s("worker_id"), u(2)),
        (s("event"), map([("event_id", u(4)), ("data", cleared())])),
    ]);
    assert_eq!(rejections(&rig.dynamo(&dup)), vec![(RejectReason::Malformed, 1)]);
    let extra = map([
        ("worker_id", u(1)),
        ("future_field", arr([u(1), s("x")])),
        ("event", map([("event_id", u(5)), ("data", cleared()), ("also_new", M::Nil)])),
    ]);
    assert_eq!(rig.dynamo(&extra).applied.cleared, 1);
}

#[test]
fn json_router_events_keep_u64_exact() {
    let mut rig = Rig::new(4);
    let one = format!(
        r#"{{"worker_id":18446744073709551615,"storage_tier":"device","event":{{"event_id":1,"data":{{"stored":{{"parent_hash":null,"blocks":[{{"block_hash":{BIG},"tokens_hash":18446744073709551615}}]}}}},"dp_rank":0}}}}"#
    );
    let r = rig.json(&one);
    assert_eq!((r.applied.stored, r.blocks_stored), (1, 1), "{r:?}");
    assert_eq!(rig.depth(wk(u64::MAX, 0), &[u64::MAX]), 1);
    // An array, a removal of the > 2^63 hash, and the two unit-variant spellings.
    let many = format!(
        r#"[{{"worker_id":18446744073709551615,"event":{{"event_id":2,"data":{{"removed":{{"block_hashes":[{BIG}]}}}}}}}},
            {{"worker_id":5,"event":{{"event_id":1,"data":"cleared"}}}},
            {{"worker_id":5,"event":{{"event_id":2,"data":{{"cleared":null}}}}}}]"#
    );
    let r = rig.json(&many);
    assert_eq!((r.applied.removed, r.applied.cleared, r.blocks_removed), (1, 2, 1), "{r:?}");
    assert_eq!(rig.depth(wk(u64::MAX, 0), &[u64::MAX]), 0);
    // 2^64 is not a u64; a float is not an integer; negative hashes are cast bitwise.
    let too_big = r#"{"worker_id":18446744073709551616,"event":{"event_id":1,"data":"cleared"}}"#;
    assert_eq!(rejections(&rig.json(too_big)), vec![(RejectReason::Malformed, 1)]);
    let float = r#"{"worker_id":1.0,"event":{"event_id":1,"data":"cleared"}}"#;
    assert_eq!(rejections(&rig.json(float)), vec![(RejectReason::Malformed, 1)]);
    let negative = r#"{"worker_id":9,"event":{"event_id":1,"data":{"stored":{"parent_hash":null,"blocks":[{"block_hash":-5,"tokens_hash":-1}]}}}}"#;
    assert_eq!(rig.json(negative).applied.stored, 1);
    assert_eq!(rig.depth(wk(9, 0), &[u64::MAX]), 1);
    let r = rig.json(r#"{"worker_id":9,"event":{"event_id":2,"data":{"removed":{"block_hashes":[18446744073709551611]}}}}"#);
    assert_eq!(r.applied.removed, 1, "-5 and 18446744073709551611 are the same block");
    // Not JSON at all, and trailing garbage (serde_json rejects it).
    assert_eq!(rejections(&rig.json("{")), vec![(RejectReason::Malformed, 1)]);
    assert_eq!(rejections(&rig.json("[] x")), vec![(RejectReason::Malformed, 1)]);
}

#[test]
fn unknown_variants_tiers_and_domains() {
    let mut rig = Rig::new(4);
    let moved = router_event(1, 0, 1, map([("moved", map([("block_hashes", arr([]))]))]));
    assert_eq!(rejections(&rig.dynamo(&moved)), vec![(RejectReason::UnknownVariant, 1)]);
    let mut ev = router_event(1, 0, 2, stored(None, &[(1, 1)]));
    set(&mut ev, "storage_tier", s("quantum"));
    assert_eq!(rejections(&rig.dynamo(&ev)), vec![(RejectReason::UnknownVariant, 1)]);
    // A lower tier goes to Dynamo's lower-tier indexer, not the device tree.
    let mut ev = router_event(1, 0, 3, stored(None, &[(1, 1)]));
    set(&mut ev, "storage_tier", s("host_pinned"));
    let r = rig.dynamo(&ev);
    assert_eq!((r.applied.stored, r.ignored), (0, 1));
    assert_eq!(rig.depth(wk(1, 0), &[1]), 0);
    // Residency domains: unknown string, explicit nil, cache owner.
    let mut ev = router_event(1, 0, 4, stored(None, &[(1, 1)]));
    set(&mut ev, "residency_domain", s("galaxy"));
    assert_eq!(rejections(&rig.dynamo(&ev)), vec![(RejectReason::UnknownVariant, 1)]);
    let mut ev = router_event(1, 0, 5, stored(None, &[(1, 1)]));
    set(&mut ev, "residency_domain", M::Nil);
    assert_eq!(rejections(&rig.dynamo(&ev)), vec![(RejectReason::Malformed, 1)]);
    let mut ev = router_event(1, 0, 6, stored(None, &[(1, 1)]));
    set(&mut ev, "residency_domain", s("cache_owner"));
    set(&mut ev, "storage_tier", s("disk"));
    assert_eq!(rig.dynamo(&ev).ignored, 1);
    // A cache-owner event in the device tier is unsupported by Dynamo: dropped.
    let mut ev = router_event(2, 0, 1, stored(None, &[(1, 1)]));
    set(&mut ev, "residency_domain", s("cache_owner"));
    assert_eq!(rig.dynamo(&ev).ignored, 1);
    assert_eq!(rig.depth(wk(2, 0), &[1]), 0);
    // A clear in any tier reaches the device tree (worker domain).
    rig.dynamo(&router_event(1, 0, 7, stored(None, &[(1, 1)])));
    assert_eq!(rig.depth(wk(1, 0), &[1]), 1);
    let mut ev = router_event(1, 0, 8, cleared());
    set(&mut ev, "storage_tier", s("disk"));
    assert_eq!(rig.dynamo(&ev).applied.cleared, 1);
    assert_eq!(rig.depth(wk(1, 0), &[1]), 0);
}

fn set(ev: &mut M, key: &str, value: M) {
    let M::Map(items) = ev else { panic!("not a map") };
    for (k, v) in items.iter_mut() {
        if matches!(k, M::S(x) if x == key) {
            *v = value;
            return;
        }
    }
    items.push((s(key), value));
}

#[test]
fn a_bad_event_is_skipped_and_the_rest_applied() {
    let mut rig = Rig::new(4);
    let bad =
        map([("worker_id", s("seven")), ("event", map([("event_id", u(1)), ("data", cleared())]))]);
    let msg = envelope(
        1,
        0,
        &[
            router_event(1, 0, 1, stored(None, &[(1, 10)])),
            bad,
            router_event(1, 0, 2, map([("stored", s("not a struct"))])),
            router_event(1, 0, 2, stored(Some(1), &[(2, 20)])),
        ],
    );
    let r = rig.dynamo(&msg);
    assert_eq!(r.applied.stored, 2);
    assert_eq!(rejections(&r), vec![(RejectReason::Malformed, 2)]);
    assert_eq!(rig.depth(wk(1, 0), &[10, 20]), 2);
    // Index outcomes are per event too.
    let r = rig.dynamo(&arr([
        router_event(1, 0, 3, stored(Some(999), &[(3, 30)])),
        router_event(1, 0, 4, removed(&[424242])),
        router_event(1, 0, 5, stored(Some(5), &[(5, 50)])),
    ]));
    assert_eq!(
        rejections(&r),
        vec![
            (RejectReason::ParentNotFound, 1),
            (RejectReason::BlockNotFound, 1),
            (RejectReason::InvalidBlockSequence, 1)
        ]
    );
}

#[test]
fn truncated_and_random_bytes_never_panic() {
    let msg = envelope(
        1,
        0,
        &[
            router_event(1, 0, 1, stored(None, &[(BIG, 1), (2, 2)])),
            router_event(1, 0, 2, removed(&[2])),
        ],
    )
    .encode();
    for cut in 0..msg.len() {
        let mut rig = Rig::new(4);
        let r = rig.apply(EventCodec::Dynamo, &msg[..cut], SourceContext::default());
        assert_eq!(r.applied.stored + r.applied.removed, 0, "cut {cut}");
        assert!(r.rejected(RejectReason::Malformed) >= 1, "cut {cut}: {r:?}");
        assert_eq!(rig.index.membership_count(), 0);
    }
    // Trailing bytes after a whole message are ignored, as rmp_serde does.
    let mut rig = Rig::new(4);
    let mut padded = msg.clone();
    padded.extend_from_slice(&[0xc1, 0xff]);
    assert_eq!(rig.apply(EventCodec::Dynamo, &padded, SourceContext::default()).applied.stored, 1);
    // Random bytes and random mutations of a valid message.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut rig = Rig::new(4);
    for i in 0..4000 {
        let bytes: Vec<u8> = if i % 2 == 0 {
            (0..(next() % 64)).map(|_| next() as u8).collect()
        } else {
            let mut m = msg.clone();
            for _ in 0..(1 + next() % 4) {
                let at = (next() as usize) % m.len();
                m[at] = next() as u8;
            }
            m
        };
        for codec in [EventCodec::Dynamo, EventCodec::DynamoJson, EventCodec::Vllm] {
            let ctx = SourceContext {
                worker_id: Some(1),
                dp_rank: None,
                sequence: Some(i),
                replay: false,
                ignore_ids: false,
            };
            rig.apply(codec, &bytes, ctx);
        }
    }
}

#[test]
fn duplicates_gaps_and_restarts() {
    let mut rig = Rig::new(4);
    let w = wk(1, 0);
    for id in 1..=3 {
        rig.dynamo(&router_event(1, 0, id, stored((id > 1).then_some(id - 1), &[(id, 10 * id)])));
    }
    assert_eq!(rig.depth(w, &[10, 20, 30]), 3);
    // At or below the last id: skipped.
    let r = rig.dynamo(&router_event(1, 0, 2, removed(&[1])));
    assert_eq!(rejections(&r), vec![(RejectReason::Duplicate, 1)]);
    assert_eq!(rig.depth(w, &[10, 20, 30]), 3);
    // A gap: reported; Dynamo's ResetDegraded clears the holder, then applies.
    let r = rig.dynamo(&router_event(1, 0, 6, stored(None, &[(7, 70)])));
    assert_eq!(r.gaps, vec![HolderGap { worker: w, expected: 4, got: 6 }]);
    assert!(r.resets.is_empty());
    assert_eq!(r.applied.stored, 1);
    assert_eq!((rig.depth(w, &[10]), rig.depth(w, &[70])), (0, 1));
    // Other holders are untouched by this holder's gap.
    rig.dynamo(&router_event(1, 1, 1, stored(None, &[(1, 10)])));
    // Back to the first id: a restart clears the holder first.
    let r = rig.dynamo(&router_event(1, 0, 1, stored(None, &[(8, 80)])));
    assert_eq!(r.resets, vec![w]);
    assert_eq!((rig.depth(w, &[70]), rig.depth(w, &[80])), (0, 1));
    assert_eq!(rig.depth(wk(1, 1), &[10]), 1);
    let r = rig.dynamo(&router_event(1, 0, 2, stored(Some(8), &[(9, 90)])));
    assert!(r.resets.is_empty() && r.gaps.is_empty() && rejections(&r).is_empty());
    // A legacy clear without residency_domain is applied at any id above the last.
    let mut clear = router_event(1, 0, 10, cleared());
    let M::Map(items) = &mut clear else { unreachable!() };
    items.retain(|(k, _)| !matches!(k, M::S(x) if x == "residency_domain"));
    let r = rig.dynamo(&clear);
    assert_eq!((r.applied.cleared, r.gaps.len()), (1, 1));
    assert_eq!(rig.depth(w, &[80]), 0);
    assert_eq!(rejections(&rig.dynamo(&clear)), vec![(RejectReason::Duplicate, 1)]);
    // Forgetting the worker forgets its ids: id 1 is a fresh start, not a restart.
    rig.applier.forget_worker(1);
    let r = rig.dynamo(&router_event(1, 0, 1, stored(None, &[(8, 80)])));
    assert!(r.resets.is_empty() && r.gaps.is_empty());
}

#[test]
fn publisher_gaps_follow_the_envelope_sequence() {
    let mut rig = Rig::new(4);
    let ev = |id| router_event(3, 0, id, removed(&[]));
    assert_eq!(rig.dynamo(&envelope(9, 0, &[ev(1)])).publisher_gap, None);
    assert_eq!(rig.dynamo(&envelope(9, 1, &[ev(2)])).publisher_gap, None);
    let r = rig.dynamo(&envelope(9, 5, &[ev(3)]));
    assert_eq!(r.publisher_gap, Some(PublisherGap { publisher_id: 9, expected: 2, got: 5 }));
    assert_eq!(rig.dynamo(&envelope(10, 7, &[ev(4)])).publisher_gap, None, "other publisher");
    assert_eq!(rig.dynamo(&envelope(9, 6, &[ev(5)])).publisher_gap, None);
}

#[test]
fn replayed_envelopes_do_not_move_the_publisher_sequence() {
    let mut rig = Rig::new(4);
    let ev = |id| router_event(3, 0, id, removed(&[]));
    let replay = SourceContext { replay: true, ..SourceContext::default() };
    rig.dynamo(&envelope(9, 10, &[ev(1)]));
    // An old envelope applied again: no envelope reported, no gap, sequence kept at 10.
    let r = rig.apply(EventCodec::Dynamo, &envelope(9, 4, &[ev(2)]).encode(), replay);
    assert_eq!((r.envelope, r.publisher_gap), (None, None));
    assert_eq!(r.applied.removed, 1, "its events still apply");
    assert_eq!(rig.dynamo(&envelope(9, 11, &[ev(3)])).publisher_gap, None);
    // A replayed gap is reported but does not clear the holder.
    rig.dynamo(&router_event(4, 0, 1, stored(None, &[(1, 10)])));
    let g = router_event(4, 0, 5, stored(Some(1), &[(2, 20)]));
    let r = rig.apply(EventCodec::Dynamo, &g.encode(), replay);
    assert_eq!((r.gaps.len(), rig.depth(wk(4, 0), &[10, 20])), (1, 2));
}

#[test]
fn set_cursor_moves_or_forgets_the_last_event_id() {
    let mut rig = Rig::new(4);
    let w = wk(1, 0);
    rig.dynamo(&router_event(1, 0, 3, stored(None, &[(1, 10)])));
    // Recovered up to 8: 5..=8 are duplicates, 9 is next (no gap, no reset).
    rig.applier.set_cursor(w, Some(8));
    let r = rig.dynamo(&router_event(1, 0, 6, stored(Some(1), &[(2, 20)])));
    assert_eq!(rejections(&r), vec![(RejectReason::Duplicate, 1)]);
    let r = rig.dynamo(&router_event(1, 0, 9, stored(Some(1), &[(3, 30)])));
    assert!(r.gaps.is_empty() && r.resets.is_empty());
    assert_eq!(rig.depth(w, &[10, 30]), 2);
    // Forgotten: any id is the first again (a dump's synthetic 0.. ids apply in order).
    rig.applier.set_cursor(w, None);
    let r = rig.dynamo(&router_event(1, 0, 0, stored(None, &[(4, 40)])));
    assert!(r.gaps.is_empty() && r.resets.is_empty() && r.applied.stored == 1);
    // Other holders are untouched.
    let r = rig.dynamo(&router_event(1, 1, 5, stored(None, &[(5, 50)])));
    assert!(r.gaps.is_empty());
}

#[test]
fn envelope_fields_are_checked() {
    let mut rig = Rig::new(4);
    let payload = arr([router_event(1, 0, 1, removed(&[]))]).encode();
    let missing_seq = map([
        ("publisher_id", u(1)),
        ("published_at", u(0)),
        ("topic", s("kv-events")),
        ("payload", M::B(payload.clone())),
    ]);
    assert_eq!(rejections(&rig.dynamo(&missing_seq)), vec![(RejectReason::Malformed, 1)]);
    let not_msgpack = envelope(1, 0, &[]);
    let M::Map(mut items) = not_msgpack else { unreachable!() };
    items[4].1 = M::B(vec![0xc1]);
    let r = rig.dynamo(&M::Map(items));
    assert_eq!(rejections(&r), vec![(RejectReason::Malformed, 1)]);
    assert!(r.envelope.is_some());
    // Positional envelope.
    let positional = arr([u(1), u(0), u(5), s("kv-events"), M::B(payload)]);
    assert_eq!(rig.dynamo(&positional).envelope.map(|e| e.published_at_ms), Some(5));
}

#[test]
fn multimodal_block_info_is_validated() {
    let mut rig = Rig::new(4);
    let info = map([(
        "mm_objects",
        arr([map([("mm_hash", u(BIG)), ("offsets", arr([arr([u(0), u(3)])]))])]),
    )]);
    let ok = map([("block_hash", u(1)), ("tokens_hash", u(2)), ("mm_extra_info", info)]);
    let data = map([("stored", map([("parent_hash", M::Nil), ("blocks", arr([ok]))]))]);
    assert_eq!(rig.dynamo(&router_event(1, 0, 1, data)).applied.stored, 1);
    let bad = map([("block_hash", u(1)), ("tokens_hash", u(2)), ("mm_extra_info", s("x"))]);
    let data = map([("stored", map([("parent_hash", M::Nil), ("blocks", arr([bad]))]))]);
    assert_eq!(
        rejections(&rig.dynamo(&router_event(1, 0, 2, data))),
        vec![(RejectReason::Malformed, 1)]
    );
}
