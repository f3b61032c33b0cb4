//! Load-balancer health checks, run by the host stack's thread.
//!
//! Every member of a pool with a `healthmonitor` (and administratively up)
//! is checked every `delay` seconds from the appliance's own address on the
//! member's network, through the data path's ports: a `smoltcp` TCP stack
//! per source address, whose segments the host stack frames and sends like
//! its own ARP and ICMP. A check is an ICMP echo answered (type PING), a
//! TCP connection accepted (TCP, HTTPS: no TLS is spoken) or an HTTP
//! request whose status must be one of the expected codes (HTTP); it fails
//! on refusal, on a wrong status or after `timeout` seconds. `max_retries` failures in a row take a member out of its pool's
//! Maglev table (a new snapshot); one success brings it back.
//! The connection is reset as soon as the answer is known, so checks leave
//! no TIME_WAIT behind on the members. Local ports come from
//! [`HEALTH_PORTS`], which the balancer's own translation never uses.

use super::metadata::Queues;
use crate::stage::Snapshot;
use crate::stage::lb::{CheckKind, HEALTH_PORTS, Monitor, member_key};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Address};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// What the API shows of a member's health.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemberHealth {
    pub up: bool,
    pub checks: u64,
    pub failed_checks: u64,
    /// Failures in a row.
    pub failures: u32,
    pub last_result: String,
    /// Seconds since the state last changed.
    pub since_s: u64,
}

struct Check {
    handle: SocketHandle,
    started: Instant,
    sent: bool,
    answer: Vec<u8>,
}

struct Member {
    addr: u32,
    port: u16,
    monitor: Monitor,
    up: bool,
    failures: u32,
    checks: u64,
    failed: u64,
    last: String,
    changed: Instant,
    next: Instant,
    check: Option<Check>,
    /// The source address it is checked from.
    src: u32,
    /// PING: this member's echo identifier, the last sequence number sent,
    /// and the echo in flight (sent at, answered).
    ping_id: u16,
    ping_seq: u16,
    ping: Option<(Instant, bool)>,
}

/// One TCP stack per source address (the appliance's address on a
/// member's network).
struct Stack {
    iface: Interface,
    dev: Queues,
    sockets: SocketSet<'static>,
    /// Sockets aborted, removed after the next poll has sent their reset.
    closing: Vec<SocketHandle>,
}

impl Stack {
    fn new(addr: u32, now: SInstant) -> Stack {
        let mut dev = Queues::default();
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut dev, now);
        let a = Ipv4Address::from(addr.to_be_bytes());
        iface.update_ip_addrs(|v| {
            let _ = v.push(IpCidr::new(IpAddress::Ipv4(a), 32));
        });
        // Everything is "reachable": the host stack routes what it sends.
        let _ = iface.routes_mut().add_default_ipv4_route(a);
        Stack { iface, dev, sockets: SocketSet::new(Vec::new()), closing: Vec::new() }
    }
}

#[derive(Default)]
pub struct HealthChecker {
    members: HashMap<String, Member>,
    stacks: HashMap<u32, Stack>,
    next_port: u16,
    next_ping_id: u16,
    start: Option<Instant>,
    /// The soonest a check is due or times out.
    due: Option<Instant>,
}

impl HealthChecker {
    fn now(&mut self, now: Instant) -> SInstant {
        let start = *self.start.get_or_insert(now);
        SInstant::from_millis(now.duration_since(start).as_millis() as i64)
    }

    /// Follows the snapshot's members: new ones are checked at once (they
    /// start up), gone ones are forgotten, others keep their state.
    pub fn sync(&mut self, snap: &Snapshot, now: Instant) {
        let lb = &snap.lb;
        let mut keep = HashSet::new();
        for m in &lb.members {
            let pool = &lb.pools[m.pool as usize];
            let Some(monitor) = pool.monitor.clone() else { continue };
            if !m.admin_up {
                continue;
            }
            let key = member_key(&pool.id, &m.id);
            let src = source_for(snap, m.addr).unwrap_or(0);
            keep.insert(key.clone());
            let e = self.members.entry(key).or_insert_with(|| Member {
                addr: m.addr,
                port: m.port,
                monitor: monitor.clone(),
                up: true,
                failures: 0,
                checks: 0,
                failed: 0,
                last: "not checked yet".into(),
                changed: now,
                next: now,
                check: None,
                src,
                ping_id: 0xad00 ^ self.next_ping_id,
                ping_seq: 0,
                ping: None,
            });
            self.next_ping_id = self.next_ping_id.wrapping_add(1);
            if (e.addr, e.port, e.src) != (m.addr, m.port, src) || e.monitor != monitor {
                // A different check: start over, keeping the verdict.
                if let Some(c) = e.check.take()
                    && let Some(s) = self.stacks.get_mut(&e.src)
                {
                    s.sockets.get_mut::<tcp::Socket>(c.handle).abort();
                    s.closing.push(c.handle);
                }
                e.addr = m.addr;
                e.port = m.port;
                e.src = src;
                e.monitor = monitor;
                e.next = now;
                e.ping = None;
            }
        }
        let gone: Vec<String> = self.members.keys().filter(|k| !keep.contains(*k)).cloned().collect();
        for k in gone {
            if let Some(m) = self.members.remove(&k)
                && let Some(c) = m.check
                && let Some(s) = self.stacks.get_mut(&m.src)
            {
                s.sockets.get_mut::<tcp::Socket>(c.handle).abort();
                s.closing.push(c.handle);
            }
        }
        self.due = Some(now);
    }

    /// Takes an IPv4 packet (from its IP header on) sent to one of the
    /// appliance's addresses; false if no check uses that address.
    pub fn deliver(&mut self, dst: u32, ip: &[u8]) -> bool {
        match self.stacks.get_mut(&dst) {
            Some(s) => {
                s.dev.rx.push_back(ip.to_vec());
                self.due = Some(Instant::now());
                true
            }
            None => false,
        }
    }

    /// Takes an ICMP echo reply from `src` to our address `dst`; true when
    /// it answers a PING check.
    pub fn deliver_echo_reply(&mut self, src: u32, dst: u32, id: u16, seq: u16) -> bool {
        let hit = self.members.values_mut().find(|m| {
            m.addr == src && m.src == dst && m.ping_id == id && m.ping_seq == seq && m.ping.is_some_and(|p| !p.1)
        });
        match hit {
            Some(m) => {
                if let Some(p) = m.ping.as_mut() {
                    p.1 = true;
                }
                self.due = Some(Instant::now());
                true
            }
            None => false,
        }
    }

    /// Whether `poll` has anything to do at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        self.due.is_some_and(|d| now >= d)
    }

    /// Starts due checks, reads answers, times out the slow; returns the
    /// IPv4 packets to send, and whether a member changed state.
    pub fn poll(&mut self, now: Instant) -> (Vec<Vec<u8>>, bool) {
        let snow = self.now(now);
        let mut changed = false;
        let mut out = Vec::new();
        for s in self.stacks.values_mut() {
            s.iface.poll(snow, &mut s.dev, &mut s.sockets);
        }
        let keys: Vec<String> = self.members.keys().cloned().collect();
        for k in keys {
            let Some(m) = self.members.get_mut(&k) else { continue };
            if m.monitor.kind == CheckKind::Ping {
                let timeout = Duration::from_secs(m.monitor.timeout as u64);
                match m.ping {
                    None if now >= m.next && m.src == 0 => {
                        changed |= finish(m, now, Err("no address of the appliance reaches the member".into()));
                    }
                    None if now >= m.next => {
                        m.ping_seq = m.ping_seq.wrapping_add(1);
                        out.push(echo_request(m.src, m.addr, m.ping_id, m.ping_seq));
                        m.ping = Some((now, false));
                    }
                    Some((_, true)) => {
                        m.ping = None;
                        changed |= finish(m, now, Ok(()));
                    }
                    Some((sent, false)) if now.duration_since(sent) >= timeout => {
                        m.ping = None;
                        changed |= finish(m, now, Err(format!("no echo reply within {} s", m.monitor.timeout)));
                    }
                    _ => {}
                }
                continue;
            }
            if m.check.is_none() && now >= m.next {
                if m.src == 0 {
                    changed |= finish(m, now, Err("no address of the appliance reaches the member".into()));
                    continue;
                }
                let port = HEALTH_PORTS.start() + self.next_port % HEALTH_PORTS.len() as u16;
                self.next_port = self.next_port.wrapping_add(1);
                let stack = self.stacks.entry(m.src).or_insert_with(|| Stack::new(m.src, snow));
                let mut sock =
                    tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 4096]), tcp::SocketBuffer::new(vec![0; 1024]));
                let remote = IpEndpoint::new(IpAddress::Ipv4(Ipv4Address::from(m.addr.to_be_bytes())), m.port);
                let local = IpEndpoint::new(IpAddress::Ipv4(Ipv4Address::from(m.src.to_be_bytes())), port);
                match sock.connect(stack.iface.context(), remote, local) {
                    Ok(()) => {
                        let handle = stack.sockets.add(sock);
                        m.check = Some(Check { handle, started: now, sent: false, answer: Vec::new() });
                    }
                    Err(e) => changed |= finish(m, now, Err(format!("cannot connect: {e}"))),
                }
                continue;
            }
            let Some(c) = m.check.as_mut() else { continue };
            let Some(stack) = self.stacks.get_mut(&m.src) else { continue };
            let s = stack.sockets.get_mut::<tcp::Socket>(c.handle);
            let mut verdict: Option<Result<(), String>> = None;
            let connected = s.can_recv()
                || matches!(
                    s.state(),
                    tcp::State::Established
                        | tcp::State::FinWait1
                        | tcp::State::FinWait2
                        | tcp::State::CloseWait
                        | tcp::State::Closing
                        | tcp::State::LastAck
                        | tcp::State::TimeWait
                );
            if connected {
                match &m.monitor.kind {
                    // (PING checks do not use a TCP socket.)
                    CheckKind::Connect | CheckKind::Ping => verdict = Some(Ok(())),
                    CheckKind::Http { method, path, codes } => {
                        if !c.sent && s.can_send() {
                            let req = format!(
                                "{method} {path} HTTP/1.0\r\nHost: {}:{}\r\nUser-Agent: astara-dp-health-check\r\nConnection: close\r\n\r\n",
                                std::net::Ipv4Addr::from(m.addr),
                                m.port
                            );
                            c.sent = s.send_slice(req.as_bytes()).is_ok();
                        }
                        while s.can_recv() {
                            let n = s
                                .recv(|b| {
                                    let n = b.len().min(1024usize.saturating_sub(c.answer.len()));
                                    c.answer.extend_from_slice(&b[..n]);
                                    (b.len(), b.len())
                                })
                                .unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                        }
                        if let Some(code) = status_code(&c.answer) {
                            verdict = Some(if codes.iter().any(|&(a, b)| (a..=b).contains(&code)) {
                                Ok(())
                            } else {
                                Err(format!("HTTP status {code}"))
                            });
                        } else if c.answer.len() >= 1024 {
                            verdict = Some(Err("not an HTTP answer".into()));
                        } else if !s.may_recv() && !s.can_recv() && s.state() != tcp::State::Established {
                            verdict = Some(Err("closed without an HTTP answer".into()));
                        }
                    }
                }
            } else if !s.is_active() {
                verdict = Some(Err("connection refused".into()));
            }
            if verdict.is_none() && now.duration_since(c.started) >= Duration::from_secs(m.monitor.timeout as u64) {
                verdict = Some(Err(format!("no answer within {} s", m.monitor.timeout)));
            }
            if let Some(v) = verdict {
                s.abort();
                stack.closing.push(c.handle);
                m.check = None;
                changed |= finish(m, now, v);
            }
        }
        for s in self.stacks.values_mut() {
            s.iface.poll(snow, &mut s.dev, &mut s.sockets);
            for h in s.closing.drain(..) {
                s.sockets.remove(h);
            }
            out.extend(s.dev.tx.drain(..));
        }
        // Stacks of addresses no member is checked from any more.
        let used: HashSet<u32> = self.members.values().map(|m| m.src).collect();
        self.stacks.retain(|a, s| used.contains(a) || s.sockets.iter().next().is_some());
        self.due =
            self.members
                .values()
                .map(|m| match (&m.check, m.ping) {
                    (Some(c), _) => (c.started + Duration::from_secs(m.monitor.timeout as u64))
                        .min(now + Duration::from_millis(100)),
                    (None, Some((sent, _))) => sent + Duration::from_secs(m.monitor.timeout as u64),
                    (None, None) => m.next,
                })
                .min();
        (out, changed)
    }

    /// Keys of the members out of their pools.
    pub fn down(&self) -> HashSet<String> {
        self.members.iter().filter(|(_, m)| !m.up).map(|(k, _)| k.clone()).collect()
    }

    /// Every checked member's health, by key.
    pub fn view(&self, now: Instant) -> BTreeMap<String, MemberHealth> {
        self.members
            .iter()
            .map(|(k, m)| {
                (
                    k.clone(),
                    MemberHealth {
                        up: m.up,
                        checks: m.checks,
                        failed_checks: m.failed,
                        failures: m.failures,
                        last_result: m.last.clone(),
                        since_s: now.duration_since(m.changed).as_secs(),
                    },
                )
            })
            .collect()
    }
}

/// Records a check's result; true when the member changed state.
fn finish(m: &mut Member, now: Instant, r: Result<(), String>) -> bool {
    m.checks += 1;
    m.next = now + Duration::from_secs(m.monitor.delay as u64);
    let was = m.up;
    match r {
        Ok(()) => {
            m.failures = 0;
            m.last = "ok".into();
            m.up = true;
        }
        Err(e) => {
            m.failed += 1;
            m.failures += 1;
            m.last = e;
            if m.failures >= m.monitor.max_retries {
                m.up = false;
            }
        }
    }
    if m.up != was {
        m.changed = now;
        log::warn!(
            "lb member {}:{} is {} ({})",
            std::net::Ipv4Addr::from(m.addr),
            m.port,
            if m.up { "up" } else { "down" },
            m.last
        );
    }
    m.up != was
}

/// An ICMP echo request from `src` to `dst` (IPv4 header on).
fn echo_request(src: u32, dst: u32, id: u16, seq: u16) -> Vec<u8> {
    use crate::packet::checksum::checksum;
    const DATA: &[u8] = b"astara-dp health check";
    let total = 20 + 8 + DATA.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
    p.extend_from_slice(&src.to_be_bytes());
    p.extend_from_slice(&dst.to_be_bytes());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&[8, 0, 0, 0]);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(DATA);
    let c = checksum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    p
}

/// The status code of an HTTP answer, once its status line is complete.
pub fn status_code(answer: &[u8]) -> Option<u16> {
    let end = answer.windows(2).position(|w| w == b"\r\n").or_else(|| answer.iter().position(|&b| b == b'\n'))?;
    let line = std::str::from_utf8(&answer[..end]).ok()?;
    let mut parts = line.split_ascii_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok().filter(|c| (100..=599).contains(c))
}

/// The appliance's address on the port that leads to `addr`.
pub fn source_for(snap: &Snapshot, addr: u32) -> Option<u32> {
    snap.port_addr_v4(snap.egress_v4(addr)?.1.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_are_well_formed() {
        let p = echo_request(0x0a00_0001, 0x0a00_0002, 0xad01, 7);
        let (ip, rest) = etherparse::Ipv4Header::from_slice(&p).unwrap();
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        assert_eq!(
            (ip.source, ip.destination, ip.protocol),
            ([10, 0, 0, 1], [10, 0, 0, 2], etherparse::IpNumber::ICMP)
        );
        let icmp = etherparse::Icmpv4Slice::from_slice(rest).unwrap();
        match icmp.icmp_type() {
            etherparse::Icmpv4Type::EchoRequest(e) => assert_eq!((e.id, e.seq), (0xad01, 7)),
            t => panic!("{t:?}"),
        }
        assert_eq!(icmp.checksum(), icmp.icmp_type().calc_checksum(icmp.payload()));
    }

    #[test]
    fn max_retries_failures_in_a_row_take_a_member_down_and_one_success_brings_it_back() {
        let now = Instant::now();
        let mut m = Member {
            addr: 1,
            port: 80,
            monitor: Monitor { kind: CheckKind::Connect, delay: 2, timeout: 1, max_retries: 3 },
            up: true,
            failures: 0,
            checks: 0,
            failed: 0,
            last: String::new(),
            changed: now,
            next: now,
            check: None,
            src: 2,
            ping_id: 0,
            ping_seq: 0,
            ping: None,
        };
        assert!(!finish(&mut m, now, Err("refused".into())));
        assert!(!finish(&mut m, now, Ok(())), "a success in between starts the count again");
        assert!(!finish(&mut m, now, Err("refused".into())));
        assert!(!finish(&mut m, now, Err("refused".into())));
        assert!(m.up);
        assert!(finish(&mut m, now, Err("refused".into())), "the third failure in a row");
        assert!(!m.up && m.last == "refused" && m.failed == 4 && m.checks == 5);
        assert_eq!(m.next, now + Duration::from_secs(2));
        assert!(!finish(&mut m, now, Err("refused".into())));
        assert!(finish(&mut m, now, Ok(())) && m.up && m.failures == 0);
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.1 503 Service Unavailable\r\nServer: x\r\n"), Some(503));
        assert_eq!(status_code(b"HTTP/1.1 20"), None, "incomplete");
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 999 What\r\n"), None);
    }
}
