//! The seeded generator of every simulation and fault schedule: splitmix64,
//! so that a printed seed replays a run exactly and distinct seeds give
//! unrelated streams.

/// A splitmix64 stream.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// True with probability `per_mille` / 1000.
    pub fn per_mille(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// The seeds a test runs: `SEED=n` replays one; otherwise `runs` seeds from
/// `runs_var` (an environment variable) or `default_runs`, starting at a
/// time-derived base so that every run of the suite explores new ones.
pub fn seeds(runs_var: &str, default_runs: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let runs: u64 = std::env::var(runs_var).ok().and_then(|s| s.parse().ok()).unwrap_or(default_runs);
    let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    (0..runs).map(|i| base.wrapping_add(i.wrapping_mul(0x9e37_79b9))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_and_draws_stay_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..100).map(|_| a.below(10)).collect();
        assert_eq!(xs, (0..100).map(|_| b.below(10)).collect::<Vec<_>>());
        assert!(xs.iter().all(|x| *x < 10));
        assert!((0..10).any(|i| xs[i] != xs[0]), "a constant stream");
        let mut c = Rng::new(8);
        assert_ne!((0..8).map(|_| c.next_u64()).collect::<Vec<_>>(), (0..8).map(|_| Rng::new(7).next_u64()).collect::<Vec<_>>());
        assert!((0..1000).map(|_| a.between(3, 5)).all(|x| (3..=5).contains(&x)));
    }
}
