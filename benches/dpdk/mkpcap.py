#!/usr/bin/env python3
"""Writes a capture of 64-byte IPv4/UDP frames (60 bytes, FCS not captured).

    mkpcap.py OUT.pcap --count 256 --dst-mac fa:16:3e:11:22:01 \
        --src 192.168.1.0/24 --dst 198.18.1.0/24 [--sport 1024] [--dport 9]

Flow i goes from SRC's host (i % hosts) + 1 port SPORT + i to DST's host
(i % hosts) + 1 port DPORT; checksums are computed here, independently of
astara-dp, so the captures serve as references too.
"""
import argparse
import ipaddress
import struct


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def frame(smac, dmac, src, dst, sport, dport, size):
    payload = b"\0" * (size - 4 - 14 - 20 - 8)
    ulen = 8 + len(payload)
    ph = src.packed + dst.packed + struct.pack("!BBH", 0, 17, ulen)
    u = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    uc = csum(ph + u) or 0xFFFF
    u = struct.pack("!HHHH", sport, dport, ulen, uc) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 0, 0, 64, 17, 0, src.packed, dst.packed)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return dmac + smac + b"\x08\x00" + ip + u


def mac(s):
    return bytes(int(x, 16) for x in s.split(":"))


def main():
    a = argparse.ArgumentParser()
    a.add_argument("out")
    a.add_argument("--count", type=int, default=256)
    a.add_argument("--size", type=int, default=64)
    a.add_argument("--src-mac", default="fa:16:3e:00:00:aa")
    a.add_argument("--dst-mac", required=True)
    a.add_argument("--src", required=True)
    a.add_argument("--dst", required=True)
    a.add_argument("--sport", type=int, default=1024)
    a.add_argument("--dport", type=int, default=9)
    o = a.parse_args()
    sn, dn = ipaddress.ip_network(o.src), ipaddress.ip_network(o.dst)
    shosts = max(1, min(sn.num_addresses - 2, 250)) if sn.num_addresses > 2 else 1
    dhosts = max(1, min(dn.num_addresses - 2, 250)) if dn.num_addresses > 2 else 1
    with open(o.out, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i in range(o.count):
            s = sn.network_address + (i % shosts) + (1 if sn.num_addresses > 2 else 0)
            d = dn.network_address + (i % dhosts) + (1 if dn.num_addresses > 2 else 0)
            fr = frame(mac(o.src_mac), mac(o.dst_mac), s, d, (o.sport + i) & 0xFFFF, o.dport, o.size)
            f.write(struct.pack("<IIII", i // 1000000, i % 1000000, len(fr), len(fr)) + fr)


if __name__ == "__main__":
    main()
