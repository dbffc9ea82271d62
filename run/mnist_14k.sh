#!/usr/bin/env bash
# EP CNN on a real-MNIST .npz file (e.g. the 14,262-image subset mnist-train-14k.npz): one
# training run per seed, then the multi-seed report (mean, std, 95% CI; learning curves).
#
#   DATA_PATH=PATH/TO/mnist-train-14k.npz SEEDS="0 1 2" bash run/mnist_14k.sh [main_fast.py flags]
#
# SEEDS, SEED, OUT and the flags passed on: run/seeds_common.sh. --task npz splits the file
# 81/9/10 into train / validation / test, stratified and seeded by --seed (each seed its own
# split); best.pt is the epoch of best validation accuracy. The training images are shifted by up
# to 2 pixels (--data-aug --crop-pad 2). The recipe, the alternatives tried and the measured
# accuracies: docs/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_PATH=${DATA_PATH:?set DATA_PATH to the MNIST .npz file (arrays x (N,28,28) uint8, y (N,))}
source run/seeds_common.sh
run_seeds mnist_14k --task npz --data-path "$DATA_PATH" --model CNN --channels 32 64 \
  --kernels 5 5 --paddings 0 0 --pools mm --fc 10 --act my_hard_sig --alg EP --T1 12 --T2 4 \
  --betas 0.0 0.5 --thirdphase --loss cel --softmax --optim sgd --mmt 0.9 --lrs 0.15 0.1 0.05 \
  --lr-decay --mbs 64 --epochs 30 --data-aug --crop-pad 2 --device cpu "$@"
