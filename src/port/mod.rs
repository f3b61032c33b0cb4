//! Ports: where bursts come from and go to. A backend hands each worker its
//! own receive and transmit queues, so the hot path shares nothing writable.
//!
//! Backends: `mem` (in-process rings, for tests and chaining), `pcap`
//! (replay a capture from memory, write captures), `null` (a sink that counts
//! and frees, like DPDK's net_null), `af_packet` (a Linux interface through
//! TPACKET_V3/V2 rings), `dpdk` (DPDK poll-mode drivers, feature `dpdk`).

pub mod af_packet;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod mem;
pub mod null;
pub mod pcap;

use crate::packet::{Burst, Mac, PacketBuf, Pkt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What a port is: its logical name (`ge0`, ...), MAC and IP MTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub name: String,
    pub mac: Mac,
    pub mtu: u16,
}

/// Counters of one queue, on a cache line of their own. Only the thread
/// owning the queue writes them (a load and a store, no locked instruction).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct QueueCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
}

impl QueueCounters {
    #[inline]
    pub fn add(&self, packets: u64, bytes: u64) {
        self.packets.store(self.packets.load(Relaxed) + packets, Relaxed);
        self.bytes.store(self.bytes.load(Relaxed) + bytes, Relaxed);
    }

    /// Packets the backend itself lost (no buffer, oversize, write error).
    #[inline]
    pub fn add_dropped(&self, n: u64) {
        self.dropped.store(self.dropped.load(Relaxed) + n, Relaxed);
    }

    /// (packets, bytes, dropped).
    pub fn read(&self) -> (u64, u64, u64) {
        (self.packets.load(Relaxed), self.bytes.load(Relaxed), self.dropped.load(Relaxed))
    }
}

/// A port's counters, summed over its queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
}

impl PortStats {
    /// The sum of a port's receive and transmit queues' counters.
    pub fn of_queues(rx: &[Arc<QueueCounters>], tx: &[Arc<QueueCounters>]) -> PortStats {
        let mut s = PortStats::default();
        for q in rx {
            let (p, b, d) = q.read();
            s.rx_packets += p;
            s.rx_bytes += b;
            s.rx_dropped += d;
        }
        for q in tx {
            let (p, b, d) = q.read();
            s.tx_packets += p;
            s.tx_bytes += b;
            s.tx_dropped += d;
        }
        s
    }
}

/// A port as the control side sees it: identity, link and counters. The
/// queues themselves belong to the workers.
pub trait Port: Send + Sync {
    fn spec(&self) -> &PortSpec;
    fn link_up(&self) -> bool {
        true
    }
    fn stats(&self) -> PortStats;
}

/// A receive queue owned by one worker.
pub trait RxQueue<P: PacketBuf = Pkt>: Send {
    /// Appends up to `burst.room()` packets, tagged with `port`; returns how many.
    fn rx_burst(&mut self, pool: &mut P::Pool, burst: &mut Burst<P>, port: u16) -> usize;
    /// This queue's counters, shared with the port object.
    fn counters(&self) -> &Arc<QueueCounters>;
}

/// A transmit queue owned by one worker.
pub trait TxQueue<P: PacketBuf = Pkt>: Send {
    /// Sends packets from the front of `pkts`, removing those it took; the
    /// ones left did not fit (queue full). Returns how many were sent.
    fn tx_burst(&mut self, pool: &mut P::Pool, pkts: &mut Vec<P>) -> usize;
    fn counters(&self) -> &Arc<QueueCounters>;
}

/// A port made of software queues (mem, pcap, null): its spec and the
/// counters of the queues handed to the workers.
pub struct SoftPort {
    spec: PortSpec,
    rx: Vec<Arc<QueueCounters>>,
    tx: Vec<Arc<QueueCounters>>,
}

impl SoftPort {
    pub fn new(spec: PortSpec, rx: Vec<Arc<QueueCounters>>, tx: Vec<Arc<QueueCounters>>) -> SoftPort {
        SoftPort { spec, rx, tx }
    }
}

impl Port for SoftPort {
    fn spec(&self) -> &PortSpec {
        &self.spec
    }
    fn stats(&self) -> PortStats {
        PortStats::of_queues(&self.rx, &self.tx)
    }
}
