//! The stages in order, and the terminal step that sorts a processed burst
//! into transmit queues, the exception path and counted drops.

use super::counters::{Counters, STAGE_COUNTERS};
use super::exception::{Exception, PuntClass, PuntLimiter, Punted};
use crate::packet::{Burst, PacketBuf, Verdict, WorkerBuf};
use crate::port::TxQueue;
use crate::stage::{Answer, Conntrack, ConntrackConfig, DropReason, FastPath, Neighbor, Parse, Punt, Route, Snapshot};

/// parse → conntrack (known flows translated, new flows' destination
/// translated) → route → policy and source translation of new flows →
/// neighbour, with the fast path for plain forwarding in front of it
/// (`process_fast`).
#[derive(Default)]
pub struct Pipeline {
    pub fast: FastPath,
    pub parse: Parse,
    pub conntrack: Conntrack,
    pub route: Route,
    pub neighbor: Neighbor,
    pub answer: Answer,
    /// Packets moved to the worker owning their flow, and received so.
    pub handed_off: u64,
    pub handed_in: u64,
}

impl Pipeline {
    pub fn new(ct: ConntrackConfig) -> Pipeline {
        Pipeline { conntrack: Conntrack::new(ct), ..Default::default() }
    }

    /// Sets the clock the session table runs on (seconds).
    #[inline]
    pub fn set_now(&mut self, secs: u32) {
        self.conntrack.now = secs;
    }

    #[inline]
    pub fn process<P: PacketBuf>(&mut self, snap: &Snapshot, burst: &mut Burst<P>) {
        self.parse.process(snap, burst);
        self.process_parsed(snap, burst);
    }

    /// The fast path over a received burst: what it forwards goes straight
    /// to `staging[out_port]` and leaves the burst; what is left (in
    /// order) still needs the full pipeline. Returns whether anything is
    /// left. A packet the fast path leaves can be overtaken by a later
    /// one of the same burst only if its flow mixes both kinds (say, some
    /// of its packets carry IP options), as a router's slow path does.
    #[inline]
    pub fn process_fast<P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        burst: &mut Burst<P>,
        staging: &mut [Vec<P>],
    ) -> bool {
        let n = burst.len();
        // Sessions expire at the pace of the traffic, before its lookups,
        // here for the whole burst (the full pipeline's `pre_route` does
        // not again for what is left).
        self.conntrack.expire_burst(n);
        self.conntrack.swept = true;
        let fast = self.fast.process(snap, &mut self.conntrack, burst, staging.len());
        if fast == 0 {
            return true;
        }
        if fast < n {
            burst.split_off(|_, m| m.verdict == Verdict::Forward, |_, p, m| staging[m.out_port as usize].push(p));
            return true;
        }
        burst.drain_to_queues(staging, |m| m.out_port as usize);
        self.conntrack.swept = false;
        false
    }

    /// The stages after parse (for packets parsed by another worker).
    #[inline]
    pub fn process_parsed<P: PacketBuf>(&mut self, snap: &Snapshot, burst: &mut Burst<P>) {
        self.conntrack.pre_route(snap, burst);
        self.route.process(snap, burst);
        self.conntrack.post_route(snap, burst);
        // Later fragments that waited for their first fragment's translation.
        if self.conntrack.take_reroute() {
            self.route.process(snap, burst);
        }
        self.neighbor.process(snap, burst);
        self.answer.process(snap, burst);
    }

    /// Stage counters in the order of [`STAGE_COUNTERS`].
    pub fn stage_counters(&self) -> [u64; STAGE_COUNTERS.len()] {
        let p = &self.parse.counters;
        let r = &self.route.counters;
        let f = self.fast.counters.forwarded;
        // Routed, then dropped by conntrack (see `FastCounters::new_dropped`).
        let routed = f + self.fast.counters.new_dropped;
        let c = &self.conntrack.counters;
        let t = &self.conntrack.sessions;
        let m = &self.conntrack.ports;
        [
            p.ipv4 + routed,
            p.ipv6,
            p.arp,
            p.vlan_priority_tagged,
            p.fragments,
            p.ipv4_options,
            r.forwarded + routed,
            r.local,
            r.ecmp,
            self.neighbor.counters.rewritten + f,
            f,
            self.fast.counters.tracked,
            self.fast.counters.new_flows,
            self.fast.counters.skipped,
            self.answer.counters.arp,
            self.answer.counters.echo,
            c.hits,
            c.new_flows,
            t.stats.inserted,
            t.stats.expired,
            t.len() as u64,
            c.masquerade,
            c.floating_in,
            c.floating_out,
            c.hairpin,
            c.inbound_mapping,
            c.icmp_errors,
            c.fragments,
            c.metadata,
            c.blocked,
            m.len() as u64,
            m.stats.preserved,
            m.stats.exhausted,
            c.lb_sessions,
            c.lb_no_member,
            self.handed_off,
            self.handed_in,
            // The exception path's, filled in by the worker.
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ]
    }
}

/// Sorts a processed burst: forwarded packets into `staging[out_port]`,
/// local ones counted and released (the punt ring arrives with the host
/// stack), drops counted by reason and released.
#[inline]
pub fn dispatch<P: PacketBuf>(burst: &mut Burst<P>, staging: &mut [Vec<P>], pool: &mut P::Pool, c: &mut Counters) {
    burst.drain(|p, m| match m.verdict {
        // Without a host stack nothing fragments: counted as before.
        Verdict::Forward if m.punt == Punt::Fragment as u8 => {
            c.drop(DropReason::NeedsFragmentation, 1);
            p.release(pool);
        }
        Verdict::Forward if (m.out_port as usize) < staging.len() => staging[m.out_port as usize].push(p),
        Verdict::Local => {
            c.local += 1;
            p.release(pool);
        }
        Verdict::Drop => {
            c.drops[DropReason::from_u8(m.reason) as usize] += 1;
            p.release(pool);
        }
        _ => {
            c.drop(DropReason::Internal, 1);
            p.release(pool);
        }
    });
}

/// Drops the host stack answers with an ICMP error.
#[inline]
fn answers_with_icmp(r: DropReason) -> bool {
    matches!(
        r,
        DropReason::NoRoute
            | DropReason::TtlExpired
            | DropReason::HopLimitExpired
            | DropReason::MtuExceeded
            | DropReason::PacketTooBig
            | DropReason::BlockedByRule
            | DropReason::ToManagement
    )
}

/// `dispatch` with a host stack attached: local packets, and forwarded ones
/// to be fragmented, go to the punt ring (rate-limited per class, refusals
/// counted as drops), and drops that call
/// for an ICMP error are punted too while the limit allows (still counted
/// under their own reason). Packets the worker answered itself
/// (`Punt::Answer`) go to `answers[port]`, to be sent with the host
/// stack's frames ([`transmit_host`]).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn dispatch_punt<P: WorkerBuf>(
    burst: &mut Burst<P>,
    staging: &mut [Vec<P>],
    answers: &mut [Vec<P>],
    pool: &mut P::Pool,
    c: &mut Counters,
    exc: &Exception,
    limiter: &mut PuntLimiter,
    worker: u16,
) {
    burst.drain(|p, m| {
        // What goes to the host stack, by class: local packets, and
        // forwarded ones it must fragment.
        let class = match (m.verdict, m.punt) {
            (Verdict::Forward, x) if x == Punt::Fragment as u8 => PuntClass::Fragment,
            (Verdict::Forward, _) if (m.out_port as usize) < staging.len() => {
                return staging[m.out_port as usize].push(p);
            }
            (Verdict::Local, x) if x == Punt::Answer as u8 => {
                c.local += 1;
                return match answers.get_mut(m.out_port as usize) {
                    Some(q) => q.push(p),
                    None => p.release(pool),
                };
            }
            (Verdict::Local, x) if x == Punt::Metadata as u8 => PuntClass::Metadata,
            (Verdict::Local, x) if x == Punt::Resolve as u8 => PuntClass::Resolve,
            (Verdict::Local, _) => PuntClass::Host,
            (Verdict::Drop, _) => {
                let r = DropReason::from_u8(m.reason);
                c.drops[r as usize] += 1;
                if answers_with_icmp(r) && limiter.allow(PuntClass::Error) {
                    let Some(pkt) = p.into_host(pool) else { return };
                    match exc.punt(Punted { pkt, meta: *m, class: PuntClass::Error, worker }) {
                        Ok(()) => limiter.punted[PuntClass::Error as usize] += 1,
                        // (Already counted under its drop reason.)
                        Err(back) => P::host_stock(pool).free(back.pkt),
                    }
                } else {
                    p.release(pool);
                }
                return;
            }
            _ => {
                c.drop(DropReason::Internal, 1);
                return p.release(pool);
            }
        };
        if !limiter.allow(class) {
            c.drop(DropReason::PuntLimited, 1);
            return p.release(pool);
        }
        // (A backend with its own buffers copies here: no host buffer
        // left counts as a full ring.)
        let Some(pkt) = p.into_host(pool) else {
            return c.drop(DropReason::PuntRingFull, 1);
        };
        match exc.punt(Punted { pkt, meta: *m, class, worker }) {
            Ok(()) => {
                c.local += 1;
                limiter.punted[class as usize] += 1;
            }
            Err(back) => {
                c.drop(DropReason::PuntRingFull, 1);
                P::host_stock(pool).free(back.pkt);
            }
        }
    });
}

/// Sends what the worker sends for the host: the host stack's frames and
/// the worker's own answers (`out[port]`). Not forwarded traffic, so not in
/// the forwarding counters; what finds no room is lost, as on a full NIC
/// queue (the asker retries). Returns how many were sent.
#[inline]
pub fn transmit_host<P: PacketBuf>(
    out: &mut [Vec<P>],
    tx: &mut [Option<Box<dyn TxQueue<P>>>],
    pool: &mut P::Pool,
) -> u64 {
    let mut sent = 0;
    for (port, q) in out.iter_mut().enumerate() {
        if q.is_empty() {
            continue;
        }
        if let Some(Some(tx)) = tx.get_mut(port) {
            sent += tx.tx_burst(pool, q) as u64;
            if !q.is_empty() {
                sent += tx.tx_burst(pool, q) as u64;
            }
        }
        for p in q.drain(..) {
            p.release(pool);
        }
    }
    sent
}

/// Sends every non-empty staging queue; a queue that stays full after one
/// retry drops the rest with `tx: queue full`.
#[inline]
pub fn transmit<P: PacketBuf>(
    staging: &mut [Vec<P>],
    tx: &mut [Option<Box<dyn TxQueue<P>>>],
    pool: &mut P::Pool,
    c: &mut Counters,
) {
    for (port, st) in staging.iter_mut().enumerate() {
        if st.is_empty() {
            continue;
        }
        let mut sent = 0;
        match tx.get_mut(port).and_then(|q| q.as_mut()) {
            Some(q) => {
                sent += q.tx_burst(pool, st);
                if !st.is_empty() {
                    sent += q.tx_burst(pool, st);
                }
                c.drop(DropReason::TxFull, st.len() as u64);
            }
            None => c.drop(DropReason::Internal, st.len() as u64),
        }
        c.tx += sent as u64;
        if let Some(n) = c.port_tx.get_mut(port) {
            *n += sent as u64;
        }
        for p in st.drain(..) {
            p.release(pool);
        }
    }
}
