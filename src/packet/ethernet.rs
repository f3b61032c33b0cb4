//! Ethernet II, IEEE 802.1Q tags and ARP (RFC 826) over Ethernet/IPv4.

use super::Error;
use std::fmt;
use std::str::FromStr;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
pub const ETHER_HEADER_LEN: usize = 14;
pub const VLAN_TAG_LEN: usize = 4;

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    pub const ZERO: Mac = Mac([0; 6]);

    /// The modified EUI-64 interface identifier of this MAC (RFC 4291
    /// appendix A): what SLAAC and link-local addresses end with.
    pub fn eui64(&self) -> u64 {
        let m = self.0;
        u64::from_be_bytes([m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]])
    }

    /// Group (multicast or broadcast) addresses have the I/G bit set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Mac::BROADCAST
    }

    pub fn is_zero(&self) -> bool {
        *self == Mac::ZERO
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error of parsing a MAC address written as text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address '{0}' (expected six hex octets like fa:16:3e:00:00:01)")]
pub struct MacParseError(pub String);

impl FromStr for Mac {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.trim().split(sep) {
            if n == 6 || part.is_empty() || part.len() > 2 {
                return Err(MacParseError(s.to_string()));
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| MacParseError(s.to_string()))?;
            n += 1;
        }
        if n != 6 {
            return Err(MacParseError(s.to_string()));
        }
        Ok(Mac(out))
    }
}

/// A read/write view of an Ethernet II header.
#[derive(Debug)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Checks that the buffer holds at least the 14-byte header.
    pub fn new_checked(buf: T) -> Result<Self, Error> {
        if buf.as_ref().len() < ETHER_HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(EthernetFrame { buf })
    }

    pub fn dst(&self) -> Mac {
        let b = self.buf.as_ref();
        Mac([b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    pub fn src(&self) -> Mac {
        let b = self.buf.as_ref();
        Mac([b[6], b[7], b[8], b[9], b[10], b[11]])
    }

    pub fn ethertype(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[12], b[13]])
    }

    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[ETHER_HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst(&mut self, m: Mac) {
        self.buf.as_mut()[0..6].copy_from_slice(&m.0);
    }
    pub fn set_src(&mut self, m: Mac) {
        self.buf.as_mut()[6..12].copy_from_slice(&m.0);
    }
    pub fn set_ethertype(&mut self, t: u16) {
        self.buf.as_mut()[12..14].copy_from_slice(&t.to_be_bytes());
    }
}

/// A view of one 802.1Q (or 802.1ad) tag: TCI then the inner ethertype.
#[derive(Debug)]
pub struct VlanTag<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    pub fn new_checked(buf: T) -> Result<Self, Error> {
        if buf.as_ref().len() < VLAN_TAG_LEN {
            return Err(Error::Truncated);
        }
        Ok(VlanTag { buf })
    }
    pub fn tci(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[0], b[1]])
    }
    /// VLAN identifier; 0 means a priority-only tag (no VLAN membership).
    pub fn vid(&self) -> u16 {
        self.tci() & 0x0fff
    }
    pub fn pcp(&self) -> u8 {
        (self.tci() >> 13) as u8
    }
    pub fn inner_ethertype(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }
}

pub const ARP_LEN: usize = 28;
pub const ARP_OP_REQUEST: u16 = 1;
pub const ARP_OP_REPLY: u16 = 2;

/// The 60-byte frame (padding zeroed) answering `to`/`to_ip`'s request for
/// `ip`, which `mac` owns: sent to the asker's hardware address.
pub fn arp_reply(mac: Mac, ip: u32, to: Mac, to_ip: u32) -> [u8; 60] {
    arp_frame(ARP_OP_REPLY, mac, ip, to, to, to_ip)
}

/// A 60-byte ARP frame (padding zeroed) from `smac` to `dst`.
pub fn arp_frame(op: u16, smac: Mac, sip: u32, tmac: Mac, dst: Mac, tip: u32) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&smac.0);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f[14..20].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&smac.0);
    f[28..32].copy_from_slice(&sip.to_be_bytes());
    f[32..38].copy_from_slice(&tmac.0);
    f[38..42].copy_from_slice(&tip.to_be_bytes());
    f
}

/// ARP for IPv4 over Ethernet (the only form a router needs).
#[derive(Debug)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Accepts only htype 1 / ptype 0x0800 / hlen 6 / plen 4, 28 bytes or more.
    pub fn new_checked(buf: T) -> Result<Self, Error> {
        let b = buf.as_ref();
        if b.len() < ARP_LEN {
            return Err(Error::Truncated);
        }
        if b[0..2] != [0, 1] || b[2..4] != [0x08, 0x00] || b[4] != 6 || b[5] != 4 {
            return Err(Error::Malformed);
        }
        Ok(ArpPacket { buf })
    }
    pub fn operation(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[6], b[7]])
    }
    pub fn sender_mac(&self) -> Mac {
        let b = self.buf.as_ref();
        Mac([b[8], b[9], b[10], b[11], b[12], b[13]])
    }
    pub fn sender_ip(&self) -> u32 {
        let b = self.buf.as_ref();
        u32::from_be_bytes([b[14], b[15], b[16], b[17]])
    }
    pub fn target_mac(&self) -> Mac {
        let b = self.buf.as_ref();
        Mac([b[18], b[19], b[20], b[21], b[22], b[23]])
    }
    pub fn target_ip(&self) -> u32 {
        let b = self.buf.as_ref();
        u32::from_be_bytes([b[24], b[25], b[26], b[27]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parse_and_display() {
        let m: Mac = "FA:16:3e:0a:0b:0c".parse().unwrap();
        assert_eq!(m.0, [0xfa, 0x16, 0x3e, 0x0a, 0x0b, 0x0c]);
        assert_eq!(m.to_string(), "fa:16:3e:0a:0b:0c");
        assert_eq!("fa-16-3e-0a-0b-0c".parse::<Mac>().unwrap(), m);
        for bad in ["", "fa:16:3e:0a:0b", "fa:16:3e:0a:0b:0c:0d", "zz:16:3e:0a:0b:0c", "fa::3e:0a:0b:0c"] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ethernet_and_vlan_against_etherparse() {
        let builder = etherparse::PacketBuilder::ethernet2([1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12])
            .single_vlan(etherparse::VlanId::try_new(42).unwrap())
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2);
        let mut frame = Vec::new();
        builder.write(&mut frame, &[]).unwrap();
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.src().0, [1, 2, 3, 4, 5, 6]);
        assert_eq!(eth.dst().0, [7, 8, 9, 10, 11, 12]);
        assert_eq!(eth.ethertype(), ETHERTYPE_VLAN);
        let tag = VlanTag::new_checked(eth.payload()).unwrap();
        assert_eq!(tag.vid(), 42);
        assert_eq!(tag.inner_ethertype(), ETHERTYPE_IPV4);
        assert_eq!(EthernetFrame::new_checked(&frame[..13]).unwrap_err(), Error::Truncated);
    }

    #[test]
    fn arp_request_vector() {
        // Who has 192.168.1.1? Tell 192.168.1.10 (from aa:bb:cc:dd:ee:ff).
        let arp = [
            0, 1, 8, 0, 6, 4, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 192, 168, 1, 10, 0, 0, 0, 0, 0, 0, 192, 168, 1,
            1,
        ];
        let p = ArpPacket::new_checked(&arp[..]).unwrap();
        assert_eq!(p.operation(), ARP_OP_REQUEST);
        assert_eq!(p.sender_ip(), 0xc0a8_010a);
        assert_eq!(p.target_ip(), 0xc0a8_0101);
        assert_eq!(p.sender_mac().to_string(), "aa:bb:cc:dd:ee:ff");
        let mut bad = arp;
        bad[4] = 8;
        assert_eq!(ArpPacket::new_checked(&bad[..]).unwrap_err(), Error::Malformed);
        assert_eq!(ArpPacket::new_checked(&arp[..27]).unwrap_err(), Error::Truncated);
    }
}
