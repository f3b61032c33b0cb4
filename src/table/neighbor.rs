//! Neighbour table: IP address on a port → MAC address (the ARP/ND cache the
//! control thread publishes to the workers with each snapshot).

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

/// IPv4 and IPv6 neighbours per port. IPv4 keys are addresses in the low
/// 32 bits, kept apart from IPv6 so ::a.b.c.d never collides with a.b.c.d.
#[derive(Clone, Default)]
pub struct NeighborTable {
    v4: HashMap<(u16, u32), Neighbor, RandomState>,
    v6: HashMap<(u16, u128), Neighbor, RandomState>,
}

impl NeighborTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces; a learned entry never replaces a static one.
    pub fn insert_v4(&mut self, port: u16, ip: u32, mac: Mac, source: NeighborSource) {
        let e = self.v4.entry((port, ip)).or_insert(Neighbor { mac, source });
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
        self.v4.get(&(port, ip)).map(|n| n.mac)
    }

    /// Whether an ARP from `ip` with `mac` on `port` would teach nothing:
    /// the entry has that MAC, or is static (a learned MAC never replaces it).
    #[inline]
    pub fn settled_v4(&self, port: u16, ip: u32, mac: Mac) -> bool {
        self.v4.get(&(port, ip)).is_some_and(|n| n.mac == mac || n.source == NeighborSource::Static)
    }

    #[inline]
    pub fn get_v6(&self, port: u16, ip: u128) -> Option<Mac> {
        self.v6.get(&(port, ip)).map(|n| n.mac)
    }

    pub fn remove_v4(&mut self, port: u16, ip: u32) -> Option<Neighbor> {
        self.v4.remove(&(port, ip))
    }

    pub fn remove_v6(&mut self, port: u16, ip: u128) -> Option<Neighbor> {
        self.v6.remove(&(port, ip))
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All entries as (port, address, neighbour), IPv4 first, for reports.
    pub fn entries(&self) -> Vec<(u16, std::net::IpAddr, Neighbor)> {
        let mut v: Vec<_> = self
            .v4
            .iter()
            .map(|(&(p, ip), n)| (p, std::net::IpAddr::V4(ip.into()), *n))
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
}
