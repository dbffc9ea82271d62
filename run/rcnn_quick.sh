#!/usr/bin/env bash
# Quick EP-trained RCNN (no sparse-coding frontend) on a CPU: digits, or DATA_PATH=FILE.npz.
#   bash run/rcnn_quick.sh [more main_fast.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
source run/quick_env.sh
python main_fast.py "${TASK[@]}" --device "$DEVICE" --model CNN "${NET[@]}" --pools "$CNN_POOLS" "${EP[@]}" \
  "$@"
