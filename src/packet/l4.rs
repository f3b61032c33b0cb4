//! Transport headers: TCP (RFC 9293), UDP (RFC 768), ICMP (RFC 792) and
//! ICMPv6 (RFC 4443). Port and identifier setters keep the checksum right by
//! incremental update, so a NAT never recomputes over the payload.

use super::{Error, checksum};

pub const TCP_MIN_HEADER: usize = 20;
pub const UDP_HEADER: usize = 8;
pub const ICMP_HEADER: usize = 8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// A view of a TCP header; `new_checked` validates the data offset.
#[derive(Debug)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    pub fn new_checked(buf: T) -> Result<Self, Error> {
        let b = buf.as_ref();
        if b.len() < TCP_MIN_HEADER {
            return Err(Error::Truncated);
        }
        let doff = ((b[12] >> 4) as usize) * 4;
        if doff < TCP_MIN_HEADER {
            return Err(Error::BadHeaderLen);
        }
        if doff > b.len() {
            return Err(Error::Truncated);
        }
        Ok(TcpPacket { buf })
    }
    pub fn src_port(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[0], b[1]])
    }
    pub fn dst_port(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }
    pub fn seq(&self) -> u32 {
        let b = self.buf.as_ref();
        u32::from_be_bytes([b[4], b[5], b[6], b[7]])
    }
    pub fn ack(&self) -> u32 {
        let b = self.buf.as_ref();
        u32::from_be_bytes([b[8], b[9], b[10], b[11]])
    }
    pub fn header_len(&self) -> usize {
        ((self.buf.as_ref()[12] >> 4) as usize) * 4
    }
    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[13]
    }
    pub fn window(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[14], b[15]])
    }
    pub fn checksum(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[16], b[17]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    fn set_checksum(&mut self, c: u16) {
        self.buf.as_mut()[16..18].copy_from_slice(&c.to_be_bytes());
    }
    pub fn set_src_port(&mut self, p: u16) {
        let c = checksum::update16(self.checksum(), self.src_port(), p);
        self.buf.as_mut()[0..2].copy_from_slice(&p.to_be_bytes());
        self.set_checksum(c);
    }
    pub fn set_dst_port(&mut self, p: u16) {
        let c = checksum::update16(self.checksum(), self.dst_port(), p);
        self.buf.as_mut()[2..4].copy_from_slice(&p.to_be_bytes());
        self.set_checksum(c);
    }
    /// Accounts for a changed IPv4 address in the pseudo-header.
    pub fn update_pseudo_v4(&mut self, old: u32, new: u32) {
        let c = checksum::update32(self.checksum(), old, new);
        self.set_checksum(c);
    }
}

/// A view of a UDP header; `new_checked` validates the length field.
#[derive(Debug)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub fn new_checked(buf: T) -> Result<Self, Error> {
        let b = buf.as_ref();
        if b.len() < UDP_HEADER {
            return Err(Error::Truncated);
        }
        let l = u16::from_be_bytes([b[4], b[5]]) as usize;
        if l < UDP_HEADER || l > b.len() {
            return Err(Error::BadTotalLen);
        }
        Ok(UdpPacket { buf })
    }
    pub fn src_port(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[0], b[1]])
    }
    pub fn dst_port(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }
    pub fn length(&self) -> usize {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[4], b[5]]) as usize
    }
    pub fn checksum(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[6], b[7]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    fn set_checksum(&mut self, c: u16) {
        // Over IPv4 a zero checksum means "none" and must stay zero; a computed
        // zero is sent as all ones (RFC 768).
        let c = if c == 0 { 0xffff } else { c };
        self.buf.as_mut()[6..8].copy_from_slice(&c.to_be_bytes());
    }
    pub fn set_src_port(&mut self, p: u16) {
        if self.checksum() != 0 {
            let c = checksum::update16(self.checksum(), self.src_port(), p);
            self.set_checksum(c);
        }
        self.buf.as_mut()[0..2].copy_from_slice(&p.to_be_bytes());
    }
    pub fn set_dst_port(&mut self, p: u16) {
        if self.checksum() != 0 {
            let c = checksum::update16(self.checksum(), self.dst_port(), p);
            self.set_checksum(c);
        }
        self.buf.as_mut()[2..4].copy_from_slice(&p.to_be_bytes());
    }
    pub fn update_pseudo_v4(&mut self, old: u32, new: u32) {
        if self.checksum() != 0 {
            let c = checksum::update32(self.checksum(), old, new);
            self.set_checksum(c);
        }
    }
}

/// A view of an ICMP or ICMPv6 header (same first 8 bytes layout).
#[derive(Debug)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    pub fn new_checked(buf: T) -> Result<Self, Error> {
        if buf.as_ref().len() < ICMP_HEADER {
            return Err(Error::Truncated);
        }
        Ok(IcmpPacket { buf })
    }
    pub fn msg_type(&self) -> u8 {
        self.buf.as_ref()[0]
    }
    pub fn code(&self) -> u8 {
        self.buf.as_ref()[1]
    }
    pub fn checksum(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }
    /// Identifier of an echo request/reply (meaningless for other types).
    pub fn echo_ident(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[4], b[5]])
    }
    pub fn echo_seq(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[6], b[7]])
    }
    /// ICMPv4 checksums cover only the message (no pseudo-header).
    pub fn verify_checksum_v4(&self) -> bool {
        checksum::verify(self.buf.as_ref())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    pub fn set_echo_ident(&mut self, id: u16) {
        let c = checksum::update16(self.checksum(), self.echo_ident(), id);
        let b = self.buf.as_mut();
        b[4..6].copy_from_slice(&id.to_be_bytes());
        b[2..4].copy_from_slice(&c.to_be_bytes());
    }
}

/// True for ICMPv4 query messages that carry an echo identifier.
pub fn icmp_is_echo(t: u8) -> bool {
    t == ICMP_ECHO_REQUEST || t == ICMP_ECHO_REPLY
}

/// True for ICMPv4 errors that quote an offending datagram (RFC 792).
pub fn icmp_is_error(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_frame() -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 443, 0x01020304, 8192)
            .syn()
            .ack(0x0a0b0c0d);
        let mut v = Vec::new();
        b.write(&mut v, b"hello").unwrap();
        v
    }

    #[test]
    fn tcp_fields_and_port_rewrite_verified_by_etherparse() {
        let mut v = tcp_frame();
        {
            let t = TcpPacket::new_checked(&v[20..]).unwrap();
            assert_eq!((t.src_port(), t.dst_port()), (40000, 443));
            assert_eq!(t.seq(), 0x01020304);
            assert_eq!(t.ack(), 0x0a0b0c0d);
            assert_eq!(t.flags() & (TCP_SYN | TCP_ACK), TCP_SYN | TCP_ACK);
            assert_eq!(t.header_len(), 20);
        }
        let mut t = TcpPacket::new_checked(&mut v[20..]).unwrap();
        t.set_src_port(1234);
        t.set_dst_port(8443);
        t.update_pseudo_v4(0x0a00_0001, 0xcb00_7101);
        v[12..16].copy_from_slice(&[203, 0, 113, 1]);
        let (ip, rest) = etherparse::Ipv4Header::from_slice(&v).unwrap();
        let (tcp, payload) = etherparse::TcpHeader::from_slice(rest).unwrap();
        assert_eq!((tcp.source_port, tcp.destination_port), (1234, 8443));
        assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(&ip, payload).unwrap());
    }

    #[test]
    fn tcp_bad_offsets() {
        let mut v = tcp_frame();
        v[32] = 0x40; // data offset 4 words
        assert_eq!(TcpPacket::new_checked(&v[20..]).unwrap_err(), Error::BadHeaderLen);
        v[32] = 0xf0; // 60 bytes in a 25-byte segment
        assert_eq!(TcpPacket::new_checked(&v[20..]).unwrap_err(), Error::Truncated);
        assert_eq!(TcpPacket::new_checked(&v[20..39]).unwrap_err(), Error::Truncated);
    }

    #[test]
    fn udp_rewrite_and_zero_checksum() {
        let b = etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(5353, 53);
        let mut v = Vec::new();
        b.write(&mut v, b"query").unwrap();
        let mut u = UdpPacket::new_checked(&mut v[20..]).unwrap();
        assert_eq!(u.length(), 13);
        u.set_src_port(61000);
        let (ip, rest) = etherparse::Ipv4Header::from_slice(&v).unwrap();
        let (udp, payload) = etherparse::UdpHeader::from_slice(rest).unwrap();
        assert_eq!(udp.source_port, 61000);
        assert_eq!(udp.checksum, udp.calc_checksum_ipv4(&ip, payload).unwrap());
        // A zero (absent) checksum stays absent.
        v[26] = 0;
        v[27] = 0;
        let mut u = UdpPacket::new_checked(&mut v[20..]).unwrap();
        u.set_dst_port(5300);
        assert_eq!(u.checksum(), 0);
        // Length field beyond the buffer.
        v[24] = 0x10;
        assert_eq!(UdpPacket::new_checked(&v[20..]).unwrap_err(), Error::BadTotalLen);
    }

    #[test]
    fn icmp_echo_ident_rewrite() {
        let b = etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).icmpv4_echo_request(0x4242, 7);
        let mut v = Vec::new();
        b.write(&mut v, b"ping").unwrap();
        let mut i = IcmpPacket::new_checked(&mut v[20..]).unwrap();
        assert_eq!(i.msg_type(), ICMP_ECHO_REQUEST);
        assert_eq!((i.echo_ident(), i.echo_seq()), (0x4242, 7));
        i.set_echo_ident(0x1000);
        assert!(IcmpPacket::new_checked(&v[20..]).unwrap().verify_checksum_v4());
        assert!(icmp_is_echo(8) && icmp_is_error(11) && !icmp_is_error(8));
    }
}
