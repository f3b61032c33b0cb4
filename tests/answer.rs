//! The answer stage: ARP requests from known neighbours and ICMP echo
//! requests to the router are answered on the worker, in place, with the
//! frames the host stack would send. Expected frames are written out by
//! hand here, and echo replies are checked with etherparse.

use astara_dp::control::{StaticNeighbor, compile, ports_from_config};
use astara_dp::dataplane::Pipeline;
use astara_dp::packet::{Burst, PacketBuf, Pkt, Verdict};
use astara_dp::stage::{Punt, Snapshot};
use etherparse::{Icmpv4Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

mod common;

const GE2: u16 = 2;
const GE2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x11, 0x22, 0x01];
const GE1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0xa0, 0x80, 0x82];
/// A host on ge2's network the snapshot knows (a static entry).
const HOST: [u8; 4] = [192, 168, 1, 5];
const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x01, 0x05];

fn snapshot() -> Snapshot {
    let cfg = common::router_config();
    let mut opts = common::options();
    opts.neighbors.push(StaticNeighbor {
        port: "ge2".into(),
        ip: "192.168.1.5".parse().unwrap(),
        mac: "02:00:00:00:01:05".parse().unwrap(),
    });
    compile(&cfg, &ports_from_config(&cfg), &opts).unwrap().snapshot
}

/// An ARP request as a Linux host sends it on a veth: 42 bytes, no padding.
fn arp_request(dst: [u8; 6], smac: [u8; 6], sip: [u8; 4], tip: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&sip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tip);
    f
}

/// Runs frames arriving on `port` through the whole pipeline; the answer
/// stage on or off (as with or without a host stack).
fn run(frame: &[u8], port: u16, answer: bool) -> (Vec<u8>, Verdict, u8, u16) {
    let snap = snapshot();
    let mut pipe = Pipeline::default();
    pipe.answer.enabled = answer;
    let mut burst: Burst = Burst::new(32);
    burst.push(Pkt::from_slice(frame).unwrap(), port).unwrap();
    pipe.process(&snap, &mut burst);
    let mut out = Vec::new();
    burst.drain(|p, m| out.push((p.data().to_vec(), m.verdict, m.punt, m.out_port)));
    out.remove(0)
}

#[test]
fn arp_request_from_a_known_neighbour_is_answered_in_place() {
    let req = arp_request([0xff; 6], HOST_MAC, HOST, [192, 168, 1, 1]);
    let (frame, verdict, punt, port) = &run(&req, GE2, true);
    assert_eq!((*verdict, *punt, *port), (Verdict::Local, Punt::Answer as u8, GE2));
    // The reply, byte by byte: to the asker, from ge2's MAC, op 2, padded to 60.
    let mut want = Vec::new();
    want.extend_from_slice(&HOST_MAC);
    want.extend_from_slice(&GE2_MAC);
    want.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    want.extend_from_slice(&GE2_MAC);
    want.extend_from_slice(&[192, 168, 1, 1]);
    want.extend_from_slice(&HOST_MAC);
    want.extend_from_slice(&HOST);
    want.resize(60, 0);
    assert_eq!(frame, &want);

    // A padded request with a priority tag gets the same reply.
    let mut tagged = req[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x20, 0x00]);
    tagged.extend_from_slice(&req[12..]);
    tagged.resize(64, 0xee);
    assert_eq!(run(&tagged, GE2, true).0, want);

    // Without a host stack nothing answers: the request is local, as before.
    let (frame, verdict, punt, _) = &run(&req, GE2, false);
    assert_eq!((frame, *verdict, *punt), (&req, Verdict::Local, Punt::Host as u8));
}

#[test]
fn arp_the_worker_leaves_to_the_host_stack() {
    let me = [192, 168, 1, 1];
    let cases = [
        // A host the snapshot does not know: the host stack must learn it.
        ("unknown sender", arp_request([0xff; 6], [2, 0, 0, 0, 1, 9], [192, 168, 1, 9], me)),
        // An address conflict: the host stack's to report.
        ("sender claims the router's address", arp_request([0xff; 6], HOST_MAC, me, me)),
        ("gratuitous", arp_request([0xff; 6], HOST_MAC, HOST, HOST)),
        ("not for us", arp_request([0xff; 6], HOST_MAC, HOST, [192, 168, 1, 77])),
        // ge2's address asked on ge1 is not ge1's to answer.
        ("other port's address", arp_request([0xff; 6], HOST_MAC, [203, 0, 113, 1], me)),
    ];
    for (what, f) in cases {
        let port = if what == "other port's address" { 1 } else { GE2 };
        let (frame, verdict, punt, _) = &run(&f, port, true);
        assert_eq!((*verdict, *punt), (Verdict::Local, Punt::Host as u8), "{what}");
        assert_eq!(frame, &f, "{what}: untouched");
    }
    // A reply is never answered.
    let mut reply = arp_request(GE2_MAC, HOST_MAC, HOST, [192, 168, 1, 1]);
    reply[21] = 2;
    assert_eq!(run(&reply, GE2, true).2, Punt::Host as u8);
}

fn echo_request(dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(HOST_MAC, dst_mac)
        .ipv4(src, dst, 57)
        .icmpv4_echo_request(0x1234, 7)
        .write(&mut f, payload)
        .unwrap();
    f
}

/// Checks an echo reply with etherparse and returns (eth dst, eth src, ip
/// src, ip dst, ttl, id, seq, payload).
type Reply = ([u8; 6], [u8; 6], [u8; 4], [u8; 4], u8, u16, u16, Vec<u8>);

fn check_reply(frame: &[u8]) -> Reply {
    let s = SlicedPacket::from_ethernet(frame).expect("a valid frame");
    let eth = match s.link {
        Some(etherparse::LinkSlice::Ethernet2(e)) => e,
        other => panic!("not Ethernet II: {other:?}"),
    };
    let Some(NetSlice::Ipv4(ip)) = s.net else { panic!("not IPv4") };
    let h = ip.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 header checksum");
    assert_eq!(frame.len(), 14 + h.total_len as usize, "no padding left");
    let Some(TransportSlice::Icmpv4(icmp)) = s.transport else { panic!("not ICMP") };
    let Icmpv4Type::EchoReply(e) = icmp.icmp_type() else { panic!("not an echo reply: {:?}", icmp.icmp_type()) };
    let want = icmp.header().icmp_type.calc_checksum(icmp.payload());
    assert_eq!(icmp.checksum(), want, "ICMP checksum");
    (eth.destination(), eth.source(), h.source, h.destination, h.time_to_live, e.id, e.seq, icmp.payload().to_vec())
}

#[test]
fn echo_request_to_the_router_is_answered_in_place() {
    let payload: Vec<u8> = (0..56u8).collect();
    let req = echo_request(GE2_MAC, HOST, [192, 168, 1, 1], &payload);
    let (frame, verdict, punt, port) = &run(&req, GE2, true);
    assert_eq!((*verdict, *punt, *port), (Verdict::Local, Punt::Answer as u8, GE2));
    let r = check_reply(frame);
    assert_eq!(r, (HOST_MAC, GE2_MAC, [192, 168, 1, 1], HOST, 64, 0x1234, 7, payload.clone()));

    // Any of the router's addresses (ge3's, asked through ge2), a short
    // payload padded on the wire, a priority tag: the tag and padding go.
    let mut req = echo_request(GE2_MAC, HOST, [192, 168, 2, 1], b"hi");
    let tail = req.split_off(12);
    req.extend_from_slice(&[0x81, 0x00, 0x00, 0x00]);
    req.extend_from_slice(&tail);
    req.resize(64, 0);
    let (frame, _, punt, port) = &run(&req, GE2, true);
    assert_eq!((*punt, *port), (Punt::Answer as u8, GE2));
    let r = check_reply(frame);
    assert_eq!(r, (HOST_MAC, GE2_MAC, [192, 168, 2, 1], HOST, 64, 0x1234, 7, b"hi".to_vec()));
}

#[test]
fn echo_requests_the_worker_does_not_answer() {
    // To a floating IP: translated and forwarded to its inside host.
    let f = echo_request(GE1_MAC, [8, 8, 8, 8], [203, 0, 113, 50], b"x");
    let (_, verdict, _, port) = &run(&f, 1, true);
    assert_eq!((*verdict, *port), (Verdict::Forward, GE2));
    // To the limited broadcast: the host stack's to judge (it ignores it).
    let f = echo_request([0xff; 6], HOST, [255, 255, 255, 255], b"x");
    let (frame, verdict, punt, _) = &run(&f, GE2, true);
    assert_eq!((frame, *verdict, *punt), (&f, Verdict::Local, Punt::Host as u8));
    // With IP options: left to the host stack.
    let mut f = echo_request(GE2_MAC, HOST, [192, 168, 1, 1], b"x");
    f.splice(34..34, [1, 1, 1, 0]); // four NOP/EOL bytes of options
    f[14] = 0x46;
    let total = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f[24] = 0;
    f[25] = 0;
    let c = astara_dp::packet::checksum::checksum(&f[14..38]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let (frame, verdict, punt, _) = &run(&f, GE2, true);
    assert_eq!((frame, *verdict, *punt), (&f, Verdict::Local, Punt::Host as u8));
}
