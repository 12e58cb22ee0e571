#!/usr/bin/env bash
# Sets everything up on a fresh Debian machine with Rust (ONNX Runtime and
# PyTorch in .venv, the Lite0 weights), then runs the whole test suite:
# the daemon, the engines, and the training crate.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-python.sh --training >/dev/null
source scripts/env.sh
cargo test --release --workspace "$@"
