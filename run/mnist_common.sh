# The reference's MNIST recipes (Laborieux et al. 2021's code) on a real-MNIST .npz file, shared
# by mnist_mlp_ep.sh, mnist_mlp_cep.sh and mnist_cnn_ep.sh (sourced by them, not run on its own).
# `run_mnist NAME EPOCHS FLAGS...` runs main_fast.py with the recipe's FLAGS, then the caller's,
# once per seed (run_seeds of run/seeds_common.sh), then the report over the seeds.
#
# DATA_PATH: the .npz file (arrays x (N, 28, 28) uint8, y (N,)); default
#   ../shared/data/mnist-train-14k.npz from the repository root. --task npz splits it 81/9/10
#   into train / validation / test, stratified and seeded by --seed; best.pt is the epoch of best
#   validation accuracy, whose test accuracy is the one reported.
# EPOCHS: the epochs to train (default: the recipe's). SEEDS: the seeds (e.g. "0 1 2"), or SEED:
# one seed (default 0). OUT: the results folder (default ./results/NAME/<date-time>): a run
# directory per seed below OUT/seed_N, the report in OUT/report.
# Flags given to the recipe script come after the recipe's and win over them (argparse keeps the
# last value): e.g. --device cpu, --archi 784 256 10, --cep-debug.
DATA_PATH=${DATA_PATH:-../shared/data/mnist-train-14k.npz}
export SEEDS=${SEEDS:-${SEED:-0}}
source run/seeds_common.sh

run_mnist() {
  local name=$1 epochs=$2
  shift 2
  run_seeds "$name" --task npz --data-path "$DATA_PATH" --epochs "${EPOCHS:-$epochs}" "$@"
}
