//! The runtime file (`configs/runtime.toml`): what this appliance is made of
//! (ports and their backends, worker cores, table sizes, where the API
//! listens, where state is kept), as opposed to the orchestrator's document,
//! which says what it should do.

use crate::packet::{DEFAULT_BURST, MAX_BURST, Mac};
use crate::port::PortSpec;
use crate::stage::Filtering;
use crate::table::lpm4::DEFAULT_TBL8_GROUPS;
use crate::table::lpm6::DEFAULT_GROUPS6;
use crate::table::session::{MAX_TIMEOUT, Timeouts};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// How a port moves packets.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case")]
pub enum Backend {
    /// Receives nothing, transmits into the void (DPDK's net_null).
    Null,
    /// Replays a capture (once or looping) and/or writes transmitted frames.
    Pcap {
        #[serde(default)]
        rx: Option<PathBuf>,
        #[serde(default, rename = "loop")]
        looping: bool,
        #[serde(default)]
        tx: Option<PathBuf>,
    },
    /// A Linux interface through AF_PACKET rings (one pair per worker,
    /// spread over the workers by PACKET_FANOUT).
    AfPacket { interface: String },
    /// A Linux interface the kernel keeps (the management port: the API and
    /// SSH use the kernel's TCP on its address); reported, never forwarded on.
    Kernel { interface: String },
    /// A DPDK ethdev (feature `dpdk`): a PCI address (`0000:03:00.0`) or a
    /// virtual device created by the `[dpdk]` EAL arguments (`net_pcap0`).
    Dpdk { device: String },
}

/// DPDK's environment (`[dpdk]`), used when a port has `backend = "dpdk"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpdkRuntime {
    /// EAL arguments as DPDK's own tools take them: `-a 0000:03:00.0`,
    /// `--vdev net_pcap0,...`, `--no-huge -m 512`, `--file-prefix NAME`.
    /// Without `--no-huge` the EAL runs `--in-memory` (hugepages without
    /// files, released at exit) unless `--file-prefix` or `--huge-unlink`
    /// says otherwise; without `-l`/`--lcores` it takes the first CPU this
    /// process may use as its main lcore (the control thread's).
    #[serde(default)]
    pub eal_args: Vec<String>,
    /// Packet buffers (mbufs) in the pool of each NUMA socket: every RX and
    /// TX descriptor holds one, and each worker caches `mbuf_cache`.
    #[serde(default = "default_mbufs")]
    pub mbufs: u32,
    #[serde(default = "default_mbuf_cache")]
    pub mbuf_cache: u32,
    /// Descriptors per RX and TX queue (rounded to what the device accepts).
    #[serde(default = "default_desc")]
    pub rx_desc: u16,
    #[serde(default = "default_desc")]
    pub tx_desc: u16,
    /// Let devices that can verify received IPv4 header checksums do so
    /// (`RTE_ETH_RX_OFFLOAD_IPV4_CKSUM`): a frame the device marks good
    /// skips the check in software, one it marks bad or leaves unmarked is
    /// checked as before. On by default, as DPDK's l3fwd does; off for a
    /// device whose offload is not to be trusted.
    #[serde(default = "super::model::yes")]
    pub rx_checksum_offload: bool,
}

impl Default for DpdkRuntime {
    fn default() -> Self {
        DpdkRuntime {
            eal_args: Vec::new(),
            mbufs: default_mbufs(),
            mbuf_cache: default_mbuf_cache(),
            rx_desc: default_desc(),
            tx_desc: default_desc(),
            rx_checksum_offload: true,
        }
    }
}

fn default_mbufs() -> u32 {
    32767
}
fn default_mbuf_cache() -> u32 {
    256
}
fn default_desc() -> u16 {
    1024
}

// No deny_unknown_fields here: serde does not support it with `flatten`.
#[derive(Debug, Clone, Deserialize)]
pub struct PortConfig {
    /// Logical name the orchestrator sees (`ge0`, `ge1`, ...).
    pub name: String,
    /// Required except for `af_packet`, where it defaults to the interface's.
    #[serde(default)]
    pub mac: Option<String>,
    /// IP MTU; `af_packet` defaults to the interface's, others to 1500.
    #[serde(default)]
    pub mtu: Option<u16>,
    #[serde(flatten)]
    pub backend: Backend,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// An address, or "management": the first address of the management
    /// network of the document in force (the appliance's contract).
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_api_port")]
    pub port: u16,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { listen: default_listen(), port: default_api_port() }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    /// CPUs to pin workers to, one worker each (empty: one unpinned worker).
    #[serde(default)]
    pub cores: Vec<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablesConfig {
    #[serde(default = "default_tbl8")]
    pub tbl8_groups: usize,
    #[serde(default = "default_groups6")]
    pub lpm6_groups: usize,
}

impl Default for TablesConfig {
    fn default() -> Self {
        TablesConfig { tbl8_groups: default_tbl8(), lpm6_groups: default_groups6() }
    }
}

/// Connection tracking and NAT (`[conntrack]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackRuntime {
    /// Sessions per worker (fixed; about 127 bytes each when full).
    #[serde(default = "default_sessions")]
    pub sessions_per_worker: usize,
    /// RFC 4787 filtering: "address-and-port-dependent" (default, as Linux
    /// masquerade) or "endpoint-independent".
    #[serde(default = "default_filtering")]
    pub filtering: String,
    /// Idle timeouts in seconds (RFC minimums are enforced).
    #[serde(default)]
    pub tcp_established: Option<u32>,
    #[serde(default)]
    pub tcp_transitory: Option<u32>,
    #[serde(default)]
    pub udp: Option<u32>,
    #[serde(default)]
    pub icmp: Option<u32>,
}

impl Default for ConntrackRuntime {
    fn default() -> Self {
        ConntrackRuntime {
            sessions_per_worker: default_sessions(),
            filtering: default_filtering(),
            tcp_established: None,
            tcp_transitory: None,
            udp: None,
            icmp: None,
        }
    }
}

fn default_sessions() -> usize {
    1_000_000
}
fn default_filtering() -> String {
    "address-and-port-dependent".into()
}

impl ConntrackRuntime {
    pub fn filtering(&self) -> Result<Filtering, String> {
        self.filtering.parse().map_err(|e| format!("conntrack.filtering: {e}"))
    }

    /// Timeouts with the overrides, checked against the RFC minimums
    /// (RFC 5382 REQ-5: 2 h 4 min established, 4 min transitory; RFC 4787
    /// REQ-5: 2 min UDP; RFC 5508 REQ-1: 60 s ICMP queries) and the wheel.
    pub fn timeouts(&self) -> Result<Timeouts, String> {
        let mut t = Timeouts::default();
        let check = |name: &str, v: Option<u32>, min: u32, into: &mut u32| -> Result<(), String> {
            if let Some(v) = v {
                if v < min || v > MAX_TIMEOUT {
                    return Err(format!("conntrack.{name}: {v} s is outside {min}..={MAX_TIMEOUT} s"));
                }
                *into = v;
            }
            Ok(())
        };
        check("tcp_established", self.tcp_established, 7440, &mut t.tcp_established)?;
        check("tcp_transitory", self.tcp_transitory, 240, &mut t.tcp_transitory)?;
        check("udp", self.udp, 120, &mut t.udp)?;
        check("icmp", self.icmp, 60, &mut t.icmp)?;
        if self.sessions_per_worker == 0 || self.sessions_per_worker > crate::table::session::MAX_CAPACITY {
            return Err("conntrack.sessions_per_worker: must be 1..=2^30 (1073741824)".into());
        }
        Ok(t)
    }
}

/// The load balancer (`[lb]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbRuntime {
    /// "always" (default: members see the appliance's address, as with the
    /// original nginx proxy) or "never" (members see the client and must
    /// route their replies through the appliance).
    #[serde(default = "default_lb_snat")]
    pub snat: String,
    /// Seconds an administratively down member keeps its connections
    /// (0: until they end).
    #[serde(default = "default_drain")]
    pub drain_timeout: u32,
    /// Maglev table size: a prime, at least 10 per member.
    #[serde(default = "default_maglev")]
    pub maglev_size: u32,
}

impl Default for LbRuntime {
    fn default() -> Self {
        LbRuntime { snat: default_lb_snat(), drain_timeout: default_drain(), maglev_size: default_maglev() }
    }
}

fn default_lb_snat() -> String {
    "always".into()
}
fn default_drain() -> u32 {
    300
}
fn default_maglev() -> u32 {
    crate::table::maglev::DEFAULT_SIZE
}

impl LbRuntime {
    pub fn options(&self) -> Result<crate::control::lb::LbOptions, String> {
        let snat = self.snat.parse().map_err(|e| format!("lb.snat: {e}"))?;
        if !crate::table::maglev::is_prime(self.maglev_size) || self.maglev_size < 11 {
            return Err(format!("lb.maglev_size: {} is not a prime above 10", self.maglev_size));
        }
        if self.maglev_size > 1 << 24 {
            return Err(format!("lb.maglev_size: {} is larger than 2^24", self.maglev_size));
        }
        Ok(crate::control::lb::LbOptions {
            snat,
            drain_timeout: self.drain_timeout,
            maglev_size: self.maglev_size,
            slots: Default::default(),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeighborConfig {
    pub port: String,
    pub ip: IpAddr,
    pub mac: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    #[serde(default = "default_log")]
    pub log_level: String,
    /// Where the last accepted document is kept (re-applied at start).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_burst")]
    pub burst: usize,
    /// Packet buffers per worker.
    #[serde(default = "default_pool")]
    pub pool_size: usize,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub workers: WorkersConfig,
    #[serde(default)]
    pub tables: TablesConfig,
    #[serde(default)]
    pub conntrack: ConntrackRuntime,
    pub ports: Vec<PortConfig>,
    #[serde(default)]
    pub neighbors: Vec<NeighborConfig>,
    #[serde(default)]
    pub dpdk: DpdkRuntime,
    #[serde(default)]
    pub lb: LbRuntime,
    /// Directory of the runtime file (relative paths are resolved from it).
    #[serde(skip)]
    pub dir: PathBuf,
}

fn default_listen() -> String {
    "management".into()
}
fn default_api_port() -> u16 {
    5000
}
fn default_tbl8() -> usize {
    DEFAULT_TBL8_GROUPS
}
fn default_groups6() -> usize {
    DEFAULT_GROUPS6
}
fn default_log() -> String {
    "info".into()
}
fn default_state_dir() -> PathBuf {
    "/var/lib/astara-dp".into()
}
fn default_burst() -> usize {
    DEFAULT_BURST
}
fn default_pool() -> usize {
    8192
}

impl Runtime {
    pub fn load(path: &Path) -> Result<Runtime, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut r = Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        r.dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Ok(r)
    }

    pub fn parse(text: &str) -> Result<Runtime, String> {
        let r: Runtime = toml::from_str(text).map_err(|e| e.to_string())?;
        if r.ports.is_empty() {
            return Err("at least one [[ports]] entry is needed".into());
        }
        if !(1..=MAX_BURST).contains(&r.burst) {
            return Err(format!("burst must be 1..={MAX_BURST}"));
        }
        r.conntrack.filtering()?;
        r.conntrack.timeouts()?;
        r.lb.options()?;
        if r.pool_size < 2 * r.burst {
            return Err("pool_size must hold at least two bursts".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut macs = std::collections::HashSet::new();
        let mut ifaces = std::collections::HashSet::new();
        for (i, p) in r.ports.iter().enumerate() {
            match (&p.mac, &p.backend) {
                (Some(m), _) => {
                    let mac: Mac = m.parse().map_err(|e| format!("ports[{i}].mac: {e}"))?;
                    if !macs.insert(mac) {
                        return Err(format!("ports[{i}].mac: {mac} is used twice"));
                    }
                }
                (None, Backend::AfPacket { .. } | Backend::Kernel { .. } | Backend::Dpdk { .. }) => {}
                (None, _) => {
                    return Err(format!(
                        "ports[{i}].mac: missing (only af_packet, kernel and dpdk ports read it from the device)"
                    ));
                }
            }
            if let Backend::AfPacket { interface } | Backend::Kernel { interface } = &p.backend
                && !ifaces.insert(interface.clone())
            {
                return Err(format!("ports[{i}].interface: {interface} is used twice"));
            }
            if let Backend::Dpdk { device } = &p.backend
                && !ifaces.insert(format!("dpdk:{device}"))
            {
                return Err(format!("ports[{i}].device: {device} is used twice"));
            }
            if !names.insert(p.name.clone()) {
                return Err(format!("ports[{i}].name: {} is used twice", p.name));
            }
            if let Some(mtu) = p.mtu
                && !(68..=9000).contains(&mtu)
            {
                return Err(format!("ports[{i}].mtu: {mtu} is outside 68..=9000"));
            }
        }
        // One buffer type per appliance: DPDK ports hand mbufs to the workers,
        // the software and AF_PACKET ports our own buffers.
        if let Some(d) = r.ports.iter().position(|p| matches!(p.backend, Backend::Dpdk { .. }))
            && let Some(i) = r
                .ports
                .iter()
                .position(|p| !matches!(p.backend, Backend::Dpdk { .. } | Backend::Kernel { .. } | Backend::Null))
        {
            return Err(format!(
                "ports[{i}] ({}): cannot be mixed with the dpdk port ports[{d}]; with DPDK use its virtual \
                 devices instead (--vdev net_pcap0,rx_pcap=F or net_af_packet0,iface=IF in dpdk.eal_args)",
                r.ports[i].name
            ));
        }
        if r.dpdk.mbufs < 1024 {
            return Err(format!("dpdk.mbufs: {} is too few (at least 1024)", r.dpdk.mbufs));
        }
        if r.dpdk.mbuf_cache > 512 || r.dpdk.mbuf_cache as u64 * 3 > r.dpdk.mbufs as u64 * 2 {
            return Err(format!("dpdk.mbuf_cache: {} must be at most 512 and 2/3 of dpdk.mbufs", r.dpdk.mbuf_cache));
        }
        if !(64..=16384).contains(&r.dpdk.rx_desc) || !(64..=16384).contains(&r.dpdk.tx_desc) {
            return Err("dpdk.rx_desc and dpdk.tx_desc must be 64..=16384".into());
        }
        for (i, n) in r.neighbors.iter().enumerate() {
            n.mac.parse::<Mac>().map_err(|e| format!("neighbors[{i}].mac: {e}"))?;
            if !names.contains(&n.port) {
                return Err(format!("neighbors[{i}].port: no port named {}", n.port));
            }
        }
        if r.api.listen != "management" && r.api.listen.parse::<IpAddr>().is_err() {
            return Err(format!("api.listen: '{}' is neither an address nor \"management\"", r.api.listen));
        }
        Ok(r)
    }

    /// Resolves a path given in the runtime file.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() { p.to_path_buf() } else { self.dir.join(p) }
    }

    /// The ports as configured. An `af_packet` port without a MAC or MTU
    /// has zero there: the backend fills them in from the interface.
    pub fn port_specs(&self) -> Vec<PortSpec> {
        self.ports
            .iter()
            .map(|p| {
                let default_mtu = match p.backend {
                    Backend::AfPacket { .. } | Backend::Kernel { .. } => 0,
                    _ => 1500,
                };
                PortSpec {
                    name: p.name.clone(),
                    mac: p.mac.as_deref().and_then(|m| m.parse().ok()).unwrap_or(Mac::ZERO),
                    mtu: p.mtu.unwrap_or(default_mtu).min(crate::packet::MAX_MTU),
                }
            })
            .collect()
    }

    pub fn static_neighbors(&self) -> Vec<super::StaticNeighbor> {
        self.neighbors
            .iter()
            .map(|n| super::StaticNeighbor { port: n.port.clone(), ip: n.ip, mac: n.mac.parse().unwrap_or(Mac::ZERO) })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_runtime_parses() {
        let r = Runtime::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/runtime.toml"))).unwrap();
        assert_eq!(r.ports.len(), 4);
        assert_eq!(r.api.port, 5000);
        assert!(matches!(r.ports[0].backend, Backend::Null));
        assert_eq!(r.port_specs()[1].mac.to_string(), "fa:16:3e:a0:80:82");
    }

    #[test]
    fn rejects_mistakes_with_the_field() {
        let base = "[[ports]]\nname = \"ge0\"\nmac = \"02:00:00:00:00:01\"\nbackend = \"null\"\n";
        assert!(Runtime::parse(base).is_ok());
        let e = Runtime::parse(&base.replace("02:00:00:00:00:01", "zz")).unwrap_err();
        assert!(e.contains("ports[0].mac"), "{e}");
        let twice = format!("{base}{base}");
        assert!(Runtime::parse(&twice).unwrap_err().contains("used twice"));
        assert!(Runtime::parse(&format!("burst = 0\n{base}")).unwrap_err().contains("burst"));
        assert!(Runtime::parse(&base.replace("null", "carrier-pigeon")).is_err());
        assert!(Runtime::parse(&format!("[api]\nlisten = \"nowhere\"\n{base}")).unwrap_err().contains("api.listen"));
        assert!(Runtime::parse("").unwrap_err().contains("ports"));
    }
}

#[cfg(test)]
mod shipped {
    use super::*;
    use crate::control::{AstaraConfig, CompileOptions, compile};

    #[test]
    fn shipped_documents_compile_on_the_shipped_ports() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/configs"));
        let rt = Runtime::load(&dir.join("runtime.toml")).unwrap();
        for doc in ["router.json", "loadbalancer.json"] {
            let cfg = AstaraConfig::from_json(&std::fs::read(dir.join(doc)).unwrap()).unwrap();
            let opts = CompileOptions { neighbors: rt.static_neighbors(), ..Default::default() };
            let c = compile(&cfg, &rt.port_specs(), &opts).unwrap_or_else(|e| panic!("{doc}: {e}"));
            assert!(c.warnings.is_empty(), "{doc}: {:?}", c.warnings);
        }
        let lb = AstaraConfig::from_json(&std::fs::read(dir.join("loadbalancer.json")).unwrap()).unwrap();
        let lb = lb.loadbalancer().unwrap().unwrap();
        assert_eq!(lb.listeners[0].default_pool.as_ref().unwrap().members.len(), 2);
    }
}
