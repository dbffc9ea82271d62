# The reference's MNIST recipes (Laborieux et al. 2021's code) on a real-MNIST .npz file, shared
# by mnist_mlp_ep.sh, mnist_mlp_cep.sh and mnist_cnn_ep.sh (sourced by them, not run on its own).
# `run_mnist NAME EPOCHS FLAGS...` runs main_fast.py with the recipe's FLAGS, then the caller's.
#
# DATA_PATH: the .npz file (arrays x (N, 28, 28) uint8, y (N,)); default
#   ../shared/data/mnist-train-14k.npz from the repository root. --task npz splits it 81/9/10
#   into train / validation / test, stratified and seeded by --seed; best.pt is the epoch of best
#   validation accuracy, whose test accuracy is the one reported.
# EPOCHS: the epochs to train (default: the recipe's). SEED: the seed (default 0).
# OUT: the results folder (default ./results/NAME/<date-time>); the run directory goes below it.
# Flags given to the recipe script come after the recipe's and win over them (argparse keeps the
# last value): e.g. --device cpu, --archi 784 256 10, --cep-debug.
DATA_PATH=${DATA_PATH:-../shared/data/mnist-train-14k.npz}
SEED=${SEED:-0}

run_mnist() {
  local name=$1 epochs=$2
  shift 2
  python main_fast.py --task npz --data-path "$DATA_PATH" --epochs "${EPOCHS:-$epochs}" \
    --seed "$SEED" --save --results-dir "${OUT:-./results/$name/$(date +%Y%m%d-%H%M%S)}" "$@"
}
