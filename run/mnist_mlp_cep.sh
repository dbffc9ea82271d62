#!/usr/bin/env bash
# Continual EP (--alg CEP) MLP 784-512-10 on a real-MNIST .npz file, the CEP recipe of Laborieux
# et al. 2021's code (check/train_mnist_cep.sh): mysig neurons, the output layer nudged by the
# squared error (no softmax readout), beta 0.2, T1 40 / T2 15, the weights moved by plain SGD
# (no momentum) at 0.0056 / 0.0028 per layer after each of the 15 nudged steps, minibatches of
# 20, 100 epochs.
#
#   DATA_PATH=PATH/TO/mnist-train-14k.npz EPOCHS=100 SEEDS="0 1 2" bash run/mnist_mlp_cep.sh [flags]
#
# DATA_PATH, EPOCHS, SEEDS (or SEED), OUT and the flags passed on: run/mnist_common.sh. Useful
# flags: --model VFMLP for the vector-field network (C-VF), --cep-debug to print, each epoch, the
# summed per-step updates of the first minibatch against one-shot EP.
set -euo pipefail
cd "$(dirname "$0")/.."
source run/mnist_common.sh
run_mnist mnist_mlp_cep 100 --model MLP --archi 784 512 10 --act mysig --loss mse --no-softmax \
  --alg CEP --no-thirdphase --betas 0.0 0.2 --T1 40 --T2 15 --optim sgd --mmt 0 \
  --lrs 0.0056 0.0028 --mbs 20 "$@"
