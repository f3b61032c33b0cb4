//! The host stack: the appliance's own IPv4 presence on its ports, fed by
//! the workers' punt rings and answering through their inject rings.
//!
//! - ARP: answers for the router's addresses on the port they belong to
//!   and for the floating IPs on the external port; resolves next hops on
//!   demand, holding the packets that wait (16 per next hop, 4,096 in all,
//!   dropped and counted after three unanswered requests); learns from
//!   requests aimed at us and from replies to what it asked; refreshes entries in use after
//!   60 s and forgets those unconfirmed for 90 s; publishes what it knows
//!   to the workers with a new snapshot; sends gratuitous ARP for every
//!   address and floating IP when a new document takes effect.
//! - ICMP: echo replies for the router's IPv4 addresses, and the errors the
//!   data path asks for: time exceeded, network unreachable, fragmentation
//!   needed (with the egress MTU), administratively prohibited. Never about
//!   an ICMP error, a later fragment, or a packet from a source that cannot
//!   be answered (RFC 1812 4.3.2.7); at most `ICMP_ERRORS_PER_SEC`, and
//!   per destination what `PeerLimiter` allows.
//!
//! It runs on its own thread beside the API's, polling the rings and
//! sleeping briefly when they are empty.

use super::health::HealthChecker;
use super::metadata::MetadataProxy;
use super::state::Control;
use crate::dataplane::{Exception, PuntClass, Punted, Snapshots};
use crate::packet::checksum::{checksum, fold, pseudo_v6, sum};
use crate::packet::ethernet::{arp_frame, arp_reply};
use crate::packet::frag::fragment_v4;
use crate::packet::{L3, Mac, PacketBuf, Pkt};
use crate::stage::nat::{Tuple4, rewrite_v4};
use crate::stage::{AdjKind, DropReason, PortRole, Snapshot};
use crate::table::{NeighborSource, NeighborTable};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

const HOLD_PER_NEXT_HOP: usize = 16;
const HOLD_TOTAL: usize = 4096;
/// Punted buffers kept per worker for frames the stack sends.
const SPARE_PER_WORKER: usize = 256;
const ARP_TRIES: u32 = 3;
const ARP_RETRY: Duration = Duration::from_secs(1);
const REACHABLE: Duration = Duration::from_secs(60);
const STALE_LIMIT: Duration = Duration::from_secs(90);
const ICMP_ERRORS_PER_SEC: u32 = 1000;
/// An ICMP error quotes at most this much, so it fits in 576 bytes (RFC 1812).
const ICMP_QUOTE: usize = 576 - 20 - 8;
/// ICMPv6 errors quote up to the minimum IPv6 MTU (RFC 4443 2.4 c).
const ICMP6_QUOTE: usize = 1280 - 40 - 8;
/// Unsolicited router advertisements (RFC 4861 MinRtrAdvInterval 200 s).
const RA_INTERVAL: Duration = Duration::from_secs(200);
/// IPv4 addresses in the neighbour maps: ::ffff:a.b.c.d.
const V4_MAPPED: u128 = 0xffff_0000_0000;

/// What the host stack did, for `/metrics` and `ctl`.
#[derive(Default)]
pub struct HostStats {
    pub arp_replies: AtomicU64,
    pub arp_requests: AtomicU64,
    pub gratuitous_arp: AtomicU64,
    pub neighbors_learned: AtomicU64,
    pub neighbors_expired: AtomicU64,
    pub echo_replies: AtomicU64,
    pub icmp_errors: AtomicU64,
    pub icmp_errors_limited: AtomicU64,
    pub held: AtomicU64,
    pub held_sent: AtomicU64,
    pub held_dropped: AtomicU64,
    pub inject_full: AtomicU64,
    pub not_handled: AtomicU64,
    pub neighbor_solicitations: AtomicU64,
    pub neighbor_advertisements: AtomicU64,
    pub router_advertisements: AtomicU64,
    pub metadata_requests: AtomicU64,
    pub metadata_errors: AtomicU64,
    pub fragmented: AtomicU64,
    pub fragments_sent: AtomicU64,
    pub fragment_errors: AtomicU64,
}

impl HostStats {
    /// The counters, the ARP and echo replies counting those the workers
    /// sent themselves (`stage`: the workers' summed stage counters, whose
    /// answer-stage entries are added; empty: the host stack's alone).
    pub fn list(&self, stage: &[u64]) -> Vec<(&'static str, u64)> {
        let answered = |name: &str| {
            crate::dataplane::STAGE_COUNTERS.iter().position(|k| *k == name).and_then(|i| stage.get(i)).copied()
        };
        let arp = answered("answer: arp requests answered by the worker").unwrap_or(0);
        let echo = answered("answer: echo requests answered by the worker").unwrap_or(0);
        vec![
            ("arp replies sent", self.arp_replies.load(Relaxed) + arp),
            ("arp requests sent", self.arp_requests.load(Relaxed)),
            ("gratuitous arp sent", self.gratuitous_arp.load(Relaxed)),
            ("neighbours learned", self.neighbors_learned.load(Relaxed)),
            ("neighbours expired", self.neighbors_expired.load(Relaxed)),
            ("icmp echo replies sent", self.echo_replies.load(Relaxed) + echo),
            ("icmp errors sent", self.icmp_errors.load(Relaxed)),
            ("icmp errors over the rate limit", self.icmp_errors_limited.load(Relaxed)),
            ("packets held for resolution", self.held.load(Relaxed)),
            ("held packets sent", self.held_sent.load(Relaxed)),
            ("held packets dropped unresolved", self.held_dropped.load(Relaxed)),
            ("frames lost on a full inject ring", self.inject_full.load(Relaxed)),
            ("punted packets not handled", self.not_handled.load(Relaxed)),
            ("neighbour solicitations sent", self.neighbor_solicitations.load(Relaxed)),
            ("neighbour advertisements sent", self.neighbor_advertisements.load(Relaxed)),
            ("router advertisements sent", self.router_advertisements.load(Relaxed)),
            ("metadata requests proxied", self.metadata_requests.load(Relaxed)),
            ("metadata requests answered with an error", self.metadata_errors.load(Relaxed)),
            ("packets fragmented", self.fragmented.load(Relaxed)),
            ("fragments sent", self.fragments_sent.load(Relaxed)),
            ("packets that could not be fragmented", self.fragment_errors.load(Relaxed)),
        ]
    }
}

struct Entry {
    mac: Mac,
    confirmed: Instant,
    probed: Option<Instant>,
}

struct Pending {
    held: VecDeque<(Pkt, crate::packet::Meta, u16)>,
    tries: u32,
    last: Instant,
}

pub struct HostStack {
    exc: Arc<Exception>,
    control: Arc<Control>,
    snapshots: Snapshots,
    stats: Arc<HostStats>,
    /// Keyed by port and address (IPv4 as ::ffff:a.b.c.d, see `v4key`).
    learned: HashMap<(u16, u128), Entry>,
    pending: HashMap<(u16, u128), Pending>,
    /// When router advertisements were last sent.
    last_ra: Option<Instant>,
    /// TCP to 169.254.169.254:80, terminated here and proxied.
    metadata: MetadataProxy,
    /// Punted buffers by the worker they came from (see `send_frame`).
    spare: Vec<Vec<Pkt>>,
    metadata_pending: bool,
    held_total: usize,
    dirty: bool,
    generation: u64,
    /// ICMP error tokens and when they were last topped up.
    icmp_tokens: u32,
    icmp_refill: Instant,
    /// The per-destination budget on top of the global one.
    icmp_peers: PeerLimiter,
    /// Load-balancer health checks.
    health: HealthChecker,
    /// The members last published as down.
    health_published: std::collections::HashSet<String>,
}

/// Linux's per-destination ICMP error limit (`net.ipv4.icmp_ratelimit`,
/// 1 s, with a burst of 6, `XRLIM_BURST_FACTOR`): one host sending into a
/// black hole cannot take the whole global budget from the others. Path MTU
/// errors are not limited here, as in Linux (they must get through).
#[derive(Debug, Default)]
pub struct PeerLimiter {
    /// Destination → (credit in ms, last update).
    peers: HashMap<u128, (u64, Instant)>,
}

impl PeerLimiter {
    /// One error per this long per destination, after the burst.
    pub const INTERVAL_MS: u64 = 1000;
    pub const BURST: u64 = 6;
    /// Destinations remembered at once; idle ones are forgotten first.
    pub const MAX_PEERS: usize = 4096;

    pub fn allow(&mut self, dst: u128, now: Instant) -> bool {
        let cap = Self::INTERVAL_MS * Self::BURST;
        if self.peers.len() >= Self::MAX_PEERS && !self.peers.contains_key(&dst) {
            // A destination idle for a whole burst has its full credit:
            // forgetting it changes nothing.
            self.peers.retain(|_, (_, last)| now.duration_since(*last).as_millis() < cap as u128);
            if self.peers.len() >= Self::MAX_PEERS {
                // Too many at once: the global limit still holds.
                return true;
            }
        }
        let (credit, last) = self.peers.entry(dst).or_insert((cap, now));
        *credit = (*credit + now.duration_since(*last).as_millis() as u64).min(cap);
        *last = now;
        if *credit < Self::INTERVAL_MS {
            return false;
        }
        *credit -= Self::INTERVAL_MS;
        true
    }
}

impl HostStack {
    pub fn new(exc: Arc<Exception>, control: Arc<Control>) -> HostStack {
        let workers = exc.workers();
        let snapshots = control.snapshots();
        HostStack {
            exc,
            control,
            snapshots,
            stats: Arc::new(HostStats::default()),
            learned: HashMap::new(),
            pending: HashMap::new(),
            held_total: 0,
            dirty: false,
            generation: 0,
            icmp_tokens: ICMP_ERRORS_PER_SEC,
            icmp_refill: Instant::now(),
            icmp_peers: PeerLimiter::default(),
            health: HealthChecker::default(),
            health_published: Default::default(),
            last_ra: None,
            metadata: MetadataProxy::new(),
            spare: (0..workers).map(|_| Vec::with_capacity(SPARE_PER_WORKER)).collect(),
            metadata_pending: false,
        }
    }

    pub fn stats(&self) -> Arc<HostStats> {
        self.stats.clone()
    }

    /// Runs until `stop` is set.
    pub fn spawn(mut self, stop: Arc<AtomicBool>) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new().name("host-stack".into()).spawn(move || {
            self.exc.set_active(true);
            let mut last_tick = Instant::now();
            let mut idle = 0u32;
            while !stop.load(Relaxed) {
                let n = self.poll(Instant::now());
                if last_tick.elapsed() >= Duration::from_millis(100) {
                    last_tick = Instant::now();
                    self.tick(last_tick);
                }
                if n == 0 {
                    // Short naps while traffic is about, longer ones when
                    // quiet, so an idle appliance leaves the CPUs alone.
                    idle = idle.saturating_add(1);
                    std::thread::sleep(Duration::from_micros(if idle < 200 { 50 } else { 1000 }));
                } else {
                    idle = 0;
                }
            }
            self.exc.set_active(false);
        })
    }

    /// Handles what the workers punted; returns how many packets.
    pub fn poll(&mut self, now: Instant) -> usize {
        let snap = self.snapshots.load_full();
        if snap.generation != self.generation {
            self.generation = snap.generation;
            self.gratuitous_arp(&snap);
            self.router_advertisements(&snap, None);
            self.last_ra = Some(now);
            self.health.sync(&snap, now);
            // A member that left while down and came back starts up: the
            // published set must follow.
            self.publish_health(now);
        }
        let mut n = 0;
        for w in 0..self.exc.workers() {
            while n < 4096 {
                let Some(p) = self.exc.pop_punted(w) else { break };
                n += 1;
                self.handle(&snap, p, now);
            }
        }
        if self.metadata_pending || self.metadata.busy() {
            self.metadata_pending = false;
            let cfg = self.control.current();
            let out = self.metadata.poll(cfg.as_deref(), |p| snap.port(p).map(|i| i.mac));
            for (port, frame) in out {
                self.send_frame(0, &frame, port);
            }
            let m = self.metadata.stats;
            self.stats.metadata_requests.store(m.requests, Relaxed);
            self.stats.metadata_errors.store(m.upstream_errors + m.refused, Relaxed);
        }
        if self.health.is_due(now) {
            let (out, changed) = self.health.poll(now);
            for ip in out {
                self.send_ip(&snap, ip, now);
            }
            if changed {
                self.publish_health(now);
            }
        }
        if self.dirty {
            self.publish();
        }
        n
    }

    /// Publishes the members out of their pools, when that set changed.
    fn publish_health(&mut self, now: Instant) {
        let down = self.health.down();
        if down != self.health_published {
            self.control.publish_health(down.clone());
            self.health_published = down;
            self.snapshots.load();
        }
        self.control.set_lb_health(self.health.view(now));
    }

    /// Sends an IPv4 packet the appliance originates (health checks): routed
    /// by the snapshot, held while its next hop is resolved.
    fn send_ip(&mut self, snap: &Snapshot, ip: Vec<u8>, now: Instant) {
        if ip.len() < 20 {
            return;
        }
        let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
        let Some((nh, adj)) = snap.egress_v4(dst) else { return };
        let hop = match adj.kind {
            AdjKind::Connected => dst,
            AdjKind::Gateway if adj.gw_v4 => adj.gw as u32,
            _ => return,
        };
        let port = adj.port;
        let Some(info) = snap.port(port) else { return };
        let mut frame = Vec::with_capacity(14 + ip.len());
        frame.extend_from_slice(&[0; 12]);
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
        frame.extend_from_slice(&ip);
        let mac = snap.neighbors.get_v4(port, hop).or_else(|| self.learned.get(&(port, v4key(hop))).map(|e| e.mac));
        match mac {
            Some(mac) => {
                frame[0..6].copy_from_slice(&mac.0);
                frame[6..12].copy_from_slice(&info.mac.0);
                self.send_frame(0, &frame, port);
            }
            None => {
                let mut pkt = self.spare.get_mut(0).and_then(|s| s.pop()).unwrap_or_default();
                if !pkt.fill(&frame) {
                    return;
                }
                let meta = crate::packet::Meta {
                    l3: L3::Ipv4,
                    dst: dst as u128,
                    out_port: port,
                    nh,
                    l3_off: 14,
                    ..Default::default()
                };
                self.resolve(snap, pkt, meta, 0, now);
            }
        }
    }

    fn handle(&mut self, snap: &Snapshot, p: Punted, now: Instant) {
        let Punted { pkt, meta, class, worker } = p;
        let w = worker as usize;
        match class {
            PuntClass::Host if meta.l3 == L3::Arp => {
                self.arp(snap, &pkt, &meta, w, now);
                self.give_back(w, pkt);
            }
            PuntClass::Host if meta.l3 == L3::Ipv4 && meta.proto == 1 && meta.icmp_type == 0 => {
                // An echo reply: the answer to a load-balancer PING check.
                let d = pkt.data();
                let l4 = meta.l4_off as usize;
                let ids =
                    d.get(l4 + 4..l4 + 8).map(|b| (u16::from_be_bytes([b[0], b[1]]), u16::from_be_bytes([b[2], b[3]])));
                let (id, seq) = ids.unwrap_or_default();
                if meta.frag != 0 || !self.health.deliver_echo_reply(meta.src as u32, meta.dst as u32, id, seq) {
                    self.stats.not_handled.fetch_add(1, Relaxed);
                }
                self.give_back(w, pkt);
            }
            PuntClass::Host if meta.l3 == L3::Ipv4 && meta.proto == 1 => self.echo(snap, pkt, &meta, w),
            PuntClass::Host if meta.l3 == L3::Ipv4 && meta.proto == 6 => {
                // TCP to one of our addresses: the health checks' answers.
                let d = pkt.data();
                let l3 = meta.l3_off as usize;
                let total = d.get(l3 + 2..l3 + 4).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as usize);
                let ip = d.get(l3..(l3 + total).min(d.len())).unwrap_or_default();
                if !self.health.deliver(meta.dst as u32, ip) {
                    self.stats.not_handled.fetch_add(1, Relaxed);
                }
                self.give_back(w, pkt);
            }
            PuntClass::Host if meta.l3 == L3::Ipv6 && meta.proto == 58 => {
                self.icmp6(snap, &pkt, &meta, w, now);
                self.give_back(w, pkt);
            }
            PuntClass::Resolve => self.resolve(snap, pkt, meta, worker, now),
            PuntClass::Metadata => {
                self.metadata.deliver(&pkt, &meta);
                self.metadata_pending = true;
                self.give_back(w, pkt);
            }
            PuntClass::Error => {
                self.icmp_error(snap, &pkt, &meta, w, now);
                self.give_back(w, pkt);
            }
            PuntClass::Fragment => self.send_fragmented(snap, w, pkt, &meta, meta.out_port),
            _ => {
                self.stats.not_handled.fetch_add(1, Relaxed);
                self.give_back(w, pkt);
            }
        }
    }

    /// Sends a packet through `worker`'s transmit path on `port`.
    fn send(&mut self, worker: usize, frame: Pkt, port: u16) {
        if let Err(p) = self.exc.inject(worker, frame, port) {
            self.stats.inject_full.fetch_add(1, Relaxed);
            self.give_back(worker, p);
        }
    }

    /// Sends `frame` in a buffer that came from `worker` (a punted packet
    /// this stack is done with), so the worker's pool gets back what it
    /// punted and nobody allocates or frees across threads.
    fn send_frame(&mut self, worker: usize, frame: &[u8], port: u16) {
        let mut p = self.spare.get_mut(worker).and_then(|s| s.pop()).unwrap_or_default();
        if p.fill(frame) {
            self.send(worker, p, port);
        }
    }

    /// Sends a forwarded IPv4 packet larger than `port`'s MTU as fragments
    /// (RFC 791); the link header is already the egress one.
    fn send_fragmented(&mut self, snap: &Snapshot, worker: usize, pkt: Pkt, m: &crate::packet::Meta, port: u16) {
        let Some(mtu) = snap.port(port).map(|i| i.mtu as usize) else {
            self.stats.fragment_errors.fetch_add(1, Relaxed);
            self.give_back(worker, pkt);
            return;
        };
        // (fragment_v4 checks everything before it emits the first fragment.)
        match fragment_v4(pkt.data(), m.l3_off as usize, mtu, |f| self.send_frame(worker, f, port)) {
            Ok(n) => {
                self.stats.fragmented.fetch_add(1, Relaxed);
                self.stats.fragments_sent.fetch_add(n as u64, Relaxed);
            }
            Err(_) => {
                self.stats.fragment_errors.fetch_add(1, Relaxed);
            }
        }
        self.give_back(worker, pkt);
    }

    /// Keeps a finished punted buffer for the next frame to `worker`, or
    /// returns it to the worker's pool when enough are kept.
    fn give_back(&mut self, worker: usize, p: Pkt) {
        match self.spare.get_mut(worker) {
            Some(s) if s.len() < SPARE_PER_WORKER => s.push(p),
            _ => self.exc.recycle(worker, p),
        }
    }

    /// Learns from an ARP packet a worker punted, and answers a request
    /// for one of the router's addresses.
    fn arp(&mut self, snap: &Snapshot, pkt: &Pkt, m: &crate::packet::Meta, worker: usize, now: Instant) {
        let d = pkt.data();
        let o = m.l3_off as usize;
        if d.len() < o + 28 || d[o..o + 6] != [0, 1, 8, 0, 6, 4] {
            self.stats.not_handled.fetch_add(1, Relaxed);
            return;
        }
        let op = u16::from_be_bytes([d[o + 6], d[o + 7]]);
        let smac = Mac(d[o + 8..o + 14].try_into().unwrap_or_default());
        let sip = u32::from_be_bytes(d[o + 14..o + 18].try_into().unwrap_or_default());
        let tip = u32::from_be_bytes(d[o + 24..o + 28].try_into().unwrap_or_default());
        let port = m.in_port;
        let for_us = snap.answers_arp_for(port, tip);
        if sip != 0 && !smac.is_multicast() && !snap.answers_arp_for(port, sip) {
            // Create entries from requests for us (as Linux does); replies
            // and gratuitous ARP only answer or refresh what is awaited or
            // known (an unsolicited reply cannot plant an entry).
            let k = v4key(sip);
            let known = self.learned.contains_key(&(port, k)) || self.pending.contains_key(&(port, k));
            if known || (op == 1 && for_us) {
                self.learn(snap, port, k, smac, now);
            }
        }
        if op == 1 && for_us && sip != tip {
            let Some(info) = snap.port(port) else { return };
            let reply = arp_reply(info.mac, tip, smac, sip);
            self.send_frame(worker, &reply, port);
            self.stats.arp_replies.fetch_add(1, Relaxed);
        }
    }

    fn learn(&mut self, snap: &Snapshot, port: u16, ip: u128, mac: Mac, now: Instant) {
        let changed = match self.learned.insert((port, ip), Entry { mac, confirmed: now, probed: None }) {
            Some(old) => old.mac != mac,
            None => {
                self.stats.neighbors_learned.fetch_add(1, Relaxed);
                true
            }
        };
        self.dirty |= changed;
        if let Some(p) = self.pending.remove(&(port, ip)) {
            self.held_total -= p.held.len();
            let src = snap.port(port).map_or(Mac::ZERO, |i| i.mac);
            for (mut pkt, mut meta, worker) in p.held {
                rewrite_l2(&mut pkt, &meta, mac, src);
                self.stats.held_sent.fetch_add(1, Relaxed);
                // (The route stage's mark is gone: the neighbour stage set
                // the packet aside for resolution.)
                let ip_len = pkt.len() - 14;
                if meta.l3 == L3::Ipv4 && snap.port(port).is_some_and(|i| ip_len > i.mtu as usize) {
                    meta.l3_off = 14;
                    self.send_fragmented(snap, worker as usize, pkt, &meta, port);
                } else {
                    self.send(worker as usize, pkt, port);
                }
            }
        }
    }

    /// The address to resolve for a packet routed to adjacency `m.nh`.
    fn next_hop(snap: &Snapshot, m: &crate::packet::Meta) -> Option<u128> {
        let adj = snap.adj.get(m.nh as usize)?;
        match adj.kind {
            AdjKind::Gateway if adj.gw_v4 => Some(v4key(adj.gw as u32)),
            AdjKind::Gateway => Some(adj.gw),
            AdjKind::Connected if m.l3 == L3::Ipv4 => Some(v4key(m.dst as u32)),
            AdjKind::Connected => Some(m.dst),
            _ => None,
        }
    }

    fn resolve(&mut self, snap: &Snapshot, mut pkt: Pkt, meta: crate::packet::Meta, worker: u16, now: Instant) {
        let port = meta.out_port;
        let Some(ip) = Self::next_hop(snap, &meta) else {
            self.stats.held_dropped.fetch_add(1, Relaxed);
            self.give_back(worker as usize, pkt);
            return;
        };
        if let Some(e) = self.learned.get(&(port, ip)) {
            // Known, but the worker's snapshot did not have it yet.
            let src = snap.port(port).map_or(Mac::ZERO, |i| i.mac);
            rewrite_l2(&mut pkt, &meta, e.mac, src);
            self.send(worker as usize, pkt, port);
            self.stats.held_sent.fetch_add(1, Relaxed);
            return;
        }
        let first = !self.pending.contains_key(&(port, ip));
        let full = self.held_total >= HOLD_TOTAL;
        let p =
            self.pending.entry((port, ip)).or_insert_with(|| Pending { held: VecDeque::new(), tries: 1, last: now });
        let refused = if full || p.held.len() >= HOLD_PER_NEXT_HOP {
            Some(pkt)
        } else {
            p.held.push_back((pkt, meta, worker));
            None
        };
        match refused {
            Some(pkt) => {
                self.stats.held_dropped.fetch_add(1, Relaxed);
                self.give_back(worker as usize, pkt);
            }
            None => {
                self.held_total += 1;
                self.stats.held.fetch_add(1, Relaxed);
            }
        }
        if first {
            self.request(snap, port, ip, None);
        }
    }

    /// Sends an ARP request or a neighbour solicitation for `ip` on `port`
    /// (unicast to `to` to refresh an entry).
    fn request(&mut self, snap: &Snapshot, port: u16, ip: u128, to: Option<Mac>) {
        let Some(info) = snap.port(port) else { return };
        if let Some(ip4) = unmap(ip) {
            let Some(src) = snap.port_addr_v4(port) else { return };
            let frame = arp_frame(1, info.mac, src, to.unwrap_or(Mac::ZERO), to.unwrap_or(Mac([0xff; 6])), ip4);
            self.send_frame(0, &frame, port);
            self.stats.arp_requests.fetch_add(1, Relaxed);
            return;
        }
        let src = Self::port_addr6(snap, port).unwrap_or(link_local(info.mac));
        let (dst, dmac) = match to {
            Some(mac) => (ip, mac),
            None => (solicited_node(ip), multicast_mac(solicited_node(ip))),
        };
        let mut body = vec![135, 0, 0, 0, 0, 0, 0, 0];
        body.extend_from_slice(&ip.to_be_bytes());
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(&info.mac.0);
        self.send_frame(0, &icmp6_frame(dmac, info.mac, src, dst, 255, body), port);
        self.stats.neighbor_solicitations.fetch_add(1, Relaxed);
    }

    fn gratuitous_arp(&mut self, snap: &Snapshot) {
        let mut sent = 0;
        for &(a, v4, port) in &snap.own {
            // (The management port's neighbours are the kernel's business.)
            if v4 && let Some(info) = snap.port(port).filter(|i| i.up && i.role != PortRole::Management) {
                let ip = a as u32;
                self.send_frame(0, &arp_frame(1, info.mac, ip, Mac::ZERO, Mac([0xff; 6]), ip), port);
                sent += 1;
            }
        }
        if let Some((ext, _)) = snap.nat.external
            && let Some(info) = snap.port(ext)
        {
            for (fip, _) in snap.nat.dnat.iter() {
                self.send_frame(0, &arp_frame(1, info.mac, fip, Mac::ZERO, Mac([0xff; 6]), fip), ext);
                sent += 1;
            }
        }
        self.stats.gratuitous_arp.fetch_add(sent, Relaxed);
    }

    /// Retries, gives up, refreshes and forgets (every 100 ms).
    pub fn tick(&mut self, now: Instant) {
        let snap = self.snapshots.load_full();
        let mut give_up = Vec::new();
        let mut retry = Vec::new();
        for (&k, p) in self.pending.iter_mut() {
            if now.duration_since(p.last) >= ARP_RETRY {
                if p.tries >= ARP_TRIES {
                    give_up.push(k);
                } else {
                    p.tries += 1;
                    p.last = now;
                    retry.push(k);
                }
            }
        }
        for (port, ip) in retry {
            self.request(&snap, port, ip, None);
        }
        for k in give_up {
            if let Some(p) = self.pending.remove(&k) {
                self.held_total -= p.held.len();
                self.stats.held_dropped.fetch_add(p.held.len() as u64, Relaxed);
                for (pkt, _, w) in p.held {
                    self.give_back(w as usize, pkt);
                }
            }
        }
        let mut refresh = Vec::new();
        let before = self.learned.len();
        self.learned.retain(|&(port, ip), e| {
            let age = now.duration_since(e.confirmed);
            if age >= STALE_LIMIT {
                return false;
            }
            if age >= REACHABLE && e.probed.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
                e.probed = Some(now);
                refresh.push((port, ip, e.mac));
            }
            true
        });
        let expired = before - self.learned.len();
        if expired > 0 {
            self.stats.neighbors_expired.fetch_add(expired as u64, Relaxed);
            self.dirty = true;
        }
        for (port, ip, mac) in refresh {
            self.request(&snap, port, ip, Some(mac));
        }
        self.control.set_lb_health(self.health.view(now));
        if self.last_ra.is_none_or(|t| now.duration_since(t) >= RA_INTERVAL) {
            self.router_advertisements(&snap, None);
            self.last_ra = Some(now);
        }
        if self.dirty {
            self.publish();
        }
    }

    fn publish(&mut self) {
        let mut t = NeighborTable::new();
        for (&(port, ip), e) in &self.learned {
            match unmap(ip) {
                Some(a) => t.insert_v4(port, a, e.mac, NeighborSource::Learned),
                None => t.insert_v6(port, ip, e.mac, NeighborSource::Learned),
            }
        }
        self.control.publish_learned(t);
        self.snapshots.load();
        self.dirty = false;
    }

    /// Answers an ICMP echo request to one of the router's addresses.
    fn echo(&mut self, snap: &Snapshot, pkt: Pkt, m: &crate::packet::Meta, worker: usize) {
        let d = pkt.data();
        let (l3, l4) = (m.l3_off as usize, m.l4_off as usize);
        let total = u16::from_be_bytes([d[l3 + 2], d[l3 + 3]]) as usize;
        // Echo requests to a broadcast or multicast address are ignored, as
        // Linux does (icmp_echo_ignore_broadcasts).
        let group = m.dst as u32 >> 28 == 0xe || m.dst as u32 == u32::MAX;
        if m.frag != 0 || group || d.len() < l4 + 8 || d[l4] != 8 || l3 + total > d.len() || total < l4 - l3 + 8 {
            self.stats.not_handled.fetch_add(1, Relaxed);
            self.give_back(worker, pkt);
            return;
        }
        let Some(info) = snap.port(m.in_port) else {
            self.give_back(worker, pkt);
            return;
        };
        let payload = &d[l4..l3 + total];
        let mut f = Vec::with_capacity(14 + 20 + payload.len());
        f.extend_from_slice(&d[6..12]);
        f.extend_from_slice(&info.mac.0);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        push_ipv4(&mut f, m.dst as u32, m.src as u32, 1, payload.len());
        let icmp_at = f.len();
        f.extend_from_slice(payload);
        f[icmp_at] = 0;
        f[icmp_at + 2] = 0;
        f[icmp_at + 3] = 0;
        let c = checksum(&f[icmp_at..]);
        f[icmp_at + 2..icmp_at + 4].copy_from_slice(&c.to_be_bytes());
        self.give_back(worker, pkt);
        self.send_frame(worker, &f, m.in_port);
        self.stats.echo_replies.fetch_add(1, Relaxed);
    }

    /// One token of the ICMP error budget (shared by both families), and
    /// of `dst`'s own unless the error is about the path MTU.
    fn icmp_token(&mut self, now: Instant, dst: u128, path_mtu: bool) -> bool {
        if !path_mtu && !self.icmp_peers.allow(dst, now) {
            self.stats.icmp_errors_limited.fetch_add(1, Relaxed);
            return false;
        }
        if now.duration_since(self.icmp_refill) >= Duration::from_millis(10) {
            let add =
                (now.duration_since(self.icmp_refill).as_millis() as u32).saturating_mul(ICMP_ERRORS_PER_SEC) / 1000;
            self.icmp_tokens = (self.icmp_tokens + add).min(ICMP_ERRORS_PER_SEC);
            self.icmp_refill = now;
        }
        if self.icmp_tokens == 0 {
            self.stats.icmp_errors_limited.fetch_add(1, Relaxed);
            return false;
        }
        self.icmp_tokens -= 1;
        true
    }

    fn icmp_error(&mut self, snap: &Snapshot, pkt: &Pkt, m: &crate::packet::Meta, worker: usize, now: Instant) {
        if m.l3 == L3::Ipv6 {
            return self.icmp6_error(snap, pkt, m, worker, now);
        }
        if m.l3 != L3::Ipv4 {
            self.stats.not_handled.fetch_add(1, Relaxed);
            return;
        }
        let (ty, code, mtu) = match DropReason::from_u8(m.reason) {
            DropReason::TtlExpired => (11, 0, 0),
            DropReason::NoRoute => (3, 0, 0),
            DropReason::MtuExceeded => (3, 4, snap.port(m.out_port).map_or(0, |p| p.mtu)),
            DropReason::BlockedByRule | DropReason::ToManagement => (3, 13, 0),
            _ => {
                self.stats.not_handled.fetch_add(1, Relaxed);
                return;
            }
        };
        let d = pkt.data();
        let l3 = m.l3_off as usize;
        // What the sender sent: a translated packet is quoted as it arrived
        // (else the sender cannot match the error to its flow), and the
        // error goes to its original source.
        let mut ip = d[l3.min(d.len())..].to_vec();
        let src = if m.xlated {
            let now = Tuple4 { src: m.src as u32, dst: m.dst as u32, sport: m.sport, dport: m.dport };
            let was = Tuple4 { src: m.orig_src, dst: m.orig_dst, sport: m.orig_sport, dport: m.orig_dport };
            let l4 = (m.l4_off as usize).saturating_sub(l3);
            if ip.len() >= l4 + 8 && l4 >= 20 {
                rewrite_v4(&mut ip, 0, l4, m.proto, m.frag != 2, now, was);
            }
            m.orig_src
        } else {
            m.src as u32
        };
        let first = (src >> 24) as u8;
        let never = m.frag == 2
            || (m.proto == 1 && (d.get(m.l4_off as usize).is_none_or(|&t| !matches!(t, 0 | 8 | 13 | 14 | 15 | 16))))
            || src == 0
            || src == u32::MAX
            || first == 127
            || first >= 224
            || (m.dst as u32) >> 28 == 0xe
            || m.dst as u32 == u32::MAX
            || d.len() < 12
            || d[0] & 1 == 1;
        if never || !self.icmp_token(now, v4key(src), ty == 3 && code == 4) {
            return;
        }
        let Some(info) = snap.port(m.in_port) else { return };
        let Some(from) = snap.port_addr_v4(m.in_port) else { return };
        let quote = &ip[..ip.len().min(ICMP_QUOTE)];
        let mut f = Vec::with_capacity(14 + 28 + quote.len());
        f.extend_from_slice(&d[6..12]);
        f.extend_from_slice(&info.mac.0);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        push_ipv4(&mut f, from, src, 1, 8 + quote.len());
        let at = f.len();
        f.extend_from_slice(&[ty, code, 0, 0, 0, 0]);
        f.extend_from_slice(&mtu.to_be_bytes());
        f.extend_from_slice(quote);
        let c = checksum(&f[at..]);
        f[at + 2..at + 4].copy_from_slice(&c.to_be_bytes());
        self.send_frame(worker, &f, m.in_port);
        self.stats.icmp_errors.fetch_add(1, Relaxed);
    }
}

impl HostStack {
    /// The router's first global IPv6 address on `port`.
    fn port_addr6(snap: &Snapshot, port: u16) -> Option<u128> {
        snap.own.iter().find(|&&(a, v4, p)| !v4 && p == port && a >> 118 != 0x3fa).map(|&(a, _, _)| a)
    }

    /// Whether `a` is one of the router's IPv6 addresses on `port` (its
    /// link-local address included).
    fn is_ours6(snap: &Snapshot, port: u16, a: u128) -> bool {
        snap.port(port).is_some_and(|i| link_local(i.mac) == a)
            || snap.own.iter().any(|&(o, v4, p)| !v4 && p == port && o == a)
    }

    /// Neighbour discovery, echo and router solicitations.
    fn icmp6(&mut self, snap: &Snapshot, pkt: &Pkt, m: &crate::packet::Meta, worker: usize, now: Instant) {
        let d = pkt.data();
        let (l3, l4) = (m.l3_off as usize, m.l4_off as usize);
        let plen = u16::from_be_bytes([d[l3 + 4], d[l3 + 5]]) as usize;
        let end = (l3 + 40 + plen).min(d.len());
        if m.frag != 0 || end < l4 + 8 {
            self.stats.not_handled.fetch_add(1, Relaxed);
            return;
        }
        let hop = d[l3 + 7];
        let (src, dst) = (m.src, m.dst);
        let port = m.in_port;
        let Some(info) = snap.port(port) else { return };
        let opt_mac = |from: usize, kind: u8| -> Option<Mac> {
            let mut o = from;
            while o + 8 <= end {
                let len = d[o + 1] as usize * 8;
                if len == 0 {
                    return None;
                }
                if d[o] == kind && len >= 8 {
                    return Some(Mac(d[o + 2..o + 8].try_into().unwrap_or_default()));
                }
                o += len;
            }
            None
        };
        match d[l4] {
            // Neighbour solicitation for one of our addresses (RFC 4861 7.2.3).
            135 if hop == 255 && end >= l4 + 24 => {
                let target = u128::from_be_bytes(d[l4 + 8..l4 + 24].try_into().unwrap_or_default());
                if !Self::is_ours6(snap, port, target) {
                    return;
                }
                let sll = opt_mac(l4 + 24, 1);
                if src != 0
                    && let Some(mac) = sll
                {
                    self.learn(snap, port, src, mac, now);
                }
                let (to, to_mac, flags) = match (src, sll) {
                    (0, _) => (ALL_NODES, multicast_mac(ALL_NODES), 0xa0u8),
                    (s, Some(mac)) => (s, mac, 0xe0),
                    (s, None) => (s, Mac(d[6..12].try_into().unwrap_or_default()), 0xe0),
                };
                let mut body = vec![136, 0, 0, 0, flags, 0, 0, 0];
                body.extend_from_slice(&target.to_be_bytes());
                body.extend_from_slice(&[2, 1]);
                body.extend_from_slice(&info.mac.0);
                self.send_frame(worker, &icmp6_frame(to_mac, info.mac, target, to, 255, body), port);
                self.stats.neighbor_advertisements.fetch_add(1, Relaxed);
            }
            // Neighbour advertisement: learn what we asked for or knew.
            136 if hop == 255 && end >= l4 + 24 => {
                let target = u128::from_be_bytes(d[l4 + 8..l4 + 24].try_into().unwrap_or_default());
                let mac = opt_mac(l4 + 24, 2).unwrap_or(Mac(d[6..12].try_into().unwrap_or_default()));
                let k = (port, target);
                // (RFC 4861 7.2.5: no entry, no learning from an advertisement.)
                if self.pending.contains_key(&k) || self.learned.contains_key(&k) {
                    self.learn(snap, port, target, mac, now);
                }
            }
            // Router solicitation: answer with an advertisement.
            133 if hop == 255 => {
                self.router_advertisements(snap, Some(port));
            }
            // Echo request to one of our addresses.
            128 if Self::is_ours6(snap, port, dst) => {
                let mut body = d[l4..end].to_vec();
                body[0] = 129;
                let mac = Mac(d[6..12].try_into().unwrap_or_default());
                self.send_frame(worker, &icmp6_frame(mac, info.mac, dst, src, 64, body), port);
                self.stats.echo_replies.fetch_add(1, Relaxed);
            }
            _ => {
                self.stats.not_handled.fetch_add(1, Relaxed);
            }
        }
    }

    /// Router advertisements on internal networks whose IPv6 configuration
    /// is `slaac`, `ra` or `dhcp` (all of them, or only `only`'s).
    fn router_advertisements(&mut self, snap: &Snapshot, only: Option<u16>) {
        let Some(cfg) = self.control.current() else { return };
        for n in &cfg.networks {
            use super::model::{NetworkType, V6ConfService};
            if n.network_type != NetworkType::Internal || n.v6_conf_service == V6ConfService::Static {
                continue;
            }
            let Some(port) = snap
                .ports
                .iter()
                .position(|p| p.name == n.interface.ifname || n.interface.lladdr.is_some_and(|l| l == p.mac))
            else {
                continue;
            };
            let port = port as u16;
            if only.is_some_and(|o| o != port) {
                continue;
            }
            let Some(info) = snap.port(port).filter(|i| i.up) else { continue };
            let dhcp = n.v6_conf_service == V6ConfService::Dhcp;
            // Managed (M) and other-config (O) for DHCPv6; autonomous otherwise.
            let flags: u8 = if dhcp { 0xc0 } else { 0 };
            let mut body = vec![134, 0, 0, 0, 64, flags];
            body.extend_from_slice(&1800u16.to_be_bytes());
            body.extend_from_slice(&[0; 8]);
            body.extend_from_slice(&[1, 1]);
            body.extend_from_slice(&info.mac.0);
            body.extend_from_slice(&[5, 1, 0, 0]);
            body.extend_from_slice(&(info.mtu as u32).to_be_bytes());
            for sn in n.subnets.iter().filter(|s| !s.cidr.is_v4()) {
                let pflags: u8 = if dhcp { 0x80 } else { 0xc0 };
                body.extend_from_slice(&[3, 4, sn.cidr.len, pflags]);
                body.extend_from_slice(&2_592_000u32.to_be_bytes());
                body.extend_from_slice(&604_800u32.to_be_bytes());
                body.extend_from_slice(&[0; 4]);
                body.extend_from_slice(&sn.cidr.network().to_be_bytes());
            }
            let frame = icmp6_frame(multicast_mac(ALL_NODES), info.mac, link_local(info.mac), ALL_NODES, 255, body);
            self.send_frame(0, &frame, port);
            self.stats.router_advertisements.fetch_add(1, Relaxed);
        }
    }

    fn icmp6_error(&mut self, snap: &Snapshot, pkt: &Pkt, m: &crate::packet::Meta, worker: usize, now: Instant) {
        let (ty, code, param) = match DropReason::from_u8(m.reason) {
            DropReason::HopLimitExpired => (3, 0, 0),
            DropReason::NoRoute => (1, 0, 0),
            DropReason::PacketTooBig => (2, 0, snap.port(m.out_port).map_or(1280, |p| p.mtu as u32)),
            DropReason::BlockedByRule | DropReason::ToManagement => (1, 1, 0),
            _ => {
                self.stats.not_handled.fetch_add(1, Relaxed);
                return;
            }
        };
        let d = pkt.data();
        let l3 = m.l3_off as usize;
        // Never about an ICMPv6 error, a later fragment, or an unanswerable
        // source (RFC 4443 2.4 e); Packet Too Big is sent for multicast too.
        let is_error = m.proto == 58 && d.get(m.l4_off as usize).is_some_and(|&t| t < 128);
        let src = m.src;
        let never = m.frag == 2
            || is_error
            || src == 0
            || src == 1
            || src >> 120 == 0xff
            || (m.dst >> 120 == 0xff && ty != 2)
            || d.len() < 12;
        if never || !self.icmp_token(now, src, ty == 2) {
            return;
        }
        let Some(info) = snap.port(m.in_port) else { return };
        let from = Self::port_addr6(snap, m.in_port).unwrap_or(link_local(info.mac));
        let mut body = vec![ty, code, 0, 0];
        body.extend_from_slice(&param.to_be_bytes());
        body.extend_from_slice(&d[l3..d.len().min(l3 + ICMP6_QUOTE)]);
        let mac = Mac(d[6..12].try_into().unwrap_or_default());
        self.send_frame(worker, &icmp6_frame(mac, info.mac, from, src, 64, body), m.in_port);
        self.stats.icmp_errors.fetch_add(1, Relaxed);
    }
}

const ALL_NODES: u128 = 0xff02 << 112 | 1;

#[inline]
fn v4key(a: u32) -> u128 {
    V4_MAPPED | a as u128
}

#[inline]
fn unmap(k: u128) -> Option<u32> {
    (k >> 32 == V4_MAPPED >> 32).then_some(k as u32)
}

/// fe80::/64 with the modified EUI-64 of `mac`.
pub fn link_local(mac: Mac) -> u128 {
    (0xfe80u128 << 112) | mac.eui64() as u128
}

/// ff02::1:ffXX:XXXX for `a` (RFC 4291 2.7.1).
fn solicited_node(a: u128) -> u128 {
    (0xff02u128 << 112) | (1 << 32) | (0xff << 24) | (a & 0xff_ffff)
}

/// 33:33 + the low 32 bits of a multicast group (RFC 2464 7).
fn multicast_mac(group: u128) -> Mac {
    let g = (group as u32).to_be_bytes();
    Mac([0x33, 0x33, g[0], g[1], g[2], g[3]])
}

/// Ethernet + IPv6 + ICMPv6 `body` (its checksum filled in).
fn icmp6_frame(dst_mac: Mac, src_mac: Mac, src: u128, dst: u128, hop: u8, mut body: Vec<u8>) -> Vec<u8> {
    body[2] = 0;
    body[3] = 0;
    let c = !fold(pseudo_v6(src, dst, 58, body.len() as u32) + sum(&body));
    body[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(54 + body.len());
    f.extend_from_slice(&dst_mac.0);
    f.extend_from_slice(&src_mac.0);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(body.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, hop]);
    f.extend_from_slice(&src.to_be_bytes());
    f.extend_from_slice(&dst.to_be_bytes());
    f.extend_from_slice(&body);
    f
}

/// Appends an IPv4 header (TTL 64, DF clear) for `payload` bytes.
fn push_ipv4(f: &mut Vec<u8>, src: u32, dst: u32, proto: u8, payload: usize) {
    f.extend_from_slice(&crate::packet::ipv4::header(src, dst, proto, (20 + payload) as u16));
}

/// Gives a held packet its Ethernet header for the resolved next hop.
fn rewrite_l2(pkt: &mut Pkt, m: &crate::packet::Meta, dst: Mac, src: Mac) {
    let strip = (m.l3_off as usize).saturating_sub(14);
    if strip > 0 {
        pkt.adj(strip);
    }
    let ethertype: u16 = if m.l3 == L3::Ipv6 { 0x86dd } else { 0x0800 };
    let h = pkt.data_mut();
    if h.len() >= 14 {
        h[0..6].copy_from_slice(&dst.0);
        h[6..12].copy_from_slice(&src.0);
        h[12..14].copy_from_slice(&ethertype.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_destination_icmp_limit_is_a_burst_of_six_then_one_a_second() {
        let mut l = PeerLimiter::default();
        let t0 = Instant::now();
        let a = v4key(0xc0a8_0106);
        let b = v4key(0xc0a8_0107);
        let sent = (0..20).filter(|_| l.allow(a, t0)).count();
        assert_eq!(sent, 6);
        // Another destination has its own budget.
        assert!(l.allow(b, t0));
        // One more per second after that.
        assert!(!l.allow(a, t0 + Duration::from_millis(999)));
        assert!(l.allow(a, t0 + Duration::from_millis(1000)));
        assert!(!l.allow(a, t0 + Duration::from_millis(1001)));
        // Credit builds back up to the burst, no further.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| l.allow(a, later)).count(), 6);
    }

    #[test]
    fn per_destination_icmp_limit_stays_bounded() {
        let mut l = PeerLimiter::default();
        let t0 = Instant::now();
        for i in 0..PeerLimiter::MAX_PEERS as u128 {
            assert!(l.allow(i, t0));
        }
        // Full of busy destinations: a new one is let through (the global
        // limit applies) without growing the map.
        assert!(l.allow(1 << 40, t0));
        assert_eq!(l.peers.len(), PeerLimiter::MAX_PEERS);
        // Once they are idle for a whole burst they are forgotten.
        let later = t0 + Duration::from_secs(7);
        assert!(l.allow(1 << 41, later));
        assert_eq!(l.peers.len(), 1);
    }
}
