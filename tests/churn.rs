//! Zero loss under configuration churn: one worker forwards as fast as it
//! can over `mem` ports while the control side applies 1,000 alternating
//! documents (a route the traffic does not use comes and goes; the next hop
//! of the route it does use flips). Every packet must leave through one of
//! the two next hops, none may be lost or dropped.

use astara_dp::control::state::Control;
use astara_dp::control::{AstaraConfig, ports_from_config};
use astara_dp::dataplane::{Worker, WorkerConfig, WorkerStats};
use astara_dp::packet::{PacketBuf, Pkt};
use astara_dp::port::mem::mem_port;
use astara_dp::port::{RxQueue, TxQueue};
use etherparse::PacketBuilder;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

const ROUTER_A: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x02, 0xfe]; // 192.168.2.254
const ROUTER_B: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x02, 0xfd]; // 192.168.2.253

fn documents() -> (AstaraConfig, AstaraConfig) {
    let mut a = common::router_json();
    // 10.40.0.0/16 is the route the traffic uses; A sends it to .254 ...
    a["static_routes"] = serde_json::json!([["10.40.0.0/16", "192.168.2.254"]]);
    let mut b = a.clone();
    // ... B to .253, and B also has a route nobody uses.
    b["static_routes"] = serde_json::json!([["10.40.0.0/16", "192.168.2.253"], ["10.99.0.0/16", "203.0.113.1"]]);
    (
        AstaraConfig::from_json(a.to_string().as_bytes()).unwrap(),
        AstaraConfig::from_json(b.to_string().as_bytes()).unwrap(),
    )
}

fn frame(i: u64) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2([0xfa, 0x16, 0x3e, 0, 1, 5], [0xfa, 0x16, 0x3e, 0x11, 0x22, 0x01])
        .ipv4([192, 168, 1, 5], [10, 40, (i >> 8) as u8, i as u8], 64)
        .udp(1024 + (i % 30000) as u16, 53)
        .write(&mut v, &i.to_be_bytes())
        .unwrap();
    v
}

#[test]
fn thousand_config_swaps_under_load_lose_nothing() {
    let (doc_a, doc_b) = documents();
    let ports = ports_from_config(&doc_a);
    let control = Control::new(ports.clone(), Vec::new(), common::options(), None).unwrap();
    control.apply(doc_a.clone()).unwrap();

    let mut rx: Vec<(u16, Box<dyn RxQueue>)> = Vec::new();
    let mut tx: Vec<Option<Box<dyn TxQueue>>> = Vec::new();
    let mut peers = Vec::new();
    for (i, spec) in ports.iter().enumerate() {
        // The egress ring holds the whole run: this test is about swaps, not
        // about how fast the test can collect.
        let (mut port, peer) = mem_port(spec.clone(), 1, if i == 3 { 1 << 22 } else { 8192 });
        if i == 2 {
            rx.push((2, Box::new(port.rx.remove(0))));
        }
        tx.push(Some(Box::new(port.tx.remove(0))));
        peers.push(peer);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(WorkerStats::new(ports.len()));
    let worker = Worker {
        cfg: WorkerConfig { id: 0, core: None, burst: 32, pool_size: 512, conntrack: Default::default() },
        rx,
        tx,
        snapshots: control.snapshots(),
        stats: stats.clone(),
        stop: stop.clone(),
        handoff: None,
        exception: None,
    };
    let h = worker.spawn().unwrap();

    // Feeder and collector run on their own threads; this thread churns.
    let ge2 = peers.remove(2);
    let mut ge3 = peers.remove(2);
    let feeding = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicU64::new(0));
    let feeder = {
        let (feeding, sent) = (feeding.clone(), sent.clone());
        std::thread::spawn(move || {
            let frames: Vec<Vec<u8>> = (0..4096).map(frame).collect();
            let mut i = 0u64;
            while feeding.load(Ordering::Relaxed) {
                match ge2.send(Pkt::from_slice(&frames[(i % 4096) as usize]).unwrap()) {
                    Ok(()) => i += 1,
                    Err(_) => std::thread::yield_now(),
                }
            }
            sent.store(i, Ordering::Relaxed);
        })
    };
    let collected = Arc::new(AtomicBool::new(false));
    let collector = {
        let collected = collected.clone();
        std::thread::spawn(move || {
            let (mut a, mut b, mut other) = (0u64, 0u64, 0u64);
            let mut idle_since: Option<Instant> = None;
            loop {
                match ge3.recv() {
                    Some(p) => {
                        idle_since = None;
                        match <[u8; 6]>::try_from(&p.data()[0..6]).unwrap() {
                            ROUTER_A => a += 1,
                            ROUTER_B => b += 1,
                            _ => other += 1,
                        }
                    }
                    None => {
                        if collected.load(Ordering::Relaxed)
                            && idle_since.is_some_and(|t| t.elapsed() > Duration::from_millis(300))
                        {
                            return (a, b, other);
                        }
                        idle_since.get_or_insert_with(Instant::now);
                        std::thread::yield_now();
                    }
                }
            }
        })
    };

    for k in 0..1000 {
        let doc = if k % 2 == 0 { doc_b.clone() } else { doc_a.clone() };
        control.apply(doc).unwrap();
    }
    assert_eq!(control.snapshots().load().generation, 1002);
    feeding.store(false, Ordering::Relaxed);
    feeder.join().unwrap();
    // Let the worker drain its ring, then stop everything.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats.read().rx < sent.load(Ordering::Relaxed) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    let c = h.join().unwrap();
    collected.store(true, Ordering::Relaxed);
    let (a, b, other) = collector.join().unwrap();

    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > 2_000, "traffic was flowing during the churn ({sent} packets)");
    assert_eq!(c.rx, sent, "the worker received everything sent");
    assert_eq!(c.dropped(), 0, "no drops: {:?}", c.drop_list());
    assert_eq!(c.tx, sent, "everything forwarded");
    assert_eq!(other, 0, "every packet went to one of the two next hops");
    assert_eq!(a + b, sent, "the collector saw every packet");
    assert!(a > 0 && b > 0, "both configurations carried traffic ({a} / {b})");
    eprintln!("churn: {sent} packets over 1000 swaps, {a} via .254 and {b} via .253, none lost");
}
