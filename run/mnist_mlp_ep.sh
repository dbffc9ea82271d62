#!/usr/bin/env bash
# EP MLP 784-512-10 on a real-MNIST .npz file, the MLP training recipe of the README of Laborieux
# et al. 2021's code ("MLP on MNIST"): sigmoid-like mysig neurons, the output layer of neurons
# nudged by the squared error (no softmax readout), one-sided EP at beta 0.1, T1 30 / T2 10,
# plain SGD (no momentum) at 0.08 / 0.04 per layer, minibatches of 50. Its 3 epochs are EPOCHS.
#
#   DATA_PATH=PATH/TO/mnist-train-14k.npz EPOCHS=3 SEED=0 bash run/mnist_mlp_ep.sh [main_fast.py flags]
#
# DATA_PATH defaults to ../shared/data/mnist-train-14k.npz (from the repository root); --task npz
# splits it 81/9/10 into train / validation / test, seeded by --seed. Further flags go to
# main_fast.py and win over the recipe's. OUT (default ./results/mnist_mlp_ep/<date-time>) gets
# the run directory. The continual-EP variant: run/mnist_mlp_cep.sh (docs/estimators.md, CEP).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_PATH=${DATA_PATH:-../shared/data/mnist-train-14k.npz}
EPOCHS=${EPOCHS:-3}
SEED=${SEED:-0}
OUT=${OUT:-./results/mnist_mlp_ep/$(date +%Y%m%d-%H%M%S)}

python main_fast.py --task npz --data-path "$DATA_PATH" --model MLP --archi 784 512 10 \
  --act mysig --loss mse --no-softmax --alg EP --no-thirdphase --betas 0.0 0.1 --T1 30 --T2 10 \
  --optim sgd --mmt 0 --lrs 0.08 0.04 --mbs 50 --epochs "$EPOCHS" --seed "$SEED" --save \
  --results-dir "$OUT" "$@"
