//! Short byte strings as zero-padded little-endian words: with the length, a
//! unique key that compares and hashes in a few instructions, without a
//! memcpy call or a pointer to follow.

/// Bytes `k` (at most 16) as two little-endian words, zero-padded; with the
/// length, a unique key. Reads whole words where it can (no memcpy call).
#[inline(always)]
pub(crate) fn pack(k: &[u8]) -> (u64, u64) {
    let n = k.len();
    let word = |at: usize| match k.get(at..at + 8) {
        Some(w) => u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]),
        None => 0,
    };
    let half = |at: usize| match k.get(at..at + 4) {
        Some(w) => u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as u64,
        None => 0,
    };
    let byte = |at: usize| k.get(at).map_or(0, |&b| b as u64);
    if n >= 8 {
        // bytes 8..n are the top of the last word (overlapping the first)
        let hi = if n > 8 { word(n - 8) >> (8 * (16 - n.min(16))) } else { 0 };
        (word(0), hi)
    } else if n >= 4 {
        // the two (overlapping) halves agree on the shared bytes
        (half(0) | (half(n - 4) << (8 * (n - 4))), 0)
    } else if n > 0 {
        (byte(0) | (byte(n / 2) << (8 * (n / 2))) | (byte(n - 1) << (8 * (n - 1))), 0)
    } else {
        (0, 0)
    }
}

/// Bytes `k` (at most 24) as three little-endian words, zero-padded.
#[inline(always)]
pub(crate) fn pack24(k: &[u8]) -> [u64; 3] {
    let n = k.len();
    if n <= 16 {
        let (lo, hi) = pack(k);
        return [lo, hi, 0];
    }
    let word = |at: usize| match k.get(at..at + 8) {
        Some(w) => u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]),
        None => 0,
    };
    // bytes 16..n are the top of the last word (overlapping the second)
    [word(0), word(8), word(n - 8) >> (8 * (24 - n.min(24)))]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words of `k` zero-padded to 24 bytes, the slow way.
    fn padded(k: &[u8]) -> [u64; 3] {
        let mut buf = [0u8; 24];
        buf[..k.len()].copy_from_slice(k);
        std::array::from_fn(|i| u64::from_le_bytes(buf[8 * i..8 * i + 8].try_into().unwrap()))
    }

    #[test]
    fn packs_every_length_as_zero_padded_words() {
        let bytes: Vec<u8> = (1..=24u8).map(|b| b.wrapping_mul(37) | 1).collect();
        for n in 0..=24 {
            let k = &bytes[..n];
            assert_eq!(pack24(k), padded(k), "length {n}");
            if n <= 16 {
                let [lo, hi, _] = padded(k);
                assert_eq!(pack(k), (lo, hi), "length {n}");
            }
        }
    }
}
