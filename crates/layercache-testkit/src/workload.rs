//! Reproducible workloads: a seeded generator and Zipf-distributed traces, shared by the
//! benchmarks (`workload_zipf`) and the example service's load run, so both draw the same way.

/// SplitMix64: a small, seeded, good-enough generator for reproducible traces (not for secrets).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1_u64 << 53) as f64)
    }

    /// Uniform in `[0, n)` (the modulo bias is negligible for `n` far below 2^64); `n` > 0.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Draws from Zipf(`s`) over `n` items: rank `r` (0 = hottest) has weight `1 / (r + 1)^s`; ranks
/// map to item numbers through a seeded permutation (so the hottest item is not item 0).
#[derive(Clone, Debug)]
pub struct Zipf {
    cdf: Vec<f64>,
    item_of_rank: Vec<u32>,
    rng: SplitMix64,
}

impl Zipf {
    /// A sampler over `n` items (at least one) with exponent `s`, seeded with `seed`.
    pub fn new(n: usize, s: f64, seed: u64) -> Self {
        let n = n.max(1);
        let mut rng = SplitMix64::new(seed);
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0_f64;
        for rank in 0..n {
            total += 1.0 / ((rank + 1) as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        let mut item_of_rank: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            item_of_rank.swap(i, rng.below(i + 1));
        }
        Zipf {
            cdf,
            item_of_rank,
            rng,
        }
    }

    /// The next item number, in `[0, n)`.
    pub fn next_item(&mut self) -> u32 {
        let u = self.rng.next_f64();
        let rank = self
            .cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1);
        self.item_of_rank[rank]
    }
}

/// `len` item numbers drawn from Zipf(`s`) over `n` items with `seed` (see [`Zipf`]).
///
/// ```
/// let trace = layercache_testkit::workload::zipf_trace(1_000, 0.99, 10_000, 7);
/// assert_eq!(trace, layercache_testkit::workload::zipf_trace(1_000, 0.99, 10_000, 7));
/// assert!(trace.iter().all(|&item| item < 1_000));
/// ```
pub fn zipf_trace(n: usize, s: f64, len: usize, seed: u64) -> Vec<u32> {
    let mut zipf = Zipf::new(n, s, seed);
    (0..len).map(|_| zipf.next_item()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hottest_item_is_drawn_most_and_traces_repeat_with_their_seed() {
        let trace = zipf_trace(100, 0.99, 100_000, 42);
        let mut counts = [0_u32; 100];
        for &item in &trace {
            counts[item as usize] += 1;
        }
        let hottest = Zipf::new(100, 0.99, 42).item_of_rank[0] as usize;
        assert_eq!(counts.iter().max(), Some(&counts[hottest]));
        // Rank 0 of Zipf(0.99) over 100 items has about 19 % of the weight.
        assert!(
            (15_000..23_000).contains(&counts[hottest]),
            "{}",
            counts[hottest]
        );
        assert_ne!(trace, zipf_trace(100, 0.99, 100_000, 43));
    }
}
