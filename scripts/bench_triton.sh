#!/usr/bin/env bash
# The daemon through a real Triton server on this machine's CPU against its
# own ONNX Runtime CPU rate, in the same run, and Triton's answers against
# ORT CPU's on the same photos.
#
#   scripts/bench_triton.sh [IMAGES_DIR]     (default ../shared/data/real-photos-valid)
#
# Environment: MODEL (default models/instrument-lite2.onnx), LIMIT=N images
# in the daemon runs (default all), BENCH_BUILD=0 to
# use target/release as it is. Needs scripts/setup-python.sh and
# scripts/setup-triton.sh. The server and the daemon share the same cores,
# so the ratio is what remote inference costs here, not what a GPU server
# would give (BENCHMARKS.md, "Remote inference").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
IMAGES=${1:-$ROOT/../shared/data/real-photos-valid}
MODEL=${MODEL:-$ROOT/models/instrument-lite2.onnx}
PY=$ROOT/.venv/bin/python
BIN=$ROOT/target/release/instrument-detector
WORK=$(mktemp -d /tmp/bench-triton.XXXXXX)
trap 'scripts/triton-server.sh stop "$WORK/server" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
source scripts/env.sh
[[ ${BENCH_BUILD:-1} == 1 ]] && cargo build --release --quiet
echo "== $(date -u +%FT%TZ) $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); model $(basename "$MODEL") ($(sha256sum "$MODEL" | cut -c1-12)); images $IMAGES"
# One model instance per core, as the daemon's own ORT runs one session per core.
URL=$(TRITON_INSTANCES=${TRITON_INSTANCES:-$(nproc)} scripts/triton-server.sh start "$MODEL" "$WORK/server")
echo "triton at $URL"

echo "== answers: classify --backend triton against --backend ort-cpu"
"$BIN" -q classify --model "$MODEL" --backend triton --triton-url "$URL" --json --top 5 "$IMAGES" > "$WORK/triton.jsonl"
"$BIN" -q classify --model "$MODEL" --backend ort-cpu --json --top 5 "$IMAGES" > "$WORK/ort.jsonl"
"$PY" - "$WORK/triton.jsonl" "$WORK/ort.jsonl" <<'PY'
import json, sys
t = {r["path"]: r for r in map(json.loads, open(sys.argv[1]))}
o = {r["path"]: r for r in map(json.loads, open(sys.argv[2]))}
same = sum(t[p]["label"] == o[p]["label"] for p in o)
diff = max(abs(a["confidence"] - b["confidence"]) for p in o for a, b in zip(t[p]["topk"], o[p]["topk"]))
print(json.dumps({"photos": len(o), "top1_equal": same, "max_confidence_difference": diff}))
PY

e2e() { "$PY" scripts/bench_e2e.py --bin "$BIN" --model "$MODEL" --images "$IMAGES" --limit "${LIMIT:-0}" --settle-ms 200 "$@"; }
echo "== the daemon end to end (ort-cpu, triton, ort-cpu again)"
e2e --backend ort-cpu --label ort_cpu
e2e --backend triton --label triton --extra "--triton-url $URL"
e2e --backend ort-cpu --label ort_cpu_again
