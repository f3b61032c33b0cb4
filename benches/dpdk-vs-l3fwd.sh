#!/usr/bin/env bash
# Side by side on one core and the same DPDK devices: DPDK's testpmd (io
# forwarding: the I/O ceiling), DPDK's l3fwd (LPM), l3fwd given the checks
# a router makes before forwarding (benches/dpdk/l3fwd-router-checks.py),
# astara-dp routing only, and astara-dp with the full pipeline (conntrack,
# DNAT, firewall, masquerade). Each forwards between two net_pcap devices replaying a
# 64-byte UDP capture in a loop (infinite_rx=1, no tx file: transmitted
# frames are counted and freed by the driver at no cost). Rates come from
# DPDK's own counters (the telemetry socket's /ethdev/stats: opackets of
# both ports), three 10 s windows after a warm-up, median reported.
#
#   sudo benches/dpdk-vs-l3fwd.sh [--windows 3] [--seconds 10] [--packets 256]
#
# Needs root (hugepages), dpdk, dpdk-dev, dpdk-doc (l3fwd's sources, built
# here and not kept), libdpdk-dev, python3, and cargo. Forwarding runs on
# CPU 1 for every program (the EAL main lcore or astara-dp's worker); CPU 0
# keeps the control threads.
set -euo pipefail

WINDOWS=3
SECONDS_PER=10
PACKETS=256
WARMUP=3
CORE=1
while [ $# -gt 0 ]; do
    case "$1" in
    --windows) WINDOWS=$2; shift 2 ;;
    --seconds) SECONDS_PER=$2; shift 2 ;;
    --packets) PACKETS=$2; shift 2 ;;
    --core) CORE=$2; shift 2 ;;
    *) echo "usage: $0 [--windows N] [--seconds S] [--packets N] [--core CPU]" >&2; exit 2 ;;
    esac
done

HERE=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/adp-dpdk-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$WORK" /var/run/dpdk/adpb-* 2>/dev/null || true
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { echo "needs root (hugepages)" >&2; exit 1; }
for c in dpdk-testpmd pkg-config python3 cargo make cc; do
    command -v $c >/dev/null || { echo "missing $c (apt-get install -y dpdk dpdk-dev dpdk-doc libdpdk-dev)" >&2; exit 1; }
done
[ -d /usr/share/dpdk/examples/l3fwd ] || { echo "missing l3fwd sources: apt-get install -y dpdk-doc" >&2; exit 1; }

# shellcheck source=benches/dpdk/common.sh
. "$HERE/benches/dpdk/common.sh"
reserve_hugepages 512

echo "building astara-dp (--features dpdk) and l3fwd ..." >&2
(cd "$HERE" && cargo build --release --features dpdk -q)
ADP="$HERE/target/release/astara-dp"
build_l3fwd "$WORK"
L3FWD="$WORK/l3fwd/build/l3fwd"
# A second copy with the checks a router makes before forwarding (l3fwd
# makes none of them: see benches/dpdk/l3fwd-router-checks.py), for the
# cost of those checks alone in C.
build_l3fwd "$WORK/checks" python3 "$HERE/benches/dpdk/l3fwd-router-checks.py" \
    "$WORK/checks/l3fwd/l3fwd_lpm.c" fa:16:3e:11:22:01 fa:16:3e:11:22:02
L3CHECKS="$WORK/checks/l3fwd/build/l3fwd"

# Captures (checksums computed by the generator, not by astara-dp).
GEN="python3 $HERE/benches/dpdk/mkpcap.py"
# Routing: port 0 (ge2) sends to 198.18.1.0/24 (l3fwd: port 1; astara: via
# 192.168.2.253 on ge3), port 1 (ge3) to 198.18.0.0/24.
$GEN "$WORK/r0.pcap" --count "$PACKETS" --dst-mac fa:16:3e:11:22:01 --src 192.168.1.0/24 --dst 198.18.1.0/24
$GEN "$WORK/r1.pcap" --count "$PACKETS" --dst-mac fa:16:3e:11:22:02 --src 192.168.2.0/24 --dst 198.18.0.0/24
# Full pipeline (configs/router.json): port 0 (ge2, web) sends out through
# the masquerade; port 1 (ge1, public) reaches the floating IP 203.0.113.50
# (DNAT to 192.168.1.5, anchors checked on every new flow).
$GEN "$WORK/f0.pcap" --count "$PACKETS" --dst-mac fa:16:3e:11:22:01 --src 192.168.1.0/24 --dst 198.18.1.0/24
$GEN "$WORK/f1.pcap" --count "$PACKETS" --dst-mac fa:16:3e:a0:80:82 --src 100.64.0.0/24 --dst 203.0.113.50/32 --sport 20000 --dport 8080

routing_config "$WORK/route.json"

# (testpmd with --stats-period keeps running without a terminal until
# signalled.)
# Samples opackets of ports 0 and 1 through a DPDK process's telemetry
# socket: WINDOWS windows of SECONDS_PER after WARMUP; prints the median Mpps.
cat > "$WORK/sample.py" <<'EOF'
import json, socket, statistics, sys, time
path, warm, secs, windows = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
deadline = time.time() + 30
while True:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(path)
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("no telemetry socket at " + path)
        time.sleep(0.2)
json.loads(s.recv(16384))
def tx():
    n = 0
    for p in (0, 1):
        s.send(("/ethdev/stats,%d" % p).encode())
        n += json.loads(s.recv(65536))["/ethdev/stats"]["opackets"]
    return n
time.sleep(warm)
rates = []
for _ in range(windows):
    a, t0 = tx(), time.time()
    time.sleep(secs)
    b, t1 = tx(), time.time()
    rates.append((b - a) / (t1 - t0) / 1e6)
print("%.3f %s" % (statistics.median(rates), " ".join("%.3f" % r for r in rates)))
EOF

run_sampled() { # name, then the command
    local name=$1; shift
    "$@" >"$WORK/$name.log" 2>&1 </dev/null &
    local pid=$!
    PIDS+=("$pid")
    local out
    if ! out=$(python3 "$WORK/sample.py" "/var/run/dpdk/adpb-$name/dpdk_telemetry.v2" "$WARMUP" "$SECONDS_PER" "$WINDOWS"); then
        echo "$name failed:" >&2; tail -20 "$WORK/$name.log" >&2; exit 1
    fi
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "$out"
}

eal() { # name, capture 0, capture 1
    echo "--no-pci --in-memory --file-prefix adpb-$1 -m 1024 --vdev net_pcap0,rx_pcap=$2,infinite_rx=1 --vdev net_pcap1,rx_pcap=$3,infinite_rx=1"
}

runtime() { # name, ports (toml), config
    local name=$1
    cat >"$WORK/$name.toml" <<EOF
log_level = "warn"
state_dir = "$WORK/state-$name"
burst = 32
[api]
listen = "127.0.0.1"
port = 0
[workers]
cores = [$CORE]
[conntrack]
sessions_per_worker = 1000000
[dpdk]
eal_args = [$(for a in $(eal "$name" "$3" "$4"); do printf '"%s", ' "$a"; done) "-l", "0"]
mbufs = 16383
$2
EOF
    echo "$WORK/$name.toml"
}

port() { # name mac [device]: a [[ports]] entry, dpdk when a device is given
    printf '[[ports]]\nname = "%s"\nmac = "%s"\n' "$1" "$2"
    if [ -n "${3:-}" ]; then printf 'backend = "dpdk"\ndevice = "%s"\n' "$3"; else printf 'backend = "null"\n'; fi
}
neighbor() { # port ip mac
    printf '[[neighbors]]\nport = "%s"\nip = "%s"\nmac = "%s"\n' "$1" "$2" "$3"
}
# Routing: ge2 and ge3 are the devices, next hops pinned on each.
PORTS_ROUTE=$(port ge0 fa:16:3e:e0:e1:b0; port ge1 fa:16:3e:a0:80:82
    port ge2 fa:16:3e:11:22:01 net_pcap0; port ge3 fa:16:3e:11:22:02 net_pcap1
    neighbor ge2 192.168.1.253 fa:16:3e:00:01:fd; neighbor ge3 192.168.2.253 fa:16:3e:00:02:fd)
# Full pipeline: ge2 (web) and ge1 (public) are the devices, the upstream
# gateway pinned.
PORTS_FULL=$(port ge0 fa:16:3e:e0:e1:b0; port ge1 fa:16:3e:a0:80:82 net_pcap1
    port ge2 fa:16:3e:11:22:01 net_pcap0; port ge3 fa:16:3e:11:22:02
    neighbor ge1 203.0.113.1 fa:16:3e:ff:00:01)

echo "one core (CPU $CORE), 2 x net_pcap infinite_rx, $PACKETS-packet 64-byte UDP captures, median of $WINDOWS x ${SECONDS_PER} s" >&2
# shellcheck disable=SC2046
TESTPMD=$(run_sampled testpmd dpdk-testpmd -l 0,$CORE $(eal testpmd "$WORK/r0.pcap" "$WORK/r1.pcap") -- \
    --forward-mode=io --nb-cores=1 --auto-start --stats-period 5 --rxq=1 --txq=1 --total-num-mbufs=16384)
echo "testpmd io: $TESTPMD" >&2
# shellcheck disable=SC2046
L3=$(run_sampled l3fwd "$L3FWD" -l $CORE $(eal l3fwd "$WORK/r0.pcap" "$WORK/r1.pcap") -- \
    -p 0x3 --config="(0,0,$CORE),(1,0,$CORE)" --parse-ptype --lookup=lpm)
echo "l3fwd lpm:  $L3" >&2
# shellcheck disable=SC2046
L3C=$(run_sampled l3checks "$L3CHECKS" -l $CORE $(eal l3checks "$WORK/r0.pcap" "$WORK/r1.pcap") -- \
    -p 0x3 --config="(0,0,$CORE),(1,0,$CORE)" --parse-ptype --lookup=lpm)
# (Printed by the copy at exit: every packet must have passed, or the row
# measured another path.)
grep -q "router checks: seen [1-9][0-9]* failed 0$" "$WORK/l3checks.log" ||
    { echo "l3fwd with checks: not every packet passed:" >&2; tail -5 "$WORK/l3checks.log" >&2; exit 1; }
echo "l3fwd lpm + a router's checks: $L3C" >&2
RT=$(runtime route "$PORTS_ROUTE" "$WORK/r0.pcap" "$WORK/r1.pcap")
ROUTE=$(run_sampled route "$ADP" run --runtime "$RT" --config "$WORK/route.json")
echo "astara-dp routing: $ROUTE" >&2
RT=$(runtime full "$PORTS_FULL" "$WORK/f0.pcap" "$WORK/f1.pcap")
FULL=$(run_sampled full "$ADP" run --runtime "$RT" --config "$HERE/configs/router.json")
echo "astara-dp full:    $FULL" >&2

python3 - "$TESTPMD" "$L3" "$L3C" "$ROUTE" "$FULL" "$CORE" <<'EOF'
import sys
t, l, c, r, f = (float(a.split()[0]) for a in sys.argv[1:6])
core = sys.argv[6]
print()
print("%-34s %8s %10s %10s %14s %11s" % ("program (1 core: CPU " + core + ")", "Mpps", "ns/pkt", "vs l3fwd", "vs l3fwd+chk", "vs testpmd"))
rows = [
    ("testpmd io (I/O ceiling)", t),
    ("l3fwd LPM", l),
    ("l3fwd LPM + a router's checks", c),
    ("astara-dp routing only", r),
    ("astara-dp NAT+firewall+route", f),
]
for name, v in rows:
    ratio = lambda ref: v / ref if ref else 0
    print("%-34s %8.2f %10.1f %9.2fx %13.2fx %10.2fx" % (name, v, 1e3 / v if v else 0, ratio(l), ratio(c), ratio(t)))
EOF
