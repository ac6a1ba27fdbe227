//! Read prefetch hints for lookups whose addresses are known before they are needed.
//!
//! Why: a gateway at a moderate rate tokenizes one request at a time between
//! other processes (Envoy, the workers' sidecars), so the tokenizer's tables
//! are out of the CPU caches when a request arrives and every table lookup is
//! a miss to memory. The encoders split [`LOOKAHEAD`] pieces ahead of the one
//! they look up and prefetch each piece's line when it is split, so that many
//! misses are in flight at once instead of one after another.

/// How many pieces the encoders split ahead of the one they look up.
pub(crate) const LOOKAHEAD: usize = 16;

/// Asks the CPU to start loading the cache line holding `*value` into every
/// cache level. A hint: no effect visible to the program; nothing on targets
/// without the instruction.
#[inline(always)]
pub(crate) fn read<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is part of SSE (baseline on x86_64); it never faults
    // and has no effect visible to the program, whatever the address.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Runs `each` on every item `next` yields, in order, having pulled up to
/// [`LOOKAHEAD`] items ahead of it: `next` (which splits a piece and prefetches
/// its lookup) runs that far before `each` (which does the lookup) catches up.
#[inline(always)]
pub(crate) fn run_ahead<T: Copy + Default>(
    mut next: impl FnMut() -> Option<T>,
    mut each: impl FnMut(T),
) {
    // Items pulled but not yet passed on: `ring[tail % LOOKAHEAD..head % LOOKAHEAD]`.
    let mut ring = [T::default(); LOOKAHEAD];
    let (mut head, mut tail) = (0usize, 0usize);
    let mut more = true;
    loop {
        while more && head - tail < LOOKAHEAD {
            match next() {
                Some(item) => {
                    ring[head % LOOKAHEAD] = item;
                    head += 1;
                }
                None => more = false,
            }
        }
        if tail == head {
            return;
        }
        each(ring[tail % LOOKAHEAD]);
        tail += 1;
    }
}
