#!/usr/bin/env bash
# Learn the LCA dictionary of the LCA-RCNN on CIFAR-10 (the seed's LCA settings), then train on it:
#   DATA_DIR=/path/to/data DEVICE=cuda bash run/dictlearning_cifar10.sh
#   LCA_DICT=results/lca_dictionary_cifar10.pt bash run/lcacnn_pretrained.sh
# DATA_DIR holds torchvision's cifar-10-batches-py (DOWNLOAD=1 where the network allows);
# LCA_DICT is the output (default results/lca_dictionary_cifar10.pt; an existing file is never
# replaced: cifar_dictlearning.py refuses it unless --overwrite is given). Without the full dataset:
#   python cifar_dictlearning.py --task npz --data-path FILE.npz --out results/my_dictionary.pt
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-./data}
DEVICE=${DEVICE:-cuda}
LCA_DICT=${LCA_DICT:-results/lca_dictionary_cifar10.pt}
EXTRA=()
[ "${DOWNLOAD:-0}" = 1 ] && EXTRA+=(--download)

python cifar_dictlearning.py --task CIFAR10 --data-dir "$DATA_DIR" --device "$DEVICE" "${EXTRA[@]}" \
  --lca_feats 64 --lca_lambda 0.25 --lca_tau 100 --lca_eta 0.05 --lca_iters 600 --lca_stride 2 \
  --lca_ksize 9 --solver lca --epochs "${EPOCHS:-5}" --mbs 128 --out "$LCA_DICT" "$@"
