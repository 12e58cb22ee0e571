#!/usr/bin/env bash
# A real Triton Inference Server (2.51, from the PyPI wheel nvidia-pytriton)
# serving one .onnx model on the CPU, bound to 127.0.0.1 only, for tests and
# for trying --backend triton without a GPU.
#
#   scripts/triton-server.sh start MODEL.onnx DIR [HTTP_PORT]
#       starts it in the background (DIR: its work folder, made here), waits
#       until the model itself is ready, prints "http://127.0.0.1:PORT" and
#       writes the server's PID to DIR/pid. The model's name is "instrument";
#       its config carries parameters.model_sha256 (the file's sha256), which
#       the daemon checks. Give HTTP_PORT to restart on the same address.
#       TRITON_INSTANCES=N runs N model instances (default 1), each one thread;
#       TRITON_MAX_BATCH=N sets the model's max_batch_size (default 64).
#   scripts/triton-server.sh stop DIR
#       stops it by its PID (SIGTERM, then SIGKILL after 15 s) and waits.
#
# The wheel ships only Triton's Python backend, so the model runs through
# onnxruntime inside it (model.py below); a production server would use the
# onnxruntime backend with the same config otherwise. The venv is made by
# scripts/setup-triton.sh (scripts/test.sh runs it).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${TRITON_VENV:-$ROOT/.venv-triton}

stop() {
  local dir=$1 pid
  [ -f "$dir/pid" ] || { echo "no server recorded in $dir" >&2; return 1; }
  pid=$(cat "$dir/pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$dir/pid"; return 0; }
    sleep 0.25
  done
  kill -KILL "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$dir/pid"
}

start() {
  local model dir port
  model=$(realpath "$1"); dir=$2; port=${3:-}
  [ -x "$VENV/bin/python" ] || { echo "no Triton venv at $VENV: run scripts/setup-triton.sh" >&2; exit 1; }
  local sp pyver pylib
  sp=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  pyver=$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  # The backend stub links libpython: make it the venv's own, not the system's.
  pylib=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
  mkdir -p "$dir/repo/instrument/1" "$dir/backends"
  dir=$(realpath "$dir")
  rm -rf "$dir/backends/python"
  cp -r "$sp/pytriton/tritonserver/backends/python" "$dir/backends/"
  cp "$sp/pytriton/tritonserver/python_backend_stubs/$pyver/triton_python_backend_stub" "$dir/backends/python/"
  cp "$model" "$dir/repo/instrument/1/model.onnx"
  "$VENV/bin/python" - "$model" "$dir/repo/instrument" <<'PY'
import hashlib, json, os, sys, onnxruntime as ort
model, out = sys.argv[1], sys.argv[2]
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
size = int(meta["input_size"])
o = session.get_outputs()[0]
width = o.shape[1]
sha = hashlib.sha256(open(model, "rb").read()).hexdigest()
open(f"{out}/config.pbtxt", "w").write(f"""name: "instrument"
backend: "python"
max_batch_size: {os.environ.get("TRITON_MAX_BATCH", "64")}
input [ {{ name: "{session.get_inputs()[0].name}" data_type: TYPE_FP32 dims: [ 3, {size}, {size} ] }} ]
output [ {{ name: "{o.name}" data_type: TYPE_FP32 dims: [ {width} ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
instance_group [ {{ kind: KIND_CPU count: {os.environ.get("TRITON_INSTANCES", "1")} }} ]
parameters: {{ key: "model_sha256" value: {{ string_value: "{sha}" }} }}
""")
PY
  cat > "$dir/repo/instrument/1/model.py" <<'PY'
import os, numpy as np, onnxruntime as ort
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        path = os.path.join(os.path.dirname(__file__), "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name

    def execute(self, requests):
        # Triton hands over the requests its batcher merged: run them as one batch.
        xs = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        y = self.session.run(None, {self.input: np.concatenate(xs)})[0]
        answers, i = [], 0
        for x in xs:
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, y[i:i + len(x)])]))
            i += len(x)
        return answers
PY
  free_port() { "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  [ -n "$port" ] || port=$(free_port)
  local grpc
  grpc=$(free_port)
  # setsid: its own session, so the caller's Ctrl-C does not reach it and
  # `stop` is the one way it ends. The pid file is written by the process
  # that then becomes tritonserver (setsid may fork, so $! is not it).
  rm -f "$dir/pid"
  PATH="$VENV/bin:$PATH" LD_LIBRARY_PATH="$pylib:$sp/nvidia_pytriton.libs" setsid sh -c 'echo $$ > "$0/pid"; shift; exec "$@"' \
    "$dir" - "$sp/pytriton/tritonserver/bin/tritonserver" --model-repository="$dir/repo" --backend-directory="$dir/backends" \
    --http-address=127.0.0.1 --http-port="$port" --grpc-address=127.0.0.1 --grpc-port="$grpc" \
    --allow-metrics=false --exit-timeout-secs=5 >"$dir/server.log" 2>&1 < /dev/null &
  for _ in $(seq 1 50); do [ -s "$dir/pid" ] && break; sleep 0.1; done
  # /v2/health/ready answers before the model is loaded: wait for the model
  # (about 60 s at most: each look waits at most 0.25 s more).
  for _ in $(seq 1 120); do
    if "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=0.25)' \
        "http://127.0.0.1:$port/v2/models/instrument/ready" 2>/dev/null; then
      echo "http://127.0.0.1:$port"
      return 0
    fi
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "tritonserver exited; its log:" >&2; cat "$dir/server.log" >&2; exit 1
    fi
    sleep 0.25
  done
  echo "tritonserver did not load the model in 60 s; its log:" >&2
  cat "$dir/server.log" >&2
  stop "$dir"
  exit 1
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 start MODEL.onnx DIR [HTTP_PORT] | stop DIR" >&2; exit 2 ;;
esac
