//! `kv_metrics` load reports: Dynamo 1.6.1's own `ActiveLoad`, serialised the
//! way its event plane publishes it (msgpack named, inside the envelope) and
//! as JSON, decodes to the same values with kv-epp's decoder.

use dynamo_kv_router::protocols::ActiveLoad;
use kv_epp_core::events::load::decode_active_load;
use serde::Serialize;

#[derive(Serialize)]
struct Envelope<'a> {
    publisher_id: u64,
    sequence: u64,
    published_at: u64,
    topic: &'a str,
    #[serde(serialize_with = "serialize_bytes")]
    payload: &'a [u8],
}

fn serialize_bytes<S: serde::Serializer>(b: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(b)
}

#[test]
fn dynamo_active_load_round_trips() {
    let cases = [
        ActiveLoad {
            worker_id: u64::MAX - 3,
            dp_rank: 2,
            active_decode_blocks: Some(17),
            active_prefill_tokens: None,
            kv_used_blocks: Some(40),
        },
        ActiveLoad {
            worker_id: 7,
            dp_rank: 0,
            active_decode_blocks: None,
            active_prefill_tokens: Some(4096),
            kv_used_blocks: None,
        },
    ];
    for load in cases {
        let payload = rmp_serde::to_vec_named(&load).unwrap();
        let env = rmp_serde::to_vec_named(&Envelope {
            publisher_id: 1,
            sequence: 9,
            published_at: 1_700_000_000_123,
            topic: "kv_metrics",
            payload: &payload,
        })
        .unwrap();
        let json = serde_json::to_vec(&load).unwrap();
        for (bytes, at) in [(env, Some(1_700_000_000_123)), (payload, None), (json, None)] {
            let got = decode_active_load(&bytes).unwrap();
            assert_eq!(got.worker_id, load.worker_id);
            assert_eq!(got.dp_rank, load.dp_rank);
            assert_eq!(got.active_decode_blocks, load.active_decode_blocks);
            assert_eq!(got.active_prefill_tokens, load.active_prefill_tokens);
            assert_eq!(got.kv_used_blocks, load.kv_used_blocks);
            assert_eq!(got.published_at_ms, at);
        }
    }
}
