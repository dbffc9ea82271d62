#!/usr/bin/env bash
# Robustness of the same small CNN trained three ways, on real MNIST digits:
# EP (this project's default estimator), BPTT (backprop through the relaxation) and, when the
# model exists in main_fast.py, the LCA-RCNN (--model LCACNN). Each model is attacked with PGD
# (Linf and L2) through its own relaxation and the curves are drawn in one figure; each model's
# accuracy under the common corruptions goes to its run directory (corruptions.csv / .png).
#
#   bash run/robustness_compare.sh PATH/TO/mnist-train-14k.npz [OUT_DIR]
#
# A model whose run directory already holds best.pt is not trained again, and one holding
# attack.csv is not attacked again (REDO_ATTACKS=1 redoes the attacks), so the script can be
# re-run to finish what an interrupted run left, or to redraw the figure.
# Budget: a few epochs of each model on one CPU thread (about 10 minutes each), so the models
# train on the first N_IMAGES images of the file (default 7000: 5670 train, 630 validation,
# 700 test; N_IMAGES=0 keeps all 14262). The figure goes to images/robustness_mnist.png.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per process is fastest on shared CPUs

DATA=${1:?usage: bash run/robustness_compare.sh PATH/TO/mnist-train-14k.npz [OUT_DIR]}
OUT=${2:-./results/robustness_mnist}
EPOCHS=${EPOCHS:-5}
N_IMAGES=${N_IMAGES:-7000}
SAMPLES=${SAMPLES:-200}          # test images attacked (and corrupted) per model
REDO_ATTACKS=${REDO_ATTACKS:-0}
PGD_STEPS=${PGD_STEPS:-20}
FIGURE=${FIGURE:-images/robustness_mnist.png}
# The LCA-CNN joins when main_fast.py knows --model LCACNN (WITH_LCA=0 leaves it out).
WITH_LCA=${WITH_LCA:-1}
# Its coder runs inside every prediction and every attack gradient, so it is the slowest model:
# fewer epochs by default.
LCA_FLAGS=${LCA_FLAGS:---lca_feats 16 --lca_ksize 5 --lca_stride 2 --lca_lambda 0.25 --lca_tau 10 --lca_iters 50 --dict_training learn}
LCA_EPOCHS=${LCA_EPOCHS:-3}
LCA_SAMPLES=${LCA_SAMPLES:-$SAMPLES}

mkdir -p "$OUT"
if [ "$N_IMAGES" -gt 0 ]; then  # the first N_IMAGES images (MNIST's order is already random)
  SUBSET="$OUT/mnist-first-$N_IMAGES.npz"
  [ -f "$SUBSET" ] || python -c "import numpy as np, sys
d = np.load(sys.argv[1]); n = int(sys.argv[3])
np.savez(sys.argv[2], x=d['x'][:n], y=d['y'][:n])" "$DATA" "$SUBSET" "$N_IMAGES"
  DATA=$SUBSET
fi

ARCH=(--task npz --data-path "$DATA" --channels 16 32 --kernels 3 3 --paddings 1 1 --pools mm
      --fc 10 --T1 20 --T2 4 --mbs 64 --seed 0 --device cpu)

# The run directory holding the newest best.pt under a results dir, or nothing.
latest_run() {
  local best
  best=$(find "$1" -name best.pt -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -n 1 | cut -d' ' -f2-)
  if [ -n "$best" ]; then dirname "$best"; fi
}

train_and_attack() {  # label, folder name, epochs, attacked images, then main_fast.py flags
  local name=$1 slug=$2 epochs=$3 samples=$4; shift 4
  local dir="$OUT/$slug" run
  run=$(latest_run "$dir")
  if [ -z "$run" ]; then
    python main_fast.py "${ARCH[@]}" "$@" --epochs "$epochs" --save --results-dir "$dir" || return 1
    run=$(latest_run "$dir")
  fi
  echo "$name: $run"
  if [ "$REDO_ATTACKS" = 1 ] || [ ! -f "$run/attack.csv" ]; then
    python main_fast.py "${ARCH[@]}" "$@" --todo attack --load-path "$run" \
      --attack-samples "$samples" --pgd-steps "$PGD_STEPS" || return 1
  fi
  if [ "$REDO_ATTACKS" = 1 ] || [ ! -f "$run/corruptions.csv" ]; then  # forward passes only
    python main_fast.py "${ARCH[@]}" "$@" --todo corrupt --load-path "$run" \
      --attack-samples "$samples" || return 1
  fi
  RUNS+=("$name=$run")
}

RUNS=()
train_and_attack "EP CNN" ep_cnn "$EPOCHS" "$SAMPLES" --alg EP
train_and_attack "BPTT CNN" bptt_cnn "$EPOCHS" "$SAMPLES" --alg BPTT
if [ "$WITH_LCA" = 1 ] && python main_fast.py --help | grep -q LCACNN; then
  # shellcheck disable=SC2086  # LCA_FLAGS is a list of flags
  train_and_attack "EP LCA-CNN" ep_lcacnn "$LCA_EPOCHS" "$LCA_SAMPLES" --model LCACNN --alg EP \
    $LCA_FLAGS \
    || echo "the LCACNN run failed: check LCA_FLAGS against main_fast.py --help"
else
  echo "comparing the EP and BPTT CNNs only (WITH_LCA=$WITH_LCA)"
fi
python -m eplcanet.robustness plot "$FIGURE" "${RUNS[@]}" --title "MNIST, $PGD_STEPS-step PGD"
