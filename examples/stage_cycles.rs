//! Cycles per packet of each stage, for traffic that stays in cache: the
//! first `N` frames of a scenario's pattern (default 256, as the DPDK bench's
//! captures) replayed through one pipeline, timed with the TSC around every
//! stage, best of 15 rounds of 40,000 bursts of 32. No ports, no threads.
//! The fast path runs first, as in the workers; with `full` as the third
//! argument it is skipped and every packet takes the full pipeline.
//! Run: cargo run --release --example stage_cycles -- route-64b-1k.toml [N] [full]

use astara_dp::app::prepare;
use astara_dp::control::compile;
use astara_dp::dataplane::{Counters, Pipeline, cycles, dispatch};
use astara_dp::packet::{Burst, PacketBuf, Pool};
use std::path::Path;

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "route-64b-1k.toml".into());
    let nflows: usize = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(256);
    let full = std::env::args().nth(3).is_some_and(|a| a == "full");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pktgen-scenarios").join(&name);
    let p = prepare(&path).unwrap();
    let snap = compile(&p.config, &p.ports, &p.options).unwrap().snapshot;
    let frames: Vec<Vec<u8>> = p.traffic.frames.iter().take(nflows).cloned().collect();
    let port = p.traffic.ingress as u16;
    let mut pool = Pool::new(256);
    let mut burst: Burst = Burst::new(32);
    let mut pipe = Pipeline::new(Default::default());
    let mut staging: Vec<Vec<_>> = (0..p.ports.len()).map(|_| Vec::with_capacity(64)).collect();
    let mut c = Counters::new(p.ports.len());
    let names = ["fill", "fast", "parse", "pre_route", "route", "post_route", "neigh+ans", "dispatch"];
    let mut best = [f64::MAX; 8];
    let mut at = 0;
    for _round in 0..15 {
        let mut t = [0u64; 8];
        let iters = 40_000;
        for _ in 0..iters {
            let t0 = cycles();
            for _ in 0..32 {
                let mut pk = pool.alloc().unwrap();
                pk.fill(&frames[at % frames.len()]);
                at += 1;
                let _ = burst.push(pk, port);
            }
            let t1 = cycles();
            if !full {
                pipe.process_fast(&snap, &mut burst, &mut staging);
            }
            let tf = cycles();
            pipe.parse.process(&snap, &mut burst);
            let t2 = cycles();
            pipe.conntrack.pre_route(&snap, &mut burst);
            let t3 = cycles();
            pipe.route.process(&snap, &mut burst);
            let t4 = cycles();
            pipe.conntrack.post_route(&snap, &mut burst);
            let t5 = cycles();
            pipe.neighbor.process(&snap, &mut burst);
            pipe.answer.process(&snap, &mut burst);
            let t6 = cycles();
            dispatch(&mut burst, &mut staging, &mut pool, &mut c);
            for s in staging.iter_mut() {
                for p in s.drain(..) {
                    p.release(&mut pool);
                }
            }
            let t7 = cycles();
            for (k, d) in [t1 - t0, tf - t1, t2 - tf, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6].iter().enumerate() {
                t[k] += d;
            }
        }
        for k in 0..8 {
            best[k] = best[k].min(t[k] as f64 / (iters * 32) as f64);
        }
    }
    let mut tot = 0.0;
    for (k, nm) in names.iter().enumerate() {
        tot += best[k];
        print!("{nm} {:.1}  ", best[k]);
    }
    println!("| total {tot:.1} cycles/pkt (best of 15 rounds per stage); drops {}", c.drops.iter().sum::<u64>());
}
