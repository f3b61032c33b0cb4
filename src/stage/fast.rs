//! Fast path: IPv4 forwarding in one pass over the burst, for plain
//! forwarding and for packets of established flows.
//!
//! Most of a router's packets are untagged IPv4 with a 20-byte header, to a
//! unicast destination through a resolved next hop, and either need no
//! session (no translation, no forwarding policy) or belong to a flow the
//! session table already holds. For those, parse, session lookup and
//! translation, route and neighbour rewrite are done here, reading each
//! header once, and the packet is marked `Verdict::Forward` with its egress
//! port; the pipeline moves such packets straight to their transmit queue.
//! A burst whose every packet it takes has its new flows (TCP and UDP to
//! no translated address, or to a load-balancer listener) set up here too,
//! by conntrack's own member choice, policy and translation
//! (`take_new_flows`). Anything else — new flows in other
//! bursts, ICMP, fragments, options, anything this stage is not sure
//! about — is left untouched (`Verdict::Pending`, packet bytes unchanged,
//! no session or counter moved) for the full pipeline, which gives it its
//! exact verdict and drop reason.
//!
//! Every decision reuses the full pipeline's own rules (martian addresses,
//! the transport header checks of `parse`, conntrack's `Deferral` rule and its
//! `hit`, the neighbour stage's `next_hop_mac`), so a packet forwarded here
//! leaves exactly as it would have left the full pipeline;
//! `tests/fast_path.rs` checks that on a corpus of good and bad frames,
//! plain and translated, against the full pipeline and against frames
//! computed in the test.

use super::conntrack::{Conntrack, Deferral, Fresh};
use super::nat::{Tuple4, retarget_v4};
use super::neighbor::next_hop_mac;
use super::parse::{HEAD, Head, Ingress, head};
use super::{AdjKind, PortRole, Snapshot};
use crate::packet::ipv4::{PROTO_TCP, PROTO_UDP};
use crate::packet::{Burst, MAX_BURST, Mac, Meta, PacketBuf, Verdict, checksum};
use crate::table::NO_ROUTE;
use crate::table::session::FlowKey;

#[derive(Debug, Default, Clone, Copy)]
pub struct FastCounters {
    /// Packets forwarded here. They count too in `parse: ipv4`,
    /// `route: forwarded` and `neighbor: rewritten` (and those of known
    /// flows in `conntrack: packets of known flows`), as if the full
    /// pipeline had forwarded them.
    pub forwarded: u64,
    /// Of those, packets of flows in the session table.
    pub tracked: u64,
    /// Of those, first packets of flows (see `FastPath::take_new_flows`);
    /// they count too as `conntrack: new flows` and in its translations.
    pub new_flows: u64,
    /// First packets of flows it routed and the policy then dropped (or
    /// that found no port or no room): they count in `parse: ipv4` and
    /// `route: forwarded` (and under their drop reason), as in the full
    /// pipeline, whose route stage forwards them before conntrack's
    /// `post_route` drops them.
    pub new_dropped: u64,
    /// Bursts it did not try because recent ones gave it too little.
    pub skipped: u64,
}

/// Per ingress port slot: bursts to skip, and the current skip length;
/// whether the last burst tried forwarded none of its packets without a
/// session.
#[derive(Debug, Default, Clone, Copy)]
struct Backoff {
    skip: u16,
    len: u16,
    none_plain: bool,
}

/// Ingress port slots for the backoff (ports beyond share them).
const SLOTS: usize = 32;
/// The longest run of bursts skipped between two tries.
const MAX_SKIP: u16 = 64;

pub struct FastPath {
    pub counters: FastCounters,
    /// Skip the fast path for a while on a port where it forwarded less
    /// than a quarter of a burst (on by default). A packet it tries and
    /// leaves costs about as much as one it forwards saves: traffic that is
    /// mostly new flows, or needs the full pipeline for another reason,
    /// would pay for it and gain nothing. Off, it tries every burst (tests).
    pub adaptive: bool,
    backoff: [Backoff; SLOTS],
    /// The packets of the burst's session lookups, in the order of
    /// conntrack's lookup queue (`Conntrack::queue_lookup`).
    pending: Vec<Lookup>,
    /// The burst's new flows it may take, for `Conntrack::track_new`, and
    /// where each goes.
    news: Vec<Fresh>,
    news_to: Vec<(Head, Egress)>,
}

/// A packet waiting for its session lookup.
#[derive(Debug, Default, Clone, Copy)]
struct Lookup {
    /// Position in the burst.
    at: u16,
    head: Head,
    /// Without a forwarding policy, a packet that needs no session unless
    /// it leaves by the external port (`Deferral`): conntrack looks it up
    /// only then, so it is taken here only then, and its route (found
    /// again after the lookup) must still lead out of the external port
    /// (its destination is not translated, so it does).
    deferred: bool,
}

impl Default for FastPath {
    fn default() -> Self {
        FastPath {
            counters: FastCounters::default(),
            adaptive: true,
            backoff: [Backoff::default(); SLOTS],
            pending: Vec::with_capacity(MAX_BURST),
            news: Vec::with_capacity(MAX_BURST),
            news_to: Vec::with_capacity(MAX_BURST),
        }
    }
}

impl FastPath {
    /// Whether plain forwarding (no session) is possible under `snap`: only
    /// when no flow needs a session unless it is translated (no forwarding
    /// policy), as conntrack's deferral rule requires.
    #[inline]
    pub fn applies(snap: &Snapshot) -> bool {
        snap.acl.is_empty() && !snap.nat.track_all
    }

    /// Forwards what it can of the burst's pending packets to ports below
    /// `ports` (the transmit queues there are), translating those of flows
    /// in `ct`'s session table; returns how many.
    pub fn process<P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        ct: &mut Conntrack,
        burst: &mut Burst<P>,
        ports: usize,
    ) -> usize {
        if burst.is_empty() {
            return 0;
        }
        let plain = Self::applies(snap);
        // (A received burst comes from one port.)
        let in_port = burst.meta(0).in_port;
        let slot = in_port as usize % SLOTS;
        if self.adaptive && self.backoff[slot].skip > 0 {
            self.backoff[slot].skip -= 1;
            self.counters.skipped += 1;
            return 0;
        }
        // The route lookups' first-level entries, before any is read, when
        // packets may be forwarded with no session and the last burst from
        // this port had some. (A packet of a session is routed by the
        // session's route hint, nearly always: a fetch for it would only
        // take a miss's place in the memory system's queue, in a table of
        // many routes. On a load balancer's or a masquerading router's
        // traffic, where every packet has a session, the pass took about
        // 20 instructions a packet for nothing.)
        if plain && !self.backoff[slot].none_plain {
            for i in 0..burst.len() {
                if let Some(h) = burst.pkt(i).data().first_chunk::<HEAD>() {
                    snap.fib4.prefetch(u32::from_be_bytes([h[30], h[31], h[32], h[33]]));
                }
            }
        }
        let ingress = Ingress::of(snap, in_port);
        let ext = snap.nat.external.map(|(p, _)| p);
        let deferral = Deferral::of(snap);
        let mut cache = EgressCache::default();
        let mut n = 0;
        // Pass 1: parse; forward what needs no session, queue session
        // lookups (index lines prefetched) for the rest.
        self.pending.clear();
        for i in 0..burst.len() {
            let (pkt, m) = burst.pair_mut(i);
            if m.verdict != Verdict::Pending {
                continue;
            }
            let Some(hd) = head(snap, ingress, pkt, m) else { continue };
            let mut deferred = false;
            if plain && deferral.allows(m) {
                match egress(snap, m.dst as u32, hd, ports, &mut cache) {
                    Some(e) if Some(e.port) != ext => {
                        commit(pkt, m, e, hd);
                        n += 1;
                        continue;
                    }
                    Some(_) => deferred = true,
                    None => continue,
                }
            }
            // Sessions: TCP and UDP (ICMP is left to the full pipeline).
            if matches!(m.proto, PROTO_TCP | PROTO_UDP) {
                // (`head` took IPv4 only: its key with no test of the
                // address family.)
                ct.queue_lookup(self.pending.len(), FlowKey::v4(m.src as u32, m.dst as u32, m.sport, m.dport, m.proto));
                self.pending.push(Lookup { at: i as u16, head: hd, deferred });
            }
        }
        self.backoff[slot].none_plain = n == 0;
        if !self.pending.is_empty() {
            // Whether it took every packet so far, forwarded or to look up
            // (new flows are taken only then: see `take_new_flows`). (Kept
            // by counting, not by a flag set in the loop, which had the
            // plain forwarding loop keep one more value in a register.)
            let whole = n + self.pending.len() == burst.len();
            n += self.forward_tracked(snap, ct, burst, ports, &mut cache, whole.then_some(deferral));
        }
        self.counters.forwarded += n as u64;
        let b = &mut self.backoff[slot];
        if 4 * n < burst.len() {
            // Twice as long each time it is still not worth it.
            b.len = (2 * b.len).clamp(1, MAX_SKIP);
            b.skip = b.len;
        } else {
            b.len = 0;
        }
        n
    }

    /// Passes 2 and 3: the queued lookups in bulk, then each packet of a
    /// live session translated, routed and rewritten as `pre_route`, the
    /// route stage and the neighbour stage would; then, if every packet of
    /// the burst is taken, its new flows (`take_new_flows`). `whole`: the
    /// burst's deferral rule when pass 1 took every packet (forwarded or
    /// queued here). Returns how many it forwarded.
    fn forward_tracked<P: PacketBuf>(
        &mut self,
        snap: &Snapshot,
        ct: &mut Conntrack,
        burst: &mut Burst<P>,
        ports: usize,
        cache: &mut EgressCache,
        whole: Option<Deferral>,
    ) -> usize {
        let q = self.pending.len();
        ct.lookup_queued(q);
        let fib = snap.fib4.id();
        let mut n = 0;
        self.news.clear();
        self.news_to.clear();
        for j in 0..q {
            let Lookup { at, head, deferred } = self.pending[j];
            let (pkt, m) = burst.pair_mut(at as usize);
            let Some((idx, dir)) = ct.queued_result(j) else {
                // A new flow: taken after the known ones, if all are.
                if let Some(deferral) = whole {
                    self.queue_new(snap, ct, &deferral, m, head, ports, cache, (at, ct.queued_hash(j)));
                }
                continue;
            };
            let Some(hit) = ct.fast_target(snap, m, idx, dir) else { continue };
            let to = hit.to;
            // (A deferred packet's destination is not translated.)
            if deferred && to.dst != m.dst as u32 {
                continue;
            }
            // The route lookup of the translated destination, remembered in
            // the session's record (read already) for as long as the route
            // table stays: in a large table, the lookup's own line is a
            // cache miss more per packet.
            let nh = match ct.sessions.get_mut(idx) {
                Some(s) => s.route_hint(dir as usize, fib).unwrap_or_else(|| {
                    let nh = snap.fib4.lookup(to.dst);
                    s.set_route_hint(dir as usize, fib, nh);
                    nh
                }),
                None => snap.fib4.lookup(to.dst),
            };
            let Some(e) = egress_via(snap, nh, to.dst, head, ports, cache) else { continue };
            // Committed: what pre_route does with a known flow's packet.
            ct.hit_to(snap, m, idx, dir, hit);
            commit_to(pkt, m, e, head, hit.to);
            n += 1;
        }
        self.counters.tracked += n as u64;
        // (Every lookup either forwarded or a new flow to take.)
        if !self.news.is_empty() && n + self.news.len() == q {
            n += self.take_new_flows(snap, ct, burst);
        }
        n
    }

    /// Queues a new flow's packet `m` (`at`: its position and its key's
    /// hash) for `take_new_flows` when its session is this worker's to
    /// create (with several workers, a flow another worker owns is handed
    /// off to it, by the worker loop), `pre_route` would translate nothing
    /// of it (`Deferral::allows`) or only its destination to a
    /// load-balancer member (`Conntrack::lb_new`), and it can be forwarded
    /// (to that member). (Out of line: in the loop over known flows'
    /// packets, it had that loop keep more values on the stack.)
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn queue_new(
        &mut self,
        snap: &Snapshot,
        ct: &Conntrack,
        deferral: &Deferral,
        m: &Meta,
        head: Head,
        ports: usize,
        cache: &mut EgressCache,
        at: (u16, u64),
    ) {
        if !ct.owns_new(snap, m) {
            return;
        }
        let (dst, lb) = if deferral.allows(m) {
            (m.dst as u32, None)
        } else if let Some((k, to)) = ct.lb_new(snap, m) {
            (to.dst, Some((k, to)))
        } else {
            return;
        };
        if let Some(e) = egress(snap, dst, head, ports, cache) {
            self.news.push(Fresh { at: at.0, hash: at.1, lb });
            self.news_to.push((head, e));
        }
    }

    /// The burst's new flows, when it takes every other packet of the
    /// burst: those to a listener translated to their member as `pre_route`
    /// does, routed as the route stage would, their policy, translation
    /// and sessions as `post_route`'s (`Conntrack::track_new`), rewritten as
    /// the neighbour stage would; returns how many it forwarded (the rest
    /// are dropped with their reason, and stay in the burst).
    ///
    /// Only a whole burst: then the full pipeline has nothing of it left
    /// that could come before these in its order, and their sessions, ports
    /// and counters come out as the full pipeline's. (With a packet of the
    /// burst left to it, a new flow taken here would take its port first
    /// where the full pipeline gives it to an earlier packet, or make a
    /// later packet of the same flow a known flow's where the full
    /// pipeline, which looks up the whole burst before it tracks any new
    /// flow, counts it as a new flow's.)
    #[inline(never)]
    fn take_new_flows<P: PacketBuf>(&mut self, snap: &Snapshot, ct: &mut Conntrack, burst: &mut Burst<P>) -> usize {
        for (f, &(head, e)) in self.news.iter().zip(&self.news_to) {
            let (pkt, m) = burst.pair_mut(f.at as usize);
            // (What `pre_route` does before the route stage.)
            if let Some((_, to)) = f.lb {
                Conntrack::lb_translate(pkt, m, to);
            }
            route(pkt, m, e, head);
        }
        ct.track_new(snap, burst, &self.news);
        let mut n = 0;
        for (f, &(_, e)) in self.news.iter().zip(&self.news_to) {
            let (pkt, m) = burst.pair_mut(f.at as usize);
            // (A source translation leaves the destination, and so the next
            // hop's MAC, as they were.)
            if m.verdict == Verdict::Forward {
                write_macs(pkt, e);
                n += 1;
            } else {
                self.counters.new_dropped += 1;
            }
        }
        self.counters.new_flows += n as u64;
        n
    }
}

/// Where a packet goes when the route stage would forward it and the
/// neighbour stage rewrite it.
#[derive(Debug, Clone, Copy)]
struct Egress {
    nh: u32,
    port: u16,
    /// The Ethernet header's MACs as written, the next hop's then the
    /// egress port's: bytes 0..8 and 8..12 as words in machine order (two
    /// stores; as a `[u8; 12]` the copy took four stores and shifts).
    macs: (u64, u32),
}

impl Egress {
    #[inline(always)]
    fn new(nh: u32, port: u16, next_hop: Mac, src: Mac) -> Egress {
        let mut b = [0; 12];
        b[..6].copy_from_slice(&next_hop.0);
        b[6..].copy_from_slice(&src.0);
        let (lo, hi) = b.split_at(8);
        let macs = (
            u64::from_ne_bytes(lo.try_into().unwrap_or_default()),
            u32::from_ne_bytes(hi.try_into().unwrap_or_default()),
        );
        Egress { nh, port, macs }
    }
}

/// A next hop `egress` resolved in this burst, with its port's MTU: a
/// burst's packets mostly share a few next hops, and the adjacency, port
/// and neighbour behind one do not change within a snapshot. A gateway's
/// MAC is the same for every destination; a connected next hop's is the
/// destination's own, so it is reused only for the same destination.
#[derive(Debug, Clone, Copy)]
struct Resolved {
    /// Its next hop is `e.nh`.
    dst: u32,
    gateway: bool,
    mtu: u16,
    e: Egress,
}

impl Default for Resolved {
    fn default() -> Self {
        // NO_ROUTE never reaches the comparison: nothing matches.
        let e = Egress::new(NO_ROUTE, 0, Mac::ZERO, Mac::ZERO);
        Resolved { dst: 0, gateway: false, mtu: 0, e }
    }
}

/// Slots of the burst's next-hop cache (a power of two).
const EGRESS_SLOTS: usize = 8;

/// The next hops `egress` resolved in this burst, direct-mapped: a gateway
/// by its adjacency, a host on a connected network by its adjacency and
/// address. With one remembered next hop, traffic spread over two gateways,
/// or over a load balancer's members on one network, resolved again about
/// every other packet (route stage, port and neighbour lookups).
#[derive(Debug, Default, Clone, Copy)]
struct EgressCache([Resolved; EGRESS_SLOTS]);

impl EgressCache {
    #[inline(always)]
    fn gateway_slot(nh: u32) -> usize {
        nh as usize % EGRESS_SLOTS
    }

    #[inline(always)]
    fn host_slot(nh: u32, dst: u32) -> usize {
        nh.wrapping_add(dst) as usize % EGRESS_SLOTS
    }

    /// What was resolved for `dst` through `nh` in this burst.
    #[inline(always)]
    fn get(&self, nh: u32, dst: u32) -> Option<&Resolved> {
        let g = &self.0[Self::gateway_slot(nh)];
        if g.e.nh == nh && g.gateway {
            return Some(g);
        }
        let c = &self.0[Self::host_slot(nh, dst)];
        (c.e.nh == nh && c.dst == dst && !c.gateway).then_some(c)
    }

    #[inline(always)]
    fn put(&mut self, l: Resolved) {
        let i = if l.gateway { Self::gateway_slot(l.e.nh) } else { Self::host_slot(l.e.nh, l.dst) };
        self.0[i] = l;
    }
}

/// The route and neighbour stages' decision for a packet to `dst` (`h`
/// from `head`) when it is forwarded to a connected or gateway next hop
/// (not ECMP) with a known MAC on a port below `ports`, not the management
/// port, within the egress MTU, with a TTL left; None otherwise.
#[inline(always)]
fn egress(snap: &Snapshot, dst: u32, h: Head, ports: usize, cache: &mut EgressCache) -> Option<Egress> {
    egress_via(snap, snap.fib4.lookup(dst), dst, h, ports, cache)
}

/// `egress` with the route lookup of `dst` done: `nh`.
#[inline(always)]
fn egress_via(snap: &Snapshot, nh: u32, dst: u32, h: Head, ports: usize, cache: &mut EgressCache) -> Option<Egress> {
    if nh == NO_ROUTE || h.ttl <= 1 {
        return None;
    }
    if let Some(l) = cache.get(nh, dst) {
        return (h.total <= l.mtu).then_some(l.e);
    }
    let adj = snap.adj.get(nh as usize)?;
    if !matches!(adj.kind, AdjKind::Connected | AdjKind::Gateway) || adj.port as usize >= ports {
        return None;
    }
    let out = snap.port(adj.port)?;
    if out.role == PortRole::Management || h.total > out.mtu {
        return None;
    }
    let next_hop = next_hop_mac(snap, adj, dst as u128, true).ok()?;
    let e = Egress::new(nh, adj.port, next_hop, out.mac);
    cache.put(Resolved { dst, gateway: adj.kind == AdjKind::Gateway, mtu: out.mtu, e });
    Some(e)
}

/// Forwards a packet `egress` accepted: any trailer cut as the parse stage
/// does, the MACs rewritten as the neighbour stage's `rewrite_l2` does
/// (the header is untagged and IPv4 already: nothing to strip, the
/// EtherType stays), the TTL decremented with the checksum updated as
/// `Ipv4Packet::set_ttl` does (RFC 1624, `checksum::ttl_decremented`;
/// `head` checked the 34 bytes).
#[inline(always)]
fn commit<P: PacketBuf>(pkt: &mut P, m: &mut Meta, e: Egress, h: Head) {
    // (`route` then `write_macs` in one access to the frame: as the two
    // calls, it took 10 instructions a packet more on route-64b-1k.)
    m.nh = e.nh;
    m.out_port = e.port;
    pkt.trim(14 + h.total as usize);
    commit_frame(pkt.data_mut(), e, h);
    m.verdict = Verdict::Forward;
}

/// `commit` for a known flow's TCP or UDP packet, translated to `to` first
/// as `pre_route` would (`retarget_v4`), in the same access to the frame.
#[inline(always)]
fn commit_to<P: PacketBuf>(pkt: &mut P, m: &mut Meta, e: Egress, h: Head, to: Tuple4) {
    m.nh = e.nh;
    m.out_port = e.port;
    pkt.trim(14 + h.total as usize);
    let f = pkt.data_mut();
    retarget_v4(f, m.proto, to);
    commit_frame(f, e, h);
    m.verdict = Verdict::Forward;
}

/// The frame's part of `commit`: MACs, TTL and header checksum.
#[inline(always)]
fn commit_frame(f: &mut [u8], e: Egress, h: Head) {
    if let Some(f) = f.first_chunk_mut::<26>() {
        f[0..8].copy_from_slice(&e.macs.0.to_ne_bytes());
        f[8..12].copy_from_slice(&e.macs.1.to_ne_bytes());
        f[22] = h.ttl - 1;
        let c = checksum::ttl_decremented([f[24], f[25]]);
        f[24..26].copy_from_slice(&c);
    }
}

/// What the route stage does with a packet `egress` accepted (with the
/// parse stage's cut of any trailer): egress port and next hop set, TTL
/// decremented with the checksum updated, `Verdict::Forward`.
#[inline(always)]
fn route<P: PacketBuf>(pkt: &mut P, m: &mut Meta, e: Egress, h: Head) {
    m.nh = e.nh;
    m.out_port = e.port;
    pkt.trim(14 + h.total as usize);
    if let Some(f) = pkt.data_mut().first_chunk_mut::<26>() {
        f[22] = h.ttl - 1;
        let c = checksum::ttl_decremented([f[24], f[25]]);
        f[24..26].copy_from_slice(&c);
    }
    m.verdict = Verdict::Forward;
}

/// What the neighbour stage does with a routed packet: the next hop's and
/// the egress port's MACs written.
#[inline(always)]
fn write_macs<P: PacketBuf>(pkt: &mut P, e: Egress) {
    if let Some(f) = pkt.data_mut().first_chunk_mut::<12>() {
        f[0..8].copy_from_slice(&e.macs.0.to_ne_bytes());
        f[8..12].copy_from_slice(&e.macs.1.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Within a snapshot an adjacency is a gateway or a connected network
    /// for good: here even indices are gateways, odd ones connected.
    fn entry(nh: u32, dst: u32, tag: u8) -> Resolved {
        let e = Egress::new(nh, tag as u16, Mac([tag; 6]), Mac::ZERO);
        Resolved { dst, gateway: nh.is_multiple_of(2), mtu: 1500, e }
    }

    /// The cache may forget, never confuse: whatever it returns is what was
    /// last resolved for that gateway, or for that host behind that
    /// connected adjacency; and what was just put is found.
    #[test]
    fn the_egress_cache_returns_only_what_was_resolved_for_the_same_next_hop() {
        let mut cache = EgressCache::default();
        let mut model: HashMap<(u32, u32), u8> = HashMap::new();
        let key = |nh: u32, dst: u32| if nh.is_multiple_of(2) { (nh, 0) } else { (nh, dst) };
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let (mut hits, mut misses) = (0, 0);
        for round in 0..200_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let nh = (x % 13) as u32;
            let dst = 0x0a00_0000 | ((x >> 8) % 24) as u32;
            if round % 3 == 0 {
                let tag = (x >> 20) as u8;
                cache.put(entry(nh, dst, tag));
                model.insert(key(nh, dst), tag);
                let got = cache.get(nh, dst).expect("just put");
                assert_eq!(got.e.macs, entry(nh, dst, tag).e.macs);
            } else {
                match cache.get(nh, dst) {
                    Some(l) => {
                        hits += 1;
                        let tag = model[&key(nh, dst)];
                        assert_eq!((l.e.nh, l.e.macs), (nh, entry(nh, dst, tag).e.macs), "nh {nh} dst {dst:x}");
                        assert!(l.gateway || l.dst == dst);
                    }
                    None => misses += 1,
                }
            }
        }
        assert!(hits > 10_000 && misses > 10_000, "hits {hits}, misses {misses}");
    }

    /// Two gateways, and two hosts on one connected network, are all held
    /// at once (with one remembered next hop, each packet alternating
    /// between them resolved again).
    #[test]
    fn two_gateways_and_two_hosts_of_one_network_share_the_cache() {
        let mut cache = EgressCache::default();
        let all = [entry(2, 0, 1), entry(4, 0, 2), entry(5, 0xc0a8_020b, 3), entry(5, 0xc0a8_020c, 4)];
        for l in all {
            cache.put(l);
        }
        for l in all {
            let got = cache.get(l.e.nh, if l.gateway { 0x0808_0808 } else { l.dst }).expect("held");
            assert_eq!(got.e.macs, l.e.macs);
        }
        assert!(cache.get(5, 0xc0a8_020d).is_none(), "another host on that network");
    }
}
