#!/usr/bin/env bash
# Runs every check and test: formatting, lints, unit tests and the end-to-end
# tests that spawn the real meshgate binary, real apps and a real redis-server.
# First installs whatever the tests need and is missing (see
# scripts/install-test-deps.sh), so it passes on a fresh machine by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests spawn the binaries; build them first.
cargo build --workspace --bins
bash docker/lint.sh
# The container images (release build + Debian package files, no registry);
# the container tests use them (and would build them themselves otherwise).
bash docker/build.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
