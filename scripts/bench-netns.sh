#!/usr/bin/env bash
# Builds (and tears down) the routed, Calico-style pod bench of DESIGN.md section 1 entirely
# inside network namespaces, so the real host's interfaces, routes, sysctls and firewall are
# never touched:
#
#   ${PREFIX}-pod<i>: eth0 10.244.<i>>8>.<i&255>/32 + fd00::<i hex>/128,
#                     default via 169.254.1.1 (v4, onlink) and fe80::1 (v6),
#                     permanent neighbours for both gateways -> host-veth MAC
#   ${PREFIX}-node:   ${PREFIX}h<i> (host side of pod i's veth), no address, proxy_arp=1,
#                     /32 and /128 routes to each pod, permanent neighbours -> pod MACs,
#                     forwarding on, optionally K never-matching FORWARD rules
#
# MACs are deterministic: pod eth0 02:00:00:00:HH:LL, host side 02:00:00:01:HH:LL, HHLL = i.
#
# With --nodes 2, two such nodes joined by a veth pair as the wire, with native routing (each
# node routes the other's pod CIDR via the other's wire address, as Calico BGP, flannel host-gw
# or kindnet do):
#
#   ${PREFIX}-node<k>:    k = 1, 2; as above, plus rp_filter=0 and the wire end up<k>
#                         (10.244.255.<k>/30, fd00::ff:<k>/112, MAC 02:00:00:ff:00:0k,
#                         tx checksumming off, GRO on), routes 10.244.<j>.0/24 and
#                         fd00::<j>:0/112 via the other node's wire address dev up<k>
#   ${PREFIX}-n<k>pod<i>: eth0 10.244.<k>.<i>/32 + fd00::<k>:<i hex>/128, configured like the
#                         pods above; host side ${PREFIX}<k>h<i> in ${PREFIX}-node<k>;
#                         MACs pod 02:00:0k:00:HH:LL, host side 02:00:0k:01:HH:LL
set -euo pipefail

# A reader that goes away (`... | head`) must not kill us half-way through set-up or clean-up:
# writes to a closed stdout just fail (and logging ignores that).
trap '' PIPE

PROG=$(basename "$0")
DEFAULT_PREFIX=xfp
DEFAULT_PODS=2
MAX_PODS=65535
# Per node with --nodes 2: pod i is 10.244.<node>.<i>.
MAX_PODS_TWO_NODES=254
IFNAMSIZ_MAX=15

usage() {
  cat <<EOF
Usage:
  ${PROG} up [N] [--name PREFIX] [--forward-rules K] [--nodes 1|2]
  ${PROG} down [--name PREFIX]
  ${PROG} add-pods FROM TO [--name PREFIX]
  ${PROG} del-pods FROM TO [--name PREFIX]
  ${PROG} help

Builds the routed pod-to-pod bench of DESIGN.md section 1 inside network namespaces only.

  up      Create namespace PREFIX-node (the "node": forwarding on, proxy_arp on its veths) and
          N pod namespaces PREFIX-pod1..PREFIX-podN, each with eth0 <-veth-> PREFIXh<i> in the
          node namespace. Pod i gets 10.244.(i>>8).(i&255)/32 and fd00::<i in hex>/128.
          Fails if namespaces with this prefix already exist. On failure, everything it
          created is removed again.
          With --nodes 2: two nodes PREFIX-node1 and PREFIX-node2, joined by a veth pair
          (the wire: up1 in node 1, 10.244.255.1/30 and fd00::ff:1/112, <-> up2 in node 2,
          .2 and ::ff:2; tx checksumming off and GRO on at both ends), each with N pods
          PREFIX-n<k>pod<i> (eth0 10.244.<k>.<i>/32 and fd00::<k>:<i hex>/128, host side
          PREFIX<k>h<i>); native routing: node 1 routes 10.244.2.0/24 and fd00::2:0/112 via
          node 2's wire address, and vice versa. rp_filter=0 in both nodes. Each node has
          resolved the other's wire address (ARP and NDP) when 'up' returns.
  down    Delete every namespace of PREFIX, either layout: PREFIX-node, PREFIX-pod<i>,
          PREFIX-node<k>, PREFIX-n<k>pod<i> (their veths, the wire included, go with them).
          Idempotent: nothing to delete is not an error. Removes added pods too.
  add-pods
          Add pods FROM..TO to a running bench (PREFIX-node must exist), built exactly like
          the pods of 'up'. Fails if one of them already exists; on failure, the pods of
          this range are removed again.
  del-pods
          Remove pods FROM..TO from a running bench: each host veth first (its routes and
          neighbours go with it, at once), then the pod namespace. Idempotent.

Options:
  N                    number of pods, 1..${MAX_PODS} (default ${DEFAULT_PODS})
  --name PREFIX        namespace/interface prefix, letters and digits (default ${DEFAULT_PREFIX});
                       PREFIXh<N> must fit in ${IFNAMSIZ_MAX} characters
  --forward-rules K    load K never-matching rules into the node's iptables and ip6tables
                       FORWARD chains (emulates kube-proxy/CNI rule load; default 0); with
                       --nodes 2, into each node's
  --nodes 1|2          one node (default) or two nodes joined by a wire ('up' only; N pods
                       per node, 1..${MAX_PODS_TWO_NODES} with 2)

Examples:
  ${PROG} up 2
  ip netns exec ${DEFAULT_PREFIX}-pod1 ping -c1 10.244.0.2
  ${PROG} up 1000 --name b --forward-rules 2000
  ${PROG} add-pods 1001 1050 --name b
  ${PROG} del-pods 1 25 --name b
  ${PROG} down
  ${PROG} up 2 --nodes 2 --name x2
  ip netns exec x2-n1pod1 ping -c1 10.244.2.1
  ${PROG} down --name x2
EOF
}

TAG=bench-netns
HELP=help
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# --- naming and addressing (pure helpers) -------------------------------------------------

# The node being built: empty for the one-node layout, 1 or 2 with --nodes 2.
NODE=""

node_ns() { printf '%s-node%s' "$PREFIX" "$NODE"; }
pod_ns() {
  if [ -z "$NODE" ]; then printf '%s-pod%d' "$PREFIX" "$1"; else printf '%s-n%dpod%d' "$PREFIX" "$NODE" "$1"; fi
}
host_if() { printf '%s%sh%d' "$PREFIX" "$NODE" "$1"; }

# Sets P_NS P_HV P_V4 P_V6 P_MAC P_HMAC for pod $1 of node $NODE without forking (loops over
# 1000 pods).
pod_vars() {
  local i=$1 hi=$(($1 >> 8)) lo=$(($1 & 255))
  if [ -z "$NODE" ]; then
    printf -v P_NS '%s-pod%d' "$PREFIX" "$i"
    printf -v P_HV '%sh%d' "$PREFIX" "$i"
    printf -v P_V4 '10.244.%d.%d' "$hi" "$lo"
    printf -v P_V6 'fd00::%x' "$i"
    printf -v P_MAC '02:00:00:00:%02x:%02x' "$hi" "$lo"
    printf -v P_HMAC '02:00:00:01:%02x:%02x' "$hi" "$lo"
  else
    printf -v P_NS '%s-n%dpod%d' "$PREFIX" "$NODE" "$i"
    printf -v P_HV '%s%dh%d' "$PREFIX" "$NODE" "$i"
    printf -v P_V4 '10.244.%d.%d' "$NODE" "$i"
    printf -v P_V6 'fd00::%x:%x' "$NODE" "$i"
    printf -v P_MAC '02:00:%02x:00:%02x:%02x' "$NODE" "$hi" "$lo"
    printf -v P_HMAC '02:00:%02x:01:%02x:%02x' "$NODE" "$hi" "$lo"
  fi
}

# Our namespaces, exactly, of either layout: PREFIX-node, PREFIX-pod<digits>, PREFIX-node1,
# PREFIX-node2, PREFIX-n<1|2>pod<digits> (never a longer prefix's).
list_ours() {
  ip netns list 2>/dev/null | awk '{print $1}' \
    | grep -E "^${PREFIX}-(node|pod[0-9]+|node[12]|n[12]pod[0-9]+)\$" || true
}

# --- down -------------------------------------------------------------------------------

do_down() {
  local ours count
  ours=$(list_ours)
  if [ -z "$ours" ]; then
    say "nothing to remove for prefix '${PREFIX}'"
    return 0
  fi
  count=$(printf '%s\n' "$ours" | wc -l)
  say "deleting ${count} namespace(s) with prefix '${PREFIX}' (their veths go with them)"
  # -force: keep deleting the others if one fails; checked below.
  printf '%s\n' "$ours" | sed 's/^/netns del /' | ip -force -batch - || true
  ours=$(list_ours)
  if [ -n "$ours" ]; then
    die "could not delete: $(printf '%s ' $ours)"
  fi
  say "down: done"
}

# --- building pods (up, add-pods) ---------------------------------------------------------

# Creates the veths of pods FROM..TO (their namespaces must exist) and configures the node side
# and the pods. Batch files go to DIR.
build_pods() {
  local from=$1 to=$2 dir=$3 i node
  node=$(node_ns)
  say "creating $((to - from + 1)) veth pair(s): $(host_if "$from")..$(host_if "$to") in ${node} <-> eth0 in each pod"
  for ((i = from; i <= to; i++)); do
    pod_vars "$i"
    # Both ends are created directly in their namespaces: nothing appears in the host's.
    echo "link add ${P_HV} address ${P_HMAC} netns ${node} type veth" \
      "peer name eth0 address ${P_MAC} netns ${P_NS}"
  done >"$dir/veth.batch"
  ip -batch "$dir/veth.batch"

  say "node ${node}: links up, proxy_arp=1, /32 + /128 routes and permanent neighbours per pod"
  local sysctl_args=()
  for ((i = from; i <= to; i++)); do
    pod_vars "$i"
    echo "link set ${P_HV} up"
    echo "route add ${P_V4}/32 dev ${P_HV} scope link"
    echo "route add ${P_V6}/128 dev ${P_HV}"
    echo "neigh replace ${P_V4} lladdr ${P_MAC} dev ${P_HV} nud permanent"
    echo "neigh replace ${P_V6} lladdr ${P_MAC} dev ${P_HV} nud permanent"
    sysctl_args+=("net.ipv4.conf.${P_HV}.proxy_arp=1")
  done >"$dir/node.batch"
  ip -n "$node" -batch "$dir/node.batch"
  # Explicit as well as inherited from "default" (set by 'up'); one process for all veths.
  ip netns exec "$node" sysctl -q -w "${sysctl_args[@]}" >/dev/null

  say "pods: eth0 up, addresses (v6 nodad), gateway routes, permanent gateway neighbours"
  mkdir -p "$dir/pods"
  for ((i = from; i <= to; i++)); do
    pod_vars "$i"
    cat >"$dir/pods/${P_NS}" <<EOF
link set lo up
link set eth0 up
addr add ${P_V4}/32 dev eth0
addr add ${P_V6}/128 dev eth0 nodad
route add 169.254.1.1/32 dev eth0 scope link
route add default via 169.254.1.1 dev eth0
neigh replace 169.254.1.1 lladdr ${P_HMAC} dev eth0 nud permanent
route add ::/0 via fe80::1 dev eth0
neigh replace fe80::1 lladdr ${P_HMAC} dev eth0 nud permanent
EOF
    printf '%s\n' "$P_NS"
  done >"$dir/pods.list"
  # One ip process per pod namespace (ip cannot switch namespaces inside a batch), run on
  # all CPUs. xargs exits non-zero if any of them failed; ip names the failing line.
  (cd "$dir/pods" && xargs -P "$(nproc)" -I{} ip -n {} -batch {} <"$dir/pods.list") \
    || die "configuring the pod namespaces failed (see the ip error above)"
}

# --- up ---------------------------------------------------------------------------------

UP_COMPLETE=0
TMPDIR_UP=""
# "FROM TO" while add-pods runs: what a failure has to remove again (else: everything).
ADD_RANGE=""

cleanup_failed_up() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$TMPDIR_UP" ]; then rm -rf -- "$TMPDIR_UP"; fi
  if [ "$UP_COMPLETE" -ne 1 ]; then
    printf '[bench-netns] error: %s did not complete (status %d); removing what it created\n' "$CMD" "$rc" >&2
    if [ -n "$ADD_RANGE" ]; then
      # shellcheck disable=SC2086 # "FROM TO"
      do_del_pods $ADD_RANGE || true
    else
      do_down || true
    fi
    [ "$rc" -ne 0 ] || rc=1
  fi
  exit "$rc"
}

print_pods() {
  local n=$1 i
  printf '  %-16s %-16s %-15s %-22s %-18s %s\n' NAMESPACE HOST-VETH IPV4 IPV6 POD-MAC HOST-MAC
  local shown=$n
  if [ "$n" -gt 20 ]; then shown=10; fi
  for ((i = 1; i <= n; i++)); do
    if [ "$i" -gt "$shown" ] && [ "$i" -lt "$n" ]; then
      if [ "$i" -eq $((shown + 1)) ]; then echo "  ... ($((n - shown - 1)) more)"; fi
      continue
    fi
    pod_vars "$i"
    printf '  %-16s %-16s %-15s %-22s %-18s %s\n' "$P_NS" "$P_HV" "$P_V4" "$P_V6" "$P_MAC" "$P_HMAC"
  done
}

print_summary() {
  local n=$1 rules=$2 start=$3 node
  node=$(node_ns)
  local elapsed
  elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
  say "up: done in ${elapsed}s"
  echo
  echo "node namespace: ${node} (ip_forward=1, ipv6 forwarding=1, FORWARD rules: ${rules} v4 + ${rules} v6)"
  echo "pods: ${n}"
  print_pods "$n"
  echo
  pod_vars "$n"
  echo "try: ip netns exec $(pod_ns 1) ping -c1 ${P_V4}"
  echo "tear down: ${PROG} down --name ${PREFIX}"
}

print_summary_two() {
  local n=$1 rules=$2 start=$3 elapsed
  elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
  say "up: done in ${elapsed}s"
  for NODE in 1 2; do
    wire_vars
    echo
    echo "node namespace: $(node_ns) (ip_forward=1, ipv6 forwarding=1, rp_filter=0, FORWARD rules: ${rules} v4 + ${rules} v6)"
    echo "  wire: ${W_IF} ${W_V4}/30 ${W_V6}/112 ${W_MAC} (tx checksumming off, GRO on)"
    echo "  routes: ${W_REMOTE_V4} via ${W_PEER_V4}, ${W_REMOTE_V6} via ${W_PEER_V6} dev ${W_IF}"
    echo "  pods: ${n}"
    print_pods "$n"
  done
  NODE=1
  echo
  echo "try: ip netns exec $(pod_ns 1) ping -c1 10.244.2.1"
  echo "tear down: ${PROG} down --name ${PREFIX}"
  NODE=""
}

# Node namespace $(node_ns) (it must exist): lo up, forwarding, proxy_arp and accept_dad=0 by
# default; extra sysctls (NAME=VALUE) may follow.
setup_node() {
  local node
  node=$(node_ns)
  say "node ${node}: lo up, ip_forward=1, ipv6 forwarding=1, proxy_arp and accept_dad=0 by default${1:+, $*}"
  # All inside the node namespace only; "default" makes the veths created below inherit.
  ip netns exec "$node" sysctl -q -w \
    net.ipv4.ip_forward=1 \
    net.ipv6.conf.all.forwarding=1 \
    net.ipv4.conf.default.proxy_arp=1 \
    net.ipv6.conf.all.accept_dad=0 \
    net.ipv6.conf.default.accept_dad=0 "$@" >/dev/null
  ip -n "$node" link set lo up
}

# Loads RULES ($1) never-matching rules into the FORWARD chains of $(node_ns); files go to
# DIR ($2).
load_forward_rules() {
  local rules=$1 dir=$2 node k
  node=$(node_ns)
  say "node ${node}: loading ${rules} never-matching FORWARD rules into iptables and ip6tables"
  {
    echo '*filter'
    for ((k = 0; k < rules; k++)); do
      # 198.18.0.0/15 (benchmarking range) never carries pod traffic.
      printf -- '-A FORWARD -s 198.18.%d.%d/32 -d 198.19.0.0/16 -p tcp -m tcp --dport %d -j DROP\n' \
        $(((k >> 8) & 255)) $((k & 255)) $((1024 + k % 60000))
    done
    echo 'COMMIT'
  } >"$dir/rules4"
  {
    echo '*filter'
    for ((k = 0; k < rules; k++)); do
      # 2001:db8::/32 (documentation range) never carries pod traffic.
      printf -- '-A FORWARD -s 2001:db8::%x/128 -d 2001:db8:1::/64 -p tcp -m tcp --dport %d -j DROP\n' \
        "$k" $((1024 + k % 60000))
    done
    echo 'COMMIT'
  } >"$dir/rules6"
  ip netns exec "$node" iptables-restore --noflush <"$dir/rules4"
  ip netns exec "$node" ip6tables-restore --noflush <"$dir/rules6"
  local got
  got=$(ip netns exec "$node" iptables -S FORWARD | grep -c '^-A FORWARD' || true)
  [ "$got" -eq "$rules" ] || die "expected ${rules} iptables FORWARD rules in ${node}, found ${got}"
}

# Refuses to build over an existing bench of this prefix; checks the tools (ARGS: extra ones).
check_fresh() {
  local existing tool
  existing=$(list_ours)
  if [ -n "$existing" ]; then
    die "namespaces with prefix '${PREFIX}' already exist ($(printf '%s\n' "$existing" | wc -l)); run '${PROG} down --name ${PREFIX}' first"
  fi
  for tool in ip iptables-restore ip6tables-restore sysctl "$@"; do
    command -v "$tool" >/dev/null || die "'$tool' not found (scripts/bootstrap.sh installs it)"
  done
}

# The temporary directory and the clean-up traps of 'up'.
begin_up() {
  TMPDIR_UP=$(mktemp -d /tmp/bench-netns.XXXXXX)
  trap cleanup_failed_up EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

end_up() {
  UP_COMPLETE=1
  rm -rf -- "$TMPDIR_UP"
  TMPDIR_UP=""
  trap - EXIT INT TERM
}

do_up() {
  local n=$1 rules=$2 i node start
  node=$(node_ns)
  start=$(date +%s.%N)

  check_fresh
  begin_up

  say "creating namespaces: ${node} and ${n} pod namespace(s) $(pod_ns 1)..$(pod_ns "$n")"
  {
    echo "netns add ${node}"
    for ((i = 1; i <= n; i++)); do
      pod_vars "$i"
      echo "netns add ${P_NS}"
    done
  } >"$TMPDIR_UP/netns.batch"
  ip -batch "$TMPDIR_UP/netns.batch"

  setup_node
  build_pods 1 "$n" "$TMPDIR_UP"

  if [ "$rules" -gt 0 ]; then
    load_forward_rules "$rules" "$TMPDIR_UP"
  fi

  end_up
  print_summary "$n" "$rules" "$start" 2>/dev/null || true
}

# --- two nodes (up --nodes 2) -----------------------------------------------------------

# Sets W_IF W_MAC W_V4 W_V6 (node $NODE's wire end), W_PEER_V4 W_PEER_V6 (the other end's
# addresses) and W_REMOTE_V4 W_REMOTE_V6 (the other node's pod CIDRs).
wire_vars() {
  local other=$((3 - NODE))
  W_IF="up${NODE}"
  W_MAC="02:00:00:ff:00:0${NODE}"
  W_V4="10.244.255.${NODE}"
  W_V6="fd00::ff:${NODE}"
  W_PEER_V4="10.244.255.${other}"
  W_PEER_V6="fd00::ff:${other}"
  W_REMOTE_V4="10.244.${other}.0/24"
  W_REMOTE_V6="fd00::${other}:0/112"
}

do_up_two() {
  local n=$1 rules=$2 i start node
  start=$(date +%s.%N)

  check_fresh ethtool ping
  begin_up

  say "creating namespaces: ${PREFIX}-node1 and ${PREFIX}-node2, and ${n} pod namespace(s) per node"
  for NODE in 1 2; do
    echo "netns add $(node_ns)"
    for ((i = 1; i <= n; i++)); do
      pod_vars "$i"
      echo "netns add ${P_NS}"
    done
  done >"$TMPDIR_UP/netns.batch"
  ip -batch "$TMPDIR_UP/netns.batch"

  for NODE in 1 2; do
    # rp_filter=0: what reaches FORWARD is decided by the rules a test installs, not by the
    # host's setting (new namespaces inherit the host's IPv4 defaults).
    setup_node net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
    build_pods 1 "$n" "$TMPDIR_UP"
  done

  say "wire: up1 in ${PREFIX}-node1 <-> up2 in ${PREFIX}-node2"
  ip link add up1 address 02:00:00:ff:00:01 netns "${PREFIX}-node1" type veth \
    peer name up2 address 02:00:00:ff:00:02 netns "${PREFIX}-node2"
  for NODE in 1 2; do
    wire_vars
    node=$(node_ns)
    say "node ${node}: ${W_IF} ${W_V4}/30 ${W_V6}/112, tx checksumming off, GRO on; ${W_REMOTE_V4} via ${W_PEER_V4}, ${W_REMOTE_V6} via ${W_PEER_V6}"
    printf '%s\n' \
      "link set ${W_IF} up" \
      "addr add ${W_V4}/30 dev ${W_IF}" \
      "addr add ${W_V6}/112 dev ${W_IF} nodad" \
      "route add ${W_REMOTE_V4} via ${W_PEER_V4} dev ${W_IF}" \
      "route add ${W_REMOTE_V6} via ${W_PEER_V6} dev ${W_IF}" >"$TMPDIR_UP/wire.batch"
    ip -n "$node" -batch "$TMPDIR_UP/wire.batch"
    # A NIC that fills in checksums in hardware delivers full ones: with tx checksumming off
    # the kernel completes them before the wire. GRO on: frames that XDP redirects into a veth
    # are dropped unless its peer has NAPI (DESIGN.md section 3).
    ip netns exec "$node" ethtool -K "$W_IF" tx off gro on >/dev/null
  done
  # As on a real node, the peer node's neighbour entry exists before pods talk (a FORWARD DROP
  # would otherwise stop the first packet, and the resolution with it).
  for NODE in 1 2; do
    wire_vars
    node=$(node_ns)
    say "node ${node}: resolving ${W_PEER_V4} and ${W_PEER_V6} (ARP, NDP)"
    ip netns exec "$node" ping -q -c1 -W2 "$W_PEER_V4" >/dev/null \
      || die "node ${node}: no answer from ${W_PEER_V4} over the wire"
    ip netns exec "$node" ping -q -c1 -W2 "$W_PEER_V6" >/dev/null \
      || die "node ${node}: no answer from ${W_PEER_V6} over the wire"
  done

  if [ "$rules" -gt 0 ]; then
    for NODE in 1 2; do load_forward_rules "$rules" "$TMPDIR_UP"; done
  fi
  NODE=""

  end_up
  print_summary_two "$n" "$rules" "$start" 2>/dev/null || true
}

# --- add-pods / del-pods (on a running bench) ---------------------------------------------

# Our pod namespaces numbered FROM..TO that exist.
pods_in_range() {
  local from=$1 to=$2
  list_ours | awk -v p="${PREFIX}-pod" -v f="$from" -v t="$to" \
    'index($0, p) == 1 { n = substr($0, length(p) + 1) + 0; if (n >= f && n <= t) print }'
}

do_del_pods() {
  local from=$1 to=$2 node links ours
  node=$(node_ns)
  if [ -e "/run/netns/$node" ]; then
    # The host veths first: they (with their routes and neighbours) go at once, whereas a
    # deleted namespace takes its veth along only when the kernel gets round to freeing it.
    links=$(ip -n "$node" -o link show 2>/dev/null \
      | awk -F': ' -v p="${PREFIX}h" -v f="$from" -v t="$to" '{
          name = $2; sub(/@.*/, "", name)
          if (index(name, p) == 1) {
            rest = substr(name, length(p) + 1)
            if (rest ~ /^[0-9]+$/ && rest + 0 >= f && rest + 0 <= t) print name
          }
        }')
    if [ -n "$links" ]; then
      say "deleting $(printf '%s\n' "$links" | wc -l) host veth(s) of pods ${from}..${to} in ${node}"
      printf '%s\n' "$links" | sed 's/^/link del /' | ip -n "$node" -force -batch - || true
    fi
  fi
  ours=$(pods_in_range "$from" "$to")
  if [ -n "$ours" ]; then
    say "deleting $(printf '%s\n' "$ours" | wc -l) pod namespace(s) of pods ${from}..${to}"
    printf '%s\n' "$ours" | sed 's/^/netns del /' | ip -force -batch - || true
  fi
  ours=$(pods_in_range "$from" "$to")
  if [ -n "$ours" ]; then
    die "could not delete: $(printf '%s ' $ours)"
  fi
  say "del-pods: done"
}

do_add_pods() {
  local from=$1 to=$2 i node existing
  node=$(node_ns)
  # (A file test, not `ip netns list | grep -q`: under pipefail with SIGPIPE ignored, grep's
  # early exit fails the pipeline once there are many namespaces.)
  [ -e "/run/netns/$node" ] \
    || die "no bench with prefix '${PREFIX}' (namespace ${node} does not exist); run '${PROG} up' first"
  existing=$(pods_in_range "$from" "$to")
  if [ -n "$existing" ]; then
    die "pods of ${from}..${to} already exist: $(printf '%s ' $existing)"
  fi

  TMPDIR_UP=$(mktemp -d /tmp/bench-netns.XXXXXX)
  ADD_RANGE="$from $to"
  trap cleanup_failed_up EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  say "adding pods ${from}..${to}: namespaces $(pod_ns "$from")..$(pod_ns "$to")"
  for ((i = from; i <= to; i++)); do
    pod_vars "$i"
    echo "netns add ${P_NS}"
  done >"$TMPDIR_UP/netns.batch"
  ip -batch "$TMPDIR_UP/netns.batch"
  build_pods "$from" "$to" "$TMPDIR_UP"

  UP_COMPLETE=1
  rm -rf -- "$TMPDIR_UP"
  TMPDIR_UP=""
  trap - EXIT INT TERM
  say "add-pods: done"
}

# --- argument parsing -------------------------------------------------------------------

[ $# -ge 1 ] || {
  usage >&2
  exit 2
}
CMD=$1
shift
case "$CMD" in
  -h | --help | help)
    usage
    exit 0
    ;;
  up | down | add-pods | del-pods) ;;
  *) usage_error "unknown command '$CMD' (expected up, down, add-pods, del-pods or help)" ;;
esac

PREFIX=$DEFAULT_PREFIX
POSITIONAL=()
RULES=0
NODES=1
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --name | --name=*)
      opt_arg "$@"
      PREFIX=$OPTVAL
      shift "$OPTSHIFT"
      ;;
    --forward-rules | --forward-rules=*)
      [ "$CMD" = up ] || usage_error "--forward-rules only applies to 'up'"
      opt_arg "$@"
      RULES=$OPTVAL
      shift "$OPTSHIFT"
      ;;
    --nodes | --nodes=*)
      [ "$CMD" = up ] || [ "$CMD" = down ] || usage_error "--nodes only applies to 'up' (and 'down', which removes either layout anyway)"
      opt_arg "$@"
      NODES=$OPTVAL
      shift "$OPTSHIFT"
      ;;
    -*) usage_error "unknown option '$1'" ;;
    *)
      case "$CMD" in
        down) usage_error "'down' takes no pod count (got '$1')" ;;
        up) [ "${#POSITIONAL[@]}" -eq 0 ] || usage_error "pod count given twice ('${POSITIONAL[0]}' and '$1')" ;;
        *) [ "${#POSITIONAL[@]}" -lt 2 ] || usage_error "'$CMD' takes two pod numbers, FROM and TO (got a third, '$1')" ;;
      esac
      POSITIONAL+=("$1")
      shift
      ;;
  esac
done

[[ $PREFIX =~ ^[A-Za-z0-9]+$ ]] || usage_error "prefix '$PREFIX' must be letters and digits only"

case "$NODES" in
  1) ;;
  2) MAX_PODS=$MAX_PODS_TWO_NODES ;;
  *) usage_error "--nodes must be 1 or 2 (got '$NODES')" ;;
esac

# A pod number 1..MAX_PODS whose host veth name PREFIX[<node>]h<N> fits IFNAMSIZ; $2 names it.
check_pod_number() {
  { is_uint "$1" && [ "${#1}" -le 6 ]; } || usage_error "$2 '$1' is not a number 1..${MAX_PODS}"
  local v=$((10#$1))
  [ "$v" -ge 1 ] && [ "$v" -le "$MAX_PODS" ] || usage_error "$2 must be 1..${MAX_PODS} (got ${v})"
  local longest="${PREFIX}h${v}"
  if [ "$NODES" -eq 2 ]; then longest="${PREFIX}2h${v}"; fi
  [ "${#longest}" -le "$IFNAMSIZ_MAX" ] \
    || usage_error "interface name '${longest}' is longer than ${IFNAMSIZ_MAX} characters; use a shorter --name"
}

case "$CMD" in
  up)
    PODS=${POSITIONAL[0]:-$DEFAULT_PODS}
    check_pod_number "$PODS" "pod count"
    PODS=$((10#$PODS))
    { is_uint "$RULES" && [ "${#RULES}" -le 7 ]; } || usage_error "--forward-rules '$RULES' is not a number 0..1000000"
    RULES=$((10#$RULES))
    [ "$RULES" -le 1000000 ] || usage_error "--forward-rules ${RULES} is unreasonably large"
    ;;
  add-pods | del-pods)
    [ "${#POSITIONAL[@]}" -eq 2 ] || usage_error "'$CMD' takes two pod numbers, FROM and TO"
    check_pod_number "${POSITIONAL[0]}" FROM
    check_pod_number "${POSITIONAL[1]}" TO
    FROM=$((10#${POSITIONAL[0]}))
    TO=$((10#${POSITIONAL[1]}))
    [ "$FROM" -le "$TO" ] || usage_error "FROM (${FROM}) is greater than TO (${TO})"
    ;;
esac

[ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)"
command -v ip >/dev/null || die "'ip' (iproute2) not found (scripts/bootstrap.sh installs it)"

case "$CMD" in
  up)
    if [ "$NODES" -eq 2 ]; then do_up_two "$PODS" "$RULES"; else do_up "$PODS" "$RULES"; fi
    ;;
  down) do_down ;;
  add-pods) do_add_pods "$FROM" "$TO" ;;
  del-pods) do_del_pods "$FROM" "$TO" ;;
esac
