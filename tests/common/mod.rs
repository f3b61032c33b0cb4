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
