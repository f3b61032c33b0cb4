//! Applying a document: validate, compile, publish (and free the snapshot
//! replaced two pushes ago), alternating two documents so every apply really
//! recompiles. Run: cargo bench --bench control

use astara_dp::app::prepare;
use astara_dp::control::model::StaticRoute;
use astara_dp::control::state::Control;
use astara_dp::control::{AstaraConfig, CompileOptions, ports_from_config};
use criterion::{Criterion, criterion_group, criterion_main};
use std::path::Path;

fn pair(base: AstaraConfig, gw: &str) -> [AstaraConfig; 2] {
    let mut variant = base.clone();
    variant
        .static_routes
        .push(StaticRoute { destination: "198.18.0.0/15".parse().unwrap(), next_hop: gw.parse().unwrap() });
    [base, variant]
}

fn apply(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read(root.join("configs/router.json")).unwrap();
    let router = AstaraConfig::from_json(&text).unwrap();
    let ports = ports_from_config(&router);
    let control = Control::new(ports, Vec::new(), CompileOptions::default(), None).unwrap();
    let docs = pair(router, "203.0.113.1");
    let mut k = 0;
    c.bench_function("apply_router_json", |b| {
        b.iter(|| {
            k += 1;
            control.apply(docs[k % 2].clone()).unwrap()
        })
    });
    c.bench_function("parse_and_apply_router_json", |b| {
        let texts = docs.clone().map(|d| serde_json::to_vec(&d).unwrap());
        b.iter(|| {
            k += 1;
            control.apply_json(&texts[k % 2]).unwrap()
        })
    });

    let p = prepare(&root.join("pktgen-scenarios/route-64b.toml")).unwrap();
    let control = Control::new(p.ports.clone(), Vec::new(), p.options.clone(), None).unwrap();
    let docs = pair(p.config.clone(), "203.0.113.1");
    let mut g = c.benchmark_group("apply_1M_static_routes");
    g.sample_size(10);
    g.bench_function("validate_compile_publish", |b| {
        b.iter(|| {
            k += 1;
            control.apply(docs[k % 2].clone()).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
