#!/usr/bin/env bash
# The main job, end to end on the netns bench: build, two pods behind a node whose FORWARD
# chain carries a kube-proxy-sized rule load, the slow path measured, the fast path attached,
# real IPv4/IPv6 traffic measured again, a FORWARD DROP that the fast path bypasses, and a
# live switch from the XDP to the TC datapath. (Quick 3 s figures; scripts/bench-compare.sh
# is the benchmark.)
# Runs as root; leaves nothing behind (namespaces, pins, processes).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NAME=${DEMO_NAME:-xfpdemo}
RULES=${DEMO_FORWARD_RULES:-2000}
PIN=/sys/fs/bpf/xdp-fastpath-demo
NODE=$NAME-node
P1=$NAME-pod1
P2=$NAME-pod2
HV1=${NAME}h1
HV2=${NAME}h2
IPERF_PID=

step() { printf '\n=== %s\n' "$*"; }

cleanup() {
  set +e
  [ -n "$IPERF_PID" ] && kill "$IPERF_PID" 2>/dev/null && wait "$IPERF_PID" 2>/dev/null
  [ -x "$CTL" ] && "$CTL" --netns "$NODE" --pin-dir "$PIN" detach --all >/dev/null 2>&1
  "$ROOT/scripts/bench-netns.sh" down --name "$NAME" >/dev/null 2>&1
  rm -rf "$PIN" 2>/dev/null
}

[ "$(id -u)" -eq 0 ] || { echo "demo.sh: run as root (namespaces, XDP, bpffs)" >&2; exit 1; }

step "bootstrap (packages, rust-src, bpf-linker)"
"$ROOT/scripts/bootstrap.sh"
export PATH="$HOME/.cargo/bin:$PATH"

step "build xdp-ctl (embeds the eBPF object)"
(cd "$ROOT" && cargo build --release -p xdp-ctl)
CTL=$ROOT/target/release/xdp-ctl
trap cleanup EXIT
CTL_N=("$CTL" --netns "$NODE" --pin-dir "$PIN")

step "bench: node namespace + 2 pods, $RULES FORWARD rules on the node"
"$ROOT/scripts/bench-netns.sh" down --name "$NAME" >/dev/null 2>&1 || true
"$ROOT/scripts/bench-netns.sh" up 2 --name "$NAME" --forward-rules "$RULES"

iperf() { # iperf() FAMILY-ADDR: 3 s single-stream TCP pod1 -> pod2, prints Gbit/s
  ip netns exec "$P1" iperf3 -c "$1" -t 3 -J 2>/dev/null \
    | python3 -c 'import json,sys; print("%.2f Gbit/s" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}
rtt() { # rtt() ADDR: median ping RTT over 20 pings
  ip netns exec "$P1" ping -q -c 20 -i 0.05 "$1" | awk -F/ '/^rtt/ {print $5 " ms avg"}'
}
ip netns exec "$P2" iperf3 -s -D -I "/tmp/$NAME-iperf.pid" >/dev/null
sleep 0.3
IPERF_PID=$(cat "/tmp/$NAME-iperf.pid")

step "slow path (kernel routing + $RULES FORWARD rules)"
echo "IPv4 TCP: $(iperf 10.244.0.2)   ping: $(rtt 10.244.0.2)"
echo "IPv6 TCP: $(iperf fd00::2)   ping: $(rtt fd00::2)"

step "attach the fast path to the pods' host veths (XDP first; tc is the default, below)"
"${CTL_N[@]}" attach --datapath xdp "$HV1" "$HV2"
for i in 1 2; do
  "${CTL_N[@]}" endpoint add "10.244.0.$i" --iface "${NAME}h$i"
  "${CTL_N[@]}" endpoint add "fd00::$i" --iface "${NAME}h$i"
done
"${CTL_N[@]}" status

step "fast path (XDP redirect, netfilter skipped)"
echo "IPv4 TCP: $(iperf 10.244.0.2)   ping: $(rtt 10.244.0.2)"
echo "IPv6 TCP: $(iperf fd00::2)   ping: $(rtt fd00::2)"

step "proof of bypass: the node now DROPs pod-to-pod traffic in FORWARD"
ip netns exec "$NODE" iptables -I FORWARD -s 10.244.0.0/16 -d 10.244.0.0/16 -j DROP
ip netns exec "$NODE" ip6tables -I FORWARD -s fd00::/64 -d fd00::/64 -j DROP
ip netns exec "$P1" ping -c 3 -i 0.2 -W 1 10.244.0.2 | tail -2
ip netns exec "$P1" ping -c 3 -i 0.2 -W 1 fd00::2 | tail -2
echo "IPv4 TCP through the DROP rule: $(iperf 10.244.0.2)"

step "switch both pods to the TC datapath (TCX + bpf_redirect_peer: the pods keep TSO)"
"${CTL_N[@]}" attach --datapath tc "$HV1" "$HV2"
ip netns exec "$P1" ethtool -k eth0 | grep -E '^(tcp-segmentation-offload|tx-checksumming|generic-receive-offload):'
echo "IPv4 TCP through the DROP rule: $(iperf 10.244.0.2)   ping: $(rtt 10.244.0.2)"
echo "IPv6 TCP through the DROP rule: $(iperf fd00::2)   ping: $(rtt fd00::2)"

step "counters (both datapaths share them)"
"${CTL_N[@]}" stats

step "detach: the DROP rule applies again"
"${CTL_N[@]}" detach --all
if ip netns exec "$P1" ping -c 2 -i 0.2 -W 1 10.244.0.2 >/dev/null; then
  echo "unexpected: traffic passed the DROP rule without the fast path" >&2
  exit 1
fi
echo "pod1 -> pod2 is dropped by FORWARD again, as it should be"
step "done"
