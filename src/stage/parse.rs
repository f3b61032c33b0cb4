//! Parse stage: validates L2/L3/L4 headers once, fills the metadata every
//! later stage relies on (offsets, 5-tuple), marks ARP and other
//! control traffic local, and drops malformed frames with a reason.

use super::{DropReason as D, Snapshot};
use crate::packet::ethernet::{
    ArpPacket, ETHER_HEADER_LEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_QINQ, ETHERTYPE_VLAN,
    EthernetFrame, VlanTag,
};
use crate::packet::ipv4::{self, Ipv4Packet, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use crate::packet::ipv6::{self, Ipv6Packet};
use crate::packet::l4::{IcmpPacket, TcpPacket, UdpPacket, icmp_is_echo};
use crate::packet::{Burst, Error, L3, Meta, PacketBuf, Verdict, checksum};

/// What the parser saw, beside the drops.
#[derive(Debug, Default, Clone, Copy)]
pub struct ParseCounters {
    pub ipv4: u64,
    pub ipv6: u64,
    pub arp: u64,
    pub vlan_priority_tagged: u64,
    pub fragments: u64,
    pub ipv4_options: u64,
}

pub struct Parse {
    pub counters: ParseCounters,
    /// Check each packet first for the common case (untagged IPv4 with a
    /// 20-byte header to the port's MAC) in one read of its header, as the
    /// fast path does, and parse in full only what that does not accept
    /// (on by default). Off, every packet is parsed in full: tests compare
    /// the two.
    pub quick: bool,
}

impl Default for Parse {
    fn default() -> Self {
        Parse { counters: ParseCounters::default(), quick: true }
    }
}

impl Parse {
    pub fn process<P: PacketBuf>(&mut self, snap: &Snapshot, burst: &mut Burst<P>) {
        if burst.is_empty() {
            return;
        }
        // (A received burst comes from one port; `head` looks a packet's
        // own up when it differs.)
        let ingress = Ingress::of(snap, burst.meta(0).in_port);
        for i in 0..burst.len() {
            let (pkt, meta) = burst.pair_mut(i);
            if meta.verdict != Verdict::Pending {
                continue;
            }
            // Most packets are untagged IPv4 with a 20-byte header: the
            // same checks in one read of the header, as the fast path
            // makes them. Anything they do not accept is parsed in full,
            // which sets every field again and finds the drop reason.
            if self.quick
                && let Some(h) = head(snap, ingress, pkt, meta)
            {
                self.counters.ipv4 += 1;
                pkt.trim(14 + h.total as usize);
                continue;
            }
            let r = self.parse_one(snap, pkt, meta);
            if let Err(reason) = r {
                meta.drop(reason as u8);
            }
        }
    }

    fn parse_one<P: PacketBuf>(&mut self, snap: &Snapshot, pkt: &mut P, m: &mut Meta) -> Result<(), D> {
        let data = pkt.data();
        let eth = EthernetFrame::new_checked(data).map_err(|_| D::Runt)?;
        let dst = eth.dst();
        let port = snap.port(m.in_port);
        if !dst.is_multicast() && port.is_none_or(|p| p.mac != dst) {
            return Err(D::NotForUs);
        }
        let mut ethertype = eth.ethertype();
        let mut off = ETHER_HEADER_LEN;
        // Up to two tags (802.1ad outer + 802.1Q inner). Only priority tags
        // (VID 0) are accepted: no interface is configured with VLANs.
        for _ in 0..2 {
            if ethertype != ETHERTYPE_VLAN && ethertype != ETHERTYPE_QINQ {
                break;
            }
            let tag = VlanTag::new_checked(&data[off..]).map_err(|_| D::Runt)?;
            if tag.vid() != 0 {
                m.vlan = tag.vid();
                return Err(D::UnknownVlan);
            }
            self.counters.vlan_priority_tagged += 1;
            ethertype = tag.inner_ethertype();
            off += 4;
        }
        m.l3_off = off as u16;
        let mtu = port.map_or(1500, |p| p.mtu) as usize;
        match ethertype {
            ETHERTYPE_IPV4 => {
                self.counters.ipv4 += 1;
                self.parse_v4(pkt, m, off, mtu)
            }
            ETHERTYPE_IPV6 => {
                self.counters.ipv6 += 1;
                self.parse_v6(pkt, m, off, mtu)
            }
            ETHERTYPE_ARP => {
                self.counters.arp += 1;
                let arp = ArpPacket::new_checked(&data[off..]).map_err(|_| D::ArpMalformed)?;
                m.l3 = L3::Arp;
                m.src = arp.sender_ip() as u128;
                m.dst = arp.target_ip() as u128;
                m.verdict = Verdict::Local;
                Ok(())
            }
            _ => Err(D::UnsupportedEthertype),
        }
    }

    fn parse_v4<P: PacketBuf>(&mut self, pkt: &mut P, m: &mut Meta, off: usize, mtu: usize) -> Result<(), D> {
        let data = pkt.data();
        let ip = Ipv4Packet::new_checked(&data[off..]).map_err(|e| match e {
            Error::BadVersion => D::Ipv4BadVersion,
            Error::BadHeaderLen => D::Ipv4BadHeaderLen,
            Error::BadTotalLen => D::Ipv4BadTotalLen,
            _ => D::Ipv4Truncated,
        })?;
        if !(pkt.ipv4_checksum_verified() || ip.verify_checksum()) {
            return Err(D::Ipv4BadChecksum);
        }
        let total = ip.total_len();
        if total > mtu {
            return Err(D::IngressMtu);
        }
        let hl = ip.header_len();
        if hl > 20 {
            self.counters.ipv4_options += 1;
            let o = ip.parse_options().map_err(|_| D::Ipv4BadOptions)?;
            if o.source_route {
                return Err(D::Ipv4SourceRoute);
            }
        }
        let (src, dst) = (ip.src(), ip.dst());
        if ipv4::is_martian_source(src) {
            return Err(D::Ipv4MartianSource);
        }
        if ipv4::is_martian_dest(dst) {
            return Err(D::Ipv4MartianDest);
        }
        m.l3 = L3::Ipv4;
        m.src = src as u128;
        m.dst = dst as u128;
        // Multicast and the limited broadcast are link-scope: for the host
        // stack, whatever the route table says (no multicast routing).
        if ipv4::is_link_scope_dest(dst) {
            m.verdict = Verdict::Local;
        }
        m.proto = ip.protocol();
        let l4 = off + hl;
        m.l4_off = l4 as u16;
        let frag_off = ip.frag_offset();
        if ip.is_fragment() {
            self.counters.fragments += 1;
            m.frag = if frag_off == 0 { 1 } else { 2 };
            m.frag_id = ip.ident() as u32;
            // RFC 1858: a fragment at offset 8 can only exist to overwrite
            // the TCP flags of the first fragment.
            if frag_off == 8 && m.proto == PROTO_TCP {
                return Err(D::TinyFragment);
            }
        }
        let l4_end = off + total;
        if frag_off == 0 {
            parse_l4(&data[l4..l4_end], m, m.frag == 1)?;
        }
        pkt.trim(l4_end);
        Ok(())
    }

    fn parse_v6<P: PacketBuf>(&mut self, pkt: &mut P, m: &mut Meta, off: usize, mtu: usize) -> Result<(), D> {
        let data = pkt.data();
        let ip = Ipv6Packet::new_checked(&data[off..]).map_err(|e| match e {
            Error::BadVersion => D::Ipv6BadVersion,
            Error::BadTotalLen => D::Ipv6BadPayloadLen,
            _ => D::Ipv6Truncated,
        })?;
        let total = ip.total_len();
        if total > mtu {
            return Err(D::IngressMtu);
        }
        let (src, dst) = (ip.src(), ip.dst());
        if ipv6::is_multicast(src) || src == 1 || ipv6::is_v4_mapped(src) {
            return Err(D::Ipv6MartianSource);
        }
        if ipv6::is_loopback_or_unspecified(dst) || ipv6::is_v4_mapped(dst) {
            return Err(D::Ipv6MartianDest);
        }
        let ext = ip.walk_extensions().map_err(|e| match e {
            Error::ExtChainTooLong => D::Ipv6ExtChainTooLong,
            Error::DeprecatedRoutingHeader => D::Ipv6Rh0,
            Error::BadExtHeader => D::Ipv6BadExtHeader,
            _ => D::Ipv6Truncated,
        })?;
        m.l3 = L3::Ipv6;
        m.src = src;
        m.dst = dst;
        m.proto = ext.proto;
        let l4 = off + ext.l4_off;
        m.l4_off = l4 as u16;
        let l4_end = off + total;
        let first = match ext.frag {
            Some((o, more)) => {
                self.counters.fragments += 1;
                m.frag = if o == 0 { 1 } else { 2 };
                m.frag_id = ext.frag_id;
                o == 0 && more
            }
            None => false,
        };
        if m.frag != 2 {
            parse_l4(&data[l4..l4_end], m, first)?;
        }
        pkt.trim(l4_end);
        Ok(())
    }
}

/// Reads ports (or the ICMP echo identifier) of an unfragmented packet or a
/// first fragment. A first fragment too short for its transport header is a
/// tiny fragment; an unfragmented one is truncated.
#[inline]
pub(super) fn parse_l4(l4: &[u8], m: &mut Meta, first_fragment: bool) -> Result<(), D> {
    let short = if first_fragment { D::TinyFragment } else { D::L4Truncated };
    match m.proto {
        PROTO_TCP => {
            let t = TcpPacket::new_checked(l4).map_err(|e| match e {
                Error::BadHeaderLen => D::TcpBadHeaderLen,
                _ => short,
            })?;
            m.sport = t.src_port();
            m.dport = t.dst_port();
            m.tcp_flags = t.flags();
        }
        PROTO_UDP => {
            // A first fragment's UDP length covers the whole datagram, so
            // only the 8-byte header is checked there.
            if first_fragment {
                if l4.len() < 8 {
                    return Err(short);
                }
                m.sport = u16::from_be_bytes([l4[0], l4[1]]);
                m.dport = u16::from_be_bytes([l4[2], l4[3]]);
            } else {
                let u = UdpPacket::new_checked(l4).map_err(|e| match e {
                    Error::BadTotalLen => D::UdpBadLength,
                    _ => short,
                })?;
                m.sport = u.src_port();
                m.dport = u.dst_port();
            }
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let c = IcmpPacket::new_checked(l4).map_err(|_| short)?;
            m.icmp_type = c.msg_type();
            let echo =
                if m.proto == PROTO_ICMP { icmp_is_echo(c.msg_type()) } else { matches!(c.msg_type(), 128 | 129) };
            if echo {
                m.sport = c.echo_ident();
                m.dport = c.echo_ident();
            } else {
                m.sport = (c.msg_type() as u16) << 8 | c.code() as u16;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Ethernet header (14) and an option-less IPv4 header (20).
pub(super) const HEAD: usize = 34;
/// The destination MAC: the first 6 bytes of a frame read as a word.
const MAC_MASK: u64 = u64::from_ne_bytes([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]);
/// EtherType IPv4 and version 4 with a 20-byte header, as the 3 bytes from
/// offset 12 read as a word; the mask keeps them.
const IPV4_IHL5: u64 = u64::from_ne_bytes([0x08, 0x00, 0x45, 0, 0, 0, 0, 0]);
const _: () = assert!(ETHERTYPE_IPV4 == 0x0800);
const IPV4_IHL5_MASK: u64 = u64::from_ne_bytes([0xff, 0xff, 0xff, 0, 0, 0, 0, 0]);
/// More fragments and the fragment offset, as the flags word lies in the
/// header (DF may be set).
const FRAGMENT_MASK: u16 = u16::from_ne_bytes([0x3f, 0xff]);

/// What `head` found: the TTL, and the IP total length (a longer frame
/// has a trailer, cut when the packet is forwarded).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Head {
    pub(super) ttl: u8,
    pub(super) total: u16,
}

/// The checks of the parse stage for an untagged IPv4 packet with a
/// 20-byte header to this port's MAC, unfragmented, with a good checksum
/// and transport header, from and to no martian or link-scope address, in
/// one read of the header (the parse stage's common case, and the fast
/// path's): fills the metadata the later stages read and returns what it
/// found; None when the packet needs the full parse (`m.verdict` still
/// `Pending`, the other fields it may have filled are all set again by
/// `Parse::parse_one`).
#[inline(always)]
pub(super) fn head<P: PacketBuf>(snap: &Snapshot, ingress: Option<Ingress>, pkt: &P, m: &mut Meta) -> Option<Head> {
    let port = match ingress {
        Some(i) if i.port == m.in_port => i,
        _ => Ingress::of(snap, m.in_port)?,
    };
    let data = pkt.data();
    let h = data.first_chunk::<HEAD>()?;
    // Unicast to this port's MAC, untagged IPv4, version 4 with IHL 5: the
    // MAC as the low 48 bits of a word, the EtherType and the version byte
    // as the low 24 bits of another (both in machine order).
    let word = |at: usize| u64::from_ne_bytes(*h[at..].first_chunk::<8>().unwrap_or(&[0; 8]));
    if word(0) & MAC_MASK != port.mac_word || word(12) & IPV4_IHL5_MASK != IPV4_IHL5 {
        return None;
    }
    let ip = h.last_chunk::<20>()?;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    // Whole, within the ingress MTU, not a fragment (DF may be set).
    if total < 20
        || 14 + total > data.len()
        || total > port.mtu as usize
        || u16::from_ne_bytes([ip[6], ip[7]]) & FRAGMENT_MASK != 0
    {
        return None;
    }
    if !(pkt.ipv4_checksum_verified() || checksum::verify20(ip)) {
        return None;
    }
    let src = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    // Martians are dropped, and multicast and broadcast delivered, by the
    // full pipeline.
    if !ipv4::is_forwardable_unicast(src, dst) {
        return None;
    }
    let ttl = ip[8];
    m.l3 = L3::Ipv4;
    m.src = src as u128;
    m.dst = dst as u128;
    m.proto = ip[9];
    m.l3_off = 14;
    m.l4_off = HEAD as u16;
    m.frag = 0;
    m.xlated = false;
    parse_l4(&data[HEAD..14 + total], m, false).ok()?;
    Some(Head { ttl, total: total as u16 })
}

/// The port a burst was received on, as `head` checks it (looked up once
/// per burst).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ingress {
    port: u16,
    /// The port's MAC as the first 6 bytes of a frame read as a word.
    mac_word: u64,
    mtu: u16,
}

impl Ingress {
    #[inline(always)]
    pub(super) fn of(snap: &Snapshot, port: u16) -> Option<Ingress> {
        snap.port(port).map(|p| {
            let mut w = [0; 8];
            w[..6].copy_from_slice(&p.mac.0);
            Ingress { port, mac_word: u64::from_ne_bytes(w), mtu: p.mtu }
        })
    }
}
