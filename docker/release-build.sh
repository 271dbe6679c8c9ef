#!/usr/bin/env bash
# The release build the images ship (docker/build.sh, docker/Dockerfile) and
# the benchmarks measure (test-harness/bench/compare.py, memory.py):
#
#   cargo build --release --locked -p meshgate -p meshgate-control-plane [ARGS...]
#
# optimised with the sidecar's execution profile (profile-guided
# optimisation, PGO): sidecar/link/meshgate.profdata holds how often each
# branch and call ran while a release meshgate served the benchmark
# scenarios (written by test-harness/bench/pgo.py), and rustc's LLVM lays out
# and inlines the hot paths by it (BENCHMARKS.md: about a quarter less user
# time per pass-through request). The profile is only read by the LLVM
# version that wrote it or a newer one; with an older one, or with
# MESHGATE_NO_PGO set, the build goes on without it (and says so). A stale
# profile is safe: functions whose code changed since are compiled as if
# unprofiled.
#
# The package set decides the features cargo unifies and so the symbol names
# that sidecar/link/symbol-order.txt and the profile list: keep it as it is.
#
#   docker/release-build.sh [cargo build args]
#   docker/release-build.sh --rustflags     print the flags it adds (or nothing)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
profile="$root/sidecar/link/meshgate.profdata"
about="$root/sidecar/link/meshgate.profdata.txt"
target="${CARGO_TARGET_DIR:-$root/target}"
log() { echo "release-build.sh: $*" >&2; }

pgo_flags() {
  [[ -z "${MESHGATE_NO_PGO:-}" ]] || { log "MESHGATE_NO_PGO is set: building without the profile"; return 0; }
  [[ -f "$profile" && -f "$about" ]] || { log "no profile at $profile: building without it"; return 0; }
  local wrote have
  wrote="$(sed -n 's/^llvm \([0-9][0-9]*\).*/\1/p' "$about")"
  have="$(rustc -vV | sed -n 's/^LLVM version: \([0-9][0-9]*\).*/\1/p')"
  if [[ -z "$wrote" || -z "$have" || "$have" -lt "$wrote" ]]; then
    log "the profile was written by LLVM ${wrote:-?}, rustc has LLVM ${have:-?}: building without it"
    return 0
  fi
  # A path that names the content: cargo rebuilds when the flags change, and
  # would not notice a new profile at the same path.
  local sum copy
  sum="$(sha256sum "$profile" | cut -c1-16)"
  copy="$target/pgo/meshgate-$sum.profdata"
  if [[ ! -f "$copy" ]]; then
    mkdir -p "$target/pgo"
    cp "$profile" "$copy.tmp" && mv "$copy.tmp" "$copy"
  fi
  printf '%s' "-Cprofile-use=$copy"
}

if [[ "${1:-}" == "--rustflags" ]]; then
  pgo_flags
  echo
  exit 0
fi

flags="$(pgo_flags)"
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }$flags"
cd "$root"
exec cargo build --release --locked -p meshgate -p meshgate-control-plane "$@"
