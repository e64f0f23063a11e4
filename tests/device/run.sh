#!/usr/bin/env bash
# One prepared call on a GPU machine (the `device` tool), after tests/device/prepare.sh here:
#   run(command="bash tests/device/run.sh", carry=["target/device-bundle.tar.gz"], timeout_s=420)
# Writes everything to $OUT (each step has its own time limit; the whole run stays under
# 5 minutes):
#   nvidia-smi.txt, info.txt
#   device_check.json  every kernel against its CPU twin (preprocess, BEV pool, argmax,
#                      colourise), then letsmap-lite FP16 and INT8 (encoder, head) and
#                      MobileNetV3 FP32/INT8-QDQ as kernel plans step by step (int8 bit-exact,
#                      FP16 1e-3), IMMA and dp4a, with graph-replay and per-convolution timings
#   conformance_cuda.jsonl  the ONNX node suite on --backend cuda
#   bench_*.json       bevrt bench, frame upload to class map, CUDA FP16 / INT8 and the CPU
#                      backend (all 16 cores) on the same machine in the same run
#   peer_torch.json    cuBLASLt INT8 GEMM (torch._int_mm) and FP16 GEMM on the plan's conv
#                      shapes, and device memory bandwidth, when PyTorch is installed there
set -u
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/device-out}"
mkdir -p "$OUT"
work="$(mktemp -d)"
tar -C "$work" -xzf target/device-bundle.tar.gz
B="$work/bin"
K="$work/kernels"
D="$work/data"
export BEVRT_KERNELS="$K"
status=0
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$B/bevrt" info > "$OUT/info.txt" 2>&1 || status=1
models=(--model "$D/letsmap-lite/encoder.onnx" --model "$D/letsmap-lite/bev_head.onnx"
        --model "$D/letsmap-lite-int8/encoder.onnx" --model "$D/letsmap-lite-int8/bev_head.onnx")
if [ -d "$D/onnx/models" ]; then
    models+=(--model "$D/onnx/models/ch_ppocr_mobile_v2.0_cls_infer.onnx:1,3,48,192"
             --model "$D/onnx/models/ch_ppocr_mobile_v2.0_cls_int8_qdq.onnx:1,3,48,192")
fi
timeout 150 "$B/bevrt-device-check" --kernels "$K" --out "$OUT/device_check.json" "${models[@]}" \
    > "$OUT/device_check.log" 2>&1 || status=1
tail -2 "$OUT/device_check.log"
if [ -d "$D/onnx/node/cases" ]; then
    timeout 60 "$B/bevrt" conformance --suite "$D/onnx/node/cases" --backend cuda --json \
        > "$OUT/conformance_cuda.jsonl" 2> "$OUT/conformance_cuda.log" || status=1
    tail -1 "$OUT/conformance_cuda.jsonl"
fi
for cfg in "cuda letsmap-lite" "cuda letsmap-lite-int8" "cpu letsmap-lite" "cpu letsmap-lite-int8"; do
    set -- $cfg
    timeout 60 "$B/bevrt" bench --bundle "$D/$2" --backend "$1" --frames 500 --frame-size 1920x1080 --json \
        > "$OUT/bench_$1_$2.json" 2> "$OUT/bench_$1_$2.log" || status=1
    echo "bench $1 $2: $(tail -c 400 "$OUT/bench_$1_$2.json" | tr '\n' ' ')"
done
if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    timeout 60 python3 tests/device/peer_torch.py "$OUT/device_check.json" > "$OUT/peer_torch.json" 2>&1 || status=1
    tail -5 "$OUT/peer_torch.json"
else
    echo '{"torch": "not installed on this machine"}' > "$OUT/peer_torch.json"
fi
echo "device run done (status $status); results in $OUT"
exit $status
