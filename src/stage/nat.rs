//! Address and port rewriting for NAT, with incremental checksums
//! (RFC 1624), and the translation of ICMP errors that quote a translated
//! packet (RFC 5508 section 4.2).

use crate::packet::checksum::{checksum, update16, update32};
use crate::packet::ipv4::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::packet::l4::icmp_is_echo;
use crate::table::session::FlowKey;

/// A 4-tuple of an IPv4 packet (ports are the ICMP echo identifier for
/// echo, both set to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple4 {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
}

impl Tuple4 {
    /// The packet that `key` describes, as it would look on the wire.
    #[inline]
    pub fn of(key: &FlowKey) -> Tuple4 {
        Tuple4 { src: key.src[3], dst: key.dst[3], sport: key.sport, dport: key.dport }
    }
    #[inline]
    pub fn reversed(self) -> Tuple4 {
        Tuple4 { src: self.dst, dst: self.src, sport: self.dport, dport: self.sport }
    }
}

#[inline]
fn rd16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
#[inline]
fn wr16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_be_bytes());
}
#[inline]
fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
#[inline]
fn wr32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_be_bytes());
}

/// Rewrites an IPv4 packet from `from` to `to`: addresses in the header
/// (and its checksum), and for an unfragmented packet or a first fragment
/// the TCP/UDP ports or the ICMP echo identifier with the transport
/// checksum (whose pseudo-header covers the addresses). A later fragment
/// (`first == false`) only has its addresses rewritten.
///
/// The caller has validated the headers (parse stage): `l3`/`l4` are in
/// bounds and the transport header is complete when `has_l4`.
#[inline]
pub fn rewrite_v4(data: &mut [u8], l3: usize, l4: usize, proto: u8, has_l4: bool, from: Tuple4, to: Tuple4) {
    let mut ipc = rd16(data, l3 + 10);
    if from.src != to.src {
        ipc = update32(ipc, from.src, to.src);
        wr32(data, l3 + 12, to.src);
    }
    if from.dst != to.dst {
        ipc = update32(ipc, from.dst, to.dst);
        wr32(data, l3 + 16, to.dst);
    }
    wr16(data, l3 + 10, ipc);
    if !has_l4 {
        return;
    }
    match proto {
        PROTO_TCP | PROTO_UDP => {
            let co = l4 + if proto == PROTO_TCP { 16 } else { 6 };
            let mut c = rd16(data, co);
            let udp_none = proto == PROTO_UDP && c == 0;
            if !udp_none {
                if from.src != to.src {
                    c = update32(c, from.src, to.src);
                }
                if from.dst != to.dst {
                    c = update32(c, from.dst, to.dst);
                }
                if from.sport != to.sport {
                    c = update16(c, from.sport, to.sport);
                }
                if from.dport != to.dport {
                    c = update16(c, from.dport, to.dport);
                }
                if proto == PROTO_UDP && c == 0 {
                    c = 0xffff;
                }
                wr16(data, co, c);
            }
            wr16(data, l4, to.sport);
            wr16(data, l4 + 2, to.dport);
        }
        PROTO_ICMP if icmp_is_echo(data[l4]) && from.sport != to.sport => {
            // ICMP checksums have no pseudo-header: only the identifier.
            let c = update16(rd16(data, l4 + 2), from.sport, to.sport);
            wr16(data, l4 + 2, c);
            wr16(data, l4 + 4, to.sport);
        }
        _ => {}
    }
}

/// The packet an ICMPv4 error quotes, as far as it is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quoted {
    /// Offset of the quoted IP header in the frame.
    pub l3: usize,
    pub l4: usize,
    pub proto: u8,
    pub tuple: Tuple4,
    /// Bytes of the quoted transport header present.
    pub l4_len: usize,
}

/// Finds the packet quoted by the ICMPv4 error at `icmp` (a frame offset;
/// the message runs to `end`). None when the quote is not an IPv4 header
/// followed by the first 8 bytes of a TCP, UDP or ICMP echo header of a
/// first fragment (RFC 792 guarantees those 8 bytes).
pub fn quoted_v4(data: &[u8], icmp: usize, end: usize) -> Option<Quoted> {
    let l3 = icmp + 8;
    if end > data.len() || end < l3 + 20 || data[l3] >> 4 != 4 {
        return None;
    }
    let hl = (data[l3] & 0x0f) as usize * 4;
    if hl < 20 || end < l3 + hl + 8 {
        return None;
    }
    if rd16(data, l3 + 6) & 0x1fff != 0 {
        return None; // a later fragment quotes no ports
    }
    let l4 = l3 + hl;
    let proto = data[l3 + 9];
    let (src, dst) = (rd32(data, l3 + 12), rd32(data, l3 + 16));
    let (sport, dport) = match proto {
        PROTO_TCP | PROTO_UDP => (rd16(data, l4), rd16(data, l4 + 2)),
        PROTO_ICMP if icmp_is_echo(data[l4]) => (rd16(data, l4 + 4), rd16(data, l4 + 4)),
        _ => return None,
    };
    Some(Quoted { l3, l4, proto, tuple: Tuple4 { src, dst, sport, dport }, l4_len: end - l4 })
}

/// Translates an ICMPv4 error in place: the quoted packet from `q.tuple`
/// to `inner`, the outer addresses from `outer_from` to `outer_to`; the
/// quoted header's checksum is recomputed, its transport checksum updated
/// when present, and the ICMP checksum recomputed over the message.
#[allow(clippy::too_many_arguments)]
pub fn translate_icmp_error(
    data: &mut [u8],
    l3: usize,
    icmp: usize,
    end: usize,
    q: &Quoted,
    inner: Tuple4,
    outer_from: Tuple4,
    outer_to: Tuple4,
) {
    let from = q.tuple;
    // The quoted transport header: ports and its checksum, if quoted whole.
    match q.proto {
        PROTO_TCP | PROTO_UDP => {
            let co = q.l4 + if q.proto == PROTO_TCP { 16 } else { 6 };
            if co + 2 <= end {
                let mut c = rd16(data, co);
                if !(q.proto == PROTO_UDP && c == 0) {
                    c = update32(c, from.src, inner.src);
                    c = update32(c, from.dst, inner.dst);
                    c = update16(c, from.sport, inner.sport);
                    c = update16(c, from.dport, inner.dport);
                    if q.proto == PROTO_UDP && c == 0 {
                        c = 0xffff;
                    }
                    wr16(data, co, c);
                }
            }
            wr16(data, q.l4, inner.sport);
            wr16(data, q.l4 + 2, inner.dport);
        }
        _ => {
            if from.sport != inner.sport {
                let c = update16(rd16(data, q.l4 + 2), from.sport, inner.sport);
                wr16(data, q.l4 + 2, c);
                wr16(data, q.l4 + 4, inner.sport);
            }
        }
    }
    wr32(data, q.l3 + 12, inner.src);
    wr32(data, q.l3 + 16, inner.dst);
    let hl = (data[q.l3] & 0x0f) as usize * 4;
    wr16(data, q.l3 + 10, 0);
    let c = checksum(&data[q.l3..q.l3 + hl]);
    wr16(data, q.l3 + 10, c);
    // The ICMP message as a whole.
    wr16(data, icmp + 2, 0);
    let c = checksum(&data[icmp..end]);
    wr16(data, icmp + 2, c);
    // The outer header (no transport part of its own to fix).
    rewrite_v4(data, l3, icmp, PROTO_ICMP, false, outer_from, outer_to);
}
