//! Packet buffers, the recycling pool, and the burst that stages work on.
//!
//! A buffer is a fixed 2 KiB block with headroom, moved by pointer between the
//! pool, a port and a burst: nothing is allocated per packet. The burst keeps
//! the buffers and, beside them, one [`Meta`] per packet that each stage reads
//! and writes (VPP's vector of buffer indices plus opaque metadata).

/// Size of one buffer, headroom included.
pub const BUF_SIZE: usize = 2048;
/// Bytes kept free in front of the frame for headers pushed later (tunnels, VLAN).
pub const HEADROOM: usize = 128;
/// Largest frame a buffer holds (1500-byte MTU + Ethernet + two VLAN tags fit).
pub const MAX_FRAME: usize = BUF_SIZE - HEADROOM - 8;
/// The largest IP MTU a port forwards at: its frames, with an Ethernet
/// header and two VLAN tags, fill a buffer. A port configured (or an
/// interface found) with a larger MTU forwards at this one: there are no
/// jumbo frames.
pub const MAX_MTU: u16 = (MAX_FRAME - 22) as u16;

/// The MTU port `port` forwards at when `whence` gives it `mtu`: at most
/// `MAX_MTU`, with a warning in the log when it is less than asked.
pub fn port_mtu(port: &str, mtu: u16, whence: &str) -> u16 {
    if mtu > MAX_MTU {
        log::warn!(
            "port {port}: mtu {mtu} ({whence}) is above the largest this data plane forwards at ({MAX_MTU}: no jumbo frames); the port uses {MAX_MTU}, and larger frames it receives are dropped"
        );
    }
    mtu.min(MAX_MTU)
}
/// Largest burst a worker handles at once.
pub const MAX_BURST: usize = 256;
pub const DEFAULT_BURST: usize = 32;

/// What the pipeline has decided for a packet so far.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verdict {
    /// Still travelling through the stages.
    #[default]
    Pending = 0,
    /// Rewritten and ready for `out_port`.
    Forward = 1,
    /// For the appliance itself: goes to the exception path.
    Local = 2,
    /// Dropped; `Meta::reason` says why.
    Drop = 3,
}

/// Network layer found by the parser.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum L3 {
    #[default]
    None = 0,
    Ipv4 = 1,
    Ipv6 = 2,
    Arp = 3,
}

/// Per-packet metadata, written by the stages.
/// IPv4 addresses sit in the low 32 bits of `src`/`dst`.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct Meta {
    pub src: u128,
    pub dst: u128,
    /// Flow hash over the 5-tuple (symmetric), 0 until a stage needs it
    /// (see `Meta::flow_hash`).
    pub hash: u32,
    /// Next-hop (adjacency) index chosen by the route stage.
    pub nh: u32,
    /// IPv4 identification or IPv6 fragment identification of a fragment.
    pub frag_id: u32,
    pub in_port: u16,
    pub out_port: u16,
    /// Offsets from the start of the frame.
    pub l3_off: u16,
    pub l4_off: u16,
    pub sport: u16,
    pub dport: u16,
    pub vlan: u16,
    pub l3: L3,
    pub proto: u8,
    /// 0: not a fragment, 1: first fragment, 2: later fragment.
    pub frag: u8,
    pub verdict: Verdict,
    /// Drop reason code (`stage::DropReason as u8`) when `verdict == Drop`.
    pub reason: u8,
    pub tcp_flags: u8,
    /// ICMP or ICMPv6 message type (unfragmented packets and first fragments).
    pub icmp_type: u8,
    /// Why a `Local` packet goes to the exception path (`stage::Punt`).
    pub punt: u8,
    /// The packet was translated (NAT): `orig_*` hold its IPv4 addresses and
    /// ports as it arrived, for an ICMP error about it (which must quote
    /// what the sender sent). These fit in what was padding.
    pub xlated: bool,
    pub orig_sport: u16,
    pub orig_dport: u16,
    pub orig_src: u32,
    pub orig_dst: u32,
}

// The metadata of a packet stays within 80 bytes (a burst of 32 in 40 lines).
const _: () = assert!(std::mem::size_of::<Meta>() <= 80);

impl Meta {
    /// The symmetric 5-tuple hash, computed on first use: most packets
    /// never need it (ECMP and session tables do).
    #[inline]
    pub fn flow_hash(&mut self) -> u32 {
        if self.hash == 0 {
            self.hash = super::flow_hash(self.src, self.dst, self.sport, self.dport, self.proto) | 1;
        }
        self.hash
    }

    #[inline]
    pub fn drop(&mut self, reason: u8) {
        self.verdict = Verdict::Drop;
        self.reason = reason;
    }
}

/// What the stages need of a packet buffer, whatever backend owns its memory
/// (our pool, or a DPDK mbuf later).
pub trait PacketBuf: Send + 'static {
    /// Where released buffers go (our [`Pool`]; a DPDK mempool needs none).
    type Pool: Send;
    /// Gives the buffer back to its pool.
    fn release(self, pool: &mut Self::Pool);
    fn data(&self) -> &[u8];
    fn data_mut(&mut self) -> &mut [u8];
    fn len(&self) -> usize {
        self.data().len()
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether the receiving device verified the frame's IPv4 header
    /// checksum and found it good (a NIC's receive checksum offload). Only
    /// ever a shortcut: false means "check it in software", never "bad".
    #[inline(always)]
    fn ipv4_checksum_verified(&self) -> bool {
        false
    }
    /// Drops `n` bytes from the front (for instance an old L2 header).
    fn adj(&mut self, n: usize);
    /// Grows the frame by `n` bytes at the front, from the headroom; false when
    /// there is not enough headroom.
    fn prepend(&mut self, n: usize) -> bool;
    /// Shortens the frame to `len` bytes (Ethernet padding removal).
    fn trim(&mut self, len: usize);
}

/// A buffer type a worker can run on: how it makes its pool, and how its
/// packets cross to the host stack, which works on [`Pkt`] buffers.
///
/// For `Pkt` itself nothing is copied: the buffer moves. A backend with its
/// own memory (DPDK mbufs) copies on this exception path only, through a
/// small stock of `Pkt`s the worker keeps in its pool; the forwarding path
/// never copies.
pub trait WorkerBuf: PacketBuf + Sized {
    /// Whether buffers live in per-worker pools that handoff between workers
    /// must rebalance (`Pkt`), as opposed to one shared pool (a mempool).
    const PRIVATE_POOLS: bool;
    /// Called on the worker's own thread as it starts: its pool of
    /// `capacity` buffers, `fill` of them allocated now.
    fn worker_pool(capacity: usize, fill: usize) -> Self::Pool;
    /// The worker's stock of host-stack buffers (refilled from the host's
    /// recycle ring).
    fn host_stock(pool: &mut Self::Pool) -> &mut Pool;
    /// The packet as a host-stack buffer; None (the packet released) when
    /// the stock is empty.
    fn into_host(self, pool: &mut Self::Pool) -> Option<Pkt>;
    /// A frame from the host stack as this buffer type; None when no buffer
    /// is free (the frame's buffer goes back to the stock either way).
    fn from_host(p: Pkt, pool: &mut Self::Pool) -> Option<Self>;
    /// For handoff rebalancing (only called when `PRIVATE_POOLS`).
    fn pool_alloc(pool: &mut Self::Pool) -> Option<Self>;
    fn pool_available(pool: &Self::Pool) -> usize;
    fn pool_capacity(pool: &Self::Pool) -> usize;
}

impl WorkerBuf for Pkt {
    const PRIVATE_POOLS: bool = true;
    fn worker_pool(capacity: usize, fill: usize) -> Pool {
        Pool::with_fill(capacity, fill)
    }
    #[inline]
    fn host_stock(pool: &mut Pool) -> &mut Pool {
        pool
    }
    #[inline]
    fn into_host(self, _: &mut Pool) -> Option<Pkt> {
        Some(self)
    }
    #[inline]
    fn from_host(p: Pkt, _: &mut Pool) -> Option<Pkt> {
        Some(p)
    }
    #[inline]
    fn pool_alloc(pool: &mut Pool) -> Option<Pkt> {
        pool.alloc()
    }
    #[inline]
    fn pool_available(pool: &Pool) -> usize {
        pool.available()
    }
    #[inline]
    fn pool_capacity(pool: &Pool) -> usize {
        pool.capacity()
    }
}

/// One pool buffer: offset and length of the frame, then the bytes.
#[repr(C, align(64))]
pub struct Buf {
    off: u16,
    len: u16,
    bytes: [u8; BUF_SIZE],
}

/// An owned packet buffer from a [`Pool`].
pub struct Pkt(Box<Buf>);

impl Pkt {
    /// Allocates a buffer outside any pool (tests, the control thread).
    pub fn new() -> Pkt {
        Pkt(Box::new(Buf { off: HEADROOM as u16, len: 0, bytes: [0; BUF_SIZE] }))
    }

    /// Builds a packet holding a copy of `frame`; None if it does not fit.
    pub fn from_slice(frame: &[u8]) -> Option<Pkt> {
        let mut p = Pkt::new();
        p.fill(frame).then_some(p)
    }

    /// Replaces the contents with `frame` (at the default headroom).
    #[inline]
    pub fn fill(&mut self, frame: &[u8]) -> bool {
        if frame.len() > MAX_FRAME {
            return false;
        }
        let b = &mut *self.0;
        b.off = HEADROOM as u16;
        b.len = frame.len() as u16;
        b.bytes[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        true
    }

    /// Like `fill`, for a source padded to a multiple of 64 bytes: copies
    /// whole 64-byte blocks (fixed-size moves, no `memmove` start-up cost for
    /// short frames). `padded.len()` must be `frame_len` rounded up to 64.
    #[inline]
    pub fn fill_padded(&mut self, padded: &[u8], frame_len: usize) -> bool {
        if frame_len > MAX_FRAME || padded.len() < frame_len || padded.len() > BUF_SIZE - HEADROOM {
            return false;
        }
        let b = &mut *self.0;
        b.off = HEADROOM as u16;
        b.len = frame_len as u16;
        let (dst, _) = b.bytes[HEADROOM..].as_chunks_mut::<64>();
        let (src, _) = padded.as_chunks::<64>();
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
        true
    }

    /// Room after the headroom, for a receiver writing the frame in place.
    pub fn room_mut(&mut self) -> &mut [u8] {
        &mut self.0.bytes[HEADROOM..HEADROOM + MAX_FRAME]
    }

    /// Sets the frame to the first `len` bytes of `room_mut`.
    pub fn set_received(&mut self, len: usize) {
        debug_assert!(len <= MAX_FRAME);
        self.0.off = HEADROOM as u16;
        self.0.len = len.min(MAX_FRAME) as u16;
    }
}

impl std::fmt::Debug for Pkt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pkt({} bytes)", self.len())
    }
}

impl Default for Pkt {
    fn default() -> Self {
        Pkt::new()
    }
}

impl PacketBuf for Pkt {
    type Pool = Pool;
    #[inline]
    fn release(self, pool: &mut Pool) {
        pool.free(self)
    }
    #[inline]
    fn data(&self) -> &[u8] {
        let b = &*self.0;
        &b.bytes[b.off as usize..b.off as usize + b.len as usize]
    }
    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        let b = &mut *self.0;
        &mut b.bytes[b.off as usize..b.off as usize + b.len as usize]
    }
    #[inline]
    fn len(&self) -> usize {
        self.0.len as usize
    }
    #[inline]
    fn adj(&mut self, n: usize) {
        let n = n.min(self.0.len as usize) as u16;
        self.0.off += n;
        self.0.len -= n;
    }
    #[inline]
    fn prepend(&mut self, n: usize) -> bool {
        if n > self.0.off as usize {
            return false;
        }
        self.0.off -= n as u16;
        self.0.len += n as u16;
        true
    }
    #[inline]
    fn trim(&mut self, len: usize) {
        if len < self.0.len as usize {
            self.0.len = len as u16;
        }
    }
}

/// A per-worker stack of free buffers. Allocation and free are a pop and a
/// push; the most recently freed (cache-hot) buffer is reused first.
pub struct Pool {
    free: Vec<Pkt>,
    capacity: usize,
}

impl Pool {
    /// Pre-allocates `capacity` buffers; the pool never grows past it.
    pub fn new(capacity: usize) -> Pool {
        Pool::with_fill(capacity, capacity)
    }

    /// Room for `capacity` buffers, `fill` of them allocated now (a worker
    /// that exchanges buffers with others keeps room to receive).
    pub fn with_fill(capacity: usize, fill: usize) -> Pool {
        let mut free = Vec::with_capacity(capacity);
        for _ in 0..fill.min(capacity) {
            free.push(Pkt::new());
        }
        Pool { free, capacity }
    }

    #[inline]
    pub fn alloc(&mut self) -> Option<Pkt> {
        self.free.pop()
    }

    /// Returns a buffer. Buffers that arrived from elsewhere (another
    /// worker's ring) may overfill the pool: those are released instead.
    #[inline]
    pub fn free(&mut self, p: Pkt) {
        if self.free.len() < self.capacity {
            self.free.push(p);
        }
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Up to `capacity` packets with their metadata, processed stage by stage.
pub struct Burst<P: PacketBuf = Pkt> {
    pkts: Vec<P>,
    meta: Vec<Meta>,
    capacity: usize,
    /// Scratch for `split_off` (allocated once, never grown).
    kept: Vec<P>,
}

impl<P: PacketBuf> Burst<P> {
    /// A burst of at most `capacity` (1..=MAX_BURST) packets.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, MAX_BURST);
        Burst {
            pkts: Vec::with_capacity(capacity),
            meta: vec![Meta::default(); capacity],
            capacity,
            kept: Vec::with_capacity(capacity),
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.pkts.len()
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.pkts.is_empty()
    }
    #[inline]
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    #[inline]
    pub fn room(&self) -> usize {
        self.capacity - self.pkts.len()
    }

    /// Adds a received packet with fresh metadata; gives it back when full.
    #[inline]
    pub fn push(&mut self, p: P, in_port: u16) -> Result<(), P> {
        let i = self.pkts.len();
        if i == self.capacity {
            return Err(p);
        }
        self.meta[i] = Meta { in_port, ..Meta::default() };
        self.pkts.push(p);
        Ok(())
    }

    /// Adds received packets with fresh metadata, as many as there is room
    /// for (the rest of `pkts` is not taken); returns how many. One pass
    /// for the buffers and one for the metadata, rather than a `push` each.
    #[inline]
    pub fn extend_received(&mut self, pkts: impl IntoIterator<Item = P>, in_port: u16) -> usize {
        let start = self.pkts.len();
        self.pkts.extend(pkts.into_iter().take(self.capacity - start));
        let end = self.pkts.len();
        self.meta[start..end].fill(Meta { in_port, ..Meta::default() });
        end - start
    }

    /// Adds a packet with metadata a stage already filled (a packet handed
    /// over by another worker); gives it back when full.
    #[inline]
    pub fn push_with_meta(&mut self, p: P, meta: Meta) -> Result<(), P> {
        let i = self.pkts.len();
        if i == self.capacity {
            return Err(p);
        }
        self.meta[i] = meta;
        self.pkts.push(p);
        Ok(())
    }

    /// Moves the packets for which `take` is true out to `out`, keeping the
    /// others in order (no allocation).
    /// Both closures get the packet's position in the burst.
    pub fn split_off(&mut self, mut take: impl FnMut(usize, &Meta) -> bool, mut out: impl FnMut(usize, P, &Meta)) {
        let mut w = 0;
        for (i, p) in self.pkts.drain(..).enumerate() {
            let m = self.meta[i];
            if take(i, &m) {
                out(i, p, &m);
            } else {
                self.meta[w] = m;
                self.kept.push(p);
                w += 1;
            }
        }
        std::mem::swap(&mut self.pkts, &mut self.kept);
    }

    #[inline]
    pub fn pkt(&self, i: usize) -> &P {
        &self.pkts[i]
    }
    #[inline]
    pub fn pkt_mut(&mut self, i: usize) -> &mut P {
        &mut self.pkts[i]
    }
    #[inline]
    pub fn meta(&self, i: usize) -> &Meta {
        &self.meta[i]
    }
    #[inline]
    pub fn meta_mut(&mut self, i: usize) -> &mut Meta {
        &mut self.meta[i]
    }
    /// Packet and its metadata together, for stages that rewrite.
    #[inline]
    pub fn pair_mut(&mut self, i: usize) -> (&mut P, &mut Meta) {
        (&mut self.pkts[i], &mut self.meta[i])
    }
    #[inline]
    pub fn metas(&self) -> &[Meta] {
        &self.meta[..self.pkts.len()]
    }

    /// Empties the burst, handing each packet and its metadata to `f` in order.
    #[inline]
    pub fn drain(&mut self, mut f: impl FnMut(P, &Meta)) {
        for (i, p) in self.pkts.drain(..).enumerate() {
            f(p, &self.meta[i]);
        }
    }

    /// Empties the burst into `queues[queue(meta)]`, in order, each packet
    /// to the queue its metadata names (which must exist). When all go to
    /// one queue that is empty, as a received burst routed to one port
    /// does, the two vectors change places instead: no packet is moved
    /// one by one (both hold at least a burst, so neither grows later).
    #[inline]
    pub fn drain_to_queues(&mut self, queues: &mut [Vec<P>], queue: impl Fn(&Meta) -> usize) {
        let n = self.pkts.len();
        if n == 0 {
            return;
        }
        let q = queue(&self.meta[0]);
        if self.meta[1..n].iter().all(|m| queue(m) == q) {
            let to = &mut queues[q];
            if to.is_empty() && to.capacity() >= self.capacity {
                std::mem::swap(&mut self.pkts, to);
            } else {
                to.append(&mut self.pkts);
            }
            return;
        }
        for (i, p) in self.pkts.drain(..).enumerate() {
            queues[queue(&self.meta[i])].push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_recycles_without_growing() {
        let mut pool = Pool::new(4);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        assert_eq!(pool.available(), 2);
        pool.free(a);
        pool.free(b);
        pool.free(Pkt::new()); // foreign buffer into a full pool is released
        assert_eq!(pool.available(), 4);
        for _ in 0..4 {
            assert!(pool.alloc().is_some());
        }
        assert!(pool.alloc().is_none());
    }

    #[test]
    fn buffer_adjust_prepend_trim() {
        let mut p = Pkt::from_slice(&[1, 2, 3, 4, 5, 6]).unwrap();
        p.adj(2);
        assert_eq!(p.data(), &[3, 4, 5, 6]);
        assert!(p.prepend(1));
        assert_eq!(p.data(), &[2, 3, 4, 5, 6]);
        p.trim(3);
        assert_eq!(p.data(), &[2, 3, 4]);
        assert!(!p.prepend(HEADROOM + 10));
        p.adj(100);
        assert!(p.is_empty());
        assert!(Pkt::from_slice(&vec![0; MAX_FRAME + 1]).is_none());
        assert!(Pkt::from_slice(&vec![0; MAX_FRAME]).is_some());
    }

    #[test]
    fn extend_received_takes_what_fits_with_fresh_metadata() {
        let mut b: Burst = Burst::new(4);
        assert!(b.push(Pkt::from_slice(&[1]).unwrap(), 3).is_ok());
        b.meta_mut(0).drop(7);
        // A stale metadata slot must not leak into the next packet there.
        b.meta_mut(1).out_port = 9;
        let frames = [[2u8], [3], [4], [5]];
        let mut offered = 0;
        let got = b.extend_received(
            frames.iter().map(|f| {
                offered += 1;
                Pkt::from_slice(f).unwrap()
            }),
            6,
        );
        assert_eq!((got, offered, b.len()), (3, 3, 4), "only the room is taken from the iterator");
        let firsts: Vec<u8> = (0..4).map(|i| b.pkt(i).data()[0]).collect();
        assert_eq!(firsts, [1, 2, 3, 4]);
        assert_eq!((b.meta(0).in_port, b.meta(0).verdict), (3, Verdict::Drop));
        for i in 1..4 {
            let m = b.meta(i);
            assert_eq!((m.in_port, m.out_port, m.verdict, m.hash), (6, 0, Verdict::Pending, 0));
        }
        assert_eq!(b.extend_received([Pkt::new()], 6), 0);
    }

    #[test]
    fn drain_to_queues_swaps_or_spreads_in_order() {
        let mut b: Burst = Burst::new(4);
        let mut queues: Vec<Vec<Pkt>> = (0..3).map(|_| Vec::with_capacity(4)).collect();
        // All to one empty queue: the vectors change places.
        b.extend_received((1..=3u8).map(|x| Pkt::from_slice(&[x]).unwrap()), 0);
        for i in 0..3 {
            b.meta_mut(i).out_port = 2;
        }
        b.drain_to_queues(&mut queues, |m| m.out_port as usize);
        assert!(b.is_empty() && b.room() == 4);
        assert_eq!(queues[2].iter().map(|p| p.data()[0]).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(queues[2].capacity() >= 4);
        // All to one queue that holds packets already: appended after them.
        b.extend_received([Pkt::from_slice(&[4]).unwrap()], 0);
        b.meta_mut(0).out_port = 2;
        b.drain_to_queues(&mut queues, |m| m.out_port as usize);
        assert_eq!(queues[2].iter().map(|p| p.data()[0]).collect::<Vec<_>>(), [1, 2, 3, 4]);
        // Mixed: each to its own, in order.
        b.extend_received((5..=8u8).map(|x| Pkt::from_slice(&[x]).unwrap()), 0);
        for (i, q) in [0u16, 1, 0, 1].into_iter().enumerate() {
            b.meta_mut(i).out_port = q;
        }
        b.drain_to_queues(&mut queues, |m| m.out_port as usize);
        assert!(b.is_empty());
        assert_eq!(queues[0].iter().map(|p| p.data()[0]).collect::<Vec<_>>(), [5, 7]);
        assert_eq!(queues[1].iter().map(|p| p.data()[0]).collect::<Vec<_>>(), [6, 8]);
        // The burst still takes a whole burst without growing.
        let cap = b.capacity();
        assert_eq!(b.extend_received((0..9u8).map(|x| Pkt::from_slice(&[x]).unwrap()), 0), cap);
    }

    #[test]
    fn burst_push_and_drain_keep_order() {
        let mut b: Burst = Burst::new(2);
        assert!(b.push(Pkt::from_slice(&[1]).unwrap(), 3).is_ok());
        b.meta_mut(0).drop(7);
        assert!(b.push(Pkt::from_slice(&[2]).unwrap(), 4).is_ok());
        assert!(b.push(Pkt::new(), 5).is_err());
        let mut seen = Vec::new();
        b.drain(|p, m| seen.push((p.data()[0], m.in_port, m.verdict)));
        assert_eq!(seen, vec![(1, 3, Verdict::Drop), (2, 4, Verdict::Pending)]);
        assert!(b.is_empty());
        // Metadata is fresh for the next packet in a slot.
        b.push(Pkt::new(), 9).unwrap();
        assert_eq!(b.meta(0).verdict, Verdict::Pending);
    }
}
