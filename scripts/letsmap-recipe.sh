#!/usr/bin/env bash
# The letsmap-lite recipe (issue 19): simulated data; the two label-free pathways on unlabelled
# 10 fps drives (semantic: temporal MAE with random or structure-guided masking; geometry:
# depth from view synthesis with the ego-motion); fine-tuning at 1 % (three label subsets,
# mean ± std), 10 % and 100 % of the BEV labels; every row scored through the deployment path
# on the held-out drive; one table. Each step prints its time; every step is cached (a row
# whose bundle exists is kept, delete it to redo) and pretraining resumes.
#
#   scripts/letsmap-recipe.sh [--work DIR] [--quick] [--ship]
#
# --quick: a reduced version (minutes) with the same steps; it also writes learned.json, what
# the CI test checks (each pathway learns, a fine-tune beats its untrained start).
# --ship: copies to models/bundles/letsmap-lite-1pct the subset-0 bundle of the deployable 1 %
# row with the best mean mIoU on the validation drive (seed 2000): the held-out drive never
# picks what ships.
# Everything is seeded: the same command gives the same bundles. Needs `cargo build --release`
# (or BEVRT_TOOL=path/to/bevrt-tool).
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
TOOL=${BEVRT_TOOL:-target/release/bevrt-tool}
[ -x "$TOOL" ] || { echo "build first: cargo build --release" >&2; exit 2; }

# Labelled: seeds 1..6, 6 x 200 frames at 2 fps (one frame per ~5 m); held-out: seed 1000.
# Unlabelled: 24 drives (4x the labelled drives, 2x their frames), 100 frames at 10 fps (1 m
# between frames); the held-out drive again at 10 fps with depth maps, only to report depth.
TRAIN_SEEDS="1 2 3 4 5 6"; FRAMES=200; TEST_FRAMES=150
UNLAB_SEEDS=$(seq 101 124); UNLAB_FRAMES=100
MAE_EPOCHS=2; GEO_EPOCHS=2
# Fine-tuning: LP-FT (the first PROBE steps train the head on the frozen encoder), steps
# scaled to the label fraction (1 %: 12 frames, 500 steps; 10 %: 700; 100 %: 1000).
ITERS_1=500; ITERS_10=700; ITERS_100=1000; PROBE=100
GEO_ARGS=""
if [ $QUICK = 1 ]; then TRAIN_SEEDS="1 2"; FRAMES=50; TEST_FRAMES=20
  UNLAB_SEEDS="101 102 103"; UNLAB_FRAMES=60; MAE_EPOCHS=2; GEO_EPOCHS=2
  ITERS_1=20; ITERS_10=20; ITERS_100=40; PROBE=5
  # from a uniform depth, so that "the depth learns" is visible in two tiny epochs (from the
  # flat-ground prior, so few frames do not improve on it)
  GEO_ARGS="--no-ground-prior"; fi

mkdir -p "$WORK"
T0=$(date +%s)
# drive DIR SEED FRAMES FPS [extra args]: a simulated recording, kept when it exists
drive() {
  local dir=$1 seed=$2 frames=$3 fps=$4; shift 4
  [ -f "$dir/recording.toml" ] || \
    $TOOL sim record --seed "$seed" --frames "$frames" --fps "$fps" --cell 0.5 --out "$dir" "$@" >/dev/null
}
# the labelled drives with their depth maps (--extras), which only the oracle rows read
for s in $TRAIN_SEEDS; do drive "$WORK/train/s$s" "$s" $FRAMES 2 --extras; done
drive "$WORK/test" 1000 $TEST_FRAMES 2 --extras
# the validation drive: what picks the shipped row (and, once, the teacher's alignment)
drive "$WORK/val" 2000 $TEST_FRAMES 2 --extras
for s in $UNLAB_SEEDS; do drive "$WORK/unlabelled/s$s" "$s" $UNLAB_FRAMES 10; done
drive "$WORK/test10" 1000 $TEST_FRAMES 10 --extras
echo "data: $(( $(date +%s) - T0 )) s"

# done_epochs STATE_JSON N: whether a pretraining run has finished N epochs
done_epochs() { [ -f "$1" ] && grep -q "\"epochs_done\": $2" "$1"; }
resume_flag() { [ -f "$1" ] && echo "--resume" || true; }

# Semantic pathway: temporal MAE, random masking and StructMAE's edge-guided masking.
for m in random edges; do
  t=$(date +%s)
  done_epochs "$WORK/mae-$m/pretrain.json" $MAE_EPOCHS || \
    $TOOL pretrain --data "$WORK/unlabelled" --out "$WORK/mae-$m" --epochs $MAE_EPOCHS \
      --masking $m $(resume_flag "$WORK/mae-$m/pretrain.json")
  echo "semantic pathway ($m masking): $(( $(date +%s) - t )) s"
done

# Geometry pathway, alone and started from the semantic pathway's encoder ("both"). The
# depth maps of test10 only report AbsRel.
geometry() { # out, extra args
  local out=$1; shift
  local t=$(date +%s)
  done_epochs "$WORK/$out/geometry.json" $GEO_EPOCHS || \
    $TOOL pretrain-geometry --data "$WORK/unlabelled" --out "$WORK/$out" --epochs $GEO_EPOCHS \
      --eval-depth "$WORK/test10" $(resume_flag "$WORK/$out/geometry.json") $GEO_ARGS "$@"
  echo "geometry pathway ($out): $(( $(date +%s) - t )) s"
}
geometry geometry
geometry both --encoder "$WORK/mae-edges/pretrain.safetensors"
# disjoint pathways: the geometry pathway trains only the depth head and the last encoder
# conv; the trunk stays what the semantic pathway taught
geometry disjoint --encoder "$WORK/mae-edges/pretrain.safetensors" --train-last 2

row() { # name, finetune args... (EVAL_ARGS: extra eval arguments)
  local name=$1; shift
  local t=$(date +%s)
  mkdir -p "$WORK/bundles"
  if [ ! -f "$WORK/bundles/$name/bundle.toml" ]; then
    rm -rf "$WORK/bundles/$name"
    $TOOL finetune --data "$WORK/train" --out "$WORK/bundles/$name" "$@" >/dev/null
  fi
  $TOOL eval --bundle "$WORK/bundles/$name" --data "$WORK/test" --json ${EVAL_ARGS:-} \
    > "$WORK/bundles/$name.eval.json"
  $TOOL eval --bundle "$WORK/bundles/$name" --data "$WORK/val" --json ${EVAL_ARGS:-} \
    > "$WORK/bundles/$name.val.json"
  echo "row $name: $(( $(date +%s) - t )) s"
}
# pretrained rows: LP-FT, then all of encoder.onnx (5 encoder convs + the lift conv) trains
pretrained() { echo --encoder "$1" --unfreeze-last 6 --probe-iters $PROBE; }
for sub in 0 1 2; do
  one="--label-fraction 0.01 --subset $sub --iters $ITERS_1"
  row scratch-1-s$sub $one
  row mae-random-1-s$sub $one $(pretrained "$WORK/mae-random/pretrain.safetensors")
  row mae-edges-1-s$sub $one $(pretrained "$WORK/mae-edges/pretrain.safetensors")
  row geometry-1-s$sub $one $(pretrained "$WORK/geometry/geometry.safetensors")
  row both-1-s$sub $one $(pretrained "$WORK/both/geometry.safetensors")
  row disjoint-1-s$sub $one $(pretrained "$WORK/disjoint/geometry.safetensors")
done
row both-10 --label-fraction 0.1 --iters $ITERS_10 $(pretrained "$WORK/both/geometry.safetensors")
row scratch-100 --label-fraction 1.0 --iters $ITERS_100
row both-100 --label-fraction 1.0 --iters $ITERS_100 $(pretrained "$WORK/both/geometry.safetensors")
[ $QUICK = 1 ] && row untrained --label-fraction 0.01 --iters 1 --lr 0

# Fine-tuning that also learns from the unlabelled drives (issue 39): both terms, from
# scratch and from both pathways, on every subset; each term alone from both pathways on
# subset 0 (what each contributes).
UNL="--unlabelled $WORK/unlabelled"
for sub in 0 1 2; do
  one="--label-fraction 0.01 --subset $sub --iters $ITERS_1"
  row scratch-semi-1-s$sub $one $UNL
  row both-semi-1-s$sub $one $(pretrained "$WORK/both/geometry.safetensors") $UNL
done
one="--label-fraction 0.01 --subset 0 --iters $ITERS_1 $(pretrained "$WORK/both/geometry.safetensors")"
row both-consistency-1-s0 $one $UNL --teacher 0
row both-teacher-1-s0 $one $UNL --consistency 0
# The oracle: the lift fed the simulator's true depth (trained and scored so), the ceiling
# perfect geometry gives this model
for sub in 0 1 2; do
  EVAL_ARGS=--oracle-depth row oracle-1-s$sub --label-fraction 0.01 --subset $sub \
    --iters $ITERS_1 --oracle-depth
done
EVAL_ARGS=--oracle-depth row oracle-100 --label-fraction 1.0 --iters $ITERS_100 --oracle-depth

python3 - "$WORK" "$QUICK" <<'PY'
import json, statistics as st, sys, tomllib
w, quick = sys.argv[1], sys.argv[2] == "1"
ev = lambda n: json.load(open(f"{w}/bundles/{n}.eval.json"))
iou = lambda r, c: next((x["iou"] for x in r["per_class"] if x["class"] == c), None) or 0.0
def cell(vals):
    return f"{vals[0]:.1f}" if len(vals) == 1 else f"{st.mean(vals):.1f} ± {st.stdev(vals):.1f}"
rows = [("scratch", "1 %", "scratch-1-s"), ("semantic: MAE, random masking", "1 %", "mae-random-1-s"),
        ("semantic: MAE, structure-guided (edges)", "1 %", "mae-edges-1-s"),
        ("geometry pathway only", "1 %", "geometry-1-s"), ("both pathways", "1 %", "both-1-s"),
        ("both pathways, disjoint (geometry trains the last 2 layers)", "1 %", "disjoint-1-s"),
        ("both pathways", "10 %", "both-10"), ("scratch", "100 %", "scratch-100"),
        ("both pathways", "100 %", "both-100"),
        ("scratch + unlabelled drives (consistency + mean teacher)", "1 %", "scratch-semi-1-s"),
        ("both pathways + unlabelled drives (consistency + mean teacher)", "1 %", "both-semi-1-s"),
        ("both pathways + temporal consistency only (subset 0)", "1 %", "both-consistency-1-s0"),
        ("both pathways + mean teacher only (subset 0)", "1 %", "both-teacher-1-s0"),
        ("oracle: true depth in the lift (scratch)", "1 %", "oracle-1-s"),
        ("oracle: true depth in the lift (scratch)", "100 %", "oracle-100")]
params = lambda n: tomllib.load(open(f"{w}/bundles/{n}/bundle.toml", "rb"))["provenance"]["recipe"].get("parameters", 0)
out = ["| encoder init | BEV labels | mIoU | road IoU | car IoU | occluded cells right | vehicle FP on hidden cells | parameters |",
       "|---|---|---|---|---|---|---|---|"]
for init, frac, name in rows:
    names = [f"{name}{k}" for k in range(3)] if name.endswith("-s") else [name]
    runs = [ev(n) for n in names]
    occ = [r.get("occlusion") or {} for r in runs]
    o_acc = [o["accuracy"] for o in occ if "accuracy" in o]
    o_fp = [o["vehicle_false_positive_rate"] for o in occ if "vehicle_false_positive_rate" in o]
    out.append(f"| {init} | {frac} | {cell([r['miou'] for r in runs])} | "
               f"{cell([iou(r, 'road') for r in runs])} | {cell([iou(r, 'car') for r in runs])} | "
               f"{cell(o_acc) + ' %' if o_acc else '-'} | {cell(o_fp) + ' %' if o_fp else '-'} | "
               f"{params(names[0]):,} |")
open(f"{w}/table.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
# what ships: the deployable 1 % row (three subsets) with the best mean validation mIoU
val = lambda n: json.load(open(f"{w}/bundles/{n}.val.json"))["miou"]
candidates = [name for _, frac, name in rows if frac == "1 %" and name.endswith("-s")
              and not name.startswith("oracle")]
best = max(candidates, key=lambda n: st.mean(val(f"{n}{k}") for k in range(3)))
open(f"{w}/ship.txt", "w").write(f"{best}0\n")
print(f"ships {best}0 (validation mIoU {st.mean(val(f'{best}{k}') for k in range(3)):.1f} over its subsets)")
if quick:
    # what the CI test asserts: each pathway learns, a quick fine-tune beats its untrained start
    state = lambda p: json.load(open(f"{w}/{p}"))
    learned = {
        "abs_rel": [d["abs_rel"] for d in state("geometry/geometry.json")["depth"]],
        "mae_edges_probe_loss": state("mae-edges/pretrain.json")["probe_loss"],
        "mae_random_probe_loss": state("mae-random/pretrain.json")["probe_loss"],
        "untrained_miou": ev("untrained")["miou"],
        "scratch_1_miou": [ev(f"scratch-1-s{k}")["miou"] for k in range(3)],
        "both_100_miou": ev("both-100")["miou"],
        # the unlabelled terms' own record ([first tenth, last tenth] losses, histogram)
        "semi": tomllib.load(open(f"{w}/bundles/both-semi-1-s0/bundle.toml", "rb"))
                ["provenance"]["recipe"]["unlabelled"],
    }
    json.dump(learned, open(f"{w}/learned.json", "w"), indent=1)
PY
echo "recipe: $(( $(date +%s) - T0 )) s"
if [ $SHIP = 1 ]; then
  rm -rf models/bundles/letsmap-lite-1pct
  mkdir -p models/bundles
  SHIPPED=$(cat "$WORK/ship.txt")
  cp -r "$WORK/bundles/$SHIPPED" models/bundles/letsmap-lite-1pct
  $TOOL eval --bundle models/bundles/letsmap-lite-1pct --data "$WORK/test" --record >/dev/null
  echo "shipped $WORK/bundles/$SHIPPED as models/bundles/letsmap-lite-1pct"
fi
