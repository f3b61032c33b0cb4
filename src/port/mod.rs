//! Ports: where bursts come from and go to. A backend hands each worker its
//! own receive and transmit queues, so the hot path shares nothing writable.
//!
//! Backends: `mem` (in-process rings, for tests and chaining), `pcap`
//! (replay a capture from memory, write captures), `null` (a sink that counts
//! and frees, like DPDK's net_null).

pub mod mem;
pub mod null;
pub mod pcap;

use crate::packet::{Burst, PacketBuf, Pkt};

/// A receive queue owned by one worker.
pub trait RxQueue<P: PacketBuf = Pkt>: Send {
    /// Appends up to `burst.room()` packets, tagged with `port`; returns how many.
    fn rx_burst(&mut self, pool: &mut P::Pool, burst: &mut Burst<P>, port: u16) -> usize;
}

/// A transmit queue owned by one worker.
pub trait TxQueue<P: PacketBuf = Pkt>: Send {
    /// Sends packets from the front of `pkts`, removing those it took; the
    /// ones left did not fit (queue full). Returns how many were sent.
    fn tx_burst(&mut self, pool: &mut P::Pool, pkts: &mut Vec<P>) -> usize;
}
