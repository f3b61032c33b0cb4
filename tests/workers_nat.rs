//! Two real worker threads with NAT over `mem` ports whose software RSS
//! spreads flows by their own symmetric hash: replies of masqueraded flows
//! arrive at whichever worker the hash picks and must be handed to the one
//! that owns the mapping; one inside endpoint keeps one external port for
//! every destination (RFC 4787 REQ-1) although its flows hash to both.

use astara_dp::control::{compile, ports_from_config};
use astara_dp::dataplane::{Handoff, STAGE_COUNTERS, Worker, WorkerConfig, WorkerStats, snapshots};
use astara_dp::packet::{PacketBuf, Pkt};
use astara_dp::port::mem::{MemPeer, mem_port};
use astara_dp::port::{PortSpec, RxQueue, TxQueue};
use astara_dp::stage::ConntrackConfig;
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;

const GE1: [u8; 6] = [0xfa, 0x16, 0x3e, 0xa0, 0x80, 0x82];
const GE2: [u8; 6] = [0xfa, 0x16, 0x3e, 0x11, 0x22, 0x01];
const EXT: [u8; 4] = [203, 0, 113, 10];

fn udp(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Pkt {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, dst, 64).udp(sport, dport).write(&mut v, b"x").unwrap();
    Pkt::from_slice(&v).unwrap()
}

fn tuple(p: &Pkt) -> ([u8; 4], [u8; 4], u16, u16) {
    let s = SlicedPacket::from_ethernet(p.data()).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = s.net else { panic!("ipv4") };
    let Some(TransportSlice::Udp(u)) = s.transport else { panic!("udp") };
    let h = u.to_header();
    let ih = ip.header().to_header();
    assert_eq!(h.checksum, h.calc_checksum_ipv4(&ih, u.payload()).unwrap());
    (ih.source, ih.destination, h.source_port, h.destination_port)
}

fn drain(peer: &mut MemPeer, want: usize, out: &mut Vec<Pkt>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < want && Instant::now() < deadline {
        match peer.recv() {
            Some(p) => out.push(p),
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Workers over `mem` ports, running.
struct Running {
    peers: Vec<MemPeer>,
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<astara_dp::dataplane::Counters>>,
    stats: Vec<Arc<WorkerStats>>,
}

/// Starts `workers` workers on `snap` over one `mem` port per spec.
fn start(ports_spec: &[PortSpec], snap: astara_dp::stage::Snapshot, workers: usize) -> Running {
    let shared = snapshots(snap);
    let mut peers = Vec::new();
    let mut rxq: Vec<Vec<(u16, Box<dyn RxQueue>)>> = (0..workers).map(|_| Vec::new()).collect();
    let mut txq: Vec<Vec<Option<Box<dyn TxQueue>>>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, spec) in ports_spec.iter().enumerate() {
        let spec = PortSpec { name: spec.name.clone(), mac: spec.mac, mtu: spec.mtu };
        let (mut port, peer) = mem_port(spec, workers, 8192);
        for w in (0..workers).rev() {
            rxq[w].push((i as u16, Box::new(port.rx.remove(w))));
            txq[w].push(Some(Box::new(port.tx.remove(w))));
        }
        peers.push(peer);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let handoff = Arc::new(Handoff::new(workers, 1024));
    let mut handles = Vec::new();
    let mut stats = Vec::new();
    for (w, (rx, tx)) in rxq.into_iter().zip(txq).enumerate() {
        let st = Arc::new(WorkerStats::new(ports_spec.len()));
        let worker = Worker {
            cfg: WorkerConfig {
                id: w,
                core: None,
                burst: 32,
                pool_size: 1024,
                conntrack: ConntrackConfig { workers, ..Default::default() },
            },
            rx,
            tx,
            snapshots: shared.clone(),
            stats: st.clone(),
            stop: stop.clone(),
            handoff: Some(handoff.clone()),
            exception: None,
        };
        handles.push(worker.spawn().unwrap());
        stats.push(st);
    }

    Running { peers, stop, handles, stats }
}

#[test]
fn replies_reach_the_worker_owning_the_mapping() {
    let cfg = common::router_config();
    let ports_spec = ports_from_config(&cfg);
    let mut opts = common::options();
    for h in 20..30u8 {
        opts.neighbors.push(astara_dp::control::StaticNeighbor {
            port: "ge2".into(),
            ip: std::net::IpAddr::from([192, 168, 1, h]),
            mac: astara_dp::packet::Mac([2, 0, 0, 0, 0, h]),
        });
    }
    let snap = compile(&cfg, &ports_spec, &opts).unwrap().snapshot;
    let Running { mut peers, stop, handles, stats } = start(&ports_spec, snap, 2);

    // 40 inside endpoints (hosts .20-.29, 4 ports each), each to 25
    // destinations: 1,000 flows.
    let mut sent = Vec::new();
    for h in 20..30u8 {
        for sp in 0..4u16 {
            for d in 0..25u8 {
                let (src, sport, dst) = ([192, 168, 1, h], 7000 + sp, [8, 8, 4, d]);
                peers[2].send(udp([2, 0, 0, 0, 0, h], GE2, src, dst, sport, 53)).unwrap();
                sent.push((src, sport, dst));
            }
        }
    }
    let mut out = Vec::new();
    drain(&mut peers[1], sent.len(), &mut out);
    assert_eq!(out.len(), sent.len(), "every flow left through ge1");
    // Each destination answers the external endpoint it saw, naming that
    // external port in the payload.
    for p in &out {
        let (s, d, sp, dp) = tuple(p);
        assert_eq!(s, EXT);
        let mut v = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], GE1)
            .ipv4(d, EXT, 64)
            .udp(dp, sp)
            .write(&mut v, &sp.to_be_bytes())
            .unwrap();
        peers[1].send(Pkt::from_slice(&v).unwrap()).unwrap();
    }
    let mut back = Vec::new();
    drain(&mut peers[2], out.len(), &mut back);
    stop.store(true, Ordering::Relaxed);
    let counters: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(back.len(), out.len(), "every reply translated back: {:?}", counters[0].drop_list());
    // Every reply reached the inside endpoint that sent to that destination,
    let got: HashSet<([u8; 4], [u8; 4], u16)> = back
        .iter()
        .map(|p| {
            let (s, d, sp, dp) = tuple(p);
            assert_eq!(sp, 53);
            (s, d, dp)
        })
        .collect();
    let want: HashSet<([u8; 4], [u8; 4], u16)> = sent.iter().map(|&(src, sport, dst)| (dst, src, sport)).collect();
    assert_eq!(got, want);
    // and each inside endpoint was seen behind exactly one external port,
    // whichever worker its flows hashed to (RFC 4787 REQ-1).
    let mut ports_of: HashMap<([u8; 4], u16), HashSet<u16>> = HashMap::new();
    for p in &back {
        let (_, d, _, dp) = tuple(p);
        let payload = &p.data()[42..44];
        ports_of.entry((d, dp)).or_default().insert(u16::from_be_bytes([payload[0], payload[1]]));
    }
    assert_eq!(ports_of.len(), 40);
    assert!(ports_of.values().all(|s| s.len() == 1), "{ports_of:?}");
    let sent_idx = STAGE_COUNTERS.iter().position(|k| k.starts_with("handoff: packets sent")).unwrap();
    let handed: u64 = stats.iter().map(|s| s.read().stage[sent_idx]).sum();
    assert!(handed > 0, "the symmetric hash sent some packets to the worker not owning them");
    let drops: u64 = counters.iter().map(|c| c.dropped()).sum();
    assert_eq!(drops, 0);
}

fn tcp(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, syn: bool) -> Pkt {
    let mut v = Vec::new();
    let b = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, dst, 64).tcp(sport, dport, 1, 65535);
    let b = if syn { b.syn() } else { b.syn().ack(2) };
    b.write(&mut v, b"").unwrap();
    Pkt::from_slice(&v).unwrap()
}

fn tcp_tuple(p: &Pkt) -> ([u8; 4], [u8; 4], u16, u16) {
    let s = SlicedPacket::from_ethernet(p.data()).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = s.net else { panic!("ipv4") };
    let Some(TransportSlice::Tcp(t)) = s.transport else { panic!("tcp") };
    let (h, ih) = (t.to_header(), ip.header().to_header());
    assert_eq!(h.checksum, h.calc_checksum_ipv4(&ih, t.payload()).unwrap());
    (ih.source, ih.destination, h.source_port, h.destination_port)
}

/// Load balancing on two workers: a client's flow and its member's replies
/// meet on one worker (handed over when the hash sends them elsewhere),
/// with the members seeing the appliance's address or the client's.
#[test]
fn balanced_flows_and_their_replies_meet_on_one_worker() {
    const LB_GE1: [u8; 6] = [0x02, 0xac, 0xda, 0x00, 0x00, 0x01];
    const GW: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];
    const VIP: [u8; 4] = [192, 168, 0, 137];
    let text = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/loadbalancer.json")).unwrap();
    let cfg = astara_dp::control::AstaraConfig::from_json(&text).unwrap();
    let ports_spec = ports_from_config(&cfg);
    for snat in [astara_dp::stage::lb::LbSnat::Always, astara_dp::stage::lb::LbSnat::Never] {
        let opts = astara_dp::control::CompileOptions {
            neighbors: vec![astara_dp::control::StaticNeighbor {
                port: "ge1".into(),
                ip: "192.168.0.1".parse().unwrap(),
                mac: astara_dp::packet::Mac(GW),
            }],
            lb: astara_dp::control::lb::LbOptions { snat, ..Default::default() },
            ..Default::default()
        };
        let snap = compile(&cfg, &ports_spec, &opts).unwrap().snapshot;
        let Running { mut peers, stop, handles, stats } = start(&ports_spec, snap, 2);
        // 500 clients (10.9.x.y) through the subnet's gateway.
        let clients: Vec<([u8; 4], u16)> =
            (0..500u32).map(|k| ([10, 9, (k >> 8) as u8, k as u8], 30000 + k as u16)).collect();
        for &(c, p) in &clients {
            peers[1].send(tcp(GW, LB_GE1, c, VIP, p, 80, true)).unwrap();
        }
        let mut out = Vec::new();
        drain(&mut peers[1], clients.len(), &mut out);
        assert_eq!(out.len(), clients.len(), "{snat:?}: every SYN reached a member");
        // Each member answers what it saw.
        for p in &out {
            let (s, d, sp, dp) = tcp_tuple(p);
            assert!(d == [192, 168, 0, 194] || d == [192, 168, 0, 195], "{d:?}");
            assert_eq!(dp, 80);
            if snat == astara_dp::stage::lb::LbSnat::Always {
                assert_eq!(s, VIP, "the member sees the appliance");
            }
            peers[1].send(tcp([0xfa, 0x16, 0x3e, 0, 0, d[3]], LB_GE1, d, s, 80, sp, false)).unwrap();
        }
        let mut back = Vec::new();
        drain(&mut peers[1], out.len(), &mut back);
        stop.store(true, Ordering::Relaxed);
        let counters: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(back.len(), out.len(), "{snat:?}: every reply came back: {:?}", counters[0].drop_list());
        let got: HashSet<([u8; 4], [u8; 4], u16, u16)> = back.iter().map(tcp_tuple).collect();
        let want: HashSet<([u8; 4], [u8; 4], u16, u16)> = clients.iter().map(|&(c, p)| (VIP, c, 80, p)).collect();
        assert_eq!(got, want, "{snat:?}: replies come from the VIP to each client");
        let sent_idx = STAGE_COUNTERS.iter().position(|k| k.starts_with("handoff: packets sent")).unwrap();
        let handed: u64 = stats.iter().map(|s| s.read().stage[sent_idx]).sum();
        assert!(handed > 0, "{snat:?}: some packets were handed to the owning worker");
        assert_eq!(counters.iter().map(|c| c.dropped()).sum::<u64>(), 0);
    }
}
