#!/usr/bin/env bash
# Benchmark (not a test) across nodes (issue 12, "Measure"): pod 1 on node 1 -> pod 1 on node 2
# on the two-node netns bench (scripts/bench-netns.sh --nodes 2: a veth pair as the wire,
# native routing), the kernel path against the tc and xdp fast paths attached on both nodes,
# with no rules and with the kube-proxy rule set loaded into both nodes. TCP throughput, pinned
# RR p50/p99 and the connection rate, measured as scripts/bench.sh measures them (the shared
# functions are in scripts/bench-lib.sh), every figure checked for the path that carried it on
# both nodes. scripts/bench.sh runs it as its 'cross-node' section. Runs as root; leaves nothing
# behind (namespaces, pins, processes) even when it fails or is interrupted.
set -euo pipefail
shopt -s inherit_errexit # errors inside $(...) stop it too (the measurements run in one)
# A reader that goes away (`... | head`) must not kill us half-way through clean-up.
trap '' PIPE

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROG=$(basename "$0")

CLIENT_CPU=0           # pinned clients (sockperf and its server, iperf3 client)
SERVER_CPU=1           # iperf3 server
PORT_IPERF=5201
PORT_RR_PINNED=11111   # sockperf server on the client's CPU
PORT_CONN=8080         # connrate server, not pinned
RR_MSG_SIZE=64
ALL_DATAPATHS=(kernel tc xdp)
ALL_RULESETS=(none kubeproxy)
METRICS=(rr_pinned conn tcp)

usage() {
  cat <<EOF
Usage: ${PROG} [--quick] [--trials T] [--duration D] [--services N] [--only LIST]
                            [--rulesets LIST] [--json FILE] [--no-build] [--ctl BIN]

Measures pod 1 on node 1 -> pod 1 on node 2 (IPv4) on the two-node netns bench
(scripts/bench-netns.sh up 1 --nodes 2: nodes joined by a veth pair, up1 <-> up2, with tx
checksumming off on both ends; each node routes the other's pod CIDR via the other's wire
address, native routing as Calico BGP, flannel host-gw or kindnet do):

  client  pod 1 of node 1, 10.244.1.1      server  pod 1 of node 2, 10.244.2.1

  rule sets (in both nodes' netfilter, one bench each, built afresh):
    none        no rules (conntrack not loaded)
    kubeproxy   kube-proxy's iptables shapes for N ClusterIP services (bench-lib.sh,
                bench_kube_proxy_rules, as scripts/bench.sh loads them) in both nodes, with
                nf_conntrack_tcp_be_liberal=0: every packet meets conntrack twice, on the
                sending node and on the receiving one
  datapaths in each:
    kernel      no program: each node routes, runs netfilter FORWARD, resolves the neighbour
    tc, xdp     the fast path on both nodes: xdp-ctl attach --datapath DP --uplink up<k>
                (xdp: --mode native) on the pod's host veth and the wire end, the local pod's
                addresses as endpoints, the other node's pod CIDRs (v4 and v6) as remote
                meshed prefixes; detached after each trial
Trials are interleaved (trial 1 of every datapath, then trial 2, ...).

Metrics (as scripts/bench.sh measures them; median of T trials, with min and max; each also
as a ratio to the kernel path of the same rule set):
  rr_pinned     sockperf TCP ping-pong, ${RR_MSG_SIZE}-byte messages, --full-rtt, p50 and p99 (us),
                client and server pinned to CPU ${CLIENT_CPU}
  conn          new TCP connections/s: connect, one ${RR_MSG_SIZE}-byte request, response, close
                (tests/src/bin/connrate.rs, 2 client threads, 2 server threads, not pinned)
  tcp           iperf3 single stream, Gbit/s, client CPU ${CLIENT_CPU}, server CPU ${SERVER_CPU}
Every measurement checks the path that carried it on BOTH nodes, or the run fails: on a fast
path each node's 'redirected' counter must have grown and cover what the receiver saw (every
round trip, 4 packets per connection, every TCP byte: each node redirects both directions, the
pod program one way and the uplink program the other); on the kernel path each node's IPv4
ForwDatagrams must.

Options:
  --quick         T=1, D=1 (explicit --trials / --duration win)
  --trials T      trials (default 3)
  --duration D    seconds per measurement (default 5)
  --services N    services in the kube-proxy rule set (default 5000)
  --only LIST     datapaths, comma-separated subset of kernel,tc,xdp (default all)
  --rulesets LIST rule sets, subset of none,kubeproxy (default both)
  --json FILE     write the run's parameters and every trial's record (with the counter deltas
                  of both nodes) as JSON (scripts/bench.sh reads it; scripts/bench-report.py
                  --cross-node FILE prints the table from it)
  --no-build      use the existing release binaries (target/release/xdp-ctl, connrate)
  --ctl BIN       the xdp-ctl to measure (implies --no-build for xdp-ctl)
  -h, --help      this text

Namespaces: xcn<pid>-node1, xcn<pid>-node2, xcn<pid>-n1pod1, xcn<pid>-n2pod1; pins under
/sys/fs/bpf/xfp-bench-xn-<pid>-{1,2} (one per node). All of it is removed at the end, also on
failure or Ctrl-C. Runs as root. Traffic flows only between these namespaces.

Example: sudo ${PROG} --quick
EOF
}

TAG=bench-cross-node
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

# --- arguments ------------------------------------------------------------------------------

TRIALS="" DURATION="" SERVICES=5000 QUICK=0 BUILD=1 CTL_ARG="" JSON_OUT=""
ONLY="kernel,tc,xdp" RULESETS_ARG="none,kubeproxy"
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --quick) QUICK=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --trials | --trials=*) opt_arg "$@"; TRIALS=$OPTVAL; shift "$OPTSHIFT" ;;
    --duration | --duration=*) opt_arg "$@"; DURATION=$OPTVAL; shift "$OPTSHIFT" ;;
    --services | --services=*) opt_arg "$@"; SERVICES=$OPTVAL; shift "$OPTSHIFT" ;;
    --only | --only=*) opt_arg "$@"; ONLY=$OPTVAL; shift "$OPTSHIFT" ;;
    --rulesets | --rulesets=*) opt_arg "$@"; RULESETS_ARG=$OPTVAL; shift "$OPTSHIFT" ;;
    --json | --json=*) opt_arg "$@"; JSON_OUT=$OPTVAL; shift "$OPTSHIFT" ;;
    --ctl | --ctl=*) opt_arg "$@"; CTL_ARG=$OPTVAL; shift "$OPTSHIFT" ;;
    *) usage_error "unknown argument '$1'" ;;
  esac
done
if [ "$QUICK" -eq 1 ]; then TRIALS=${TRIALS:-1} DURATION=${DURATION:-1}; fi
TRIALS=${TRIALS:-3} DURATION=${DURATION:-5}
for v in TRIALS DURATION SERVICES; do
  val=${!v}
  { is_uint "$val" && [ "${#val}" -le 7 ]; } || usage_error "--${v,,} must be a whole number up to 7 digits (got '${val}')"
  printf -v "$v" '%d' "$((10#$val))"
done
{ [ "$TRIALS" -ge 1 ] && [ "$DURATION" -ge 1 ] && [ "$SERVICES" -ge 1 ]; } \
  || usage_error "--trials, --duration and --services must be >= 1"

pick() { # pick LIST ALLOWED...: the allowed names in canonical order
  local list=$1 a o out=() sel
  shift
  IFS=, read -r -a sel <<<"$list"
  for o in "${sel[@]}"; do [[ " $* " == *" $o "* ]] || usage_error "unknown name '$o' (expected: $*)"; done
  for a in "$@"; do [[ ",$list," == *",$a,"* ]] && out+=("$a"); done
  printf '%s\n' "${out[@]}"
}
mapfile -t DATAPATHS < <(pick "$ONLY" "${ALL_DATAPATHS[@]}")
mapfile -t RULESETS < <(pick "$RULESETS_ARG" "${ALL_RULESETS[@]}")
{ [ "${#DATAPATHS[@]}" -gt 0 ] && [ -n "${DATAPATHS[0]}" ] && [ "${#RULESETS[@]}" -gt 0 ] && [ -n "${RULESETS[0]}" ]; } \
  || usage_error "nothing to measure"
if [ -n "$JSON_OUT" ]; then
  JSON_DIR=$(dirname -- "$JSON_OUT")
  { [ -d "$JSON_DIR" ] && [ -w "$JSON_DIR" ]; } || usage_error "--json: directory '$JSON_DIR' does not exist or is not writable"
fi

# --- preconditions --------------------------------------------------------------------------

[ "$(id -u)" -eq 0 ] || die "run as root (namespaces, XDP/TC programs, bpffs)"
export PATH="$HOME/.cargo/bin:$PATH"
need_tools ip iptables-restore iptables iperf3 sockperf taskset jq awk ss python3 ping
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs or more (iperf3 client and server on different CPUs)"

NAME=xcn$$
POD1=$NAME-n1pod1 POD2=$NAME-n2pod1
# POD2_V6: bench_check_reachable pings both families.
POD1_V4=10.244.1.1 POD2_V4=10.244.2.1 POD2_V6=fd00::2:1
PIN_BASE=/sys/fs/bpf/xfp-bench-xn-$$
CTL=$ROOT/target/release/xdp-ctl
if [ -n "$CTL_ARG" ]; then
  [ -x "$CTL_ARG" ] || usage_error "--ctl: '$CTL_ARG' is not an executable"
  CTL=$(realpath -- "$CTL_ARG")
fi
CONNRATE=$ROOT/target/release/connrate

# use_node K: point bench-lib.sh's globals (NODE, PIN, CTL_N) at node K, and HV / UPLINK /
# OTHER_V4 / OTHER_V6 (the other node's pod CIDRs) / LOCAL_V4 / LOCAL_V6 (its pod's addresses).
use_node() {
  local k=$1
  NODE=$NAME-node$k PIN=$PIN_BASE-$k HV=${NAME}${k}h1 UPLINK=up$k
  LOCAL_V4=10.244.$k.1 LOCAL_V6=fd00::$k:1
  OTHER_V4=10.244.$((3 - k)).0/24 OTHER_V6=fd00::$((3 - k)):0/112
  CTL_N=("$CTL" --netns "$NODE" --pin-dir "$PIN")
}

# --- state and cleanup ----------------------------------------------------------------------

PIDS=()    # servers we started
LOADERS=() # rule set loaders we started (one per node, in the background)
BENCH_UP=0
WORK=""

cleanup() {
  local rc=$? k
  trap - EXIT INT TERM
  set +e
  for k in "${LOADERS[@]}"; do kill "$k" 2>/dev/null; wait "$k" 2>/dev/null; done
  bench_stop_servers
  for k in 1 2; do
    use_node "$k"
    if [ -e "$PIN" ]; then
      "${CTL_N[@]}" detach --all >/dev/null 2>&1 || warn "detach --all on node ${k} failed during cleanup"
      [ ! -e "$PIN" ] || rm -rf -- "$PIN"
    fi
  done
  if [ "$BENCH_UP" -eq 1 ]; then
    "$ROOT/scripts/bench-netns.sh" down --name "$NAME" >/dev/null 2>&1 || warn "bench-netns.sh down --name $NAME failed"
  fi
  [ -z "$WORK" ] || rm -rf -- "$WORK"
  [ "$rc" -eq 0 ] || printf '[%s] FAILED (status %d); everything it created has been removed\n' "$TAG" "$rc" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
WORK=$(mktemp -d /tmp/bench-cross-node.XXXXXX)
TRIALS_JSONL=$WORK/trials.jsonl
: >"$TRIALS_JSONL"

# --- build ----------------------------------------------------------------------------------

if [ "$BUILD" -eq 1 ]; then
  pkgs=(-p integration-tests --bin connrate)
  [ -n "$CTL_ARG" ] || pkgs=(-p xdp-ctl "${pkgs[@]}")
  step "build: cargo build --release ${pkgs[*]}"
  command -v cargo >/dev/null || die "cargo not found (run scripts/bootstrap.sh)"
  (cd "$ROOT" && cargo build --release "${pkgs[@]}")
fi
for b in "$CTL" "$CONNRATE"; do
  [ -x "$b" ] || die "$b not found (cargo build --release -p xdp-ctl -p integration-tests --bins)"
done
"$CTL" remote --help >/dev/null 2>&1 || die "this xdp-ctl has no cross-node fast path ('xdp-ctl remote' is missing)"
for k in 1 2; do
  use_node "$k"
  [ ! -e "$PIN" ] || die "pin directory $PIN already exists (not ours to remove)"
done

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
say "pod 1 on node 1 -> pod 1 on node 2: rule sets ${RULESETS[*]} x datapaths ${DATAPATHS[*]}; ${TRIALS} trial(s) x ${DURATION}s"
say "machine load before: ${LOAD_START} (1/5/15 min)"

# --- the bench ------------------------------------------------------------------------------

bench_up() { # bench_up RULESET: the two nodes, the rule set in both, the servers in pod 1 of node 2
  local rs=$1 k
  step "bench up: two nodes, rule set ${rs}"
  BENCH_UP=1
  "$ROOT/scripts/bench-netns.sh" up 1 --nodes 2 --name "$NAME" >/dev/null
  if [ "$rs" = kubeproxy ]; then
    # Both nodes at once: iptables-restore of about 40,000 rules (5,000 services) takes some
    # seconds of one CPU each.
    for k in 1 2; do
      (use_node "$k"; bench_load_kube_proxy "$NODE" "$SERVICES") &
      LOADERS+=($!)
    done
    for k in "${LOADERS[@]}"; do wait "$k" || die "loading the kube-proxy rule set failed"; done
    LOADERS=()
  fi
  bench_client_sysctls "$POD1"
  bench_start_servers "$POD2" "$POD2_V4" iperf3 rr_pinned conn
}

bench_down() {
  bench_stop_servers
  "$ROOT/scripts/bench-netns.sh" down --name "$NAME" >/dev/null
  BENCH_UP=0
}

attach_fastpath() { # attach_fastpath tc|xdp: on both nodes, pod veth and uplink
  local k args=(--datapath "$1")
  [ "$1" != xdp ] || args+=(--mode native)
  for k in 2 1; do
    use_node "$k"
    "${CTL_N[@]}" attach "${args[@]}" --uplink "$UPLINK" "$HV" >/dev/null
    "${CTL_N[@]}" endpoint add "$LOCAL_V4" --iface "$HV" >/dev/null
    "${CTL_N[@]}" endpoint add "$LOCAL_V6" --iface "$HV" >/dev/null
    "${CTL_N[@]}" remote add "$OTHER_V4" >/dev/null
    "${CTL_N[@]}" remote add "$OTHER_V6" >/dev/null
  done
}

detach_fastpath() {
  local k
  for k in 1 2; do
    use_node "$k"
    [ -e "$PIN" ] || continue
    "${CTL_N[@]}" detach --all >/dev/null
    [ ! -e "$PIN" ] || die "detach --all on node ${k} left the pin directory $PIN behind"
  done
}

# The programs attached on both nodes: {node1: {IFACE: PROGRAM_ID}, node2: ...} (xdp-ctl status).
programs() {
  local k
  for k in 1 2; do
    use_node "$k"
    "${CTL_N[@]}" --json status \
      | jq -c --arg n "node$k" '{($n): ([.interfaces[] | select(.program_id != null) | {key: .name, value: .program_id}] | from_entries)}'
  done | jq -sc 'add'
}

# Each node's counters since the attach, per reason (packets, the non-zero ones): what took the
# kernel path besides 'redirected', over the whole trial (the reachability pings included).
reasons() {
  local k
  for k in 1 2; do
    use_node "$k"
    "${CTL_N[@]}" --json stats \
      | jq -c --arg n "node$k" '{($n): (.reasons | with_entries(select(.value.packets > 0) | .value = .value.packets))}'
  done | jq -sc 'add'
}

# measure METRIC DATAPATH: one metric, pod 1 of node 1 -> pod 1 of node 2, path-checked on both
# nodes (bench_check_path of bench-lib.sh, once per node).
measure() {
  local metric=$1 dp=$2 b1 b2 a1 a2 res need unit what d1 d2
  # One assignment per line: in 'a=$(x) b=$(y)' a failure of x would be hidden.
  b1=$(use_node 1; bench_counters)
  b2=$(use_node 2; bench_counters)
  case "$metric" in
    rr_pinned) res=$(bench_rr "$POD1" "$POD2_V4" "$PORT_RR_PINNED" 1) ;;
    conn) res=$(bench_conn "$POD1" "$POD2_V4") ;;
    tcp) res=$(bench_tcp "$POD1" "$POD2_V4") ;;
  esac
  a1=$(use_node 1; bench_counters)
  a2=$(use_node 2; bench_counters)
  IFS=$'\t' read -r need unit what <<<"$(bench_need "$metric" "$res")"
  d1=$(use_node 1; bench_check_path "$dp" "$metric" "$b1" "$a1" "$need" "$unit" "$what" "node 1")
  d2=$(use_node 2; bench_check_path "$dp" "$metric" "$b2" "$a2" "$need" "$unit" "$what" "node 2")
  jq -c --argjson d1 "$d1" --argjson d2 "$d2" '. + {path: {node1: $d1, node2: $d2}}' <<<"$res"
}

run_trial() { # run_trial DATAPATH RULESET TRIAL
  local dp=$1 rs=$2 trial=$3 m r rec progs=null load k why=null
  load=$(cut -d' ' -f1 /proc/loadavg)
  say "${dp}@${rs} trial ${trial}/${TRIALS} ($((SECONDS - T0)) s elapsed, load ${load})"
  if [ "$dp" = kernel ]; then
    for k in 1 2; do
      use_node "$k"
      bench_check_kernel_path "$HV" "$UPLINK"
    done
  else
    attach_fastpath "$dp"
    progs=$(programs)
  fi
  bench_check_reachable
  rec=$(jq -nc --arg d "$dp" --arg r "$rs" --argjson t "$trial" --argjson p "$progs" --argjson l "$load" \
    '{kind: "cross_node", scenario: "\($d)@\($r)", datapath: $d, ruleset: $r, trial: $t,
      loadavg_1min: $l, programs: $p}')
  for m in "${METRICS[@]}"; do
    r=$(measure "$m" "$dp")
    rec=$(jq -c --arg m "$m" --argjson v "$r" '.[$m] = $v' <<<"$rec")
  done
  if [ "$dp" != kernel ]; then why=$(reasons); fi
  detach_fastpath
  rec=$(jq -c --argjson w "$why" '.reasons = $w' <<<"$rec")
  printf '%s\n' "$rec" >>"$TRIALS_JSONL"
  jq -r '"  rr pinned p50 \(.rr_pinned.p50_us) us p99 \(.rr_pinned.p99_us) | conn \(.conn.conn_per_s)/s | tcp \(.tcp.gbps * 100 | round / 100) Gbit/s | redirected on node 1 / node 2 (rr): \(.rr_pinned.path.node1.redirected_packets // "-") / \(.rr_pinned.path.node2.redirected_packets // "-"), forwarded: \(.rr_pinned.path.node1.kernel_forwarded_packets) / \(.rr_pinned.path.node2.kernel_forwarded_packets)"
    + (if .reasons == null then "" else
       "\n  counters over the trial: " + ([.reasons | to_entries[] | "\(.key) " + ([.value | to_entries[] | "\(.key) \(.value)"] | join(", "))] | join("; ")) end)' <<<"$rec"
}

# --- the run --------------------------------------------------------------------------------

START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
T0=$SECONDS
for rs in "${RULESETS[@]}"; do
  bench_up "$rs"
  for ((t = 1; t <= TRIALS; t++)); do
    step "rule set ${rs}: trial ${t}/${TRIALS} ($((SECONDS - T0)) s elapsed)"
    for dp in "${DATAPATHS[@]}"; do run_trial "$dp" "$rs" "$t"; done
  done
  bench_down
done
ELAPSED=$((SECONDS - T0))
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- results --------------------------------------------------------------------------------

jq -s --arg tstart "$START" --arg tend "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --argjson elapsed "$ELAPSED" \
  --arg kernel "$(uname -r)" --arg load0 "$LOAD_START" --arg load1 "$LOAD_END" \
  --argjson quick "$QUICK" --argjson trials "$TRIALS" --argjson duration "$DURATION" \
  --argjson services "$SERVICES" --arg dps "${DATAPATHS[*]}" --arg rss "${RULESETS[*]}" \
  --arg ctl "$CTL" --arg rev "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)" '
  {parameters: {start: $tstart, "end": $tend, elapsed_s: $elapsed, quick: ($quick == 1),
     kernel: $kernel, load_before: $load0, load_after: $load1, trials: $trials,
     duration_s: $duration, kube_proxy_services: $services,
     datapaths: ($dps | split(" ")), rulesets: ($rss | split(" ")),
     rr_msg_size: '"$RR_MSG_SIZE"', client_cpu: '"$CLIENT_CPU"', server_cpu: '"$SERVER_CPU"',
     client: "pod 1 of node 1, '"$POD1_V4"'", server: "pod 1 of node 2, '"$POD2_V4"'",
     wire: "veth pair up1 <-> up2, tx checksumming off, native routing",
     ctl: $ctl, git: $rev},
   trials: .}' "$TRIALS_JSONL" >"$WORK/cross-node.json"
step "summary (${ELAPSED} s; load before ${LOAD_START}, after ${LOAD_END})"
python3 "$ROOT/scripts/bench-report.py" --cross-node "$WORK/cross-node.json"
if [ -n "$JSON_OUT" ]; then
  cp -- "$WORK/cross-node.json" "$JSON_OUT"
  say "figures: $JSON_OUT"
fi
