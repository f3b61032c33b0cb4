//! The L4 load balancer's compiled tables (part of the [`Snapshot`](super::Snapshot))
//! and the choice of a backend for a new flow.
//!
//! A listener is a virtual server, VIP address + protocol + port. HTTP and
//! HTTPS listeners are balanced as TCP pass-through (the appliance does not
//! terminate HTTP or TLS). A new flow to a listener picks a member of the
//! listener's pool:
//! - `SOURCE_IP`: Maglev lookup of a hash of the client address (every flow
//!   of one client lands on one member while the member set holds);
//! - `ROUND_ROBIN`: Maglev lookup of a hash of the 5-tuple. Flows spread
//!   over members in proportion to their weights, as a weighted round robin
//!   would, without a counter shared between workers;
//! - `LEAST_CONNECTIONS`: the member with the fewest active sessions per
//!   unit of weight. The counts are the worker's own (each worker holds
//!   about 1/n of the flows, spread by hash), so across workers the choice
//!   is approximate.
//!
//! The choice is pinned in the session (its keys hold the member), so a
//! change of the member set never moves an existing connection. Members
//! that are administratively down or failed their health check take no new
//! flows; a member administratively down keeps its existing flows for
//! `drain_timeout` seconds (0: until they end).

use crate::table::maglev::MaglevTable;
use std::collections::HashMap;
use std::sync::Arc;

/// Most members one appliance balances over (member slots).
pub const MAX_MEMBERS: usize = 4096;
/// Local ports the health checker connects from; the LB's source
/// translation never uses them.
pub const HEALTH_PORTS: std::ops::RangeInclusive<u16> = 65_280..=65_535;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastConnections,
    SourceIp,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "ROUND_ROBIN",
            Algorithm::LeastConnections => "LEAST_CONNECTIONS",
            Algorithm::SourceIp => "SOURCE_IP",
        }
    }
}

/// Whether the client's address is replaced on the way to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbSnat {
    /// The member sees the appliance's address on the member's network
    /// (as with the original nginx proxy): replies always come back
    /// through the appliance, wherever the client is.
    #[default]
    Always,
    /// The member sees the client's address; its replies must be routed
    /// through the appliance (the appliance is the members' gateway).
    Never,
}

impl std::str::FromStr for LbSnat {
    type Err = String;
    fn from_str(s: &str) -> Result<LbSnat, String> {
        match s {
            "always" => Ok(LbSnat::Always),
            "never" => Ok(LbSnat::Never),
            o => Err(format!("'{o}' is not always or never")),
        }
    }
}

/// What a health monitor asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// An ICMP echo is answered (type PING).
    Ping,
    /// A TCP connection is accepted (types TCP and HTTPS: the appliance
    /// does not speak TLS).
    Connect,
    /// An HTTP request answered with one of the expected codes.
    Http { method: String, path: String, codes: Vec<(u16, u16)> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitor {
    pub kind: CheckKind,
    /// Seconds between checks, per check, and failures in a row that take
    /// a member out.
    pub delay: u32,
    pub timeout: u32,
    pub max_retries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbMember {
    /// Stable across documents while the member exists (its counters).
    pub slot: u16,
    /// The member's id, or "address:port" when it has none.
    pub id: String,
    pub pool: u16,
    pub addr: u32,
    pub port: u16,
    pub weight: u32,
    pub admin_up: bool,
    /// Passed its health checks (or has no monitor).
    pub healthy: bool,
}

impl LbMember {
    /// Takes new flows.
    pub fn active(&self) -> bool {
        self.admin_up && self.healthy && self.weight > 0
    }
}

#[derive(Debug, Clone)]
pub struct LbPool {
    pub id: String,
    pub algorithm: Algorithm,
    /// Indices into `LbConfig::members`.
    pub members: Vec<u16>,
    /// The members that take new flows (indices into `LbConfig::members`);
    /// the Maglev table's entries index this.
    pub active: Vec<u16>,
    pub table: Option<Arc<MaglevTable>>,
    pub monitor: Option<Monitor>,
}

#[derive(Debug, Clone)]
pub struct LbListener {
    pub id: String,
    pub protocol: String,
    pub proto: u8,
    pub addr: u32,
    pub port: u16,
    pub pool: Option<u16>,
}

/// Member slot states the workers read on every packet of a balanced flow.
pub const SLOT_UNUSED: u8 = 0;
pub const SLOT_ACTIVE: u8 = 1;
/// Administratively down: existing flows drain.
pub const SLOT_DRAINING: u8 = 2;
/// Unhealthy or weight 0: no new flows, existing ones continue.
pub const SLOT_IDLE: u8 = 3;

/// The compiled load balancer. Empty when the document has no
/// `services.loadbalancer`.
#[derive(Debug, Clone, Default)]
pub struct LbConfig {
    pub listeners: Vec<LbListener>,
    pub pools: Vec<LbPool>,
    pub members: Vec<LbMember>,
    /// (address, protocol, port) → listener index.
    vips: HashMap<u64, u16, ahash::RandomState>,
    /// VIP addresses, sorted, and the port each is on.
    pub vip_addrs: Vec<(u32, u16)>,
    /// Member endpoints (address << 16 | port), sorted.
    endpoints: Vec<u64>,
    /// Member addresses, sorted.
    member_addrs: Vec<u32>,
    /// Per member slot: `SLOT_*`.
    pub slot_state: Vec<u8>,
    pub snat: LbSnat,
    pub drain_timeout: u32,
    pub maglev_size: u32,
}

impl LbConfig {
    /// Builds the lookup indexes from listeners and members.
    pub fn new(
        listeners: Vec<LbListener>,
        pools: Vec<LbPool>,
        members: Vec<LbMember>,
        vip_ports: Vec<(u32, u16)>,
        snat: LbSnat,
        drain_timeout: u32,
        maglev_size: u32,
    ) -> LbConfig {
        let mut c = LbConfig { listeners, pools, members, snat, drain_timeout, maglev_size, ..Default::default() };
        for (i, l) in c.listeners.iter().enumerate() {
            c.vips.insert(vip_key(l.addr, l.proto, l.port), i as u16);
        }
        c.vip_addrs = vip_ports;
        c.vip_addrs.sort_unstable();
        c.vip_addrs.dedup_by_key(|v| v.0);
        c.endpoints = c.members.iter().map(|m| (m.addr as u64) << 16 | m.port as u64).collect();
        c.endpoints.sort_unstable();
        c.endpoints.dedup();
        c.member_addrs = c.members.iter().map(|m| m.addr).collect();
        c.member_addrs.sort_unstable();
        c.member_addrs.dedup();
        c.refresh_states();
        c
    }

    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    /// Whether `a` is a VIP address.
    #[inline]
    pub fn is_vip_addr(&self, a: u32) -> bool {
        !self.vip_addrs.is_empty() && self.vip_addrs.binary_search_by_key(&a, |v| v.0).is_ok()
    }

    /// The listener for a destination, if it is one.
    #[inline]
    pub fn listener(&self, addr: u32, proto: u8, port: u16) -> Option<&LbListener> {
        if self.vips.is_empty() {
            return None;
        }
        self.vips.get(&vip_key(addr, proto, port)).and_then(|&i| self.listeners.get(i as usize))
    }

    /// Whether `addr:port` is a member's endpoint.
    #[inline]
    pub fn is_member(&self, addr: u32, port: u16) -> bool {
        !self.endpoints.is_empty() && self.endpoints.binary_search(&((addr as u64) << 16 | port as u64)).is_ok()
    }

    /// Whether `addr` is a member's address.
    #[inline]
    pub fn is_member_addr(&self, addr: u32) -> bool {
        !self.member_addrs.is_empty() && self.member_addrs.binary_search(&addr).is_ok()
    }

    /// The state of member slot `slot` (`SLOT_*`).
    #[inline]
    pub fn slot_state(&self, slot: u16) -> u8 {
        self.slot_state.get(slot as usize).copied().unwrap_or(SLOT_UNUSED)
    }

    /// Recomputes each pool's active members, its Maglev table and the
    /// slot states from the members' admin and health state.
    pub fn refresh_states(&mut self) {
        let mut states = vec![SLOT_UNUSED; MAX_MEMBERS];
        for m in &self.members {
            states[m.slot as usize] = match (m.admin_up, m.active()) {
                (false, _) => SLOT_DRAINING,
                (true, true) => SLOT_ACTIVE,
                (true, false) => SLOT_IDLE,
            };
        }
        self.slot_state = states;
        let size = self.maglev_size;
        for p in &mut self.pools {
            let active: Vec<u16> = p.members.iter().copied().filter(|&i| self.members[i as usize].active()).collect();
            let names: Vec<String> = active.iter().map(|&i| self.members[i as usize].id.clone()).collect();
            let mm: Vec<crate::table::maglev::MaglevMember<'_>> = names
                .iter()
                .zip(&active)
                .map(|(n, &i)| crate::table::maglev::MaglevMember {
                    name: n.as_bytes(),
                    weight: self.members[i as usize].weight,
                })
                .collect();
            p.table = match p.algorithm {
                Algorithm::LeastConnections => None,
                _ if active.is_empty() => None,
                // (The compiler checked size against the member count.)
                _ => MaglevTable::build(&mm, size).ok().map(Arc::new),
            };
            p.active = active;
        }
    }

    /// A copy with members' health from `down` (member keys that failed
    /// their checks): only the pools whose state changes are rebuilt.
    pub fn with_health(&self, down: &std::collections::HashSet<String>) -> LbConfig {
        let mut c = self.clone();
        let mut changed = false;
        for m in &mut c.members {
            let healthy = !down.contains(&member_key(&self.pools[m.pool as usize].id, &m.id));
            changed |= healthy != m.healthy;
            m.healthy = healthy;
        }
        if changed {
            c.refresh_states();
        }
        c
    }

    /// The member (index into `members`) for a new flow `flow` of `pool`;
    /// `active_sessions[slot]` is the worker's count of sessions per member
    /// (for least connections).
    #[inline]
    pub fn pick(&self, pool: &LbPool, flow: Flow, active_sessions: &[u32]) -> Option<u16> {
        let Flow { src, dst, sport, dport, proto } = flow;
        match pool.algorithm {
            Algorithm::SourceIp => {
                let i = pool.table.as_ref()?.lookup(mix64(src as u64))?;
                pool.active.get(i as usize).copied()
            }
            Algorithm::RoundRobin => {
                let h = mix64((src as u64) << 32 | dst as u64)
                    ^ mix64((sport as u64) << 32 | (dport as u64) << 16 | proto as u64);
                let i = pool.table.as_ref()?.lookup(mix64(h))?;
                pool.active.get(i as usize).copied()
            }
            Algorithm::LeastConnections => {
                // Fewest sessions per weight; ties broken from a hashed start
                // so equal members share new flows.
                let n = pool.active.len();
                if n == 0 {
                    return None;
                }
                let start = (mix64((src as u64) << 16 | sport as u64) % n as u64) as usize;
                let mut best: Option<(u64, u64, u16)> = None;
                for k in 0..n {
                    let i = pool.active[(start + k) % n];
                    let m = &self.members[i as usize];
                    let load = active_sessions.get(m.slot as usize).copied().unwrap_or(0) as u64;
                    let w = m.weight as u64;
                    // load/w < best_load/best_w
                    if best.is_none_or(|(bl, bw, _)| load * bw < bl * w) {
                        best = Some((load, w, i));
                    }
                }
                best.map(|b| b.2)
            }
        }
    }
}

#[inline]
fn vip_key(addr: u32, proto: u8, port: u16) -> u64 {
    (addr as u64) << 24 | (proto as u64) << 16 | port as u64
}

/// A new flow as the balancer sees it (IPv4, as it arrived).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// How the control thread names a member for health state: pool and member.
pub fn member_key(pool: &str, member: &str) -> String {
    format!("{pool}/{member}")
}

#[inline]
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fl(src: u32, dst: u32, sport: u16, dport: u16, proto: u8) -> Flow {
        Flow { src, dst, sport, dport, proto }
    }

    fn config(alg: Algorithm, weights: &[u32]) -> LbConfig {
        let members: Vec<LbMember> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| LbMember {
                slot: i as u16,
                id: format!("m{i}"),
                pool: 0,
                addr: 0x0a00_0100 + i as u32,
                port: 8080,
                weight: w,
                admin_up: true,
                healthy: true,
            })
            .collect();
        let pool = LbPool {
            id: "p".into(),
            algorithm: alg,
            members: (0..weights.len() as u16).collect(),
            active: Vec::new(),
            table: None,
            monitor: None,
        };
        let l =
            LbListener { id: "l".into(), protocol: "TCP".into(), proto: 6, addr: 0xc0a8_0064, port: 80, pool: Some(0) };
        LbConfig::new(vec![l], vec![pool], members, vec![(0xc0a8_0064, 1)], LbSnat::Always, 0, 1009)
    }

    #[test]
    fn source_ip_keeps_a_client_on_one_member_and_round_robin_spreads_its_flows() {
        let c = config(Algorithm::SourceIp, &[1, 1, 1]);
        let p = &c.pools[0];
        let first = c.pick(p, fl(0x0b00_0001, 1, 1000, 80, 6), &[]).unwrap();
        for sport in 1001..1100 {
            assert_eq!(c.pick(p, fl(0x0b00_0001, 1, sport, 80, 6), &[]), Some(first));
        }
        let c = config(Algorithm::RoundRobin, &[1, 1, 1]);
        let p = &c.pools[0];
        let mut seen = [0u32; 3];
        for sport in 1000..4000 {
            seen[c.pick(p, fl(0x0b00_0001, 1, sport, 80, 6), &[]).unwrap() as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn least_connections_prefers_the_least_loaded_per_weight() {
        let c = config(Algorithm::LeastConnections, &[1, 2, 1]);
        let p = &c.pools[0];
        // Member 1 has twice the weight: 3 sessions on it weigh 1.5.
        assert_eq!(c.pick(p, fl(1, 1, 1, 80, 6), &[2, 3, 4]), Some(1));
        assert_eq!(c.pick(p, fl(1, 1, 1, 80, 6), &[1, 3, 4]), Some(0));
    }

    #[test]
    fn down_and_unhealthy_members_take_no_new_flows() {
        let mut c = config(Algorithm::RoundRobin, &[1, 1, 0]);
        c.members[0].admin_up = false;
        c.refresh_states();
        assert_eq!(c.slot_state(0), SLOT_DRAINING);
        assert_eq!(c.slot_state(2), SLOT_IDLE);
        let p = &c.pools[0];
        for sport in 0..200 {
            assert_eq!(c.pick(p, fl(7, 1, sport, 80, 6), &[]), Some(1));
        }
        let down = [member_key("p", "m1")].into_iter().collect();
        let c = c.with_health(&down);
        assert_eq!(c.slot_state(1), SLOT_IDLE);
        assert_eq!(c.pick(&c.pools[0], fl(7, 1, 5, 80, 6), &[]), None);
    }

    #[test]
    fn vip_and_member_lookups() {
        let c = config(Algorithm::RoundRobin, &[1, 1]);
        assert!(c.is_vip_addr(0xc0a8_0064) && !c.is_vip_addr(0xc0a8_0065));
        assert!(c.listener(0xc0a8_0064, 6, 80).is_some());
        assert!(c.listener(0xc0a8_0064, 17, 80).is_none() && c.listener(0xc0a8_0064, 6, 81).is_none());
        assert!(c.is_member(0x0a00_0101, 8080) && !c.is_member(0x0a00_0101, 8081));
    }
}
