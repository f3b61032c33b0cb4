//! The stateful pipeline (parse, conntrack, route, policy, NAT, neighbour)
//! over configs/router.json:
//! - `new_flows`: every packet opens a masqueraded session (setup rate);
//! - `classify_*`: the anchors classifier with 10 to 10,000 rules of the
//!   same shapes (its cost must not grow with the rule count);
//! - `new_flows_rules_*`: new-flow setup with those rule sets in force.
//!
//! Run: cargo bench --bench nat

use astara_dp::control::{AstaraConfig, CompileOptions, compile, ports_from_config};
use astara_dp::dataplane::Pipeline;
use astara_dp::packet::{Burst, Pkt};
use astara_dp::stage::{ConntrackConfig, Snapshot};
use astara_dp::table::{Acl, AclKey, AclRule};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use std::hint::black_box;
use std::time::{Duration, Instant};

const GE2: [u8; 6] = [0xfa, 0x16, 0x3e, 0x11, 0x22, 0x01];
const FLOWS: usize = 1 << 20;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn config(rules: usize) -> AstaraConfig {
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/router.json")).unwrap())
            .unwrap();
    // `rules` block rules none of the traffic matches, then the example's own.
    let mut x = 0x1234_5678u64;
    let mut list = Vec::new();
    for i in 0..rules {
        let r = xorshift(&mut x);
        let host = format!("198.18.{}.{}/32", (r >> 8) as u8, r as u8);
        let net = format!("100.{}.{}.0/24", 64 + (r >> 16) as u8 % 64, (r >> 24) as u8);
        list.push(match i % 3 {
            0 => serde_json::json!({"action": "block", "protocol": "udp", "source": host, "destination_port": (r >> 32) as u16 | 1}),
            1 => serde_json::json!({"action": "block", "direction": "in", "interface": "ge2", "family": "inet", "destination": net}),
            _ => serde_json::json!({"action": "block", "protocol": "tcp", "source": host, "destination": net, "destination_port": "8000:8080"}),
        });
    }
    let anchors = doc["anchors"].as_array_mut().unwrap();
    anchors.insert(0, serde_json::json!({"name": "generated", "rules": list}));
    AstaraConfig::from_json(&serde_json::to_vec(&doc).unwrap()).unwrap()
}

fn snapshot(rules: usize) -> Snapshot {
    let cfg = config(rules);
    let opts = CompileOptions {
        neighbors: vec![astara_dp::control::StaticNeighbor {
            port: "ge1".into(),
            ip: "203.0.113.1".parse().unwrap(),
            mac: "02:00:5e:00:00:01".parse().unwrap(),
        }],
        ..Default::default()
    };
    compile(&cfg, &ports_from_config(&cfg), &opts).unwrap().snapshot
}

/// Distinct UDP flows from ge2 to the Internet: 200 hosts x 64 source ports
/// (12,800 inside endpoints, so ~13k port mappings) x many destinations.
fn frames() -> Vec<Vec<u8>> {
    (0..FLOWS)
        .map(|i| {
            let host = 10 + (i % 200) as u8;
            let sport = 20000 + ((i / 200) % 64) as u16;
            let d = (i / 12800) as u32;
            let mut v = Vec::new();
            PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, host], GE2)
                .ipv4([192, 168, 1, host], [8, (d >> 16) as u8 | 8, (d >> 8) as u8, d as u8], 64)
                .udp(sport, 53)
                .write(&mut v, &[0u8; 18])
                .unwrap();
            v
        })
        .collect()
}

/// Times bursts of 32 new flows the way a worker takes them (the fast path,
/// then the full pipeline for what it leaves); the table is emptied
/// (untimed) whenever the flows run out. (Until 2026-12-04 this timed the
/// full pipeline alone, `Pipeline::process`: the fast path took no new
/// flows then, and stepped aside for such traffic.)
fn new_flows(c: &mut Criterion) {
    let frames = frames();
    let mut g = c.benchmark_group("nat");
    g.throughput(Throughput::Elements(32));
    for rules in [0usize, 10, 10_000] {
        let snap = snapshot(rules);
        let mut pipe = Pipeline::new(ConntrackConfig { capacity: 2 * FLOWS, ..Default::default() });
        // As a worker does before its first burst: no page faults timed.
        pipe.conntrack.prefault();
        pipe.set_now(1);
        let mut burst: Burst<Pkt> = Burst::new(32);
        let mut staging: Vec<Vec<Pkt>> = (0..snap.ports.len()).map(|_| Vec::with_capacity(32)).collect();
        let mut next = 0usize;
        let name = if rules == 0 { "new_flows".to_string() } else { format!("new_flows_rules_{rules}") };
        g.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    if next + 32 > FLOWS {
                        pipe.conntrack.clear();
                        next = 0;
                    }
                    for f in &frames[next..next + 32] {
                        let _ = burst.push(Pkt::from_slice(f).unwrap(), 2);
                    }
                    next += 32;
                    let t = Instant::now();
                    if pipe.process_fast(&snap, &mut burst, &mut staging) {
                        pipe.process(&snap, &mut burst);
                    }
                    spent += t.elapsed();
                    burst.drain(|p, m| {
                        debug_assert_eq!(m.verdict, astara_dp::packet::Verdict::Forward);
                        drop(p)
                    });
                    for q in &mut staging {
                        q.clear();
                    }
                }
                spent
            })
        });
        eprintln!(
            "  {name}: {} sessions created, {} in use, {} port mappings, {:.0} B/session at capacity",
            pipe.conntrack.sessions.stats.inserted,
            pipe.conntrack.sessions.len(),
            pipe.conntrack.ports.len(),
            pipe.conntrack.sessions.memory_bytes() as f64 / pipe.conntrack.sessions.capacity() as f64
        );
    }
    g.finish();
}

/// The classifier alone: random keys (nearly all miss every rule, the
/// worst case for a first-match walk), 10 to 10,000 rules.
fn classify(c: &mut Criterion) {
    let mut g = c.benchmark_group("acl");
    let mut x = 0xfeed_beefu64;
    let keys: Vec<AclKey> = (0..4096)
        .map(|_| {
            let r = xorshift(&mut x);
            AclKey {
                src: 0xc0a8_0100 | (r & 0xff) as u128,
                dst: (r >> 8) as u32 as u128,
                in_port: 2,
                out_port: 1,
                sport: (r >> 40) as u16,
                dport: (r >> 48) as u16,
                proto: if r & 1 == 0 { 17 } else { 6 },
                v6: false,
            }
        })
        .collect();
    g.throughput(Throughput::Elements(keys.len() as u64));
    for rules in [10usize, 100, 1000, 10_000] {
        let snap = snapshot(rules);
        let acl: &Acl = &snap.acl;
        eprintln!("  {rules} rules: {} classifier entries in {} tuples", acl.entries(), acl.tuples());
        g.bench_with_input(BenchmarkId::new("classify", rules), &keys, |b, keys| {
            b.iter(|| {
                let mut pass = 0u32;
                for k in keys {
                    pass += acl.classify(black_box(k)).is_none_or(|(_, p)| p) as u32;
                }
                pass
            })
        });
    }
    // Reference point: a linear first-match walk over the same rules.
    let snap = snapshot(1000);
    let rules: Vec<AclRule> = snap.acl.rules().to_vec();
    g.bench_with_input(BenchmarkId::new("linear_scan", 1000), &keys, |b, keys| {
        b.iter(|| {
            let mut pass = 0u32;
            for k in keys {
                pass += rules.iter().find(|r| r.matches(black_box(k))).is_none_or(|r| r.pass) as u32;
            }
            pass
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    targets = new_flows, classify
}
criterion_main!(benches);
