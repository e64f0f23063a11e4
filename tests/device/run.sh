#!/usr/bin/env bash
# One prepared call on a GPU machine (the `device` tool), after tests/device/prepare.sh here:
#   run(command="bash tests/device/run.sh", carry=["target/device-bundle.tar.gz"], timeout_s=300)
# Writes everything to $OUT: nvidia-smi, `bevrt info`, the GPU-against-reference check of every
# kernel (device_check.json: preprocess within 1e-4 relative for every pixel format, channel
# order and layout; BEV pool within 1e-5; argmax and colourise bit-exact; kernel timings),
# and the CUDA backend's conformance run. Finishes in well under 5 minutes.
set -u
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/device-out}"
mkdir -p "$OUT"
work="$(mktemp -d)"
tar -C "$work" -xzf target/device-bundle.tar.gz
B="$work/bin"
K="$work/kernels"
status=0
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$B/bevrt" info > "$OUT/info.txt" 2>&1 || status=1
timeout 120 "$B/bevrt-device-check" --kernels "$K" --out "$OUT/device_check.json" \
    > "$OUT/device_check.log" 2>&1 || status=1
tail -3 "$OUT/device_check.log"
# The CUDA executor (ONNX graph -> kernel plan) is not built yet: this records its clear
# load-time refusal until it is; cases are then in the carried tree only if shared/ is there.
suite="${BEVRT_SHARED:-shared}/data/onnx/node/cases"
if [ -d "$suite" ]; then
    timeout 120 "$B/bevrt" conformance --suite "$suite" --backend cuda > "$OUT/conformance_cuda.txt" 2>&1 || true
    tail -1 "$OUT/conformance_cuda.txt"
fi
echo "device run done (status $status); results in $OUT"
exit $status
