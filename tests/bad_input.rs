//! Malformed and hostile input through the real pipeline: every packet ends
//! forwarded, local or dropped with its named reason; nothing panics; the
//! counters add up (rx = tx + local + drops).

use astara_dp::control::{AstaraConfig, compile, ports_from_config};
use astara_dp::dataplane::{Counters, Pipeline, dispatch, transmit};
use astara_dp::packet::{Burst, PacketBuf, Pkt, Pool, Verdict};
use astara_dp::port::TxQueue;
use astara_dp::port::null::NullTx;
use astara_dp::stage::{DropReason, Snapshot};
use etherparse::PacketBuilder;
use proptest::prelude::*;

mod common;

const GE2: [u8; 6] = [0xfa, 0x16, 0x3e, 0x11, 0x22, 0x01];
const PEER: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x01, 0x05];
const GE2_PORT: u16 = 2;

fn snapshot(mutate: impl FnOnce(&mut serde_json::Value)) -> Snapshot {
    let mut doc = common::router_json();
    mutate(&mut doc);
    let cfg = AstaraConfig::from_json(doc.to_string().as_bytes()).unwrap();
    compile(&cfg, &ports_from_config(&cfg), &common::options()).unwrap().snapshot
}

/// Runs one frame through the pipeline; returns its verdict, drop reason
/// name and the output frame.
fn run(snap: &Snapshot, frame: &[u8]) -> (Verdict, Option<&'static str>, Vec<u8>) {
    let mut b: Burst = Burst::new(1);
    b.push(Pkt::from_slice(frame).expect("test frame fits a buffer"), GE2_PORT).unwrap();
    Pipeline::default().process(snap, &mut b);
    let m = *b.meta(0);
    let reason = (m.verdict == Verdict::Drop).then(|| DropReason::from_u8(m.reason).name());
    (m.verdict, reason, b.pkt(0).data().to_vec())
}

fn udp4(dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(PEER, GE2)
        .ipv4([192, 168, 1, 5], dst, ttl)
        .udp(4000, 53)
        .write(&mut v, b"0123456789")
        .unwrap();
    v
}

fn with_ipv4_options(opts: &[u8], dst: [u8; 4]) -> Vec<u8> {
    let mut h = etherparse::Ipv4Header::new(10 + 8, 64, etherparse::IpNumber::UDP, [192, 168, 1, 5], dst).unwrap();
    h.options = opts.try_into().unwrap();
    let mut v = Vec::new();
    PacketBuilder::ethernet2(PEER, GE2)
        .ip(etherparse::IpHeaders::Ipv4(h, Default::default()))
        .udp(4000, 53)
        .write(&mut v, b"0123456789")
        .unwrap();
    v
}

fn ipv6(src: &str, dst: &str, hop: u8, next: u8, payload: &[u8]) -> Vec<u8> {
    let h = etherparse::Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: payload.len() as u16,
        next_header: etherparse::IpNumber(next),
        hop_limit: hop,
        source: src.parse::<std::net::Ipv6Addr>().unwrap().octets(),
        destination: dst.parse::<std::net::Ipv6Addr>().unwrap().octets(),
    };
    let mut v = Vec::new();
    v.extend_from_slice(&GE2);
    v.extend_from_slice(&PEER);
    v.extend_from_slice(&[0x86, 0xdd]);
    v.extend_from_slice(&h.to_bytes());
    v.extend_from_slice(payload);
    v
}

#[test]
fn each_malformation_has_its_reason() {
    let snap = snapshot(|_| {});
    let drop = |f: &[u8], want: &str| {
        let (v, r, _) = run(&snap, f);
        assert_eq!((v, r), (Verdict::Drop, Some(want)), "frame {:02x?}", &f[..f.len().min(40)]);
    };
    let good = udp4([8, 8, 8, 8], 64);
    assert_eq!(run(&snap, &good).0, Verdict::Forward);

    drop(&good[..10], "parse: runt frame");
    drop(&good[..14], "parse: ipv4 truncated");
    drop(&good[..30], "parse: ipv4 truncated");
    let mut f = good.clone();
    f[14] = 0x44;
    drop(&f, "parse: ipv4 bad header length");
    let mut f = good.clone();
    f[14] = 0x65;
    drop(&f, "parse: ipv4 bad version");
    let mut f = good.clone();
    f[16..18].copy_from_slice(&200u16.to_be_bytes());
    common::fix_ip_checksum(&mut f, 14);
    drop(&f, "parse: ipv4 bad total length");
    let mut f = good.clone();
    f[16..18].copy_from_slice(&12u16.to_be_bytes());
    common::fix_ip_checksum(&mut f, 14);
    drop(&f, "parse: ipv4 bad total length");
    let mut f = good.clone();
    f[24] ^= 0xff;
    drop(&f, "parse: ipv4 bad header checksum");
    drop(&with_ipv4_options(&[131, 7, 4, 10, 0, 0, 1, 0], [8, 8, 8, 8]), "parse: ipv4 source route option");
    drop(&with_ipv4_options(&[7, 12, 4, 0], [8, 8, 8, 8]), "parse: ipv4 malformed options");
    drop(&udp4([8, 8, 8, 8], 0), "route: ipv4 ttl expired");
    drop(&udp4([8, 8, 8, 8], 1), "route: ipv4 ttl expired");
    // RFC 1812 5.3.1: TTL does not matter for the router's own packets.
    assert_eq!(run(&snap, &udp4([192, 168, 1, 1], 0)).0, Verdict::Local);
    let mut f = udp4([8, 8, 8, 8], 64);
    f[26..30].copy_from_slice(&[127, 0, 0, 1]);
    common::fix_ip_checksum(&mut f, 14);
    drop(&f, "parse: ipv4 martian source");
    drop(&udp4([0, 1, 2, 3], 64), "parse: ipv4 martian destination");
    drop(&udp4([240, 0, 0, 1], 64), "parse: ipv4 martian destination");

    // Transport headers.
    let mut f = good.clone();
    f[38..40].copy_from_slice(&300u16.to_be_bytes());
    drop(&f, "parse: udp bad length");
    let mut t = Vec::new();
    PacketBuilder::ethernet2(PEER, GE2)
        .ipv4([192, 168, 1, 5], [8, 8, 8, 8], 64)
        .tcp(1, 2, 3, 4)
        .write(&mut t, &[])
        .unwrap();
    let mut f = t.clone();
    f[46] = 0x30;
    drop(&f, "parse: tcp bad data offset");
    // Unfragmented TCP cut to 10 bytes (IP total length adjusted).
    let mut f = t[..44].to_vec();
    f[16..18].copy_from_slice(&30u16.to_be_bytes());
    common::fix_ip_checksum(&mut f, 14);
    drop(&f, "parse: transport header truncated");
    // First fragment with only 8 bytes of TCP (RFC 1858 tiny fragment).
    let mut f = t[..42].to_vec();
    f[16..18].copy_from_slice(&28u16.to_be_bytes());
    f[20] = 0x20; // MF
    common::fix_ip_checksum(&mut f, 14);
    drop(&f, "parse: tiny first fragment");
    // A later fragment (no transport header) whose first fragment was never
    // seen cannot be matched to a flow (tests/nat.rs has the in-order case).
    let mut f = good.clone();
    f[20] = 0x00;
    f[21] = 0x03; // offset 24 bytes
    common::fix_ip_checksum(&mut f, 14);
    drop(&f, "conntrack: fragment without its first fragment");
    // Offset 8 TCP fragment: overlap attack (RFC 1858).
    let mut f = t.clone();
    f[20] = 0x00;
    f[21] = 0x01;
    common::fix_ip_checksum(&mut f, 14);
    drop(&f, "parse: tiny first fragment");

    // L2.
    let mut f = good.clone();
    f[12] = 0x88;
    f[13] = 0xcc; // LLDP
    drop(&f, "parse: ethertype not handled");
    let mut f = good.clone();
    f[0..6].copy_from_slice(&[2, 9, 9, 9, 9, 9]);
    drop(&f, "parse: destination mac not ours");
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&PEER);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 8, 0, 1]);
    arp.extend_from_slice(&[0; 30]);
    drop(&arp, "parse: malformed arp");

    // IPv6.
    let udp6 = [0x0f, 0xa0, 0, 53, 0, 8, 0, 0];
    assert_eq!(
        run(&snap, &ipv6("fdd6:a1fa:cfa8:1::5", "fdd6:a1fa:cfa8:2::7", 64, 17, &udp6)).1,
        Some("neighbor: no neighbour entry")
    );
    drop(&ipv6("fdd6:a1fa:cfa8:1::5", "2001:db8:77::1", 1, 17, &udp6), "route: ipv6 hop limit expired");
    drop(&ipv6("fe80::5", "2001:db8:77::1", 64, 17, &udp6), "route: ipv6 link-local source");
    drop(&ipv6("ff02::1", "2001:db8:77::1", 64, 17, &udp6), "parse: ipv6 martian source");
    drop(&ipv6("fdd6:a1fa:cfa8:1::5", "::1", 64, 17, &udp6), "parse: ipv6 martian destination");
    let mut chain = Vec::new();
    for i in 0..10 {
        chain.extend_from_slice(&[if i == 9 { 17 } else { 60 }, 0, 1, 4, 0, 0, 0, 0]);
    }
    chain.extend_from_slice(&udp6);
    drop(&ipv6("fdd6:a1fa:cfa8:1::5", "2001:db8:77::1", 64, 60, &chain), "parse: ipv6 extension chain too long");
    let mut rh0 = vec![17, 0, 0, 1, 0, 0, 0, 0];
    rh0.extend_from_slice(&udp6);
    drop(&ipv6("fdd6:a1fa:cfa8:1::5", "2001:db8:77::1", 64, 43, &rh0), "parse: ipv6 type 0 routing header");
    let mut f = ipv6("fdd6:a1fa:cfa8:1::5", "2001:db8:77::1", 64, 17, &udp6);
    f[19] = 200; // payload length past the frame
    drop(&f, "parse: ipv6 bad payload length");
    // Neighbour solicitation to a solicited-node multicast group: local.
    assert_eq!(run(&snap, &ipv6("fe80::5", "ff02::1:ff00:1", 255, 58, &[135, 0, 0, 0, 0, 0, 0, 0])).0, Verdict::Local);
}

#[test]
fn options_are_forwarded_intact_and_frames_trimmed() {
    let snap = snapshot(|_| {});
    // Router alert + NOP padding: forwarded, TTL 63, checksum valid.
    let f = with_ipv4_options(&[148, 4, 0, 0], [8, 8, 8, 8]);
    let (v, _, out) = run(&snap, &f);
    assert_eq!(v, Verdict::Forward);
    let (h, _) = etherparse::Ipv4Header::from_slice(&out[14..]).unwrap();
    assert_eq!(h.time_to_live, 63);
    assert_eq!(h.options.as_slice(), &[148, 4, 0, 0]);
    assert_eq!(h.header_checksum, h.calc_header_checksum());
    // Ethernet padding after the IP datagram is not forwarded.
    let mut padded = udp4([8, 8, 8, 8], 64);
    let len = padded.len();
    padded.extend_from_slice(&[0xee; 20]);
    let (_, _, out) = run(&snap, &padded);
    assert_eq!(out.len(), len);
}

#[test]
fn mtu_rules() {
    let snap = snapshot(|d| d["networks"][3]["interface"]["mtu"] = 1400.into());
    // TCP to PostgreSQL on db: what the anchors let through to ge3.
    let big = |df: bool| {
        let mut h =
            etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::TCP, [192, 168, 1, 5], [192, 168, 2, 7]).unwrap();
        h.dont_fragment = df;
        let mut v = Vec::new();
        PacketBuilder::ethernet2(PEER, GE2)
            .ip(etherparse::IpHeaders::Ipv4(h, Default::default()))
            .tcp(40000, 5432, 1, 65535)
            .write(&mut v, &[0; 1450])
            .unwrap();
        v
    };
    assert_eq!(run(&snap, &big(true)).1, Some("route: exceeds egress mtu (df set)"));
    // DF clear: forwarded whole through every stage, marked for the host
    // stack to fragment on the way out (without one, dispatch drops it as
    // "route: needs fragmentation").
    let mut b: Burst = Burst::new(1);
    b.push(Pkt::from_slice(&big(false)).unwrap(), GE2_PORT).unwrap();
    Pipeline::default().process(&snap, &mut b);
    assert_eq!(b.meta(0).verdict, Verdict::Forward);
    assert_eq!(b.meta(0).punt, astara_dp::stage::Punt::Fragment as u8);
    let (h, _) = etherparse::Ipv4Header::from_slice(&b.pkt(0).data()[14..]).unwrap();
    assert_eq!((h.time_to_live, h.total_len), (63, 20 + 20 + 1450));
    // Larger than the ingress port's MTU (1500) but within a buffer.
    let mut v = Vec::new();
    PacketBuilder::ethernet2(PEER, GE2)
        .ipv4([192, 168, 1, 5], [8, 8, 8, 8], 64)
        .udp(1, 2)
        .write(&mut v, &[0; 1600])
        .unwrap();
    assert_eq!(run(&snap, &v).1, Some("parse: larger than ingress mtu"));
}

#[test]
fn oversize_frames_are_dropped_at_receive() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.pcap");
    let jumbo = {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(PEER, GE2)
            .ipv4([192, 168, 1, 5], [8, 8, 8, 8], 64)
            .udp(1, 2)
            .write(&mut v, &[0; 8972])
            .unwrap();
        v
    };
    astara_dp::app::replay::write_capture(&input, &[jumbo, udp4([8, 8, 8, 8], 64)]).unwrap();
    let s = astara_dp::app::replay::run(&astara_dp::app::replay::ReplayOptions {
        config: common::ROUTER_JSON.into(),
        inputs: vec![("ge2".into(), input)],
        out_dir: dir.path().join("out"),
        neighbors: common::options().neighbors,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.drops.get("rx: frame larger than buffer"), Some(&1));
    assert_eq!((s.packets, s.forwarded), (2, 1));
}

/// Runs a whole burst through pipeline, dispatch and transmit like a worker.
fn burst_accounting(snap: &Snapshot, frames: &[Vec<u8>]) -> Counters {
    let mut pool = Pool::new(64);
    let mut b: Burst = Burst::new(frames.len().max(1));
    let mut c = Counters::new(snap.ports.len());
    for f in frames {
        if let Some(p) = Pkt::from_slice(f) {
            b.push(p, GE2_PORT).unwrap();
            c.rx += 1;
        }
    }
    let mut pipe = Pipeline::default();
    pipe.process(snap, &mut b);
    for i in 0..b.len() {
        let m = b.meta(i);
        assert_ne!(m.verdict, Verdict::Pending, "every packet gets a verdict");
        if m.verdict == Verdict::Forward {
            // Whatever got through is a well-formed frame with a valid checksum.
            let p = etherparse::SlicedPacket::from_ethernet(b.pkt(i).data()).expect("forwarded frame parses");
            if let Some(etherparse::NetSlice::Ipv4(ip)) = p.net {
                let h = ip.header().to_header();
                assert_eq!(h.header_checksum, h.calc_header_checksum());
            }
        }
    }
    let mut staging: Vec<Vec<Pkt>> = (0..snap.ports.len()).map(|_| Vec::new()).collect();
    let mut tx: Vec<Option<Box<dyn TxQueue>>> =
        (0..snap.ports.len()).map(|_| Some(Box::new(NullTx::default()) as Box<dyn TxQueue>)).collect();
    dispatch(&mut b, &mut staging, &mut pool, &mut c);
    transmit(&mut staging, &mut tx, &mut pool, &mut c);
    assert_eq!(c.rx, c.tx + c.local + c.dropped(), "rx = tx + local + drops");
    c
}

fn seeds() -> Vec<Vec<u8>> {
    let mut t = Vec::new();
    PacketBuilder::ethernet2(PEER, GE2)
        .ipv4([192, 168, 1, 5], [10, 30, 1, 1], 64)
        .tcp(1, 2, 3, 4)
        .write(&mut t, b"abc")
        .unwrap();
    vec![
        udp4([8, 8, 8, 8], 64),
        udp4([192, 168, 2, 7], 2),
        t,
        with_ipv4_options(&[148, 4, 0, 0], [8, 8, 8, 8]),
        ipv6("fdd6:a1fa:cfa8:1::5", "2001:db8:77::1", 64, 17, &[0x0f, 0xa0, 0, 53, 0, 8, 0, 0]),
        icmp4_error(),
        icmp6_error(),
    ]
}

/// An ICMPv4 port unreachable quoting a UDP packet (the NAT translates those).
fn icmp4_error() -> Vec<u8> {
    let quoted = &udp4([192, 168, 1, 5], 64)[14..42];
    let mut v = Vec::new();
    PacketBuilder::ethernet2(PEER, GE2)
        .ipv4([192, 168, 1, 5], [8, 8, 8, 8], 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port))
        .write(&mut v, quoted)
        .unwrap();
    v
}

/// An ICMPv6 destination unreachable quoting an IPv6 echo request.
fn icmp6_error() -> Vec<u8> {
    let inner = ipv6("2001:db8:77::1", "fdd6:a1fa:cfa8:1::5", 64, 58, &[128, 0, 0, 0, 0x12, 0x34, 0, 1]);
    let mut icmp = vec![1, 4, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&inner[14..]);
    ipv6("fdd6:a1fa:cfa8:1::5", "2001:db8:77::1", 64, 58, &icmp)
}

#[test]
fn icmp_errors_cut_anywhere_never_panic() {
    let snap = snapshot(|_| {});
    for seed in [icmp4_error(), icmp6_error()] {
        for cut in 14..=seed.len() {
            let mut f = seed[..cut].to_vec();
            // Keep the outer length fields consistent with the cut, so the
            // error reaches the NAT instead of failing the parse.
            if f.len() >= 34 && f[12] == 0x08 {
                let l = (f.len() - 14) as u16;
                f[16..18].copy_from_slice(&l.to_be_bytes());
                common::fix_ip_checksum(&mut f, 14);
            } else if f.len() >= 54 && f[12] == 0x86 {
                let l = (f.len() - 54) as u16;
                f[18..20].copy_from_slice(&l.to_be_bytes());
            }
            burst_accounting(&snap, &[f]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..32)) {
        let snap = snapshot(|_| {});
        // Give half of them our MAC and an IP ethertype so they get past L2.
        let frames: Vec<Vec<u8>> = frames.into_iter().enumerate().map(|(i, mut f)| {
            if i % 2 == 0 && f.len() >= 14 {
                f[0..6].copy_from_slice(&GE2);
                f[12] = if i % 4 == 0 { 0x08 } else { 0x86 };
                f[13] = if i % 4 == 0 { 0x00 } else { 0xdd };
            }
            f
        }).collect();
        burst_accounting(&snap, &frames);
    }

    #[test]
    fn mutated_valid_frames_never_panic(which in 0usize..7, edits in prop::collection::vec((0usize..120, any::<u8>()), 1..6), cut in 0usize..130) {
        let snap = snapshot(|_| {});
        let mut f = seeds()[which].clone();
        for (pos, val) in edits {
            if pos < f.len() { f[pos] = val; }
        }
        if cut > 14 && cut < f.len() { f.truncate(cut); }
        burst_accounting(&snap, &[f]);
    }
}

#[test]
fn drop_reasons_cover_every_counter_exactly_once() {
    let snap = snapshot(|_| {});
    let c = burst_accounting(
        &snap,
        &[udp4([8, 8, 8, 8], 1), udp4([8, 8, 8, 8], 64), udp4([192, 168, 1, 1], 64), udp4([192, 168, 2, 99], 64)],
    );
    assert_eq!((c.rx, c.tx, c.local), (4, 1, 1));
    // 192.168.2.0/24 is "db-servers", blocked by the example's last anchor rule.
    assert_eq!(c.drop_list(), vec![("route: ipv4 ttl expired", 1), ("firewall: blocked by rule", 1)]);
}
