//! `astara-dp bench`: the whole pipeline on in-memory replay ports, as DPDK's
//! net_pcap `infinite_rx` replays a capture into l3fwd. Reports Mpps, ns and
//! cycles per packet per worker, stage counters and drop reasons, and checks
//! every counter against the reference model's expectations.

use super::memprobe::{self, MemoryReference};
use super::{Prepared, prepare};
use crate::control::state::Control;
use crate::dataplane::{Counters, STAGE_COUNTERS, Worker, WorkerConfig, WorkerStats, cycles};
use crate::packet::{DEFAULT_BURST, MAX_BURST, rss_hash};
use crate::pktgen::Expect;
use crate::port::null::NullTx;
use crate::port::pcap::{Frames, ReplayRx};
use crate::port::{Port, PortStats, QueueCounters, RxQueue, SoftPort, TxQueue};
use crate::stage::ConntrackConfig;
use crate::table::session::SessionTable;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Reads of the memory reference, each way (about 0.2 s where a read from
/// memory takes 190 ns).
const PROBE_READS: usize = 1_000_000;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub cores: usize,
    pub seconds: f64,
    pub burst: usize,
    /// Buffers per worker pool.
    pub pool: usize,
    /// Print the progress line (to stderr) every second.
    pub progress: bool,
    pub json: Option<PathBuf>,
    /// Re-apply the configuration (alternating with a variant that has one
    /// more route, so every push recompiles) every this many seconds.
    pub push_every: Option<f64>,
    /// Seconds run before the measured window starts.
    pub warmup: f64,
    /// Give each worker the frames of the flows it owns (no handoff).
    pub steer_by_owner: bool,
    /// Run the host stack beside the workers, as `run` does.
    pub host_stack: bool,
    /// Replay each worker's first pass over its frames in a scrambled
    /// order, so that later passes meet its session records in no
    /// particular order (`ReplayRx::opening_in`).
    pub scramble: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            cores: 1,
            seconds: 5.0,
            burst: DEFAULT_BURST,
            pool: 4096,
            progress: true,
            json: None,
            push_every: None,
            warmup: 0.0,
            steer_by_owner: false,
            host_stack: false,
            scramble: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerResult {
    pub worker: usize,
    pub core: Option<usize>,
    pub packets: u64,
    pub mpps: f64,
    pub ns_per_packet: f64,
    pub cycles_per_packet: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub scenario: String,
    pub routes: usize,
    pub fib4_bytes: usize,
    pub tbl8_groups: usize,
    pub compile_secs: f64,
    /// Configuration pushes applied during the run, and their mean time.
    pub pushes: u64,
    pub push_mean_secs: f64,
    pub pattern_packets: usize,
    /// The first pass over the pattern was replayed in a scrambled order.
    pub scrambled: bool,
    pub seconds: f64,
    pub burst: usize,
    pub tsc_ghz: f64,
    pub workers: Vec<WorkerResult>,
    pub total_packets: u64,
    pub total_mpps: f64,
    pub forwarded: u64,
    pub local: u64,
    pub dropped: u64,
    pub port_tx: BTreeMap<String, u64>,
    /// Counters of each port object (summed over its queues).
    pub ports: BTreeMap<String, PortStats>,
    pub drops: BTreeMap<String, u64>,
    pub stages: BTreeMap<String, u64>,
    pub check_passed: bool,
    pub check: Vec<String>,
    /// Random reads over a region the size of one worker's session table,
    /// on the first worker's core, after the run (`memprobe`).
    pub memory: Option<MemoryReference>,
}

/// What the reference model expects of the first `n` packets of a replay
/// pattern repeated forever, its first pass in `opening`'s order when that
/// is not empty (a permutation of the pattern's indices).
fn expected_counts(expect: &[Expect], opening: &[u32], n: u64) -> BTreeMap<Expect, u64> {
    let mut full: BTreeMap<Expect, u64> = BTreeMap::new();
    let mut part: BTreeMap<Expect, u64> = BTreeMap::new();
    if expect.is_empty() {
        return full;
    }
    let len = expect.len() as u64;
    // A whole first pass counts as any other: only a partial one differs.
    let (laps, rem, first) = match n < len && !opening.is_empty() {
        true => (0, 0, &opening[..n as usize]),
        false => (n / len, (n % len) as usize, &[][..]),
    };
    for (i, e) in expect.iter().enumerate() {
        *full.entry(*e).or_default() += laps;
        if i < rem {
            *part.entry(*e).or_default() += 1;
        }
    }
    for &i in first {
        *part.entry(expect[i as usize]).or_default() += 1;
    }
    for (e, c) in part {
        *full.entry(e).or_default() += c;
    }
    full
}

/// A worker's pattern as the model sees it: each frame's expected outcome,
/// and the first pass's order (empty: the pattern's own).
type Expected = (Vec<Expect>, Vec<u32>);

/// Compares what the workers counted with the model's expectations.
fn check(p: &Prepared, per_worker: &[(Expected, Counters)], total: &Counters) -> (bool, Vec<String>) {
    let mut want: BTreeMap<Expect, u64> = BTreeMap::new();
    for ((exp, opening), c) in per_worker {
        for (e, n) in expected_counts(exp, opening, c.rx) {
            *want.entry(e).or_default() += n;
        }
    }
    let mut msgs = Vec::new();
    let mut ok = true;
    let mut want_fwd_any = 0;
    let mut want_port = vec![0u64; p.ports.len()];
    let mut want_drops: BTreeMap<&str, u64> = BTreeMap::new();
    let mut want_local = 0;
    for (e, n) in &want {
        match e {
            Expect::Forward(port) => want_port[*port] += n,
            Expect::ForwardAny => want_fwd_any += n,
            Expect::Local => want_local += n,
            Expect::Drop(r) => *want_drops.entry(r).or_default() += n,
        }
    }
    let accounted = total.tx + total.local + total.dropped();
    if accounted != total.rx {
        ok = false;
        msgs.push(format!("FAIL: {} received but {} accounted for (tx + local + drops)", total.rx, accounted));
    }
    let want_tx: u64 = want_port.iter().sum::<u64>() + want_fwd_any;
    if total.tx != want_tx {
        ok = false;
        msgs.push(format!("FAIL: forwarded {} but the reference model expects {want_tx}", total.tx));
    }
    if want_fwd_any == 0 {
        for (i, port) in p.ports.iter().enumerate() {
            if total.port_tx[i] != want_port[i] {
                ok = false;
                msgs.push(format!(
                    "FAIL: {} transmitted {} but the model expects {}",
                    port.name, total.port_tx[i], want_port[i]
                ));
            }
        }
    }
    if total.local != want_local {
        ok = false;
        msgs.push(format!("FAIL: {} local but the model expects {want_local}", total.local));
    }
    let got_drops: BTreeMap<&str, u64> = total.drop_list().into_iter().collect();
    if got_drops != want_drops {
        ok = false;
        msgs.push(format!("FAIL: drops {got_drops:?} but the model expects {want_drops:?}"));
    }
    if ok {
        msgs.push(format!(
            "PASS: {} received = {} forwarded + {} local + {} dropped; per-port transmit counts and drop reasons match the reference model",
            total.rx,
            total.tx,
            total.local,
            total.dropped()
        ));
    }
    (ok, msgs)
}

pub fn run(path: &Path, o: &BenchOptions) -> Result<BenchReport, String> {
    let cores = o.cores.max(1);
    let burst = o.burst.clamp(1, MAX_BURST);
    let p = prepare(path)?;
    let s = &p.scenario;
    println!("astara-dp bench: {} — {}", s.name, s.description);
    let control = Control::new(p.ports.clone(), Vec::new(), p.options.clone(), None)?;
    let t0 = Instant::now();
    control.apply(p.config.clone()).map_err(|e| e.message)?;
    let compile_secs = t0.elapsed().as_secs_f64();
    for w in control.applied().map(|a| a.warnings.clone()).unwrap_or_default() {
        println!("  warning: {w}");
    }
    let snap = control.snapshots().load_full();
    let (routes, fib4_bytes, tbl8_groups) = (snap.fib4.routes(), snap.fib4.memory_bytes(), snap.fib4.tbl8_groups());
    println!(
        "  setup: {} random prefixes in {:.2} s; compiled in {:.3} s: {} IPv4 routes, {:.1} MiB ({} tbl8 groups), {} IPv6 routes",
        p.routes.len(),
        p.route_gen_secs,
        compile_secs,
        routes,
        fib4_bytes as f64 / (1 << 20) as f64,
        tbl8_groups,
        snap.fib6.routes()
    );

    // Software RSS: each worker replays the frames whose flow hashes to it
    // (symmetric 5-tuple hash, as NIC RSS with a symmetric key), or with
    // `steer_by_owner` the frames whose flows it owns (an ideal RSS that
    // never needs a handoff: the reference the handoff cost is measured by).
    let mut parts: Vec<(Vec<&[u8]>, Vec<Expect>)> = (0..cores).map(|_| (Vec::new(), Vec::new())).collect();
    let mut parser = crate::stage::Parse::default();
    let mut one: crate::packet::Burst = crate::packet::Burst::new(1);
    for (f, e) in p.traffic.frames.iter().zip(&p.traffic.expect) {
        let w = if o.steer_by_owner && cores > 1 {
            let _ = one.push(crate::packet::Pkt::from_slice(f).unwrap_or_default(), p.traffic.ingress as u16);
            parser.process(&snap, &mut one);
            let w =
                crate::stage::conntrack::owner(&snap, one.meta(0), crate::packet::PacketBuf::data(one.pkt(0)), cores);
            one.drain(|_, _| {});
            w
        } else {
            rss_hash(f) as usize % cores
        };
        parts[w].0.push(f);
        parts[w].1.push(*e);
    }
    let bytes: usize = p.traffic.frames.iter().map(|f| f.len() + 4).sum();
    println!(
        "  traffic: {} packets in the pattern ({} flows, avg {:.0} B on the wire, built in {:.2} s), ingress {}, {} worker(s), burst {}",
        p.traffic.frames.len(),
        s.traffic.flows,
        bytes as f64 / p.traffic.frames.len().max(1) as f64,
        p.traffic_gen_secs,
        s.traffic.ingress,
        cores,
        burst
    );
    if o.scramble {
        println!(
            "  order: each worker's first pass over its frames scrambled, later passes in pattern order (session records met in no particular order)"
        );
    }
    let capacity = (s.traffic.flows * 2).max(1 << 16);
    println!(
        "  sessions: {} per worker, {:.0} B per session at capacity ({:.0} MiB per worker)",
        capacity,
        SessionTable::bytes_for(capacity) as f64 / capacity as f64,
        SessionTable::bytes_for(capacity) as f64 / (1 << 20) as f64
    );
    let core_ids: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    let shared = control.snapshots();
    drop(snap);
    let stop = Arc::new(AtomicBool::new(false));
    // Several workers: each flow is processed by the worker that owns it.
    let handoff = (cores > 1).then(|| Arc::new(crate::dataplane::Handoff::new(cores, 1024)));
    let exception = o
        .host_stack
        .then(|| Arc::new(crate::dataplane::Exception::new(cores, 4096, crate::dataplane::PuntLimits::default())));
    let mut handles = Vec::new();
    let mut stats = Vec::new();
    let mut expects = Vec::new();
    let mut cores_used = Vec::new();
    let mut port_rx: Vec<Vec<Arc<QueueCounters>>> = vec![Vec::new(); p.ports.len()];
    let mut port_tx: Vec<Vec<Arc<QueueCounters>>> = vec![Vec::new(); p.ports.len()];
    for (w, (frames, exp)) in parts.into_iter().enumerate() {
        let (packed, too_big) = Frames::pack(frames);
        if too_big > 0 {
            return Err(format!("{too_big} frames are larger than a packet buffer"));
        }
        // Leave core 0 to the OS and this thread when there is more than one.
        let core = (!core_ids.is_empty()).then(|| core_ids[(w + 1) % core_ids.len()]);
        cores_used.push(core);
        let st = Arc::new(WorkerStats::new(p.ports.len()));
        let mut opening: Vec<u32> = Vec::new();
        let mut replay = ReplayRx::new(packed, true);
        if o.scramble {
            // Seeded by the scenario and the worker.
            opening = crate::pktgen::Rng::new(s.seed ^ 0x5c7a_4b1e ^ w as u64).permutation(replay.frames());
            replay = replay.opening_in(opening.clone())?;
        }
        port_rx[p.traffic.ingress].push(replay.counters().clone());
        let rx: Vec<(u16, Box<dyn RxQueue>)> = vec![(p.traffic.ingress as u16, Box::new(replay))];
        let mut tx: Vec<Option<Box<dyn TxQueue>>> = Vec::new();
        for q in port_tx.iter_mut() {
            let null = NullTx::default();
            q.push(TxQueue::<crate::packet::Pkt>::counters(&null).clone());
            tx.push(Some(Box::new(null)));
        }
        let worker = Worker {
            cfg: WorkerConfig {
                id: w,
                core,
                burst,
                pool_size: o.pool.max(burst * 2),
                // Room for every flow of the pattern, each in its own session.
                conntrack: ConntrackConfig { capacity, worker: w, workers: cores, ..Default::default() },
            },
            rx,
            tx,
            snapshots: shared.clone(),
            stats: st.clone(),
            stop: stop.clone(),
            handoff: handoff.clone(),
            exception: exception.clone(),
        };
        handles.push(worker.spawn().map_err(|e| format!("cannot start worker {w}: {e}"))?);
        stats.push(st);
        expects.push((exp, opening));
    }

    // Each worker backs its session table with memory before its first burst
    // (a second or more for millions of sessions): the run, and the window
    // measured without a warm-up, start once every one polls its queues.
    let t_ready = Instant::now();
    while !stats.iter().all(|s| s.ready.load(Ordering::Acquire)) {
        if handles.iter().any(|h| h.is_finished()) {
            stop.store(true, Ordering::Relaxed);
            return Err("a worker stopped before its first burst".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "  workers ready in {:.2} s (session tables of {} sessions backed)",
        t_ready.elapsed().as_secs_f64(),
        stats.iter().map(|s| s.session_capacity.load(Ordering::Relaxed)).sum::<u64>()
    );
    // This thread (progress, the check) and the host stack: off the workers' CPUs.
    crate::dataplane::keep_off_cores(&cores_used.iter().flatten().copied().collect::<Vec<_>>());
    let host = match &exception {
        Some(x) => {
            let h = crate::control::host::HostStack::new(x.clone(), control.clone());
            let stats = h.stats();
            Some((h.spawn(stop.clone()).map_err(|e| format!("cannot start the host stack: {e}"))?, stats))
        }
        None => None,
    };
    let ports: Vec<SoftPort> = p
        .ports
        .iter()
        .zip(port_rx.into_iter().zip(port_tx))
        .map(|(spec, (rx, tx))| SoftPort::new(spec.clone(), rx, tx))
        .collect();
    // Config churn on this (control) thread's sibling, as an orchestrator would.
    let pushing = Arc::new(AtomicBool::new(true));
    let pusher = o.push_every.map(|every| {
        let (control, pushing, base) = (control.clone(), pushing.clone(), p.config.clone());
        let mut variant = base.clone();
        if let Some(gw) = p.scenario.routes.as_ref().and_then(|r| r.next_hops.first()) {
            variant.static_routes.push(crate::control::model::StaticRoute {
                destination: "198.18.0.0/15".parse().expect("a CIDR"),
                next_hop: *gw,
            });
        }
        std::thread::spawn(move || {
            let (mut n, mut total) = (0u64, 0f64);
            while pushing.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs_f64(every));
                if !pushing.load(Ordering::Relaxed) {
                    break;
                }
                let t = Instant::now();
                let doc = if n % 2 == 0 { variant.clone() } else { base.clone() };
                if let Err(e) = control.apply(doc) {
                    log::error!("push failed: {e}");
                }
                total += t.elapsed().as_secs_f64();
                n += 1;
            }
            (n, total)
        })
    });
    let run_start = Instant::now();
    let warmup = Duration::from_secs_f64(o.warmup.max(0.0));
    // The measured window starts after the warm-up: counters then are the base.
    let mut start = run_start;
    let mut tsc0 = cycles();
    // Without one, the whole run (it starts within a millisecond of the last
    // worker's readiness).
    let mut base: Vec<Counters> = stats.iter().map(|_| Counters::new(p.ports.len())).collect();
    let mut warming = !warmup.is_zero();
    let deadline = warmup + Duration::from_secs_f64(o.seconds.max(0.1));
    let mut last = (run_start, 0u64);
    while run_start.elapsed() < deadline {
        if warming && run_start.elapsed() >= warmup {
            warming = false;
            start = Instant::now();
            tsc0 = cycles();
            base = stats.iter().map(|s| s.read()).collect();
        }
        std::thread::sleep(Duration::from_millis(100).min(deadline.saturating_sub(run_start.elapsed())));
        let now = Instant::now();
        if o.progress && now.duration_since(last.0) >= Duration::from_secs(1) {
            let rx: u64 = stats.iter().map(|s| s.read().rx).sum();
            let drops: u64 = stats.iter().map(|s| s.read().dropped()).sum();
            let rate = (rx - last.1) as f64 / now.duration_since(last.0).as_secs_f64() / 1e6;
            eprint!(
                "\r  [{:5.1}s / {:.0}s] {:7.2} Mpps   {:>13} packets   {:>9} drops{}",
                run_start.elapsed().as_secs_f64(),
                o.seconds + o.warmup,
                rate,
                rx,
                drops,
                if warming { " (warm-up)" } else { "" }
            );
            let _ = std::io::stderr().flush();
            last = (now, rx);
        }
    }
    stop.store(true, Ordering::Relaxed);
    pushing.store(false, Ordering::Relaxed);
    let mut per_worker = Vec::new();
    for (h, exp) in handles.into_iter().zip(expects) {
        let c = h.join().map_err(|_| "a worker panicked".to_string())?;
        per_worker.push((exp, c));
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Some((h, stats)) = host {
        let _ = h.join();
        let mut stage = vec![0u64; crate::dataplane::STAGE_COUNTERS.len()];
        for (_, c) in &per_worker {
            stage.iter_mut().zip(c.stage).for_each(|(t, v)| *t += v);
        }
        println!(
            "  host stack: {}",
            stats
                .list(&stage)
                .into_iter()
                .filter(|(_, v)| *v > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (pushes, push_secs) = pusher.map_or((0, 0.0), |h| h.join().unwrap_or((0, 0.0)));
    let tsc_ghz = cycles().wrapping_sub(tsc0) as f64 / elapsed / 1e9;
    if o.progress {
        eprintln!();
    }

    let mut total = Counters::new(p.ports.len());
    let mut workers = Vec::new();
    let mut measured = 0u64;
    for (w, (_, c)) in per_worker.iter().enumerate() {
        total.add(c);
        // The measured window only (from when every worker was ready without
        // a warm-up).
        let packets = c.rx - base[w].rx;
        let busy = c.busy_cycles - base[w].busy_cycles;
        measured += packets;
        let n = packets.max(1) as f64;
        workers.push(WorkerResult {
            worker: w,
            core: cores_used[w],
            packets,
            mpps: packets as f64 / elapsed / 1e6,
            ns_per_packet: elapsed * 1e9 / n,
            cycles_per_packet: busy as f64 / n,
        });
    }
    let (check_passed, check_msgs) = check(&p, &per_worker, &total);
    let memory = memprobe::probe(SessionTable::bytes_for(capacity), PROBE_READS, cores_used[0]);
    let report = BenchReport {
        scenario: s.name.clone(),
        routes,
        fib4_bytes,
        tbl8_groups,
        compile_secs,
        pushes,
        push_mean_secs: if pushes > 0 { push_secs / pushes as f64 } else { 0.0 },
        pattern_packets: p.traffic.frames.len(),
        scrambled: o.scramble,
        seconds: elapsed,
        burst,
        tsc_ghz,
        total_packets: measured,
        total_mpps: measured as f64 / elapsed / 1e6,
        workers,
        forwarded: total.tx,
        local: total.local,
        dropped: total.dropped(),
        port_tx: p.ports.iter().enumerate().map(|(i, port)| (port.name.clone(), total.port_tx[i])).collect(),
        ports: ports.iter().map(|port| (port.spec().name.clone(), port.stats())).collect(),
        drops: total.drop_list().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        stages: STAGE_COUNTERS.iter().zip(total.stage).map(|(k, v)| (k.to_string(), v)).collect(),
        check_passed,
        check: check_msgs,
        memory,
    };
    print_report(&report);
    if let Some(j) = &o.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(j, text).map_err(|e| format!("{}: {e}", j.display()))?;
    }
    Ok(report)
}

fn print_report(r: &BenchReport) {
    println!("  run: {:.2} s, TSC {:.2} GHz (cycles are TSC ticks while a burst was in hand)", r.seconds, r.tsc_ghz);
    if r.pushes > 0 {
        println!("  config pushes during the run: {} (each recompiled, mean {:.3} s)", r.pushes, r.push_mean_secs);
    }
    println!();
    println!("  {:<8}{:<6}{:>16}{:>10}{:>10}{:>13}", "worker", "core", "packets", "Mpps", "ns/pkt", "cycles/pkt");
    for w in &r.workers {
        let core = w.core.map_or("-".to_string(), |c| c.to_string());
        println!(
            "  {:<8}{:<6}{:>16}{:>10.2}{:>10.2}{:>13.1}",
            w.worker, core, w.packets, w.mpps, w.ns_per_packet, w.cycles_per_packet
        );
    }
    println!("  {:<14}{:>16}{:>10.2}", "total", r.total_packets, r.total_mpps);
    println!();
    println!(
        "  {:<8}{:>16}{:>16}{:>12}{:>16}{:>16}",
        "port", "rx packets", "rx bytes", "rx dropped", "tx packets", "tx bytes"
    );
    for (name, s) in &r.ports {
        println!(
            "  {:<8}{:>16}{:>16}{:>12}{:>16}{:>16}",
            name, s.rx_packets, s.rx_bytes, s.rx_dropped, s.tx_packets, s.tx_bytes
        );
    }
    println!();
    println!(
        "  stages: {}",
        r.stages.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    );
    if r.drops.is_empty() {
        println!("  drops: none");
    } else {
        println!("  drops:");
        for (k, v) in &r.drops {
            println!("    {k:<45}{v:>14}");
        }
    }
    for m in &r.check {
        println!("  check: {m}");
    }
    if let Some(m) = &r.memory {
        let on = m.core.map_or(String::new(), |c| format!(" on core {c}"));
        println!(
            "  memory reference{on}, after the run: random reads over {:.0} MiB (one worker's session table) took {:.1} ns each one after the other, {:.1} ns each with {} in flight",
            m.region_bytes as f64 / (1 << 20) as f64,
            m.dependent_ns,
            m.overlapped_ns,
            m.chains
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_counts_over_laps() {
        let e = [Expect::Forward(1), Expect::Forward(2), Expect::Drop("x")];
        let c = expected_counts(&e, &[], 8); // two laps and two more
        assert_eq!(c[&Expect::Forward(1)], 3);
        assert_eq!(c[&Expect::Forward(2)], 3);
        assert_eq!(c[&Expect::Drop("x")], 2);
        // The first pass in another order: within it, that order counts;
        // after it, whole passes as before.
        let n = |c: &BTreeMap<Expect, u64>, e: Expect| c.get(&e).copied().unwrap_or(0);
        let c = expected_counts(&e, &[2, 0, 1], 1);
        assert_eq!((n(&c, Expect::Drop("x")), n(&c, Expect::Forward(1)), n(&c, Expect::Forward(2))), (1, 0, 0));
        let c = expected_counts(&e, &[2, 0, 1], 2);
        assert_eq!((n(&c, Expect::Drop("x")), n(&c, Expect::Forward(1)), n(&c, Expect::Forward(2))), (1, 1, 0));
        assert_eq!(expected_counts(&e, &[2, 0, 1], 8), expected_counts(&e, &[], 8));
    }
}
