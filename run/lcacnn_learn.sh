#!/usr/bin/env bash
# The seed's LCA-RCNN on CIFAR-10, learning the LCA dictionary from random atoms during EP training.
#   DATA_DIR=/path/to/data DEVICE=0 bash run/lcacnn_learn.sh
# DATA_DIR holds torchvision's cifar-10-batches-py; add DOWNLOAD=1 where the network allows.
# LCA_DICT is the dictionary file (default images/lca_dictionary_cifar10.pt); extra arguments are
# passed on to main_fast.py (e.g. --epochs 5).
set -euo pipefail
cd "$(dirname "$0")/.."
source run/lcacnn_common.sh
run_lcacnn learn "$@"
