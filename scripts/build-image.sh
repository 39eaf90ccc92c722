#!/usr/bin/env bash
# Builds the xdp-fastpath container image offline: a static (musl) xdp-ctl on `FROM scratch`,
# with buildah; no registry, no base image, no daemon.
#
#   scripts/build-image.sh [--tag NAME:TAG] [--archive FILE] [--check] [--check-only]
#
#   --tag NAME:TAG   image name (default xdp-fastpath:<workspace version>, as deploy/ uses)
#   --archive FILE   also write an OCI archive (for `ctr images import`, `skopeo copy`, ...)
#   --check          after building, mount the image's root filesystem (buildah mount) and
#                    run its entrypoint there with chroot: `--version` and `run --help`
#   --check-only     only the check, on an existing image
#
# OCI runtimes cannot start containers on the project's build machines (setrlimit is refused),
# so the check runs the entrypoint from the mounted root filesystem, not as a container.
# Needs root (buildah's storage, chroot), buildah and musl-tools (apt), and the Rust target
# x86_64-unknown-linux-musl (added with rustup when missing).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=x86_64-unknown-linux-musl
VERSION=$(awk -F'"' '/^\[workspace.package\]/ {p=1} p && /^version/ {print $2; exit}' Cargo.toml)
TAG="xdp-fastpath:${VERSION}"
ARCHIVE=""
CHECK=0
BUILD=1

say() { printf '[build-image] %s\n' "$*"; }
die() { printf '[build-image] error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --tag) TAG=${2:?--tag needs NAME:TAG}; shift 2 ;;
    --archive) ARCHIVE=${2:?--archive needs a file}; shift 2 ;;
    --check) CHECK=1; shift ;;
    --check-only) CHECK=1; BUILD=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (buildah's storage, chroot)"
command -v buildah >/dev/null || die "buildah not found: apt-get install buildah"
export PATH="$HOME/.cargo/bin:$PATH"

ctr=""
mnt_ctr=""
cleanup() {
  if [ -n "$mnt_ctr" ]; then
    buildah umount "$mnt_ctr" >/dev/null 2>&1 || true
    buildah rm "$mnt_ctr" >/dev/null 2>&1 || true
  fi
  if [ -n "$ctr" ]; then buildah rm "$ctr" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

if [ "$BUILD" -eq 1 ]; then
  say "checking the musl toolchain"
  rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
  # ring (rustls' crypto, for the kube source) has C and assembly: it needs a musl C compiler.
  command -v musl-gcc >/dev/null || die "musl-gcc not found: apt-get install musl-tools"

  say "building a static xdp-ctl ($TARGET, release)"
  CC_x86_64_unknown_linux_musl=musl-gcc \
    cargo build --release --locked --target "$TARGET" -p xdp-ctl --bin xdp-ctl
  BIN="target/$TARGET/release/xdp-ctl"
  [ -x "$BIN" ] || die "$BIN was not built"
  if file "$BIN" 2>/dev/null | grep -q 'dynamically linked'; then
    die "$BIN is dynamically linked; a FROM scratch image needs a static binary"
  fi
  say "binary: $BIN ($(du -h "$BIN" | cut -f1))"

  say "assembling $TAG from scratch"
  ctr=$(buildah from scratch)
  buildah copy --chmod 0755 "$ctr" "$BIN" /xdp-ctl >/dev/null
  buildah config \
    --entrypoint '["/xdp-ctl"]' \
    --cmd run \
    --env RUST_LOG=info \
    --label org.opencontainers.image.title=xdp-fastpath \
    --label org.opencontainers.image.version="$VERSION" \
    --label org.opencontainers.image.description="Pod-to-pod fast path for meshed traffic (xdp-ctl)" \
    --port 9465/tcp \
    "$ctr"
  buildah commit --quiet "$ctr" "$TAG" >/dev/null
  buildah rm "$ctr" >/dev/null
  ctr=""
  say "built $TAG ($(buildah images --format '{{.Size}}' "$TAG" | head -1))"
  if [ -n "$ARCHIVE" ]; then
    buildah push --quiet "$TAG" "oci-archive:${ARCHIVE}:${TAG}"
    say "wrote $ARCHIVE"
  fi
fi

if [ "$CHECK" -eq 1 ]; then
  say "check: mounting the root filesystem of $TAG"
  mnt_ctr=$(buildah from --pull-never "$TAG")
  mnt=$(buildah mount "$mnt_ctr")
  files=$(cd "$mnt" && find . -mindepth 1 | sort | tr '\n' ' ')
  say "rootfs holds: $files"
  [ "$files" = "./xdp-ctl " ] || die "the rootfs should hold /xdp-ctl only"
  entry=$(buildah inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$TAG")
  [ "$entry" = '[/xdp-ctl]' ] || die "unexpected entrypoint $entry"
  say "entrypoint: $entry"
  say "check: chroot $mnt /xdp-ctl --version"
  version_out=$(chroot "$mnt" /xdp-ctl --version)
  echo "$version_out"
  [ "$version_out" = "xdp-ctl $VERSION" ] || die "the entrypoint printed '$version_out'"
  say "check: chroot $mnt /xdp-ctl run --help"
  help_out=$(chroot "$mnt" /xdp-ctl run --help)
  echo "$help_out" | head -5
  echo "$help_out" | grep -q -- '--listen <ADDR>' || die "run --help does not show --listen"
  say "check passed (not run: the image as a container; OCI runtimes cannot start one here)"
fi
