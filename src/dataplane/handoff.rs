//! Cross-worker handoff: a packet whose flow another worker owns (see
//! `stage::conntrack::owner`) is moved, with its parsed metadata, onto
//! that worker's lock-free ring. Buffers travel with the packets, so a
//! shared spare stack rebalances the per-worker pools (a worker that gives
//! away more buffers than it receives takes spares back).

use crate::packet::{Burst, Meta, Pkt, WorkerBuf};
use crossbeam::queue::ArrayQueue;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Handoff<P: WorkerBuf = Pkt> {
    rings: Vec<ArrayQueue<(P, Meta)>>,
    spare: ArrayQueue<P>,
    /// Workers that have stopped receiving (they still drain their ring).
    stopped: AtomicUsize,
}

impl<P: WorkerBuf> Handoff<P> {
    /// Rings of `depth` packets for `workers` workers.
    pub fn new(workers: usize, depth: usize) -> Handoff<P> {
        Handoff {
            rings: (0..workers).map(|_| ArrayQueue::new(depth.max(1))).collect(),
            spare: ArrayQueue::new((depth * workers).max(1)),
            stopped: AtomicUsize::new(0),
        }
    }

    /// Marks a worker as no longer receiving from its ports.
    pub fn stop_receiving(&self) {
        self.stopped.fetch_add(1, Ordering::AcqRel);
    }

    /// True once every worker has stopped receiving and `me`'s ring is
    /// empty: nothing more can arrive for it.
    pub fn drained(&self, me: usize) -> bool {
        self.stopped.load(Ordering::Acquire) == self.rings.len() && self.rings.get(me).is_none_or(|r| r.is_empty())
    }

    pub fn workers(&self) -> usize {
        self.rings.len()
    }

    /// Queues a packet for worker `to`; gives it back when the ring is full.
    #[inline]
    pub fn send(&self, to: usize, p: P, m: Meta) -> Result<(), P> {
        match self.rings.get(to) {
            Some(r) => r.push((p, m)).map_err(|(p, _)| p),
            None => Err(p),
        }
    }

    /// Moves packets queued for worker `me` into `burst`, up to its room;
    /// returns how many.
    #[inline]
    pub fn recv_into(&self, me: usize, burst: &mut Burst<P>) -> usize {
        let Some(ring) = self.rings.get(me) else { return 0 };
        let mut n = 0;
        while burst.room() > 0 {
            let Some((p, m)) = ring.pop() else { break };
            let _ = burst.push_with_meta(p, m);
            n += 1;
        }
        n
    }

    /// Keeps `pool` between a low and a high mark of `burst`-sized steps,
    /// through the shared spare stack. Buffers from a shared pool (DPDK
    /// mbufs) need none of this.
    pub fn balance(&self, pool: &mut P::Pool, burst: usize) {
        if !P::PRIVATE_POOLS {
            return;
        }
        let cap = P::pool_capacity(pool);
        let (low, high) = (cap / 4, cap * 3 / 4);
        for _ in 0..4 * burst {
            if P::pool_available(pool) < low {
                match self.spare.pop() {
                    Some(p) => p.release(pool),
                    None => break,
                }
            } else if P::pool_available(pool) > high {
                let Some(p) = P::pool_alloc(pool) else { break };
                if let Err(p) = self.spare.push(p) {
                    p.release(pool);
                    break;
                }
            } else {
                break;
            }
        }
    }

    /// Whether the ring to any worker is too full to take another burst
    /// (the sender then stops receiving for a turn: backpressure, as a
    /// NIC ring would exert, instead of drops between workers).
    pub fn congested(&self, burst: usize) -> bool {
        self.rings.iter().any(|r| r.len() + burst > r.capacity())
    }
}
