#!/usr/bin/env bash
# Quick LCA-RCNN on a CPU with a dictionary learned from random atoms during EP training.
# Digits by default, or DATA_PATH=FILE.npz (e.g. ../shared/data/cifar10-train-4k.npz).
#   bash run/lcacnn_learn_quick.sh [more main_fast.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
source run/quick_env.sh
python main_fast.py "${TASK[@]}" --device "$DEVICE" --model LCACNN "${NET[@]}" --pools "$LCA_POOLS" \
  "${LCA[@]}" "${EP[@]}" --dict_training learn --lca-dict "$LCA_DICT" "$@"
