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

# The fuzz crate is not a workspace member (cargo fuzz builds it alone): check that it still
# builds against the crates, then replay every target's corpus and a few seconds of random
# mutations on stable (see docs/ARCHITECTURE.md, "Hardening"). It shares the target directory,
# so the crates are not compiled twice.
echo "== fuzz crate"
fuzz_target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --locked --target-dir "$fuzz_target_dir" -- -D warnings
cargo run --manifest-path fuzz/Cargo.toml --locked -q --target-dir "$fuzz_target_dir" --bin run_corpus -- --seconds 3

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
