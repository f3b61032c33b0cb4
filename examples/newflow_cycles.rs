//! Cycles per new flow, stage by stage: a scenario's pattern (every frame
//! a flow of its own, as in `nat-64b.toml`'s million flows) through one
//! pipeline, each packet opening a session, timed with the TSC around every
//! stage over 60 rounds of 8,192 bursts of 32. No ports, no threads.
//!
//! - By default the table is emptied (untimed) whenever the pattern has been
//!   played, as `cargo bench --bench nat` does: setup alone. The per-stage
//!   figures are the best round's.
//! - With `churn`, the clock moves one second every 133 bursts and nothing
//!   is emptied: once the first sessions reach their timeout, every burst
//!   also expires as many as it opens, in the timed path, as a router in a
//!   steady state does. The figures to read are then the means: `mean`
//!   over all rounds, and the second half's, stage by stage (the first
//!   rounds have nothing to expire; expiry runs inside `pre_route`).
//!
//! - With `worker`, each burst takes a worker's way instead: the fast path
//!   (`Pipeline::process_fast`, which sets up the new flows of a burst it
//!   takes whole), then the full pipeline for what it left. The columns
//!   are then those two.
//! - `NEWFLOW_FLOWS=N` plays only the pattern's first N flows (rounded
//!   down to bursts of 32), so that the table and the port map stay in
//!   cache: the cost of a new flow without its memory misses.
//!
//! Run: cargo run --release --example newflow_cycles -- nat-64b.toml [churn] [worker]

use astara_dp::app::prepare;
use astara_dp::control::compile;
use astara_dp::dataplane::{Pipeline, cycles};
use astara_dp::packet::{Burst, Pkt};
use astara_dp::stage::ConntrackConfig;
use std::path::Path;

/// Rounds by default; `NEWFLOW_ROUNDS` sets another number (fewer under
/// callgrind: with `churn`, expiry keeps pace from the third round).
const ROUNDS: usize = 60;
const BURSTS: usize = 8192;
/// Bursts per second of the clock with `churn`.
const BURSTS_PER_SECOND: u64 = 133;

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "nat-64b.toml".into());
    let churn = std::env::args().skip(2).any(|a| a == "churn");
    let worker = std::env::args().skip(2).any(|a| a == "worker");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pktgen-scenarios").join(&name);
    let p = prepare(&path).unwrap();
    let snap = compile(&p.config, &p.ports, &p.options).unwrap().snapshot;
    let frames = &p.traffic.frames;
    let port = p.traffic.ingress as u16;
    let limit = std::env::var("NEWFLOW_FLOWS").ok().and_then(|v| v.parse().ok()).unwrap_or(usize::MAX);
    let flows = frames.len().min(limit) / 32 * 32;
    assert!(flows > 0, "the pattern needs at least 32 frames");
    let mut pipe = Pipeline::new(ConntrackConfig { capacity: 2 * flows, ..Default::default() });
    // As a worker does before its first burst: no page faults timed.
    pipe.conntrack.prefault();
    let mut now = 1;
    pipe.set_now(now);
    let mut burst: Burst<Pkt> = Burst::new(32);
    let rounds = std::env::var("NEWFLOW_ROUNDS").ok().and_then(|v| v.parse().ok()).filter(|&r| r > 0).unwrap_or(ROUNDS);
    let names = if worker {
        ["fast path", "full pipeline", "", "", ""]
    } else {
        ["parse", "pre_route", "route", "post_route", "neigh"]
    };
    let mut staging: Vec<Vec<Pkt>> = (0..snap.ports.len().max(1)).map(|_| Vec::new()).collect();
    let mut best = [f64::MAX; 5];
    // Per stage over the second half of the rounds: with `churn`, the
    // steady state (expiry keeping pace), stage by stage.
    let mut late = [0u64; 5];
    // The quickest round of the second half, whole rounds (the steady
    // state with the machine's noise least in it).
    let mut late_best = f64::MAX;
    let (mut next, mut bursts, mut all) = (0, 0u64, 0u64);
    for round in 0..rounds {
        let mut t = [0u64; 5];
        for _ in 0..BURSTS {
            if next == flows {
                if !churn {
                    pipe.conntrack.clear();
                }
                next = 0;
            }
            bursts += 1;
            if churn && bursts.is_multiple_of(BURSTS_PER_SECOND) {
                now += 1;
                pipe.set_now(now);
            }
            for f in &frames[next..next + 32] {
                let _ = burst.push(Pkt::from_slice(f).unwrap(), port);
            }
            next += 32;
            if worker {
                let t0 = cycles();
                let rest = pipe.process_fast(&snap, &mut burst, &mut staging);
                let t1 = cycles();
                if rest {
                    pipe.process(&snap, &mut burst);
                }
                let t2 = cycles();
                burst.drain(|p, _| drop(p));
                staging.iter_mut().for_each(Vec::clear);
                all += t2 - t0;
                t[0] += t1 - t0;
                t[1] += t2 - t1;
                continue;
            }
            let t0 = cycles();
            pipe.parse.process(&snap, &mut burst);
            let t1 = cycles();
            pipe.conntrack.pre_route(&snap, &mut burst);
            let t2 = cycles();
            pipe.route.process(&snap, &mut burst);
            let t3 = cycles();
            pipe.conntrack.post_route(&snap, &mut burst);
            let t4 = cycles();
            pipe.neighbor.process(&snap, &mut burst);
            let t5 = cycles();
            burst.drain(|p, _| drop(p));
            all += t5 - t0;
            for (k, d) in [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4].iter().enumerate() {
                t[k] += d;
            }
        }
        for k in 0..5 {
            best[k] = best[k].min(t[k] as f64 / (BURSTS * 32) as f64);
        }
        if round >= rounds / 2 {
            for k in 0..5 {
                late[k] += t[k];
            }
            late_best = late_best.min(t.iter().sum::<u64>() as f64 / (BURSTS * 32) as f64);
        }
    }
    let mut tot = 0.0;
    for (k, nm) in names.iter().enumerate().filter(|(_, n)| !n.is_empty()) {
        tot += best[k];
        print!("{nm} {:.1}  ", best[k]);
    }
    let s = &pipe.conntrack.sessions;
    println!(
        "| total {tot:.1} (best round), mean {:.1} cycles/new flow; sessions created {}, expired {}, in use {}",
        all as f64 / (rounds * BURSTS * 32) as f64,
        s.stats.inserted,
        s.stats.expired,
        s.len()
    );
    let per = |c: u64| c as f64 / ((rounds - rounds / 2) * BURSTS * 32) as f64;
    print!("second half of the rounds, mean:");
    for (k, nm) in names.iter().enumerate().filter(|(_, n)| !n.is_empty()) {
        print!(" {nm} {:.1}", per(late[k]));
    }
    println!("  | total {:.1} cycles/new flow; quickest round {late_best:.1}", per(late.iter().sum()));
}
