//! IPv4 fragmentation (RFC 791 section 3.2, RFC 1812 section 4.2.2.7): what a
//! router does with a packet larger than the egress MTU whose sender allowed
//! it (DF clear). Used on the exception path, not per packet.

use super::checksum;

/// Why a packet cannot be fragmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragError {
    /// Not a well-formed IPv4 packet after `l3_off`.
    Malformed,
    /// Don't Fragment is set (the sender gets "fragmentation needed").
    DontFragment,
    /// The MTU cannot hold the header and 8 bytes of data.
    MtuTooSmall,
}

/// Splits the IPv4 packet at `frame[l3_off..]` into fragments of at most
/// `mtu` bytes of IP, each with a copy of `frame[..l3_off]` (the link
/// header) in front, and hands them to `emit` in order. The first fragment
/// keeps every option; later ones only those with the copied flag (RFC 791).
/// Offsets and More Fragments continue those of the packet (it may itself
/// be a fragment). Returns how many fragments were emitted; on an error
/// none was.
pub fn fragment_v4(frame: &[u8], l3_off: usize, mtu: usize, mut emit: impl FnMut(&[u8])) -> Result<usize, FragError> {
    let ip = frame.get(l3_off..).ok_or(FragError::Malformed)?;
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Err(FragError::Malformed);
    }
    let ihl = (ip[0] & 0xf) as usize * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if ihl < 20 || total < ihl || total > ip.len() {
        return Err(FragError::Malformed);
    }
    let flags_off = u16::from_be_bytes([ip[6], ip[7]]);
    if flags_off & 0x4000 != 0 {
        return Err(FragError::DontFragment);
    }
    let more = flags_off & 0x2000 != 0;
    let base = (flags_off & 0x1fff) as usize * 8;
    // The options later fragments carry: the copied ones, padded to 32 bits.
    let mut later_opts = [0u8; 40];
    let mut later_len = 0;
    let opts = &ip[20..ihl];
    let mut i = 0;
    while i < opts.len() {
        let t = opts[i];
        if t == 0 {
            break;
        }
        if t == 1 {
            i += 1;
            continue;
        }
        let len = *opts.get(i + 1).ok_or(FragError::Malformed)? as usize;
        if len < 2 || i + len > opts.len() {
            return Err(FragError::Malformed);
        }
        if t & 0x80 != 0 {
            later_opts[later_len..later_len + len].copy_from_slice(&opts[i..i + len]);
            later_len += len;
        }
        i += len;
    }
    let later_ihl = 20 + later_len.div_ceil(4) * 4;
    let payload = &ip[ihl..total];
    if mtu < ihl + 8 || mtu < later_ihl + 8 {
        return Err(FragError::MtuTooSmall);
    }
    let mut out = [0u8; 65535 + 64];
    let mut pos = 0;
    let mut count = 0;
    while pos < payload.len() || count == 0 {
        let hlen = if count == 0 { ihl } else { later_ihl };
        let room = (mtu - hlen) & !7;
        let n = room.min(payload.len() - pos);
        let last = pos + n == payload.len();
        let f = &mut out[..l3_off + hlen + n];
        f[..l3_off].copy_from_slice(&frame[..l3_off]);
        let h = &mut f[l3_off..];
        if count == 0 {
            h[..ihl].copy_from_slice(&ip[..ihl]);
        } else {
            h[..20].copy_from_slice(&ip[..20]);
            h[20..later_ihl].fill(0);
            h[20..20 + later_len].copy_from_slice(&later_opts[..later_len]);
            h[0] = 0x40 | (later_ihl / 4) as u8;
        }
        h[2..4].copy_from_slice(&((hlen + n) as u16).to_be_bytes());
        let off = ((base + pos) / 8) as u16 | if !last || more { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&off.to_be_bytes());
        h[10..12].fill(0);
        let c = checksum::checksum(&h[..hlen]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h[hlen..hlen + n].copy_from_slice(&payload[pos..pos + n]);
        emit(&out[..l3_off + hlen + n]);
        pos += n;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 sum, written here rather than taken from the code under test.
    fn sum_ok(h: &[u8]) -> bool {
        let mut s: u32 = h.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum();
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        s == 0xffff
    }

    fn udp_frame(payload_len: usize, options: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        let ip = etherparse::Ipv4Header::new(
            (8 + payload_len) as u16,
            64,
            etherparse::IpNumber::UDP,
            [192, 168, 1, 6],
            [198, 51, 100, 7],
        )
        .unwrap();
        let mut ip = ip;
        ip.identification = 0x1234;
        ip.dont_fragment = false;
        ip.options = options.try_into().unwrap();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
            .udp(5000, 6000)
            .write(&mut v, &(0..payload_len).map(|i| i as u8).collect::<Vec<_>>())
            .unwrap();
        v
    }

    #[test]
    fn fragments_reassemble_to_the_original_payload() {
        // 2000 bytes of UDP payload through an MTU of 1400: 1376 + 632.
        let f = udp_frame(2000, &[]);
        let mut frags = Vec::new();
        let n = fragment_v4(&f, 14, 1400, |x| frags.push(x.to_vec())).unwrap();
        assert_eq!(n, 2);
        let mut data = Vec::new();
        for (k, fr) in frags.iter().enumerate() {
            assert_eq!(&fr[..14], &f[..14]);
            let h = etherparse::Ipv4HeaderSlice::from_slice(&fr[14..]).unwrap();
            assert!(sum_ok(&fr[14..34]));
            assert!(fr.len() - 14 <= 1400);
            assert_eq!(h.identification(), 0x1234);
            assert!(!h.dont_fragment());
            assert_eq!(h.more_fragments(), k == 0);
            assert_eq!(h.fragments_offset().value() as usize * 8, data.len());
            assert_eq!(h.total_len() as usize, fr.len() - 14);
            data.extend_from_slice(&fr[34..]);
        }
        assert_eq!(frags[0].len() - 14, 20 + 1376);
        // The reassembled datagram is the original UDP header and payload.
        assert_eq!(data, f[34..]);
    }

    #[test]
    fn only_copied_options_go_into_later_fragments() {
        // Router alert (148, copied) and record route (7, not copied) + NOP.
        let opts = [148, 4, 0, 0, 7, 7, 4, 0, 0, 0, 0, 1];
        let f = udp_frame(600, &opts);
        let mut frags = Vec::new();
        fragment_v4(&f, 14, 300, |x| frags.push(x.to_vec())).unwrap();
        assert!(frags.len() > 2);
        let first = etherparse::Ipv4HeaderSlice::from_slice(&frags[0][14..]).unwrap();
        assert_eq!(first.options(), &opts);
        for fr in &frags[1..] {
            let h = etherparse::Ipv4HeaderSlice::from_slice(&fr[14..]).unwrap();
            assert_eq!(h.options(), &[148, 4, 0, 0]);
            assert!(sum_ok(&fr[14..14 + h.slice().len()]));
            assert!(fr.len() - 14 <= 300);
        }
        // Every fragment's data is a multiple of 8 but the last.
        let mut covered = 0;
        for fr in &frags {
            let h = etherparse::Ipv4HeaderSlice::from_slice(&fr[14..]).unwrap();
            assert_eq!(h.fragments_offset().value() as usize * 8, covered);
            covered += h.total_len() as usize - h.slice().len();
        }
        assert_eq!(covered, 608);
    }

    #[test]
    fn a_fragment_is_fragmented_again_keeping_its_offset_and_more_flag() {
        let mut f = udp_frame(1000, &[]);
        // Make it a middle fragment at offset 800 with MF set.
        f[20..22].copy_from_slice(&(0x2000u16 | 100).to_be_bytes());
        f[24..26].fill(0);
        let c = crate::packet::checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        let mut hdrs = Vec::new();
        fragment_v4(&f, 14, 500, |x| hdrs.push(u16::from_be_bytes([x[20], x[21]]))).unwrap();
        assert_eq!(hdrs, vec![0x2000 | 100, 0x2000 | 160, 0x2000 | 220]);
    }

    #[test]
    fn refusals() {
        let mut f = udp_frame(2000, &[]);
        assert_eq!(fragment_v4(&f, 14, 20, |_| {}), Err(FragError::MtuTooSmall));
        f[20] |= 0x40;
        assert_eq!(fragment_v4(&f, 14, 1400, |_| {}), Err(FragError::DontFragment));
        assert_eq!(fragment_v4(&f[..30], 14, 1400, |_| {}), Err(FragError::Malformed));
        assert_eq!(fragment_v4(&f, 100_000, 1400, |_| {}), Err(FragError::Malformed));
    }
}
