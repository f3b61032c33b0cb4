//! NAT, connection tracking and filtering behaviour, from hand-built packets
//! (etherparse) run through `replay` over `configs/router.json`, each test
//! named after the requirement it checks (RFC 4787 UDP, RFC 5382 TCP,
//! RFC 5508 ICMP, and ASTARA.md's NAT and filter rules). Outputs are parsed
//! with etherparse; checksums are verified with an RFC 1071 sum written
//! here; expected addresses and ports are written by hand.
//!
//! The example document: ge1 external 203.0.113.10/24 (gateway .1), ge2
//! internal 192.168.1.1/24, ge3 internal 192.168.2.1/24 ("db-servers");
//! floating IPs 203.0.113.50 ↔ 192.168.1.5 and 203.0.113.51 ↔ 192.168.2.7;
//! anchors: block in on ge1 from 198.51.100.0/24, pass in on ge2 TCP to
//! db-servers port 5432, block IPv4 to db-servers.

use astara_dp::app::replay::ReplayOptions;
use astara_dp::control::StaticNeighbor;
use astara_dp::stage::Filtering;
use etherparse::PacketBuilder;
use std::path::PathBuf;

mod common;
use common::{Flags, In, Out, inet_sum_ok, on, tcp, tuple};

const GE1: [u8; 6] = [0xfa, 0x16, 0x3e, 0xa0, 0x80, 0x82];
const GE2: [u8; 6] = [0xfa, 0x16, 0x3e, 0x11, 0x22, 0x01];
const GE3: [u8; 6] = [0xfa, 0x16, 0x3e, 0x11, 0x22, 0x02];
const UPSTREAM: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];
const HOST: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x99];
const EXT: [u8; 4] = [203, 0, 113, 10];
const START: u64 = 1_000_000;

fn replay(inputs: Vec<In>, tweak: impl FnOnce(&mut ReplayOptions)) -> Out {
    let mut o = ReplayOptions {
        config: PathBuf::from(common::ROUTER_JSON),
        neighbors: vec![
            common::upstream("02:00:5e:00:00:01"),
            StaticNeighbor {
                port: "ge2".into(),
                ip: "192.168.1.9".parse().unwrap(),
                mac: astara_dp::packet::Mac(HOST),
            },
        ],
        ..Default::default()
    };
    tweak(&mut o);
    common::replay_with(o, START, inputs)
}

fn udp(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, dst, 64).udp(sport, dport).write(&mut v, b"datagram").unwrap();
    v
}

fn ping(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], id: u16, request: bool) -> Vec<u8> {
    let mut v = Vec::new();
    let b = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, dst, 64);
    if request { b.icmpv4_echo_request(id, 1) } else { b.icmpv4_echo_reply(id, 1) }.write(&mut v, b"ping").unwrap();
    v
}

/// An ICMPv4 error of `type_`/`code` from `from` to `to` quoting the IP
/// packet `quoted` (its IP header and first 8 transport bytes).
fn icmp_error(from: [u8; 4], to: [u8; 4], type_: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    icmp_error_from((UPSTREAM, GE1), from, to, type_, code, quoted)
}

/// `icmp_error` sent from MAC `macs.0` to the port whose MAC is `macs.1`.
fn icmp_error_from(
    macs: ([u8; 6], [u8; 6]),
    from: [u8; 4],
    to: [u8; 4],
    type_: u8,
    code: u8,
    quoted: &[u8],
) -> Vec<u8> {
    let hl = (quoted[0] & 0x0f) as usize * 4;
    let q = &quoted[..(hl + 8).min(quoted.len())];
    let t = match (type_, code) {
        (3, 3) => etherparse::Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port),
        (11, 0) => etherparse::Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit),
        _ => panic!("unsupported"),
    };
    let mut v = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1).ipv4(from, to, 64).icmpv4(t).write(&mut v, q).unwrap();
    v
}

// ---- RFC 4787 (UDP) ----

#[test]
fn rfc4787_req1_endpoint_independent_mapping() {
    let out = replay(
        vec![
            on("ge2", 0.0, udp(HOST, GE2, [192, 168, 1, 6], [8, 8, 8, 8], 5000, 53)),
            on("ge2", 0.1, udp(HOST, GE2, [192, 168, 1, 6], [9, 9, 9, 9], 5000, 123)),
            on("ge2", 0.2, udp(HOST, GE2, [192, 168, 1, 6], [1, 1, 1, 1], 5000, 53)),
        ],
        |_| {},
    );
    let t: Vec<_> = out.on("ge1").iter().map(|f| tuple(f)).collect();
    assert_eq!(t.len(), 3);
    // One external endpoint for the internal endpoint, whatever the destination.
    assert!(t.iter().all(|x| x.0 == EXT && x.2 == t[0].2), "{t:?}");
    assert_eq!(out.counter("nat: port mappings in use"), 1);
    assert_eq!(out.counter("nat: masquerade sessions"), 3);
}

#[test]
fn rfc4787_req3_port_preservation_without_overloading() {
    let out = replay(
        vec![
            on("ge2", 0.0, udp(HOST, GE2, [192, 168, 1, 6], [8, 8, 8, 8], 5000, 53)),
            on("ge2", 0.1, udp(HOST, GE2, [192, 168, 1, 9], [8, 8, 8, 8], 5000, 53)),
            // Replies to both external ports.
            on("ge1", 0.2, udp(UPSTREAM, GE1, [8, 8, 8, 8], EXT, 53, 5000)),
        ],
        |_| {},
    );
    let t: Vec<_> = out.on("ge1").iter().map(|f| tuple(f)).collect();
    assert_eq!(t[0], (EXT, [8, 8, 8, 8], 5000, 53), "the first keeps its port");
    assert_eq!(t[1].0, EXT);
    assert_ne!(t[1].2, 5000, "no port overloading: the second gets another port");
    assert!(t[1].2 >= 1024, "an unprivileged port stays unprivileged (REQ-3a)");
    // The reply to 5000 reaches the first host only.
    let back: Vec<_> = out.on("ge2").iter().map(|f| tuple(f)).collect();
    assert_eq!(back, vec![([8, 8, 8, 8], [192, 168, 1, 6], 53, 5000)]);
    assert_eq!(&out.on("ge2")[0][0..6], &[0xfa, 0x16, 0x3e, 0, 1, 6]);
    // The second mapping's reply, in a second run with its port.
    let p = t[1].2;
    let out = replay(
        vec![
            on("ge2", 0.0, udp(HOST, GE2, [192, 168, 1, 6], [8, 8, 8, 8], 5000, 53)),
            on("ge2", 0.1, udp(HOST, GE2, [192, 168, 1, 9], [8, 8, 8, 8], 5000, 53)),
            on("ge1", 0.2, udp(UPSTREAM, GE1, [8, 8, 8, 8], EXT, 53, p)),
        ],
        |_| {},
    );
    let back: Vec<_> = out.on("ge2").iter().map(|f| tuple(f)).collect();
    assert_eq!(back, vec![([8, 8, 8, 8], [192, 168, 1, 9], 53, 5000)]);
    assert_eq!(&out.on("ge2")[0][0..6], &HOST);
}

#[test]
fn rfc4787_req3a_privileged_ports_map_to_privileged_ports() {
    let out = replay(
        vec![
            on("ge2", 0.0, udp(HOST, GE2, [192, 168, 1, 6], [8, 8, 8, 8], 500, 500)),
            on("ge2", 0.1, udp(HOST, GE2, [192, 168, 1, 9], [8, 8, 8, 8], 500, 500)),
        ],
        |_| {},
    );
    let t: Vec<_> = out.on("ge1").iter().map(|f| tuple(f)).collect();
    assert_eq!(t[0].2, 500);
    assert!(t[1].2 < 1024 && t[1].2 != 500, "{t:?}");
}

#[test]
fn rfc4787_req5_udp_mapping_lives_at_least_two_minutes() {
    let out = replay(
        vec![
            on("ge2", 0.0, udp(HOST, GE2, [192, 168, 1, 6], [8, 8, 8, 8], 5000, 53)),
            on("ge1", 119.0, udp(UPSTREAM, GE1, [8, 8, 8, 8], EXT, 53, 5000)),
            // The reply refreshed it: 119 + 121 s later it is gone.
            on("ge1", 240.5, udp(UPSTREAM, GE1, [8, 8, 8, 8], EXT, 53, 5000)),
        ],
        |_| {},
    );
    assert_eq!(out.on("ge2").len(), 1, "the reply within 2 min passes");
    assert_eq!(out.drops("firewall: not allowed to the appliance"), 1, "the late one finds no mapping");
    assert_eq!(out.counter("nat: port mappings in use"), 0, "the expired mapping was released");
}

#[test]
fn rfc4787_req8_address_and_port_dependent_filtering_by_default() {
    let out = replay(
        vec![
            on("ge2", 0.0, udp(HOST, GE2, [192, 168, 1, 6], [8, 8, 8, 8], 5000, 53)),
            on("ge1", 0.1, udp(UPSTREAM, GE1, [8, 8, 8, 8], EXT, 54, 5000)),
            on("ge1", 0.2, udp(UPSTREAM, GE1, [8, 8, 4, 4], EXT, 53, 5000)),
            on("ge1", 0.3, udp(UPSTREAM, GE1, [8, 8, 8, 8], EXT, 53, 5000)),
        ],
        |_| {},
    );
    assert_eq!(out.on("ge2").len(), 1, "only the exact remote endpoint gets in");
    assert_eq!(tuple(&out.on("ge2")[0]).0, [8, 8, 8, 8]);
    assert_eq!(out.drops("firewall: not allowed to the appliance"), 2);
}

#[test]
fn rfc4787_req8_endpoint_independent_filtering_mode() {
    let out = replay(
        vec![
            on("ge2", 0.0, udp(HOST, GE2, [192, 168, 1, 6], [8, 8, 8, 8], 5000, 53)),
            on("ge1", 0.1, udp(UPSTREAM, GE1, [1, 2, 3, 4], EXT, 7777, 5000)),
            // A port with no mapping stays closed.
            on("ge1", 0.2, udp(UPSTREAM, GE1, [1, 2, 3, 4], EXT, 7777, 5001)),
            // The new inbound flow is a session: its reply goes back translated.
            on("ge2", 0.3, udp(HOST, GE2, [192, 168, 1, 6], [1, 2, 3, 4], 5000, 7777)),
            // Anchors still apply to inbound flows: blocked-nets stay out.
            on("ge1", 0.4, udp(UPSTREAM, GE1, [198, 51, 100, 9], EXT, 7777, 5000)),
        ],
        |o| o.filtering = Filtering::EndpointIndependent,
    );
    let back: Vec<_> = out.on("ge2").iter().map(|f| tuple(f)).collect();
    assert_eq!(back, vec![([1, 2, 3, 4], [192, 168, 1, 6], 7777, 5000)]);
    let t: Vec<_> = out.on("ge1").iter().map(|f| tuple(f)).collect();
    assert_eq!(t, vec![(EXT, [8, 8, 8, 8], 5000, 53), (EXT, [1, 2, 3, 4], 5000, 7777)]);
    assert_eq!(out.drops("firewall: not allowed to the appliance"), 1);
    assert_eq!(out.drops("firewall: blocked by rule"), 1);
    assert_eq!(out.counter("nat: inbound through mapping sessions"), 1);
}

#[test]
fn rfc4787_req9_hairpinning_through_a_floating_ip() {
    // 192.168.1.6 reaches 192.168.2.7 by its floating IP 203.0.113.51 (TCP
    // 5432 from ge2 is what the anchors let into db-servers).
    let out = replay(
        vec![
            on("ge2", 0.0, tcp(HOST, GE2, [192, 168, 1, 6], [203, 0, 113, 51], 40000, 5432, Flags::Syn)),
            on("ge3", 0.1, tcp([0xfa, 0x16, 0x3e, 0, 2, 7], GE3, [192, 168, 2, 7], EXT, 5432, 40000, Flags::SynAck)),
        ],
        |_| {},
    );
    // The server sees the client as the external address (the original's
    // hairpin SNAT), and the client sees the server as the floating IP.
    let to_server: Vec<_> = out.on("ge3").iter().map(|f| tuple(f)).collect();
    assert_eq!(to_server, vec![(EXT, [192, 168, 2, 7], 40000, 5432)]);
    let to_client: Vec<_> = out.on("ge2").iter().map(|f| tuple(f)).collect();
    assert_eq!(to_client, vec![([203, 0, 113, 51], [192, 168, 1, 6], 5432, 40000)]);
    assert_eq!(out.counter("nat: hairpin sessions"), 1);
}

// ---- RFC 5382 (TCP) ----

const CLIENT: [u8; 4] = [192, 168, 1, 6];
const SERVER: [u8; 4] = [93, 184, 216, 34];

/// CLIENT:40000 opens a connection to SERVER:443 through the masquerade.
fn handshake() -> Vec<In> {
    vec![
        on("ge2", 0.0, tcp(HOST, GE2, CLIENT, SERVER, 40000, 443, Flags::Syn)),
        on("ge1", 0.1, tcp(UPSTREAM, GE1, SERVER, EXT, 443, 40000, Flags::SynAck)),
        on("ge2", 0.2, tcp(HOST, GE2, CLIENT, SERVER, 40000, 443, Flags::Ack)),
    ]
}

#[test]
fn rfc5382_req5_established_connection_idle_two_hours_four_minutes() {
    let mut inputs = handshake();
    // Idle for 2 h 3 min 59 s, then data from the server.
    inputs.push(on("ge1", 7439.0, tcp(UPSTREAM, GE1, SERVER, EXT, 443, 40000, Flags::Ack)));
    let out = replay(inputs, |_| {});
    assert_eq!(out.on("ge2").len(), 2, "both server segments reach the client");
    assert_eq!(tuple(&out.on("ge2")[1]), (SERVER, CLIENT, 443, 40000));
}

#[test]
fn rfc5382_transitory_connection_expires_after_four_minutes() {
    let out = replay(
        vec![
            on("ge2", 0.0, tcp(HOST, GE2, CLIENT, SERVER, 40000, 443, Flags::Syn)),
            // A half-open connection: 241 s later its mapping is gone.
            on("ge1", 241.0, tcp(UPSTREAM, GE1, SERVER, EXT, 443, 40000, Flags::SynAck)),
        ],
        |_| {},
    );
    assert_eq!(out.on("ge2").len(), 0);
    assert_eq!(out.drops("firewall: not allowed to the appliance"), 1);
}

#[test]
fn rfc5382_closed_connection_frees_its_mapping() {
    let (c, s) = (CLIENT, SERVER);
    let mut inputs = handshake();
    inputs.extend([
        on("ge2", 1.0, tcp(HOST, GE2, c, s, 40000, 443, Flags::Fin)),
        on("ge1", 1.1, tcp(UPSTREAM, GE1, s, EXT, 443, 40000, Flags::Fin)),
        on("ge2", 1.2, tcp(HOST, GE2, c, s, 40000, 443, Flags::Ack)),
        // Past TIME_WAIT (2 min), a fresh packet from outside finds nothing.
        on("ge1", 200.0, tcp(UPSTREAM, GE1, s, EXT, 443, 40000, Flags::Ack)),
    ]);
    let out = replay(inputs, |_| {});
    assert_eq!(out.on("ge1").len(), 4);
    assert_eq!(out.on("ge2").len(), 2);
    assert_eq!(out.counter("nat: port mappings in use"), 0);
}

// ---- RFC 5508 (ICMP) ----

#[test]
fn rfc5508_req1_echo_identifiers_are_translated_and_mapped_back() {
    let out = replay(
        vec![
            on("ge2", 0.0, ping(HOST, GE2, [192, 168, 1, 6], [8, 8, 8, 8], 77, true)),
            on("ge2", 0.1, ping(HOST, GE2, [192, 168, 1, 9], [8, 8, 8, 8], 77, true)),
        ],
        |_| {},
    );
    let t: Vec<_> = out.on("ge1").iter().map(|f| tuple(f)).collect();
    assert_eq!(t[0], (EXT, [8, 8, 8, 8], 77, 77), "identifier kept when free");
    assert_eq!(t[1].0, EXT);
    assert_ne!(t[1].2, 77, "two hosts with one identifier get two");
    let id2 = t[1].2;
    let out = replay(
        vec![
            on("ge2", 0.0, ping(HOST, GE2, [192, 168, 1, 6], [8, 8, 8, 8], 77, true)),
            on("ge2", 0.1, ping(HOST, GE2, [192, 168, 1, 9], [8, 8, 8, 8], 77, true)),
            on("ge1", 0.2, ping(UPSTREAM, GE1, [8, 8, 8, 8], EXT, id2, false)),
            on("ge1", 0.3, ping(UPSTREAM, GE1, [8, 8, 8, 8], EXT, 77, false)),
        ],
        |_| {},
    );
    let back: Vec<_> = out.on("ge2").iter().map(|f| tuple(f)).collect();
    assert_eq!(back, vec![([8, 8, 8, 8], [192, 168, 1, 9], 77, 77), ([8, 8, 8, 8], [192, 168, 1, 6], 77, 77)]);
}

#[test]
fn rfc5508_req3_icmp_error_translated_with_its_quoted_packet() {
    // Host .9 gets a translated source port (.6 holds 5000 first).
    let first = vec![
        on("ge2", 0.0, udp(HOST, GE2, [192, 168, 1, 6], [8, 8, 8, 8], 5000, 53)),
        on("ge2", 0.1, udp(HOST, GE2, [192, 168, 1, 9], [8, 8, 8, 8], 5000, 53)),
    ];
    let out = replay(first, |_| {});
    let sent = out.on("ge1")[1].clone();
    let p = tuple(&sent).2;
    // A router on the path says TTL exceeded; the target says port unreachable.
    let mut inputs = vec![
        on("ge2", 0.0, udp(HOST, GE2, [192, 168, 1, 6], [8, 8, 8, 8], 5000, 53)),
        on("ge2", 0.1, udp(HOST, GE2, [192, 168, 1, 9], [8, 8, 8, 8], 5000, 53)),
    ];
    inputs.push(on("ge1", 0.2, icmp_error([198, 18, 0, 1], EXT, 11, 0, &sent[14..])));
    inputs.push(on("ge1", 0.3, icmp_error([8, 8, 8, 8], EXT, 3, 3, &sent[14..])));
    let out = replay(inputs, |_| {});
    let back = out.on("ge2");
    assert_eq!(back.len(), 2, "{:?}", out.summary.drops);
    for (f, from) in back.iter().zip([[198, 18, 0, 1], [8, 8, 8, 8]]) {
        let (s, d, _, _) = tuple(f); // checks the outer ICMP checksum too
        assert_eq!((s, d), (from, [192, 168, 1, 9]));
        // The quoted packet is the one the host sent: its own address and port.
        let icmp = &f[34..];
        let q = &icmp[8..];
        assert!(inet_sum_ok(&q[..20]), "quoted header checksum");
        assert_eq!(&q[12..16], &[192, 168, 1, 9]);
        assert_eq!(&q[16..20], &[8, 8, 8, 8]);
        assert_eq!(u16::from_be_bytes([q[20], q[21]]), 5000);
        assert_eq!(u16::from_be_bytes([q[22], q[23]]), 53);
        assert_ne!(p, 5000);
    }
    assert_eq!(out.counter("nat: icmp errors translated"), 2);
}

#[test]
fn rfc5508_icmp_errors_quoting_garbage_or_unknown_flows_are_dropped() {
    let mut junk = vec![0x45u8, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 203, 0, 113, 10, 8, 8, 8, 8];
    junk.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 8, 0, 0]);
    let mut short = junk.clone();
    short.truncate(22);
    let out = replay(
        vec![
            on("ge1", 0.0, icmp_error([8, 8, 8, 8], EXT, 3, 3, &junk)),
            on("ge1", 0.1, icmp_error([8, 8, 8, 8], EXT, 3, 3, &short)),
            on("ge1", 0.2, icmp_error([8, 8, 8, 8], EXT, 11, 0, &[0x60; 48])),
        ],
        |_| {},
    );
    assert_eq!(out.summary.forwarded, 0);
    assert_eq!(out.drops("firewall: not allowed to the appliance"), 3);
}

#[test]
fn rfc5508_req4_req5_icmp_errors_about_no_known_flow_are_not_translated() {
    // Never sent through the router: the reply of a floating IP's host to
    // an outside client, and a client's datagram to an inside host.
    let fip_reply = udp(HOST, GE1, [203, 0, 113, 50], [1, 2, 3, 4], 80, 33000);
    let to_inside = udp(UPSTREAM, GE2, [1, 2, 3, 4], [192, 168, 1, 9], 33000, 80);
    let out = replay(
        vec![
            // From outside, to the floating IP (REQ-5): only a translation
            // to 192.168.1.5 would take it in, and its quote would still
            // name the floating IP.
            on("ge1", 0.0, icmp_error([1, 2, 3, 4], [203, 0, 113, 50], 3, 3, &fip_reply[14..])),
            // From an inside host, out of the external port (REQ-4): the
            // masquerade would leave its own address in the quote.
            on("ge2", 0.1, icmp_error_from((HOST, GE2), [192, 168, 1, 9], [1, 2, 3, 4], 3, 3, &to_inside[14..])),
            // A datagram the floating IP takes in.
            on("ge1", 0.2, udp(UPSTREAM, GE1, [1, 2, 3, 4], [203, 0, 113, 50], 33000, 80)),
        ],
        |_| {},
    );
    assert_eq!(out.drops("nat: icmp error about no known flow"), 2, "{:?}", out.summary.drops);
    assert!(out.on("ge1").is_empty(), "nothing leaves by the external port");
    // Only the datagram reached the inside, to the floating IP's host, and
    // only its flow has a session.
    let inside: Vec<_> = out.on("ge2").iter().map(|f| tuple(f)).collect();
    assert_eq!(inside, vec![([1, 2, 3, 4], [192, 168, 1, 5], 33000, 80)]);
    assert_eq!(out.counter("conntrack: sessions created"), 1);
    // An error about the translated flow is translated as before.
    let back = udp(GE2, GE1, [203, 0, 113, 50], [1, 2, 3, 4], 80, 33000);
    let out = replay(
        vec![
            on("ge1", 0.0, udp(UPSTREAM, GE1, [1, 2, 3, 4], [203, 0, 113, 50], 33000, 80)),
            on("ge1", 0.1, icmp_error([1, 2, 3, 4], [203, 0, 113, 50], 3, 3, &back[14..])),
        ],
        |_| {},
    );
    let inside = out.on("ge2");
    assert_eq!(inside.len(), 2, "{:?}", out.summary.drops);
    let (s, d, _, _) = tuple(&inside[1]);
    assert_eq!((s, d), ([1, 2, 3, 4], [192, 168, 1, 5]));
    let q = &inside[1][42..];
    assert!(inet_sum_ok(&q[..20]), "quoted header checksum");
    assert_eq!((&q[12..16], &q[16..20]), (&[192, 168, 1, 5][..], &[1, 2, 3, 4][..]), "quoted as the host sent it");
    assert_eq!(out.counter("nat: icmp errors translated"), 1);
}

// ---- ASTARA.md: floating IPs, no-NAT cases, metadata, filter ----

#[test]
fn floating_ip_inbound_dnat_and_outbound_snat() {
    let out = replay(
        vec![
            on("ge1", 0.0, tcp(UPSTREAM, GE1, [1, 2, 3, 4], [203, 0, 113, 50], 33000, 80, Flags::Syn)),
            on(
                "ge2",
                0.1,
                tcp([0xfa, 0x16, 0x3e, 0, 1, 5], GE2, [192, 168, 1, 5], [1, 2, 3, 4], 80, 33000, Flags::SynAck),
            ),
            // Its own new flow out leaves as the floating IP, port kept.
            on("ge2", 0.2, udp([0xfa, 0x16, 0x3e, 0, 1, 5], GE2, [192, 168, 1, 5], [8, 8, 8, 8], 6000, 53)),
            // blocked-nets may not reach it (anchor rule 1).
            on("ge1", 0.3, tcp(UPSTREAM, GE1, [198, 51, 100, 7], [203, 0, 113, 50], 33000, 80, Flags::Syn)),
        ],
        |_| {},
    );
    let inside: Vec<_> = out.on("ge2").iter().map(|f| tuple(f)).collect();
    assert_eq!(inside, vec![([1, 2, 3, 4], [192, 168, 1, 5], 33000, 80)]);
    assert_eq!(&out.on("ge2")[0][0..6], &[0xfa, 0x16, 0x3e, 0, 1, 5]);
    let outside: Vec<_> = out.on("ge1").iter().map(|f| tuple(f)).collect();
    assert_eq!(
        outside,
        vec![([203, 0, 113, 50], [1, 2, 3, 4], 80, 33000), ([203, 0, 113, 50], [8, 8, 8, 8], 6000, 53)]
    );
    assert_eq!(out.drops("firewall: blocked by rule"), 1);
}

#[test]
fn no_nat_for_traffic_that_arrived_on_the_external_interface() {
    // An external host routes to an inside address directly: delivered as
    // is, and the reply leaves untranslated too.
    let out = replay(
        vec![
            on("ge1", 0.0, udp(UPSTREAM, GE1, [203, 0, 113, 77], [192, 168, 1, 6], 9000, 9001)),
            on("ge2", 0.1, udp(HOST, GE2, [192, 168, 1, 6], [203, 0, 113, 77], 9001, 9000)),
        ],
        |o| {
            o.neighbors.push(StaticNeighbor {
                port: "ge1".into(),
                ip: "203.0.113.77".parse().unwrap(),
                mac: astara_dp::packet::Mac(UPSTREAM),
            })
        },
    );
    assert_eq!(tuple(&out.on("ge2")[0]), ([203, 0, 113, 77], [192, 168, 1, 6], 9000, 9001));
    assert_eq!(tuple(&out.on("ge1")[0]), ([192, 168, 1, 6], [203, 0, 113, 77], 9001, 9000));
}

#[test]
fn traffic_to_the_router_is_never_translated_and_input_policy_applies() {
    let mgmt6 = "fdca:3ba5:a17a:acda:f816:3eff:fee0:e1b0".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let src6 = "fdd6:a1fa:cfa8:1::5".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let mut to_mgmt = Vec::new();
    PacketBuilder::ethernet2(HOST, GE2)
        .ipv6(src6, mgmt6, 64)
        .tcp(40000, 5000, 1, 1024)
        .syn()
        .write(&mut to_mgmt, b"")
        .unwrap();
    let out = replay(
        vec![
            // Allowed: ping from outside, anything from inside.
            on("ge1", 0.0, ping(UPSTREAM, GE1, [8, 8, 8, 8], EXT, 1, true)),
            on("ge2", 0.1, udp(HOST, GE2, [192, 168, 1, 6], [192, 168, 1, 1], 68, 67)),
            on("ge2", 0.2, tcp(HOST, GE2, [192, 168, 1, 6], EXT, 40000, 22, Flags::Syn)),
            // Refused: ssh from outside, and the management address from ge2.
            on("ge1", 0.3, tcp(UPSTREAM, GE1, [8, 8, 8, 8], EXT, 40000, 22, Flags::Syn)),
            on("ge2", 0.4, to_mgmt),
        ],
        |_| {},
    );
    assert_eq!(out.on("punt").len(), 3);
    // Punted untranslated.
    assert_eq!(tuple(&out.on("punt")[2]), ([192, 168, 1, 6], EXT, 40000, 22));
    assert_eq!(out.drops("firewall: not allowed to the appliance"), 1);
    assert_eq!(out.drops("firewall: management address from another interface"), 1);
    assert_eq!(out.counter("conntrack: sessions created"), 0);
}

#[test]
fn metadata_requests_from_internal_networks_go_to_the_proxy() {
    let md = [169, 254, 169, 254];
    let out = replay(
        vec![
            on("ge2", 0.0, tcp(HOST, GE2, [192, 168, 1, 6], md, 40000, 80, Flags::Syn)),
            on("ge3", 0.1, tcp([0xfa, 0x16, 0x3e, 0, 2, 7], GE3, [192, 168, 2, 7], md, 40001, 80, Flags::Syn)),
            // Not port 80: an ordinary (unroutable here) destination.
            on("ge2", 0.2, tcp(HOST, GE2, [192, 168, 1, 6], md, 40002, 81, Flags::Syn)),
        ],
        |_| {},
    );
    assert_eq!(out.on("punt").len(), 2);
    assert_eq!(tuple(&out.on("punt")[0]), ([192, 168, 1, 6], md, 40000, 80), "unchanged for the proxy");
    assert_eq!(out.counter("nat: metadata redirects"), 2);
    assert_eq!(out.summary.forwarded + out.summary.dropped, 1);
}

#[test]
fn anchors_pass_and_block_and_replies_of_accepted_flows_pass() {
    let web = [192, 168, 1, 6];
    let db = [192, 168, 2, 7];
    let dbmac = [0xfa, 0x16, 0x3e, 0, 2, 7];
    let out = replay(
        vec![
            on("ge2", 0.0, tcp(HOST, GE2, web, db, 40000, 5432, Flags::Syn)),
            on("ge2", 0.1, tcp(HOST, GE2, web, db, 40000, 22, Flags::Syn)),
            // The database answers the accepted flow: its reply passes.
            on("ge3", 0.2, tcp(dbmac, GE3, db, web, 5432, 40000, Flags::SynAck)),
            // A db host opening UDP to another db host's address is blocked.
            on("ge3", 0.3, udp(dbmac, GE3, db, [192, 168, 2, 253], 1, 2)),
        ],
        |_| {},
    );
    assert_eq!(out.on("ge3").len(), 1);
    assert_eq!(tuple(&out.on("ge3")[0]), (web, db, 40000, 5432), "no NAT between internal networks");
    assert_eq!(out.on("ge2").len(), 1);
    // TCP 22 to db-servers and the UDP between db hosts: rule 3.
    assert_eq!(out.drops("firewall: blocked by rule"), 2);
}

// ---- fragments, table limits, hostile traffic ----

/// A UDP datagram from .6 to 8.8.8.8 split in two IPv4 fragments.
fn fragments(id: u16) -> (Vec<u8>, Vec<u8>) {
    let payload = [0x5au8; 64];
    let mut whole = Vec::new();
    PacketBuilder::ethernet2(HOST, GE2)
        .ipv4([192, 168, 1, 6], [8, 8, 8, 8], 64)
        .udp(5000, 53)
        .write(&mut whole, &payload)
        .unwrap();
    let ip = &whole[14..];
    let l4 = &ip[20..];
    let cut = 40; // first fragment: UDP header + 32 bytes
    let mk = |off: usize, data: &[u8], more: bool| {
        let mut h = etherparse::Ipv4Header::new(
            data.len() as u16,
            64,
            etherparse::IpNumber::UDP,
            [192, 168, 1, 6],
            [8, 8, 8, 8],
        )
        .unwrap();
        h.identification = id;
        h.more_fragments = more;
        h.fragment_offset = etherparse::IpFragOffset::try_new((off / 8) as u16).unwrap();
        h.header_checksum = h.calc_header_checksum();
        let mut f = Vec::new();
        f.extend_from_slice(&GE2);
        f.extend_from_slice(&HOST);
        f.extend_from_slice(&[0x08, 0x00]);
        h.write(&mut f).unwrap();
        f.extend_from_slice(data);
        f
    };
    (mk(0, &l4[..cut], true), mk(cut, &l4[cut..], false))
}

#[test]
fn fragmented_udp_survives_masquerade_in_order_and_is_dropped_out_of_order() {
    let (a, b) = fragments(0x4242);
    let (c, d) = fragments(0x4343);
    let out = replay(vec![on("ge2", 0.0, a), on("ge2", 0.1, b), on("ge2", 0.2, d), on("ge2", 0.3, c)], |_| {});
    let f = out.on("ge1");
    assert_eq!(f.len(), 3, "{:?}", out.summary.drops);
    for fr in f {
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&fr[14..]).unwrap();
        assert!(inet_sum_ok(&fr[14..34]));
        assert_eq!(ip.source(), EXT);
        assert_eq!(ip.destination(), [8, 8, 8, 8]);
    }
    assert_eq!(out.drops("conntrack: fragment without its first fragment"), 1);
    // Reassembled, the datagram's UDP checksum still verifies.
    let mut dgram = f[0][34..].to_vec();
    dgram.extend_from_slice(&f[1][34..]);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&EXT);
    pseudo.extend_from_slice(&[8, 8, 8, 8, 0, 17]);
    pseudo.extend_from_slice(&(dgram.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&dgram);
    assert!(inet_sum_ok(&pseudo), "udp checksum over the reassembled datagram");
}

#[test]
fn full_session_table_refuses_new_flows_and_keeps_existing_ones() {
    let mut inputs = Vec::new();
    for i in 0..3u16 {
        inputs.push(on("ge2", i as f64 * 0.01, udp(HOST, GE2, [192, 168, 1, 6], [8, 8, 8, 8], 6000 + i, 53)));
    }
    inputs.push(on("ge2", 0.1, udp(HOST, GE2, [192, 168, 1, 6], [8, 8, 8, 8], 6000, 53)));
    inputs.push(on("ge1", 0.2, udp(UPSTREAM, GE1, [8, 8, 8, 8], EXT, 53, 6001)));
    let out = replay(inputs, |o| o.sessions = 2);
    assert_eq!(out.drops("conntrack: session table full"), 1);
    assert_eq!(out.on("ge1").len(), 3);
    assert_eq!(out.on("ge2").len(), 1);
    assert_eq!(out.counter("nat: port mappings in use"), 2, "the refused flow holds no port");
}

#[test]
fn syn_flood_and_spoofed_replies_create_nothing_and_sessions_expire() {
    let mut inputs = Vec::new();
    for i in 0..2000u16 {
        let src = [100, 64, (i >> 8) as u8, i as u8];
        inputs.push(on("ge1", i as f64 * 0.001, tcp(UPSTREAM, GE1, src, EXT, 1024 + i, 10000 + i, Flags::Syn)));
    }
    // A real flow, then replies spoofed from the wrong port and address.
    inputs.push(on("ge2", 3.0, udp(HOST, GE2, [192, 168, 1, 6], [8, 8, 8, 8], 5000, 53)));
    inputs.push(on("ge1", 3.1, udp(UPSTREAM, GE1, [8, 8, 8, 8], EXT, 54, 5000)));
    inputs.push(on("ge1", 3.2, udp(UPSTREAM, GE1, [8, 8, 8, 9], EXT, 53, 5000)));
    // Much later, traffic from elsewhere lets the worker expire the session.
    for i in 0..200u16 {
        inputs.push(on("ge2", 600.0 + i as f64, udp(HOST, GE2, [192, 168, 1, 6], [9, 9, 9, 9], 7000, 53)));
    }
    let out = replay(inputs, |_| {});
    assert_eq!(out.drops("firewall: not allowed to the appliance"), 2002);
    assert_eq!(out.counter("conntrack: sessions created"), 2);
    assert_eq!(out.counter("conntrack: sessions expired"), 1, "the first flow's session expired");
    assert_eq!(out.counter("conntrack: sessions in use"), 1);
    assert_eq!(out.counter("nat: port mappings in use"), 1);
}

#[test]
fn port_exhaustion_refuses_new_endpoints_and_counts_them() {
    // 64,512 unprivileged ports; 64,600 inside endpoints ask for one each.
    let mut inputs = Vec::new();
    for i in 0..64_600u32 {
        let host = [192, 168, 1, 10 + (i / 6460) as u8];
        let sport = 1024 + (i % 6460) as u16;
        inputs.push(on("ge2", i as f64 * 1e-6, udp(HOST, GE2, host, [8, 8, 8, 8], sport, 53)));
    }
    let out = replay(inputs, |o| o.sessions = 100_000);
    assert_eq!(out.counter("nat: port mappings in use"), 64_512);
    assert_eq!(out.drops("nat: no free external port"), 88);
    assert_eq!(out.counter("nat: port allocation failures"), 88);
    assert_eq!(out.on("ge1").len(), 64_512);
    // Every external port used once.
    let ports: std::collections::HashSet<u16> = out.on("ge1").iter().map(|f| tuple(f).2).collect();
    assert_eq!(ports.len(), 64_512);
    assert!(ports.iter().all(|&p| p >= 1024));
}

/// Two packets of one flow in one burst, after its session expired: the
/// first retires the session, the second must not use the freed record.
#[test]
fn expired_session_seen_twice_in_one_burst() {
    use astara_dp::dataplane::Pipeline;
    use astara_dp::packet::{Burst, Pkt, Verdict};
    use astara_dp::stage::ConntrackConfig;
    let cfg = common::router_config();
    let ports = astara_dp::control::ports_from_config(&cfg);
    let snap = astara_dp::control::compile(&cfg, &ports, &common::options()).unwrap().snapshot;
    let mut pipe = Pipeline::new(ConntrackConfig::default());
    let mut burst: Burst<Pkt> = Burst::new(4);
    let run = |pipe: &mut Pipeline, burst: &mut Burst<Pkt>, frames: &[(u16, Vec<u8>)]| {
        for (port, f) in frames {
            burst.push(Pkt::from_slice(f).unwrap(), *port).unwrap();
        }
        pipe.process(&snap, burst);
        let mut out = Vec::new();
        burst.drain(|p, m| out.push((m.verdict, m.reason, astara_dp::packet::PacketBuf::data(&p).to_vec())));
        out
    };
    pipe.set_now(10);
    let first = run(&mut pipe, &mut burst, &[(2, udp(HOST, GE2, [192, 168, 1, 6], [8, 8, 8, 8], 5000, 53))]);
    assert_eq!(first[0].0, Verdict::Forward);
    // 200 s later (UDP: 120 s), two replies, then two new outbound packets.
    pipe.set_now(210);
    let reply = udp(UPSTREAM, GE1, [8, 8, 8, 8], EXT, 53, 5000);
    let out = run(&mut pipe, &mut burst, &[(1, reply.clone()), (1, reply)]);
    for (v, r, _) in &out {
        assert_eq!(
            (*v, astara_dp::stage::DropReason::from_u8(*r).name()),
            (Verdict::Drop, "firewall: not allowed to the appliance")
        );
    }
    let again = udp(HOST, GE2, [192, 168, 1, 6], [8, 8, 8, 8], 5000, 53);
    let out = run(&mut pipe, &mut burst, &[(2, again.clone()), (2, again)]);
    for (v, _, f) in &out {
        assert_eq!(*v, Verdict::Forward);
        assert_eq!(tuple(f), (EXT, [8, 8, 8, 8], 5000, 53));
    }
}
