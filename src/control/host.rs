//! The host stack: the appliance's own IPv4 presence on its ports, fed by
//! the workers' punt rings and answering through their inject rings.
//!
//! - ARP: answers for the router's addresses on the port they belong to
//!   and for the floating IPs on the external port; resolves next hops on
//!   demand, holding the packets that wait (16 per next hop, 4,096 in all,
//!   dropped and counted after three unanswered requests); learns from
//!   replies and from requests aimed at us; refreshes entries in use after
//!   60 s and forgets those unconfirmed for 90 s; publishes what it knows
//!   to the workers with a new snapshot; sends gratuitous ARP for every
//!   address and floating IP when a new document takes effect.
//! - ICMP: echo replies for the router's IPv4 addresses, and the errors the
//!   data path asks for: time exceeded, network unreachable, fragmentation
//!   needed (with the egress MTU), administratively prohibited. Never about
//!   an ICMP error, a later fragment, or a packet from a source that cannot
//!   be answered (RFC 1812 4.3.2.7); at most `ICMP_ERRORS_PER_SEC`.
//!
//! It runs on its own thread beside the API's, polling the rings and
//! sleeping briefly when they are empty.

use super::state::Control;
use crate::dataplane::{Exception, PuntClass, Punted, Snapshots};
use crate::packet::checksum::checksum;
use crate::packet::{L3, Mac, PacketBuf, Pkt};
use crate::stage::{AdjKind, DropReason, PortRole, Snapshot};
use crate::table::{NeighborSource, NeighborTable};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

const HOLD_PER_NEXT_HOP: usize = 16;
const HOLD_TOTAL: usize = 4096;
const ARP_TRIES: u32 = 3;
const ARP_RETRY: Duration = Duration::from_secs(1);
const REACHABLE: Duration = Duration::from_secs(60);
const STALE_LIMIT: Duration = Duration::from_secs(90);
const ICMP_ERRORS_PER_SEC: u32 = 1000;
/// An ICMP error quotes at most this much, so it fits in 576 bytes (RFC 1812).
const ICMP_QUOTE: usize = 576 - 20 - 8;

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
}

impl HostStats {
    pub fn list(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("arp replies sent", self.arp_replies.load(Relaxed)),
            ("arp requests sent", self.arp_requests.load(Relaxed)),
            ("gratuitous arp sent", self.gratuitous_arp.load(Relaxed)),
            ("neighbours learned", self.neighbors_learned.load(Relaxed)),
            ("neighbours expired", self.neighbors_expired.load(Relaxed)),
            ("icmp echo replies sent", self.echo_replies.load(Relaxed)),
            ("icmp errors sent", self.icmp_errors.load(Relaxed)),
            ("icmp errors over the rate limit", self.icmp_errors_limited.load(Relaxed)),
            ("packets held for resolution", self.held.load(Relaxed)),
            ("held packets sent", self.held_sent.load(Relaxed)),
            ("held packets dropped unresolved", self.held_dropped.load(Relaxed)),
            ("frames lost on a full inject ring", self.inject_full.load(Relaxed)),
            ("punted packets not handled", self.not_handled.load(Relaxed)),
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
    learned: HashMap<(u16, u32), Entry>,
    pending: HashMap<(u16, u32), Pending>,
    held_total: usize,
    dirty: bool,
    generation: u64,
    /// ICMP error tokens and when they were last topped up.
    icmp_tokens: u32,
    icmp_refill: Instant,
}

impl HostStack {
    pub fn new(exc: Arc<Exception>, control: Arc<Control>) -> HostStack {
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
            while !stop.load(Relaxed) {
                let n = self.poll(Instant::now());
                if last_tick.elapsed() >= Duration::from_millis(100) {
                    last_tick = Instant::now();
                    self.tick(last_tick);
                }
                if n == 0 {
                    std::thread::sleep(Duration::from_micros(50));
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
        }
        let mut n = 0;
        for w in 0..self.exc.workers() {
            while n < 4096 {
                let Some(p) = self.exc.pop_punted(w) else { break };
                n += 1;
                self.handle(&snap, p, now);
            }
        }
        if self.dirty {
            self.publish();
        }
        n
    }

    fn handle(&mut self, snap: &Snapshot, p: Punted, now: Instant) {
        let Punted { pkt, meta, class, worker } = p;
        let w = worker as usize;
        match class {
            PuntClass::Host if meta.l3 == L3::Arp => {
                self.arp(snap, &pkt, &meta, now);
                self.exc.recycle(w, pkt);
            }
            PuntClass::Host if meta.l3 == L3::Ipv4 && meta.proto == 1 => self.echo(snap, pkt, &meta, w),
            PuntClass::Resolve => self.resolve(snap, pkt, meta, worker, now),
            PuntClass::Error => {
                self.icmp_error(snap, &pkt, &meta, w, now);
                self.exc.recycle(w, pkt);
            }
            _ => {
                self.stats.not_handled.fetch_add(1, Relaxed);
                self.exc.recycle(w, pkt);
            }
        }
    }

    /// Sends a frame through `worker`'s transmit path on `port`.
    fn send(&self, worker: usize, frame: Pkt, port: u16) {
        if self.exc.inject(worker, frame, port).is_err() {
            self.stats.inject_full.fetch_add(1, Relaxed);
        }
    }

    /// Addresses the router answers ARP for on `port`.
    fn answers_for(snap: &Snapshot, port: u16, ip: u32) -> bool {
        snap.own.iter().any(|&(a, v4, p)| v4 && p == port && a as u32 == ip)
            || snap.nat.external.is_some_and(|(ext, _)| ext == port) && snap.nat.dnat.contains_key(&ip)
    }

    /// The router's first IPv4 address on `port`.
    fn port_addr(snap: &Snapshot, port: u16) -> Option<u32> {
        snap.own.iter().find(|&&(_, v4, p)| v4 && p == port).map(|&(a, _, _)| a as u32)
    }

    fn arp(&mut self, snap: &Snapshot, pkt: &Pkt, m: &crate::packet::Meta, now: Instant) {
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
        let for_us = Self::answers_for(snap, port, tip);
        if sip != 0 && !smac.is_multicast() && !Self::answers_for(snap, port, sip) {
            // Learn from replies, and from requests for us (as Linux does);
            // otherwise only refresh what is already known or awaited.
            let known = self.learned.contains_key(&(port, sip)) || self.pending.contains_key(&(port, sip));
            if known || (op == 1 && for_us) || op == 2 {
                self.learn(snap, port, sip, smac, now);
            }
        }
        if op == 1 && for_us && sip != tip {
            let Some(info) = snap.port(port) else { return };
            let reply = arp_frame(2, info.mac, tip, smac, smac, sip);
            self.send(0, reply, port);
            self.stats.arp_replies.fetch_add(1, Relaxed);
        }
    }

    fn learn(&mut self, snap: &Snapshot, port: u16, ip: u32, mac: Mac, now: Instant) {
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
            for (mut pkt, meta, worker) in p.held {
                rewrite_l2(&mut pkt, &meta, mac, src);
                self.send(worker as usize, pkt, port);
                self.stats.held_sent.fetch_add(1, Relaxed);
            }
        }
    }

    /// The address to resolve for a packet routed to adjacency `m.nh`.
    fn next_hop(snap: &Snapshot, m: &crate::packet::Meta) -> Option<u32> {
        let adj = snap.adj.get(m.nh as usize)?;
        match adj.kind {
            AdjKind::Gateway if adj.gw_v4 => Some(adj.gw as u32),
            AdjKind::Connected if m.l3 == L3::Ipv4 => Some(m.dst as u32),
            _ => None,
        }
    }

    fn resolve(&mut self, snap: &Snapshot, mut pkt: Pkt, meta: crate::packet::Meta, worker: u16, now: Instant) {
        let port = meta.out_port;
        let Some(ip) = Self::next_hop(snap, &meta) else {
            // IPv6 next hops wait for neighbour discovery (not done here).
            self.stats.held_dropped.fetch_add(1, Relaxed);
            self.exc.recycle(worker as usize, pkt);
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
        let p =
            self.pending.entry((port, ip)).or_insert_with(|| Pending { held: VecDeque::new(), tries: 0, last: now });
        if p.held.len() >= HOLD_PER_NEXT_HOP || self.held_total >= HOLD_TOTAL {
            self.stats.held_dropped.fetch_add(1, Relaxed);
            self.exc.recycle(worker as usize, pkt);
        } else {
            p.held.push_back((pkt, meta, worker));
            self.held_total += 1;
            self.stats.held.fetch_add(1, Relaxed);
        }
        if first {
            p.tries = 1;
            p.last = now;
            self.request(snap, port, ip, None);
        }
    }

    /// Sends an ARP request for `ip` on `port` (unicast to `to` to refresh).
    fn request(&self, snap: &Snapshot, port: u16, ip: u32, to: Option<Mac>) {
        let Some(info) = snap.port(port) else { return };
        let Some(src) = Self::port_addr(snap, port) else { return };
        let frame = arp_frame(1, info.mac, src, to.unwrap_or(Mac::ZERO), to.unwrap_or(Mac([0xff; 6])), ip);
        self.send(0, frame, port);
        self.stats.arp_requests.fetch_add(1, Relaxed);
    }

    fn gratuitous_arp(&self, snap: &Snapshot) {
        let mut sent = 0;
        for &(a, v4, port) in &snap.own {
            // (The management port's neighbours are the kernel's business.)
            if v4 && let Some(info) = snap.port(port).filter(|i| i.up && i.role != PortRole::Management) {
                let ip = a as u32;
                self.send(0, arp_frame(1, info.mac, ip, Mac::ZERO, Mac([0xff; 6]), ip), port);
                sent += 1;
            }
        }
        if let Some((ext, _)) = snap.nat.external
            && let Some(info) = snap.port(ext)
        {
            for (fip, _) in snap.nat.dnat.iter() {
                self.send(0, arp_frame(1, info.mac, fip, Mac::ZERO, Mac([0xff; 6]), fip), ext);
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
                    self.exc.recycle(w as usize, pkt);
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
        if self.dirty {
            self.publish();
        }
    }

    fn publish(&mut self) {
        let mut t = NeighborTable::new();
        for (&(port, ip), e) in &self.learned {
            t.insert_v4(port, ip, e.mac, NeighborSource::Learned);
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
        if m.frag != 0 || d.len() < l4 + 8 || d[l4] != 8 || l3 + total > d.len() || total < l4 - l3 + 8 {
            self.stats.not_handled.fetch_add(1, Relaxed);
            self.exc.recycle(worker, pkt);
            return;
        }
        let Some(info) = snap.port(m.in_port) else {
            self.exc.recycle(worker, pkt);
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
        self.exc.recycle(worker, pkt);
        if let Some(out) = Pkt::from_slice(&f) {
            self.send(worker, out, m.in_port);
            self.stats.echo_replies.fetch_add(1, Relaxed);
        }
    }

    fn icmp_error(&mut self, snap: &Snapshot, pkt: &Pkt, m: &crate::packet::Meta, worker: usize, now: Instant) {
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
        let src = m.src as u32;
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
        if never {
            return;
        }
        if now.duration_since(self.icmp_refill) >= Duration::from_millis(10) {
            let add =
                (now.duration_since(self.icmp_refill).as_millis() as u32).saturating_mul(ICMP_ERRORS_PER_SEC) / 1000;
            self.icmp_tokens = (self.icmp_tokens + add).min(ICMP_ERRORS_PER_SEC);
            self.icmp_refill = now;
        }
        if self.icmp_tokens == 0 {
            self.stats.icmp_errors_limited.fetch_add(1, Relaxed);
            return;
        }
        self.icmp_tokens -= 1;
        let Some(info) = snap.port(m.in_port) else { return };
        let Some(from) = Self::port_addr(snap, m.in_port) else { return };
        let quote = &d[l3..d.len().min(l3 + ICMP_QUOTE)];
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
        if let Some(out) = Pkt::from_slice(&f) {
            self.send(worker, out, m.in_port);
            self.stats.icmp_errors.fetch_add(1, Relaxed);
        }
    }
}

/// Ethernet + ARP: `op` 1 request, 2 reply.
fn arp_frame(op: u16, smac: Mac, sip: u32, tmac: Mac, dst: Mac, tip: u32) -> Pkt {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&smac.0);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..20].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&smac.0);
    f[28..32].copy_from_slice(&sip.to_be_bytes());
    f[32..38].copy_from_slice(&tmac.0);
    f[38..42].copy_from_slice(&tip.to_be_bytes());
    Pkt::from_slice(&f).unwrap_or_default()
}

/// Appends an IPv4 header (TTL 64, DF clear) for `payload` bytes.
fn push_ipv4(f: &mut Vec<u8>, src: u32, dst: u32, proto: u8, payload: usize) {
    let at = f.len();
    let total = (20 + payload) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&src.to_be_bytes());
    f.extend_from_slice(&dst.to_be_bytes());
    let c = checksum(&f[at..at + 20]);
    f[at + 10..at + 12].copy_from_slice(&c.to_be_bytes());
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
