#!/usr/bin/env bash
# One command that reruns every benchmark, with the peer pipeline in the same
# run, and prints ratios against it and against the raw model ceiling.
#
#   scripts/bench.sh                 # everything (criterion benches included)
#   BENCH_CRITERION=0 scripts/bench.sh   # skip the criterion micro-benchmarks
#
# Environment (all optional):
#   MODEL        fp32 model (default models/instrument-lite2.onnx; if missing, an
#                EfficientNet-Lite0-shaped stand-in with random weights is written
#                to $WORK/standin.onnx and used, and the output says so)
#   MODEL_INT8   int8 model to compare (default: written by `instrument-detector
#                quantize` from MODEL, fresh each run)
#   DATA         the instruments dataset (default ../shared/data/instruments)
#   N224         224 px images in the end-to-end runs (default 1000, from train/)
#   NPHOTOS      full-size photos generated for the photo runs (default 120)
#   BATCH        batch size for the peer and for us (default 8: see BENCHMARKS.md)
#   WORK         scratch folder (default /tmp/instrument-bench)
#   BENCH_BUILD=0      use the binaries already in target/release (no cargo build)
#   BENCH_BURST=0      skip the 5,000-file burst
#
# Needs: .venv with onnxruntime, numpy, pillow (scripts/setup-python.sh), /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
DATA=${DATA:-$ROOT/../shared/data/instruments}
PEER=${PEER:-$ROOT/../shared/bench/peer_pipeline.py}
WORK=${WORK:-/tmp/instrument-bench}
N224=${N224:-1000}
NPHOTOS=${NPHOTOS:-120}
BATCH=${BATCH:-8}
BIN=$ROOT/target/release/instrument-detector
mkdir -p "$WORK"
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(ls "$ROOT"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | sort -V | tail -1)}

echo "== machine"
echo "$(date -u +%FT%TZ) $(uname -srm); $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)  (other work on the machine skews absolute numbers; compare the ratios)"

if [[ ${BENCH_BUILD:-1} == 1 ]]; then
    echo "== build (release)"
    cargo build --release --bins --examples --quiet
fi

MODEL=${MODEL:-$ROOT/models/instrument-lite2.onnx}
if [[ ! -f $MODEL ]]; then
    echo "note: $MODEL not found; using a stand-in with Lite0's architecture and random weights"
    MODEL=$WORK/standin.onnx
    [[ -f $MODEL ]] || "$ROOT/target/release/examples/lite0_standin" "$MODEL" "$DATA/test"
fi
echo "model: $MODEL ($(sha256sum "$MODEL" | cut -c1-12))"

# Normalisation for the peer, from the model's own metadata.
read -r MEAN STD SIZE < <("$PY" - "$MODEL" <<'EOF'
import json, sys, onnxruntime as ort
m = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
f = lambda k, d: ",".join(str(v) for v in json.loads(m.get(k, json.dumps(d))))
print(f("mean", [0.485, 0.456, 0.406]), f("std", [0.229, 0.224, 0.225]), m.get("input_size", "224"))
EOF
)

source scripts/bench_sets.sh

RESULTS=$WORK/results.jsonl
: > "$RESULTS"
peer() { "$PY" "$PEER" "$MODEL" "$@" --batch "$BATCH" --size "$SIZE" --mean "$MEAN" --std "$STD"; }
record() { # label, then a JSON line on stdin
    local label=$1 line
    line=$(tail -n1)
    echo "$label $line"
    echo "{\"label\": \"$label\", \"result\": $line}" >> "$RESULTS"
}
# Our one-shot path (`classify`, no database): wall time and peak RSS from /usr/bin/time.
ours_classify() { # label dir [extra flags]
    local label=$1 dir=$2; shift 2
    local n t0 t1 log=$WORK/time-$label.txt
    n=$(find -L "$dir" -type f | wc -l)
    t0=$(date +%s.%N)
    /usr/bin/time -v -o "$log" "$BIN" -q classify --model "$MODEL" --backend ort-cpu --batch-size "$BATCH" --json "$@" "$dir" > /dev/null
    t1=$(date +%s.%N)
    local rss; rss=$(awk -F: '/Maximum resident/ {gsub(/ /,"",$2); print $2}' "$log")
    "$PY" -c "import json;s=$t1-$t0;print(json.dumps({'mode':'classify','images':$n,'seconds':round(s,3),'images_per_s':round($n/s,2),'peak_rss_kb':$rss}))"
}
e2e() { # label dir [bench_e2e flags]
    local label=$1 dir=$2; shift 2
    "$PY" scripts/bench_e2e.py --bin "$BIN" --model "$MODEL" --images "$dir" --label "$label" \
        --extra "--batch-size $BATCH" "$@"
}

echo "== 224 px images ($N224 from train/), batch $BATCH"
peer "$SET224" --raw | record raw_ceiling
"$PY" "$PEER" "$MODEL" "$SET224" --raw --batch 16 --size "$SIZE" | record raw_ceiling_batch16
peer "$SET224" | record peer_224
ours_classify classify_224 "$SET224" | record classify_224
e2e daemon_224 "$SET224" --settle-ms 200 | record daemon_224
peer "$SET224" --raw | record raw_ceiling_again

echo "== full-size photos ($NPHOTOS generated, 1.2 to 12 MP)"
peer "$PHOTOS" | record peer_photos
ours_classify classify_photos "$PHOTOS" | record classify_photos
e2e daemon_photos "$PHOTOS" --settle-ms 200 | record daemon_photos

echo "== burst of 5,000 files into the daemon (peak RSS)"
BURST=$WORK/burst5000
if [[ ! -d $BURST ]]; then
    mkdir -p "$BURST"
    find "$DATA" -name '*.jpg' | sort | awk 'NR <= 5002' | nl -nrz -w6 | while read -r i f; do cp "$f" "$BURST/$i.jpg"; done
fi
if [[ ${BENCH_BURST:-1} == 1 ]]; then
    e2e daemon_burst5000 "$BURST" --settle-ms 1000 | record daemon_burst5000
fi

echo "== int8"
if [[ -z ${MODEL_INT8:-} ]]; then
    # Written fresh each run (6 s), so it always comes from this build's quantiser.
    MODEL_INT8=$WORK/$(basename "$MODEL" .onnx).int8.onnx
    "$BIN" quantize "$MODEL" --calibration "$DATA/valid" --max-images 100 --out "$MODEL_INT8" --force
fi
echo "int8 model: $MODEL_INT8 ($(sha256sum "$MODEL_INT8" | cut -c1-12))"
if [[ -f $MODEL_INT8 ]]; then
    # Three interleaved rounds: the machine drifts by more than 10% over a
    # minute, so the ratio that counts is the median of the per-round ratios.
    for round in 1 2 3; do
        peer "$SET224" --raw | record "raw_fp32_r$round"
        "$PY" "$PEER" "$MODEL_INT8" "$SET224" --raw --batch "$BATCH" --size "$SIZE" | record "raw_int8_r$round"
    done
    ours_classify classify_224_fp32 "$SET224" | record classify_224_fp32
    MODEL=$MODEL_INT8 ours_classify classify_224_int8 "$SET224" | record classify_224_int8
else
    echo "no int8 model"
fi

echo "== stages, one process each (so the peak RSS is the stage's own): decode + preprocess per image, inference per batch per backend"
# PNG 1024x768 made from dataset images; the 12 MP photos of the photo set, hard-linked apart.
PNGS=$WORK/png1024-50
MP12=$WORK/photos-12mp
[[ -d $PNGS && -d $MP12 ]] || "$PY" - "$DATA/train" "$PNGS" "$PHOTOS" "$MP12" <<'EOF2'
import os, sys
from PIL import Image
src, pngs, photos, mp12 = sys.argv[1:5]
os.makedirs(pngs, exist_ok=True)
os.makedirs(mp12, exist_ok=True)
files = sorted(os.path.join(d, n) for d, _, ns in os.walk(src) for n in ns if n.endswith(".jpg"))[:50]
for i, f in enumerate(files):
    Image.open(f).convert("RGB").resize((1024, 768), Image.BILINEAR).save(os.path.join(pngs, f"{i:03d}.png"))
for n in sorted(os.listdir(photos)):
    with Image.open(os.path.join(photos, n)) as im:
        big = im.width * im.height >= 11_000_000
    if big and not os.path.exists(os.path.join(mp12, n)):
        os.link(os.path.join(photos, n), os.path.join(mp12, n))
EOF2
SB=$ROOT/target/release/examples/stage_bench
if [[ -x $SB ]]; then
    "$SB" decode "$MODEL" "$SET224" --limit 500 | record stage_decode_jpeg224
    "$SB" decode "$MODEL" "$MP12" | record stage_decode_jpeg12mp
    "$SB" decode "$MODEL" "$PHOTOS" | record stage_decode_photos_mixed
    "$SB" decode "$MODEL" "$PNGS" | record stage_decode_png1024
    for backend in ort-cpu tract; do
        for n in 1 8 16; do
            "$SB" infer "$MODEL" --backend "$backend" --batch "$n" | record "stage_infer_${backend}_b$n"
        done
    done
else
    echo "no $SB (build it: cargo build --release --example stage_bench)"
fi

echo "== ratios (same run)"
"$PY" - "$RESULTS" <<'EOF'
import json, sys
r = {}
for line in open(sys.argv[1]):
    d = json.loads(line); r[d["label"]] = d["result"]
ips = lambda k: r[k]["images_per_s"] if k in r else None
def ratio(a, b, what):
    if ips(a) and ips(b):
        print(f"{what:58s} {ips(a):8.1f} / {ips(b):8.1f} img/s = {ips(a)/ips(b):5.2f}x")
# The ceiling is the best of the raw runs (batch 8 before, batch 16, batch 8
# after the daemon): the machine drifts, and the highest is the strictest.
if ips("raw_ceiling_batch16"):
    print(f"raw ceiling batch {r['raw_ceiling']['batch']}: {ips('raw_ceiling')} img/s; batch 16: {ips('raw_ceiling_batch16')} img/s")
if ips("raw_ceiling_again"):
    print(f"raw ceiling before/after: {ips('raw_ceiling')} / {ips('raw_ceiling_again')} img/s (drift {ips('raw_ceiling_again')/ips('raw_ceiling'):.2f}x)")
ceiling = max((k for k in ("raw_ceiling", "raw_ceiling_batch16", "raw_ceiling_again") if ips(k)), key=ips)
print(f"ceiling used: {ceiling} ({ips(ceiling)} img/s)")
ratio("daemon_224", ceiling, "224px: daemon end to end / raw model ceiling (target 0.9)")
ratio("daemon_224", "peer_224", "224px: daemon end to end / peer (target 1.3)")
ratio("classify_224", ceiling, "224px: classify / raw model ceiling")
ratio("classify_224", "peer_224", "224px: classify / peer")
ratio("daemon_photos", "peer_photos", "photos: daemon end to end / peer (target 3)")
ratio("classify_photos", "peer_photos", "photos: classify / peer")
rounds = [(ips(f"raw_int8_r{i}"), ips(f"raw_fp32_r{i}")) for i in (1, 2, 3) if ips(f"raw_int8_r{i}")]
if rounds:
    per = sorted(a / b for a, b in rounds)
    print(f"{'int8 / fp32, raw ORT, 3 interleaved rounds (target 2)':58s} " + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in rounds)
          + f" img/s; median {per[len(per) // 2]:.2f}x (min {per[0]:.2f}x)")
ratio("classify_224_int8", "classify_224_fp32", "int8 / fp32, classify 224px (back to back)")
for k in ("daemon_224", "daemon_photos", "daemon_burst5000"):
    if k in r:
        d = r[k]
        print(f"{k}: single photo into idle daemon {d['single_photo_ms']} ms (settle {d['settle_ms']} ms); "
              f"burst latency p50/p90/p99 {d['latency_ms_p50']}/{d['latency_ms_p90']}/{d['latency_ms_p99']} ms; "
              f"peak RSS {(d['peak_rss_kb'] or 0)/1024:.0f} MB")
for k, d in r.items():
    if k.startswith("stage_"):
        what = d.get("folder", "").rsplit("/", 1)[-1] or f"{d.get('backend')} batch {d.get('batch')}"
        print(f"{k:28s} {what:24s} {d['images_per_s']:8.1f} img/s  p50/p90/p99 {d['p50_ms']}/{d['p90_ms']}/{d['p99_ms']} ms  peak RSS {d['peak_rss_kb']/1024:.0f} MB")
for k in ("classify_224", "classify_photos"):
    if k in r:
        print(f"{k}: peak RSS {r[k]['peak_rss_kb']/1024:.0f} MB")
EOF

if [[ ${BENCH_CRITERION:-1} == 1 ]]; then
    echo "== criterion: decode + preprocess, inference per batch per backend"
    cargo bench --quiet --bench preprocess
    BENCH_MODEL=$MODEL cargo bench --quiet --bench inference
fi
echo "results: $RESULTS"
