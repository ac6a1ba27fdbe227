//! Shared by the fast-encoder tests.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Encodes every text with `encode` from four threads at once, each walking
/// the texts from its own offset and stride, three rounds (so the threads
/// fill and read the encoder's shared caches at the same time); returns how
/// many encodes differed from `reference` (the ids of the same index).
pub fn mismatches_from_four_threads(
    texts: &[String],
    reference: &[Vec<u32>],
    encode: impl Fn(&str) -> Vec<u32> + Sync,
) -> usize {
    let failures = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for t in 0..4usize {
            let (encode, failures) = (&encode, &failures);
            scope.spawn(move || {
                for round in 0..3 {
                    for k in 0..texts.len() {
                        let i = (k * (2 * t + 1) + t * 97 + round * 13) % texts.len();
                        if encode(&texts[i]) != reference[i] {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    failures.into_inner()
}
