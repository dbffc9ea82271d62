#!/usr/bin/env bash
# The seed's LCA-RCNN on CIFAR-10, with a pretrained, fixed LCA dictionary (learn it first: bash run/dictlearning_cifar10.sh).
#   DATA_DIR=/path/to/data DEVICE=0 bash run/lcacnn_pretrained.sh
# DATA_DIR holds torchvision's cifar-10-batches-py; add DOWNLOAD=1 where the network allows.
# LCA_DICT is the dictionary file (default images/lca_dictionary_cifar10.pt); extra arguments are
# passed on to main_fast.py (e.g. --epochs 5).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-./data}
DEVICE=${DEVICE:-0}
LCA_DICT=${LCA_DICT:-images/lca_dictionary_cifar10.pt}
EXTRA=()
[ "${DOWNLOAD:-0}" = 1 ] && EXTRA+=(--download)

python main_fast.py --data-dir "$DATA_DIR" --device "$DEVICE" --lca-dict "$LCA_DICT" "${EXTRA[@]}" \
  --model LCACNN --task CIFAR10 --data-aug --channels 64 256 512 --kernels 3 3 3 --pools immmm \
  --strides 1 1 1 1 --paddings 1 1 1 1 --fc 10 --optim sgd --lrs 0.25 0.15 0.1 0.08 \
  --wds 3e-4 3e-4 3e-4 3e-4 3e-4 --mmt 0.9 --lr-decay --epochs 120 --act my_hard_sig --todo train \
  --T1 250 --T2 50 --mbs 128 --alg EP --betas 0.0 0.5 --scale 0.5 --thirdphase --loss cel \
  --softmax --save --seed 2 --lca_feats 64 --lca_lambda 0.25 --lca_tau 100 --lca_eta 0.05 \
  --lca_iters 600 --lca_stride 2 --lca_ksize 9 --dict_training pretrained "$@"
