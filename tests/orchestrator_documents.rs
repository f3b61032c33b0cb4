//! Documents in the shape the Astara orchestrator itself builds them
//! (`tests/common`: `orchestrator_router_doc`, `orchestrator_lb_doc`),
//! which differ from the examples in `configs/`: interfaces come named,
//! without `lladdr` or `mtu`; subnets without ids, one with no gateway
//! (`""`); no `static_routes`, `address_book` or `anchors`; a load
//! balancer's `vip_port` is Neutron's whole port object, and its pool's
//! health monitor, persistence and member subnet are null. Each is run
//! through `replay` and what leaves is checked against addresses, ports and
//! MACs written here, with checksums verified by etherparse and RFC 1071
//! (`common::tuple`).
//!
//! Replay makes its ports from the document: an interface without `lladdr`
//! gets the locally administered MAC 02:ac:da:00:00:k, k its place in name
//! order (ge0 is 0).

mod common;

use astara_dp::app::replay::ReplayOptions;
use astara_dp::control::StaticNeighbor;
use common::{Flags, on, orchestrator_lb_doc, orchestrator_router_doc, replay_with, tcp, tuple};

const GE1: [u8; 6] = [0x02, 0xac, 0xda, 0, 0, 1];
const GE2: [u8; 6] = [0x02, 0xac, 0xda, 0, 0, 2];
const GE3: [u8; 6] = [0x02, 0xac, 0xda, 0, 0, 3];

fn neighbor(port: &str, ip: &str, mac: &str) -> StaticNeighbor {
    StaticNeighbor { port: port.into(), ip: ip.parse().unwrap(), mac: mac.parse().unwrap() }
}

fn options(doc: &serde_json::Value, dir: &tempfile::TempDir, neighbors: Vec<StaticNeighbor>) -> ReplayOptions {
    let path = dir.path().join("doc.json");
    std::fs::write(&path, serde_json::to_vec(doc).unwrap()).unwrap();
    ReplayOptions { config: path, neighbors, ..Default::default() }
}

fn udp(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], ports: (u16, u16)) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .udp(ports.0, ports.1)
        .write(&mut v, b"query")
        .unwrap();
    v
}

fn ttl(frame: &[u8]) -> u8 {
    frame[22]
}

/// The router document routes to the default gateway, a subnet's host
/// route and a connected network, translates a floating IP's instance to
/// it and everyone else to the external address, and takes a reply back in.
#[test]
fn a_router_document_as_the_orchestrator_builds_it_routes_and_translates() {
    let dir = tempfile::tempdir().unwrap();
    let gw = [0xfa, 0x16, 0x3e, 0xff, 0, 1];
    let o = options(
        &orchestrator_router_doc(),
        &dir,
        vec![
            neighbor("ge1", "172.16.77.1", "fa:16:3e:ff:00:01"),
            neighbor("ge2", "192.168.0.254", "fa:16:3e:00:00:fe"),
            neighbor("ge2", "192.168.0.3", "fa:16:3e:00:00:03"),
            neighbor("ge3", "10.10.0.5", "fa:16:3e:0a:0a:05"),
        ],
    );
    let (h2, h3) = ([0xfa, 0x16, 0x3e, 0, 0, 2], [0xfa, 0x16, 0x3e, 0, 0, 3]);
    let out = replay_with(
        o,
        1_700_000_000,
        vec![
            // The floating IP's instance, then another instance, to the Internet.
            on("ge2", 0.0, udp(h2, GE2, [192, 168, 0, 2], [8, 8, 8, 8], (40000, 53))),
            on("ge2", 0.1, udp(h3, GE2, [192, 168, 0, 3], [8, 8, 8, 8], (40001, 53))),
            // By the subnet's host route (back out of ge2), and to ge3's network.
            on("ge2", 0.2, udp(h3, GE2, [192, 168, 0, 3], [10, 9, 1, 1], (40002, 53))),
            on("ge2", 0.3, udp(h3, GE2, [192, 168, 0, 3], [10, 10, 0, 5], (40003, 53))),
            // The Internet's reply to the masqueraded flow (its source
            // port kept, as it is when free).
            on("ge1", 0.4, udp(gw, GE1, [8, 8, 8, 8], [172, 16, 77, 50], (53, 40001))),
        ],
    );
    let ge1 = out.on("ge1");
    assert_eq!(ge1.len(), 2, "two frames out to the gateway: {:?}", out.summary.drops);
    for f in ge1 {
        assert_eq!((&f[0..6], &f[6..12]), (&gw[..], &GE1[..]), "to the gateway, from ge1");
        assert_eq!(ttl(f), 63);
    }
    assert_eq!(tuple(&ge1[0]), ([172, 16, 77, 51], [8, 8, 8, 8], 40000, 53), "floating IP");
    assert_eq!(tuple(&ge1[1]), ([172, 16, 77, 50], [8, 8, 8, 8], 40001, 53), "masquerade, source port kept");
    let ge2 = out.on("ge2");
    assert_eq!(ge2.len(), 1 + 1, "the host route's frame and the reply: {:?}", out.summary.drops);
    let route = ge2.iter().find(|f| tuple(f).1 == [10, 9, 1, 1]).expect("the host route's frame");
    assert_eq!((&route[0..6], &route[6..12]), (&[0xfa, 0x16, 0x3e, 0, 0, 0xfe][..], &GE2[..]));
    assert_eq!(tuple(route), ([192, 168, 0, 3], [10, 9, 1, 1], 40002, 53));
    let ge3 = out.on("ge3");
    assert_eq!(ge3.len(), 1);
    assert_eq!((&ge3[0][0..6], &ge3[0][6..12]), (&[0xfa, 0x16, 0x3e, 0x0a, 0x0a, 5][..], &GE3[..]));
    assert_eq!(tuple(&ge3[0]), ([192, 168, 0, 3], [10, 10, 0, 5], 40003, 53));
    // The reply, back to 192.168.0.3:40001.
    let reply = ge2.iter().find(|f| tuple(f).0 == [8, 8, 8, 8]).expect("the reply came back in");
    assert_eq!((&reply[0..6], &reply[6..12]), (&h3[..], &GE2[..]));
    assert_eq!(tuple(reply), ([8, 8, 8, 8], [192, 168, 0, 3], 53, 40001));
    assert_eq!(out.summary.drops.values().sum::<u64>(), 0, "{:?}", out.summary.drops);
}

/// The load balancer document, in each stage of its life the orchestrator
/// pushes (no listener; a listener without a pool; a pool without members;
/// one member), is taken; with its member, a client's connection to the
/// VIP reaches the member from the appliance's address and the member's
/// answer comes back from the VIP.
#[test]
fn a_load_balancer_document_as_the_orchestrator_builds_it_balances() {
    for (l, p, m) in [(false, false, false), (true, false, false), (true, true, false)] {
        let dir = tempfile::tempdir().unwrap();
        let client = [0xfa, 0x16, 0x3e, 0, 0, 0x50];
        let o = options(&orchestrator_lb_doc(l, p, m), &dir, vec![]);
        // Nothing to balance to: the SYN is not forwarded, and nothing fails.
        let out = replay_with(
            o,
            1_700_000_000,
            vec![on("ge1", 0.0, tcp(client, GE1, [192, 168, 0, 50], [192, 168, 0, 137], 33000, 80, Flags::Syn))],
        );
        assert!(out.on("ge1").iter().all(|f| tuple(f).1 != [192, 168, 0, 194]), "listener {l} pool {p}");
    }
    let dir = tempfile::tempdir().unwrap();
    let client = [0xfa, 0x16, 0x3e, 0, 0, 0x50];
    let member = [0xfa, 0x16, 0x3e, 0, 0, 0xc2];
    // (Each replay starts from an empty session table.)
    let with_member = || {
        options(
            &orchestrator_lb_doc(true, true, true),
            &dir,
            vec![
                neighbor("ge1", "192.168.0.194", "fa:16:3e:00:00:c2"),
                neighbor("ge1", "192.168.0.50", "fa:16:3e:00:00:50"),
            ],
        )
    };
    let syn = tcp(client, GE1, [192, 168, 0, 50], [192, 168, 0, 137], 33000, 80, Flags::Syn);
    let first = replay_with(with_member(), 1_700_000_000, vec![on("ge1", 0.0, syn.clone())]);
    let to_member = first.on("ge1");
    assert_eq!(to_member.len(), 1, "{:?}", first.summary.drops);
    assert_eq!((&to_member[0][0..6], &to_member[0][6..12]), (&member[..], &GE1[..]));
    // Translated to the member, from the appliance's address on its
    // network (the load balancer's default source translation).
    let (src, dst, sport, dport) = tuple(&to_member[0]);
    assert_eq!((src, dst, dport), ([192, 168, 0, 137], [192, 168, 0, 194], 80));
    // The member's answer, to the port it was given, goes back to the
    // client from the VIP.
    let synack = tcp(member, GE1, [192, 168, 0, 194], [192, 168, 0, 137], 80, sport, Flags::SynAck);
    let both = replay_with(with_member(), 1_700_000_000, vec![on("ge1", 0.0, syn), on("ge1", 0.1, synack)]);
    let out = both.on("ge1");
    assert_eq!(out.len(), 2, "{:?}", both.summary.drops);
    assert_eq!((&out[1][0..6], &out[1][6..12]), (&client[..], &GE1[..]));
    assert_eq!(tuple(&out[1]), ([192, 168, 0, 137], [192, 168, 0, 50], 80, 33000));
}
