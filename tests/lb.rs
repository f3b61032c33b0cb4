//! The L4 load balancer through `replay`, over `configs/loadbalancer.json`
//! (an Astara load-balancer appliance: VIP 192.168.0.137 on ge1, an HTTP
//! listener on port 80, members 192.168.0.194 weight 1 and 192.168.0.195
//! weight 2, clients on other subnets behind the subnet's gateway
//! 192.168.0.1). Frames are built and checked with etherparse (every
//! checksum verified); the expected addresses are written by hand.

use astara_dp::app::replay::ReplayOptions;
use astara_dp::control::StaticNeighbor;
use astara_dp::stage::lb::LbSnat;
use common::{Flags, In, Out, on, tcp, tuple};
use etherparse::PacketBuilder;
use std::collections::HashMap;
use std::path::PathBuf;

mod common;

const LB_JSON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/loadbalancer.json");
/// ge1's MAC as `replay` makes it (the interface names no lladdr).
const GE1: [u8; 6] = [0x02, 0xac, 0xda, 0x00, 0x00, 0x01];
const GATEWAY: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];
const VIP: [u8; 4] = [192, 168, 0, 137];
const M1: [u8; 4] = [192, 168, 0, 194];
const M2: [u8; 4] = [192, 168, 0, 195];
const M3: [u8; 4] = [192, 168, 0, 196];
const M1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x00, 0xc2];
const M2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x00, 0xc3];
const M3_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x00, 0xc4];
const START: u64 = 2_000_000;

fn lb_json() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(LB_JSON).unwrap()).unwrap()
}

fn members(doc: &mut serde_json::Value) -> &mut Vec<serde_json::Value> {
    doc["services"]["loadbalancer"]["listeners"][0]["default_pool"]["members"].as_array_mut().unwrap()
}

/// The document with a third member, 192.168.0.196 (weight 1).
fn with_third_member(dir: &std::path::Path) -> PathBuf {
    let mut doc = lb_json();
    members(&mut doc).push(serde_json::json!({"id": "m3", "address": "192.168.0.196", "protocol_port": 80,
        "weight": 1, "admin_state_up": true}));
    doc["networks"][1]["allocations"].as_array_mut().unwrap().push(serde_json::json!({
        "mac_address": "fa:16:3e:00:00:c4", "hostname": "web-3", "device_id": "web-3",
        "ip_addresses": {"192.168.0.196": true}}));
    write(dir, "three.json", &doc)
}

fn write(dir: &std::path::Path, name: &str, doc: &serde_json::Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec(doc).unwrap()).unwrap();
    p
}

fn replay(inputs: Vec<In>, tweak: impl FnOnce(&mut ReplayOptions)) -> Out {
    let mut o = ReplayOptions {
        config: PathBuf::from(LB_JSON),
        neighbors: vec![StaticNeighbor {
            port: "ge1".into(),
            ip: "192.168.0.1".parse().unwrap(),
            mac: astara_dp::packet::Mac(GATEWAY),
        }],
        ..Default::default()
    };
    tweak(&mut o);
    common::replay_with(o, START, inputs)
}

/// Client `k`: 10.20.x.y, port 20000 + k % 1000.
fn client(k: u32) -> ([u8; 4], u16) {
    ([10, 20, (k >> 8) as u8, k as u8], 20_000 + (k % 1000) as u16)
}

fn syn_to_vip(k: u32, at: f64) -> In {
    let (c, p) = client(k);
    on("ge1", at, tcp(GATEWAY, GE1, c, VIP, p, 80, Flags::Syn))
}

fn ack_to_vip(k: u32, at: f64) -> In {
    let (c, p) = client(k);
    on("ge1", at, tcp(GATEWAY, GE1, c, VIP, p, 80, Flags::Ack))
}

fn dst_mac(f: &[u8]) -> [u8; 6] {
    f[0..6].try_into().unwrap()
}

/// For each frame sent to a member: (member address, translated source
/// address and port), after checking the frame (checksums, destination MAC
/// of that member, port 80).
fn to_members(frames: &[Vec<u8>]) -> Vec<([u8; 4], [u8; 4], u16)> {
    frames
        .iter()
        .map(|f| {
            let (s, d, sp, dp) = tuple(f);
            let mac = match d {
                M1 => M1_MAC,
                M2 => M2_MAC,
                M3 => M3_MAC,
                other => panic!("sent to {other:?}, not a member"),
            };
            assert_eq!(dst_mac(f), mac, "member's MAC");
            assert_eq!(&f[6..12], &GE1, "from ge1");
            assert_eq!(dp, 80);
            (d, s, sp)
        })
        .collect()
}

#[test]
fn vip_flows_spread_over_members_by_weight_and_replies_come_back_from_the_vip() {
    const N: u32 = 3000;
    let out = replay((0..N).map(|k| syn_to_vip(k, 0.0)).collect(), |_| {});
    let sent = to_members(out.on("ge1"));
    assert_eq!(sent.len(), N as usize, "{:?}", out.summary.drops);
    assert_eq!(out.counter("lb: sessions created"), N as u64);
    let on_m2 = sent.iter().filter(|s| s.0 == M2).count() as f64 / N as f64;
    // Weights 1 and 2: two thirds to .195, within 3 %.
    assert!((on_m2 - 2.0 / 3.0).abs() < 0.03, "share of the weight-2 member {on_m2}");
    // Members see the appliance's address (source translation "always").
    assert!(sent.iter().all(|s| s.1 == VIP), "source is the appliance's address on ge1");

    // Replies from each member to the port it saw come back to the client
    // from the VIP, through the gateway.
    let mut inputs: Vec<In> = (0..N).map(|k| syn_to_vip(k, 0.0)).collect();
    for (k, &(member, _, port)) in sent.iter().enumerate() {
        let mac = if member == M1 { M1_MAC } else { M2_MAC };
        inputs.push(on("ge1", 1.0 + k as f64 * 1e-6, tcp(mac, GE1, member, VIP, 80, port, Flags::SynAck)));
    }
    let out = replay(inputs, |_| {});
    let frames = out.on("ge1");
    assert_eq!(frames.len(), 2 * N as usize, "{:?}", out.summary.drops);
    for (k, f) in frames[N as usize..].iter().enumerate() {
        let (c, p) = client(k as u32);
        assert_eq!(tuple(f), (VIP, c, 80, p), "reply {k}");
        assert_eq!(dst_mac(f), GATEWAY);
    }
}

#[test]
fn least_connections_and_source_ip_pools() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = lb_json();
    doc["services"]["loadbalancer"]["listeners"][0]["default_pool"]["lb_algorithm"] = "SOURCE_IP".into();
    let source_ip = write(dir.path(), "source-ip.json", &doc);
    // Twenty flows from each of 50 clients: each client on one member.
    let inputs: Vec<In> = (0..1000u32)
        .map(|k| {
            let c = [10, 30, 0, (k % 50) as u8];
            on("ge1", 0.0, tcp(GATEWAY, GE1, c, VIP, 30_000 + k as u16, 80, Flags::Syn))
        })
        .collect();
    let out = replay(inputs, |o| o.config = source_ip);
    let sent = out.on("ge1");
    assert_eq!(sent.len(), 1000);
    let mut by_client: HashMap<u8, [u8; 4]> = HashMap::new();
    for (k, &(member, _, _)) in to_members(sent).iter().enumerate() {
        let prev = by_client.insert((k % 50) as u8, member);
        assert!(prev.is_none_or(|p| p == member), "client {} moved between members", k % 50);
    }
    assert!(by_client.values().any(|&m| m == M1) && by_client.values().any(|&m| m == M2));

    doc["services"]["loadbalancer"]["listeners"][0]["default_pool"]["lb_algorithm"] = "LEAST_CONNECTIONS".into();
    let least = write(dir.path(), "least.json", &doc);
    let out = replay((0..300).map(|k| syn_to_vip(k, 0.0)).collect(), |o| o.config = least);
    let sent = to_members(out.on("ge1"));
    // Open sessions per weight stay level: 100 on the weight-1 member, 200
    // on the weight-2 member.
    assert_eq!(sent.iter().filter(|s| s.0 == M1).count(), 100);
    assert_eq!(sent.iter().filter(|s| s.0 == M2).count(), 200);
}

#[test]
fn affinity_kept_across_a_member_set_change_and_only_the_new_members_share_moves() {
    let dir = tempfile::tempdir().unwrap();
    let three = with_third_member(dir.path());
    const N: u32 = 1000;
    // Old flows open under two members; a third member arrives at t=10;
    // the old flows go on at t=20 and new flows start.
    let mut inputs: Vec<In> = (0..N).map(|k| syn_to_vip(k, 0.0)).collect();
    inputs.extend((0..N).map(|k| ack_to_vip(k, 20.0)));
    inputs.extend((N..3 * N).map(|k| syn_to_vip(k, 20.0)));
    let change = (START + 10) as f64;
    let out = replay(inputs, |o| o.changes = vec![(change, three)]);
    let sent = to_members(out.on("ge1"));
    assert_eq!(sent.len(), 4 * N as usize, "{:?}", out.summary.drops);
    let n = N as usize;
    for k in 0..n {
        assert_eq!(sent[n + k], sent[k], "flow {k} kept its member and its translation");
    }
    assert!(sent[..2 * n].iter().all(|s| s.0 != M3), "no old flow moved to the new member");

    // The new flows, as the two-member table would have placed them.
    let before = replay((N..3 * N).map(|k| syn_to_vip(k, 0.0)).collect(), |_| {});
    let before = to_members(before.on("ge1"));
    let after = &sent[2 * n..];
    let to_new = after.iter().filter(|s| s.0 == M3).count() as f64 / (2 * n) as f64;
    let moved_elsewhere =
        after.iter().zip(&before).filter(|(a, b)| a.0 != M3 && a.0 != b.0).count() as f64 / (2 * n) as f64;
    // Weights 1, 2, 1: the new member takes a quarter; the rest stay put
    // (Maglev's minimal disruption, within 3 % here).
    assert!((to_new - 0.25).abs() < 0.04, "share of the new member {to_new}");
    assert!(moved_elsewhere < 0.03, "flows moved between old members {moved_elsewhere}");
}

#[test]
fn a_member_set_down_drains_its_flows_then_ends_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = lb_json();
    members(&mut doc)[0]["admin_state_up"] = false.into();
    let down = write(dir.path(), "m1-down.json", &doc);
    const N: u32 = 300;
    let mut inputs: Vec<In> = (0..N).map(|k| syn_to_vip(k, 0.0)).collect();
    inputs.extend((0..N).map(|k| ack_to_vip(k, 20.0)));
    inputs.extend((N..2 * N).map(|k| syn_to_vip(k, 20.0)));
    // The default drain timeout is 300 s from the first packet seen
    // draining (t=20): at t=220 they still pass, at t=400 they end.
    // (Packets every 200 s keep the half-open sessions from idling out.)
    inputs.extend((0..N).map(|k| ack_to_vip(k, 220.0)));
    inputs.extend((0..N).map(|k| ack_to_vip(k, 400.0)));
    let out = replay(inputs, |o| o.changes = vec![((START + 10) as f64, down)]);
    let sent = to_members(out.on("ge1"));
    let n = N as usize;
    let on_m1 = sent[..n].iter().filter(|s| s.0 == M1).count();
    assert!(on_m1 > 50, "some flows were on .194 before ({on_m1})");
    assert_eq!(&sent[n..2 * n], &sent[..n], "existing flows stay while draining");
    assert!(sent[2 * n..3 * n].iter().all(|s| s.0 == M2), "new flows avoid the member that is down");
    assert_eq!(&sent[3 * n..4 * n], &sent[..n], "still draining at t=220");
    let late = &sent[4 * n..];
    assert_eq!(late.len(), n - on_m1, "only the other member's flows pass after the timeout");
    assert!(late.iter().all(|s| s.0 == M2));
    assert_eq!(out.drops("lb: member drain timeout passed"), on_m1 as u64);
}

#[test]
fn no_member_available_and_the_vip_as_an_address_of_the_appliance() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = lb_json();
    for m in members(&mut doc) {
        m["admin_state_up"] = false.into();
    }
    let none = write(dir.path(), "none.json", &doc);
    let mut ping = Vec::new();
    PacketBuilder::ethernet2(GATEWAY, GE1)
        .ipv4([10, 20, 0, 1], VIP, 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut ping, b"x")
        .unwrap();
    let inputs = vec![
        syn_to_vip(1, 0.0),
        on("ge1", 0.0, ping),
        // A port with no listener: the appliance's own INPUT policy.
        on("ge1", 0.0, tcp(GATEWAY, GE1, [10, 20, 0, 1], VIP, 4000, 81, Flags::Syn)),
    ];
    let out = replay(inputs, |o| o.config = none);
    assert_eq!(out.drops("lb: no member available"), 1);
    assert_eq!(out.drops("firewall: not allowed to the appliance"), 1);
    assert_eq!(out.on("punt").len(), 1, "the ping goes to the host stack");
    assert!(out.on("ge1").is_empty());
}

#[test]
fn without_source_translation_members_see_the_client_and_replies_are_translated_back() {
    const N: u32 = 200;
    let out = replay((0..N).map(|k| syn_to_vip(k, 0.0)).collect(), |o| o.lb_snat = LbSnat::Never);
    let sent = to_members(out.on("ge1"));
    for (k, s) in sent.iter().enumerate() {
        let (c, p) = client(k as u32);
        assert_eq!((s.1, s.2), (c, p), "the member sees the client");
    }
    let mut inputs: Vec<In> = (0..N).map(|k| syn_to_vip(k, 0.0)).collect();
    for (k, &(member, _, _)) in sent.iter().enumerate() {
        let (c, p) = client(k as u32);
        let mac = if member == M1 { M1_MAC } else { M2_MAC };
        inputs.push(on("ge1", 1.0, tcp(mac, GE1, member, c, 80, p, Flags::SynAck)));
    }
    let out = replay(inputs, |o| o.lb_snat = LbSnat::Never);
    let frames = &out.on("ge1")[N as usize..];
    assert_eq!(frames.len(), N as usize);
    for (k, f) in frames.iter().enumerate() {
        let (c, p) = client(k as u32);
        assert_eq!(tuple(f), (VIP, c, 80, p));
    }
}
