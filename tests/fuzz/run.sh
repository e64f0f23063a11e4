#!/usr/bin/env bash
# Fuzz every bevrt parser with libFuzzer (cargo-fuzz, nightly): `tests/fuzz/run.sh [RUNS] [TARGET...]`.
#
# Each target starts from its kept corpus (tests/fuzz/corpus/TARGET, seeds from ../shared and
# hand-made files) in a work copy under target/fuzz-work, runs RUNS executions (default 10^6)
# with a 2 GiB memory limit and a 10 s per-input timeout, and prints the executions libFuzzer
# reports. A crash leaves its input in tests/fuzz/artifacts/TARGET/ and stops the script.
# With KEEP=1 the work corpus is merged back (minimised, inputs <= 16 KiB) into the kept one,
# which tests/tests/fuzz_replay.rs replays on stable in every test run.
set -euo pipefail
cd "$(dirname "$0")"
runs="${1:-1000000}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(onnx manifest calib_toml calib_yaml recording_header recording_index poses_csv image_decode raw_frame npy ros2_messages mcap_bag)
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo +nightly fuzz build -O --sanitizer none
summary="target/fuzz-summary.txt"
mkdir -p target
for t in "${targets[@]}"; do
    work="target/fuzz-work/$t"
    mkdir -p "$work" "artifacts/$t"
    cp -n corpus/"$t"/* "$work"/ 2>/dev/null || true
    log="target/fuzz-$t.log"
    start=$(date +%s)
    cargo +nightly fuzz run -O --sanitizer none "$t" "$work" -- \
        -runs="$runs" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 -max_len=65536 \
        -print_final_stats=1 > "$log" 2>&1 || { tail -40 "$log"; echo "FUZZ FAILURE in $t (log $log)"; exit 1; }
    done_runs=$(grep -o 'Done [0-9]* runs' "$log" | awk '{print $2}' | tail -1)
    echo "$t: ${done_runs:-?} executions in $(( $(date +%s) - start )) s, 0 crashes, 0 timeouts, 0 out-of-memory" | tee -a "$summary"
    if [ "${KEEP:-0}" = 1 ]; then
        fresh="target/fuzz-merge/$t"
        rm -rf "$fresh" && mkdir -p "$fresh"
        cargo +nightly fuzz run -O --sanitizer none "$t" "$fresh" "$work" -- -merge=1 -max_len=16384 >/dev/null 2>&1
        cp -n "$fresh"/* corpus/"$t"/ 2>/dev/null || true
    fi
done
