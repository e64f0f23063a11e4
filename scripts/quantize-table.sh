#!/usr/bin/env bash
# Every quantization setting on letsmap-lite: mIoU of the INT8 bundle against FP32 on
# held-out sim frames, calibrated on another drive. Usage:
#   scripts/quantize-table.sh [--bundle B] [--calib DIR] [--eval DIR] [--work DIR]
# Without --calib/--eval it records seed 11 (200 frames) and seed 1000 (150 frames).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=models/bundles/letsmap-lite
WORK=target/quantize-table
CALIB=""
EVAL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) BUNDLE=$2; shift 2 ;;
    --calib) CALIB=$2; shift 2 ;;
    --eval) EVAL=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
cargo build --release -q -p bevrt-tools
TOOL=target/release/bevrt-tool
mkdir -p "$WORK"
if [ -z "$CALIB" ]; then
  CALIB=$WORK/calib
  [ -f "$CALIB/recording.toml" ] || $TOOL sim record --seed 11 --frames 200 --fps 2 --cell 0.5 --out "$CALIB" >/dev/null
fi
if [ -z "$EVAL" ]; then
  EVAL=$WORK/eval
  [ -f "$EVAL/r/recording.toml" ] || $TOOL sim record --seed 1000 --frames 150 --fps 2 --cell 0.5 --out "$EVAL/r" >/dev/null
fi
printf "%-11s %-12s %-11s %9s %9s %7s %10s\n" method weights activations "FP32 mIoU" "INT8 mIoU" delta "rel. RMSE"
for act in int8 uint8; do
  for m in minmax percentile entropy; do
    [ "$act" = uint8 ] && [ "$m" = entropy ] && continue
    for w in per-channel per-tensor; do
      out=$WORK/q-$m-$w-$act
      rm -rf "$out"
      RUST_LOG=warn $TOOL quantize --bundle "$BUNDLE" --calib-data "$CALIB" --frames 200 --method $m --$w \
        --activations $act --eval-data "$EVAL" --report "$out.json" --out "$out" >"$out.log" 2>&1 || { cat "$out.log"; exit 1; }
      python3 - "$out.json" "$m" "$w" "$act" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("%-11s %-12s %-11s %9.2f %9.2f %+7.2f %10.4f" % (sys.argv[2], sys.argv[3], sys.argv[4],
      r["fp32_miou"], r["int8_miou"], r["int8_miou"] - r["fp32_miou"], r["output_rel_rmse"]))
PY
    done
  done
done
