//! IPv6 longest-prefix match: a multibit trie with a 16-bit first stride
//! (65,536 entries, 256 KiB) and 8-bit strides below it, in the style of
//! DPDK's rte_lpm6 (which uses 24 then 8). A /48 costs 5 accesses, a /64 7.
//! Same builder/frozen split and shortest-first build as [`super::lpm4`].

use super::lpm4::{LpmError, NO_ROUTE};
use super::mem::prefetch;
#[cfg(test)]
use super::rules::Addr;
use super::rules::PrefixRules;

const VALID: u32 = 1 << 31;
const EXT: u32 = 1 << 30;
const VALUE: u32 = (1 << 30) - 1;
const ROOT_BITS: u32 = 16;
pub const DEFAULT_GROUPS6: usize = 1 << 16;

#[cfg(test)]
fn mask6(len: u8) -> u128 {
    u128::MAX.masked(len)
}

/// The mutable side of `Lpm6`.
#[derive(Clone)]
pub struct Lpm6Builder {
    rules: PrefixRules<u128>,
    max_groups: usize,
}

impl Default for Lpm6Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Lpm6Builder {
    pub fn new() -> Self {
        Self::with_groups(DEFAULT_GROUPS6)
    }

    pub fn with_groups(max_groups: usize) -> Self {
        Lpm6Builder { rules: PrefixRules::default(), max_groups }
    }

    pub fn add(&mut self, prefix: u128, len: u8, nh: u32) -> Result<Option<u32>, LpmError> {
        self.rules.insert(prefix, len, nh)
    }

    pub fn delete(&mut self, prefix: u128, len: u8) -> Option<u32> {
        self.rules.remove(prefix, len)
    }

    pub fn get(&self, prefix: u128, len: u8) -> Option<u32> {
        self.rules.get(prefix, len)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Reference longest match over the rule set (independent of the trie).
    pub fn lookup_slow(&self, ip: u128) -> Option<u32> {
        self.rules.lookup_slow(ip)
    }

    pub fn build(&self) -> Result<Lpm6, LpmError> {
        let mut root = vec![0u32; 1 << ROOT_BITS];
        let mut groups: Vec<u32> = Vec::new();
        let default = self.rules.get(0, 0).unwrap_or(NO_ROUTE);
        for len in 1..=128u8 {
            for (p, nh) in self.rules.of_len(len) {
                let leaf = VALID | nh;
                if len as u32 <= ROOT_BITS {
                    let start = (p >> 112) as usize;
                    root[start..start + (1 << (ROOT_BITS - len as u32))].fill(leaf);
                    continue;
                }
                // Walk down, creating groups that inherit the covering route.
                let mut slot: (bool, usize) = (true, (p >> 112) as usize); // (in root, index)
                let mut consumed = ROOT_BITS;
                loop {
                    let e = if slot.0 { root[slot.1] } else { groups[slot.1] };
                    let g = if e & EXT != 0 {
                        (e & VALUE) as usize
                    } else {
                        let g = groups.len() / 256;
                        if g >= self.max_groups {
                            return Err(LpmError::Tbl8Exhausted(self.max_groups));
                        }
                        groups.resize(groups.len() + 256, e);
                        let ext = VALID | EXT | g as u32;
                        if slot.0 {
                            root[slot.1] = ext
                        } else {
                            groups[slot.1] = ext
                        }
                        g
                    };
                    let byte = ((p >> (120 - consumed)) & 0xff) as usize;
                    if len as u32 <= consumed + 8 {
                        let start = g * 256 + byte;
                        groups[start..start + (1 << (consumed + 8 - len as u32))].fill(leaf);
                        break;
                    }
                    slot = (false, g * 256 + byte);
                    consumed += 8;
                }
            }
        }
        groups.shrink_to_fit();
        Ok(Lpm6 { root, groups, default, routes: self.len() })
    }
}

/// The frozen IPv6 route table.
pub struct Lpm6 {
    root: Vec<u32>,
    groups: Vec<u32>,
    default: u32,
    routes: usize,
}

impl Lpm6 {
    #[inline]
    pub fn lookup(&self, ip: u128) -> u32 {
        let mut e = self.root[(ip >> 112) as usize];
        let mut shift = 104i32;
        while e & EXT != 0 && shift >= 0 {
            let i = ((e & VALUE) as usize) << 8 | ((ip >> shift) & 0xff) as usize;
            e = self.groups.get(i).copied().unwrap_or(0);
            shift -= 8;
        }
        if e & VALID != 0 && e & EXT == 0 { e & VALUE } else { self.default }
    }

    #[inline(always)]
    pub fn prefetch(&self, ip: u128) {
        prefetch(&self.root[(ip >> 112) as usize]);
    }

    pub fn routes(&self) -> usize {
        self.routes
    }

    pub fn memory_bytes(&self) -> usize {
        (self.root.len() + self.groups.len()) * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(rules: &[(u128, u8, u32)], ip: u128) -> u32 {
        let mut best: Option<(u8, u32)> = None;
        for &(p, l, nh) in rules {
            if ip & mask6(l) == p & mask6(l) && best.is_none_or(|(bl, _)| l >= bl) {
                best = Some((l, nh));
            }
        }
        best.map_or(NO_ROUTE, |b| b.1)
    }

    #[test]
    fn hand_written_vectors() {
        let p = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().to_bits();
        let mut b = Lpm6Builder::new();
        b.add(p("2001:db8::"), 32, 1).unwrap();
        b.add(p("2001:db8:1::"), 48, 2).unwrap();
        b.add(p("2001:db8:1:2::"), 64, 3).unwrap();
        b.add(p("2001:db8:1:2::7"), 128, 4).unwrap();
        b.add(p("2001::"), 12, 5).unwrap();
        let t = b.build().unwrap();
        assert_eq!(t.lookup(p("2001:db8:ffff::1")), 1);
        assert_eq!(t.lookup(p("2001:db8:1:ff::1")), 2);
        assert_eq!(t.lookup(p("2001:db8:1:2::8")), 3);
        assert_eq!(t.lookup(p("2001:db8:1:2::7")), 4);
        assert_eq!(t.lookup(p("2001:dead::1")), 5);
        assert_eq!(t.lookup(p("3000::1")), NO_ROUTE);
        b.add(0, 0, 6).unwrap();
        b.delete(p("2001:db8:1:2::"), 64);
        let t = b.build().unwrap();
        assert_eq!(t.lookup(p("3000::1")), 6);
        assert_eq!(t.lookup(p("2001:db8:1:2::8")), 2);
        assert_eq!(t.lookup(p("2001:db8:1:2::7")), 4);
    }

    #[test]
    fn random_rules_match_naive_reference() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut b = Lpm6Builder::new();
        let mut rules = Vec::new();
        for i in 0..1500u32 {
            let len = (next() % 129) as u8;
            let hi = 0x2001_0db8_0000_0000u64 | (next() & 0xffff_ffff & if i % 2 == 0 { 0xff } else { u64::MAX });
            let p = (((hi as u128) << 64) | next() as u128) & mask6(len);
            b.add(p, len, i).unwrap();
            rules.retain(|&(q, l, _)| !(q == p && l == len));
            rules.push((p, len, i));
        }
        for k in (0..rules.len()).rev().step_by(4) {
            let (p, l, _) = rules.remove(k);
            assert!(b.delete(p, l).is_some());
        }
        let t = b.build().unwrap();
        for j in 0..50_000 {
            // Half the probes are near an existing rule, half random.
            let ip = if j % 2 == 0 {
                let (p, _, _) = rules[(next() as usize) % rules.len()];
                p ^ (next() as u128 >> (next() % 64))
            } else {
                ((0x2001_0db8_0000_0000u128 | (next() & 0xffff) as u128) << 64) | next() as u128
            };
            assert_eq!(t.lookup(ip), naive(&rules, ip), "ip {ip:#x}");
            assert_eq!(b.lookup_slow(ip).unwrap_or(NO_ROUTE), naive(&rules, ip));
        }
    }
}
