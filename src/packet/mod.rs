//! Packet buffers, bursts, zero-copy header views and checksums.
//!
//! Views follow smoltcp's shape: `new_checked` validates lengths once, then
//! accessors cannot fail; setters on mutable views keep checksums right by
//! incremental update. Nothing here knows about tables, stages or ports.

pub mod buf;
pub mod checksum;
pub mod ethernet;
pub mod frag;
pub mod huge;
pub mod ipv4;
pub mod ipv6;
pub mod l4;

pub use buf::{
    Burst, DEFAULT_BURST, L3, MAX_BURST, MAX_FRAME, MAX_MTU, Meta, PacketBuf, Pkt, Pool, Verdict, WorkerBuf, port_mtu,
};
pub use ethernet::Mac;

/// Why a header view refused a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("truncated header")]
    Truncated,
    #[error("malformed header")]
    Malformed,
    #[error("wrong IP version")]
    BadVersion,
    #[error("bad header length")]
    BadHeaderLen,
    #[error("bad total length")]
    BadTotalLen,
    #[error("malformed options")]
    BadOptions,
    #[error("misplaced or malformed extension header")]
    BadExtHeader,
    #[error("extension header chain too long")]
    ExtChainTooLong,
    #[error("type 0 routing header (RFC 5095)")]
    DeprecatedRoutingHeader,
}

/// Symmetric flow hash of a 5-tuple: both directions of a flow get the same
/// value, so RSS and ECMP keep a connection on one core and one path.
#[inline]
pub fn flow_hash(src: u128, dst: u128, sport: u16, dport: u16, proto: u8) -> u32 {
    #[inline]
    fn end(a: u128, p: u16) -> u64 {
        let x = (a as u64) ^ ((a >> 64) as u64).rotate_left(29) ^ ((p as u64) << 48);
        x.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
    let (a, b) = (end(src, sport), end(dst, dport));
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let mut h = lo ^ hi.rotate_left(32) ^ proto as u64;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h as u32
}

/// The flow hash of a raw frame, as a NIC's RSS would compute it: used to
/// spread frames over queues where no hardware does it. Frames that do not
/// parse hash to 0 (one queue), like non-IP traffic on a real NIC.
pub fn rss_hash(frame: &[u8]) -> u32 {
    let Ok(eth) = ethernet::EthernetFrame::new_checked(frame) else { return 0 };
    let mut t = eth.ethertype();
    let mut off = ethernet::ETHER_HEADER_LEN;
    while (t == ethernet::ETHERTYPE_VLAN || t == ethernet::ETHERTYPE_QINQ) && frame.len() >= off + 4 {
        t = u16::from_be_bytes([frame[off + 2], frame[off + 3]]);
        off += 4;
    }
    let (src, dst, proto, l4) = match t {
        ethernet::ETHERTYPE_IPV4 => match ipv4::Ipv4Packet::new_checked(&frame[off..]) {
            Ok(ip) if ip.frag_offset() == 0 && !ip.more_frags() => {
                (ip.src() as u128, ip.dst() as u128, ip.protocol(), Some(off + ip.header_len()))
            }
            Ok(ip) => (ip.src() as u128, ip.dst() as u128, ip.protocol(), None),
            Err(_) => return 0,
        },
        ethernet::ETHERTYPE_IPV6 => match ipv6::Ipv6Packet::new_checked(&frame[off..]) {
            Ok(ip) => match ip.walk_extensions() {
                Ok(e) if e.frag.is_none() => (ip.src(), ip.dst(), e.proto, Some(off + e.l4_off)),
                _ => (ip.src(), ip.dst(), 0, None),
            },
            Err(_) => return 0,
        },
        _ => return 0,
    };
    let (sp, dp) = match l4 {
        Some(o) if (proto == ipv4::PROTO_TCP || proto == ipv4::PROTO_UDP) && frame.len() >= o + 4 => {
            (u16::from_be_bytes([frame[o], frame[o + 1]]), u16::from_be_bytes([frame[o + 2], frame[o + 3]]))
        }
        _ => (0, 0),
    };
    flow_hash(src, dst, sp, dp, proto)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_is_symmetric_and_spreads() {
        let h1 = flow_hash(0x0a00_0001, 0x0808_0808, 40000, 53, 17);
        let h2 = flow_hash(0x0808_0808, 0x0a00_0001, 53, 40000, 17);
        assert_eq!(h1, h2);
        assert_ne!(h1, flow_hash(0x0a00_0001, 0x0808_0808, 40001, 53, 17));
        assert_ne!(h1, flow_hash(0x0a00_0001, 0x0808_0808, 40000, 53, 6));
        // Over 64k flows, two buckets each get close to half.
        let mut odd = 0;
        for i in 0..65536u32 {
            odd += flow_hash(0x0a00_0000 | i as u128, 0x0808_0808, 1000 + (i % 7) as u16, 53, 17) & 1;
        }
        assert!((31000..34500).contains(&odd), "{odd}");
    }
}
