//! IPv6 (RFC 8200) header view and extension-header walk.

use super::Error;

pub const IPV6_HEADER_LEN: usize = 40;
pub const NH_HOP_BY_HOP: u8 = 0;
pub const NH_ROUTING: u8 = 43;
pub const NH_FRAGMENT: u8 = 44;
pub const NH_ESP: u8 = 50;
pub const NH_AH: u8 = 51;
pub const NH_NO_NEXT: u8 = 59;
pub const NH_DEST_OPTS: u8 = 60;
pub const NH_MOBILITY: u8 = 135;
pub const NH_HIP: u8 = 139;
pub const NH_SHIM6: u8 = 140;

/// Longest chain of extension headers we walk before giving up (a long chain
/// is a known way to hide the transport header from filters, RFC 7112).
pub const MAX_EXT_HEADERS: usize = 8;

/// Where the upper layer starts, found by walking the extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ipv6Ext {
    /// The protocol of the upper layer (or of the fragment's payload).
    pub proto: u8,
    /// Offset of the upper-layer header from the start of the IPv6 header.
    pub l4_off: usize,
    /// Fragment header present: (offset in bytes, more fragments).
    pub frag: Option<(usize, bool)>,
    /// The fragment header's identification.
    pub frag_id: u32,
    pub hop_by_hop: bool,
    pub ext_count: usize,
}

/// A view of a fixed IPv6 header; `new_checked` validates version and that
/// the payload length fits the buffer.
#[derive(Debug)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    pub fn new_checked(buf: T) -> Result<Self, Error> {
        let b = buf.as_ref();
        if b.len() < IPV6_HEADER_LEN {
            return Err(Error::Truncated);
        }
        if b[0] >> 4 != 6 {
            return Err(Error::BadVersion);
        }
        let plen = u16::from_be_bytes([b[4], b[5]]) as usize;
        // A zero payload length with hop-by-hop is a jumbogram (RFC 2675);
        // no link we serve carries those, so it is simply too short here.
        if IPV6_HEADER_LEN + plen > b.len() {
            return Err(Error::BadTotalLen);
        }
        Ok(Ipv6Packet { buf })
    }

    pub fn traffic_class(&self) -> u8 {
        let b = self.buf.as_ref();
        (b[0] << 4) | (b[1] >> 4)
    }
    pub fn flow_label(&self) -> u32 {
        let b = self.buf.as_ref();
        u32::from_be_bytes([0, b[1] & 0x0f, b[2], b[3]])
    }
    pub fn payload_len(&self) -> usize {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[4], b[5]]) as usize
    }
    pub fn total_len(&self) -> usize {
        IPV6_HEADER_LEN + self.payload_len()
    }
    pub fn next_header(&self) -> u8 {
        self.buf.as_ref()[6]
    }
    pub fn hop_limit(&self) -> u8 {
        self.buf.as_ref()[7]
    }
    pub fn src(&self) -> u128 {
        let b = self.buf.as_ref();
        u128::from_be_bytes(b[8..24].try_into().unwrap())
    }
    pub fn dst(&self) -> u128 {
        let b = self.buf.as_ref();
        u128::from_be_bytes(b[24..40].try_into().unwrap())
    }

    /// Walks the extension headers up to the upper layer (RFC 8200 4.1).
    /// Rejects hop-by-hop anywhere but first, a type-0 routing header with
    /// segments left (RFC 5095), headers running past the payload, and chains
    /// longer than [`MAX_EXT_HEADERS`].
    pub fn walk_extensions(&self) -> Result<Ipv6Ext, Error> {
        let b = &self.buf.as_ref()[..self.total_len()];
        let mut ext = Ipv6Ext { proto: self.next_header(), l4_off: IPV6_HEADER_LEN, ..Default::default() };
        loop {
            let nh = ext.proto;
            let off = ext.l4_off;
            let len = match nh {
                NH_HOP_BY_HOP | NH_ROUTING | NH_DEST_OPTS | NH_MOBILITY | NH_HIP | NH_SHIM6 => {
                    if nh == NH_HOP_BY_HOP && ext.ext_count != 0 {
                        return Err(Error::BadExtHeader);
                    }
                    if off + 8 > b.len() {
                        return Err(Error::Truncated);
                    }
                    if nh == NH_ROUTING && b[off + 2] == 0 && b[off + 3] != 0 {
                        return Err(Error::DeprecatedRoutingHeader);
                    }
                    ext.hop_by_hop |= nh == NH_HOP_BY_HOP;
                    (b[off + 1] as usize + 1) * 8
                }
                NH_AH => {
                    if off + 8 > b.len() {
                        return Err(Error::Truncated);
                    }
                    (b[off + 1] as usize + 2) * 4
                }
                NH_FRAGMENT => {
                    if off + 8 > b.len() {
                        return Err(Error::Truncated);
                    }
                    let fo = u16::from_be_bytes([b[off + 2], b[off + 3]]);
                    let offset = ((fo >> 3) as usize) * 8;
                    ext.frag = Some((offset, fo & 1 != 0));
                    ext.frag_id = u32::from_be_bytes([b[off + 4], b[off + 5], b[off + 6], b[off + 7]]);
                    8
                }
                _ => return Ok(ext),
            };
            if off + len > b.len() {
                return Err(Error::Truncated);
            }
            ext.ext_count += 1;
            if ext.ext_count > MAX_EXT_HEADERS {
                return Err(Error::ExtChainTooLong);
            }
            ext.proto = b[off];
            ext.l4_off = off + len;
            // Past a non-first fragment's header there is no upper layer to find.
            if matches!(ext.frag, Some((o, _)) if o != 0) {
                return Ok(ext);
            }
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// IPv6 has no header checksum: the hop limit is written as is.
    pub fn set_hop_limit(&mut self, h: u8) {
        self.buf.as_mut()[7] = h;
    }
}

/// fe80::/10.
#[inline]
pub fn is_link_local(a: u128) -> bool {
    (a >> 118) == 0x3fa
}
/// ff00::/8.
#[inline]
pub fn is_multicast(a: u128) -> bool {
    (a >> 120) == 0xff
}
/// ::1 and :: (unspecified), which are never forwarded.
#[inline]
pub fn is_loopback_or_unspecified(a: u128) -> bool {
    a <= 1
}
/// IPv4-mapped ::ffff:0:0/96, which must not appear on the wire (RFC 4291 2.5.5.2).
#[inline]
pub fn is_v4_mapped(a: u128) -> bool {
    (a >> 32) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{IpNumber, Ipv6Header};

    fn header(next: u8, payload: &[u8]) -> Vec<u8> {
        let h = Ipv6Header {
            traffic_class: 0x12,
            flow_label: etherparse::Ipv6FlowLabel::try_new(0xabcde).unwrap(),
            payload_length: payload.len() as u16,
            next_header: IpNumber(next),
            hop_limit: 64,
            source: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            destination: [0xfd, 0xd6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        };
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn fields_match_etherparse() {
        let v = header(17, &[0; 8]);
        let p = Ipv6Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.traffic_class(), 0x12);
        assert_eq!(p.flow_label(), 0xabcde);
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src(), 0x2001_0db8_0000_0000_0000_0000_0000_0001);
        assert_eq!(p.dst() >> 112, 0xfdd6);
        let e = p.walk_extensions().unwrap();
        assert_eq!((e.proto, e.l4_off, e.ext_count), (17, 40, 0));
    }

    #[test]
    fn extension_chain_against_etherparse() {
        // HBH(8) -> DestOpts(16) -> Fragment(8, first) -> UDP
        let mut pl = vec![NH_DEST_OPTS, 0, 1, 4, 0, 0, 0, 0];
        pl.extend_from_slice(&[NH_FRAGMENT, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        pl.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 7]); // offset 0, M=1
        pl.extend_from_slice(&[0x12, 0x34, 0x56, 0x78, 0, 8, 0, 0]);
        let v = header(NH_HOP_BY_HOP, &pl);
        let p = Ipv6Packet::new_checked(&v[..]).unwrap();
        let e = p.walk_extensions().unwrap();
        let sliced = etherparse::SlicedPacket::from_ip(&v).unwrap();
        let ip = match sliced.net {
            Some(etherparse::NetSlice::Ipv6(s)) => s,
            _ => panic!(),
        };
        assert_eq!(e.proto, ip.payload().ip_number.0);
        assert_eq!(e.l4_off, v.len() - ip.payload().payload.len());
        assert_eq!(e.frag, Some((0, true)));
        assert!(e.hop_by_hop);
        assert_eq!(e.ext_count, 3);
    }

    #[test]
    fn non_first_fragment_stops_walk() {
        let pl = [17, 0, 0x05, 0x00, 0, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8];
        let v = header(NH_FRAGMENT, &pl);
        let e = Ipv6Packet::new_checked(&v[..]).unwrap().walk_extensions().unwrap();
        assert_eq!(e.frag, Some((1280, false))); // 160 eight-byte units
        assert_eq!(e.l4_off, 48);
    }

    #[test]
    fn bad_chains() {
        // Hop-by-hop not first.
        let pl = [NH_HOP_BY_HOP, 0, 0, 0, 0, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 0];
        let v = header(NH_DEST_OPTS, &pl);
        assert_eq!(Ipv6Packet::new_checked(&v[..]).unwrap().walk_extensions(), Err(Error::BadExtHeader));
        // RH0 with segments left.
        let pl = [17, 0, 0, 1, 0, 0, 0, 0];
        let v = header(NH_ROUTING, &pl);
        assert_eq!(Ipv6Packet::new_checked(&v[..]).unwrap().walk_extensions(), Err(Error::DeprecatedRoutingHeader));
        // Ten destination-option headers.
        let mut pl = Vec::new();
        for i in 0..10 {
            pl.extend_from_slice(&[if i == 9 { 17 } else { NH_DEST_OPTS }, 0, 1, 4, 0, 0, 0, 0]);
        }
        let v = header(NH_DEST_OPTS, &pl);
        assert_eq!(Ipv6Packet::new_checked(&v[..]).unwrap().walk_extensions(), Err(Error::ExtChainTooLong));
        // Extension header longer than the payload.
        let pl = [17, 5, 0, 0, 0, 0, 0, 0];
        let v = header(NH_DEST_OPTS, &pl);
        assert_eq!(Ipv6Packet::new_checked(&v[..]).unwrap().walk_extensions(), Err(Error::Truncated));
        // Payload length longer than the buffer.
        let mut v = header(17, &[0; 8]);
        v[5] = 9;
        assert_eq!(Ipv6Packet::new_checked(&v[..]).unwrap_err(), Error::BadTotalLen);
        let mut v = header(17, &[0; 8]);
        v[0] = 0x45;
        assert_eq!(Ipv6Packet::new_checked(&v[..]).unwrap_err(), Error::BadVersion);
    }

    #[test]
    fn scopes() {
        assert!(is_link_local(0xfe80 << 112));
        assert!(is_link_local((0xfebf << 112) | 1));
        assert!(!is_link_local(0xfec0 << 112));
        assert!(is_multicast(0xff02 << 112));
        assert!(is_loopback_or_unspecified(1));
        assert!(is_v4_mapped(0xffff_0a00_0001));
    }
}
