# Sourced by the scripts: points the build and the binaries at the project's
# .venv (ONNX Runtime for the daemon, libtorch for `training`).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SITE=$(ls -d "$ROOT"/.venv/lib/python3*/site-packages 2>/dev/null | head -1)
if [ -n "$SITE" ]; then
  ORT_LIB=$(ls "$SITE"/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -1)
  [ -n "${ORT_LIB:-}" ] && export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$ORT_LIB}
  if [ -d "$SITE/torch/lib" ]; then
    export LIBTORCH_USE_PYTORCH=1
    export LD_LIBRARY_PATH="$SITE/torch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  # tch's build script runs `python3` to find torch: make it the venv's.
  export PATH="$ROOT/.venv/bin:$PATH"
fi
