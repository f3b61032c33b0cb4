//! The fast path must forward exactly what the full pipeline forwards, byte
//! for byte, and leave everything else to it: a corpus of good and damaged
//! frames (wrong MACs, tags, options, fragments, bad checksums and lengths,
//! TTL 0-2, egress MTU, martians, multicast, the router's and translated addresses,
//! ECMP, unresolved and external next hops, ICMP errors) goes through a
//! pipeline with the fast path in front and through one without it; the
//! outputs per port, the drop reasons and the stage counters must agree.
//! Every forwarded frame is also checked against the frame expected by hand
//! (MACs swapped for the next hop's and the egress port's, TTL one less,
//! the header checksum computed here, any trailer cut).
//!
//! Packets of known flows (translated or not) take the fast path too: NAT
//! traffic in both directions, with replies made from what the router sent,
//! TCP flags, damage and sessions expiring, must also come out the same
//! with and without it, with checksums that verify (checked with
//! `etherparse`), and a translated reply must be the frame computed here.

use astara_dp::control::{AstaraConfig, StaticNeighbor, compile, ports_from_config};
use astara_dp::dataplane::{Counters, Pipeline, STAGE_COUNTERS, dispatch};
use astara_dp::packet::{Burst, PacketBuf, Pkt, Pool};
use astara_dp::stage::lb::LbSnat;
use astara_dp::stage::{ConntrackConfig, Parse, Snapshot};
use etherparse::PacketBuilder;

mod common;
use common::Rng;

const MACS: [[u8; 6]; 4] = [
    [0xfa, 0x16, 0x3e, 0xe0, 0xe1, 0xb0],
    [0xfa, 0x16, 0x3e, 0xa0, 0x80, 0x82],
    [0xfa, 0x16, 0x3e, 0x11, 0x22, 0x01],
    [0xfa, 0x16, 0x3e, 0x11, 0x22, 0x02],
];
/// Static neighbours: (port, address, MAC).
const NEIGHBORS: [(&str, [u8; 4], [u8; 6]); 6] = [
    ("ge2", [192, 168, 1, 5], [2, 0, 0, 0, 1, 5]),
    ("ge2", [192, 168, 1, 6], [2, 0, 0, 0, 1, 6]),
    ("ge3", [192, 168, 2, 7], [2, 0, 0, 0, 2, 7]),
    ("ge3", [192, 168, 2, 9], [2, 0, 0, 0, 2, 9]),
    ("ge3", [192, 168, 2, 253], [2, 0, 0, 0, 2, 0xfd]),
    ("ge3", [192, 168, 2, 254], [2, 0, 0, 0, 2, 0xfe]),
];

/// router-open.json (no anchors: the fast path applies) or router.json
/// (anchors: it must stand aside), with a static route through a
/// resolved gateway on ge3 besides the ECMP and external ones.
fn snapshot(open: bool) -> Snapshot {
    snapshot_with_routes(open, &[])
}

/// `snapshot` with more static routes: (destination, next hop).
fn snapshot_with_routes(open: bool, extra: &[(&str, &str)]) -> Snapshot {
    let path = if open { "/configs/router-open.json" } else { "/configs/router.json" };
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()).unwrap();
    let routes = doc["static_routes"].as_array_mut().unwrap();
    for (dst, via) in extra {
        routes.push(serde_json::json!([dst, via]));
    }
    routes.push(serde_json::json!(["198.18.0.0/15", "192.168.2.253"]));
    // A route over multicast, class E and the broadcast address: they must
    // still not be forwarded.
    routes.push(serde_json::json!(["224.0.0.0/3", "192.168.2.253"]));
    // A smaller MTU on ge3: frames from ge2 can fit their way in and not out.
    for n in doc["networks"].as_array_mut().unwrap() {
        if n["interface"]["ifname"] == "ge3" {
            n["interface"]["mtu"] = serde_json::json!(1400);
        }
    }
    let cfg = AstaraConfig::from_json(&serde_json::to_vec(&doc).unwrap()).unwrap();
    let mut opts = common::options();
    for (port, ip, mac) in NEIGHBORS {
        opts.neighbors.push(StaticNeighbor {
            port: port.into(),
            ip: std::net::Ipv4Addr::from(ip).into(),
            mac: astara_dp::packet::Mac(mac),
        });
    }
    compile(&cfg, &ports_from_config(&cfg), &opts).unwrap().snapshot
}

/// One frame and the port it arrives on.
fn frame(r: &mut Rng) -> (Vec<u8>, u16) {
    let port = r.pick(&[2u16, 2, 2, 3, 3, 1, 0]);
    let dst_mac = if r.chance(90) { MACS[port as usize] } else { r.pick(&[[0xff; 6], [2, 0, 0, 0, 0, 1]]) };
    let src = match port {
        2 => [192, 168, 1, 5],
        3 => [192, 168, 2, r.pick(&[9, 40])],
        1 => [198, 51, 100, 7],
        _ => [10, 0, 0, 1],
    };
    let src = if r.chance(5) { r.pick(&[[127, 0, 0, 1], [0, 1, 2, 3], [224, 0, 0, 9]]) } else { src };
    let dst: [u8; 4] = r.pick(&[
        [198, 18, 3, 4],
        [198, 19, 200, 1],
        [192, 168, 2, 9],
        [192, 168, 2, 77],
        [192, 168, 1, 5],
        [10, 30, 1, 1],
        [172, 20, 0, 1],
        [8, 8, 8, 8],
        [203, 0, 113, 50],
        [203, 0, 113, 1],
        [192, 168, 1, 1],
        [192, 168, 2, 1],
        [169, 254, 169, 254],
        [224, 0, 0, 5],
        [255, 255, 255, 255],
        [192, 168, 2, 255],
        [127, 0, 0, 1],
        [240, 0, 0, 1],
    ]);
    let ttl = r.pick(&[64u8, 64, 64, 2, 1, 0]);
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], dst_mac).ipv4(src, dst, ttl);
    let len = if r.chance(4) { 1350 + r.below(300) as usize } else { r.below(64) as usize };
    let payload: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
    let mut f = Vec::new();
    match r.below(6) {
        0 | 1 => {
            let (sp, dp) = (1024 + r.below(60000) as u16, r.pick(&[53u16, 80, 443]));
            b.udp(sp, dp).write(&mut f, &payload).unwrap();
        }
        2 => {
            let mut t = b.tcp(1024 + r.below(60000) as u16, r.pick(&[80u16, 22]), r.next() as u32, 65535);
            t = match r.below(4) {
                0 => t.syn(),
                1 => t.ack(1).fin(),
                2 => t.rst(),
                _ => t.ack(7),
            };
            t.write(&mut f, &payload).unwrap();
        }
        3 => b.icmpv4_echo_request(r.next() as u16, 1).write(&mut f, &payload).unwrap(),
        4 => {
            // A destination unreachable quoting a UDP packet.
            let mut q = Vec::new();
            PacketBuilder::ipv4(dst, src, 60).udp(53, 4000).write(&mut q, &[1, 2, 3, 4]).unwrap();
            b.icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port))
                .write(&mut f, &q)
                .unwrap();
        }
        _ => {
            // GRE, carried as opaque payload.
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], dst_mac)
                .ipv4(src, dst, ttl)
                .write(&mut f, etherparse::IpNumber(47), &payload)
                .unwrap();
        }
    }
    damage(r, &mut f);
    (f, port)
}

/// Some frames get one defect, or a harmless change (DF, a trailer).
fn damage(r: &mut Rng, f: &mut Vec<u8>) {
    match r.below(24) {
        0 => {
            let i = r.below(f.len().min(64) as u64) as usize;
            f[i] ^= 1 << r.below(8);
        }
        1 => f.truncate(r.below(f.len() as u64) as usize),
        2 => f.extend((0..r.below(20) + 1).map(|_| 0xee)),
        3 => {
            f[20] |= 0x40; // DF
            common::fix_ip_checksum(f, 14);
        }
        4 => {
            f[20] |= 0x20; // MF
            common::fix_ip_checksum(f, 14);
        }
        5 => {
            f[21] = r.pick(&[1u8, 185]); // an offset
            common::fix_ip_checksum(f, 14);
        }
        6 => {
            // A priority tag (VID 0) or a VLAN.
            let vid = r.pick(&[0u8, 5]);
            f.splice(12..12, [0x81, 0x00, 0x00, vid]);
        }
        7 => {
            // Four bytes of NOP options.
            f.splice(34..34, [1, 1, 1, 0]);
            f[14] = 0x46;
            let tl = u16::from_be_bytes([f[16], f[17]]) + 4;
            f[16..18].copy_from_slice(&tl.to_be_bytes());
            common::fix_ip_checksum(f, 14);
        }
        8 => f[24] ^= 0x55, // checksum
        9 => {
            let tl = u16::from_be_bytes([f[16], f[17]]) + r.pick(&[4u16, 200]);
            f[16..18].copy_from_slice(&tl.to_be_bytes());
            common::fix_ip_checksum(f, 14);
        }
        10 => {
            f[16..18].copy_from_slice(&r.pick(&[0u16, 19, 20, 27]).to_be_bytes());
            common::fix_ip_checksum(f, 14);
        }
        _ => {}
    }
}

/// What each port sent, the drop counts and the stage counters.
#[derive(Debug, PartialEq)]
struct Outcome {
    sent: Vec<Vec<Vec<u8>>>,
    drops: Vec<u64>,
    local: u64,
    stages: Vec<u64>,
}

struct Side {
    pipe: Pipeline,
    pool: Pool,
    staging: Vec<Vec<Pkt>>,
    c: Counters,
    sent: Vec<Vec<Vec<u8>>>,
    fast: bool,
}

impl Side {
    fn new(fast: bool) -> Side {
        let mut pipe = Pipeline::new(ConntrackConfig { seed: Some(1), ..Default::default() });
        pipe.set_now(1);
        // Every burst tried: the backoff would leave most of a mixed
        // corpus to the full pipeline (its own test is below).
        pipe.fast.adaptive = false;
        Side {
            pipe,
            pool: Pool::new(64),
            staging: (0..4).map(|_| Vec::new()).collect(),
            c: Counters::new(4),
            sent: vec![vec![]; 4],
            fast,
        }
    }

    fn run(&mut self, snap: &Snapshot, frames: &[(Vec<u8>, u16)]) {
        let mut burst: Burst = Burst::new(32);
        for (f, port) in frames {
            burst.push(Pkt::from_slice(f).unwrap(), *port).unwrap();
        }
        let rest = !self.fast || self.pipe.process_fast(snap, &mut burst, &mut self.staging);
        if rest {
            self.pipe.process(snap, &mut burst);
        }
        dispatch(&mut burst, &mut self.staging, &mut self.pool, &mut self.c);
        for (port, q) in self.staging.iter_mut().enumerate() {
            let mut got: Vec<Vec<u8>> = q.drain(..).map(|p| p.data().to_vec()).collect();
            // Within a burst the fast path's packets go first.
            got.sort();
            self.sent[port].extend(got);
        }
    }

    fn outcome(&self) -> Outcome {
        let fast = STAGE_COUNTERS.iter().position(|n| n.starts_with("fast path:")).unwrap();
        let mut stages = self.pipe.stage_counters().to_vec();
        stages.drain(fast..fast + 4);
        Outcome { sent: self.sent.clone(), drops: self.c.drops.to_vec(), local: self.c.local, stages }
    }
}

/// The frame the router must send for `f`: next hop's and egress MACs,
/// TTL one less, checksum recomputed, cut to the IP total length.
fn expected(f: &[u8], next_hop: [u8; 6], egress: [u8; 6]) -> Vec<u8> {
    let total = u16::from_be_bytes([f[16], f[17]]) as usize;
    let mut e = f[..14 + total].to_vec();
    e[0..6].copy_from_slice(&next_hop);
    e[6..12].copy_from_slice(&egress);
    e[22] -= 1;
    common::fix_ip_checksum(&mut e, 14);
    e
}

/// The two sides sent the same frames on every port (the first difference
/// shown), dropped the same by reason, and counted the same.
fn assert_same(oa: &Outcome, ob: &Outcome) {
    for port in 0..4 {
        let (x, y) = (&oa.sent[port], &ob.sent[port]);
        assert_eq!(x.len(), y.len(), "frames sent on port {port}");
        if let Some(i) = (0..x.len()).find(|&i| x[i] != y[i]) {
            panic!("port {port}, frame {i}: with the fast path {:02x?}, without {:02x?}", x[i], y[i]);
        }
    }
    assert_eq!(oa.drops, ob.drops, "drops by reason");
    assert_eq!(oa.local, ob.local, "local");
    assert_eq!(oa.stages, ob.stages, "stage counters");
}

fn compare(open: bool, burst: usize, seed: u64) -> (Side, Side, Vec<(Vec<u8>, u16)>) {
    let snap = snapshot(open);
    let mut r = Rng(seed);
    let frames: Vec<(Vec<u8>, u16)> = (0..20_000).map(|_| frame(&mut r)).collect();
    let (mut a, mut b) = (Side::new(true), Side::new(false));
    for chunk in frames.chunks(burst) {
        a.run(&snap, chunk);
        b.run(&snap, chunk);
    }
    let (oa, ob) = (a.outcome(), b.outcome());
    assert_same(&oa, &ob);
    (a, b, frames)
}

#[test]
fn fast_path_forwards_one_at_a_time_as_the_full_pipeline_does() {
    let (a, _, frames) = compare(true, 1, 0x9e37_79b9_7f4a_7c15);
    let fast = a.pipe.fast.counters.forwarded;
    let forwarded: usize = a.sent.iter().map(|q| q.len()).sum();
    assert!(fast > 800, "the corpus must exercise the fast path: {fast}");
    assert!((fast as usize) < forwarded, "and forwarding it leaves to the full pipeline: {fast} of {forwarded}");
    // Every frame sent on ge3 to 198.18.0.0/15 (through 192.168.2.253) or
    // to the static neighbour 192.168.2.9 is one computed here from an
    // input frame.
    let mut want: Vec<Vec<u8>> = Vec::new();
    for (f, _) in &frames {
        let mut f = f.clone();
        // A priority tag goes.
        if f.len() >= 18 && f[12..16] == [0x81, 0, 0, 0] {
            f.drain(12..16);
        }
        if f.len() < 34 || f[12..14] != [8, 0] || f[22] <= 1 {
            continue;
        }
        let total = u16::from_be_bytes([f[16], f[17]]) as usize;
        let mac = match [f[30], f[31], f[32], f[33]] {
            [198, 18 | 19, ..] => [2, 0, 0, 0, 2, 0xfd],
            [192, 168, 2, 9] => [2, 0, 0, 0, 2, 9],
            _ => continue,
        };
        if total >= 20 && f.len() >= 14 + total {
            want.push(expected(&f, mac, MACS[3]));
        }
    }
    want.sort();
    let mut checked = 0;
    for out in &a.sent[3] {
        if out[30..32] == [198, 18] || out[30..32] == [198, 19] || out[30..34] == [192, 168, 2, 9] {
            let at = want.binary_search(out).unwrap_or_else(|_| panic!("unexpected frame on ge3: {out:02x?}"));
            want.remove(at);
            checked += 1;
        }
    }
    assert!(checked > 800, "{checked}");
}

#[test]
fn fast_path_forwards_bursts_as_the_full_pipeline_does() {
    for seed in [1, 2, 3] {
        let (a, _, _) = compare(true, 32, seed);
        assert!(a.pipe.fast.counters.forwarded > 800);
    }
}

/// Under a forwarding policy every flow needs a session: the fast path
/// forwards only packets of flows already in the table.
#[test]
fn fast_path_forwards_no_untracked_packet_under_a_forwarding_policy() {
    let (a, _, _) = compare(false, 32, 7);
    let c = a.pipe.fast.counters;
    assert_eq!(c.forwarded, c.tracked, "{c:?}");
    assert!(a.sent.iter().map(|q| q.len()).sum::<usize>() > 1_000);
}

/// 32 frames arriving on ge2, each of a flow not seen before: `frame(k)`
/// for the k-th frame made (`k` counts them).
fn new_flow_burst(k: &mut u32, frame: impl Fn(u32) -> Vec<u8>) -> Vec<(Vec<u8>, u16)> {
    (0..32)
        .map(|_| {
            *k += 1;
            (frame(*k), 2)
        })
        .collect()
}

/// 32 UDP frames from 192.168.1.6 on ge2 to hosts of `net`.0/24, each
/// of a flow not seen before (`k` counts the frames made).
fn udp_burst(k: &mut u32, net: [u8; 3]) -> Vec<(Vec<u8>, u16)> {
    new_flow_burst(k, |k| {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], MACS[2])
            .ipv4([192, 168, 1, 6], [net[0], net[1], net[2], (k / 60000) as u8 + 1], 64)
            .udp(1024 + (k % 60000) as u16, 53)
            .write(&mut f, &[0; 18])
            .unwrap();
        f
    })
}

/// 32 ICMP echo requests from 192.168.1.6 on ge2 to 8.8.8.8, each with an
/// identifier not seen before: new flows the fast path leaves (ICMP).
fn echo_burst(k: &mut u32) -> Vec<(Vec<u8>, u16)> {
    new_flow_burst(k, |k| {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], MACS[2])
            .ipv4([192, 168, 1, 6], [8, 8, 8, 8], 64)
            .icmpv4_echo_request(k as u16, 1)
            .write(&mut f, &[0; 18])
            .unwrap();
        f
    })
}

/// 2,000 bursts of `make` (masquerade traffic of new flows only: ge2 to
/// the internet, no forwarding policy) through a pipeline with the fast
/// path, adaptive as a worker runs it, and through one without: both
/// send, drop and count the same, and all 64,000 frames leave ge1.
fn masquerade_new_flows(snap: &Snapshot, k: &mut u32, make: impl Fn(&mut u32) -> Vec<(Vec<u8>, u16)>) -> (Side, Side) {
    let mut a = Side::new(true);
    a.pipe.fast.adaptive = true;
    let mut b = Side::new(false);
    for _ in 0..2_000 {
        let burst = make(k);
        a.run(snap, &burst);
        b.run(snap, &burst);
    }
    let (oa, ob) = (a.outcome(), b.outcome());
    assert_eq!(oa, ob);
    assert_eq!(oa.sent[1].len(), 64_000, "all masqueraded out of ge1");
    (a, b)
}

/// UDP flows, in whole bursts: the fast path sets up every flow, and the
/// sessions, ports, frames and counters come out as the full pipeline's.
#[test]
fn fast_path_sets_up_new_flows_as_the_full_pipeline_does() {
    let snap = snapshot(true);
    let (a, _) = masquerade_new_flows(&snap, &mut 0, |k| udp_burst(k, [8, 8, 4]));
    for f in &a.sent[1] {
        assert_eq!(f[26..30], [203, 0, 113, 10], "masqueraded");
        assert_checksums(f);
    }
    let c = a.pipe.fast.counters;
    assert_eq!((c.forwarded, c.new_flows, c.skipped), (64_000, 64_000, 0), "{c:?}");
}

/// Pings, each a new flow: the fast path can forward none of them (it
/// leaves ICMP to the full pipeline), so it stops trying for growing runs
/// of bursts, and what it does try it still leaves untouched.
#[test]
fn fast_path_backs_off_from_traffic_it_cannot_forward() {
    let snap = snapshot(true);
    let mut k = 0;
    let (mut a, mut b) = masquerade_new_flows(&snap, &mut k, echo_burst);
    let c = a.pipe.fast.counters;
    assert_eq!(c.forwarded, 0);
    // Tries after 1, 2, 4, ... 64 skipped bursts, then every 65th burst.
    assert!(c.skipped > 1_900, "{c:?}");

    // Routed traffic on the same port: taken up again at the next try (at
    // most 64 bursts later) and from then on every burst.
    for _ in 0..200 {
        let burst = udp_burst(&mut k, [198, 18, 0]);
        a.run(&snap, &burst);
        b.run(&snap, &burst);
    }
    assert_eq!(a.outcome(), b.outcome());
    assert!(a.pipe.fast.counters.forwarded >= (200 - 64) * 32, "{:?}", a.pipe.fast.counters);
}

/// Builds a TCP or UDP frame arriving on a port (`dst_mac` its MAC).
#[allow(clippy::too_many_arguments)]
fn l4_frame(
    r: &mut Rng,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    tcp: bool,
) -> Vec<u8> {
    let ttl = r.pick(&[64u8, 64, 64, 64, 2, 1]);
    let b = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, dst, ttl);
    let payload: Vec<u8> = (0..r.below(40)).map(|_| r.next() as u8).collect();
    let mut f = Vec::new();
    if tcp {
        let t = b.tcp(sport, dport, r.next() as u32, 65535);
        let t = match r.below(30) {
            0 => t.syn(),
            1 => t.ack(1).fin(),
            2 => t.rst(),
            _ => t.ack(9),
        };
        t.write(&mut f, &payload).unwrap();
    } else {
        b.udp(sport, dport).write(&mut f, &payload).unwrap();
    }
    f
}

/// The reply to a frame the router sent out of `port`: addresses and ports
/// swapped, arriving on that port from the station it was sent to.
fn reply(r: &mut Rng, out: &[u8], port: u16) -> Option<(Vec<u8>, u16)> {
    reply_to(r, out, port, MACS[port as usize])
}

/// `reply` to a port whose MAC is `mac`.
fn reply_to(r: &mut Rng, out: &[u8], port: u16, mac: [u8; 6]) -> Option<(Vec<u8>, u16)> {
    let p = etherparse::SlicedPacket::from_ethernet(out).ok()?;
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { return None };
    let h = ip.header();
    let (src, dst) = (h.source(), h.destination());
    let (sp, dp, tcp) = match &p.transport {
        Some(etherparse::TransportSlice::Udp(u)) => (u.source_port(), u.destination_port(), false),
        Some(etherparse::TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port(), true),
        _ => return None,
    };
    let station: [u8; 6] = out[0..6].try_into().unwrap();
    Some((l4_frame(r, station, mac, dst, src, dp, sp, tcp), port))
}

/// Every IPv4 TCP/UDP frame `f` must carry a header and a transport
/// checksum that verify (computed by etherparse).
fn assert_checksums(f: &[u8]) {
    let p = etherparse::SlicedPacket::from_ethernet(f).unwrap_or_else(|e| panic!("{e:?}: {f:02x?}"));
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { return };
    let h = ip.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "ip checksum of {f:02x?}");
    match &p.transport {
        Some(etherparse::TransportSlice::Udp(u)) => {
            let uh = u.to_header();
            assert_eq!(uh.checksum, uh.calc_checksum_ipv4(&h, u.payload()).unwrap(), "udp checksum of {f:02x?}");
        }
        Some(etherparse::TransportSlice::Tcp(t)) => {
            let th = t.to_header();
            assert_eq!(th.checksum, th.calc_checksum_ipv4(&h, t.payload()).unwrap(), "tcp checksum of {f:02x?}");
        }
        _ => {}
    }
}

/// Runs `burst` through both sides; of what the side with the fast path
/// sent out of ge1-ge3, checks the checksums of every frame (when
/// `checked`) and keeps a reply to `percent` % of them in `replies` (at
/// most 256 kept).
fn run_and_reply(
    snap: &Snapshot,
    [a, b]: [&mut Side; 2],
    burst: &[(Vec<u8>, u16)],
    r: &mut Rng,
    checked: bool,
    percent: u64,
    replies: &mut Vec<(Vec<u8>, u16)>,
) {
    let before: Vec<usize> = a.sent.iter().map(|q| q.len()).collect();
    a.run(snap, burst);
    b.run(snap, burst);
    for port in 1..4u16 {
        for out in &a.sent[port as usize][before[port as usize]..] {
            if checked {
                assert_checksums(out);
            }
            if r.chance(percent)
                && let Some(f) = reply(r, out, port)
            {
                replies.push(f);
            }
        }
    }
    replies.truncate(256);
}

/// Translated traffic both ways: inside hosts (with and without a
/// floating IP, resolved or not) to outside and routed-inside addresses,
/// outside clients to the floating IPs, and replies to whatever the router
/// sent, from a small set of flows so most packets belong to known ones;
/// sessions expiring among them, and with `damaged` frames damaged (a
/// router forwards a frame whose transport checksum a flipped bit broke:
/// checksums are verified only without).
fn compare_translated(open: bool, seed: u64, damaged: bool) -> (Side, Side) {
    let snap = snapshot(open);
    let mut r = Rng(seed);
    let (mut a, mut b) = (Side::new(true), Side::new(false));
    let mut now = 1;
    let mut replies: Vec<(Vec<u8>, u16)> = Vec::new();
    for _ in 0..1_500 {
        let mut burst = Vec::new();
        for _ in 0..32 {
            let f = if !replies.is_empty() && r.chance(45) {
                let k = r.below(replies.len() as u64) as usize;
                replies.swap_remove(k)
            } else if r.chance(15) {
                // An outside client to a floating IP.
                let dst = r.pick(&[[203, 0, 113, 50], [203, 0, 113, 51]]);
                let client = [198, 51, 100, r.below(4) as u8 + 1];
                let sport = 40000 + r.below(4) as u16;
                let tcp = r.chance(50);
                (l4_frame(&mut r, [2, 0, 0, 0, 0, 1], MACS[1], client, dst, sport, 80, tcp), 1)
            } else {
                let (src, port) = r.pick(&[
                    ([192, 168, 1, 5], 2u16),
                    ([192, 168, 1, 6], 2),
                    ([192, 168, 1, 6], 2),
                    ([192, 168, 1, 30], 2),
                    ([192, 168, 2, 7], 3),
                    ([192, 168, 2, 9], 3),
                ]);
                let dst =
                    r.pick(&[[8, 8, 8, 8], [93, 184, 216, 34], [172, 20, 1, 1], [198, 18, 0, 9], [192, 168, 2, 9]]);
                let sport = 1024 + r.below(8) as u16;
                let mac = [2, 0, 0, 0, src[2], src[3]];
                let tcp = r.chance(50);
                (l4_frame(&mut r, mac, MACS[port as usize], src, dst, sport, 443, tcp), port)
            };
            let mut f = f;
            if damaged && r.chance(10) {
                damage(&mut r, &mut f.0);
            }
            burst.push(f);
        }
        run_and_reply(&snap, [&mut a, &mut b], &burst, &mut r, !damaged, 70, &mut replies);
        // Time passes; now and then past the UDP timeout (120 s).
        now += if r.chance(2) { 125 } else { r.below(3) as u32 };
        a.pipe.set_now(now);
        b.pipe.set_now(now);
    }
    let (oa, ob) = (a.outcome(), b.outcome());
    assert_same(&oa, &ob);
    // Outbound traffic leaves ge1 translated, to the masquerade address or
    // a floating IP.
    for out in &oa.sent[1] {
        assert!(
            [[203, 0, 113, 10], [203, 0, 113, 50], [203, 0, 113, 51]].contains(&[out[26], out[27], out[28], out[29]]),
            "untranslated on ge1: {out:02x?}"
        );
    }
    (a, b)
}

#[test]
fn fast_path_translates_known_flows_as_the_full_pipeline_does() {
    for (seed, damaged) in [(5, false), (6, true)] {
        let (a, _) = compare_translated(true, seed, damaged);
        let c = a.pipe.fast.counters;
        assert!(c.tracked > 10_000, "the traffic must exercise the fast path's sessions: {c:?}");
        assert!(c.forwarded > c.tracked, "and plain forwarding beside them: {c:?}");
    }
}

#[test]
fn fast_path_translates_known_flows_under_a_forwarding_policy_as_the_full_pipeline_does() {
    let (a, _) = compare_translated(false, 9, true);
    let c = a.pipe.fast.counters;
    assert!(c.tracked > 10_000, "{c:?}");
    assert_eq!(c.forwarded, c.tracked, "{c:?}");
}

/// New flows from inside hosts (to the internet, to routed and connected
/// inside networks; TCP with any flags, and UDP), in bursts of 1 to 32,
/// with replies to what was sent and now and then a damaged frame among
/// them: bursts the fast path takes whole (new flows and all) and bursts
/// it leaves partly to the full pipeline (then the new flows too) must
/// come out as the full pipeline's, ports, sessions, drops by reason and
/// counters alike.
fn compare_new_flows(open: bool, seed: u64) -> (Side, Side) {
    let snap = snapshot(open);
    let mut r = Rng(seed);
    let (mut a, mut b) = (Side::new(true), Side::new(false));
    let mut now = 1;
    let mut replies: Vec<(Vec<u8>, u16)> = Vec::new();
    for _ in 0..2_000 {
        let len = 1 + r.below(32) as usize;
        let mut burst = Vec::new();
        let mut damaged = false;
        let mixed = r.chance(30);
        for _ in 0..len {
            let f = if !replies.is_empty() && r.chance(20) {
                let k = r.below(replies.len() as u64) as usize;
                replies.swap_remove(k)
            } else {
                // In a burst left partly to the full pipeline: a host with
                // no neighbour entry (its replies wait for resolution), and
                // an ECMP route.
                let (src, port) = r.pick(&[
                    ([192, 168, 1, 5], 2u16),
                    ([192, 168, 1, 6], 2),
                    ([192, 168, 2, 7], 3),
                    ([192, 168, 2, 9], 3),
                    if mixed { ([192, 168, 1, 30], 2) } else { ([192, 168, 1, 6], 2) },
                ]);
                let dst = r.pick(&[
                    [8, 8, 8, 8],
                    [93, 184, 216, 34],
                    [198, 18, 0, 9],
                    [192, 168, 2, 9],
                    if mixed { [172, 20, 1, 1] } else { [8, 8, 4, 4] },
                ]);
                // Few source ports, so that flows collide on the
                // masquerade address's ports.
                let sport = 1024 + r.below(2048) as u16;
                let dport = r.pick(&[443, 5432, 53]);
                let mac = [2, 0, 0, 0, src[2], src[3]];
                let tcp = r.chance(50);
                let mut f = l4_frame(&mut r, mac, MACS[port as usize], src, dst, sport, dport, tcp);
                // (l4_frame's TTLs of 1 and 2 would leave most bursts to the
                // full pipeline.)
                f[22] = 64;
                common::fix_ip_checksum(&mut f, 14);
                (f, port)
            };
            let mut f = f;
            if mixed && r.chance(3) {
                damage(&mut r, &mut f.0);
                damaged = true;
            }
            burst.push(f);
        }
        // (A damaged frame may be forwarded with its transport checksum
        // broken, as a router does.)
        run_and_reply(&snap, [&mut a, &mut b], &burst, &mut r, !damaged, 30, &mut replies);
        now += if r.chance(1) { 125 } else { r.below(2) as u32 };
        a.pipe.set_now(now);
        b.pipe.set_now(now);
    }
    let (oa, ob) = (a.outcome(), b.outcome());
    assert_same(&oa, &ob);
    (a, b)
}

#[test]
fn fast_path_sets_up_new_flows_in_mixed_bursts_as_the_full_pipeline_does() {
    let (a, _) = compare_new_flows(true, 11);
    let c = a.pipe.fast.counters;
    assert!(c.new_flows > 2_000, "the traffic must exercise the fast path's new flows: {c:?}");
    assert!(c.tracked > 1_000, "and known flows beside them: {c:?}");
    let stage = |name: &str| a.pipe.stage_counters()[STAGE_COUNTERS.iter().position(|n| *n == name).unwrap()];
    let (masq, kept) = (stage("nat: masquerade sessions"), stage("nat: source ports preserved"));
    assert!(masq > kept + 100, "and flows that could not keep their source port: {masq} masqueraded, {kept} kept it");
}

#[test]
fn fast_path_sets_up_new_flows_under_a_forwarding_policy_as_the_full_pipeline_does() {
    let (a, b) = compare_new_flows(false, 12);
    let c = a.pipe.fast.counters;
    assert!(c.new_flows > 2_000, "{c:?}");
    assert!(c.new_dropped > 300, "flows the policy blocks: {c:?}");
    assert_eq!(a.c.drops, b.c.drops);
}

/// A UDP query from the inside host 192.168.1.6 to 8.8.8.8, arriving on ge2.
fn dns_query() -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 1, 6], MACS[2])
        .ipv4([192, 168, 1, 6], [8, 8, 8, 8], 64)
        .udp(5353, 53)
        .write(&mut f, b"query")
        .unwrap();
    f
}

/// 8.8.8.8's answer to the masquerade address's port `ext_port`, arriving
/// on ge1.
fn dns_answer(ext_port: u16) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0x5e, 0, 0, 1], MACS[1])
        .ipv4([8, 8, 8, 8], [203, 0, 113, 10], 50)
        .udp(53, ext_port)
        .write(&mut f, b"answer!")
        .unwrap();
    f
}

/// A masqueraded flow's reply, through the fast path, is the frame computed
/// here: destination address and port back to the inside host's, both
/// checksums recomputed from scratch, TTL one less, the inside host's MAC.
#[test]
fn fast_path_translates_a_reply_to_the_frame_computed_here() {
    let snap = snapshot(true);
    let mut a = Side::new(true);
    a.run(&snap, &[(dns_query(), 2)]);
    assert_eq!(a.pipe.fast.counters.tracked, 0, "a new flow is no known flow's packet");
    assert_eq!(a.pipe.fast.counters.new_flows, 1, "it is set up in the fast path");
    let out = a.sent[1].last().expect("masqueraded").clone();
    assert_eq!(out[26..30], [203, 0, 113, 10]);
    let ext_port = u16::from_be_bytes([out[34], out[35]]);

    a.run(&snap, &[(dns_answer(ext_port), 1)]);
    assert_eq!(a.pipe.fast.counters.tracked, 1, "the reply takes the fast path");
    let got = a.sent[2].last().expect("translated back").clone();

    let mut want = Vec::new();
    PacketBuilder::ethernet2(MACS[2], [2, 0, 0, 0, 1, 6])
        .ipv4([8, 8, 8, 8], [192, 168, 1, 6], 49)
        .udp(53, 5353)
        .write(&mut want, b"answer!")
        .unwrap();
    // etherparse leaves identification 0 and DF clear, as the reply had.
    common::fix_ip_checksum(&mut want, 14);
    assert_eq!(got, want);
    assert_checksums(&got);
}

/// A known flow's packets follow the routes in force: the fast path
/// remembers a session's route lookups (its route hint) only for the route
/// table they were made in. After a new table moves the inside host's
/// route to a gateway on ge3 (and back), its replies, through the fast
/// path, leave where the full pipeline sends them, to the MAC it writes.
#[test]
fn fast_path_routes_known_flows_by_the_route_table_in_force() {
    let tables = [
        snapshot(true),
        snapshot_with_routes(true, &[("192.168.1.6/32", "192.168.2.253")]),
        snapshot(true),
        // The same routes as the first, in a table built anew.
        snapshot(true),
    ];
    let (mut a, mut b) = (Side::new(true), Side::new(false));
    let out = dns_query();
    a.run(&tables[0], &[(out.clone(), 2)]);
    b.run(&tables[0], &[(out.clone(), 2)]);
    let sent = a.sent[1].last().expect("masqueraded").clone();
    let ext_port = u16::from_be_bytes([sent[34], sent[35]]);
    let rep = dns_answer(ext_port);
    // (egress port, next hop's MAC) of the reply under each table.
    let want = [(2, [2, 0, 0, 0, 1, 6]), (3, [2, 0, 0, 0, 2, 0xfd]), (2, [2, 0, 0, 0, 1, 6]), (2, [2, 0, 0, 0, 1, 6])];
    for (snap, (port, mac)) in tables.iter().zip(want) {
        let tracked = a.pipe.fast.counters.tracked;
        // Each direction twice: the first packet under a table makes the
        // lookup, the second uses what was remembered.
        let burst = [(out.clone(), 2), (rep.clone(), 1), (out.clone(), 2), (rep.clone(), 1)];
        let before: Vec<usize> = a.sent.iter().map(|q| q.len()).collect();
        a.run(snap, &burst);
        b.run(snap, &burst);
        assert_eq!(a.pipe.fast.counters.tracked, tracked + 4, "all four through the fast path");
        let replies = &a.sent[port][before[port]..];
        let replies: Vec<_> = replies.iter().filter(|f| f[30..34] == [192, 168, 1, 6]).collect();
        assert_eq!(replies.len(), 2, "both replies leave port {port}");
        for f in replies {
            assert_eq!(f[0..6], mac);
            assert_eq!(f[6..12], MACS[port]);
            assert_checksums(f);
        }
        assert_eq!(a.sent[1].len(), before[1] + 2, "both queries leave the external port");
    }
    assert_same(&a.outcome(), &b.outcome());
}

/// configs/loadbalancer.json (VIP 192.168.0.137:80 on ge1, members .194
/// and .195), its first member up or set down (draining).
fn lb_snapshot(first_up: bool) -> Snapshot {
    lb_snapshot_with(first_up, "ROUND_ROBIN", LbSnat::default())
}

/// configs/loadbalancer.json with its first member up or down, its pool's
/// algorithm `algorithm`, and source translation `snat`.
fn lb_snapshot_with(first_up: bool, algorithm: &str, snat: LbSnat) -> Snapshot {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/loadbalancer.json");
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let pool = &mut doc["services"]["loadbalancer"]["listeners"][0]["default_pool"];
    pool["members"][0]["admin_state_up"] = first_up.into();
    pool["lb_algorithm"] = algorithm.into();
    let cfg = AstaraConfig::from_json(&serde_json::to_vec(&doc).unwrap()).unwrap();
    let mut opts = common::options();
    opts.lb.snat = snat;
    opts.neighbors = vec![StaticNeighbor {
        port: "ge1".into(),
        ip: "192.168.0.1".parse().unwrap(),
        mac: astara_dp::packet::Mac([2, 0, 0x5e, 0, 0, 1]),
    }];
    compile(&cfg, &ports_from_config(&cfg), &opts).unwrap().snapshot
}

/// `run_and_reply` for the load balancer's snapshots, where the members
/// and the clients' gateway are on ge1 (MAC `ge1`): replies to `percent` %
/// of what the side with the fast path sent out of ge1.
fn balance_and_reply(
    snap: &Snapshot,
    [a, b]: [&mut Side; 2],
    burst: &[(Vec<u8>, u16)],
    r: &mut Rng,
    ge1: [u8; 6],
    percent: u64,
    replies: &mut Vec<(Vec<u8>, u16)>,
) {
    let before = a.sent[1].len();
    a.run(snap, burst);
    b.run(snap, burst);
    for out in &a.sent[1][before..] {
        if r.chance(percent)
            && let Some(f) = reply_to(r, out, 1, ge1)
        {
            replies.push(f);
        }
    }
    replies.truncate(256);
}

/// Balanced flows through the fast path: clients to the VIP and the
/// members' replies, a member then set down (its flows drain) and the drain
/// timeout passing; the outputs, drops and counters as without it.
#[test]
fn fast_path_balances_known_flows_as_the_full_pipeline_does() {
    let (up, down) = (lb_snapshot(true), lb_snapshot(false));
    let ge1 = up.ports[1].mac.0;
    let mut r = Rng(21);
    let (mut a, mut b) = (Side::new(true), Side::new(false));
    let mut now = 1;
    let mut replies: Vec<(Vec<u8>, u16)> = Vec::new();
    for round in 0..1_200 {
        let snap = if round < 600 { &up } else { &down };
        let mut burst = Vec::new();
        for _ in 0..32 {
            let mut f = if !replies.is_empty() && r.chance(50) {
                let k = r.below(replies.len() as u64) as usize;
                replies.swap_remove(k)
            } else {
                // 4,096 flows: each sees a few packets before a FIN or
                // RST takes it out of the established state.
                let client = [10, 20, 0, r.below(64) as u8 + 1];
                let sport = 20000 + r.below(64) as u16;
                let tcp = r.chance(85);
                (l4_frame(&mut r, [2, 0, 0x5e, 0, 0, 1], ge1, client, [192, 168, 0, 137], sport, 80, tcp), 1)
            };
            if r.chance(5) {
                damage(&mut r, &mut f.0);
            }
            burst.push(f);
        }
        balance_and_reply(snap, [&mut a, &mut b], &burst, &mut r, ge1, 70, &mut replies);
        // Past the drain timeout (300 s) once the member is down.
        now += if round == 900 { 301 } else { 1 };
        a.pipe.set_now(now);
        b.pipe.set_now(now);
    }
    let (oa, ob) = (a.outcome(), b.outcome());
    assert_eq!(oa, ob);
    // Each member's packets, counted the same on both paths.
    let (pa, pb) = (&a.pipe.conntrack.lb.packets, &b.pipe.conntrack.lb.packets);
    assert_eq!(pa, pb);
    assert!(pa.iter().filter(|&&n| n > 1_000).count() >= 2, "{pa:?}");
    let c = a.pipe.fast.counters;
    assert!(c.tracked > 5_000, "{c:?}");
    let drained = astara_dp::stage::DropReason::LbDrained as usize;
    assert!(oa.drops[drained] > 0, "flows of the drained member ended: {:?}", oa.drops);
}

/// New connections to the VIP, set up in the fast path in the bursts it
/// takes whole, with each balancing algorithm, with and without source
/// translation, beside replies from the members, damaged frames and TTLs
/// that expire, the first member set down halfway: the outputs, drops and
/// counters, and each member's packets and active sessions (which the
/// least-connections choice reads), as without it.
#[test]
fn fast_path_balances_new_connections_as_the_full_pipeline_does() {
    const VIP: [u8; 4] = [192, 168, 0, 137];
    let gateway = [2, 0, 0x5e, 0, 0, 1];
    for (algorithm, snat) in [
        ("ROUND_ROBIN", LbSnat::Never),
        ("SOURCE_IP", LbSnat::Always),
        ("LEAST_CONNECTIONS", LbSnat::Always),
        ("LEAST_CONNECTIONS", LbSnat::Never),
    ] {
        let (up, down) = (lb_snapshot_with(true, algorithm, snat), lb_snapshot_with(false, algorithm, snat));
        let ge1 = up.ports[1].mac.0;
        let mut r = Rng(31);
        let (mut a, mut b) = (Side::new(true), Side::new(false));
        let mut now = 1;
        let mut replies: Vec<(Vec<u8>, u16)> = Vec::new();
        for round in 0..2_000 {
            let snap = if round < 1_000 { &up } else { &down };
            let len = 1 + r.below(32) as usize;
            // Bursts the fast path cannot take whole: damaged frames, UDP,
            // and TTLs of 1 and 2 (from `l4_frame`).
            let mixed = r.chance(30);
            // And bursts of new connections only (a member's reply to a
            // connection not yet established is left to the full pipeline,
            // and so is its burst).
            let fresh = r.chance(30);
            let mut burst = Vec::new();
            for _ in 0..len {
                let mut f = if !fresh && !replies.is_empty() && r.chance(25) {
                    let k = r.below(replies.len() as u64) as usize;
                    replies.swap_remove(k)
                } else {
                    // Enough clients and ports that most flows are new, few
                    // enough that some come again; UDP to the TCP
                    // listener's port (no listener's) in mixed bursts.
                    let client = [10, 20, r.below(4) as u8, r.below(250) as u8 + 1];
                    let sport = 20000 + r.below(512) as u16;
                    let tcp = !mixed || r.chance(80);
                    let mut f = l4_frame(&mut r, gateway, ge1, client, VIP, sport, 80, tcp);
                    if !mixed {
                        f[22] = 64;
                        common::fix_ip_checksum(&mut f, 14);
                    }
                    (f, 1)
                };
                if mixed && r.chance(5) {
                    damage(&mut r, &mut f.0);
                }
                burst.push(f);
            }
            balance_and_reply(snap, [&mut a, &mut b], &burst, &mut r, ge1, 60, &mut replies);
            now += r.below(2) as u32;
            a.pipe.set_now(now);
            b.pipe.set_now(now);
        }
        let what = format!("{algorithm}, {snat:?}");
        assert_eq!(a.outcome(), b.outcome(), "{what}");
        let (la, lb) = (&a.pipe.conntrack.lb, &b.pipe.conntrack.lb);
        assert_eq!((&la.packets, &la.active, &la.created), (&lb.packets, &lb.active, &lb.created), "{what}");
        assert!(
            la.created.iter().filter(|&&n| n > 500).count() >= 2,
            "{what}: both members take flows: {:?}",
            la.created
        );
        let c = a.pipe.fast.counters;
        assert!(c.new_flows > 5_000, "{what}: the fast path must set up new connections: {c:?}");
        assert!(c.tracked > 2_000, "{what}: and forward known ones beside them: {c:?}");
    }
}

/// A frame whose receiving device verified its IPv4 header checksum and
/// found it good, as a DPDK mbuf from a NIC with receive checksum offload
/// is marked.
struct DeviceVerified(Pkt);

impl PacketBuf for DeviceVerified {
    type Pool = Pool;
    fn release(self, pool: &mut Pool) {
        self.0.release(pool)
    }
    fn data(&self) -> &[u8] {
        self.0.data()
    }
    fn data_mut(&mut self) -> &mut [u8] {
        self.0.data_mut()
    }
    fn adj(&mut self, n: usize) {
        self.0.adj(n)
    }
    fn prepend(&mut self, n: usize) -> bool {
        self.0.prepend(n)
    }
    fn trim(&mut self, len: usize) {
        self.0.trim(len)
    }
    fn ipv4_checksum_verified(&self) -> bool {
        true
    }
}

/// Runs `frames` (all from ge2) through a pipeline, with or without the
/// fast path in front: what each port sent, the drops by reason, and how
/// many the fast path forwarded.
fn run_marked<P: PacketBuf<Pool = Pool>>(
    snap: &Snapshot,
    frames: &[(Vec<u8>, u16)],
    fast: bool,
    wrap: fn(Pkt) -> P,
) -> (Vec<Vec<Vec<u8>>>, Vec<u64>, u64) {
    let mut pipe = Pipeline::new(ConntrackConfig { seed: Some(1), ..Default::default() });
    pipe.set_now(1);
    pipe.fast.adaptive = false;
    let (mut pool, mut c) = (Pool::new(64), Counters::new(4));
    let mut staging: Vec<Vec<P>> = (0..4).map(|_| Vec::new()).collect();
    let mut burst: Burst<P> = Burst::new(32);
    for (f, port) in frames {
        assert!(burst.push(wrap(Pkt::from_slice(f).unwrap()), *port).is_ok());
    }
    if !fast || pipe.process_fast(snap, &mut burst, &mut staging) {
        pipe.process(snap, &mut burst);
    }
    dispatch(&mut burst, &mut staging, &mut pool, &mut c);
    let sent = staging.iter().map(|q| q.iter().map(|p| p.data().to_vec()).collect()).collect();
    (sent, c.drops.to_vec(), pipe.fast.counters.forwarded)
}

/// A device's word on the IPv4 header checksum is taken, and only its
/// "good": frames whose checksum does not verify are forwarded when the
/// device marked them verified (by the fast path and the full pipeline
/// alike, the checksum then updated for the TTL by RFC 1624 as always),
/// and dropped as bad when it did not.
#[test]
fn a_header_checksum_the_device_verified_is_not_checked_again() {
    let snap = snapshot(true);
    let mut k = 0;
    let mut frames = udp_burst(&mut k, [198, 18, 0]);
    for (f, _) in &mut frames {
        f[24] ^= 0x5a;
        assert!(!common::inet_sum_ok(&f[14..34]));
    }
    let bad = astara_dp::stage::DropReason::Ipv4BadChecksum as usize;
    for fast in [true, false] {
        let (sent, drops, quick) = run_marked(&snap, &frames, fast, DeviceVerified);
        assert_eq!(drops.iter().sum::<u64>(), 0, "fast path {fast}: {drops:?}");
        assert_eq!(quick, if fast { 32 } else { 0 });
        // 198.18.0.0/15 goes by 192.168.2.253 on ge3.
        let mut want: Vec<Vec<u8>> = frames
            .iter()
            .map(|(f, _)| {
                let mut e = f.clone();
                e[0..6].copy_from_slice(&NEIGHBORS[4].2);
                e[6..12].copy_from_slice(&MACS[3]);
                // RFC 1624 eqn. 3 over the TTL/protocol word, from the
                // checksum as it came.
                let old = u16::from_be_bytes([f[22], f[23]]);
                e[22] -= 1;
                let new = u16::from_be_bytes([e[22], e[23]]);
                let mut s = !u16::from_be_bytes([f[24], f[25]]) as u32 + !old as u32 + new as u32;
                while s >> 16 != 0 {
                    s = (s & 0xffff) + (s >> 16);
                }
                e[24..26].copy_from_slice(&(!(s as u16)).to_be_bytes());
                e
            })
            .collect();
        let mut got = sent[3].clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "fast path {fast}");

        let (sent, drops, _) = run_marked(&snap, &frames, fast, |p| p);
        assert!(sent.iter().all(|q| q.is_empty()), "fast path {fast}");
        assert_eq!(drops[bad], 32, "fast path {fast}");
    }
}

/// Frames of the corpus in bursts of 32, through a parse stage.
fn parsed(parse: &mut Parse, snap: &Snapshot, frames: &[(Vec<u8>, u16)]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for chunk in frames.chunks(32) {
        let mut burst: Burst = Burst::new(32);
        for (f, port) in chunk {
            burst.push(Pkt::from_slice(f).unwrap(), *port).unwrap();
        }
        parse.process(snap, &mut burst);
        for i in 0..burst.len() {
            out.push((format!("{:?}", burst.meta(i)), burst.pkt(i).data().to_vec()));
        }
    }
    out
}

/// The parse stage checks the common case (untagged IPv4, 20-byte header)
/// in one read of the header before parsing in full: on the corpus, every
/// packet's metadata, its bytes (trailer cut) and the counters must be
/// what the full parse alone gives.
#[test]
fn parse_stage_quick_check_agrees_with_the_full_parse() {
    let snap = snapshot(true);
    let mut r = Rng(0x243f_6a88_85a3_08d3);
    let frames: Vec<(Vec<u8>, u16)> = (0..20_000).map(|_| frame(&mut r)).collect();
    let (mut quick, mut full) = (Parse::default(), Parse { quick: false, ..Default::default() });
    let (a, b) = (parsed(&mut quick, &snap, &frames), parsed(&mut full, &snap, &frames));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "frame {i}: {:02x?}", frames[i].0);
    }
    assert_eq!(format!("{:?}", quick.counters), format!("{:?}", full.counters));
    // The corpus reaches both ways: priority tags and options (counted
    // only by the full parse) as well as plain IPv4.
    let c = quick.counters;
    assert!(c.ipv4 > 10_000 && c.vlan_priority_tagged > 0 && c.ipv4_options > 0, "{c:?}");
}

/// Every IPv4 packet the parse stage accepts, read by `etherparse`: the
/// same addresses, protocol, offsets, ports (or echo identifier) and TCP
/// flags, a header checksum that verifies, and the frame cut to the IP
/// total length.
#[test]
fn parse_stage_reads_ipv4_as_etherparse_does() {
    use astara_dp::packet::{L3, Verdict};
    use etherparse::{Icmpv4Type, NetHeaders, PacketHeaders, TransportHeader};
    let snap = snapshot(true);
    let mut r = Rng(0x1319_8a2e_0370_7344);
    let frames: Vec<(Vec<u8>, u16)> = (0..20_000).map(|_| frame(&mut r)).collect();
    let mut parse = Parse::default();
    let mut accepted = 0;
    for chunk in frames.chunks(32) {
        let mut burst: Burst = Burst::new(32);
        for (f, port) in chunk {
            burst.push(Pkt::from_slice(f).unwrap(), *port).unwrap();
        }
        parse.process(&snap, &mut burst);
        for (i, (f, _)) in chunk.iter().enumerate() {
            let m = *burst.meta(i);
            if m.verdict == Verdict::Drop {
                continue;
            }
            assert_eq!(m.l3, L3::Ipv4);
            let h = PacketHeaders::from_ethernet_slice(f).unwrap_or_else(|e| panic!("{e:?}: {f:02x?}"));
            let Some(NetHeaders::Ipv4(ip, _)) = &h.net else { panic!("not IPv4: {f:02x?}") };
            let l3 = 14 + 4 * h.link_exts.len();
            assert_eq!(m.l3_off as usize, l3);
            assert_eq!(m.l4_off as usize, l3 + ip.header_len());
            assert_eq!(m.src as u32, u32::from_be_bytes(ip.source));
            assert_eq!(m.dst as u32, u32::from_be_bytes(ip.destination));
            assert_eq!(m.proto, ip.protocol.0);
            assert_eq!(ip.header_checksum, ip.calc_header_checksum());
            assert_eq!(burst.pkt(i).data(), &f[..l3 + ip.total_len as usize]);
            assert_eq!(m.frag != 0, ip.is_fragmenting_payload());
            if m.frag == 0 {
                match &h.transport {
                    Some(TransportHeader::Udp(u)) => {
                        assert_eq!((m.sport, m.dport), (u.source_port, u.destination_port))
                    }
                    Some(TransportHeader::Tcp(t)) => {
                        assert_eq!((m.sport, m.dport), (t.source_port, t.destination_port));
                        let bits = [t.fin, t.syn, t.rst, t.psh, t.ack, t.urg, t.ece, t.cwr];
                        let flags = bits.iter().enumerate().fold(0u8, |a, (k, &b)| a | (b as u8) << k);
                        assert_eq!(m.tcp_flags, flags);
                    }
                    Some(TransportHeader::Icmpv4(c)) => {
                        let b = c.to_bytes();
                        assert_eq!(m.icmp_type, b[0]);
                        if let Icmpv4Type::EchoRequest(e) | Icmpv4Type::EchoReply(e) = &c.icmp_type {
                            assert_eq!((m.sport, m.dport), (e.id, e.id));
                        }
                    }
                    _ => assert!(!matches!(m.proto, 1 | 6 | 17), "{f:02x?}"),
                }
            }
            accepted += 1;
        }
    }
    assert!(accepted > 10_000, "{accepted}");
}
