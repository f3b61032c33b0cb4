//! Compiles `services.loadbalancer` into the snapshot's [`LbConfig`]:
//! listeners (VIP + protocol + port), their pools with a Maglev table each,
//! members with a stable counter slot, and health monitors.
//!
//! Accepted listener protocols: TCP, and HTTP and HTTPS balanced as TCP
//! pass-through (no HTTP or TLS termination), and UDP. IPv6 VIPs and
//! members are accepted but not balanced (a warning says so).

use super::model::{AstaraConfig, ConfigError, LoadBalancer};
use crate::packet::ipv4::{PROTO_TCP, PROTO_UDP};
use crate::stage::lb::{
    Algorithm, CheckKind, LbConfig, LbListener, LbMember, LbPool, LbSnat, MAX_MEMBERS, Monitor, member_key,
};
use crate::table::maglev::{DEFAULT_SIZE, is_prime};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The runtime's `[lb]` settings.
#[derive(Debug, Clone)]
pub struct LbOptions {
    pub snat: LbSnat,
    /// Seconds an administratively down member keeps its flows (0: until
    /// they end).
    pub drain_timeout: u32,
    /// Maglev table size (a prime).
    pub maglev_size: u32,
    /// Member counter slots, kept across documents.
    pub slots: Arc<Mutex<SlotRegistry>>,
}

impl Default for LbOptions {
    fn default() -> Self {
        LbOptions { snat: LbSnat::Always, drain_timeout: 300, maglev_size: DEFAULT_SIZE, slots: Arc::default() }
    }
}

/// Member key → counter slot, stable while the member exists, so that
/// per-member counters and draining survive a new document.
#[derive(Debug, Default)]
pub struct SlotRegistry {
    slots: HashMap<String, u16>,
}

impl SlotRegistry {
    /// Slots for `keys` (all distinct); members that left the document give
    /// theirs back when the slots run short.
    fn assign(&mut self, keys: &[String]) -> Result<Vec<u16>, String> {
        if keys.len() > MAX_MEMBERS {
            return Err(format!("{} members; at most {MAX_MEMBERS} are supported", keys.len()));
        }
        let new = keys.iter().filter(|k| !self.slots.contains_key(*k)).count();
        if self.slots.len() + new > MAX_MEMBERS {
            let keep: HashSet<&String> = keys.iter().collect();
            self.slots.retain(|k, _| keep.contains(k));
        }
        let mut used: Vec<bool> = vec![false; MAX_MEMBERS];
        for &s in self.slots.values() {
            used[s as usize] = true;
        }
        let mut next = 0usize;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let s = match self.slots.get(k) {
                Some(&s) => s,
                None => {
                    while used[next] {
                        next += 1;
                    }
                    used[next] = true;
                    self.slots.insert(k.clone(), next as u16);
                    next as u16
                }
            };
            out.push(s);
        }
        Ok(out)
    }
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(vec![msg.into()])
}

/// Neutron's `expected_codes`: "200", "200,202", "200-204".
pub fn parse_codes(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let code = |t: &str| t.trim().parse::<u16>().ok().filter(|c| (100..=599).contains(c));
        match (code(a), code(b)) {
            (Some(a), Some(b)) if a <= b => out.push((a, b)),
            _ => return Err(format!("'{part}' is not an HTTP status code or range")),
        }
    }
    if out.is_empty() {
        return Err("no status code".into());
    }
    Ok(out)
}

/// Compiles the load balancer. `on_link(ip)`: the port whose connected
/// prefix holds `ip`.
pub fn compile_lb(
    cfg: &AstaraConfig,
    opts: &LbOptions,
    on_link: impl Fn(IpAddr) -> Option<u16>,
    warnings: &mut Vec<String>,
) -> Result<LbConfig, ConfigError> {
    let Some(lb) = cfg.loadbalancer()? else { return Ok(LbConfig::default()) };
    if !is_prime(opts.maglev_size) {
        return Err(invalid(format!("lb.maglev_size: {} is not a prime", opts.maglev_size)));
    }
    compile_service(&lb, opts, on_link, warnings)
}

fn compile_service(
    lb: &LoadBalancer,
    opts: &LbOptions,
    on_link: impl Fn(IpAddr) -> Option<u16>,
    warnings: &mut Vec<String>,
) -> Result<LbConfig, ConfigError> {
    let at = "services.loadbalancer";
    let vip = lb.vip_address.or_else(|| lb.vip_port.as_ref().and_then(|p| p.fixed_ips.first()).map(|f| f.ip_address));
    let Some(vip) = vip else {
        return Err(invalid(format!("{at}.vip_address: a load balancer needs a VIP address (or vip_port.fixed_ips)")));
    };
    let IpAddr::V4(v4) = vip else {
        warnings.push(format!("{at}.vip_address: {vip}: IPv6 VIPs are not balanced; the service was not applied"));
        return Ok(LbConfig::default());
    };
    let vip_addr = u32::from(v4);
    let Some(vip_port) = on_link(vip) else {
        return Err(invalid(format!("{at}.vip_address: {vip} is on no network of this appliance")));
    };
    if !lb.admin_state_up {
        warnings.push(format!("{at}: admin_state_up is false; no listener is served"));
        return Ok(LbConfig::default());
    }
    let mut listeners = Vec::new();
    let mut pools: Vec<LbPool> = Vec::new();
    let mut members: Vec<LbMember> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    let mut seen_vips = HashSet::new();
    let mut pool_ids: HashMap<String, u16> = HashMap::new();
    for (li, l) in lb.listeners.iter().enumerate() {
        let at = format!("{at}.listeners[{li}]");
        let proto = match l.protocol.to_ascii_uppercase().as_str() {
            "TCP" | "HTTP" | "HTTPS" => PROTO_TCP,
            "UDP" => PROTO_UDP,
            p => {
                return Err(invalid(format!(
                    "{at}.protocol: {p} is not balanced here (TCP, HTTP, HTTPS as TCP pass-through, UDP)"
                )));
            }
        };
        if l.protocol_port == 0 {
            return Err(invalid(format!("{at}.protocol_port: 0 is not a port")));
        }
        if !seen_vips.insert((proto, l.protocol_port)) {
            return Err(invalid(format!("{at}: a listener for {vip}:{} exists already", l.protocol_port)));
        }
        if !l.admin_state_up {
            warnings.push(format!("{at}: admin_state_up is false; not served"));
            continue;
        }
        let id = l.id.clone().unwrap_or_else(|| format!("listener-{li}"));
        let pool = match &l.default_pool {
            None => None,
            Some(p) if !p.admin_state_up => {
                warnings.push(format!("{at}.default_pool: admin_state_up is false; the listener has no members"));
                None
            }
            Some(p) => {
                let pid = p.id.clone().unwrap_or_else(|| format!("pool-{li}"));
                if let Some(&i) = pool_ids.get(&pid) {
                    Some(i)
                } else {
                    let at = format!("{at}.default_pool");
                    let algorithm = match p.lb_algorithm.as_deref().map(str::to_ascii_uppercase).as_deref() {
                        None | Some("ROUND_ROBIN") => Algorithm::RoundRobin,
                        Some("LEAST_CONNECTIONS") => Algorithm::LeastConnections,
                        Some("SOURCE_IP") => Algorithm::SourceIp,
                        Some(a) => {
                            return Err(invalid(format!(
                                "{at}.lb_algorithm: {a} is not ROUND_ROBIN, LEAST_CONNECTIONS or SOURCE_IP"
                            )));
                        }
                    };
                    // Persistence by client address is what SOURCE_IP
                    // balancing does; cookies need HTTP, which is not
                    // looked at here.
                    let persistence = p
                        .session_persistence
                        .as_ref()
                        .and_then(|v| v.get("type"))
                        .and_then(|t| t.as_str())
                        .map(str::to_ascii_uppercase);
                    let algorithm = match (persistence.as_deref(), algorithm) {
                        (None, a) => a,
                        (Some("SOURCE_IP"), Algorithm::LeastConnections) => {
                            warnings.push(format!(
                                "{at}.session_persistence: SOURCE_IP with LEAST_CONNECTIONS is balanced as SOURCE_IP"
                            ));
                            Algorithm::SourceIp
                        }
                        (Some("SOURCE_IP"), _) => Algorithm::SourceIp,
                        (Some(t), a) => {
                            warnings.push(format!(
                                "{at}.session_persistence: {t} needs an HTTP proxy; connections are balanced by {} without it",
                                a.name()
                            ));
                            a
                        }
                    };
                    let monitor = match &p.healthmonitor {
                        None => None,
                        Some(h) => Some(monitor(h, &format!("{at}.healthmonitor"))?),
                    };
                    let pi = pools.len() as u16;
                    let mut idx = Vec::new();
                    let mut endpoints = HashSet::new();
                    for (mi, m) in p.members.iter().enumerate() {
                        let at = format!("{at}.members[{mi}]");
                        let IpAddr::V4(a) = m.address else {
                            warnings.push(format!("{at}.address: {}: IPv6 members are not balanced", m.address));
                            continue;
                        };
                        let weight = m.weight.unwrap_or(1);
                        if weight > 256 {
                            return Err(invalid(format!("{at}.weight: {weight} is outside 0..=256")));
                        }
                        if m.protocol_port == 0 {
                            return Err(invalid(format!("{at}.protocol_port: 0 is not a port")));
                        }
                        if !endpoints.insert((a, m.protocol_port)) {
                            return Err(invalid(format!("{at}: {a}:{} is a member twice", m.protocol_port)));
                        }
                        let mid = m.id.clone().unwrap_or_else(|| format!("{a}:{}", m.protocol_port));
                        keys.push(member_key(&pid, &mid));
                        idx.push(members.len() as u16);
                        members.push(LbMember {
                            slot: 0,
                            id: mid,
                            pool: pi,
                            addr: u32::from(a),
                            port: m.protocol_port,
                            weight,
                            admin_up: m.admin_state_up,
                            healthy: true,
                        });
                    }
                    if (opts.maglev_size as u64) < 10 * idx.len() as u64 {
                        return Err(invalid(format!(
                            "{at}.members: {} members need a maglev table of at least {} slots (lb.maglev_size is {})",
                            idx.len(),
                            10 * idx.len(),
                            opts.maglev_size
                        )));
                    }
                    pools.push(LbPool {
                        id: pid.clone(),
                        algorithm,
                        members: idx,
                        active: Vec::new(),
                        table: None,
                        monitor,
                    });
                    pool_ids.insert(pid, pi);
                    Some(pi)
                }
            }
        };
        listeners.push(LbListener {
            id,
            protocol: l.protocol.to_ascii_uppercase(),
            proto,
            addr: vip_addr,
            port: l.protocol_port,
            pool,
        });
    }
    let slots = opts
        .slots
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .assign(&keys)
        .map_err(|e| invalid(format!("{at}: {e}")))?;
    for (m, s) in members.iter_mut().zip(slots) {
        m.slot = s;
    }
    Ok(LbConfig::new(
        listeners,
        pools,
        members,
        vec![(vip_addr, vip_port)],
        opts.snat,
        opts.drain_timeout,
        opts.maglev_size,
    ))
}

fn monitor(h: &super::model::HealthMonitor, at: &str) -> Result<Monitor, ConfigError> {
    let delay = h.delay.unwrap_or(5).max(1);
    let timeout = h.timeout.unwrap_or(delay).max(1);
    let max_retries = h.max_retries.unwrap_or(3).clamp(1, 10);
    let kind = match h.kind.as_deref().map(str::to_ascii_uppercase).as_deref() {
        Some("PING") => CheckKind::Ping,
        None | Some("TCP") | Some("HTTPS") | Some("TLS-HELLO") => CheckKind::Connect,
        Some("HTTP") => {
            let path = h.url_path.clone().unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(format!("{at}.url_path: '{path}' is not an absolute path")));
            }
            let method = h.http_method.clone().unwrap_or_else(|| "GET".into()).to_ascii_uppercase();
            if method.is_empty() || !method.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(invalid(format!("{at}.http_method: '{method}' is not an HTTP method")));
            }
            let codes = parse_codes(h.expected_codes.as_deref().unwrap_or("200"))
                .map_err(|e| invalid(format!("{at}.expected_codes: {e}")))?;
            CheckKind::Http { method, path, codes }
        }
        Some(t) => return Err(invalid(format!("{at}.type: {t} is not PING, TCP, HTTP or HTTPS"))),
    };
    Ok(Monitor { kind, delay, timeout, max_retries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(listeners: &str) -> AstaraConfig {
        let text = format!(
            r#"{{"tenant_id": "t", "hostname": "lb", "networks": [
              {{"network_id": "n1", "network_type": "loadbalancer",
                "interface": {{"ifname": "ge1", "addresses": ["10.0.0.2/24"]}}}}],
              "services": {{"loadbalancer": {{"id": "lb1", "vip_address": "10.0.0.100",
                "listeners": {listeners}}}}}}}"#
        );
        AstaraConfig::from_json(text.as_bytes()).unwrap()
    }

    fn listener(alg: &str, members: &str, hm: &str) -> String {
        format!(
            r#"[{{"id": "l1", "protocol": "HTTP", "protocol_port": 80, "default_pool":
                {{"id": "p1", "lb_algorithm": "{alg}", "healthmonitor": {hm}, "members": {members}}}}}]"#
        )
    }

    fn on_link(ip: IpAddr) -> Option<u16> {
        "10.0.0.0/24".parse::<super::super::model::Cidr>().unwrap().contains(ip).then_some(0)
    }

    #[test]
    fn compiles_listeners_pools_members_and_monitors() {
        let members = r#"[{"id": "a", "address": "10.0.0.11", "protocol_port": 8080, "weight": 2},
                          {"id": "b", "address": "10.0.0.12", "protocol_port": 8080, "admin_state_up": false}]"#;
        let hm = r#"{"type": "HTTP", "delay": 2, "timeout": 1, "max_retries": 3, "url_path": "/health",
                     "expected_codes": "200-204,301"}"#;
        let cfg = doc(&listener("SOURCE_IP", members, hm));
        let mut w = Vec::new();
        let lb = compile_lb(&cfg, &LbOptions::default(), on_link, &mut w).unwrap();
        assert!(w.is_empty(), "{w:?}");
        let l = lb.listener(0x0a00_0064, PROTO_TCP, 80).unwrap();
        assert_eq!(l.protocol, "HTTP");
        let p = &lb.pools[l.pool.unwrap() as usize];
        assert_eq!(p.algorithm, Algorithm::SourceIp);
        assert_eq!(p.members.len(), 2);
        assert_eq!(p.active, vec![0], "the member that is down takes no new flows");
        let m = p.monitor.as_ref().unwrap();
        assert_eq!((m.delay, m.timeout, m.max_retries), (2, 1, 3));
        assert_eq!(
            m.kind,
            CheckKind::Http { method: "GET".into(), path: "/health".into(), codes: vec![(200, 204), (301, 301)] }
        );
        assert_eq!(lb.vip_addrs, vec![(0x0a00_0064, 0)]);
    }

    #[test]
    fn source_ip_persistence_and_cookie_persistence() {
        let m = r#"[{"address": "10.0.0.11", "protocol_port": 80}]"#;
        let with = |p: &str| {
            let l = listener("ROUND_ROBIN", m, "null").replace(
                r#""lb_algorithm": "ROUND_ROBIN","#,
                &format!(r#""lb_algorithm": "ROUND_ROBIN", "session_persistence": {{"type": "{p}"}},"#),
            );
            let mut w = Vec::new();
            let c = compile_lb(&doc(&l), &LbOptions::default(), on_link, &mut w).unwrap();
            (c.pools[0].algorithm, w)
        };
        assert_eq!(with("SOURCE_IP"), (Algorithm::SourceIp, vec![]));
        let (a, w) = with("HTTP_COOKIE");
        assert_eq!(a, Algorithm::RoundRobin);
        assert!(w[0].contains("HTTP_COOKIE needs an HTTP proxy"), "{w:?}");
    }

    #[test]
    fn member_slots_stay_when_the_member_set_changes() {
        let opts = LbOptions::default();
        let two = r#"[{"id": "a", "address": "10.0.0.11", "protocol_port": 80},
                      {"id": "b", "address": "10.0.0.12", "protocol_port": 80}]"#;
        let three = r#"[{"id": "c", "address": "10.0.0.13", "protocol_port": 80},
                        {"id": "b", "address": "10.0.0.12", "protocol_port": 80}]"#;
        let a = compile_lb(&doc(&listener("ROUND_ROBIN", two, "null")), &opts, on_link, &mut Vec::new()).unwrap();
        let b = compile_lb(&doc(&listener("ROUND_ROBIN", three, "null")), &opts, on_link, &mut Vec::new()).unwrap();
        let slot = |c: &LbConfig, id: &str| c.members.iter().find(|m| m.id == id).unwrap().slot;
        assert_eq!(slot(&a, "b"), slot(&b, "b"));
        assert_ne!(slot(&b, "c"), slot(&b, "b"));
        assert_ne!(slot(&b, "c"), slot(&a, "a"), "a's slot is not reused while slots remain");
    }

    #[test]
    fn bad_services_are_refused_with_the_field() {
        let opts = LbOptions::default();
        let m = r#"[{"address": "10.0.0.11", "protocol_port": 80}]"#;
        for (doc_text, field) in [
            (listener("RANDOM", m, "null"), "lb_algorithm"),
            (listener("ROUND_ROBIN", m, r#"{"type": "SMTP"}"#), "healthmonitor.type"),
            (listener("ROUND_ROBIN", m, r#"{"type": "HTTP", "expected_codes": "2x0"}"#), "expected_codes"),
            (
                listener("ROUND_ROBIN", r#"[{"address": "10.0.0.11", "protocol_port": 80, "weight": 999}]"#, "null"),
                "weight",
            ),
            (r#"[{"protocol": "TERMINATED_HTTPS", "protocol_port": 443}]"#.to_string(), "listeners[0].protocol"),
            (
                r#"[{"protocol": "TCP", "protocol_port": 80}, {"protocol": "HTTP", "protocol_port": 80}]"#.to_string(),
                "listeners[1]",
            ),
        ] {
            let e = compile_lb(&doc(&doc_text), &opts, on_link, &mut Vec::new()).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        let far = doc(&listener("ROUND_ROBIN", m, "null"));
        let e = compile_lb(&far, &opts, |_| None, &mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("on no network"), "{e}");
        assert_eq!(parse_codes(" 200 , 202-204").unwrap(), vec![(200, 200), (202, 204)]);
    }
}
