#!/usr/bin/env bash
# Sets everything up on a fresh Debian machine with Rust (ONNX Runtime and
# PyTorch in .venv, the Lite0 weights, Debian's chromium for the report and web page tests,
# libheif and the HEIC/AVIF/JPEG XL encoders for the format tests, a real
# Triton server in .venv-triton for the --backend triton tests),
# then runs the whole test suite: the daemon, the engines, the training crate.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-python.sh --training >/dev/null
scripts/setup-system.sh --test-tools
scripts/setup-triton.sh
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium; } >/dev/null 2>&1; then
    echo "warning: could not install chromium; the report and web page browser checks will be skipped" >&2
    export INSTRUMENT_DETECTOR_NO_BROWSER=1
  fi
fi
source scripts/env.sh
cargo test --release --workspace "$@"
