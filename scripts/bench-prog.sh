#!/usr/bin/env bash
# The datapath programs' own cost per packet under real traffic: kernel.bpf_stats_enabled=1
# (set for the run, restored after) gives each program's run count and run time; a TCP
# ping-pong (sockperf, 64-byte messages, pod1 <-> pod2, an established flow on the fast path)
# drives it. Reports ns per packet through the program, XDP and TC hooks.
#
#   scripts/bench-prog.sh [--ctl BIN] [--baseline BIN] [--duration S] [--trials T] [--json FILE]
#
# --baseline BIN measures a second xdp-ctl build the same way, interleaved, so before/after
# come from one run. (BPF_PROG_TEST_RUN with repeat cannot measure the redirect path: the
# program rewrites the frame, so every run after the first sees the rewritten one.)
# --json FILE also writes the figures as JSON (scripts/bench.sh reads it): per program
# ("xdp", "tc", "xdp_baseline", ...) every trial's ns per packet and run count, and the median.
# Runs as root; touches only the namespaces and pins it creates, and removes them on exit.
set -euo pipefail
shopt -s inherit_errexit # errors inside $(...) stop it too (the measurements run in one)

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TAG=bench-prog
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CTL=$ROOT/target/release/xdp-ctl
BASELINE=""
DURATION=5
TRIALS=3
JSON_OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --ctl | --ctl=*) opt_arg "$@"; CTL=$OPTVAL; shift "$OPTSHIFT" ;;
    --baseline | --baseline=*) opt_arg "$@"; BASELINE=$OPTVAL; shift "$OPTSHIFT" ;;
    --duration | --duration=*) opt_arg "$@"; DURATION=$OPTVAL; shift "$OPTSHIFT" ;;
    --trials | --trials=*) opt_arg "$@"; TRIALS=$OPTVAL; shift "$OPTSHIFT" ;;
    --json | --json=*) opt_arg "$@"; JSON_OUT=$OPTVAL; shift "$OPTSHIFT" ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage_error "unknown argument '$1'" ;;
  esac
done
[ "$(id -u)" -eq 0 ] || die "run as root"
need_tools bpftool jq ip sockperf taskset
[ -x "$CTL" ] || die "$CTL not found (cargo build --release -p xdp-ctl)"
[ -z "$BASELINE" ] || [ -x "$BASELINE" ] || die "--baseline: $BASELINE is not an executable"
[[ $DURATION =~ ^[0-9]+$ && $TRIALS =~ ^[0-9]+$ ]] || die "--duration and --trials take numbers"
{ [ "$DURATION" -ge 1 ] && [ "$TRIALS" -ge 1 ]; } || die "--duration and --trials must be >= 1"
if [ -n "$JSON_OUT" ]; then
  [ -d "$(dirname -- "$JSON_OUT")" ] || die "--json: directory of '$JSON_OUT' does not exist"
  need_tools jq
fi

NAME=xbp$$
NODE=$NAME-node
PIN=/sys/fs/bpf/xfp-bench-prog-$$
# kernel.bpf_stats_enabled is one switch for the whole host: two runs at once would restore each
# other's saved value (and leave it on). One run at a time.
exec 9>/run/lock/xdp-fastpath-bench-prog.lock
flock 9
STATS_WAS=$(sysctl -n kernel.bpf_stats_enabled)
SERVER_PID=""
cleanup() {
  local bin
  [ -z "$SERVER_PID" ] || { kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; } || true
  for bin in "$CTL" ${BASELINE:+"$BASELINE"}; do
    [ -e "$PIN" ] && "$bin" --netns "$NODE" --pin-dir "$PIN" detach --all >/dev/null 2>&1 || true
  done
  "$ROOT/scripts/bench-netns.sh" down --name "$NAME" >/dev/null 2>&1 || true
  sysctl -qw kernel.bpf_stats_enabled="$STATS_WAS" || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$ROOT/scripts/bench-netns.sh" up 2 --name "$NAME" >/dev/null
H1=${NAME}h1
H2=${NAME}h2
ip netns exec "$NAME-pod2" taskset -c 0 sockperf sr --tcp -i 10.244.0.2 -p 11111 >/dev/null 2>&1 &
SERVER_PID=$!
sleep 1
sysctl -qw kernel.bpf_stats_enabled=1

# prog_stats ID: "run_cnt run_time_ns"
prog_stats() { bpftool -j prog show id "$1" | jq -r '"\(.run_cnt // 0) \(.run_time_ns // 0)"'; }

measure() { # measure LABEL BIN DATAPATH: prints "LABEL NS/RUNS..." (one per trial: ns per packet, program runs)
  local label=$1 bin=$2 dp=$3 id c0 t0 c1 t1 t
  local ctl=("$bin" --netns "$NODE" --pin-dir "$PIN")
  local all=()
  for ((t = 0; t < TRIALS; t++)); do
    "${ctl[@]}" attach --datapath "$dp" "$H1" "$H2" >/dev/null
    "${ctl[@]}" endpoint add 10.244.0.1 --iface "$H1" >/dev/null
    "${ctl[@]}" endpoint add 10.244.0.2 --iface "$H2" >/dev/null
    id=$("${ctl[@]}" --json status | jq -r '[.interfaces[].program_id // empty][0]')
    read -r c0 t0 <<<"$(prog_stats "$id")"
    ip netns exec "$NAME-pod1" taskset -c 0 sockperf pp --tcp -i 10.244.0.2 -p 11111 \
      -t "$DURATION" -m 64 >/dev/null 2>&1 || die "$label: sockperf failed"
    read -r c1 t1 <<<"$(prog_stats "$id")"
    local redirected
    redirected=$("${ctl[@]}" --json stats | jq '.reasons.redirected.packets')
    [ "$redirected" -gt 0 ] || die "$label: nothing was redirected"
    "${ctl[@]}" detach --all >/dev/null
    [ "$c1" -gt "$c0" ] || die "$label: the program did not run"
    all+=("$(( (t1 - t0) / (c1 - c0) ))/$((c1 - c0))")
  done
  printf '%s %s\n' "$label" "${all[*]}"
}

say "sockperf TCP ping-pong, ${DURATION}s x ${TRIALS}; program ns per packet (median [min-max])"
RESULTS=$(
  for dp in xdp tc; do
    for which in new ${BASELINE:+base}; do
      if [ "$which" = new ]; then bin=$CTL; else bin=$BASELINE; fi
      measure "$dp-$which" "$bin" "$dp"
    done
  done
)
while read -r label rest; do
  # shellcheck disable=SC2086
  printf '%s\n' $rest | cut -d/ -f1 | sort -n | awk -v l="$label" '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "%-10s %s ns [%s-%s]\n", l, m, v[1], v[NR] }'
done <<<"$RESULTS"
if [ -n "$JSON_OUT" ]; then
  # "xdp-new 223/40123 230/39876" -> {"xdp": {"ns_per_packet": [223, 230], "runs": [...], "median": ...}}
  jq -Rn --argjson d "$DURATION" --argjson t "$TRIALS" --arg ctl "$CTL" --arg base "$BASELINE" '
    def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    [inputs | select(length > 0) | split(" ")
     | (.[0] | sub("-new$"; "") | sub("-base$"; "_baseline")) as $k
     | (.[1:] | map(split("/") | map(tonumber))) as $v
     | {key: $k, value: {ns_per_packet: ($v | map(.[0])), runs: ($v | map(.[1])),
                         median: ($v | map(.[0]) | median), min: ($v | map(.[0]) | min),
                         max: ($v | map(.[0]) | max)}}]
    | {workload: "sockperf TCP ping-pong, 64-byte messages, pod1 <-> pod2, client and server on CPU 0",
       duration_s: $d, trials: $t, ctl: $ctl, baseline: (if $base == "" then null else $base end),
       programs: from_entries}' <<<"$RESULTS" >"$JSON_OUT"
  say "figures: $JSON_OUT"
fi
