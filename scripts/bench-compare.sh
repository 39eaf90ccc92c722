#!/usr/bin/env bash
# Benchmark (not a test): pod1 -> pod2 on the netns bench (scripts/bench-netns.sh), kernel path
# vs XDP fast path vs TC fast path, each without and with a FORWARD rule load, in one run.
# Medians of T trials (plus min/max) for single-stream TCP throughput, TCP request/response
# latency and the 64-byte UDP packet rate. Runs as root; leaves nothing behind (namespaces,
# pins, processes) even when it fails.
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROG=$(basename "$0")

# Fixed choices, documented in the help text.
CLIENT_CPU=0     # iperf3 / sockperf client (pod1)
SERVER_CPU=1     # iperf3 / sockperf server (pod2)
RR_SERVER_CPU=1  # sockperf server; --same-cpu puts it on the client's CPU
IPERF_PORT=5201
SOCKPERF_PORT=11111
RR_MSG_SIZE=64   # sockperf ping-pong message size, bytes
UDP_PAYLOAD=64   # iperf3 -u -l, bytes of UDP payload
POD1_V4=10.244.0.1
POD2_V4=10.244.0.2
POD1_V6=fd00::1
POD2_V6=fd00::2
ALL_DATAPATHS=(kernel xdp tc)

usage() {
  cat <<EOF
Usage: ${PROG} [--trials T] [--duration D] [--rules K] [--quick] [--only LIST] [--json FILE]
                        [--no-build] [--ctl BIN] [--baseline BIN] [--same-cpu]

Benchmark pod1 -> pod2 (IPv4) on the netns bench, in one run, for these scenarios:
  kernel-0, kernel-K   no program: routing + netfilter FORWARD with 0 / K never-matching rules
  xdp-0,    xdp-K      xdp-ctl attach --datapath xdp --mode native on both host veths
  tc-0,     tc-K       xdp-ctl attach --datapath tc on both host veths
Trials are interleaved (trial 1 of every scenario, then trial 2, ...), so slow drift on the
VM spreads over all scenarios instead of biasing one.

Metrics (each the median of T trials, with min and max):
  TCP Gbit/s    iperf3 single stream, -t D, client pinned to CPU ${CLIENT_CPU}, server to CPU ${SERVER_CPU}
                (taskset); bits/s received at pod2.
  RR p50/p99    sockperf ping-pong over TCP (sockperf is IPv4 only), ${RR_MSG_SIZE}-byte messages,
                -t D, client on CPU ${CLIENT_CPU}, server on CPU ${SERVER_CPU} (unpinned runs on a 2-vCPU VM
                are bimodal); full round-trip time (--full-rtt) in microseconds.
  UDP kpps      iperf3 -u -l ${UDP_PAYLOAD} -b 0 (${UDP_PAYLOAD}-byte UDP payload), -t D, same pinning;
                packets/s received at pod2 = (sent - lost) / time. Generator-limited: one
                iperf3 sender plus the forwarding softirq on the sender's CPU cap the rate, so
                this measures per-packet cost on that CPU, not the datapath's ceiling.

Each measurement checks which path carried it, or the run fails: on the fast path the
'redirected' counter (xdp-ctl stats --json) must grow and cover what the receiver saw
(every RR round trip, every UDP datagram, every TCP byte); on the kernel path the node
namespace's IPv4 ForwDatagrams must grow likewise (packets for RR and UDP).

Options:
  --trials T     trials per scenario and metric (default 3)
  --duration D   seconds per measurement (default 5)
  --rules K      FORWARD rule load for the "-K" scenarios, v4 and v6 (default 2000;
                 0 runs only the 0-rule scenarios)
  --quick        smoke run: T=1, D=2 (explicit --trials / --duration still win)
  --only LIST    comma-separated subset of: kernel,xdp,tc (default all three)
  --json FILE    write every trial, the per-scenario summary and the run's parameters
  --no-build     use the existing target/release/xdp-ctl instead of building it
  --ctl BIN      the xdp-ctl to measure (implies --no-build)
  --baseline BIN another xdp-ctl build (e.g. the previous commit's): every fast-path scenario
                 also runs with it, as xdp_base / tc_base, interleaved in the same trials, so
                 "before" and "after" come from one run
  --same-cpu     run the sockperf server on the client's CPU: cross-CPU wake-ups on a 2-vCPU
                 VM (about 35 us) otherwise hide the datapath's own latency
  -h, --help     this text

For each fast-path scenario the program's size is recorded too (bpftool: translated
instructions, JIT bytes, instructions the verifier processed).

Builds xdp-ctl (cargo build --release -p xdp-ctl), brings the bench up with
scripts/bench-netns.sh (namespaces xbc<pid>-node, -pod1, -pod2; pins under
/sys/fs/bpf/xfp-bench-<pid>) once per rule count, and removes all of it at the end.
Runs as root. Only the namespaces it creates are touched.

Examples:
  sudo ${PROG} --quick --only kernel,xdp
  sudo ${PROG} --json /tmp/bench.json
EOF
}

TAG=bench-compare
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

# --- arguments ------------------------------------------------------------------------------

TRIALS=""
DURATION=""
RULES=2000
QUICK=0
ONLY="kernel,xdp,tc"
JSON_OUT=""
BUILD=1
BASELINE=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --ctl | --ctl=*) opt_arg "$@"; CTL_ARG=$OPTVAL; shift "$OPTSHIFT" ;;
    --baseline | --baseline=*) opt_arg "$@"; BASELINE=$OPTVAL; shift "$OPTSHIFT" ;;
    --trials | --trials=*) opt_arg "$@"; TRIALS=$OPTVAL; shift "$OPTSHIFT" ;;
    --duration | --duration=*) opt_arg "$@"; DURATION=$OPTVAL; shift "$OPTSHIFT" ;;
    --rules | --rules=*) opt_arg "$@"; RULES=$OPTVAL; shift "$OPTSHIFT" ;;
    --only | --only=*) opt_arg "$@"; ONLY=$OPTVAL; shift "$OPTSHIFT" ;;
    --json | --json=*) opt_arg "$@"; JSON_OUT=$OPTVAL; shift "$OPTSHIFT" ;;
    --quick) QUICK=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --same-cpu) SAME_CPU=1; shift ;;
    *) usage_error "unknown argument '$1'" ;;
  esac
done
if [ "$QUICK" -eq 1 ]; then
  TRIALS=${TRIALS:-1}
  DURATION=${DURATION:-2}
fi
TRIALS=${TRIALS:-3}
DURATION=${DURATION:-5}
{ is_uint "$TRIALS" && [ "${#TRIALS}" -le 3 ] && [ "$((10#$TRIALS))" -ge 1 ]; } \
  || usage_error "--trials must be a number 1..999 (got '$TRIALS')"
{ is_uint "$DURATION" && [ "${#DURATION}" -le 4 ] && [ "$((10#$DURATION))" -ge 1 ]; } \
  || usage_error "--duration must be whole seconds 1..9999 (got '$DURATION')"
{ is_uint "$RULES" && [ "${#RULES}" -le 6 ]; } || usage_error "--rules must be a number 0..999999 (got '$RULES')"
TRIALS=$((10#$TRIALS))
DURATION=$((10#$DURATION))
RULES=$((10#$RULES))

DATAPATHS=()
IFS=, read -r -a only_list <<<"$ONLY"
[ "${#only_list[@]}" -gt 0 ] || usage_error "--only needs at least one of kernel,xdp,tc"
for dp in "${only_list[@]}"; do
  case "$dp" in kernel | xdp | tc) ;; *) usage_error "--only: unknown scenario '$dp' (expected kernel, xdp, tc)" ;; esac
done
for dp in "${ALL_DATAPATHS[@]}"; do # canonical order, duplicates dropped
  for o in "${only_list[@]}"; do
    if [ "$o" = "$dp" ]; then DATAPATHS+=("$dp"); break; fi
  done
done
if [ -n "$BASELINE" ]; then
  [ -x "$BASELINE" ] || usage_error "--baseline: '$BASELINE' is not an executable"
  BASELINE=$(realpath -- "$BASELINE")
  for dp in xdp tc; do
    [[ " ${DATAPATHS[*]} " == *" $dp "* ]] && DATAPATHS+=("${dp}_base")
  done
fi
[ "${SAME_CPU:-0}" -eq 0 ] || RR_SERVER_CPU=$CLIENT_CPU
RULE_SETS=(0)
[ "$RULES" -eq 0 ] || RULE_SETS+=("$RULES")

if [ -n "$JSON_OUT" ]; then
  JSON_DIR=$(dirname -- "$JSON_OUT")
  [ -d "$JSON_DIR" ] && [ -w "$JSON_DIR" ] || usage_error "--json: directory '$JSON_DIR' does not exist or is not writable"
fi

# --- preconditions --------------------------------------------------------------------------

[ "$(id -u)" -eq 0 ] || die "run as root (namespaces, XDP/TC programs, bpffs)"
export PATH="$HOME/.cargo/bin:$PATH"
for tool in ip iptables iperf3 sockperf taskset jq awk ss; do
  command -v "$tool" >/dev/null || die "'$tool' not found (scripts/bootstrap.sh installs the bench tools)"
done
NCPU=$(nproc)
if [ "$NCPU" -lt 2 ]; then
  warn "only ${NCPU} CPU: client and server share CPU 0 (latency will not be comparable to DESIGN.md)"
  SERVER_CPU=0
  RR_SERVER_CPU=0
fi

# --- state and cleanup ----------------------------------------------------------------------

NAME=xbc$$
NODE=$NAME-node
POD1=$NAME-pod1
POD2=$NAME-pod2
HV1=${NAME}h1
HV2=${NAME}h2
PIN=/sys/fs/bpf/xfp-bench-$$
CTL=$ROOT/target/release/xdp-ctl
if [ -n "${CTL_ARG:-}" ]; then
  [ -x "$CTL_ARG" ] || usage_error "--ctl: '$CTL_ARG' is not an executable"
  CTL=$(realpath -- "$CTL_ARG")
  BUILD=0
fi
CTL_N=("$CTL" --netns "$NODE" --pin-dir "$PIN")
use_ctl() { # use_ctl SCENARIO_DATAPATH: the xdp-ctl that scenario runs with
  local bin=$CTL
  [[ $1 != *_base ]] || bin=$BASELINE
  CTL_N=("$bin" --netns "$NODE" --pin-dir "$PIN")
}
WORK=""
IPERF_PID=""
SOCKPERF_PID=""
BENCH_UP=0

stop_servers() {
  local pid
  for pid in "$IPERF_PID" "$SOCKPERF_PID"; do
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  IPERF_PID=""
  SOCKPERF_PID=""
}

detach_fastpath() {
  [ -e "$PIN" ] || return 0
  "${CTL_N[@]}" detach --all
  [ ! -e "$PIN" ] || die "detach --all left the pin directory $PIN behind"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [ -n "$IPERF_PID$SOCKPERF_PID" ] || [ -e "$PIN" ] || [ "$BENCH_UP" -eq 1 ]; then
    printf '\n[bench-compare] === cleanup\n'
  fi
  stop_servers
  if [ -e "$PIN" ]; then
    "${CTL_N[@]}" detach --all >/dev/null 2>&1 || warn "detach --all failed during cleanup"
    # Namespaces go next, and with them the veths and their programs; the pins must go too.
    [ ! -e "$PIN" ] || rm -rf -- "$PIN"
  fi
  if [ "$BENCH_UP" -eq 1 ]; then
    "$ROOT/scripts/bench-netns.sh" down --name "$NAME" >/dev/null 2>&1 \
      || warn "bench-netns.sh down --name $NAME failed"
  fi
  [ -z "$WORK" ] || rm -rf -- "$WORK"
  if [ "$rc" -ne 0 ]; then
    printf '[bench-compare] FAILED (status %d); everything it created has been removed\n' "$rc" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
WORK=$(mktemp -d /tmp/bench-compare.XXXXXX)
TRIALS_JSONL=$WORK/trials.jsonl
: >"$TRIALS_JSONL"

# --- build ----------------------------------------------------------------------------------

if [ "$BUILD" -eq 1 ]; then
  step "build: cargo build --release -p xdp-ctl"
  command -v cargo >/dev/null || die "cargo not found (run scripts/bootstrap.sh)"
  (cd "$ROOT" && cargo build --release -p xdp-ctl)
fi
[ -x "$CTL" ] || die "$CTL not found (build it: cargo build --release -p xdp-ctl)"

# Does this xdp-ctl know --datapath? Before it does, attach means XDP.
HAS_DATAPATH=0
if "$CTL" attach --help 2>/dev/null | grep -q -- '--datapath'; then HAS_DATAPATH=1; fi
for dp in "${DATAPATHS[@]}"; do
  if [ "$dp" = tc ] && [ "$HAS_DATAPATH" -eq 0 ]; then
    die "this xdp-ctl has no 'attach --datapath' yet, so no tc datapath: use --only kernel,xdp"
  fi
done
[ ! -e "$PIN" ] || die "pin directory $PIN already exists (not ours to remove)"

say "scenarios: $(for r in "${RULE_SETS[@]}"; do for dp in "${DATAPATHS[@]}"; do printf '%s-%s ' "$dp" "$r"; done; done)"
say "trials: ${TRIALS}, duration: ${DURATION}s per measurement, client CPU ${CLIENT_CPU}, server CPU ${SERVER_CPU}"
say "bench: namespaces ${NAME}-*, pins ${PIN}"

# --- bench, servers, fast path --------------------------------------------------------------

start_servers() {
  # ip netns exec and taskset exec their argument, so $! is the server's own PID.
  ip netns exec "$POD2" taskset -c "$SERVER_CPU" iperf3 -s -B "$POD2_V4" -p "$IPERF_PORT" \
    >"$WORK/iperf3-server.log" 2>&1 &
  IPERF_PID=$!
  ip netns exec "$POD2" taskset -c "$RR_SERVER_CPU" sockperf sr --tcp -i "$POD2_V4" -p "$SOCKPERF_PORT" \
    >"$WORK/sockperf-server.log" 2>&1 &
  SOCKPERF_PID=$!
  bench_wait_listen "$POD2" "$IPERF_PORT" "iperf3 server" "$IPERF_PID"
  bench_wait_listen "$POD2" "$SOCKPERF_PORT" "sockperf server" "$SOCKPERF_PID"
  say "servers in ${POD2}: iperf3 pid ${IPERF_PID} on CPU ${SERVER_CPU}, sockperf pid ${SOCKPERF_PID} on CPU ${RR_SERVER_CPU}"
}

bench_up() { # bench_up RULES
  step "bench up: 2 pods, $1 FORWARD rules (v4 and v6)"
  BENCH_UP=1
  "$ROOT/scripts/bench-netns.sh" up 2 --name "$NAME" --forward-rules "$1"
  local got
  got=$(ip netns exec "$NODE" iptables -S FORWARD | grep -c '^-A FORWARD' || true)
  [ "$got" -eq "$1" ] || die "expected $1 FORWARD rules in ${NODE}, found ${got}"
  start_servers
}

bench_down() {
  step "bench down"
  stop_servers
  "$ROOT/scripts/bench-netns.sh" down --name "$NAME"
  BENCH_UP=0
}

attach_fastpath() { # attach_fastpath xdp|tc|xdp_base|tc_base
  local args=() dp=${1%_base}
  use_ctl "$1"
  if [ "$HAS_DATAPATH" -eq 1 ]; then args+=(--datapath "$dp"); fi
  if [ "$dp" = xdp ]; then args+=(--mode native); fi
  say "xdp-ctl attach ${args[*]} ${HV1} ${HV2}"
  "${CTL_N[@]}" attach "${args[@]}" "$HV1" "$HV2"
  "${CTL_N[@]}" endpoint add "$POD1_V4" --iface "$HV1"
  "${CTL_N[@]}" endpoint add "$POD2_V4" --iface "$HV2"
  "${CTL_N[@]}" endpoint add "$POD1_V6" --iface "$HV1"
  "${CTL_N[@]}" endpoint add "$POD2_V6" --iface "$HV2"
}

# --- measurements: each prints one JSON object --------------------------------------------

measure_tcp() {
  local out err
  out=$(ip netns exec "$POD1" taskset -c "$CLIENT_CPU" \
    iperf3 -c "$POD2_V4" -p "$IPERF_PORT" -t "$DURATION" -J) || {
    err=$(jq -r '.error // empty' <<<"$out" 2>/dev/null || true)
    die "iperf3 TCP failed: ${err:-see above}"
  }
  jq -c '{gbps: (.end.sum_received.bits_per_second / 1e9),
          bytes_received: .end.sum_received.bytes,
          retransmits: (.end.sum_sent.retransmits // null)}' <<<"$out"
}

measure_rr() {
  local out
  out=$(ip netns exec "$POD1" taskset -c "$CLIENT_CPU" \
    sockperf pp --tcp -i "$POD2_V4" -p "$SOCKPERF_PORT" -t "$DURATION" -m "$RR_MSG_SIZE" --full-rtt 2>&1) \
    || { printf '%s\n' "$out" >&2; die "sockperf ping-pong failed"; }
  bench_sockperf_json <<<"$out" || { printf '%s\n' "$out" >&2; die "could not parse sockperf output"; }
}

measure_udp() {
  local out err
  out=$(ip netns exec "$POD1" taskset -c "$CLIENT_CPU" \
    iperf3 -c "$POD2_V4" -p "$IPERF_PORT" -u -l "$UDP_PAYLOAD" -b 0 -t "$DURATION" -J) || {
    err=$(jq -r '.error // empty' <<<"$out" 2>/dev/null || true)
    die "iperf3 UDP failed: ${err:-see above}"
  }
  jq -c '(.end.sum_received // .end.sum) as $r
    | {rx_pps: (($r.packets - $r.lost_packets) / $r.seconds),
       rx_packets: ($r.packets - $r.lost_packets),
       tx_pps: ($r.packets / $r.seconds),
       lost_percent: $r.lost_percent}' <<<"$out"
}

# measure METRIC DATAPATH: runs one metric, checks which path carried it, prints its JSON
# with the counter deltas added. Fast path: 'redirected' must grow and cover the traffic the
# receiver saw (every RR request, every UDP datagram received, every TCP byte received: the
# counter counts whole frames, both directions). Kernel path: the node must have forwarded it.
measure() {
  local metric=$1 dp=$2 before after res need what unit=packets
  before=$(bench_counters)
  res=$("measure_$metric")
  after=$(bench_counters)
  case "$metric" in
    tcp) need=$(jq -r .bytes_received <<<"$res") what="TCP bytes received" unit=bytes ;;
    rr) need=$(jq -r .observations <<<"$res") what="ping-pong round trips" ;;
    udp) need=$(jq -r .rx_packets <<<"$res") what="UDP datagrams received" ;;
  esac
  jq -c --argjson d "$(bench_check_path "$dp" "$metric" "$before" "$after" "$need" "$unit" "$what")" '. + $d' <<<"$res"
}

run_trial() { # run_trial DATAPATH RULES TRIAL
  local dp=$1 rules=$2 trial=$3 scen tcp rr udp prog='null'
  scen=$dp-$rules
  step "${scen}: trial ${trial}/${TRIALS}"
  if [ "$dp" = kernel ]; then bench_check_kernel_path; else attach_fastpath "$dp"; prog=$(bench_prog_size); fi
  bench_check_reachable
  say "${scen}: TCP throughput (iperf3, ${DURATION}s)"
  tcp=$(measure tcp "$dp")
  say "${scen}: request/response latency (sockperf ping-pong TCP, ${DURATION}s)"
  rr=$(measure rr "$dp")
  say "${scen}: ${UDP_PAYLOAD}-byte UDP rate (iperf3 -u -b 0, ${DURATION}s)"
  udp=$(measure udp "$dp")
  if [ "$dp" != kernel ]; then
    say "${scen}: counters after the trial"
    "${CTL_N[@]}" stats
    detach_fastpath
  fi
  jq -nc --arg s "$scen" --arg d "$dp" --argjson r "$rules" --argjson t "$trial" \
    --argjson tcp "$tcp" --argjson rr "$rr" --argjson udp "$udp" --argjson prog "$prog" \
    '{scenario: $s, datapath: $d, rules: $r, trial: $t, tcp: $tcp, rr: $rr, udp64: $udp, program: $prog}' \
    >>"$TRIALS_JSONL"
  jq -r '"\(.scenario) trial \(.trial): TCP \(.tcp.gbps * 100 | round / 100) Gbit/s | RR p50 \(.rr.p50_us) us, p99 \(.rr.p99_us) us | UDP \(.udp64.rx_pps / 1000 | round) kpps received (\(.udp64.lost_percent * 10 | round / 10)% lost)"
         + (if .tcp.redirected_packets then " | redirected pkts: tcp \(.tcp.redirected_packets), rr \(.rr.redirected_packets), udp \(.udp64.redirected_packets)" else "" end)
         + " | kernel-forwarded pkts: tcp \(.tcp.kernel_forwarded_packets), rr \(.rr.kernel_forwarded_packets), udp \(.udp64.kernel_forwarded_packets)"' \
    <<<"$(tail -n 1 "$TRIALS_JSONL")" | sed 's/^/[bench-compare] /'
}

# --- the run --------------------------------------------------------------------------------

START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for rules in "${RULE_SETS[@]}"; do
  bench_up "$rules"
  for ((t = 1; t <= TRIALS; t++)); do
    for dp in "${DATAPATHS[@]}"; do
      run_trial "$dp" "$rules" "$t"
    done
  done
  bench_down
done

# --- summary --------------------------------------------------------------------------------

SUMMARY_JQ='
def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
def stat(f): [.[] | f] | {median: median, min: min, max: max};
group_by(.scenario) | map({
  key: .[0].scenario,
  value: {datapath: .[0].datapath, rules: .[0].rules, trials: length,
          tcp_gbps: stat(.tcp.gbps), rr_p50_us: stat(.rr.p50_us), rr_p99_us: stat(.rr.p99_us),
          udp64_rx_pps: stat(.udp64.rx_pps), program: .[0].program}
}) | from_entries'
SUMMARY=$(jq -s "$SUMMARY_JQ" "$TRIALS_JSONL")
ORDER=()
for rules in "${RULE_SETS[@]}"; do for dp in "${DATAPATHS[@]}"; do ORDER+=("$dp-$rules"); done; done

if [ -n "$JSON_OUT" ]; then
  jq -s --argjson summary "$SUMMARY" --arg t_start "$START" --arg t_end "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --arg kernel "$(uname -r)" --argjson ncpu "$NCPU" --argjson trials "$TRIALS" \
    --argjson duration "$DURATION" --argjson rules "$RULES" \
    --argjson ccpu "$CLIENT_CPU" --argjson scpu "$SERVER_CPU" \
    --arg rev "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)" \
    --arg iperf "$(iperf3 --version | awk 'NR == 1')" \
    --arg sockperf "$(sockperf --version 2>&1 | awk '/version/ && !f { print; f = 1 }')" \
    '{parameters: {start: $t_start, end: $t_end, kernel: $kernel, cpus: $ncpu, trials: $trials,
                   duration_s: $duration, rules: $rules, client_cpu: $ccpu, server_cpu: $scpu,
                   rr_server_cpu: '"$RR_SERVER_CPU"', baseline: '"$(jq -Rn --arg b "$BASELINE" '$b')"',
                   rr_msg_size: '"$RR_MSG_SIZE"', udp_payload: '"$UDP_PAYLOAD"',
                   git: $rev, iperf3: $iperf, sockperf: $sockperf,
                   notes: ["tcp.gbps: iperf3 single stream, bits/s received at pod2",
                           "rr: sockperf TCP ping-pong, full round trip (--full-rtt), microseconds",
                           "udp64: iperf3 -u -l 64 -b 0, received datagrams/s; generator-limited",
                           "redirected_*: delta of the fast path redirected counter during that measurement (both directions); passed_packets: other reasons",
                           "kernel_forwarded_packets: delta of the node netns IPv4 ForwDatagrams (kernel path) during that measurement"]},
      summary: $summary, trials: .}' "$TRIALS_JSONL" >"$JSON_OUT"
  say "wrote ${JSON_OUT} ($(jq '.trials | length' "$JSON_OUT") trials)"
fi

step "results: medians of ${TRIALS} trial(s)$([ "$TRIALS" -gt 1 ] && echo " [min-max]"), ${DURATION}s each, pod1 -> pod2 IPv4"
fmt_row() { # fmt_row SCENARIO: one table row from the summary
  jq -r --arg s "$1" '
    def r(n): . * pow(10; n) | round / pow(10; n) | tostring;
    def cell(n; scale): (.median * scale | r(n))
      + (if .min == .max then "" else " [\(.min * scale | r(n))-\(.max * scale | r(n))]" end);
    .[$s] | [$s, (.tcp_gbps | cell(2; 1)), (.rr_p50_us | cell(1; 1)), (.rr_p99_us | cell(1; 1)),
             (.udp64_rx_pps | cell(0; 0.001))] | @tsv' <<<"$SUMMARY"
}
TABLE_FMT='%-14s %-22s %-22s %-24s %-20s\n'
{
  # shellcheck disable=SC2059
  printf "$TABLE_FMT" scenario "TCP Gbit/s" "RR p50 us" "RR p99 us" "UDP64 kpps rx"
  for s in "${ORDER[@]}"; do
    IFS=$'\t' read -r c1 c2 c3 c4 c5 <<<"$(fmt_row "$s")"
    # shellcheck disable=SC2059
    printf "$TABLE_FMT" "$c1" "$c2" "$c3" "$c4" "$c5"
  done
}
echo "RR = sockperf TCP ping-pong full round trip (${RR_MSG_SIZE}-byte messages), client CPU ${CLIENT_CPU}, server CPU ${RR_SERVER_CPU}."
echo "TCP = iperf3 single stream, client CPU ${CLIENT_CPU}, server CPU ${SERVER_CPU}."
for s in "${ORDER[@]}"; do
  jq -r --arg s "$s" '.[$s].program // empty | "program of \($s): \(.name) \(.xlated_insns) insns translated, \(.jited_bytes) bytes JIT, \(.verified_insns) insns verified"' <<<"$SUMMARY"
done
echo "UDP64 = iperf3 -u -l ${UDP_PAYLOAD} -b 0, datagrams received at pod2 per second; generator-limited on this VM."

if [[ " ${DATAPATHS[*]} " == *" kernel "* ]] && [ "${#DATAPATHS[@]}" -gt 1 ]; then
  echo
  echo "fast path / kernel path at the same rule count (medians; RR: <1 is faster):"
  printf '%-14s %-12s %-12s %-12s\n' scenario "TCP" "RR p50" "UDP64"
  for rules in "${RULE_SETS[@]}"; do
    for dp in "${DATAPATHS[@]}"; do
      [ "$dp" != kernel ] || continue
      jq -r --arg s "$dp-$rules" --arg k "kernel-$rules" '
        def x(a; b): if b == 0 then "n/a" else "\(a / b * 100 | round / 100)x" end;
        [$s, x(.[$s].tcp_gbps.median; .[$k].tcp_gbps.median),
             x(.[$s].rr_p50_us.median; .[$k].rr_p50_us.median),
             x(.[$s].udp64_rx_pps.median; .[$k].udp64_rx_pps.median)] | @tsv' <<<"$SUMMARY" \
        | while IFS=$'\t' read -r a b c d; do printf '%-14s %-12s %-12s %-12s\n' "$a" "$b" "$c" "$d"; done
    done
  done
fi

say "done"
