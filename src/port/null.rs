//! A transmit sink that frees every packet at once (DPDK's net_null): the
//! I/O floor for benchmarks, where the worker counts what it sent.

use super::{QueueCounters, TxQueue};
use crate::packet::PacketBuf;
use std::sync::Arc;

#[derive(Default)]
pub struct NullTx {
    counters: Arc<QueueCounters>,
}

impl<P: PacketBuf> TxQueue<P> for NullTx {
    #[inline]
    fn tx_burst(&mut self, pool: &mut P::Pool, pkts: &mut Vec<P>) -> usize {
        let n = pkts.len();
        let mut bytes = 0;
        for p in pkts.drain(..) {
            bytes += p.len();
            p.release(pool);
        }
        self.counters.add(n as u64, bytes as u64);
        n
    }

    fn counters(&self) -> &Arc<QueueCounters> {
        &self.counters
    }
}
