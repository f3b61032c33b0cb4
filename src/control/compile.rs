//! Compiles a validated Astara document and the appliance's ports into a
//! routing [`Snapshot`]: connected and local routes from interface
//! addresses, the default gateway, `static_routes` and subnet `host_routes`
//! (several next hops for one destination become an ECMP group), and
//! neighbours seeded from `allocations` and the runtime's static entries.

use super::model::{AstaraConfig, Cidr, ConfigError, NetworkType, ip_bits};
use super::policy::{compile_acl, compile_nat};
use crate::packet::Mac;
pub use crate::port::PortSpec;
use crate::stage::{AdjKind, Adjacency, Filtering, NatConfig, PortInfo, PortRole, Snapshot};
use crate::table::lpm4::DEFAULT_TBL8_GROUPS;
use crate::table::lpm6::DEFAULT_GROUPS6;
use crate::table::{Lpm4Builder, Lpm6Builder, NeighborSource, NeighborTable};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// A neighbour entry the operator pins (a gateway with no allocation).
#[derive(Debug, Clone, PartialEq)]
pub struct StaticNeighbor {
    pub port: String,
    pub ip: IpAddr,
    pub mac: Mac,
}

#[derive(Debug, Clone)]
pub struct CompileOptions {
    pub tbl8_groups: usize,
    pub lpm6_groups: usize,
    pub neighbors: Vec<StaticNeighbor>,
    pub generation: u64,
    /// RFC 4787 filtering of the masquerade (runtime `[nat] filtering`).
    pub filtering: Filtering,
    /// The load balancer's settings (runtime `[lb]`).
    pub lb: super::lb::LbOptions,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            tbl8_groups: DEFAULT_TBL8_GROUPS,
            lpm6_groups: DEFAULT_GROUPS6,
            neighbors: Vec::new(),
            generation: 1,
            filtering: Filtering::default(),
            lb: Default::default(),
        }
    }
}

/// The result: the snapshot, the routes installed (is IPv4, network,
/// length, adjacency) for listing, and what was accepted but not applied.
pub struct Compiled {
    pub snapshot: Snapshot,
    pub routes: Vec<(bool, u128, u8, u32)>,
    pub warnings: Vec<String>,
}

/// The snapshot in force before any document: every port down, nothing
/// routed, only the host-stack scopes (IPv6 multicast, link-local) local.
pub fn empty_snapshot(ports: &[PortSpec], generation: u64) -> Result<Snapshot, ConfigError> {
    let fib4 = Lpm4Builder::with_tbl8_groups(1);
    let mut fib6 = Lpm6Builder::with_groups(1);
    let _ = fib6.add(0xff00 << 112, 8, ADJ_LOCAL);
    let _ = fib6.add(0xfe80 << 112, 10, ADJ_LOCAL);
    let table_err = |e: crate::table::LpmError| invalid(format!("route table: {e}"));
    Ok(Snapshot {
        generation,
        ports: ports
            .iter()
            .map(|p| PortInfo { name: p.name.clone(), mac: p.mac, mtu: p.mtu, role: PortRole::Other, up: false })
            .collect(),
        fib4: Arc::new(fib4.build().map_err(table_err)?),
        fib6: Arc::new(fib6.build().map_err(table_err)?),
        adj: vec![Adjacency::local(), Adjacency::blackhole()],
        ecmp: Vec::new(),
        neighbors: NeighborTable::new(),
        nat: NatConfig { metadata: vec![false; ports.len()], ..Default::default() },
        acl: Arc::default(),
        own: Vec::new(),
        lb: Arc::default(),
    })
}

/// Human-readable routes: (destination, kind, interface, gateways).
pub fn describe_routes(
    snap: &Snapshot,
    routes: &[(bool, u128, u8, u32)],
) -> Vec<(String, &'static str, String, Vec<String>)> {
    let ip = |v4: bool, a: u128| {
        if v4 { std::net::Ipv4Addr::from(a as u32).to_string() } else { std::net::Ipv6Addr::from(a).to_string() }
    };
    let port = |p: u16| snap.port(p).map_or(String::new(), |i| i.name.clone());
    routes
        .iter()
        .map(|&(v4, net, len, a)| {
            let dst = cidr_text(v4, net, len);
            let adj = snap.adj.get(a as usize).copied().unwrap_or_else(Adjacency::blackhole);
            match adj.kind {
                AdjKind::Local => (dst, "local", String::new(), Vec::new()),
                AdjKind::Blackhole => (dst, "blackhole", String::new(), Vec::new()),
                AdjKind::Connected => (dst, "connected", port(adj.port), Vec::new()),
                AdjKind::Gateway => (dst, "gateway", port(adj.port), vec![ip(adj.gw_v4, adj.gw)]),
                AdjKind::Ecmp => {
                    let members = snap.ecmp.iter().skip(adj.ecmp_start as usize).take(adj.ecmp_len as usize);
                    let m: Vec<Adjacency> = members.filter_map(|&i| snap.adj.get(i as usize).copied()).collect();
                    let ifs: Vec<String> = m.iter().map(|a| port(a.port)).collect();
                    (dst, "ecmp", ifs.join(","), m.iter().map(|a| ip(a.gw_v4, a.gw)).collect())
                }
            }
        })
        .collect()
}

/// `ge2` sorts before `ge10`.
fn natural_key(s: &str) -> (String, u64) {
    let digits = s.chars().rev().take_while(|c| c.is_ascii_digit()).count();
    let (head, tail) = s.split_at(s.len() - digits);
    (head.to_string(), tail.parse().unwrap_or(0))
}

/// Ports for a document run without a runtime file (`replay`, tests): one per
/// interface in natural name order, MAC from `lladdr` or a locally
/// administered `02:ac:da:00:00:NN`, MTU from the interface or 1500 (at
/// most `MAX_MTU`, as a configured port).
pub fn ports_from_config(cfg: &AstaraConfig) -> Vec<PortSpec> {
    let mut ifs: Vec<_> = cfg.networks.iter().map(|n| &n.interface).collect();
    ifs.sort_by_key(|i| natural_key(&i.ifname));
    ifs.iter()
        .enumerate()
        .map(|(k, i)| PortSpec {
            name: i.ifname.clone(),
            mac: i.lladdr.unwrap_or(Mac([0x02, 0xac, 0xda, 0, (k >> 8) as u8, k as u8])),
            mtu: i.mtu.map_or(1500, |m| m.min(crate::packet::MAX_MTU as u32) as u16),
        })
        .collect()
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(vec![msg.into()])
}

/// Where a route came from, for messages (formatted only when one is shown).
#[derive(Debug, Clone, Copy)]
enum RouteSource {
    DefaultV4,
    /// A subnet's gateway as a default route (IPv6 on the external
    /// network; IPv4 on a load balancer's network).
    SubnetGateway(usize, usize),
    Static(usize),
    Host(usize, usize, usize),
}

impl std::fmt::Display for RouteSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            RouteSource::DefaultV4 => write!(f, "default_v4_gateway"),
            RouteSource::SubnetGateway(i, j) => write!(f, "networks[{i}].subnets[{j}].gateway_ip"),
            RouteSource::Static(k) => write!(f, "static_routes[{k}]"),
            RouteSource::Host(i, j, k) => write!(f, "networks[{i}].subnets[{j}].host_routes[{k}]"),
        }
    }
}

struct Builder<'a> {
    ports: &'a [PortSpec],
    adj: Vec<Adjacency>,
    ecmp: Vec<u32>,
    connected_adj: HashMap<u16, u32>,
    /// Gateway address → its adjacency (one per gateway).
    gateway_adj: HashMap<IpAddr, u32, ahash::RandomState>,
    /// (prefix, port) of every interface address.
    connected: Vec<(Cidr, u16)>,
    warnings: Vec<String>,
}

const ADJ_LOCAL: u32 = 0;

impl Builder<'_> {
    fn port_index(&self, name: &str) -> Option<u16> {
        self.ports.iter().position(|p| p.name == name).map(|i| i as u16)
    }

    fn connected_adj(&mut self, port: u16) -> u32 {
        *self.connected_adj.entry(port).or_insert_with(|| {
            self.adj.push(Adjacency::connected(port));
            (self.adj.len() - 1) as u32
        })
    }

    /// The port on whose connected prefix `ip` lies (longest prefix wins).
    fn on_link(&self, ip: IpAddr) -> Option<u16> {
        self.connected.iter().filter(|(c, _)| c.contains(ip)).max_by_key(|(c, _)| c.len).map(|&(_, p)| p)
    }

    fn is_own_address(&self, ip: IpAddr) -> bool {
        self.connected.iter().any(|(c, _)| c.addr == ip)
    }

    fn gateway_adj(&mut self, gw: IpAddr, at: RouteSource) -> Result<u32, ConfigError> {
        if let Some(&a) = self.gateway_adj.get(&gw) {
            return Ok(a);
        }
        if self.is_own_address(gw) {
            return Err(invalid(format!("{at}: next hop {gw} is an address of this router")));
        }
        let port =
            self.on_link(gw).ok_or_else(|| invalid(format!("{at}: next hop {gw} is not on any connected network")))?;
        self.adj.push(Adjacency {
            kind: AdjKind::Gateway,
            port,
            gw: ip_bits(gw),
            gw_v4: gw.is_ipv4(),
            mac: None,
            ecmp_start: 0,
            ecmp_len: 0,
        });
        let a = (self.adj.len() - 1) as u32;
        self.gateway_adj.insert(gw, a);
        Ok(a)
    }
}

/// Validates `cfg` against the ports and builds the snapshot.
pub fn compile(cfg: &AstaraConfig, ports: &[PortSpec], opts: &CompileOptions) -> Result<Compiled, ConfigError> {
    cfg.validate()?;
    if ports.len() > u16::MAX as usize {
        return Err(invalid("too many ports"));
    }
    let mut b = Builder {
        ports,
        adj: vec![Adjacency::local(), Adjacency::blackhole()],
        ecmp: Vec::new(),
        connected_adj: HashMap::new(),
        gateway_adj: HashMap::default(),
        connected: Vec::new(),
        warnings: Vec::new(),
    };
    let mut port_info: Vec<PortInfo> = ports
        .iter()
        .map(|p| PortInfo { name: p.name.clone(), mac: p.mac, mtu: p.mtu, role: PortRole::Other, up: false })
        .collect();
    let mut fib4 = Lpm4Builder::with_tbl8_groups(opts.tbl8_groups);
    let mut fib6 = Lpm6Builder::with_groups(opts.lpm6_groups);
    let table_err = |e: crate::table::LpmError| invalid(format!("route table: {e}"));

    // Interfaces: ports, connected and local routes.
    // The port of each network: by the interface's MAC when it names one
    // of ours (the orchestrator binds names to MACs), else by name.
    let mut net_port: Vec<u16> = Vec::with_capacity(cfg.networks.len());
    for (i, n) in cfg.networks.iter().enumerate() {
        let ifn = &n.interface.ifname;
        let by_mac = n.interface.lladdr.and_then(|m| ports.iter().position(|p| p.mac == m)).map(|i| i as u16);
        let port = by_mac.or_else(|| b.port_index(ifn)).ok_or_else(|| {
            let names: Vec<_> = ports.iter().map(|p| p.name.as_str()).collect();
            invalid(format!(
                "networks[{i}].interface.ifname: {ifn} is not a port of this appliance (ports: {})",
                names.join(", ")
            ))
        })?;
        if net_port.contains(&port) {
            return Err(invalid(format!(
                "networks[{i}].interface: port {} is bound to two networks",
                ports[port as usize].name
            )));
        }
        net_port.push(port);
        let info = &mut port_info[port as usize];
        info.up = true;
        info.role = match n.network_type {
            NetworkType::External => PortRole::External,
            NetworkType::Internal => PortRole::Internal,
            NetworkType::Management => PortRole::Management,
            _ => PortRole::Other,
        };
        if let Some(mtu) = n.interface.mtu {
            if mtu > info.mtu as u32 {
                b.warnings.push(format!(
                    "networks[{i}].interface.mtu: {mtu} is above port {}'s {} (the largest this data plane forwards at is {}: no jumbo frames); the port keeps {}",
                    info.name,
                    info.mtu,
                    crate::packet::MAX_MTU,
                    info.mtu
                ));
            } else {
                info.mtu = mtu as u16;
            }
        }
        for a in &n.interface.addresses {
            b.connected.push((*a, port));
        }
    }
    let mut installed: Vec<(bool, u128, u8, u32)> = Vec::new();
    for &(c, port) in &b.connected.clone() {
        let conn = b.connected_adj(port);
        if c.is_v4() {
            fib4.add(c.network() as u32, c.len, conn).map_err(table_err)?;
            fib4.add(c.bits() as u32, 32, ADJ_LOCAL).map_err(table_err)?;
            if let Some(bc) = c.broadcast_v4() {
                fib4.add(bc, 32, ADJ_LOCAL).map_err(table_err)?;
                installed.push((true, bc as u128, 32, ADJ_LOCAL));
            }
            installed.push((true, c.network(), c.len, conn));
            installed.push((true, c.bits(), 32, ADJ_LOCAL));
        } else {
            fib6.add(c.network(), c.len, conn).map_err(table_err)?;
            fib6.add(c.bits(), 128, ADJ_LOCAL).map_err(table_err)?;
            installed.push((false, c.network(), c.len, conn));
            installed.push((false, c.bits(), 128, ADJ_LOCAL));
        }
    }
    // IPv6 multicast and link-local scope go to the host stack (IPv4
    // multicast and broadcast are recognised by class in the parse stage).
    fib6.add(0xff00 << 112, 8, ADJ_LOCAL).map_err(table_err)?;
    fib6.add(0xfe80 << 112, 10, ADJ_LOCAL).map_err(table_err)?;

    // Routes through gateways, grouped by destination (ECMP): one vector,
    // sorted by destination then by where each route came from, so groups
    // are contiguous and their next hops keep document order.
    let mut routes: Vec<(bool, u128, u8, usize, IpAddr, RouteSource)> = Vec::new();
    let mut add_route = |dst: Cidr, nh: IpAddr, at: RouteSource| {
        routes.push((dst.is_v4(), dst.network(), dst.len, routes.len(), nh, at));
    };
    // Default routes, as the appliance set them (its `update_default_gateway`):
    // `default_v4_gateway` when the document has one; for each family still
    // without one, the gateway of the external network's first subnet of
    // that family (the orchestrator leaves `default_v4_gateway` out while it
    // sees no external address yet); a load balancer without an external
    // network uses its VIP subnet's gateway. A gateway derived from a
    // subnet that is not on a connected network (the external interface
    // has no address of that family yet) installs nothing: a warning, not
    // a refused document, since the appliance's own attempt failed alone.
    let subnet_gateway = |t: NetworkType, v4: bool| {
        cfg.networks.iter().enumerate().filter(|(_, n)| n.network_type == t).find_map(|(i, n)| {
            n.subnets
                .iter()
                .enumerate()
                .find_map(|(j, s)| s.gateway_ip.filter(|g| g.is_ipv4() == v4).map(|g| (i, j, g)))
        })
    };
    // (Neutron lets a subnet's gateway sit outside it, reached by an
    // on-link route; the appliance took such a document.)
    for (i, n) in cfg.networks.iter().enumerate() {
        for (j, s) in n.subnets.iter().enumerate() {
            if let Some(g) = s.gateway_ip.filter(|g| !s.cidr.contains(*g)) {
                b.warnings.push(format!("networks[{i}].subnets[{j}].gateway_ip: {g} is outside {}", s.cidr));
            }
        }
    }
    let mut derived: Vec<(Cidr, IpAddr, RouteSource)> = Vec::new();
    if let Some(gw) = cfg.default_v4_gateway {
        if !gw.is_ipv4() {
            return Err(invalid(format!("default_v4_gateway: {gw} is not an IPv4 address")));
        }
        add_route("0.0.0.0/0".parse().unwrap(), gw, RouteSource::DefaultV4);
    } else if let Some((i, j, gw)) = subnet_gateway(NetworkType::External, true) {
        derived.push(("0.0.0.0/0".parse().unwrap(), gw, RouteSource::SubnetGateway(i, j)));
    } else if cfg.loadbalancer()?.is_some()
        && let Some((i, j, gw)) = subnet_gateway(NetworkType::Loadbalancer, true)
    {
        // A load-balancer appliance has no external network: clients on
        // other subnets are answered through the VIP subnet's gateway.
        derived.push(("0.0.0.0/0".parse().unwrap(), gw, RouteSource::SubnetGateway(i, j)));
    }
    if let Some((i, j, gw)) = subnet_gateway(NetworkType::External, false) {
        derived.push(("::/0".parse().unwrap(), gw, RouteSource::SubnetGateway(i, j)));
    }
    for (dst, gw, at) in derived {
        if b.on_link(gw).is_some() && !b.is_own_address(gw) {
            add_route(dst, gw, at);
        } else {
            b.warnings.push(format!(
                "{at}: {gw} is not a gateway on a connected network of this router; no default route through it"
            ));
        }
    }
    for (k, r) in cfg.static_routes.iter().enumerate() {
        if r.destination.is_v4() != r.next_hop.is_ipv4() {
            return Err(invalid(format!("static_routes[{k}]: destination and next hop are of different families")));
        }
        add_route(r.destination, r.next_hop, RouteSource::Static(k));
    }
    // Subnet host routes are the tenant's own (Neutron extra routes): the
    // appliance skipped one it could not install and applied the rest ("a
    // failure to apply one of these custom rules should not cause an
    // overall router failure"), so one with an unusable next hop is a
    // warning here, where a `static_routes` entry refuses the document.
    for (i, n) in cfg.networks.iter().enumerate() {
        for (j, s) in n.subnets.iter().enumerate() {
            for (k, r) in s.host_routes.iter().enumerate() {
                let at = RouteSource::Host(i, j, k);
                let nh = r.nexthop;
                let why = if r.destination.is_v4() != nh.is_ipv4() {
                    Some("destination and next hop are of different families")
                } else if b.is_own_address(nh) {
                    Some("the next hop is an address of this router")
                } else if b.on_link(nh).is_none() {
                    Some("the next hop is not on any connected network")
                } else {
                    None
                };
                match why {
                    Some(why) => b.warnings.push(format!("{at}: {why}; the route was not applied")),
                    None => add_route(r.destination, nh, at),
                }
            }
        }
    }
    routes.sort_unstable_by_key(|r| (r.0, r.1, r.2, r.3));
    let mut members: Vec<u32> = Vec::new();
    for group in routes.chunk_by(|a, b| (a.0, a.1, a.2) == (b.0, b.1, b.2)) {
        let (v4, net, len, _, _, at) = group[0];
        let existing = if v4 { fib4.get(net as u32, len) } else { fib6.get(net, len) };
        if existing.is_some() {
            b.warnings.push(format!(
                "{at}: {} is a connected or local prefix; the route was not applied",
                cidr_text(v4, net, len)
            ));
            continue;
        }
        members.clear();
        for r in group {
            let a = b.gateway_adj(r.4, r.5)?;
            if !members.contains(&a) {
                members.push(a);
            }
        }
        let a = if members.len() == 1 {
            members[0]
        } else {
            let start = b.ecmp.len() as u32;
            b.ecmp.extend_from_slice(&members);
            b.adj.push(Adjacency {
                kind: AdjKind::Ecmp,
                ecmp_start: start,
                ecmp_len: members.len() as u32,
                ..Adjacency::local()
            });
            (b.adj.len() - 1) as u32
        };
        if v4 {
            fib4.add(net as u32, len, a).map_err(table_err)?;
        } else {
            fib6.add(net, len, a).map_err(table_err)?;
        }
        installed.push((v4, net, len, a));
    }

    // Neighbours: tenant ports from allocations, then pinned entries.
    let mut neighbors = NeighborTable::new();
    for (n, &port) in cfg.networks.iter().zip(&net_port) {
        for a in &n.allocations {
            for ip in a.ip_addresses.keys() {
                if b.on_link(*ip) == Some(port) && !b.is_own_address(*ip) {
                    insert_neighbor(&mut neighbors, port, *ip, a.mac_address, NeighborSource::Static);
                }
            }
        }
    }
    for (k, sn) in opts.neighbors.iter().enumerate() {
        let port =
            b.port_index(&sn.port).ok_or_else(|| invalid(format!("neighbors[{k}]: no port named {}", sn.port)))?;
        insert_neighbor(&mut neighbors, port, sn.ip, sn.mac, NeighborSource::Static);
    }
    for a in b.adj.iter_mut().filter(|a| a.kind == AdjKind::Gateway) {
        a.mac = if a.gw_v4 { neighbors.get_v4(a.port, a.gw as u32) } else { neighbors.get_v6(a.port, a.gw) };
    }

    // NAT and the forwarding policy.
    let mut own: Vec<(u128, bool, u16)> = b.connected.iter().map(|(c, p)| (c.bits(), c.is_v4(), *p)).collect();
    let mut warnings = std::mem::take(&mut b.warnings);
    // The load balancer: its VIP is one of the appliance's addresses (it
    // answers ARP and ping for it; traffic to a listener is balanced).
    let lb = super::lb::compile_lb(cfg, &opts.lb, |ip| b.on_link(ip), &mut warnings)?;
    for &(vip, port) in &lb.vip_addrs {
        if !own.iter().any(|&(a, v4, _)| v4 && a == vip as u128) {
            fib4.add(vip, 32, ADJ_LOCAL).map_err(table_err)?;
            installed.push((true, vip as u128, 32, ADJ_LOCAL));
            own.push((vip as u128, true, port));
        }
    }
    let nat = compile_nat(cfg, &net_port, ports.len(), &own, opts.filtering, &mut warnings)?;
    let ifport: HashMap<String, u16> =
        cfg.networks.iter().zip(&net_port).map(|(n, &p)| (n.interface.ifname.clone(), p)).collect();
    let acl = compile_acl(cfg, &ifport, &mut warnings)?;
    let nat = NatConfig { track_all: !acl.is_empty(), ..nat };
    Ok(Compiled {
        snapshot: Snapshot {
            generation: opts.generation,
            ports: port_info,
            fib4: Arc::new(fib4.build().map_err(table_err)?),
            fib6: Arc::new(fib6.build().map_err(table_err)?),
            adj: b.adj,
            ecmp: b.ecmp,
            neighbors,
            nat,
            acl: Arc::new(acl),
            own,
            lb: Arc::new(lb),
        },
        routes: installed,
        warnings,
    })
}

fn insert_neighbor(t: &mut NeighborTable, port: u16, ip: IpAddr, mac: Mac, src: NeighborSource) {
    match ip {
        IpAddr::V4(v) => t.insert_v4(port, u32::from(v), mac, src),
        IpAddr::V6(v) => t.insert_v6(port, u128::from(v), mac, src),
    }
}

fn cidr_text(v4: bool, net: u128, len: u8) -> String {
    if v4 {
        format!("{}/{len}", std::net::Ipv4Addr::from(net as u32))
    } else {
        format!("{}/{len}", std::net::Ipv6Addr::from(net))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::NO_ROUTE;

    const DOC: &str = r#"{
      "tenant_id": "t", "hostname": "h", "default_v4_gateway": "203.0.113.1",
      "networks": [
        {"network_id": "m", "network_type": "management",
         "interface": {"ifname": "ge0", "addresses": ["fdca:3ba5:a17a:acda::2/64"]}},
        {"network_id": "e", "network_type": "external",
         "interface": {"ifname": "ge1", "addresses": ["203.0.113.10/24", "2001:db8:ff::10/64"]},
         "subnets": [{"cidr": "203.0.113.0/24", "gateway_ip": "203.0.113.1"},
                     {"cidr": "2001:db8:ff::/64", "gateway_ip": "2001:db8:ff::1"}]},
        {"network_id": "i", "network_type": "internal",
         "interface": {"ifname": "ge2", "addresses": ["192.168.1.1/24"], "mtu": 1450},
         "subnets": [{"cidr": "192.168.1.0/24", "gateway_ip": "192.168.1.1",
                      "host_routes": [{"destination": "10.20.0.0/16", "nexthop": "192.168.1.254"}]}],
         "allocations": [{"mac_address": "fa:16:3e:00:00:05", "ip_addresses": {"192.168.1.5": true},
                          "hostname": "x", "device_id": "vm"}]}
      ],
      "static_routes": [["10.30.0.0/16", "192.168.1.253"], ["10.30.0.0/16", "192.168.1.254"]]
    }"#;

    fn compiled() -> Compiled {
        let cfg = AstaraConfig::from_json(DOC.as_bytes()).unwrap();
        let ports = ports_from_config(&cfg);
        let opts = CompileOptions {
            neighbors: vec![StaticNeighbor {
                port: "ge1".into(),
                ip: "203.0.113.1".parse().unwrap(),
                mac: Mac([2, 0, 0, 0, 0, 1]),
            }],
            ..Default::default()
        };
        compile(&cfg, &ports, &opts).unwrap()
    }

    fn v4(s: &str) -> u32 {
        s.parse::<std::net::Ipv4Addr>().unwrap().into()
    }

    #[test]
    fn an_mtu_above_the_port_s_is_not_taken_and_says_so() {
        let cfg = AstaraConfig::from_json(DOC.replace(r#""mtu": 1450"#, r#""mtu": 9000"#).as_bytes()).unwrap();
        // Without a runtime file the port takes the interface's MTU, at
        // most what a buffer holds.
        let mut ports = ports_from_config(&cfg);
        assert_eq!(ports[2].mtu, crate::packet::MAX_MTU);
        let c = compile(&cfg, &ports, &CompileOptions::default()).unwrap();
        assert_eq!(c.snapshot.ports[2].mtu, crate::packet::MAX_MTU);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(
            c.warnings[0].starts_with("networks[2].interface.mtu: 9000 is above port ge2's 1890"),
            "{}",
            c.warnings[0]
        );
        // A port configured at 1500 keeps 1500.
        ports[2].mtu = 1500;
        let c = compile(&cfg, &ports, &CompileOptions::default()).unwrap();
        assert_eq!(c.snapshot.ports[2].mtu, 1500);
        assert!(c.warnings[0].contains("the port keeps 1500"), "{}", c.warnings[0]);
    }

    #[test]
    fn routes_and_adjacencies() {
        let c = compiled();
        let s = &c.snapshot;
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(s.ports.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["ge0", "ge1", "ge2"]);
        assert_eq!(s.ports[2].mtu, 1450);
        assert_eq!(s.ports[0].role, PortRole::Management);
        // Own address and broadcast are local; the subnet is connected.
        assert_eq!(s.adj[s.fib4.lookup(v4("192.168.1.1")) as usize].kind, AdjKind::Local);
        assert_eq!(s.adj[s.fib4.lookup(v4("192.168.1.255")) as usize].kind, AdjKind::Local);
        let conn = s.adj[s.fib4.lookup(v4("192.168.1.77")) as usize];
        assert_eq!((conn.kind, conn.port), (AdjKind::Connected, 2));
        // Default route via the external gateway, MAC pinned by the runtime.
        let d = s.adj[s.fib4.lookup(v4("8.8.8.8")) as usize];
        assert_eq!((d.kind, d.port, d.gw as u32), (AdjKind::Gateway, 1, v4("203.0.113.1")));
        assert_eq!(d.mac, Some(Mac([2, 0, 0, 0, 0, 1])));
        // Host route, and an ECMP group of two static next hops.
        let h = s.adj[s.fib4.lookup(v4("10.20.3.4")) as usize];
        assert_eq!((h.kind, h.gw as u32, h.mac), (AdjKind::Gateway, v4("192.168.1.254"), None));
        let e = s.adj[s.fib4.lookup(v4("10.30.3.4")) as usize];
        assert_eq!((e.kind, e.ecmp_len), (AdjKind::Ecmp, 2));
        let gws: Vec<u32> = s.ecmp[e.ecmp_start as usize..][..2].iter().map(|&a| s.adj[a as usize].gw as u32).collect();
        assert_eq!(gws, [v4("192.168.1.253"), v4("192.168.1.254")]);
        // IPv6 default from the external subnet; multicast and link-local are local.
        let d6 = s.adj[s.fib6.lookup("2a00::1".parse::<std::net::Ipv6Addr>().unwrap().into()) as usize];
        assert_eq!((d6.kind, d6.port), (AdjKind::Gateway, 1));
        assert_eq!(s.adj[s.fib6.lookup(0xff02 << 112 | 1) as usize].kind, AdjKind::Local);
        assert_eq!(s.adj[s.fib6.lookup(0xfe80 << 112 | 1) as usize].kind, AdjKind::Local);
        assert_eq!(s.fib4.lookup(v4("203.0.113.10")), ADJ_LOCAL);
        // Allocations seed neighbours on their port.
        assert_eq!(s.neighbors.get_v4(2, v4("192.168.1.5")), Some("fa:16:3e:00:00:05".parse().unwrap()));
    }

    /// Without `default_v4_gateway` the appliance routed by the external
    /// subnet's gateway, as it does for IPv6.
    #[test]
    fn without_default_gateway_the_external_subnet_gateway_is_the_default() {
        for empty in ["\"default_v4_gateway\": \"\",", "\"default_v4_gateway\": null,", ""] {
            let doc = DOC.replace("\"default_v4_gateway\": \"203.0.113.1\",", empty);
            let cfg = AstaraConfig::from_json(doc.as_bytes()).unwrap();
            let c = compile(&cfg, &ports_from_config(&cfg), &CompileOptions::default()).unwrap();
            let s = &c.snapshot;
            let a = s.adj[s.fib4.lookup(v4("8.8.8.8")) as usize];
            assert_eq!((a.kind, a.gw, a.port), (AdjKind::Gateway, v4("203.0.113.1") as u128, 1), "{empty}");
            assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        }
    }

    /// A subnet gateway the router cannot reach yet (its external interface
    /// has no address of that family) gives no default route and a warning;
    /// the document is applied.
    #[test]
    fn an_unreachable_subnet_gateway_is_a_warning_not_a_refusal() {
        let v6 = |a: &str| a.parse::<std::net::Ipv6Addr>().unwrap().to_bits();
        // IPv4 only on the external interface: no IPv6 default.
        let doc = DOC.replace("\"203.0.113.10/24\", \"2001:db8:ff::10/64\"", "\"203.0.113.10/24\"");
        assert_ne!(doc, DOC);
        let cfg = AstaraConfig::from_json(doc.as_bytes()).unwrap();
        let c = compile(&cfg, &ports_from_config(&cfg), &CompileOptions::default()).unwrap();
        assert_eq!(c.snapshot.fib6.lookup(v6("2001:4860::8888")), NO_ROUTE);
        assert_ne!(c.snapshot.fib4.lookup(v4("8.8.8.8")), NO_ROUTE);
        assert!(
            c.warnings.iter().any(|w| w.contains("gateway_ip: 2001:db8:ff::1 is not a gateway on a connected network")),
            "{:?}",
            c.warnings
        );
        // No external address at all, and no default_v4_gateway: neither.
        let doc = DOC
            .replace("\"203.0.113.10/24\", \"2001:db8:ff::10/64\"", "")
            .replace("\"default_v4_gateway\": \"203.0.113.1\",", "");
        let cfg = AstaraConfig::from_json(doc.as_bytes()).unwrap();
        let c = compile(&cfg, &ports_from_config(&cfg), &CompileOptions::default()).unwrap();
        assert_eq!(c.snapshot.fib4.lookup(v4("8.8.8.8")), NO_ROUTE);
        assert_eq!(c.snapshot.fib6.lookup(v6("2001:4860::8888")), NO_ROUTE);
        assert_eq!(c.warnings.iter().filter(|w| w.contains("no default route")).count(), 2, "{:?}", c.warnings);
        // A host route with a next hop off every connected network is
        // left out, the others applied.
        let doc = DOC.replace(
            "[{\"destination\": \"10.20.0.0/16\", \"nexthop\": \"192.168.1.254\"}]",
            "[{\"destination\": \"10.21.0.0/16\", \"nexthop\": \"10.99.0.1\"},
              {\"destination\": \"10.22.0.0/16\", \"nexthop\": \"192.168.1.1\"},
              {\"destination\": \"10.20.0.0/16\", \"nexthop\": \"192.168.1.254\"}]",
        );
        assert_ne!(doc, DOC);
        let cfg = AstaraConfig::from_json(doc.as_bytes()).unwrap();
        let c = compile(&cfg, &ports_from_config(&cfg), &CompileOptions::default()).unwrap();
        let s = &c.snapshot;
        assert_eq!(s.fib4.lookup(v4("10.21.0.1")), s.fib4.lookup(v4("8.8.8.8")), "by the default route");
        assert_eq!(s.fib4.lookup(v4("10.22.0.1")), s.fib4.lookup(v4("8.8.8.8")), "by the default route");
        assert_eq!(s.adj[s.fib4.lookup(v4("10.20.0.1")) as usize].gw, v4("192.168.1.254") as u128);
        for w in [
            "host_routes[0]: the next hop is not on any connected network",
            "host_routes[1]: the next hop is an address",
        ] {
            assert!(c.warnings.iter().any(|x| x.contains(w)), "{w}: {:?}", c.warnings);
        }
        // A subnet gateway outside its subnet (Neutron allows it): a
        // warning; reachable on a connected network, it is the default.
        let doc = DOC.replace("\"default_v4_gateway\": \"203.0.113.1\",", "").replace(
            "{\"cidr\": \"203.0.113.0/24\", \"gateway_ip\": \"203.0.113.1\"}",
            "{\"cidr\": \"203.0.113.128/25\", \"gateway_ip\": \"203.0.113.1\"}",
        );
        let cfg = AstaraConfig::from_json(doc.as_bytes()).unwrap();
        let c = compile(&cfg, &ports_from_config(&cfg), &CompileOptions::default()).unwrap();
        let a = c.snapshot.adj[c.snapshot.fib4.lookup(v4("8.8.8.8")) as usize];
        assert_eq!((a.kind, a.gw), (AdjKind::Gateway, v4("203.0.113.1") as u128));
        assert!(
            c.warnings.iter().any(|w| w.contains("gateway_ip: 203.0.113.1 is outside 203.0.113.128/25")),
            "{:?}",
            c.warnings
        );
        // An explicit default_v4_gateway off every connected network is
        // still refused: the document names it.
        let doc = DOC.replace("\"default_v4_gateway\": \"203.0.113.1\"", "\"default_v4_gateway\": \"198.51.100.1\"");
        let cfg = AstaraConfig::from_json(doc.as_bytes()).unwrap();
        let e = compile(&cfg, &ports_from_config(&cfg), &CompileOptions::default()).err().unwrap().to_string();
        assert!(e.contains("default_v4_gateway: next hop 198.51.100.1 is not on any connected network"), "{e}");
    }

    #[test]
    fn bad_next_hops_and_ports_are_rejected_with_the_field() {
        let doc = DOC.replace("[\"10.30.0.0/16\", \"192.168.1.253\"]", "[\"10.30.0.0/16\", \"172.31.0.1\"]");
        let cfg = AstaraConfig::from_json(doc.as_bytes()).unwrap();
        let e = compile(&cfg, &ports_from_config(&cfg), &CompileOptions::default()).err().unwrap().to_string();
        assert!(e.contains("static_routes[0]: next hop 172.31.0.1 is not on any connected network"), "{e}");
        let doc = DOC.replace("[\"10.30.0.0/16\", \"192.168.1.253\"]", "[\"10.30.0.0/16\", \"192.168.1.1\"]");
        let cfg = AstaraConfig::from_json(doc.as_bytes()).unwrap();
        let e = compile(&cfg, &ports_from_config(&cfg), &CompileOptions::default()).err().unwrap().to_string();
        assert!(e.contains("is an address of this router"), "{e}");
        let cfg = AstaraConfig::from_json(DOC.as_bytes()).unwrap();
        let mut ports = ports_from_config(&cfg);
        ports.pop();
        let e = compile(&cfg, &ports, &CompileOptions::default()).err().unwrap().to_string();
        assert!(
            e.contains("networks[2].interface.ifname: ge2 is not a port of this appliance (ports: ge0, ge1)"),
            "{e}"
        );
        let doc = DOC.replace("\"10.20.0.0/16\"", "\"192.168.1.0/24\"");
        let cfg = AstaraConfig::from_json(doc.as_bytes()).unwrap();
        let c = compile(&cfg, &ports_from_config(&cfg), &CompileOptions::default()).unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    }

    #[test]
    fn natural_port_order() {
        let mut v = vec!["ge10", "ge2", "ge0", "eth1"];
        v.sort_by_key(|s| natural_key(s));
        assert_eq!(v, ["eth1", "ge0", "ge2", "ge10"]);
    }
}
