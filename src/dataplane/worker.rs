//! The poll-mode worker: pinned to a core, it loops rx → stages → tx over its
//! own queues, reading the configuration snapshot once per burst.

use super::counters::EXCEPTION_COUNTERS;
use super::counters::{Counters, WorkerStats};
use super::exception::{Exception, PuntClass, PuntLimiter};
use super::handoff::Handoff;
use super::pipeline::{Pipeline, dispatch, dispatch_punt, transmit, transmit_host};
use super::query::SessionQuery;
use super::{Snapshots, cycles};
use crate::packet::{Burst, Pkt};
use crate::packet::{Verdict, WorkerBuf};
use crate::port::{RxQueue, TxQueue};
use crate::stage::ConntrackConfig;
use crate::stage::conntrack::owner;
use crate::stage::{DropReason, Snapshot};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// Publish counters every this many bursts (and when stopping).
const PUBLISH_EVERY: u64 = 64;
/// Session records a listing looks at per pause between bursts.
const QUERY_SLICE: usize = 4096;
/// Cycle-counter ticks between two readings of the clock (about 0.1 ms
/// at 2.6 GHz). A reading costs about 70 cycles here (the vDSO's
/// clock_gettime in a VM): once a loop, that was 2 cycles a packet of a
/// 32-packet burst; sessions count whole seconds and the punt limiter
/// milliseconds.
const CLOCK_EVERY: u64 = 1 << 18;

pub struct WorkerConfig {
    pub id: usize,
    /// CPU to pin to; None leaves the thread unpinned.
    pub core: Option<usize>,
    pub burst: usize,
    pub pool_size: usize,
    /// Session table size, timeouts, and this worker's place among them.
    pub conntrack: ConntrackConfig,
}

/// One worker and everything it owns, over one buffer type: `Pkt` for the
/// software and AF_PACKET ports, DPDK mbufs for DPDK ports.
pub struct Worker<P: WorkerBuf = Pkt> {
    pub cfg: WorkerConfig,
    /// (port index, queue) pairs this worker polls.
    pub rx: Vec<(u16, Box<dyn RxQueue<P>>)>,
    /// Transmit queue per port index (None: the port cannot transmit).
    pub tx: Vec<Option<Box<dyn TxQueue<P>>>>,
    pub snapshots: Snapshots,
    pub stats: Arc<WorkerStats>,
    pub stop: Arc<AtomicBool>,
    /// Rings to the other workers (several workers with NAT): each packet
    /// is processed by the worker owning its flow.
    pub handoff: Option<Arc<Handoff<P>>>,
    /// Rings to and from the host stack (None: local packets are counted
    /// and freed, as in `bench` and `replay`).
    pub exception: Option<Arc<Exception>>,
}

impl<P: WorkerBuf> Worker<P> {
    /// Runs until `stop` is set; returns the final counters.
    pub fn run(mut self) -> Counters {
        if let Some(core) = self.cfg.core {
            let ok = core_affinity::set_for_current(core_affinity::CoreId { id: core });
            if !ok {
                log::warn!("worker {}: could not pin to core {core}", self.cfg.id);
            }
        }
        let ports = self.tx.len();
        // With handoff, buffers move between workers: room for twice as many.
        let mut pool = match self.handoff {
            Some(_) => P::worker_pool(2 * self.cfg.pool_size, self.cfg.pool_size),
            None => P::worker_pool(self.cfg.pool_size, self.cfg.pool_size),
        };
        let mut burst: Burst<P> = Burst::new(self.cfg.burst);
        let mut staging: Vec<Vec<P>> = (0..ports).map(|_| Vec::with_capacity(self.cfg.burst)).collect();
        let mut host_out: Vec<Vec<P>> = (0..ports).map(|_| Vec::with_capacity(self.cfg.burst)).collect();
        let mut pipeline = Pipeline::new(ConntrackConfig { worker: self.cfg.id, ..self.cfg.conntrack });
        // The tables' memory, on this worker's core (and NUMA node), before
        // the first burst: no page fault on the forwarding path later.
        let t = std::time::Instant::now();
        pipeline.conntrack.prefault();
        log::debug!("worker {}: session table backed in {:?}", self.cfg.id, t.elapsed());
        // Session time: whole seconds since the worker started, from 1.
        let start = std::time::Instant::now();
        let mut idle_loops = 0u32;
        let mut elapsed = start.elapsed();
        let mut clock_read = cycles();
        self.stats.session_capacity.store(pipeline.conntrack.sessions.capacity() as u64, Ordering::Relaxed);
        self.stats.ready.store(true, Ordering::Release);
        // A session listing in progress: (query, next slot to scan).
        let mut query: Option<(Box<SessionQuery>, usize)> = None;
        let mut owners = vec![0usize; self.cfg.burst.max(1)];
        let mut c = Counters::new(ports);
        let mut cache = arc_swap::Cache::new(Arc::clone(&self.snapshots));
        let mut unpublished = false;
        let exc = self.exception.clone();
        let mut limiter = PuntLimiter::new(exc.as_ref().map(|x| x.limits).unwrap_or_default());
        let me = self.cfg.id as u16;
        // Where this loop began: the previous one's end (one reading of the
        // counter a loop, about 27 cycles, not two).
        let mut t0 = cycles();
        while !self.stop.load(Ordering::Relaxed) {
            let snap = cache.load();
            if t0.wrapping_sub(clock_read) >= CLOCK_EVERY {
                elapsed = start.elapsed();
                clock_read = t0;
            }
            pipeline.set_now(elapsed.as_secs() as u32 + 1);
            let mut got = 0;
            // The host stack: buffers back, frames to send, limits refilled.
            let host = exc.as_deref().filter(|x| x.active());
            pipeline.neighbor.punt_unresolved = host.is_some();
            pipeline.answer.enabled = host.is_some();
            if let Some(x) = host {
                limiter.tick(elapsed.as_millis() as u64);
                x.refill(self.cfg.id, P::host_stock(&mut pool));
                // The host stack's frames: sent on this worker's queues,
                // counted apart from forwarded traffic (`injected`).
                let mut injected = 0;
                while injected < self.cfg.burst
                    && let Some((p, port)) = x.pop_injected(self.cfg.id)
                {
                    match host_out.get_mut(port as usize) {
                        Some(q) => {
                            if let Some(p) = P::from_host(p, &mut pool) {
                                q.push(p)
                            }
                        }
                        None => P::host_stock(&mut pool).free(p),
                    }
                    injected += 1;
                }
                if injected > 0 {
                    got += injected;
                    c.injected += transmit_host(&mut host_out, &mut self.tx, &mut pool);
                }
            }
            // Packets other workers received for flows this one owns.
            if let Some(h) = &self.handoff {
                let n = h.recv_into(self.cfg.id, &mut burst);
                if n > 0 {
                    got += n;
                    pipeline.handed_in += n as u64;
                    pipeline.process_parsed(snap, &mut burst);
                    match host {
                        Some(x) => {
                            let out = &mut host_out;
                            dispatch_punt(&mut burst, &mut staging, out, &mut pool, &mut c, x, &mut limiter, me);
                            transmit_host(out, &mut self.tx, &mut pool);
                        }
                        None => dispatch(&mut burst, &mut staging, &mut pool, &mut c),
                    }
                    transmit(&mut staging, &mut self.tx, &mut pool, &mut c);
                }
                h.balance(&mut pool, self.cfg.burst);
            }
            let congested = self.handoff.as_ref().is_some_and(|h| h.congested(self.cfg.burst));
            for (port, q) in self.rx.iter_mut() {
                if congested {
                    break;
                }
                let n = q.rx_burst(&mut pool, &mut burst, *port);
                if n == 0 {
                    continue;
                }
                got += n;
                c.rx += n as u64;
                if let Some(r) = c.port_rx.get_mut(*port as usize) {
                    *r += n as u64;
                }
                // Plain forwarding needs no session, so no owner, and a
                // known flow's session is in its owner's table only: the
                // fast path forwards both on the worker that received them
                // (another worker's flows miss here and are handed off).
                let rest = pipeline.process_fast(snap, &mut burst, &mut staging);
                match &self.handoff {
                    Some(h) if rest => {
                        pipeline.parse.process(snap, &mut burst);
                        hand_off(h, self.cfg.id, snap, &mut burst, &mut owners, &mut pool, &mut pipeline, &mut c);
                        pipeline.process_parsed(snap, &mut burst);
                    }
                    None if rest => pipeline.process(snap, &mut burst),
                    _ => {}
                }
                match host {
                    Some(x) => {
                        let out = &mut host_out;
                        dispatch_punt(&mut burst, &mut staging, out, &mut pool, &mut c, x, &mut limiter, me);
                        transmit_host(out, &mut self.tx, &mut pool);
                    }
                    None => dispatch(&mut burst, &mut staging, &mut pool, &mut c),
                }
                transmit(&mut staging, &mut self.tx, &mut pool, &mut c);
            }
            let t1 = cycles();
            let dt = t1.wrapping_sub(t0);
            t0 = t1;
            if got > 0 {
                c.busy_cycles += dt;
                c.bursts += 1;
                unpublished = true;
            } else {
                c.idle_cycles += dt;
                // An idle worker still frees idle sessions and their ports.
                idle_loops = idle_loops.wrapping_add(1);
                if idle_loops.is_multiple_of(1024) {
                    pipeline.conntrack.expire(256);
                }
                std::hint::spin_loop();
            }
            // Session listings: a slice of the table between bursts.
            if (got == 0 || c.bursts.is_multiple_of(PUBLISH_EVERY))
                && let Some((mut q, from)) = query.take().or_else(|| self.stats.queries.request.pop().map(|q| (q, 0)))
            {
                match pipeline.conntrack.scan(self.cfg.id, &mut q, from, QUERY_SLICE) {
                    Some(next) => query = Some((q, next)),
                    None => {
                        let _ = self.stats.queries.answer.push(q);
                    }
                }
            }
            // Publish every few bursts, and as soon as the queues run dry so
            // the counters are exact whenever the worker is idle.
            if unpublished && (got == 0 || c.bursts.is_multiple_of(PUBLISH_EVERY)) {
                c.stage = pipeline.stage_counters();
                exception_counters(&mut c, &limiter);
                self.stats.publish(&c);
                self.stats.publish_lb(&pipeline.conntrack.lb);
                self.stats.generation.store(snap.generation, Ordering::Relaxed);
                unpublished = false;
            }
        }
        // Packets already on the way to this worker are still processed.
        if let Some(h) = &self.handoff {
            h.stop_receiving();
            let snap = cache.load();
            while !h.drained(self.cfg.id) {
                let n = h.recv_into(self.cfg.id, &mut burst);
                if n == 0 {
                    std::hint::spin_loop();
                    continue;
                }
                pipeline.handed_in += n as u64;
                pipeline.process_parsed(snap, &mut burst);
                dispatch(&mut burst, &mut staging, &mut pool, &mut c);
                transmit(&mut staging, &mut self.tx, &mut pool, &mut c);
            }
        }
        c.stage = pipeline.stage_counters();
        exception_counters(&mut c, &limiter);
        self.stats.publish(&c);
        self.stats.publish_lb(&pipeline.conntrack.lb);
        c
    }

    pub fn spawn(self) -> std::io::Result<JoinHandle<Counters>>
    where
        P: Send,
    {
        std::thread::Builder::new().name(format!("worker-{}", self.cfg.id)).spawn(move || self.run())
    }
}

fn exception_counters(c: &mut Counters, l: &PuntLimiter) {
    let e = &mut c.stage[EXCEPTION_COUNTERS..];
    e[..PuntClass::COUNT].copy_from_slice(&l.punted);
    e[PuntClass::COUNT] = l.limited[PuntClass::Error as usize];
    e[PuntClass::COUNT + 1] = c.injected;
}

/// Moves the packets of a parsed burst whose flows other workers own onto
/// their rings (a full ring drops, counted).
#[allow(clippy::too_many_arguments)]
fn hand_off<P: WorkerBuf>(
    h: &Handoff<P>,
    me: usize,
    snap: &Snapshot,
    burst: &mut Burst<P>,
    owners: &mut [usize],
    pool: &mut P::Pool,
    pipeline: &mut Pipeline,
    c: &mut Counters,
) {
    let n = h.workers();
    let mut foreign = false;
    for (i, o) in owners.iter_mut().enumerate().take(burst.len()) {
        let m = burst.meta(i);
        *o = if m.verdict == Verdict::Pending { owner(snap, m, burst.pkt(i).data(), n) } else { me };
        foreign |= *o != me;
    }
    if !foreign {
        return;
    }
    burst.split_off(
        |i, _| owners[i] != me,
        |i, p, m| match h.send(owners[i], p, *m) {
            Ok(()) => pipeline.handed_off += 1,
            Err(p) => {
                c.drop(DropReason::HandoffFull, 1);
                p.release(pool);
            }
        },
    );
}
