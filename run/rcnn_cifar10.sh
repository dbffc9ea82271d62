#!/usr/bin/env bash
# The seed's RCNN: an EP-trained recurrent CNN on CIFAR-10 (no sparse-coding frontend).
#   DATA_DIR=/path/to/data DEVICE=0 bash run/rcnn_cifar10.sh
# DATA_DIR holds torchvision's cifar-10-batches-py; add DOWNLOAD=1 where the network allows.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-./data}
DEVICE=${DEVICE:-0}
EXTRA=()
[ "${DOWNLOAD:-0}" = 1 ] && EXTRA+=(--download)

python main_fast.py --data-dir "$DATA_DIR" --device "$DEVICE" "${EXTRA[@]}" \
  --model 'CNN' --task 'CIFAR10' --data-aug --channels 64 128 256 512 --kernels 3 3 3 3 \
  --pools 'mmmm' --strides 1 1 1 1 --paddings 1 1 1 1 --fc 10 --optim 'sgd' \
  --lrs 0.25 0.15 0.1 0.08 0.05 --wds 3e-4 3e-4 3e-4 3e-4 3e-4 --mmt 0.9 --lr-decay \
  --epochs 35 --act 'my_hard_sig' --todo 'train' --T1 250 --T2 50 --mbs 128 --alg 'EP' \
  --betas 0.0 1.0 --thirdphase --loss 'cel' --softmax --save "$@"
