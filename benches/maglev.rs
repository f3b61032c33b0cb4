//! Maglev table benches: building the table (the control thread's work on
//! every member change) for 10, 100 and 1,000 members at the default size
//! of 65,537 slots, weighted; and the lookup a worker does per new flow.
//! Run: cargo bench --bench maglev

use astara_dp::table::maglev::{DEFAULT_SIZE, MaglevMember, MaglevTable};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn build(c: &mut Criterion) {
    for n in [10usize, 100, 1000] {
        let names: Vec<String> =
            (0..n).map(|i| format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256)).collect();
        let members: Vec<MaglevMember> = names
            .iter()
            .enumerate()
            .map(|(i, s)| MaglevMember { name: s.as_bytes(), weight: 1 + (i % 4) as u32 })
            .collect();
        c.bench_function(&format!("maglev build {n} weighted members, M={DEFAULT_SIZE}"), |b| {
            b.iter(|| MaglevTable::build(black_box(&members), DEFAULT_SIZE).unwrap())
        });
    }
}

fn lookup(c: &mut Criterion) {
    let names: Vec<String> = (0..100).map(|i| format!("member-{i}")).collect();
    let members: Vec<MaglevMember> = names.iter().map(|s| MaglevMember { name: s.as_bytes(), weight: 1 }).collect();
    let t = MaglevTable::build(&members, DEFAULT_SIZE).unwrap();
    let hashes: Vec<u64> = (0..4096u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
    c.bench_function("maglev lookup, 100 members, batch of 4096", |b| {
        b.iter(|| {
            let mut acc = 0u32;
            for &h in &hashes {
                acc = acc.wrapping_add(t.lookup(black_box(h)).unwrap_or(0) as u32);
            }
            acc
        })
    });
}

criterion_group!(benches, build, lookup);
criterion_main!(benches);
