#!/usr/bin/env bash
# The phone and camera formats (issue 17), measured in one run:
#   1. decode + preprocess per 12 MP photo, per format: JPEG (the baseline),
#      HEIC, AVIF, JPEG XL, and RAW (a DNG and a NEF whose embedded preview
#      is that same 12 MP JPEG);
#   2. a mixed phone folder (a third each JPEG, HEIC, AVIF, all 12 MP) end to
#      end: the daemon against the peer pipeline given the same files, the
#      peer extended with pillow-heif as a user would (scripts/peer_with_heif.py).
#
#   scripts/bench_formats.sh        # NFORMAT=12 photos per format (default)
#
# The photos are dataset images upscaled to 4032x3024 (photo-sized, but
# smoother than a camera's, so their files are smaller than a phone's).
# Needs: scripts/setup-python.sh, heif-enc and cjxl (scripts/setup-system.sh
# --test-tools); installs Pillow and pillow-heif into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
DATA=${DATA:-$ROOT/../shared/data/instruments}
PEER=${PEER:-$ROOT/../shared/bench/peer_pipeline.py}
WORK=${WORK:-/tmp/instrument-bench-formats}
N=${NFORMAT:-12}
BATCH=${BATCH:-8}
MODEL=${MODEL:-$ROOT/models/instrument-lite2.onnx}
BIN=$ROOT/target/release/instrument-detector
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(ls "$ROOT"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | sort -V | tail -1)}
"$PY" -m pip install -q --disable-pip-version-check "pillow==11.3.0" "pillow-heif==1.1.1"
if [[ ${BENCH_BUILD:-1} == 1 ]]; then
    (source scripts/env.sh && cargo build --release --bins --examples --quiet)
fi
echo "== machine: $(date -u +%FT%TZ), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"

# 3N source photos: N for the per-format decode, all 3N for the mixed folder.
SRC=$WORK/jpeg12mp
if [[ ! -d $SRC ]]; then
    mkdir -p "$SRC"
    "$PY" - "$DATA/train" "$SRC" $((3 * N)) <<'PYEOF'
import os, sys
from PIL import Image
src, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs if f.endswith(".jpg"))
step = max(1, len(files) // n)
for i, f in enumerate(files[::step][:n]):
    Image.open(f).convert("RGB").resize((4032, 3024), Image.BICUBIC).save(os.path.join(out, f"{i:03d}.jpg"), quality=90)
PYEOF
fi
convert_all() { # format dir command...
    local fmt=$1 dir=$2; shift 2
    [[ -d $dir ]] && return
    mkdir -p "$dir"
    for f in "$SRC"/*.jpg; do
        local b; b=$(basename "$f" .jpg)
        "$@" "$f" "$dir/$b.$fmt" >/dev/null 2>&1
    done
}
heic() { heif-enc -q 80 "$1" -o "$2"; }
avif() { heif-enc -A -q 70 -p speed=8 "$1" -o "$2"; }
jxl() { cjxl "$1" "$2" -d 1 -e 3; }
dng() { "$ROOT/target/release/examples/make_raw" dng "$1" "$2"; }
nef() { "$ROOT/target/release/examples/make_raw" nef "$1" "$2"; }
for fmt in heic avif jxl dng nef; do convert_all "$fmt" "$WORK/$fmt" "$fmt"; done

echo "== decode + preprocess per 12 MP photo (first $N of each format; images/s, one core)"
SB=$ROOT/target/release/examples/stage_bench
for fmt in jpeg12mp heic avif jxl dng nef; do
    printf '%-9s ' "$fmt"
    "$SB" decode "$MODEL" "$WORK/$fmt" --limit "$N"
done

echo "== mixed phone folder: $N JPEG + $N HEIC + $N AVIF (different photos), 12 MP"
MIXED=$WORK/mixed
if [[ ! -d $MIXED ]]; then
    mkdir -p "$MIXED"
    i=0
    for f in "$SRC"/*.jpg; do
        b=$(basename "$f" .jpg)
        case $((i % 3)) in
            0) ln "$f" "$MIXED/$b.jpg" ;;
            1) ln "$WORK/heic/$b.heic" "$MIXED/$b.heic" ;;
            2) ln "$WORK/avif/$b.avif" "$MIXED/$b.avif" ;;
        esac
        i=$((i + 1))
    done
fi
read -r MEAN STD SIZE < <("$PY" - "$MODEL" <<'PYEOF'
import json, sys, onnxruntime as ort
m = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
f = lambda k, d: ",".join(str(v) for v in json.loads(m.get(k, json.dumps(d))))
print(f("mean", [0.485, 0.456, 0.406]), f("std", [0.229, 0.224, 0.225]), m.get("input_size", "224"))
PYEOF
)
echo -n "peer:   "
"$PY" scripts/peer_with_heif.py "$PEER" "$MODEL" "$MIXED" --batch "$BATCH" --size "$SIZE" --mean "$MEAN" --std "$STD" | tail -1
echo -n "daemon: "
"$PY" scripts/bench_e2e.py --bin "$BIN" --model "$MODEL" --images "$MIXED" --label daemon_mixed --settle-ms 200 \
    --extra "--batch-size $BATCH" | tail -1
echo -n "peer again: "
"$PY" scripts/peer_with_heif.py "$PEER" "$MODEL" "$MIXED" --batch "$BATCH" --size "$SIZE" --mean "$MEAN" --std "$STD" | tail -1
