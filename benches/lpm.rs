//! Route-table benches: Lpm4 (DIR-24-8) and Lpm6 lookups with 1k and 1M
//! prefixes, random and sequential destinations, and the 1M-route build.
//! Run: cargo bench --bench lpm

use astara_dp::pktgen::scenario::RouteSpec;
use astara_dp::pktgen::{LengthDist, Rng, generate_routes};
use astara_dp::table::{Lpm4, Lpm4Builder, Lpm6Builder};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const BATCH: usize = 4096;
/// Random destinations: enough distinct first-level entries (1M x 64 B lines)
/// that they do not stay in cache between passes.
const RANDOM_BATCH: usize = 1 << 20;

fn table(n: usize) -> (Lpm4Builder, Vec<(u32, u8)>) {
    let spec = RouteSpec { count: n, next_hops: vec!["10.0.0.1".parse().unwrap()], lengths: LengthDist::Internet };
    let routes = generate_routes(&spec, &[], &mut Rng::new(42));
    let mut b = Lpm4Builder::new();
    for (i, r) in routes.iter().enumerate() {
        b.add(r.net, r.len, (i % 4096) as u32).unwrap();
    }
    (b, routes.iter().map(|r| (r.net, r.len)).collect())
}

/// Random destinations inside the table's prefixes (as the bench traffic).
fn random_dsts(prefixes: &[(u32, u8)], n: usize) -> Vec<u32> {
    let mut rng = Rng::new(7);
    (0..n)
        .map(|_| {
            let (net, len) = prefixes[(rng.next_u64() % prefixes.len() as u64) as usize];
            let host = if len == 32 { 0 } else { (rng.next_u64() as u32) & (u32::MAX >> len) };
            net | host
        })
        .collect()
}

fn lookups(c: &mut Criterion, name: &str, t: &Lpm4, dsts: &[u32]) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(dsts.len() as u64));
    g.bench_function("lookup", |b| {
        b.iter(|| {
            let mut acc = 0u32;
            for &d in dsts {
                acc = acc.wrapping_add(t.lookup(black_box(d)));
            }
            acc
        })
    });
    g.bench_function("lookup_bulk_32", |b| {
        let mut out = [0u32; 32];
        b.iter(|| {
            let mut acc = 0u32;
            for chunk in dsts.chunks_exact(32) {
                t.lookup_bulk(black_box(chunk), &mut out);
                acc = acc.wrapping_add(out[0]);
            }
            acc
        })
    });
    g.finish();
}

fn lpm4(c: &mut Criterion) {
    for (n, label) in [(1_000, "1k"), (1_000_000, "1M")] {
        let (b, prefixes) = table(n);
        let t = b.build().unwrap();
        eprintln!(
            "lpm4 {label}: {} routes, {:.1} MiB mapped ({} tbl8 groups)",
            t.routes(),
            t.memory_bytes() as f64 / 1048576.0,
            t.tbl8_groups()
        );
        lookups(c, &format!("lpm4_{label}_random"), &t, &random_dsts(&prefixes, RANDOM_BATCH));
        let base = prefixes[0].0;
        let seq: Vec<u32> = (0..BATCH as u32).map(|i| base.wrapping_add(i)).collect();
        lookups(c, &format!("lpm4_{label}_sequential"), &t, &seq);
    }
}

fn lpm4_build(c: &mut Criterion) {
    let (b, _) = table(1_000_000);
    let mut g = c.benchmark_group("lpm4_build");
    g.sample_size(10);
    g.bench_function("build_1M", |bench| bench.iter(|| b.build().unwrap()));
    g.bench_function("add_and_build_1M", |bench| {
        let spec =
            RouteSpec { count: 1_000_000, next_hops: vec!["10.0.0.1".parse().unwrap()], lengths: LengthDist::Internet };
        let routes = generate_routes(&spec, &[], &mut Rng::new(42));
        bench.iter_batched(
            || routes.clone(),
            |routes| {
                let mut b = Lpm4Builder::new();
                for r in &routes {
                    b.add(r.net, r.len, 1).unwrap();
                }
                b.build().unwrap()
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn lpm6(c: &mut Criterion) {
    for (n, label) in [(1_000usize, "1k"), (100_000, "100k")] {
        let mut rng = Rng::new(9);
        // Sparse random IPv6 prefixes share few trie nodes: allow 1M groups.
        let mut b = Lpm6Builder::with_groups(1 << 20);
        let mut prefixes = Vec::new();
        for i in 0..n {
            // Provider-style /32../64 prefixes under 2000::/3.
            let len = [32u8, 40, 48, 48, 56, 64][i % 6];
            let p = ((0x2000u128 | (rng.next_u64() as u128 & 0x1fff)) << 112 | (rng.next_u64() as u128) << 48)
                & (u128::MAX << (128 - len));
            b.add(p, len, i as u32).unwrap();
            prefixes.push((p, len));
        }
        let t = b.build().unwrap();
        eprintln!("lpm6 {label}: {} routes, {:.1} MiB", t.routes(), t.memory_bytes() as f64 / 1048576.0);
        let dsts: Vec<u128> = (0..RANDOM_BATCH)
            .map(|_| {
                let (p, len) = prefixes[(rng.next_u64() % prefixes.len() as u64) as usize];
                p | (rng.next_u64() as u128 & (u128::MAX >> len))
            })
            .collect();
        let mut g = c.benchmark_group(format!("lpm6_{label}_random"));
        g.throughput(Throughput::Elements(RANDOM_BATCH as u64));
        g.bench_function("lookup", |bch| {
            bch.iter(|| {
                let mut acc = 0u32;
                for &d in &dsts {
                    acc = acc.wrapping_add(t.lookup(black_box(d)));
                }
                acc
            })
        });
        g.finish();
    }
}

criterion_group!(benches, lpm4, lpm4_build, lpm6);
criterion_main!(benches);
