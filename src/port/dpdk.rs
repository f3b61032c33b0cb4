//! DPDK ports (cargo feature `dpdk`): poll-mode drivers for real NICs, SR-IOV
//! VFs and DPDK's virtual devices (`net_pcap`, `net_af_packet`, `net_memif`,
//! `net_tap`, `net_null`, ...). The only user of the `ffi` crate: every
//! `unsafe` call into DPDK is in this file.
//!
//! - The EAL is started once per process ([`init`]) from the runtime file's
//!   `[dpdk]` arguments; [`shutdown`] stops and closes the ports and releases
//!   the EAL's memory.
//! - One mbuf pool per NUMA socket that has a port; one RX and one TX queue
//!   per worker (RSS spreads flows over the RX queues where the device can;
//!   otherwise the first worker receives and the workers' handoff rings
//!   spread the flows in software).
//! - [`Mbuf`] owns one `rte_mbuf`: the stages read and rewrite the frame in
//!   place, and the mbuf is either transmitted (the device then owns it) or
//!   freed when dropped, exactly once. No packet is copied on the forwarding
//!   path; only packets for the host stack are copied into its buffers.

use super::{Port, PortSpec, PortStats, QueueCounters, RxQueue, TxQueue};
use crate::packet::{MAX_BURST, MAX_FRAME, Mac, PacketBuf, Pkt, Pool, WorkerBuf};
use astara_ffi as ffi;
use std::ffi::{CStr, CString, c_char};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};

/// DPDK's environment, from the runtime file's `[dpdk]` table.
#[derive(Debug, Clone)]
pub struct DpdkEnv {
    pub eal_args: Vec<String>,
    pub mbufs: u32,
    pub mbuf_cache: u32,
    pub rx_desc: u16,
    pub tx_desc: u16,
    /// Request IPv4 header checksum verification from devices that offer
    /// it (see `Mbuf::ipv4_checksum_verified`).
    pub rx_checksum_offload: bool,
}

/// Host-stack buffers each worker keeps to copy punted packets into.
const HOST_STOCK: usize = 256;
/// Room for the frame in each mbuf, after DPDK's 128-byte headroom.
const MBUF_DATA_ROOM: u16 = 2048 + ffi::RTE_PKTMBUF_HEADROOM as u16;

static INIT_CALLED: AtomicBool = AtomicBool::new(false);
/// Set by `shutdown`: ports report zero counters afterwards.
static CLOSED: AtomicBool = AtomicBool::new(false);
/// The pool workers allocate from (the first port's socket).
static DEFAULT_POOL: AtomicPtr<ffi::rte_mempool> = AtomicPtr::new(std::ptr::null_mut());

/// What `init` set up, for `open` and `shutdown`.
struct Eal {
    env: DpdkEnv,
    /// (socket, pool) for every socket with a port.
    pools: Vec<(i32, usize)>,
    /// Started ports, stopped and closed by `shutdown`.
    ports: Vec<u16>,
}

static EAL: Mutex<Option<Eal>> = Mutex::new(None);

fn rte_error() -> String {
    // SAFETY: rte_errno is readable from any thread; rte_strerror returns a
    // static or thread-local string.
    unsafe {
        let e = ffi::adp_errno();
        format!("{} (errno {e})", CStr::from_ptr(ffi::rte_strerror(e)).to_string_lossy())
    }
}

fn errno_text(rc: i32) -> String {
    // SAFETY: as in rte_error.
    unsafe { format!("{} ({rc})", CStr::from_ptr(ffi::rte_strerror(-rc)).to_string_lossy()) }
}

/// The EAL command line: `astara-dp` then the configured arguments, with
/// the defaults `DpdkEnv::eal_args` documents added.
pub fn eal_argv(args: &[String], first_cpu: usize) -> Vec<String> {
    let has = |o: &str| args.iter().any(|a| a == o || a.starts_with(&format!("{o}=")));
    let mut v = vec!["astara-dp".to_string()];
    v.extend(args.iter().cloned());
    // (`-l 0`, `-l0`, `-c 0x1`, `--lcores=...`)
    if !has("-c") && !has("--lcores") && !args.iter().any(|a| a.starts_with("-l")) {
        v.push("-l".into());
        v.push(first_cpu.to_string());
    }
    if has("--no-huge") {
        // Without hugepages there is no shared memory to describe: no config
        // file either, so tests can run several EALs side by side.
        if !has("--no-shconf") && !has("--in-memory") {
            v.push("--no-shconf".into());
        }
    } else if !has("--in-memory") && !has("--file-prefix") && !has("--huge-unlink") {
        v.push("--in-memory".into());
    }
    v
}

fn affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0).then_some(set)
    }
}

/// Starts the EAL. Callable once per process (DPDK's rule): a second call,
/// or a call after a failed one, is refused with an error.
pub fn init(env: &DpdkEnv) -> Result<(), String> {
    if INIT_CALLED.swap(true, Ordering::SeqCst) {
        return Err("the DPDK EAL can be initialised only once per process".into());
    }
    let saved = affinity();
    let first_cpu = saved
        .as_ref()
        .and_then(|s| (0..libc::CPU_SETSIZE as usize).find(|&c| unsafe { libc::CPU_ISSET(c, s) }))
        .unwrap_or(0);
    let argv = eal_argv(&env.eal_args, first_cpu);
    log::info!("DPDK {}: EAL {}", version(), argv[1..].join(" "));
    let cargs: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_str()).map_err(|_| format!("dpdk.eal_args: '{a}' contains a NUL byte")))
        .collect::<Result<_, _>>()?;
    let mut ptrs: Vec<*mut c_char> = cargs.iter().map(|c| c.as_ptr() as *mut c_char).collect();
    ptrs.push(std::ptr::null_mut());
    // SAFETY: argv points to NUL-terminated strings that outlive the call
    // (the EAL keeps no pointer to them after parsing).
    let rc = unsafe { ffi::rte_eal_init(argv.len() as i32, ptrs.as_mut_ptr()) };
    // The EAL pins the calling thread to its main lcore: the control
    // thread keeps the CPUs it had.
    if let Some(set) = saved {
        // SAFETY: restores the mask read above for this thread.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    }
    if rc < 0 {
        return Err(format!(
            "DPDK EAL initialisation failed: {} with arguments [{}] (see DPDK's message above)",
            rte_error(),
            argv[1..].join(" ")
        ));
    }
    *EAL.lock().unwrap() = Some(Eal { env: env.clone(), pools: Vec::new(), ports: Vec::new() });
    Ok(())
}

/// DPDK's version string ("DPDK 22.11.11").
pub fn version() -> String {
    // SAFETY: returns a pointer to a static string.
    unsafe { CStr::from_ptr(ffi::rte_version()).to_string_lossy().into_owned() }
}

fn device_names() -> Vec<String> {
    let mut names = Vec::new();
    for id in 0..ffi::RTE_MAX_ETHPORTS as u16 {
        let mut buf = [0 as c_char; 64];
        // SAFETY: the buffer has RTE_ETH_NAME_MAX_LEN (64) bytes.
        if unsafe { ffi::rte_eth_dev_get_name_by_port(id, buf.as_mut_ptr()) } == 0 {
            // SAFETY: DPDK wrote a NUL-terminated name.
            names.push(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned());
        }
    }
    names
}

fn pool_for(eal: &mut Eal, socket: i32) -> Result<*mut ffi::rte_mempool, String> {
    let socket = socket.max(0);
    if let Some(&(_, p)) = eal.pools.iter().find(|(s, _)| *s == socket) {
        return Ok(p as *mut ffi::rte_mempool);
    }
    let name = CString::new(format!("adp_mbuf_s{socket}")).unwrap();
    // SAFETY: the EAL is initialised; the name is NUL-terminated.
    let mp = unsafe {
        ffi::rte_pktmbuf_pool_create(name.as_ptr(), eal.env.mbufs, eal.env.mbuf_cache, 0, MBUF_DATA_ROOM, socket)
    };
    if mp.is_null() {
        return Err(format!(
            "cannot create a pool of {} mbufs on socket {socket}: {} (reserve more hugepages, or lower dpdk.mbufs)",
            eal.env.mbufs,
            rte_error()
        ));
    }
    eal.pools.push((socket, mp as usize));
    let _ = DEFAULT_POOL.compare_exchange(std::ptr::null_mut(), mp, Ordering::AcqRel, Ordering::Acquire);
    Ok(mp)
}

/// Opens and starts `device` with one TX queue per worker and up to one RX
/// queue per worker. Returns the port object, each worker's RX queue (None
/// for workers the device has no queue for) and TX queue.
#[allow(clippy::type_complexity)]
pub fn open(
    device: &str,
    mut spec: PortSpec,
    workers: usize,
) -> Result<(DpdkPort, Vec<Option<DpdkRx>>, Vec<DpdkTx>), String> {
    let mut guard = EAL.lock().unwrap();
    let eal = guard.as_mut().ok_or("the DPDK EAL is not initialised")?;
    let cname = CString::new(device).map_err(|_| format!("bad device name '{device}'"))?;
    let mut id = 0u16;
    // SAFETY: valid name and out-pointer.
    if unsafe { ffi::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) } != 0 {
        let found = device_names();
        return Err(format!(
            "no DPDK device named {device} (found: {}); add it with dpdk.eal_args (-a PCI or --vdev)",
            if found.is_empty() { "none".to_string() } else { found.join(", ") }
        ));
    }
    if eal.ports.contains(&id) {
        return Err(format!("DPDK device {device} is already in use by another port"));
    }
    // SAFETY: rte_eth_dev_info is plain data filled by DPDK.
    let mut info: ffi::rte_eth_dev_info = unsafe { std::mem::zeroed() };
    let rc = unsafe { ffi::rte_eth_dev_info_get(id, &mut info) };
    if rc != 0 {
        return Err(format!("{device}: cannot read device info: {}", errno_text(rc)));
    }
    if (info.max_tx_queues as usize) < workers {
        return Err(format!(
            "{device}: has {} TX queues and each of the {workers} workers needs its own",
            info.max_tx_queues
        ));
    }
    let mut conf = ffi::rte_eth_conf::default();
    let mut nrx = workers.min(info.max_rx_queues as usize).max(1);
    if nrx > 1 {
        // SAFETY: a constant.
        let hf = unsafe { ffi::adp_rss_ip_tcp_udp() } & info.flow_type_rss_offloads;
        if hf == 0 {
            log::info!("{device}: no RSS; the first worker receives and hands flows over in software");
            nrx = 1;
        } else {
            conf.rxmode.mq_mode = ffi::rte_eth_rx_mq_mode_RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = hf;
        }
    }
    // The IP MTU the pipeline enforces; the device must accept frames of it.
    if spec.mtu < info.min_mtu || (info.max_mtu != 0 && spec.mtu > info.max_mtu) {
        return Err(format!("{device}: mtu {} is outside the device's {}..={}", spec.mtu, info.min_mtu, info.max_mtu));
    }
    conf.rxmode.mtu = spec.mtu as u32;
    // SAFETY: a constant.
    let ipv4_cksum = unsafe { ffi::adp_rx_offload_ipv4_cksum() };
    if eal.env.rx_checksum_offload && info.rx_offload_capa & ipv4_cksum != 0 {
        conf.rxmode.offloads |= ipv4_cksum;
        log::info!("{device}: received IPv4 header checksums are verified by the device");
    } else {
        log::info!("{device}: received IPv4 header checksums are verified in software");
    }
    // SAFETY: conf is a valid configuration for this port.
    let rc = unsafe { ffi::rte_eth_dev_configure(id, nrx as u16, workers as u16, &conf) };
    if rc != 0 {
        return Err(format!("{device}: configure ({nrx} RX, {workers} TX queues): {}", errno_text(rc)));
    }
    let (mut nb_rxd, mut nb_txd) = (eal.env.rx_desc, eal.env.tx_desc);
    // SAFETY: valid out-pointers.
    unsafe { ffi::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut nb_rxd, &mut nb_txd) };
    // SAFETY: plain query.
    let socket = unsafe { ffi::rte_eth_dev_socket_id(id) };
    let mp = pool_for(eal, socket)?;
    let close = |id: u16| {
        // SAFETY: the port was configured above.
        unsafe { ffi::rte_eth_dev_close(id) };
    };
    for q in 0..nrx as u16 {
        // SAFETY: port configured; NULL rxconf selects the driver defaults.
        let rc = unsafe { ffi::rte_eth_rx_queue_setup(id, q, nb_rxd, socket.max(0) as u32, std::ptr::null(), mp) };
        if rc != 0 {
            close(id);
            return Err(format!("{device}: RX queue {q}: {}", errno_text(rc)));
        }
    }
    for q in 0..workers as u16 {
        // SAFETY: as above.
        let rc = unsafe { ffi::rte_eth_tx_queue_setup(id, q, nb_txd, socket.max(0) as u32, std::ptr::null()) };
        if rc != 0 {
            close(id);
            return Err(format!("{device}: TX queue {q}: {}", errno_text(rc)));
        }
    }
    // SAFETY: port configured.
    let rc = unsafe { ffi::rte_eth_dev_start(id) };
    if rc != 0 {
        close(id);
        return Err(format!("{device}: start: {}", errno_text(rc)));
    }
    // Frames for the router's MAC, broadcast and multicast (ND) must all
    // arrive; a device without promiscuous mode still gets its own MAC's.
    // SAFETY: port started.
    let rc = unsafe { ffi::rte_eth_promiscuous_enable(id) };
    if rc != 0 {
        log::warn!("{device}: promiscuous mode: {}", errno_text(rc));
    }
    if spec.mac == Mac::ZERO {
        let mut a = ffi::rte_ether_addr::default();
        // SAFETY: valid out-pointer.
        unsafe { ffi::rte_eth_macaddr_get(id, &mut a) };
        spec.mac = Mac(a.addr_bytes);
    }
    eal.ports.push(id);
    let rx: Vec<Option<DpdkRx>> = (0..workers)
        .map(|w| {
            (w < nrx).then(|| DpdkRx {
                port: id,
                queue: w as u16,
                counters: Arc::default(),
                scratch: [std::ptr::null_mut(); MAX_BURST],
            })
        })
        .collect();
    let tx: Vec<DpdkTx> =
        (0..workers).map(|w| DpdkTx { port: id, queue: w as u16, counters: Arc::default() }).collect();
    let txc = tx.iter().map(|t| t.counters.clone()).collect();
    log::info!(
        "{}: DPDK {device} (port {id}, driver {}), {nrx} RX / {workers} TX queues of {nb_rxd}/{nb_txd}, socket {socket}",
        spec.name,
        // SAFETY: driver_name is a static string when set.
        if info.driver_name.is_null() {
            "?".into()
        } else {
            unsafe { CStr::from_ptr(info.driver_name) }.to_string_lossy()
        }
    );
    Ok((DpdkPort { id, spec, tx: txc }, rx, tx))
}

/// Stops and closes every port, frees the pools and releases the EAL's
/// memory. Call after the workers have stopped and every [`Mbuf`] is gone.
pub fn shutdown() {
    let Some(eal) = EAL.lock().unwrap().take() else { return };
    CLOSED.store(true, Ordering::SeqCst);
    for id in eal.ports {
        // SAFETY: no worker uses the port any more.
        unsafe {
            ffi::rte_eth_dev_stop(id);
            ffi::rte_eth_dev_close(id);
        }
    }
    DEFAULT_POOL.store(std::ptr::null_mut(), Ordering::SeqCst);
    for (_, p) in eal.pools {
        // SAFETY: every mbuf has been freed or is owned by a closed device.
        unsafe { ffi::rte_mempool_free(p as *mut ffi::rte_mempool) };
    }
    // SAFETY: the EAL was initialised and nothing uses it any more.
    let rc = unsafe { ffi::rte_eal_cleanup() };
    if rc != 0 {
        log::warn!("DPDK EAL cleanup: {}", errno_text(rc));
    }
}

/// One DPDK ethdev as the control side sees it.
pub struct DpdkPort {
    id: u16,
    spec: PortSpec,
    tx: Vec<Arc<QueueCounters>>,
}

impl Port for DpdkPort {
    fn spec(&self) -> &PortSpec {
        &self.spec
    }

    fn link_up(&self) -> bool {
        if CLOSED.load(Ordering::Relaxed) {
            return false;
        }
        let mut l = ffi::rte_eth_link::default();
        // SAFETY: valid out-pointer; a control-path call.
        unsafe { ffi::rte_eth_link_get_nowait(self.id, &mut l) == 0 && l.link_status() != 0 }
    }

    /// The device's own counters (what the NIC received, sent and lost),
    /// plus what our TX queues could not hand to it.
    fn stats(&self) -> PortStats {
        if CLOSED.load(Ordering::Relaxed) {
            return PortStats::default();
        }
        let mut s = ffi::rte_eth_stats::default();
        // SAFETY: valid out-pointer; a control-path call.
        if unsafe { ffi::rte_eth_stats_get(self.id, &mut s) } != 0 {
            return PortStats::default();
        }
        let sw_dropped: u64 = self.tx.iter().map(|q| q.read().2).sum();
        PortStats {
            rx_packets: s.ipackets,
            rx_bytes: s.ibytes,
            rx_dropped: s.imissed + s.ierrors + s.rx_nombuf,
            tx_packets: s.opackets,
            tx_bytes: s.obytes,
            tx_dropped: s.oerrors + sw_dropped,
        }
    }
}

/// One received or built frame in an `rte_mbuf` (single segment), owned:
/// transmitted, or freed when dropped.
#[repr(transparent)]
pub struct Mbuf(NonNull<ffi::rte_mbuf>);

// SAFETY: an mbuf is owned by exactly one Mbuf at a time and may be freed
// or sent from any thread (the mempool is thread-safe).
unsafe impl Send for Mbuf {}

impl Mbuf {
    #[inline(always)]
    fn raw(&self) -> &ffi::rte_mbuf {
        // SAFETY: the pointer is a live mbuf we own.
        unsafe { self.0.as_ref() }
    }

    #[inline(always)]
    fn raw_mut(&mut self) -> &mut ffi::rte_mbuf {
        // SAFETY: as above, exclusively.
        unsafe { self.0.as_mut() }
    }

    /// A frame copied into a new mbuf from the worker's pool; None when the
    /// pool is empty or the frame does not fit.
    pub fn from_slice(pool: &MbufPool, frame: &[u8]) -> Option<Mbuf> {
        let mp = pool.mp;
        if mp.is_null() {
            return None;
        }
        // SAFETY: mp is one of our pools; a NULL result is handled.
        let mut m = Mbuf(NonNull::new(unsafe { ffi::adp_pktmbuf_alloc(mp) })?);
        // SAFETY: a fresh single-segment mbuf.
        if (unsafe { ffi::adp_pktmbuf_tailroom(m.0.as_ptr()) } as usize) < frame.len() {
            return None;
        }
        let r = m.raw_mut();
        r.data_len = frame.len() as u16;
        r.pkt_len = frame.len() as u32;
        m.data_mut().copy_from_slice(frame);
        Some(m)
    }
}

impl Drop for Mbuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: we own the mbuf; it is freed once, here.
        unsafe { ffi::adp_pktmbuf_free(self.0.as_ptr()) }
    }
}

impl std::fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mbuf({} bytes)", self.len())
    }
}

impl PacketBuf for Mbuf {
    type Pool = MbufPool;

    #[inline]
    fn release(self, _: &mut MbufPool) {
        drop(self)
    }

    #[inline(always)]
    fn data(&self) -> &[u8] {
        let m = self.raw();
        // SAFETY: data_off + data_len lies within the mbuf's buffer.
        unsafe { std::slice::from_raw_parts((m.buf_addr as *const u8).add(m.data_off as usize), m.data_len as usize) }
    }

    #[inline(always)]
    fn data_mut(&mut self) -> &mut [u8] {
        let m = self.raw_mut();
        // SAFETY: as above; we own the mbuf (refcount 1, not shared).
        unsafe { std::slice::from_raw_parts_mut((m.buf_addr as *mut u8).add(m.data_off as usize), m.data_len as usize) }
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.raw().data_len as usize
    }

    /// The device marked the IPv4 header checksum good (`open` asks for
    /// that where the device can; the flag is in the mbuf's first line,
    /// beside the data offset and length just read).
    #[inline(always)]
    fn ipv4_checksum_verified(&self) -> bool {
        self.raw().ol_flags & ffi::RTE_MBUF_F_RX_IP_CKSUM_MASK as u64 == ffi::RTE_MBUF_F_RX_IP_CKSUM_GOOD as u64
    }

    #[inline]
    fn adj(&mut self, n: usize) {
        let m = self.raw_mut();
        let n = n.min(m.data_len as usize) as u16;
        m.data_off += n;
        m.data_len -= n;
        m.pkt_len -= n as u32;
    }

    #[inline]
    fn prepend(&mut self, n: usize) -> bool {
        let m = self.raw_mut();
        if n > m.data_off as usize {
            return false;
        }
        m.data_off -= n as u16;
        m.data_len += n as u16;
        m.pkt_len += n as u32;
        true
    }

    #[inline]
    fn trim(&mut self, len: usize) {
        let m = self.raw_mut();
        if len < m.data_len as usize {
            m.data_len = len as u16;
            m.pkt_len = len as u32;
        }
    }
}

/// A worker's view of the mbuf pool, with its stock of host-stack buffers.
/// Creating it registers the worker's thread with the EAL, which gives it
/// the mempool's per-core cache (unregistered when it is dropped).
pub struct MbufPool {
    mp: *mut ffi::rte_mempool,
    host: Pool,
    registered: bool,
}

// SAFETY: the mempool pointer is shared by design (DPDK mempools are
// multi-thread safe); the pool object moves with its worker.
unsafe impl Send for MbufPool {}

impl Drop for MbufPool {
    fn drop(&mut self) {
        if self.registered {
            // SAFETY: this thread registered itself in worker_pool.
            unsafe { ffi::rte_thread_unregister() };
        }
    }
}

impl WorkerBuf for Mbuf {
    const PRIVATE_POOLS: bool = false;

    fn worker_pool(_capacity: usize, _fill: usize) -> MbufPool {
        // SAFETY: registers the calling (worker) thread as an EAL thread.
        let registered = unsafe { ffi::rte_thread_register() } == 0;
        if !registered {
            log::warn!("cannot register a worker with the EAL ({}): mbufs bypass the pool cache", rte_error());
        }
        MbufPool { mp: DEFAULT_POOL.load(Ordering::Acquire), host: Pool::new(HOST_STOCK), registered }
    }

    #[inline]
    fn host_stock(pool: &mut MbufPool) -> &mut Pool {
        &mut pool.host
    }

    #[inline]
    fn into_host(self, pool: &mut MbufPool) -> Option<Pkt> {
        let mut p = pool.host.alloc()?;
        if self.len() > MAX_FRAME || !p.fill(self.data()) {
            pool.host.free(p);
            return None;
        }
        Some(p)
    }

    #[inline]
    fn from_host(p: Pkt, pool: &mut MbufPool) -> Option<Mbuf> {
        let m = Mbuf::from_slice(pool, p.data());
        pool.host.free(p);
        m
    }

    fn pool_alloc(pool: &mut MbufPool) -> Option<Mbuf> {
        Mbuf::from_slice(pool, &[])
    }
    fn pool_available(_: &MbufPool) -> usize {
        0
    }
    fn pool_capacity(_: &MbufPool) -> usize {
        0
    }
}

/// A worker's RX queue on a DPDK port.
pub struct DpdkRx {
    port: u16,
    queue: u16,
    counters: Arc<QueueCounters>,
    scratch: [*mut ffi::rte_mbuf; MAX_BURST],
}

// SAFETY: the queue is used by one worker thread at a time; the scratch
// pointers are only live inside rx_burst.
unsafe impl Send for DpdkRx {}

impl RxQueue<Mbuf> for DpdkRx {
    #[inline]
    fn rx_burst(&mut self, _pool: &mut MbufPool, burst: &mut crate::packet::Burst<Mbuf>, port: u16) -> usize {
        let room = burst.room().min(MAX_BURST);
        // SAFETY: the queue belongs to this worker; scratch holds `room`.
        let n = unsafe { ffi::adp_rx_burst(self.port, self.queue, self.scratch.as_mut_ptr(), room as u16) } as usize;
        if n == 0 {
            return 0;
        }
        // The parse stage reads every frame's headers next: start fetching
        // them all now (a NIC wrote them by DMA, not through this cache).
        // Scatter is never enabled; a chained frame is not ours to parse
        // (dropped here). Counted in the same pass, so that the common
        // case, none, takes the whole array in one copy (a filtering
        // iterator cost about 20 instructions a packet).
        let (mut bytes, mut chained) = (0usize, 0u64);
        for &raw in &self.scratch[..n] {
            // SAFETY: a live mbuf the driver just handed us.
            let m = unsafe { &*raw };
            // SAFETY: its data lies in its buffer; prefetch has no side
            // effects.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                let p = (m.buf_addr as *const i8).add(m.data_off as usize);
                core::arch::x86_64::_mm_prefetch(p, core::arch::x86_64::_MM_HINT_T0);
            }
            chained += (m.nb_segs != 1) as u64;
            bytes += m.data_len as usize;
        }
        // SAFETY (both arms): the driver handed us these mbufs, non-null:
        // we own them now, and each is wrapped once.
        let got = if chained == 0 {
            burst.extend_received(
                self.scratch[..n].iter().map(|&raw| Mbuf(unsafe { NonNull::new_unchecked(raw) })),
                port,
            )
        } else {
            bytes = 0;
            burst.extend_received(
                self.scratch[..n].iter().filter_map(|&raw| {
                    let m = Mbuf(unsafe { NonNull::new_unchecked(raw) });
                    if m.raw().nb_segs != 1 {
                        return None;
                    }
                    bytes += m.len();
                    Some(m)
                }),
                port,
            )
        };
        if chained > 0 {
            self.counters.add_dropped(chained);
        }
        self.counters.add(got as u64, bytes as u64);
        got
    }

    fn counters(&self) -> &Arc<QueueCounters> {
        &self.counters
    }
}

/// A worker's TX queue on a DPDK port.
pub struct DpdkTx {
    port: u16,
    queue: u16,
    counters: Arc<QueueCounters>,
}

impl TxQueue<Mbuf> for DpdkTx {
    #[inline]
    fn tx_burst(&mut self, _pool: &mut MbufPool, pkts: &mut Vec<Mbuf>) -> usize {
        let n = pkts.len().min(u16::MAX as usize);
        if n == 0 {
            return 0;
        }
        let bytes: usize = pkts[..n].iter().map(|p| p.len()).sum();
        // SAFETY: Mbuf is a transparent rte_mbuf pointer; the queue belongs
        // to this worker.
        let sent =
            unsafe { ffi::adp_tx_burst(self.port, self.queue, pkts.as_mut_ptr() as *mut *mut ffi::rte_mbuf, n as u16) }
                as usize;
        let unsent_bytes: usize = pkts[sent..n].iter().map(|p| p.len()).sum();
        // The device owns the first `sent` mbufs now: forget them, keep the rest.
        // SAFETY: moves the unsent tail to the front without dropping the sent ones.
        unsafe {
            let p = pkts.as_mut_ptr();
            let left = pkts.len() - sent;
            std::ptr::copy(p.add(sent), p, left);
            pkts.set_len(left);
        }
        self.counters.add(sent as u64, (bytes - unsent_bytes) as u64);
        sent
    }

    fn counters(&self) -> &Arc<QueueCounters> {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn eal_defaults() {
        assert_eq!(
            eal_argv(&s(&["--vdev", "net_null0"]), 1),
            s(&["astara-dp", "--vdev", "net_null0", "-l", "1", "--in-memory"])
        );
        assert_eq!(
            eal_argv(&s(&["--no-huge", "-m", "256", "-l", "0"]), 1),
            s(&["astara-dp", "--no-huge", "-m", "256", "-l", "0", "--no-shconf"])
        );
        assert_eq!(
            eal_argv(&s(&["--file-prefix=t1", "--lcores=2"]), 0),
            s(&["astara-dp", "--file-prefix=t1", "--lcores=2"])
        );
    }
}
