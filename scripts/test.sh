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
cargo test -- "$@"
