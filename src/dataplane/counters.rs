//! Per-worker counters: plain integers in the loop, published every few
//! bursts to atomics that only this worker writes (relaxed stores, no locked
//! instructions), summed by the control thread for reports.

use crate::stage::DropReason;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Named per-stage counters, in the order of [`Counters::stage`].
pub const STAGE_COUNTERS: &[&str] = &[
    "parse: ipv4",
    "parse: ipv6",
    "parse: arp",
    "parse: priority-tagged",
    "parse: fragments",
    "parse: ipv4 with options",
    "route: forwarded",
    "route: local",
    "route: ecmp",
    "neighbor: rewritten",
    "fast path: forwarded in one pass",
    "fast path: of which packets of known flows",
    "fast path: of which first packets of flows",
    "fast path: bursts left to the full pipeline (backoff)",
    "answer: arp requests answered by the worker",
    "answer: echo requests answered by the worker",
    "conntrack: packets of known flows",
    "conntrack: new flows",
    "conntrack: sessions created",
    "conntrack: sessions expired",
    "conntrack: sessions in use",
    "nat: masquerade sessions",
    "nat: floating ip inbound sessions",
    "nat: floating ip outbound sessions",
    "nat: hairpin sessions",
    "nat: inbound through mapping sessions",
    "nat: icmp errors translated",
    "nat: later fragments translated",
    "nat: metadata redirects",
    "firewall: flows blocked by rule",
    "nat: port mappings in use",
    "nat: source ports preserved",
    "nat: port allocation failures",
    "lb: sessions created",
    "lb: new flows with no member available",
    "handoff: packets sent to the owning worker",
    "handoff: packets received from other workers",
    "exception: punted to the host stack",
    "exception: punted to the metadata proxy",
    "exception: punted for neighbour resolution",
    "exception: punted for an icmp error",
    "exception: punted for fragmentation",
    "exception: icmp errors over the rate limit",
    "exception: frames injected by the host stack",
];

/// Index of the first exception-path counter in [`STAGE_COUNTERS`].
pub const EXCEPTION_COUNTERS: usize = STAGE_COUNTERS.len() - 7;

/// A worker's own, unsynchronised counters.
#[derive(Debug, Clone)]
pub struct Counters {
    pub rx: u64,
    pub tx: u64,
    /// For the appliance itself (the exception path).
    pub local: u64,
    pub bursts: u64,
    pub busy_cycles: u64,
    pub idle_cycles: u64,
    pub port_rx: Vec<u64>,
    pub port_tx: Vec<u64>,
    /// Frames the host stack had this worker send.
    pub injected: u64,
    pub drops: [u64; DropReason::COUNT],
    pub stage: [u64; STAGE_COUNTERS.len()],
}

impl Counters {
    pub fn new(ports: usize) -> Counters {
        Counters {
            rx: 0,
            tx: 0,
            local: 0,
            bursts: 0,
            busy_cycles: 0,
            idle_cycles: 0,
            port_rx: vec![0; ports],
            port_tx: vec![0; ports],
            injected: 0,
            drops: [0; DropReason::COUNT],
            stage: [0; STAGE_COUNTERS.len()],
        }
    }

    pub fn dropped(&self) -> u64 {
        self.drops.iter().sum()
    }

    #[inline]
    pub fn drop(&mut self, r: DropReason, n: u64) {
        self.drops[r as usize] += n;
    }

    /// Adds another worker's counters (for totals).
    pub fn add(&mut self, o: &Counters) {
        self.rx += o.rx;
        self.tx += o.tx;
        self.local += o.local;
        self.bursts += o.bursts;
        self.busy_cycles += o.busy_cycles;
        self.idle_cycles += o.idle_cycles;
        for (a, b) in self.port_rx.iter_mut().zip(&o.port_rx) {
            *a += b;
        }
        for (a, b) in self.port_tx.iter_mut().zip(&o.port_tx) {
            *a += b;
        }
        for (a, b) in self.drops.iter_mut().zip(&o.drops) {
            *a += b;
        }
        for (a, b) in self.stage.iter_mut().zip(&o.stage) {
            *a += b;
        }
    }

    /// Drop reasons with a non-zero count, by name.
    pub fn drop_list(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .filter(|r| self.drops[**r as usize] > 0)
            .map(|r| (r.name(), self.drops[*r as usize]))
            .collect()
    }
}

/// The published copy of a worker's counters.
pub struct WorkerStats {
    rx: AtomicU64,
    tx: AtomicU64,
    local: AtomicU64,
    bursts: AtomicU64,
    busy_cycles: AtomicU64,
    idle_cycles: AtomicU64,
    /// Generation of the snapshot the worker last used.
    pub generation: AtomicU64,
    /// Session listings asked of this worker.
    pub queries: super::query::Mailbox,
    /// Session table capacity (set once at start).
    pub session_capacity: AtomicU64,
    /// Set once the worker's tables are backed with memory and it polls its
    /// queues (a measurement starts then, not while it zeroes its tables).
    pub ready: std::sync::atomic::AtomicBool,
    port_rx: Vec<AtomicU64>,
    port_tx: Vec<AtomicU64>,
    drops: Vec<AtomicU64>,
    stage: Vec<AtomicU64>,
    /// Per load-balancer member slot: sessions in use, created, packets.
    lb: Vec<[AtomicU64; 3]>,
}

fn atomics(n: usize) -> Vec<AtomicU64> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl WorkerStats {
    pub fn new(ports: usize) -> WorkerStats {
        WorkerStats {
            rx: AtomicU64::new(0),
            tx: AtomicU64::new(0),
            local: AtomicU64::new(0),
            bursts: AtomicU64::new(0),
            busy_cycles: AtomicU64::new(0),
            idle_cycles: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            queries: Default::default(),
            session_capacity: AtomicU64::new(0),
            ready: std::sync::atomic::AtomicBool::new(false),
            port_rx: atomics(ports),
            port_tx: atomics(ports),
            drops: atomics(DropReason::COUNT),
            stage: atomics(STAGE_COUNTERS.len()),
            lb: (0..crate::stage::lb::MAX_MEMBERS).map(|_| Default::default()).collect(),
        }
    }

    /// Publishes the per-member counters (slots below `lb.high` only).
    /// Called by the owning worker only.
    pub fn publish_lb(&self, lb: &crate::stage::conntrack::LbCounters) {
        for (i, a) in self.lb.iter().enumerate().take(lb.high) {
            a[0].store(lb.active[i] as u64, Relaxed);
            a[1].store(lb.created[i], Relaxed);
            a[2].store(lb.packets[i], Relaxed);
        }
    }

    /// Member slot `slot`'s (sessions in use, sessions created, packets).
    pub fn lb_member(&self, slot: u16) -> [u64; 3] {
        self.lb.get(slot as usize).map_or([0; 3], |a| [a[0].load(Relaxed), a[1].load(Relaxed), a[2].load(Relaxed)])
    }

    /// Called by the owning worker only.
    pub fn publish(&self, c: &Counters) {
        self.rx.store(c.rx, Relaxed);
        self.tx.store(c.tx, Relaxed);
        self.local.store(c.local, Relaxed);
        self.bursts.store(c.bursts, Relaxed);
        self.busy_cycles.store(c.busy_cycles, Relaxed);
        self.idle_cycles.store(c.idle_cycles, Relaxed);
        for (a, v) in self.port_rx.iter().zip(&c.port_rx) {
            a.store(*v, Relaxed);
        }
        for (a, v) in self.port_tx.iter().zip(&c.port_tx) {
            a.store(*v, Relaxed);
        }
        for (a, v) in self.drops.iter().zip(&c.drops) {
            a.store(*v, Relaxed);
        }
        for (a, v) in self.stage.iter().zip(&c.stage) {
            a.store(*v, Relaxed);
        }
    }

    /// A consistent-enough copy for reports (each value is exact; values may
    /// be from neighbouring publishes).
    pub fn read(&self) -> Counters {
        let mut c = Counters::new(self.port_rx.len());
        c.rx = self.rx.load(Relaxed);
        c.tx = self.tx.load(Relaxed);
        c.local = self.local.load(Relaxed);
        c.bursts = self.bursts.load(Relaxed);
        c.busy_cycles = self.busy_cycles.load(Relaxed);
        c.idle_cycles = self.idle_cycles.load(Relaxed);
        for (v, a) in c.port_rx.iter_mut().zip(&self.port_rx) {
            *v = a.load(Relaxed);
        }
        for (v, a) in c.port_tx.iter_mut().zip(&self.port_tx) {
            *v = a.load(Relaxed);
        }
        for (v, a) in c.drops.iter_mut().zip(&self.drops) {
            *v = a.load(Relaxed);
        }
        for (v, a) in c.stage.iter_mut().zip(&self.stage) {
            *v = a.load(Relaxed);
        }
        c
    }
}
