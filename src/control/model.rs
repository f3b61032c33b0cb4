//! The Astara configuration document (`PUT /v1/system/config`), as the
//! orchestrator sends it (see ASTARA.md and the orchestrator's
//! `astara/api/config/{common,router}.py`).
//!
//! Parsing is as lenient as the original appliance: unknown fields are
//! ignored, `null` stands for an empty list or absent value, an empty
//! `gateway_ip`/`default_v4_gateway` means none, rule ports may be numbers or
//! strings, and an interface object may come back as an appliance API
//! reported it (`"lladdr": "null"`, `groups` as one string). Everything is
//! then checked by [`AstaraConfig::validate`], whose messages name the field
//! (`networks[2].interface.addresses[0]: ...`).

use crate::packet::Mac;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address with a prefix length (`192.168.0.1/24`, `fdd6::1/64`); a bare
/// address is a host prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn max_len(&self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }
    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }
    /// The address as 128 bits (IPv4 in the low 32 bits).
    pub fn bits(&self) -> u128 {
        ip_bits(self.addr)
    }
    pub fn mask(&self) -> u128 {
        let w = self.max_len() as u32;
        let full: u128 = if w == 32 { u32::MAX as u128 } else { u128::MAX };
        if self.len == 0 { 0 } else { (full << (w - self.len as u32)) & full }
    }
    /// The network address (host bits cleared).
    pub fn network(&self) -> u128 {
        self.bits() & self.mask()
    }
    /// Same family and inside the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_v4() && ip_bits(ip) & self.mask() == self.network()
    }
    pub fn overlaps(&self, o: &Cidr) -> bool {
        if self.is_v4() != o.is_v4() {
            return false;
        }
        let m = if self.len < o.len { self.mask() } else { o.mask() };
        self.bits() & m == o.bits() & m
    }
    /// The directed broadcast address of an IPv4 prefix shorter than /31.
    pub fn broadcast_v4(&self) -> Option<u32> {
        (self.is_v4() && self.len < 31).then(|| (self.network() | (!self.mask() & 0xffff_ffff)) as u32)
    }
}

/// Address bits of an `IpAddr` (IPv4 in the low 32 bits).
pub fn ip_bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| format!("'{s}' is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("'{s}' has an invalid prefix length (0..={max})")),
            },
        };
        Ok(Cidr { addr, len })
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

fn ser_mac<S: Serializer>(m: &Option<Mac>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.collect_str(m),
        None => s.serialize_none(),
    }
}

/// A MAC where `null`, `""` or the string `"null"` means none (the Akanda
/// appliance API reported an interface without a MAC as `"null"`, and an
/// orchestrator may send an interface object back as it read it).
fn de_mac<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Mac>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() || s.trim() == "null" => Ok(None),
        Some(s) => s.parse().map(Some).map_err(de::Error::custom),
    }
}

/// A list of names that may arrive as one string (the Akanda appliance API
/// reported an interface's `groups` as `"egress"`) or as `null`. Only
/// reported back, never acted on.
fn names_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Names {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Names>::deserialize(d)? {
        None => Vec::new(),
        Some(Names::One(s)) if s.trim().is_empty() => Vec::new(),
        Some(Names::One(s)) => vec![s],
        Some(Names::Many(v)) => v,
    })
}

fn de_mac_required<'de, D: Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(de::Error::custom)
}

fn ser_mac_required<S: Serializer>(m: &Mac, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(m)
}

/// `null` → the type's default (lists and maps sent as null by Python code).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An IP address where `null` or `""` means none.
fn opt_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => s.trim().parse().map(Some).map_err(|_| de::Error::custom(format!("'{s}' is not an IP address"))),
    }
}

/// A number that may arrive as a JSON number or a numeric string.
fn opt_u32_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| de::Error::custom(format!("{n} is not a valid number here"))),
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => {
            s.trim().parse().map(Some).map_err(|_| de::Error::custom(format!("'{s}' is not a number")))
        }
        Some(v) => Err(de::Error::custom(format!("{v} is not a number"))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkType {
    External,
    Internal,
    Management,
    #[default]
    Isolated,
    Loadbalancer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum V4ConfService {
    #[default]
    Static,
    Dhcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum V6ConfService {
    #[default]
    Static,
    Slaac,
    Dhcp,
    Ra,
}

/// The logical interface of a network (`ge0`, `ge1`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub ifname: String,
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<Cidr>,
    #[serde(default, deserialize_with = "de_mac", serialize_with = "ser_mac", skip_serializing_if = "Option::is_none")]
    pub lladdr: Option<Mac>,
    #[serde(default, deserialize_with = "opt_u32_lenient", skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "names_lenient", skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, deserialize_with = "names_lenient", skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRoute {
    pub destination: Cidr,
    #[serde(alias = "next_hop")]
    pub nexthop: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subnet {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub cidr: Cidr,
    #[serde(default, deserialize_with = "opt_ip")]
    pub gateway_ip: Option<IpAddr>,
    #[serde(default, deserialize_with = "nullable")]
    pub dhcp_enabled: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub dns_nameservers: Vec<IpAddr>,
    #[serde(default, deserialize_with = "nullable")]
    pub host_routes: Vec<HostRoute>,
}

/// A tenant port on a network: its MAC and addresses (address → DHCP on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    #[serde(deserialize_with = "de_mac_required", serialize_with = "ser_mac_required")]
    pub mac_address: Mac,
    #[serde(default, deserialize_with = "nullable")]
    pub ip_addresses: BTreeMap<IpAddr, serde_json::Value>,
    #[serde(default, deserialize_with = "nullable")]
    pub hostname: String,
    #[serde(default, deserialize_with = "nullable")]
    pub device_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub network_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub network_type: NetworkType,
    #[serde(default, deserialize_with = "nullable")]
    pub v4_conf_service: V4ConfService,
    #[serde(default, deserialize_with = "nullable")]
    pub v6_conf_service: V6ConfService,
    pub interface: Interface,
    #[serde(default, deserialize_with = "nullable")]
    pub subnets: Vec<Subnet>,
    #[serde(default, deserialize_with = "nullable")]
    pub allocations: Vec<Allocation>,
    #[serde(default, deserialize_with = "nullable")]
    pub ha: bool,
}

/// `[destination, next_hop]` as the original sends it, or an object.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticRoute {
    pub destination: Cidr,
    pub next_hop: IpAddr,
}

impl Serialize for StaticRoute {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.destination.to_string(), self.next_hop.to_string()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for StaticRoute {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Pair(String, String),
            Obj {
                destination: String,
                #[serde(alias = "nexthop")]
                next_hop: String,
            },
        }
        let (dst, nh) = match Form::deserialize(d).map_err(|_| {
            de::Error::custom("a static route is [destination_cidr, next_hop] or {destination, next_hop}")
        })? {
            Form::Pair(a, b) => (a, b),
            Form::Obj { destination, next_hop } => (destination, next_hop),
        };
        Ok(StaticRoute {
            destination: dst.parse().map_err(de::Error::custom)?,
            next_hop: nh.trim().parse().map_err(|_| de::Error::custom(format!("'{nh}' is not an IP address")))?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloatingIp {
    pub floating_ip: IpAddr,
    pub fixed_ip: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pass,
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Inet,
    Inet6,
}

/// A rule's address: a CIDR, an address-book name, or any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrSpec {
    Any,
    Cidr(Cidr),
    Table(String),
}

impl Serialize for AddrSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AddrSpec::Any => s.serialize_str("any"),
            AddrSpec::Cidr(c) => s.collect_str(c),
            AddrSpec::Table(t) => s.serialize_str(t),
        }
    }
}

fn opt_addr_spec<'de, D: Deserializer<'de>>(d: D) -> Result<Option<AddrSpec>, D::Error> {
    Ok(match Option::<String>::deserialize(d)? {
        None => None,
        Some(s) if s.trim().is_empty() || s.trim().eq_ignore_ascii_case("any") => None,
        Some(s) => {
            let t = s.trim();
            if t.contains('/') || t.parse::<IpAddr>().is_ok() {
                Some(AddrSpec::Cidr(t.parse().map_err(de::Error::custom)?))
            } else {
                Some(AddrSpec::Table(t.to_string()))
            }
        }
    })
}

/// A port or an inclusive port range (`80`, `"80"`, `"8000:8080"`, `"8000-8080"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.lo == self.hi {
            s.serialize_u16(self.lo)
        } else {
            s.collect_str(&format_args!("{}:{}", self.lo, self.hi))
        }
    }
}

fn opt_port_range<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PortRange>, D::Error> {
    let parse = |s: &str| -> Result<u16, D::Error> {
        s.trim().parse::<u16>().map_err(|_| de::Error::custom(format!("'{s}' is not a port (0-65535)")))
    };
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => {
            let p = n
                .as_u64()
                .filter(|&p| p <= 65535)
                .ok_or_else(|| de::Error::custom(format!("{n} is not a port (0-65535)")))?;
            Ok(Some(PortRange { lo: p as u16, hi: p as u16 }))
        }
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => {
            let (lo, hi) = match s.split_once([':', '-']) {
                Some((a, b)) => (parse(a)?, parse(b)?),
                None => (parse(&s)?, parse(&s)?),
            };
            if lo > hi {
                return Err(de::Error::custom(format!("port range '{s}' runs backwards")));
            }
            Ok(Some(PortRange { lo, hi }))
        }
        Some(v) => Err(de::Error::custom(format!("{v} is not a port"))),
    }
}

/// A filter rule of an anchor (PF-era model of the original appliance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterRule {
    pub action: Action,
    #[serde(default)]
    pub direction: Option<Direction>,
    #[serde(default, deserialize_with = "opt_string")]
    pub interface: Option<String>,
    #[serde(default)]
    pub family: Option<Family>,
    #[serde(default, deserialize_with = "opt_string")]
    pub protocol: Option<String>,
    #[serde(default, deserialize_with = "opt_addr_spec")]
    pub source: Option<AddrSpec>,
    #[serde(default, deserialize_with = "opt_port_range")]
    pub source_port: Option<PortRange>,
    #[serde(default, deserialize_with = "opt_string")]
    pub destination_interface: Option<String>,
    #[serde(default, deserialize_with = "opt_addr_spec")]
    pub destination: Option<AddrSpec>,
    #[serde(default, deserialize_with = "opt_port_range")]
    pub destination_port: Option<PortRange>,
    #[serde(default, deserialize_with = "opt_ip")]
    pub redirect: Option<IpAddr>,
    #[serde(default, deserialize_with = "opt_port_range")]
    pub redirect_port: Option<PortRange>,
}

fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
}

/// The IP protocol number a rule's `protocol` names, if it is one we know.
pub fn protocol_number(p: &str) -> Option<u8> {
    match p.to_ascii_lowercase().as_str() {
        "tcp" => Some(6),
        "udp" => Some(17),
        // "imcp" is the original appliance's own spelling in its validator.
        "icmp" | "imcp" => Some(1),
        "icmp6" | "ipv6-icmp" | "icmpv6" => Some(58),
        "gre" => Some(47),
        "esp" => Some(50),
        "ah" => Some(51),
        "sctp" => Some(132),
        n => n.parse().ok(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anchor {
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub rules: Vec<FilterRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Orchestrator {
    #[serde(default, deserialize_with = "opt_ip")]
    pub address: Option<IpAddr>,
    #[serde(default, deserialize_with = "opt_u32_lenient")]
    pub metadata_port: Option<u32>,
}

// ---- load balancer service (services.loadbalancer) ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixedIp {
    #[serde(default)]
    pub subnet_id: Option<String>,
    pub ip_address: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipPort {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "de_mac", serialize_with = "ser_mac")]
    pub mac_address: Option<Mac>,
    #[serde(default)]
    pub network_id: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub fixed_ips: Vec<FixedIp>,
    #[serde(default)]
    pub device_id: Option<String>,
    #[serde(default)]
    pub device_owner: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthMonitor {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "opt_u32_lenient")]
    pub delay: Option<u32>,
    #[serde(default, deserialize_with = "opt_u32_lenient")]
    pub timeout: Option<u32>,
    #[serde(default, deserialize_with = "opt_u32_lenient")]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub url_path: Option<String>,
    #[serde(default)]
    pub expected_codes: Option<String>,
    #[serde(default)]
    pub http_method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    #[serde(default)]
    pub id: Option<String>,
    pub address: IpAddr,
    #[serde(deserialize_with = "de_port_u16")]
    pub protocol_port: u16,
    #[serde(default, deserialize_with = "opt_u32_lenient")]
    pub weight: Option<u32>,
    #[serde(default = "yes", deserialize_with = "bool_default_true")]
    pub admin_state_up: bool,
    #[serde(default)]
    pub subnet: Option<serde_json::Value>,
    #[serde(default)]
    pub tenant_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub lb_algorithm: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default = "yes", deserialize_with = "bool_default_true")]
    pub admin_state_up: bool,
    #[serde(default)]
    pub session_persistence: Option<serde_json::Value>,
    #[serde(default)]
    pub healthmonitor: Option<HealthMonitor>,
    #[serde(default, deserialize_with = "nullable")]
    pub members: Vec<Member>,
    #[serde(default)]
    pub tenant_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listener {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    pub protocol: String,
    #[serde(deserialize_with = "de_port_u16")]
    pub protocol_port: u16,
    #[serde(default = "yes", deserialize_with = "bool_default_true")]
    pub admin_state_up: bool,
    #[serde(default)]
    pub default_pool: Option<Pool>,
    #[serde(default)]
    pub tenant_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadBalancer {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "yes", deserialize_with = "bool_default_true")]
    pub admin_state_up: bool,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "opt_ip")]
    pub vip_address: Option<IpAddr>,
    #[serde(default)]
    pub vip_port: Option<VipPort>,
    #[serde(default, deserialize_with = "nullable")]
    pub listeners: Vec<Listener>,
}

/// A serde default of true (also the runtime file's).
pub(super) fn yes() -> bool {
    true
}

fn bool_default_true<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(true))
}

fn de_port_u16<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    match opt_u32_lenient(d)? {
        Some(p) if p <= 65535 => Ok(p as u16),
        Some(p) => Err(de::Error::custom(format!("{p} is not a port (0-65535)"))),
        None => Err(de::Error::custom("a port is required")),
    }
}

/// Services this appliance runs (`services` keys).
pub const SUPPORTED_SERVICES: &[&str] = &["loadbalancer"];

/// The whole configuration document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AstaraConfig {
    #[serde(default, deserialize_with = "opt_string")]
    pub tenant_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub hostname: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub networks: Vec<Network>,
    #[serde(default, deserialize_with = "opt_ip")]
    pub default_v4_gateway: Option<IpAddr>,
    #[serde(default, deserialize_with = "nullable")]
    pub static_routes: Vec<StaticRoute>,
    #[serde(default, deserialize_with = "nullable")]
    pub floating_ips: Vec<FloatingIp>,
    #[serde(default, deserialize_with = "opt_u32_lenient")]
    pub asn: Option<u32>,
    #[serde(default, deserialize_with = "opt_u32_lenient")]
    pub neighbor_asn: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    pub address_book: BTreeMap<String, Vec<Cidr>>,
    #[serde(default, deserialize_with = "nullable")]
    pub anchors: Vec<Anchor>,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: BTreeMap<String, Vec<Cidr>>,
    #[serde(default)]
    pub orchestrator: Option<Orchestrator>,
    #[serde(default, deserialize_with = "nullable")]
    pub ha_resource: bool,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub ha_config: serde_json::Value,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub vpn: serde_json::Value,
    #[serde(default, deserialize_with = "nullable")]
    pub services: BTreeMap<String, serde_json::Value>,
}

/// Why a document was refused. `Invalid` maps to HTTP 422, `Unsupported`
/// (a service this appliance does not run) to 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("The config failed to deserialize.\n{0}")]
    Deserialize(String),
    #[error("The config failed to validate.\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
    #[error("This appliance cannot service requested advanced service: {0}")]
    Unsupported(String),
}

impl AstaraConfig {
    /// Parses a JSON document; errors name the field path.
    pub fn from_json(text: &[u8]) -> Result<AstaraConfig, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                ConfigError::Deserialize(inner.to_string())
            } else {
                ConfigError::Deserialize(format!("{path}: {inner}"))
            }
        })
    }

    /// The load-balancer service, typed (None when absent).
    pub fn loadbalancer(&self) -> Result<Option<LoadBalancer>, ConfigError> {
        match self.services.get("loadbalancer") {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => serde_path_to_error::deserialize(v.clone())
                .map(Some)
                .map_err(|e| ConfigError::Deserialize(format!("services.loadbalancer.{}: {}", e.path(), e.inner()))),
        }
    }

    pub fn network_of(&self, ifname: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.interface.ifname == ifname)
    }

    /// Checks everything that can be checked without knowing the ports.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for k in self.services.keys() {
            if !SUPPORTED_SERVICES.contains(&k.as_str()) {
                return Err(ConfigError::Unsupported(k.clone()));
            }
        }
        let mut errs = Vec::new();
        if self.tenant_id.is_none() {
            errs.push("tenant_id: Config does not contain a tenant_id".to_string());
        }
        if self.hostname.is_none() {
            errs.push("hostname: Config does not contain a hostname".to_string());
        }
        let mut ifnames = HashSet::new();
        let mut connected: Vec<(String, Cidr)> = Vec::new();
        for (i, n) in self.networks.iter().enumerate() {
            let at = format!("networks[{i}]");
            if n.network_id.trim().is_empty() {
                errs.push(format!("{at}.network_id: must not be empty"));
            }
            let ifn = &n.interface.ifname;
            if ifn.trim().is_empty() {
                errs.push(format!("{at}.interface.ifname: must not be empty"));
            } else if !ifnames.insert(ifn.clone()) {
                errs.push(format!("{at}.interface.ifname: {ifn} is used by two networks"));
            }
            if let Some(mtu) = n.interface.mtu
                && !(68..=65535).contains(&mtu)
            {
                errs.push(format!("{at}.interface.mtu: {mtu} is outside 68..65535"));
            }
            for (j, a) in n.interface.addresses.iter().enumerate() {
                let at = format!("{at}.interface.addresses[{j}]");
                if let Err(e) = check_interface_address(a) {
                    errs.push(format!("{at}: {a} {e}"));
                    continue;
                }
                if let Some((other, c)) = connected.iter().find(|(o, c)| o != ifn && c.overlaps(a)) {
                    errs.push(format!("{at}: {a} overlaps {c} on {other}"));
                }
                connected.push((ifn.clone(), *a));
            }
        }
        for (i, f) in self.floating_ips.iter().enumerate() {
            if f.floating_ip.is_ipv4() != f.fixed_ip.is_ipv4() {
                errs.push(format!("floating_ips[{i}]: floating_ip and fixed_ip are of different families"));
            }
        }
        for (ai, a) in self.anchors.iter().enumerate() {
            for (ri, r) in a.rules.iter().enumerate() {
                let at = format!("anchors[{ai}].rules[{ri}]");
                for (field, ifn) in [("interface", &r.interface), ("destination_interface", &r.destination_interface)] {
                    if let Some(ifn) = ifn
                        && !ifnames.contains(ifn)
                    {
                        errs.push(format!("{at}.{field}: {ifn} does not exist"));
                    }
                }
                for (field, addr) in [("source", &r.source), ("destination", &r.destination)] {
                    if let Some(AddrSpec::Table(t)) = addr
                        && !self.address_book.contains_key(t)
                    {
                        errs.push(format!("{at}.{field}: {t} is not in the address book"));
                    }
                }
                if let Some(p) = &r.protocol
                    && protocol_number(p).is_none()
                {
                    errs.push(format!("{at}.protocol: unknown protocol '{p}'"));
                }
            }
        }
        match self.loadbalancer() {
            // (The reason alone, among the others: not under a second
            // "failed to deserialize" heading.)
            Err(ConfigError::Deserialize(reason)) => errs.push(reason),
            Err(e) => errs.push(e.to_string()),
            Ok(_) => {}
        }
        if errs.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(errs)) }
    }
}

/// An interface address must be a usable unicast host address of its prefix.
fn check_interface_address(a: &Cidr) -> Result<(), &'static str> {
    match a.addr {
        IpAddr::V4(v) => {
            if v.is_unspecified() || v.is_loopback() || v.is_multicast() || v.is_broadcast() || v.octets()[0] >= 240 {
                return Err("is not a unicast address");
            }
            if a.len == 0 {
                return Err("has a zero-length prefix");
            }
            if a.len < 31 && (a.bits() == a.network() || Some(u32::from(v)) == a.broadcast_v4()) {
                return Err("is the network or broadcast address of its prefix");
            }
        }
        IpAddr::V6(v) => {
            if v.is_unspecified() || v.is_loopback() || v.is_multicast() {
                return Err("is not a unicast address");
            }
            if a.len == 0 {
                return Err("has a zero-length prefix");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A document shaped exactly like the orchestrator's build_config output.
    pub const ORCHESTRATOR_DOC: &str = r#"{
      "asn": 64512, "neighbor_asn": 64512,
      "default_v4_gateway": "172.16.77.1",
      "networks": [
        {"interface": {"ifname": "ge0", "addresses": ["fdca:3ba5:a17a:acda:f816:3eff:fe66:33b6/64"]},
         "network_id": "mgt", "v4_conf_service": "static", "v6_conf_service": "static",
         "network_type": "management",
         "subnets": [{"cidr": "fdca:3ba5:a17a:acda::/64", "dhcp_enabled": true, "dns_nameservers": [],
                      "host_routes": [], "gateway_ip": "fdca:3ba5:a17a:acda::1"}],
         "allocations": []},
        {"interface": {"ifname": "ge1", "addresses": ["172.16.77.50/24"]},
         "network_id": "ext", "v4_conf_service": "static", "v6_conf_service": "static",
         "network_type": "external",
         "subnets": [{"cidr": "172.16.77.0/24", "dhcp_enabled": false, "dns_nameservers": null,
                      "host_routes": [], "gateway_ip": "172.16.77.1"}],
         "allocations": []},
        {"interface": {"ifname": "ge2", "addresses": ["192.168.0.1/24", "fdd6:a1fa:cfa8:9df::1/64"]},
         "network_id": "int", "v4_conf_service": "static", "v6_conf_service": "static",
         "network_type": "internal",
         "subnets": [{"cidr": "192.168.0.0/24", "dhcp_enabled": true, "dns_nameservers": ["8.8.8.8"],
                      "host_routes": [{"destination": "10.10.0.0/16", "nexthop": "192.168.0.254"}],
                      "gateway_ip": "192.168.0.1"},
                     {"cidr": "fdd6:a1fa:cfa8:9df::/64", "dhcp_enabled": false, "dns_nameservers": [],
                      "host_routes": [], "gateway_ip": ""}],
         "allocations": [{"ip_addresses": {"192.168.0.5": true, "fdd6:a1fa:cfa8:9df::5": false},
                          "device_id": "vm-1", "hostname": "192-168-0-5.local",
                          "mac_address": "fa:16:3e:00:00:05"}]}
      ],
      "labels": {},
      "floating_ips": [{"floating_ip": "172.16.77.60", "fixed_ip": "192.168.0.5"}],
      "tenant_id": "tenant-1", "hostname": "ak-tenant-1",
      "orchestrator": {"address": "fdca:3ba5:a17a:acda::1", "metadata_port": 9697},
      "some_future_field": {"ignored": true}
    }"#;

    #[test]
    fn parses_orchestrator_document() {
        let c = AstaraConfig::from_json(ORCHESTRATOR_DOC.as_bytes()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.networks.len(), 3);
        assert_eq!(c.networks[1].network_type, NetworkType::External);
        assert_eq!(c.default_v4_gateway, Some("172.16.77.1".parse().unwrap()));
        assert_eq!(c.networks[2].subnets[1].gateway_ip, None);
        assert_eq!(c.networks[2].subnets[0].host_routes[0].nexthop, "192.168.0.254".parse::<IpAddr>().unwrap());
        assert_eq!(c.networks[2].allocations[0].mac_address.to_string(), "fa:16:3e:00:00:05");
        assert_eq!(c.orchestrator.as_ref().unwrap().metadata_port, Some(9697));
        // Round trip through our own serialisation keeps the meaning.
        let again = AstaraConfig::from_json(serde_json::to_string(&c).unwrap().as_bytes()).unwrap();
        assert_eq!(again, c);
    }

    /// An interface object sent back as an appliance API reported it is
    /// taken: the Akanda API's `"lladdr": "null"` (no MAC) and one group as
    /// a string, and the Linux appliance's full object. A MAC that is not
    /// one is still refused, naming the field.
    #[test]
    fn interface_objects_as_the_appliance_api_reported_them() {
        let ge1 = r#"{"ifname": "ge1", "addresses": ["172.16.77.50/24"]}"#;
        let with = |obj: &str| ORCHESTRATOR_DOC.replace(ge1, obj);
        let akanda = with(
            r#"{"ifname": "ge1", "addresses": ["172.16.77.50/24"], "lladdr": "null", "groups": "egress",
                "media": "null", "state": "down", "mtu": 1500, "description": ""}"#,
        );
        let c = AstaraConfig::from_json(akanda.as_bytes()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.networks[1].interface.lladdr, None);
        assert_eq!(c.networks[1].interface.groups, ["egress"]);
        let linux = with(
            r#"{"ifname": "ge1", "addresses": ["172.16.77.50/24"], "lladdr": "fa:16:3e:4d:bf:12", "groups": [],
                "flags": null, "media": "Ethernet autoselect", "state": "up", "mtu": 1500, "description": ""}"#,
        );
        let c = AstaraConfig::from_json(linux.as_bytes()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.networks[1].interface.lladdr.map(|m| m.to_string()).as_deref(), Some("fa:16:3e:4d:bf:12"));
        assert!(c.networks[1].interface.groups.is_empty() && c.networks[1].interface.flags.is_empty());
        let two = with(r#"{"ifname": "ge1", "addresses": ["172.16.77.50/24"], "groups": ["egress", "x"]}"#);
        let c = AstaraConfig::from_json(two.as_bytes()).unwrap();
        assert_eq!(c.networks[1].interface.groups, ["egress", "x"]);
        let bad = with(r#"{"ifname": "ge1", "addresses": ["172.16.77.50/24"], "lladdr": "nil"}"#);
        let e = AstaraConfig::from_json(bad.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("networks[1].interface.lladdr"), "{e}");
        let bad = with(r#"{"ifname": "ge1", "addresses": ["172.16.77.50/24"], "groups": 5}"#);
        let e = AstaraConfig::from_json(bad.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("networks[1].interface.groups"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let bad = ORCHESTRATOR_DOC.replace("172.16.77.50/24", "172.16.77.500/24");
        let e = AstaraConfig::from_json(bad.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("networks[1].interface.addresses[0]"), "{e}");
        let bad = ORCHESTRATOR_DOC.replace("\"network_type\": \"internal\"", "\"network_type\": \"weird\"");
        let e = AstaraConfig::from_json(bad.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("networks[2].network_type"), "{e}");
        let e = AstaraConfig::from_json(b"{\"networks\": 5}").unwrap_err().to_string();
        assert!(e.contains("networks"), "{e}");
        assert!(AstaraConfig::from_json(b"[1,2]").is_err());
        assert!(AstaraConfig::from_json(b"{").is_err());
    }

    #[test]
    fn validation_messages() {
        let mut c = AstaraConfig::from_json(ORCHESTRATOR_DOC.as_bytes()).unwrap();
        c.tenant_id = None;
        c.anchors = vec![Anchor {
            name: "a".into(),
            rules: vec![
                serde_json::from_str(
                    r#"{"action": "block", "interface": "ge9", "source": "blocked", "destination_port": "22"}"#,
                )
                .unwrap(),
            ],
        }];
        c.networks[2].interface.addresses.push("172.16.77.99/25".parse().unwrap());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("tenant_id"), "{e}");
        assert!(e.contains("anchors[0].rules[0].interface: ge9 does not exist"), "{e}");
        assert!(e.contains("anchors[0].rules[0].source: blocked is not in the address book"), "{e}");
        assert!(e.contains("overlaps 172.16.77.50/24 on ge1"), "{e}");
        let mut c = AstaraConfig::from_json(ORCHESTRATOR_DOC.as_bytes()).unwrap();
        c.services.insert("vpnaas".into(), serde_json::json!({}));
        assert_eq!(c.validate(), Err(ConfigError::Unsupported("vpnaas".into())));
        let mut c = AstaraConfig::from_json(ORCHESTRATOR_DOC.as_bytes()).unwrap();
        c.networks[1].interface.addresses[0] = "172.16.77.0/24".parse().unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("network or broadcast"));
    }

    #[test]
    fn static_routes_both_forms_and_rule_ports() {
        let c = AstaraConfig::from_json(
            br#"{"static_routes": [["10.0.0.0/8", "192.168.0.254"], {"destination": "10.1.0.0/16", "next_hop": "192.168.0.253"}],
                 "anchors": [{"name": "x", "rules": [{"action": "pass", "protocol": "imcp", "source": "any",
                    "destination": "10.0.0.0/8", "destination_port": "8000:8080", "source_port": 53}]}]}"#,
        )
        .unwrap();
        assert_eq!(c.static_routes[1].destination.to_string(), "10.1.0.0/16");
        let r = &c.anchors[0].rules[0];
        assert_eq!(r.source, None);
        assert_eq!(r.destination_port, Some(PortRange { lo: 8000, hi: 8080 }));
        assert_eq!(r.source_port, Some(PortRange { lo: 53, hi: 53 }));
        assert_eq!(protocol_number(r.protocol.as_deref().unwrap()), Some(1));
        assert!(AstaraConfig::from_json(br#"{"static_routes": [["10.0.0.0/8"]]}"#).is_err());
        assert!(
            AstaraConfig::from_json(
                br#"{"anchors": [{"name": "x", "rules": [{"action": "pass", "destination_port": "90:80"}]}]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn cidr_math() {
        let c: Cidr = "192.168.0.77/24".parse().unwrap();
        assert_eq!(c.network(), 0xc0a8_0000);
        assert_eq!(c.broadcast_v4(), Some(0xc0a8_00ff));
        assert!(c.contains("192.168.0.200".parse().unwrap()));
        assert!(!c.contains("192.168.1.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let h: Cidr = "10.0.0.1".parse().unwrap();
        assert_eq!(h.len, 32);
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        let v6: Cidr = "fdd6::1/64".parse().unwrap();
        assert!(v6.contains("fdd6::ffff".parse().unwrap()));
        assert!(v6.overlaps(&"fdd6::/48".parse().unwrap()));
        assert_eq!(v6.broadcast_v4(), None);
    }

    #[test]
    fn loadbalancer_service_parses() {
        let doc = r#"{"tenant_id": "t", "hostname": "h", "services": {"loadbalancer": {
            "id": "lb1", "tenant_id": "t", "name": "balancer1", "admin_state_up": true, "status": "ACTIVE",
            "vip_address": "192.168.0.137",
            "vip_port": {"id": "p", "mac_address": "fa:16:3e:a0:80:82", "network_id": "n",
                         "fixed_ips": [{"subnet_id": "s", "ip_address": "192.168.0.137"}]},
            "listeners": [{"id": "l", "name": "listener1", "protocol": "HTTP", "protocol_port": 80, "admin_state_up": true,
                "default_pool": {"id": "p1", "lb_algorithm": "ROUND_ROBIN", "protocol": "HTTP", "healthmonitor": null,
                    "session_persistence": null,
                    "members": [{"id": "m", "address": "192.168.0.194", "protocol_port": 80, "weight": 1,
                                 "admin_state_up": true, "subnet": null}]}}]}}}"#;
        let c = AstaraConfig::from_json(doc.as_bytes()).unwrap();
        c.validate().unwrap();
        let lb = c.loadbalancer().unwrap().unwrap();
        assert_eq!(lb.listeners[0].default_pool.as_ref().unwrap().members[0].protocol_port, 80);
        let bad = doc.replace("\"protocol_port\": 80, \"weight\"", "\"protocol_port\": 70000, \"weight\"");
        let c = AstaraConfig::from_json(bad.as_bytes()).unwrap();
        let e = c.validate().unwrap_err().to_string();
        // One heading, then the reason naming the field.
        assert!(e.starts_with("The config failed to validate.\nservices.loadbalancer.listeners[0]"), "{e}");
        assert!(e.contains("protocol_port") && !e.contains("deserialize"), "{e}");
    }
}
