//! `kv_metrics` load reports: Dynamo 1.6.1's own `ActiveLoad`, serialised the
//! way its event plane publishes it (msgpack named, inside the envelope) and
//! as JSON, decodes to the same values with kv-epp's decoder.

use dynamo_kv_router::protocols::ActiveLoad;
use kv_epp_core::events::load::decode_active_load;
mod events_oracle;
use events_oracle::envelope_around;

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
        let env = envelope_around(1, 9, 1_700_000_000_123, "kv_metrics", &payload);
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
