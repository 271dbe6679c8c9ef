#!/usr/bin/env bash
# Builds the container images without an image registry:
#
#   meshgate:dev               the sidecar
#   meshgate-cp:dev            the control plane (meshgate-cp, and meshctl)
#   meshgate-wallet-node:dev   the Node sample app (node from Debian's nodejs)
#   meshgate-wallet-c:dev      the C sample app
#
# The binaries are built on this machine (release, debug info split off into
# target/images/debug/), and each image is one layer assembled from them plus
# files taken from Debian packages (`apt-get download` + `dpkg -x`): the C
# library and loader, libgcc, CA certificates, tzdata, a passwd/group with the
# non-root user 65532. No shell, no package manager: distroless style.
# `docker import` makes the image; nothing is pulled, and no builder
# (BuildKit or legacy) is needed.
#
# An image whose inputs (files, ownership, metadata) are unchanged is not
# rebuilt: each image carries the hash of its inputs as a label.
#
#   docker/build.sh                  build what changed
#   MESHGATE_IMAGE_TAG=ci docker/build.sh
#   MESHGATE_BUILD_SKIP_CARGO=1      use the release binaries already in target/
#
# Needs: cargo (rustc), gcc, apt-get/apt-cache/dpkg-deb (Debian 12 package sources),
# objcopy, docker. The packages come from the machine's apt sources.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
target="${CARGO_TARGET_DIR:-$root/target}"
work="$target/images"
tag="${MESHGATE_IMAGE_TAG:-dev}"
nonroot=65532
log() { echo "build.sh: $*" >&2; }

command -v docker >/dev/null || { log "docker is not installed"; exit 1; }
docker version --format '{{.Server.Version}}' >/dev/null \
  || { log "the Docker engine does not answer"; exit 1; }
mkdir -p "$work/debs" "$work/pkgs" "$work/debug" "$work/bin"

# ---- binaries --------------------------------------------------------------
if [[ -z "${MESHGATE_BUILD_SKIP_CARGO:-}" ]]; then
  log "release build (meshgate, meshgate-cp, meshctl)"
  # release-build.sh: the package set whose symbol names
  # sidecar/link/symbol-order.txt lists, and the execution profile (PGO).
  nice -n 10 "$root/docker/release-build.sh" --bin meshgate --bin meshgate-cp --bin meshctl
fi
for name in meshgate meshgate-cp meshctl; do
  src="$target/release/$name"
  [[ -x "$src" ]] || { log "$src is missing"; exit 1; }
  # The image gets the binary without debug info; the debug info stays here,
  # linked by build id, for symbolising a crash report.
  if [[ ! "$work/bin/$name" -nt "$src" ]]; then
    objcopy --only-keep-debug "$src" "$work/debug/$name.debug"
    objcopy --strip-all --add-gnu-debuglink="$work/debug/$name.debug" "$src" "$work/bin/$name.tmp"
    mv "$work/bin/$name.tmp" "$work/bin/$name"
  fi
done
if [[ ! "$work/bin/wallet-c" -nt "$root/test-harness/apps/c/wallet.c" ]]; then
  log "gcc test-harness/apps/c/wallet.c"
  gcc -O2 -Wall -Wextra -pthread -s -o "$work/bin/wallet-c" "$root/test-harness/apps/c/wallet.c"
fi

# ---- Debian packages -------------------------------------------------------
# The newest version the apt sources offer of each package (not a locally
# installed one that no source has), looked up once per run for all of them
# in one call: apt-cache is slow.
declare -A versions=()
load_versions() {
  local pkg v wanted=()
  for pkg in "$@"; do [[ -n "${versions[$pkg]:-}" ]] || wanted+=("$pkg"); done
  ((${#wanted[@]})) || return 0
  while IFS='|' read -r pkg v _; do
    pkg="${pkg// /}"; v="${v// /}"
    if [[ -z "${versions[$pkg]:-}" ]] || dpkg --compare-versions "$v" gt "${versions[$pkg]}"; then
      versions[$pkg]="$v"
    fi
  done < <(apt-cache madison "${wanted[@]}")
  for pkg in "$@"; do
    [[ -n "${versions[$pkg]:-}" ]] || { log "no apt source offers package $pkg"; exit 1; }
  done
}

# Unpacks a package (downloaded once, cached by version) into $work/pkgs/NAME
# and prints that directory.
unpack() {
  local pkg="$1" version deb dir
  [[ -n "${versions[$pkg]:-}" ]] || load_versions "$pkg"
  version="${versions[$pkg]}"
  dir="$work/pkgs/$pkg=$version"
  if [[ ! -d "$dir" ]]; then
    deb="$(find "$work/debs" -maxdepth 1 -name "${pkg}_*.deb" -print | while read -r f; do
      [[ "$(dpkg-deb -f "$f" Version)" == "$version" ]] && echo "$f"; done | head -n1)"
    if [[ -z "$deb" ]]; then
      # (apt warns that it downloads as root when run as root; noise here)
      (cd "$work/debs" && apt-get download -qq "$pkg=$version" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
      deb="$(find "$work/debs" -maxdepth 1 -name "${pkg}_*.deb" -print | while read -r f; do
        [[ "$(dpkg-deb -f "$f" Version)" == "$version" ]] && echo "$f"; done | head -n1)"
    fi
    dpkg-deb -x "$deb" "$dir.tmp"
    mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}

# The run-time library closure of packages: Depends (first alternative),
# followed only into libraries and node modules, which is what a program needs
# to run (not debconf, dpkg, perl: those serve package installation). One
# apt-cache call per level of the dependency tree.
closure() {
  local -A seen=()
  local level=("$@") next pkg dep specs
  while ((${#level[@]})); do
    next=()
    load_versions "${level[@]}"
    specs=()
    for pkg in "${level[@]}"; do seen[$pkg]=1; echo "$pkg"; specs+=("$pkg=${versions[$pkg]}"); done
    while read -r dep; do
      case "$dep" in
        lib* | node-* | zlib1g) [[ -n "${seen[$dep]:-}" || " ${next[*]} " == *" $dep "* ]] || next+=("$dep") ;;
      esac
    done < <(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
      --no-replaces --no-enhances "${specs[@]}" \
      | awk '/^  (Pre)?Depends:/ && $2 !~ /^</ {print $2}')
    level=("${next[@]}")
  done
}

# Copies a package's files into a root filesystem, leaving out what only
# serves people or package management (docs except copyright, manuals,
# translations, character-set converters).
install_pkg() {
  local dir rootfs="$2"
  dir="$(unpack "$1")"
  tar -C "$dir" -c \
    --exclude='./usr/share/doc/*/[!c]*' --exclude='./usr/share/man' \
    --exclude='./usr/share/info' --exclude='./usr/share/lintian' \
    --exclude='./usr/share/locale' --exclude='./usr/share/bug' \
    --exclude='*/gconv' --exclude='./usr/share/zoneinfo/right' \
    --exclude='./etc/ld.so.conf.d' --exclude='./usr/sbin' --exclude='./sbin' \
    --exclude='./usr/bin/tzselect' --exclude='./usr/share/ca-certificates' \
    --exclude='./usr/bin/x86_64-linux-gnu-*' --exclude='./usr/share/gdb' \
    . | tar -C "$rootfs" -x
}

# The files every image has: C library, CA bundle, time zones, users.
base_rootfs() {
  local rootfs="$1" pkg certs
  rm -rf "$rootfs"
  load_versions libc6 libgcc-s1 tzdata ca-certificates
  mkdir -p "$rootfs"/{etc/ssl/certs,tmp,home/nonroot,root}
  for pkg in libc6 libgcc-s1 tzdata; do install_pkg "$pkg" "$rootfs"; done
  # What update-ca-certificates would generate at install time: the bundle of
  # the Mozilla roots the package ships.
  certs="$(unpack ca-certificates)"
  cat "$certs"/usr/share/ca-certificates/mozilla/*.crt >"$rootfs/etc/ssl/certs/ca-certificates.crt"
  mkdir -p "$rootfs/usr/share/doc/ca-certificates"
  cp "$certs/usr/share/doc/ca-certificates/copyright" "$rootfs/usr/share/doc/ca-certificates/"
  cat >"$rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:$nonroot:$nonroot:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$rootfs/etc/group" <<EOF
root:x:0:
nogroup:x:65534:
nonroot:x:$nonroot:
EOF
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
  printf 'PRETTY_NAME="meshgate (Debian %s files)"\n' "$(cat /etc/debian_version 2>/dev/null || echo 12)" \
    >"$rootfs/etc/os-release"
  chmod 1777 "$rootfs/tmp"
  chmod 0700 "$rootfs/root"
}

# Fails unless every shared library the program needs resolves inside rootfs.
check_libs() {
  local rootfs="$1" program="$2" listing
  listing="$("$rootfs/lib64/ld-linux-x86-64.so.2" \
    --library-path "$rootfs/lib/x86_64-linux-gnu:$rootfs/usr/lib/x86_64-linux-gnu" \
    --list "$rootfs$program")" || { log "$program: cannot list its libraries"; exit 1; }
  if grep -v -e "=> $rootfs/" -e 'linux-vdso' -e '^[[:space:]]*/lib64/ld-linux' <<<"$listing" | grep -q .; then
    log "$program needs libraries the image lacks:"; echo "$listing" >&2; exit 1
  fi
}

# import IMAGE ROOTFS WRITABLE_DIRS CHANGES...: one layer, files owned by root
# except WRITABLE_DIRS (space-separated, owned by the non-root user).
import_image() {
  local image="$1" rootfs="$2" writable="$3"; shift 3
  local changes=("$@") tarball hash current args=() c d
  tarball="$work/$(tr ':/' '__' <<<"$image").tar"
  # Sorted, with fixed owners and times: the same inputs make the same tarball.
  tar -C "$rootfs" --sort=name --owner=0 --group=0 --numeric-owner \
    --mtime='2000-01-01 00:00Z' -cf "$tarball" .
  for d in $writable; do
    mkdir -p "$work/writable/$d"
    chmod 0755 "$work/writable/$d"
    tar -C "$work/writable" --owner=$nonroot --group=$nonroot --numeric-owner \
      --mtime='2000-01-01 00:00Z' --no-recursion -rf "$tarball" "./$d"
  done
  hash="$( (sha256sum <"$tarball"; printf '%s\n' "${changes[@]}") | sha256sum | cut -c1-32)"
  current="$(docker image inspect -f '{{index .Config.Labels "org.meshgate.inputs"}}' "$image" 2>/dev/null || true)"
  if [[ "$current" == "$hash" ]]; then
    log "$image is up to date"
  else
    for c in "${changes[@]}" "LABEL org.meshgate.inputs=$hash"; do args+=(--change "$c"); done
    docker import "${args[@]}" "$tarball" "$image" >/dev/null
    log "$image built ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1/1e6}'))"
  fi
  rm -f "$tarball"
}

# ---- meshgate ---------------------------------------------------------------
rootfs="$work/rootfs/meshgate"
base_rootfs "$rootfs"
install -D -m 0755 "$work/bin/meshgate" "$rootfs/usr/local/bin/meshgate"
check_libs "$rootfs" /usr/local/bin/meshgate
# Writable places owned by the runtime user: last applied config, upgrade socket.
import_image "meshgate:$tag" "$rootfs" "var/lib/meshgate run/meshgate" \
  "USER $nonroot:$nonroot" \
  "ENV PATH=/usr/local/bin:/usr/bin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
  "EXPOSE 15006 15021" \
  'ENTRYPOINT ["/usr/local/bin/meshgate"]' \
  'CMD ["--config", "/etc/meshgate/sidecar.yaml", "--state-dir", "/var/lib/meshgate"]'

# ---- meshgate-cp --------------------------------------------------------------
rootfs="$work/rootfs/meshgate-cp"
base_rootfs "$rootfs"
install -D -m 0755 "$work/bin/meshgate-cp" "$rootfs/usr/local/bin/meshgate-cp"
install -D -m 0755 "$work/bin/meshctl" "$rootfs/usr/local/bin/meshctl"
check_libs "$rootfs" /usr/local/bin/meshgate-cp
check_libs "$rootfs" /usr/local/bin/meshctl
import_image "meshgate-cp:$tag" "$rootfs" "var/lib/meshgate-cp" \
  "USER $nonroot:$nonroot" \
  "ENV PATH=/usr/local/bin:/usr/bin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
  "EXPOSE 18000 18001" \
  'ENTRYPOINT ["/usr/local/bin/meshgate-cp"]' \
  'CMD ["serve", "--data-dir", "/var/lib/meshgate-cp", "--grpc", "0.0.0.0:18000", "--admin", "0.0.0.0:18001", "--token-file", "/run/secrets/meshgate-cp-token"]'

# ---- the Node sample app --------------------------------------------------------
rootfs="$work/rootfs/wallet-node"
base_rootfs "$rootfs"
# (not `mapfile < <(closure)`: the versions it loads must stay in this shell)
closure nodejs libnode108 >"$work/node-packages"
mapfile -t node_pkgs <"$work/node-packages"
log "node packages: ${node_pkgs[*]}"
for pkg in "${node_pkgs[@]}"; do install_pkg "$pkg" "$rootfs"; done
# nodejs's own programs besides node (npm, corepack) are not needed.
find "$rootfs/usr/bin" -mindepth 1 ! -name node ! -name nodejs -delete
install -D -m 0644 "$root/test-harness/apps/node/wallet.js" "$rootfs/app/wallet.js"
check_libs "$rootfs" /usr/bin/node
import_image "meshgate-wallet-node:$tag" "$rootfs" "" \
  "USER $nonroot:$nonroot" \
  "WORKDIR /app" \
  "ENV PATH=/usr/bin:/bin PORT=8080 HOST=127.0.0.1 EGRESS=127.0.0.1:15001 PEER_HOST=wallet-peer.internal" \
  "EXPOSE 8080" \
  'CMD ["/usr/bin/node", "/app/wallet.js"]'

# ---- the C sample app ---------------------------------------------------------------
rootfs="$work/rootfs/wallet-c"
base_rootfs "$rootfs"
install -D -m 0755 "$work/bin/wallet-c" "$rootfs/app/wallet"
check_libs "$rootfs" /app/wallet
import_image "meshgate-wallet-c:$tag" "$rootfs" "" \
  "USER $nonroot:$nonroot" \
  "WORKDIR /app" \
  "ENV PATH=/usr/bin:/bin PORT=8080 HOST=127.0.0.1 EGRESS=127.0.0.1:15001 PEER_HOST=wallet-peer.internal" \
  "EXPOSE 8080" \
  'CMD ["/app/wallet"]'

# ---- development credentials for the compose pod -------------------------------
# Random per checkout, never committed. Readable by every user (0644) because
# the containers' non-root user must read them through a bind mount; the
# directory is private (0700) on this machine. Development only.
secrets="$here/.dev-secrets"
if ! grep -qs '^tokens:' "$secrets/xds-tokens.yaml"; then
  log "generating development credentials in docker/.dev-secrets/"
  mkdir -p "$secrets"
  chmod 0700 "$secrets"
  random_token() { head -c 24 /dev/urandom | base64 | tr '+/' '-_'; }
  random_token >"$secrets/cp-admin-token"
  random_token >"$secrets/xds-token"
  # meshgate-cp --xds-tokens: token -> the services it may fetch.
  printf '# Development only (docker/build.sh).\ntokens:\n  - token: "%s"\n    services: [wallet]\n' "$(cat "$secrets/xds-token")" \
    >"$secrets/xds-tokens.yaml.tmp"
  mv "$secrets/xds-tokens.yaml.tmp" "$secrets/xds-tokens.yaml"
  chmod 0644 "$secrets"/*
fi

docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^meshgate(-cp|-wallet-node|-wallet-c)?:$tag " >&2 || true
