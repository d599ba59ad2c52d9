//! Weighted choice among a route's pools. Two ways to pick, both pure functions of their input so
//! they are testable without randomness:
//! - `pick(n)` for the n-th request: a smooth weighted round-robin sequence (nginx's algorithm)
//!   precomputed at compile time, so every window of `total` consecutive requests is split
//!   exactly and the minority side is spread out instead of served in a burst;
//! - `bucket(key_hash)` for sticky clients: a bucket in `0..total` mapped through cumulative
//!   weights in configuration order, so raising the weight of the last entry only moves clients
//!   towards it, never back.

/// The compiled split of one route. Indices refer to the route's pool list.
#[derive(Debug, Clone)]
pub struct Split {
    weights: Box<[u32]>,
    cumulative: Box<[u64]>,
    total: u64,
    /// Smooth WRR order over one period, when the period is small enough to precompute.
    sequence: Option<Box<[u16]>>,
}

/// Longest period precomputed; larger totals fall back to a scrambled cumulative lookup.
const MAX_SEQUENCE: u64 = 1 << 16;

impl Split {
    /// Builds a split from relative weights. The validator guarantees a non-zero total.
    pub fn new(weights: &[u32]) -> Split {
        let mut cumulative = Vec::with_capacity(weights.len());
        let mut total = 0u64;
        for &w in weights {
            total += w as u64;
            cumulative.push(total);
        }
        let sequence = (total > 0 && total <= MAX_SEQUENCE && weights.len() <= u16::MAX as usize)
            .then(|| smooth_sequence(weights, total));
        Split {
            weights: weights.into(),
            cumulative: cumulative.into(),
            total,
            sequence,
        }
    }

    /// Sum of the weights.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Weight of entry `i`.
    pub fn weight(&self, i: usize) -> u32 {
        self.weights[i]
    }

    /// Entry for the n-th request of this route.
    #[inline]
    pub fn pick(&self, n: u64) -> usize {
        if self.weights.len() == 1 {
            return 0;
        }
        match &self.sequence {
            Some(seq) => seq[(n % seq.len() as u64) as usize] as usize,
            // Scramble the counter so consecutive requests do not hit one entry in a burst.
            None => self.bucket(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        }
    }

    /// Entry for a sticky client whose key hashes to `hash`.
    #[inline]
    pub fn bucket(&self, hash: u64) -> usize {
        if self.total == 0 {
            return 0;
        }
        let b = hash % self.total;
        self.cumulative.partition_point(|&c| c <= b)
    }
}

fn smooth_sequence(weights: &[u32], total: u64) -> Box<[u16]> {
    let mut current = vec![0i64; weights.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        seq.push(best as u16);
    }
    seq.into()
}

/// FNV-1a: stable across processes and versions, so a sticky key lands in the same bucket on
/// every node and after every restart (std's hasher is randomly keyed per process).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Final avalanche so keys differing only in their last byte spread over all buckets.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(split: &Split, n: u64, f: impl Fn(&Split, u64) -> usize) -> Vec<u64> {
        let mut c = vec![0; split.weights.len()];
        for i in 0..n {
            c[f(split, i)] += 1;
        }
        c
    }

    #[test]
    fn split_pick_exact_over_every_period() {
        for weights in [
            vec![90, 10],
            vec![1, 2, 3],
            vec![0, 5],
            vec![7],
            vec![33, 0, 67],
        ] {
            let s = Split::new(&weights);
            let c = counts(&s, s.total() * 3, Split::pick);
            let expect: Vec<u64> = weights.iter().map(|&w| w as u64 * 3).collect();
            assert_eq!(c, expect, "{weights:?}");
        }
    }

    #[test]
    fn split_pick_spreads_minority() {
        let s = Split::new(&[90, 10]);
        let picks: Vec<usize> = (0..100).map(|n| s.pick(n)).collect();
        // The canary's ten requests are never adjacent.
        for w in picks.windows(2) {
            assert!(!(w[0] == 1 && w[1] == 1));
        }
    }

    #[test]
    fn split_bucket_counts_every_roll() {
        let s = Split::new(&[90, 10]);
        let c = counts(&s, 100, Split::bucket);
        assert_eq!(c, vec![90, 10]);
        let s = Split::new(&[0, 3, 0, 1]);
        assert_eq!(counts(&s, 4, Split::bucket), vec![0, 3, 0, 1]);
    }

    #[test]
    fn split_bucket_growing_last_entry_only_moves_towards_it() {
        let keys: Vec<u64> = (0..10_000u64)
            .map(|k| stable_hash(&k.to_le_bytes()))
            .collect();
        let mut previous: Vec<usize> = keys
            .iter()
            .map(|&h| Split::new(&[100, 0]).bucket(h))
            .collect();
        for canary in [10, 25, 50, 90, 100] {
            let s = Split::new(&[100 - canary, canary]);
            let now: Vec<usize> = keys.iter().map(|&h| s.bucket(h)).collect();
            for (a, b) in previous.iter().zip(&now) {
                assert!(
                    *b >= *a,
                    "a client moved back to stable at canary {canary}%"
                );
            }
            previous = now;
        }
    }

    #[test]
    fn split_large_total_falls_back_to_cumulative() {
        let s = Split::new(&[1_000_000, 1_000_000]);
        assert!(s.sequence.is_none());
        let c = counts(&s, 100_000, Split::pick);
        assert!((c[0] as i64 - 50_000).abs() < 2_000, "{c:?}");
    }
}
