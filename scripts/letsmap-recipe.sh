#!/usr/bin/env bash
# The whole letsmap-lite recipe: simulated data, MAE, BAM and InvProp pretraining, the geometry
# pathway (depth from unlabelled 10 fps video with ego-motion), fine-tuning at 1 %, 10 % and
# 100 % of the BEV labels (1 % rows of scratch and geometry on three label subsets, mean ± std),
# evaluation of every row through the deployment path, the results table, and (with --ship) the
# reference bundle the demo embeds. Each step prints its time; every step is cached (a row
# whose bundle exists is kept) and pretraining resumes.
#
#   scripts/letsmap-recipe.sh [--work DIR] [--quick] [--ship]
#
# --quick: a reduced version (minutes) with the same steps. Everything is seeded: the same
# command gives the same bundles. Needs `cargo build --release` first.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=out/letsmap
QUICK=0
SHIP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --work) WORK="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --ship) SHIP=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
TOOL=target/release/bevrt-tool
[ -x "$TOOL" ] || { echo "build first: cargo build --release" >&2; exit 2; }

# Train seeds 1..6 (6 x 200 frames at 2 fps, one frame per ~5 m), held-out seed 1000.
TRAIN_SEEDS="1 2 3 4 5 6"; FRAMES=200; TEST_FRAMES=150
PT_EPOCHS=3; ITERS=1000
# Unlabelled drives for the geometry pathway: 24 (4x the labelled drives' count, 2x their frames),
# 100 frames at 10 fps (1 m between frames); the held-out drive again at 10 fps with depth maps,
# only to report the learned depth. 1 % rows: 500 steps, the first 100 LP-FT's probe.
UNLAB_SEEDS=$(seq 101 124); UNLAB_FRAMES=100; GEO_EPOCHS=2; ITERS_1=500; PROBE_1=100
if [ $QUICK = 1 ]; then TRAIN_SEEDS="1 2"; FRAMES=50; TEST_FRAMES=30; PT_EPOCHS=1; ITERS=60
  UNLAB_SEEDS="101 102"; UNLAB_FRAMES=30; GEO_EPOCHS=1; ITERS_1=60; PROBE_1=20; fi

mkdir -p "$WORK"
T0=$(date +%s)
for s in $TRAIN_SEEDS; do
  [ -f "$WORK/train/s$s/recording.toml" ] || \
    $TOOL sim record --seed "$s" --frames $FRAMES --fps 2 --cell 0.5 --out "$WORK/train/s$s" >/dev/null
done
[ -f "$WORK/test/recording.toml" ] || \
  $TOOL sim record --seed 1000 --frames $TEST_FRAMES --fps 2 --cell 0.5 --out "$WORK/test" >/dev/null
for s in $UNLAB_SEEDS; do
  [ -f "$WORK/unlabelled/s$s/recording.toml" ] || \
    $TOOL sim record --seed "$s" --frames $UNLAB_FRAMES --fps 10 --cell 0.5 --out "$WORK/unlabelled/s$s" >/dev/null
done
[ -f "$WORK/test10/recording.toml" ] || \
  $TOOL sim record --seed 1000 --frames $TEST_FRAMES --fps 10 --cell 0.5 --extras --out "$WORK/test10" >/dev/null
echo "data: $(( $(date +%s) - T0 )) s"

if [ ! -f "$WORK/pretrain/pretrain.json" ] || ! grep -q "\"epochs_done\": $PT_EPOCHS" "$WORK/pretrain/pretrain.json"; then
  RES=""; [ -f "$WORK/pretrain/pretrain.json" ] && RES="--resume"
  $TOOL pretrain --data "$WORK/train" --out "$WORK/pretrain" --epochs $PT_EPOCHS $RES
fi

# Geometry pathway: the lift's depth distribution from unlabelled video (no depth labels;
# --eval-depth only reports AbsRel on the held-out drive).
T1=$(date +%s)
if [ ! -f "$WORK/geometry/geometry.json" ] || ! grep -q "\"epochs_done\": $GEO_EPOCHS" "$WORK/geometry/geometry.json"; then
  RES=""; [ -f "$WORK/geometry/geometry.json" ] && RES="--resume"
  $TOOL pretrain-geometry --data "$WORK/unlabelled" --out "$WORK/geometry" --epochs $GEO_EPOCHS \
    --eval-depth "$WORK/test10" $RES
fi
echo "geometry pathway: $(( $(date +%s) - T1 )) s"

# Semantic pretraining alternatives on the same unlabelled frames: BAM and Invariance
# Propagation on the letsmap-lite encoder (bevrt-tool ssl drive), fine-tuned like the MAE rows.
for m in bam invprop; do
  [ -f "$WORK/ssl-$m/pretrain.json" ] || \
    $TOOL ssl drive --method $m --data "$WORK/train" --epochs $PT_EPOCHS --out "$WORK/ssl-$m"
done

row() { # name, extra finetune args... (a row whose bundle exists is kept: delete it to redo)
  local name=$1; shift
  local t=$(date +%s)
  mkdir -p "$WORK/bundles"
  if [ ! -f "$WORK/bundles/$name/bundle.toml" ]; then
    rm -rf "$WORK/bundles/$name"
    $TOOL finetune --data "$WORK/train" --iters $ITERS --out "$WORK/bundles/$name" "$@"
  fi
  $TOOL eval --bundle "$WORK/bundles/$name" --data "$WORK/test" --json > "$WORK/bundles/$name.eval.json"
  echo "row $name: $(( $(date +%s) - t )) s"
}
PT="$WORK/pretrain/pretrain.safetensors"
# Every row trains for the same number of steps; "mae" rows start the encoder from the
# pretraining checkpoint and fine-tune all of it, like the scratch rows (a frozen encoder
# was also tried: the mae-1-frozen row).
# (--unfreeze-last 6: the five encoder convs and the lift conv, i.e. all of encoder.onnx)
row scratch-1       --label-fraction 0.01
row mae-1           --label-fraction 0.01 --encoder "$PT" --unfreeze-last 6
row mae-1-frozen    --label-fraction 0.01 --encoder "$PT"
row bam-1           --label-fraction 0.01 --encoder "$WORK/ssl-bam/pretrain.safetensors" --unfreeze-last 6
row invprop-1       --label-fraction 0.01 --encoder "$WORK/ssl-invprop/pretrain.safetensors" --unfreeze-last 6
row mae-10          --label-fraction 0.10 --encoder "$PT" --unfreeze-last 6
row scratch-100     --label-fraction 1.0
GEO="$WORK/geometry/geometry.safetensors"
for sub in 0 1 2; do
  ITERS=$ITERS_1 row scratch-1-s$sub --label-fraction 0.01 --subset $sub
  ITERS=$ITERS_1 row geometry-1-s$sub --label-fraction 0.01 --subset $sub --encoder "$GEO" \
    --unfreeze-last 6 --probe-iters $PROBE_1
done

ITERS_1=$ITERS_1 python3 - "$WORK" <<'PY'
import json, sys
w = sys.argv[1]
rows = [("scratch", "1 %", "scratch-1"), ("MAE-pretrained", "1 %", "mae-1"),
        ("MAE-pretrained, frozen", "1 %", "mae-1-frozen"),
        ("BAM-pretrained (ssl drive)", "1 %", "bam-1"),
        ("InvProp-pretrained (ssl drive)", "1 %", "invprop-1"),
        ("MAE-pretrained", "10 %", "mae-10"), ("scratch", "100 %", "scratch-100")]
out = ["| encoder init | BEV labels used | mIoU | road IoU | car IoU |", "|---|---|---|---|---|"]
for init, frac, name in rows:
    s = json.load(open(f"{w}/bundles/{name}.eval.json"))
    iou = {c["class"]: c["iou"] for c in s["per_class"]}
    f = lambda v: "-" if v is None else f"{v:.1f}"
    out.append(f"| {init} | {frac} | {s['miou']:.1f} | {f(iou.get('road'))} | {f(iou.get('car'))} |")
import statistics as st
import os
steps = os.environ.get("ITERS_1", "?")
for init, base in [(f"scratch, 3 label subsets, {steps} steps", "scratch-1-s"),
                   (f"geometry pathway, LP-FT, 3 label subsets, {steps} steps", "geometry-1-s")]:
    runs = [json.load(open(f"{w}/bundles/{base}{k}.eval.json")) for k in range(3)]
    def ms(vals):
        return f"{st.mean(vals):.1f} ± {st.stdev(vals):.1f}"
    iou = lambda r, c: next(x["iou"] for x in r["per_class"] if x["class"] == c) or 0.0
    out.append(f"| {init} | 1 % | {ms([r['miou'] for r in runs])} | "
               f"{ms([iou(r, 'road') for r in runs])} | {ms([iou(r, 'car') for r in runs])} |")
open(f"{w}/table.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
echo "recipe: $(( $(date +%s) - T0 )) s"
if [ $SHIP = 1 ]; then
  rm -rf models/bundles/letsmap-lite
  mkdir -p models/bundles
  # The best row on the held-out drive ships (its recipe and scores are in its manifest).
  best=$(python3 -c "import json,sys; r=sys.argv[2:]; print(max(r, key=lambda n: json.load(open(f'{sys.argv[1]}/bundles/{n}.eval.json'))['miou']))" "$WORK" scratch-1 mae-1 mae-1-frozen mae-10 scratch-100)
  cp -r "$WORK/bundles/$best" models/bundles/letsmap-lite
  $TOOL eval --bundle models/bundles/letsmap-lite --data "$WORK/test" --record >/dev/null
  echo "shipped $WORK/bundles/$best as models/bundles/letsmap-lite (rebuild bevrt to embed it)"
fi
