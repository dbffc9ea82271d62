#!/usr/bin/env bash
# EP MLP 784-512-10 on a real-MNIST .npz file, the MLP training recipe of the README of Laborieux
# et al. 2021's code ("MLP on MNIST"): sigmoid-like mysig neurons, the output layer of neurons
# nudged by the squared error (no softmax readout), one-sided EP at beta 0.1, T1 30 / T2 10,
# plain SGD (no momentum) at 0.08 / 0.04 per layer, minibatches of 50, 3 epochs.
#
#   DATA_PATH=PATH/TO/mnist-train-14k.npz EPOCHS=3 SEEDS="0 1 2" bash run/mnist_mlp_ep.sh [main_fast.py flags]
#
# DATA_PATH, EPOCHS, SEEDS (or SEED), OUT and the flags passed on: run/mnist_common.sh. The
# continual-EP variant: run/mnist_mlp_cep.sh; the CNN: run/mnist_cnn_ep.sh (docs/estimators.md,
# Recipes).
set -euo pipefail
cd "$(dirname "$0")/.."
source run/mnist_common.sh
run_mnist mnist_mlp_ep 3 --model MLP --archi 784 512 10 --act mysig --loss mse --no-softmax \
  --alg EP --no-thirdphase --betas 0.0 0.1 --T1 30 --T2 10 --optim sgd --mmt 0 --lrs 0.08 0.04 \
  --mbs 50 "$@"
