#!/usr/bin/env bash
# Every method on the few-label digits setting, over seeds: the README's method comparison.
#
# 10 labelled training images per class (--train-per-class 10: a fixed subset, the same for every
# seed), the full 360-image test set, ResNet-32, 2 peers for every online method, 30 epochs,
# batch 20 (MCL's m-per-class batches need batch <= 2 x 10 classes), lr 0.02 cosine, wd 5e-4;
# OKDDip's and PCL's consistency ramp-up scaled with the schedule (80 of 300 epochs -> 8 of 30).
# Runs go to ROOT/digits/resnet32/<method>/seed<k>, the layout `okd report` reads.
#
#   scripts/few_label_digits.sh [ROOT=runs/few_label] [JOBS=2] [SEEDS="0 1 2"]
#   okd report runs/few_label --arch resnet32 --table main --table successors
set -euo pipefail
ROOT=${1:-runs/few_label}
JOBS=${2:-2}
SEEDS=${3:-0 1 2}
COMMON="--arch resnet32 --dataset digits --train-per-class 10 --epochs 30 --batch-size 20 --lr 0.02 --wd 5e-4 --quiet --device cpu"
for seed in $SEEDS; do
  for method in baseline dml cl_ilr one okddip mcl_okd kdcl pcl mcl; do
    peers=2; extra=""
    [ "$method" = baseline ] && peers=1
    [ "$method" = mcl_okd ] && extra="--nce-k 64"   # 90 images of other classes: the reference's 256 does not fit
    # OKDDip's and PCL's 80-epoch ramp-up is 80 of 300 CIFAR epochs: scaled to 8 of these 30
    case "$method" in okddip|pcl) extra="--rampup-epochs 8" ;; esac
    out="$ROOT/digits/resnet32/$method/seed$seed"
    [ -f "$out/summary.json" ] && grep -q '"finished": true' "$out/summary.json" && continue
    echo "okd train --method $method --num-peers $peers --seed $seed $COMMON $extra --out $out --overwrite"
  done
done | xargs -P "$JOBS" -I{} sh -c 'OMP_NUM_THREADS=1 {} || echo "failed: {}" >&2'
