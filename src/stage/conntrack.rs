//! Connection tracking, NAT and the firewall's per-flow decisions: the
//! stateful part of the pipeline, one instance (one session table, one set
//! of port mappings) per worker.
//!
//! It runs in two halves around the route stage:
//! - [`Conntrack::pre_route`]: looks the whole burst up in the session table
//!   (bulk, prefetched). Packets of known flows are translated both ways at
//!   once (the session holds the key of each direction; a packet is
//!   rewritten to the reverse of the other direction's key) and refresh the
//!   session. ICMP errors are translated by the flow they quote (RFC 5508).
//!   Later fragments take the translation their first fragment got. New
//!   flows get their destination translation here, before routing:
//!   metadata redirect, floating IP, and (in endpoint-independent filtering
//!   mode) inbound packets to a live masquerade mapping.
//! - [`Conntrack::post_route`]: new flows, now routed, meet the policy (the
//!   INPUT policy for the appliance's own addresses, the `anchors`
//!   classifier for forwarded traffic); accepted ones get their source
//!   translation (floating IP, masquerade with an RFC 4787 port mapping,
//!   hairpin) and a session, so replies pass and are translated back.
//!
//! No-NAT cases, as the original appliance: traffic that arrived on the
//! external interface is never masqueraded, traffic to the router's own
//! addresses is local (never translated), IPv6 is never translated.

use super::firewall::{acl_key, input_policy};
use super::lb::{Flow, HEALTH_PORTS, LbConfig, LbSnat, MAX_MEMBERS, SLOT_DRAINING};
use super::nat::{Tuple4, quoted_v4, rewrite_v4, translate_icmp_error};
use super::{DropReason as D, Filtering, Punt, Snapshot};
use crate::dataplane::query::{SessionQuery, SessionView};
use crate::packet::ethernet::ETHER_HEADER_LEN;
use crate::packet::ipv4::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use crate::packet::l4::{icmp_is_echo, icmp_is_error};
use crate::packet::{Burst, L3, MAX_BURST, Meta, PacketBuf, Verdict};
use crate::table::addrmap::AddrMap;
use crate::table::natmap::{NatMap, Start, proto_slot, worker_ranges};
use crate::table::session::{Expiring, FlowKey, Session, SessionError, SessionState, SessionTable, Timeouts};
use ahash::RandomState;

/// The metadata service address, 169.254.169.254.
pub const METADATA_ADDR: u32 = 0xa9fe_a9fe;

/// Session flag: holds a reference on the port mapping `Session::user`.
pub const F_MAPPING: u8 = 1;
/// What translation a session does (bits 1-3 of `Session::flags`).
pub const NAT_SHIFT: u8 = 1;

/// The kinds of translation, as listed by `ctl sessions`.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    None = 0,
    Masquerade = 1,
    FloatingOut = 2,
    FloatingIn = 3,
    Hairpin = 4,
    /// Inbound through a mapping (endpoint-independent filtering).
    Inbound = 5,
    /// To a load-balancer listener, translated to the member it was
    /// given (`Session::user` is the member's slot).
    Lb = 6,
}

impl NatKind {
    pub fn of(flags: u8) -> NatKind {
        match (flags >> NAT_SHIFT) & 7 {
            1 => NatKind::Masquerade,
            2 => NatKind::FloatingOut,
            3 => NatKind::FloatingIn,
            4 => NatKind::Hairpin,
            5 => NatKind::Inbound,
            6 => NatKind::Lb,
            _ => NatKind::None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            NatKind::None => "none",
            NatKind::Masquerade => "masquerade",
            NatKind::FloatingOut => "floating-out",
            NatKind::FloatingIn => "floating-in",
            NatKind::Hairpin => "hairpin",
            NatKind::Inbound => "inbound-mapping",
            NatKind::Lb => "load-balancer",
        }
    }
}

/// How a worker's tracker is sized and where it sits among the workers.
#[derive(Debug, Clone, Copy)]
pub struct ConntrackConfig {
    pub capacity: usize,
    pub timeouts: Timeouts,
    pub worker: usize,
    pub workers: usize,
    /// Keys the worker's hashes and its choice of translated ports. `None`
    /// (in service) draws the keys at random, so hostile traffic cannot aim
    /// at them; `replay` and tests fix them so a run repeats exactly.
    pub seed: Option<u64>,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig { capacity: 65_536, timeouts: Timeouts::default(), worker: 0, workers: 1, seed: None }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ConntrackCounters {
    pub hits: u64,
    pub new_flows: u64,
    pub masquerade: u64,
    pub floating_in: u64,
    pub floating_out: u64,
    pub hairpin: u64,
    pub inbound_mapping: u64,
    pub icmp_errors: u64,
    pub fragments: u64,
    pub metadata: u64,
    pub blocked: u64,
    pub lb_sessions: u64,
    pub lb_no_member: u64,
}

/// What pre-route found for a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Kind {
    /// Not for the tracker (ARP, dropped, or already decided).
    #[default]
    Skip,
    /// A packet of a known flow, translated.
    Hit,
    /// The first packet of a flow.
    New,
    /// Related to a known flow (ICMP error, later fragment): passes.
    Related,
    /// Cannot belong to a session or start a translated one unless it is
    /// routed out of the external port (see `Deferral`): looked at again
    /// after routing, and then only if it is.
    Deferred,
    /// A later fragment whose first fragment is earlier in the same burst
    /// (`Info::first`), not yet recorded: translated as that one was at the
    /// end of `post_route`, then routed again.
    FragWait,
    /// An ICMPv4 error quoting no known flow: never translated and never
    /// the start of a session (its "flow" would be keyed by its type and
    /// code, and a translation of its outer header alone would leave its
    /// quote as it was). Routed as it is under the forwarding and INPUT
    /// policies; dropped where it would need a translation (RFC 5508
    /// REQ-4, REQ-5).
    Error,
}

/// What `fast_target` found for a packet of a known flow: the tuple it is
/// translated to, and the member slot of a balanced session (read with the
/// record, so that `hit_to` need not read it again).
#[derive(Debug, Clone, Copy)]
pub(super) struct FastHit {
    pub to: Tuple4,
    lb: Option<u16>,
}

/// A new flow the fast path sets up (`Conntrack::track_new`): its position
/// in the burst, its key's hash and, for a flow to a load-balancer
/// listener, the member chosen and the tuple the packet is translated to
/// (`Conntrack::lb_new`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Fresh {
    pub at: u16,
    pub hash: u64,
    pub lb: Option<(u16, Tuple4)>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Info {
    kind: Kind,
    /// Destination translated before routing (floating IP).
    dnat: bool,
    /// Inbound through an endpoint-independent mapping.
    inbound: bool,
    /// The flow key as the packet arrived: set for `Hit` and `New` only
    /// (`reset` leaves the last packet's).
    orig: FlowKey,
    /// `orig`'s hash in the session table, when its lookup computed it
    /// (a new flow's session is inserted under it without hashing again).
    hash: Option<u64>,
    /// For `FragWait`: the burst position of the first fragment.
    first: u16,
    /// To a load-balancer listener: the member chosen (index into
    /// `LbConfig::members`).
    lb: Option<u16>,
}

impl Info {
    /// Back to `Skip` with nothing found, without rewriting `orig` and
    /// `first` (their kinds set them): most of the record's bytes.
    #[inline(always)]
    fn reset(&mut self) {
        self.kind = Kind::Skip;
        self.dnat = false;
        self.inbound = false;
        self.hash = None;
        self.lb = None;
    }
}

/// A first fragment's translation, for the rest of its datagram.
#[derive(Debug, Clone, Copy, Default)]
struct Frag {
    src: u128,
    dst: u128,
    id: u32,
    proto: u8,
    deadline: u32,
    new_src: u128,
    new_dst: u128,
    used: bool,
}

const FRAG_SLOTS: usize = 1024;
/// How long a datagram's later fragments are accepted after its first (s).
const FRAG_TIMEOUT: u32 = 30;

pub struct Conntrack {
    pub sessions: SessionTable,
    pub ports: NatMap,
    frags: Vec<Frag>,
    frag_hasher: RandomState,
    info: Vec<Info>,
    keys: Vec<FlowKey>,
    found: Vec<Option<(u32, u8)>>,
    hashes: Vec<u64>,
    /// Burst positions of the lookups `post_route` makes (deferred packets
    /// routed out of the external port), in the order of `keys`.
    late: Vec<usize>,
    /// New flows of the burst being planned: (position, plan).
    planned: Vec<(usize, Plan)>,
    /// Per burst position, for `post_route`'s new flows that may take a
    /// port mapping: where their port map probes start.
    starts: Vec<Option<Start>>,
    /// Translated source ports given to balanced flows of this burst, as
    /// `lb_taken_key` (not in the table yet).
    lb_taken: Vec<u64>,
    /// `post_route` left packets for the route stage (see `take_reroute`).
    reroute: bool,
    /// What `pre_route` saw in the burst, for `post_route` to skip the
    /// passes that would find nothing: deferred packets, fragments.
    any_deferred: bool,
    any_fragment: bool,
    /// This burst's expiry is done (`expire_burst`): `pre_route` skips it.
    pub(crate) swept: bool,
    /// Seconds, from the worker's clock or the capture's timestamps.
    pub now: u32,
    /// This worker, of how many (`ConntrackConfig`): a new flow's session
    /// belongs to its owner's table (`owner`).
    worker: usize,
    workers: usize,
    pub counters: ConntrackCounters,
    /// Per load-balancer member slot: sessions in use, sessions created,
    /// packets of its sessions (both directions).
    pub lb: LbCounters,
}

/// A worker's per-member load-balancer counters, indexed by member slot.
#[derive(Debug, Clone)]
pub struct LbCounters {
    pub active: Vec<u32>,
    pub created: Vec<u64>,
    pub packets: Vec<u64>,
    /// When this worker first saw the member draining (0: not draining).
    drain_seen: Vec<u32>,
    /// One past the highest slot used.
    pub high: usize,
}

impl Default for LbCounters {
    fn default() -> Self {
        LbCounters {
            active: vec![0; MAX_MEMBERS],
            created: vec![0; MAX_MEMBERS],
            packets: vec![0; MAX_MEMBERS],
            drain_seen: vec![0; MAX_MEMBERS],
            high: 0,
        }
    }
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack::new(ConntrackConfig::default())
    }
}

#[inline]
pub(super) fn key_of(m: &Meta) -> FlowKey {
    FlowKey::new(m.src, m.dst, m.sport, m.dport, m.proto, m.l3 == L3::Ipv6)
}

#[inline]
fn tuple_of(m: &Meta) -> Tuple4 {
    Tuple4 { src: m.src as u32, dst: m.dst as u32, sport: m.sport, dport: m.dport }
}

/// Rewrites an IPv4 packet (its headers and `m`) to addresses and ports
/// `to`, when they differ from what it carries.
#[inline(always)]
fn translate_to<P: PacketBuf>(pkt: &mut P, m: &mut Meta, to: Tuple4) {
    let from = tuple_of(m);
    if from != to {
        let (l3, l4) = (m.l3_off as usize, m.l4_off as usize);
        rewrite_v4(pkt.data_mut(), l3, l4, m.proto, m.frag != 2, from, to);
        set_tuple(m, to);
    }
}

#[inline]
fn set_tuple(m: &mut Meta, t: Tuple4) {
    if !m.xlated {
        m.xlated = true;
        (m.orig_src, m.orig_dst, m.orig_sport, m.orig_dport) = (m.src as u32, m.dst as u32, m.sport, m.dport);
    }
    m.src = t.src as u128;
    m.dst = t.dst as u128;
    m.sport = t.sport;
    m.dport = t.dport;
    m.hash = 0;
}

impl Conntrack {
    pub fn new(cfg: ConntrackConfig) -> Conntrack {
        let (low, high) = worker_ranges(cfg.workers.max(1), cfg.worker);
        let state = |k: u64| match cfg.seed {
            Some(s) => RandomState::with_seeds(s, s ^ k, s.rotate_left(17), k),
            None => RandomState::new(),
        };
        Conntrack {
            sessions: SessionTable::new(cfg.capacity, cfg.timeouts).keyed(&state(1)),
            ports: NatMap::new(low, high).keyed(&state(2)),
            frags: vec![Frag::default(); FRAG_SLOTS],
            frag_hasher: state(3),
            info: vec![Info::default(); MAX_BURST],
            keys: vec![FlowKey::default(); MAX_BURST],
            found: vec![None; MAX_BURST],
            hashes: vec![0; MAX_BURST],
            late: Vec::with_capacity(MAX_BURST),
            planned: Vec::with_capacity(MAX_BURST),
            starts: vec![None; MAX_BURST],
            lb_taken: Vec::with_capacity(MAX_BURST),
            reroute: false,
            any_deferred: false,
            any_fragment: false,
            swept: false,
            now: 0,
            worker: cfg.worker,
            workers: cfg.workers.max(1),
            counters: ConntrackCounters::default(),
            lb: LbCounters::default(),
        }
    }

    /// Backs the session table and the port map with memory now, so that
    /// the forwarding path never waits on the kernel for a page as they
    /// fill (see `mem::prefault`). Workers call it before their first
    /// burst; it takes as long as zeroing the table (about 95 bytes a
    /// session).
    pub fn prefault(&mut self) {
        self.sessions.prefault();
        self.ports.prefault();
    }

    /// The expiry work that goes with a burst of `n` packets, before any of
    /// them is looked up. The fast path does it for the burst it is given,
    /// and marks it done (`swept`) for the `pre_route` that follows with
    /// what it left: either way a burst expires the same sessions before its
    /// lookups, so the port mappings its new flows find free are the same.
    #[inline]
    pub fn expire_burst(&mut self, n: usize) {
        self.expire(2 * n + 16);
    }

    /// Frees idle sessions (and their port mappings), a bounded amount of
    /// work per call.
    pub fn expire(&mut self, budget: usize) -> usize {
        let (ports, lb) = (&mut self.ports, &mut self.lb);
        self.sessions.expire_with(self.now, budget, |e| match e {
            // (Its port mapping's reference count, in the port map's owner
            // array: a random line, fetched with the batch's index lines.)
            Expiring::Due(s) if s.flags & F_MAPPING != 0 => ports.prefetch_port(s.proto(), s.user),
            Expiring::Due(_) => {}
            Expiring::Freed(s) => release_mapping(ports, lb, s),
        })
    }

    /// Adds the sessions of record slots `from..` matching `q`'s filter to
    /// its buffer, looking at no more than `budget` slots; returns where to
    /// continue, or None when the table has been covered.
    pub fn scan(&self, worker: usize, q: &mut SessionQuery, from: usize, budget: usize) -> Option<usize> {
        let end = (from + budget).min(self.sessions.slots());
        let tuple = |k: &FlowKey| (k.src_addr(), k.sport, k.dst_addr(), k.dport);
        for idx in from..end {
            let Some(s) = self.sessions.get(idx as u32) else { break };
            if s.state == SessionState::Free || self.sessions.is_expired(idx as u32, self.now) {
                continue;
            }
            let f = &q.filter;
            let (o, r) = (tuple(&s.key(0)), tuple(&s.key(1)));
            if f.proto.is_some_and(|p| p != s.proto())
                || f.addr.is_some_and(|a| ![o.0, o.2, r.0, r.2].contains(&a))
                || f.port.is_some_and(|p| ![o.1, o.3, r.1, r.3].contains(&p))
            {
                continue;
            }
            q.matched += 1;
            if q.out.len() < q.out.capacity() {
                q.out.push(SessionView {
                    worker,
                    proto: s.proto(),
                    v6: s.is_v6(),
                    original: o,
                    reply: r,
                    state: s.state.name(),
                    nat: NatKind::of(s.flags).name(),
                    expires_in: s.deadline.wrapping_sub(self.now),
                });
            }
        }
        q.live = self.sessions.len();
        (end < self.sessions.slots()).then_some(end)
    }

    /// Removes every session (for tests and `ctl`).
    pub fn clear(&mut self) {
        let idx: Vec<u32> = self.sessions.iter().map(|(i, _)| i).collect();
        for i in idx {
            if let Some(s) = self.sessions.get(i).copied() {
                release_mapping(&mut self.ports, &mut self.lb, &s);
            }
            self.sessions.remove(i);
        }
    }

    pub fn pre_route<P: PacketBuf>(&mut self, snap: &Snapshot, burst: &mut Burst<P>) {
        let n = burst.len();
        if !std::mem::take(&mut self.swept) {
            self.expire_burst(n);
        }
        // Without a forwarding policy, only flows through the external port
        // and to translated addresses are tracked.
        let defer = snap.acl.is_empty() && !snap.nat.track_all;
        let deferral = Deferral::of(snap);
        // Pass 1: classify and gather the keys to look up.
        let mut lookups = 0;
        let (mut any_deferred, mut any_fragment) = (false, false);
        for i in 0..n {
            let (pkt, m) = burst.pair_mut(i);
            self.info[i].reset();
            if m.verdict == Verdict::Drop || !matches!(m.l3, L3::Ipv4 | L3::Ipv6) {
                continue;
            }
            any_fragment |= m.frag != 0;
            if defer && deferral.allows(m) {
                self.info[i].kind = Kind::Deferred;
                any_deferred = true;
                continue;
            }
            if m.frag == 2 {
                self.later_fragment(pkt, m, i);
                if m.verdict == Verdict::Drop && m.reason == D::FragmentWithoutFirst as u8 {
                    // Fragments travel together: the first may be right
                    // before it in this burst, not recorded yet.
                    let (src, dst, id, proto) = (m.src, m.dst, m.frag_id, m.proto);
                    let first = (0..i).rev().find(|&j| {
                        let f = burst.meta(j);
                        f.frag == 1 && f.src == src && f.dst == dst && f.frag_id == id && f.proto == proto
                    });
                    if let Some(j) = first {
                        self.info[i].kind = Kind::FragWait;
                        self.info[i].first = j as u16;
                    }
                }
                continue;
            }
            if self.icmp_error(pkt, m) {
                self.info[i].kind = Kind::Related;
                continue;
            }
            // (`icmp_error` translates no fragment: a first fragment of an
            // error is one of these too.)
            if m.l3 == L3::Ipv4 && m.proto == PROTO_ICMP && icmp_is_error(m.icmp_type) {
                let info = &mut self.info[i];
                info.kind = Kind::Error;
                // (For `record_fragment`: a first fragment's datagram stays
                // as it came.)
                info.orig = key_of(m);
                // To a floating IP: only a translation would take it on.
                if snap.nat.dnat.contains_key(&(m.dst as u32)) {
                    m.drop(D::NatIcmpErrorNoFlow as u8);
                }
                continue;
            }
            // The key is built here, after the calls above, so that it goes
            // straight to its two stores rather than living across them.
            let key = key_of(m);
            let info = &mut self.info[i];
            info.kind = Kind::Hit; // provisional: looked up below
            info.orig = key;
            self.queue_lookup(lookups, key);
            lookups += 1;
        }
        (self.any_deferred, self.any_fragment) = (any_deferred, any_fragment);
        // Pass 2: bulk lookups.
        self.lookup_queued(lookups);
        // Pass 3: translate hits, prepare new flows.
        let mut j = 0;
        for i in 0..n {
            if self.info[i].kind != Kind::Hit {
                continue;
            }
            let found = self.found[j];
            j += 1;
            let (pkt, m) = burst.pair_mut(i);
            // A session past its deadline is gone, freed or not yet.
            let found = found.filter(|&(idx, _)| !self.retire_if_expired(idx));
            match found {
                Some((idx, dir)) => self.hit(snap, pkt, m, idx, dir),
                None => {
                    self.info[i].kind = Kind::New;
                    self.info[i].hash = Some(self.hashes[j - 1]);
                    self.counters.new_flows += 1;
                    self.new_flow_dnat(snap, pkt, m, i);
                }
            }
        }
    }

    /// Queues `key` as lookup `j` of a bulk lookup (`lookup_queued`),
    /// prefetching its index line. (The fast path queues its lookups here
    /// too, before `pre_route` runs.)
    #[inline(always)]
    pub(super) fn queue_lookup(&mut self, j: usize, key: FlowKey) {
        self.keys[j] = key;
        let h = self.sessions.hash(&key);
        if !self.sessions.is_empty() {
            self.sessions.prefetch(h);
        }
        self.hashes[j] = h;
    }

    /// Looks up the first `n` queued keys into `found`, 64 at a time (none
    /// in an empty table: a router with no NAT and no policy never pays
    /// for the index).
    #[inline]
    pub(super) fn lookup_queued(&mut self, n: usize) {
        if self.sessions.is_empty() {
            self.found[..n].fill(None);
            return;
        }
        let mut done = 0;
        while done < n {
            let k = (n - done).min(64);
            self.sessions.lookup_bulk_hashed(
                &self.keys[done..done + k],
                &self.hashes[done..done + k],
                &mut self.found[done..done + k],
            );
            done += k;
        }
    }

    /// Whether a new flow's packet `m` (IPv4 TCP or UDP, unfragmented: no
    /// ICMP error, whose owner its quote decides) starts a session of this
    /// worker's, not one to hand off to its owner.
    #[inline]
    pub(super) fn owns_new(&self, snap: &Snapshot, m: &Meta) -> bool {
        debug_assert!(matches!(m.proto, PROTO_TCP | PROTO_UDP) && m.frag == 0);
        self.workers <= 1 || owner_of(snap, m, self.workers) == self.worker
    }

    /// The hash of queued key `j`, as `queue_lookup` computed it.
    #[inline]
    pub(super) fn queued_hash(&self, j: usize) -> u64 {
        self.hashes[j]
    }

    /// What lookup `j` of the last `lookup_queued` found.
    #[inline]
    pub(super) fn queued_result(&self, j: usize) -> Option<(u32, u8)> {
        self.found.get(j).copied().flatten()
    }

    /// The lookups `pre_route` deferred, for packets routed out of the
    /// external port (their destination is not translated, so the route
    /// stands): in bulk, as `pre_route`'s, so that their cache misses
    /// overlap. Keys and hashes are in `keys`/`hashes`, positions in `late`.
    fn late_lookups<P: PacketBuf>(&mut self, snap: &Snapshot, burst: &mut Burst<P>) {
        let n = self.late.len();
        self.lookup_queued(n);
        for j in 0..n {
            let i = self.late[j];
            let found = self.found[j];
            match found.filter(|&(idx, _)| !self.retire_if_expired(idx)) {
                Some((idx, dir)) => {
                    let (pkt, m) = burst.pair_mut(i);
                    self.info[i].kind = Kind::Hit;
                    self.hit(snap, pkt, m, idx, dir);
                }
                None => {
                    self.info[i].hash = Some(self.hashes[j]);
                    self.counters.new_flows += 1;
                }
            }
        }
    }

    /// A packet of live session `idx` arriving in direction `dir`:
    /// translated, its session refreshed (and its TCP state moved), counted.
    #[inline]
    pub(super) fn hit<P: PacketBuf>(&mut self, snap: &Snapshot, pkt: &mut P, m: &mut Meta, idx: u32, dir: u8) {
        self.apply(pkt, m, idx, dir);
        self.refresh(snap, m, idx, dir);
    }

    /// `hit` for the fast path's packet `m` (untagged, IPv4 with a 20-byte
    /// header, unfragmented, TCP or UDP: what the fast path takes) whose
    /// target `fast_target` gave, less the translation, which the fast path
    /// writes into the frame itself (`retarget_v4` to `t.to`, in the same
    /// access as its MACs and TTL): the packet counted, its session
    /// refreshed, a balanced session's member counted. Nothing reads the
    /// metadata's addresses again: the fast path sends the packet as it is.
    #[inline]
    pub(super) fn hit_to(&mut self, snap: &Snapshot, m: &Meta, idx: u32, dir: u8, t: FastHit) {
        debug_assert!((m.l3_off as usize, m.l4_off as usize, m.frag) == (ETHER_HEADER_LEN, ETHER_HEADER_LEN + 20, 0));
        self.counters.hits += 1;
        self.sessions.touch_steady(idx, dir, self.now);
        // `lb_hit`, knowing what `fast_target` ruled out (a member draining
        // with a drain timeout): all that is left of it is to count the
        // packet and clear the member's drain mark.
        if let Some(slot) = t.lb
            && let (Some(p), Some(seen)) =
                (self.lb.packets.get_mut(slot as usize), self.lb.drain_seen.get_mut(slot as usize))
        {
            debug_assert!(snap.lb.drain_timeout == 0 || snap.lb.slot_state(slot) != SLOT_DRAINING);
            *p += 1;
            *seen = 0;
        }
    }

    /// What `hit` does besides translating (`hit_to` the same, less what
    /// `fast_target` ruled out): the packet counted,
    /// its session refreshed (and its TCP state moved), a balanced
    /// session's member counted.
    #[inline]
    fn refresh(&mut self, snap: &Snapshot, m: &mut Meta, idx: u32, dir: u8) {
        self.counters.hits += 1;
        self.sessions.touch(idx, dir, self.now, m.tcp_flags);
        self.lb_hit(snap, m, idx);
    }

    /// For the fast path: what an IPv4 packet (`m`) of session `idx`
    /// arriving in direction `dir` becomes, when `hit` would do nothing else
    /// than translate, refresh and count it. None, and the packet left to
    /// `pre_route`, when the session is past its deadline (it is retired,
    /// and the packet is a new flow), belongs to a draining load-balancer
    /// member with a drain timeout (whose sessions `lb_hit` may end), or is
    /// a TCP connection not established or a segment with SYN, FIN or RST.
    ///
    /// The fast path sends its packets ahead of the rest of the burst; the
    /// last rule keeps that from reordering what moves a connection's
    /// state: the segments that open and close it stay with the full
    /// pipeline, in burst order, and an ACK or data segment of an
    /// established connection changes no state (see `tcp_next`). One order
    /// still matters: when both FINs of a connection are in the full
    /// pipeline's share of a burst and its last ACK in the fast path's, the
    /// ACK is applied first and the connection stays closing (transitory
    /// timeout) instead of entering time-wait; only when its session
    /// expires changes.
    #[inline]
    pub(super) fn fast_target(&self, snap: &Snapshot, m: &Meta, idx: u32, dir: u8) -> Option<FastHit> {
        let s = self.sessions.get(idx)?;
        if s.is_expired_at(self.now) {
            return None;
        }
        // (The fast path's sessions are TCP and UDP: for those this is the
        // TCP test alone, the UDP one being the expiry's.)
        if !s.moves_no_state(m.tcp_flags) {
            return None;
        }
        let lb = (NatKind::of(s.flags) == NatKind::Lb).then_some(s.user);
        if let Some(slot) = lb
            && snap.lb.drain_timeout != 0
            && snap.lb.slot_state(slot) == SLOT_DRAINING
        {
            return None;
        }
        // (An IPv4 key matches IPv4 sessions only.)
        let ([src, dst], [sport, dport]) = (s.addrs_v4(1 - dir as usize), s.ports(1 - dir as usize));
        Some(FastHit { to: Tuple4 { src, dst, sport, dport }.reversed(), lb })
    }

    /// Frees session `idx` if it is past its deadline; true if it is gone
    /// (also when an earlier packet of the burst already retired it).
    #[inline]
    fn retire_if_expired(&mut self, idx: u32) -> bool {
        if !self.sessions.is_expired(idx, self.now) {
            return false;
        }
        if let Some(s) = self.sessions.get(idx).copied()
            && s.state != SessionState::Free
        {
            release_mapping(&mut self.ports, &mut self.lb, &s);
            self.sessions.retire(idx);
        }
        true
    }

    /// Rewrites a packet of session `idx` arriving in direction `dir` into
    /// the reverse of the other direction's key.
    #[inline]
    fn apply<P: PacketBuf>(&mut self, pkt: &mut P, m: &mut Meta, idx: u32, dir: u8) {
        if m.l3 != L3::Ipv4 {
            return;
        }
        let Some(s) = self.sessions.get(idx) else { return };
        translate_to(pkt, m, Tuple4::of_session(s, 1 - dir as usize).reversed());
    }

    /// Counts a packet of a load-balanced session, and ends the sessions of
    /// a draining member once its drain timeout has passed.
    #[inline]
    fn lb_hit(&mut self, snap: &Snapshot, m: &mut Meta, idx: u32) {
        let Some(s) = self.sessions.get(idx) else { return };
        if NatKind::of(s.flags) != NatKind::Lb {
            return;
        }
        let slot = s.user as usize;
        let lb = &mut self.lb;
        let (Some(p), Some(seen)) = (lb.packets.get_mut(slot), lb.drain_seen.get_mut(slot)) else { return };
        *p += 1;
        let timeout = snap.lb.drain_timeout;
        if snap.lb.slot_state(slot as u16) != SLOT_DRAINING || timeout == 0 {
            *seen = 0;
            return;
        }
        if *seen == 0 {
            *seen = self.now.max(1);
        } else if self.now.wrapping_sub(*seen) >= timeout {
            m.drop(D::LbDrained as u8);
            if let Some(s) = self.sessions.get(idx).copied() {
                release_mapping(&mut self.ports, &mut self.lb, &s);
                self.sessions.retire(idx);
            }
        }
    }

    /// Candidate `k` for the source port of a load-balanced flow `from`
    /// the client to the member, translated to `to` (the appliance's
    /// address `to.src`): the client's own port first (k = 0), then independent
    /// pseudo-random ports (no clustering: a run of taken ports does not
    /// lengthen its neighbours' search) in the worker's range, so replies
    /// come back to this worker. None when the candidate is outside the
    /// range, a health-check port, or taken by a flow planned earlier in
    /// this burst (not in the table yet); whether the table has it free is
    /// found by inserting.
    fn lb_port(&self, from: Tuple4, to: Tuple4, k: u64) -> Option<u16> {
        let (client, sport, member, mport) = (from.src, from.sport, to.dst, to.dport);
        let (_, high) = self.ports.ranges();
        let p = if k == 0 {
            sport
        } else {
            let seed = (client as u64) << 32 | (sport as u64) << 16 | (member as u64 & 0xffff);
            let x = (seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xff51_afd7_ed55_8ccd);
            high.lo.wrapping_add(((x ^ (x >> 29)) % high.len().max(1) as u64) as u16)
        };
        // (The appliance's address and the protocol are left out of the
        // burst's check: a false match only makes the flow take another port.)
        let taken = lb_taken_key(member, mport, p);
        (high.contains(p) && !HEALTH_PORTS.contains(&p) && !self.lb_taken.contains(&taken)).then_some(p)
    }

    /// Destination translation of a new flow, before routing.
    fn new_flow_dnat<P: PacketBuf>(&mut self, snap: &Snapshot, pkt: &mut P, m: &mut Meta, i: usize) {
        if m.l3 != L3::Ipv4 {
            return;
        }
        let nat = &snap.nat;
        let dst = m.dst as u32;
        if m.proto == PROTO_TCP
            && dst == METADATA_ADDR
            && m.dport == 80
            && nat.metadata.get(m.in_port as usize).copied().unwrap_or(false)
        {
            m.verdict = Verdict::Local;
            m.punt = Punt::Metadata as u8;
            self.counters.metadata += 1;
            self.info[i].kind = Kind::Skip;
            return;
        }
        let from = tuple_of(m);
        let to = if let Some(choice) = self.lb_choice(snap, m) {
            let Some((k, to)) = choice else {
                self.counters.lb_no_member += 1;
                m.drop(D::LbNoMember as u8);
                self.info[i].kind = Kind::Skip;
                return;
            };
            self.info[i].lb = Some(k);
            to
        } else if let Some(&fixed) = nat.dnat.get(&dst) {
            self.info[i].dnat = true;
            Tuple4 { dst: fixed, ..from }
        } else if nat.filtering == Filtering::EndpointIndependent
            && nat.is_masquerade_addr(dst)
            && let Some((addr, port)) = self.ports.owner(m.proto, m.dport)
            && (m.proto != PROTO_ICMP || icmp_is_echo(m.icmp_type))
        {
            self.info[i].inbound = true;
            let sport = if m.proto == PROTO_ICMP { port } else { from.sport };
            Tuple4 { dst: addr, dport: port, sport, ..from }
        } else {
            return;
        };
        rewrite_v4(pkt.data_mut(), m.l3_off as usize, m.l4_off as usize, m.proto, true, from, to);
        set_tuple(m, to);
    }

    /// A new flow's IPv4 packet `m` to a load-balancer listener: the member
    /// chosen for it (an index into `LbConfig::members`) and the tuple it
    /// is translated to. None when its destination is no listener's;
    /// `Some(None)` when the listener has no member to take it.
    #[inline]
    fn lb_choice(&self, snap: &Snapshot, m: &Meta) -> Option<Option<(u16, Tuple4)>> {
        let l = snap.lb.listener(m.dst as u32, m.proto, m.dport)?;
        let lb = &*snap.lb;
        let from = tuple_of(m);
        let flow = Flow { src: from.src, dst: from.dst, sport: from.sport, dport: from.dport, proto: m.proto };
        let pick = l.pool.and_then(|p| lb.pools.get(p as usize)).and_then(|p| lb.pick(p, flow, &self.lb.active));
        Some(
            pick.and_then(|k| {
                lb.members.get(k as usize).map(|mm| (k, Tuple4 { dst: mm.addr, dport: mm.port, ..from }))
            }),
        )
    }

    /// For the fast path: the member `pre_route` would choose for a new
    /// flow's packet `m` (IPv4 TCP or UDP, unfragmented) to a listener, and
    /// the tuple it would translate the packet to; None when `m` goes to no
    /// listener or finds no member (left to the full pipeline, which drops
    /// it with its reason).
    #[inline]
    pub(super) fn lb_new(&self, snap: &Snapshot, m: &Meta) -> Option<(u16, Tuple4)> {
        debug_assert!(m.l3 == L3::Ipv4 && m.frag == 0);
        self.lb_choice(snap, m).flatten()
    }

    /// What `pre_route` does with such a packet before it is routed: its
    /// destination translated to the member's (`to`, from `lb_new`), in
    /// its headers and in `m` (which keeps the tuple it arrived with).
    #[inline]
    pub(super) fn lb_translate<P: PacketBuf>(pkt: &mut P, m: &mut Meta, to: Tuple4) {
        let (l3, l4) = (m.l3_off as usize, m.l4_off as usize);
        rewrite_v4(pkt.data_mut(), l3, l4, m.proto, true, tuple_of(m), to);
        set_tuple(m, to);
    }

    /// Translates an ICMP error by the session of the packet it quotes;
    /// true when it belongs to a known flow (RFC 5508 REQ-3, REQ-4).
    fn icmp_error<P: PacketBuf>(&mut self, pkt: &mut P, m: &mut Meta) -> bool {
        if m.frag != 0 {
            return false;
        }
        let (l3, l4, end) = (m.l3_off as usize, m.l4_off as usize, pkt.len());
        let data = pkt.data();
        match m.proto {
            PROTO_ICMP if m.l3 == L3::Ipv4 && icmp_is_error(data[l4]) => {
                let Some(q) = quoted_v4(data, l4, end) else { return false };
                let t = q.tuple;
                let key = FlowKey::v4(t.dst, t.src, t.dport, t.sport, q.proto);
                let Some((idx, dir)) = self.sessions.lookup(&key) else { return false };
                if self.retire_if_expired(idx) {
                    return false;
                }
                let Some(s) = self.sessions.get(idx) else { return false };
                let cur = Tuple4::of_session(s, dir as usize);
                let tgt = Tuple4::of_session(s, 1 - dir as usize).reversed();
                let outer = tuple_of(m);
                let outer_to =
                    Tuple4 { src: if outer.src == cur.src { tgt.src } else { outer.src }, dst: tgt.dst, ..outer };
                translate_icmp_error(pkt.data_mut(), l3, l4, end, &q, tgt.reversed(), outer, outer_to);
                set_tuple(m, outer_to);
                self.counters.icmp_errors += 1;
                true
            }
            PROTO_ICMPV6 if m.l3 == L3::Ipv6 && (1..=4).contains(&data[l4]) => {
                // IPv6 is never translated: a known quoted flow makes it related.
                // The quoted IPv6 header and the 8 transport bytes read below.
                let q = l4 + 8;
                if end.min(data.len()) < q + 48 || data[q] >> 4 != 6 {
                    return false;
                }
                let nh = data[q + 6];
                let a = |o: usize| u128::from_be_bytes(data[o..o + 16].try_into().unwrap_or([0; 16]));
                let (src, dst) = (a(q + 8), a(q + 24));
                let p = q + 40;
                let (sp, dp) = match nh {
                    PROTO_TCP | PROTO_UDP => {
                        (u16::from_be_bytes([data[p], data[p + 1]]), u16::from_be_bytes([data[p + 2], data[p + 3]]))
                    }
                    PROTO_ICMPV6 if matches!(data[p], 128 | 129) => {
                        let id = u16::from_be_bytes([data[p + 4], data[p + 5]]);
                        (id, id)
                    }
                    _ => return false,
                };
                self.sessions.lookup(&FlowKey::new(dst, src, dp, sp, nh, true)).is_some()
            }
            _ => false,
        }
    }

    #[inline]
    fn frag_slot(&self, src: u128, dst: u128, id: u32, proto: u8) -> usize {
        self.frag_hasher.hash_one((src, dst, id, proto)) as usize % FRAG_SLOTS
    }

    /// A later fragment: the translation its first fragment got, or a drop.
    fn later_fragment<P: PacketBuf>(&mut self, pkt: &mut P, m: &mut Meta, i: usize) {
        let f = self.frags[self.frag_slot(m.src, m.dst, m.frag_id, m.proto)];
        let hit = f.used
            && f.src == m.src
            && f.dst == m.dst
            && f.id == m.frag_id
            && f.proto == m.proto
            && (self.now.wrapping_sub(f.deadline) as i32) < 0;
        if !hit {
            m.drop(D::FragmentWithoutFirst as u8);
            return;
        }
        if m.l3 == L3::Ipv4 && (f.new_src != m.src || f.new_dst != m.dst) {
            let from = tuple_of(m);
            let to = Tuple4 { src: f.new_src as u32, dst: f.new_dst as u32, ..from };
            rewrite_v4(pkt.data_mut(), m.l3_off as usize, m.l4_off as usize, m.proto, false, from, to);
            set_tuple(m, to);
            self.counters.fragments += 1;
        }
        self.info[i].kind = Kind::Related;
    }

    /// Remembers what a first fragment became, for the rest of the datagram.
    #[inline]
    fn record_fragment(&mut self, m: &Meta, orig: &FlowKey) {
        let (src, dst) = (orig.src_addr(), orig.dst_addr());
        let slot = self.frag_slot(src, dst, m.frag_id, m.proto);
        self.frags[slot] = Frag {
            src,
            dst,
            id: m.frag_id,
            proto: m.proto,
            deadline: self.now.wrapping_add(FRAG_TIMEOUT),
            new_src: m.src,
            new_dst: m.dst,
            used: true,
        };
    }

    /// Deferred packets leaving by the external port, and those for the
    /// appliance (its INPUT policy), are tracked as any other: looked up
    /// now (a hit translated), new flows left for `post_route`'s passes.
    fn track_deferred<P: PacketBuf>(&mut self, snap: &Snapshot, burst: &mut Burst<P>, ext: Option<u16>) {
        self.late.clear();
        for i in 0..burst.len() {
            if self.info[i].kind != Kind::Deferred {
                continue;
            }
            let m = burst.meta(i);
            match m.verdict {
                Verdict::Forward if Some(m.out_port) == ext => {
                    let key = key_of(m);
                    self.info[i] = Info { kind: Kind::New, orig: key, ..Info::default() };
                    self.queue_lookup(self.late.len(), key);
                    self.late.push(i);
                }
                Verdict::Local => {
                    self.info[i] = Info { kind: Kind::New, orig: key_of(m), ..Info::default() };
                    self.counters.new_flows += 1;
                }
                _ => {}
            }
        }
        if !self.late.is_empty() {
            self.late_lookups(snap, burst);
        }
    }

    pub fn post_route<P: PacketBuf>(&mut self, snap: &Snapshot, burst: &mut Burst<P>) {
        let ext = snap.nat.external.map(|(p, _)| p);
        if self.any_deferred {
            self.track_deferred(snap, burst, ext);
        }
        self.new_flows(snap, burst, ext);
        if !self.any_fragment {
            return;
        }
        // First fragments: what the rest of their datagram becomes.
        for i in 0..burst.len() {
            let info = self.info[i];
            let m = burst.meta(i);
            // (A deferred first fragment that was not tracked after all has
            // no translation to record.)
            if matches!(info.kind, Kind::Hit | Kind::New | Kind::Error) && m.frag == 1 && m.verdict != Verdict::Drop {
                let m = *m;
                self.record_fragment(&m, &info.orig);
            }
        }
        // Later fragments that came in the same burst as their first.
        for i in 0..burst.len() {
            if self.info[i].kind == Kind::FragWait {
                let first = *burst.meta(self.info[i].first as usize);
                let (pkt, m) = burst.pair_mut(i);
                self.fragment_as_first(pkt, m, i, &first);
            }
        }
    }

    /// The policy and translation of the burst's new flows (`Kind::New`),
    /// forwarded or for the appliance, in two passes: plans, then sessions
    /// and rewrites.
    fn new_flows<P: PacketBuf>(&mut self, snap: &Snapshot, burst: &mut Burst<P>, ext: Option<u16>) {
        // The new flows that may be masqueraded (leaving by the external
        // port, or hairpinned): their port map lines for pass 1, then, from
        // those lines, the owner lines of the mappings they find (the
        // reference counts `acquire` takes), all in flight together.
        // Where each one's port map probes start is computed once, here,
        // for both prefetches and for `acquire` in `plan`.
        let n = burst.len();
        let (infos, starts) = (&self.info[..n], &mut self.starts[..n]);
        for (i, (info, start)) in infos.iter().zip(starts.iter_mut()).enumerate() {
            let m = burst.meta(i);
            let may_map =
                info.kind == Kind::New && m.verdict == Verdict::Forward && (Some(m.out_port) == ext || info.dnat);
            *start = if may_map { self.ports.start(m.proto, m.src as u32, m.sport) } else { None };
            if let Some(at) = *start {
                self.ports.prefetch(at);
            }
        }
        for (i, start) in starts.iter().enumerate() {
            if let Some(at) = *start {
                let m = burst.meta(i);
                self.ports.prefetch_mapping(at, m.src as u32, m.sport);
            }
        }
        // Pass 1: policy and translation of new flows; the index lines of
        // both keys of each new session are prefetched for pass 2.
        // (The per-packet records are taken out of `self` for the two
        // passes, to be read in place: `plan` and `track` borrow `self`.)
        let infos = std::mem::take(&mut self.info);
        let mut planned = std::mem::take(&mut self.planned);
        planned.clear();
        self.lb_taken.clear();
        for (i, info) in infos.iter().enumerate().take(burst.len()) {
            if !matches!(info.kind, Kind::New | Kind::Error) {
                continue;
            }
            let (_, m) = burst.pair_mut(i);
            match m.verdict {
                Verdict::Local => {
                    if let Err(r) = input_policy(snap, m) {
                        m.drop(r as u8);
                    }
                }
                Verdict::Forward if info.kind == Kind::Error => self.untracked_error(snap, m),
                Verdict::Forward => {
                    if let Some(plan) = self.plan(snap, m, info, self.starts[i]) {
                        planned.push((i, plan));
                    }
                }
                _ => {}
            }
        }
        // Pass 2: sessions and rewrites.
        for (i, plan) in &planned {
            let (pkt, m) = burst.pair_mut(*i);
            self.track(pkt, m, &infos[*i], plan);
        }
        self.info = infos;
        self.planned = planned;
    }

    /// For the fast path: the burst's packets at positions `news` (with
    /// the hashes of their keys), new flows that `post_route` would plan
    /// and track. Each is an untagged IPv4 TCP or UDP packet, unfragmented,
    /// whose lookup found no session, and either not from the external
    /// port and to no translated address (`Deferral::allows`: `pre_route`
    /// would translate nothing) or to a load-balancer listener, its
    /// destination translated to the member's as `pre_route` does
    /// (`lb_new`, `lb_translate`); routed as the route stage would have
    /// (egress port and next hop set, TTL decremented, `Verdict::Forward`).
    /// Counted as new flows; one the policy blocks, or that finds no port
    /// or no room, is dropped with its reason, as `post_route` drops it.
    pub(super) fn track_new<P: PacketBuf>(&mut self, snap: &Snapshot, burst: &mut Burst<P>, news: &[Fresh]) {
        for info in &mut self.info[..burst.len()] {
            info.reset();
        }
        for &Fresh { at, hash, lb } in news {
            let m = burst.meta(at as usize);
            debug_assert!(m.verdict == Verdict::Forward && m.l3 == L3::Ipv4 && m.frag == 0);
            // (A balanced flow's key is the one it arrived with, to the
            // listener: `lb_translate` kept it in `m`.)
            let (orig, lb) = match lb {
                Some((k, _)) => (FlowKey::v4(m.orig_src, m.orig_dst, m.orig_sport, m.orig_dport, m.proto), Some(k)),
                None => (key_of(m), None),
            };
            self.info[at as usize] = Info { kind: Kind::New, orig, hash: Some(hash), lb, ..Info::default() };
        }
        self.counters.new_flows += news.len() as u64;
        self.new_flows(snap, burst, snap.nat.external.map(|(p, _)| p));
    }

    /// Translates a later fragment as its first fragment `first` was, now
    /// that it is recorded, and leaves it for routing again (`take_reroute`);
    /// it stays dropped when the first was not forwarded.
    fn fragment_as_first<P: PacketBuf>(&mut self, pkt: &mut P, m: &mut Meta, i: usize, first: &Meta) {
        if first.verdict != Verdict::Forward {
            return;
        }
        m.verdict = Verdict::Pending;
        self.later_fragment(pkt, m, i);
        self.reroute |= m.verdict == Verdict::Pending;
    }

    /// Whether `post_route` left packets to route (later fragments that
    /// waited for their first fragment); clears the flag.
    pub fn take_reroute(&mut self) -> bool {
        std::mem::take(&mut self.reroute)
    }

    /// The policy and translation of a new forwarded flow: None when it is
    /// dropped (with a reason) or needs no session.
    /// `start`: where the probes of the packet's source endpoint start in
    /// the port map, when `post_route` computed it.
    fn plan(&mut self, snap: &Snapshot, m: &mut Meta, info: &Info, start: Option<Start>) -> Option<Plan> {
        if self.blocked(snap, m) {
            return None;
        }
        if let Some(k) = info.lb {
            return self.plan_lb(snap, m, info, k);
        }
        let nat = &snap.nat;
        let v4 = m.l3 == L3::Ipv4;
        let ext = nat.external;
        let out_ext = ext.is_some_and(|(p, _)| p == m.out_port);
        let in_ext = ext.is_some_and(|(p, _)| p == m.in_port);
        let mut kind = NatKind::None;
        let mut new_src = None;
        if v4 && !in_ext {
            if info.dnat && !out_ext {
                kind = NatKind::Hairpin;
            } else if out_ext {
                match nat.snat.get(&(m.src as u32)) {
                    Some(&f) => {
                        kind = NatKind::FloatingOut;
                        new_src = Some(f);
                    }
                    None => kind = NatKind::Masquerade,
                }
            }
        }
        if matches!(kind, NatKind::Masquerade | NatKind::Hairpin) && ext.is_none() {
            kind = NatKind::None;
        }
        if kind == NatKind::None && info.dnat {
            kind = NatKind::FloatingIn;
        }
        if kind == NatKind::None && info.inbound {
            kind = NatKind::Inbound;
        }
        // Untranslated flows need a session when a policy is in force, and
        // when they came in by the external port (their replies must not be
        // masqueraded on the way back).
        if kind == NatKind::None && !nat.track_all && !(v4 && in_ext) {
            return None;
        }
        let from = Plan::from(m);
        let mut to = from;
        let mut flags = (kind as u8) << NAT_SHIFT;
        let mut user = 0;
        let echo = m.proto == PROTO_ICMP && icmp_is_echo(m.icmp_type);
        match kind {
            NatKind::Masquerade | NatKind::Hairpin => {
                let (_, addr) = ext?;
                to.src = addr;
                if proto_slot(m.proto).is_some() && (m.proto != PROTO_ICMP || echo) {
                    let (addr, port) = (m.src as u32, m.sport);
                    let got = match start {
                        Some(at) => self.ports.acquire_at(at, addr, port),
                        None => self.ports.acquire(m.proto, addr, port),
                    };
                    let Some(p) = got else {
                        m.drop(D::NatPortsExhausted as u8);
                        return None;
                    };
                    to.sport = p;
                    if echo {
                        to.dport = p;
                    }
                    flags |= F_MAPPING;
                    user = p;
                }
            }
            NatKind::FloatingOut => to.src = new_src.unwrap_or(from.src),
            NatKind::Inbound => {
                // The session holds the mapping it came through.
                if let Some(p) = self.ports.lookup(m.proto, m.dst as u32, m.dport) {
                    self.ports.acquire(m.proto, m.dst as u32, m.dport);
                    flags |= F_MAPPING;
                    user = p;
                }
            }
            _ => {}
        }
        Some(self.finish_plan(info, m.proto, to, flags, user))
    }

    /// A forwarded ICMPv4 error quoting no known flow (`Kind::Error`): the
    /// forwarding policy applies to it as to a new flow; one that would be
    /// translated, leaving by the external port from inside (masquerade or
    /// a floating IP), is dropped instead, as RFC 5508 REQ-4 asks: its
    /// quote would still name the inside host. No session either way.
    fn untracked_error(&mut self, snap: &Snapshot, m: &mut Meta) {
        if self.blocked(snap, m) {
            return;
        }
        let ext = snap.nat.external.map(|(p, _)| p);
        if ext == Some(m.out_port) && ext != Some(m.in_port) {
            m.drop(D::NatIcmpErrorNoFlow as u8);
        }
    }

    /// Whether an `anchors` rule blocks new forwarded flow `m`: then it is
    /// dropped and counted.
    #[inline]
    fn blocked(&mut self, snap: &Snapshot, m: &mut Meta) -> bool {
        if !snap.acl.is_empty()
            && let Some((_, false)) = snap.acl.classify(&acl_key(m))
        {
            self.counters.blocked += 1;
            m.drop(D::BlockedByRule as u8);
            return true;
        }
        false
    }

    /// The translation of a new flow to a listener, its member chosen
    /// (`member`) and its destination already translated.
    fn plan_lb(&mut self, snap: &Snapshot, m: &mut Meta, info: &Info, member: u16) -> Option<Plan> {
        let lb = &*snap.lb;
        let slot = lb.members.get(member as usize)?.slot;
        let from = tuple_of(m);
        let mut to = from;
        if lb.snat == LbSnat::Always
            && let Some(a) = snap.port_addr_v4(m.out_port)
        {
            to.src = a;
            let Some(p) = (0..LB_PORT_TRIES).find_map(|k| self.lb_port(from, to, k)) else {
                m.drop(D::NatPortsExhausted as u8);
                return None;
            };
            to.sport = p;
            self.lb_taken.push(lb_taken_key(to.dst, to.dport, p));
        }
        let flags = (NatKind::Lb as u8) << NAT_SHIFT;
        Some(self.finish_plan(info, m.proto, to, flags, slot))
    }

    /// A new flow's plan from its translation, with both keys' hashes, and
    /// both keys' index lines prefetched for pass 2's insert.
    #[inline(always)]
    fn finish_plan(&self, info: &Info, proto: u8, to: Tuple4, flags: u8, user: u16) -> Plan {
        let mut plan = Plan { to, flags, user, orig_hash: self.orig_hash(info), reply_hash: 0 };
        plan.reply_hash = self.sessions.hash(&plan.reply(info, proto));
        self.sessions.prefetch(plan.orig_hash);
        self.sessions.prefetch(plan.reply_hash);
        plan
    }

    /// The session table hash of a new flow's key, as its lookup computed it.
    #[inline]
    fn orig_hash(&self, info: &Info) -> u64 {
        let h = info.hash.unwrap_or_else(|| self.sessions.hash(&info.orig));
        debug_assert_eq!(h, self.sessions.hash(&info.orig), "a new flow's key was hashed as another");
        h
    }

    /// Creates the session of a planned flow and rewrites the packet; a
    /// flow created meanwhile by an earlier packet of the same burst is
    /// used instead.
    fn track<P: PacketBuf>(&mut self, pkt: &mut P, m: &mut Meta, info: &Info, plan: &Plan) {
        let (from, mut to, flags, user) = (Plan::from(m), plan.to, plan.flags, plan.user);
        let (orig_hash, reply_hash) = (plan.orig_hash, plan.reply_hash);
        let mapping = (flags & F_MAPPING != 0).then_some(user);
        let reply = &plan.reply(info, m.proto);
        let mut inserted =
            self.sessions.insert_hashed(&info.orig, orig_hash, reply, reply_hash, self.now, m.tcp_flags, (flags, user));
        if inserted == Err(SessionError::Exists) {
            // A session past its deadline may still hold one of the keys.
            let mut retired = false;
            for k in [&info.orig, reply] {
                if let Some((idx, _)) = self.sessions.lookup(k) {
                    retired |= self.retire_if_expired(idx);
                }
            }
            if retired {
                inserted = self.sessions.insert_hashed(
                    &info.orig,
                    orig_hash,
                    reply,
                    reply_hash,
                    self.now,
                    m.tcp_flags,
                    (flags, user),
                );
            }
        }
        // A balanced flow whose translated source port is taken: other
        // ports, as long as the flow itself is new.
        if inserted == Err(SessionError::Exists)
            && NatKind::of(flags) == NatKind::Lb
            && to.src != from.src
            && self.sessions.lookup(&info.orig).is_none()
        {
            inserted = Err(SessionError::Exists);
            for k in 1..LB_PORT_TRIES {
                let Some(p) = self.lb_port(from, to, k) else {
                    continue;
                };
                let r = FlowKey::v4(to.dst, to.src, to.dport, p, m.proto);
                let h = self.sessions.hash(&r);
                inserted =
                    self.sessions.insert_hashed(&info.orig, orig_hash, &r, h, self.now, m.tcp_flags, (flags, user));
                if inserted != Err(SessionError::Exists) {
                    to.sport = p;
                    break;
                }
            }
            if inserted == Err(SessionError::Exists) {
                m.drop(D::NatPortsExhausted as u8);
                return;
            }
        }
        match inserted {
            Ok(_) => {
                match NatKind::of(flags) {
                    NatKind::Masquerade => self.counters.masquerade += 1,
                    NatKind::FloatingOut => self.counters.floating_out += 1,
                    NatKind::FloatingIn => self.counters.floating_in += 1,
                    NatKind::Hairpin => self.counters.hairpin += 1,
                    NatKind::Inbound => self.counters.inbound_mapping += 1,
                    NatKind::Lb => {
                        self.counters.lb_sessions += 1;
                        let s = user as usize;
                        if let (Some(a), Some(c)) = (self.lb.active.get_mut(s), self.lb.created.get_mut(s)) {
                            *a += 1;
                            *c += 1;
                            self.lb.high = self.lb.high.max(s + 1);
                        }
                    }
                    NatKind::None => {}
                }
                if m.l3 == L3::Ipv4 && from != to {
                    rewrite_v4(pkt.data_mut(), m.l3_off as usize, m.l4_off as usize, m.proto, true, from, to);
                    set_tuple(m, to);
                }
            }
            Err(e) => {
                if let Some(p) = mapping {
                    self.ports.release(m.proto, p);
                }
                match (e, self.sessions.lookup(&info.orig)) {
                    (SessionError::Exists, Some((idx, dir))) => {
                        self.apply(pkt, m, idx, dir);
                        self.sessions.touch(idx, dir, self.now, m.tcp_flags);
                    }
                    (SessionError::Exists, None) => m.drop(D::NatCollision as u8),
                    (SessionError::Full, _) => m.drop(D::SessionTableFull as u8),
                    // Conntrack never translates IPv6 (see `plan`).
                    (SessionError::Translated, _) => m.drop(D::Internal as u8),
                }
            }
        }
    }
}

#[inline]
fn lb_taken_key(member: u32, mport: u16, port: u16) -> u64 {
    (member as u64) << 32 | (mport as u64) << 16 | port as u64
}

/// Source ports tried for a translated balanced flow before it is refused
/// (a bounded search: when a member's ports are nearly all taken, new
/// flows are refused quickly rather than searched for).
const LB_PORT_TRIES: u64 = 32;

/// What pass 1 of `post_route` decided for a new flow.
///
/// Only what `track` cannot read again from the packet: the packet's own
/// tuple (`from`) is unchanged between the passes, and the reply key is
/// `to` reversed (IPv4) or the original key reversed (IPv6, never
/// translated). A burst's plans are written in pass 1 and read in pass 2,
/// so the smaller the less is copied.
#[derive(Debug, Clone, Copy)]
struct Plan {
    to: Tuple4,
    flags: u8,
    /// The session's `user`: the external port of its mapping (with
    /// `F_MAPPING`), or a balanced flow's member slot.
    user: u16,
    orig_hash: u64,
    reply_hash: u64,
}

impl Plan {
    /// The packet's tuple as pass 1 saw it (all zero for IPv6, whose flows
    /// conntrack never translates).
    #[inline(always)]
    fn from(m: &Meta) -> Tuple4 {
        if m.l3 == L3::Ipv4 { tuple_of(m) } else { Tuple4 { src: 0, dst: 0, sport: 0, dport: 0 } }
    }

    /// The key replies of the flow will arrive with.
    #[inline(always)]
    fn reply(&self, info: &Info, proto: u8) -> FlowKey {
        if info.orig.v6 {
            info.orig.reversed()
        } else {
            let to = &self.to;
            FlowKey::v4(to.dst, to.src, to.dport, to.sport, proto)
        }
    }
}

/// Whether a packet can wait until after routing to be looked at (when no
/// forwarding policy is in force): it did not come in by the external port,
/// is not a fragment or an ICMP error, and is not addressed to anything
/// translated (a floating IP, the masquerade address, the metadata
/// address). Every translation that rewrites a destination has one of
/// those as its destination, so such a packet is routed as it is; it needs
/// the session table only if it then leaves by the external port.
/// What it reads of a snapshot is read once for a whole burst.
#[derive(Clone, Copy)]
pub(super) struct Deferral<'a> {
    /// The external port; `u16::MAX` (no port) without one.
    ext_port: u16,
    masquerade: Option<u32>,
    dnat: &'a AddrMap,
    /// The load balancer, when it has listeners.
    lb: Option<&'a LbConfig>,
}

impl<'a> Deferral<'a> {
    #[inline(always)]
    pub(super) fn of(snap: &'a Snapshot) -> Self {
        let nat = &snap.nat;
        Deferral {
            ext_port: nat.external.map_or(u16::MAX, |(p, _)| p),
            masquerade: nat.external.map(|(_, a)| a),
            dnat: &nat.dnat,
            lb: (!snap.lb.is_empty()).then_some(&*snap.lb),
        }
    }

    /// Whether packet `m` of the burst can wait.
    #[inline(always)]
    pub(super) fn allows(&self, m: &Meta) -> bool {
        if m.frag != 0 || m.in_port == self.ext_port {
            return false;
        }
        match m.l3 {
            L3::Ipv4 => {
                let d = m.dst as u32;
                // (The load balancer's test first: on its appliance nearly
                // every packet is to a VIP or from a member, and the other
                // tests need not be made.)
                !(self.lb.is_some_and(|lb| lb.is_vip_addr(d) || lb.is_member(m.src as u32, m.sport))
                    || d == METADATA_ADDR
                    || self.masquerade == Some(d)
                    || self.dnat.contains_key(&d)
                    || m.proto == PROTO_ICMP && icmp_is_error(m.icmp_type))
            }
            L3::Ipv6 => !(m.proto == PROTO_ICMPV6 && (1..=4).contains(&m.icmp_type)),
            _ => false,
        }
    }
}

fn release_mapping(ports: &mut NatMap, lb: &mut LbCounters, s: &Session) {
    if s.flags & F_MAPPING != 0 {
        ports.release(s.proto(), s.user);
    } else if NatKind::of(s.flags) == NatKind::Lb
        && let Some(a) = lb.active.get_mut(s.user as usize)
    {
        *a = a.saturating_sub(1);
    }
}

#[inline]
fn endpoint_owner(a: u128, p: u16, n: usize) -> usize {
    let x = (a as u64 ^ (a >> 64) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (p as u64).wrapping_mul(0xff51_afd7_ed55_8ccd);
    ((x ^ (x >> 29)) % n as u64) as usize
}

/// The worker (of `n`) that owns the flow of a parsed packet, so that both
/// directions of every session, and every session of one inside endpoint,
/// meet on one worker:
/// - to the masquerade address: the owner of the destination port (each
///   worker allocates only from its own slice);
/// - arrived on the external port: by the inside endpoint it is for (the
///   fixed IP of a floating IP, and the destination port);
/// - hairpin (to a floating IP from inside) and traffic routed out of the
///   external port: by the inside source endpoint, so one endpoint's
///   mapping is the same for every destination (RFC 4787 REQ-1);
/// - anything else (between internal networks, IPv6): a symmetric hash.
///
/// ICMP errors go where the flow they quote goes. Later fragments carry no
/// ports: they are steered by address alone (see the issue notes).
pub fn owner(snap: &Snapshot, m: &Meta, data: &[u8], n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    if m.l3 == L3::Ipv4
        && m.proto == PROTO_ICMP
        && m.frag == 0
        && icmp_is_error(m.icmp_type)
        && let Some(q) = quoted_v4(data, m.l4_off as usize, data.len())
    {
        let t = q.tuple.reversed();
        let inner = Meta {
            src: t.src as u128,
            dst: t.dst as u128,
            sport: t.sport,
            dport: t.dport,
            proto: q.proto,
            icmp_type: 0,
            hash: 0,
            ..*m
        };
        return owner_of(snap, &inner, n);
    }
    owner_of(snap, m, n)
}

fn owner_of(snap: &Snapshot, m: &Meta, n: usize) -> usize {
    let ported = m.frag != 2;
    let port = |p: u16| if ported { p } else { 0 };
    if m.l3 == L3::Ipv4 {
        let nat = &snap.nat;
        let dst = m.dst as u32;
        // Load balancing: a client's flows by the client's endpoint; a
        // member's replies to where that put the session (the owner of
        // the translated source port, or the client's endpoint).
        let lb = &*snap.lb;
        if !lb.is_empty() && ported {
            if lb.is_vip_addr(dst) && lb.listener(dst, m.proto, m.dport).is_some() {
                return endpoint_owner(m.src, m.sport, n);
            }
            if lb.is_member(m.src as u32, m.sport) {
                return match lb.snat {
                    LbSnat::Always => crate::table::natmap::port_owner(m.dport, n),
                    LbSnat::Never => endpoint_owner(m.dst, m.dport, n),
                };
            }
        }
        if nat.is_masquerade_addr(dst) && ported && proto_slot(m.proto).is_some() {
            return crate::table::natmap::port_owner(m.dport, n);
        }
        if let Some((ext_port, _)) = nat.external {
            if m.in_port == ext_port {
                let inside = nat.dnat.get(&dst).copied().unwrap_or(dst);
                return endpoint_owner(inside as u128, port(m.dport), n);
            }
            if nat.dnat.contains_key(&dst) {
                return endpoint_owner(m.src, port(m.sport), n);
            }
            if snap.egress_v4(dst).is_some_and(|(_, a)| a.port == ext_port) {
                return endpoint_owner(m.src, port(m.sport), n);
            }
        }
    }
    let h = crate::packet::flow_hash(m.src, m.dst, port(m.sport), port(m.dport), m.proto);
    (h as usize) % n
}
