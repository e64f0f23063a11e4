#!/usr/bin/env bash
# The vehicle computer's architecture (aarch64: Jetson / DRIVE Orin) on an x86-64 machine:
# cross build, then under qemu-user (.cargo/config.toml names it as the runner)
#   - the CPU engine's exactness tests on every aarch64 family (portable, NEON, NEON+dotprod;
#     qemu's default CPU has dotprod), and the calib and models unit tests;
#   - `bevrt conformance --backend cpu-plan` on the staged ONNX node cases: every case's
#     outcome must equal the x86-64 run's (and none may fail);
#   - `bevrt demo` end to end on the CPU engine: its mIoU must equal x86-64's within 0.1.
# The rest of the suite runs on x86-64 only (qemu is 10-50x slower; see README).
# Usage: scripts/aarch64.sh [--build-only]   (installs what is missing; .ci/run calls it;
# --build-only stops after the cross build, as scripts/package.sh uses it)
set -euo pipefail
cd "$(dirname "$0")/.."
T=aarch64-unknown-linux-gnu

need=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu)
[ -e /usr/aarch64-linux-gnu/include/stdio.h ] || need+=(libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null 2>&1 || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
rustup target list --installed | grep -q "^$T\$" || rustup target add "$T"

# bevrt-tool without the host feature (training, quantization): the vehicle's tool, no candle.
cross_build() {
    cargo build --release --target "$T" -p bevrt-runtime -p bevrt-tools --no-default-features \
        --features bevrt-runtime/v4l
}
if [ "${1:-}" = --build-only ]; then
    cross_build
    exit 0
fi

echo "== aarch64: cross build of bevrt and bevrt-tool (V4L2 feature on)"
cross_build
# x86-64's side of the comparisons: CI's test command built it (a no-op then, with its features).
cargo test -q --release --workspace --features "${BEVRT_FEATURES:-bevrt-runtime/v4l}" --no-run

echo "== aarch64: unit tests under qemu (kernels on every ISA family, calib, models)"
# Selected through bevrt-tools with the binaries' features, so the dependencies resolve as in
# the cross build above and only the three test harnesses compile (alone, the three crates
# resolve tract, half, syn, ... with other features: a second 4-5 minute dependency build).
BEVRT_EXPECT_ISAS=portable,neon,neon-dotprod \
    cargo test --release --target "$T" -p bevrt-kernels -p bevrt-calib -p bevrt-models \
    -p bevrt-tools --no-default-features --features bevrt-runtime/v4l --lib

strip_mb() { # size of a stripped copy, MB
    local t; t="$(mktemp)"; "$1" -o "$t" "$2"
    awk -v b="$(stat -c %s "$t")" 'BEGIN { printf "%.1f", b / 1e6 }'; rm -f "$t"
}
for b in bevrt bevrt-tool; do
    echo "$b stripped: x86-64 $(strip_mb strip "target/release/$b") MB, aarch64 $(strip_mb aarch64-linux-gnu-strip "target/$T/release/$b") MB"
done
# JetPack 6 (L4T r36) is Ubuntu 22.04: glibc 2.35. A symbol version above it would not load.
glibc="$(aarch64-linux-gnu-objdump -T "target/$T/release/bevrt" | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1)"
echo "bevrt (aarch64) needs $glibc at most (JetPack 6 / Ubuntu 22.04 has GLIBC_2.35)"
if [ "$(printf '%s\nGLIBC_2.35\n' "$glibc" | sort -V | tail -1)" != "GLIBC_2.35" ]; then
    echo "the aarch64 bevrt needs $glibc, newer than JetPack 6's glibc 2.35" >&2
    exit 1
fi
qemu=(qemu-aarch64 -L /usr/aarch64-linux-gnu)
arm="target/$T/release/bevrt"
x86="target/release/bevrt"
work="$(mktemp -d)"

cases="${BEVRT_SHARED:-../shared}/data/onnx/node/cases"
if [ -d "$cases" ]; then
    echo "== aarch64: conformance on cpu-plan, case by case against x86-64"
    outcomes() { python3 -c '
import json, sys
for l in sys.stdin:
    l = l.strip()
    if l.startswith("{"):
        c = json.loads(l)
        print(c.get("case") or c.get("name"), c.get("outcome") or c.get("status"))'; }
    "$x86" conformance --backend cpu-plan --suite "$cases" --json | outcomes | sort > "$work/x86.txt"
    "${qemu[@]}" "$arm" conformance --backend cpu-plan --suite "$cases" --json | outcomes | sort > "$work/arm.txt"
    if ! diff "$work/x86.txt" "$work/arm.txt"; then
        echo "aarch64 conformance outcomes differ from x86-64's" >&2
        exit 1
    fi
    awk '{n[$2]++} END {for (k in n) printf "%s %d  ", k, n[k]; print ""}' "$work/arm.txt"
    if grep -qiE ' (fail|failed|error)' "$work/arm.txt"; then
        echo "aarch64 conformance has failing cases" >&2
        exit 1
    fi
else
    echo "SKIP conformance: no staged cases at $cases"
fi

echo "== aarch64: bevrt demo on the CPU engine, mIoU against x86-64"
miou() { sed -n 's/^mIoU \([0-9.]*\).*/\1/p'; }
m86="$("$x86" demo --frames 8 --backend cpu-plan --out "$work/demo-x86" | miou)"
marm="$("${qemu[@]}" "$arm" demo --frames 8 --backend cpu-plan --out "$work/demo-arm" | miou)"
echo "demo mIoU: x86-64 $m86, aarch64 (qemu) $marm"
python3 -c "import sys; a, b = float('$m86'), float('$marm'); sys.exit(0 if abs(a - b) <= 0.1 else 1)" || {
    echo "aarch64 demo mIoU $marm differs from x86-64's $m86 by more than 0.1" >&2
    exit 1
}
rm -rf "$work"
echo "aarch64: all checks passed"
