#!/usr/bin/env python3
"""Gives a copy of DPDK's l3fwd example the checks a router makes before it
forwards an IPv4 packet, for a second reference beside l3fwd itself in
benches/dpdk-vs-l3fwd.sh.

l3fwd's LPM path reads only the EtherType (its packet-type callback) and the
destination address: it forwards a frame sent to another MAC, with a bad
header checksum, from a martian source, with a total length beyond the
frame, and it decrements a TTL of 1 to 0 and of 0 to 255. astara-dp's fast
path drops or hands on each of those (see `stage::parse::head`,
`stage::fast`). This edit makes l3fwd's packet-type callback (run on every
received packet with --parse-ptype) make the same checks, in plain C, one
packet at a time; a packet that fails gets no IPv4 packet type. The copy
counts the packets it saw and those that failed, and prints both at exit
("router checks: seen N failed M"), so the bench can show that every
packet of its capture passed: the row measures the checks' cost, not a
different path. (Packets are counted a burst at a time and failures one by
one, so that counting adds no per-packet store to the path measured.)

The checks, as astara-dp's fast path makes them for plain forwarding:
- to the receiving port's MAC (the capture's, given here: a net_pcap
  device's own MAC is random), untagged IPv4 with a 20-byte header;
- total length at least 20, within the frame and the MTU (1500);
  not a fragment (DF may be set);
- header checksum good (no offload on virtual devices);
- source and destination first octets 1..223 except 127;
- a UDP length or TCP data offset within the packet (other protocols fail);
- not to the metadata address nor the masquerade address
  (configs/router-open.json's 203.0.113.10), nor to a floating IP
  (203.0.113.50 and .51: a 1,024-bit filter by a multiplicative hash, then
  the compares, as astara-dp's `AddrMap`);
- TTL above 1.

Usage: l3fwd-router-checks.py <l3fwd_lpm.c> <port 0 MAC> <port 1 MAC>
"""
import sys

path, mac0, mac1 = sys.argv[1], sys.argv[2], sys.argv[3]


def mac_word(mac):
    """The MAC as the low 48 bits of a little-endian word (x86)."""
    b = bytes.fromhex(mac.replace(":", ""))
    assert len(b) == 6, mac
    return "0x%012xULL" % int.from_bytes(b, "little")


CHECKS = r"""
static uint8_t fwd_octet[256];
static const uint64_t port_mac[2] = { MAC0, MAC1 };
static const uint32_t floating[2] = { 0xcb007132, 0xcb007133 };
static uint64_t dnat_filter[16];
static int checks_ready;
/* Packets seen (counted a burst at a time) and IPv4 packets that failed
 * (counted one by one: none should). */
static uint64_t checks_seen, checks_failed;

__attribute__((destructor)) static void
checks_report(void)
{
	fprintf(stderr, "router checks: seen %lu failed %lu\n",
		(unsigned long)checks_seen, (unsigned long)checks_failed);
}

static void
checks_init(void)
{
	for (int i = 0; i < 256; i++)
		fwd_octet[i] = !(i == 0 || i == 127 || i >= 224);
	for (int i = 0; i < 2; i++) {
		uint32_t b = (floating[i] * 0x9e3779b1u) >> 22;
		dnat_filter[b >> 6] |= 1ULL << (b & 63);
	}
	checks_ready = 1;
}

static inline int
router_checks(struct rte_mbuf *m)
{
	const uint8_t *f = rte_pktmbuf_mtod(m, const uint8_t *);
	uint64_t w0, w12;

	if (m->data_len < 54)
		return 0;
	memcpy(&w0, f, 8);
	memcpy(&w12, f + 12, 8);
	if ((w0 & 0xffffffffffffULL) != port_mac[m->port & 1])
		return 0;
	if ((w12 & 0xffffff) != 0x450008)
		return 0;
	const struct rte_ipv4_hdr *ip = (const struct rte_ipv4_hdr *)(f + 14);
	uint16_t tl = rte_be_to_cpu_16(ip->total_length);
	if (tl < 20 || 14 + tl > m->data_len || tl > 1500)
		return 0;
	if (ip->fragment_offset & rte_cpu_to_be_16(0x3fff))
		return 0;
	if (rte_raw_cksum(ip, 20) != 0xffff)
		return 0;
	uint32_t src = rte_be_to_cpu_32(ip->src_addr);
	uint32_t dst = rte_be_to_cpu_32(ip->dst_addr);
	if (!(fwd_octet[src >> 24] & fwd_octet[dst >> 24]))
		return 0;
	const uint8_t *l4 = f + 34;
	uint16_t l4len = tl - 20;
	if (ip->next_proto_id == IPPROTO_UDP) {
		uint16_t ul = (uint16_t)(l4[4] << 8 | l4[5]);
		if (l4len < 8 || ul < 8 || ul > l4len)
			return 0;
	} else if (ip->next_proto_id == IPPROTO_TCP) {
		if (l4len < 20 || (l4[12] >> 4) < 5 || (l4[12] >> 4) * 4 > l4len)
			return 0;
	} else {
		return 0;
	}
	if (dst == 0xa9fea9fe || dst == 0xcb00710a)
		return 0;
	uint32_t b = (dst * 0x9e3779b1u) >> 22;
	if (dnat_filter[b >> 6] >> (b & 63) & 1 && (dst == floating[0] || dst == floating[1]))
		return 0;
	if (ip->time_to_live <= 1)
		return 0;
	return 1;
}

"""

src = open(path).read()
fn = "static inline void\nlpm_parse_ptype(struct rte_mbuf *m)\n"
if fn not in src:
    fn = "lpm_parse_ptype(struct rte_mbuf *m)\n"
    assert fn in src, "lpm_parse_ptype not found in " + path
    # (Some versions declare it on the line above.)
    at = src.rindex("\n", 0, src.index(fn) - 1) + 1
else:
    at = src.index(fn)
src = src[:at] + CHECKS.replace("MAC0", mac_word(mac0)).replace("MAC1", mac_word(mac1)) + src[at:]

old = "\tif (ether_type == rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4))\n\t\tpacket_type |= RTE_PTYPE_L3_IPV4_EXT_UNKNOWN;\n"
new = (
    "\tif (ether_type == rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4)) {\n"
    "\t\tif (likely(router_checks(m)))\n"
    "\t\t\tpacket_type |= RTE_PTYPE_L3_IPV4_EXT_UNKNOWN;\n"
    "\t\telse\n"
    "\t\t\tchecks_failed++;\n"
    "\t}\n"
)
assert old in src, "lpm_parse_ptype's IPv4 test not found"
src = src.replace(old, new, 1)

old = "\tif (unlikely(nb_pkts == 0))\n\t\treturn nb_pkts;\n\trte_prefetch0"
assert old in src, "lpm_cb_parse_ptype not found"
src = src.replace(
    old, "\tif (unlikely(nb_pkts == 0))\n\t\treturn nb_pkts;\n\tif (unlikely(!checks_ready))\n\t\tchecks_init();\n\tchecks_seen += nb_pkts;\n\trte_prefetch0", 1
)
open(path, "w").write(src)
