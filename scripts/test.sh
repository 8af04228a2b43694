#!/usr/bin/env bash
# The project's test command (README, CI): installs the external programs the tests use when
# they are missing (Debian packages: skopeo, podman, buildah, umoci, docker-registry, ...),
# then checks formatting and lints and runs every test of the workspace with real clients and
# a real distribution 2.8 started on loopback by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

# distribution 2.8 refuses to start with stray REGISTRY_* variables; the test harness removes
# them for that process only. Berth must tolerate them, so they stay set for everything else.

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
