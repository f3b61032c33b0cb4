//! The anchors classifier (tuple-space search) against a first-match scan
//! written here, over random rule sets and packets biased to hit them.

use astara_dp::table::{Acl, AclKey, AclRule};
use proptest::prelude::*;

/// The reference: rule by rule, first match wins.
fn linear(rules: &[AclRule], k: &AclKey) -> Option<(u32, bool)> {
    let within = |(a, l): (u128, u8), x: u128, bits: u32| {
        l == 0 || {
            let m = if l as u32 >= bits { u128::MAX } else { !(u128::MAX >> l) };
            let shift = 128 - bits;
            ((a << shift) & m) == ((x << shift) & m)
        }
    };
    rules
        .iter()
        .position(|r| {
            let bits = if r.v6 { 128 } else { 32 };
            r.v6 == k.v6
                && r.in_port.is_none_or(|p| p == k.in_port)
                && r.out_port.is_none_or(|p| p == k.out_port)
                && r.proto.is_none_or(|p| p == k.proto)
                && within(r.src, k.src, bits)
                && within(r.dst, k.dst, bits)
                && r.sport.0 <= k.sport
                && k.sport <= r.sport.1
                && r.dport.0 <= k.dport
                && k.dport <= r.dport.1
        })
        .map(|i| (i as u32, rules[i].pass))
}

fn prefix(v6: bool) -> impl Strategy<Value = (u128, u8)> {
    let bits = if v6 { 128u8 } else { 32 };
    (any::<u128>(), prop::sample::select(vec![0u8, 8, 16, 24, 28, 32, 48, 64, 128])).prop_map(move |(a, l)| {
        let l = l.min(bits);
        let a = if v6 { a } else { a & 0xffff_ffff };
        let a = if l == 0 { 0 } else { a & !((1u128 << (bits - l)) - 1) };
        // Few distinct networks, so packets hit them.
        (a & !(0xffu128 << (bits.saturating_sub(8)) >> 2), l)
    })
}

fn range() -> impl Strategy<Value = (u16, u16)> {
    prop_oneof![
        Just((0u16, u16::MAX)),
        (0u16..100).prop_map(|p| (p, p)),
        (0u16..100, 0u16..3000).prop_map(|(a, b)| (a, a.saturating_add(b))),
    ]
}

fn rule() -> impl Strategy<Value = AclRule> {
    any::<bool>().prop_flat_map(|v6| {
        (
            any::<bool>(),
            prop::option::of(0u16..3),
            prop::option::of(0u16..3),
            prop::option::of(prop::sample::select(vec![6u8, 17, 1])),
            prefix(v6),
            prefix(v6),
            range(),
            range(),
        )
            .prop_map(move |(pass, in_port, out_port, proto, src, dst, sport, dport)| AclRule {
                pass,
                in_port,
                out_port,
                v6,
                proto,
                src,
                dst,
                sport,
                dport,
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn tuple_space_search_equals_first_match_scan(
        rules in prop::collection::vec(rule(), 1..40),
        picks in prop::collection::vec((any::<prop::sample::Index>(), any::<u128>(), 0u16..3, 0u16..3, 0u16..3200, 0u16..3200, prop::sample::select(vec![6u8, 17, 1, 47])), 50),
    ) {
        let acl = Acl::build(rules.clone()).unwrap();
        for (pick, noise, inp, outp, sp, dp, proto) in picks {
            // A packet inside a rule's networks, with random low bits.
            let r = &rules[pick.index(rules.len())];
            let bits = if r.v6 { 128 } else { 32 };
            let host = |(a, l): (u128, u8)| {
                let low = if l as u32 >= bits { 0 } else { noise & ((1u128 << (bits - l as u32)) - 1) };
                a | low
            };
            let k = AclKey {
                src: host(r.src),
                dst: host(r.dst),
                in_port: inp,
                out_port: outp,
                sport: sp,
                dport: dp,
                proto,
                v6: r.v6,
            };
            prop_assert_eq!(acl.classify(&k), linear(&rules, &k), "key {:?}", k);
        }
    }
}
