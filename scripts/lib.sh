# shellcheck shell=bash
# Shared by the scripts: messages and option parsing. Not run on its own; a script sets TAG (the
# prefix of its messages) and, if it has a usage text, PROG and HELP (how to ask for it), then:
#   TAG=bench-compare
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

say() { printf '[%s] %s\n' "$TAG" "$*" 2>/dev/null || true; }
step() { printf '\n[%s] === %s\n' "$TAG" "$*" 2>/dev/null || true; }
warn() { printf '[%s] WARNING: %s\n' "$TAG" "$*" >&2; }
die() {
  printf '[%s] error: %s\n' "$TAG" "$*" >&2
  exit 1
}
# A bad command line: exit status 2, and where to read the usage.
usage_error() {
  printf '[%s] error: %s\n' "$TAG" "$*" >&2
  printf "Run '%s %s' for usage.\n" "${PROG:-$0}" "${HELP:---help}" >&2
  exit 2
}
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# opt_arg "$@": the value of an option given as `--name VALUE` or `--name=VALUE`, in OPTVAL, and
# in OPTSHIFT how many arguments that took. In a `while [ $# -gt 0 ]; case "$1" in` loop:
#   --trials | --trials=*) opt_arg "$@"; TRIALS=$OPTVAL; shift "$OPTSHIFT" ;;
opt_arg() {
  case "$1" in
    --*=*)
      OPTVAL=${1#*=}
      OPTSHIFT=1
      ;;
    *)
      [ $# -ge 2 ] || usage_error "$1 needs a value"
      OPTVAL=$2
      OPTSHIFT=2
      ;;
  esac
}

# need_tools TOOL...: dies naming the first one missing from PATH.
need_tools() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || die "'$t' not found (scripts/bootstrap.sh installs it)"
  done
}
