//! A transmit sink that frees every packet at once (DPDK's net_null): the
//! I/O floor for benchmarks, where the worker counts what it sent.

use super::TxQueue;
use crate::packet::{PacketBuf, Pkt, Pool};

#[derive(Default)]
pub struct NullTx;

impl TxQueue for NullTx {
    #[inline]
    fn tx_burst(&mut self, pool: &mut Pool, pkts: &mut Vec<Pkt>) -> usize {
        let n = pkts.len();
        for p in pkts.drain(..) {
            p.release(pool);
        }
        n
    }
}
