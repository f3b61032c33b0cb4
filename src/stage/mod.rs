//! Pipeline stages. Each takes the whole burst, loops over it, writes its
//! verdict into the packet's metadata and never allocates, locks or blocks.
//! A stage is `fn process(&mut self, snap: &Snapshot, burst: &mut Burst<P>)`.

pub mod conntrack;
pub mod fast;
pub mod firewall;
pub mod lb;
pub mod nat;
pub mod neighbor;
pub mod parse;
pub mod punt;
pub mod route;
pub mod snapshot;

pub use conntrack::{Conntrack, ConntrackConfig};
pub use fast::FastPath;
pub use neighbor::Neighbor;
pub use parse::Parse;
pub use punt::Answer;
pub use route::Route;
pub use snapshot::{AdjKind, Adjacency, Filtering, NatConfig, PortInfo, PortRole, Snapshot};

/// Why a packet goes to the exception path (`Meta::punt` of a `Local` packet).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Punt {
    /// For the host stack: ARP, ICMP, the API, routing protocols.
    Host = 0,
    /// TCP to 169.254.169.254:80 from an internal network: the metadata proxy.
    Metadata = 1,
    /// Routed, but the next hop's MAC is not known yet: held while the host
    /// stack resolves it (`Meta::out_port` and `Meta::nh` say where it goes).
    Resolve = 2,
    /// Set on a *forwarded* IPv4 packet larger than the egress MTU with DF
    /// clear: it goes through every stage whole (NAT rewrites it once) and
    /// the host stack fragments it on the way out.
    Fragment = 3,
    /// Answered by the worker itself (`punt::Answer`: ARP for the router
    /// from a known neighbour, ICMP echo to the router), rewritten in place
    /// into the reply, which leaves by `Meta::out_port` (the port it came in
    /// by) with the host stack's frames; nothing reaches the host stack.
    Answer = 4,
}

macro_rules! drop_reasons {
    ($($(#[$doc:meta])* $v:ident = $name:literal,)*) => {
        /// Why a packet was dropped; every drop is counted under one of these.
        #[repr(u8)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DropReason { $($(#[$doc])* $v,)* }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$v,)*];
            pub const COUNT: usize = Self::ALL.len();

            /// "stage: reason", as VPP names its error counters.
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$v => $name,)* }
            }

            pub fn from_u8(v: u8) -> DropReason {
                Self::ALL.get(v as usize).copied().unwrap_or(DropReason::Internal)
            }
        }
    };
}

drop_reasons! {
    /// Frame larger than a packet buffer (jumbo frames are not supported).
    Oversize = "rx: frame larger than buffer",
    /// Frame shorter than an Ethernet header.
    Runt = "parse: runt frame",
    /// Unicast frame for another station (promiscuous ports see those).
    NotForUs = "parse: destination mac not ours",
    /// Tagged frame for a VLAN no interface is configured on.
    UnknownVlan = "parse: vlan not configured",
    /// Ethertype other than IPv4, IPv6 or ARP (LLDP, STP, ...).
    UnsupportedEthertype = "parse: ethertype not handled",
    ArpMalformed = "parse: malformed arp",
    Ipv4Truncated = "parse: ipv4 truncated",
    Ipv4BadVersion = "parse: ipv4 bad version",
    Ipv4BadHeaderLen = "parse: ipv4 bad header length",
    Ipv4BadTotalLen = "parse: ipv4 bad total length",
    Ipv4BadChecksum = "parse: ipv4 bad header checksum",
    Ipv4BadOptions = "parse: ipv4 malformed options",
    /// LSRR/SSRR: dropped as RFC 7126 recommends.
    Ipv4SourceRoute = "parse: ipv4 source route option",
    Ipv4MartianSource = "parse: ipv4 martian source",
    Ipv4MartianDest = "parse: ipv4 martian destination",
    Ipv6Truncated = "parse: ipv6 truncated",
    Ipv6BadVersion = "parse: ipv6 bad version",
    Ipv6BadPayloadLen = "parse: ipv6 bad payload length",
    Ipv6BadExtHeader = "parse: ipv6 malformed extension header",
    Ipv6ExtChainTooLong = "parse: ipv6 extension chain too long",
    /// Type 0 routing header with segments left (RFC 5095).
    Ipv6Rh0 = "parse: ipv6 type 0 routing header",
    Ipv6MartianSource = "parse: ipv6 martian source",
    Ipv6MartianDest = "parse: ipv6 martian destination",
    /// TCP/UDP/ICMP header cut short in an unfragmented packet.
    L4Truncated = "parse: transport header truncated",
    TcpBadHeaderLen = "parse: tcp bad data offset",
    UdpBadLength = "parse: udp bad length",
    /// First fragment too small to hold the transport header (RFC 1858).
    TinyFragment = "parse: tiny first fragment",
    /// Frame larger than the ingress port's MTU.
    IngressMtu = "parse: larger than ingress mtu",
    NoRoute = "route: no route",
    TtlExpired = "route: ipv4 ttl expired",
    HopLimitExpired = "route: ipv6 hop limit expired",
    /// Destination is a blackhole or unreachable route.
    Blackhole = "route: blackhole",
    /// IPv4 with DF set larger than the egress MTU.
    MtuExceeded = "route: exceeds egress mtu (df set)",
    /// IPv4 without DF larger than the egress MTU (fragmentation is the
    /// slow path's job; it is not done on a worker).
    NeedsFragmentation = "route: needs fragmentation",
    /// IPv6 larger than the egress MTU (packet too big).
    PacketTooBig = "route: ipv6 packet too big",
    /// Link-local source cannot leave its link (RFC 4291 2.5.6).
    LinkLocalSource = "route: ipv6 link-local source",
    /// Forwarding into the management network is refused (ASTARA.md).
    ToManagement = "route: forwarding into management network",
    NoNeighbor = "neighbor: no neighbour entry",
    /// A later fragment whose first fragment was not seen (or expired).
    FragmentWithoutFirst = "conntrack: fragment without its first fragment",
    /// New flow refused: the worker's session table is full.
    SessionTableFull = "conntrack: session table full",
    /// New flow refused: no free external port for its protocol.
    NatPortsExhausted = "nat: no free external port",
    /// The translated flow would collide with an existing session.
    NatCollision = "nat: translated flow already exists",
    /// An ICMPv4 error quoting no flow the router knows, that would need a
    /// translation: to a floating IP, or out of the external port from
    /// inside (RFC 5508 REQ-4, REQ-5: silently dropped).
    NatIcmpErrorNoFlow = "nat: icmp error about no known flow",
    /// New flow to a load-balancer listener with no member taking flows.
    LbNoMember = "lb: no member available",
    /// A flow of an administratively down member past its drain timeout.
    LbDrained = "lb: member drain timeout passed",
    /// New forwarded flow refused by an `anchors` rule.
    BlockedByRule = "firewall: blocked by rule",
    /// New flow to the appliance not allowed by the INPUT policy.
    InputPolicy = "firewall: not allowed to the appliance",
    /// To the management address but arrived on another interface.
    ManagementAddressElsewhere = "firewall: management address from another interface",
    /// The exception path's rate limit for this class of packet was spent.
    PuntLimited = "punt: rate limited",
    /// The ring to the host stack was full.
    PuntRingFull = "punt: ring full",
    /// The ring to the worker owning the flow was full.
    HandoffFull = "handoff: ring to owning worker full",
    /// Transmit queue full after a retry.
    TxFull = "tx: queue full",
    /// Should never happen: an impossible state caught instead of a panic.
    Internal = "internal: inconsistent state",
}

impl From<DropReason> for u8 {
    fn from(r: DropReason) -> u8 {
        r as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_and_have_unique_names() {
        let mut names = std::collections::HashSet::new();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(DropReason::from_u8(i as u8), *r);
            assert!(names.insert(r.name()));
            assert!(r.name().contains(": "));
        }
        assert_eq!(DropReason::from_u8(250), DropReason::Internal);
    }
}
