//! Session table: lookups among 1,000,000 live sessions (random order, so
//! they miss the caches), and new-session setup (insert + later expiry).
//! Run: cargo bench --bench session

use astara_dp::table::session::{FlowKey, SessionTable, Timeouts};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn key(i: u64) -> FlowKey {
    FlowKey::v4(
        0x0a00_0000 | (i as u32 & 0x00ff_ffff),
        0x0808_0808 ^ (i >> 24) as u32,
        1024 + (i % 60000) as u16,
        53,
        17,
    )
}

fn sessions(c: &mut Criterion) {
    let n = 1_000_000u64;
    let mut t = SessionTable::new(2_000_000, Timeouts::default());
    for i in 0..n {
        t.insert(key(i), key(i).reversed(), 0, 0).unwrap();
    }
    eprintln!(
        "{} sessions, {:.0} bytes per session at capacity",
        t.len(),
        t.memory_bytes() as f64 / t.capacity() as f64
    );
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let probes: Vec<FlowKey> = (0..1 << 20)
        .map(|k| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k0 = key(x % n);
            if k % 2 == 0 { k0 } else { k0.reversed() }
        })
        .collect();
    let mut g = c.benchmark_group("session_1M");
    g.throughput(Throughput::Elements(probes.len() as u64));
    g.bench_function("lookup_random", |b| {
        b.iter(|| {
            let mut hits = 0u32;
            for k in &probes {
                hits += t.lookup(black_box(k)).is_some() as u32;
            }
            hits
        })
    });
    g.bench_function("lookup_random_prefetched_32", |b| {
        let mut hashes = [0u64; 32];
        b.iter(|| {
            let mut hits = 0u32;
            for chunk in probes.chunks_exact(32) {
                for (h, k) in hashes.iter_mut().zip(chunk) {
                    *h = t.hash(k);
                    t.prefetch(*h);
                }
                for (h, k) in hashes.iter().zip(chunk) {
                    hits += t.lookup_hashed(k, *h).is_some() as u32;
                }
            }
            hits
        })
    });
    g.bench_function("lookup_bulk_32", |b| {
        let mut out = [None; 32];
        b.iter(|| {
            let mut hits = 0u32;
            for chunk in probes.chunks_exact(32) {
                t.lookup_bulk(chunk, &mut out);
                hits += out.iter().filter(|o| o.is_some()).count() as u32;
            }
            hits
        })
    });
    g.finish();

    // New sessions: insert, and the expiry that frees them, per session.
    let mut g = c.benchmark_group("session_setup");
    g.throughput(Throughput::Elements(100_000));
    let mut t = SessionTable::new(200_000, Timeouts::default());
    let mut now = 0u32;
    let mut next = 10_000_000u64;
    g.bench_function("insert_and_expire_100k_udp", |b| {
        b.iter(|| {
            for _ in 0..100_000 {
                let k = key(next);
                next += 1;
                let _ = t.insert(k, k.reversed(), now, 0);
            }
            now += 200; // past the UDP timeout: all of them expire
            while t.expire(now, 4096) > 0 {}
        })
    });
    g.finish();
}

criterion_group!(benches, sessions);
criterion_main!(benches);
