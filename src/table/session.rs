//! Per-worker session (connection-tracking) table.
//!
//! One record per flow holds the keys of both directions (original, and the
//! reply as it will arrive, after any translation); both keys are indexed,
//! so either direction is found with one lookup. The index is open
//! addressing with linear probing over a randomly keyed hash (hostile
//! traffic cannot aim collisions), and deletion shifts entries back instead
//! of leaving tombstones, so a table under constant churn does not degrade.
//!
//! Expiry never stops the world: sessions sit on a timer wheel of one-second
//! slots; a packet only moves a session's deadline (no relinking), and
//! `expire` visits due slots a bounded number of entries at a time, freeing
//! what is really idle and re-filing the rest under their new deadline.
//!
//! Capacity is fixed at creation; when it is reached new flows are refused
//! (`SessionError::Full`, counted) while existing ones keep working.

use super::NO_ROUTE;
use super::mem::{advise_huge, fold_mul, prefault, prefault_uninit, prefetch};
use crate::packet::ipv4::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use crate::packet::l4::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use ahash::RandomState;

/// A flow as seen in one direction. IPv4 addresses sit in `src[3]`/`dst[3]`
/// with the other words zero (`[u32; 4]` keeps the record small: no 16-byte
/// alignment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub v6: bool,
}

fn words(a: u128) -> [u32; 4] {
    [(a >> 96) as u32, (a >> 64) as u32, (a >> 32) as u32, a as u32]
}

fn addr(w: [u32; 4]) -> u128 {
    (w[0] as u128) << 96 | (w[1] as u128) << 64 | (w[2] as u128) << 32 | w[3] as u128
}

impl FlowKey {
    /// A key from 128-bit addresses (IPv4 in the low 32 bits when `!v6`).
    /// IPv4 keys keep only the low 32 bits of each address: the table
    /// hashes and compares an IPv4 key's last words alone.
    #[inline]
    pub fn new(src: u128, dst: u128, sport: u16, dport: u16, proto: u8, v6: bool) -> FlowKey {
        // IPv4 apart: its words are two stores of one address each, not
        // a 128-bit split assembled in vector registers.
        let (src, dst) = if v6 { (words(src), words(dst)) } else { ([0, 0, 0, src as u32], [0, 0, 0, dst as u32]) };
        FlowKey { src, dst, sport, dport, proto, v6 }
    }

    pub fn v4(src: u32, dst: u32, sport: u16, dport: u16, proto: u8) -> FlowKey {
        FlowKey::new(src as u128, dst as u128, sport, dport, proto, false)
    }

    /// The source address as 128 bits (IPv4 in the low 32).
    pub fn src_addr(&self) -> u128 {
        addr(self.src)
    }

    pub fn dst_addr(&self) -> u128 {
        addr(self.dst)
    }

    /// The same flow seen from the other end.
    pub fn reversed(&self) -> FlowKey {
        FlowKey { src: self.dst, dst: self.src, sport: self.dport, dport: self.sport, ..*self }
    }
}

/// Where a flow is in its life. Non-TCP flows are `Open` (one direction
/// seen) or `Established` (replies seen).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Open = 0,
    SynSent,
    SynReceived,
    Established,
    /// One side has sent FIN.
    FinWait,
    /// Both sides have sent FIN.
    Closing,
    /// Both FINs acknowledged.
    TimeWait,
    /// Reset.
    Closed,
    /// A free record (not a session).
    Free,
}

impl SessionState {
    pub fn name(self) -> &'static str {
        match self {
            SessionState::Open => "open",
            SessionState::SynSent => "syn-sent",
            SessionState::SynReceived => "syn-received",
            SessionState::Established => "established",
            SessionState::FinWait => "fin-wait",
            SessionState::Closing => "closing",
            SessionState::TimeWait => "time-wait",
            SessionState::Closed => "closed",
            SessionState::Free => "free",
        }
    }
}

/// Fetches a record: one cache line.
#[inline(always)]
fn prefetch_record(s: &Session) {
    prefetch((s as *const Session).cast::<u8>());
}

/// Idle timeouts in seconds, by protocol and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// RFC 5382 REQ-5: at least 2 h 4 min.
    pub tcp_established: u32,
    /// RFC 5382: 4 min for partially open or closing connections.
    pub tcp_transitory: u32,
    /// After both FINs are acknowledged (2 MSL).
    pub tcp_time_wait: u32,
    /// After a reset.
    pub tcp_closed: u32,
    /// RFC 4787 REQ-5: at least 2 min.
    pub udp: u32,
    /// RFC 5508 REQ-1 / RFC 4787: ICMP query mappings, 60 s.
    pub icmp: u32,
    pub other: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_established: 7440,
            tcp_transitory: 240,
            tcp_time_wait: 120,
            tcp_closed: 10,
            udp: 120,
            icmp: 60,
            other: 600,
        }
    }
}

/// The longest timeout the wheel can hold (one lap).
pub const MAX_TIMEOUT: u32 = WHEEL_SLOTS as u32 - 1;
const WHEEL_SLOTS: usize = 8192;
const NIL: u32 = u32::MAX;
/// The most sessions a table holds (its index then has about 2.9 * 2^30
/// slots, below 2^32, which `home_of_tag` relies on).
pub const MAX_CAPACITY: usize = 1 << 30;
const _: () = assert!(MAX_CAPACITY * 2 * 10 / 7 < 1 << 32);
/// Sessions `expire` takes off a due wheel slot at a time.
const EXPIRY_BATCH: usize = 8;

/// One tracked flow, in one 64-byte cache line: a packet of an
/// established flow reads and writes back one line of records (a record
/// holding two full-width keys took 92 bytes, two or three lines).
///
/// Both directions' keys are kept: for IPv4 both address pairs, since NAT
/// and the load balancer make the reply's differ from the original's. The
/// appliance never translates IPv6 (there is no NAT66), so an IPv6 reply
/// is always the original reversed, and its one address pair fills the
/// same 32 bytes; `insert` refuses anything else
/// (`SessionError::Translated`).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub struct Session {
    /// IPv4: [orig src, orig dst, reply src, reply dst] in words 0..4, the
    /// route hints in 4..8 (`route_hint`).
    /// IPv6: the original source in words 0..4, its destination in 4..8.
    addr: [u32; 8],
    /// Per direction, source port << 16 | destination port.
    port: [u32; 2],
    /// When it expires unless another packet arrives (caller's seconds).
    pub deadline: u32,
    /// The deadline it is filed under on the wheel (may be earlier than
    /// `deadline`: packets move the deadline without re-filing).
    filed: u32,
    pub state: SessionState,
    /// Free for the stages (NAT kind, firewall verdict, ...).
    pub flags: u8,
    /// Free for the stages (an LB member, a NAT pool index, ...).
    pub user: u16,
    proto: u8,
    v6: bool,
    /// The index tags of the two keys (`SessionTable::tag` of their
    /// hashes), from which freeing the session finds its index entries
    /// without hashing its keys again.
    tags: [u32; 2],
}

const FREE: Session = Session {
    addr: [0; 8],
    port: [0; 2],
    deadline: 0,
    filed: 0,
    state: SessionState::Free,
    flags: 0,
    user: 0,
    proto: 0,
    v6: false,
    tags: [0; 2],
};

#[inline(always)]
fn ports_of(k: &FlowKey) -> u32 {
    (k.sport as u32) << 16 | k.dport as u32
}

impl Session {
    /// A record for a flow, or None for an IPv6 reply that is not the
    /// original reversed.
    #[inline]
    fn new(orig: &FlowKey, reply: &FlowKey, deadline: u32, state: SessionState, tags: [u32; 2]) -> Option<Session> {
        let mut addr = [0; 8];
        if orig.v6 {
            if *reply != orig.reversed() {
                return None;
            }
            addr[..4].copy_from_slice(&orig.src);
            addr[4..].copy_from_slice(&orig.dst);
        } else {
            if reply.v6 || reply.proto != orig.proto {
                return None;
            }
            addr[..4].copy_from_slice(&[orig.src[3], orig.dst[3], reply.src[3], reply.dst[3]]);
        }
        Some(Session {
            addr,
            port: [ports_of(orig), ports_of(reply)],
            deadline,
            filed: deadline,
            state,
            flags: 0,
            user: 0,
            proto: orig.proto,
            v6: orig.v6,
            tags,
        })
    }

    /// The key of direction `dir` (0: original, 1: reply).
    #[inline]
    pub fn key(&self, dir: usize) -> FlowKey {
        let d = dir & 1;
        let [sport, dport] = self.ports(d);
        let (src, dst) = if self.v6 {
            let w = |i: usize| [self.addr[i], self.addr[i + 1], self.addr[i + 2], self.addr[i + 3]];
            if d == 0 { (w(0), w(4)) } else { (w(4), w(0)) }
        } else {
            ([0, 0, 0, self.addr[2 * d]], [0, 0, 0, self.addr[2 * d + 1]])
        };
        FlowKey { src, dst, sport, dport, proto: self.proto, v6: self.v6 }
    }

    /// The IPv4 source and destination of direction `dir` (for IPv6, the
    /// addresses' last words, as in `key`).
    #[inline(always)]
    pub fn addrs4(&self, dir: usize) -> [u32; 2] {
        let d = dir & 1;
        if self.v6 {
            let k = self.key(d);
            [k.src[3], k.dst[3]]
        } else {
            self.addrs_v4(d)
        }
    }

    /// `addrs4` for a session known to be IPv4 (no family test: for the
    /// fast path, whose IPv4 keys match IPv4 sessions only).
    #[inline(always)]
    pub fn addrs_v4(&self, dir: usize) -> [u32; 2] {
        debug_assert!(!self.v6);
        let d = dir & 1;
        [self.addr[2 * d], self.addr[2 * d + 1]]
    }

    /// The route lookup remembered for direction `dir`'s translated
    /// destination (`set_route_hint`), if it was made in the IPv4 route
    /// table whose identity (`Lpm4::id`) is `fib`. IPv4 sessions keep it in
    /// the address words that only IPv6 sessions use (4 and 5: per
    /// direction; 6 and 7: the table), so it costs no memory and no cache
    /// line more; a new session's table identity is 0, which no table has.
    /// A lookup that found no route is not remembered (`NO_ROUTE`: none).
    /// IPv6 sessions have none.
    #[inline(always)]
    pub fn route_hint(&self, dir: usize, fib: u64) -> Option<u32> {
        let nh = self.addr[4 + (dir & 1)];
        (!self.v6 && self.hint_table() == fib && nh != NO_ROUTE).then_some(nh)
    }

    /// The identity of the route table the hints were made in (words 6, 7).
    #[inline(always)]
    fn hint_table(&self) -> u64 {
        (self.addr[7] as u64) << 32 | self.addr[6] as u64
    }

    /// Remembers `nh`, the lookup of direction `dir`'s translated
    /// destination in the route table `fib` (see `route_hint`); the other
    /// direction's is forgotten when it was made in another table.
    #[inline(always)]
    pub fn set_route_hint(&mut self, dir: usize, fib: u64, nh: u32) {
        if self.v6 {
            return;
        }
        let d = dir & 1;
        if self.hint_table() != fib {
            self.addr[6] = fib as u32;
            self.addr[7] = (fib >> 32) as u32;
            // (Matched only with the table it was made in.)
            self.addr[4 + (1 - d)] = NO_ROUTE;
        }
        self.addr[4 + d] = nh;
    }

    /// Whether a session is free or past its deadline at `now` (what
    /// `SessionTable::is_expired` tests, for a record in hand).
    #[inline(always)]
    pub fn is_expired_at(&self, now: u32) -> bool {
        self.state == SessionState::Free || (now.wrapping_sub(self.deadline) as i32) >= 0
    }

    /// Whether a packet with `tcp_flags` leaves this session in its state
    /// (`touch_steady` may refresh it): a UDP flow's that is live, or a
    /// segment of an established TCP connection without SYN, FIN or RST
    /// (`tcp_next` keeps it established).
    #[inline(always)]
    pub fn moves_no_state(&self, tcp_flags: u8) -> bool {
        match self.proto {
            PROTO_TCP => self.state == SessionState::Established && tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0,
            PROTO_UDP => self.state != SessionState::Free,
            _ => false,
        }
    }

    /// The source and destination ports (ICMP: the query identifier) of
    /// direction `dir`.
    #[inline(always)]
    pub fn ports(&self, dir: usize) -> [u16; 2] {
        let p = self.port[dir & 1];
        [(p >> 16) as u16, p as u16]
    }

    #[inline(always)]
    pub fn proto(&self) -> u8 {
        self.proto
    }

    #[inline(always)]
    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// Whether `key` is this session's key in direction `dir`.
    #[inline(always)]
    fn matches(&self, dir: usize, key: &FlowKey) -> bool {
        let d = dir & 1;
        let meta = (self.proto ^ key.proto) as u32 | (self.v6 ^ key.v6) as u32 | (self.port[d] ^ ports_of(key));
        if !key.v6 {
            // An IPv4 key's other address words are zero (`FlowKey::new`).
            meta | (self.addr[2 * d] ^ key.src[3]) | (self.addr[2 * d + 1] ^ key.dst[3]) == 0
        } else {
            let (a, b) = (&self.addr[..4], &self.addr[4..]);
            let (s, t) = if d == 0 { (a, b) } else { (b, a) };
            meta == 0 && s == key.src && t == key.dst
        }
    }

    /// Whether the reply's key is the original's (a flow to itself: one
    /// index entry).
    #[inline(always)]
    fn reply_is_orig(&self) -> bool {
        if self.v6 {
            self.addr[..4] == self.addr[4..] && self.port[0] == self.port[1]
        } else {
            self.addr[0] == self.addr[2] && self.addr[1] == self.addr[3] && self.port[0] == self.port[1]
        }
    }
}

/// A session's neighbours on its wheel slot's list (or, for a free record,
/// the next free one in `next`), kept apart from the records: expiry walks
/// a slot's list one `next` at a time, and in this dense array (8 bytes a
/// session) each step is usually a cache hit, where a step through the
/// records was a miss to memory that the next step waited on. The records
/// of a batch are then fetched together. Allocated zeroed, so backed
/// lazily (or by `prefault`): an entry is always written before it is read.
type Link = [u32; 2];
const NEXT: usize = 0;
const PREV: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("session table full")]
    Full,
    #[error("a session with this key exists")]
    Exists,
    #[error("an IPv6 session cannot be translated")]
    Translated,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub inserted: u64,
    pub refused_full: u64,
    pub expired: u64,
    pub removed: u64,
}

/// A fixed-capacity session table owned by one worker.
pub struct SessionTable {
    /// 0 = empty; else tag (hash high bits, never 0) << 32 | index << 1 | dir.
    index: Vec<u64>,
    sessions: Vec<Session>,
    /// By session index, as long as `sessions` can grow.
    links: Vec<Link>,
    free: u32,
    live: usize,
    capacity: usize,
    /// Random per-table keys of the flow hash (collisions cannot be aimed).
    seed: [u64; 4],
    wheel: Vec<u32>,
    /// Next second of the wheel to visit, and the entries of a slot being
    /// visited when the last call ran out of budget.
    cursor: u32,
    pending: u32,
    started: bool,
    timeouts: Timeouts,
    /// The timeouts of an established TCP connection and of a UDP flow,
    /// as `timeout` gives them: `touch`'s usual two, read without the
    /// clamp.
    steady: [u32; 2],
    pub stats: SessionStats,
}

impl SessionTable {
    /// The same empty table with its hash keyed from `r` (see
    /// `ConntrackConfig::seed`).
    pub fn keyed(mut self, r: &RandomState) -> SessionTable {
        debug_assert_eq!(self.live, 0, "rekeying a table in use");
        self.seed = [r.hash_one(1u64), r.hash_one(2u64), r.hash_one(3u64), r.hash_one(4u64)];
        self
    }

    /// A table for `capacity` sessions (at most 2^30, so that the index
    /// has fewer than 2^32 slots).
    pub fn new(capacity: usize, timeouts: Timeouts) -> SessionTable {
        let capacity = capacity.clamp(1, MAX_CAPACITY);
        let slots = Self::slots_for(capacity);
        let index = vec![0; slots];
        let mut sessions: Vec<Session> = Vec::with_capacity(capacity);
        let links: Vec<Link> = vec![[0; 2]; capacity];
        advise_huge(&index);
        advise_huge(&links);
        advise_huge(sessions.spare_capacity_mut());
        SessionTable {
            index,
            sessions,
            links,
            free: NIL,
            live: 0,
            capacity,
            seed: {
                let r = RandomState::new();
                [r.hash_one(1u64), r.hash_one(2u64), r.hash_one(3u64), r.hash_one(4u64)]
            },
            wheel: vec![NIL; WHEEL_SLOTS],
            cursor: 0,
            pending: NIL,
            started: false,
            timeouts,
            steady: [0; 2],
            stats: SessionStats::default(),
        }
        .with_steady()
    }

    fn with_steady(mut self) -> SessionTable {
        self.steady =
            [self.timeout(PROTO_TCP, SessionState::Established), self.timeout(PROTO_UDP, SessionState::Established)];
        self
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Backs the whole table with memory now (see `mem::prefault`): the
    /// index, the records not yet used, their links and the wheel. A worker
    /// calls it before its first burst, so that no insert takes a page
    /// fault.
    pub fn prefault(&mut self) {
        prefault(&mut self.index);
        prefault_uninit(self.sessions.spare_capacity_mut());
        prefault(&mut self.links);
        prefault(&mut self.wheel);
    }

    /// Bytes the table takes when full (index, records, links, wheel).
    pub fn memory_bytes(&self) -> usize {
        Self::bytes_for(self.capacity)
    }

    /// Bytes a full table of `capacity` sessions takes (index, records,
    /// links, wheel).
    pub fn bytes_for(capacity: usize) -> usize {
        Self::slots_for(capacity) * 8
            + capacity * (std::mem::size_of::<Session>() + std::mem::size_of::<Link>())
            + WHEEL_SLOTS * 4
    }

    // Both directions indexed at a load of at most 0.7 (linear probing then
    // averages about six probes on a miss: one or two cache lines).
    fn slots_for(capacity: usize) -> usize {
        (capacity * 2 * 10 / 7).max(16)
    }

    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        // Keyed multiply-fold rounds (the wyhash/ahash construction) over
        // the key's words: two rounds for IPv4, four for IPv6.
        let s = &self.seed;
        let ports = (key.sport as u64) << 48 | (key.dport as u64) << 32 | (key.proto as u64) << 8 | key.v6 as u64;
        let h = if key.v6 {
            let w = |a: [u32; 4], i: usize| (a[i] as u64) << 32 | a[i + 1] as u64;
            let h = fold_mul(w(key.src, 0) ^ s[0], w(key.src, 2) ^ s[1]);
            let h = fold_mul(h ^ w(key.dst, 0), w(key.dst, 2) ^ s[2]);
            fold_mul(h ^ ports, s[3])
        } else {
            fold_mul((key.src[3] as u64) << 32 ^ key.dst[3] as u64 ^ s[0], ports ^ s[1])
        };
        fold_mul(h ^ s[2], 0x9e37_79b9_7f4a_7c15)
    }

    /// Starts fetching the index line of a key hashed with `hash`.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        self.prefetch_tag(Self::tag(hash) as u32);
    }

    /// Starts fetching the index line where entries with tag `tag` begin.
    #[inline]
    fn prefetch_tag(&self, tag: u32) {
        prefetch(&self.index[self.home_of_tag(tag as u64)]);
    }

    /// The tag kept in an index entry: 32 bits of the hash, never 0.
    #[inline]
    fn tag(hash: u64) -> u64 {
        (hash & 0xffff_ffff) | 1
    }

    /// Home slot of a hash: its tag, multiply-shifted onto the table size
    /// (Lemire). Computed from the tag alone, so that deletion finds the
    /// home of the entries it shifts back from the index, without reading
    /// their sessions (each a cache miss in a large table). The tag's high
    /// bits are the home: entries with the same home differ in its low
    /// bits (7 of them at 10 million sessions), so 1 lookup in a few
    /// hundred compares one key more than it would with independent bits.
    #[inline]
    fn home(&self, hash: u64) -> usize {
        self.home_of_tag(Self::tag(hash))
    }

    #[inline]
    fn home_of_tag(&self, tag: u64) -> usize {
        // (Below 2^64: a tag is below 2^32, and so is the index's length.)
        ((tag * self.index.len() as u64) >> 32) as usize
    }

    #[inline]
    fn next(&self, pos: usize) -> usize {
        if pos + 1 == self.index.len() { 0 } else { pos + 1 }
    }

    /// Finds the session of `key`: (session index, direction 0 or 1).
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<(u32, u8)> {
        self.lookup_hashed(key, self.hash(key))
    }

    #[inline]
    pub fn lookup_hashed(&self, key: &FlowKey, hash: u64) -> Option<(u32, u8)> {
        match self.walk(key, hash) {
            Run::Found(idx, dir) => Some((idx, dir)),
            Run::Free(_) | Run::Full => None,
        }
    }

    /// Walks `key`'s run from its home slot: to its entry, or to the first
    /// empty slot (where an entry for it would go).
    #[inline(always)]
    fn walk(&self, key: &FlowKey, hash: u64) -> Run {
        let tag = Self::tag(hash);
        let mut pos = self.home(hash);
        for _ in 0..self.index.len() {
            let e = self.index[pos];
            if e == 0 {
                return Run::Free(pos);
            }
            if e >> 32 == tag && self.entry_matches(e, key) {
                return Run::Found((e as u32) >> 1, (e & 1) as u8);
            }
            pos = self.next(pos);
        }
        Run::Full
    }

    /// Whether index entry `e` (its tag already equal to the key's) names
    /// `key`'s session. Out of line: a tag matches at the key's own entry,
    /// and elsewhere about once in 2^31 probes (a tag has 31 random bits);
    /// with the comparison inline the compiler loads every word of the key
    /// into registers (spilling them) before the probe loop, even for a
    /// walk that ends at an empty slot, as every new flow's two walks do.
    #[inline(never)]
    fn entry_matches(&self, e: u64, key: &FlowKey) -> bool {
        let idx = ((e as u32) >> 1) as usize;
        self.sessions.get(idx).is_some_and(|s| s.matches((e & 1) as usize, key))
    }

    /// Looks up to 64 keys at once in four passes (hash and fetch the index
    /// lines; read them and fetch the session records; wait for the
    /// records; compare keys), so the two cache misses of each lookup
    /// overlap across the burst.
    pub fn lookup_bulk(&self, keys: &[FlowKey], out: &mut [Option<(u32, u8)>]) {
        const N: usize = 64;
        let n = keys.len().min(out.len()).min(N);
        let mut hashes = [0u64; N];
        for i in 0..n {
            hashes[i] = self.hash(&keys[i]);
            self.prefetch(hashes[i]);
        }
        self.lookup_bulk_hashed(&keys[..n], &hashes[..n], out);
    }

    /// `lookup_bulk` for keys whose hashes were computed, and index lines
    /// prefetched, earlier (giving the fetches more time to land).
    pub fn lookup_bulk_hashed(&self, keys: &[FlowKey], hashes: &[u64], out: &mut [Option<(u32, u8)>]) {
        const N: usize = 64;
        let n = keys.len().min(hashes.len()).min(out.len()).min(N);
        // The candidate of each key (the first entry with its tag, nearly
        // always the one) goes straight into `out`, its record prefetched;
        // the last pass only checks it, once `await_records` has waited
        // for the records.
        for i in 0..n {
            let (tag, mut pos) = (Self::tag(hashes[i]), self.home(hashes[i]));
            out[i] = loop {
                let e = self.index[pos];
                if e == 0 {
                    break None;
                }
                if e >> 32 == tag {
                    let idx = (e as u32) >> 1;
                    if let Some(s) = self.sessions.get(idx as usize) {
                        prefetch_record(s);
                    }
                    break Some((idx, (e & 1) as u8));
                }
                pos = self.next(pos);
            };
        }
        self.await_records(&out[..n]);
        for i in 0..n {
            if let Some((idx, dir)) = out[i]
                && !self.sessions.get(idx as usize).is_some_and(|s| s.matches(dir as usize, &keys[i]))
            {
                // A tag collision: walk the run properly.
                out[i] = self.lookup_colliding(&keys[i], hashes[i]);
            }
        }
    }

    /// Reads one byte of each candidate's record, in a pass of its own, so
    /// that the bulk lookup waits for all of their cache misses at once.
    /// The key comparison is about 20 instructions a key: in a pass doing
    /// only that, the processor's window of instructions in flight holds
    /// about ten keys' worth, so (as we read the measurements below; this
    /// VM has no performance counters) with records in memory, a million
    /// sessions met in no particular order, their misses went about ten at
    /// a time, where a pass of one load each overlaps the whole burst's;
    /// the comparisons then read records in cache. `stage_cycles
    /// lb-64b.toml 1000000 scramble`: about 150 -> 139 TSC cycles a packet;
    /// nat-64b 142 -> 132; unchanged in cache and with records met in
    /// storage order. (The prefetches of the pass before are kept: without
    /// them the same runs took 152 and 143.)
    #[inline(always)]
    fn await_records(&self, candidates: &[Option<(u32, u8)>]) {
        let mut seen = 0u8;
        for c in candidates {
            if let Some(s) = c.and_then(|(idx, _)| self.sessions.get(idx as usize)) {
                seen |= s.state as u8;
            }
        }
        // (Kept from being optimised away; nothing depends on its value.)
        std::hint::black_box(seen);
    }

    /// `lookup_hashed` out of line, for the bulk lookup's rare tag
    /// collisions: inlined, the walk's registers cost the common case
    /// about 9 instructions a packet (callgrind, nat-64b).
    #[cold]
    #[inline(never)]
    fn lookup_colliding(&self, key: &FlowKey, hash: u64) -> Option<(u32, u8)> {
        self.lookup_hashed(key, hash)
    }

    /// Live sessions with their indices, in storage order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Session)> {
        self.sessions.iter().enumerate().filter(|(_, s)| s.state != SessionState::Free).map(|(i, s)| (i as u32, s))
    }

    /// Record slots in use or freed (indices below this may hold sessions).
    pub fn slots(&self) -> usize {
        self.sessions.len()
    }

    pub fn get(&self, idx: u32) -> Option<&Session> {
        self.sessions.get(idx as usize)
    }

    pub fn get_mut(&mut self, idx: u32) -> Option<&mut Session> {
        self.sessions.get_mut(idx as usize)
    }

    /// Removes the index entry of (idx, dir), whose key's tag is `tag`,
    /// and shifts later entries of the probe run back so no tombstone is left.
    fn index_remove(&mut self, tag: u32, idx: u32, dir: u8) {
        let want = ((idx as u64) << 1) | dir as u64;
        let mut pos = self.home_of_tag(tag as u64);
        loop {
            let e = self.index[pos];
            if e == 0 {
                return; // not indexed (cannot happen for a live session)
            }
            if e & 0xffff_ffff == want {
                break;
            }
            pos = self.next(pos);
        }
        let mut hole = pos;
        let mut j = pos;
        loop {
            j = self.next(j);
            let e = self.index[j];
            if e == 0 {
                break;
            }
            let home = self.home_of_tag(e >> 32);
            // Move e into the hole unless its home lies cyclically in (hole, j].
            let stays = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !stays {
                self.index[hole] = e;
                hole = j;
            }
        }
        self.index[hole] = 0;
    }

    #[inline]
    fn timeout(&self, proto: u8, state: SessionState) -> u32 {
        let t = &self.timeouts;
        let secs = match proto {
            PROTO_TCP => match state {
                SessionState::Established => t.tcp_established,
                SessionState::TimeWait => t.tcp_time_wait,
                SessionState::Closed => t.tcp_closed,
                _ => t.tcp_transitory,
            },
            PROTO_UDP => t.udp,
            PROTO_ICMP | PROTO_ICMPV6 => t.icmp,
            _ => t.other,
        };
        secs.clamp(1, MAX_TIMEOUT)
    }

    fn link(&mut self, idx: u32) {
        let deadline = self.sessions[idx as usize].deadline;
        let slot = deadline as usize % WHEEL_SLOTS;
        let head = self.wheel[slot];
        self.sessions[idx as usize].filed = deadline;
        self.links[idx as usize] = [head, NIL];
        if head != NIL {
            self.links[head as usize][PREV] = idx;
        }
        self.wheel[slot] = idx;
    }

    fn unlink(&mut self, idx: u32) {
        let [next, prev] = self.links[idx as usize];
        let slot = self.sessions[idx as usize].filed as usize % WHEEL_SLOTS;
        if prev != NIL {
            self.links[prev as usize][NEXT] = next;
        } else if self.pending == idx {
            self.pending = next;
        } else if self.wheel[slot] == idx {
            self.wheel[slot] = next;
        }
        if next != NIL {
            self.links[next as usize][PREV] = prev;
        }
    }

    /// Creates a session from its first packet. `reply` is the key the
    /// other direction will arrive with (the reverse of `orig`, translated).
    pub fn insert(&mut self, orig: FlowKey, reply: FlowKey, now: u32, tcp_flags: u8) -> Result<u32, SessionError> {
        let (ho, hr) = (self.hash(&orig), self.hash(&reply));
        self.insert_hashed(&orig, ho, &reply, hr, now, tcp_flags, (0, 0))
    }

    /// `insert` with both keys' hashes already computed (and their index
    /// lines prefetched, for a burst of new flows), and the record's
    /// `flags` and `user` for the stages (`stage`: in the record as it is
    /// written, not set after).
    #[allow(clippy::too_many_arguments)]
    pub fn insert_hashed(
        &mut self,
        orig: &FlowKey,
        orig_hash: u64,
        reply: &FlowKey,
        reply_hash: u64,
        now: u32,
        tcp_flags: u8,
        stage: (u8, u16),
    ) -> Result<u32, SessionError> {
        if !self.started {
            self.cursor = now;
            self.started = true;
        }
        // One walk per key finds both whether it is indexed and where its
        // entry goes (a lookup, then an insert, walked each run twice).
        let at_orig = self.free_slot(orig, orig_hash).ok_or(SessionError::Exists)?;
        let at_reply = self.free_slot(reply, reply_hash).ok_or(SessionError::Exists)?;
        if self.live >= self.capacity {
            self.stats.refused_full += 1;
            return Err(SessionError::Full);
        }
        let state =
            if orig.proto == PROTO_TCP { tcp_next(SessionState::Open, 0, tcp_flags) } else { SessionState::Open };
        let deadline = now.wrapping_add(self.timeout(orig.proto, state));
        let tags = [Self::tag(orig_hash) as u32, Self::tag(reply_hash) as u32];
        let Some(mut s) = Session::new(orig, reply, deadline, state, tags) else {
            return Err(SessionError::Translated);
        };
        (s.flags, s.user) = stage;
        // (As `release` decides which entries to remove.)
        let one_key = s.reply_is_orig();
        let idx = if self.free != NIL {
            let i = self.free;
            self.free = self.links[i as usize][NEXT];
            self.sessions[i as usize] = s;
            i
        } else {
            self.sessions.push(s);
            (self.sessions.len() - 1) as u32
        };
        self.index[at_orig] = Self::entry(orig_hash, idx, 0);
        if !one_key {
            // The reply's run ended at the first empty slot on its walk;
            // the original's entry can only have taken that very slot (the
            // slots before it on the walk were full), and then the reply's
            // goes to the next empty one.
            let mut at = at_reply;
            while self.index[at] != 0 {
                at = self.next(at);
            }
            self.index[at] = Self::entry(reply_hash, idx, 1);
        }
        self.link(idx);
        self.live += 1;
        self.stats.inserted += 1;
        Ok(idx)
    }

    /// Where an entry for `key` goes: the first empty slot of its run, or
    /// None when the run holds `key` already. (The index is never full:
    /// it has more than twice as many slots as the table has sessions.)
    #[inline(always)]
    fn free_slot(&self, key: &FlowKey, hash: u64) -> Option<usize> {
        match self.walk(key, hash) {
            Run::Free(pos) => Some(pos),
            Run::Found(..) | Run::Full => None,
        }
    }

    #[inline(always)]
    fn entry(hash: u64, idx: u32, dir: u8) -> u64 {
        (Self::tag(hash) << 32) | ((idx as u64) << 1) | dir as u64
    }

    /// Records a packet of session `idx` in direction `dir`: new state, new
    /// deadline. O(1): a later deadline leaves the session in its wheel slot
    /// (it is re-filed when the slot is visited); only a deadline moved
    /// earlier (a close or reset) re-files it now.
    ///
    /// Most packets move no state: a UDP packet, or a segment of an
    /// established TCP connection without SYN, FIN or RST (`tcp_next` keeps
    /// it established). Those are decided first, without the state machine,
    /// and refreshed by `touch_steady`.
    #[inline(always)]
    pub fn touch(&mut self, idx: u32, dir: u8, now: u32, tcp_flags: u8) {
        let Some(s) = self.sessions.get(idx as usize) else { return };
        if s.moves_no_state(tcp_flags) {
            self.touch_steady(idx, dir, now)
        } else {
            self.touch_moving(idx, dir, now, tcp_flags)
        }
    }

    /// `touch` for a packet its caller knows moves no state
    /// (`Session::moves_no_state`, which the fast path's `fast_target`
    /// checked on the same record), so that the tests are not made twice.
    #[inline(always)]
    pub fn touch_steady(&mut self, idx: u32, dir: u8, now: u32) {
        let steady = self.steady;
        let Some(s) = self.sessions.get_mut(idx as usize) else { return };
        debug_assert!(
            (s.proto == PROTO_UDP && s.state != SessionState::Free)
                || (s.proto == PROTO_TCP && s.state == SessionState::Established)
        );
        let udp = s.proto == PROTO_UDP;
        if udp && dir == 1 {
            s.state = SessionState::Established;
        }
        let deadline = now.wrapping_add(steady[udp as usize]);
        s.deadline = deadline;
        if (s.filed.wrapping_sub(deadline) as i32) > 0 {
            self.unlink(idx);
            self.link(idx);
        }
    }

    /// `touch` for the rest: TCP segments that may move the connection's
    /// state, other protocols, free records.
    #[inline(never)]
    fn touch_moving(&mut self, idx: u32, dir: u8, now: u32, tcp_flags: u8) {
        let Some(s) = self.sessions.get(idx as usize) else { return };
        if s.state == SessionState::Free {
            return;
        }
        let proto = s.proto;
        let state = match proto {
            PROTO_TCP => tcp_next(s.state, dir, tcp_flags),
            _ if dir == 1 => SessionState::Established,
            _ => s.state,
        };
        let deadline = now.wrapping_add(self.timeout(proto, state));
        let filed = s.filed;
        let s = &mut self.sessions[idx as usize];
        s.state = state;
        s.deadline = deadline;
        if (filed.wrapping_sub(deadline) as i32) > 0 {
            self.unlink(idx);
            self.link(idx);
        }
    }

    /// Whether the session is past its deadline at `now` (it may not have
    /// been freed yet: expiry is incremental).
    #[inline]
    /// A free record counts as expired.
    pub fn is_expired(&self, idx: u32, now: u32) -> bool {
        self.sessions.get(idx as usize).is_none_or(|s| s.is_expired_at(now))
    }

    /// When the session last saw a packet (its deadline less its timeout).
    pub fn last_seen(&self, idx: u32) -> Option<u32> {
        let s = self.sessions.get(idx as usize).filter(|s| s.state != SessionState::Free)?;
        Some(s.deadline.wrapping_sub(self.timeout(s.proto, s.state)))
    }

    /// Removes a session now (e.g. a flow the firewall refused).
    pub fn remove(&mut self, idx: u32) -> bool {
        let freed = self.free_now(idx);
        self.stats.removed += freed as u64;
        freed
    }

    /// Frees a session found past its deadline before the wheel got to it
    /// (counted as expired).
    pub fn retire(&mut self, idx: u32) -> bool {
        let freed = self.free_now(idx);
        self.stats.expired += freed as u64;
        freed
    }

    fn free_now(&mut self, idx: u32) -> bool {
        if self.sessions.get(idx as usize).is_none_or(|s| s.state == SessionState::Free) {
            return false;
        }
        self.unlink(idx);
        self.release(idx);
        true
    }

    /// Takes a session's entries out of the index and its record onto the
    /// free list.
    fn release(&mut self, idx: u32) {
        let s = &self.sessions[idx as usize];
        let (one_key, tags) = (s.reply_is_orig(), s.tags);
        self.index_remove(tags[0], idx, 0);
        if !one_key {
            self.index_remove(tags[1], idx, 1);
        }
        self.sessions[idx as usize] = FREE;
        self.links[idx as usize] = [self.free, NIL];
        self.free = idx;
        self.live -= 1;
    }

    /// Frees sessions idle past their deadline, visiting at most `budget`
    /// sessions; returns how many it freed. Call it every burst with a small
    /// budget: the work is spread, never a scan of the whole table.
    pub fn expire(&mut self, now: u32, budget: usize) -> usize {
        self.expire_with(now, budget, |_| {})
    }

    /// `expire`, telling `f` about each session it frees: first, with the
    /// rest of its batch, that it is due (`Expiring::Due`: its record just
    /// read, for the caller to prefetch what it will release), then that it
    /// is being freed (`Expiring::Freed`, before its record goes: to release
    /// what it holds, such as a NAT port mapping).
    pub fn expire_with(&mut self, now: u32, budget: usize, mut f: impl FnMut(Expiring)) -> usize {
        // Nothing due (most calls, between seconds): no batches set up.
        if self.pending == NIL && !self.slot_due(now) {
            return 0;
        }
        let mut freed = 0;
        let mut visited = 0;
        // Batches off the due slots' lists, in a pipeline of two: a batch's
        // records are read (and its due sessions' index lines fetched) one
        // step before it is released, and the next batch is taken off the
        // list in between, so the walk's loads and the next records'
        // misses overlap the wait for the index lines instead of each
        // batch waiting on its own two misses in turn.
        let mut held = [Held::NONE; EXPIRY_BATCH];
        let mut held_n = 0;
        loop {
            let mut batch = [Held::NONE; EXPIRY_BATCH];
            let n = self.take_due(now, budget, &mut visited, &mut batch);
            for h in &held[..held_n] {
                if h.due {
                    f(Expiring::Freed(&self.sessions[h.idx as usize]));
                    self.release(h.idx);
                    self.stats.expired += 1;
                    freed += 1;
                } else {
                    self.link(h.idx);
                }
            }
            if n == 0 {
                return freed;
            }
            for h in &mut batch[..n] {
                h.due = self.is_expired(h.idx, now);
                if h.due {
                    let tags = self.sessions[h.idx as usize].tags;
                    self.prefetch_tag(tags[0]);
                    self.prefetch_tag(tags[1]);
                    f(Expiring::Due(&self.sessions[h.idx as usize]));
                }
            }
            (held, held_n) = (batch, n);
        }
    }

    /// Whether the wheel's next slot is due at `now`.
    #[inline(always)]
    fn slot_due(&self, now: u32) -> bool {
        self.started && (now.wrapping_sub(self.cursor) as i32) >= 0
    }

    /// Takes up to a batch of sessions off the due slots' lists into
    /// `batch` (their records prefetched), moving to the next due slot as
    /// each runs out, while fewer than `budget` entries have been visited;
    /// returns how many.
    #[inline(always)]
    fn take_due(&mut self, now: u32, budget: usize, visited: &mut usize, batch: &mut [Held; EXPIRY_BATCH]) -> usize {
        let mut n = 0;
        while n < EXPIRY_BATCH && *visited < budget {
            if self.pending == NIL {
                // Move to the next due slot, if any is due.
                if !self.slot_due(now) {
                    break;
                }
                let slot = self.cursor as usize % WHEEL_SLOTS;
                self.pending = self.wheel[slot];
                self.wheel[slot] = NIL;
                if self.pending != NIL {
                    self.links[self.pending as usize][PREV] = NIL;
                }
                self.cursor = self.cursor.wrapping_add(1);
                // Empty slots count too, so a jump of the clock is caught
                // up over several calls rather than in one.
                *visited += 1;
                continue;
            }
            let idx = self.pending;
            *visited += 1;
            self.pending = self.links[idx as usize][NEXT];
            prefetch_record(&self.sessions[idx as usize]);
            batch[n].idx = idx;
            n += 1;
        }
        if self.pending != NIL {
            self.links[self.pending as usize][PREV] = NIL;
        }
        n
    }
}

/// Where a walk along a key's run in the index ended.
enum Run {
    /// At the key's entry: its session and direction.
    Found(u32, u8),
    /// At the first empty slot: the key is not indexed.
    Free(usize),
    /// Nowhere: every slot was visited (cannot happen, see `free_slot`).
    Full,
}

/// A session `expire_with` took off the wheel, and whether it is due.
#[derive(Debug, Clone, Copy)]
struct Held {
    idx: u32,
    due: bool,
}

impl Held {
    const NONE: Held = Held { idx: NIL, due: false };
}

/// What `SessionTable::expire_with` tells its caller about a session it
/// frees.
#[derive(Debug, Clone, Copy)]
pub enum Expiring<'a> {
    /// Past its deadline, to be freed after the rest of its batch is read.
    Due(&'a Session),
    /// Being freed now.
    Freed(&'a Session),
}

/// TCP state after a segment with `flags` in direction `dir` (0: from the
/// side that opened the connection). Simplified from the kernel's
/// conntrack: enough to pick the right timeout.
pub fn tcp_next(state: SessionState, dir: u8, flags: u8) -> SessionState {
    use SessionState::*;
    if flags & TCP_RST != 0 {
        return Closed;
    }
    let syn = flags & TCP_SYN != 0;
    let ack = flags & TCP_ACK != 0;
    let fin = flags & TCP_FIN != 0;
    match state {
        Open | Closed if syn && !ack && dir == 0 => SynSent,
        // A flow first seen mid-stream (after a restart): trust it.
        Open if !syn => Established,
        SynSent if syn && ack && dir == 1 => SynReceived,
        SynReceived if ack && !syn && dir == 0 => Established,
        Established if fin => FinWait,
        FinWait if fin => Closing,
        Closing if ack && !fin => TimeWait,
        TimeWait if syn && !ack && dir == 0 => SynSent,
        s => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn udp(i: u32) -> FlowKey {
        FlowKey::v4(0x0a00_0000 | i, 0x0808_0808, 1024 + (i % 60000) as u16, 53, 17)
    }

    fn v6(i: u32) -> FlowKey {
        FlowKey::new(0xfd00 << 112 | (i as u128) << 64 | 0x5, 0x2001_0db8 << 96 | 0x53, 1024 + i as u16, 53, 17, true)
    }

    /// A route hint is found only with the route table it was made in, per
    /// direction; one made in another table makes the record forget the
    /// other direction's; a lookup that found no route, and an IPv6
    /// session, keep none. Keys and lookups are unchanged by hints.
    #[test]
    fn route_hints_hold_for_their_table_only() {
        let mut t = SessionTable::new(100, Timeouts::default());
        let (orig, reply) = (udp(3), FlowKey::v4(0x0808_0808, 0xcb00_710a, 53, 61000, PROTO_UDP));
        let i = t.insert(orig, reply, 10, 0).unwrap();
        let s = t.get_mut(i).unwrap();
        assert_eq!((s.route_hint(0, 1), s.route_hint(1, 1)), (None, None), "a new session has none");
        s.set_route_hint(0, 7, 40);
        s.set_route_hint(1, 7, 41);
        assert_eq!((s.route_hint(0, 7), s.route_hint(1, 7)), (Some(40), Some(41)));
        assert_eq!((s.route_hint(0, 8), s.route_hint(1, 8)), (None, None), "another table");
        s.set_route_hint(1, 1 << 40 | 7, 42);
        assert_eq!((s.route_hint(0, 1 << 40 | 7), s.route_hint(1, 1 << 40 | 7)), (None, Some(42)));
        assert_eq!(s.route_hint(1, 7), None, "the table's identity is all 64 bits");
        s.set_route_hint(0, 1 << 40 | 7, NO_ROUTE);
        assert_eq!(s.route_hint(0, 1 << 40 | 7), None);
        assert_eq!((s.key(0), s.key(1)), (orig, reply));
        assert_eq!((t.lookup(&orig), t.lookup(&reply)), (Some((i, 0)), Some((i, 1))));
        let j = t.insert(v6(1), v6(1).reversed(), 10, 0).unwrap();
        let s = t.get_mut(j).unwrap();
        s.set_route_hint(0, 7, 40);
        assert_eq!(s.route_hint(0, 7), None);
        assert_eq!(s.key(0), v6(1));
    }

    /// Each direction's key comes back out of the 64-byte record as it went
    /// in, for translated IPv4 flows and for IPv6 ones; an IPv6 flow whose
    /// reply is not its reverse is refused.
    #[test]
    fn records_keep_both_keys_in_one_line() {
        assert_eq!(std::mem::size_of::<Session>(), 64);
        assert_eq!(std::mem::align_of::<Session>(), 64);
        let mut t = SessionTable::new(100, Timeouts::default());
        let tcp = |s, d, sp, dp| FlowKey::v4(s, d, sp, dp, PROTO_TCP);
        let v6tcp = FlowKey::new(0xfdd6 << 112 | 5, 0x2001 << 112 | 0xffff_0001 << 32 | 1, 41000, 443, 6, true);
        let flows = [
            // masquerade: the reply comes back to the external address
            (tcp(0xc0a8_0105, 0x0808_0808, 40000, 443), tcp(0x0808_0808, 0xcb00_710a, 443, 61000)),
            // load balancer: to a member, from the pool-side address
            (tcp(0xc633_6401, 0xcb00_7164, 5555, 80), tcp(0x0a00_0203, 0x0a00_0201, 8080, 33000)),
            (udp(9), udp(9).reversed()),
            (v6tcp, v6tcp.reversed()),
            (v6(7), v6(7).reversed()),
        ];
        for (orig, reply) in flows {
            let i = t.insert(orig, reply, 10, TCP_SYN).unwrap();
            let s = *t.get(i).unwrap();
            assert_eq!((s.key(0), s.key(1)), (orig, reply));
            assert_eq!((s.proto(), s.is_v6()), (orig.proto, orig.v6));
            for (dir, k) in [orig, reply].into_iter().enumerate() {
                assert_eq!(s.ports(dir), [k.sport, k.dport]);
                assert_eq!(s.addrs4(dir), [k.src[3], k.dst[3]]);
                assert_eq!(t.lookup(&k), Some((i, dir as u8)));
            }
        }
        // Keys that differ from a stored one in one field only are not it.
        let (o, _) = flows[0];
        for k in [
            FlowKey { sport: o.sport + 1, ..o },
            FlowKey { dport: o.dport + 1, ..o },
            FlowKey { proto: PROTO_UDP, ..o },
            FlowKey::new(0xc0a8_0106, o.dst_addr(), o.sport, o.dport, o.proto, false),
            FlowKey::new(o.src_addr(), 0x0808_0809, o.sport, o.dport, o.proto, false),
            FlowKey::new(o.src_addr(), o.dst_addr(), o.sport, o.dport, o.proto, true),
            FlowKey { src: [0, 0, 0xffff, o.src[3]], ..FlowKey::new(0, o.dst_addr(), o.sport, o.dport, o.proto, true) },
        ] {
            assert_eq!(t.lookup(&k), None, "{k:?}");
        }
        let (o6, _) = flows[3];
        let moved = FlowKey { src: [o6.src[0], o6.src[1], o6.src[2] ^ 1, o6.src[3]], ..o6 };
        assert_eq!(t.lookup(&moved), None);
        assert_eq!(t.lookup(&FlowKey { dst: o6.src, ..o6 }), None);
        // NAT66 is not done: a translated IPv6 reply has no record.
        let other = FlowKey { dport: 444, ..v6tcp.reversed() };
        assert_eq!(t.insert(FlowKey { sport: 1, ..v6tcp }, other, 10, 0), Err(SessionError::Translated));
        assert_eq!(t.len(), flows.len());
        // A flow to itself (reply key = original key) has one index
        // entry, and leaves none when it goes.
        let entries = |t: &SessionTable| t.index.iter().filter(|&&e| e != 0).count();
        let before = entries(&t);
        for k in [FlowKey::v4(5, 5, 7, 7, PROTO_UDP), FlowKey::new(9 << 100, 9 << 100, 7, 7, PROTO_UDP, true)] {
            assert_eq!(k, k.reversed());
            let i = t.insert(k, k, 10, 0).unwrap();
            assert_eq!((t.lookup(&k), entries(&t)), (Some((i, 0)), before + 1));
            assert!(t.remove(i));
            assert_eq!((t.lookup(&k), entries(&t)), (None, before));
        }
        // An IPv4 key built from wide addresses keeps their low 32 bits.
        assert_eq!(FlowKey::new(0xffff_0000_0001 << 32 | 7, 8, 1, 2, 17, false), FlowKey::v4(7, 8, 1, 2, 17));
    }

    #[test]
    fn both_directions_found_with_one_lookup_each() {
        let mut t = SessionTable::new(100, Timeouts::default());
        let orig = FlowKey::v4(0xc0a8_0105, 0x0808_0808, 40000, 53, 17);
        // Masqueraded: replies come back to 203.0.113.10:61000.
        let reply = FlowKey::v4(0x0808_0808, 0xcb00_710a, 53, 61000, 17);
        let idx = t.insert(orig, reply, 100, 0).unwrap();
        assert_eq!(t.lookup(&orig), Some((idx, 0)));
        assert_eq!(t.lookup(&reply), Some((idx, 1)));
        assert_eq!(t.lookup(&orig.reversed()), None);
        assert_eq!(t.insert(orig, reply, 100, 0), Err(SessionError::Exists));
        let v6 = FlowKey::new(0xfdd6 << 112 | 5, 0x2001 << 112 | 1, 1, 2, 6, true);
        let i6 = t.insert(v6, v6.reversed(), 100, TCP_SYN).unwrap();
        assert_eq!(t.lookup(&v6.reversed()), Some((i6, 1)));
        assert_eq!(t.get(i6).unwrap().state, SessionState::SynSent);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn prefault_backs_the_whole_table_and_changes_nothing() {
        let mut t = SessionTable::new(200_000, Timeouts::default());
        t.insert(udp(1), udp(1).reversed(), 0, 0).unwrap();
        t.prefault();
        let spare = t.sessions.spare_capacity_mut();
        let (p, n) = (spare.as_ptr() as *const u8, std::mem::size_of_val(spare));
        for (p, n) in [(t.index.as_ptr() as *const u8, t.index.len() * 8), (p, n)] {
            let (resident, pages) = super::super::mem::resident(p, n);
            assert_eq!(resident, pages, "pages backed after prefault");
        }
        assert_eq!(t.len(), 1);
        assert!(t.lookup(&udp(1)).is_some());
        for i in 2..10_000 {
            t.insert(udp(i), udp(i).reversed(), 0, 0).unwrap();
        }
        assert!((1..10_000).all(|i| t.lookup(&udp(i)).is_some() && t.lookup(&udp(i).reversed()).is_some()));
        assert!(t.lookup(&udp(20_000)).is_none());
    }

    #[test]
    fn full_table_refuses_new_flows_and_keeps_old_ones() {
        let mut t = SessionTable::new(64, Timeouts::default());
        for i in 0..64 {
            t.insert(udp(i), udp(i).reversed(), 0, 0).unwrap();
        }
        assert_eq!(t.insert(udp(999), udp(999).reversed(), 0, 0), Err(SessionError::Full));
        assert_eq!(t.stats.refused_full, 1);
        for i in 0..64 {
            assert!(t.lookup(&udp(i)).is_some());
        }
        let (idx, _) = t.lookup(&udp(7)).unwrap();
        assert!(t.remove(idx));
        assert!(!t.remove(idx));
        assert!(t.insert(udp(999), udp(999).reversed(), 0, 0).is_ok());
        assert!(t.lookup(&udp(7)).is_none());
    }

    #[test]
    fn timeouts_per_protocol_and_state() {
        let mut t = SessionTable::new(1000, Timeouts::default());
        let u = t.insert(udp(1), udp(1).reversed(), 1000, 0).unwrap();
        let icmp = FlowKey::v4(1, 2, 7, 7, 1);
        t.insert(icmp, icmp.reversed(), 1000, 0).unwrap();
        let tcp = FlowKey::v4(1, 2, 3, 4, 6);
        let s = t.insert(tcp, tcp.reversed(), 1000, TCP_SYN).unwrap();
        t.touch(s, 1, 1001, TCP_SYN | TCP_ACK);
        t.touch(s, 0, 1001, TCP_ACK);
        assert_eq!(t.get(s).unwrap().state, SessionState::Established);
        // ICMP (60 s) goes first, UDP (120 s) next, TCP established stays.
        t.expire(1059, 1 << 20);
        assert_eq!(t.len(), 3);
        t.expire(1060, 1 << 20);
        assert!(t.lookup(&icmp).is_none());
        // A reply keeps UDP alive another 120 s from then.
        t.touch(u, 1, 1100, 0);
        t.expire(1130, 1 << 20);
        assert!(t.lookup(&udp(1)).is_some());
        t.expire(1220, 1 << 20);
        assert!(t.lookup(&udp(1)).is_none());
        // RFC 5382: an idle established TCP connection survives 2 h 4 min.
        t.expire(1001 + 7439, 1 << 20);
        assert!(t.lookup(&tcp).is_some());
        t.expire(1001 + 7440, 1 << 20);
        assert!(t.lookup(&tcp).is_none());
        assert_eq!(t.stats.expired, 3);
        assert!(t.is_empty());
    }

    /// `touch` decides the packets that move no state (UDP, segments of an
    /// established connection without SYN, FIN or RST) by a shortcut: every
    /// packet of a random mix of protocols, directions, flags and clock
    /// steps leaves its session in the state `tcp_next` (or, for UDP and
    /// ICMP, a reply) gives and with the deadline of that state's timeout;
    /// and expiry takes each session exactly when its deadline passes.
    #[test]
    fn touch_follows_the_state_machine_for_every_packet() {
        let to = Timeouts::default();
        let mut t = SessionTable::new(64, to);
        let secs = |proto: u8, st: SessionState| match (proto, st) {
            (PROTO_TCP, SessionState::Established) => to.tcp_established,
            (PROTO_TCP, SessionState::TimeWait) => to.tcp_time_wait,
            (PROTO_TCP, SessionState::Closed) => to.tcp_closed,
            (PROTO_TCP, _) => to.tcp_transitory,
            (PROTO_UDP, _) => to.udp,
            _ => to.icmp,
        };
        let flags = [0, TCP_ACK, TCP_SYN, TCP_SYN | TCP_ACK, TCP_FIN | TCP_ACK, TCP_FIN, TCP_RST, TCP_RST | TCP_ACK];
        let mut live: Vec<(u32, FlowKey, SessionState, u32)> = Vec::new();
        let (mut now, mut x) = (1000u32, 0x9e37_79b9_7f4a_7c15u64);
        let mut steady = 0;
        for i in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            now += (x % 3 == 0) as u32 * (x >> 8) as u32 % 40;
            // Expiry: exactly the sessions past their deadline go.
            t.expire(now, 1 << 20);
            live.retain(|&(_, k, _, deadline)| {
                let gone = (now.wrapping_sub(deadline) as i32) >= 0;
                assert_eq!(t.lookup(&k).is_none(), gone, "at {now}, deadline {deadline}");
                !gone
            });
            if live.len() < 32 {
                let proto = [PROTO_TCP, PROTO_TCP, PROTO_UDP, PROTO_ICMP][(x >> 20) as usize % 4];
                let k = FlowKey::v4(0x0a00_0000 | i, 0x0808_0808, 1024 + (i % 60000) as u16, 80, proto);
                let f = if proto == PROTO_TCP { flags[(x >> 24) as usize % flags.len()] } else { 0 };
                let idx = t.insert(k, k.reversed(), now, f).unwrap();
                let s = t.get(idx).unwrap();
                live.push((idx, k, s.state, s.deadline));
                continue;
            }
            let j = (x >> 32) as usize % live.len();
            let (idx, k, st, _) = live[j];
            let dir = (x >> 40) as u8 & 1;
            let f = if k.proto == PROTO_TCP { flags[(x >> 44) as usize % flags.len()] } else { 0 };
            let next = match k.proto {
                PROTO_TCP => tcp_next(st, dir, f),
                _ if dir == 1 => SessionState::Established,
                _ => st,
            };
            steady += (st == next) as u32;
            // Half the packets that move no state through `touch_steady`
            // (the fast path's), which must do the same.
            let moves_none = k.proto == PROTO_UDP
                || (k.proto == PROTO_TCP && st == SessionState::Established && f & (TCP_SYN | TCP_FIN | TCP_RST) == 0);
            if moves_none && x >> 50 & 1 == 1 {
                t.touch_steady(idx, dir, now);
            } else {
                t.touch(idx, dir, now, f);
            }
            let s = t.get(idx).unwrap();
            assert_eq!(
                (s.state, s.deadline),
                (next, now + secs(k.proto, next)),
                "{:?} {st:?} dir {dir} flags {f:#x}",
                k.proto
            );
            live[j] = (idx, k, next, now + secs(k.proto, next));
        }
        assert!(steady > 3_000, "{steady} packets that moved no state");
    }

    #[test]
    fn tcp_close_and_reset_shorten_the_timeout() {
        let mut t = SessionTable::new(10, Timeouts::default());
        let k = FlowKey::v4(1, 2, 3, 4, 6);
        let s = t.insert(k, k.reversed(), 0, TCP_SYN).unwrap();
        for (dir, f) in
            [(1, TCP_SYN | TCP_ACK), (0, TCP_ACK), (0, TCP_FIN | TCP_ACK), (1, TCP_FIN | TCP_ACK), (0, TCP_ACK)]
        {
            t.touch(s, dir, 10, f);
        }
        assert_eq!(t.get(s).unwrap().state, SessionState::TimeWait);
        t.expire(129, 100);
        assert!(t.lookup(&k).is_some());
        t.expire(130, 100);
        assert!(t.lookup(&k).is_none());
        let s = t.insert(k, k.reversed(), 200, TCP_SYN).unwrap();
        t.touch(s, 1, 201, TCP_RST);
        assert_eq!(t.get(s).unwrap().state, SessionState::Closed);
        t.expire(211, 100);
        assert!(t.lookup(&k).is_none());
    }

    #[test]
    fn expiry_is_spread_by_the_budget() {
        let mut t = SessionTable::new(20_000, Timeouts::default());
        for i in 0..10_000 {
            t.insert(udp(i), udp(i).reversed(), 5, 0).unwrap();
        }
        let mut calls = 0;
        let mut freed = 0;
        while freed < 10_000 {
            let n = t.expire(125, 64);
            assert!(n <= 64, "never more than the budget at once");
            freed += n;
            calls += 1;
            assert!(calls < 10_000);
        }
        assert!(t.is_empty());
        assert!(calls >= 10_000 / 64);
    }

    /// Budgets that end batches part way (the batch is 8), that take a few
    /// batches per call, and that take everything in one call (a pipeline
    /// of batches: each released after the next is taken off the list).
    #[test]
    fn expiry_in_batches_frees_exactly_the_due_sessions_and_keeps_the_rest_findable() {
        for budget in [3, 20, 100_000] {
            let mut t = SessionTable::new(4000, Timeouts::default());
            let idx: Vec<u32> = (0..1000).map(|i| t.insert(udp(i), udp(i).reversed(), 5, 0).unwrap()).collect();
            // Every third one sees a packet later: still filed under the
            // first deadline (125), it must be re-filed, not freed, when
            // visited.
            for i in (0..1000).step_by(3) {
                t.touch(idx[i], 0, 100, 0);
            }
            let mut calls = 0;
            while t.len() > 334 {
                assert!(t.expire(125, budget) <= budget);
                calls += 1;
                assert!(calls < 10_000, "expiry stalled at {} sessions (budget {budget})", t.len());
            }
            assert_eq!(t.expire(125, 100_000), 0, "nothing else is due (budget {budget})");
            for i in 0..1000u32 {
                let k = udp(i);
                if i % 3 == 0 {
                    assert_eq!(t.lookup(&k), Some((idx[i as usize], 0)), "{i}");
                    assert_eq!(t.lookup(&k.reversed()), Some((idx[i as usize], 1)), "{i}");
                } else {
                    assert_eq!((t.lookup(&k), t.lookup(&k.reversed())), (None, None), "{i}");
                }
            }
            assert_eq!(t.stats.expired, 666);
            // The re-filed ones go at their own deadline.
            assert_eq!(t.expire(220, 100_000), 334);
            assert!(t.is_empty());
        }
    }

    /// In a 16-slot index, probe runs are long and often shared: a new
    /// session's two entries, and the entries shifted back when one is
    /// removed, must leave every live key findable and no stray entry.
    #[test]
    fn both_keys_findable_when_their_probe_runs_meet() {
        let mut t = SessionTable::new(5, Timeouts::default());
        assert_eq!(t.index.len(), 16);
        let mut live: Vec<(FlowKey, u32)> = Vec::new();
        for round in 0..20_000u32 {
            let k = udp(round.wrapping_mul(2_654_435_761));
            if live.len() == 5 {
                let (old, i) = live.remove((round % 5) as usize);
                assert!(t.remove(i));
                assert_eq!(t.lookup(&old), None);
            }
            let i = t.insert(k, k.reversed(), 0, 0).unwrap();
            live.push((k, i));
            for &(k, i) in &live {
                assert_eq!(t.lookup(&k), Some((i, 0)));
                assert_eq!(t.lookup(&k.reversed()), Some((i, 1)));
            }
            assert_eq!(t.index.iter().filter(|&&e| e != 0).count(), 2 * live.len());
        }
    }

    /// A flow whose reply key is another session's key (here: that
    /// session's original) is refused, and leaves no entry behind.
    #[test]
    fn a_reply_key_held_by_another_session_is_refused_and_writes_nothing() {
        let mut t = SessionTable::new(100, Timeouts::default());
        let (a, b) = (udp(1), udp(2));
        let i = t.insert(a, a.reversed(), 0, 0).unwrap();
        assert_eq!(t.insert(b, a, 0, 0), Err(SessionError::Exists));
        assert_eq!(t.insert(b, a.reversed(), 0, 0), Err(SessionError::Exists));
        assert_eq!(t.insert(a, b, 0, 0), Err(SessionError::Exists));
        assert_eq!(t.len(), 1);
        assert_eq!(t.index.iter().filter(|&&e| e != 0).count(), 2);
        assert_eq!((t.lookup(&a), t.lookup(&a.reversed()), t.lookup(&b)), (Some((i, 0)), Some((i, 1)), None));
        assert!(t.insert(b, b.reversed(), 0, 0).is_ok());
    }

    /// When both keys of a flow have the same home slot, the insert finds
    /// that one empty slot for both: the original takes it and the reply
    /// the next, and both are found.
    #[test]
    fn both_keys_with_one_home_take_consecutive_slots() {
        let mut t = SessionTable::new(5, Timeouts::default());
        let slots = t.index.len();
        let k = (0..100_000)
            .map(udp)
            .find(|k| t.home(t.hash(k)) == t.home(t.hash(&k.reversed())) && t.home(t.hash(k)) + 1 < slots)
            .expect("some flow's two keys share a home among 100,000");
        let home = t.home(t.hash(&k));
        let i = t.insert(k, k.reversed(), 0, 0).unwrap();
        assert_eq!(t.index[home], SessionTable::entry(t.hash(&k), i, 0));
        assert_eq!(t.index[home + 1], SessionTable::entry(t.hash(&k.reversed()), i, 1));
        assert_eq!((t.lookup(&k), t.lookup(&k.reversed())), (Some((i, 0)), Some((i, 1))));
    }

    /// Freeing a session finds its index entries from the tags kept in its
    /// record: with translated replies (a reply key unrelated to the
    /// original's), every entry goes, and the flows left stay findable.
    #[test]
    fn freeing_translated_flows_removes_exactly_their_entries() {
        let mut t = SessionTable::new(4000, Timeouts::default());
        let reply = |i: u32| FlowKey::v4(0x0808_0808, 0xcb00_7101, 53, 20000 + (i % 40000) as u16, 17);
        let ids: Vec<u32> = (0..4000).map(|i| t.insert(udp(i), reply(i), 0, 0).unwrap()).collect();
        for (i, &id) in ids.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            assert!(t.remove(id), "flow {i}");
        }
        assert_eq!(t.index.iter().filter(|&&e| e != 0).count(), 2 * 2000);
        for (i, &id) in ids.iter().enumerate() {
            let found = if i % 2 == 0 { None } else { Some((id, 0)) };
            assert_eq!(t.lookup(&udp(i as u32)), found);
            assert_eq!(t.lookup(&reply(i as u32)), found.map(|(id, _)| (id, 1)));
        }
        // The rest expire (UDP: 120 s), through the wheel's batches.
        assert_eq!(t.expire(1000, usize::MAX), 2000);
        assert!(t.index.iter().all(|&e| e == 0));
    }

    #[test]
    fn random_churn_matches_a_hashmap_model() {
        // A quarter of the flows IPv6, sharing the records and the index.
        let key = |i: u32| if i % 4 == 3 { v6(i) } else { udp(i) };
        let mut t = SessionTable::new(3000, Timeouts::default());
        let mut model: HashMap<FlowKey, u32> = HashMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for step in 0..200_000u32 {
            let k = key((rnd() % 5000) as u32);
            match rnd() % 3 {
                0 | 1 => match t.insert(k, k.reversed(), 0, 0) {
                    Ok(i) => {
                        assert!(!model.contains_key(&k));
                        model.insert(k, i);
                    }
                    Err(SessionError::Exists) => assert!(model.contains_key(&k)),
                    Err(SessionError::Full) => assert_eq!(model.len(), 3000),
                    Err(e @ SessionError::Translated) => panic!("{e}"),
                },
                _ => {
                    if let Some(i) = model.remove(&k) {
                        assert!(t.remove(i));
                    }
                }
            }
            if step % 10_000 == 0 {
                for (k, &i) in &model {
                    assert_eq!(t.lookup(k), Some((i, 0)));
                    assert_eq!(t.lookup(&k.reversed()), Some((i, 1)));
                }
                // The bulk lookup agrees, hits and misses alike.
                let keys: Vec<FlowKey> = (0..64).map(|j| key((rnd() % 5000) as u32 ^ (j & 1))).collect();
                let mut out = [None; 64];
                t.lookup_bulk(&keys, &mut out);
                for (k, o) in keys.iter().zip(out) {
                    assert_eq!(o, t.lookup(k));
                }
            }
        }
        assert_eq!(t.len(), model.len());
    }

    /// Keys whose index tags are equal share a home slot, so the bulk
    /// lookup's first candidate for one is the other's entry: it must fall
    /// back to walking the run, for a key present and for one absent.
    #[test]
    fn bulk_lookup_walks_past_an_entry_with_the_same_tag() {
        let mut t = SessionTable::new(1 << 20, Timeouts::default());
        let key = |i: u32| FlowKey::v4(0x0a00_0000 | i, 0x0808_0808, 1000, 53, 17);
        // Pairs of keys with one 32-bit tag: about 19 expected among
        // 400,000 keys (n^2 / 2^33).
        let mut by_tag: HashMap<u64, u32> = HashMap::new();
        let mut pairs = Vec::new();
        for i in 0..400_000 {
            match by_tag.entry(SessionTable::tag(t.hash(&key(i)))) {
                std::collections::hash_map::Entry::Occupied(j) => pairs.push((key(*j.get()), key(i))),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(i);
                }
            }
        }
        assert!(pairs.len() >= 2, "no two tags alike among 400,000 keys");
        let ((a, b), (c, absent)) = (pairs[0], pairs[1]);
        let (ia, ib, ic) = (
            t.insert(a, a.reversed(), 0, 0).unwrap(),
            t.insert(b, b.reversed(), 0, 0).unwrap(),
            t.insert(c, c.reversed(), 0, 0).unwrap(),
        );
        let keys = [b, a, absent, c];
        let mut out = [None; 4];
        t.lookup_bulk(&keys, &mut out);
        assert_eq!(out, [Some((ib, 0)), Some((ia, 0)), None, Some((ic, 0))]);
    }

    #[test]
    fn last_seen_and_early_refiling() {
        let mut t = SessionTable::new(10, Timeouts::default());
        let k = FlowKey::v4(1, 2, 3, 4, 6);
        let s = t.insert(k, k.reversed(), 50, 0).unwrap(); // mid-stream: established
        assert_eq!(t.get(s).unwrap().state, SessionState::Established);
        t.touch(s, 1, 60, TCP_ACK);
        assert_eq!(t.last_seen(s), Some(60));
        // A reset moves the deadline from 60 + 7440 to 70: found at 70.
        t.touch(s, 0, 60, TCP_RST);
        t.expire(69, 100_000);
        assert!(t.lookup(&k).is_some());
        t.expire(70, 100_000);
        assert!(t.lookup(&k).is_none());
        assert_eq!(t.last_seen(s), None);
        t.touch(s, 0, 80, TCP_ACK); // a freed record is not revived
        assert!(t.lookup(&k).is_none());
    }

    #[test]
    fn at_most_128_bytes_per_session_at_ten_million() {
        assert_eq!(std::mem::size_of::<Session>(), 64);
        let t = SessionTable::new(10_000_000, Timeouts::default());
        let per = t.memory_bytes() as f64 / t.capacity() as f64;
        assert!(per <= 128.0, "{per} bytes per session");
    }
}
