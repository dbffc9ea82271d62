#!/usr/bin/env bash
# Quick LCA dictionary learning (minutes on a CPU): digits, or DATA_PATH=FILE.npz.
#   bash run/dictlearning_quick.sh
#   DATA_PATH=../shared/data/cifar10-train-4k.npz bash run/dictlearning_quick.sh
# Writes LCA_DICT (default results/quick/lca_dictionary_{digits,npz}.pt), replacing it.
set -euo pipefail
cd "$(dirname "$0")/.."
source run/quick_env.sh
rm -f "$LCA_DICT"
ensure_dictionary
