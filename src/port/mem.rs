//! In-memory ports: bounded lock-free rings between the data plane and a peer
//! (a test, a generator, another appliance). Buffers move by pointer, never
//! copied. The peer side spreads frames over the receive queues by flow hash
//! (software RSS), as a NIC with RSS would.

use super::{PortSpec, QueueCounters, RxQueue, SoftPort, TxQueue};
use crate::packet::{Burst, PacketBuf, Pkt, Pool, rss_hash};
use crossbeam::queue::ArrayQueue;
use std::sync::Arc;

type Ring = Arc<ArrayQueue<Pkt>>;

/// The data plane's side: one receive queue per worker, one transmit queue
/// per worker, and the port object that sums their counters.
pub struct MemPort {
    pub rx: Vec<MemRx>,
    pub tx: Vec<MemTx>,
    pub port: Arc<SoftPort>,
}

/// The peer's side: injects frames into the port and collects what it sends.
pub struct MemPeer {
    to_port: Vec<Ring>,
    from_port: Vec<Ring>,
    next: usize,
}

/// A port with `queues` receive and transmit queues of `depth` packets each.
pub fn mem_port(spec: PortSpec, queues: usize, depth: usize) -> (MemPort, MemPeer) {
    let queues = queues.max(1);
    let to_port: Vec<Ring> = (0..queues).map(|_| Arc::new(ArrayQueue::new(depth.max(1)))).collect();
    let from_port: Vec<Ring> = (0..queues).map(|_| Arc::new(ArrayQueue::new(depth.max(1)))).collect();
    let rx: Vec<MemRx> = to_port.iter().map(|r| MemRx { ring: r.clone(), counters: Arc::default() }).collect();
    let tx: Vec<MemTx> = from_port.iter().map(|r| MemTx { ring: r.clone(), counters: Arc::default() }).collect();
    let port = Arc::new(SoftPort::new(
        spec,
        rx.iter().map(|q| q.counters.clone()).collect(),
        tx.iter().map(|q| q.counters.clone()).collect(),
    ));
    (MemPort { rx, tx, port }, MemPeer { to_port, from_port, next: 0 })
}

impl MemPeer {
    /// Queues a frame on the receive queue its flow hashes to; gives it back
    /// when that queue is full.
    pub fn send(&self, p: Pkt) -> Result<(), Pkt> {
        let q = rss_hash(p.data()) as usize % self.to_port.len();
        self.to_port[q].push(p)
    }

    /// A frame the port transmitted, taking the queues in turn.
    pub fn recv(&mut self) -> Option<Pkt> {
        for _ in 0..self.from_port.len() {
            let q = self.next;
            self.next = (self.next + 1) % self.from_port.len();
            if let Some(p) = self.from_port[q].pop() {
                return Some(p);
            }
        }
        None
    }

    /// Frames waiting to be received by the data plane.
    pub fn pending(&self) -> usize {
        self.to_port.iter().map(|r| r.len()).sum()
    }
}

pub struct MemRx {
    ring: Ring,
    counters: Arc<QueueCounters>,
}

impl RxQueue for MemRx {
    #[inline]
    fn rx_burst(&mut self, _pool: &mut Pool, burst: &mut Burst, port: u16) -> usize {
        let (mut n, mut bytes) = (0, 0);
        while burst.room() > 0 {
            let Some(p) = self.ring.pop() else { break };
            bytes += p.len();
            // Cannot fail: room was checked.
            let _ = burst.push(p, port);
            n += 1;
        }
        if n > 0 {
            self.counters.add(n as u64, bytes as u64);
        }
        n
    }

    fn counters(&self) -> &Arc<QueueCounters> {
        &self.counters
    }
}

pub struct MemTx {
    ring: Ring,
    counters: Arc<QueueCounters>,
}

impl TxQueue for MemTx {
    #[inline]
    fn tx_burst(&mut self, pool: &mut Pool, pkts: &mut Vec<Pkt>) -> usize {
        // Each transmit ring has one producer (its worker): the free room can
        // only grow while we push, so pushing `room` packets cannot fail.
        let n = (self.ring.capacity() - self.ring.len()).min(pkts.len());
        let mut bytes = 0;
        for p in pkts.drain(..n) {
            bytes += p.len();
            if let Err(p) = self.ring.push(p) {
                self.counters.add_dropped(1);
                p.release(pool);
            }
        }
        self.counters.add(n as u64, bytes as u64);
        n
    }

    fn counters(&self) -> &Arc<QueueCounters> {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Mac;
    use crate::port::Port;

    fn spec() -> PortSpec {
        PortSpec { name: "ge1".into(), mac: Mac([2, 0, 0, 0, 0, 1]), mtu: 1500 }
    }

    #[test]
    fn frames_cross_in_order_and_full_queues_push_back() {
        let (mut port, mut peer) = mem_port(spec(), 1, 4);
        for i in 0..4u8 {
            peer.send(Pkt::from_slice(&[i; 60]).unwrap()).unwrap();
        }
        assert!(peer.send(Pkt::from_slice(&[9; 60]).unwrap()).is_err());
        let mut pool = Pool::new(1);
        let mut burst: Burst = Burst::new(3);
        assert_eq!(port.rx[0].rx_burst(&mut pool, &mut burst, 5), 3);
        assert_eq!(burst.meta(0).in_port, 5);
        let mut out = Vec::new();
        burst.drain(|p, _| out.push(p));
        out.push(Pkt::from_slice(&[7; 60]).unwrap());
        out.push(Pkt::from_slice(&[8; 60]).unwrap());
        assert_eq!(port.tx[0].tx_burst(&mut pool, &mut out), 4);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data()[0], 8);
        let got: Vec<u8> = std::iter::from_fn(|| peer.recv()).map(|p| p.data()[0]).collect();
        assert_eq!(got, [0, 1, 2, 7]);
        let s = port.port.stats();
        assert_eq!((s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes), (3, 180, 4, 240));
        assert_eq!(port.port.spec().name, "ge1");
    }

    #[test]
    fn software_rss_keeps_a_flow_on_one_queue() {
        let (mut port, peer) = mem_port(spec(), 4, 1024);
        let frame = |sport: u16| {
            let mut v = Vec::new();
            etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .udp(sport, 53)
                .write(&mut v, &[0; 10])
                .unwrap();
            v
        };
        for i in 0..400u16 {
            peer.send(Pkt::from_slice(&frame(1000 + i % 8)).unwrap()).unwrap();
        }
        let mut pool = Pool::new(1);
        let mut used = 0;
        for q in port.rx.iter_mut() {
            let mut burst: Burst = Burst::new(256);
            let mut ports = std::collections::HashSet::new();
            let mut packets = 0;
            while q.rx_burst(&mut pool, &mut burst, 0) > 0 {
                burst.drain(|p, _| {
                    ports.insert(u16::from_be_bytes([p.data()[34], p.data()[35]]));
                    packets += 1;
                });
            }
            used += !ports.is_empty() as usize;
            // 8 flows of 50 packets each: a flow is never split over queues.
            assert_eq!(packets, ports.len() * 50);
        }
        assert!(used >= 2, "flows should spread over queues");
    }
}
