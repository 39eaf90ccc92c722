#!/usr/bin/env bash
# Runs every test: unit tests, BPF_PROG_TEST_RUN tests, and integration tests on real
# namespaces, veths and traffic. Run as root. Sets itself up via bootstrap.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
[ "$(id -u)" -eq 0 ] || { echo "test.sh: run as root (namespaces, XDP, bpffs)" >&2; exit 1; }

echo "=== bootstrap"
scripts/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "=== build"
cargo build --tests --bins   # default members: every crate but xdp-ebpf (bpf target only)
export XDP_CTL_BIN="$ROOT/target/debug/xdp-ctl"

echo "=== test"
# Integration tests use unique namespace names and pin dirs, so they may run in parallel.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test -- "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo's own last line is often an empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1); if ($(i) ~ /^ignored;?$/) s += $(i-1) } }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$rc"
