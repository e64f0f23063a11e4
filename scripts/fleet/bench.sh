#!/usr/bin/env bash
# One process against Ray: `bevrt-tool eval` of DRIVES simulated drives (FRAMES frames each,
# letsmap-lite on cpu-plan) in one process (threads picked at load), then through
# `python3 -m bevrt_fleet eval --parallel 2` (one thread per shard) on a local Ray cluster.
# RUNS times each, alternating; prints wall seconds (min / median / max) and the speed-up.
# Needs ray importable (pip install ray). Usage: scripts/fleet/bench.sh [DRIVES] [FRAMES] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
DRIVES=${1:-6}
FRAMES=${2:-40}
RUNS=${3:-3}
WORK=target/fleet-bench
cargo build --release -q --workspace --features "${BEVRT_FEATURES:-bevrt-runtime/v4l,bevrt-runtime/gst}" --bins
TOOL=target/release/bevrt-tool
BUNDLE=models/bundles/letsmap-lite
DATA="$WORK/drives-${DRIVES}x$FRAMES"
if [ ! -d "$DATA" ]; then
    for d in $(seq 0 $((DRIVES - 1))); do
        $TOOL sim record --seed $((100 + d)) --frames "$FRAMES" --fps 2 --cell 0.5 \
            --out "$DATA/drive-$(printf %02d "$d")" >/dev/null
    done
fi
stats() { sort -g | awk '{ v[NR] = $1 } END { printf "%.2f / %.2f / %.2f", v[1], v[int((NR + 1) / 2)], v[NR] }'; }
one=() one1=() ray=() tasks=()
for _ in $(seq "$RUNS"); do
    t=$(date +%s.%N)
    RUST_LOG=warn $TOOL eval --bundle $BUNDLE --data "$DATA" --backend cpu-plan --threads 1 --json > /dev/null
    t0=$(date +%s.%N)
    one1+=("$(python3 -c "print($t0 - $t)")")
    RUST_LOG=warn $TOOL eval --bundle $BUNDLE --data "$DATA" --backend cpu-plan --json > "$WORK/one.json"
    t1=$(date +%s.%N)
    RAY_USAGE_STATS_ENABLED=0 PYTHONPATH="scripts/fleet${PYTHONPATH:+:$PYTHONPATH}" python3 -m bevrt_fleet eval \
        --bundle $BUNDLE --recordings "$DATA" --address local --parallel 2 --tool $TOOL \
        --out "$WORK/ray.json" > "$WORK/ray.log"
    t2=$(date +%s.%N)
    one+=("$(python3 -c "print($t1 - $t0)")")
    ray+=("$(python3 -c "print($t2 - $t1)")")
    tasks+=("$(sed -n 's/.* on 2 slots: \([0-9.]*\) s of tasks.*/\1/p' "$WORK/ray.log")")
    grep "s of tasks" "$WORK/ray.log"
done
python3 - "$WORK/one.json" "$WORK/ray.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
keys = ["frames", "recordings", "cells", "miou", "accuracy", "per_class"]
print("merged scores identical to one process:", all(a[k] == b[k] for k in keys),
      f"(mIoU {a['miou']:.2f} %, {a['frames']} frames)")
PY
echo "one process, 1 thread: s $(printf '%s\n' "${one1[@]}" | stats)"
echo "one process, threads picked at load (2 here): s $(printf '%s\n' "${one[@]}" | stats)"
echo "Ray, 2 slots x 1 thread, whole command (python, cluster start, tasks, merge): s $(printf '%s\n' "${ray[@]}" | stats)"
echo "Ray, the tasks alone (first submitted to last done): s $(printf '%s\n' "${tasks[@]}" | stats)"
python3 - "${one1[*]}" "${one[*]}" "${ray[*]}" "${tasks[*]}" <<'PY'
import statistics, sys
o1, o2, r, t = (statistics.median(map(float, a.split())) for a in sys.argv[1:])
print(f"speed-up of Ray's tasks over one process: {o1 / t:.2f}x (1 thread), {o2 / t:.2f}x (2 threads); "
      f"of the whole Ray command: {o1 / r:.2f}x, {o2 / r:.2f}x")
PY
