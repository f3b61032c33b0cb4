//! Answer stage: what the worker answers itself, in place, instead of
//! sending it to the host stack's core through the punt ring and back:
//!
//! - ARP requests for the router's addresses from neighbours already in the
//!   snapshot's table with that MAC (or a static entry): the host stack
//!   would learn nothing from them. First contacts, changed MACs, address
//!   conflicts and replies still go to the host stack, which learns.
//! - ICMP echo requests to one of the router's unicast IPv4 addresses
//!   (unfragmented, no IP options), answered to the sender's MAC on the
//!   port they came in by, as the host stack does.
//!
//! The frames are those the host stack builds, byte for byte. Runs last, on
//! `Local` packets the INPUT policy let through, and only when a host stack
//! is attached (`enabled`): without one, local packets are counted, as in
//! `replay`.

use super::{Punt, Snapshot};
use crate::packet::checksum::checksum;
use crate::packet::ethernet::{ARP_OP_REQUEST, ArpPacket, ETHER_HEADER_LEN, arp_reply};
use crate::packet::ipv4::{self, PROTO_ICMP};
use crate::packet::{Burst, L3, Meta, PacketBuf, Verdict};

/// An ARP frame with its Ethernet padding: what the router sends.
const ARP_FRAME_LEN: usize = 60;
const ICMP_ECHO_REQUEST: u8 = 8;

#[derive(Debug, Default, Clone, Copy)]
pub struct AnswerCounters {
    pub arp: u64,
    pub echo: u64,
}

#[derive(Default)]
pub struct Answer {
    pub counters: AnswerCounters,
    pub enabled: bool,
}

impl Answer {
    pub fn process<P: PacketBuf>(&mut self, snap: &Snapshot, burst: &mut Burst<P>) {
        if !self.enabled {
            return;
        }
        for i in 0..burst.len() {
            let (pkt, m) = burst.pair_mut(i);
            if m.verdict != Verdict::Local || m.punt != Punt::Host as u8 {
                continue;
            }
            let counter = match m.l3 {
                L3::Arp if arp(snap, pkt, m) => &mut self.counters.arp,
                L3::Ipv4 if m.proto == PROTO_ICMP && m.icmp_type == ICMP_ECHO_REQUEST && echo(snap, pkt, m) => {
                    &mut self.counters.echo
                }
                _ => continue,
            };
            *counter += 1;
            m.punt = Punt::Answer as u8;
            m.out_port = m.in_port;
            m.l3_off = ETHER_HEADER_LEN as u16;
        }
    }
}

/// Rewrites an ARP request into the router's reply, when the host stack
/// would answer it and learn nothing from it.
fn arp<P: PacketBuf>(snap: &Snapshot, pkt: &mut P, m: &Meta) -> bool {
    let Some(mac) = snap.port(m.in_port).map(|p| p.mac) else { return false };
    let Some(arp) = pkt.data().get(m.l3_off as usize..).and_then(|d| ArpPacket::new_checked(d).ok()) else {
        return false;
    };
    let (op, smac, sip, tip) = (arp.operation(), arp.sender_mac(), arp.sender_ip(), arp.target_ip());
    let answer = op == ARP_OP_REQUEST
        && sip != 0
        && sip != tip
        && snap.answers_arp_for(m.in_port, tip)
        && !snap.answers_arp_for(m.in_port, sip)
        && snap.neighbors.settled_v4(m.in_port, sip, smac)
        && set_len(pkt, ARP_FRAME_LEN);
    if answer {
        pkt.data_mut().copy_from_slice(&arp_reply(mac, tip, smac, sip));
    }
    answer
}

/// Rewrites an ICMP echo request to one of the router's IPv4 addresses
/// into the reply: from that address, TTL 64, no options, ID 0, to the
/// requester's MAC, any VLAN tag and Ethernet padding gone.
fn echo<P: PacketBuf>(snap: &Snapshot, pkt: &mut P, m: &Meta) -> bool {
    let (l3, l4) = (m.l3_off as usize, m.l4_off as usize);
    let (src, dst) = (m.src as u32, m.dst as u32);
    let Some(mac) = snap.port(m.in_port).map(|p| p.mac) else { return false };
    let d = pkt.data();
    let Some(total) = d.get(l3 + 2..l3 + 4).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize) else {
        return false;
    };
    if m.frag != 0
        || l4 != l3 + 20
        || total < 28
        || l3 + total > d.len()
        || l3 < ETHER_HEADER_LEN
        || !snap.own.iter().any(|&(a, v4, _)| v4 && a as u32 == dst)
    {
        return false;
    }
    let mut peer = [0u8; 6];
    peer.copy_from_slice(&d[6..12]);
    // Drop any VLAN tag (the header is rebuilt in front of the IP header)
    // and the Ethernet padding.
    pkt.adj(l3 - ETHER_HEADER_LEN);
    pkt.trim(ETHER_HEADER_LEN + total);
    let f = pkt.data_mut();
    f[0..6].copy_from_slice(&peer);
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[ETHER_HEADER_LEN..ETHER_HEADER_LEN + 20].copy_from_slice(&ipv4::header(dst, src, 1, total as u16));
    let icmp = &mut f[ETHER_HEADER_LEN + 20..];
    icmp[0] = 0;
    icmp[2] = 0;
    icmp[3] = 0;
    let c = checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    true
}

/// Makes the frame exactly `len` bytes long, growing it at the front (its
/// contents are rewritten whole afterwards); false if the headroom is short.
#[inline]
fn set_len<P: PacketBuf>(pkt: &mut P, len: usize) -> bool {
    let have = pkt.len();
    if have < len {
        return pkt.prepend(len - have);
    }
    pkt.trim(len);
    true
}
