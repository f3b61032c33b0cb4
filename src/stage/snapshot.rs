//! The immutable configuration the workers read: built whole by the control
//! thread, published with one pointer swap, read once per burst.

use super::lb::LbConfig;
use crate::packet::Mac;
use crate::table::addrmap::AddrMap;
use crate::table::{Acl, Lpm4, Lpm6, NeighborSource, NeighborTable};
use std::sync::Arc;

/// What a port is for, from the network type bound to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortRole {
    External,
    Internal,
    Management,
    /// Isolated or load-balancer networks, or a port with no network.
    #[default]
    Other,
}

/// One port as the stages see it.
#[derive(Debug, Clone)]
pub struct PortInfo {
    pub name: String,
    pub mac: Mac,
    /// IP MTU of the link (largest IP packet sent without fragmenting).
    pub mtu: u16,
    pub role: PortRole,
    /// Configured (bound to a network) and administratively up.
    pub up: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdjKind {
    /// For the appliance: punt to the exception path.
    Local,
    /// On-link destination: resolve the packet's own destination address.
    Connected,
    /// Through a gateway on `port`.
    Gateway,
    /// Several gateways: pick member `ecmp[start + hash % len]`.
    Ecmp,
    /// Drop (e.g. a route whose next hop is the router itself).
    Blackhole,
}

/// Where a route leads (an adjacency in router terms).
#[derive(Debug, Clone, Copy)]
pub struct Adjacency {
    pub kind: AdjKind,
    pub port: u16,
    /// Gateway address (IPv4 in the low 32 bits); 0 when not a gateway.
    pub gw: u128,
    pub gw_v4: bool,
    /// Destination MAC resolved when the snapshot was built (gateways).
    pub mac: Option<Mac>,
    pub ecmp_start: u32,
    pub ecmp_len: u32,
}

impl Adjacency {
    pub fn local() -> Self {
        Adjacency { kind: AdjKind::Local, port: 0, gw: 0, gw_v4: false, mac: None, ecmp_start: 0, ecmp_len: 0 }
    }
    pub fn blackhole() -> Self {
        Adjacency { kind: AdjKind::Blackhole, ..Self::local() }
    }
    pub fn connected(port: u16) -> Self {
        Adjacency { kind: AdjKind::Connected, port, ..Self::local() }
    }
}

/// Everything a worker needs to forward, frozen. The large tables are
/// shared, so a copy with new neighbours (ARP/ND learning) is cheap.
#[derive(Clone)]
pub struct Snapshot {
    /// Increases by one with every published snapshot.
    pub generation: u64,
    pub ports: Vec<PortInfo>,
    pub fib4: Arc<Lpm4>,
    pub fib6: Arc<Lpm6>,
    /// Adjacencies; route tables hold indices into this.
    pub adj: Vec<Adjacency>,
    /// ECMP group members (adjacency indices).
    pub ecmp: Vec<u32>,
    pub neighbors: NeighborTable,
    pub nat: NatConfig,
    /// The forwarding policy (`anchors`), evaluated once per new flow.
    pub acl: Arc<Acl>,
    /// The router's own addresses and the port each belongs to (INPUT policy).
    pub own: Vec<(u128, bool, u16)>,
    /// The load balancer (`services.loadbalancer`); empty without one.
    pub lb: Arc<LbConfig>,
}

impl Snapshot {
    #[inline]
    pub fn port(&self, p: u16) -> Option<&PortInfo> {
        self.ports.get(p as usize)
    }

    /// A copy whose learned neighbours are `learned` (configured entries
    /// stay and win), with the gateways' MACs resolved again.
    pub fn with_learned(&self, learned: &NeighborTable) -> Snapshot {
        let mut s = self.clone();
        let mut n = NeighborTable::new();
        for (port, ip, e) in self.neighbors.entries() {
            if e.source == NeighborSource::Static {
                n.insert(port, ip, e.mac, NeighborSource::Static);
            }
        }
        for (port, ip, e) in learned.entries() {
            n.insert(port, ip, e.mac, NeighborSource::Learned);
        }
        for a in s.adj.iter_mut().filter(|a| a.kind == AdjKind::Gateway) {
            a.mac = if a.gw_v4 { n.get_v4(a.port, a.gw as u32) } else { n.get_v6(a.port, a.gw) };
        }
        s.neighbors = n;
        s
    }

    /// Where IPv4 traffic to `dst` leaves, for the control side and flow
    /// steering (not the route stage): the adjacency index and the
    /// adjacency, an ECMP group standing for its first member; None unless
    /// it leaves by a port (local, blackhole).
    pub fn egress_v4(&self, dst: u32) -> Option<(u32, Adjacency)> {
        let mut idx = self.fib4.lookup(dst);
        let mut a = *self.adj.get(idx as usize)?;
        if a.kind == AdjKind::Ecmp {
            idx = *self.ecmp.get(a.ecmp_start as usize)?;
            a = *self.adj.get(idx as usize)?;
        }
        matches!(a.kind, AdjKind::Connected | AdjKind::Gateway).then_some((idx, a))
    }

    /// Whether the router answers ARP for `ip` on port `p`: one of its IPv4
    /// addresses there, or a floating IP when `p` is the external port.
    #[inline]
    pub fn answers_arp_for(&self, p: u16, ip: u32) -> bool {
        self.own.iter().any(|&(a, v4, q)| v4 && q == p && a as u32 == ip)
            || self.nat.external.is_some_and(|(ext, _)| ext == p) && self.nat.dnat.contains_key(&ip)
    }

    /// The router's first IPv4 address on port `p`.
    #[inline]
    pub fn port_addr_v4(&self, p: u16) -> Option<u32> {
        self.own.iter().find(|&&(_, v4, q)| v4 && q == p).map(|&(a, _, _)| a as u32)
    }

    /// A copy whose load-balancer members have the health in `down`.
    pub fn with_lb_health(&self, down: &std::collections::HashSet<String>) -> Snapshot {
        let mut s = self.clone();
        if !self.lb.members.is_empty() {
            s.lb = Arc::new(self.lb.with_health(down));
        }
        s
    }
}

/// RFC 4787 filtering of inbound packets to a masquerade mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filtering {
    /// Only replies from the exact remote address and port (Linux
    /// masquerade's behaviour; the default).
    #[default]
    AddressAndPortDependent,
    /// Any remote may reach an internal endpoint through its live mapping
    /// (REQ-8's transparent mode; new inbound flows still pass the anchors).
    EndpointIndependent,
}

impl std::str::FromStr for Filtering {
    type Err = String;
    /// The names the runtime file and `replay --filtering` use.
    fn from_str(s: &str) -> Result<Filtering, String> {
        match s {
            "address-and-port-dependent" => Ok(Filtering::AddressAndPortDependent),
            "endpoint-independent" => Ok(Filtering::EndpointIndependent),
            f => Err(format!("'{f}' is not address-and-port-dependent or endpoint-independent")),
        }
    }
}

/// IPv4 address translation, compiled from the document.
#[derive(Debug, Clone, Default)]
pub struct NatConfig {
    /// The external port and its masquerade address (its first IPv4 address).
    pub external: Option<(u16, u32)>,
    /// Floating IP → fixed IP (DNAT).
    pub dnat: AddrMap,
    /// Fixed IP → floating IP (SNAT leaving by the external port).
    pub snat: AddrMap,
    pub filtering: Filtering,
    /// Per port: TCP to 169.254.169.254:80 goes to the metadata proxy.
    pub metadata: Vec<bool>,
    /// Track flows that need no translation too (a forwarding policy exists).
    pub track_all: bool,
}

impl NatConfig {
    #[inline]
    pub fn is_masquerade_addr(&self, a: u32) -> bool {
        self.external.is_some_and(|(_, e)| e == a)
    }
}
