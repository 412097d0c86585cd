#!/usr/bin/env bash
# Every registered method on a fixed few-label Fashion-MNIST subset over 3 seeds, resumable.
#
# Protocol (36 runs, 1.7 hours of training on one CPU core, measured 6 December 2026: python scripts/run_times.py ROOT):
# the first 100 training images of each
# class (--train-per-class 100: 1,000 images, the same for every seed), the first 300 test images of
# each class (--test-per-class 300: 3,000 images, the same for every run, evaluated every epoch),
# ResNet-32, 2 peers for every online method (1 for the baseline), 12 epochs, batch 20 (MCL's
# m-per-class batches need batch <= 2 x 10 classes), lr 0.02 cosine, wd 5e-4; OKDDip's and PCL's
# consistency ramp-up scaled with the schedule (80 of 300 CIFAR epochs -> 3 of these 12); MCL-OKD keeps
# its recipe default of 256 negatives (900 images of other classes hold them). Data: Debian's dataset-fashion-mnist
# (or FMNIST_DATA=DIR holding the four IDX files).
#
# A run whose summary.json says finished is skipped; one with a last.pt is resumed (--resume);
# anything else starts afresh. Runs go to ROOT/fashion-mnist/resnet32/<method>/seed<k>.
#
#   scripts/fashion_mnist_comparison.sh [ROOT=runs/fmnist] [JOBS=1] [SEEDS="0 1 2"]
#   okd report ROOT --arch resnet32 --table main --table successors --vs-baseline
#   okd plot ROOT/fashion-mnist --by-method docs/img/fashion_mnist_methods.png   (error per epoch, mean over seeds, one line per method)
set -euo pipefail
ROOT=${1:-runs/fmnist}
JOBS=${2:-1}
SEEDS=${3:-0 1 2}
OKD=${OKD:-okd}
# Every method registered in okd, the baseline first,
# each with its smallest cohort of at least 2 peers; METHODS="dml kdcl" picks a few.
PY=${PYTHON:-python}
LIST=$($PY -c 'from okd.methods import get_method_class as g, list_methods as l
for m in sorted(l(), key=lambda m: m != "baseline"):
    print(m, 1 if m == "baseline" else max(2, g(m).min_peers))')
[ -n "${METHODS:-}" ] && LIST=$(echo "$LIST" | grep -wE "^($(echo $METHODS | tr ' ' '|'))")
DATA=${FMNIST_DATA:+--data $FMNIST_DATA}
COMMON="--arch resnet32 --dataset fashion-mnist $DATA --train-per-class 100 --test-per-class 300 --epochs 12 --batch-size 20 --lr 0.02 --wd 5e-4 --quiet --device cpu"
for seed in $SEEDS; do
  echo "$LIST" | while read -r method peers; do
    extra=""
    case "$method" in okddip|pcl) extra="--rampup-epochs 3" ;; esac
    out="$ROOT/fashion-mnist/resnet32/$method/seed$seed"
    if [ -f "$out/summary.json" ] && grep -q '"finished": true' "$out/summary.json"; then continue; fi
    if [ -f "$out/last.pt" ]; then mode="--resume"; else mode="--overwrite"; fi
    echo "$OKD train --method $method --num-peers $peers --seed $seed $COMMON $extra --out $out $mode"
  done
done | xargs -P "$JOBS" -I{} sh -c 'OMP_NUM_THREADS=1 {} || echo "failed: {}" >&2'
