//! Neighbour stage: finds the next hop's MAC and rewrites the L2 header
//! (destination MAC, the egress port's MAC as source, ethertype). Any VLAN
//! tag of the ingress frame is stripped by writing the new header right in
//! front of the IP header.

use super::{AdjKind, Adjacency, DropReason as D, Punt, Snapshot};
use crate::packet::ethernet::{ETHER_HEADER_LEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use crate::packet::{Burst, L3, Mac, Meta, PacketBuf, Verdict};

#[derive(Debug, Default, Clone, Copy)]
pub struct NeighborCounters {
    pub rewritten: u64,
}

#[derive(Default)]
pub struct Neighbor {
    pub counters: NeighborCounters,
    /// A host stack is there to resolve: packets whose next hop has no MAC
    /// yet go to it (`Punt::Resolve`) instead of being dropped.
    pub punt_unresolved: bool,
}

impl Neighbor {
    pub fn process<P: PacketBuf>(&mut self, snap: &Snapshot, burst: &mut Burst<P>) {
        for i in 0..burst.len() {
            let (pkt, m) = burst.pair_mut(i);
            if m.verdict != Verdict::Forward {
                continue;
            }
            match resolve(snap, m) {
                Ok(dst_mac) => {
                    rewrite_l2(pkt, m, dst_mac, snap.ports[m.out_port as usize].mac);
                    self.counters.rewritten += 1;
                }
                Err(D::NoNeighbor) if self.punt_unresolved => {
                    m.verdict = Verdict::Local;
                    m.punt = Punt::Resolve as u8;
                }
                Err(r) => m.drop(r as u8),
            }
        }
    }
}

#[inline]
pub(super) fn resolve(snap: &Snapshot, m: &Meta) -> Result<Mac, D> {
    let adj = snap.adj.get(m.nh as usize).ok_or(D::Internal)?;
    if snap.port(m.out_port).is_none() {
        return Err(D::Internal);
    }
    next_hop_mac(snap, adj, m.dst, m.l3 == L3::Ipv4)
}

/// The MAC of `adj`'s next hop for a packet to `dst`: the gateway's, or
/// the destination's own on a connected network.
#[inline(always)]
pub(super) fn next_hop_mac(snap: &Snapshot, adj: &Adjacency, dst: u128, v4: bool) -> Result<Mac, D> {
    if let Some(mac) = adj.mac {
        return Ok(mac);
    }
    let (ip, v4) = match adj.kind {
        AdjKind::Gateway => (adj.gw, adj.gw_v4),
        AdjKind::Connected => (dst, v4),
        _ => return Err(D::Internal),
    };
    let mac = if v4 { snap.neighbors.get_v4(adj.port, ip as u32) } else { snap.neighbors.get_v6(adj.port, ip) };
    mac.ok_or(D::NoNeighbor)
}

#[inline]
pub(super) fn rewrite_l2<P: PacketBuf>(pkt: &mut P, m: &mut Meta, dst: Mac, src: Mac) {
    let strip = m.l3_off as usize - ETHER_HEADER_LEN;
    if strip > 0 {
        pkt.adj(strip);
        m.l4_off -= strip as u16;
        m.l3_off = ETHER_HEADER_LEN as u16;
    }
    let ethertype = if m.l3 == L3::Ipv4 { ETHERTYPE_IPV4 } else { ETHERTYPE_IPV6 };
    let h = &mut pkt.data_mut()[..ETHER_HEADER_LEN];
    h[0..6].copy_from_slice(&dst.0);
    h[6..12].copy_from_slice(&src.0);
    h[12..14].copy_from_slice(&ethertype.to_be_bytes());
}
