//! IPv4 (RFC 791) header view with options.

use super::{Error, checksum};

pub const IPV4_MIN_HEADER: usize = 20;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

const OPT_EOL: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_LSRR: u8 = 131;
const OPT_SSRR: u8 = 137;
const OPT_RR: u8 = 7;
const OPT_ROUTER_ALERT: u8 = 148;

/// What the options of a header contain, for the policy of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ipv4Options {
    pub source_route: bool,
    pub router_alert: bool,
    pub record_route: bool,
}

/// A view of an IPv4 header. `new_checked` validates version, IHL and total
/// length against the buffer, so accessors cannot fail afterwards; the buffer
/// may be longer than `total_len` (Ethernet padding).
#[derive(Debug)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    pub fn new_checked(buf: T) -> Result<Self, Error> {
        let b = buf.as_ref();
        if b.len() < IPV4_MIN_HEADER {
            return Err(Error::Truncated);
        }
        if b[0] >> 4 != 4 {
            return Err(Error::BadVersion);
        }
        let ihl = ((b[0] & 0x0f) as usize) * 4;
        if ihl < IPV4_MIN_HEADER {
            return Err(Error::BadHeaderLen);
        }
        if b.len() < ihl {
            return Err(Error::Truncated);
        }
        let total = u16::from_be_bytes([b[2], b[3]]) as usize;
        if total < ihl || total > b.len() {
            return Err(Error::BadTotalLen);
        }
        Ok(Ipv4Packet { buf })
    }

    pub fn header_len(&self) -> usize {
        ((self.buf.as_ref()[0] & 0x0f) as usize) * 4
    }
    pub fn dscp_ecn(&self) -> u8 {
        self.buf.as_ref()[1]
    }
    pub fn total_len(&self) -> usize {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[2], b[3]]) as usize
    }
    pub fn ident(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[4], b[5]])
    }
    pub fn dont_frag(&self) -> bool {
        self.buf.as_ref()[6] & 0x40 != 0
    }
    pub fn more_frags(&self) -> bool {
        self.buf.as_ref()[6] & 0x20 != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> usize {
        let b = self.buf.as_ref();
        ((u16::from_be_bytes([b[6], b[7]]) & 0x1fff) as usize) * 8
    }
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }
    pub fn ttl(&self) -> u8 {
        self.buf.as_ref()[8]
    }
    pub fn protocol(&self) -> u8 {
        self.buf.as_ref()[9]
    }
    pub fn checksum(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[10], b[11]])
    }
    pub fn src(&self) -> u32 {
        let b = self.buf.as_ref();
        u32::from_be_bytes([b[12], b[13], b[14], b[15]])
    }
    pub fn dst(&self) -> u32 {
        let b = self.buf.as_ref();
        u32::from_be_bytes([b[16], b[17], b[18], b[19]])
    }
    pub fn options(&self) -> &[u8] {
        &self.buf.as_ref()[IPV4_MIN_HEADER..self.header_len()]
    }
    pub fn verify_checksum(&self) -> bool {
        let b = self.buf.as_ref();
        // Nearly every header is the plain 20 bytes: a fixed-size sum the
        // compiler unrolls.
        match b.first_chunk::<IPV4_MIN_HEADER>() {
            Some(h) if self.header_len() == IPV4_MIN_HEADER => checksum::fold(checksum::sum(h)) == 0xffff,
            _ => checksum::verify(&b[..self.header_len()]),
        }
    }
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[self.header_len()..self.total_len()]
    }

    /// Walks the options (RFC 791 section 3.1): every option other than EOL
    /// and NOP has a length byte of at least 2 that fits the header.
    pub fn parse_options(&self) -> Result<Ipv4Options, Error> {
        let o = self.options();
        let mut info = Ipv4Options::default();
        let mut i = 0;
        while i < o.len() {
            match o[i] {
                OPT_EOL => break,
                OPT_NOP => i += 1,
                t => {
                    if i + 1 >= o.len() {
                        return Err(Error::BadOptions);
                    }
                    let l = o[i + 1] as usize;
                    if l < 2 || i + l > o.len() {
                        return Err(Error::BadOptions);
                    }
                    match t {
                        OPT_LSRR | OPT_SSRR => info.source_route = true,
                        OPT_ROUTER_ALERT => info.router_alert = true,
                        OPT_RR => info.record_route = true,
                        _ => {}
                    }
                    i += l;
                }
            }
        }
        Ok(info)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn set_checksum(&mut self, c: u16) {
        self.buf.as_mut()[10..12].copy_from_slice(&c.to_be_bytes());
    }

    /// Sets the TTL, updating the header checksum incrementally.
    pub fn set_ttl(&mut self, ttl: u8) {
        let b = self.buf.as_ref();
        let old = u16::from_be_bytes([b[8], b[9]]);
        let new = u16::from_be_bytes([ttl, b[9]]);
        let c = checksum::update16(self.checksum(), old, new);
        self.buf.as_mut()[8] = ttl;
        self.set_checksum(c);
    }

    /// Sets the source address, updating the header checksum incrementally.
    pub fn set_src(&mut self, a: u32) {
        let c = checksum::update32(self.checksum(), self.src(), a);
        self.buf.as_mut()[12..16].copy_from_slice(&a.to_be_bytes());
        self.set_checksum(c);
    }

    /// Sets the destination address, updating the header checksum incrementally.
    pub fn set_dst(&mut self, a: u32) {
        let c = checksum::update32(self.checksum(), self.dst(), a);
        self.buf.as_mut()[16..20].copy_from_slice(&a.to_be_bytes());
        self.set_checksum(c);
    }

    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        self.set_checksum(0);
        let c = checksum::checksum(&self.buf.as_ref()[..hl]);
        self.set_checksum(c);
    }
}

/// The 20-byte header the router puts on what it originates: no options,
/// ID 0, DF clear, TTL 64, checksum filled in; `total` counts the header.
pub fn header(src: u32, dst: u32, proto: u8, total: u16) -> [u8; IPV4_MIN_HEADER] {
    let mut h = [0u8; IPV4_MIN_HEADER];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.to_be_bytes());
    h[16..20].copy_from_slice(&dst.to_be_bytes());
    let c = checksum::checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// True for sources a router must never forward from (RFC 1812 5.3.7,
/// RFC 6890): "this network" 0/8, loopback 127/8, class D multicast, class E
/// reserved and the limited broadcast.
#[inline]
pub fn is_martian_source(a: u32) -> bool {
    let first = (a >> 24) as u8;
    first == 0 || first == 127 || first >= 224
}

/// Multicast and the limited broadcast: link-scope, delivered to the host
/// stack whatever the route table says (no multicast routing).
#[inline]
pub fn is_link_scope_dest(a: u32) -> bool {
    a >> 28 == 0xe || a == u32::MAX
}

/// True for destinations that are never forwarded: 0/8, 127/8, class E
/// (multicast and limited broadcast are delivered locally, not dropped).
#[inline]
pub fn is_martian_dest(a: u32) -> bool {
    let first = (a >> 24) as u8;
    first == 0 || first == 127 || (first >= 240 && a != u32::MAX)
}

/// First octets a forwarded unicast address may have: 1 to 223, except
/// 127 (by first octet, one byte each: a load per address).
static FORWARDABLE_FIRST_OCTET: [bool; 256] = {
    let mut t = [false; 256];
    let mut o = 1;
    while o <= 223 {
        t[o] = o != 127;
        o += 1;
    }
    t
};

/// Neither a martian source nor a martian or link-scope destination: what
/// the three tests above together allow, from the first octets alone (a
/// source or destination from 1/8 to 223/8, except 127/8), for the fast
/// path: one table load per address rather than four compares and
/// branches.
#[inline(always)]
pub fn is_forwardable_unicast(src: u32, dst: u32) -> bool {
    FORWARDABLE_FIRST_OCTET[(src >> 24) as usize] & FORWARDABLE_FIRST_OCTET[(dst >> 24) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwardable_unicast_is_the_three_tests_together() {
        // Every first octet against every first octet, with the low bits
        // that matter for the limited broadcast.
        for s in 0..=255u32 {
            for d in 0..=255u32 {
                for low in [0, 1, 0x00ff_fffe, 0x00ff_ffff] {
                    let (src, dst) = (s << 24 | low, d << 24 | low);
                    let slow = !is_martian_source(src) && !is_martian_dest(dst) && !is_link_scope_dest(dst);
                    assert_eq!(is_forwardable_unicast(src, dst), slow, "{src:#x} -> {dst:#x}");
                }
            }
        }
    }

    fn etherparse_ipv4(options: &[u8]) -> Vec<u8> {
        let mut h =
            etherparse::Ipv4Header::new(8, 64, etherparse::IpNumber::UDP, [10, 0, 0, 1], [192, 168, 7, 9]).unwrap();
        h.identification = 0x1234;
        h.dont_fragment = true;
        h.options = options.try_into().unwrap();
        h.header_checksum = h.calc_header_checksum();
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(&[0xaa; 8]);
        v
    }

    #[test]
    fn fields_match_etherparse() {
        let v = etherparse_ipv4(&[]);
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), PROTO_UDP);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag() && !p.is_fragment());
        assert_eq!(p.src(), 0x0a00_0001);
        assert_eq!(p.dst(), 0xc0a8_0709);
        assert!(p.verify_checksum());
        assert_eq!(p.payload(), &[0xaa; 8]);
    }

    #[test]
    fn options_walk() {
        // NOP, router alert (148, len 4), EOL padding.
        let v = etherparse_ipv4(&[1, 148, 4, 0, 0, 0, 0, 0]);
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.header_len(), 28);
        assert!(p.verify_checksum());
        let o = p.parse_options().unwrap();
        assert!(o.router_alert && !o.source_route);
        // Loose source route with length running past the header.
        let v = etherparse_ipv4(&[131, 11, 4, 1, 2, 3, 4, 0]);
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.parse_options(), Err(Error::BadOptions));
        let v = etherparse_ipv4(&[131, 7, 4, 1, 2, 3, 4, 0]);
        assert!(Ipv4Packet::new_checked(&v[..]).unwrap().parse_options().unwrap().source_route);
        // Option with length 0 or 1 is malformed.
        let v = etherparse_ipv4(&[7, 1, 0, 0]);
        assert_eq!(Ipv4Packet::new_checked(&v[..]).unwrap().parse_options(), Err(Error::BadOptions));
    }

    #[test]
    fn malformed_headers() {
        let v = etherparse_ipv4(&[]);
        assert_eq!(Ipv4Packet::new_checked(&v[..19]).unwrap_err(), Error::Truncated);
        let mut w = v.clone();
        w[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&w[..]).unwrap_err(), Error::BadVersion);
        let mut w = v.clone();
        w[0] = 0x44;
        assert_eq!(Ipv4Packet::new_checked(&w[..]).unwrap_err(), Error::BadHeaderLen);
        let mut w = v.clone();
        w[0] = 0x4f; // 60-byte header in a 28-byte buffer
        assert_eq!(Ipv4Packet::new_checked(&w[..]).unwrap_err(), Error::Truncated);
        let mut w = v.clone();
        w[3] = 29; // longer than the buffer
        assert_eq!(Ipv4Packet::new_checked(&w[..]).unwrap_err(), Error::BadTotalLen);
        let mut w = v.clone();
        w[3] = 19; // shorter than the header
        assert_eq!(Ipv4Packet::new_checked(&w[..]).unwrap_err(), Error::BadTotalLen);
        let mut w = v.clone();
        w[10] ^= 1;
        assert!(!Ipv4Packet::new_checked(&w[..]).unwrap().verify_checksum());
    }

    #[test]
    fn setters_keep_checksum_valid_per_etherparse() {
        let mut v = etherparse_ipv4(&[1, 1, 1, 1]);
        let mut p = Ipv4Packet::new_checked(&mut v[..]).unwrap();
        p.set_ttl(63);
        p.set_src(0xcb00_7105);
        p.set_dst(0x0808_0808);
        let (h, _) = etherparse::Ipv4Header::from_slice(&v).unwrap();
        assert_eq!(h.time_to_live, 63);
        assert_eq!(h.source, [203, 0, 113, 5]);
        assert_eq!(h.destination, [8, 8, 8, 8]);
        assert_eq!(h.header_checksum, h.calc_header_checksum());
    }

    #[test]
    fn martians() {
        assert!(is_martian_source(0x7f00_0001));
        assert!(is_martian_source(0x0000_0000));
        assert!(is_martian_source(0xe000_0001));
        assert!(is_martian_source(u32::MAX));
        assert!(!is_martian_source(0x0a00_0001));
        assert!(is_martian_dest(0x7f00_0001));
        assert!(is_martian_dest(0xf000_0001));
        assert!(!is_martian_dest(u32::MAX));
        assert!(!is_martian_dest(0xe000_0001));
    }
}
