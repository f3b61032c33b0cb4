//! Stage benches: the parse stage beside etherparse (the reference parser),
//! and the whole routing pipeline (parse, route, neighbour) per burst of 32
//! with 1k and 1M routes, including the replay copy and buffer recycling.
//! Run: cargo bench --bench stages

use astara_dp::app::prepare;
use astara_dp::control::compile;
use astara_dp::dataplane::Pipeline;
use astara_dp::packet::{Burst, PacketBuf, Pool};
use astara_dp::stage::Parse;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;

const BURST: usize = 32;

fn scenario(name: &str) -> (astara_dp::stage::Snapshot, Vec<Vec<u8>>, u16) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pktgen-scenarios").join(name);
    let p = prepare(&path).unwrap();
    let snap = compile(&p.config, &p.ports, &p.options).unwrap().snapshot;
    (snap, p.traffic.frames, p.traffic.ingress as u16)
}

fn fill(burst: &mut Burst, pool: &mut Pool, frames: &[Vec<u8>], at: &mut usize, port: u16) {
    for _ in 0..BURST {
        let mut p = pool.alloc().expect("pool sized for one burst");
        p.fill(&frames[*at % frames.len()]);
        *at += 1;
        let _ = burst.push(p, port);
    }
}

fn parse(c: &mut Criterion) {
    let (snap, frames, port) = scenario("route-64b-1k.toml");
    let mut g = c.benchmark_group("parse_burst32_udp64");
    g.throughput(Throughput::Elements(BURST as u64));
    let mut pool = Pool::new(2 * BURST);
    let mut burst: Burst = Burst::new(BURST);
    let mut at = 0;
    let mut stage = Parse::default();
    g.bench_function("astara_parse_stage", |b| {
        b.iter(|| {
            fill(&mut burst, &mut pool, &frames, &mut at, port);
            stage.process(&snap, &mut burst);
            burst.drain(|p, m| {
                black_box(m.dport);
                p.release(&mut pool)
            });
        })
    });
    g.bench_function("etherparse_sliced", |b| {
        let mut at = 0;
        b.iter(|| {
            fill(&mut burst, &mut pool, &frames, &mut at, port);
            for i in 0..burst.len() {
                let s = etherparse::SlicedPacket::from_ethernet(burst.pkt(i).data()).unwrap();
                black_box(s.transport.is_some());
            }
            burst.drain(|p, _| p.release(&mut pool));
        })
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    for (file, label) in [("route-64b-1k.toml", "1k_routes"), ("route-64b.toml", "1M_routes")] {
        let (snap, frames, port) = scenario(file);
        let mut g = c.benchmark_group(format!("pipeline_burst32_udp64_{label}"));
        g.throughput(Throughput::Elements(BURST as u64));
        let mut pool = Pool::new(2 * BURST);
        let mut burst: Burst = Burst::new(BURST);
        let mut pipe = Pipeline::default();
        let mut at = 0;
        g.bench_function("rx_copy+parse+route+neighbor", |b| {
            b.iter(|| {
                fill(&mut burst, &mut pool, &frames, &mut at, port);
                pipe.process(&snap, &mut burst);
                burst.drain(|p, _| p.release(&mut pool));
            })
        });
        g.finish();
    }
}

criterion_group!(benches, parse, pipeline);
criterion_main!(benches);
