#!/usr/bin/env bash
# EP CNN on a real-MNIST .npz file, the MNIST CNN recipe of Laborieux et al. 2021's code
# (check/train_mnist_cnn.sh): two 5x5 conv layers of 32 and 64 channels, stride 1, no padding,
# each max-pooled 2x2, a linear layer to 10 output neurons nudged by the squared error (the
# reference's default --loss mse, no softmax readout), hard_sigmoid neurons, one-sided EP (the
# reference's default: neither --thirdphase nor --random-sign) at beta 0.4, T1 200 / T2 10, Adam
# at 5e-5 / 1e-5 / 8e-6 per layer, minibatches of 100, 1 epoch.
#
#   DATA_PATH=PATH/TO/mnist-train-14k.npz EPOCHS=1 SEEDS="0 1 2" bash run/mnist_cnn_ep.sh [flags]
#
# DATA_PATH, EPOCHS, SEEDS (or SEED), OUT and the flags passed on: run/mnist_common.sh. The
# project's own MNIST CNN recipe (symmetric EP, softmax readout, SGD, 5 epochs): run/mnist_14k.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source run/mnist_common.sh
run_mnist mnist_cnn_ep 1 --model CNN --channels 32 64 --kernels 5 5 --strides 1 1 \
  --paddings 0 0 --pools mm --fc 10 --act hard_sigmoid --loss mse --no-softmax --alg EP \
  --no-thirdphase --betas 0.0 0.4 --T1 200 --T2 10 --optim adam --lrs 5e-5 1e-5 8e-6 --mbs 100 "$@"
