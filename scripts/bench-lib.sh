# shellcheck shell=bash
# Shared helpers of the benchmarks (scripts/bench.sh, scripts/bench-compare.sh): which path
# carried a measurement, the attached program's size, sockperf parsing, waiting for servers.
# Sourced after scripts/lib.sh (say, die, is_uint), not run. The caller sets these globals:
#   NODE        the bench's node namespace
#   PIN         the xdp-ctl pin directory (absent = no fast path attached)
#   CTL_N       array: xdp-ctl with --netns "$NODE" --pin-dir "$PIN"
#   HV1 HV2     the two host veths (in NODE)
#   POD1 POD2   the two pod namespaces; POD2_V4 POD2_V6 pod2's addresses

# bench_wait_listen NETNS PORT WHAT PID: until something listens on TCP PORT in NETNS.
bench_wait_listen() {
  local ns=$1 port=$2 what=$3 pid=$4 i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || die "$what (pid $pid) exited at start-up"
    if [ -n "$(ip netns exec "$ns" ss -Hltn "sport = :$port")" ]; then return 0; fi
    sleep 0.05
  done
  die "$what did not listen on port $port in $ns within 5 s"
}

# The attached program's size as JSON: {xlated_insns, jited_bytes, verified_insns} (bpftool).
bench_prog_size() {
  local id
  id=$(bench_prog_id)
  bpftool -j prog show id "$id" \
    | jq -c '{program_id: .id, name: .name, xlated_insns: (.bytes_xlated / 8), jited_bytes: .bytes_jited,
              verified_insns: (.verified_insns // null)}'
}

# The attached fast path's maps as JSON, by name: {type, max_entries, key_bytes, value_bytes,
# bytes_memlock} from `bpftool map show` of every map pinned under PIN (PIN/v<layout>/maps/).
# On kernels since 6.5 memlock is the map's own estimate of the memory it holds; preallocated
# maps (hashes and LRU hashes such as the flow table's FLOWS and KERNEL_SOCKETS) hold all of
# it from creation.
bench_map_memory() {
  local m
  for m in "$PIN"/v*/maps/*; do
    [ -e "$m" ] || continue
    bpftool -j map show pinned "$m" | jq -c --arg n "${m##*/}" \
      '{($n): {type, max_entries, key_bytes: .bytes_key, value_bytes: .bytes_value, bytes_memlock}}'
  done | jq -sc 'add // {}'
}

# The id of the program attached to the bench's veths (xdp-ctl status).
bench_prog_id() {
  local id
  id=$("${CTL_N[@]}" --json status | jq -r '[.interfaces[].program_id // empty][0] // empty')
  is_uint "$id" || die "status shows no program id for the attached fast path"
  printf '%s\n' "$id"
}

# No program of ours may remain on a kernel-path scenario: no pins, no XDP on the veths.
bench_check_kernel_path() {
  [ ! -e "$PIN" ] || die "pin directory $PIN still exists in a kernel-path scenario"
  local links
  links=$(ip -n "$NODE" link show dev "$HV1"; ip -n "$NODE" link show dev "$HV2")
  if [[ $links == *prog/xdp* ]]; then
    die "an XDP program is still attached to ${HV1}/${HV2} in a kernel-path scenario"
  fi
}

bench_check_reachable() {
  ip netns exec "$POD1" ping -q -c 1 -W 2 "$POD2_V4" >/dev/null || die "pod1 cannot reach ${POD2_V4}"
  ip netns exec "$POD1" ping -q -c 1 -W 2 "$POD2_V6" >/dev/null || die "pod1 cannot reach ${POD2_V6}"
}

# bench_snmp NETNS SECTION FIELD: one counter of /proc/net/snmp in NETNS (e.g. Ip ForwDatagrams).
bench_snmp() {
  local v
  v=$(ip netns exec "$1" awk -v s="$2:" -v f="$3" '
    $1 == s { if (!n) { for (i = 2; i <= NF; i++) if ($i == f) c = i; n = 1 } else print $c }' /proc/net/snmp)
  is_uint "$v" || die "could not read $2 $3 from /proc/net/snmp in $1"
  printf '%s\n' "$v"
}

# Counter snapshot, tab-separated: redirected packets, redirected bytes, packets the program
# passed for any other reason (0 0 0 without pins), and the node's IPv4 ForwDatagrams (every
# packet the kernel path forwarded, through netfilter FORWARD).
bench_counters() {
  local fwd
  fwd=$(bench_snmp "$NODE" Ip ForwDatagrams)
  if [ ! -e "$PIN" ]; then
    printf '0\t0\t0\t%s\n' "$fwd"
    return 0
  fi
  "${CTL_N[@]}" --json stats | jq -r --argjson fwd "$fwd" '
    .reasons as $r
    | [$r.redirected.packets, $r.redirected.bytes,
       ([$r | to_entries[] | select(.key != "redirected") | .value.packets] | add), $fwd]
    | @tsv'
}

bench_fastpath_fail() { # shows the program's counters (the pins go in the cleanup), then dies
  printf 'counters of the fast path at the failure:\n' >&2
  "${CTL_N[@]}" stats >&2 || true
  die "$*"
}

# bench_check_path DATAPATH METRIC BEFORE AFTER NEED UNIT WHAT: which path carried a
# measurement, from two bench_counters snapshots. NEED is what the receiver saw, in UNIT
# (packets or bytes). Fast path: 'redirected' must grow and cover NEED (the counter counts
# whole frames in both directions). Kernel path ("kernel"): the node must have forwarded
# NEED packets (for bytes: something). Dies otherwise; prints the deltas as a JSON object.
bench_check_path() {
  local dp=$1 metric=$2 before=$3 after=$4 need=$5 unit=$6 what=$7
  local rp0 rb0 op0 fw0 rp1 rb1 op1 fw1 drp drb dop dfw got
  IFS=$'\t' read -r rp0 rb0 op0 fw0 <<<"$before"
  IFS=$'\t' read -r rp1 rb1 op1 fw1 <<<"$after"
  drp=$((rp1 - rp0)) drb=$((rb1 - rb0)) dop=$((op1 - op0)) dfw=$((fw1 - fw0))
  if [ "$dp" = kernel ]; then
    [ "$dfw" -gt 0 ] || die "kernel: the node forwarded nothing during the ${metric} measurement"
    [ "$unit" = bytes ] || [ "$dfw" -ge "$need" ] \
      || die "kernel: the node forwarded ${dfw} packets for ${need} ${what}: something else carried them"
    jq -nc --argjson f "$dfw" '{kernel_forwarded_packets: $f}'
    return 0
  fi
  [ "$drp" -gt 0 ] \
    || bench_fastpath_fail "${dp}: 'redirected' did not grow during the ${metric} measurement (passed to the kernel: ${dop} packets, node forwarded ${dfw}): it did not use the fast path"
  got=$drp
  [ "$unit" != bytes ] || got=$drb
  [ "$got" -ge "$need" ] \
    || bench_fastpath_fail "${dp}: redirected ${drp} packets / ${drb} bytes for ${need} ${what}, while the program passed ${dop} packets to the kernel and the node forwarded ${dfw}: part of the ${metric} traffic took the kernel path (reasons above)"
  jq -nc --argjson p "$drp" --argjson b "$drb" --argjson o "$dop" --argjson f "$dfw" \
    '{redirected_packets: $p, redirected_bytes: $b, passed_packets: $o, kernel_forwarded_packets: $f}'
}

# bench_sockperf_json: sockperf ping-pong output on stdin -> {p50_us, p99_us, avg_us, min_us,
# max_us, observations}; fails when the output has no percentiles.
bench_sockperf_json() {
  sed 's/\x1b\[[0-9;]*m//g' | awk '
    /percentile 50\.000 =/ { p50 = $NF }
    /percentile 99\.000 =/ { p99 = $NF }
    /<MIN> observation =/ { mn = $NF }
    /<MAX> observation =/ { mx = $NF }
    /Summary: Round trip is/ { avg = $(NF-1) }
    /Total [0-9]+ observations/ { for (i = 1; i < NF; i++) if ($i == "Total") obs = $(i+1) }
    END {
      if (p50 == "" || p99 == "" || obs == "") exit 1
      printf "{\"p50_us\":%s,\"p99_us\":%s,\"avg_us\":%s,\"min_us\":%s,\"max_us\":%s,\"observations\":%s}\n",
        p50, p99, (avg == "" ? "null" : avg), (mn == "" ? "null" : mn), (mx == "" ? "null" : mx), obs
    }'
}

# bench_kube_proxy_rules SERVICES: an iptables-restore input with the shapes kube-proxy
# (iptables mode) installs for SERVICES ClusterIP services of 2 endpoints each, v4:
#   filter: FORWARD -> KUBE-PROXY-FIREWALL (ctstate NEW), KUBE-FORWARD (INVALID drop, masq
#           mark accept, RELATED,ESTABLISHED accept), KUBE-SERVICES / KUBE-EXTERNAL-SERVICES
#           (ctstate NEW)
#   nat:    PREROUTING and OUTPUT -> KUBE-SERVICES: one rule per ClusterIP:port (10.96.0.0/16),
#           then the NodePort rule (addrtype LOCAL) last; KUBE-SVC-* with the masquerade rule
#           for traffic from outside the cluster CIDR and `-m statistic --mode random` between
#           KUBE-SEP-* chains, each with its hairpin masquerade rule and its DNAT (endpoints in
#           10.245.0.0/16: no bench pod); POSTROUTING -> KUBE-POSTROUTING (mark check, masquerade)
# Nothing in it matches traffic between bench pods except the conntrack rules: every packet
# between two pods meets conntrack, and each new connection walks all of KUBE-SERVICES.
# Names are short hashes like kube-proxy's (KUBE-SVC-<16 chars>).
bench_kube_proxy_rules() {
  awk -v n="$1" 'BEGIN {
    print "*filter"
    print ":KUBE-FORWARD - [0:0]"
    print ":KUBE-PROXY-FIREWALL - [0:0]"
    print ":KUBE-SERVICES - [0:0]"
    print ":KUBE-EXTERNAL-SERVICES - [0:0]"
    print ":KUBE-NODEPORTS - [0:0]"
    print "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL"
    print "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD"
    print "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    print "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES"
    print "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"
    print "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT"
    print "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    print "COMMIT"
    print "*nat"
    print ":KUBE-SERVICES - [0:0]"
    print ":KUBE-NODEPORTS - [0:0]"
    print ":KUBE-POSTROUTING - [0:0]"
    print ":KUBE-MARK-MASQ - [0:0]"
    for (i = 0; i < n; i++) {
      printf ":KUBE-SVC-%016X - [0:0]\n", i
      printf ":KUBE-SEP-%016X - [0:0]\n", 2 * i
      printf ":KUBE-SEP-%016X - [0:0]\n", 2 * i + 1
    }
    print "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    print "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    print "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
    print "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"
    print "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN"
    print "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0"
    print "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
    for (i = 0; i < n; i++) {
      vip = sprintf("10.96.%d.%d", int(i / 250), i % 250 + 1)
      port = 80 + (i % 7)
      svc = sprintf("KUBE-SVC-%016X", i)
      name = sprintf("ns%d/svc%d:http", i % 50, i)
      printf "-A KUBE-SERVICES -d %s/32 -p tcp -m comment --comment \"%s cluster IP\" -m tcp --dport %d -j %s\n", vip, name, port, svc
      printf "-A %s ! -s 10.244.0.0/16 -d %s/32 -p tcp -m comment --comment \"%s cluster IP\" -m tcp --dport %d -j KUBE-MARK-MASQ\n", svc, vip, name, port
      for (e = 0; e < 2; e++) {
        sep = sprintf("KUBE-SEP-%016X", 2 * i + e)
        ep = sprintf("10.245.%d.%d", int((2 * i + e) / 250), (2 * i + e) % 250 + 1)
        if (e == 0)
          printf "-A %s -m comment --comment \"%s -> %s:8080\" -m statistic --mode random --probability 0.50000000000 -j %s\n", svc, name, ep, sep
        else
          printf "-A %s -m comment --comment \"%s -> %s:8080\" -j %s\n", svc, name, ep, sep
        printf "-A %s -s %s/32 -m comment --comment \"%s\" -j KUBE-MARK-MASQ\n", sep, ep, name
        printf "-A %s -p tcp -m comment --comment \"%s\" -m tcp -j DNAT --to-destination %s:8080\n", sep, name, ep
      }
    }
    print "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    print "COMMIT"
  }'
}
