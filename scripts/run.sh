#!/usr/bin/env bash
# Sets everything up on a fresh Debian machine with Rust, then runs the daemon
# on watch/ with the shipped model. Extra arguments go to `watch`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-python.sh >/dev/null
scripts/setup-system.sh
source scripts/env.sh
# `cargo run` finds the binary wherever CARGO_TARGET_DIR puts it.
exec cargo run --quiet --release --bin instrument-detector -- watch watch/ "$@"
