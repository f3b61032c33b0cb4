//! An independent model of what the router must do with a packet, written
//! from the specification (ASTARA.md, RFC 1812) rather than from the data
//! plane's code: its own longest match over hash maps, its own neighbour,
//! TTL, MTU and management-network rules. The benchmark and the golden tests
//! compare the data plane against it.

use std::collections::{HashMap, HashSet};

/// A port of the modelled router.
#[derive(Debug, Clone)]
pub struct RefPort {
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u16,
    pub management: bool,
    /// On an internal network: everything from it may reach the router.
    pub internal: bool,
    /// (is IPv4, address, prefix length) of each interface address.
    pub addrs: Vec<(bool, u128, u8)>,
}

/// A route through one or more gateways.
#[derive(Debug, Clone)]
pub struct RefRoute {
    pub v4: bool,
    pub net: u128,
    pub len: u8,
    pub next_hops: Vec<u128>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Expect {
    /// Forwarded out of this port (index into `Topology::ports`).
    Forward(usize),
    /// Forwarded, port chosen by ECMP among several.
    ForwardAny,
    /// Delivered to the router itself.
    Local,
    /// Dropped, with the reason's counter name.
    Drop(&'static str),
}

/// A flow as the model sees it (addresses as 128 bits, IPv4 in the low
/// 32). ICMP (1) and ICMPv6 (58) flows are echo requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefFlow {
    pub v4: bool,
    pub src: u128,
    pub dst: u128,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

/// A rule of the forwarding policy (`anchors`), as the document states it:
/// ports are indices into `Topology::ports`, address sets are (is IPv4,
/// network, length) lists with an address-book name already expanded.
#[derive(Debug, Clone, Default)]
pub struct RefRule {
    pub pass: bool,
    /// `interface`, and `direction`: Some(true) in, Some(false) out, None
    /// either.
    pub iface: Option<usize>,
    pub direction: Option<bool>,
    pub dest_iface: Option<usize>,
    /// `family`: Some(true) inet, Some(false) inet6.
    pub v4: Option<bool>,
    pub proto: Option<u8>,
    pub src: Option<Vec<(bool, u128, u8)>>,
    pub dst: Option<Vec<(bool, u128, u8)>>,
    pub sport: Option<(u16, u16)>,
    pub dport: Option<(u16, u16)>,
}

#[derive(Debug, Clone)]
enum Target {
    Connected(usize),
    Via(Vec<u128>),
}

/// The modelled router.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub ports: Vec<RefPort>,
    pub routes: Vec<RefRoute>,
    /// (port, is IPv4, address) pairs with a known MAC.
    pub neighbors: HashSet<(usize, bool, u128)>,
    /// Load-balancer virtual servers: (VIP, protocol, port) → the
    /// addresses of the members taking new flows.
    pub vips: HashMap<(u32, u8, u16), Vec<u32>>,
    /// Floating IPs (`floating_ips`): IPv4 floating address → fixed
    /// address. Whatever arrives for a floating address, on any port, is
    /// sent on to its fixed address (ASTARA.md, IPv4 NAT).
    pub floating: HashMap<u32, u32>,
    /// The forwarding policy, in document order.
    pub anchors: Vec<RefRule>,
    index: HashMap<(bool, u8, u128), Target>,
    /// Prefix lengths present, longest first: [IPv6, IPv4].
    lens: [Vec<u8>; 2],
}

fn mask(v4: bool, len: u8) -> u128 {
    let w = if v4 { 32 } else { 128 };
    if len == 0 {
        0
    } else {
        let full: u128 = if v4 { u32::MAX as u128 } else { u128::MAX };
        (full << (w - len as u32)) & full
    }
}

impl Topology {
    pub fn new(ports: Vec<RefPort>, routes: Vec<RefRoute>, neighbors: HashSet<(usize, bool, u128)>) -> Topology {
        let mut t = Topology {
            ports,
            routes,
            neighbors,
            vips: HashMap::new(),
            floating: HashMap::new(),
            anchors: Vec::new(),
            index: HashMap::new(),
            lens: [Vec::new(), Vec::new()],
        };
        // Routes first, then connected prefixes, so a connected prefix wins.
        for r in &t.routes {
            t.index.insert((r.v4, r.len, r.net & mask(r.v4, r.len)), Target::Via(r.next_hops.clone()));
        }
        for (i, p) in t.ports.iter().enumerate() {
            for &(v4, a, l) in &p.addrs {
                t.index.insert((v4, l, a & mask(v4, l)), Target::Connected(i));
            }
        }
        for v4 in [false, true] {
            let mut lens: Vec<u8> =
                t.index.keys().filter(|k| k.0 == v4).map(|k| k.1).collect::<HashSet<_>>().into_iter().collect();
            lens.sort_unstable_by(|a, b| b.cmp(a));
            t.lens[v4 as usize] = lens;
        }
        t
    }

    pub fn port_index(&self, name: &str) -> Option<usize> {
        self.ports.iter().position(|p| p.name == name)
    }

    fn is_local(&self, v4: bool, dst: u128) -> bool {
        if v4 {
            if dst >> 28 == 0xe || dst == u32::MAX as u128 {
                return true;
            }
        } else if dst >> 120 == 0xff || dst >> 118 == 0x3fa {
            return true;
        }
        self.ports
            .iter()
            .flat_map(|p| &p.addrs)
            .any(|&(f, a, l)| f == v4 && (a == dst || (v4 && l < 31 && dst == (a | !mask(true, l)) & u32::MAX as u128)))
    }

    fn lookup(&self, v4: bool, dst: u128) -> Option<&Target> {
        self.lens[v4 as usize].iter().find_map(|&l| self.index.get(&(v4, l, dst & mask(v4, l))))
    }

    /// The port a gateway is reached through (longest connected prefix).
    fn on_link(&self, v4: bool, ip: u128) -> Option<usize> {
        let mut best: Option<(u8, usize)> = None;
        for (i, p) in self.ports.iter().enumerate() {
            for &(f, a, l) in &p.addrs {
                if f == v4 && ip & mask(v4, l) == a & mask(v4, l) && best.is_none_or(|(bl, _)| l > bl) {
                    best = Some((l, i));
                }
            }
        }
        best.map(|b| b.1)
    }

    /// What must happen to the first packet of `flow` (`ip_len` bytes,
    /// TTL or hop limit `ttl`, DF `df`) arriving on port `ingress`: a
    /// load-balancer virtual server sends it on to a member, a floating IP
    /// to its fixed address; forwarded, it meets the forwarding policy
    /// (`anchors`) before its next hop is resolved.
    pub fn expect_flow(&self, ingress: usize, flow: &RefFlow, ip_len: usize, ttl: u8, df: bool) -> Expect {
        let v4 = flow.v4;
        let Some(members) = self.vips.get(&(flow.dst as u32, flow.proto, flow.dport)).filter(|_| v4) else {
            let dst = match self.floating.get(&(flow.dst as u32)) {
                Some(&fixed) if v4 => fixed as u128,
                _ => flow.dst,
            };
            return self.expect_to(ingress, &RefFlow { dst, ..*flow }, ip_len, ttl, df);
        };
        let mut outcomes: Vec<Expect> = members
            .iter()
            .map(|&m| self.expect_to(ingress, &RefFlow { dst: m as u128, ..*flow }, ip_len, ttl, df))
            .collect();
        outcomes.sort_unstable();
        outcomes.dedup();
        match outcomes.as_slice() {
            [] => Expect::Drop("lb: no member available"),
            [one] => *one,
            _ => Expect::ForwardAny,
        }
    }

    /// `expect` for a flow whose destination is final (translated), with
    /// the forwarding policy applied to what would leave by one port (a
    /// route over gateways on several ports gives `ForwardAny`, unchecked).
    fn expect_to(&self, ingress: usize, flow: &RefFlow, ip_len: usize, ttl: u8, df: bool) -> Expect {
        match self.route(ingress, flow.v4, flow.dst, ip_len, ttl, df) {
            Err(Expect::Local) => self.input(ingress, flow),
            Ok((egress, _)) if !self.policy_passes(ingress, egress, flow) => Expect::Drop("firewall: blocked by rule"),
            Ok((egress, true)) => Expect::Forward(egress),
            Ok((_, false)) => Expect::Drop("neighbor: no neighbour entry"),
            Err(e) => e,
        }
    }

    /// The appliance's INPUT policy (ASTARA.md, Filter) for the first
    /// packet of a flow to the router itself: its management address only
    /// from the management port; ICMP echo and all ICMPv6 from anywhere;
    /// everything from internal networks; TCP 22, 5000 and 9697 from the
    /// management network; nothing else (external, load-balancer and
    /// isolated networks only answer flows the router opened).
    pub fn input(&self, ingress: usize, f: &RefFlow) -> Expect {
        let elsewhere =
            self.ports.iter().enumerate().any(|(i, p)| {
                i != ingress && p.management && p.addrs.iter().any(|&(v4, a, _)| v4 == f.v4 && a == f.dst)
            });
        if elsewhere {
            return Expect::Drop("firewall: management address from another interface");
        }
        let inp = &self.ports[ingress];
        let allowed = (if f.v4 { f.proto == 1 } else { f.proto == 58 })
            || inp.internal
            || inp.management && f.proto == 6 && [22, 5000, 9697].contains(&f.dport);
        if allowed { Expect::Local } else { Expect::Drop("firewall: not allowed to the appliance") }
    }

    /// The forwarding policy for a flow from `ingress` out of `egress`: the
    /// rules in order, the first that matches decides, none passes.
    pub fn policy_passes(&self, ingress: usize, egress: usize, f: &RefFlow) -> bool {
        let on = |p: usize| p == egress;
        let covers = |set: &Option<Vec<(bool, u128, u8)>>, a: u128| {
            set.as_ref()
                .is_none_or(|v| v.iter().any(|&(v4, net, len)| v4 == f.v4 && a & mask(v4, len) == net & mask(v4, len)))
        };
        let within = |r: Option<(u16, u16)>, p: u16| r.is_none_or(|(lo, hi)| lo <= p && p <= hi);
        for r in &self.anchors {
            let iface = match (r.iface, r.direction) {
                (None, _) => true,
                (Some(p), Some(true)) => p == ingress,
                (Some(p), Some(false)) => on(p),
                (Some(p), None) => p == ingress || on(p),
            };
            let ports = r.sport.is_some() || r.dport.is_some();
            let proto = match r.proto {
                Some(p) => p == f.proto,
                None => !ports || f.proto == 6 || f.proto == 17,
            };
            if iface
                && r.dest_iface.is_none_or(on)
                && r.v4.is_none_or(|v4| v4 == f.v4)
                && proto
                && covers(&r.src, f.src)
                && covers(&r.dst, f.dst)
                && within(r.sport, f.sport)
                && within(r.dport, f.dport)
            {
                return r.pass;
            }
        }
        true
    }

    /// What must happen to a well-formed IP packet of `ip_len` bytes for
    /// `dst`, arriving on port `ingress` with TTL/hop limit `ttl` (no
    /// translation, no policy).
    pub fn expect(&self, ingress: usize, v4: bool, dst: u128, ip_len: usize, ttl: u8, df: bool) -> Expect {
        match self.route(ingress, v4, dst, ip_len, ttl, df) {
            Ok((egress, true)) => Expect::Forward(egress),
            Ok((_, false)) => Expect::Drop("neighbor: no neighbour entry"),
            Err(e) => e,
        }
    }

    /// Routing: the egress port and whether its next hop's MAC is known,
    /// or the outcome when the packet is not forwarded to one port.
    fn route(
        &self,
        ingress: usize,
        v4: bool,
        dst: u128,
        ip_len: usize,
        ttl: u8,
        df: bool,
    ) -> Result<(usize, bool), Expect> {
        let Some(inp) = self.ports.get(ingress) else { return Err(Expect::Drop("parse: destination mac not ours")) };
        if ip_len > inp.mtu as usize {
            return Err(Expect::Drop("parse: larger than ingress mtu"));
        }
        if self.is_local(v4, dst) {
            return Err(Expect::Local);
        }
        let Some(target) = self.lookup(v4, dst) else { return Err(Expect::Drop("route: no route")) };
        if ttl <= 1 {
            return Err(Expect::Drop(if v4 { "route: ipv4 ttl expired" } else { "route: ipv6 hop limit expired" }));
        }
        let (egress, neighbor) = match target {
            Target::Connected(p) => (*p, self.neighbors.contains(&(*p, v4, dst))),
            Target::Via(hops) => {
                let ports: HashSet<Option<usize>> = hops.iter().map(|h| self.on_link(v4, *h)).collect();
                if ports.len() != 1 {
                    return Err(Expect::ForwardAny);
                }
                let Some(p) = ports.into_iter().next().flatten() else { return Err(Expect::Drop("route: no route")) };
                (p, hops.iter().all(|h| self.neighbors.contains(&(p, v4, *h))))
            }
        };
        let out = &self.ports[egress];
        if out.management && egress != ingress {
            return Err(Expect::Drop("route: forwarding into management network"));
        }
        if ip_len > out.mtu as usize {
            return Err(Expect::Drop(match (v4, df) {
                (true, true) => "route: exceeds egress mtu (df set)",
                (true, false) => "route: needs fragmentation",
                _ => "route: ipv6 packet too big",
            }));
        }
        Ok((egress, neighbor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> Topology {
        let ports = vec![
            RefPort {
                name: "ge0".into(),
                mac: [2; 6],
                mtu: 1280,
                management: true,
                internal: false,
                addrs: vec![(false, 0xfdca << 112 | 2, 64)],
            },
            RefPort {
                name: "ge1".into(),
                mac: [3; 6],
                mtu: 1500,
                management: false,
                internal: false,
                addrs: vec![(true, 0xcb00_710a, 24)],
            },
            RefPort {
                name: "ge2".into(),
                mac: [4; 6],
                mtu: 1450,
                management: false,
                internal: true,
                addrs: vec![(true, 0xc0a8_0101, 24)],
            },
        ];
        let routes = vec![RefRoute { v4: true, net: 0, len: 0, next_hops: vec![0xcb00_7101] }];
        let neighbors = [(1, true, 0xcb00_7101u128), (2, true, 0xc0a8_0105)].into_iter().collect();
        Topology::new(ports, routes, neighbors)
    }

    #[test]
    fn expectations() {
        let t = topo();
        assert_eq!(t.expect(2, true, 0x0808_0808, 100, 64, true), Expect::Forward(1));
        assert_eq!(t.expect(1, true, 0xc0a8_0105, 100, 64, true), Expect::Forward(2));
        assert_eq!(t.expect(1, true, 0xc0a8_0106, 100, 64, true), Expect::Drop("neighbor: no neighbour entry"));
        assert_eq!(t.expect(1, true, 0xc0a8_0105, 1460, 64, true), Expect::Drop("route: exceeds egress mtu (df set)"));
        assert_eq!(t.expect(1, true, 0xc0a8_0105, 1460, 64, false), Expect::Drop("route: needs fragmentation"));
        assert_eq!(t.expect(2, true, 0x0808_0808, 100, 1, true), Expect::Drop("route: ipv4 ttl expired"));
        assert_eq!(t.expect(2, true, 0xc0a8_0101, 100, 1, true), Expect::Local);
        assert_eq!(t.expect(2, true, 0xc0a8_01ff, 100, 64, true), Expect::Local);
        assert_eq!(
            t.expect(2, false, 0xfdca << 112 | 9, 100, 64, true),
            Expect::Drop("route: forwarding into management network")
        );
        assert_eq!(t.expect(2, false, 0x2001 << 112, 100, 64, true), Expect::Drop("route: no route"));
        assert_eq!(t.expect(2, true, 0x0808_0808, 1460, 64, true), Expect::Drop("parse: larger than ingress mtu"));
    }

    fn udp(src: u32, dst: u32) -> RefFlow {
        RefFlow { v4: true, src: src as u128, dst: dst as u128, proto: 17, sport: 40000, dport: 8080 }
    }

    #[test]
    fn floating_ips_reach_their_fixed_address() {
        let mut t = topo();
        // 203.0.113.50 → 192.168.1.5 (on ge2, MAC known); 203.0.113.51 →
        // 192.168.1.6 (no MAC).
        t.floating.insert(0xcb00_7132, 0xc0a8_0105);
        t.floating.insert(0xcb00_7133, 0xc0a8_0106);
        // From outside (ge1) and from inside (ge2: hairpin).
        assert_eq!(t.expect_flow(1, &udp(0x6440_0001, 0xcb00_7132), 100, 64, true), Expect::Forward(2));
        assert_eq!(
            t.expect_flow(2, &RefFlow { proto: 6, ..udp(0xc0a8_0106, 0xcb00_7132) }, 100, 64, true),
            Expect::Forward(2)
        );
        assert_eq!(
            t.expect_flow(1, &udp(0x6440_0001, 0xcb00_7133), 100, 64, true),
            Expect::Drop("neighbor: no neighbour entry")
        );
        // Not a floating IP: its own on-link neighbour, which is unknown.
        assert_eq!(
            t.expect_flow(1, &udp(0x6440_0001, 0xcb00_7134), 100, 64, true),
            Expect::Drop("neighbor: no neighbour entry")
        );
        // Only IPv4 addresses are translated.
        assert_eq!(
            t.expect_flow(1, &RefFlow { v4: false, ..udp(0x6440_0001, 0xcb00_7132) }, 100, 64, true),
            Expect::Drop("route: no route")
        );
    }

    #[test]
    fn anchors_first_match_wins_after_translation() {
        let mut t = topo();
        t.floating.insert(0xcb00_7132, 0xc0a8_0105);
        let v4net = |a: u32, l: u8| Some(vec![(true, a as u128, l)]);
        t.anchors = vec![
            // Inbound on ge1 from 198.51.100.0/24: blocked.
            RefRule { iface: Some(1), direction: Some(true), src: v4net(0xc633_6400, 24), ..Default::default() },
            // TCP to 192.168.1.5 port 22 out of ge2: passed.
            RefRule {
                pass: true,
                iface: Some(2),
                direction: Some(false),
                proto: Some(6),
                dst: v4net(0xc0a8_0105, 32),
                dport: Some((22, 22)),
                ..Default::default()
            },
            // Ports without a protocol: TCP and UDP to 192.168.1.0/24
            // ports 20-30, blocked (ICMP is not).
            RefRule { dst: v4net(0xc0a8_0100, 24), dport: Some((20, 30)), ..Default::default() },
            // IPv6 only: everything else blocked.
            RefRule { v4: Some(false), ..Default::default() },
        ];
        let f = |src: u32, dst: u32, proto: u8, dport: u16| RefFlow {
            v4: true,
            src: src as u128,
            dst: dst as u128,
            proto,
            sport: 50000,
            dport,
        };
        let blocked = Expect::Drop("firewall: blocked by rule");
        // The floating IP is translated before the rules: they see
        // 192.168.1.5.
        assert_eq!(t.expect_flow(1, &f(0xc633_6401, 0xcb00_7132, 6, 22), 100, 64, true), blocked);
        assert_eq!(t.expect_flow(1, &f(0x0808_0808, 0xcb00_7132, 6, 22), 100, 64, true), Expect::Forward(2));
        assert_eq!(t.expect_flow(1, &f(0x0808_0808, 0xcb00_7132, 17, 22), 100, 64, true), blocked);
        assert_eq!(t.expect_flow(1, &f(0x0808_0808, 0xcb00_7132, 6, 25), 100, 64, true), blocked);
        assert_eq!(t.expect_flow(1, &f(0x0808_0808, 0xcb00_7132, 1, 25), 100, 64, true), Expect::Forward(2));
        assert_eq!(t.expect_flow(1, &f(0x0808_0808, 0xcb00_7132, 17, 31), 100, 64, true), Expect::Forward(2));
        // Blocked before its next hop is looked for; not applied to the
        // router's own traffic or to what routing drops.
        assert_eq!(t.expect_flow(1, &f(0xc633_6401, 0xc0a8_0106, 17, 9), 100, 64, true), blocked);
        assert_eq!(t.expect_flow(1, &f(0xc633_6401, 0xcb00_710a, 1, 0), 100, 64, true), Expect::Local);
        assert_eq!(
            t.expect_flow(1, &f(0xc633_6401, 0xc0a8_0105, 17, 9), 1460, 64, true),
            Expect::Drop("route: exceeds egress mtu (df set)")
        );
        // No direction: the interface is either side.
        t.anchors = vec![RefRule { iface: Some(2), ..Default::default() }];
        assert_eq!(t.expect_flow(1, &f(0x0808_0808, 0xc0a8_0105, 17, 9), 100, 64, true), blocked);
        assert_eq!(t.expect_flow(2, &f(0xc0a8_0105, 0x0808_0808, 17, 9), 100, 64, true), blocked);
        t.anchors = vec![RefRule { iface: Some(2), direction: Some(true), ..Default::default() }];
        assert_eq!(t.expect_flow(1, &f(0x0808_0808, 0xc0a8_0105, 17, 9), 100, 64, true), Expect::Forward(2));
        assert_eq!(t.expect_flow(2, &f(0xc0a8_0105, 0x0808_0808, 17, 9), 100, 64, true), blocked);
        t.anchors = vec![RefRule { dest_iface: Some(1), ..Default::default() }];
        assert_eq!(t.expect_flow(2, &f(0xc0a8_0105, 0x0808_0808, 17, 9), 100, 64, true), blocked);
        assert_eq!(t.expect_flow(1, &f(0x0808_0808, 0xc0a8_0105, 17, 9), 100, 64, true), Expect::Forward(2));
    }

    #[test]
    fn input_policy_of_the_appliance() {
        let t = topo();
        let f = |proto: u8, dst: u128, dport: u16, v4: bool| RefFlow { v4, src: 9, dst, proto, sport: 40000, dport };
        let mgt = 0xfdca << 112 | 2;
        // ge0 management, ge1 external, ge2 internal.
        assert_eq!(t.expect_flow(2, &f(17, 0xc0a8_0101, 53, true), 100, 64, true), Expect::Local);
        assert_eq!(t.expect_flow(2, &f(17, 0xc0a8_01ff, 67, true), 100, 64, true), Expect::Local);
        let refused = Expect::Drop("firewall: not allowed to the appliance");
        assert_eq!(t.expect_flow(1, &f(17, 0xcb00_710a, 53, true), 100, 64, true), refused);
        assert_eq!(t.expect_flow(1, &f(6, 0xcb00_710a, 22, true), 100, 64, true), refused);
        assert_eq!(t.expect_flow(1, &f(1, 0xcb00_710a, 0, true), 100, 64, true), Expect::Local);
        assert_eq!(t.expect_flow(0, &f(6, mgt, 5000, false), 100, 64, true), Expect::Local);
        assert_eq!(t.expect_flow(0, &f(6, mgt, 443, false), 100, 64, true), refused);
        assert_eq!(t.expect_flow(0, &f(58, mgt, 0, false), 100, 64, true), Expect::Local);
        assert_eq!(
            t.expect_flow(2, &f(6, mgt, 5000, false), 100, 64, true),
            Expect::Drop("firewall: management address from another interface")
        );
    }
}
