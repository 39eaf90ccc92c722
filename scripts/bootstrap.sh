#!/usr/bin/env bash
# Idempotent machine set-up for building and testing xdp-fastpath.
# Installs: Debian packages (LLVM 22 for bpf-linker, network tools used by tests and
# benchmarks), rust-src for the nightly toolchain, and bpf-linker. Fast when already done.
set -euo pipefail

TAG=bootstrap
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" -eq 0 ] || die "run as root (apt-get and network namespaces need it)"

# The eBPF object is built by the nightly toolchain and linked by bpf-linker; both must use
# the same LLVM major, otherwise bpf-linker fails with "Invalid record".
LLVM_MAJOR=22
NIGHTLY=${XDP_FASTPATH_NIGHTLY:-nightly}

APT_PKGS=(
  "llvm-${LLVM_MAJOR}-dev" "libpolly-${LLVM_MAJOR}-dev" libzstd-dev zlib1g-dev
  iproute2 iptables iputils-ping ethtool iperf3 sockperf netsniff-ng bpftool procps kmod time
  util-linux python3 jq
)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages present"
fi

command -v rustup >/dev/null || die "rustup not found: install a Rust toolchain with rustup first"
rustup toolchain list | grep -q "^${NIGHTLY}" \
  || die "toolchain '${NIGHTLY}' is not installed (the eBPF build needs a nightly with LLVM ${LLVM_MAJOR})"

nightly_llvm=$(rustc +"${NIGHTLY}" -vV | awk '/^LLVM version:/ {split($3, v, "."); print v[1]}')
if [ "${nightly_llvm}" != "${LLVM_MAJOR}" ]; then
  die "rustc +${NIGHTLY} uses LLVM ${nightly_llvm:-unknown}, bpf-linker is built for LLVM ${LLVM_MAJOR}; \
pin a nightly with LLVM ${LLVM_MAJOR} (set XDP_FASTPATH_NIGHTLY=nightly-YYYY-MM-DD), \
otherwise bpf-linker fails with 'Invalid record'"
fi
say "rustc +${NIGHTLY}: LLVM ${nightly_llvm}"

if ! rustup component list --toolchain "${NIGHTLY}" --installed | grep -q '^rust-src'; then
  say "adding rust-src to ${NIGHTLY}"
  rustup component add rust-src --toolchain "${NIGHTLY}"
fi

export PATH="${HOME}/.cargo/bin:${PATH}"
if command -v bpf-linker >/dev/null && bpf-linker --version 2>/dev/null | grep -q '^bpf-linker 0\.13'; then
  say "$(bpf-linker --version) present"
else
  say "building bpf-linker 0.13 against LLVM ${LLVM_MAJOR} (takes a few minutes)"
  PATH="/usr/lib/llvm-${LLVM_MAJOR}/bin:${PATH}" cargo install --locked bpf-linker \
    --version '~0.13' --no-default-features --features "llvm-${LLVM_MAJOR}"
fi

# bpffs on the usual place, for pins (most systemd hosts mount it already).
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  say "mounting bpffs on /sys/fs/bpf"
  mount -t bpf bpffs /sys/fs/bpf
fi
say "done"
