#!/usr/bin/env bash
# The GPU check, for whoever has an NVIDIA GPU: one prepared run that prints
# one summary table. Under 10 minutes on one GPU once the binaries are built
# (each step has its own time limit: 12 minutes together, plus at most 5 for
# the pip install).
#
#   scripts/gpu-check.sh            (from the repository root)
#
# What it does, each step reported as a row (a step that cannot run says why
# and the others still run):
#   1. the GPU (nvidia-smi);
#   2. ONNX Runtime with CUDA: an onnxruntime-gpu already importable, else
#      `pip install onnxruntime-gpu==1.31.1` into .venv-gpu (needs PyPI);
#   3. `classify` on --backend cuda against --backend ort-cpu on the same
#      photos: top-1 equal, the largest confidence difference;
#   4. `evaluate` on both backends (accuracy must be equal);
#   5. the daemon end to end on cuda and on ort-cpu (scripts/bench_e2e.py);
#   6. two epochs of the `training` binary on CUDA (needs torch with CUDA in
#      .venv, the Lite0 weights, and cargo to build it).
#
# Photos: DATA (a folder with valid/, each <label>/<photo>; every check
# uses valid/, and the training step learns and validates on it too: a check
# of the CUDA path, not a model),
# default ../shared/data/instruments, else gpu-data/ in the repository (copy
# the dataset's test and valid splits there to carry them to a machine without
# ../shared). MODEL: default models/instrument-lite2.onnx. Writes its files
# under OUT (default /tmp/gpu-check).
#
# REHEARSE=1 runs every step on a machine without a GPU, with ort-cpu in the
# place of cuda: it checks the script, not the GPU (the table says so).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/gpu-check}
MODEL=${MODEL:-$ROOT/models/instrument-lite2.onnx}
mkdir -p "$OUT"
ROWS=()
row() { ROWS+=("$(printf '| %-34s | %-6s | %s |' "$1" "$2" "$3")"); echo "[$2] $1: $3"; }
finish() {
  echo
  echo "== GPU check summary ($(date -u +%FT%TZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
  printf '| %-34s | %-6s | %s |\n' "check" "result" "detail"
  printf '|%s|%s|%s|\n' "------------------------------------" "--------" "------"
  printf '%s\n' "${ROWS[@]}"
}
trap finish EXIT

GPU_BACKEND=cuda
if [ "${REHEARSE:-0}" = 1 ]; then
  GPU_BACKEND=ort-cpu
  row "REHEARSAL" note "no GPU used: ort-cpu stands in for cuda in every row below"
fi

# 1. The GPU.
if [ "${REHEARSE:-0}" = 1 ]; then
  row "NVIDIA GPU" skip "rehearsal"
elif command -v nvidia-smi >/dev/null && GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1) && [ -n "$GPU" ]; then
  row "NVIDIA GPU" ok "$GPU"
else
  row "NVIDIA GPU" FAIL "nvidia-smi finds no GPU: nothing else to check"
  exit 1
fi

# 2. ONNX Runtime with the CUDA provider.
ort_gpu_site() { # a site-packages whose onnxruntime has CUDAExecutionProvider
  local py
  for py in "$ROOT/.venv-gpu/bin/python" "$ROOT/.venv/bin/python" python3; do
    if "$py" -c 'import onnxruntime, sys; sys.exit("CUDAExecutionProvider" not in onnxruntime.get_available_providers())' 2>/dev/null; then
      "$py" -c 'import onnxruntime, os; print(os.path.dirname(os.path.dirname(onnxruntime.__file__)))'
      return 0
    fi
  done
  return 1
}
if [ "${REHEARSE:-0}" = 1 ]; then
  SITE=$(ls -d "$ROOT"/.venv/lib/python3*/site-packages | head -1)
elif ! SITE=$(ort_gpu_site); then
  echo "installing onnxruntime-gpu into .venv-gpu..."
  python3 -m venv "$ROOT/.venv-gpu" && timeout 300 "$ROOT/.venv-gpu/bin/pip" install -q "onnxruntime-gpu[cuda,cudnn]==1.31.1" >"$OUT/pip.log" 2>&1 \
    || timeout 300 "$ROOT/.venv-gpu/bin/pip" install -q "onnxruntime-gpu==1.31.1" >>"$OUT/pip.log" 2>&1
  SITE=$(ort_gpu_site) || SITE=
fi
if [ -z "$SITE" ]; then
  row "onnxruntime-gpu" FAIL "not importable with CUDAExecutionProvider, and pip could not install it (see $OUT/pip.log)"
  exit 1
fi
ORT_GPU_LIB=$(ls "$SITE"/onnxruntime/capi/libonnxruntime.so.* | head -1)
# The CUDA and cuDNN libraries that pip's nvidia-* packages bring, for the dynamic loader.
NV_LIBS=$(ls -d "$SITE"/nvidia/*/lib "$SITE"/nvidia/*/*/lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH="${NV_LIBS}${LD_LIBRARY_PATH:-}"
row "onnxruntime-gpu" ok "$ORT_GPU_LIB"

# The binaries: as built here, or built now.
BIN=$ROOT/target/release/instrument-detector
if [ ! -x "$BIN" ]; then
  if command -v cargo >/dev/null; then
    (source scripts/env.sh && cargo build --release --quiet) >"$OUT/build.log" 2>&1 || true
  fi
fi
if [ ! -x "$BIN" ]; then
  row "instrument-detector binary" FAIL "not built, and cargo could not build it (see $OUT/build.log)"
  exit 1
fi
CPU_LIB=${ORT_DYLIB_PATH:-$(ls "$ROOT"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -1)}
[ -n "$CPU_LIB" ] || CPU_LIB=$ORT_GPU_LIB   # the GPU build runs on the CPU too

DATA=${DATA:-}
for d in "$ROOT/../shared/data/instruments" "$ROOT/gpu-data"; do
  [ -z "$DATA" ] && [ -d "$d/valid" ] && DATA=$d
done
if [ -z "$DATA" ]; then
  row "photos" FAIL "no DATA with valid/ (../shared/data/instruments or gpu-data/)"
  exit 1
fi

# 3. classify: cuda against ort-cpu.
if timeout 90 "$BIN" -q classify --model "$MODEL" --backend $GPU_BACKEND --ort-lib "$ORT_GPU_LIB" --json --top 5 "$DATA/valid" >"$OUT/cuda.jsonl" 2>"$OUT/cuda.err" \
  && timeout 90 "$BIN" -q classify --model "$MODEL" --backend ort-cpu --ort-lib "$CPU_LIB" --json --top 5 "$DATA/valid" >"$OUT/cpu.jsonl" 2>"$OUT/cpu.err"; then
  CMP=$(python3 - "$OUT/cuda.jsonl" "$OUT/cpu.jsonl" "$GPU_BACKEND" <<'PY'
import json, sys
g = {r["path"]: r for r in map(json.loads, open(sys.argv[1]))}
want = sys.argv[3]
c = {r["path"]: r for r in map(json.loads, open(sys.argv[2]))}
same = sum(g[p]["label"] == c[p]["label"] for p in c)
diff = max(abs(a["confidence"] - b["confidence"]) for p in c for a, b in zip(g[p]["topk"], c[p]["topk"]))
backends = {r["backend"] for r in g.values()}
print(f"{same}/{len(c)} top-1 equal, max confidence difference {diff:.2e}, backend {','.join(sorted(backends))}")
sys.exit(0 if same == len(c) and backends == {want} else 1)
PY
  ) && row "classify cuda = ort-cpu" ok "$CMP" || row "classify cuda = ort-cpu" FAIL "$CMP"
else
  row "classify cuda = ort-cpu" FAIL "$(tail -2 "$OUT/cuda.err" "$OUT/cpu.err" 2>/dev/null | tr '\n' ' ')"
fi

# 4. evaluate on both.
acc() { grep -m1 -o 'accuracy [0-9.]*% ([0-9/]*)' "$1"; }
if timeout 90 "$BIN" -q evaluate "$DATA/valid" --model "$MODEL" --backend $GPU_BACKEND --ort-lib "$ORT_GPU_LIB" >"$OUT/eval-cuda.txt" 2>&1 \
  && timeout 90 "$BIN" -q evaluate "$DATA/valid" --model "$MODEL" --backend ort-cpu --ort-lib "$CPU_LIB" >"$OUT/eval-cpu.txt" 2>&1; then
  A=$(acc "$OUT/eval-cuda.txt"); B=$(acc "$OUT/eval-cpu.txt")
  [ "$A" = "$B" ] && row "evaluate valid, cuda vs ort-cpu" ok "cuda: $A; ort-cpu: $B" || row "evaluate valid, cuda vs ort-cpu" FAIL "cuda: $A; ort-cpu: $B"
else
  row "evaluate valid, cuda vs ort-cpu" FAIL "see $OUT/eval-*.txt"
fi

# 5. The daemon end to end.
PY=$(command -v python3)
for be in cuda ort-cpu; do
  lib=$ORT_GPU_LIB; run_as=$GPU_BACKEND; [ $be = ort-cpu ] && lib=$CPU_LIB && run_as=ort-cpu
  # SIGINT, not TERM: bench_e2e.py then stops the daemon it started.
  if R=$(timeout -s INT 90 "$PY" scripts/bench_e2e.py --bin "$BIN" --model "$MODEL" --images "$DATA/valid" --backend $run_as \
      --label "daemon_$be" --settle-ms 200 --extra "--ort-lib $lib" 2>"$OUT/e2e-$be.err"); then
    row "daemon end to end, $be" ok "$(echo "$R" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%s photos, %s img/s, p50 %s ms, RSS %d MB" % (r["images"], r["images_per_s"], r["latency_ms_p50"], r["peak_rss_kb"] // 1024))')"
  else
    row "daemon end to end, $be" FAIL "$(tail -1 "$OUT/e2e-$be.err")"
  fi
done

# 6. Two epochs of training on CUDA.
TRAINING=$ROOT/target/release/training
if [ ! -x "$TRAINING" ] && command -v cargo >/dev/null; then
  (source scripts/env.sh && cargo build --release -p training --quiet) >"$OUT/build-training.log" 2>&1 || true
fi
WEIGHTS=$ROOT/.venv/weights/efficientnet-lite0.safetensors
TRAIN_DEVICE=cuda; [ "${REHEARSE:-0}" = 1 ] && TRAIN_DEVICE=cpu
if [ ! -x "$TRAINING" ]; then
  row "training, 2 epochs on CUDA" FAIL "no training binary (cargo build -p training needs torch in .venv; see $OUT/build-training.log)"
elif [ ! -f "$WEIGHTS" ]; then
  row "training, 2 epochs on CUDA" FAIL "no $WEIGHTS (scripts/setup-python.sh --training)"
else
  # A small tree: the valid split to learn from, the test split to validate on
  # (a check of the CUDA path, not a model).
  T=$OUT/train-data; rm -rf "$T"; mkdir -p "$T"
  ln -s "$(realpath "$DATA/valid")" "$T/train"; ln -s "$(realpath "$DATA/valid")" "$T/valid"; ln -s "$(realpath "$DATA/valid")" "$T/test"
  START=$(date +%s)
  if (source scripts/env.sh && timeout -s INT 180 "$TRAINING" train --data "$T" --arch efficientnet-lite0 --pretrained "$WEIGHTS" \
      --epochs 2 --device "$TRAIN_DEVICE" --out "$OUT/run") >"$OUT/training.log" 2>&1; then
    DEVICE=$(grep -o -m1 'device [A-Za-z]*[^;]*' "$OUT/training.log")
    EPOCH=$(grep -m1 -o 'epoch  2/2.*' "$OUT/training.log" | grep -o '[0-9.]* img/s')
    if [ "$TRAIN_DEVICE" = cuda ] && ! echo "$DEVICE" | grep -qi cuda; then
      row "training, 2 epochs on CUDA" FAIL "it ran on $DEVICE"
    else
      row "training, 2 epochs on CUDA" ok "$(( $(date +%s) - START )) s in all; $DEVICE; epoch 2 at $EPOCH"
    fi
  else
    row "training, 2 epochs on CUDA" FAIL "$(tail -1 "$OUT/training.log" | cut -c1-120)"
  fi
fi
