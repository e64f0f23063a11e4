#!/usr/bin/env bash
# The CPU engine (`--backend cpu-plan`) against ONNX Runtime on the same model files, same
# thread count, in the same run, and INT8 against FP32 on our own engine. Usage:
#   scripts/cpu-engine-bench.sh [--frames N] [--threads "1 2"] [--work DIR] [--no-download]
# Needs python3 with onnxruntime + numpy (+ onnx for the model-zoo rows) on PYTHONPATH and, for the
# shared MobileNetV3 rows, $BEVRT_SHARED (default ../shared). The larger CNN (PP-OCRv4 text
# detector, 4.7 MB) comes from the `rapidocr_onnxruntime` wheel on PyPI (skipped with
# --no-download or without network).
set -euo pipefail
cd "$(dirname "$0")/.."
FRAMES=300
THREADS="1 2"
WORK=target/cpu-engine-bench
DOWNLOAD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --frames) FRAMES=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --no-download) DOWNLOAD=0; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
SHARED=${BEVRT_SHARED:-../shared}
cargo build --release -q -p bevrt-runtime -p bevrt-tools
BEVRT=target/release/bevrt
TOOL=target/release/bevrt-tool
mkdir -p "$WORK"

# the bundles: letsmap-lite FP32 (shipped) and INT8 (quantized here), MobileNetV3 FP32 and
# ONNX Runtime's own QDQ INT8 (shared), PP-OCRv4 det (downloaded)
LETSMAP=models/bundles/letsmap-lite
[ -f "$WORK/letsmap-int8/bundle.toml" ] || RUST_LOG=warn $TOOL quantize --bundle $LETSMAP \
  --calib-source "sim:?seed=5" --frames 16 --method minmax --out "$WORK/letsmap-int8" >/dev/null
cls_bundle() { # model file, out
  [ -f "$2/bundle.toml" ] || RUST_LOG=warn $TOOL bundle init --task classify --model "$1" \
    --input 192x48:BGR --mean 0.5 --std 0.5 --labels 0,180 --out "$2" >/dev/null
}
ROWS=("letsmap-lite FP32|$LETSMAP|" "letsmap-lite INT8|$WORK/letsmap-int8|$LETSMAP")
if [ -d "$SHARED/data/onnx/models" ]; then
  cls_bundle "$SHARED/data/onnx/models/ch_ppocr_mobile_v2.0_cls_infer.onnx" "$WORK/mnv3-fp32"
  cls_bundle "$SHARED/data/onnx/models/ch_ppocr_mobile_v2.0_cls_int8_qdq.onnx" "$WORK/mnv3-int8"
  ROWS+=("MobileNetV3 FP32|$WORK/mnv3-fp32|" "MobileNetV3 INT8 QDQ|$WORK/mnv3-int8|$WORK/mnv3-fp32")
fi
DET=$WORK/ppocr/rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx
if [ "$DOWNLOAD" = 1 ] && [ ! -f "$DET" ]; then
  mkdir -p "$WORK/ppocr"
  if python3 -m pip download -q --no-deps -d "$WORK/ppocr" rapidocr_onnxruntime==1.4.4 >/dev/null 2>&1; then
    (cd "$WORK/ppocr" && python3 -m zipfile -e rapidocr_onnxruntime-1.4.4-py3-none-any.whl .)
  fi
fi
if [ -f "$DET" ]; then
  [ -f "$WORK/det/bundle.toml" ] || RUST_LOG=warn $TOOL bundle init --task features --model "$DET" \
    --input 320x320:BGR --mean 0.5 --std 0.5 --out "$WORK/det" >/dev/null
  ROWS+=("PP-OCRv4 det 320x320|$WORK/det|")
fi

# The ONNX model zoo's classic CNNs (scripts/cnn-zoo.py: graphs from the onnx wheel, weights
# drawn; nobody tuned the engine to them), 224x224
ZOO=target/cnn-zoo
if [ ! -f "$ZOO/squeezenet.onnx" ] && python3 -c "import onnx" >/dev/null 2>&1; then
  python3 scripts/cnn-zoo.py "$ZOO" resnet50 densenet121 shufflenet squeezenet inception_v2 >/dev/null
fi
for m in resnet50 densenet121 shufflenet squeezenet inception_v2; do
  [ -f "$ZOO/$m.onnx" ] || continue
  [ -f "$WORK/zoo-$m/bundle.toml" ] || RUST_LOG=warn $TOOL bundle init --task features \
    --model "$ZOO/$m.onnx" --input 224x224:RGB --mean 0.45 --std 0.225 --out "$WORK/zoo-$m" >/dev/null
  ROWS+=("zoo $m|$WORK/zoo-$m|")
done
# Four of them as ONNX Runtime's own quantizer writes them (QDQ, uint8 activations, per-channel
# int8 weights), against our FP32 run of the same network
for m in squeezenet shufflenet densenet121 resnet50; do
  [ -f "$ZOO/$m.onnx" ] || continue
  if [ ! -f "$ZOO/${m}_qdq.onnx" ]; then
    python3 scripts/cnn-zoo.py "$ZOO" "${m}_qdq" >/dev/null 2>&1 || continue
  fi
  [ -f "$WORK/zoo-$m-qdq/bundle.toml" ] || RUST_LOG=warn $TOOL bundle init --task features \
    --model "$ZOO/${m}_qdq.onnx" --input 224x224:RGB --mean 0.45 --std 0.225 --out "$WORK/zoo-$m-qdq" >/dev/null
  ROWS+=("zoo $m INT8 QDQ (ORT)|$WORK/zoo-$m-qdq|$WORK/zoo-$m")
done

printf "%-22s %7s %-34s %12s %12s %12s %10s %12s\n" model threads "bevrt engine" "inference ms" "networks ms" "ORT ms" "ratio" "vs baseline"
for row in "${ROWS[@]}"; do
  IFS='|' read -r name bundle baseline <<<"$row"
  for t in $THREADS; do
    args=(bench --bundle "$bundle" --backend auto --threads "$t" --frames "$FRAMES" --warmup 20
          --peer-onnxruntime --json)
    [ -n "$baseline" ] && args+=(--baseline "$baseline")
    RUST_LOG=warn $BEVRT "${args[@]}" > "$WORK/last.json"
    python3 - "$WORK/last.json" "$name" "$t" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
b, p = r["bevrt"], r["peer"]
nets = sum(l["mean_ms"] for l in b["layers"]) if b["layers"] else b["inference"]["mean_ms"]
engine = b["backend"].split(",")[0]
base = r.get("baseline")
vs = f'{b["inference"]["mean_ms"] / base["inference"]["mean_ms"]:.2f}x' if base else "-"
print(f'{sys.argv[2]:<22} {sys.argv[3]:>7} {engine[:34]:<34} {b["inference"]["mean_ms"]:>12.3f} '
      f'{nets:>12.3f} {p["mean_ms"]:>12.3f} {nets / p["mean_ms"]:>9.2f}x {vs:>12}')
EOF
  done
done
echo "ratio: bevrt's networks alone (sum of its engine's steps; tract: the whole inference) / ONNX Runtime $(python3 -c 'import onnxruntime; print(onnxruntime.__version__)'), mean ms, same threads"
echo "vs baseline: INT8 inference / FP32 inference on the same engine, interleaved frame by frame"
