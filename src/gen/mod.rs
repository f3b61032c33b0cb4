//! Traffic generator driven by the TOML scenarios in `pktgen-scenarios/`:
//! random route tables, flows and packet sizes, built with `etherparse`, and
//! an independent model of what a router must do with each packet, so a
//! benchmark can check its own output.

pub mod reference;
pub mod scenario;
pub mod traffic;

pub use reference::{Expect, RefFlow, RefPort, RefRoute, RefRule, Topology};
pub use scenario::{LengthDist, Scenario, SizeSpec};
pub use traffic::{GeneratedRoute, Traffic, generate_routes, generate_traffic};

/// SplitMix64: small, fast, and the same sequence on every platform and
/// version, so a scenario and seed always give the same traffic.
#[derive(Debug, Clone)]
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

    /// Uniform in lo..=hi.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo { lo } else { lo + self.next_u64() % (hi - lo + 1) }
    }

    /// 0..n in a random order (a Fisher-Yates shuffle).
    pub fn permutation(&mut self, n: usize) -> Vec<u32> {
        let mut order: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            order.swap(i, self.range(0, i as u64) as usize);
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // First outputs of SplitMix64 seeded with 0 (from the reference C code).
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert!((0..1000).all(|_| (5..=9).contains(&r.range(5, 9))));
    }

    #[test]
    fn permutation_holds_every_index_once() {
        let p = Rng::new(7).permutation(1000);
        let mut sorted = p.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<u32>>());
        // Shuffled, not the identity; the same seed, the same order.
        assert!(p.iter().enumerate().filter(|&(i, &v)| i as u32 == v).count() < 100);
        assert_eq!(p, Rng::new(7).permutation(1000));
        assert!(Rng::new(7).permutation(0).is_empty());
    }
}
