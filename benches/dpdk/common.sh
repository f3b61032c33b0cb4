# What the DPDK benches share (sourced, with HERE set to the repository).

# At least $1 2 MB hugepages reserved, and hugetlbfs mounted.
reserve_hugepages() {
    local hp=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
    [ "$(cat $hp)" -ge "$1" ] || echo "$1" >$hp
    mkdir -p /dev/hugepages
    mountpoint -q /dev/hugepages || mount -t hugetlbfs nodev /dev/hugepages
}

# DPDK's l3fwd example, from dpdk-doc's sources, copied to $1 and built
# there ($1/l3fwd/build/l3fwd); the command after $1, if any, is run on the
# copy first (it edits the sources).
build_l3fwd() {
    local dir=$1
    shift
    mkdir -p "$dir"
    cp -r /usr/share/dpdk/examples/l3fwd /usr/share/dpdk/examples/common "$dir/"
    # Virtual devices have no Rx checksum offload: l3fwd would refuse to start.
    sed -i 's/\.offloads = RTE_ETH_RX_OFFLOAD_CHECKSUM,/.offloads = 0,/' "$dir/l3fwd/main.c"
    if [ $# -gt 0 ]; then "$@"; fi
    make -s -C "$dir/l3fwd" >/dev/null 2>&1 || make -C "$dir/l3fwd"
}

# configs/router-open.json with the benches' routes, written to $1: port 0
# (ge2) reaches 198.18.1.0/24 via 192.168.2.253 on ge3, port 1 (ge3)
# 198.18.0.0/24 via 192.168.1.253 on ge2 (l3fwd's default routes send
# 198.18.N.0/24 to port N).
routing_config() {
    python3 - "$HERE/configs/router-open.json" "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["static_routes"] = [["198.18.0.0/24", "192.168.1.253"], ["198.18.1.0/24", "192.168.2.253"]]
json.dump(d, open(sys.argv[2], "w"))
PY
}
