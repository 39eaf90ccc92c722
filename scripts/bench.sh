#!/usr/bin/env bash
# The benchmark (not a test): pod1 -> pod2 on the netns bench, kernel path vs the tc and xdp
# fast paths, under three node rule sets (none, kube-proxy for N services, K FORWARD rules),
# plus the loopback floor, the packet generator's own ceiling and the XDP program's ceiling
# (BPF_PROG_TEST_RUN live frames, into a pod and into an XDP_DROP), then the programs' own cost
# per packet with the flow table (scripts/bench-prog.sh), the controller's figures
# (scripts/bench-controller.sh) and pod to pod across two nodes (scripts/bench-cross-node.sh),
# all in one run. Writes bench/results/<date>/ (results.md,
# results.json, chart.svg). Runs as root; leaves nothing behind, even when it fails.
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROG=$(basename "$0")

CLIENT_CPU=0      # pinned clients (and trafgen, xdp-live)
SERVER_CPU=1      # iperf3 server
PORT_IPERF=5201
PORT_RR_PINNED=11111   # sockperf server on the client's CPU
PORT_RR_FREE=11112     # sockperf server, not pinned
PORT_CONN=8080         # connrate server, not pinned
UDP_PORT=9             # a socket that never reads: datagrams end in its full queue (RcvbufErrors)
RR_MSG_SIZE=64
UDP_PAYLOAD=64
POD1_V4=10.244.0.1 POD2_V4=10.244.0.2 POD1_V6=fd00::1 POD2_V6=fd00::2
POD1_MAC=02:00:00:00:00:01 HV1_MAC=02:00:00:01:00:01
ALL_DATAPATHS=(kernel tc xdp)
ALL_RULESETS=(none kubeproxy fwrules)

usage() {
  cat <<EOF
Usage: ${PROG} [--quick] [--trials T] [--duration D] [--services N] [--rules K]
               [--rate PPS] [--only LIST] [--rulesets LIST] [--out DIR] [--no-build] [--ctl BIN]
               [--controller-pods N] [--controller-burst B] [--controller-datapath D]
               [--no-controller] [--no-prog-cost] [--no-cross-node]

Benchmarks pod1 -> pod2 (IPv4) on the netns bench (scripts/bench-netns.sh) in one run:
  rule sets (the node namespace's netfilter, one bench each):
    none        no rules (conntrack not loaded)
    kubeproxy   kube-proxy's iptables shapes for N ClusterIP services (bench-lib.sh,
                bench_kube_proxy_rules): KUBE-FORWARD (INVALID drop, ESTABLISHED accept),
                nat KUBE-SERVICES (one rule per ClusterIP:port), KUBE-SVC-* (-m statistic),
                KUBE-SEP-* (DNAT), KUBE-POSTROUTING; about 11 rules per service
    fwrules     K never-matching FORWARD rules (a policy-heavy node), v4 and v6
  datapaths in each: kernel (no program), tc (TCX + bpf_redirect_peer), xdp (native, devmap)
  floor: client and server in one namespace over lo (in the 'none' bench)
Trials are interleaved (trial 1 of every scenario, then trial 2, ...).

Metrics (median of T trials, with min and max; every figure also as a ratio to the kernel
path of the same rule set; the floor against kernel/none):
  rr_pinned     sockperf TCP ping-pong, ${RR_MSG_SIZE}-byte messages, --full-rtt, p50 and p99 (us),
                client and server pinned to CPU ${CLIENT_CPU}
  rr_unpinned   the same, neither pinned (cross-CPU wake-ups included)
  conn          new TCP connections/s: connect, one ${RR_MSG_SIZE}-byte request, response, close
                (tests/src/bin/connrate.rs, 2 client threads, 2 server threads, not pinned)
  tcp           iperf3 single stream, Gbit/s, client CPU ${CLIENT_CPU}, server CPU ${SERVER_CPU}
  udp64         ${UDP_PAYLOAD}-byte-payload UDP at full speed from trafgen (AF_PACKET, CPU ${CLIENT_CPU}) in pod1;
                received/s = datagrams that reached pod2's sink socket (Udp InDatagrams +
                RcvbufErrors: it never reads); sent/s = pod1's eth0 tx_packets + tx_dropped
  cpu           CPU time per million packets received, trafgen at a fixed PPS (default
                20000): trafgen's own user + system time, which on a veth includes the whole
                path in softirq (tick accounting, no IRQ time accounting), so other work on the
                machine does not count; ms per Mpkt. The generator's own cost at that rate
                (into a veth whose peer drops) is measured too and shown beside it
  generator     trafgen's own ceiling: the same frames into a veth whose peer is down (dropped
                at once, no receiver)
  xdp_live      the XDP program's ceiling on CPU ${CLIENT_CPU}: BPF_PROG_TEST_RUN with live frames into
                hv1, redirected into pod2's veth (tests/src/bin/xdp-live.rs); wall-clock,
                kernel-timed, and the program's own run time (BPF_ENABLE_STATS). Into two
                targets: end to end (pod2's veth builds an skb per frame, pod2's stack takes
                it), and redirect-and-drop (an XDP_DROP program on pod2's eth0 for that run
                drops every frame in the veth's NAPI poll, before any skb: program + devmap
                redirect + veth hand-over, without the receiver). Each twice: without
                run-time statistics (the ceiling; their clock reads around every program
                run cost a visible share on a VM) and with them (the program's own ns)
Sections after the scenarios (each from its own script, on its own namespaces):
  prog cost     the programs' own time per packet with the flow table, xdp and tc, under a
                TCP ping-pong (scripts/bench-prog.sh: kernel.bpf_stats_enabled, T trials x D s);
                with the memory of the maps (bpftool map show memlock, after an attach; FLOWS
                and KERNEL_SOCKETS are the flow table) from the scenarios
  controller    'xdp-ctl run' (scripts/bench-controller.sh): process start -> ready on a node
                with N pods (cold, and a restart), a burst of B pods and one of B/4 (converged
                after the last netlink event), the controller's VmRSS/VmHWM
  cross-node    pod 1 on node 1 -> pod 1 on node 2 on the two-node bench (scripts/bench-cross-node.sh:
                a veth wire, native routing): kernel vs tc and xdp attached on both nodes (pod
                veth + uplink), rule sets none and kubeproxy (N services in both nodes; fwrules
                is not run there); rr_pinned, conn, tcp as above, T trials x D s, each path-checked
                on both nodes; --only applies to it too
Every measurement checks which path carried it, or the run fails (bench-lib.sh): on the fast
path 'redirected' must cover what the receiver saw; on the kernel path the node's IPv4
ForwDatagrams.

Options:
  --quick         T=1, D=1, no unpinned RR, controller on 100 pods with a burst of 50, each
                  cross-node scenario once (under 3 minutes); explicit --trials / --duration /
                  --controller-* win
  --trials T      trials (default 3)
  --duration D    seconds per measurement (default 5)
  --services N    services in the kube-proxy rule set (default 5000)
  --rules K       FORWARD rules in the fwrules set (default 2000)
  --rate PPS      fixed packet rate of the cpu metric (default 20000)
  --only LIST     datapaths, comma-separated subset of kernel,tc,xdp (default all)
  --rulesets LIST rule sets, subset of none,kubeproxy,fwrules (default all)
  --out DIR       results directory (default bench/results/<UTC date>[-quick]); must not exist
  --no-build      use the existing release binaries
  --ctl BIN       the xdp-ctl to measure (implies --no-build for xdp-ctl)
  --controller-pods N
                  pods on the controller's node (default 1000; --quick: 100)
  --controller-burst B
                  pods in the controller's burst (default 200; --quick: 50)
  --controller-datapath D
                  tc, xdp or both (default both)
  --no-controller leave the controller section out
  --no-prog-cost  leave the programs' per-packet cost (bench-prog.sh) out
  --no-cross-node leave the cross-node section (bench-cross-node.sh) out
  -h, --help      this text

Example: sudo ${PROG} --quick
EOF
}

TAG=bench
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

# --- arguments ------------------------------------------------------------------------------

TRIALS="" DURATION="" SERVICES=5000 RULES=2000 RATE=20000 QUICK=0 BUILD=1 OUT="" CTL_ARG=""
ONLY="kernel,tc,xdp" RULESETS_ARG="none,kubeproxy,fwrules"
CTRL_PODS="" CTRL_BURST="" CTRL_DP=both CONTROLLER=1 PROG_COST=1 CROSS_NODE=1
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --quick) QUICK=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --trials | --trials=*) opt_arg "$@"; TRIALS=$OPTVAL; shift "$OPTSHIFT" ;;
    --duration | --duration=*) opt_arg "$@"; DURATION=$OPTVAL; shift "$OPTSHIFT" ;;
    --services | --services=*) opt_arg "$@"; SERVICES=$OPTVAL; shift "$OPTSHIFT" ;;
    --rules | --rules=*) opt_arg "$@"; RULES=$OPTVAL; shift "$OPTSHIFT" ;;
    --rate | --rate=*) opt_arg "$@"; RATE=$OPTVAL; shift "$OPTSHIFT" ;;
    --only | --only=*) opt_arg "$@"; ONLY=$OPTVAL; shift "$OPTSHIFT" ;;
    --rulesets | --rulesets=*) opt_arg "$@"; RULESETS_ARG=$OPTVAL; shift "$OPTSHIFT" ;;
    --out | --out=*) opt_arg "$@"; OUT=$OPTVAL; shift "$OPTSHIFT" ;;
    --ctl | --ctl=*) opt_arg "$@"; CTL_ARG=$OPTVAL; shift "$OPTSHIFT" ;;
    --controller-pods | --controller-pods=*) opt_arg "$@"; CTRL_PODS=$OPTVAL; shift "$OPTSHIFT" ;;
    --controller-burst | --controller-burst=*) opt_arg "$@"; CTRL_BURST=$OPTVAL; shift "$OPTSHIFT" ;;
    --controller-datapath | --controller-datapath=*) opt_arg "$@"; CTRL_DP=$OPTVAL; shift "$OPTSHIFT" ;;
    --no-controller) CONTROLLER=0; shift ;;
    --no-prog-cost) PROG_COST=0; shift ;;
    --no-cross-node) CROSS_NODE=0; shift ;;
    *) usage_error "unknown argument '$1'" ;;
  esac
done
# sockperf adds about 2.4 s to every run (warm-up, a fixed 2 s pause): --quick leaves the
# unpinned RR out to stay under 3 minutes on a busy 2-vCPU machine.
RR_METRICS=(rr_pinned rr_unpinned)
if [ "$QUICK" -eq 1 ]; then
  TRIALS=${TRIALS:-1} DURATION=${DURATION:-1} RR_METRICS=(rr_pinned)
  CTRL_PODS=${CTRL_PODS:-100} CTRL_BURST=${CTRL_BURST:-50}
fi
TRIALS=${TRIALS:-3} DURATION=${DURATION:-5} CTRL_PODS=${CTRL_PODS:-1000} CTRL_BURST=${CTRL_BURST:-200}
case "$CTRL_DP" in
  tc | xdp | both) ;;
  *) usage_error "--controller-datapath must be tc, xdp or both (got '$CTRL_DP')" ;;
esac
for v in TRIALS DURATION SERVICES RULES RATE CTRL_PODS CTRL_BURST; do
  val=${!v} opt=${v,,}
  case "$v" in CTRL_*) opt=controller-${opt#ctrl_} ;; esac
  { is_uint "$val" && [ "${#val}" -le 7 ]; } || usage_error "--${opt} must be a whole number up to 7 digits (got '${val}')"
  printf -v "$v" '%d' "$((10#$val))"
done
{ [ "$TRIALS" -ge 1 ] && [ "$DURATION" -ge 1 ] && [ "$RATE" -ge 1000 ]; } \
  || usage_error "--trials and --duration must be >= 1, --rate >= 1000"
# bench-controller.sh names interfaces xcb<pid>h<i>, at most 15 characters: with a PID of up
# to 7 digits, pods + burst + burst/4 must stay within 4 digits. Checked here, not only when
# that section starts at the end of the run.
{ [ "$CTRL_PODS" -ge 1 ] && [ "$CTRL_BURST" -ge 1 ] && [ $((CTRL_PODS + CTRL_BURST + CTRL_BURST / 4)) -le 9999 ]; } \
  || usage_error "--controller-pods and --controller-burst must be >= 1, pods + burst + burst/4 <= 9999"

pick() { # pick LIST ALLOWED...: the allowed names in canonical order
  local list=$1 a o out=()
  shift
  IFS=, read -r -a sel <<<"$list"
  for o in "${sel[@]}"; do [[ " $* " == *" $o "* ]] || usage_error "unknown name '$o' (expected: $*)"; done
  for a in "$@"; do [[ ",$list," == *",$a,"* ]] && out+=("$a"); done
  printf '%s\n' "${out[@]}"
}
mapfile -t DATAPATHS < <(pick "$ONLY" "${ALL_DATAPATHS[@]}")
mapfile -t RULESETS < <(pick "$RULESETS_ARG" "${ALL_RULESETS[@]}")
{ [ "${#DATAPATHS[@]}" -gt 0 ] && [ "${#RULESETS[@]}" -gt 0 ]; } || usage_error "nothing to measure"

# --- preconditions --------------------------------------------------------------------------

[ "$(id -u)" -eq 0 ] || die "run as root (namespaces, XDP/TC programs, bpffs)"
export PATH="$HOME/.cargo/bin:$PATH"
need_tools ip iptables-restore iperf3 sockperf trafgen taskset jq awk ss python3 timeout bpftool setsid ethtool /usr/bin/time
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs or more (client and server on different CPUs)"
HZ=$(getconf CLK_TCK)

NAME=xb$$
NODE=$NAME-node POD1=$NAME-pod1 POD2=$NAME-pod2 HV1=${NAME}h1 HV2=${NAME}h2
LO_NS=$NAME-lo GEN_NS=$NAME-gen
PIN=/sys/fs/bpf/xfp-bench-$$
CTL=$ROOT/target/release/xdp-ctl
if [ -n "$CTL_ARG" ]; then
  [ -x "$CTL_ARG" ] || usage_error "--ctl: '$CTL_ARG' is not an executable"
  CTL=$(realpath -- "$CTL_ARG")
fi
CONNRATE=$ROOT/target/release/connrate
XDP_LIVE=$ROOT/target/release/xdp-live
CTL_N=("$CTL" --netns "$NODE" --pin-dir "$PIN")
DATE=$(date -u +%Y-%m-%d)
[ -n "$OUT" ] || OUT=$ROOT/bench/results/$DATE$([ "$QUICK" -eq 0 ] || echo -quick)
[ ! -e "$OUT" ] || die "results directory $OUT exists already (use --out)"

# --- state and cleanup ----------------------------------------------------------------------

PIDS=()        # servers we started
BENCH_UP=0
EXTRA_NS=()    # loopback and generator namespaces
WORK=""
SECTION_PID="" # a section script we started (bench-prog.sh, bench-controller.sh, bench-cross-node.sh)
FAILED_SECTIONS=()
declare -A SECTION_S=()

cleanup() {
  local rc=$? ns
  trap - EXIT INT TERM
  set +e
  # A section script cleans up after itself when it is told to stop.
  if [ -n "$SECTION_PID" ]; then
    kill -TERM "$SECTION_PID" 2>/dev/null
    wait "$SECTION_PID" 2>/dev/null
  fi
  bench_stop_servers
  if [ -e "$PIN" ]; then
    "${CTL_N[@]}" detach --all >/dev/null 2>&1 || warn "detach --all failed during cleanup"
    [ ! -e "$PIN" ] || rm -rf -- "$PIN"
  fi
  if [ "$BENCH_UP" -eq 1 ]; then
    "$ROOT/scripts/bench-netns.sh" down --name "$NAME" >/dev/null 2>&1 || warn "bench-netns.sh down --name $NAME failed"
  fi
  for ns in "${EXTRA_NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
  [ -z "$WORK" ] || rm -rf -- "$WORK"
  [ "$rc" -eq 0 ] || printf '[bench] FAILED (status %d); everything it created has been removed\n' "$rc" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
WORK=$(mktemp -d /tmp/bench.XXXXXX)
TRIALS_JSONL=$WORK/trials.jsonl
: >"$TRIALS_JSONL"

# --- build ----------------------------------------------------------------------------------

if [ "$BUILD" -eq 1 ]; then
  step "build: cargo build --release -p xdp-ctl -p integration-tests --bins"
  (cd "$ROOT" && cargo build --release -p xdp-ctl -p integration-tests --bins)
fi
for b in "$CTL" "$CONNRATE" "$XDP_LIVE"; do
  [ -x "$b" ] || die "$b not found (cargo build --release -p xdp-ctl -p integration-tests --bins)"
done
[ ! -e "$PIN" ] || die "pin directory $PIN already exists (not ours to remove)"

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
say "scenarios: rule sets ${RULESETS[*]} x datapaths ${DATAPATHS[*]} (+ loopback floor); ${TRIALS} trial(s) x ${DURATION}s"
say "machine load before: ${LOAD_START} (1/5/15 min)"

# --- servers ------------------------------------------------------------------------------

udp_received() { # udp_received NS: datagrams that reached a UDP socket in NS (queued or dropped)
  printf '%s\n' "$(($(bench_snmp "$1" Udp InDatagrams) + $(bench_snmp "$1" Udp RcvbufErrors)))"
}

bench_up() { # bench_up RULESET
  local rs=$1 rules=0
  [ "$rs" != fwrules ] || rules=$RULES
  step "bench up: rule set ${rs}"
  BENCH_UP=1
  "$ROOT/scripts/bench-netns.sh" up 2 --name "$NAME" --forward-rules "$rules" >/dev/null
  if [ "$rs" = kubeproxy ]; then bench_load_kube_proxy "$NODE" "$SERVICES"; fi
  bench_client_sysctls "$POD1"
  bench_start_servers "$POD2" "$POD2_V4"
}

bench_down() {
  bench_stop_servers
  "$ROOT/scripts/bench-netns.sh" down --name "$NAME" >/dev/null
  BENCH_UP=0
}

attach_fastpath() { # attach_fastpath tc|xdp
  local args=(--datapath "$1")
  [ "$1" != xdp ] || args+=(--mode native)
  "${CTL_N[@]}" attach "${args[@]}" "$HV1" "$HV2" >/dev/null
  "${CTL_N[@]}" endpoint add "$POD1_V4" --iface "$HV1" >/dev/null
  "${CTL_N[@]}" endpoint add "$POD2_V4" --iface "$HV2" >/dev/null
  "${CTL_N[@]}" endpoint add "$POD1_V6" --iface "$HV1" >/dev/null
  "${CTL_N[@]}" endpoint add "$POD2_V6" --iface "$HV2" >/dev/null
}

detach_fastpath() {
  [ -e "$PIN" ] || return 0
  "${CTL_N[@]}" detach --all >/dev/null
  [ ! -e "$PIN" ] || die "detach --all left the pin directory $PIN behind"
}

# --- measurements (rr, conn, tcp: bench-lib.sh; each prints one JSON object) ---------------

trafgen_conf() { # the UDP frame pod1 -> pod2:UDP_PORT, as trafgen's config
  cat <<EOF
{
  eth(da=${HV1_MAC}, sa=${POD1_MAC}, type=0x0800),
  ipv4(sa=${POD1_V4}, da=${POD2_V4}, ttl=64),
  udp(sp=4000, dp=${UDP_PORT}),
  fill(0xa5, ${UDP_PAYLOAD}),
}
EOF
}

tx_offered() { # tx_offered NS DEV: frames the device took or dropped on transmit
  ip netns exec "$1" awk '{ n += $1 } END { print n }' \
    "/sys/class/net/$2/statistics/tx_packets" "/sys/class/net/$2/statistics/tx_dropped"
}

# run_trafgen NS DEV [RATE]: trafgen on CPU_CLIENT, AF_PACKET TX ring, no qdisc, one process;
# prints "FRAMES CPU_SECONDS": the frames the device was offered (trafgen's own count covers
# only its first ring fill) and trafgen's CPU time (user + system, its child included, from
# /usr/bin/time). The kernel here accounts CPU time by ticks without IRQ time accounting, so a
# tick that lands in softirq work done in trafgen's context (on a veth: the whole path, up to
# the pod's socket) counts as trafgen's system time; other work on the machine does not.
# Full speed for DURATION seconds (stopped by SIGINT), or RATE*DURATION frames at RATE pps
# (trafgen ignores SIGINT in rate mode and stops on its own; its rate mode also needs a device
# whose peer is up). setsid: trafgen signals its process group when it stops.
# --no-sock-mem: leave the host's socket memory sysctls alone.
run_trafgen() {
  local ns=$1 dev=$2 rate=${3:-} t0 t1 args=() limit=$DURATION rc=0 cpu
  if [ -n "$rate" ]; then
    args+=(--rate "${rate}pps" -n "$((rate * DURATION))")
    limit=$((DURATION * 3 + 5))
  fi
  t0=$(tx_offered "$ns" "$dev")
  ip netns exec "$ns" setsid -w timeout -s INT -k 2 "$limit" taskset -c "$CLIENT_CPU" \
    /usr/bin/time -f '%U %S' -o "$WORK/trafgen.time" \
    trafgen --dev "$dev" --conf "$WORK/udp.cfg" --cpus 1 --no-sock-mem "${args[@]}" >"$WORK/trafgen.log" 2>&1 \
    || rc=$?
  t1=$(tx_offered "$ns" "$dev")
  # 124: stopped by the timeout (the full-speed run's normal end); 137: had to be killed.
  # Either way the device counters say what was sent.
  case "$rc" in
    0 | 124) ;;
    137) warn "trafgen on $dev in $ns had to be killed (rate ${rate:-full}); counted what it sent" ;;
    *) cat "$WORK/trafgen.log" >&2; die "trafgen failed on $dev in $ns (status $rc)" ;;
  esac
  cpu=$(awk 'NF == 2 && $1 ~ /^[0-9.]+$/ { print $1 + $2; f = 1 } END { if (!f) print "null" }' "$WORK/trafgen.time" 2>/dev/null || echo null)
  printf '%s %s\n' "$((t1 - t0))" "$cpu"
}

# system + irq + softirq time of CPU_CLIENT, in USER_HZ ticks. On a veth everything a frame
# costs (the generator's send, the node's forwarding, the pod's receive) runs in softirq on the
# sending CPU, so that CPU carries the whole path; the other CPU's share would be noise from
# other work on the machine.
cpu_ticks() {
  awk -v c="cpu$CLIENT_CPU" '$1 == c { print $4 + $7 + $8 }' /proc/stat
}

m_udp() { # m_udp [RATE]: pod1 -> pod2 UDP; rx = what reached pod2's sink socket
  local rate=${1:-} r0 r1 tx cpu c0 c1 s0 s1 secs
  r0=$(udp_received "$POD2")
  c0=$(cpu_ticks) s0=$(date +%s.%N)
  read -r tx cpu <<<"$(run_trafgen "$POD1" eth0 "$rate")"
  c1=$(cpu_ticks) s1=$(date +%s.%N)
  sleep 0.2 # the last frames in flight
  r1=$(udp_received "$POD2")
  secs=$(awk -v a="$s0" -v b="$s1" 'BEGIN { print b - a }')
  jq -nc --argjson tx "$tx" --argjson rx "$((r1 - r0))" --argjson s "$secs" --argjson ticks "$((c1 - c0))" \
    --argjson hz "$HZ" --arg rate "$rate" --argjson cpu "$cpu" '
    {tx_packets: $tx, rx_packets: $rx, seconds: $s, tx_pps: ($tx / $s), rx_pps: ($rx / $s),
     lost_percent: (if $tx > 0 then ($tx - $rx) / $tx * 100 else null end)}
    + (if $rate == "" then {} else
       {rate_pps: ($rate | tonumber), generator_cpu_s: $cpu, cpu0_ticks: $ticks,
        ms_per_mpkt: (if $rx > 0 and $cpu != null then $cpu * 1000 / ($rx / 1e6) else null end),
        cpu0_ms_per_mpkt: (if $rx > 0 then $ticks / $hz * 1000 / ($rx / 1e6) else null end)} end)'
}

# measure METRIC DATAPATH: one metric between pod1 and pod2, path-checked (bench-lib.sh).
measure() {
  local metric=$1 dp=$2 before after res need unit what
  before=$(bench_counters)
  case "$metric" in
    rr_pinned) res=$(bench_rr "$POD1" "$POD2_V4" "$PORT_RR_PINNED" 1) ;;
    rr_unpinned) res=$(bench_rr "$POD1" "$POD2_V4" "$PORT_RR_FREE" 0) ;;
    conn) res=$(bench_conn "$POD1" "$POD2_V4") ;;
    tcp) res=$(bench_tcp "$POD1" "$POD2_V4") ;;
    udp64) res=$(m_udp) ;;
    cpu) res=$(m_udp "$RATE") ;;
  esac
  after=$(bench_counters)
  IFS=$'\t' read -r need unit what <<<"$(bench_need "$metric" "$res")"
  jq -c --argjson d "$(bench_check_path "$dp" "$metric" "$before" "$after" "$need" "$unit" "$what")" '. + $d' <<<"$res"
}

record() { # record JSON: one trial record
  printf '%s\n' "$1" >>"$TRIALS_JSONL"
}

run_trial() { # run_trial DATAPATH RULESET TRIAL
  local dp=$1 rs=$2 trial=$3 prog=null maps=null m r rec
  say "${dp}@${rs} trial ${trial}/${TRIALS} ($((SECONDS - T0)) s elapsed)"
  if [ "$dp" = kernel ]; then
    bench_check_kernel_path
  else
    attach_fastpath "$dp"
    prog=$(bench_prog_size)
    # What the attach allocated (preallocated maps: FLOWS and KERNEL_SOCKETS are the flow
    # table); the same in every trial, so once.
    [ "$trial" -ne 1 ] || maps=$(bench_map_memory)
  fi
  bench_check_reachable
  rec=$(jq -nc --arg d "$dp" --arg r "$rs" --argjson t "$trial" --argjson p "$prog" --argjson maps "$maps" \
    '{kind: "scenario", scenario: "\($d)@\($r)", datapath: $d, ruleset: $r, trial: $t, program: $p}
     + (if $maps == null then {} else {maps: $maps} end)')
  for m in "${RR_METRICS[@]}" conn tcp udp64 cpu; do
    r=$(measure "$m" "$dp")
    rec=$(jq -c --arg m "$m" --argjson v "$r" '.[$m] = $v' <<<"$rec")
  done
  if [ "$dp" = xdp ] && [ "$rs" = none ]; then
    xdp_live "$trial" pod off
    xdp_live "$trial" pod on
    xdp_live "$trial" drop off
    xdp_live "$trial" drop on
  fi
  detach_fastpath
  record "$rec"
  jq -r '"  rr pinned p50 \(.rr_pinned.p50_us) us p99 \(.rr_pinned.p99_us) | unpinned p50 \(.rr_unpinned.p50_us // "-") | conn \(.conn.conn_per_s)/s | tcp \(.tcp.gbps * 100 | round / 100) Gbit/s | udp64 rx \(.udp64.rx_pps / 1000 | round) kpps (tx \(.udp64.tx_pps / 1000 | round)) | cpu \(.cpu.ms_per_mpkt // "n/a" | tostring | .[0:6]) ms/Mpkt"' <<<"$rec"
}

# The XDP program's own ceiling (xdp is attached, endpoints are in): live frames as if received
# on hv1, redirected through the devmap into hv2.
#   xdp_live TRIAL pod STATS: into pod2 (its veth builds an skb per frame, pod2's stack takes it
#     to the UDP sink);
#   xdp_live TRIAL drop STATS: an XDP_DROP program on pod2's eth0 for that run (xdp-live
#     --drop-at) drops each frame in the veth's NAPI poll, before any skb.
# STATS off: no run-time statistics (the ceiling: on this VM their clock reads around every
# program run are a visible share of a frame's cost); on: the program's own ns per frame.
# Checked: 'redirected' grew by every frame run; with the drop, every frame reached the drop
# program (the veth's xdp_drops counter, and with statistics its run count) and pod2's stack
# got none of them.
xdp_live() {
  local trial=$1 target=$2 stats=$3 before after res id ifindex drp frames rx0 rx1 xd0 xd1
  local args=() kind=xdp_live
  if [ "$target" = drop ]; then args+=(--drop-at "$POD2" eth0) kind=xdp_live_drop; fi
  [ "$stats" = on ] || args+=(--no-stats)
  id=$(bench_prog_id)
  ifindex=$(ip netns exec "$NODE" cat "/sys/class/net/$HV1/ifindex")
  before=$(bench_counters)
  rx0=$(udp_received "$POD2") xd0=$(xdp_drops "$POD2" eth0)
  res=$("$XDP_LIVE" "${args[@]}" "$NODE" "$id" "$ifindex" "$POD1_MAC" "$HV1_MAC" "$POD1_V4" "$POD2_V4" "$DURATION" "$CLIENT_CPU") \
    || die "xdp-live ${args[*]} failed"
  after=$(bench_counters)
  sleep 0.2 # frames still in flight to pod2's socket
  rx1=$(udp_received "$POD2") xd1=$(xdp_drops "$POD2" eth0)
  frames=$(jq -r .frames <<<"$res")
  drp=$(($(cut -f1 <<<"$after") - $(cut -f1 <<<"$before")))
  [ "$drp" -ge "$frames" ] \
    || bench_fastpath_fail "xdp-live (${target}): ran ${frames} frames but 'redirected' grew by ${drp}"
  if [ "$target" = drop ]; then
    [ $((xd1 - xd0)) -ge "$frames" ] \
      || die "xdp-live (drop): ${frames} frames redirected, but pod2's eth0 counted $((xd1 - xd0)) XDP drops: the rest never crossed the veth"
    [ "$stats" = off ] || [ "$(jq -r .drop_runs <<<"$res")" -ge "$frames" ] \
      || die "xdp-live (drop): ${frames} frames redirected, but the XDP_DROP program ran $(jq -r .drop_runs <<<"$res") times"
    [ $((rx1 - rx0)) -le $((frames / 100)) ] \
      || die "xdp-live (drop): pod2's UDP socket received $((rx1 - rx0)) of ${frames} frames: the XDP_DROP program was not in their way"
  fi
  if [ "$stats" = off ] && [ "$(jq -r .stats <<<"$res")" = true ]; then
    warn "xdp-live (${target}): run-time statistics were on during the run without them (another process had them on)"
  fi
  record "$(jq -c --arg k "$kind" --argjson t "$trial" --argjson p "$drp" --argjson rx "$((rx1 - rx0))" \
    --argjson xd "$((xd1 - xd0))" \
    '{kind: $k, trial: $t} + . + {redirected_packets: $p, pod_udp_received: $rx, pod_xdp_drops: $xd}' <<<"$res")"
  jq -r --arg what "$([ "$target" = drop ] && echo "redirect-and-drop (XDP_DROP on pod2 eth0, no skb)" || echo "end to end into pod2")" \
    --argjson rx "$((rx1 - rx0))" '
    "  xdp-live, \($what), statistics \(if .stats then "on" else "off" end): \(.kernel_mpps) Mpps kernel-timed, \(.mpps) wall"
    + (if .prog_ns_per_frame != null then ", program \(.prog_ns_per_frame) ns/frame" else "" end)
    + (if .drop_ns_per_frame != null then ", drop program \(.drop_ns_per_frame) ns/frame" else "" end)
    + (if .drop_at == null then "; pod2 socket got \($rx) of \(.frames)" else "" end)' <<<"$res"
}

xdp_drops() { # xdp_drops NETNS DEV: frames the veth's own XDP program dropped (all rx queues)
  ip netns exec "$1" ethtool -S "$2" | awk '/rx_queue_[0-9]+_xdp_drops:/ { n += $2 } END { print n + 0 }'
}

# The floor: client and server in one namespace over lo (no forwarding, so no path check).
loopback_trial() {
  local trial=$1 rec m r
  say "loopback trial ${trial}/${TRIALS}"
  rec=$(jq -nc --argjson t "$trial" '{kind: "scenario", scenario: "loopback", datapath: "loopback", ruleset: "none", trial: $t}')
  for m in "${RR_METRICS[@]}" conn tcp; do
    case "$m" in
      rr_pinned) r=$(bench_rr "$LO_NS" 127.0.0.1 "$PORT_RR_PINNED" 1) ;;
      rr_unpinned) r=$(bench_rr "$LO_NS" 127.0.0.1 "$PORT_RR_FREE" 0) ;;
      conn) r=$(bench_conn "$LO_NS" 127.0.0.1) ;;
      tcp) r=$(bench_tcp "$LO_NS" 127.0.0.1) ;;
    esac
    rec=$(jq -c --arg m "$m" --argjson v "$r" '.[$m] = $v' <<<"$rec")
  done
  record "$rec"
  jq -r '"  rr pinned p50 \(.rr_pinned.p50_us) us | unpinned p50 \(.rr_unpinned.p50_us // "-") | conn \(.conn.conn_per_s)/s | tcp \(.tcp.gbps * 100 | round / 100) Gbit/s"' <<<"$rec"
}

# trafgen into a veth whose peer is down (every frame dropped at once): what the generator
# alone can send. Then its CPU cost at the cpu metric's fixed rate, into a veth whose peer is up
# (which drops the frames as not addressed to it: the cheapest receive there is).
generator_trial() {
  local tx tx2 cpu cpu2
  ip -n "$GEN_NS" link set gen1 down
  read -r tx cpu <<<"$(run_trafgen "$GEN_NS" gen0)"
  ip -n "$GEN_NS" link set gen1 up
  read -r tx2 cpu2 <<<"$(run_trafgen "$GEN_NS" gen0 "$RATE")"
  record "$(jq -nc --argjson t "$1" --argjson tx "$tx" --argjson d "$DURATION" --argjson tx2 "$tx2" \
    --argjson cpu2 "$cpu2" '
    {kind: "generator", trial: $t, tx_packets: $tx, tx_pps: ($tx / $d),
     fixed_rate_packets: $tx2, fixed_rate_cpu_s: $cpu2,
     ms_per_mpkt: (if $tx2 > 0 and $cpu2 != null then $cpu2 * 1000 / ($tx2 / 1e6) else null end)}')"
  say "generator ceiling (trafgen -> veth with its peer down): $((tx / DURATION)) pps; at ${RATE} pps: ${cpu2} s CPU for ${tx2} frames"
}

# --- the run --------------------------------------------------------------------------------

trafgen_conf >"$WORK/udp.cfg"
START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
T0=$SECONDS
ip netns add "$LO_NS" && EXTRA_NS+=("$LO_NS")
ip -n "$LO_NS" link set lo up
bench_client_sysctls "$LO_NS"
ip netns add "$GEN_NS" && EXTRA_NS+=("$GEN_NS")
# No dummy driver on every kernel: a veth whose peer stays down drops every frame at once.
ip -n "$GEN_NS" link add gen0 type veth peer name gen1
ip -n "$GEN_NS" link set gen0 up

for rs in "${RULESETS[@]}"; do
  bench_up "$rs"
  if [ "$rs" = none ]; then bench_start_servers "$LO_NS" 127.0.0.1; fi
  for ((t = 1; t <= TRIALS; t++)); do
    step "rule set ${rs}: trial ${t}/${TRIALS} ($((SECONDS - T0)) s elapsed)"
    if [ "$rs" = "${RULESETS[0]}" ]; then generator_trial "$t"; fi
    if [ "$rs" = none ]; then loopback_trial "$t"; fi
    for dp in "${DATAPATHS[@]}"; do run_trial "$dp" "$rs" "$t"; done
  done
  bench_down
done
SCENARIOS_S=$((SECONDS - T0))

# run_section NAME CMD...: a section that has its own script (on its own namespaces, cleaning
# up after itself), in the background so that our cleanup can stop it; its output goes to
# $WORK/NAME.log (kept in the results). A section that fails is reported and left out of the
# results; the run goes on and fails at the end.
run_section() {
  local name=$1 rc=0 t0=$SECONDS
  shift
  "$@" </dev/null >"$WORK/$name.log" 2>&1 &
  SECTION_PID=$!
  wait "$SECTION_PID" || rc=$?
  SECTION_PID=""
  SECTION_S[$name]=$((SECONDS - t0))
  if [ "$rc" -ne 0 ]; then
    tail -n 20 "$WORK/$name.log" >&2
    warn "section '${name}' failed (status ${rc}; its log goes to ${name}.log in the results); the run goes on without it"
    FAILED_SECTIONS+=("$name")
    rm -f -- "$WORK/$name.json"
    return 1
  fi
  say "${name}: $((SECONDS - t0)) s"
}

sections_json() { # {NAME: seconds} of the sections that ran, and the failed ones
  local k
  for k in "${!SECTION_S[@]}"; do printf '%s\t%s\n' "$k" "${SECTION_S[$k]}"; done \
    | jq -Rsc --arg failed "${FAILED_SECTIONS[*]}" '
      {seconds: (split("\n") | map(select(length > 0) | split("\t") | {key: .[0], value: (.[1] | tonumber)}) | from_entries),
       failed: ($failed | split(" ") | map(select(length > 0)))}'
}

if [ "$PROG_COST" -eq 1 ]; then
  step "programs' cost per packet with the flow table: scripts/bench-prog.sh, ${TRIALS} x ${DURATION} s ($((SECONDS - T0)) s elapsed)"
  if run_section prog-cost "$ROOT/scripts/bench-prog.sh" --ctl "$CTL" --trials "$TRIALS" \
    --duration "$DURATION" --json "$WORK/prog-cost.json"; then
    jq -r '.programs | to_entries[] | "  \(.key): \(.value.median) ns per packet [\(.value.min)-\(.value.max)] (bpf_stats, TCP ping-pong)"' "$WORK/prog-cost.json"
  fi
fi
if [ "$CONTROLLER" -eq 1 ]; then
  quick_note=""
  [ "$QUICK" -eq 0 ] || quick_note=" (--quick: ${CTRL_PODS} pods, not the full run's 1,000 with a burst of 200)"
  step "controller: ${CTRL_PODS} pods, bursts of ${CTRL_BURST} and $(((CTRL_BURST / 4) > 0 ? CTRL_BURST / 4 : 1)), datapath ${CTRL_DP}: scripts/bench-controller.sh${quick_note} ($((SECONDS - T0)) s elapsed)"
  if run_section controller "$ROOT/scripts/bench-controller.sh" --ctl "$CTL" --datapath "$CTRL_DP" \
    --pods "$CTRL_PODS" --burst "$CTRL_BURST" --json "$WORK/controller.json"; then
    sed -n '/=== summary/,$ { /=== summary/d; /^\[bench-controller\]/d; s/^/  /p }' "$WORK/controller.log"
    [ "$QUICK" -eq 0 ] || say "(--quick: bench-controller.sh marks ok/MISS against targets stated for 1,000 pods and a burst of 200; the report does not check them at ${CTRL_PODS} pods)"
  fi
fi

if [ "$CROSS_NODE" -eq 1 ]; then
  # The rule sets of the cross-node section: none and kubeproxy, where this run has them.
  CROSS_RS=()
  for rs in "${RULESETS[@]}"; do [ "$rs" = fwrules ] || CROSS_RS+=("$rs"); done
  if [ "${#CROSS_RS[@]}" -eq 0 ]; then
    say "cross-node: none of its rule sets (none, kubeproxy) was selected; left out"
  else
    step "across nodes: scripts/bench-cross-node.sh, ${DATAPATHS[*]} x ${CROSS_RS[*]}, ${TRIALS} x ${DURATION} s ($((SECONDS - T0)) s elapsed)"
    if run_section cross-node "$ROOT/scripts/bench-cross-node.sh" --no-build --ctl "$CTL" \
      --trials "$TRIALS" --duration "$DURATION" --services "$SERVICES" \
      --only "$(IFS=,; echo "${DATAPATHS[*]}")" --rulesets "$(IFS=,; echo "${CROSS_RS[*]}")" \
      --json "$WORK/cross-node.json"; then
      sed -n '/=== summary/,$ { /=== summary/d; /^\[bench-cross-node\]/d; s/^/  /p }' "$WORK/cross-node.log"
    fi
  fi
fi

ELAPSED=$((SECONDS - T0))
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- results --------------------------------------------------------------------------------

step "results (${ELAPSED} s; load before ${LOAD_START}, after ${LOAD_END})"
# Written in the work directory and moved into place when complete: a failed report leaves
# no half-written results directory.
RES=$WORK/results
mkdir -p "$RES" "$(dirname -- "$OUT")"
jq -s --arg tstart "$START" --arg tend "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --argjson elapsed "$ELAPSED" \
  --arg kernel "$(uname -r)" --argjson ncpu "$(nproc)" --arg cpu "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" \
  --arg mem "$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)" \
  --arg load0 "$LOAD_START" --arg load1 "$LOAD_END" --argjson quick "$QUICK" \
  --argjson scen_s "$SCENARIOS_S" --argjson ctrl_pods "$CTRL_PODS" --argjson ctrl_burst "$CTRL_BURST" \
  --arg ctrl_dp "$CTRL_DP" --argjson sections "$(sections_json)" \
  --argjson controller "$(cat "$WORK/controller.json" 2>/dev/null || echo null)" \
  --argjson prog_cost "$(cat "$WORK/prog-cost.json" 2>/dev/null || echo null)" \
  --argjson cross_node "$(cat "$WORK/cross-node.json" 2>/dev/null || echo null)" \
  --argjson trials "$TRIALS" --argjson duration "$DURATION" --argjson services "$SERVICES" \
  --argjson rules "$RULES" --argjson rate "$RATE" \
  --arg rev "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)" \
  --arg iperf "$(iperf3 --version | awk 'NR == 1')" --arg iptables "$(iptables --version)" \
  --arg sockperf "$(sockperf --version 2>&1 | awk '/version/ && !f { print; f = 1 }')" \
  --arg trafgen "$(trafgen --version | awk 'NR == 1')" '
  {parameters: {start: $tstart, "end": $tend, elapsed_s: $elapsed, quick: ($quick == 1), kernel: $kernel,
     cpus: $ncpu, cpu_model: $cpu, memory: $mem, load_before: $load0, load_after: $load1,
     trials: $trials, duration_s: $duration, kube_proxy_services: $services, forward_rules: $rules,
     cpu_metric_rate_pps: $rate, rr_msg_size: '"$RR_MSG_SIZE"', udp_payload: '"$UDP_PAYLOAD"',
     client_cpu: '"$CLIENT_CPU"', server_cpu: '"$SERVER_CPU"', git: $rev,
     scenarios_elapsed_s: $scen_s, sections: $sections,
     controller_pods: $ctrl_pods, controller_burst: $ctrl_burst, controller_datapath: $ctrl_dp,
     tools: {iperf3: $iperf, sockperf: $sockperf, trafgen: $trafgen, iptables: $iptables}},
   trials: ., controller: $controller, prog_cost: $prog_cost, cross_node: $cross_node}' "$TRIALS_JSONL" >"$RES/raw.json"
python3 "$ROOT/scripts/bench-report.py" "$RES/raw.json" "$RES"
for f in prog-cost controller cross-node; do
  [ ! -e "$WORK/$f.log" ] || cp -- "$WORK/$f.log" "$RES/$f.log"
done
mv -T -- "$RES" "$OUT"
cat "$OUT/results.md"
say "wrote ${OUT}/{results.md,results.json,raw.json,chart.svg} in ${ELAPSED} s"
[ "${#FAILED_SECTIONS[@]}" -eq 0 ] \
  || die "section(s) ${FAILED_SECTIONS[*]} failed: the results in ${OUT} are without them (see their .log there)"
