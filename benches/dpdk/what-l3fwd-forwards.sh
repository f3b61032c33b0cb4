#!/usr/bin/env bash
# What DPDK's l3fwd (LPM, as benches/dpdk-vs-l3fwd.sh runs it) and astara-dp
# each do with frames a router must not forward as they are: one frame per
# case, given to each program alone; prints whether each forwarded it, and
# the TTL it left with (or astara-dp's drop reason). Fails if astara-dp
# forwards any frame but the good one, or not that one.
#
#   sudo benches/dpdk/what-l3fwd-forwards.sh
#
# l3fwd runs over two net_pcap devices (the frame in on port 0, port 1's
# output written to a file); astara-dp runs `replay` over the same frame with
# the routing configuration of the bench. Needs what the bench needs (root
# for hugepages, dpdk, dpdk-doc, libdpdk-dev, python3, cargo).
set -euo pipefail

HERE=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/adp-l3fwd-forwards.XXXXXX)
cleanup() { rm -rf "$WORK" /var/run/dpdk/adpw-* 2>/dev/null || true; }
trap cleanup EXIT
[ "$(id -u)" = 0 ] || { echo "needs root (hugepages)" >&2; exit 1; }
[ -d /usr/share/dpdk/examples/l3fwd ] || { echo "missing l3fwd sources: apt-get install -y dpdk-doc" >&2; exit 1; }
# shellcheck source=benches/dpdk/common.sh
. "$HERE/benches/dpdk/common.sh"
reserve_hugepages 256

echo "building astara-dp and l3fwd ..." >&2
(cd "$HERE" && cargo build --release -q)
ADP="$HERE/target/release/astara-dp"
build_l3fwd "$WORK"
L3FWD="$WORK/l3fwd/build/l3fwd"
routing_config "$WORK/route.json"

# One 60-byte UDP frame per case, from the web network (ge2, port 0) to
# 198.18.1.20 (l3fwd: port 1; astara-dp: via 192.168.2.253 on ge3); each
# case changes one thing of the good frame. Checksums are computed here.
python3 - "$WORK" <<'EOF'
import struct, sys
out = sys.argv[1]
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def frame(mac="fa163e112201", ttl=64, src="192.168.1.10", dst="198.18.1.20", bad_csum=False, extra=0, frag=0x4000):
    a = lambda s: bytes(int(x) for x in s.split("."))
    udp = struct.pack("!HHHH", 1234, 53, 26, 0) + bytes(18)
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp) + extra, 1, frag, ttl, 17, 0, a(src), a(dst))
    c = csum(h) ^ (0x1234 if bad_csum else 0)
    h = h[:10] + struct.pack("!H", c) + h[12:]
    return bytes.fromhex(mac) + bytes.fromhex("fa163e000001") + b"\x08\x00" + h + udp
cases = [
    ("good", frame()),
    ("ttl-1", frame(ttl=1)),
    ("ttl-0", frame(ttl=0)),
    ("bad-checksum", frame(bad_csum=True)),
    ("to-another-mac", frame(mac="020000000099")),
    ("source-127.0.0.1", frame(src="127.0.0.1")),
    ("source-multicast", frame(src="224.0.0.5")),
    ("length-beyond-frame", frame(extra=400)),
]
def pcap(path, frames):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for fr in frames:
            f.write(struct.pack("<IIII", 0, 0, len(fr), len(fr)) + fr)
for name, fr in cases:
    pcap("%s/%s.pcap" % (out, name), [fr])
pcap(out + "/empty.pcap", [])
open(out + "/cases", "w").write("\n".join(n for n, _ in cases) + "\n")
EOF

# Whether a capture holds a frame (after its 24-byte header), and the first
# frame's TTL (behind its 16-byte record header, 14 bytes of Ethernet and 8
# of IPv4).
summary() {
    python3 - "$1" <<'EOF'
import os, sys
p = sys.argv[1]
if not os.path.exists(p) or os.path.getsize(p) <= 24:
    print("dropped"); sys.exit()
print("forwarded (TTL %d)" % open(p, "rb").read()[24 + 16 + 22])
EOF
}

printf '%-22s %-24s %s\n' "frame" "l3fwd LPM" "astara-dp"
while read -r c; do
    rm -f "$WORK/o0.pcap" "$WORK/o1.pcap"
    "$L3FWD" -l 1 --no-pci --in-memory --file-prefix adpw-l3 -m 256 \
        --vdev "net_pcap0,rx_pcap=$WORK/$c.pcap,tx_pcap=$WORK/o0.pcap" \
        --vdev "net_pcap1,rx_pcap=$WORK/empty.pcap,tx_pcap=$WORK/o1.pcap" \
        -- -p 0x3 --config="(0,0,1),(1,0,1)" --parse-ptype --lookup=lpm >"$WORK/l3.log" 2>&1 &
    pid=$!
    sleep 4
    kill -INT $pid 2>/dev/null || true
    wait $pid 2>/dev/null || true
    l3=$(summary "$WORK/o1.pcap")
    rm -rf "$WORK/replay"
    "$ADP" replay --config "$WORK/route.json" --in "ge2=$WORK/$c.pcap" --out-dir "$WORK/replay" \
        --neighbor ge3:192.168.2.253=fa:16:3e:00:02:fd >/dev/null 2>&1
    adp=$(summary "$WORK/replay/ge3.pcap")
    if [ "$adp" = dropped ]; then
        adp="dropped: $(python3 -c 'import json, sys; print(", ".join(json.load(open(sys.argv[1]))["drops"]))' "$WORK/replay/summary.json")"
    fi
    printf '%-22s %-24s %s\n' "$c" "$l3" "$adp"
    # astara-dp must forward the good frame and no other.
    case "$c:$adp" in
    good:forwarded*) ;;
    good:*) echo "astara-dp did not forward the good frame" >&2; bad=1 ;;
    *:forwarded*) echo "astara-dp forwarded $c" >&2; bad=1 ;;
    esac
done <"$WORK/cases"
exit "${bad:-0}"
