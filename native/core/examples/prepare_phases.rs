//! Where the native route's time goes for a 2 KB chat body (o200k_base), per
//! phase, warm and with 64 MB written between requests (what the other
//! processes of a busy machine do to the caches between two requests at
//! 500 req/s). bench/README.md, finding AO.
//!
//!   cargo run --release -p kv-epp-core --example prepare_phases
//!
//! `render_chat` parses the body again (it is the standalone entry point);
//! `tokenize_parsed` validates, renders and encodes (from the segment cache
//! after the first pass over the 64 bodies): the route runs parse, check,
//! tokenize_parsed, hash, ids_json and splice.
use kv_epp_core::tokenize::{Tokenizer, request};
use kv_epp_core::{hash, request_edit, route};
use std::time::Instant;

fn main() {
    let tok = Tokenizer::load("o200k_base").unwrap();
    let prose = "The quick brown fox jumps over the lazy dog, and then considers the meaning of life in a distributed cache. ".repeat(18);
    let bodies: Vec<Vec<u8>> = (0..64).map(|i| format!(
        r#"{{"model":"m","messages":[{{"role":"system","content":"You are assistant #{} of the kv-epp load bench. Answer precisely and briefly."}},{{"role":"user","content":"{} {}"}}],"max_tokens":64,"stream":false}}"#,
        i % 4, i, &prose[..1800]).into_bytes()).collect();
    let mut junk = vec![0u8; 64 << 20];
    let n = 4000;
    for cold in [false, true] {
        let mut t = [0f64; 7];
        for k in 0..n {
            if cold {
                for j in (0..junk.len()).step_by(64) {
                    junk[j] = junk[j].wrapping_add(1);
                }
            }
            let b = &bodies[k % 64];
            let t0 = Instant::now();
            let body = request::parse_body(b).unwrap();
            let t1 = Instant::now();
            let _ =
                request_edit::check_request(&body, kv_epp_core::tokenize::ApiKind::Chat).unwrap();
            let req = request::chat_request(&body).unwrap();
            let t2 = Instant::now();
            let rendered = tok.render_chat(b, 0).unwrap();
            let t3 = Instant::now();
            let ids = tok.tokenize_parsed(&body, kv_epp_core::tokenize::ApiKind::Chat, 0).unwrap();
            let t4 = Instant::now();
            let h = hash::local_hashes(&ids, 16, hash::block_hash_seed(None, None)).unwrap();
            let t5 = Instant::now();
            let js = route::ids_json(&ids);
            let t6 = Instant::now();
            let out = request_edit::splice_request(b, None, &js);
            let t7 = Instant::now();
            std::hint::black_box((&req, &rendered, &h, &out));
            if k >= 200 {
                for (i, (a, c)) in
                    [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5), (t5, t6), (t6, t7)]
                        .iter()
                        .enumerate()
                {
                    t[i] += (*c - *a).as_secs_f64();
                }
            }
        }
        let m = (n - 200) as f64;
        println!(
            "{} parse {:.1} check+chat_request {:.1} render_chat(reparse) {:.1} tokenize_parsed {:.1} hash {:.1} ids_json {:.1} splice {:.1} us",
            if cold { "cold" } else { "warm" },
            t[0] / m * 1e6,
            t[1] / m * 1e6,
            t[2] / m * 1e6,
            t[3] / m * 1e6,
            t[4] / m * 1e6,
            t[5] / m * 1e6,
            t[6] / m * 1e6
        );
    }
}
