//! A real worker thread on `mem` ports: frames in through software RSS, out
//! through the egress rings; a new snapshot published mid-stream is picked up
//! without losing a packet.

use astara_dp::control::{CompileOptions, compile, ports_from_config};
use astara_dp::dataplane::{Worker, WorkerConfig, WorkerStats, snapshots};
use astara_dp::packet::{PacketBuf, Pkt};
use astara_dp::port::mem::{MemPeer, mem_port};
use astara_dp::port::{Port, PortSpec, RxQueue, TxQueue};
use astara_dp::stage::Snapshot;
use etherparse::PacketBuilder;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;

const GE2: [u8; 6] = [0xfa, 0x16, 0x3e, 0x11, 0x22, 0x01];
const OLD_GW: &str = "02:00:5e:00:00:01";
const NEW_GW: &str = "02:00:5e:00:00:02";

fn snap(gw_mac: &str, generation: u64) -> Snapshot {
    let cfg = common::router_config();
    let opts = CompileOptions { neighbors: vec![common::upstream(gw_mac)], generation, ..Default::default() };
    compile(&cfg, &ports_from_config(&cfg), &opts).unwrap().snapshot
}

/// Every third frame is TCP to the database port on ge3 (which the
/// example's anchors let through), the others UDP to the Internet.
fn frame(i: u32) -> Pkt {
    let mut v = Vec::new();
    let b = PacketBuilder::ethernet2([0xfa, 0x16, 0x3e, 0, 1, 5], GE2);
    let sport = 1024 + (i % 5000) as u16;
    if i.is_multiple_of(3) {
        b.ipv4([192, 168, 1, 5], [192, 168, 2, 7], 64).tcp(sport, 5432, i, 1024).write(&mut v, &i.to_be_bytes())
    } else {
        b.ipv4([192, 168, 1, 5], [8, 8, (i >> 8) as u8, i as u8], 64).udp(sport, 53).write(&mut v, &i.to_be_bytes())
    }
    .unwrap();
    Pkt::from_slice(&v).unwrap()
}

#[test]
fn worker_forwards_over_mem_ports_across_a_snapshot_swap() {
    let ports = 4;
    let mut peers: Vec<MemPeer> = Vec::new();
    let mut objects = Vec::new();
    let mut rx: Vec<(u16, Box<dyn RxQueue>)> = Vec::new();
    let mut tx: Vec<Option<Box<dyn TxQueue>>> = Vec::new();
    for p in 0..ports {
        // Rings that hold the whole run: this test is about the swap, not backpressure.
        let spec =
            PortSpec { name: format!("ge{p}"), mac: astara_dp::packet::Mac([2, 0, 0, 0, 0, p as u8]), mtu: 1500 };
        let (mut port, peer) = mem_port(spec, 1, 32768);
        objects.push(port.port.clone());
        if p == 2 {
            rx.push((2, Box::new(port.rx.remove(0))));
        }
        tx.push(Some(Box::new(port.tx.remove(0))));
        peers.push(peer);
    }
    let shared = snapshots(snap(OLD_GW, 1));
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(WorkerStats::new(ports));
    let worker = Worker {
        cfg: WorkerConfig { id: 0, core: None, burst: 32, pool_size: 256, conntrack: Default::default() },
        rx,
        tx,
        snapshots: shared.clone(),
        stats: stats.clone(),
        stop: stop.clone(),
        handoff: None,
        exception: None,
    };
    let h = worker.spawn().unwrap();

    let total = 20_000u32;
    let mut got_ge1 = Vec::new();
    let mut got_ge3 = 0u32;
    let mut sent = 0u32;
    let mut swapped = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (got_ge1.len() as u32 + got_ge3) < total && Instant::now() < deadline {
        let limit = if swapped { total } else { total / 2 };
        while sent < limit && peers[2].pending() < 2048 {
            peers[2].send(frame(sent)).unwrap();
            sent += 1;
        }
        if !swapped && sent >= total / 2 {
            shared.store(Arc::new(snap(NEW_GW, 2)));
            swapped = true;
        }
        while let Some(p) = peers[1].recv() {
            let d = p.data();
            got_ge1.push((d[0..6].to_vec(), u32::from_be_bytes(d[42..46].try_into().unwrap())));
        }
        while let Some(p) = peers[3].recv() {
            assert_eq!(&p.data()[0..6], &[0xfa, 0x16, 0x3e, 0, 2, 7]);
            got_ge3 += 1;
        }
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    let c = h.join().unwrap();
    assert_eq!(c.rx, total as u64, "every frame received");
    assert_eq!(c.tx, total as u64, "every frame forwarded: {:?}", c.drop_list());
    assert_eq!(got_ge1.len() as u32 + got_ge3, total);
    assert_eq!(got_ge3, total.div_ceil(3));
    // Before the swap the old gateway MAC, after it the new one, never mixed
    // back: each packet saw exactly one whole snapshot.
    let old: Vec<u8> = OLD_GW.split(':').map(|x| u8::from_str_radix(x, 16).unwrap()).collect();
    let new: Vec<u8> = NEW_GW.split(':').map(|x| u8::from_str_radix(x, 16).unwrap()).collect();
    let first_new = got_ge1.iter().position(|(m, _)| *m == new).expect("the new snapshot was used");
    assert!(got_ge1[..first_new].iter().all(|(m, _)| *m == old));
    assert!(got_ge1[first_new..].iter().all(|(m, _)| *m == new));
    assert_eq!(stats.read().rx, total as u64);
    // The port objects saw the same traffic as the worker counted.
    assert_eq!(objects[2].stats().rx_packets, total as u64);
    assert_eq!(objects[1].stats().tx_packets + objects[3].stats().tx_packets, total as u64);
    assert_eq!(objects[3].stats().tx_packets, got_ge3 as u64);
    assert_eq!(stats.generation.load(Ordering::Relaxed), 2);
}
