//! The appliance's fixed INPUT policy (traffic to its own addresses) and
//! the key new forwarded flows are classified on against the `anchors`
//! rules (`Snapshot::acl`, first match wins, default pass).
//!
//! INPUT, as the original appliance's iptables: default drop; ICMP echo
//! and all ICMPv6 allowed everywhere; everything from internal networks;
//! on the management network TCP 22 (ssh), 5000 (the API) and 9697 (the
//! metadata proxy); elsewhere (external, isolated) only traffic of known
//! flows, which never reaches this check. Traffic to the management
//! address that arrived on another interface is dropped.

use super::{DropReason as D, PortRole, Snapshot};
use crate::packet::ipv4::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP};
use crate::packet::l4::ICMP_ECHO_REQUEST;
use crate::packet::{L3, Meta};
use crate::table::AclKey;

/// TCP ports open to the management network.
pub const MANAGEMENT_TCP_PORTS: [u16; 3] = [22, 5000, 9697];

/// Whether a new flow to the appliance itself is allowed.
#[inline]
pub fn input_policy(snap: &Snapshot, m: &Meta) -> Result<(), D> {
    let v4 = m.l3 == L3::Ipv4;
    if let Some(&(_, _, owner)) = snap.own.iter().find(|&&(a, fam4, _)| a == m.dst && fam4 == v4)
        && owner != m.in_port
        && snap.port(owner).is_some_and(|p| p.role == PortRole::Management)
    {
        return Err(D::ManagementAddressElsewhere);
    }
    match m.proto {
        PROTO_ICMPV6 if !v4 => return Ok(()),
        PROTO_ICMP if v4 && m.frag == 0 && m.icmp_type == ICMP_ECHO_REQUEST => return Ok(()),
        _ => {}
    }
    // Answers to the load balancer's own health checks.
    if v4
        && (m.proto == PROTO_TCP
            && super::lb::HEALTH_PORTS.contains(&m.dport)
            && snap.lb.is_member(m.src as u32, m.sport)
            || m.proto == PROTO_ICMP && m.icmp_type == 0 && snap.lb.is_member_addr(m.src as u32))
    {
        return Ok(());
    }
    match snap.port(m.in_port).map(|p| p.role) {
        Some(PortRole::Internal) => Ok(()),
        Some(PortRole::Management) if m.proto == PROTO_TCP && MANAGEMENT_TCP_PORTS.contains(&m.dport) => Ok(()),
        _ => Err(D::InputPolicy),
    }
}

/// The classifier key of a packet (after destination translation).
#[inline]
pub fn acl_key(m: &Meta) -> AclKey {
    AclKey {
        src: m.src,
        dst: m.dst,
        in_port: m.in_port,
        out_port: m.out_port,
        sport: m.sport,
        dport: m.dport,
        proto: m.proto,
        v6: m.l3 == L3::Ipv6,
    }
}
