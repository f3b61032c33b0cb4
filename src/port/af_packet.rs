//! Linux `AF_PACKET` ports: a plain kernel interface (a veth, a NIC the
//! kernel drives) as a data-plane port, no DPDK needed.
//!
//! - Receive: one socket per worker with a `TPACKET_V3` ring (blocks of
//!   frames the kernel fills and hands over whole), joined in one
//!   `PACKET_FANOUT_HASH` group when several workers share the interface,
//!   `PACKET_IGNORE_OUTGOING` so our own transmissions are not read back,
//!   promiscuous mode.
//! - Transmit: one socket per worker with a `TPACKET_V2` ring (per-frame
//!   status words), `PACKET_QDISC_BYPASS`, one `sendto` per burst to kick it.
//! - The frames are copied between the rings and the pool's buffers: the
//!   stages rewrite packets in place, which the kernel's ring does not allow
//!   to outlive a block.
//!
//! The kernel hands up what its own offloads left behind, so each frame is
//! repaired on receive: a VLAN tag the driver stripped is put back, and a
//! TCP/UDP checksum left for the hardware to fill (`TP_STATUS_CSUMNOTREADY`,
//! the usual case for traffic from a local socket over a veth) is computed.
//! GRO is switched off on the interface so the kernel never merges frames
//! into super-packets before the ring sees them.

use super::{Port, PortSpec, PortStats, QueueCounters, RxQueue, TxQueue};
use crate::packet::checksum::{fold, pseudo_v4, pseudo_v6, sum};
use crate::packet::{Burst, MAX_FRAME, Mac, PacketBuf, Pkt, Pool, port_mtu};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Receive ring: 64 blocks of 256 KiB (about 2,000 minimum-size frames each).
const RX_BLOCK_SIZE: u32 = 256 << 10;
const RX_BLOCK_NR: u32 = 64;
const RX_FRAME_SIZE: u32 = 2048;
/// A block that is not full is handed over after this many milliseconds.
const RX_RETIRE_MS: u32 = 1;
/// Transmit ring: 1,024 frames of 2 KiB.
const TX_FRAME_SIZE: u32 = 2048;
const TX_BLOCK_SIZE: u32 = 64 << 10;
const TX_BLOCK_NR: u32 = 32;
/// `tp_status` of a transmit frame the kernel rejected.
const TP_STATUS_WRONG_FORMAT: u32 = libc::TP_STATUS_WRONG_FORMAT;
const ETH_P_ALL: u16 = 0x0003;
/// `ETHTOOL_SGRO` (linux/ethtool.h).
const ETHTOOL_SGRO: u32 = 0x2c;

fn os_err(what: &str, ifname: &str) -> String {
    format!("{ifname}: {what}: {}", io::Error::last_os_error())
}

/// What the kernel says about an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfInfo {
    pub index: u32,
    pub mac: Mac,
    pub mtu: u16,
}

impl IfInfo {
    /// Gives `spec` the interface's MAC and MTU where it has none (zero).
    fn fill(&self, spec: &mut PortSpec) {
        if spec.mac == Mac::ZERO {
            spec.mac = self.mac;
        }
        if spec.mtu == 0 {
            spec.mtu = port_mtu(&spec.name, self.mtu, "its interface's");
        }
    }
}

fn ifreq(ifname: &str) -> Result<libc::ifreq, String> {
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    let b = ifname.as_bytes();
    if b.is_empty() || b.len() >= r.ifr_name.len() {
        return Err(format!("'{ifname}' is not a valid interface name"));
    }
    for (d, s) in r.ifr_name.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    Ok(r)
}

/// A datagram socket for interface ioctls.
fn ctl_socket(ifname: &str) -> Result<OwnedFd, String> {
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_err("socket", ifname));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Index, MAC and MTU of `ifname`.
pub fn if_info(ifname: &str) -> Result<IfInfo, String> {
    let name = CString::new(ifname).map_err(|_| format!("'{ifname}' is not a valid interface name"))?;
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(format!("{ifname}: no such interface"));
    }
    let s = ctl_socket(ifname)?;
    let mut r = ifreq(ifname)?;
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFHWADDR, &mut r) } < 0 {
        return Err(os_err("SIOCGIFHWADDR", ifname));
    }
    let sa = unsafe { r.ifr_ifru.ifru_hwaddr.sa_data };
    let mac = Mac([sa[0] as u8, sa[1] as u8, sa[2] as u8, sa[3] as u8, sa[4] as u8, sa[5] as u8]);
    let mut r = ifreq(ifname)?;
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFMTU, &mut r) } < 0 {
        return Err(os_err("SIOCGIFMTU", ifname));
    }
    let mtu = unsafe { r.ifr_ifru.ifru_mtu }.clamp(68, u16::MAX as i32) as u16;
    Ok(IfInfo { index, mac, mtu })
}

fn if_flags(ifname: &str) -> Result<i32, String> {
    let s = ctl_socket(ifname)?;
    let mut r = ifreq(ifname)?;
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut r) } < 0 {
        return Err(os_err("SIOCGIFFLAGS", ifname));
    }
    Ok(unsafe { r.ifr_ifru.ifru_flags } as i32)
}

/// Sets the interface administratively up (a data-plane port must be).
fn set_up(ifname: &str) -> Result<(), String> {
    let flags = if_flags(ifname)?;
    if flags & libc::IFF_UP != 0 {
        return Ok(());
    }
    let s = ctl_socket(ifname)?;
    let mut r = ifreq(ifname)?;
    r.ifr_ifru.ifru_flags = (flags | libc::IFF_UP) as libc::c_short;
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut r) } < 0 {
        return Err(os_err("SIOCSIFFLAGS", ifname));
    }
    Ok(())
}

/// Turns GRO off: merged super-frames would reach the ring unsplit.
fn gro_off(ifname: &str) -> Result<(), String> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut v = EthtoolValue { cmd: ETHTOOL_SGRO, data: 0 };
    let s = ctl_socket(ifname)?;
    let mut r = ifreq(ifname)?;
    r.ifr_ifru.ifru_data = (&mut v as *mut EthtoolValue).cast();
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCETHTOOL, &mut r) } < 0 {
        return Err(os_err("ETHTOOL_SGRO", ifname));
    }
    Ok(())
}

/// Link state: administratively up and carrier present.
pub fn link_up(ifname: &str) -> bool {
    if_flags(ifname).is_ok_and(|f| f & libc::IFF_UP != 0 && f & libc::IFF_RUNNING != 0)
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, v: &T, what: &str, ifname: &str) -> Result<(), String> {
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 { Err(os_err(what, ifname)) } else { Ok(()) }
}

/// A packet socket using ring version `version`.
fn packet_socket(ifname: &str, version: libc::c_int) -> Result<OwnedFd, String> {
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, ETH_P_ALL.to_be() as i32) };
    if fd < 0 {
        return Err(os_err("AF_PACKET socket (root or CAP_NET_RAW is needed)", ifname));
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, &version, "PACKET_VERSION", ifname)?;
    Ok(fd)
}

fn bind(fd: &OwnedFd, ifname: &str, index: u32) -> Result<(), String> {
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = index as i32;
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 { Err(os_err("bind", ifname)) } else { Ok(()) }
}

/// A shared mapping of a socket's ring, unmapped on drop.
struct Ring {
    base: *mut u8,
    len: usize,
}

// The ring is only touched by the worker owning the queue.
unsafe impl Send for Ring {}

impl Ring {
    fn map(fd: &OwnedFd, len: usize, ifname: &str) -> Result<Ring, String> {
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_LOCKED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        let p = if p == libc::MAP_FAILED {
            // MAP_LOCKED fails under a low RLIMIT_MEMLOCK: map unlocked.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_POPULATE,
                    fd.as_raw_fd(),
                    0,
                )
            }
        } else {
            p
        };
        if p == libc::MAP_FAILED {
            return Err(os_err("mmap of the packet ring", ifname));
        }
        Ok(Ring { base: p.cast(), len })
    }

    /// The status word at byte `off` (shared with the kernel).
    #[inline]
    fn status(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off + 4 <= self.len);
        unsafe { AtomicU32::from_ptr(self.base.add(off).cast()) }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// One worker's receive queue on an interface.
pub struct AfPacketRx {
    fd: OwnedFd,
    ring: Ring,
    /// Block being read, packets left in it, offset of the next one.
    block: u32,
    left: u32,
    next: usize,
    counters: Arc<QueueCounters>,
    /// Frames the ring held only in part (larger than a frame slot).
    pub truncated: u64,
    /// Checksums completed for the hardware that was not there.
    pub checksums_completed: u64,
}

/// One worker's transmit queue on an interface.
pub struct AfPacketTx {
    fd: OwnedFd,
    ring: Ring,
    head: u32,
    counters: Arc<QueueCounters>,
}

/// An interface as a port: what the API reports, and the queues' counters.
pub struct AfPacketPort {
    spec: PortSpec,
    ifname: String,
    rx: Vec<Arc<QueueCounters>>,
    tx: Vec<Arc<QueueCounters>>,
    /// Duplicates of the receive sockets, to read the kernel's ring drops
    /// (PACKET_STATISTICS, which resets on read: summed into `ring_drops`).
    stat_fds: Vec<OwnedFd>,
    ring_drops: std::sync::atomic::AtomicU64,
}

impl AfPacketPort {
    /// Frames the kernel could not put in a receive ring (it was full).
    pub fn ring_drops(&self) -> u64 {
        for fd in &self.stat_fds {
            let mut st: libc::tpacket_stats_v3 = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
            let r = unsafe {
                libc::getsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_STATISTICS,
                    (&mut st as *mut libc::tpacket_stats_v3).cast(),
                    &mut len,
                )
            };
            if r == 0 {
                self.ring_drops.fetch_add(st.tp_drops as u64, Ordering::Relaxed);
            }
        }
        self.ring_drops.load(Ordering::Relaxed)
    }
}

impl Port for AfPacketPort {
    fn spec(&self) -> &PortSpec {
        &self.spec
    }
    fn link_up(&self) -> bool {
        link_up(&self.ifname)
    }
    fn stats(&self) -> PortStats {
        let mut s = PortStats::of_queues(&self.rx, &self.tx);
        s.rx_dropped += self.ring_drops();
        s
    }
}

/// A port the kernel keeps (the management port): the appliance reports
/// it and binds the API to its address, but no worker reads or writes it.
pub struct KernelPort {
    spec: PortSpec,
    ifname: String,
}

impl KernelPort {
    /// `spec.mac` and `spec.mtu` are taken from the interface when zero.
    pub fn open(ifname: &str, mut spec: PortSpec) -> Result<KernelPort, String> {
        if_info(ifname)?.fill(&mut spec);
        Ok(KernelPort { spec, ifname: ifname.to_string() })
    }
}

impl Port for KernelPort {
    fn spec(&self) -> &PortSpec {
        &self.spec
    }
    fn link_up(&self) -> bool {
        link_up(&self.ifname)
    }
    fn stats(&self) -> PortStats {
        PortStats::default()
    }
}

/// Opens `ifname` for `queues` workers: a receive and a transmit queue each.
/// `spec.mac` and `spec.mtu` are taken from the interface when zero.
/// `fanout_id` names the fanout group (unique per interface in a process).
pub fn open(
    ifname: &str,
    mut spec: PortSpec,
    queues: usize,
    fanout_id: u16,
) -> Result<(AfPacketPort, Vec<AfPacketRx>, Vec<AfPacketTx>), String> {
    let info = if_info(ifname)?;
    info.fill(&mut spec);
    set_up(ifname)?;
    if let Err(e) = gro_off(ifname) {
        log::warn!("{e}: merged frames larger than a buffer will be dropped");
    }
    let (mut rxs, mut txs) = (Vec::new(), Vec::new());
    for _ in 0..queues.max(1) {
        rxs.push(open_rx(ifname, info.index, (queues > 1).then_some(fanout_id))?);
        txs.push(open_tx(ifname, info.index)?);
    }
    let stat_fds = rxs
        .iter()
        .map(|q| q.fd.try_clone().map_err(|e| format!("{ifname}: dup of a packet socket: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let port = AfPacketPort {
        spec,
        ifname: ifname.to_string(),
        rx: rxs.iter().map(|q| q.counters.clone()).collect(),
        tx: txs.iter().map(|q| q.counters.clone()).collect(),
        stat_fds,
        ring_drops: Default::default(),
    };
    Ok((port, rxs, txs))
}

fn open_rx(ifname: &str, index: u32, fanout: Option<u16>) -> Result<AfPacketRx, String> {
    let fd = packet_socket(ifname, libc::tpacket_versions::TPACKET_V3 as libc::c_int)?;
    let req = libc::tpacket_req3 {
        tp_block_size: RX_BLOCK_SIZE,
        tp_block_nr: RX_BLOCK_NR,
        tp_frame_size: RX_FRAME_SIZE,
        tp_frame_nr: RX_BLOCK_SIZE / RX_FRAME_SIZE * RX_BLOCK_NR,
        tp_retire_blk_tov: RX_RETIRE_MS,
        tp_sizeof_priv: 0,
        tp_feature_req_word: 0,
    };
    setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req, "PACKET_RX_RING", ifname)?;
    let one: libc::c_int = 1;
    if let Err(e) =
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one, "PACKET_IGNORE_OUTGOING", ifname)
    {
        return Err(format!("{e} (Linux 4.20 or later is needed)"));
    }
    let ring = Ring::map(&fd, (RX_BLOCK_SIZE * RX_BLOCK_NR) as usize, ifname)?;
    bind(&fd, ifname, index)?;
    let mreq = libc::packet_mreq {
        mr_ifindex: index as i32,
        mr_type: libc::PACKET_MR_PROMISC as u16,
        mr_alen: 0,
        mr_address: [0; 8],
    };
    setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq, "PACKET_ADD_MEMBERSHIP", ifname)?;
    if let Some(id) = fanout {
        let arg: u32 = id as u32 | (libc::PACKET_FANOUT_HASH << 16);
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_FANOUT, &arg, "PACKET_FANOUT", ifname)?;
    }
    Ok(AfPacketRx {
        fd,
        ring,
        block: 0,
        left: 0,
        next: 0,
        counters: Arc::new(QueueCounters::default()),
        truncated: 0,
        checksums_completed: 0,
    })
}

fn open_tx(ifname: &str, index: u32) -> Result<AfPacketTx, String> {
    let fd = packet_socket(ifname, libc::tpacket_versions::TPACKET_V2 as libc::c_int)?;
    let one: libc::c_int = 1;
    // Without the qdisc the driver's queue is the only one; best effort.
    let _ = setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one, "PACKET_QDISC_BYPASS", ifname);
    let req = libc::tpacket_req {
        tp_block_size: TX_BLOCK_SIZE,
        tp_block_nr: TX_BLOCK_NR,
        tp_frame_size: TX_FRAME_SIZE,
        tp_frame_nr: TX_BLOCK_SIZE / TX_FRAME_SIZE * TX_BLOCK_NR,
    };
    setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_TX_RING, &req, "PACKET_TX_RING", ifname)?;
    let ring = Ring::map(&fd, (TX_BLOCK_SIZE * TX_BLOCK_NR) as usize, ifname)?;
    bind(&fd, ifname, index)?;
    Ok(AfPacketTx { fd, ring, head: 0, counters: Arc::new(QueueCounters::default()) })
}

impl AfPacketRx {
    #[inline]
    fn block_off(&self) -> usize {
        (self.block * RX_BLOCK_SIZE) as usize
    }

    /// Offset of the block header's `block_status` word.
    #[inline]
    fn block_status(&self) -> &AtomicU32 {
        let hdr = std::mem::offset_of!(libc::tpacket_block_desc, hdr);
        self.ring.status(self.block_off() + hdr)
    }

    /// Hands the current block back to the kernel and moves to the next.
    #[inline]
    fn release_block(&mut self) {
        self.block_status().store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.block = (self.block + 1) % RX_BLOCK_NR;
    }

    /// Opens the next block if the kernel has handed it over.
    #[inline]
    fn open_block(&mut self) -> bool {
        if self.block_status().load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
            return false;
        }
        let d = unsafe { &*(self.ring.base.add(self.block_off()) as *const libc::tpacket_block_desc) };
        let h = unsafe { &d.hdr.bh1 };
        if h.num_pkts == 0 {
            self.release_block();
            return false;
        }
        self.left = h.num_pkts;
        self.next = self.block_off() + h.offset_to_first_pkt as usize;
        true
    }
}

impl RxQueue for AfPacketRx {
    fn rx_burst(&mut self, pool: &mut Pool, burst: &mut Burst, port: u16) -> usize {
        let (mut got, mut bytes) = (0usize, 0usize);
        while burst.room() > 0 {
            if self.left == 0 && !self.open_block() {
                break;
            }
            let Some(mut p) = pool.alloc() else {
                // Leave the frame in the ring: the kernel counts what it loses.
                break;
            };
            let h = unsafe { &*(self.ring.base.add(self.next) as *const libc::tpacket3_hdr) };
            let data = unsafe {
                std::slice::from_raw_parts(self.ring.base.add(self.next + h.tp_mac as usize), h.tp_snaplen as usize)
            };
            let status = h.tp_status;
            let vlan = (status & libc::TP_STATUS_VLAN_VALID != 0).then(|| {
                let tpid = if status & libc::TP_STATUS_VLAN_TPID_VALID != 0 { h.hv1.tp_vlan_tpid } else { 0x8100 };
                (tpid, h.hv1.tp_vlan_tci as u16)
            });
            let whole = h.tp_snaplen == h.tp_len;
            let next_off = h.tp_next_offset as usize;
            let ok = whole && copy_frame(&mut p, data, vlan);
            self.next += next_off;
            self.left -= 1;
            if self.left == 0 {
                self.release_block();
            }
            if !ok {
                self.truncated += 1;
                self.counters.add_dropped(1);
                p.release(pool);
                continue;
            }
            if status & libc::TP_STATUS_CSUMNOTREADY != 0 && complete_l4_checksum(p.data_mut()) {
                self.checksums_completed += 1;
            }
            bytes += p.len();
            got += 1;
            let _ = burst.push(p, port);
        }
        if got > 0 {
            self.counters.add(got as u64, bytes as u64);
        }
        got
    }

    fn counters(&self) -> &Arc<QueueCounters> {
        &self.counters
    }
}

/// Copies a received frame into `p`, putting back a stripped VLAN tag.
#[inline]
fn copy_frame(p: &mut Pkt, data: &[u8], vlan: Option<(u16, u16)>) -> bool {
    match vlan {
        None => p.fill(data),
        Some((tpid, tci)) => {
            if data.len() < 12 || data.len() + 4 > MAX_FRAME {
                return false;
            }
            let room = p.room_mut();
            room[..12].copy_from_slice(&data[..12]);
            room[12..14].copy_from_slice(&tpid.to_be_bytes());
            room[14..16].copy_from_slice(&tci.to_be_bytes());
            room[16..data.len() + 4].copy_from_slice(&data[12..]);
            p.set_received(data.len() + 4);
            true
        }
    }
}

/// Fills in the TCP or UDP checksum of a frame whose sender left it to the
/// hardware (Ethernet, optional 802.1Q tags, IPv4 or IPv6 without extension
/// headers, not a fragment). True when it wrote one.
pub fn complete_l4_checksum(f: &mut [u8]) -> bool {
    let mut l3 = 12;
    let mut et;
    loop {
        if f.len() < l3 + 2 {
            return false;
        }
        et = u16::from_be_bytes([f[l3], f[l3 + 1]]);
        if et == 0x8100 || et == 0x88a8 {
            l3 += 4;
            continue;
        }
        l3 += 2;
        break;
    }
    let (l4, proto, pseudo, end) = match et {
        0x0800 => {
            if f.len() < l3 + 20 {
                return false;
            }
            let ihl = (f[l3] & 0x0f) as usize * 4;
            let total = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) as usize;
            let frag = u16::from_be_bytes([f[l3 + 6], f[l3 + 7]]) & 0x3fff;
            if ihl < 20 || total < ihl || l3 + total > f.len() || frag != 0 {
                return false;
            }
            let src = u32::from_be_bytes(f[l3 + 12..l3 + 16].try_into().unwrap_or_default());
            let dst = u32::from_be_bytes(f[l3 + 16..l3 + 20].try_into().unwrap_or_default());
            let proto = f[l3 + 9];
            (l3 + ihl, proto, pseudo_v4(src, dst, proto, (total - ihl) as u16), l3 + total)
        }
        0x86dd => {
            if f.len() < l3 + 40 {
                return false;
            }
            let plen = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) as usize;
            if l3 + 40 + plen > f.len() {
                return false;
            }
            let src = u128::from_be_bytes(f[l3 + 8..l3 + 24].try_into().unwrap_or_default());
            let dst = u128::from_be_bytes(f[l3 + 24..l3 + 40].try_into().unwrap_or_default());
            let nh = f[l3 + 6];
            (l3 + 40, nh, pseudo_v6(src, dst, nh, plen as u32), l3 + 40 + plen)
        }
        _ => return false,
    };
    let at = match proto {
        6 if end >= l4 + 20 => l4 + 16,
        17 if end >= l4 + 8 => l4 + 6,
        _ => return false,
    };
    f[at] = 0;
    f[at + 1] = 0;
    let mut c = !fold(pseudo + sum(&f[l4..end]));
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

impl AfPacketTx {
    const FRAMES: u32 = TX_BLOCK_SIZE / TX_FRAME_SIZE * TX_BLOCK_NR;
    /// Where the frame starts inside a slot (no PACKET_TX_HAS_OFF).
    const DATA_OFF: usize = libc::TPACKET2_HDRLEN - std::mem::size_of::<libc::sockaddr_ll>();

    #[inline]
    fn slot(&self, i: u32) -> usize {
        // Frames never straddle blocks: the block size is a multiple.
        (i * TX_FRAME_SIZE) as usize
    }
}

impl TxQueue for AfPacketTx {
    fn tx_burst(&mut self, pool: &mut Pool, pkts: &mut Vec<Pkt>) -> usize {
        let mut queued = 0;
        let mut bytes = 0;
        let mut taken = 0;
        for p in pkts.iter() {
            let off = self.slot(self.head);
            let st = self.ring.status(off);
            let s = st.load(Ordering::Acquire);
            if s == TP_STATUS_WRONG_FORMAT {
                // The kernel refused the frame last time round: count it, reuse the slot.
                self.counters.add_dropped(1);
            } else if s != libc::TP_STATUS_AVAILABLE {
                break;
            }
            let len = p.len().min(TX_FRAME_SIZE as usize - Self::DATA_OFF);
            unsafe {
                std::ptr::copy_nonoverlapping(p.data().as_ptr(), self.ring.base.add(off + Self::DATA_OFF), len);
                let h = self.ring.base.add(off) as *mut libc::tpacket2_hdr;
                (*h).tp_len = len as u32;
                (*h).tp_snaplen = len as u32;
            }
            st.store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
            self.head = (self.head + 1) % Self::FRAMES;
            queued += 1;
            bytes += len;
            taken += 1;
        }
        for p in pkts.drain(..taken) {
            p.release(pool);
        }
        if queued > 0 {
            let r = unsafe {
                libc::sendto(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0)
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                // ENOBUFS/EAGAIN: the frames stay queued and leave with the next kick.
                if !matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ENOBUFS)) {
                    log::debug!("af_packet sendto: {e}");
                }
            }
            self.counters.add(queued as u64, bytes as u64);
        }
        queued
    }

    fn counters(&self) -> &Arc<QueueCounters> {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn frame_udp(payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1234, 53);
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    #[test]
    fn completes_a_udp_checksum_like_etherparse() {
        let good = frame_udp(b"hello");
        let mut partial = good.clone();
        // What a sender with checksum offload leaves: the pseudo-header sum.
        partial[40] = 0x12;
        partial[41] = 0x34;
        assert!(complete_l4_checksum(&mut partial));
        assert_eq!(partial, good);
    }

    #[test]
    fn completes_a_tcp_checksum_over_ipv6_and_a_vlan_tag() {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .single_vlan(7.try_into().unwrap())
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(40000, 80, 1, 4096);
        let mut good = Vec::new();
        b.write(&mut good, b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut partial = good.clone();
        let at = 18 + 40 + 16;
        partial[at] = 0;
        partial[at + 1] = 0;
        assert!(complete_l4_checksum(&mut partial));
        assert_eq!(partial, good);
        // ICMP, fragments and cut frames are left alone.
        let mut cut = good[..30].to_vec();
        assert!(!complete_l4_checksum(&mut cut));
    }

    #[test]
    fn a_stripped_vlan_tag_is_put_back() {
        let f = frame_udp(b"x");
        let mut p = Pkt::new();
        assert!(copy_frame(&mut p, &f, Some((0x8100, 42))));
        assert_eq!(&p.data()[12..16], &[0x81, 0x00, 0, 42]);
        assert_eq!(&p.data()[16..], &f[12..]);
    }

    #[test]
    fn unknown_interfaces_are_reported_by_name() {
        let e = if_info("nosuchif0").unwrap_err();
        assert!(e.contains("nosuchif0"), "{e}");
        assert!(if_info("").is_err());
    }
}
