//! Route stage: longest-prefix match (IPv4 and IPv6), local delivery, TTL /
//! hop-limit check and decrement, ECMP by flow hash, egress MTU.
//!
//! The IPv4 lookups of a burst are done in two passes: the first prefetches
//! every first-level entry, the second reads them, so the cache misses of a
//! large table overlap instead of queueing one after another.

use super::{AdjKind, DropReason as D, PortRole, Punt, Snapshot};
use crate::packet::ipv6::{self, Ipv6Packet};
use crate::packet::{Burst, L3, Meta, PacketBuf, Verdict, checksum};
use crate::table::NO_ROUTE;

#[derive(Debug, Default, Clone, Copy)]
pub struct RouteCounters {
    pub forwarded: u64,
    pub local: u64,
    pub ecmp: u64,
}

#[derive(Default)]
pub struct Route {
    pub counters: RouteCounters,
}

impl Route {
    pub fn process<P: PacketBuf>(&mut self, snap: &Snapshot, burst: &mut Burst<P>) {
        for m in burst.metas() {
            if m.verdict == Verdict::Pending && m.l3 == L3::Ipv4 {
                snap.fib4.prefetch(m.dst as u32);
            }
        }
        for i in 0..burst.len() {
            let (pkt, m) = burst.pair_mut(i);
            if m.verdict != Verdict::Pending {
                continue;
            }
            let r = match m.l3 {
                L3::Ipv4 => self.route_v4(snap, pkt, m),
                L3::Ipv6 => self.route_v6(snap, pkt, m),
                _ => Err(D::Internal),
            };
            if let Err(reason) = r {
                m.drop(reason as u8);
            }
        }
    }

    /// Resolves an adjacency index to the one used for this packet (ECMP
    /// member by flow hash), or local/drop.
    #[inline]
    fn resolve(&mut self, snap: &Snapshot, m: &mut Meta, nh: u32) -> Result<Option<u32>, D> {
        if nh == NO_ROUTE {
            return Err(D::NoRoute);
        }
        let adj = snap.adj.get(nh as usize).ok_or(D::Internal)?;
        match adj.kind {
            AdjKind::Local => {
                m.verdict = Verdict::Local;
                self.counters.local += 1;
                Ok(None)
            }
            AdjKind::Blackhole => Err(D::Blackhole),
            AdjKind::Connected | AdjKind::Gateway => Ok(Some(nh)),
            AdjKind::Ecmp => {
                self.counters.ecmp += 1;
                let k = adj.ecmp_start + (m.flow_hash() >> 1) % adj.ecmp_len.max(1);
                snap.ecmp.get(k as usize).copied().map(Some).ok_or(D::Internal)
            }
        }
    }

    /// Egress checks shared by both families; returns the egress MTU.
    #[inline]
    fn egress(&mut self, snap: &Snapshot, m: &mut Meta, nh: u32) -> Result<usize, D> {
        let adj = snap.adj.get(nh as usize).ok_or(D::Internal)?;
        let out = snap.port(adj.port).ok_or(D::Internal)?;
        if out.role == PortRole::Management && m.in_port != adj.port {
            return Err(D::ToManagement);
        }
        m.nh = nh;
        m.out_port = adj.port;
        Ok(out.mtu as usize)
    }

    /// The header was checked by the parse stage (version, length, total
    /// length within the frame), so it is read in place: the TTL, the total
    /// length and DF, and the TTL decremented with its checksum update
    /// (`checksum::ttl_decremented`, RFC 1624), as the fast path does.
    fn route_v4<P: PacketBuf>(&mut self, snap: &Snapshot, pkt: &mut P, m: &mut Meta) -> Result<(), D> {
        let nh = snap.fib4.lookup(m.dst as u32);
        let Some(nh) = self.resolve(snap, m, nh)? else { return Ok(()) };
        let l3 = m.l3_off as usize;
        let ip = pkt.data_mut().get_mut(l3..).and_then(|d| d.first_chunk_mut::<20>()).ok_or(D::Internal)?;
        let ttl = ip[8];
        if ttl <= 1 {
            return Err(D::TtlExpired);
        }
        let mtu = self.egress(snap, m, nh)?;
        if u16::from_be_bytes([ip[2], ip[3]]) as usize > mtu {
            if ip[6] & 0x40 != 0 {
                return Err(D::MtuExceeded);
            }
            m.punt = Punt::Fragment as u8;
        }
        ip[8] = ttl - 1;
        let c = checksum::ttl_decremented([ip[10], ip[11]]);
        ip[10..12].copy_from_slice(&c);
        m.verdict = Verdict::Forward;
        self.counters.forwarded += 1;
        Ok(())
    }

    fn route_v6<P: PacketBuf>(&mut self, snap: &Snapshot, pkt: &mut P, m: &mut Meta) -> Result<(), D> {
        let nh = snap.fib6.lookup(m.dst);
        let Some(nh) = self.resolve(snap, m, nh)? else { return Ok(()) };
        // Beyond this point the packet leaves its link.
        if ipv6::is_link_local(m.src) {
            return Err(D::LinkLocalSource);
        }
        if m.src == 0 {
            return Err(D::Ipv6MartianSource);
        }
        let l3 = m.l3_off as usize;
        let mut ip = Ipv6Packet::new_checked(&mut pkt.data_mut()[l3..]).map_err(|_| D::Internal)?;
        if ip.hop_limit() <= 1 {
            return Err(D::HopLimitExpired);
        }
        let mtu = self.egress(snap, m, nh)?;
        if ip.total_len() > mtu {
            return Err(D::PacketTooBig);
        }
        ip.set_hop_limit(ip.hop_limit() - 1);
        m.verdict = Verdict::Forward;
        self.counters.forwarded += 1;
        Ok(())
    }
}
