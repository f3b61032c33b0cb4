//! Compiles the NAT part of the document (external address, floating IPs,
//! metadata redirect) and the `anchors` rules into the snapshot's
//! `NatConfig` and `Acl`.
//!
//! Anchor rules, in document order (anchors, then their rules), first match
//! wins, default pass; evaluated once per new forwarded flow, after the
//! destination translation (floating IP) and routing, before the source
//! translation, so rules name the real inside addresses. `direction: in`
//! with `interface` matches the ingress port, `out` the egress port, no
//! direction either; `destination_interface` matches the egress port.
//! Ports without a protocol apply to TCP and UDP.

use super::model::{AddrSpec, AstaraConfig, Cidr, ConfigError, Direction, Family, NetworkType, protocol_number};
use crate::stage::{Filtering, NatConfig};
use crate::table::acl::{Acl, AclRule};
use std::collections::HashMap;
use std::net::IpAddr;

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(vec![msg.into()])
}

/// The NAT configuration. `net_port[i]` is the port of `cfg.networks[i]`;
/// `own` the router's addresses.
pub fn compile_nat(
    cfg: &AstaraConfig,
    net_port: &[u16],
    ports: usize,
    own: &[(u128, bool, u16)],
    filtering: Filtering,
    warnings: &mut Vec<String>,
) -> Result<NatConfig, ConfigError> {
    let mut nat = NatConfig { filtering, metadata: vec![false; ports], ..Default::default() };
    for (n, &port) in cfg.networks.iter().zip(net_port) {
        match n.network_type {
            NetworkType::External if nat.external.is_none() => {
                if let Some(a) = n.interface.addresses.iter().find_map(|c| match c.addr {
                    IpAddr::V4(v) => Some(u32::from(v)),
                    _ => None,
                }) {
                    nat.external = Some((port, a));
                }
            }
            NetworkType::Internal => nat.metadata[port as usize] = true,
            _ => {}
        }
    }
    let is_own = |a: u32| own.iter().any(|&(o, v4, _)| v4 && o == a as u128);
    for (i, f) in cfg.floating_ips.iter().enumerate() {
        let (IpAddr::V4(fl), IpAddr::V4(fx)) = (f.floating_ip, f.fixed_ip) else {
            warnings.push(format!("floating_ips[{i}]: IPv6 is routed, never translated; the entry was not applied"));
            continue;
        };
        let (fl, fx) = (u32::from(fl), u32::from(fx));
        if is_own(fl) || is_own(fx) {
            return Err(invalid(format!(
                "floating_ips[{i}]: an address of this router cannot be a floating or fixed IP"
            )));
        }
        if nat.dnat.insert(fl, fx).is_some() {
            return Err(invalid(format!("floating_ips[{i}].floating_ip: {} is used twice", f.floating_ip)));
        }
        if nat.snat.insert(fx, fl).is_some() {
            return Err(invalid(format!("floating_ips[{i}].fixed_ip: {} has two floating IPs", f.fixed_ip)));
        }
    }
    Ok(nat)
}

/// The forwarding policy. `ifport` maps interface names to ports.
pub fn compile_acl(
    cfg: &AstaraConfig,
    ifport: &HashMap<String, u16>,
    warnings: &mut Vec<String>,
) -> Result<Acl, ConfigError> {
    let mut rules = Vec::new();
    for (ai, a) in cfg.anchors.iter().enumerate() {
        for (ri, r) in a.rules.iter().enumerate() {
            let at = format!("anchors[{ai}].rules[{ri}]");
            if r.redirect.is_some() || r.redirect_port.is_some() {
                warnings.push(format!("{at}: redirect is not supported; the rule filters without redirecting"));
            }
            let port_of = |name: &Option<String>, field: &str| -> Result<Option<u16>, ConfigError> {
                match name {
                    None => Ok(None),
                    Some(n) => ifport
                        .get(n)
                        .copied()
                        .map(Some)
                        .ok_or_else(|| invalid(format!("{at}.{field}: {n} is not a configured interface"))),
                }
            };
            let iface = port_of(&r.interface, "interface")?;
            let dest_iface = port_of(&r.destination_interface, "destination_interface")?;
            // (in_port, out_port) alternatives.
            let mut sides: Vec<(Option<u16>, Option<u16>)> = match (r.direction, iface) {
                (_, None) => vec![(None, dest_iface)],
                (Some(Direction::In), Some(p)) => vec![(Some(p), dest_iface)],
                (Some(Direction::Out), Some(p)) => {
                    if dest_iface.is_some_and(|d| d != p) {
                        return Err(invalid(format!(
                            "{at}: direction out on one interface and destination_interface another never match"
                        )));
                    }
                    vec![(None, Some(p))]
                }
                (None, Some(p)) => {
                    let mut v = vec![(Some(p), dest_iface)];
                    if dest_iface.is_none_or(|d| d == p) {
                        v.push((None, Some(p)));
                    }
                    v
                }
            };
            sides.dedup();
            let protos: Vec<Option<u8>> = match &r.protocol {
                Some(p) => {
                    let n = protocol_number(p).ok_or_else(|| invalid(format!("{at}.protocol: unknown '{p}'")))?;
                    if (r.source_port.is_some() || r.destination_port.is_some()) && n != 6 && n != 17 {
                        return Err(invalid(format!("{at}: ports need protocol tcp or udp, not {p}")));
                    }
                    vec![Some(n)]
                }
                None if r.source_port.is_some() || r.destination_port.is_some() => vec![Some(6), Some(17)],
                None => vec![None],
            };
            let addrs = |spec: &Option<AddrSpec>, field: &str| -> Result<Vec<Option<Cidr>>, ConfigError> {
                Ok(match spec {
                    None | Some(AddrSpec::Any) => vec![None],
                    Some(AddrSpec::Cidr(c)) => vec![Some(*c)],
                    Some(AddrSpec::Table(t)) => {
                        let v = cfg
                            .address_book
                            .get(t)
                            .ok_or_else(|| invalid(format!("{at}.{field}: {t} is not in the address book")))?;
                        v.iter().copied().map(Some).collect()
                    }
                })
            };
            let srcs = addrs(&r.source, "source")?;
            let dsts = addrs(&r.destination, "destination")?;
            let families: Vec<bool> = match r.family {
                Some(Family::Inet) => vec![false],
                Some(Family::Inet6) => vec![true],
                None => vec![false, true],
            };
            let sport = r.source_port.map_or((0, u16::MAX), |p| (p.lo, p.hi));
            let dport = r.destination_port.map_or((0, u16::MAX), |p| (p.lo, p.hi));
            let before = rules.len();
            for &v6 in &families {
                let fam = |c: &Option<Cidr>| c.is_none_or(|c| c.is_v4() != v6);
                for s in srcs.iter().filter(|c| fam(c)) {
                    for d in dsts.iter().filter(|c| fam(c)) {
                        for &proto in &protos {
                            // ICMP and ICMPv6 belong to one family each.
                            if proto == Some(1) && v6 || proto == Some(58) && !v6 {
                                continue;
                            }
                            for &(in_port, out_port) in &sides {
                                rules.push(AclRule {
                                    pass: r.action == super::model::Action::Pass,
                                    in_port,
                                    out_port,
                                    v6,
                                    proto,
                                    src: s.map_or((0, 0), |c| (c.network(), c.len)),
                                    dst: d.map_or((0, 0), |c| (c.network(), c.len)),
                                    sport,
                                    dport,
                                });
                            }
                        }
                    }
                }
            }
            if rules.len() == before {
                warnings.push(format!("{at}: matches nothing (its family and addresses disagree)"));
            }
        }
    }
    Acl::build(rules).map_err(|e| invalid(format!("anchors: {e}")))
}
