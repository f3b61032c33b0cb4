//! The CLI's commands (`bench`, `gen`, `replay`), kept in the library so the
//! tests can drive them directly as well as through the binary.

pub mod bench;
pub mod ctl;
pub mod memprobe;
pub mod replay;
pub mod run;

use crate::control::model::{Action, AddrSpec, Direction, Family, NetworkType, StaticRoute, ip_bits, protocol_number};
use crate::control::{AstaraConfig, CompileOptions, PortSpec, StaticNeighbor, ports_from_config};
use crate::packet::Mac;
use crate::pktgen::{
    GeneratedRoute, RefPort, RefRoute, RefRule, Rng, Scenario, Topology, Traffic, generate_routes, generate_traffic,
};
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Instant;

/// Parses `PORT:IP=MAC` (a pinned neighbour on the command line).
pub fn parse_neighbor(s: &str) -> Result<StaticNeighbor, String> {
    let err = || format!("'{s}' is not PORT:IP=MAC (e.g. ge1:203.0.113.1=fa:16:3e:00:00:01)");
    let (port, rest) = s.split_once(':').ok_or_else(err)?;
    let (ip, mac) = rest.rsplit_once('=').ok_or_else(err)?;
    Ok(StaticNeighbor {
        port: port.to_string(),
        ip: ip.parse().map_err(|_| err())?,
        mac: mac.parse().map_err(|_| err())?,
    })
}

/// Reads and parses an Astara document from a file.
pub fn load_config(path: &Path) -> Result<AstaraConfig, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    AstaraConfig::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The model of the router a document describes, for the reference checks.
pub fn topology(cfg: &AstaraConfig, ports: &[PortSpec], neighbors: &[StaticNeighbor]) -> Topology {
    let mut ref_ports: Vec<RefPort> = ports
        .iter()
        .map(|p| RefPort {
            name: p.name.clone(),
            mac: p.mac.0,
            mtu: p.mtu,
            management: false,
            internal: false,
            addrs: Vec::new(),
        })
        .collect();
    // (is IPv4, network, length, order, next hop), grouped after sorting.
    let mut flat: Vec<(bool, u128, u8, usize, u128)> = Vec::new();
    let mut nbrs = HashSet::new();
    let port_of = |name: &str| ports.iter().position(|p| p.name == name);
    let mut add = |v4: bool, net: u128, len: u8, nh: IpAddr| flat.push((v4, net, len, flat.len(), ip_bits(nh)));
    let lb = cfg.loadbalancer().ok().flatten();
    // The first gateway of the given family on a network of type `t`.
    let subnet_gateway = |t: NetworkType, v4: bool| {
        cfg.networks
            .iter()
            .filter(|n| n.network_type == t)
            .flat_map(|n| &n.subnets)
            .find_map(|s| s.gateway_ip.filter(|g| g.is_ipv4() == v4))
    };
    if let Some(gw) = cfg.default_v4_gateway {
        add(true, 0, 0, gw);
    } else if let Some(gw) = subnet_gateway(NetworkType::External, true) {
        // Without one, the external subnet's gateway (as for IPv6).
        add(true, 0, 0, gw);
    } else if lb.is_some()
        && let Some(gw) = subnet_gateway(NetworkType::Loadbalancer, true)
    {
        // A load balancer without an external network: its subnet's gateway.
        add(true, 0, 0, gw);
    }
    if let Some(gw) = subnet_gateway(NetworkType::External, false) {
        add(false, 0, 0, gw);
    }
    for r in &cfg.static_routes {
        add(r.destination.is_v4(), r.destination.network(), r.destination.len, r.next_hop);
    }
    // Host routes through a next hop the router can reach (on a connected
    // network, not its own address, same family); the others are left out,
    // as the appliance left out a route it could not install.
    let addrs = || cfg.networks.iter().flat_map(|n| &n.interface.addresses);
    for n in &cfg.networks {
        for s in &n.subnets {
            for r in &s.host_routes {
                let nh = r.nexthop;
                if r.destination.is_v4() == nh.is_ipv4()
                    && addrs().any(|a| a.contains(nh))
                    && !addrs().any(|a| a.addr == nh)
                {
                    add(r.destination.is_v4(), r.destination.network(), r.destination.len, nh);
                }
            }
        }
        let Some(p) = port_of(&n.interface.ifname) else { continue };
        let rp = &mut ref_ports[p];
        rp.management = n.network_type == NetworkType::Management;
        rp.internal = n.network_type == NetworkType::Internal;
        if let Some(m) = n.interface.mtu {
            rp.mtu = rp.mtu.min(m.min(u16::MAX as u32) as u16);
        }
        rp.addrs = n.interface.addresses.iter().map(|a| (a.is_v4(), a.bits(), a.len)).collect();
        for a in &n.allocations {
            for ip in a.ip_addresses.keys() {
                nbrs.insert((p, ip.is_ipv4(), ip_bits(*ip)));
            }
        }
    }
    for sn in neighbors {
        if let Some(p) = port_of(&sn.port) {
            nbrs.insert((p, sn.ip.is_ipv4(), ip_bits(sn.ip)));
        }
    }
    flat.sort_unstable_by_key(|r| (r.0, r.1, r.2, r.3));
    let routes = flat
        .chunk_by(|a, b| (a.0, a.1, a.2) == (b.0, b.1, b.2))
        .map(|g| {
            let mut next_hops: Vec<u128> = Vec::with_capacity(g.len());
            for r in g {
                if !next_hops.contains(&r.4) {
                    next_hops.push(r.4);
                }
            }
            RefRoute { v4: g[0].0, net: g[0].1, len: g[0].2, next_hops }
        })
        .collect();
    let mut topo = Topology::new(ref_ports, routes, nbrs);
    topo.anchors = anchors(cfg, &port_of);
    for f in &cfg.floating_ips {
        if let (IpAddr::V4(floating), IpAddr::V4(fixed)) = (f.floating_ip, f.fixed_ip) {
            topo.floating.insert(u32::from(floating), u32::from(fixed));
        }
    }
    // Virtual servers: the listeners that are up, with the members that
    // take new flows (up, weight above 0, IPv4).
    if let Some(lb) = lb.filter(|l| l.admin_state_up) {
        let vip = lb.vip_address.or_else(|| lb.vip_port.as_ref()?.fixed_ips.first().map(|f| f.ip_address));
        if let Some(IpAddr::V4(vip)) = vip {
            for l in lb.listeners.iter().filter(|l| l.admin_state_up) {
                let proto = if l.protocol.eq_ignore_ascii_case("UDP") { 17 } else { 6 };
                let members = l
                    .default_pool
                    .iter()
                    .filter(|p| p.admin_state_up)
                    .flat_map(|p| &p.members)
                    .filter(|m| m.admin_state_up && m.weight.unwrap_or(1) > 0)
                    .filter_map(|m| match m.address {
                        IpAddr::V4(a) => Some(u32::from(a)),
                        IpAddr::V6(_) => None,
                    })
                    .collect();
                topo.vips.insert((u32::from(vip), proto, l.protocol_port), members);
            }
        }
    }
    topo
}

/// The document's `anchors` as the model's rules, read from the document
/// as ASTARA.md and the README state them (not through the policy
/// compiler): an interface name that is not a port, or an address-book name
/// that does not exist, leaves the rule out (the data plane refuses such a
/// document).
fn anchors(cfg: &AstaraConfig, port_of: &dyn Fn(&str) -> Option<usize>) -> Vec<RefRule> {
    let set = |a: &Option<AddrSpec>| -> Option<Option<Vec<(bool, u128, u8)>>> {
        match a {
            None | Some(AddrSpec::Any) => Some(None),
            Some(AddrSpec::Cidr(c)) => Some(Some(vec![(c.is_v4(), c.bits(), c.len)])),
            Some(AddrSpec::Table(t)) => {
                cfg.address_book.get(t).map(|v| Some(v.iter().map(|c| (c.is_v4(), c.bits(), c.len)).collect()))
            }
        }
    };
    let mut out = Vec::new();
    for r in cfg.anchors.iter().flat_map(|a| &a.rules) {
        let port = |n: &Option<String>| match n {
            None => Some(None),
            Some(n) => port_of(n).map(Some),
        };
        let (Some(iface), Some(dest_iface), Some(src), Some(dst)) =
            (port(&r.interface), port(&r.destination_interface), set(&r.source), set(&r.destination))
        else {
            continue;
        };
        let proto = match &r.protocol {
            None => None,
            Some(p) => match protocol_number(p) {
                Some(n) => Some(n),
                None => continue,
            },
        };
        out.push(RefRule {
            pass: r.action == Action::Pass,
            iface,
            direction: r.direction.map(|d| d == Direction::In),
            dest_iface,
            v4: r.family.map(|f| f == Family::Inet),
            proto,
            src,
            dst,
            sport: r.source_port.map(|p| (p.lo, p.hi)),
            dport: r.destination_port.map(|p| (p.lo, p.hi)),
        });
    }
    out
}

/// A scenario made ready to run: the document with its generated routes,
/// the ports, compile options, the modelled router and the traffic.
pub struct Prepared {
    pub scenario: Scenario,
    pub config: AstaraConfig,
    pub ports: Vec<PortSpec>,
    pub options: CompileOptions,
    pub routes: Vec<GeneratedRoute>,
    pub traffic: Traffic,
    pub route_gen_secs: f64,
    pub traffic_gen_secs: f64,
}

pub fn prepare(path: &Path) -> Result<Prepared, String> {
    let scenario = Scenario::load(path)?;
    let mut config = load_config(&scenario.config_path())?;
    let ports = ports_from_config(&config);
    let mut options = CompileOptions::default();
    if let Some(snat) = &scenario.lb_snat {
        options.lb.snat = snat.parse().map_err(|e| format!("lb_snat: {e}"))?;
    }
    for (k, n) in scenario.neighbors.iter().enumerate() {
        options.neighbors.push(StaticNeighbor {
            port: n.port.clone(),
            ip: n.ip,
            mac: n.mac.parse::<Mac>().map_err(|e| format!("neighbors[{k}].mac: {e}"))?,
        });
    }
    let t0 = Instant::now();
    let avoid: Vec<(u32, u8)> = config
        .networks
        .iter()
        .flat_map(|n| &n.interface.addresses)
        .filter(|a| a.is_v4())
        .map(|a| (a.network() as u32, a.len))
        .collect();
    let routes = match &scenario.routes {
        Some(spec) => generate_routes(spec, &avoid, &mut Rng::new(scenario.seed)),
        None => Vec::new(),
    };
    config.static_routes.extend(routes.iter().map(|r| StaticRoute {
        destination: crate::control::model::Cidr { addr: IpAddr::V4((r.net).into()), len: r.len },
        next_hop: r.next_hop,
    }));
    let route_gen_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let topo = topology(&config, &ports, &options.neighbors);
    let traffic = generate_traffic(&scenario, &topo, &routes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Prepared {
        scenario,
        config,
        ports,
        options,
        routes,
        traffic,
        route_gen_secs,
        traffic_gen_secs: t1.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbor_argument() {
        let n = parse_neighbor("ge1:203.0.113.1=fa:16:3e:00:00:01").unwrap();
        assert_eq!((n.port.as_str(), n.ip.to_string()), ("ge1", "203.0.113.1".to_string()));
        let n = parse_neighbor("ge2:fdd6::1=fa:16:3e:00:00:02").unwrap();
        assert_eq!(n.ip.to_string(), "fdd6::1");
        assert!(parse_neighbor("ge1=1.2.3.4").is_err());
        assert!(parse_neighbor("ge1:1.2.3.4=zz").is_err());
    }
}
