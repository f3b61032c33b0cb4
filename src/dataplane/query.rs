//! Listing sessions without stopping a worker: the control thread posts a
//! query (with its answer buffer allocated up front) to each worker's
//! mailbox; the worker scans its table a bounded slice at a time between
//! bursts, fills the buffer without allocating, and posts it back.

use crossbeam::queue::ArrayQueue;
use serde::Serialize;

/// Which sessions to list. `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub proto: Option<u8>,
    /// Matches any address of either direction's key (IPv4 in the low bits).
    pub addr: Option<u128>,
    /// Matches any port (or ICMP identifier) of either direction.
    pub port: Option<u16>,
}

/// One session as listed.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub worker: usize,
    pub proto: u8,
    pub v6: bool,
    /// (src, sport, dst, dport) of the original direction, as it arrived.
    pub original: (u128, u16, u128, u16),
    /// The reply direction, as it arrives.
    pub reply: (u128, u16, u128, u16),
    pub state: &'static str,
    pub nat: &'static str,
    /// Seconds until it expires unless a packet arrives.
    pub expires_in: u32,
}

pub struct SessionQuery {
    pub filter: SessionFilter,
    /// Filled up to its capacity (the listing limit); never grown.
    pub out: Vec<SessionView>,
    /// Sessions that matched (may exceed `out.len()`).
    pub matched: usize,
    /// Sessions in the table when the scan ended.
    pub live: usize,
}

/// A worker's query mailbox (one query at a time).
pub struct Mailbox {
    pub request: ArrayQueue<Box<SessionQuery>>,
    pub answer: ArrayQueue<Box<SessionQuery>>,
}

impl Default for Mailbox {
    fn default() -> Self {
        Mailbox { request: ArrayQueue::new(1), answer: ArrayQueue::new(1) }
    }
}
