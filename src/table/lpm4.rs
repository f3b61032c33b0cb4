//! IPv4 longest-prefix match, DIR-24-8 (Gupta, Lin, McKeown 1998; the layout
//! of DPDK's rte_lpm): a 2^24-entry first level indexed by the top 24 bits,
//! and 256-entry second-level groups (tbl8) for prefixes longer than /24.
//! A lookup is one memory access, two for the few addresses under a /25+.
//!
//! The builder owns the rule set (one map per prefix length, so add and delete
//! are exact) and builds the frozen table by writing prefixes shortest first:
//! a longer prefix simply overwrites, no per-entry depth bookkeeping needed.

use super::mem::{LargeTable, prefetch};
#[cfg(test)]
use super::rules::Addr;
use super::rules::PrefixRules;

const VALID: u32 = 1 << 31;
const EXT: u32 = 1 << 30;
const VALUE: u32 = (1 << 30) - 1;
const TBL24_LEN: usize = 1 << 24;

/// Largest next-hop value a route may carry.
pub const MAX_NEXT_HOP: u32 = VALUE;
/// `lookup` result when no route matches.
pub const NO_ROUTE: u32 = u32::MAX;
/// Default number of tbl8 groups (1 KiB each).
pub const DEFAULT_TBL8_GROUPS: usize = 1 << 16;
/// From this many routes on, the first level is backed by huge pages.
pub const HUGE_PAGE_ROUTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LpmError {
    #[error("prefix length {0} is longer than the address")]
    BadPrefixLen(u8),
    #[error("next hop {0} is larger than the table can store")]
    NextHopTooLarge(u32),
    #[error("more than {0} second-level groups needed: too many prefixes longer than /24 (raise the tbl8 capacity)")]
    Tbl8Exhausted(usize),
    #[error("could not map memory for the route table")]
    NoMemory,
}

/// The mutable, slow side of `Lpm4`: add and delete rules, then `build`.
#[derive(Clone)]
pub struct Lpm4Builder {
    rules: PrefixRules<u32>,
    max_tbl8_groups: usize,
}

impl Default for Lpm4Builder {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
fn mask4(len: u8) -> u32 {
    u32::MAX.masked(len)
}

impl Lpm4Builder {
    pub fn new() -> Self {
        Self::with_tbl8_groups(DEFAULT_TBL8_GROUPS)
    }

    pub fn with_tbl8_groups(max_tbl8_groups: usize) -> Self {
        Lpm4Builder { rules: PrefixRules::default(), max_tbl8_groups }
    }

    /// Adds or replaces a route; host bits of `prefix` are ignored. Returns
    /// the next hop it replaced.
    pub fn add(&mut self, prefix: u32, len: u8, nh: u32) -> Result<Option<u32>, LpmError> {
        self.rules.insert(prefix, len, nh)
    }

    /// Removes a route; returns its next hop if it existed.
    pub fn delete(&mut self, prefix: u32, len: u8) -> Option<u32> {
        self.rules.remove(prefix, len)
    }

    pub fn get(&self, prefix: u32, len: u8) -> Option<u32> {
        self.rules.get(prefix, len)
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Longest match over the rule set, by another algorithm than the frozen
    /// table's (a reference for tests and the traffic generator).
    pub fn lookup_slow(&self, ip: u32) -> Option<u32> {
        self.rules.lookup_slow(ip)
    }

    /// Builds the frozen table.
    pub fn build(&self) -> Result<Lpm4, LpmError> {
        let mut tbl24 = LargeTable::zeroed(TBL24_LEN, self.len() >= HUGE_PAGE_ROUTES).ok_or(LpmError::NoMemory)?;
        let mut tbl8: Vec<u32> = Vec::new();
        let default = self.rules.get(0, 0).unwrap_or(NO_ROUTE);
        for len in 1..=24u8 {
            let span = 1usize << (24 - len);
            for (p, nh) in self.rules.of_len(len) {
                let start = (p >> 8) as usize;
                tbl24[start..start + span].fill(VALID | nh);
            }
        }
        for len in 25..=32u8 {
            let span = 1usize << (32 - len);
            for (p, nh) in self.rules.of_len(len) {
                let i = (p >> 8) as usize;
                let e = tbl24[i];
                let group = if e & EXT != 0 {
                    (e & VALUE) as usize
                } else {
                    let g = tbl8.len() / 256;
                    if g >= self.max_tbl8_groups {
                        return Err(LpmError::Tbl8Exhausted(self.max_tbl8_groups));
                    }
                    // The group inherits the covering shorter route (or none).
                    tbl8.resize(tbl8.len() + 256, e);
                    tbl24[i] = VALID | EXT | g as u32;
                    g
                };
                let start = group * 256 + (p & 0xff) as usize;
                tbl8[start..start + span].fill(VALID | nh);
            }
        }
        tbl8.shrink_to_fit();
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Lpm4 { tbl24, tbl8, default, routes: self.len(), id })
    }
}

/// The identity of the next table built (from 1; never reused in a process).
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The frozen, read-only IPv4 route table the workers look up.
pub struct Lpm4 {
    tbl24: LargeTable,
    tbl8: Vec<u32>,
    default: u32,
    routes: usize,
    id: u64,
}

impl Lpm4 {
    /// This table's identity, unique in the process (a table is never
    /// changed once built): a lookup result remembered with it (a
    /// session's route hint) holds for as long as the table in force has
    /// the same identity. Never 0.
    #[inline(always)]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next hop of the longest matching prefix, or [`NO_ROUTE`].
    #[inline]
    pub fn lookup(&self, ip: u32) -> u32 {
        // SAFETY: ip >> 8 < 2^24 == tbl24.len().
        let mut e = unsafe { *self.tbl24.get_unchecked((ip >> 8) as usize) };
        if e & EXT != 0 {
            let i = ((e & VALUE) as usize) << 8 | (ip & 0xff) as usize;
            e = self.tbl8.get(i).copied().unwrap_or(0);
        }
        if e & VALID != 0 { e & VALUE } else { self.default }
    }

    /// Starts fetching the first-level entry of `ip` (call a burst ahead).
    #[inline(always)]
    pub fn prefetch(&self, ip: u32) {
        // SAFETY: in-bounds pointer arithmetic, as in lookup.
        prefetch(unsafe { self.tbl24.as_ptr().add((ip >> 8) as usize) });
    }

    /// Looks up a whole burst, prefetching every first-level entry before
    /// reading any, so the cache misses of a burst overlap.
    #[inline]
    pub fn lookup_bulk(&self, ips: &[u32], out: &mut [u32]) {
        for &ip in ips {
            self.prefetch(ip);
        }
        for (o, &ip) in out.iter_mut().zip(ips) {
            *o = self.lookup(ip);
        }
    }

    pub fn routes(&self) -> usize {
        self.routes
    }

    /// Address space of the table (first level mapped + second level).
    pub fn memory_bytes(&self) -> usize {
        self.tbl24.mapped_bytes() + self.tbl8.len() * 4
    }

    pub fn tbl8_groups(&self) -> usize {
        self.tbl8.len() / 256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn naive(rules: &[(u32, u8, u32)], ip: u32) -> u32 {
        let mut best: Option<(u8, u32)> = None;
        for &(p, l, nh) in rules {
            if ip & mask4(l) == p & mask4(l) && best.is_none_or(|(bl, _)| l >= bl) {
                best = Some((l, nh));
            }
        }
        best.map_or(NO_ROUTE, |b| b.1)
    }

    #[test]
    fn hand_written_vectors() {
        let mut b = Lpm4Builder::new();
        b.add(0x0a00_0000, 8, 1).unwrap(); // 10/8
        b.add(0x0a01_0000, 16, 2).unwrap(); // 10.1/16
        b.add(0x0a01_0100, 24, 3).unwrap(); // 10.1.1/24
        b.add(0x0a01_0180, 25, 4).unwrap(); // 10.1.1.128/25
        b.add(0x0a01_01ff, 32, 5).unwrap(); // 10.1.1.255/32
        let t = b.build().unwrap();
        assert_eq!(t.lookup(0x0a09_0909), 1);
        assert_eq!(t.lookup(0x0a01_0909), 2);
        assert_eq!(t.lookup(0x0a01_0105), 3);
        assert_eq!(t.lookup(0x0a01_0181), 4);
        assert_eq!(t.lookup(0x0a01_01ff), 5);
        assert_eq!(t.lookup(0x0b00_0000), NO_ROUTE);
        assert_eq!(t.tbl8_groups(), 1);
        // A default route catches the rest; deleting /25 falls back to /24.
        b.add(0, 0, 9).unwrap();
        assert_eq!(b.delete(0x0a01_0180, 25), Some(4));
        assert_eq!(b.delete(0x0a01_0180, 25), None);
        let t = b.build().unwrap();
        assert_eq!(t.lookup(0x0b00_0000), 9);
        assert_eq!(t.lookup(0x0a01_0181), 3);
        assert_eq!(t.lookup(0x0a01_01ff), 5);
        assert_eq!(t.routes(), 5);
    }

    #[test]
    fn host_bits_ignored_and_replace() {
        let mut b = Lpm4Builder::new();
        assert_eq!(b.add(0xc0a8_01ff, 24, 1).unwrap(), None);
        assert_eq!(b.add(0xc0a8_0100, 24, 2).unwrap(), Some(1));
        assert_eq!(b.get(0xc0a8_0123, 24), Some(2));
        assert_eq!(b.add(0, 33, 1), Err(LpmError::BadPrefixLen(33)));
        assert_eq!(b.add(0, 8, MAX_NEXT_HOP + 1), Err(LpmError::NextHopTooLarge(MAX_NEXT_HOP + 1)));
        let t = b.build().unwrap();
        assert_eq!(t.lookup(0xc0a8_0177), 2);
    }

    #[test]
    fn random_rules_match_naive_reference() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut b = Lpm4Builder::new();
        let mut rules = Vec::new();
        for i in 0..3000u32 {
            let len = (rng.next() % 33) as u8;
            // Cluster prefixes under 10/8 so they overlap a lot.
            let p = if i % 2 == 0 { 0x0a00_0000 | (rng.next() as u32 & 0x00ff_ffff) } else { rng.next() as u32 };
            let p = p & mask4(len);
            b.add(p, len, i).unwrap();
            rules.retain(|&(q, l, _)| !(q == p && l == len));
            rules.push((p, len, i));
        }
        // Delete a third of them.
        for k in (0..rules.len()).rev().step_by(3) {
            let (p, l, _) = rules.remove(k);
            assert!(b.delete(p, l).is_some());
        }
        let t = b.build().unwrap();
        for _ in 0..200_000 {
            let r = rng.next();
            let ip = if r & 1 == 0 { 0x0a00_0000 | (r >> 8) as u32 & 0x00ff_ffff } else { (r >> 16) as u32 };
            let want = naive(&rules, ip);
            assert_eq!(t.lookup(ip), want, "ip {ip:#x}");
            assert_eq!(b.lookup_slow(ip).unwrap_or(NO_ROUTE), want);
        }
        // Bulk lookup agrees with single lookups.
        let ips: Vec<u32> = (0..64).map(|_| rng.next() as u32).collect();
        let mut out = vec![0; 64];
        t.lookup_bulk(&ips, &mut out);
        for (ip, o) in ips.iter().zip(&out) {
            assert_eq!(*o, t.lookup(*ip));
        }
    }

    #[test]
    fn tbl8_capacity_is_enforced() {
        let mut b = Lpm4Builder::with_tbl8_groups(2);
        for i in 0..3u32 {
            b.add(0x0a00_0000 | (i << 8), 32, 1).unwrap();
        }
        assert_eq!(b.build().err(), Some(LpmError::Tbl8Exhausted(2)));
    }
}
