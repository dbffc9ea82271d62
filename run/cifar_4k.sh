#!/usr/bin/env bash
# Plain EP CNN (no sparse-coding frontend) on a CIFAR-10 .npz file, e.g. the 4,660-image subset
# cifar10-train-4k.npz: one training run per seed, then the multi-seed report (mean, std, 95% CI;
# learning curves).
#
#   DATA_PATH=PATH/TO/cifar10-train-4k.npz SEEDS="0 1 2" bash run/cifar_4k.sh [main_fast.py flags]
#
# SEEDS, SEED, OUT and the flags passed on: run/seeds_common.sh. --task npz splits the file
# 81/9/10 into train / validation / test, stratified and seeded by --seed; best.pt is the epoch
# of best validation accuracy. The recipe, the alternatives tried and the measured accuracies:
# docs/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_PATH=${DATA_PATH:?set DATA_PATH to the CIFAR-10 .npz file (arrays x (N,32,32,3) uint8, y (N,))}
source run/seeds_common.sh
run_seeds cifar_4k --task npz --data-path "$DATA_PATH" --model CNN --channels 32 64 \
  --kernels 3 3 --strides 1 1 --paddings 1 1 --pools mm --fc 10 --act my_hard_sig --alg EP \
  --T1 20 --T2 5 --betas 0.0 0.5 --thirdphase --loss cel --softmax --optim sgd --mmt 0.9 \
  --lrs 0.3 0.2 0.1 --wds 3e-4 3e-4 3e-4 --lr-decay --mbs 64 --epochs 30 --data-aug \
  --device cpu "$@"
