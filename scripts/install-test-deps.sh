#!/usr/bin/env bash
# Installs what the checks and end-to-end tests need, only where it is missing:
# every item is probed first, so a machine that has everything does no network.
# Called by scripts/test.sh; safe to run again at any time.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: "command that proves it is installed:package".
# redis-server also runs the sentinels of the Sentinel tests
# (`redis-server sentinel.conf --sentinel`), and redis-cli creates their
# Redis Cluster (`--cluster create`); both are probed below.
apt_packages=(
  "redis-server:redis-server"
  "redis-cli:redis-tools"
  "etcd:etcd-server"
  "etcdctl:etcd-client"
  "node:nodejs"
  "javac:default-jdk-headless"
  "gcc:gcc"
  "python3:python3"
)

# PyPI packages, independent implementations for the interop tests and the gRPC
# client of the xDS layout test: "module that proves it is installed:package".
pip_packages=(
  "http_message_signatures:http-message-signatures"
  "jwt:PyJWT"
  "cryptography:cryptography"
  "requests:requests"
  "grpc:grpcio"
  "grpc_tools:grpcio-tools"
  "alipay:alipay-sdk-python"
)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "install-test-deps: need root (or sudo) to run: $*" >&2
    return 1
  fi
}

apt_updated=no
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: missing $*; install them with your package manager" >&2
    exit 1
  fi
  echo "install-test-deps: apt-get install $*"
  if [ "$apt_updated" = no ]; then
    as_root apt-get update -qq
    apt_updated=yes
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

missing=()
for entry in "${apt_packages[@]}"; do
  command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry#*:}")
done
# pip itself, and venv for docker/lint.sh (Debian ships both separately).
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi

# The Python packages among pip_packages whose module python3 cannot find
# (found without importing, which keeps the probe cheap).
missing_pip() {
  python3 - "${pip_packages[@]}" <<'PY'
import importlib.util, sys
for entry in sys.argv[1:]:
    module, package = entry.split(":", 1)
    if importlib.util.find_spec(module) is None:
        print(package)
PY
}

mapfile -t missing < <(missing_pip)
if [ ${#missing[@]} -gt 0 ]; then
  pip_args=(install --quiet --disable-pip-version-check --root-user-action=ignore)
  # A distribution's own Python (Debian 12+) refuses installs outside a venv
  # (PEP 668); the tests need the packages in the python3 they run.
  if python3 - <<'PY'
import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if os.path.exists(marker) and sys.prefix == sys.base_prefix else 1)
PY
  then
    pip_args+=(--break-system-packages)
    [ "$(id -u)" -eq 0 ] || pip_args+=(--user)
  fi
  echo "install-test-deps: pip install ${missing[*]}"
  python3 -m pip "${pip_args[@]}" "${missing[@]}"
fi

# rustfmt and clippy for the checks in scripts/test.sh.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  echo "install-test-deps: rustup component add rustfmt clippy"
  rustup component add rustfmt clippy
fi

# Everything must be there now; a tool that is still missing fails here, not
# as a confusing test failure later.
status=0
# The replicated-Redis tests need Redis >= 5 (cluster creation by redis-cli)
# with Sentinel mode built in.
if command -v redis-server >/dev/null 2>&1; then
  # (`--cluster help` exits 1 even where it works: read what it prints)
  [[ "$(redis-cli --cluster help 2>&1 || true)" == *"create"* ]] \
    || { echo "install-test-deps: redis-cli has no --cluster (Redis >= 5 needed)" >&2; status=1; }
  [[ "$(redis-server --help 2>&1 || true)" == *"--sentinel"* ]] \
    || { echo "install-test-deps: redis-server has no Sentinel mode" >&2; status=1; }
fi
for entry in "${apt_packages[@]}"; do
  command -v "${entry%%:*}" >/dev/null 2>&1 \
    || { echo "install-test-deps: ${entry%%:*} (${entry#*:}) is still missing" >&2; status=1; }
done
for package in $(missing_pip); do
  echo "install-test-deps: Python package $package is still missing" >&2
  status=1
done
exit "$status"
