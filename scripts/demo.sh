#!/usr/bin/env bash
# The main job, end to end on the netns bench: build, two pods behind a node whose FORWARD
# chain carries a kube-proxy-sized rule load, the slow path measured, the fast path attached,
# real IPv4/IPv6 traffic measured again, a FORWARD DROP that the fast path bypasses, and a
# live switch from the XDP to the TC datapath; then across two nodes joined by a wire, the fast
# path on both (pods and uplinks) past a FORWARD DROP on both. (Quick 3 s figures;
# scripts/bench.sh is the benchmark.)
# Runs as root; leaves nothing behind (namespaces, pins, processes).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NAME=${DEMO_NAME:-xfpdemo}
XNAME=${NAME}x
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
  for k in 1 2; do
    [ -x "$CTL" ] && "$CTL" --netns "$XNAME-node$k" --pin-dir "$PIN-node$k" detach --all >/dev/null 2>&1
    rm -rf "$PIN-node$k" 2>/dev/null
  done
  "$ROOT/scripts/bench-netns.sh" down --name "$XNAME" >/dev/null 2>&1
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
# iperf3 -D is no child of ours: kill it by its PID, nothing to wait for.
kill "$IPERF_PID" 2>/dev/null || true
IPERF_PID=

step "across nodes: two nodes joined by a wire (up1 <-> up2), native routing, one pod each"
"$ROOT/scripts/bench-netns.sh" down --name "$XNAME" >/dev/null 2>&1 || true
"$ROOT/scripts/bench-netns.sh" up 1 --name "$XNAME" --nodes 2
X1=$XNAME-n1pod1 X2=$XNAME-n2pod1
ip netns exec "$X2" iperf3 -s -D -I "/tmp/$XNAME-iperf.pid" >/dev/null
sleep 0.3
IPERF_PID=$(cat "/tmp/$XNAME-iperf.pid")
xiperf() { # xiperf ADDR: 3 s single-stream TCP node 1's pod -> node 2's pod
  ip netns exec "$X1" iperf3 -c "$1" -t 3 -J 2>/dev/null \
    | python3 -c 'import json,sys; print("%.2f Gbit/s" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}
echo "kernel path, IPv4 TCP: $(xiperf 10.244.2.1)"
for k in 1 2; do
  o=$((3 - k))
  XN=("$CTL" --netns "$XNAME-node$k" --pin-dir "$PIN-node$k")
  "${XN[@]}" attach "$XNAME${k}h1" --uplink "up$k"
  "${XN[@]}" endpoint add "10.244.$k.1" --iface "$XNAME${k}h1"
  "${XN[@]}" endpoint add "fd00::$k:1" --iface "$XNAME${k}h1"
  "${XN[@]}" remote add "10.244.$o.0/24"
  "${XN[@]}" remote add "fd00::$o:0/112"
  ip netns exec "$XNAME-node$k" iptables -I FORWARD -s 10.244.0.0/16 -d 10.244.0.0/16 -j DROP
  ip netns exec "$XNAME-node$k" ip6tables -I FORWARD -s fd00::/64 -d fd00::/64 -j DROP
done
"$CTL" --netns "$XNAME-node1" --pin-dir "$PIN-node1" status
echo "fast path on both nodes, through a FORWARD DROP on both:"
ip netns exec "$X1" ping -c 3 -i 0.2 -W 1 10.244.2.1 | tail -2
ip netns exec "$X1" ping -c 3 -i 0.2 -W 1 fd00::2:1 | tail -2
echo "IPv4 TCP: $(xiperf 10.244.2.1)   IPv6 TCP: $(xiperf fd00::2:1)"
for k in 1 2; do
  echo "node $k: redirected $("$CTL" --netns "$XNAME-node$k" --pin-dir "$PIN-node$k" --json stats \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["reasons"]["redirected"]["packets"])') packets;" \
    "FORWARD DROP hits: $(ip netns exec "$XNAME-node$k" iptables -vnL FORWARD | awk 'NR == 3 { print $1 }')"
done
step "done"
