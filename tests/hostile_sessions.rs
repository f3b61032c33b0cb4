//! Damaged packets and ICMP errors about flows the router has translated or
//! balanced, with their sessions live: the other tests send hostile frames
//! to a router with no sessions (`bad_input.rs`), or intact ICMP errors one
//! at a time (`nat.rs`), or compare the fast path with the full pipeline
//! (`fast_path.rs`). Here traffic opens sessions (masquerade, floating IPs,
//! hairpin, pings, the load balancer with and without source translation);
//! replies and ICMP errors are made from what the router actually sent,
//! and in some bursts damaged (bytes of the quote or the header changed,
//! frames cut, length fields made to agree with the cut or not, packets
//! made first or later fragments); sessions expire on
//! the way. Bursts go through the fast path and then the full pipeline, as
//! a worker runs them.
//!
//! Every packet must get a verdict with nothing panicking, every forwarded
//! IPv4 frame must have a header that parses (etherparse) with a checksum
//! that verifies and be cut to its IP length, and rx = tx + local + drops. In the bursts left intact, every forwarded
//! frame must carry checksums that verify (IP, TCP, UDP, ICMP: computed in
//! `common::tuple`, independently of the product), and every forwarded ICMP
//! error must go to the sender of the packet it quotes, whose quoted header
//! checksum verifies (RFC 5508: the quote translated back as that sender
//! sent it).

use astara_dp::control::{AstaraConfig, CompileOptions, StaticNeighbor, compile, ports_from_config};
use astara_dp::dataplane::{Counters, Pipeline, STAGE_COUNTERS, dispatch};
use astara_dp::packet::{Burst, PacketBuf, Pkt, Pool, Verdict};
use astara_dp::stage::lb::LbSnat;
use astara_dp::stage::{ConntrackConfig, Snapshot};
use etherparse::PacketBuilder;

mod common;
use common::Rng;

fn config(name: &str) -> AstaraConfig {
    AstaraConfig::from_json(&std::fs::read(format!("{}/configs/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()).unwrap()
}

fn snapshot(cfg: &AstaraConfig, opts: &CompileOptions) -> Snapshot {
    compile(cfg, &ports_from_config(cfg), opts).unwrap().snapshot
}

/// A TCP (ACK) or UDP frame with a short random payload.
#[allow(clippy::too_many_arguments)]
fn l4_frame(
    r: &mut Rng,
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    tcp: bool,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0, macs.1).ipv4(src, dst, 64);
    let payload: Vec<u8> = (0..r.below(24)).map(|_| r.next() as u8).collect();
    let mut f = Vec::new();
    if tcp {
        b.tcp(sport, dport, r.next() as u32, 8192).ack(1).write(&mut f, &payload).unwrap();
    } else {
        b.udp(sport, dport).write(&mut f, &payload).unwrap();
    }
    f
}

/// The reply to `out` (a TCP or UDP frame the router sent): addresses,
/// ports and MACs swapped.
fn reply(r: &mut Rng, out: &[u8]) -> Vec<u8> {
    let src = [out[30], out[31], out[32], out[33]];
    let dst = [out[26], out[27], out[28], out[29]];
    let (sport, dport) = (u16::from_be_bytes([out[36], out[37]]), u16::from_be_bytes([out[34], out[35]]));
    let macs = (out[0..6].try_into().unwrap(), out[6..12].try_into().unwrap());
    l4_frame(r, macs, src, dst, sport, dport, out[23] == 6)
}

/// An ICMP error from `from` about `out` (a frame the router sent), to the
/// address `out` came from, arriving on the port `out` left by. Damaged
/// when `damage`: the quote cut short or one of its bytes changed (its
/// header checksum made to agree or not), or the frame cut with its total
/// length made to agree or not.
fn icmp_error(r: &mut Rng, from: [u8; 4], out: &[u8], damage: bool) -> Vec<u8> {
    let full = &out[14..];
    let mut q = if damage && r.chance(50) {
        full[..r.below(full.len() as u64 + 1) as usize].to_vec()
    } else {
        // An IP header and 8 bytes (RFC 792), or more of the packet.
        full[..if r.chance(50) { 28 } else { full.len() }].to_vec()
    };
    if damage && r.chance(60) {
        r.scribble(&mut q);
        if r.chance(30) {
            common::fix_ip_checksum(&mut q, 0);
        }
    }
    let (type_u8, code_u8) = match r.below(5) {
        0 => (3, r.below(16) as u8),
        1 => (11, 0),
        2 => (12, 0),
        3 => (4, 0),
        _ => (3, 3),
    };
    let macs = (out[0..6].try_into().unwrap(), out[6..12].try_into().unwrap());
    let mut f = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(from, [out[26], out[27], out[28], out[29]], 64)
        .icmpv4(etherparse::Icmpv4Type::Unknown { type_u8, code_u8, bytes5to8: [0; 4] })
        .write(&mut f, &q)
        .unwrap();
    if damage && r.chance(15) {
        f.truncate(14 + r.below(f.len() as u64 - 14) as usize);
        if r.chance(50) && f.len() >= 34 {
            let total = (f.len() - 14) as u16;
            f[16..18].copy_from_slice(&total.to_be_bytes());
            common::fix_ip_checksum(&mut f, 14);
        }
    }
    f
}

/// A router with its sessions, run burst by burst as a worker runs it.
struct Router {
    snap: Snapshot,
    pipe: Pipeline,
    pool: Pool,
    c: Counters,
    now: u32,
    /// TCP and UDP frames it sent lately, and the port each left by.
    sent: Vec<(Vec<u8>, u16)>,
    /// The external port of a masquerading router: no ICMP error leaving
    /// by it may quote an address of its inside networks (192.168.1.0/24,
    /// 192.168.2.0/24).
    external: Option<u16>,
}

impl Router {
    fn new(snap: Snapshot, r: &mut Rng, seed: u64) -> Router {
        let mut pipe = Pipeline::new(ConntrackConfig { seed: Some(seed), ..Default::default() });
        pipe.set_now(1);
        // Half the runs try every burst in the fast path, half back off
        // from bursts it forwards little of, as a worker does.
        pipe.fast.adaptive = r.chance(50);
        let c = Counters::new(snap.ports.len());
        let external = snap.nat.external.map(|(p, _)| p);
        Router { snap, pipe, pool: Pool::new(256), c, now: 1, sent: Vec::new(), external }
    }

    fn mac(&self, port: u16) -> [u8; 6] {
        self.snap.ports[port as usize].mac.0
    }

    /// One burst; `intact`: no frame of it was damaged.
    fn run(&mut self, frames: &[(Vec<u8>, u16)], intact: bool) {
        let snap = &self.snap;
        let mut burst: Burst = Burst::new(frames.len().max(1));
        for (f, port) in frames {
            burst.push(Pkt::from_slice(f).expect("fits a buffer"), *port).unwrap();
            self.c.rx += 1;
        }
        let mut staging: Vec<Vec<Pkt>> = (0..snap.ports.len()).map(|_| Vec::new()).collect();
        if self.pipe.process_fast(snap, &mut burst, &mut staging) {
            self.pipe.process(snap, &mut burst);
        }
        for i in 0..burst.len() {
            assert_ne!(burst.meta(i).verdict, Verdict::Pending, "every packet gets a verdict");
        }
        dispatch(&mut burst, &mut staging, &mut self.pool, &mut self.c);
        for (port, q) in staging.iter_mut().enumerate() {
            for p in q.drain(..) {
                let f = p.data().to_vec();
                p.release(&mut self.pool);
                self.c.tx += 1;
                check(&f, intact);
                if self.external == Some(port as u16) && is_icmp_error(&f) && f.len() >= 62 {
                    let q = &f[42..];
                    for a in [&q[12..15], &q[16..19]] {
                        assert!(a != [192, 168, 1] && a != [192, 168, 2], "an inside address quoted outside: {f:02x?}");
                    }
                }
                if f.len() >= 38 && matches!(f[23], 6 | 17) {
                    self.sent.push((f, port as u16));
                }
            }
        }
        if self.sent.len() > 400 {
            self.sent.drain(..200);
        }
    }

    /// Seconds pass; now and then beyond the UDP and TCP-closing timeouts.
    fn tick(&mut self, r: &mut Rng) {
        self.now += if r.chance(10) { 200 } else { r.below(3) as u32 };
        self.pipe.set_now(self.now);
    }

    fn counter(&self, name: &str) -> u64 {
        let at = STAGE_COUNTERS.iter().position(|n| *n == name).unwrap_or_else(|| panic!("no counter {name}"));
        self.pipe.stage_counters()[at]
    }

    /// rx = tx + local + drops, and what the run must have exercised.
    fn finish(&self, what: &str) {
        let c = &self.c;
        assert_eq!(c.rx, c.tx + c.local + c.dropped(), "{what}: rx = tx + local + drops");
        let (errors, known) =
            (self.counter("nat: icmp errors translated"), self.counter("conntrack: packets of known flows"));
        assert!(
            errors > 100 && known > 1000 && c.tx > 2000,
            "{what}: icmp errors {errors}, known {known}, tx {}",
            c.tx
        );
    }
}

/// What every forwarded frame must be; in an intact burst, every checksum
/// verifies and an ICMP error goes to the sender of the packet it quotes.
fn check(f: &[u8], intact: bool) {
    if f.len() < 14 || f[12..14] != [0x08, 0x00] {
        return;
    }
    // (The IP header only: a damaged frame's payload may be what no
    // router checks, an ICMP message of an odd length, say.)
    // (The sum written in `common`: etherparse's header has no reserved
    // flag, and computes another sum when a sender sets it.)
    let ip = etherparse::Ipv4HeaderSlice::from_slice(&f[14..]).unwrap_or_else(|e| panic!("forwarded: {e:?}: {f:02x?}"));
    assert!(common::inet_sum_ok(ip.slice()), "forwarded header checksum: {f:02x?}");
    assert!(14 + ip.total_len() as usize == f.len(), "forwarded frame cut to its IP length: {f:02x?}");
    if !intact {
        return;
    }
    let (_, dst, _, _) = common::tuple(f);
    if is_icmp_error(f) {
        let q = &f[42..];
        assert!(common::inet_sum_ok(&q[..20]), "quoted header checksum: {f:02x?}");
        assert_eq!(q[12..16], dst, "an ICMP error goes to the sender of what it quotes: {f:02x?}");
    }
}

/// An untagged, unfragmented ICMPv4 error with an option-less header (a
/// fragment's bytes at 34 are not necessarily an ICMP header).
fn is_icmp_error(f: &[u8]) -> bool {
    f.len() >= 42
        && f[12..15] == [0x08, 0x00, 0x45]
        && f[20] & 0x3f == 0
        && f[21] == 0
        && f[23] == 1
        && matches!(f[34], 3 | 4 | 11 | 12)
}

/// One burst of 32: new flows from `open`, replies to what the router sent,
/// and ICMP errors about it (from `error_from` on the outside, from the
/// destination otherwise); damaged when `damage`.
fn burst(
    r: &mut Rng,
    router: &Router,
    open: &mut dyn FnMut(&mut Rng) -> (Vec<u8>, u16),
    error_from: [u8; 4],
    outside: u16,
    damage: bool,
) -> Vec<(Vec<u8>, u16)> {
    let mut b = Vec::new();
    for _ in 0..32 {
        let k = r.below(10);
        let (mut f, port) = if k < 4 || router.sent.is_empty() {
            open(r)
        } else {
            let (out, port) = &router.sent[r.below(router.sent.len() as u64) as usize];
            if k < 7 {
                (reply(r, out), *port)
            } else {
                let from = if *port == outside { error_from } else { [out[30], out[31], out[32], out[33]] };
                (icmp_error(r, from, out, damage), *port)
            }
        };
        if damage && r.chance(8) {
            let head = f.len().min(64);
            r.scribble(&mut f[..head]);
        }
        // A first or a later fragment of it (IP header unchanged otherwise).
        if damage && r.chance(5) && f.len() >= 34 {
            if r.chance(50) {
                f[20] |= 0x20;
            } else {
                f[21] = 3;
            }
            common::fix_ip_checksum(&mut f, 14);
        }
        b.push((f, port));
    }
    b
}

#[test]
fn icmp_errors_and_damage_about_translated_flows() {
    for name in ["router.json", "router-open.json"] {
        for seed in 1..=12 {
            let mut r = Rng::new(seed);
            let snap = snapshot(&config(name), &common::options());
            let mut router = Router::new(snap, &mut r, seed);
            let (ge1, ge2) = (router.mac(1), router.mac(2));
            // Inside hosts on ge2 to outside and inside addresses (the
            // masquerade; 192.168.1.5 has a floating IP), to another's
            // floating IP (hairpin) and pinging outside; outside clients to
            // the floating IPs.
            let mut open = |r: &mut Rng| {
                let k = r.below(10);
                if k == 0 {
                    let (sport, tcp) = (2000 + r.below(4) as u16, r.chance(50));
                    let dst = [203, 0, 113, 51];
                    return (l4_frame(r, ([2, 0, 0, 0, 1, 6], ge2), [192, 168, 1, 6], dst, sport, 80, tcp), 2);
                }
                if k == 1 {
                    let mut f = Vec::new();
                    PacketBuilder::ethernet2([2, 0, 0, 0, 1, 5], ge2)
                        .ipv4([192, 168, 1, 5], [8, 8, 8, 8], 64)
                        .icmpv4_echo_request(7 + r.below(3) as u16, 1)
                        .write(&mut f, b"ping")
                        .unwrap();
                    return (f, 2);
                }
                if r.chance(70) {
                    let src = [192, 168, 1, 5 + r.below(2) as u8];
                    let dst = [[8, 8, 8, 8], [93, 184, 216, 34], [192, 168, 2, 7]][r.below(3) as usize];
                    let (sport, tcp) = (1024 + r.below(4) as u16, r.chance(50));
                    (l4_frame(r, ([2, 0, 0, 0, 1, src[3]], ge2), src, dst, sport, 53, tcp), 2)
                } else {
                    let client = [198, 51, 100, 1 + r.below(3) as u8];
                    let (fip, sport, tcp) = (50 + r.below(2) as u8, 40000 + r.below(3) as u16, r.chance(50));
                    (l4_frame(r, ([2, 0, 0, 0, 0, 1], ge1), client, [203, 0, 113, fip], sport, 80, tcp), 1)
                }
            };
            for round in 0..300 {
                let damage = r.chance(60);
                let b = burst(&mut r, &router, &mut open, [198, 51, 100, 254], 1, damage);
                router.run(&b, !damage);
                if round % 40 == 39 {
                    router.tick(&mut r);
                }
            }
            router.finish(&format!("{name}, seed {seed}"));
        }
    }
}

#[test]
fn icmp_errors_and_damage_about_balanced_flows() {
    for snat in [LbSnat::Always, LbSnat::Never] {
        for seed in 1..=12 {
            let mut r = Rng::new(seed);
            let cfg = config("loadbalancer.json");
            let mut opts = common::options();
            opts.lb.snat = snat;
            // The clients' gateway on the balancer's network.
            opts.neighbors.push(StaticNeighbor {
                port: "ge1".into(),
                ip: "192.168.0.1".parse().unwrap(),
                mac: "02:00:00:00:00:01".parse().unwrap(),
            });
            let mut router = Router::new(snapshot(&cfg, &opts), &mut r, seed);
            let ge1 = router.mac(1);
            // Clients beyond the gateway to the VIP's listener; members
            // reply (to the client or to the appliance) and send errors.
            let mut open = |r: &mut Rng| {
                let client = [10, 0, 0, r.below(6) as u8 + 1];
                let (sport, tcp) = (30000 + r.below(4) as u16, r.chance(80));
                (l4_frame(r, ([2, 0, 0, 0, 0, 1], ge1), client, [192, 168, 0, 137], sport, 80, tcp), 1)
            };
            for round in 0..300 {
                let damage = r.chance(60);
                // (Every port is ge1 here: errors come from what was sent's
                // destination, a member or a client's gateway.)
                let b = burst(&mut r, &router, &mut open, [0; 4], u16::MAX, damage);
                router.run(&b, !damage);
                if round % 40 == 39 {
                    router.tick(&mut r);
                }
            }
            router.finish(&format!("{snat:?}, seed {seed}"));
        }
    }
}
