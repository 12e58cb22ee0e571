#!/usr/bin/env bash
# Creates .venv-triton: a real Triton Inference Server 2.51 (inside the PyPI
# wheel nvidia-pytriton 0.7.0, which runs on the CPU) with onnxruntime for its
# Python backend, for the --backend triton tests (scripts/triton-server.sh
# starts it). A venv of its own: the wheel pins numpy<2. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TRITON_VENV:-.venv-triton}
PY=${PYTHON:-python3}
if "$VENV/bin/python" -c "import pytriton, onnxruntime" 2>/dev/null; then
  exit 0
fi
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check nvidia-pytriton==0.7.0 onnxruntime==1.31.1 'numpy<2'
