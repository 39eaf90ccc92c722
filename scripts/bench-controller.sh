#!/usr/bin/env bash
# Benchmark (not a test) of the controller (`xdp-ctl run`, DESIGN.md section 4) against the
# issue's targets, on the netns bench (scripts/bench-netns.sh): start-up on a node with N pods
# (cold, and a restart that re-adopts), a burst of B pods created at once while it runs, and its
# resident memory. Runs as root; leaves nothing behind (namespaces, pins, processes) even when
# it fails.
set -euo pipefail
shopt -s inherit_errexit
# A reader that goes away (`... | head`) must not kill us half-way through clean-up.
trap '' PIPE

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROG=$(basename "$0")

# Targets (the issue's).
TARGET_AFTER_DUMP_MS=1000 # ready < 1 s after the initial dump completed
TARGET_BURST_MS=500       # converged within 500 ms of the last netlink event
TARGET_RSS_MIB=30         # resident memory at 1,000 pods
# Fixed choices, documented in the help text.
READY_TIMEOUT_S=300
SETTLE_S=1         # after a burst converged: time for trailing events before the "after" numbers
IFNAMSIZ_MAX=15

usage() {
  cat <<EOF
Usage: ${PROG} [--pods N] [--burst B] [--datapath xdp|tc|both] [--quick] [--json FILE]
                           [--log-dir DIR] [--poll-ms MS] [--burst-timeout S]
                           [--resync-interval S] [--no-build] [--ctl BIN]

Measures 'xdp-ctl run' on the netns bench (scripts/bench-netns.sh), once per datapath, each on
a freshly built bench of N pods (veths PREFIXh<i>, /32 + /128 routes, permanent neighbours;
2N endpoints on N interfaces):

  1. cold start   process start -> 'ready' (every endpoint programmed, every veth attached),
                  from what the controller publishes ('status --json': started_unix_ms, and
                  last_resync_unix_ms, the end of the initial full sync that made it ready):
                  start-up before the sync (object load, verifier), and controller start ->
                  ready (the initial dump and reconcile; target < ${TARGET_AFTER_DUMP_MS} ms after the dump: status
                  has no dump time, so this is an upper bound of "dump done -> ready").
  2. restart      SIGTERM, start again on the same N attached pods (re-adoption: no attach
                  work expected, map writes 0); the same numbers.
  3. bursts       B pods created at once while the controller runs (netns add, veth add,
                  node routes/neighbours, pod set-up with 'ip -batch', pods in parallel on
                  all CPUs, as bench-netns.sh does), then a second burst of B/4 pods to show
                  that the work is linear in the number of changes. Converged = the first
                  poll of the controller's published state (every MS ms, --poll-ms) that shows
                  every new interface and endpoint; measured from the end of the creation
                  script and from the last rtnetlink event of the node namespace about the new
                  veths, their routes and neighbours (recorded with 'ip -ts monitor link route
                  neigh' there; negative: converged before it, i.e. the last events needed no
                  work). Target < ${TARGET_BURST_MS} ms. (xdp: the pod-side GRO re-apply once a
                  new pod came up is not in the published state, so it is not waited for.)
                  Reconciles and map writes are the status deltas (before the burst,
                  ${SETTLE_S} s after it).
                  A burst that has not converged after --burst-timeout seconds is recorded as
                  not converged (with what status showed then) and the run goes on.
  4. memory       VmRSS and VmHWM of the controller after ready (cold and restart) and after
                  the bursts. Target < ${TARGET_RSS_MIB} MiB at 1,000 pods.

The controller runs with --resync-interval 3600 unless told otherwise, so that no periodic full
resync (a whole dump and diff) falls into a measurement and bursts measure the event path.
Numbers depend on what else the machine runs: the load average is recorded.

Options:
  --pods N          pods on the node (default 1000)
  --burst B         pods in the main burst (default 200); the second burst is max(1, B/4)
  --datapath D      xdp, tc or both (default both)
  --quick           smoke run: --pods 100 --burst 50 (explicit --pods / --burst still win)
  --json FILE       write every raw number (and the run's parameters) as JSON
  --log-dir DIR     keep the controller's logs and the ip monitor logs in DIR
  --poll-ms MS      polling period during bursts (default 20); polls the state the controller
                    publishes (the CONTROLLER map that 'status' reads) with bpftool, or
                    'status --json' if bpftool is missing; each converged burst is then
                    checked with 'status --json' and 'endpoint list --json'
  --burst-timeout S give up waiting for a burst to converge after S seconds (default 30)
  --resync-interval S
                    the controller's --resync-interval (default 3600: none during the run);
                    a short one shows how the periodic resync alone converges a burst
  --no-build        use the existing target/release/xdp-ctl instead of building it
  --ctl BIN         the xdp-ctl to measure (implies --no-build; scripts/bench.sh passes its own)
  -h, --help        this text

Namespaces: xcb<pid>-node and xcb<pid>-pod<i>; pins under /sys/fs/bpf/xfp-bench-ctl-<pid>-<datapath>.
All of it is removed at the end, also on failure or Ctrl-C. Runs as root.

Examples:
  sudo ${PROG} --quick --datapath tc
  sudo ${PROG} --json /tmp/controller.json --log-dir /tmp/controller-logs
EOF
}

TAG=bench-controller
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# --- arguments ------------------------------------------------------------------------------

PODS=""
BURST=""
DP_ARG=both
QUICK=0
JSON_OUT=""
LOG_DIR=""
POLL_MS=20
BURST_TIMEOUT_S=30
RESYNC_S=3600
BUILD=1
CTL_ARG=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --pods | --pods=*) opt_arg "$@"; PODS=$OPTVAL; shift "$OPTSHIFT" ;;
    --burst | --burst=*) opt_arg "$@"; BURST=$OPTVAL; shift "$OPTSHIFT" ;;
    --datapath | --datapath=*) opt_arg "$@"; DP_ARG=$OPTVAL; shift "$OPTSHIFT" ;;
    --json | --json=*) opt_arg "$@"; JSON_OUT=$OPTVAL; shift "$OPTSHIFT" ;;
    --log-dir | --log-dir=*) opt_arg "$@"; LOG_DIR=$OPTVAL; shift "$OPTSHIFT" ;;
    --poll-ms | --poll-ms=*) opt_arg "$@"; POLL_MS=$OPTVAL; shift "$OPTSHIFT" ;;
    --burst-timeout | --burst-timeout=*) opt_arg "$@"; BURST_TIMEOUT_S=$OPTVAL; shift "$OPTSHIFT" ;;
    --resync-interval | --resync-interval=*) opt_arg "$@"; RESYNC_S=$OPTVAL; shift "$OPTSHIFT" ;;
    --quick) QUICK=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --ctl | --ctl=*) opt_arg "$@"; CTL_ARG=$OPTVAL; BUILD=0; shift "$OPTSHIFT" ;;
    *) usage_error "unknown argument '$1'" ;;
  esac
done
if [ "$QUICK" -eq 1 ]; then
  PODS=${PODS:-100}
  BURST=${BURST:-50}
fi
PODS=${PODS:-1000}
BURST=${BURST:-200}
{ is_uint "$PODS" && [ "${#PODS}" -le 5 ] && [ "$((10#$PODS))" -ge 1 ]; } \
  || usage_error "--pods must be a number 1..99999 (got '$PODS')"
{ is_uint "$BURST" && [ "${#BURST}" -le 5 ] && [ "$((10#$BURST))" -ge 1 ]; } \
  || usage_error "--burst must be a number 1..99999 (got '$BURST')"
{ is_uint "$POLL_MS" && [ "${#POLL_MS}" -le 4 ] && [ "$((10#$POLL_MS))" -ge 1 ]; } \
  || usage_error "--poll-ms must be a number 1..9999 (got '$POLL_MS')"
{ is_uint "$BURST_TIMEOUT_S" && [ "${#BURST_TIMEOUT_S}" -le 4 ] && [ "$((10#$BURST_TIMEOUT_S))" -ge 1 ]; } \
  || usage_error "--burst-timeout must be whole seconds 1..9999 (got '$BURST_TIMEOUT_S')"
{ is_uint "$RESYNC_S" && [ "${#RESYNC_S}" -le 6 ] && [ "$((10#$RESYNC_S))" -ge 1 ]; } \
  || usage_error "--resync-interval must be whole seconds 1..999999 (got '$RESYNC_S')"
BURST_TIMEOUT_S=$((10#$BURST_TIMEOUT_S))
RESYNC_S=$((10#$RESYNC_S))
PODS=$((10#$PODS))
BURST=$((10#$BURST))
POLL_MS=$((10#$POLL_MS))
BURST2=$((BURST / 4))
[ "$BURST2" -ge 1 ] || BURST2=1
TOTAL_PODS=$((PODS + BURST + BURST2))
[ "$TOTAL_PODS" -le 65535 ] || usage_error "pods + bursts must stay within 65535 (addressing of bench-netns.sh)"
case "$DP_ARG" in
  xdp) DATAPATHS=(xdp) ;;
  tc) DATAPATHS=(tc) ;;
  both) DATAPATHS=(xdp tc) ;;
  *) usage_error "--datapath must be xdp, tc or both (got '$DP_ARG')" ;;
esac
if [ -n "$JSON_OUT" ]; then
  JSON_DIR=$(dirname -- "$JSON_OUT")
  [ -d "$JSON_DIR" ] && [ -w "$JSON_DIR" ] || usage_error "--json: directory '$JSON_DIR' does not exist or is not writable"
fi

NAME=xcb$$
longest="${NAME}h${TOTAL_PODS}"
[ "${#longest}" -le "$IFNAMSIZ_MAX" ] \
  || usage_error "interface name '${longest}' would be longer than ${IFNAMSIZ_MAX} characters; use fewer pods"

# --- preconditions --------------------------------------------------------------------------

[ "$(id -u)" -eq 0 ] || die "run as root (namespaces, XDP/TC programs, bpffs)"
export PATH="$HOME/.cargo/bin:$PATH"
need_tools ip jq awk xargs nproc

# --- state and cleanup ----------------------------------------------------------------------

NODE=$NAME-node
CTL=$ROOT/target/release/xdp-ctl
if [ -n "$CTL_ARG" ]; then
  [ -x "$CTL_ARG" ] || usage_error "--ctl: '$CTL_ARG' is not an executable"
  CTL=$(realpath -- "$CTL_ARG")
fi
PIN=""       # pin dir of the current datapath run
CTL_PID=""   # the controller we started
MON_PID=""   # the ip monitor we started
BENCH_UP=0
WORK=""

stop_pid() { # stop_pid PID: SIGTERM a process we started, wait for it
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

keep_logs() {
  [ -n "$LOG_DIR" ] && [ -n "$WORK" ] || return 0
  mkdir -p -- "$LOG_DIR" && cp -- "$WORK"/*.log "$LOG_DIR"/ 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [ -n "$CTL_PID$MON_PID$PIN" ] || [ "$BENCH_UP" -eq 1 ]; then
    printf '\n[bench-controller] === cleanup\n'
  fi
  stop_pid "$CTL_PID"
  stop_pid "$MON_PID"
  CTL_PID=""
  MON_PID=""
  # Deleting the namespaces deletes the veths, and with them every attachment; the pinned
  # links and maps are then only names on bpffs.
  if [ "$BENCH_UP" -eq 1 ]; then
    "$ROOT/scripts/bench-netns.sh" down --name "$NAME" >/dev/null 2>&1 \
      || warn "bench-netns.sh down --name $NAME failed"
  fi
  [ -z "$PIN" ] || [ ! -e "$PIN" ] || rm -rf -- "$PIN"
  keep_logs
  [ -z "$WORK" ] || rm -rf -- "$WORK"
  if [ "$rc" -ne 0 ]; then
    printf '[bench-controller] FAILED (status %d); everything it created has been removed\n' "$rc" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
WORK=$(mktemp -d /tmp/bench-controller.XXXXXX)
KV=$WORK/results.kv # "key<TAB>value" lines, the raw numbers
: >"$KV"
declare -A R

put() { # put KEY VALUE
  R[$1]=$2
  printf '%s\t%s\n' "$1" "$2" >>"$KV"
}

# --- build ----------------------------------------------------------------------------------

if [ "$BUILD" -eq 1 ]; then
  step "build: cargo build --release -p xdp-ctl"
  command -v cargo >/dev/null || die "cargo not found (run scripts/bootstrap.sh)"
  (cd "$ROOT" && cargo build --release -p xdp-ctl)
fi
[ -x "$CTL" ] || die "$CTL not found (build it: cargo build --release -p xdp-ctl)"
"$CTL" run --help 2>/dev/null | grep -q -- '--iface-prefix' || die "this xdp-ctl has no 'run' controller"

# --- timestamps -----------------------------------------------------------------------------

# ip -ts timestamps (RFC 3339, UTC) to epoch seconds.
AWK_LIB='
function days(y, m, d,   era, yoe, doy, doe) {
  if (m <= 2) y -= 1
  era = int(y / 400); yoe = y - era * 400
  doy = int((153 * (m > 2 ? m - 3 : m + 9) + 2) / 5) + d - 1
  doe = yoe * 365 + int(yoe / 4) - int(yoe / 100) + doy
  return era * 146097 + doe - 719468
}
function ts(s) {
  gsub(/\[|\]|Z/, "", s)
  return days(substr(s, 1, 4) + 0, substr(s, 6, 2) + 0, substr(s, 9, 2) + 0) * 86400 \
    + substr(s, 12, 2) * 3600 + substr(s, 15, 2) * 60 + substr(s, 18)
}
'

now() { date +%s.%N; }
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) * 1000 }'; }

# last_event MONITOR_LOG FROM TO: "T_STATE N_STATE T_ANY N_ANY": epoch and count of the events ip
# monitor printed about the burst's host veths (PREFIXh<FROM..TO>). STATE: the events that make
# the controller's desired state (the veths' link messages, the pods' /32 and /128 routes and
# their neighbours); ANY also has the kernel's own follow-ups (link-local and multicast routes,
# fe80:: neighbours going STALE on a timer seconds later). IPv6 multicast neighbour entries
# (33:33:...) are left out of both. 0 when none.
last_event() {
  awk -v name="${NAME}h" -v from="$2" -v to="$3" "$AWK_LIB"'
    /^\[[0-9][0-9][0-9][0-9]-/ && !/33:33:/ {
      rest = $0
      while ((i = index(rest, name)) > 0) {
        rest = substr(rest, i + length(name))
        if (match(rest, /^[0-9]+/)) {
          n = substr(rest, 1, RLENGTH) + 0
          if (n >= from && n <= to) {
            ta = $1; na++
            if ($2 ~ /^[0-9]+:$/ || $2 == "Deleted" && $3 ~ /^[0-9]+:$/ || / 10\.244\./ || / fd00::/) { ts_ = $1; ns++ }
            break
          }
        }
      }
    }
    END {
      printf "%.6f %d %.6f %d\n", (ts_ == "" ? 0 : ts(ts_)), ns, (ta == "" ? 0 : ts(ta)), na
    }' "$1"
}

# --- controller, status, memory -------------------------------------------------------------

# start_controller TAG DATAPATH: starts `xdp-ctl run` with its log in $WORK/TAG.log; the start
# time (just before exec) goes to $WORK/TAG.start. The subshell execs, so $! is its PID.
start_controller() {
  local tag=$1 dp=$2
  (
    date +%s.%N >"$WORK/$tag.start"
    exec "$CTL" --netns "$NODE" --pin-dir "$PIN" run \
      --iface-prefix "${NAME}h" --meshed-cidr 10.244.0.0/16 --meshed-cidr fd00::/64 \
      --datapath "$dp" --resync-interval "$RESYNC_S" \
      >"$WORK/$tag.log" 2>&1
  ) &
  CTL_PID=$!
}

wait_ready() { # wait_ready TAG: until status says a controller runs and is ready
  local log=$WORK/$1.log deadline=$((SECONDS + READY_TIMEOUT_S))
  until [ "$(status_json 2>/dev/null | jq -r '.controller | .running and .ready' 2>/dev/null)" = true ]; do
    if ! kill -0 "$CTL_PID" 2>/dev/null; then
      tail -n 20 "$log" >&2 || true
      die "the controller (pid $CTL_PID) exited before it was ready"
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "the controller was not ready within ${READY_TIMEOUT_S} s"
    sleep 0.01
  done
}

status_json() { "$CTL" --netns "$NODE" --pin-dir "$PIN" --json status; }

# controller_counts: "ready interfaces v4 v6 pending reconciles map_writes resyncs" from status.
controller_counts() {
  status_json | jq -r '.controller | "\(.ready) \(.interfaces) \(.endpoints_v4) \(.endpoints_v6) \(.pending) \(.reconciles) \(.map_writes) \(.resyncs)"'
}

# map_counts: the same fields, read straight from the CONTROLLER map the controller publishes
# after every reconcile (what status shows as "controller"), with bpftool: ~2 ms instead of the
# ~100 ms 'status' takes with 1,200 interfaces (it also lists every interface), so that polling
# neither lags nor takes a CPU away from the controller. Layout: common::ControllerState
# (#[repr(C)]: u32 pid, ready, endpoints_v4, endpoints_v6, interfaces, pending; u64 started,
# heartbeat, last_resync, resyncs, drift_repaired, reconciles, map_writes), checked against
# status once per controller (check_map_counts); polling falls back to status otherwise.
# The map is pinned as PIN/v<layout version>/maps/CONTROLLER (common::LAYOUT_VERSION; the pin
# directory is this run's own, so it holds one layout).
map_counts() {
  local map
  map=$(compgen -G "$PIN/v*/maps/CONTROLLER" | head -n 1) || return 1
  bpftool -j map dump pinned "$map" 2>/dev/null | jq -r '
    def hex: ltrimstr("0x") | explode
      | reduce .[] as $c (0; . * 16 + (if $c >= 97 then $c - 87 elif $c >= 65 then $c - 55 else $c - 48 end));
    (.[0].value | map(hex)) as $b
    | def u32($o): $b[$o] + $b[$o + 1] * 256 + $b[$o + 2] * 65536 + $b[$o + 3] * 16777216;
      def u64($o): u32($o) + u32($o + 4) * 4294967296;
      "\(if u32(4) != 0 then "true" else "false" end) \(u32(16)) \(u32(8)) \(u32(12)) \(u32(20)) \(u64(64)) \(u64(72)) \(u64(48))"'
}

POLL_VIA=status
poll_counts() {
  if [ "$POLL_VIA" = map ]; then map_counts; else controller_counts; fi
}

check_map_counts() { # after ready, with nothing happening: the map must read as status does
  local a b
  POLL_VIA=status
  command -v bpftool >/dev/null || return 0
  a=$(map_counts || true)
  b=$(controller_counts || true)
  if [ -n "$a" ] && [ "$a" = "$b" ]; then
    POLL_VIA=map
  else
    warn "the CONTROLLER map reads '${a}', status '${b}': polling with 'status' (slower)"
  fi
}

endpoint_count() { "$CTL" --netns "$NODE" --pin-dir "$PIN" --json endpoint list | jq '.endpoints | length'; }

mem_put() { # mem_put KEYPREFIX: VmRSS / VmHWM of the controller, in MiB
  local rss hwm
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$CTL_PID/status")
  hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$CTL_PID/status")
  put "$1.vmrss_mib" "$(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }')"
  put "$1.vmhwm_mib" "$(awk -v k="$hwm" 'BEGIN { printf "%.1f", k / 1024 }')"
}

# check_converged KEYPREFIX PODS: status and endpoint list must show every pod.
check_converged() {
  local p=$1 n=$2 ready ifs v4 v6 pending rec mw rs eps
  read -r ready ifs v4 v6 pending rec mw rs < <(controller_counts)
  eps=$(endpoint_count)
  put "$p.status_interfaces" "$ifs"
  put "$p.status_endpoints" "$((v4 + v6))"
  put "$p.endpoint_list" "$eps"
  put "$p.pending" "$pending"
  [ "$ready" = true ] || die "$p: status says the controller is not ready"
  if [ "$ifs" -ne "$n" ] || [ "$v4" -ne "$n" ] || [ "$v6" -ne "$n" ] || [ "$eps" -ne $((2 * n)) ] || [ "$pending" -ne 0 ]; then
    die "$p: expected ${n} interfaces and ${n}+${n} endpoints, status shows ${ifs} interfaces, ${v4}+${v6} endpoints (${pending} pending), endpoint list ${eps}"
  fi
}

measure_start() { # measure_start TAG KEYPREFIX: after ready, from status --json
  local tag=$1 p=$2 start started synced writes ifs resyncs
  start=$(cat "$WORK/$tag.start")
  read -r started synced writes ifs resyncs < <(status_json | jq -r '.controller
    | "\(.started_unix_ms) \(.last_resync_unix_ms) \(.map_writes) \(.interfaces) \(.resyncs)"')
  [ "$synced" != null ] || die "$tag: status shows no completed sync although it is ready"
  [ "$resyncs" -eq 1 ] || warn "$tag: ${resyncs} full syncs by now; the ready time is that of the last"
  put "$p.ready_ms" "$(ms_between "$start" "$(awk -v t="$synced" 'BEGIN { printf "%.3f", t / 1000 }')")"
  put "$p.startup_ms" "$(ms_between "$start" "$(awk -v t="$started" 'BEGIN { printf "%.3f", t / 1000 }')")"
  put "$p.sync_ms" "$(awk -v a="$started" -v b="$synced" 'BEGIN { printf "%.1f", b - a }')"
  put "$p.sync_writes" "$writes"
  put "$p.attached" "$ifs"
  put "$p.warnings" "$(grep -c ' WARN ' "$WORK/$tag.log" || true)"
  check_converged "$p" "$PODS"
  mem_put "$p"
  say "$tag: ready after ${R[$p.ready_ms]} ms (start-up ${R[$p.startup_ms]}, controller start -> ready ${R[$p.sync_ms]}), ${R[$p.attached]} interfaces, ${R[$p.sync_writes]} map writes, VmRSS ${R[$p.vmrss_mib]} MiB, VmHWM ${R[$p.vmhwm_mib]} MiB"
}

# --- pods created while the controller runs ---------------------------------------------------

# write_pod_batches FROM TO DIR: the ip batches of bench-netns.sh for pods FROM..TO.
write_pod_batches() {
  local from=$1 to=$2 dir=$3 i hi lo ns hv v4 v6 mac hmac
  mkdir -p "$dir/pods"
  : >"$dir/netns.batch"
  : >"$dir/veth.batch"
  : >"$dir/node.batch"
  : >"$dir/pods.list"
  for ((i = from; i <= to; i++)); do
    hi=$((i >> 8)) lo=$((i & 255))
    printf -v ns '%s-pod%d' "$NAME" "$i"
    printf -v hv '%sh%d' "$NAME" "$i"
    printf -v v4 '10.244.%d.%d' "$hi" "$lo"
    printf -v v6 'fd00::%x' "$i"
    printf -v mac '02:00:00:00:%02x:%02x' "$hi" "$lo"
    printf -v hmac '02:00:00:01:%02x:%02x' "$hi" "$lo"
    echo "netns add $ns" >>"$dir/netns.batch"
    echo "link add $hv address $hmac netns $NODE type veth peer name eth0 address $mac netns $ns" >>"$dir/veth.batch"
    {
      echo "link set $hv up"
      echo "route add $v4/32 dev $hv scope link"
      echo "route add $v6/128 dev $hv"
      echo "neigh replace $v4 lladdr $mac dev $hv nud permanent"
      echo "neigh replace $v6 lladdr $mac dev $hv nud permanent"
    } >>"$dir/node.batch"
    cat >"$dir/pods/$ns" <<EOF
link set lo up
link set eth0 up
addr add $v4/32 dev eth0
addr add $v6/128 dev eth0 nodad
route add 169.254.1.1/32 dev eth0 scope link
route add default via 169.254.1.1 dev eth0
neigh replace 169.254.1.1 lladdr $hmac dev eth0 nud permanent
route add ::/0 via fe80::1 dev eth0
neigh replace fe80::1 lladdr $hmac dev eth0 nud permanent
EOF
    echo "$ns" >>"$dir/pods.list"
  done
}

run_pod_batches() { # run_pod_batches DIR (the node's default sysctls give proxy_arp to new veths)
  local dir=$1
  ip -batch "$dir/netns.batch"
  ip -batch "$dir/veth.batch"
  ip -n "$NODE" -batch "$dir/node.batch"
  (cd "$dir/pods" && xargs -P "$(nproc)" -I{} ip -n {} -batch {} <"$dir/pods.list") \
    || die "configuring the burst's pod namespaces failed"
}

# burst KEYPREFIX DATAPATH FROM COUNT: creates pods FROM..FROM+COUNT-1 at once and measures
# convergence: every pod 1..FROM+COUNT-1 attached and programmed, as the controller publishes it.
burst() {
  local p=$1 dp=$2 from=$3 count=$4 to=$(($3 + $4 - 1)) dir=$WORK/burst-$3
  local want=$to
  local i0 rec0 mw0 rs0 ready ifs v4 v6 pending rec mw rs
  write_pod_batches "$from" "$to" "$dir"
  read -r _ i0 _ _ _ rec0 mw0 rs0 < <(controller_counts)
  put "$p.pods" "$count"
  put "$p.interfaces_before" "$i0"
  [ "$i0" -eq $((from - 1)) ] || warn "$p: status shows ${i0} interfaces before the burst, not $((from - 1))"
  # Every rtnetlink event of the node namespace, timestamped (the controller should see the same).
  (TZ=UTC exec ip -ts -n "$NODE" monitor link route neigh >"$WORK/$p.monitor.log" 2>&1) &
  MON_PID=$!
  sleep 0.2 # let ip monitor subscribe

  local t0 t1 tobs="" polls=0 deadline pause
  pause=$(awk -v ms="$POLL_MS" 'BEGIN { printf "%.3f", ms / 1000 }')
  t0=$(now)
  run_pod_batches "$dir"
  t1=$(now)
  deadline=$((SECONDS + BURST_TIMEOUT_S))
  # Poll status until every new interface and endpoint shows.
  while :; do
    read -r ready ifs v4 v6 pending rec mw rs < <(poll_counts)
    polls=$((polls + 1))
    if [ "$ifs" -eq "$want" ] && [ "$v4" -eq "$want" ] && [ "$v6" -eq "$want" ] && [ "$pending" -eq 0 ]; then
      tobs=$(now)
      break
    fi
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep "$pause"
  done
  local tpoll_end
  tpoll_end=$(now)
  sleep "$SETTLE_S"
  read -r ready ifs v4 v6 pending rec mw rs < <(controller_counts)
  stop_pid "$MON_PID"
  MON_PID=""

  put "$p.create_ms" "$(ms_between "$t0" "$t1")"
  put "$p.poll_via" "$POLL_VIA"
  put "$p.polls" "$polls"
  put "$p.poll_period_ms" "$(awk -v a="$t1" -v b="$tpoll_end" -v n="$polls" 'BEGIN { printf "%.1f", (b - a) * 1000 / n }')"
  put "$p.reconciles" "$((rec - rec0))"
  put "$p.map_writes" "$((mw - mw0))"
  put "$p.resyncs" "$((rs - rs0))"
  put "$p.map_writes_per_pod" "$(awk -v w="$((mw - mw0))" -v n="$count" 'BEGIN { printf "%.2f", w / n }')"
  put "$p.warnings" "$(grep -c ' WARN ' "$CTL_LOG" || true)"
  local tev nev tany nany
  read -r tev nev tany nany < <(last_event "$WORK/$p.monitor.log" "$from" "$to")
  put "$p.monitor_events" "$(grep -c '^\[' "$WORK/$p.monitor.log" || true)"
  put "$p.monitor_state_events" "$nev"
  put "$p.monitor_burst_events" "$nany"
  [ "$tev" != 0.000000 ] || die "$p: ip monitor in ${NODE} recorded no event about the burst's veths"
  put "$p.create_end_to_last_any_event_ms" "$(ms_between "$t1" "$tany")"
  put "$p.create_end_to_last_event_ms" "$(ms_between "$t1" "$tev")"
  if [ -z "$tobs" ]; then
    put "$p.converged" false
    put "$p.status_interfaces" "$ifs"
    put "$p.status_endpoints" "$((v4 + v6))"
    put "$p.pending" "$pending"
    for k in create_end_to_converged_ms last_event_to_converged_ms create_start_to_converged_ms; do
      put "$p.$k" null
    done
    warn "$p: NOT converged ${BURST_TIMEOUT_S} s after the creation ended: status shows ${ifs} of ${want} interfaces, ${v4}+${v6} of ${want}+${want} endpoints; the controller made ${R[$p.reconciles]} reconciles and ${R[$p.resyncs]} full syncs while ${NODE} emitted ${nev} events about the new veths"
    # The controller's multicast subscriptions, as the kernel sees them: the netlink sockets
    # of the node namespace that have groups (ip monitor is gone by now). "rtnl:kernel" as
    # the local address means port id 0: an unbound socket.
    local socks
    socks=$(ip netns exec "$NODE" ss -f netlink -a -e 2>/dev/null | awk '/^UNCONN/ && / rtnl:/ && !/groups=0x00000000/ { print $4, $NF }' | paste -sd';' || true)
    put "$p.node_rtnl_subscribers" "${socks:-none}"
    [ -z "$socks" ] || warn "$p: rtnetlink sockets with multicast groups in ${NODE}: ${socks}"
    return 0
  fi
  put "$p.converged" true
  put "$p.create_end_to_converged_ms" "$(ms_between "$t1" "$tobs")"
  put "$p.last_event_to_converged_ms" "$(ms_between "$tev" "$tobs")"
  put "$p.create_start_to_converged_ms" "$(ms_between "$t0" "$tobs")"
  check_converged "$p" "$want"
  say "$p: ${count} pods created in ${R[$p.create_ms]} ms; converged ${R[$p.create_end_to_converged_ms]} ms after the creation ended, ${R[$p.last_event_to_converged_ms]} ms after the last node event; ${R[$p.reconciles]} reconciles, ${R[$p.map_writes]} map writes"
}

# --- one datapath ---------------------------------------------------------------------------

CTL_LOG=""

run_datapath() { # run_datapath xdp|tc
  local dp=$1 t0 t1
  PIN=/sys/fs/bpf/xfp-bench-ctl-$$-$dp
  [ ! -e "$PIN" ] || die "pin directory $PIN already exists (not ours to remove)"

  step "$dp: bench up, ${PODS} pods (namespaces ${NAME}-*)"
  BENCH_UP=1
  t0=$(now)
  "$ROOT/scripts/bench-netns.sh" up "$PODS" --name "$NAME" >/dev/null
  t1=$(now)
  put "$dp.bench_up_s" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')"
  put "$dp.loadavg_before" "$(cut -d' ' -f1-3 /proc/loadavg)"
  sleep 1 # the bench's last events settle before the controller starts

  step "$dp: cold start on ${PODS} pods"
  start_controller "$dp-cold" "$dp"
  CTL_LOG=$WORK/$dp-cold.log
  wait_ready "$dp-cold"
  measure_start "$dp-cold" "$dp.cold"

  step "$dp: restart (SIGTERM, start again: re-adopts the ${PODS} attached pods)"
  stop_pid "$CTL_PID"
  CTL_PID=""
  start_controller "$dp-restart" "$dp"
  CTL_LOG=$WORK/$dp-restart.log
  wait_ready "$dp-restart"
  measure_start "$dp-restart" "$dp.restart"
  sleep 0.5
  check_map_counts

  step "$dp: burst of ${BURST} pods, then ${BURST2}"
  burst "$dp.burst1" "$dp" $((PODS + 1)) "$BURST"
  burst "$dp.burst2" "$dp" $((PODS + BURST + 1)) "$BURST2"
  mem_put "$dp.after_bursts"
  put "$dp.loadavg_after" "$(cut -d' ' -f1-3 /proc/loadavg)"

  step "$dp: stop and tear down"
  stop_pid "$CTL_PID"
  CTL_PID=""
  "$ROOT/scripts/bench-netns.sh" down --name "$NAME" >/dev/null
  BENCH_UP=0
  rm -rf -- "$PIN"
  PIN=""
}

say "pods ${PODS}, bursts ${BURST} + ${BURST2}, datapaths ${DATAPATHS[*]}, status poll ${POLL_MS} ms"
say "namespaces ${NAME}-*, pins /sys/fs/bpf/xfp-bench-ctl-$$-<datapath>, work dir ${WORK}"
put config.pods "$PODS"
put config.burst "$BURST"
put config.burst2 "$BURST2"
put config.poll_ms "$POLL_MS"
put config.resync_interval_s "$RESYNC_S"
put config.kernel "$(uname -r)"
put config.cpus "$(nproc)"
put config.date "$(date -u +%FT%TZ)"
put config.git_head "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
put config.xdp_ctl_uncommitted "$(git -C "$ROOT" status --porcelain -- xdp-ctl xdp-ebpf common 2>/dev/null | awk '{ print $2 }' | paste -sd, || true)"
put config.targets.after_dump_ms "$TARGET_AFTER_DUMP_MS"
put config.targets.burst_ms "$TARGET_BURST_MS"
put config.targets.rss_mib "$TARGET_RSS_MIB"
for dp in "${DATAPATHS[@]}"; do
  run_datapath "$dp"
done

# --- summary --------------------------------------------------------------------------------

# mark VALUE TARGET: "VALUE ok" or "VALUE MISS" (VALUE < TARGET passes).
mark() {
  if [ "$1" = null ]; then printf 'never MISS'; return; fi
  awk -v v="$1" -v t="$2" 'BEGIN { printf "%s %s", v, (v + 0 < t + 0) ? "ok" : "MISS" }'
}

row() { # row LABEL TARGET KEY [mark-target]
  local label=$1 target=$2 key=$3 mt=${4:-} dp v
  printf '%-50s' "$label"
  for dp in "${DATAPATHS[@]}"; do
    v=${R[$dp.$key]:--}
    if [ -n "$mt" ] && [ "$v" != - ]; then v=$(mark "$v" "$mt"); fi
    printf ' %14s' "$v"
  done
  printf '   %s\n' "$target"
}
row2() { # row2 LABEL KEY1 KEY2: "v1 / v2"
  local label=$1 dp
  printf '%-50s' "$label"
  for dp in "${DATAPATHS[@]}"; do
    printf ' %14s' "${R[$dp.$2]:--} / ${R[$dp.$3]:--}"
  done
  printf '\n'
}

step "summary"
{
  printf '%-50s' "controller benchmark, ${PODS} pods"
  for dp in "${DATAPATHS[@]}"; do printf ' %14s' "$dp"; done
  printf '   %s\n' target
  row "bench up (s)" "" bench_up_s
  row "cold: process start -> ready (ms)" "" cold.ready_ms
  row "cold:   start-up before the sync (ms)" "" cold.startup_ms
  row "cold:   controller start -> ready (ms)" "< ${TARGET_AFTER_DUMP_MS} after the dump" cold.sync_ms "$TARGET_AFTER_DUMP_MS"
  row2 "cold: interfaces attached / endpoints" cold.attached cold.status_endpoints
  row "restart: process start -> ready (ms)" "" restart.ready_ms
  row "restart:   start-up before the sync (ms)" "" restart.startup_ms
  row "restart:   controller start -> ready (ms)" "< ${TARGET_AFTER_DUMP_MS} after the dump" restart.sync_ms "$TARGET_AFTER_DUMP_MS"
  row2 "restart: interfaces / map writes" restart.attached restart.sync_writes
  for b in burst1 burst2; do
    n=${R[${DATAPATHS[0]}.$b.pods]}
    row "burst ${n}: creation script (ms)" "" "$b.create_ms"
    row "burst ${n}: creation end -> last node event (ms)" "" "$b.create_end_to_last_event_ms"
    row "burst ${n}:   (incl. kernel follow-ups) (ms)" "" "$b.create_end_to_last_any_event_ms"
    row "burst ${n}: converged (status)" "within ${BURST_TIMEOUT_S} s" "$b.converged"
    row "burst ${n}: last node event -> converged (ms)" "< ${TARGET_BURST_MS}" "$b.last_event_to_converged_ms" "$TARGET_BURST_MS"
    row "burst ${n}: creation end -> converged (ms)" "< ${TARGET_BURST_MS}" "$b.create_end_to_converged_ms" "$TARGET_BURST_MS"
    row2 "burst ${n}: reconciles / map writes" "$b.reconciles" "$b.map_writes"
    row2 "burst ${n}: interfaces / endpoints seen" "$b.status_interfaces" "$b.status_endpoints"
    row "burst ${n}: map writes per pod" "" "$b.map_writes_per_pod"
  done
  row "VmRSS after cold ready (MiB)" "< ${TARGET_RSS_MIB}" cold.vmrss_mib "$TARGET_RSS_MIB"
  row "VmHWM after cold ready (MiB)" "< ${TARGET_RSS_MIB}" cold.vmhwm_mib "$TARGET_RSS_MIB"
  row "VmRSS after restart ready (MiB)" "< ${TARGET_RSS_MIB}" restart.vmrss_mib "$TARGET_RSS_MIB"
  row "VmRSS after the bursts (MiB)" "< ${TARGET_RSS_MIB}" after_bursts.vmrss_mib "$TARGET_RSS_MIB"
  row "VmHWM after the bursts (MiB)" "< ${TARGET_RSS_MIB}" after_bursts.vmhwm_mib "$TARGET_RSS_MIB"
  row "load average before (1/5/15 min)" "" loadavg_before
  echo "(burst times < 0: the controller had converged before that event; the last events, e.g. carrier changes, needed no work)"
} | tee "$WORK/summary.txt"

if [ -n "$JSON_OUT" ]; then
  jq -R -s 'split("\n") | map(select(length > 0) | split("\t"))
            | reduce .[] as [$k, $v] ({}; setpath($k | split("."); ($v | fromjson? // $v)))' \
    "$KV" >"$JSON_OUT"
  say "raw numbers: $JSON_OUT"
fi
keep_logs
[ -z "$LOG_DIR" ] || say "logs: $LOG_DIR"
