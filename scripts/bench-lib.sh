# shellcheck shell=bash
# Shared helpers of the benchmarks (scripts/bench.sh, scripts/bench-cross-node.sh,
# scripts/bench-compare.sh): which path carried a measurement, the attached program's size,
# the servers and the measurements (sockperf, connrate, iperf3) with their parsing, the
# kube-proxy rule set. Sourced after scripts/lib.sh (say, die, is_uint), not run. The caller
# sets these globals (each function uses only some of them):
#   NODE        the bench's node namespace (a two-node caller points it at one node at a time)
#   PIN         the xdp-ctl pin directory (absent = no fast path attached)
#   CTL_N       array: xdp-ctl with --netns "$NODE" --pin-dir "$PIN"
#   HV1 HV2     the two host veths (in NODE)
#   POD1 POD2   the two pod namespaces; POD2_V4 POD2_V6 pod2's addresses
# and for the servers and measurements:
#   WORK        a scratch directory (server logs); PIDS: array the servers' PIDs go to
#   CLIENT_CPU SERVER_CPU  pinned clients and the sockperf server / the iperf3 server
#   PORT_IPERF PORT_RR_PINNED PORT_RR_FREE PORT_CONN UDP_PORT
#   DURATION    seconds per measurement; RR_MSG_SIZE: ping-pong message bytes
#   CONNRATE    tests/src/bin/connrate.rs's binary

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

# bench_check_kernel_path [IFACE...]: no program of ours may remain on a kernel-path
# scenario: no pins, no XDP on the interfaces of NODE (default: HV1 and HV2).
bench_check_kernel_path() {
  [ ! -e "$PIN" ] || die "pin directory $PIN still exists in a kernel-path scenario"
  local links dev
  [ $# -gt 0 ] || set -- "$HV1" "$HV2"
  links=$(for dev in "$@"; do ip -n "$NODE" link show dev "$dev"; done)
  if [[ $links == *prog/xdp* ]]; then
    die "an XDP program is still attached to one of $* in ${NODE} in a kernel-path scenario"
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

# bench_check_path DATAPATH METRIC BEFORE AFTER NEED UNIT WHAT [WHERE]: which path carried a
# measurement, from two bench_counters snapshots. NEED is what the receiver saw, in UNIT
# (packets or bytes). Fast path: 'redirected' must grow and cover NEED (the counter counts
# whole frames in both directions). Kernel path ("kernel"): the node must have forwarded
# NEED packets (for bytes: something). Dies otherwise; prints the deltas as a JSON object.
# WHERE (e.g. "node 1") names the node in the messages of a two-node bench.
bench_check_path() {
  local dp=$1 metric=$2 before=$3 after=$4 need=$5 unit=$6 what=$7
  local rp0 rb0 op0 fw0 rp1 rb1 op1 fw1 drp drb dop dfw got
  local at=${8:+ on $8}
  IFS=$'\t' read -r rp0 rb0 op0 fw0 <<<"$before"
  IFS=$'\t' read -r rp1 rb1 op1 fw1 <<<"$after"
  drp=$((rp1 - rp0)) drb=$((rb1 - rb0)) dop=$((op1 - op0)) dfw=$((fw1 - fw0))
  if [ "$dp" = kernel ]; then
    [ "$dfw" -gt 0 ] || die "kernel${at}: the node forwarded nothing during the ${metric} measurement"
    [ "$unit" = bytes ] || [ "$dfw" -ge "$need" ] \
      || die "kernel${at}: the node forwarded ${dfw} packets for ${need} ${what}: something else carried them"
    jq -nc --argjson f "$dfw" '{kernel_forwarded_packets: $f}'
    return 0
  fi
  [ "$drp" -gt 0 ] \
    || bench_fastpath_fail "${dp}${at}: 'redirected' did not grow during the ${metric} measurement (passed to the kernel: ${dop} packets, node forwarded ${dfw}): it did not use the fast path"
  got=$drp
  [ "$unit" != bytes ] || got=$drb
  [ "$got" -ge "$need" ] \
    || bench_fastpath_fail "${dp}${at}: redirected ${drp} packets / ${drb} bytes for ${need} ${what}, while the program passed ${dop} packets to the kernel and the node forwarded ${dfw}: part of the ${metric} traffic took the kernel path (reasons above)"
  jq -nc --argjson p "$drp" --argjson b "$drb" --argjson o "$dop" --argjson f "$dfw" \
    '{redirected_packets: $p, redirected_bytes: $b, passed_packets: $o, kernel_forwarded_packets: $f}'
}

# bench_need METRIC RESULT: what the receiver saw in a measurement's RESULT (JSON), for
# bench_check_path, tab-separated: NEED UNIT WHAT.
bench_need() {
  case "$1" in
    rr_*) printf '%s\tpackets\tping-pong round trips\n' "$(jq -r .observations <<<"$2")" ;;
    # SYN, SYN-ACK, request, response, FIN each way: at least 4 forwarded packets each.
    conn) printf '%s\tpackets\tpackets of the connections (4 each)\n' "$(($(jq -r .connections <<<"$2") * 4))" ;;
    tcp) printf '%s\tbytes\tTCP bytes received\n' "$(jq -r .bytes_received <<<"$2")" ;;
    udp64 | cpu) printf '%s\tpackets\tUDP datagrams received\n' "$(jq -r .rx_packets <<<"$2")" ;;
    *) die "bench_need: unknown metric '$1'" ;;
  esac
}

# --- servers and measurements ---------------------------------------------------------------

# bench_start_servers NETNS ADDR [SERVER...]: the servers of the measurements, listening on
# ADDR in NETNS; their PIDs go to PIDS. SERVER: iperf3 (CPU SERVER_CPU), rr_pinned (sockperf
# on CPU CLIENT_CPU), rr_unpinned (sockperf), conn (connrate, 2 threads), udp_sink; default all.
bench_start_servers() {
  local ns=$1 addr=$2 srv i
  shift 2
  [ $# -gt 0 ] || set -- iperf3 rr_pinned rr_unpinned conn udp_sink
  for srv in "$@"; do
    # ip netns exec and taskset exec their argument, so $! is the server's own PID.
    case "$srv" in
      iperf3)
        ip netns exec "$ns" taskset -c "$SERVER_CPU" iperf3 -s -B "$addr" -p "$PORT_IPERF" >"$WORK/iperf3-$ns.log" 2>&1 &
        PIDS+=($!)
        bench_wait_listen "$ns" "$PORT_IPERF" "iperf3 server" "$!"
        ;;
      rr_pinned)
        ip netns exec "$ns" taskset -c "$CLIENT_CPU" sockperf sr --tcp -i "$addr" -p "$PORT_RR_PINNED" >"$WORK/sp1-$ns.log" 2>&1 &
        PIDS+=($!)
        bench_wait_listen "$ns" "$PORT_RR_PINNED" "sockperf server (pinned)" "$!"
        ;;
      rr_unpinned)
        ip netns exec "$ns" sockperf sr --tcp -i "$addr" -p "$PORT_RR_FREE" >"$WORK/sp2-$ns.log" 2>&1 &
        PIDS+=($!)
        bench_wait_listen "$ns" "$PORT_RR_FREE" "sockperf server (unpinned)" "$!"
        ;;
      conn)
        ip netns exec "$ns" "$CONNRATE" server "$addr:$PORT_CONN" 2 >"$WORK/conn-$ns.log" 2>&1 &
        PIDS+=($!)
        bench_wait_listen "$ns" "$PORT_CONN" "connrate server" "$!"
        ;;
      udp_sink)
        # Bound, a small receive buffer, never read. A datagram costs the receiver a socket
        # lookup and a drop (no port-unreachable, whose route lookup would cost more than the
        # forwarding being measured).
        ip netns exec "$ns" python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    time.sleep(3600)' "$addr" "$UDP_PORT" >"$WORK/sink-$ns.log" 2>&1 &
        PIDS+=($!)
        for ((i = 0; i < 100; i++)); do
          [ -z "$(ip netns exec "$ns" ss -Hlun "sport = :$UDP_PORT")" ] || continue 2
          sleep 0.05
        done
        die "the UDP sink did not bind port ${UDP_PORT} in ${ns}"
        ;;
      *) die "bench_start_servers: unknown server '$srv'" ;;
    esac
  done
}

bench_stop_servers() { # the servers in PIDS
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}

# Client-side sysctls for the connection rate: many ephemeral ports (TIME_WAIT sits on the
# server, which closes first).
bench_client_sysctls() {
  ip netns exec "$1" sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
  ip netns exec "$1" sysctl -qw net.ipv4.tcp_tw_reuse=1
}

# bench_load_kube_proxy NETNS SERVICES: bench_kube_proxy_rules SERVICES into NETNS's iptables
# (iptables-restore --noflush: all of a table or nothing), then kube-proxy's conntrack default
# there. Checked: nat KUBE-SERVICES holds one rule per service and the NodePort rule (listing
# that chain takes milliseconds, iptables-save of every rule seconds).
bench_load_kube_proxy() {
  local ns=$1 n=$2 file svc
  # One file per namespace: two nodes may load theirs at the same time.
  file=$WORK/kube-proxy-$ns.rules
  bench_kube_proxy_rules "$n" >"$file"
  ip netns exec "$ns" iptables-restore --noflush <"$file"
  svc=$(ip netns exec "$ns" iptables -t nat -S KUBE-SERVICES | grep -c '^-A')
  [ "$svc" -eq $((n + 1)) ] \
    || die "kube-proxy rule set in ${ns}: nat KUBE-SERVICES holds ${svc} rules, expected $((n + 1))"
  # kube-proxy's defaults (per namespace once conntrack is loaded by the rules above).
  ip netns exec "$ns" sysctl -qw net.netfilter.nf_conntrack_tcp_be_liberal=0
  say "kube-proxy rule set: ${n} services, $(grep -c '^-A' "$file") rules loaded into ${ns}"
}

# Each measurement prints one JSON object; $1 = namespace of the client, $2 = server address.

bench_rr() { # bench_rr NS ADDR PORT PINNED: sockperf TCP ping-pong, full round trip
  local out pin=()
  [ "$4" -eq 0 ] || pin=(taskset -c "$CLIENT_CPU")
  out=$(ip netns exec "$1" "${pin[@]}" sockperf pp --tcp -i "$2" -p "$3" -t "$DURATION" -m "$RR_MSG_SIZE" --full-rtt 2>&1) \
    || { printf '%s\n' "$out" >&2; die "sockperf ping-pong failed"; }
  bench_sockperf_json <<<"$out" || { printf '%s\n' "$out" >&2; die "could not parse sockperf output"; }
}

bench_conn() { # bench_conn NS ADDR: new TCP connections/s (connrate, 2 client threads)
  ip netns exec "$1" "$CONNRATE" client "$2:$PORT_CONN" "$DURATION" 2 || die "connrate client failed"
}

bench_tcp() { # bench_tcp NS ADDR: iperf3 single stream, client on CLIENT_CPU
  local out err
  out=$(ip netns exec "$1" taskset -c "$CLIENT_CPU" iperf3 -c "$2" -p "$PORT_IPERF" -t "$DURATION" -J) || {
    err=$(jq -r '.error // empty' <<<"$out" 2>/dev/null || true)
    die "iperf3 TCP failed: ${err:-see above}"
  }
  jq -c '{gbps: (.end.sum_received.bits_per_second / 1e9), bytes_received: .end.sum_received.bytes,
          retransmits: (.end.sum_sent.retransmits // null)}' <<<"$out"
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
