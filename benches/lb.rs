//! The load balancer's new-connection rate: bursts of 32 TCP SYNs from
//! distinct clients to the VIP of configs/loadbalancer.json, through the
//! whole pipeline (parse, conntrack, member choice, route, neighbour), with
//! the members seeing the clients (`never`) or the appliance's address
//! (`always`, which also searches a free source port per flow).
//!
//! Run: cargo bench --bench lb

use astara_dp::control::lb::LbOptions;
use astara_dp::control::{AstaraConfig, CompileOptions, compile, ports_from_config};
use astara_dp::dataplane::Pipeline;
use astara_dp::packet::{Burst, Pkt, Verdict};
use astara_dp::stage::lb::LbSnat;
use astara_dp::stage::{ConntrackConfig, Snapshot};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use std::time::{Duration, Instant};

const GE1: [u8; 6] = [0x02, 0xac, 0xda, 0x00, 0x00, 0x01];
const FLOWS: usize = 1 << 20;

fn snapshot(snat: LbSnat) -> Snapshot {
    let text = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/loadbalancer.json")).unwrap();
    let cfg = AstaraConfig::from_json(&text).unwrap();
    let opts = CompileOptions { lb: LbOptions { snat, ..Default::default() }, ..Default::default() };
    compile(&cfg, &ports_from_config(&cfg), &opts).unwrap().snapshot
}

/// SYNs from 1M distinct clients (10.x.y.z) to 192.168.0.137:80.
fn frames() -> Vec<Vec<u8>> {
    (0..FLOWS)
        .map(|i| {
            let c = ((10u32 << 24) | (i as u32 * 7 + 1)).to_be_bytes();
            let mut v = Vec::new();
            PacketBuilder::ethernet2([0x02, 0, 0x5e, 0, 0, 1], GE1)
                .ipv4(c, [192, 168, 0, 137], 64)
                .tcp(1024 + (i % 60000) as u16, 80, 1, 65535)
                .syn()
                .write(&mut v, &[])
                .unwrap();
            v
        })
        .collect()
}

fn new_connections(c: &mut Criterion) {
    let frames = frames();
    let mut g = c.benchmark_group("lb");
    g.throughput(Throughput::Elements(32));
    // With translation each member has ~64k source ports: the table is
    // emptied (untimed) before the busier member's run out.
    for (name, snat, per_table) in
        [("new_connections", LbSnat::Never, FLOWS), ("new_connections_snat", LbSnat::Always, 40_000)]
    {
        let snap = snapshot(snat);
        let mut pipe = Pipeline::new(ConntrackConfig { capacity: 2 * FLOWS, ..Default::default() });
        // As a worker does before its first burst: no page faults timed.
        pipe.conntrack.prefault();
        pipe.set_now(1);
        let mut burst: Burst<Pkt> = Burst::new(32);
        let (mut next, mut in_table) = (0usize, 0usize);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    if next + 32 > FLOWS {
                        next = 0;
                    }
                    if in_table + 32 > per_table || next == 0 {
                        pipe.conntrack.clear();
                        in_table = 0;
                    }
                    for f in &frames[next..next + 32] {
                        let _ = burst.push(Pkt::from_slice(f).unwrap(), 1);
                    }
                    next += 32;
                    in_table += 32;
                    let t = Instant::now();
                    pipe.process(&snap, &mut burst);
                    spent += t.elapsed();
                    burst.drain(|p, m| {
                        assert_eq!(m.verdict, Verdict::Forward, "{:?}", m.reason);
                        drop(p)
                    });
                }
                spent
            })
        });
        eprintln!("  {name}: {} balanced sessions created", pipe.conntrack.counters.lb_sessions);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    targets = new_connections
}
criterion_main!(benches);
