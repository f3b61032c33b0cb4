//! The scenario file format (TOML). See `pktgen-scenarios/README.md`.

use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// How random route prefixes are sized.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LengthDist {
    /// Roughly an Internet table: mostly /24, /20-/23 next, few /8-/15 and
    /// few longer than /24.
    #[default]
    Internet,
    Fixed(u8),
}

impl<'de> Deserialize<'de> for LengthDist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum F {
            N(u8),
            S(String),
        }
        match F::deserialize(d)? {
            F::N(n) if (1..=32).contains(&n) => Ok(LengthDist::Fixed(n)),
            F::S(s) if s == "internet" => Ok(LengthDist::Internet),
            _ => Err(serde::de::Error::custom("lengths is \"internet\" or a prefix length 1..=32")),
        }
    }
}

/// Frame sizes, counted as on the wire with the 4-byte FCS (RFC 2544): a
/// "64-byte" packet is a 60-byte frame in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeSpec {
    Fixed(u16),
    /// 7:4:1 of 64, 570 and 1518 bytes (simple IMIX).
    Imix,
    List(Vec<u16>),
}

impl SizeSpec {
    /// The wire size of packet number `k` of the pattern.
    pub fn size_of(&self, k: usize) -> u16 {
        const IMIX: [u16; 12] = [64, 570, 64, 64, 570, 64, 1518, 64, 570, 64, 64, 570];
        match self {
            SizeSpec::Fixed(n) => *n,
            SizeSpec::Imix => IMIX[k % IMIX.len()],
            SizeSpec::List(v) => v[k % v.len()],
        }
    }
}

impl<'de> Deserialize<'de> for SizeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum F {
            N(u16),
            S(String),
            L(Vec<u16>),
        }
        let ok = |n: u16| (64..=1522).contains(&n);
        match F::deserialize(d)? {
            F::N(n) if ok(n) => Ok(SizeSpec::Fixed(n)),
            F::S(s) if s == "imix" => Ok(SizeSpec::Imix),
            F::L(v) if !v.is_empty() && v.iter().all(|&n| ok(n)) => Ok(SizeSpec::List(v)),
            _ => Err(serde::de::Error::custom("size is 64..=1522, \"imix\", or a non-empty list of sizes")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Udp,
    Tcp,
    Icmp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Number of distinct random prefixes added as static routes.
    pub count: usize,
    /// Gateways the prefixes are spread over (round robin).
    pub next_hops: Vec<IpAddr>,
    #[serde(default)]
    pub lengths: LengthDist,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeighborSpec {
    pub port: String,
    pub ip: IpAddr,
    pub mac: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSpec {
    /// Interface the traffic arrives on.
    pub ingress: String,
    pub flows: usize,
    #[serde(default)]
    pub protocol: Protocol,
    /// Source addresses (a CIDR).
    pub src: String,
    #[serde(default = "any_port")]
    pub sport: [u16; 2],
    #[serde(default = "any_port")]
    pub dport: [u16; 2],
    /// "routes" (inside the random prefixes) or a CIDR.
    pub dst: String,
    pub size: SizeSpec,
    /// Length of the replayed pattern (default: one packet per flow).
    #[serde(default)]
    pub packets: Option<usize>,
    #[serde(default = "ttl")]
    pub ttl: u8,
    /// Every Nth packet of the pattern is an ARP request for the ingress
    /// port's address instead (load on the exception path; with `bench
    /// --host-stack` the host stack answers them).
    #[serde(default)]
    pub arp_every: Option<usize>,
    /// Every Nth packet is an ICMP echo request (64 bytes on the wire) to
    /// the ingress port's address instead (counted after `arp_every`).
    #[serde(default)]
    pub echo_every: Option<usize>,
}

fn any_port() -> [u16; 2] {
    [1024, 65535]
}
fn ttl() -> u8 {
    64
}
fn seed() -> u64 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Astara configuration document, relative to the scenario file.
    pub config: PathBuf,
    #[serde(default = "seed")]
    pub seed: u64,
    #[serde(default)]
    pub routes: Option<RouteSpec>,
    #[serde(default)]
    pub neighbors: Vec<NeighborSpec>,
    pub traffic: TrafficSpec,
    /// The load balancer's source translation: "always" (default) or
    /// "never" (as the runtime file's `[lb] snat`).
    #[serde(default)]
    pub lb_snat: Option<String>,
    /// Directory of the scenario file (set by `load`).
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text, path.parent().unwrap_or(Path::new("."))).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str, dir: &Path) -> Result<Scenario, String> {
        let mut s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        if s.traffic.flows == 0 {
            return Err("traffic.flows must be at least 1".into());
        }
        if s.traffic.sport[0] > s.traffic.sport[1] || s.traffic.dport[0] > s.traffic.dport[1] {
            return Err("traffic.sport/dport are [low, high]".into());
        }
        if let Some(r) = &s.routes
            && r.count > 0
            && r.next_hops.is_empty()
        {
            return Err("routes.next_hops must name at least one gateway".into());
        }
        s.dir = dir.to_path_buf();
        Ok(s)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join(&self.config)
    }

    /// Packets in the replay pattern.
    pub fn pattern_len(&self) -> usize {
        self.traffic.packets.unwrap_or(self.traffic.flows).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_reject() {
        let t = r#"
            name = "x"
            config = "../configs/router.json"
            [routes]
            count = 10
            next_hops = ["10.0.0.1"]
            [traffic]
            ingress = "ge2"
            flows = 4
            src = "192.168.1.0/24"
            dst = "routes"
            size = "imix"
        "#;
        let s = Scenario::parse(t, Path::new("/tmp/s")).unwrap();
        assert_eq!(s.config_path(), Path::new("/tmp/s/../configs/router.json"));
        assert_eq!(s.traffic.size.size_of(6), 1518);
        assert_eq!(s.routes.as_ref().unwrap().lengths, LengthDist::Internet);
        assert_eq!(s.pattern_len(), 4);
        assert!(Scenario::parse(&t.replace("size = \"imix\"", "size = 20"), Path::new(".")).is_err());
        assert!(Scenario::parse(&t.replace("flows = 4", "flows = 4\nbogus = 1"), Path::new(".")).is_err());
        assert!(Scenario::parse(&t.replace("flows = 4", "flows = 0"), Path::new(".")).is_err());
    }
}
