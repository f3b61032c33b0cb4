//! Neighbour table: IP address on a port → MAC address (the ARP/ND cache the
//! control thread publishes to the workers with each snapshot).

use super::mem::fold_mul;
use crate::packet::Mac;
use ahash::RandomState;
use std::collections::HashMap;

/// Where a neighbour entry came from: configuration outlives learning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighborSource {
    /// From the orchestrator's `allocations` (or an operator): never aged.
    Static,
    /// Learned from ARP/ND.
    Learned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbor {
    pub mac: Mac,
    pub source: NeighborSource,
}

/// An IPv4 neighbour in `V4Map`: `key` is 1 << 48 | port << 32 | address
/// (never 0: 0 marks an empty slot).
#[derive(Clone, Copy)]
struct V4Slot {
    key: u64,
    n: Neighbor,
}

const V4_EMPTY: V4Slot = V4Slot { key: 0, n: Neighbor { mac: Mac([0; 6]), source: NeighborSource::Learned } };

/// The IPv4 neighbours, read by the fast path for every packet it sends
/// to a host on a connected network (the load balancer's members, say):
/// open addressing with linear probing in a power-of-two array of 16-byte
/// slots, at most half full, over a keyed multiply-fold hash (an ARP
/// sender cannot aim collisions). A hit is one multiplication and usually
/// one slot; a general-purpose map hashed and probed in about 50
/// instructions. Deletion shifts the probe run back, leaving no tombstones.
#[derive(Clone)]
struct V4Map {
    slots: Vec<V4Slot>,
    len: usize,
    seed: [u64; 2],
}

impl Default for V4Map {
    fn default() -> Self {
        let r = RandomState::new();
        V4Map { slots: vec![V4_EMPTY; 16], len: 0, seed: [r.hash_one(1u64), r.hash_one(2u64) | 1] }
    }
}

impl V4Map {
    #[inline(always)]
    fn key(port: u16, ip: u32) -> u64 {
        1 << 48 | (port as u64) << 32 | ip as u64
    }

    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        fold_mul(key ^ self.seed[0], self.seed[1]) as usize & (self.slots.len() - 1)
    }

    #[inline(always)]
    fn find(&self, key: u64) -> Result<usize, usize> {
        let mask = self.slots.len() - 1;
        let mut pos = self.home(key);
        loop {
            match self.slots[pos].key {
                k if k == key => return Ok(pos),
                0 => return Err(pos),
                _ => pos = (pos + 1) & mask,
            }
        }
    }

    #[inline]
    fn get(&self, port: u16, ip: u32) -> Option<&Neighbor> {
        self.find(Self::key(port, ip)).ok().map(|i| &self.slots[i].n)
    }

    /// The entry for `(port, ip)`, inserted as `n` if there was none.
    fn entry(&mut self, port: u16, ip: u32, n: Neighbor) -> &mut Neighbor {
        if 2 * (self.len + 1) > self.slots.len() {
            let grown = vec![V4_EMPTY; 2 * self.slots.len()];
            let old = std::mem::replace(&mut self.slots, grown);
            for s in old.into_iter().filter(|s| s.key != 0) {
                let Err(i) = self.find(s.key) else { unreachable!("keys are unique") };
                self.slots[i] = s;
            }
        }
        let key = Self::key(port, ip);
        let i = match self.find(key) {
            Ok(i) => i,
            Err(i) => {
                self.slots[i] = V4Slot { key, n };
                self.len += 1;
                i
            }
        };
        &mut self.slots[i].n
    }

    fn remove(&mut self, port: u16, ip: u32) -> Option<Neighbor> {
        let mut hole = self.find(Self::key(port, ip)).ok()?;
        let removed = self.slots[hole].n;
        let mask = self.slots.len() - 1;
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let e = self.slots[j];
            if e.key == 0 {
                break;
            }
            // Move e into the hole unless its home lies cyclically in (hole, j].
            let home = self.home(e.key);
            let stays = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !stays {
                self.slots[hole] = e;
                hole = j;
            }
        }
        self.slots[hole] = V4_EMPTY;
        self.len -= 1;
        Some(removed)
    }

    fn iter(&self) -> impl Iterator<Item = (u16, u32, &Neighbor)> {
        self.slots.iter().filter(|s| s.key != 0).map(|s| ((s.key >> 32) as u16, s.key as u32, &s.n))
    }
}

/// IPv4 and IPv6 neighbours per port. IPv4 keys are addresses in the low
/// 32 bits, kept apart from IPv6 so ::a.b.c.d never collides with a.b.c.d.
#[derive(Clone, Default)]
pub struct NeighborTable {
    v4: V4Map,
    v6: HashMap<(u16, u128), Neighbor, RandomState>,
}

impl NeighborTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces; a learned entry never replaces a static one.
    pub fn insert_v4(&mut self, port: u16, ip: u32, mac: Mac, source: NeighborSource) {
        let e = self.v4.entry(port, ip, Neighbor { mac, source });
        if !(source == NeighborSource::Learned && e.source == NeighborSource::Static) {
            *e = Neighbor { mac, source };
        }
    }

    pub fn insert_v6(&mut self, port: u16, ip: u128, mac: Mac, source: NeighborSource) {
        let e = self.v6.entry((port, ip)).or_insert(Neighbor { mac, source });
        if !(source == NeighborSource::Learned && e.source == NeighborSource::Static) {
            *e = Neighbor { mac, source };
        }
    }

    /// Inserts an entry for an address of either family.
    pub fn insert(&mut self, port: u16, ip: std::net::IpAddr, mac: Mac, source: NeighborSource) {
        match ip {
            std::net::IpAddr::V4(a) => self.insert_v4(port, a.into(), mac, source),
            std::net::IpAddr::V6(a) => self.insert_v6(port, a.into(), mac, source),
        }
    }

    #[inline]
    pub fn get_v4(&self, port: u16, ip: u32) -> Option<Mac> {
        self.v4.get(port, ip).map(|n| n.mac)
    }

    /// Whether an ARP from `ip` with `mac` on `port` would teach nothing:
    /// the entry has that MAC, or is static (a learned MAC never replaces it).
    #[inline]
    pub fn settled_v4(&self, port: u16, ip: u32, mac: Mac) -> bool {
        self.v4.get(port, ip).is_some_and(|n| n.mac == mac || n.source == NeighborSource::Static)
    }

    #[inline]
    pub fn get_v6(&self, port: u16, ip: u128) -> Option<Mac> {
        self.v6.get(&(port, ip)).map(|n| n.mac)
    }

    pub fn remove_v4(&mut self, port: u16, ip: u32) -> Option<Neighbor> {
        self.v4.remove(port, ip)
    }

    pub fn remove_v6(&mut self, port: u16, ip: u128) -> Option<Neighbor> {
        self.v6.remove(&(port, ip))
    }

    pub fn len(&self) -> usize {
        self.v4.len + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All entries as (port, address, neighbour), IPv4 first, for reports.
    pub fn entries(&self) -> Vec<(u16, std::net::IpAddr, Neighbor)> {
        let mut v: Vec<_> = self
            .v4
            .iter()
            .map(|(p, ip, n)| (p, std::net::IpAddr::V4(ip.into()), *n))
            .chain(self.v6.iter().map(|(&(p, ip), n)| (p, std::net::IpAddr::V6(ip.into()), *n)))
            .collect();
        v.sort_by_key(|e| (e.0, e.1));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_entries_win_over_learned() {
        let mut t = NeighborTable::new();
        let a = Mac([2, 0, 0, 0, 0, 1]);
        let b = Mac([2, 0, 0, 0, 0, 2]);
        t.insert_v4(1, 0x0a00_0005, a, NeighborSource::Static);
        t.insert_v4(1, 0x0a00_0005, b, NeighborSource::Learned);
        assert_eq!(t.get_v4(1, 0x0a00_0005), Some(a));
        assert_eq!(t.get_v4(2, 0x0a00_0005), None);
        t.insert_v4(1, 0x0a00_0006, b, NeighborSource::Learned);
        t.insert_v4(1, 0x0a00_0006, a, NeighborSource::Learned);
        assert_eq!(t.get_v4(1, 0x0a00_0006), Some(a));
        t.insert_v6(1, 0x0a00_0005, b, NeighborSource::Static);
        assert_eq!(t.get_v6(1, 0x0a00_0005), Some(b));
        assert_eq!(t.get_v4(1, 0x0a00_0005), Some(a));
        assert_eq!(t.len(), 3);
        assert_eq!(t.entries().len(), 3);
    }

    /// The IPv4 map against std's `HashMap`: random inserts, replacements
    /// and removals over a few hundred keys on three ports, so the map
    /// grows from 16 slots several times and removals shift probe runs
    /// across the array's end.
    #[test]
    fn v4_map_agrees_with_a_hash_map() {
        let mut t = NeighborTable::new();
        let mut model: HashMap<(u16, u32), Neighbor> = HashMap::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for step in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (port, ip) = ((x % 3) as u16, 0x0a00_0000 | ((x >> 8) % 300) as u32);
            let source = if x >> 40 & 1 == 0 { NeighborSource::Static } else { NeighborSource::Learned };
            let mac = Mac([2, 0, 0, (step >> 16) as u8, (step >> 8) as u8, step as u8]);
            match x >> 32 & 3 {
                0 => assert_eq!(t.remove_v4(port, ip), model.remove(&(port, ip))),
                _ => {
                    t.insert_v4(port, ip, mac, source);
                    let e = model.entry((port, ip)).or_insert(Neighbor { mac, source });
                    if !(source == NeighborSource::Learned && e.source == NeighborSource::Static) {
                        *e = Neighbor { mac, source };
                    }
                }
            }
            assert_eq!(t.get_v4(port, ip), model.get(&(port, ip)).map(|n| n.mac));
            assert_eq!(t.len(), model.len());
        }
        for port in 0..4u16 {
            for ip in 0x0a00_0000..0x0a00_0000 + 310 {
                assert_eq!(t.get_v4(port, ip), model.get(&(port, ip)).map(|n| n.mac), "{port} {ip:x}");
            }
        }
        let mut got: Vec<_> = t.entries().into_iter().map(|(p, ip, n)| (p, ip, n.mac, n.source)).collect();
        let mut want: Vec<_> =
            model.iter().map(|(&(p, ip), n)| (p, std::net::IpAddr::V4(ip.into()), n.mac, n.source)).collect();
        got.sort_by_key(|e| (e.0, e.1));
        want.sort_by_key(|e| (e.0, e.1));
        assert_eq!(got, want);
    }
}
