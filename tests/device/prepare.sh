#!/usr/bin/env bash
# Build, here (x86-64, no GPU), everything tests/device/run.sh needs on the GPU machine, which
# has no Rust toolchain, no NVRTC and no network: stripped binaries, ahead-of-time CUBINs for
# sm_87 and sm_90, the INT8 letsmap-lite bundle (quantized here), and the shared ONNX models
# and conformance cases, packed as target/device-bundle.tar.gz (carry that path).
set -euo pipefail
cd "$(dirname "$0")/../.."
shared="${BEVRT_SHARED:-$PWD/../shared}"
nvrtc_dir="${XDG_CACHE_HOME:-$HOME/.cache}/bevrt-nvrtc"
if [ ! -e "$nvrtc_dir/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" ]; then
    python3 -m pip install -q --target "$nvrtc_dir" nvidia-cuda-nvrtc-cu12==12.6.77
fi
export LD_LIBRARY_PATH="$nvrtc_dir/nvidia/cuda_nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cargo build --release -p bevrt-runtime -p bevrt-tests -p bevrt-tools --bins
d=target/device
rm -rf "$d"
mkdir -p "$d/bin" "$d/kernels" "$d/data"
for b in bevrt bevrt-device-check; do strip -o "$d/bin/$b" "target/release/$b"; done
for sm in 87 90; do target/release/bevrt-tool compile-kernels --arch "sm_$sm" --out "$d/kernels"; done
target/release/bevrt-tool quantize --bundle models/bundles/letsmap-lite \
    --calib-source "sim:?seed=5" --frames 200 --method minmax --out "$d/data/letsmap-lite-int8"
cp -r models/bundles/letsmap-lite "$d/data/letsmap-lite"
if [ -d "$shared/data/onnx" ]; then
    mkdir -p "$d/data/onnx"
    cp -r "$shared/data/onnx/models" "$shared/data/onnx/node" "$d/data/onnx/"
else
    echo "note: $shared/data/onnx not found: MobileNetV3 and conformance stay out of the bundle"
fi
tar -C "$d" -czf target/device-bundle.tar.gz bin kernels data
ls -la target/device-bundle.tar.gz
