#!/usr/bin/env bash
# Side by side with the kernel: the same three-namespace topology twice,
#
#   gen (g0 192.168.1.20) ── veth ── ge2 | router | ge1 ── veth ── sink (s0 203.0.113.1)
#
# once with Linux forwarding and nftables masquerade + floating-IP DNAT in
# the router namespace, once with `astara-dp run` on af_packet ports and the
# equivalent Astara document. The same 64-byte UDP flows (built by trafgen,
# netsniff-ng) are replayed into g0 by tcpreplay in both runs; the sink's receive counter gives the
# forwarded rate. Prints both rates and the ratio.
#
# usage: sudo benches/kernel-vs-astara.sh [seconds per run, default 10] [flows, default 256]
# needs: root, iproute2, nftables, netsniff-ng (trafgen), tcpreplay, a release build
#        (cargo build --release). Traffic stays inside the namespaces it
#        makes; they are removed on exit, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
FLOWS=${2:-256}
BIN=${ASTARA_DP:-target/release/astara-dp}
TAG=kva$$
GEN=${TAG}g RT=${TAG}r SINK=${TAG}s
WORK=$(mktemp -d)
ROUTER_PID=
TRAFGEN_PID=

# Removes the namespaces and everything still running in them.
drop_namespaces() {
  for ns in "$GEN" "$RT" "$SINK"; do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -n "$pids" ] && kill $pids 2>/dev/null || true
  done
  sleep 0.2
  for ns in "$GEN" "$RT" "$SINK"; do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}

cleanup() {
  drop_namespaces
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] && cp "$WORK"/*.log /tmp/ 2>/dev/null; rm -rf "$WORK"
}
trap cleanup EXIT

for tool in ip nft trafgen tcpreplay; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install iproute2 nftables netsniff-ng tcpreplay)" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "missing $BIN (cargo build --release)" >&2; exit 2; }

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# One core for the router in both runs: its ports' receive work goes to
# CPU 1 (RPS), where astara-dp's worker is pinned too; the generator has
# CPU 0. (Without RPS a veth forwards in the sender's context, and the
# router's work would be done on the generator's CPU.)
rps() {
  for ifc in ge1 ge2; do in_ns "$RT" bash -c "echo 2 > /sys/class/net/$ifc/queues/rx-0/rps_cpus"; done
}

build() {
  drop_namespaces
  for ns in "$GEN" "$RT" "$SINK"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
  ip link add g0 netns "$GEN" type veth peer name ge2 netns "$RT"
  ip link add s0 netns "$SINK" type veth peer name ge1 netns "$RT"
  ip -n "$GEN" addr add 192.168.1.20/24 dev g0
  ip -n "$GEN" link set g0 up
  ip -n "$SINK" addr add 203.0.113.1/24 dev s0
  ip -n "$SINK" link set s0 up
  # The sink drops what it gets before its stack answers anything.
  in_ns "$SINK" nft -f - <<'EOF'
table netdev sink {
  chain in {
    type filter hook ingress device "s0" priority 0; policy accept;
    udp dport 9 drop
  }
}
EOF
  ip -n "$RT" link set ge1 up
  ip -n "$RT" link set ge2 up
}

# What trafgen sends: 64-byte UDP from the inside host to the outside, FLOWS
# source ports, addressed to the router's ge2 MAC.
traffic() {
  local router_mac=$1 gen_mac
  gen_mac=$(ip -n "$GEN" -j link show g0 | sed -n 's/.*"address":"\([^"]*\)".*/\1/p')
  cat > "$WORK/udp.cfg" <<EOF
{
  eth(da=$router_mac, sa=$gen_mac, type=0x0800),
  ipv4(saddr=192.168.1.20, daddr=203.0.113.1, ttl=64, df),
  udp(sport=dinc(1024, $((1024 + FLOWS - 1))), dport=9),
  fill(0x00, 18)
}
EOF
  # One packet per flow, in a capture tcpreplay loops over (tcpreplay
  # retries when the veth's queue pushes back; trafgen gives up).
  trafgen -i "$WORK/udp.cfg" -o "$WORK/udp.pcap" -n "$FLOWS" -q > /dev/null 2>&1
}

rx_of() { in_ns "$SINK" cat /sys/class/net/s0/statistics/rx_packets; }
tx_of() { in_ns "$GEN" cat /sys/class/net/g0/statistics/tx_packets; }

# Runs trafgen for the warm-up and the window; prints "forwarded_pps sent_pps".
measure() {
  ip netns exec "$GEN" taskset -c 0 tcpreplay -q -K --topspeed --loop=0 -i g0 "$WORK/udp.pcap" > "$WORK/gen-$1.log" 2>&1 &
  TRAFGEN_PID=$!
  sleep 2
  local r0 t0 r1 t1
  r0=$(rx_of); t0=$(tx_of)
  sleep "$SECS"
  r1=$(rx_of); t1=$(tx_of)
  for p in $(ip netns pids "$GEN"); do kill "$p" 2>/dev/null || true; done
  wait "$TRAFGEN_PID" 2>/dev/null || true
  TRAFGEN_PID=
  echo "$(( (r1 - r0) / SECS )) $(( (t1 - t0) / SECS ))"
}

# --- 1. the kernel: forwarding + nftables NAT -------------------------------
build
ip -n "$RT" addr add 192.168.1.1/24 dev ge2
ip -n "$RT" addr add 203.0.113.10/24 dev ge1
in_ns "$RT" sysctl -qw net.ipv4.ip_forward=1
rps
in_ns "$RT" nft -f - <<'EOF'
table ip nat {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "ge1" ip daddr 203.0.113.50 dnat to 192.168.1.5
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 192.168.1.5 oifname "ge1" snat to 203.0.113.50
    oifname "ge1" masquerade
  }
}
EOF
ip -n "$GEN" route add default via 192.168.1.1
in_ns "$GEN" ping -c 1 -W 2 203.0.113.1 >/dev/null
traffic "$(ip -n "$RT" -j link show ge2 | sed -n 's/.*"address":"\([^"]*\)".*/\1/p')"
read -r kernel_fwd kernel_sent < <(measure kernel)

# --- 2. astara-dp on af_packet ----------------------------------------------
build
for ifc in ge1 ge2; do in_ns "$RT" sysctl -qw "net.ipv6.conf.$ifc.disable_ipv6=1"; done
rps
# The data-plane ports are astara-dp's: the kernel's own stack drops their
# frames at ingress (after the AF_PACKET taps have their copy).
in_ns "$RT" nft -f - <<'EOF'
table netdev dataplane {
  chain ge1 { type filter hook ingress device "ge1" priority 0; policy drop; }
  chain ge2 { type filter hook ingress device "ge2" priority 0; policy drop; }
}
EOF
cat > "$WORK/runtime.toml" <<EOF
state_dir = "$WORK"
[api]
listen = "127.0.0.1"
[workers]
cores = [1]
[conntrack]
sessions_per_worker = 65536
[[ports]]
name = "ge0"
mac = "02:00:5e:00:00:10"
backend = "null"
[[ports]]
name = "ge1"
backend = "af_packet"
interface = "ge1"
[[ports]]
name = "ge2"
backend = "af_packet"
interface = "ge2"
EOF
cat > "$WORK/doc.json" <<'EOF'
{"tenant_id": "bench", "hostname": "kernel-vs-astara", "default_v4_gateway": "203.0.113.1",
 "floating_ips": [{"floating_ip": "203.0.113.50", "fixed_ip": "192.168.1.5"}],
 "networks": [
  {"network_id": "m", "network_type": "management", "interface": {"ifname": "ge0", "addresses": ["fdca:3ba5:a17a:acda::2/64"]}},
  {"network_id": "e", "network_type": "external", "interface": {"ifname": "ge1", "addresses": ["203.0.113.10/24"]},
   "subnets": [{"cidr": "203.0.113.0/24", "gateway_ip": "203.0.113.1"}]},
  {"network_id": "i", "network_type": "internal", "interface": {"ifname": "ge2", "addresses": ["192.168.1.1/24"]},
   "subnets": [{"cidr": "192.168.1.0/24", "gateway_ip": "192.168.1.1"}]}]}
EOF
ip netns exec "$RT" "$BIN" run --runtime "$WORK/runtime.toml" --config "$WORK/doc.json" > "$WORK/router.log" 2>&1 &
ROUTER_PID=$!
for _ in $(seq 50); do
  in_ns "$RT" bash -c 'exec 3<>/dev/tcp/127.0.0.1/5000' 2>/dev/null && break
  sleep 0.2
done
ip -n "$GEN" route add default via 192.168.1.1
in_ns "$GEN" ping -c 1 -W 2 203.0.113.1 >/dev/null || { cat "$WORK/router.log" >&2; exit 1; }
traffic "$(ip -n "$RT" -j link show ge2 | sed -n 's/.*"address":"\([^"]*\)".*/\1/p')"
read -r astara_fwd astara_sent < <(measure astara)
metrics=$(in_ns "$RT" bash -c 'exec 3<>/dev/tcp/127.0.0.1/5000; printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3')
kill "$ROUTER_PID"; wait "$ROUTER_PID" 2>/dev/null || true; ROUTER_PID=

echo
echo "kernel-vs-astara: 64-byte UDP, $FLOWS flows, masquerade, ${SECS} s windows, $(nproc) CPUs"
printf "  %-40s %12s %12s\n" "router" "forwarded/s" "offered/s"
printf "  %-40s %12d %12d\n" "Linux forwarding + nftables NAT" "$kernel_fwd" "$kernel_sent"
printf "  %-40s %12d %12d\n" "astara-dp run, af_packet, 1 worker" "$astara_fwd" "$astara_sent"
awk -v a="$astara_fwd" -v k="$kernel_fwd" 'BEGIN { if (k > 0) printf "  ratio astara-dp / kernel: %.2f\n", a / k }'
for run in "kernel $kernel_fwd $kernel_sent" "astara-dp $astara_fwd $astara_sent"; do
  set -- $run
  # Within 1 %: the router kept up, and the figure is the generator's.
  awk -v n="$1" -v f="$2" -v o="$3" 'BEGIN { if (o > 0 && f >= 0.99 * o) printf "  (%s forwarded all it was offered: its figure is a lower bound)\n", n }'
done
echo "$metrics" | grep -E 'astara_dp_drops_total\{.*\} [1-9]|port_rx_dropped_total\{.*\} [1-9]' | sed 's/^/  /' || true
