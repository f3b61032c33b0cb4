//! The exception path: rings between the workers and the host stack on the
//! control side.
//!
//! - **punt** (worker → host): packets for the appliance itself, packets
//!   waiting for a neighbour, and dropped packets the host answers with an
//!   ICMP error. Each class is rate-limited in the worker by a token bucket,
//!   so a flood of ARP or TTL-expired traffic costs the worker one ring push
//!   per allowed packet and nothing else; what the limit or a full ring
//!   refuses is counted.
//! - **inject** (host → worker): complete frames the worker sends on the
//!   named port with its own transmit queue (a worker owns its queues; the
//!   host never writes a port itself).
//! - **recycle** (host → worker): punted buffers handed back, so a worker's
//!   pool does not drain into the host stack.
//!
//! All three are bounded lock-free queues (`crossbeam::queue::ArrayQueue`).

use crate::packet::{Meta, Pkt, Pool};
use crossbeam::queue::ArrayQueue;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the host is asked to do with a punted packet.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PuntClass {
    /// For the appliance: ARP, ICMP echo, ND, anything to its addresses.
    Host = 0,
    /// Redirected to the metadata proxy.
    Metadata = 1,
    /// Forwarded, but the next hop's MAC is unknown: hold and resolve.
    Resolve = 2,
    /// Dropped; the host answers with an ICMP error (`meta.reason` says why).
    Error = 3,
    /// Forwarded, rewritten, but larger than the egress MTU with DF clear:
    /// the host fragments it and sends the fragments (RFC 791).
    Fragment = 4,
}

impl PuntClass {
    pub const COUNT: usize = 5;
}

/// A packet on the punt ring, with what the pipeline learned of it.
pub struct Punted {
    pub pkt: Pkt,
    pub meta: Meta,
    pub class: PuntClass,
    pub worker: u16,
}

/// Packets per second each worker may punt, by class.
#[derive(Debug, Clone, Copy)]
pub struct PuntLimits {
    pub per_sec: [u32; PuntClass::COUNT],
}

impl Default for PuntLimits {
    fn default() -> Self {
        // Host traffic (ARP, pings, the metadata proxy's TCP) is answered at
        // line rate of a management path; ICMP errors follow Linux's default
        // of 1,000 per second. Fragmentation is a slow path for the rare
        // oversized packet whose sender did not ask for path MTU discovery.
        PuntLimits { per_sec: [200_000, 100_000, 20_000, 1_000, 100_000] }
    }
}

pub struct Exception {
    punt: Vec<ArrayQueue<Punted>>,
    inject: Vec<ArrayQueue<(Pkt, u16)>>,
    recycle: Vec<ArrayQueue<Pkt>>,
    pub limits: PuntLimits,
    /// Set by the host stack while it runs; workers punt only then.
    active: AtomicBool,
}

impl Exception {
    pub fn new(workers: usize, depth: usize, limits: PuntLimits) -> Exception {
        let n = workers.max(1);
        Exception {
            punt: (0..n).map(|_| ArrayQueue::new(depth)).collect(),
            inject: (0..n).map(|_| ArrayQueue::new(depth)).collect(),
            recycle: (0..n).map(|_| ArrayQueue::new(depth)).collect(),
            limits,
            active: AtomicBool::new(false),
        }
    }

    pub fn workers(&self) -> usize {
        self.punt.len()
    }

    pub fn set_active(&self, on: bool) {
        self.active.store(on, Ordering::Release);
    }

    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn punt(&self, p: Punted) -> Result<(), Punted> {
        self.punt[p.worker as usize % self.punt.len()].push(p)
    }

    pub fn pop_punted(&self, worker: usize) -> Option<Punted> {
        self.punt.get(worker)?.pop()
    }

    /// Queues a frame for `port` on `worker`'s transmit path.
    pub fn inject(&self, worker: usize, pkt: Pkt, port: u16) -> Result<(), Pkt> {
        match self.inject.get(worker) {
            Some(q) => q.push((pkt, port)).map_err(|(p, _)| p),
            None => Err(pkt),
        }
    }

    #[inline]
    pub fn pop_injected(&self, worker: usize) -> Option<(Pkt, u16)> {
        self.inject.get(worker)?.pop()
    }

    /// Gives a buffer back to the worker it came from (dropped if full).
    pub fn recycle(&self, worker: usize, pkt: Pkt) {
        if let Some(q) = self.recycle.get(worker) {
            let _ = q.push(pkt);
        }
    }

    /// Moves recycled buffers into a worker's pool while it has room.
    #[inline]
    pub fn refill(&self, worker: usize, pool: &mut Pool) {
        let Some(q) = self.recycle.get(worker) else { return };
        while pool.available() < pool.capacity() {
            match q.pop() {
                Some(p) => pool.free(p),
                None => break,
            }
        }
    }
}

/// A worker's token buckets, one per class, refilled by elapsed time.
/// Tokens are counted in thousandths of a packet, so slow rates accrue
/// exactly at millisecond ticks.
#[derive(Debug, Clone)]
pub struct PuntLimiter {
    milli: [u64; PuntClass::COUNT],
    rate: [u32; PuntClass::COUNT],
    last_ms: u64,
    /// Packets punted, and refused by the limit, by class.
    pub punted: [u64; PuntClass::COUNT],
    pub limited: [u64; PuntClass::COUNT],
}

impl PuntLimiter {
    pub fn new(limits: PuntLimits) -> PuntLimiter {
        // Start full: a tenth of a second's worth (bursts after a quiet spell).
        PuntLimiter {
            milli: limits.per_sec.map(Self::cap),
            rate: limits.per_sec,
            last_ms: 0,
            punted: [0; PuntClass::COUNT],
            limited: [0; PuntClass::COUNT],
        }
    }

    /// Bucket depth: a tenth of a second at `rate`, at least one packet.
    fn cap(rate: u32) -> u64 {
        (rate as u64 * 100).max(1000)
    }

    /// Adds the tokens earned since the last call (`now_ms`: a monotonic clock).
    #[inline]
    pub fn tick(&mut self, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.last_ms);
        if dt == 0 {
            return;
        }
        self.last_ms = now_ms;
        for (t, &r) in self.milli.iter_mut().zip(&self.rate) {
            *t = (*t + r as u64 * dt.min(1000)).min(Self::cap(r));
        }
    }

    /// Takes one token of `class`; false (counted) when there is none.
    #[inline]
    pub fn allow(&mut self, class: PuntClass) -> bool {
        let c = class as usize;
        if self.milli[c] < 1000 {
            self.limited[c] += 1;
            return false;
        }
        self.milli[c] -= 1000;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::PacketBuf;

    #[test]
    fn the_limiter_admits_the_rate_and_no_more() {
        let mut l = PuntLimiter::new(PuntLimits { per_sec: [1000, 1000, 1000, 100, 1000] });
        let mut ok = 0;
        for ms in 0..1000u64 {
            l.tick(ms + 1);
            for _ in 0..10 {
                ok += l.allow(PuntClass::Error) as u32;
            }
        }
        // 100 per second plus the initial tenth of a second.
        assert!((100..=111).contains(&ok), "{ok}");
        let mut slow = PuntLimiter::new(PuntLimits { per_sec: [1; 5] });
        assert!(slow.allow(PuntClass::Host) && !slow.allow(PuntClass::Host));
        slow.tick(999);
        assert!(!slow.allow(PuntClass::Host));
        slow.tick(1000);
        assert!(slow.allow(PuntClass::Host));
        assert!(l.limited[PuntClass::Error as usize] > 9_000);
        // Other classes keep their own buckets.
        assert!(l.allow(PuntClass::Host));
    }

    #[test]
    fn rings_move_packets_and_buffers() {
        let x = Exception::new(2, 4, PuntLimits::default());
        let p = Pkt::from_slice(&[1, 2, 3]).unwrap();
        x.inject(1, p, 3).unwrap();
        let (p, port) = x.pop_injected(1).unwrap();
        assert_eq!((p.len(), port), (3, 3));
        assert!(x.pop_injected(0).is_none());
        x.recycle(0, p);
        let mut pool = Pool::with_fill(4, 0);
        x.refill(0, &mut pool);
        assert_eq!(pool.available(), 1);
    }
}
