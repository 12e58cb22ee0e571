#!/usr/bin/env bash
# Two models through the real daemon, end to end, in the same run: what a
# heavier default model costs a user. Rounds alternate A, B, A, B so the
# machine's drift falls on both; the ratio that counts is the median of the
# per-round ratios.
#
#   scripts/bench_models.sh BASELINE.onnx CANDIDATE.onnx [more candidates...]
#
# Environment (all optional): DATA (the instruments dataset), N224 (224 px
# images per run, default 600), NPHOTOS (full-size photos, default 60), ROUNDS
# (default 2), BATCH (default 8), WORK (scratch, default /tmp/instrument-bench),
# BENCH_BUILD=0 to use target/release as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[[ $# -ge 2 ]] || { echo "usage: $0 BASELINE.onnx CANDIDATE.onnx [...]" >&2; exit 2; }
PY=${PY:-$ROOT/.venv/bin/python}
DATA=${DATA:-$ROOT/../shared/data/instruments}
WORK=${WORK:-/tmp/instrument-bench}
N224=${N224:-600}
NPHOTOS=${NPHOTOS:-60}
ROUNDS=${ROUNDS:-2}
BATCH=${BATCH:-8}
BIN=$ROOT/target/release/instrument-detector
mkdir -p "$WORK"
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(ls "$ROOT"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | sort -V | tail -1)}
for m in "$@"; do [[ -f $m ]] || { echo "no such model: $m" >&2; exit 2; }; done

echo "== machine: $(date -u +%FT%TZ) $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ ${BENCH_BUILD:-1} == 1 ]]; then
    cargo build --release --bins --quiet
fi

source scripts/bench_sets.sh

RESULTS=$WORK/models.jsonl
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    i=0
    for model in "$@"; do
        for set in 224 photos; do
            dir=$SET224; [[ $set == photos ]] && dir=$PHOTOS
            line=$("$PY" scripts/bench_e2e.py --bin "$BIN" --model "$model" --images "$dir" \
                --label "m${i}_$set" --settle-ms 200 --extra "--batch-size $BATCH" | tail -n1)
            echo "round $round $(basename "$model") $set: $line"
            echo "{\"round\": $round, \"model\": $i, \"name\": \"$(basename "$model")\", \"set\": \"$set\", \"result\": $line}" >> "$RESULTS"
        done
        i=$((i + 1))
    done
done

echo "== daemon end to end, each model against the first (median of the per-round ratios)"
"$PY" - "$RESULTS" <<'EOF'
import json, statistics, sys
from collections import defaultdict
r = defaultdict(dict)
names = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    r[(d["model"], d["set"])][d["round"]] = d["result"]
    names[d["model"]] = d["name"]
for m in sorted(names):
    for s in ("224", "photos"):
        runs = r[(m, s)]
        ips = [runs[k]["images_per_s"] for k in sorted(runs)]
        rss = max((runs[k]["peak_rss_kb"] or 0) for k in runs) / 1024
        line = f"{names[m]:36s} {s:7s} " + " / ".join(f"{v:.1f}" for v in ips) + f" img/s, peak RSS {rss:.0f} MB"
        if m != 0:
            base = r[(0, s)]
            per = sorted(runs[k]["images_per_s"] / base[k]["images_per_s"] for k in runs if k in base)
            line += f"  -> {statistics.median(per):.2f}x the first (rounds: " + ", ".join(f"{p:.2f}" for p in per) + ")"
        print(line)
EOF
echo "results: $RESULTS"
