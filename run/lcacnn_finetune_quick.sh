#!/usr/bin/env bash
# Quick LCA-RCNN on a CPU with a dictionary learned first (unless LCA_DICT exists), then fine-tuned during EP training.
# Digits by default, or DATA_PATH=FILE.npz (e.g. ../shared/data/cifar10-train-4k.npz).
#   bash run/lcacnn_finetune_quick.sh [more main_fast.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
source run/quick_env.sh
ensure_dictionary
python main_fast.py "${TASK[@]}" --device "$DEVICE" --model LCACNN "${NET[@]}" --pools "$LCA_POOLS" \
  "${LCA[@]}" "${EP[@]}" --dict_training finetune --lca-dict "$LCA_DICT" "$@"
