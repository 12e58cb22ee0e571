#!/usr/bin/env bash
# The large-library benchmark (issue 16): first classification at 1k and 100k
# photos, restart against the `find` floor, deletion/rename/folder move, inotify
# watches, the polling fallback, and query/stats/report on a 1M-row database.
# The numbers and what they mean: BENCHMARKS.md, "Large libraries".
#
#   scripts/bench_library.sh                      # 1k / 100k photos, 1M rows
#   LARGE=10000 DB_ROWS=100000 scripts/bench_library.sh   # a quick run
#
# Environment (all optional): SMALL (1000), LARGE (100000), DB_ROWS (1000000),
# WORK (/tmp/instrument-library; about 1 GB at 100k photos), PHASES
# (classify,restart,events,watches,queries), BENCH_BUILD=0 to skip the build.
# Needs: .venv with pillow (scripts/setup-python.sh), unshare for the fallback phase.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/env.sh
WORK=${WORK:-/tmp/instrument-library}
mkdir -p "$WORK"
echo "== machine"
echo "$(date -u +%FT%TZ) $(uname -srm); $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); commit $(git rev-parse --short HEAD)"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); filesystem of $WORK: $(df -T "$WORK" | awk 'NR==2 {print $2}')"
if [[ ${BENCH_BUILD:-1} == 1 ]]; then
    cargo build --release --bin instrument-detector --example color_model --quiet
fi
"$ROOT/target/release/examples/color_model" "$WORK/color.onnx"
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/bench_library.py" --bin "$ROOT/target/release/instrument-detector" \
    --model "$WORK/color.onnx" --work "$WORK" --small "${SMALL:-1000}" --large "${LARGE:-100000}" \
    --db-rows "${DB_ROWS:-1000000}" --phases "${PHASES:-classify,restart,events,watches,queries}"
