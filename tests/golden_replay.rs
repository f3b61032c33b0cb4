//! Golden run of `astara-dp replay` over `configs/router.json`: hand-built
//! packets (etherparse) covering every routing outcome go in, and every
//! output frame is checked with etherparse against values written here by
//! hand, not computed by the code under test.

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const GE1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0xa0, 0x80, 0x82];
const GE2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x11, 0x22, 0x01];
const GE3_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x11, 0x22, 0x02];
const UPSTREAM_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];
const HOST5_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x01, 0x05];
const HOST7_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x02, 0x07];
const ROUTER_A_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x02, 0xfe];
const ROUTER_B_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x02, 0xfd];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn udp4(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], ttl: u8, id: u16) -> Vec<u8> {
    let mut ip = etherparse::Ipv4Header::new(0, ttl, etherparse::IpNumber::UDP, src, dst).unwrap();
    ip.identification = id;
    ip.dont_fragment = true;
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .udp(40000 + id, 53)
        .write(&mut v, format!("payload-{id}").as_bytes())
        .unwrap();
    v
}

fn write_pcap(path: &Path, frames: &[Vec<u8>], start_us: u64) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = pcap_file::pcap::PcapWriter::new(f).unwrap();
    for (i, fr) in frames.iter().enumerate() {
        let ts = Duration::from_micros(start_us + 10 * i as u64);
        w.write_packet(&pcap_file::pcap::PcapPacket::new(ts, fr.len() as u32, fr)).unwrap();
    }
}

fn read_pcap(path: &Path) -> Vec<(Duration, Vec<u8>)> {
    let mut r = pcap_file::pcap::PcapReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut v = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.unwrap();
        v.push((p.timestamp, p.data.into_owned()));
    }
    v
}

fn run_replay(inputs: &[(&str, &Path)], out: &Path) -> serde_json::Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_astara-dp"));
    cmd.arg("replay").arg("--config").arg(repo().join("configs/router.json")).arg("--out-dir").arg(out);
    cmd.arg("--neighbor").arg("ge1:203.0.113.1=02:00:5e:00:00:01");
    for (i, f) in inputs {
        cmd.arg("--in").arg(format!("{i}={}", f.display()));
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "replay failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap()
}

/// What the test expects of each input packet (keyed by IPv4 identification
/// or, for IPv6, by UDP source port).
#[derive(Debug, Clone)]
enum Want {
    /// `snat`: the source address and port it must leave with, when translated.
    Out { ifname: &'static str, dst_macs: Vec<[u8; 6]>, src_mac: [u8; 6], snat: Option<([u8; 4], u16)> },
}

#[test]
fn golden_replay_router_config() {
    let dir = tempfile::tempdir().unwrap();
    let ge2 = GE2_MAC;
    let peer = HOST5_MAC;
    let mut on_ge2 = Vec::new();
    let mut want: HashMap<u16, Want> = HashMap::new();
    let fwd = |ifname, dst: [u8; 6], src| Want::Out { ifname, dst_macs: vec![dst], src_mac: src, snat: None };

    // 1: default route via the pinned upstream gateway; 192.168.1.5 has the
    // floating IP 203.0.113.50, so it leaves as that (port kept).
    on_ge2.push(udp4(peer, ge2, [192, 168, 1, 5], [8, 8, 8, 8], 64, 1));
    want.insert(
        1,
        Want::Out {
            ifname: "ge1",
            dst_macs: vec![UPSTREAM_MAC],
            src_mac: GE1_MAC,
            snat: Some(([203, 0, 113, 50], 40001)),
        },
    );
    // 2: connected destination on ge3 (db-servers): UDP there is blocked by
    // the example's last anchor rule.
    on_ge2.push(udp4(peer, ge2, [192, 168, 1, 5], [192, 168, 2, 7], 64, 2));
    // 3: subnet host route 10.20.0.0/16 via 192.168.2.254.
    on_ge2.push(udp4(peer, ge2, [192, 168, 1, 5], [10, 20, 5, 5], 64, 3));
    want.insert(3, fwd("ge3", ROUTER_A_MAC, GE3_MAC));
    // 4..=67: ECMP 10.30.0.0/16 over .253 and .254, per flow.
    for id in 4..68u16 {
        on_ge2.push(udp4(peer, ge2, [192, 168, 1, 5], [10, 30, (id >> 8) as u8, id as u8], 64, id));
        want.insert(
            id,
            Want::Out { ifname: "ge3", dst_macs: vec![ROUTER_A_MAC, ROUTER_B_MAC], src_mac: GE3_MAC, snat: None },
        );
    }
    // 100: ping of the router's own address -> punt.
    let mut v = Vec::new();
    PacketBuilder::ethernet2(peer, ge2)
        .ipv4([192, 168, 1, 5], [192, 168, 1, 1], 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut v, b"hi")
        .unwrap();
    on_ge2.push(v);
    // 101: TTL 1 towards the Internet.
    on_ge2.push(udp4(peer, ge2, [192, 168, 1, 5], [8, 8, 4, 4], 1, 101));
    // 102: connected but unknown host (db-servers, UDP: blocked first).
    on_ge2.push(udp4(peer, ge2, [192, 168, 1, 5], [192, 168, 2, 99], 64, 102));
    // 103: static route whose gateway has no neighbour entry.
    on_ge2.push(udp4(peer, ge2, [192, 168, 1, 5], [172, 20, 1, 1], 64, 103));
    // 104: unicast to some other station's MAC.
    on_ge2.push(udp4(peer, [2, 2, 2, 2, 2, 2], [192, 168, 1, 5], [8, 8, 8, 8], 64, 104));
    // 105: priority-tagged (VID 0) frame: forwarded, tag removed.
    let mut v = Vec::new();
    let mut ip = etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, [192, 168, 1, 6], [1, 1, 1, 1]).unwrap();
    ip.identification = 105;
    PacketBuilder::ethernet2(peer, ge2)
        .single_vlan(etherparse::VlanId::try_new(0).unwrap())
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .udp(40105, 53)
        .write(&mut v, b"payload-105")
        .unwrap();
    on_ge2.push(v);
    // Masqueraded to the external address, source port kept (free).
    want.insert(
        105,
        Want::Out {
            ifname: "ge1",
            dst_macs: vec![UPSTREAM_MAC],
            src_mac: GE1_MAC,
            snat: Some(([203, 0, 113, 10], 40105)),
        },
    );
    // 106: VLAN 42 is not configured.
    let mut v = Vec::new();
    PacketBuilder::ethernet2(peer, ge2)
        .single_vlan(etherparse::VlanId::try_new(42).unwrap())
        .ipv4([192, 168, 1, 6], [1, 1, 1, 1], 64)
        .udp(1, 2)
        .write(&mut v, b"x")
        .unwrap();
    on_ge2.push(v);
    // 107: IPv6 into the management network.
    let mut v = Vec::new();
    let src6 = "fdd6:a1fa:cfa8:1::5".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let mgmt = "fdca:3ba5:a17a:acda::9".parse::<std::net::Ipv6Addr>().unwrap().octets();
    PacketBuilder::ethernet2(peer, ge2).ipv6(src6, mgmt, 64).udp(107, 22).write(&mut v, b"x").unwrap();
    on_ge2.push(v);
    // 108: broadcast ARP request for the router -> punt.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&peer);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&peer);
    arp.extend_from_slice(&[192, 168, 1, 5, 0, 0, 0, 0, 0, 0, 192, 168, 1, 1]);
    on_ge2.push(arp);

    // On ge3: IPv6 from a db host to the web host's IPv6 allocation.
    let mut on_ge3 = Vec::new();
    let src3 = "fdd6:a1fa:cfa8:2::7".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let mut v = Vec::new();
    PacketBuilder::ethernet2(HOST7_MAC, GE3_MAC)
        .ipv6(src3, src6, 64)
        .udp(200, 53)
        .write(&mut v, b"payload-v6")
        .unwrap();
    on_ge3.push(v);
    want.insert(200, fwd("ge2", HOST5_MAC, GE2_MAC));

    let in2 = dir.path().join("ge2.pcap");
    let in3 = dir.path().join("ge3.pcap");
    write_pcap(&in2, &on_ge2, 1_000_000);
    write_pcap(&in3, &on_ge3, 1_000_005);
    let out = dir.path().join("out");
    let summary = run_replay(&[("ge2", &in2), ("ge3", &in3)], &out);

    // Counts per reason, written by hand from the cases above.
    let drops: BTreeMap<String, u64> = serde_json::from_value(summary["drops"].clone()).unwrap();
    let expect_drops: BTreeMap<String, u64> = [
        ("route: ipv4 ttl expired", 1),
        ("neighbor: no neighbour entry", 1),
        ("firewall: blocked by rule", 2),
        ("parse: destination mac not ours", 1),
        ("parse: vlan not configured", 1),
        ("route: forwarding into management network", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(drops, expect_drops);
    assert_eq!(summary["packets"], (on_ge2.len() + on_ge3.len()) as u64);
    assert_eq!(summary["local"], 2);
    assert_eq!(summary["forwarded"], want.len() as u64);
    assert_eq!(summary["interfaces"]["ge2"]["rx"], on_ge2.len() as u64);
    assert_eq!(summary["interfaces"]["ge3"]["tx"], 65);

    // Every forwarded frame, checked field by field.
    let inputs: HashMap<u16, Vec<u8>> =
        on_ge2.iter().chain(&on_ge3).filter_map(|f| key(f).map(|k| (k, f.clone()))).collect();
    let mut seen = HashSet::new();
    let mut ecmp_macs = HashSet::new();
    for ifname in ["ge0", "ge1", "ge2", "ge3"] {
        for (_, frame) in read_pcap(&out.join(format!("{ifname}.pcap"))) {
            let k = key(&frame).expect("forwarded frame without a key");
            assert!(seen.insert(k), "packet {k} forwarded twice");
            let Want::Out { ifname: want_if, dst_macs, src_mac, snat } =
                want.get(&k).unwrap_or_else(|| panic!("packet {k} should not be forwarded"));
            assert_eq!(ifname, *want_if, "packet {k}");
            assert!(dst_macs.contains(&frame[0..6].try_into().unwrap()), "packet {k} dst mac");
            assert_eq!(&frame[6..12], src_mac, "packet {k} src mac");
            if (4..68).contains(&k) {
                ecmp_macs.insert(frame[0..6].to_vec());
            }
            check_rewrite(k, &inputs[&k], &frame, *snat);
        }
    }
    assert_eq!(seen.len(), want.len(), "missing: {:?}", want.keys().filter(|k| !seen.contains(k)).collect::<Vec<_>>());
    assert_eq!(ecmp_macs.len(), 2, "64 flows should use both ECMP next hops");
    // The two local packets are in punt.pcap, unchanged.
    let punted = read_pcap(&out.join("punt.pcap"));
    assert_eq!(punted.len(), 2);
    assert_eq!(punted[1].1, on_ge2[on_ge2.len() - 1]);

    // Deterministic: a second run gives identical bytes.
    let out2 = dir.path().join("out2");
    run_replay(&[("ge2", &in2), ("ge3", &in3)], &out2);
    for f in ["ge1.pcap", "ge2.pcap", "ge3.pcap", "punt.pcap", "summary.json"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(out2.join(f)).unwrap(),
            "{f} differs between runs"
        );
    }
}

/// IPv4 identification, or the UDP source port of an IPv6 packet.
fn key(frame: &[u8]) -> Option<u16> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    match p.net? {
        NetSlice::Ipv4(ip) => Some(ip.header().identification()),
        NetSlice::Ipv6(_) => match p.transport? {
            TransportSlice::Udp(u) => Some(u.source_port()),
            _ => None,
        },
        _ => None,
    }
}

/// The forwarded frame equals the input but for L2, TTL/hop limit (one
/// less) and the IPv4 header checksum, which must verify; and, when
/// translated, the source address and UDP source port given (with a UDP
/// checksum that verifies).
fn check_rewrite(k: u16, input: &[u8], out: &[u8], snat: Option<([u8; 4], u16)>) {
    let a = SlicedPacket::from_ethernet(input).unwrap();
    let b = SlicedPacket::from_ethernet(out).unwrap();
    assert!(b.link_exts.is_empty(), "packet {k}: VLAN tag must be gone");
    match (a.net.unwrap(), b.net.unwrap()) {
        (NetSlice::Ipv4(x), NetSlice::Ipv4(y)) => {
            let (hx, hy) = (x.header().to_header(), y.header().to_header());
            assert_eq!(hy.time_to_live, hx.time_to_live - 1, "packet {k} ttl");
            assert_eq!(hy.header_checksum, hy.calc_header_checksum(), "packet {k} checksum");
            let src = snat.map_or(hx.source, |(a, _)| a);
            assert_eq!((hy.source, hy.destination, hy.identification), (src, hx.destination, hx.identification));
            match snat {
                None => assert_eq!(x.payload().payload, y.payload().payload, "packet {k} payload"),
                Some((_, port)) => {
                    let (Some(TransportSlice::Udp(ua)), Some(TransportSlice::Udp(ub))) = (&a.transport, &b.transport)
                    else {
                        panic!("packet {k}: udp expected")
                    };
                    assert_eq!(ub.source_port(), port, "packet {k} translated port");
                    assert_eq!(ub.destination_port(), ua.destination_port());
                    assert_eq!(ua.payload(), ub.payload(), "packet {k} udp payload");
                }
            }
            if let Some(TransportSlice::Udp(u)) = b.transport {
                let h = u.to_header();
                assert_eq!(h.checksum, h.calc_checksum_ipv4(&hy, u.payload()).unwrap(), "packet {k} udp checksum");
            }
        }
        (NetSlice::Ipv6(x), NetSlice::Ipv6(y)) => {
            assert_eq!(y.header().hop_limit(), x.header().hop_limit() - 1, "packet {k} hop limit");
            assert_eq!(x.payload().payload, y.payload().payload, "packet {k} payload");
        }
        _ => panic!("packet {k}: family changed"),
    }
}
