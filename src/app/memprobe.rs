//! A reference for the bench's per-packet numbers: how fast this machine
//! reads memory at random, measured in the same run on the worker's core.
//!
//! A scenario with a million flows looks up session records and index lines
//! at random in a table far larger than the cache, and its nanoseconds per
//! packet follow the machine's memory more than its cores: the same build
//! took 75 ns per packet on one VM and 155 ns on another whose guest saw
//! about 2 MiB of its 32 MiB L3 and 190 ns per DRAM read. Beside the
//! packet rate, the bench prints two reads over a region the size of one
//! worker's session table:
//!
//! - one after the other (each address comes from the previous read: the
//!   latency of a miss, as a lookup that waits for its index line before it
//!   can fetch its record);
//! - in 16 independent chains (misses overlapped as far as the core's miss
//!   buffers allow, as a burst's prefetched lookups are). Two such reads a
//!   packet (index line, record) are the floor of a lookup in a table that
//!   does not fit in the cache.
//!
//! Runs on the control thread after the workers have stopped, so it never
//! competes with them.

use crate::pktgen::Rng;
use crate::table::mem::advise_huge;
use serde::Serialize;
use std::time::Instant;

/// Independent chains of the overlapped measurement.
pub const CHAINS: usize = 16;
/// Words in a cache line: one read per line.
const LINE_WORDS: usize = 8;

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct MemoryReference {
    /// Size of the region read, in bytes.
    pub region_bytes: usize,
    /// Nanoseconds per read when each read's address comes from the last.
    pub dependent_ns: f64,
    /// Nanoseconds per read with `CHAINS` chains in flight.
    pub overlapped_ns: f64,
    pub chains: usize,
    /// The core it ran on, when it could be pinned.
    pub core: Option<usize>,
}

/// Measures random reads over `bytes` of memory (rounded to whole lines,
/// at least 64 lines), `reads` of them one after the other and as many in
/// `CHAINS` chains; on `core` when given. None if the region cannot be
/// allocated.
pub fn probe(bytes: usize, reads: usize, core: Option<usize>) -> Option<MemoryReference> {
    let run = move || {
        let pinned = core.filter(|&id| core_affinity::set_for_current(core_affinity::CoreId { id }));
        measure(bytes, reads).map(|(dependent_ns, overlapped_ns, region_bytes)| MemoryReference {
            region_bytes,
            dependent_ns,
            overlapped_ns,
            chains: CHAINS,
            core: pinned,
        })
    };
    // Its own thread, so pinning does not move the caller.
    std::thread::Builder::new().name("memprobe".into()).spawn(run).ok()?.join().ok()?
}

/// (dependent ns, overlapped ns, region bytes).
fn measure(bytes: usize, reads: usize) -> Option<(f64, f64, usize)> {
    let lines = (bytes / 64).max(64);
    let (region, order) = cycle(lines)?;
    let reads = reads.max(CHAINS);
    // Part of a lap first, not timed (the timed reads go on from where it
    // stopped, so they do not meet the lines it just brought in).
    let start = chase(&region, order[0] as usize * LINE_WORDS, reads.min(lines) / 4);
    let t = Instant::now();
    let end = chase(&region, start, reads);
    let dependent = t.elapsed().as_secs_f64() * 1e9 / reads as f64;
    std::hint::black_box(end);
    let mut at = [0usize; CHAINS];
    for (c, a) in at.iter_mut().enumerate() {
        *a = order[c * lines / CHAINS] as usize * LINE_WORDS;
    }
    let rounds = reads / CHAINS;
    let t = Instant::now();
    for _ in 0..rounds {
        for a in at.iter_mut() {
            *a = region[*a] as usize;
        }
    }
    let overlapped = t.elapsed().as_secs_f64() * 1e9 / (rounds * CHAINS) as f64;
    std::hint::black_box(at);
    Some((dependent, overlapped, lines * 64))
}

/// A region of `lines` cache lines linked into one random cycle through
/// every line (each line's first word holds the word index of the next
/// line to read), and the lines in the cycle's order.
fn cycle(lines: usize) -> Option<(Vec<u64>, Vec<u32>)> {
    let mut region: Vec<u64> = Vec::new();
    region.try_reserve_exact(lines * LINE_WORDS).ok()?;
    advise_huge(region.spare_capacity_mut());
    region.resize(lines * LINE_WORDS, 0);
    let order = Rng::new(lines as u64).permutation(lines);
    for w in 0..lines {
        let (from, to) = (order[w] as usize, order[(w + 1) % lines] as usize);
        region[from * LINE_WORDS] = (to * LINE_WORDS) as u64;
    }
    Some((region, order))
}

/// Follows the chain from word `at` for `n` reads; returns where it ended.
#[inline(never)]
fn chase(region: &[u64], mut at: usize, n: usize) -> usize {
    for _ in 0..n {
        at = region[at] as usize;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chain visits every line once per lap: after `lines` reads it is
    /// back where it started, and not before.
    #[test]
    fn the_chain_is_one_cycle_through_every_line() {
        let lines = 4096;
        let (region, order) = cycle(lines).unwrap();
        // Not the identity order (a shuffled one).
        assert!(order.iter().enumerate().filter(|&(i, &l)| i as u32 == l).count() < lines / 8);
        let start = order[0] as usize * LINE_WORDS;
        let mut seen = vec![false; lines];
        let mut at = start;
        for _ in 0..lines {
            assert!(!seen[at / LINE_WORDS], "line {} visited twice", at / LINE_WORDS);
            seen[at / LINE_WORDS] = true;
            at = region[at] as usize;
        }
        assert_eq!(at, start);
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn a_probe_reports_the_region_and_positive_times() {
        let r = probe(1 << 20, 10_000, None).expect("1 MiB can be allocated");
        assert_eq!(r.region_bytes, 1 << 20);
        assert_eq!(r.chains, CHAINS);
        assert!(r.dependent_ns > 0.0 && r.dependent_ns.is_finite(), "{r:?}");
        assert!(r.overlapped_ns > 0.0 && r.overlapped_ns.is_finite(), "{r:?}");
        assert_eq!(r.core, None);
    }
}
