//! Address and port rewriting for NAT, with incremental checksums
//! (RFC 1624), and the translation of ICMP errors that quote a translated
//! packet (RFC 5508 section 4.2).

use crate::packet::checksum::{checksum, delta16, fold, update16, update32};
use crate::packet::ipv4::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::packet::l4::icmp_is_echo;
use crate::table::session::{FlowKey, Session};

/// A 4-tuple of an IPv4 packet (ports are the ICMP echo identifier for
/// echo, both set to it).
#[derive(Debug, Clone, Copy, Eq)]
pub struct Tuple4 {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
}

impl PartialEq for Tuple4 {
    /// Two words compared instead of four fields one after the other (the
    /// derived comparison branched on each).
    #[inline]
    fn eq(&self, o: &Tuple4) -> bool {
        let addrs = |t: &Tuple4| (t.src as u64) << 32 | t.dst as u64;
        let ports = |t: &Tuple4| (t.sport as u32) << 16 | t.dport as u32;
        (addrs(self) ^ addrs(o)) | (ports(self) ^ ports(o)) as u64 == 0
    }
}

impl Tuple4 {
    /// The packet that `key` describes, as it would look on the wire.
    #[inline]
    pub fn of(key: &FlowKey) -> Tuple4 {
        Tuple4 { src: key.src[3], dst: key.dst[3], sport: key.sport, dport: key.dport }
    }
    /// The packet of a session's direction `dir`, as it would look on the
    /// wire (`of` its key, read from the record directly).
    #[inline(always)]
    pub fn of_session(s: &Session, dir: usize) -> Tuple4 {
        let ([src, dst], [sport, dport]) = (s.addrs4(dir), s.ports(dir));
        Tuple4 { src, dst, sport, dport }
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
#[inline(always)]
pub fn rewrite_v4(data: &mut [u8], l3: usize, l4: usize, proto: u8, has_l4: bool, from: Tuple4, to: Tuple4) {
    // RFC 1624 eqn. 3 with every word of the 4-tuple summed first and
    // folded once: the addresses' change is the same for the IP header and
    // for the transport checksum's pseudo-header. Each 32-bit value is added
    // whole (2^16 is 1 in ones'-complement arithmetic, so a 32-bit word is
    // congruent to the sum of its two halves), and unchanged words are
    // added too: ~w + w is all ones, ones'-complement zero. That changes
    // the result only where the sum is exactly zero, which needs an old
    // checksum of 0xffff; IPv4 and TCP checksums never are (the header's
    // version and the pseudo-header's protocol are not zero), and a UDP
    // checksum of 0xffff (a computed 0) comes out as 0, sent as 0xffff
    // below, as it was.
    let addrs = !from.src as u64 + to.src as u64 + !from.dst as u64 + to.dst as u64;
    let Some(ip) = data.get_mut(l3..).and_then(|d| d.first_chunk_mut::<20>()) else { return };
    ip[12..16].copy_from_slice(&to.src.to_be_bytes());
    ip[16..20].copy_from_slice(&to.dst.to_be_bytes());
    let ipc = !fold(!u16::from_be_bytes([ip[10], ip[11]]) as u64 + addrs);
    ip[10..12].copy_from_slice(&ipc.to_be_bytes());
    if !has_l4 {
        return;
    }
    let Some(t) = data.get_mut(l4..).and_then(|d| d.first_chunk_mut::<8>()) else { return };
    match proto {
        PROTO_TCP | PROTO_UDP => {
            t[0..2].copy_from_slice(&to.sport.to_be_bytes());
            t[2..4].copy_from_slice(&to.dport.to_be_bytes());
            let word = |t: Tuple4| (t.sport as u32) << 16 | t.dport as u32;
            let ports = !word(from) as u64 + word(to) as u64;
            let c = if proto == PROTO_UDP {
                &mut t[6..8]
            } else {
                match data.get_mut(l4 + 16..l4 + 18) {
                    Some(c) => c,
                    None => return,
                }
            };
            let old = u16::from_be_bytes([c[0], c[1]]);
            // A UDP checksum of 0 means none: it stays 0.
            if !(proto == PROTO_UDP && old == 0) {
                let mut new = !fold(!old as u64 + addrs + ports);
                if proto == PROTO_UDP && new == 0 {
                    new = 0xffff;
                }
                c.copy_from_slice(&new.to_be_bytes());
            }
        }
        PROTO_ICMP if icmp_is_echo(t[0]) && from.sport != to.sport => {
            // ICMP checksums have no pseudo-header: only the identifier.
            let c = !fold(!u16::from_be_bytes([t[2], t[3]]) as u64 + delta16(from.sport, to.sport));
            t[2..4].copy_from_slice(&c.to_be_bytes());
            t[4..6].copy_from_slice(&to.sport.to_be_bytes());
        }
        _ => {}
    }
}

/// `rewrite_v4` for an unfragmented TCP or UDP packet in an untagged frame
/// (a 20-byte IPv4 header at 14, the transport header whole after it, as
/// the parse stage's `head` accepts), to `to` from what the packet carries.
/// The fast path's translation of a known flow's packet.
///
/// The words are summed as they lie in memory: a ones'-complement sum in
/// the other byte order is the same sum byte-swapped (RFC 1071, 2(B)), so
/// checksum fields read and written in the machine's order take sums of
/// words read in it. Only the new tuple is swapped, into network order;
/// the old one is read from the packet, where it already is. (In host order
/// as `rewrite_v4` takes them, the old tuple swapped and compared with the
/// new, a translation took about 100 instructions a packet; this about 65,
/// callgrind on lb-64b.)
/// The identity (the packet already carries `to`) writes nothing; another
/// protocol, or a frame too short for its header, is left as it is.
#[inline(always)]
pub fn retarget_v4(data: &mut [u8], proto: u8, to: Tuple4) {
    // Where the transport checksum lies in the frame.
    let ck = match proto {
        PROTO_UDP => 14 + 20 + 6,
        PROTO_TCP => 14 + 20 + 16,
        _ => return,
    };
    if data.len() < ck + 2 {
        return;
    }
    let Some(f) = data.first_chunk_mut::<38>() else { return };
    // The new tuple as the bytes at 26..34 and 34..38 read (one swap each).
    let addrs = ((to.src as u64) << 32 | to.dst as u64).to_be();
    let ports = ((to.sport as u32) << 16 | to.dport as u32).to_be();
    let old_addrs = u64::from_ne_bytes(f[26..34].try_into().unwrap_or_default());
    let old_ports = u32::from_ne_bytes(f[34..38].try_into().unwrap_or_default());
    if old_addrs == addrs && old_ports == ports {
        return;
    }
    // RFC 1624 eqn. 3 over whole 32-bit words, unchanged ones included, as
    // in `rewrite_v4` (whose comment says why that is exact here).
    let halves = |w: u64| (w & 0xffff_ffff) + (w >> 32);
    let da = halves(!old_addrs) + halves(addrs);
    f[26..34].copy_from_slice(&addrs.to_ne_bytes());
    let ipc = !fold(!u16::from_ne_bytes([f[24], f[25]]) as u64 + da);
    f[24..26].copy_from_slice(&ipc.to_ne_bytes());
    f[34..38].copy_from_slice(&ports.to_ne_bytes());
    let dl = da + !old_ports as u64 + ports as u64;
    let Some(c) = data.get_mut(ck..ck + 2) else { return };
    let old = u16::from_ne_bytes([c[0], c[1]]);
    // A UDP checksum of 0 means none: it stays 0; a computed 0 is sent as
    // all ones (both read the same in either byte order).
    if proto == PROTO_UDP && old == 0 {
        return;
    }
    let mut new = !fold(!old as u64 + dl);
    if proto == PROTO_UDP && new == 0 {
        new = 0xffff;
    }
    c.copy_from_slice(&new.to_ne_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    const FROM: Tuple4 = Tuple4 { src: 0xc0a8_0105, dst: 0x0808_0808, sport: 40000, dport: 53 };
    const TO: Tuple4 = Tuple4 { src: 0xcb00_710a, dst: 0x0808_0808, sport: 1025, dport: 53 };

    fn frame(proto: u8) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2; 6], [4; 6]).ipv4(FROM.src.to_be_bytes(), FROM.dst.to_be_bytes(), 64);
        let mut v = Vec::new();
        match proto {
            PROTO_TCP => b.tcp(FROM.sport, FROM.dport, 7, 1024).syn().write(&mut v, b"payload"),
            PROTO_UDP => b.udp(FROM.sport, FROM.dport).write(&mut v, b"payload"),
            _ => b.icmpv4_echo_request(FROM.sport, 9).write(&mut v, b"payload"),
        }
        .unwrap();
        v
    }

    /// The rewritten packet's fields and checksums, as etherparse computes them.
    fn check(v: &[u8], to: Tuple4) {
        let s = SlicedPacket::from_ethernet(v).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &s.net else { panic!("not IPv4") };
        let h = ip.header().to_header();
        assert_eq!((u32::from_be_bytes(h.source), u32::from_be_bytes(h.destination)), (to.src, to.dst));
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        match s.transport.unwrap() {
            TransportSlice::Tcp(t) => {
                assert_eq!((t.source_port(), t.destination_port()), (to.sport, to.dport));
                let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
                assert_eq!(t.checksum(), want);
            }
            TransportSlice::Udp(u) => {
                assert_eq!((u.source_port(), u.destination_port()), (to.sport, to.dport));
                let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
                assert_eq!(u.checksum(), want);
            }
            TransportSlice::Icmpv4(i) => {
                assert_eq!(u16::from_be_bytes([i.slice()[4], i.slice()[5]]), to.sport);
                assert_eq!(i.checksum(), i.header().icmp_type.calc_checksum(i.payload()));
            }
            _ => panic!("unexpected transport"),
        }
    }

    #[test]
    fn rewrites_match_etherparse_checksums() {
        for proto in [PROTO_TCP, PROTO_UDP, PROTO_ICMP] {
            // Source translation, destination translation, both.
            let dnat = Tuple4 { dst: 0xc0a8_0207, dport: 8080, ..FROM };
            let both = Tuple4 { src: TO.src, sport: TO.sport, ..dnat };
            for to in [TO, dnat, both] {
                let to = if proto == PROTO_ICMP { Tuple4 { dport: to.sport, ..to } } else { to };
                let from = if proto == PROTO_ICMP { Tuple4 { dport: FROM.sport, ..FROM } } else { FROM };
                let mut v = frame(proto);
                rewrite_v4(&mut v, 14, 34, proto, true, from, to);
                check(&v, to);
            }
        }
    }

    /// Random tuples, payloads and translations (any of the four fields
    /// changed or kept, the identity included), checked against
    /// etherparse's full recomputation: the whole-word incremental sum
    /// gives the same checksums as computing them again, including the
    /// UDP checksums whose computed value is 0 (sent as 0xffff).
    #[test]
    fn random_rewrites_match_etherparse_checksums() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut udp_ffff, mut n) = (0, 0);
        while n < 20_000 || udp_ffff < 3 {
            n += 1;
            let r = rnd();
            let from = Tuple4 { src: r as u32, dst: (r >> 32) as u32, sport: rnd() as u16, dport: rnd() as u16 };
            let m = rnd();
            let pick = |bit: u64, old: u32, new: u32| if m >> bit & 1 == 1 { new } else { old };
            let r = rnd();
            let to = Tuple4 {
                src: pick(0, from.src, r as u32),
                dst: pick(1, from.dst, (r >> 32) as u32),
                sport: pick(2, from.sport as u32, (m >> 16) as u32) as u16,
                dport: pick(3, from.dport as u32, (m >> 32) as u32) as u16,
            };
            let proto = if m >> 4 & 1 == 1 { PROTO_TCP } else { PROTO_UDP };
            let payload = rnd().to_be_bytes();
            let b = PacketBuilder::ethernet2([2; 6], [4; 6]).ipv4(from.src.to_be_bytes(), from.dst.to_be_bytes(), 64);
            let mut v = Vec::new();
            match proto {
                PROTO_TCP => b.tcp(from.sport, from.dport, 7, 1024).ack(9).write(&mut v, &payload),
                _ => b.udp(from.sport, from.dport).write(&mut v, &payload),
            }
            .unwrap();
            if proto == PROTO_UDP && v[40..42] == [0xff, 0xff] {
                udp_ffff += 1;
            }
            let mut fast = v.clone();
            rewrite_v4(&mut v, 14, 34, proto, true, from, to);
            check(&v, to);
            // The fast path's form: the same bytes, from what the frame
            // carries (the identity writes nothing).
            retarget_v4(&mut fast, proto, to);
            check(&fast, to);
            assert_eq!(fast, v, "{proto} {from:?} -> {to:?}");
            // And back again.
            rewrite_v4(&mut v, 14, 34, proto, true, to, from);
            check(&v, from);
            retarget_v4(&mut fast, proto, from);
            assert_eq!(fast, v);
        }
    }

    /// The fast path's form leaves alone what it does not take: a UDP
    /// checksum of 0 (none), other protocols, frames too short for the
    /// transport checksum.
    #[test]
    fn retarget_keeps_no_udp_checksum_and_leaves_the_rest_alone() {
        let mut v = frame(PROTO_UDP);
        v[40] = 0;
        v[41] = 0;
        retarget_v4(&mut v, PROTO_UDP, TO);
        assert_eq!(&v[40..42], &[0, 0]);
        let h = etherparse::Ipv4HeaderSlice::from_slice(&v[14..]).unwrap().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!((u32::from_be_bytes(h.source), u32::from_be_bytes(h.destination)), (TO.src, TO.dst));
        assert_eq!((u16::from_be_bytes([v[34], v[35]]), u16::from_be_bytes([v[36], v[37]])), (TO.sport, TO.dport));
        let icmp = frame(PROTO_ICMP);
        let mut w = icmp.clone();
        retarget_v4(&mut w, PROTO_ICMP, TO);
        assert_eq!(w, icmp);
        for (proto, len) in [(PROTO_TCP, 51), (PROTO_UDP, 41), (PROTO_UDP, 20)] {
            let mut short = frame(proto);
            short.truncate(len);
            let before = short.clone();
            retarget_v4(&mut short, proto, TO);
            assert_eq!(short, before, "{proto} in {len} bytes");
        }
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let mut v = frame(PROTO_UDP);
        v[40] = 0;
        v[41] = 0;
        rewrite_v4(&mut v, 14, 34, PROTO_UDP, true, FROM, TO);
        assert_eq!(&v[40..42], &[0, 0]);
        assert_eq!(u16::from_be_bytes([v[34], v[35]]), TO.sport);
    }

    #[test]
    fn later_fragment_gets_addresses_only() {
        let mut v = frame(PROTO_UDP);
        let before = v[34..].to_vec();
        rewrite_v4(&mut v, 14, 34, PROTO_UDP, false, FROM, TO);
        assert_eq!(&v[34..], &before[..], "the payload of a later fragment is not a header");
        let h = etherparse::Ipv4HeaderSlice::from_slice(&v[14..]).unwrap().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(u32::from_be_bytes(h.source), TO.src);
    }

    #[test]
    fn short_buffers_are_left_alone() {
        // The caller validates headers; a short buffer must still not panic.
        let mut v = frame(PROTO_TCP);
        v.truncate(40);
        rewrite_v4(&mut v, 14, 34, PROTO_TCP, true, FROM, TO);
        let mut tiny = vec![0u8; 20];
        rewrite_v4(&mut tiny, 14, 34, PROTO_UDP, true, FROM, TO);
    }
}
