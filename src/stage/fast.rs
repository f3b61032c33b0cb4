//! Fast path: plain IPv4 forwarding in one pass over the burst.
//!
//! Most of a router's packets are untagged IPv4 with a 20-byte header, to a
//! unicast destination through a resolved next hop, and need no session
//! (no translation, no forwarding policy). For those, parse, route and
//! neighbour rewrite are done here in one loop, reading each header once,
//! and the packet is marked `Verdict::Forward` with its egress port; the
//! pipeline moves such packets straight to their transmit queue. Anything
//! else — and anything this stage is not sure about — is left untouched
//! (`Verdict::Pending`, packet bytes unchanged, no counter moved) for the
//! full pipeline, which gives it its exact verdict and drop reason.
//!
//! Every decision reuses the full pipeline's own rules (martian addresses,
//! the transport header checks of `parse`, conntrack's `deferrable`, the
//! neighbour stage's `next_hop_mac`), so a packet forwarded here leaves exactly
//! as it would have left the full pipeline; `tests/fast_path.rs` checks
//! that on a corpus of good and bad frames against the full pipeline and
//! against frames computed in the test.

use super::conntrack::deferrable;
use super::neighbor::{next_hop_mac, rewrite_l2};
use super::parse::parse_l4;
use super::{AdjKind, PortRole, Snapshot};
use crate::packet::ethernet::ETHERTYPE_IPV4;
use crate::packet::ipv4;
use crate::packet::{Burst, L3, Meta, PacketBuf, Verdict, checksum};
use crate::table::NO_ROUTE;

/// Ethernet header (14) and an option-less IPv4 header (20).
const HEAD: usize = 34;

#[derive(Debug, Default, Clone, Copy)]
pub struct FastCounters {
    /// Packets forwarded here. They count too in `parse: ipv4`,
    /// `route: forwarded` and `neighbor: rewritten`, as if the full pipeline
    /// had forwarded them.
    pub forwarded: u64,
    /// Bursts it did not try because recent ones gave it too little.
    pub skipped: u64,
}

/// Per ingress port slot: bursts to skip, and the current skip length.
#[derive(Debug, Default, Clone, Copy)]
struct Backoff {
    skip: u16,
    len: u16,
}

/// Ingress port slots for the backoff (ports beyond share them).
const SLOTS: usize = 32;
/// The longest run of bursts skipped between two tries.
const MAX_SKIP: u16 = 64;

pub struct FastPath {
    pub counters: FastCounters,
    /// Skip the fast path for a while on a port where it forwarded less
    /// than a quarter of a burst (on by default). A packet it tries and
    /// leaves costs about as much as one it forwards saves: traffic that is
    /// mostly translated (masquerade without a forwarding policy) would
    /// pay for it and gain nothing. Off, it tries every burst (tests).
    pub adaptive: bool,
    backoff: [Backoff; SLOTS],
}

impl Default for FastPath {
    fn default() -> Self {
        FastPath { counters: FastCounters::default(), adaptive: true, backoff: [Backoff::default(); SLOTS] }
    }
}

impl FastPath {
    /// Whether the fast path can forward anything under `snap`: only when
    /// no flow needs a session unless it is translated (no forwarding
    /// policy), as conntrack's deferral rule requires.
    #[inline]
    pub fn applies(snap: &Snapshot) -> bool {
        snap.acl.is_empty() && !snap.nat.track_all
    }

    /// Forwards what it can of the burst's pending packets to ports below
    /// `ports` (the transmit queues there are); returns how many.
    pub fn process<P: PacketBuf>(&mut self, snap: &Snapshot, burst: &mut Burst<P>, ports: usize) -> usize {
        if !Self::applies(snap) || burst.is_empty() {
            return 0;
        }
        // (A received burst comes from one port.)
        let slot = burst.meta(0).in_port as usize % SLOTS;
        if self.adaptive && self.backoff[slot].skip > 0 {
            self.backoff[slot].skip -= 1;
            self.counters.skipped += 1;
            return 0;
        }
        // The route lookups' first-level entries, before any is read.
        for i in 0..burst.len() {
            if let Some(h) = burst.pkt(i).data().first_chunk::<HEAD>() {
                snap.fib4.prefetch(u32::from_be_bytes([h[30], h[31], h[32], h[33]]));
            }
        }
        let ext = snap.nat.external.map(|(p, _)| p);
        let mut n = 0;
        for i in 0..burst.len() {
            let (pkt, m) = burst.pair_mut(i);
            if m.verdict == Verdict::Pending && forward(snap, pkt, m, ext, ports) {
                n += 1;
            }
        }
        self.counters.forwarded += n as u64;
        let b = &mut self.backoff[slot];
        if 4 * n < burst.len() {
            // Twice as long each time it is still not worth it.
            b.len = (2 * b.len).clamp(1, MAX_SKIP);
            b.skip = b.len;
        } else {
            b.len = 0;
        }
        n
    }
}

/// Forwards one packet if every check passes; otherwise returns false with
/// the packet unchanged and `m.verdict` still `Pending` (the other fields
/// it may have filled are all set again by the parse stage).
#[inline]
fn forward<P: PacketBuf>(snap: &Snapshot, pkt: &mut P, m: &mut Meta, ext: Option<u16>, ports: usize) -> bool {
    let Some(port) = snap.port(m.in_port) else { return false };
    let data = pkt.data();
    let Some(h) = data.first_chunk::<HEAD>() else { return false };
    // Unicast to this port's MAC, untagged IPv4, version 4 with IHL 5.
    if h[0..6] != port.mac.0 || u16::from_be_bytes([h[12], h[13]]) != ETHERTYPE_IPV4 || h[14] != 0x45 {
        return false;
    }
    let Some(ip) = h.last_chunk::<20>() else { return false };
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    // Whole, within the ingress MTU, not a fragment (DF may be set).
    if total < 20 || 14 + total > data.len() || total > port.mtu as usize || ip[6] & 0x3f != 0 || ip[7] != 0 {
        return false;
    }
    if checksum::fold(checksum::sum(ip)) != 0xffff {
        return false;
    }
    let src = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    // Martians are dropped, and multicast and broadcast delivered, by the
    // full pipeline.
    if ipv4::is_martian_source(src) || ipv4::is_martian_dest(dst) || ipv4::is_link_scope_dest(dst) {
        return false;
    }
    let ttl = ip[8];
    m.l3 = L3::Ipv4;
    m.src = src as u128;
    m.dst = dst as u128;
    m.proto = ip[9];
    m.l3_off = 14;
    m.l4_off = HEAD as u16;
    if parse_l4(&data[HEAD..14 + total], m, false).is_err() {
        return false;
    }
    // No session needed (not translated, not an ICMP error).
    if !deferrable(snap, m) {
        return false;
    }
    let nh = snap.fib4.lookup(dst);
    if nh == NO_ROUTE {
        return false;
    }
    let Some(adj) = snap.adj.get(nh as usize) else { return false };
    if !matches!(adj.kind, AdjKind::Connected | AdjKind::Gateway)
        || adj.port as usize >= ports
        || Some(adj.port) == ext
        || ttl <= 1
    {
        return false;
    }
    let Some(out) = snap.port(adj.port) else { return false };
    if out.role == PortRole::Management || total > out.mtu as usize {
        return false;
    }
    let Ok(mac) = next_hop_mac(snap, adj, dst as u128, true) else { return false };
    m.nh = nh;
    m.out_port = adj.port;
    // Committed: trim any trailer, rewrite L2 as the neighbour stage does,
    // decrement the TTL with the checksum updated as `Ipv4Packet::set_ttl`
    // does (RFC 1624; the frame holds the 34 bytes checked above).
    pkt.trim(14 + total);
    rewrite_l2(pkt, m, mac, out.mac);
    if let Some(h) = pkt.data_mut().get_mut(22..26) {
        let old = u16::from_be_bytes([ttl, h[1]]);
        let c = checksum::update16(u16::from_be_bytes([h[2], h[3]]), old, old - 0x100);
        h[0] = ttl - 1;
        h[2..4].copy_from_slice(&c.to_be_bytes());
    }
    m.verdict = Verdict::Forward;
    true
}
