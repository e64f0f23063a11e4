#!/usr/bin/env bash
# Debian packages of bevrt, built with cargo-deb (metadata: runtime/Cargo.toml), and their test.
#
#   bevrt_VERSION_amd64.deb   x86-64 nodes: CUBINs for sm_87 and sm_90
#   bevrt_VERSION_arm64.deb   Jetson / DRIVE Orin (JetPack 6): CUBINs for sm_87
# Each holds bevrt and bevrt-tool (V4L2 feature on; on amd64 also GStreamer when BEVRT_FEATURES
# names bevrt-runtime/gst, as .ci/run does: then the package depends on GStreamer's libraries), the CUDA kernels compiled ahead of time by
# `bevrt-tool compile-kernels` (plus compute_80 PTX for other GPUs from sm_80 on), the shipped
# bundles, /etc/bevrt/bevrt.toml (a conffile), bevrt.service (installed disabled) and the
# bevrt system user (systemd-sysusers).
#
# The test, without systemd as PID 1: the amd64 package is installed into a scratch root with
# `dpkg --root --force-script-chrootless` (its maintainer scripts run, with DPKG_ROOT), every
# file is checked where the unit expects it, the seeded store runs a few frames with the
# installed binary and config, and `dpkg --purge` removes the state again. The arm64 package's
# contents and architecture are checked, and its bevrt runs under qemu-aarch64.
#
# Usage: scripts/package.sh [amd64] [arm64]   (default: both; arm64 needs scripts/aarch64.sh's
# cross toolchain, which it installs when missing). Needs libnvrtc (installed as .ci/run does).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- amd64 arm64
arches=("$@")
A64=aarch64-unknown-linux-gnu
out=target/debian
fail() { echo "package: $*" >&2; exit 1; }

command -v cargo-deb >/dev/null 2>&1 || cargo install -q --locked cargo-deb@3.8.0

nvrtc_dir="${XDG_CACHE_HOME:-$HOME/.cache}/bevrt-nvrtc"
if ! ldconfig -p | grep -q libnvrtc.so && [ ! -e "$nvrtc_dir/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" ]; then
    python3 -m pip install -q --disable-pip-version-check --target "$nvrtc_dir" nvidia-cuda-nvrtc-cu12==12.6.77
fi
export LD_LIBRARY_PATH="$nvrtc_dir/nvidia/cuda_nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# The binaries (no-ops after the test build and scripts/aarch64.sh) and the kernels, staged
# where the package's assets name them (target/[TRIPLE/]release/kernels).
features="${BEVRT_FEATURES:-bevrt-runtime/v4l}"
cargo test -q --release --workspace --features "$features" --no-run
kernels=target/release/kernels
rm -rf "$kernels" "$kernels".sm_* && mkdir -p "$kernels"
for sm in sm_87 sm_90; do # one NVRTC process per core
    target/release/bevrt-tool compile-kernels --arch "$sm" --out "$kernels.$sm" > "$kernels.$sm.log" &
done
for sm in sm_87 sm_90; do
    wait -n || { cat "$kernels".sm_*.log; fail "compile-kernels failed"; }
done
for sm in sm_87 sm_90; do
    tail -1 "$kernels.$sm.log"
    mv "$kernels.$sm"/* "$kernels/" && rm -r "$kernels.$sm" "$kernels.$sm.log"
done

# Man pages of both binaries, generated from their clap definitions (`manual --format man`), gzipped
# as Debian keeps them; each package's from its own binaries (the arm64 bevrt-tool has no
# training commands), run under qemu for arm64.
stage_man() { # RELEASE_DIR [RUNNER...]
    local dir="$1"
    shift
    rm -rf "$dir/man"
    for b in bevrt bevrt-tool; do
        "$@" "$dir/$b" manual --format man --out "$dir/man" || fail "$b manual --format man failed"
    done
    gzip -9nf "$dir"/man/*.1
}
stage_man target/release

build_deb() { # ARCH
    case "$1" in
    amd64)
        local variant=()
        [[ "$features" == *bevrt-runtime/gst* ]] && variant=(--variant gst)
        cargo deb -q -p bevrt-runtime --no-build "${variant[@]}" --output "$out/"
        ;;
    arm64)
        scripts/aarch64.sh --build-only
        stage_man "target/$A64/release" qemu-aarch64 -L /usr/aarch64-linux-gnu
        local k="target/$A64/release/kernels"
        rm -rf "$k" && mkdir -p "$k"
        # The vehicle's GPU is sm_87; the PTX covers any other sm_80+ part.
        cp "$kernels"/*.sm_87.* "$kernels"/*.compute_80.ptx "$k/"
        env "STRIP_$A64=aarch64-linux-gnu-strip" "OBJCOPY_$A64=aarch64-linux-gnu-objcopy" \
            cargo deb -q -p bevrt-runtime --no-build --target "$A64" --output "$out/"
        ;;
    *) fail "unknown architecture '$1' (amd64 or arm64)" ;;
    esac
}

deb_of() { ls -t "$out"/bevrt_*_"$1".deb | head -1; }

# What every package must hold, wherever bevrt.service and the config expect it.
check_contents() { # DEB ARCH
    local deb="$1" arch="$2" list
    [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || fail "$deb: Architecture is not $arch"
    list="$(dpkg-deb -c "$deb" | awk '{print $6}')"
    local want=(./usr/bin/bevrt ./usr/bin/bevrt-tool ./etc/bevrt/bevrt.toml
        ./usr/lib/systemd/system/bevrt.service ./usr/lib/sysusers.d/bevrt.conf
        ./usr/share/bevrt/bundles/letsmap-lite/bundle.toml
        ./usr/share/bevrt/bundles/letsmap-lite-1pct/selftest/frame.png
        ./usr/lib/bevrt/kernels/conv.sm_87.cubin ./usr/lib/bevrt/kernels/conv.compute_80.ptx
        ./usr/share/man/man1/bevrt.1.gz ./usr/share/man/man1/bevrt-run.1.gz
        ./usr/share/man/man1/bevrt-tool.1.gz ./usr/share/man/man1/bevrt-tool-deploy.1.gz)
    [ "$arch" = amd64 ] && want+=(./usr/lib/bevrt/kernels/conv.sm_90.cubin)
    for f in "${want[@]}"; do
        grep -qx -- "$f" <<< "$list" || fail "$deb: no $f"
    done
    if [ "$arch" = amd64 ] && ! grep -qx ./usr/share/man/man1/bevrt-tool-finetune.1.gz <<< "$list"; then
        fail "$deb: no man page for the host's bevrt-tool finetune"
    fi
    if [ "$arch" = arm64 ] && grep -q 'bevrt-tool-finetune' <<< "$list"; then
        fail "$deb: a man page for finetune, which the vehicle's bevrt-tool lacks"
    fi
    if [ "$arch" = arm64 ] && grep -q 'sm_90' <<< "$list"; then
        fail "$deb: the arm64 package carries sm_90 CUBINs"
    fi
    dpkg-deb -I "$deb" conffiles | grep -qx /etc/bevrt/bevrt.toml || fail "$deb: bevrt.toml is not a conffile"
    echo "$deb: $(grep -c . <<< "$list") paths, $(du -k "$deb" | cut -f1) KiB, contents as expected"
}

# Install into a scratch root (maintainer scripts included), run what it installed, purge.
check_install_amd64() {
    local deb root
    deb="$(deb_of amd64)"
    root="$(mktemp -d)"
    trap 'rm -rf "$root"' RETURN
    mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc"
    touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
    # dpkg --root: the scripts run outside a chroot with DPKG_ROOT set; the scratch root has
    # no libc6 or systemd packages, so their dependencies are forced.
    dpkg --root="$root" --force-script-chrootless --force-depends --log=/dev/null -i "$deb" \
        >/dev/null 2>"$root/dpkg.log" || { cat "$root/dpkg.log"; fail "dpkg -i $deb into $root failed"; }
    grep -q '^bevrt:' "$root/etc/passwd" || fail "postinst created no bevrt user"
    grep -Eq '^video:[^:]*:[0-9]+:(.*,)?bevrt(,|$)' "$root/etc/group" || fail "bevrt is not in the video group"
    local uid
    uid="$(awk -F: '$1 == "bevrt" { print $3 }' "$root/etc/passwd")"
    [ "$(stat -c %u "$root/var/lib/bevrt/store/state.toml")" = "$uid" ] || fail "the store is not owned by bevrt"
    # The unit's paths, from the installed unit itself.
    local unit="$root/usr/lib/systemd/system/bevrt.service"
    local exe conf kdir
    exe="$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit")"
    conf="$(sed -n 's/^ExecStart=.*--config \([^ ]*\).*/\1/p' "$unit")"
    kdir="$(sed -n 's/^Environment=BEVRT_KERNELS=//p' "$unit")"
    [ -x "$root$exe" ] || fail "ExecStart $exe is not installed"
    [ -f "$root$conf" ] || fail "the unit's config $conf is not installed"
    [ -n "$(ls "$root$kdir"/*.sm_87.cubin 2>/dev/null)" ] || fail "no sm_87 CUBINs in BEVRT_KERNELS=$kdir"
    for c in "$root$kdir"/*.cubin; do # ELF, machine EM_CUDA (190)
        [ "$(od -An -tx1 -j18 -N1 "$c" | tr -d ' ')" = be ] || fail "$c is not a CUDA ELF image"
    done
    [ "$("$root/usr/bin/bevrt-tool" store status --store "$root/var/lib/bevrt/store" --verify \
        | grep -c letsmap-lite)" -gt 0 ] || fail "the seeded store does not hold letsmap-lite"
    # The installed binary on the installed config, its paths moved into the scratch root.
    local report
    sed "s|/var/lib/bevrt|$root/var/lib/bevrt|g" "$root$conf" > "$root/bevrt.toml"
    report="$("$root$exe" run --config "$root/bevrt.toml" --prometheus 127.0.0.1:0 \
        --max-frames 5 --backend cpu --json 2>"$root/run.log")" || { cat "$root/run.log"; fail "the installed bevrt failed"; }
    python3 -c 'import json, sys; r = json.loads(sys.argv[1]); sys.exit(0 if r["frames_processed"] >= 5 and r["inference_errors"] == 0 else 1)' \
        "$report" || fail "the installed bevrt did not run 5 frames from the seeded store: $report"
    dpkg --root="$root" --force-script-chrootless --log=/dev/null --purge bevrt >/dev/null 2>&1
    [ ! -e "$root/var/lib/bevrt" ] || fail "purge left /var/lib/bevrt"
    [ ! -e "$root/etc/bevrt/bevrt.toml" ] || fail "purge left /etc/bevrt/bevrt.toml"
    [ ! -e "$root/usr/bin/bevrt" ] || fail "purge left /usr/bin/bevrt"
    echo "$deb: installs into a scratch root (user bevrt in video, store seeded and owned by it," \
        "5 frames from it with the installed config), purges clean"
}

check_arm64_runs() {
    local deb root
    deb="$(deb_of arm64)"
    root="$(mktemp -d)"
    trap 'rm -rf "$root"' RETURN
    dpkg-deb -x "$deb" "$root"
    file -b "$root/usr/bin/bevrt" 2>/dev/null | grep -q aarch64 \
        || [ "$(od -An -tx1 -j18 -N1 "$root/usr/bin/bevrt" | tr -d ' ')" = b7 ] \
        || fail "$deb: usr/bin/bevrt is not an aarch64 executable"
    qemu-aarch64 -L /usr/aarch64-linux-gnu "$root/usr/bin/bevrt" --version >/dev/null \
        || fail "$deb: usr/bin/bevrt does not run under qemu-aarch64"
    echo "$deb: usr/bin/bevrt is aarch64 and runs under qemu-aarch64"
}

for a in "${arches[@]}"; do
    build_deb "$a"
    check_contents "$(deb_of "$a")" "$a"
done
for a in "${arches[@]}"; do
    case "$a" in
    amd64) check_install_amd64 ;;
    arm64) check_arm64_runs ;;
    esac
done
echo "package: all checks passed"
