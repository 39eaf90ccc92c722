#!/usr/bin/env bash
# Benchmark (not a test) of the sidecar membership source (`xdp-ctl run --sidecar-port`): the
# CPU its probe thread uses per second of wall time on a bench of N pods (one sock_diag dump
# per family in each pod's namespace every 500 ms), and the controller's total for comparison.
# Runs as root; leaves nothing behind (namespaces, pins, processes) even when it fails.
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROG=$(basename "$0")
TAG=bench-sidecar
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage() {
  cat <<EOF
Usage: ${PROG} [--pods N]... [--seconds S] [--listeners K] [--no-build]

For each N (default: 110 and 1000), builds a bench of N pods (scripts/bench-netns.sh), starts
'xdp-ctl run --sidecar-port 15006 --datapath tc' (release build), waits until it is ready, lets
it settle for 2 s, then samples for S seconds (default 10) the CPU time (utime + stime, from
/proc/PID/task/TID/stat) of the probe thread ('sidecar-probe') and of the whole process. With
--listeners K, pods 1..K get a listener on 15006 first (socat is not needed: a tiny python3
listener runs in each of those namespaces).
EOF
}

PODS=()
SECONDS_SAMPLE=10
LISTENERS=0
BUILD=1
while [ $# -gt 0 ]; do
  case $1 in
    --pods | --pods=*) opt_arg "$@"; PODS+=("$OPTVAL"); shift "$OPTSHIFT" ;;
    --seconds | --seconds=*) opt_arg "$@"; SECONDS_SAMPLE=$OPTVAL; shift "$OPTSHIFT" ;;
    --listeners | --listeners=*) opt_arg "$@"; LISTENERS=$OPTVAL; shift "$OPTSHIFT" ;;
    --no-build) BUILD=0; shift ;;
    -h | --help | help) usage; exit 0 ;;
    *) usage_error "unknown argument '$1'" ;;
  esac
done
[ ${#PODS[@]} -gt 0 ] || PODS=(110 1000)
[ "$(id -u)" -eq 0 ] || die "run as root"

NAME=xsc$$
PIN=/sys/fs/bpf/xfp-bench-sidecar-$$
CTL=$ROOT/target/release/xdp-ctl
CTL_PID=
LISTENER_PIDS=()
cleanup() {
  set +e
  [ -n "$CTL_PID" ] && kill "$CTL_PID" 2>/dev/null && wait "$CTL_PID" 2>/dev/null
  for p in "${LISTENER_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  "$CTL" --netns "${NAME}-node" --pin-dir "$PIN" detach --all >/dev/null 2>&1
  "$ROOT/scripts/bench-netns.sh" down --name "$NAME" >/dev/null 2>&1
  rm -rf "$PIN" 2>/dev/null
}
trap cleanup EXIT

if [ "$BUILD" = 1 ]; then
  echo "== build (release)"
  (cd "$ROOT" && cargo build --release -p xdp-ctl)
fi
TICK=$(getconf CLK_TCK)

cpu_ticks() { # cpu_ticks STATFILE: utime + stime
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "$1"
}

for n in "${PODS[@]}"; do
  echo "== ${n} pods"
  "$ROOT/scripts/bench-netns.sh" up "$n" --name "$NAME" >/dev/null
  LISTENER_PIDS=()
  for ((i = 1; i <= LISTENERS && i <= n; i++)); do
    ip netns exec "${NAME}-pod$i" python3 -c \
      'import socket,time; s=socket.socket(socket.AF_INET6); s.bind(("::",15006)); s.listen(); time.sleep(1e6)' &
    LISTENER_PIDS+=($!)
  done
  log=$(mktemp)
  "$CTL" --netns "${NAME}-node" --pin-dir "$PIN" run --iface-prefix "${NAME}h" \
    --sidecar-port 15006 --datapath tc --resync-interval 3600 >"$log" 2>&1 &
  CTL_PID=$!
  deadline=$((SECONDS + 300))
  until grep -q ' INFO xdp_ctl::controller: ready ' "$log"; do
    kill -0 "$CTL_PID" 2>/dev/null || { cat "$log" >&2; exit 1; }
    [ "$SECONDS" -lt "$deadline" ] || { echo "not ready" >&2; exit 1; }
    sleep 0.05
  done
  sleep 2
  tid=
  for t in /proc/"$CTL_PID"/task/*; do
    [ "$(cat "$t/comm")" = sidecar-probe ] && tid=${t##*/}
  done
  [ -n "$tid" ] || { echo "no sidecar-probe thread" >&2; exit 1; }
  t0=$(cpu_ticks "/proc/$CTL_PID/task/$tid/stat"); p0=$(cpu_ticks "/proc/$CTL_PID/stat")
  w0=$(date +%s.%N)
  sleep "$SECONDS_SAMPLE"
  t1=$(cpu_ticks "/proc/$CTL_PID/task/$tid/stat"); p1=$(cpu_ticks "/proc/$CTL_PID/stat")
  w1=$(date +%s.%N)
  awk -v n="$n" -v t="$((t1 - t0))" -v p="$((p1 - p0))" -v w0="$w0" -v w1="$w1" -v hz="$TICK" \
    -v l="$LISTENERS" 'BEGIN {
      wall = w1 - w0
      printf "%d pods (%d with a listener): probe thread %.1f ms CPU per s (%.2f%% of one core), whole controller %.1f ms per s, over %.1f s\n",
        n, (l < n ? l : n), t * 1000 / hz / wall, t * 100 / hz / wall, p * 1000 / hz / wall, wall }'
  grep -E 'sidecar source' "$log" | tail -n 2 || true
  kill "$CTL_PID"; wait "$CTL_PID" 2>/dev/null || true; CTL_PID=
  for p in "${LISTENER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  LISTENER_PIDS=()
  "$CTL" --netns "${NAME}-node" --pin-dir "$PIN" detach --all >/dev/null 2>&1 || true
  "$ROOT/scripts/bench-netns.sh" down --name "$NAME" >/dev/null
  rm -f "$log"
done
