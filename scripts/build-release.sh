#!/usr/bin/env bash
# The release build of the `berth` binary, and the only one: the Dockerfile's builder stage runs
# this script, and so does anyone packaging Berth by hand.
#
#   scripts/build-release.sh [OUT_DIR]     (default OUT_DIR: dist)
#
# OUT_DIR gets `berth` and `registry`, a symlink to it: started under that name, the binary
# takes distribution's command line (`registry serve CONFIG`, `registry garbage-collect ...`),
# so scripts and cron jobs written for distribution run unchanged.
#
# It builds exactly what CI compiles and tests (`cargo nextest run --workspace --locked`): the
# package `berth` from Cargo.lock (--locked), for the host target, with the default features
# and no extra RUSTFLAGS. The only difference is the profile: `release` (Cargo.toml's
# [profile.release]) instead of `dev`. crates/berth/tests/deploy.rs checks that the Dockerfile
# runs this script and that this script stays that one cargo invocation.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"

cargo build --release --locked -p berth --bin berth

target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$out"
install -m 0755 "$target_dir/release/berth" "$out/berth"
ln -sfn berth "$out/registry"
"$out/berth" --version
"$out/registry" --version
