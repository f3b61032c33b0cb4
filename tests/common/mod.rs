//! What several integration tests share: the example router document and
//! the upstream gateway it needs pinned (it has no allocation).
#![allow(dead_code)]

use astara_dp::app::replay::{ReplayOptions, ReplaySummary, run};
use astara_dp::control::{AstaraConfig, CompileOptions, StaticNeighbor};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use std::collections::HashMap;
use std::time::Duration;

pub const ROUTER_JSON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/router.json");

/// configs/router.json as a JSON value, to edit.
pub fn router_json() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(ROUTER_JSON).unwrap()).unwrap()
}

pub fn router_config() -> AstaraConfig {
    AstaraConfig::from_json(&std::fs::read(ROUTER_JSON).unwrap()).unwrap()
}

/// The upstream gateway 203.0.113.1 on ge1, with the MAC `mac`.
pub fn upstream(mac: &str) -> StaticNeighbor {
    StaticNeighbor { port: "ge1".into(), ip: "203.0.113.1".parse().unwrap(), mac: mac.parse().unwrap() }
}

/// Compile options with the upstream gateway pinned to 02:00:5e:00:00:01.
pub fn options() -> CompileOptions {
    CompileOptions { neighbors: vec![upstream("02:00:5e:00:00:01")], ..Default::default() }
}

/// RFC 1071, written independently of the product.
pub fn inet_sum_ok(b: &[u8]) -> bool {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s == 0xffff
}

/// A small seeded generator (xorshift64) for the tests' random traffic.
pub struct Rng(pub u64);

impl Rng {
    /// Spread over the state's bits (never 0, which xorshift keeps).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// Changes one byte of `b` at random.
    pub fn scribble(&mut self, b: &mut [u8]) {
        if !b.is_empty() {
            let i = self.below(b.len() as u64) as usize;
            b[i] = self.next() as u8;
        }
    }
}

/// Recomputes the header checksum of the IPv4 header at `l3` of a frame
/// edited by hand (RFC 1071, written here); a frame too short for the
/// header is left as it is.
pub fn fix_ip_checksum(f: &mut [u8], l3: usize) {
    if f.len() < l3 + 20 {
        return;
    }
    let hl = ((f[l3] & 0xf) as usize * 4).min(f.len() - l3);
    f[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let mut s: u32 = f[l3..l3 + hl].chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    f[l3 + 10..l3 + 12].copy_from_slice(&(!(s as u16)).to_be_bytes());
}

/// The (src, dst, sport, dport) of an IPv4 frame, after checking every
/// checksum in it (IP header; TCP/UDP with etherparse's pseudo-header sum;
/// ICMP with the RFC 1071 sum).
pub fn tuple(frame: &[u8]) -> ([u8; 4], [u8; 4], u16, u16) {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!("not ipv4") };
    let h = ip.header().to_header();
    assert!(inet_sum_ok(ip.header().slice()), "ip header checksum");
    let (s, d) = (h.source, h.destination);
    match p.transport.as_ref().unwrap() {
        TransportSlice::Udp(u) => {
            let uh = u.to_header();
            assert_eq!(uh.checksum, uh.calc_checksum_ipv4(&h, u.payload()).unwrap(), "udp checksum");
            (s, d, uh.source_port, uh.destination_port)
        }
        TransportSlice::Tcp(t) => {
            let th = t.to_header();
            assert_eq!(th.checksum, th.calc_checksum_ipv4(&h, t.payload()).unwrap(), "tcp checksum");
            (s, d, th.source_port, th.destination_port)
        }
        TransportSlice::Icmpv4(i) => {
            assert!(inet_sum_ok(i.slice()), "icmp checksum");
            let id = u16::from_be_bytes([i.slice()[4], i.slice()[5]]);
            (s, d, id, id)
        }
        _ => panic!("unexpected transport"),
    }
}

/// One frame arriving on an interface at a time (seconds after the start).
pub struct In {
    pub port: &'static str,
    pub at: f64,
    pub frame: Vec<u8>,
}

pub fn on(port: &'static str, at: f64, frame: Vec<u8>) -> In {
    In { port, at, frame }
}

pub struct Out {
    pub summary: ReplaySummary,
    /// Frames per output interface, and "punt".
    pub frames: HashMap<String, Vec<Vec<u8>>>,
}

impl Out {
    pub fn on(&self, port: &str) -> &[Vec<u8>] {
        self.frames.get(port).map_or(&[], |v| v.as_slice())
    }
    pub fn drops(&self, reason: &str) -> u64 {
        self.summary.drops.get(reason).copied().unwrap_or(0)
    }
    pub fn counter(&self, name: &str) -> u64 {
        self.summary.counters.get(name).copied().unwrap_or(0)
    }
}

/// Runs `replay` over `inputs` (times in seconds after `start`) with the
/// options of `o` (its inputs and output directory are set here); every
/// output capture is read back.
pub fn replay_with(mut o: ReplayOptions, start: u64, inputs: Vec<In>) -> Out {
    let dir = tempfile::tempdir().unwrap();
    let mut by_port: HashMap<&str, Vec<(Duration, Vec<u8>)>> = HashMap::new();
    for (i, x) in inputs.into_iter().enumerate() {
        // Microsecond steps keep the listed order for equal times.
        let ts = Duration::from_secs(start) + Duration::from_secs_f64(x.at) + Duration::from_micros(i as u64);
        by_port.entry(x.port).or_default().push((ts, x.frame));
    }
    let mut files = Vec::new();
    for (port, frames) in &by_port {
        let path = dir.path().join(format!("in-{port}.pcap"));
        let mut w = pcap_file::pcap::PcapWriter::new(std::fs::File::create(&path).unwrap()).unwrap();
        for (ts, f) in frames {
            w.write_packet(&pcap_file::pcap::PcapPacket::new(*ts, f.len() as u32, f)).unwrap();
        }
        files.push((port.to_string(), path));
    }
    o.inputs = files;
    o.out_dir = dir.path().join("out");
    let summary = run(&o).unwrap();
    let mut frames = HashMap::new();
    for entry in std::fs::read_dir(&o.out_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "pcap") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let f = std::fs::File::open(&path).unwrap();
        let mut r = pcap_file::pcap::PcapReader::new(f).unwrap();
        let mut v = Vec::new();
        while let Some(p) = r.next_packet() {
            v.push(p.unwrap().data.into_owned());
        }
        frames.insert(name.to_string(), v);
    }
    Out { summary, frames }
}

/// A TCP segment with the flags of `f` (sequence 1000, acknowledging 1001).
#[derive(Clone, Copy)]
pub enum Flags {
    Syn,
    SynAck,
    Ack,
    Fin,
}

pub fn tcp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    f: Flags,
) -> Vec<u8> {
    let mut v = Vec::new();
    let b = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, dst, 64).tcp(sport, dport, 1000, 65535);
    let b = match f {
        Flags::Syn => b.syn(),
        Flags::SynAck => b.syn().ack(1001),
        Flags::Ack => b.ack(1001),
        Flags::Fin => b.fin().ack(1001),
    };
    b.write(&mut v, b"segment").unwrap();
    v
}

/// A network object as the orchestrator's `common.network_config` builds
/// it: the interface named, without `lladdr` or `mtu`; both services
/// static; no allocations (set them after).
pub fn orchestrator_network(
    id: &str,
    kind: &str,
    ifname: &str,
    addresses: serde_json::Value,
    subnets: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "interface": {"ifname": ifname, "addresses": addresses},
        "network_id": id,
        "v4_conf_service": "static",
        "v6_conf_service": "static",
        "network_type": kind,
        "subnets": subnets,
        "allocations": [],
    })
}

/// A router's document in the shape the Astara orchestrator builds it
/// (`astara/api/config/router.py` and `common.py`): interfaces named but
/// without `lladdr` or `mtu`, subnets without ids, a subnet whose gateway is
/// `""` (Neutron's none), Neutron's `host_routes` objects, `labels` from the
/// provider rules, the orchestrator's own `config` object, and no
/// `static_routes`, `address_book` or `anchors`. Networks: ge0 management,
/// ge1 external 172.16.77.50/24 (gateway .1), ge2 internal 192.168.0.0/24
/// (a host route to 10.9.0.0/16 via 192.168.0.254; 192.168.0.2 has the
/// floating IP 172.16.77.51), ge3 internal 10.10.0.0/24.
pub fn orchestrator_router_doc() -> serde_json::Value {
    let tenant = "d22b149cee9b4eac8349c517eda00b89";
    let net = orchestrator_network;
    let sub = |cidr: &str, gw: &str, dhcp: bool| serde_json::json!({"cidr": cidr, "dhcp_enabled": dhcp, "dns_nameservers": [], "host_routes": [], "gateway_ip": gw});
    let mut internal = net(
        "6a2d1e9f-4b1c-4c1e-9d55-2f1f3b8e0a01",
        "internal",
        "ge2",
        serde_json::json!(["192.168.0.1/24", "fdd6:a1fa:cfa8:9df::1/64"]),
        serde_json::json!([
            sub("192.168.0.0/24", "192.168.0.1", true),
            sub("fdd6:a1fa:cfa8:9df::/64", "fdd6:a1fa:cfa8:9df::1", false)
        ]),
    );
    internal["subnets"][0]["host_routes"] =
        serde_json::json!([{"destination": "10.9.0.0/16", "nexthop": "192.168.0.254"}]);
    internal["subnets"][0]["dns_nameservers"] = serde_json::json!(["8.8.8.8"]);
    internal["allocations"] = serde_json::json!([
        {"ip_addresses": {"192.168.0.2": true, "fdd6:a1fa:cfa8:9df::2": false},
         "device_id": "c9de2a6c-ff1d-4a1b-8bb3-7a5c4b1fd7a1", "hostname": "192-168-0-2.local", "mac_address": "fa:16:3e:00:00:02"},
        {"ip_addresses": {"192.168.0.3": true}, "device_id": "", "hostname": "192-168-0-3.local", "mac_address": "fa:16:3e:00:00:03"},
    ]);
    serde_json::json!({
        "asn": 64512,
        "neighbor_asn": 64512,
        "default_v4_gateway": "172.16.77.1",
        "networks": [
            net("43dc2fad-f6f9-4668-9695-fed50f7768aa", "management", "ge0",
                serde_json::json!(["fdca:3ba5:a17a:acda:f816:3eff:fe2b:ced0/64"]),
                serde_json::json!([sub("fdca:3ba5:a17a:acda::/64", "fdca:3ba5:a17a:acda::1", false)])),
            net("a1f3c0de-7f6e-4a55-8d0b-3c1b2a9f8e01", "external", "ge1",
                serde_json::json!(["172.16.77.50/24", "fdee:9f85:83be:0:f816:3eff:fe4d:bf12/48"]),
                serde_json::json!([sub("172.16.77.0/24", "172.16.77.1", false), sub("fdee:9f85:83be::/48", "fdee:9f85:83be::1", false)])),
            internal,
            net("0b9f2c4e-1d3a-4e5f-8a6b-7c8d9e0f1a2b", "internal", "ge3",
                serde_json::json!(["10.10.0.1/24"]),
                serde_json::json!([sub("10.10.0.0/24", "", true)])),
        ],
        "labels": {"ext": ["192.168.57.0/24"]},
        "floating_ips": [{"floating_ip": "172.16.77.51", "fixed_ip": "192.168.0.2"}],
        "tenant_id": tenant,
        "hostname": format!("ak-{tenant}"),
        "orchestrator": {"address": "fdca:3ba5:a17a:acda:f816:3eff:fe66:33b6", "metadata_port": 9697, "host": "orchestrator-1"},
    })
}

/// A load balancer's document in the shape the orchestrator builds it
/// (`astara/api/config/loadbalancer.py`, and `to_dict` of the models in
/// `astara/api/neutron.py`): ge1 the load-balancer network
/// (192.168.0.137/24, the VIP), ge0 management; `vip_port` is Neutron's own
/// port object with all its keys; with `listener`, an HTTP listener on
/// port 80 whose `default_pool` is null until `pool`, a round-robin pool
/// with no health monitor and no persistence (both null), whose member
/// 192.168.0.194:80 (`subnet` null) comes with `member`.
pub fn orchestrator_lb_doc(listener: bool, pool: bool, member: bool) -> serde_json::Value {
    let tenant = "d22b149cee9b4eac8349c517eda00b89";
    let lb_id = "8ac54799-b143-48e5-94d4-e5e989592229";
    let mut lb = serde_json::json!({
        "id": lb_id,
        "tenant_id": tenant,
        "name": "balancer1",
        "admin_state_up": true,
        "status": "ACTIVE",
        "listeners": [],
        "vip_address": "192.168.0.137",
        "vip_port": {
            "id": "352e2867-06c6-4ced-8e81-1c016991fb38",
            "name": format!("loadbalancer-{lb_id}"),
            "network_id": "b7fc9b39-401c-47cc-a07d-9f8cde75ccbf",
            "tenant_id": tenant,
            "device_owner": "neutron:LOADBALANCERV2",
            "device_id": lb_id,
            "mac_address": "fa:16:3e:a0:80:82",
            "admin_state_up": true,
            "status": "ACTIVE",
            "fixed_ips": [
                {"subnet_id": "8c58b558-be54-45de-9873-169fe845bb80", "ip_address": "192.168.0.137"},
                {"subnet_id": "89fe7a9d-be92-469c-9a1e-503a39462ed1", "ip_address": "fdd6:a1fa:cfa8:6af6:f816:3eff:fea0:8082"},
            ],
            "allowed_address_pairs": [],
            "extra_dhcp_opts": [],
            "security_groups": ["5d1e3b4c-2a1f-4e8d-9c7b-6a5f4e3d2c1b"],
            "binding:host_id": "compute-1",
            "binding:vif_type": "ovs",
            "binding:vnic_type": "normal",
            "binding:vif_details": {"port_filter": true, "ovs_hybrid_plug": true},
            "binding:profile": {},
            "port_security_enabled": true,
            "dns_name": "",
            "qos_policy_id": null,
        },
    });
    if listener {
        lb["listeners"] = serde_json::json!([{
            "id": "8dca64a2-beaa-484e-a3c8-59c9b63913e0",
            "tenant_id": tenant,
            "name": "listener1",
            "admin_state_up": true,
            "protocol": "HTTP",
            "protocol_port": 80,
            "default_pool": null,
        }]);
    }
    if pool {
        lb["listeners"][0]["default_pool"] = serde_json::json!({
            "id": "255c4d63-6199-4afc-abec-48c5ab46ac2e",
            "tenant_id": tenant,
            "name": "pool1",
            "admin_state_up": true,
            "lb_algorithm": "ROUND_ROBIN",
            "protocol": "HTTP",
            "healthmonitor": null,
            "session_persistence": null,
            "members": [],
        });
    }
    if member {
        lb["listeners"][0]["default_pool"]["members"] = serde_json::json!([{
            "id": "30fc9549-7804-4196-bb86-8ebabc3a79e2",
            "tenant_id": tenant,
            "admin_state_up": true,
            "address": "192.168.0.194",
            "protocol_port": 80,
            "weight": 1,
            "subnet": null,
        }]);
    }
    let net = orchestrator_network;
    serde_json::json!({
        "hostname": format!("ak-loadbalancer-{tenant}"),
        "tenant_id": tenant,
        "networks": [
            net("b7fc9b39-401c-47cc-a07d-9f8cde75ccbf", "loadbalancer", "ge1",
                serde_json::json!(["192.168.0.137/24", "fdd6:a1fa:cfa8:6af6:f816:3eff:fea0:8082/64"]),
                serde_json::json!([
                    {"cidr": "192.168.0.0/24", "dhcp_enabled": true, "dns_nameservers": [], "host_routes": [], "gateway_ip": "192.168.0.1"},
                    {"cidr": "fdd6:a1fa:cfa8:6af6::/64", "dhcp_enabled": false, "dns_nameservers": [], "host_routes": [], "gateway_ip": "fdd6:a1fa:cfa8:6af6::1"},
                ])),
            net("43dc2fad-f6f9-4668-9695-fed50f7768aa", "management", "ge0",
                serde_json::json!(["fdca:3ba5:a17a:acda:f816:3eff:fee0:e1b0/64"]),
                serde_json::json!([
                    {"cidr": "fdca:3ba5:a17a:acda::/64", "dhcp_enabled": true, "dns_nameservers": [], "host_routes": [], "gateway_ip": "fdca:3ba5:a17a:acda::1"},
                ])),
        ],
        "services": {"loadbalancer": lb},
    })
}
