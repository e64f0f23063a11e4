#!/usr/bin/env bash
# What a camera stream costs bevrt on this CPU, with GStreamer itself as the yardstick:
#   1. decode of a 1080p H.264 file by GStreamer alone (gst-launch to fakesink, NV12 out) —
#      the floor for any GStreamer-based runtime;
#   2. the same file through bevrt (`video:`, letsmap-lite, cpu-plan): frames/s, preprocess
#      (NV12 1080p -> the network's 384x128) and inference per frame;
#   3. live: GStreamer's RTSP server (scripts/rtsp-server.py, x264 ultrafast, 30 fps, on this
#      same machine) into bevrt (`rtsp://`) for DURATION s: frames dropped, and the latency from
#      the buffer's capture-clock time (the RTP timestamp mapped onto this host's clock by the
#      jitter buffer, latency=100 ms) to the finished map.
# Each part runs RUNS times; min / median / max are printed. Needs the gst feature, GStreamer's
# plugins and tools, and Debian's python3 with GstRtspServer (what .ci/run installs).
#
# Usage: scripts/stream-bench.sh [--runs N] [--seconds DURATION] [--size WxH] [--work DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=3
DURATION=20
SIZE=1920x1080
WORK=target/stream-bench
while [ $# -gt 0 ]; do
    case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --seconds) DURATION=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
W=${SIZE%x*}
H=${SIZE#*x}
FRAMES=300
cargo build --release -q --workspace --features "${BEVRT_FEATURES:-bevrt-runtime/v4l,bevrt-runtime/gst}" --bins
BEVRT=target/release/bevrt
BUNDLE=models/bundles/letsmap-lite
mkdir -p "$WORK"
CLIP="$WORK/clip-${W}x${H}.mp4"
# Noise at a 1080p camera's bitrate (8 Mbit/s, 4:2:0, x264 medium, 30 fps, 10 s): every bit of the
# budget is spent, so entropy decoding costs what a real stream of that rate costs (motion
# compensation finds nothing to reuse: a worst case for the decoder).
[ -f "$CLIP" ] || gst-launch-1.0 -q videotestsrc num-buffers=$FRAMES pattern=snow \
    ! "video/x-raw,format=I420,width=$W,height=$H,framerate=30/1" \
    ! x264enc speed-preset=medium bitrate=8000 key-int-max=30 ! mp4mux ! filesink location="$CLIP"

stats() { # values on stdin -> "min median max"
    sort -g | awk '{ v[NR] = $1 } END { printf "%.2f / %.2f / %.2f", v[1], v[int((NR + 1) / 2)], v[NR] }'
}
field() { # JSON report on stdin, python expression over r
    python3 -c "import json, sys; r = json.load(sys.stdin); print($1)"
}

echo "== $CLIP: ${W}x${H} H.264, $FRAMES frames; $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
decode=()
for _ in $(seq "$RUNS"); do
    t0=$(date +%s.%N)
    gst-launch-1.0 -q filesrc location="$CLIP" ! decodebin ! videoconvert ! video/x-raw,format=NV12 \
        ! fakesink sync=false
    t1=$(date +%s.%N)
    decode+=("$(python3 -c "print(($t1 - $t0) * 1000 / $FRAMES)")")
done
echo "GStreamer alone, decode to NV12: ms per frame (min / median / max): $(printf '%s\n' "${decode[@]}" | stats)"

fps=() pre=() inf=()
for i in $(seq "$RUNS"); do
    r="$(RUST_LOG=warn $BEVRT run --bundle $BUNDLE --backend cpu-plan --source "video:$CLIP" \
        --out "$WORK/file-$i" --sinks jsonl --json)"
    fps+=("$(field 'r["fps"]' <<< "$r")")
    pre+=("$(field 'r["stages"]["preprocess"]["p50_ms"]' <<< "$r")")
    inf+=("$(field 'r["stages"]["inference"]["p50_ms"]' <<< "$r")")
done
echo "bevrt video: -> map: frames/s $(printf '%s\n' "${fps[@]}" | stats);" \
    "preprocess p50 ms $(printf '%s\n' "${pre[@]}" | stats); inference p50 ms $(printf '%s\n' "${inf[@]}" | stats)"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
drop=() p50=() p99=() got=()
for i in $(seq "$RUNS"); do
    /usr/bin/python3 scripts/rtsp-server.py --port "$port" --width "$W" --height "$H" --fps 30 \
        --max-seconds $((DURATION + 30)) > "$WORK/server.log" 2>&1 &
    server=$!
    for _ in $(seq 50); do grep -q READY "$WORK/server.log" && break; sleep 0.1; done
    r="$(RUST_LOG=warn $BEVRT run --bundle $BUNDLE --backend cpu-plan \
        --source "rtsp://127.0.0.1:$port/h264" --out "$WORK/live-$i" --sinks jsonl \
        --duration "$DURATION" --json)"
    kill "$server"; wait "$server" 2>/dev/null || true
    got+=("$(field 'r["frames_processed"] / r["elapsed_s"]' <<< "$r")")
    drop+=("$(field '100 * r["frames_dropped"] / max(1, r["frames_captured"])' <<< "$r")")
    p50+=("$(field 'r["stages"]["stream_to_map"]["p50_ms"]' <<< "$r")")
    p99+=("$(field 'r["stages"]["stream_to_map"]["p99_ms"]' <<< "$r")")
done
echo "bevrt rtsp:// ${W}x${H} at 30 fps live, ${DURATION} s: maps/s $(printf '%s\n' "${got[@]}" | stats);" \
    "dropped % $(printf '%s\n' "${drop[@]}" | stats); stream to map p50 ms $(printf '%s\n' "${p50[@]}" | stats)," \
    "p99 ms $(printf '%s\n' "${p99[@]}" | stats)"
