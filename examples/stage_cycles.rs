//! Cycles per packet of each stage: the first `N` frames of a scenario's
//! pattern (default 256, as the DPDK bench's captures; a large N leaves the
//! cache) replayed through one pipeline, timed with the TSC around every
//! stage, best of 15 rounds of 40,000 bursts of 32. No ports, no threads.
//!
//! One untimed pass over the N frames comes first, so that every flow has
//! its session before the timed rounds (otherwise the best round of the
//! fast path could be one where it backed off from new flows).
//!
//! Flags after N:
//! - `full`: the fast path is skipped and every packet takes the full
//!   pipeline.
//! - `scramble`: the untimed pass opens the flows in a scrambled order, so
//!   that the timed rounds meet session records in no particular order, as
//!   a router does whose flows did not start in the order their packets
//!   now arrive. Without it a pattern replayed in the order its sessions
//!   were created reads them one after the other.
//!
//! Run: cargo run --release --example stage_cycles -- route-64b-1k.toml [N] [full] [scramble]

use astara_dp::app::prepare;
use astara_dp::control::compile;
use astara_dp::dataplane::{Counters, Pipeline, cycles, dispatch};
use astara_dp::packet::{Burst, PacketBuf, Pool};
use astara_dp::stage::{ConntrackConfig, Snapshot};
use std::path::Path;

/// The stages, as a worker runs them on one burst; the TSC read before
/// each and after the last.
struct Stages<'a> {
    snap: &'a Snapshot,
    pipe: Pipeline,
    pool: Pool,
    burst: Burst,
    staging: Vec<Vec<astara_dp::packet::Pkt>>,
    counters: Counters,
    port: u16,
    fast: bool,
}

impl Stages<'_> {
    #[inline(never)]
    fn burst(&mut self, frames: &[Vec<u8>], which: impl Iterator<Item = usize>) -> [u64; 9] {
        let snap = self.snap;
        let t0 = cycles();
        for i in which {
            let mut pk = self.pool.alloc().unwrap();
            pk.fill(&frames[i]);
            let _ = self.burst.push(pk, self.port);
        }
        let t1 = cycles();
        if self.fast {
            self.pipe.process_fast(snap, &mut self.burst, &mut self.staging);
        }
        let tf = cycles();
        self.pipe.parse.process(snap, &mut self.burst);
        let t2 = cycles();
        self.pipe.conntrack.pre_route(snap, &mut self.burst);
        let t3 = cycles();
        self.pipe.route.process(snap, &mut self.burst);
        let t4 = cycles();
        self.pipe.conntrack.post_route(snap, &mut self.burst);
        let t5 = cycles();
        self.pipe.neighbor.process(snap, &mut self.burst);
        self.pipe.answer.process(snap, &mut self.burst);
        let t6 = cycles();
        dispatch(&mut self.burst, &mut self.staging, &mut self.pool, &mut self.counters);
        for s in self.staging.iter_mut() {
            for p in s.drain(..) {
                p.release(&mut self.pool);
            }
        }
        let t7 = cycles();
        [t0, t1, tf, t2, t3, t4, t5, t6, t7]
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args.get(1).cloned().unwrap_or_else(|| "route-64b-1k.toml".into());
    let nflows: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(256);
    let full = args.iter().skip(3).any(|a| a == "full");
    let scramble = args.iter().skip(3).any(|a| a == "scramble");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pktgen-scenarios").join(&name);
    let p = prepare(&path).unwrap();
    let snap = compile(&p.config, &p.ports, &p.options).unwrap().snapshot;
    let frames: Vec<Vec<u8>> = p.traffic.frames.iter().take(nflows).cloned().collect();
    let n = frames.len();
    // Room for every flow of the pattern, each in its own session (as `bench`).
    let ct = ConntrackConfig { capacity: (2 * n).max(1 << 16), ..Default::default() };
    let mut st = Stages {
        snap: &snap,
        pipe: Pipeline::new(ct),
        pool: Pool::new(256),
        burst: Burst::new(32),
        staging: (0..p.ports.len()).map(|_| Vec::with_capacity(64)).collect(),
        counters: Counters::new(p.ports.len()),
        port: p.traffic.ingress as u16,
        fast: !full,
    };
    // The untimed pass: in pattern order, or by a stride coprime to n (a
    // permutation that scatters neighbours in the pattern far apart).
    let stride = if scramble { (0..).map(|k| n * 5 / 8 + 1 + k).find(|s| gcd(*s, n) == 1).unwrap() } else { 1 };
    for b in (0..n).step_by(32) {
        st.burst(&frames, (b..(b + 32).min(n)).map(|i| i * stride % n));
    }
    let names = ["fill", "fast", "parse", "pre_route", "route", "post_route", "neigh+ans", "dispatch"];
    let mut best = [f64::MAX; 8];
    let mut at = 0;
    // (STAGE_ROUNDS and STAGE_BURSTS shorten the run, e.g. under callgrind.)
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (rounds, iters) = (env("STAGE_ROUNDS", 15), env("STAGE_BURSTS", 40_000));
    for _round in 0..rounds {
        let mut t = [0u64; 8];
        for _ in 0..iters {
            let ts = st.burst(&frames, (at..at + 32).map(|i| i % n));
            at += 32;
            for k in 0..8 {
                t[k] += ts[k + 1] - ts[k];
            }
        }
        for k in 0..8 {
            best[k] = best[k].min(t[k] as f64 / (iters as f64 * 32.0));
        }
    }
    let mut tot = 0.0;
    for (k, nm) in names.iter().enumerate() {
        tot += best[k];
        print!("{nm} {:.1}  ", best[k]);
    }
    let f = st.pipe.fast.counters;
    println!(
        "| total {tot:.1} cycles/pkt (best of {rounds} rounds per stage); drops {}; fast path forwarded {} ({} of known flows), sessions {}",
        st.counters.drops.iter().sum::<u64>(),
        f.forwarded,
        f.tracked,
        st.pipe.conntrack.sessions.len()
    );
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}
