//! Captures as ports: read a pcap or pcapng file into memory and replay it
//! (once or looping, as DPDK's net_pcap `infinite_rx` does), and write
//! transmitted frames to a pcap file.

use super::{QueueCounters, RxQueue, TxQueue};
use crate::packet::huge::advise_huge;
use crate::packet::{Burst, MAX_FRAME, PacketBuf, Pkt, Pool};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{DataLink, Endianness, TsResolution};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: not a readable pcap/pcapng capture: {err}")]
    Format { path: PathBuf, err: String },
    #[error("{path}: link type {linktype} is not Ethernet")]
    LinkType { path: PathBuf, linktype: String },
}

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub ts: Duration,
    pub data: Vec<u8>,
}

/// Reads every frame of an Ethernet pcap or pcapng file.
pub fn read_capture(path: &Path) -> Result<Vec<Frame>, CaptureError> {
    let io = |err| CaptureError::Io { path: path.to_path_buf(), err };
    let fmt = |err: pcap_file::PcapError| CaptureError::Format { path: path.to_path_buf(), err: err.to_string() };
    let mut f = BufReader::new(File::open(path).map_err(io)?);
    let mut magic = [0u8; 4];
    f.read_exact(&mut magic).map_err(|e| CaptureError::Format { path: path.to_path_buf(), err: e.to_string() })?;
    let f = BufReader::new(File::open(path).map_err(io)?);
    let mut out = Vec::new();
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut r = PcapNgReader::new(f).map_err(fmt)?;
        // Interface ids are per section: a section header starts a new list.
        let mut links: Vec<DataLink> = Vec::new();
        let eth = |lt: Option<&DataLink>| match lt {
            Some(DataLink::ETHERNET) => Ok(()),
            lt => Err(CaptureError::LinkType { path: path.to_path_buf(), linktype: format!("{lt:?}") }),
        };
        while let Some(b) = r.next_block() {
            match b.map_err(fmt)? {
                Block::SectionHeader(_) => links.clear(),
                Block::InterfaceDescription(i) => links.push(i.linktype),
                Block::EnhancedPacket(p) => {
                    eth(links.get(p.interface_id as usize))?;
                    out.push(Frame { ts: p.timestamp, data: p.data.into_owned() });
                }
                Block::SimplePacket(p) => {
                    eth(links.first())?;
                    let ts = out.last().map_or(Duration::ZERO, |f: &Frame| f.ts);
                    out.push(Frame { ts, data: p.data.into_owned() });
                }
                _ => {}
            }
        }
    } else {
        let mut r = PcapReader::new(f).map_err(fmt)?;
        if r.header().datalink != DataLink::ETHERNET {
            return Err(CaptureError::LinkType {
                path: path.to_path_buf(),
                linktype: format!("{:?}", r.header().datalink),
            });
        }
        while let Some(p) = r.next_packet() {
            let p = p.map_err(fmt)?;
            out.push(Frame { ts: p.timestamp, data: p.data.into_owned() });
        }
    }
    Ok(out)
}

/// Writes Ethernet frames to a little-endian, nanosecond pcap file.
pub struct CaptureWriter {
    w: PcapWriter<BufWriter<File>>,
    path: PathBuf,
}

impl CaptureWriter {
    pub fn create(path: &Path) -> Result<CaptureWriter, CaptureError> {
        let f = File::create(path).map_err(|err| CaptureError::Io { path: path.to_path_buf(), err })?;
        let header = PcapHeader {
            snaplen: 65535,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::NanoSecond,
            endianness: Endianness::Little,
            ..Default::default()
        };
        let w = PcapWriter::with_header(BufWriter::new(f), header)
            .map_err(|e| CaptureError::Format { path: path.to_path_buf(), err: e.to_string() })?;
        Ok(CaptureWriter { w, path: path.to_path_buf() })
    }

    pub fn write(&mut self, ts: Duration, data: &[u8]) -> Result<(), CaptureError> {
        self.w
            .write_packet(&PcapPacket::new(ts, data.len() as u32, data))
            .map(|_| ())
            .map_err(|e| CaptureError::Format { path: self.path.clone(), err: e.to_string() })
    }

    /// Flushes buffered frames to the file.
    pub fn finish(self) -> Result<(), CaptureError> {
        use std::io::Write;
        let path = self.path;
        self.w.into_writer().flush().map_err(|err| CaptureError::Io { path, err })
    }
}

/// A frame's length rounded up to whole 64-byte lines, as packed.
fn padded_len(len: usize) -> usize {
    len.div_ceil(64) * 64
}

/// Frames packed back to back (64-byte aligned) for fast replay.
#[derive(Default, Clone)]
pub struct Frames {
    data: Vec<u8>,
    spans: Vec<(u32, u16)>,
}

impl Frames {
    /// Packs the frames that fit a buffer; returns them and how many did not.
    pub fn pack<'a>(frames: impl IntoIterator<Item = &'a [u8]> + Clone) -> (Frames, usize) {
        let mut f = Frames::default();
        // Sized first and advised for huge pages: the bench's pattern of a
        // million flows is 64 MiB, streamed through once per lap; with 4 KiB
        // pages every 64 frames began with a TLB miss.
        let total: usize =
            frames.clone().into_iter().filter(|fr| fr.len() <= MAX_FRAME).map(|fr| padded_len(fr.len())).sum();
        f.data.reserve_exact(total);
        advise_huge(f.data.spare_capacity_mut());
        let mut too_big = 0;
        for fr in frames {
            if fr.len() > MAX_FRAME || f.data.len() > u32::MAX as usize - 4096 {
                too_big += 1;
                continue;
            }
            let off = f.data.len();
            f.data.extend_from_slice(fr);
            f.data.resize(off + padded_len(fr.len()), 0);
            f.spans.push((off as u32, fr.len() as u16));
        }
        (f, too_big)
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    #[inline]
    pub fn get(&self, i: usize) -> &[u8] {
        let (o, l) = self.spans[i];
        &self.data[o as usize..o as usize + l as usize]
    }

    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Starts fetching frame `i`'s first line.
    #[inline]
    pub fn prefetch(&self, i: usize) {
        if let Some(&(o, _)) = self.spans.get(i) {
            let p = self.data[o as usize..].as_ptr();
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `p` points into `data`; prefetch has no side effects.
            unsafe {
                core::arch::x86_64::_mm_prefetch(p.cast::<i8>(), core::arch::x86_64::_MM_HINT_T0)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = p;
        }
    }

    /// Frame `i` with its padding up to the next multiple of 64 bytes.
    #[inline]
    pub fn get_padded(&self, i: usize) -> (&[u8], usize) {
        let (o, l) = self.spans[i];
        let o = o as usize;
        (&self.data[o..o + padded_len(l as usize)], l as usize)
    }
}

/// Replays packed frames, copying each into a pool buffer (the frames are
/// rewritten downstream, so every pass needs a fresh copy, as with net_pcap).
pub struct ReplayRx {
    frames: Frames,
    /// The first pass's order (indices into `frames`), when it is not the
    /// frames' own: see `ReplayRx::opening_in`.
    opening: Vec<u32>,
    pos: usize,
    looping: bool,
    /// Completed passes over the frames.
    pub laps: u64,
    /// Receive attempts that found the pool empty.
    pub no_buffer: u64,
    counters: Arc<QueueCounters>,
}

impl ReplayRx {
    pub fn new(frames: Frames, looping: bool) -> ReplayRx {
        ReplayRx { frames, opening: Vec::new(), pos: 0, looping, laps: 0, no_buffer: 0, counters: Arc::default() }
    }

    /// Replays the first pass in `order` (a permutation of the frames'
    /// indices), every later one in the frames' own order. A router's flows
    /// start in one order and their packets arrive later in another: a
    /// pattern whose sessions open in a scrambled order is then replayed
    /// meeting their records in no particular order, not in the order they
    /// were created (which a processor's prefetcher follows).
    pub fn opening_in(mut self, order: Vec<u32>) -> Result<ReplayRx, String> {
        let n = self.frames.len();
        let mut seen = vec![false; n];
        for &i in &order {
            match seen.get_mut(i as usize) {
                Some(s) if !*s => *s = true,
                _ => return Err(format!("the opening order is not a permutation of {n} frames (index {i})")),
            }
        }
        if order.len() != n {
            return Err(format!("the opening order has {} indices for {n} frames", order.len()));
        }
        self.opening = order;
        Ok(self)
    }

    /// Frames in one pass.
    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    /// True when a non-looping replay has delivered everything.
    pub fn done(&self) -> bool {
        !self.looping && self.pos >= self.frames.len()
    }

    /// Copies frame `i` into a fresh buffer at the end of `burst` (which has
    /// room); its length, or None when the pool is empty (counted).
    #[inline(always)]
    fn push_frame(&mut self, pool: &mut Pool, burst: &mut Burst, port: u16, i: usize) -> Option<usize> {
        let Some(mut p) = pool.alloc() else {
            self.no_buffer += 1;
            self.counters.add_dropped(1);
            return None;
        };
        let (padded, len) = self.frames.get_padded(i);
        p.fill_padded(padded, len);
        let _ = burst.push(p, port);
        Some(len)
    }

    /// A burst of the first pass in `opening`'s order. It ends at the end
    /// of the pass (the next burst starts the frames' own order).
    fn rx_opening(&mut self, pool: &mut Pool, burst: &mut Burst, port: u16) -> usize {
        let n = self.opening.len();
        let (mut got, mut bytes) = (0, 0);
        while burst.room() > 0 && self.pos < n {
            let Some(len) = self.push_frame(pool, burst, port, self.opening[self.pos] as usize) else { break };
            self.pos += 1;
            got += 1;
            bytes += len;
        }
        if got > 0 {
            self.counters.add(got as u64, bytes as u64);
        }
        if self.pos == n {
            self.laps = 1;
            // Not looping: done (`done` reads the position).
            self.pos = if self.looping { 0 } else { n };
        }
        // The next burst's frames, as in `rx_burst`.
        for k in self.pos..(self.pos + got).min(n) {
            self.frames.prefetch(if self.laps == 0 { self.opening[k] as usize } else { k });
        }
        got
    }
}

impl RxQueue for ReplayRx {
    #[inline]
    fn rx_burst(&mut self, pool: &mut Pool, burst: &mut Burst, port: u16) -> usize {
        if self.laps == 0 && !self.opening.is_empty() {
            return self.rx_opening(pool, burst, port);
        }
        let n = self.frames.len();
        let (mut got, mut bytes) = (0, 0);
        while burst.room() > 0 {
            if self.pos == n {
                if !self.looping || n == 0 {
                    break;
                }
                self.pos = 0;
                self.laps += 1;
            }
            let Some(len) = self.push_frame(pool, burst, port, self.pos) else { break };
            self.pos += 1;
            got += 1;
            bytes += len;
        }
        if got > 0 {
            self.counters.add(got as u64, bytes as u64);
        }
        // The next burst's frames, while this one is processed: a pattern
        // of a million flows is far larger than the cache.
        for i in 0..got {
            let j = self.pos + i;
            self.frames.prefetch(if j >= n { j - n } else { j });
        }
        got
    }

    fn counters(&self) -> &Arc<QueueCounters> {
        &self.counters
    }
}

/// Writes every transmitted frame to a capture, stamped with the wall clock.
/// A debugging and test port: file I/O is buffered but not free.
pub struct PcapTx {
    w: CaptureWriter,
    counters: Arc<QueueCounters>,
}

impl PcapTx {
    pub fn create(path: &Path) -> Result<PcapTx, CaptureError> {
        Ok(PcapTx { w: CaptureWriter::create(path)?, counters: Arc::default() })
    }

    pub fn finish(self) -> Result<(), CaptureError> {
        self.w.finish()
    }
}

impl TxQueue for PcapTx {
    fn tx_burst(&mut self, pool: &mut Pool, pkts: &mut Vec<Pkt>) -> usize {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let (mut n, mut bytes) = (0, 0);
        for p in pkts.drain(..) {
            if self.w.write(now, p.data()).is_ok() {
                n += 1;
                bytes += p.len();
            } else {
                self.counters.add_dropped(1);
            }
            p.release(pool);
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

    #[test]
    fn write_then_read_back_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pcap");
        let mut w = CaptureWriter::create(&path).unwrap();
        for i in 0..5u8 {
            w.write(Duration::from_nanos(1_000_000_123 + i as u64), &[i; 60]).unwrap();
        }
        w.finish().unwrap();
        let frames = read_capture(&path).unwrap();
        assert_eq!(frames.len(), 5);
        assert_eq!(frames[4].ts, Duration::from_nanos(1_000_000_127));
        assert_eq!(frames[2].data, vec![2; 60]);

        let (packed, too_big) = Frames::pack(frames.iter().map(|f| &f.data[..]).chain([&[0u8; 3000][..]]));
        assert_eq!((packed.len(), too_big), (5, 1));
        let mut rx = ReplayRx::new(packed.clone(), false);
        let mut pool = Pool::new(16);
        let mut b: Burst = Burst::new(4);
        assert_eq!(rx.rx_burst(&mut pool, &mut b, 1), 4);
        b.drain(|p, _| p.release(&mut pool));
        assert_eq!(rx.rx_burst(&mut pool, &mut b, 1), 1);
        assert!(rx.done());
        b.drain(|p, _| p.release(&mut pool));
        let mut looping = ReplayRx::new(packed, true);
        let mut b: Burst = Burst::new(12);
        assert_eq!(looping.rx_burst(&mut pool, &mut b, 1), 12);
        assert_eq!(looping.laps, 2);
        assert_eq!(b.pkt(11).data(), &[1; 60]);
    }

    /// The first pass follows the opening order, every later one the
    /// frames' own; bursts stop at the end of the opening pass.
    #[test]
    fn replay_opens_in_the_given_order_then_loops_in_storage_order() {
        let frames: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 60]).collect();
        let (packed, _) = Frames::pack(frames.iter().map(|f| &f[..]));
        let firsts = |b: &mut Burst, pool: &mut Pool| {
            let mut v = Vec::new();
            b.drain(|p, _| {
                v.push(p.data()[0]);
                p.release(pool);
            });
            v
        };
        let mut pool = Pool::new(16);
        let mut b: Burst = Burst::new(4);
        let mut rx = ReplayRx::new(packed.clone(), true).opening_in(vec![3, 0, 4, 2, 1]).unwrap();
        assert_eq!(rx.rx_burst(&mut pool, &mut b, 1), 4);
        assert_eq!(firsts(&mut b, &mut pool), [3, 0, 4, 2]);
        assert_eq!(rx.rx_burst(&mut pool, &mut b, 1), 1);
        assert_eq!((firsts(&mut b, &mut pool), rx.laps), (vec![1], 1));
        assert_eq!(rx.rx_burst(&mut pool, &mut b, 1), 4);
        assert_eq!(firsts(&mut b, &mut pool), [0, 1, 2, 3]);
        assert_eq!(rx.rx_burst(&mut pool, &mut b, 1), 4);
        assert_eq!(firsts(&mut b, &mut pool), [4, 0, 1, 2]);
        assert_eq!(rx.laps, 2);
        assert_eq!(rx.counters().read(), (13, 13 * 60, 0));

        // Not looping: one pass in the opening order, then done.
        let mut once = ReplayRx::new(packed.clone(), false).opening_in(vec![4, 3, 2, 1, 0]).unwrap();
        let mut got = Vec::new();
        while once.rx_burst(&mut pool, &mut b, 1) > 0 {
            got.extend(firsts(&mut b, &mut pool));
        }
        assert_eq!((got, once.done()), (vec![4, 3, 2, 1, 0], true));

        for bad in [vec![0, 1, 2, 3], vec![0, 1, 2, 3, 3], vec![0, 1, 2, 3, 5], vec![0, 1, 2, 3, 4, 0]] {
            assert!(ReplayRx::new(packed.clone(), true).opening_in(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rejects_non_captures_and_reads_pcapng() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pcap");
        std::fs::write(&bad, b"this is not a capture at all").unwrap();
        assert!(matches!(read_capture(&bad), Err(CaptureError::Format { .. })));
        assert!(matches!(read_capture(&dir.path().join("missing")), Err(CaptureError::Io { .. })));

        use pcap_file::pcapng::PcapNgWriter;
        use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
        use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
        let ng = dir.path().join("x.pcapng");
        let mut w = PcapNgWriter::new(File::create(&ng).unwrap()).unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::ETHERNET, 65535)).unwrap();
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_micros(1_500_000),
            original_len: 60,
            data: std::borrow::Cow::Owned(vec![7; 60]),
            options: vec![],
        };
        w.write_pcapng_block(epb).unwrap();
        drop(w);
        let frames = read_capture(&ng).unwrap();
        assert_eq!(frames, vec![Frame { ts: Duration::from_micros(1_500_000), data: vec![7; 60] }]);
    }
}
