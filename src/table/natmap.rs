//! Masquerade port mappings of one worker (RFC 4787).
//!
//! A mapping binds an internal endpoint (address, port or ICMP identifier)
//! to an external port of the masquerade address, per protocol. It is
//! endpoint-independent (REQ-1): every session from the same internal
//! endpoint reuses it, whatever the destination, and it lives as long as one
//! session holds it (a reference count). Each worker allocates only inside
//! its own slice of the port space (`worker_ranges`), so no two workers ever
//! hand out the same port and the owner of a port is known from the port
//! alone. The source port is kept when it is free and inside the worker's
//! slice; otherwise the next free port of the same class is taken (ports
//! below 1024 map below 1024, REQ-3a). Never port overloading (REQ-3).
//!
//! Fixed memory per protocol: a bitmap and an owner array over the port
//! space, and an open-addressing index from internal endpoint to external
//! port whose entries hold the whole endpoint (address and port) beside the
//! external port. So an index line alone answers a lookup, a probe never
//! reads the owner array (a random line in a 768 KiB array), and deletion
//! finds the home of the entries it shifts back from the entries
//! themselves.

use super::mem::{fold_mul, prefault, prefetch};
use crate::packet::ipv4::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use ahash::RandomState;

/// Protocols that get port mappings, in slot order.
pub const NAT_PROTOS: [u8; 3] = [PROTO_TCP, PROTO_UDP, PROTO_ICMP];

#[inline]
pub fn proto_slot(proto: u8) -> Option<usize> {
    match proto {
        PROTO_TCP => Some(0),
        PROTO_UDP => Some(1),
        PROTO_ICMP => Some(2),
        _ => None,
    }
}

/// Where an internal endpoint's probes start: its protocol's slot and its
/// home in that slot's index (`NatMap::start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    slot: u8,
    home: u32,
}

/// An inclusive range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub lo: u16,
    pub hi: u16,
}

impl Ports {
    pub fn len(&self) -> usize {
        if self.hi < self.lo { 0 } else { (self.hi - self.lo) as usize + 1 }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn contains(&self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }
}

/// Splits `lo..=hi` into `n` contiguous slices; slice `i`.
fn split(lo: u16, hi: u16, n: usize, i: usize) -> Ports {
    let total = (hi - lo) as usize + 1;
    let size = total / n.max(1);
    if size == 0 {
        return Ports { lo: 1, hi: 0 };
    }
    let a = lo as usize + i * size;
    let b = if i + 1 == n { hi as usize } else { a + size - 1 };
    Ports { lo: a as u16, hi: b as u16 }
}

/// Worker `i` of `n`: its (privileged 1-1023, unprivileged 1024-65535) slices.
pub fn worker_ranges(n: usize, i: usize) -> (Ports, Ports) {
    (split(1, 1023, n, i), split(1024, u16::MAX, n, i))
}

/// The worker that owns external port `port` when there are `n` workers.
#[inline]
pub fn port_owner(port: u16, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let (lo, hi) = if port < 1024 { (1u16, 1023u16) } else { (1024, u16::MAX) };
    let size = ((hi - lo) as usize + 1) / n;
    if port == 0 || size == 0 {
        return 0;
    }
    (((port - lo) as usize) / size).min(n - 1)
}

#[derive(Debug, Clone, Copy, Default)]
struct Mapping {
    addr: u32,
    port: u16,
    refs: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatMapStats {
    pub created: u64,
    pub preserved: u64,
    pub freed: u64,
    pub exhausted: u64,
}

pub struct NatMap {
    low: Ports,
    high: Ports,
    used: [Vec<u64>; 3],
    owner: [Vec<Mapping>; 3],
    /// Per protocol: 0 = empty, else `entry(addr, port, ext)` (an external
    /// port is never 0).
    index: [Vec<u64>; 3],
    mask: usize,
    seed: [u64; 2],
    hint: [[u16; 2]; 3],
    live: usize,
    pub stats: NatMapStats,
}

impl NatMap {
    /// The same empty map with its hash and port choices keyed from `r`
    /// (see `ConntrackConfig::seed`).
    pub fn keyed(mut self, r: &RandomState) -> NatMap {
        debug_assert_eq!(self.live, 0, "rekeying a map in use");
        self.seed = [r.hash_one(1u64), r.hash_one(2u64) | 1];
        self
    }

    /// Backs the map's tables with memory now (see `mem::prefault`).
    pub fn prefault(&mut self) {
        for v in &mut self.used {
            prefault(v);
        }
        for v in &mut self.owner {
            prefault(v);
        }
        for v in &mut self.index {
            prefault(v);
        }
    }

    pub fn new(low: Ports, high: Ports) -> NatMap {
        // At most half full: every port of the slices mapped.
        let slots = ((low.len() + high.len()) * 2).next_power_of_two().max(16);
        NatMap {
            low,
            high,
            used: std::array::from_fn(|_| vec![0u64; 1024]),
            owner: std::array::from_fn(|_| vec![Mapping::default(); 65536]),
            index: std::array::from_fn(|_| vec![0; slots]),
            mask: slots - 1,
            seed: {
                let r = RandomState::new();
                [r.hash_one(1u64), r.hash_one(2u64) | 1]
            },
            hint: [[low.lo, high.lo]; 3],
            live: 0,
            stats: NatMapStats::default(),
        }
    }

    /// A map owning the whole port space (one worker).
    pub fn whole() -> NatMap {
        let (l, h) = worker_ranges(1, 0);
        NatMap::new(l, h)
    }

    pub fn ranges(&self) -> (Ports, Ports) {
        (self.low, self.high)
    }

    /// Mappings alive.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    #[inline]
    fn is_used(&self, slot: usize, p: u16) -> bool {
        self.used[slot][p as usize >> 6] >> (p & 63) & 1 != 0
    }

    /// The internal endpoint of an index entry, as `key` gives it.
    #[inline]
    fn entry_key(e: u64) -> u64 {
        e >> 16
    }

    #[inline]
    fn key(addr: u32, port: u16) -> u64 {
        (addr as u64) << 16 | port as u64
    }

    #[inline]
    fn home_of_entry(&self, slot: usize, e: u64) -> usize {
        let k = Self::entry_key(e);
        self.home(slot, (k >> 16) as u32, k as u16)
    }

    #[inline]
    fn home(&self, slot: usize, addr: u32, port: u16) -> usize {
        let w = (addr as u64) << 32 | (port as u64) << 8 | slot as u64;
        (fold_mul(w ^ self.seed[0], self.seed[1]) as usize) & self.mask
    }

    /// Where the probes of an internal endpoint start (None for a protocol
    /// without mappings): computed once for a new flow, then given to
    /// `prefetch`, `prefetch_mapping` and `acquire_at` of the same endpoint.
    #[inline]
    pub fn start(&self, proto: u8, addr: u32, port: u16) -> Option<Start> {
        let slot = proto_slot(proto)?;
        Some(Start { slot: slot as u8, home: self.home(slot, addr, port) as u32 })
    }

    /// Starts fetching the index line where `acquire` and `lookup` of the
    /// endpoint of `at` start probing: a burst's new flows prefetch theirs
    /// together before any is mapped, instead of each waiting on a miss
    /// (the index is megabytes, looked up at random).
    #[inline]
    pub fn prefetch(&self, at: Start) {
        if let Some(index) = self.index.get(at.slot as usize) {
            prefetch(index.as_ptr().wrapping_add(at.home as usize));
        }
    }

    /// Starts fetching the owner line of an internal endpoint's mapping
    /// (its reference count, which `acquire` takes), reading the index line
    /// `prefetch` fetched: a burst's new flows prefetch both in two passes.
    /// `at` is the endpoint's `start`.
    #[inline]
    pub fn prefetch_mapping(&self, at: Start, addr: u32, port: u16) {
        let slot = at.slot as usize;
        if let Some((_, ext)) = self.find_from(slot, at.home as usize, addr, port) {
            prefetch(&self.owner[slot][ext as usize]);
        }
    }

    /// Starts fetching the owner line of external port `ext` (its reference
    /// count, which `release` drops).
    #[inline]
    pub fn prefetch_port(&self, proto: u8, ext: u16) {
        if let Some(slot) = proto_slot(proto) {
            prefetch(&self.owner[slot][ext as usize]);
        }
    }

    /// The external port of an internal endpoint's mapping.
    #[inline]
    pub fn lookup(&self, proto: u8, addr: u32, port: u16) -> Option<u16> {
        let slot = proto_slot(proto)?;
        self.find(slot, addr, port).map(|(_, ext)| ext)
    }

    /// The index position and external port of an endpoint's mapping.
    #[inline]
    fn find(&self, slot: usize, addr: u32, port: u16) -> Option<(usize, u16)> {
        self.find_from(slot, self.home(slot, addr, port), addr, port)
    }

    /// `find`, the endpoint's home given.
    #[inline]
    fn find_from(&self, slot: usize, home: usize, addr: u32, port: u16) -> Option<(usize, u16)> {
        debug_assert_eq!(home, self.home(slot, addr, port), "an endpoint's probe from another's home");
        let index = &self.index[slot];
        let key = Self::key(addr, port);
        let mut i = home & self.mask;
        loop {
            let e = index[i];
            if e == 0 {
                return None;
            }
            if Self::entry_key(e) == key {
                return Some((i, e as u16));
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The internal endpoint mapped to an external port, if any.
    #[inline]
    pub fn owner(&self, proto: u8, ext: u16) -> Option<(u32, u16)> {
        let slot = proto_slot(proto)?;
        let m = &self.owner[slot][ext as usize];
        (m.refs > 0).then_some((m.addr, m.port))
    }

    /// Takes a reference on the mapping of an internal endpoint, creating it
    /// if needed; None when the worker's ports of that class are exhausted.
    pub fn acquire(&mut self, proto: u8, addr: u32, port: u16) -> Option<u16> {
        let at = self.start(proto, addr, port)?;
        self.acquire_at(at, addr, port)
    }

    /// `acquire`, the endpoint's `start` given (`at`): its probes hash it
    /// no more.
    pub fn acquire_at(&mut self, at: Start, addr: u32, port: u16) -> Option<u16> {
        let (slot, home) = (at.slot as usize, at.home as usize);
        if let Some((_, ext)) = self.find_from(slot, home, addr, port) {
            self.owner[slot][ext as usize].refs += 1;
            return Some(ext);
        }
        let class = usize::from(port >= 1024 || self.low.is_empty());
        let range = if class == 0 { self.low } else { self.high };
        let ext = if range.contains(port) && !self.is_used(slot, port) {
            self.stats.preserved += 1;
            port
        } else {
            match self.scan(slot, class, range) {
                Some(p) => p,
                None => {
                    self.stats.exhausted += 1;
                    return None;
                }
            }
        };
        self.used[slot][ext as usize >> 6] |= 1 << (ext & 63);
        self.owner[slot][ext as usize] = Mapping { addr, port, refs: 1 };
        let mut i = home & self.mask;
        let index = &mut self.index[slot];
        while index[i] != 0 {
            i = (i + 1) & self.mask;
        }
        index[i] = Self::key(addr, port) << 16 | ext as u64;
        self.live += 1;
        self.stats.created += 1;
        Some(ext)
    }

    /// The next free port of `range` from the rotating hint, a word of the
    /// bitmap at a time (at most 1024 words for the whole space).
    fn scan(&mut self, slot: usize, class: usize, range: Ports) -> Option<u16> {
        if range.is_empty() {
            return None;
        }
        let start = self.hint[slot][class].clamp(range.lo, range.hi);
        let words = range.len().div_ceil(64) + 1;
        let mut p = start as u32;
        for _ in 0..=words {
            let w = self.used[slot][(p >> 6) as usize] | ((1u64 << (p & 63)) - 1);
            let free = !w;
            if free != 0 {
                let cand = (p & !63) + free.trailing_zeros();
                if cand <= range.hi as u32 && cand >= range.lo as u32 {
                    let next = if cand as u16 == range.hi { range.lo } else { cand as u16 + 1 };
                    self.hint[slot][class] = next;
                    return Some(cand as u16);
                }
            }
            // Next word, wrapping to the start of the range.
            p = (p & !63) + 64;
            if p > range.hi as u32 {
                p = range.lo as u32;
            }
        }
        None
    }

    /// Drops one reference on an external port's mapping; the port is
    /// freed with the last one.
    pub fn release(&mut self, proto: u8, ext: u16) {
        let Some(slot) = proto_slot(proto) else { return };
        let m = self.owner[slot][ext as usize];
        if m.refs == 0 {
            return;
        }
        if m.refs > 1 {
            self.owner[slot][ext as usize].refs -= 1;
            return;
        }
        let Some((mut hole, _)) = self.find(slot, m.addr, m.port) else { return };
        self.owner[slot][ext as usize] = Mapping::default();
        self.used[slot][ext as usize >> 6] &= !(1 << (ext & 63));
        self.live -= 1;
        self.stats.freed += 1;
        // Backward-shift deletion: no tombstones.
        self.index[slot][hole] = 0;
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let e = self.index[slot][j];
            if e == 0 {
                break;
            }
            let home = self.home_of_entry(slot, e);
            // Move e into the hole if its home is not cyclically in (hole, j].
            let dist_home = j.wrapping_sub(home) & self.mask;
            let dist_hole = j.wrapping_sub(hole) & self.mask;
            if dist_home >= dist_hole {
                self.index[slot][hole] = e;
                self.index[slot][j] = 0;
                hole = j;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_the_space_without_overlap() {
        for n in [1, 2, 3, 7, 16] {
            let mut seen = vec![0u8; 65536];
            for i in 0..n {
                let (l, h) = worker_ranges(n, i);
                for p in (l.lo..=l.hi).chain(h.lo..=h.hi) {
                    seen[p as usize] += 1;
                    assert_eq!(port_owner(p, n), i, "port {p} n {n}");
                }
            }
            assert!(seen[1..].iter().all(|&c| c == 1), "n={n}");
        }
    }

    #[test]
    fn endpoint_independent_preserving_and_refcounted() {
        let mut m = NatMap::whole();
        let a = m.acquire(PROTO_UDP, 0x0a000001, 5000).unwrap();
        assert_eq!(a, 5000, "port preserved");
        assert_eq!(m.acquire(PROTO_UDP, 0x0a000001, 5000), Some(5000), "same mapping reused");
        let b = m.acquire(PROTO_UDP, 0x0a000002, 5000).unwrap();
        assert_ne!(b, 5000);
        assert!(b >= 1024);
        assert_eq!(m.owner(PROTO_UDP, b), Some((0x0a000002, 5000)));
        assert_eq!(m.acquire(PROTO_TCP, 0x0a000002, 5000), Some(5000), "per protocol");
        let low = m.acquire(PROTO_UDP, 0x0a000003, 5000 - 4000).unwrap();
        assert_eq!(low, 1000);
        assert_eq!(m.acquire(PROTO_UDP, 0x0a000004, 1000).map(|p| p < 1024), Some(true));
        m.release(PROTO_UDP, 5000);
        assert_eq!(m.owner(PROTO_UDP, 5000), Some((0x0a000001, 5000)));
        m.release(PROTO_UDP, 5000);
        assert_eq!(m.owner(PROTO_UDP, 5000), None);
        assert_eq!(m.lookup(PROTO_UDP, 0x0a000001, 5000), None);
        assert_eq!(m.lookup(PROTO_UDP, 0x0a000002, 5000), Some(b));
    }

    #[test]
    fn exhaustion_is_reported_and_recovers() {
        let mut m = NatMap::new(Ports { lo: 1, hi: 0 }, Ports { lo: 40000, hi: 40099 });
        let mut got = Vec::new();
        for i in 0..100u32 {
            got.push(m.acquire(PROTO_TCP, 0x0a000000 + i, 7).unwrap());
        }
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 100);
        assert_eq!(m.acquire(PROTO_TCP, 0x0b000000, 7), None);
        assert_eq!(m.stats.exhausted, 1);
        m.release(PROTO_TCP, 40042);
        assert_eq!(m.acquire(PROTO_TCP, 0x0b000000, 7), Some(40042));
        // Every mapping still findable after the churn.
        for i in 0..100u32 {
            if i != 42 {
                assert!(m.lookup(PROTO_TCP, 0x0a000000 + i, 7).is_some(), "{i}");
            }
        }
    }

    /// Random acquires and releases over three protocols, against a model
    /// (endpoint → (external port, references)), in a small port space so
    /// that index runs grow long and deletions shift entries back.
    #[test]
    fn random_churn_matches_a_model() {
        use std::collections::HashMap;
        let mut m = NatMap::new(Ports { lo: 1, hi: 0 }, Ports { lo: 30000, hi: 30499 });
        let mut model: HashMap<(u8, u32, u16), (u16, u32)> = HashMap::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for step in 0..300_000u32 {
            let proto = NAT_PROTOS[(rnd() % 3) as usize];
            // Endpoints whose address or port alone differ.
            let (addr, port) = (0x0a00_0000 + (rnd() % 40) as u32, 30000 + (rnd() % 30) as u16);
            if rnd() % 2 == 0 {
                let used = model.keys().filter(|k| k.0 == proto).count();
                match (m.acquire(proto, addr, port), model.get_mut(&(proto, addr, port))) {
                    (Some(ext), Some((e, refs))) => {
                        assert_eq!(ext, *e, "step {step}: mapping kept");
                        *refs += 1;
                    }
                    (Some(ext), None) => {
                        assert!((30000..30500).contains(&ext), "step {step}");
                        assert!(model.iter().all(|(k, v)| k.0 != proto || v.0 != ext), "step {step}: port reused");
                        model.insert((proto, addr, port), (ext, 1));
                    }
                    (None, v) => assert!(v.is_none() && used == 500, "step {step}: refused with {used} in use"),
                }
            } else if let Some((&k, &(ext, refs))) = model.iter().find(|(k, _)| k.0 == proto && k.1 == addr) {
                m.release(proto, ext);
                if refs == 1 {
                    model.remove(&k);
                } else {
                    model.insert(k, (ext, refs - 1));
                }
            }
            if step % 1000 == 0 {
                assert_eq!(m.len(), model.len(), "step {step}");
                for (&(proto, addr, port), &(ext, _)) in &model {
                    assert_eq!(m.lookup(proto, addr, port), Some(ext), "step {step}");
                    assert_eq!(m.owner(proto, ext), Some((addr, port)), "step {step}");
                }
            }
        }
    }
}
