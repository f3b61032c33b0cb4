//! Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Rewriting a header field must not cost a full recomputation: routers and
//! NATs update the checksum from the old and new value of the changed words.

/// Ones'-complement sum of `data` as big-endian 16-bit words, not folded.
/// An odd trailing byte is padded with zero, as RFC 1071 specifies.
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64;
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        acc += u16::from_be_bytes([rest[i], rest[i + 1]]) as u64;
        i += 2;
    }
    if i < rest.len() {
        acc += (rest[i] as u64) << 8;
    }
    acc
}

/// Folds a wide ones'-complement sum into 16 bits (not inverted), without
/// a loop (a loop's exit depends on the data and mispredicts on every other
/// packet): the two 32-bit halves added with their carry wrapped around
/// (2^32 is 1 in ones'-complement arithmetic), then the two 16-bit halves
/// of that the same way, by adding the word to itself rotated by 16 bits:
/// the upper half of the result is high + low + the carry out of the lower
/// half (the trick of the Linux kernel's `csum_fold`). Zero only for a zero
/// sum, as with repeated end-around carries.
#[inline]
pub fn fold(acc: u64) -> u16 {
    let (s, carry) = (acc as u32).overflowing_add((acc >> 32) as u32);
    // No overflow: with a carry, s is at most 2^32 - 2.
    let s = s + carry as u32;
    (s.wrapping_add(s.rotate_left(16)) >> 16) as u16
}

/// The checksum field value for `data` (with its own checksum field zeroed).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// True when `data`, checksum field included, sums to all ones.
#[inline]
pub fn verify(data: &[u8]) -> bool {
    fold(sum(data)) == 0xffff
}

/// `verify` for a 20-byte header (IPv4 without options), in machine order
/// with no byte swaps: a ones'-complement sum taken in the other byte
/// order is the same sum byte-swapped (RFC 1071, 2(B)), and all ones is
/// all ones either way.
#[inline(always)]
pub fn verify20(h: &[u8; 20]) -> bool {
    let w = |at: usize| u32::from_ne_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]) as u64;
    fold(w(0) + w(4) + w(8) + w(12) + w(16)) == 0xffff
}

/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for one changed 16-bit word.
#[inline]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let acc = (!check as u64) + (!old as u64) + new as u64;
    !fold(acc)
}

/// The IPv4 header checksum field (as it lies in the header) after the TTL
/// is decremented by one: RFC 1624 eqn. 3 with the TTL/protocol word going
/// from m to m' = m - 0x0100, where ~m + m' is the constant 0xFEFF (the TTL
/// being at least 1). Ones'-complement sums do not depend on byte order
/// (RFC 1071, 2(B)), so the field is updated in the machine's order,
/// without byte swaps. Equal to `update16` for every checksum (tested).
#[inline(always)]
pub fn ttl_decremented(check: [u8; 2]) -> [u8; 2] {
    const K: u32 = u16::from_ne_bytes([0xfe, 0xff]) as u32;
    // At most 0xffff + 0xfeff: one end-around carry folds it.
    let s = !u16::from_ne_bytes(check) as u32 + K;
    (!(((s & 0xffff) + (s >> 16)) as u16)).to_ne_bytes()
}

/// RFC 1624 for a changed 32-bit field (an IPv4 address): two words at once.
#[inline]
pub fn update32(check: u16, old: u32, new: u32) -> u16 {
    let acc = (!check as u64)
        + (!(old >> 16) as u16 as u64)
        + (!(old as u16) as u64)
        + (new >> 16) as u64
        + (new & 0xffff) as u64;
    !fold(acc)
}

/// What replacing the 16-bit word `old` by `new` adds to a ones'-complement
/// sum (nothing when they are equal): several changes summed, then one
/// `!fold(!check + deltas)`, is RFC 1624 eqn. 3 applied once for all.
#[inline]
pub fn delta16(old: u16, new: u16) -> u64 {
    if old == new { 0 } else { (!old) as u64 + new as u64 }
}

/// Sum of the IPv4 pseudo-header used by TCP, UDP (RFC 768/793).
#[inline]
pub fn pseudo_v4(src: u32, dst: u32, proto: u8, len: u16) -> u64 {
    (src >> 16) as u64 + (src & 0xffff) as u64 + (dst >> 16) as u64 + (dst & 0xffff) as u64 + proto as u64 + len as u64
}

/// Sum of the IPv6 pseudo-header (RFC 8200 section 8.1).
#[inline]
pub fn pseudo_v6(src: u128, dst: u128, next_header: u8, len: u32) -> u64 {
    sum(&src.to_be_bytes()) + sum(&dst.to_be_bytes()) + (len >> 16) as u64 + (len & 0xffff) as u64 + next_header as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_decrement_matches_rfc_1624_for_every_checksum() {
        for check in 0..=u16::MAX {
            for (ttl, proto) in [(1u8, 6u8), (2, 17), (64, 1), (128, 0), (255, 255)] {
                let old = u16::from_be_bytes([ttl, proto]);
                let want = update16(check, old, old - 0x100);
                assert_eq!(ttl_decremented(check.to_be_bytes()), want.to_be_bytes(), "check {check:#06x} ttl {ttl}");
            }
        }
    }

    #[test]
    fn verify20_agrees_with_verify() {
        // Random headers, each also with its correct checksum written in,
        // and the all-zero and all-ones edges.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            let mut h = [0u8; 20];
            for b in h.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            assert_eq!(verify20(&h), verify(&h), "{h:02x?}");
            h[10..12].copy_from_slice(&[0, 0]);
            let c = checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            assert!(verify20(&h) && verify(&h), "{h:02x?}");
        }
        for h in [[0u8; 20], [0xff; 20]] {
            assert_eq!(verify20(&h), verify(&h));
        }
    }

    // RFC 1071 section 3 example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
    #[test]
    fn rfc1071_example_sum() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    // A real IPv4 header (Wikipedia's worked example), checksum b861.
    #[test]
    fn ipv4_header_vector() {
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10] = 0xb8;
        h[11] = 0x61;
        assert!(verify(&h));
        // TTL 64 -> 63 (0x40 -> 0x3f): the word 0x4011 becomes 0x3f11, and
        // the checksum computed afresh is 0xb961.
        let c = ttl_decremented([h[10], h[11]]);
        h[8] = 0x3f;
        h[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(checksum(&h), 0xb961);
        assert_eq!(c, [0xb9, 0x61]);
    }

    /// The branch-free fold against the textbook loop (end-around
    /// carry until nothing is left above 16 bits), edges and random sums.
    #[test]
    fn fold_matches_the_carry_loop() {
        fn reference(mut acc: u64) -> u16 {
            while acc >> 16 != 0 {
                acc = (acc & 0xffff) + (acc >> 16);
            }
            acc as u16
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let edges = [0, 1, 0xffff, 0x1_0000, 0x1_fffe, 0x1_ffff, 0xffff_ffff, 0x1_0000_0000, u64::MAX, u64::MAX - 1];
        for v in edges.into_iter().chain((0..100_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Sums of a few dozen words and full-width values alike.
            if x & 1 == 0 { x >> (x & 63) } else { x & 0x3f_ffff }
        })) {
            assert_eq!(fold(v), reference(v), "{v:#x}");
        }
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(&[0x01, 0x02, 0x03])), 0x0402);
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        // TTL 64 -> 63 changes the word (ttl, proto).
        let old = u16::from_be_bytes([h[8], h[9]]);
        h[8] = 63;
        let new = u16::from_be_bytes([h[8], h[9]]);
        let c = update16(0xb861, old, new);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(verify(&h));
        // Source address rewrite.
        let old_src = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
        let new_src = 0x0a00_0001;
        let c = update32(c, old_src, new_src);
        h[12..16].copy_from_slice(&new_src.to_be_bytes());
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(verify(&h));
    }
}
