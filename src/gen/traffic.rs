//! Builds a scenario's route table and packets (with `etherparse`, not with
//! the data plane's own writers) and the expected outcome of each packet.

use super::Rng;
use super::reference::{Expect, RefFlow, Topology};
use super::scenario::{LengthDist, Protocol, RouteSpec, Scenario};
use etherparse::{IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv6Extensions, Ipv6Header, PacketBuilder};
use std::collections::HashSet;
use std::net::IpAddr;

/// MAC the generator sends from (a locally administered address).
pub const GEN_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0xfe, 0x01];

#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedRoute {
    pub net: u32,
    pub len: u8,
    pub next_hop: IpAddr,
}

/// A scenario's packets, in replay order, with what must happen to each.
pub struct Traffic {
    pub ingress: usize,
    pub frames: Vec<Vec<u8>>,
    pub expect: Vec<Expect>,
}

fn mask4(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len as u32) }
}

fn draw_len(d: &LengthDist, rng: &mut Rng) -> u8 {
    match *d {
        LengthDist::Fixed(n) => n,
        LengthDist::Internet => match rng.range(0, 999) {
            0..=4 => rng.range(8, 15) as u8,
            5..=104 => rng.range(16, 19) as u8,
            105..=404 => rng.range(20, 23) as u8,
            405..=979 => 24,
            _ => rng.range(25, 32) as u8,
        },
    }
}

/// `count` distinct random IPv4 prefixes, none overlapping `avoid` (the
/// router's connected networks) or special-use space (0/8, 10/8 is fine,
/// 127/8, 224/3), spread round robin over the next hops.
pub fn generate_routes(spec: &RouteSpec, avoid: &[(u32, u8)], rng: &mut Rng) -> Vec<GeneratedRoute> {
    let mut seen = HashSet::with_capacity(spec.count);
    let mut out = Vec::with_capacity(spec.count);
    let overlaps = |net: u32, len: u8| {
        avoid.iter().any(|&(a, l)| {
            let m = mask4(l.min(len));
            a & m == net & m
        })
    };
    let mut tries = 0u64;
    while out.len() < spec.count && tries < spec.count as u64 * 20 + 1000 {
        tries += 1;
        let len = draw_len(&spec.lengths, rng);
        let net = (rng.next_u64() as u32) & mask4(len);
        let first = net >> 24;
        if first == 0 || first == 127 || first >= 224 || overlaps(net, len) || !seen.insert((net, len)) {
            continue;
        }
        let next_hop = spec.next_hops[out.len() % spec.next_hops.len()];
        out.push(GeneratedRoute { net, len, next_hop });
    }
    out
}

fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (a, l) = s.split_once('/').unwrap_or((s, ""));
    let a: IpAddr = a.trim().parse().map_err(|_| format!("'{s}' is not a CIDR"))?;
    let max = if a.is_ipv4() { 32 } else { 128 };
    let l = if l.is_empty() { max } else { l.parse().map_err(|_| format!("'{s}' is not a CIDR"))? };
    if l > max {
        return Err(format!("'{s}' is not a CIDR"));
    }
    Ok((a, l))
}

fn bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

/// A random host address inside a prefix (not the network or broadcast
/// address of an IPv4 prefix shorter than /31).
fn host_in(net: u128, len: u8, v4: bool, rng: &mut Rng) -> u128 {
    let w = if v4 { 32 } else { 128 };
    let host_bits = w - len as u32;
    if host_bits == 0 {
        return net;
    }
    let span: u128 = if host_bits >= 64 { u64::MAX as u128 } else { 1u128 << host_bits };
    let base = net & !(span - 1);
    if v4 && host_bits >= 2 {
        base + 1 + (rng.next_u64() as u128 % (span - 2))
    } else {
        base + (rng.next_u64() as u128 % span)
    }
}

struct Flow {
    v4: bool,
    src: u128,
    dst: u128,
    sport: u16,
    dport: u16,
}

/// Builds the packets of a scenario against the modelled router.
pub fn generate_traffic(s: &Scenario, topo: &Topology, routes: &[GeneratedRoute]) -> Result<Traffic, String> {
    let t = &s.traffic;
    let mut rng = Rng::new(s.seed ^ 0x0074_7261_6666_6963);
    let ingress = topo.port_index(&t.ingress).ok_or_else(|| format!("traffic.ingress: no interface {}", t.ingress))?;
    let (src_net, src_len) = parse_cidr(&t.src).map_err(|e| format!("traffic.src: {e}"))?;
    let v4 = src_net.is_ipv4();
    let dst_cidr = if t.dst == "routes" {
        if routes.is_empty() || !v4 {
            return Err("traffic.dst = \"routes\" needs IPv4 traffic and a [routes] table".into());
        }
        None
    } else {
        let c = parse_cidr(&t.dst).map_err(|e| format!("traffic.dst: {e}"))?;
        if c.0.is_ipv4() != v4 {
            return Err("traffic.src and traffic.dst are of different families".into());
        }
        Some(c)
    };
    let flows: Vec<Flow> = (0..t.flows)
        .map(|_| {
            let dst = match dst_cidr {
                Some((a, l)) => host_in(bits(a), l, v4, &mut rng),
                None => {
                    let r = &routes[(rng.next_u64() % routes.len() as u64) as usize];
                    host_in(r.net as u128, r.len, true, &mut rng)
                }
            };
            Flow {
                v4,
                src: host_in(bits(src_net), src_len, v4, &mut rng),
                dst,
                sport: rng.range(t.sport[0] as u64, t.sport[1] as u64) as u16,
                dport: rng.range(t.dport[0] as u64, t.dport[1] as u64) as u16,
            }
        })
        .collect();
    let dst_mac = topo.ports[ingress].mac;
    let n = s.pattern_len();
    let mut frames = Vec::with_capacity(n);
    let mut expect = Vec::with_capacity(n);
    let arp_target = topo.ports[ingress].addrs.iter().find(|a| a.0).map(|a| a.1 as u32);
    if (t.arp_every.is_some() || t.echo_every.is_some()) && (arp_target.is_none() || !v4) {
        return Err("traffic.arp_every and echo_every need IPv4 traffic into a port with an IPv4 address".into());
    }
    // Requests for the router come from hosts of the network, never from
    // one of its own addresses (that would be an address conflict).
    let own = |a: u32| topo.ports[ingress].addrs.iter().any(|x| x.0 && x.1 as u32 == a);
    let asker = |k: usize| (0..flows.len()).map(|j| flows[(k + j) % flows.len()].src as u32).find(|&a| !own(a));
    let every = |n: Option<usize>, k: usize| n.is_some_and(|n| n > 0 && k % n == n - 1);
    for k in 0..n {
        let f = &flows[k % flows.len()];
        let (arp, echo) = (every(t.arp_every, k), every(t.echo_every, k));
        if (arp || echo)
            && let (Some(target), Some(sender)) = (arp_target, asker(k))
        {
            frames.push(if arp {
                arp_request(sender, target)
            } else {
                let ping =
                    Flow { v4: true, src: sender as u128, dst: target as u128, sport: k as u16, dport: k as u16 };
                build_frame(&ping, Protocol::Icmp, 64, k, dst_mac, 60)?
            });
            expect.push(Expect::Local);
            continue;
        }
        let wire = s.traffic.size.size_of(k) as usize;
        let frame = build_frame(f, t.protocol, t.ttl, k, dst_mac, wire - 4)?;
        let ip_len = frame.len() - 14;
        let proto = match t.protocol {
            Protocol::Udp => 17,
            Protocol::Tcp => 6,
            Protocol::Icmp => 1,
        };
        let flow = RefFlow { v4: f.v4, src: f.src, dst: f.dst, proto, sport: f.sport, dport: f.dport };
        expect.push(topo.expect_flow(ingress, &flow, ip_len, t.ttl, true));
        frames.push(frame);
    }
    Ok(Traffic { ingress, frames, expect })
}

/// A broadcast ARP request from host `sender` for `target` (60 bytes).
fn arp_request(sender: u32, target: u32) -> Vec<u8> {
    let mac = [0x02, 0x00, (sender >> 24) as u8, (sender >> 16) as u8, (sender >> 8) as u8, sender as u8];
    let mut f = vec![0u8; 60];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&sender.to_be_bytes());
    f[38..42].copy_from_slice(&target.to_be_bytes());
    f
}

fn build_frame(
    f: &Flow,
    proto: Protocol,
    ttl: u8,
    k: usize,
    dst_mac: [u8; 6],
    frame_len: usize,
) -> Result<Vec<u8>, String> {
    let ip = if f.v4 {
        let p = match proto {
            Protocol::Udp => IpNumber::UDP,
            Protocol::Tcp => IpNumber::TCP,
            Protocol::Icmp => IpNumber::ICMP,
        };
        let mut h = Ipv4Header::new(0, ttl, p, (f.src as u32).to_be_bytes(), (f.dst as u32).to_be_bytes())
            .map_err(|e| e.to_string())?;
        h.dont_fragment = true;
        h.identification = k as u16;
        IpHeaders::Ipv4(h, Ipv4Extensions::default())
    } else {
        let p = match proto {
            Protocol::Udp => IpNumber::UDP,
            Protocol::Tcp => IpNumber::TCP,
            Protocol::Icmp => IpNumber::IPV6_ICMP,
        };
        IpHeaders::Ipv6(
            Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: 0,
                next_header: p,
                hop_limit: ttl,
                source: f.src.to_be_bytes(),
                destination: f.dst.to_be_bytes(),
            },
            Ipv6Extensions::default(),
        )
    };
    let b = PacketBuilder::ethernet2(GEN_MAC, dst_mac).ip(ip);
    let mut out = Vec::with_capacity(frame_len.max(64));
    let res = match proto {
        Protocol::Udp => {
            let b = b.udp(f.sport, f.dport);
            let pl = frame_len.saturating_sub(b.size(0));
            b.write(&mut out, &vec![0x5a; pl])
        }
        Protocol::Tcp => {
            let b = b.tcp(f.sport, f.dport, k as u32, 64240).ack(1);
            let pl = frame_len.saturating_sub(b.size(0));
            b.write(&mut out, &vec![0x5a; pl])
        }
        Protocol::Icmp if f.v4 => {
            let b = b.icmpv4_echo_request(f.sport, k as u16);
            let pl = frame_len.saturating_sub(b.size(0));
            b.write(&mut out, &vec![0x5a; pl])
        }
        Protocol::Icmp => {
            let b = b.icmpv6_echo_request(f.sport, k as u16);
            let pl = frame_len.saturating_sub(b.size(0));
            b.write(&mut out, &vec![0x5a; pl])
        }
    };
    res.map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pktgen::reference::{RefPort, RefRoute};

    #[test]
    fn routes_are_distinct_and_avoid_connected_space() {
        let spec =
            RouteSpec { count: 5000, next_hops: vec!["203.0.113.1".parse().unwrap()], lengths: LengthDist::Internet };
        let avoid = [(0xc0a8_0100, 24), (0xcb00_7100, 24)];
        let r = generate_routes(&spec, &avoid, &mut Rng::new(7));
        assert_eq!(r.len(), 5000);
        let set: HashSet<_> = r.iter().map(|g| (g.net, g.len)).collect();
        assert_eq!(set.len(), 5000);
        for g in &r {
            assert_eq!(g.net & !mask4(g.len), 0);
            for &(a, l) in &avoid {
                let m = mask4(l.min(g.len));
                assert_ne!(a & m, g.net & m);
            }
        }
        let n24 = r.iter().filter(|g| g.len == 24).count();
        assert!((2600..3100).contains(&n24), "{n24}");
        // Same seed, same table.
        assert_eq!(generate_routes(&spec, &avoid, &mut Rng::new(7)), r);
    }

    #[test]
    fn frames_have_the_requested_sizes_and_parse() {
        let ports = vec![
            RefPort {
                name: "ge1".into(),
                mac: [2, 0, 0, 0, 0, 1],
                mtu: 1500,
                management: false,
                internal: false,
                addrs: vec![(true, 0xcb00_710a, 24)],
            },
            RefPort {
                name: "ge2".into(),
                mac: [2, 0, 0, 0, 0, 2],
                mtu: 1500,
                management: false,
                internal: false,
                addrs: vec![(true, 0xc0a8_0101, 24)],
            },
        ];
        let topo = Topology::new(
            ports,
            vec![RefRoute { v4: true, net: 0, len: 0, next_hops: vec![0xcb00_7101] }],
            [(0usize, true, 0xcb00_7101u128)].into_iter().collect(),
        );
        let text = r#"
            name = "t"
            config = "x.json"
            [traffic]
            ingress = "ge2"
            flows = 16
            src = "192.168.1.0/24"
            dst = "8.0.0.0/8"
            size = "imix"
            packets = 24
        "#;
        let s = Scenario::parse(text, std::path::Path::new(".")).unwrap();
        let t = generate_traffic(&s, &topo, &[]).unwrap();
        assert_eq!(t.frames.len(), 24);
        for (k, f) in t.frames.iter().enumerate() {
            assert_eq!(f.len() + 4, s.traffic.size.size_of(k) as usize);
            let p = etherparse::SlicedPacket::from_ethernet(f).unwrap();
            assert!(matches!(p.transport, Some(etherparse::TransportSlice::Udp(_))));
            assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 2]);
            assert_eq!(t.expect[k], Expect::Forward(0));
        }
    }
}
