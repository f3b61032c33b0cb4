//! Cycles per burst when new flows arrive among known ones, the worker's
//! way (`Pipeline::process_fast`, then the full pipeline for what it
//! leaves): every burst of 32 holds NEW first packets of flows of the
//! scenario's pattern and 32 - NEW packets of 4,096 flows opened before
//! the timing starts (opened twice, so that TCP ones are established).
//! Best of 15 rounds of 4,096 bursts, in TSC cycles. No ports, no threads.
//!
//! `newflow_cycles` times bursts of new flows only; this shows what a
//! burst's mix costs, where the fast path takes a burst whole or leaves
//! its new flows to the full pipeline.
//!
//! Run: cargo run --release --example mixed_cycles -- lb-64b.toml 8

use astara_dp::app::prepare;
use astara_dp::control::compile;
use astara_dp::dataplane::{Pipeline, cycles};
use astara_dp::packet::{Burst, Pkt};
use astara_dp::stage::{ConntrackConfig, Snapshot};
use std::path::Path;

/// Known flows, opened before the timing.
const KNOWN: usize = 4096;
const ROUNDS: usize = 15;
const BURSTS: usize = 4096;

/// One burst the worker's way; its cycles. The burst is emptied after.
fn run(pipe: &mut Pipeline, snap: &Snapshot, burst: &mut Burst<Pkt>, staging: &mut [Vec<Pkt>]) -> u64 {
    let t0 = cycles();
    if pipe.process_fast(snap, burst, staging) {
        pipe.process(snap, burst);
    }
    let t = cycles() - t0;
    burst.drain(|p, _| drop(p));
    staging.iter_mut().for_each(Vec::clear);
    t
}

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "lb-64b.toml".into());
    let new: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(8).min(32);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pktgen-scenarios").join(&name);
    let p = prepare(&path).unwrap();
    let snap = compile(&p.config, &p.ports, &p.options).unwrap().snapshot;
    let frames = &p.traffic.frames;
    let port = p.traffic.ingress as u16;
    assert!(frames.len() >= KNOWN + ROUNDS * BURSTS * new, "the pattern needs more flows for {new} new a burst");
    let mut pipe = Pipeline::new(ConntrackConfig { capacity: 2 * frames.len(), ..Default::default() });
    // As a worker does before its first burst: no page faults timed.
    pipe.conntrack.prefault();
    pipe.set_now(1);
    let mut burst: Burst<Pkt> = Burst::new(32);
    let mut staging: Vec<Vec<Pkt>> = (0..snap.ports.len().max(1)).map(|_| Vec::new()).collect();
    for _ in 0..2 {
        for c in frames[..KNOWN].chunks(32) {
            for f in c {
                let _ = burst.push(Pkt::from_slice(f).unwrap(), port);
            }
            run(&mut pipe, &snap, &mut burst, &mut staging);
        }
    }
    let (mut next, mut known) = (KNOWN, 0);
    let mut best = f64::MAX;
    for _ in 0..ROUNDS {
        let mut t = 0;
        for _ in 0..BURSTS {
            for i in 0..32 {
                let f = if i < new {
                    next += 1;
                    &frames[next - 1]
                } else {
                    known = (known + 1) % KNOWN;
                    &frames[known]
                };
                let _ = burst.push(Pkt::from_slice(f).unwrap(), port);
            }
            t += run(&mut pipe, &snap, &mut burst, &mut staging);
        }
        best = best.min(t as f64 / BURSTS as f64);
    }
    let c = pipe.fast.counters;
    println!(
        "{name}, {new} new flows a burst of 32: {best:.0} cycles a burst (best round), {:.1} a packet; \
         fast path: {} new flows, {} of known flows; sessions {}",
        best / 32.0,
        c.new_flows,
        c.tracked,
        pipe.conntrack.sessions.len()
    );
}
