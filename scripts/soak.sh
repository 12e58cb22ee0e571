#!/usr/bin/env bash
# The long reliability runs: what CI does in seconds, here at full size.
#
#   scripts/soak.sh            # everything below (about 20-30 minutes)
#   scripts/soak.sh burst      # 5,000-file burst only
#   scripts/soak.sh kill       # 10 SIGKILLs during a 3,000-file burst, repeated 3 times
#   scripts/soak.sh fuzz       # 10 minutes of cargo fuzz (nightly), else the mutation soak
#
# Environment: SOAK_BURST (5000), SOAK_KILL_FILES (3000), SOAK_KILL_ROUNDS (3),
# SOAK_FUZZ_SECS (600). Timings go to stderr and to target/soak/soak-<date>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
mkdir -p target/soak
log="target/soak/soak-$(date -u +%Y%m%dT%H%M%SZ).log"
exec > >(tee -a "$log") 2>&1
echo "soak: $what, $(date -u), $(nproc) CPUs, log $log"

run_timed() {
    local name="$1"; shift
    local t0; t0=$(date +%s)
    "$@"
    echo "soak: $name passed in $(( $(date +%s) - t0 ))s"
}

burst() {
    RELIABILITY_BURST="${SOAK_BURST:-5000}" run_timed "burst of ${SOAK_BURST:-5000}" \
        cargo test --release --test tests -- --exact reliability::burst_of_distinct_images_gets_one_row_each_and_none_twice --nocapture
}

kill_rounds() {
    for round in $(seq 1 "${SOAK_KILL_ROUNDS:-3}"); do
        # A fresh seed per round: CI always replays the fixed default one.
        RELIABILITY_SEED="$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')" \
        RELIABILITY_KILL_FILES="${SOAK_KILL_FILES:-3000}" RELIABILITY_KILLS=10 run_timed "sigkill round $round" \
            cargo test --release --test tests -- --exact reliability::sigkill_at_random_moments_ten_restarts_loses_nothing --nocapture
    done
}

fuzz() {
    local secs="${SOAK_FUZZ_SECS:-600}"
    if rustup toolchain list 2>/dev/null | grep -q nightly && command -v cargo-fuzz >/dev/null; then
        # Work on a copy of the committed corpus so it stays small; new
        # findings land in fuzz/artifacts/preprocess/.
        rm -rf target/soak/fuzz-corpus && cp -r fuzz/corpus/preprocess target/soak/fuzz-corpus
        (cd fuzz && run_timed "cargo fuzz preprocess for ${secs}s" \
            cargo +nightly fuzz run -O preprocess ../target/soak/fuzz-corpus ../fuzz/corpus/preprocess -- \
                -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=65536 -print_final_stats=1)
    else
        echo "soak: no nightly toolchain or cargo-fuzz; running the deterministic mutation fuzzer instead"
        RELIABILITY_FUZZ_SECS="$secs" run_timed "mutation fuzz for ${secs}s" \
            cargo test --release --test tests -- --exact reliability_fuzz::mutation_soak --nocapture
    fi
}

case "$what" in
    burst) burst ;;
    kill) kill_rounds ;;
    fuzz) fuzz ;;
    all)
        run_timed "fault suite" cargo test --release --test tests -- --nocapture reliability::  reliability_fuzz::
        burst
        kill_rounds
        fuzz
        ;;
    *) echo "usage: $0 [all|burst|kill|fuzz]" >&2; exit 2 ;;
esac
echo "soak: done, $(date -u)"
