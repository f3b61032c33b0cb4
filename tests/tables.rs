//! The route table at the size the issue asks for: 1,000,000 routes, looked
//! up against the builder's rule maps (a different algorithm: one hash probe
//! per prefix length, longest first).

use astara_dp::pktgen::scenario::RouteSpec;
use astara_dp::pktgen::{LengthDist, Rng, generate_routes};
use astara_dp::table::{Lpm4Builder, NO_ROUTE};

#[test]
fn one_million_routes_match_the_rule_maps() {
    let spec =
        RouteSpec { count: 1_000_000, next_hops: vec!["10.0.0.1".parse().unwrap()], lengths: LengthDist::Internet };
    let routes = generate_routes(&spec, &[], &mut Rng::new(3));
    assert_eq!(routes.len(), 1_000_000);
    let mut b = Lpm4Builder::new();
    for (i, r) in routes.iter().enumerate() {
        b.add(r.net, r.len, i as u32).unwrap();
    }
    let t = b.build().unwrap();
    assert_eq!(t.routes(), 1_000_000);
    let mut rng = Rng::new(11);
    for k in 0..200_000 {
        let ip = if k % 2 == 0 {
            let r = &routes[(rng.next_u64() % routes.len() as u64) as usize];
            r.net | (rng.next_u64() as u32 & (u32::MAX.checked_shr(r.len as u32).unwrap_or(0)))
        } else {
            rng.next_u64() as u32
        };
        assert_eq!(t.lookup(ip), b.lookup_slow(ip).unwrap_or(NO_ROUTE), "ip {ip:#x}");
    }
    // Deleting a tenth falls back to the covering routes.
    for r in routes.iter().step_by(10) {
        b.delete(r.net, r.len).unwrap();
    }
    let t = b.build().unwrap();
    for r in routes.iter().step_by(10).take(20_000) {
        assert_eq!(t.lookup(r.net), b.lookup_slow(r.net).unwrap_or(NO_ROUTE));
    }
}
