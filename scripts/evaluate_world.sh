#!/usr/bin/env bash
# The numbers a model card needs, each from `instrument-detector evaluate`
# (the daemon's own decode, preprocessing and engine):
#   valid, real-photos-valid, the negatives (as a folder named `none`), and
#   with --test, the test split (score it once, at the end: it is not for choosing).
#
#   scripts/evaluate_world.sh MODEL.onnx [--test] [--backend ort-cpu]
#
# DATA (default ../shared/data) holds instruments/, real-photos-valid/, negatives/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[[ $# -ge 1 ]] || { echo "usage: $0 MODEL.onnx [--test] [--backend B]" >&2; exit 2; }
MODEL=$1; shift
TEST=0
BACKEND=ort-cpu
while [[ $# -gt 0 ]]; do
    case $1 in
        --test) TEST=1 ;;
        --backend) BACKEND=$2; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
DATA=${DATA:-$ROOT/../shared/data}
BIN=${BIN:-$ROOT/target/release/instrument-detector}
source scripts/env.sh
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# `evaluate` reads DIR/<class>/ and does not follow symbolic links: copy the
# negatives into a folder named `none`.
mkdir -p "$WORK/negatives/none"
cp "$DATA"/negatives/* "$WORK/negatives/none/"
sets=("valid=$DATA/instruments/valid" "real-photos-valid=$DATA/real-photos-valid" "negatives=$WORK/negatives")
[[ $TEST == 1 ]] && sets+=("test=$DATA/instruments/test")
echo "model $MODEL ($(sha256sum "$MODEL" | cut -c1-16)), backend $BACKEND"
for entry in "${sets[@]}"; do
    name=${entry%%=*}; dir=${entry#*=}
    echo "== $name"
    "$BIN" -q evaluate --model "$MODEL" --backend "$BACKEND" "$dir" | tee "$WORK/$name.txt"
done
