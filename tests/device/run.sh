#!/usr/bin/env bash
# One prepared call on a GPU machine (the `device` tool), after tests/device/prepare.sh here:
#   run(command="bash tests/device/run.sh", carry=["target/device-bundle.tar.gz"], timeout_s=420)
# Steps run from cheapest to most expensive, and each writes its results to $OUT as soon as
# it has them (the device check rewrites its JSON after every group), so a run cut short by
# its time limit still returns everything done so far. $OUT/summary.txt gets one line per
# finished step (name, exit status, seconds): the first thing to read.
#   nvidia-smi.txt, info.txt   driver, device, CUDA and NVRTC versions
#   device_check.json          groups, cheapest first: f16 conversions (the PTX rounding and
#                              NaN rules), argmax/colourise, BEV pool, AFV, preprocess, then
#                              letsmap-lite FP16/INT8 and MobileNetV3 FP32/INT8 plans step by
#                              step against the CPU twins (IMMA and dp4a), with timings
#   bench_cuda_*.json          bevrt bench, frame upload to class map, CUDA FP16 / INT8
#   conformance_cuda.jsonl     the ONNX node suite on --backend cuda
#   bench_cpu_*.json           the CPU backend on the same machine (all 16 cores)
#   peer_torch.json            cuBLASLt INT8 GEMM (torch._int_mm) and FP16 GEMM on the plan's
#                              conv shapes, and memory bandwidth, when PyTorch is installed
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
summary="$OUT/summary.txt"
: > "$summary"

# step NAME LIMIT_S COMMAND...: run with a time limit, record status and seconds at once
step() {
    local name="$1" limit="$2"
    shift 2
    local t0=$SECONDS rc=0
    timeout "$limit" "$@" || rc=$?
    [ "$rc" -eq 0 ] || status=1
    echo "$name rc=$rc ${rc/124/(time limit)} $((SECONDS - t0))s" | tee -a "$summary"
}

step nvidia-smi 20 bash -c "nvidia-smi > '$OUT/nvidia-smi.txt' 2>&1"
step info 30 bash -c "'$B/bevrt' info > '$OUT/info.txt' 2>&1"
models=(--model "$D/letsmap-lite/encoder.onnx" --model "$D/letsmap-lite/bev_head.onnx"
        --model "$D/letsmap-lite-int8/encoder.onnx" --model "$D/letsmap-lite-int8/bev_head.onnx")
if [ -d "$D/onnx/models" ]; then
    models+=(--model "$D/onnx/models/ch_ppocr_mobile_v2.0_cls_infer.onnx:1,3,48,192"
             --model "$D/onnx/models/ch_ppocr_mobile_v2.0_cls_int8_qdq.onnx:1,3,48,192")
fi
step device-check 150 bash -c "'$B/bevrt-device-check' --kernels '$K' --out '$OUT/device_check.json' ${models[*]} > '$OUT/device_check.log' 2>&1"
tail -2 "$OUT/device_check.log"
for b in letsmap-lite letsmap-lite-int8; do
    step "bench cuda $b" 60 bash -c "'$B/bevrt' bench --bundle '$D/$b' --backend cuda --frames 300 --frame-size 1920x1080 --json > '$OUT/bench_cuda_$b.json' 2> '$OUT/bench_cuda_$b.log'"
done
if [ -d "$D/onnx/node/cases" ]; then
    step conformance-cuda 60 bash -c "'$B/bevrt' conformance --suite '$D/onnx/node/cases' --backend cuda --json > '$OUT/conformance_cuda.jsonl' 2> '$OUT/conformance_cuda.log'"
    tail -1 "$OUT/conformance_cuda.jsonl"
fi
for b in letsmap-lite letsmap-lite-int8; do
    step "bench cpu $b" 60 bash -c "'$B/bevrt' bench --bundle '$D/$b' --backend cpu --frames 300 --frame-size 1920x1080 --json > '$OUT/bench_cpu_$b.json' 2> '$OUT/bench_cpu_$b.log'"
done
if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    step peer-torch 60 bash -c "python3 tests/device/peer_torch.py '$OUT/device_check.json' > '$OUT/peer_torch.json' 2>&1"
    tail -5 "$OUT/peer_torch.json"
else
    echo '{"torch": "not installed on this machine"}' > "$OUT/peer_torch.json"
fi
echo "device run done (status $status); results in $OUT"
cat "$summary"
exit $status
