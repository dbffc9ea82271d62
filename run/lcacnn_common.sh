# The seed's LCA-RCNN on CIFAR-10, shared by lcacnn_pretrained.sh, lcacnn_finetune.sh and
# lcacnn_learn.sh (sourced by them, not run on its own). `run_lcacnn MODE [flags]` runs
# main_fast.py with --dict_training MODE, then any further main_fast.py flags.
# DATA_DIR (default ./data) holds torchvision's cifar-10-batches-py; DOWNLOAD=1 adds --download;
# DEVICE (default 0); LCA_DICT: the dictionary file (default images/lca_dictionary_cifar10.pt).
DATA_DIR=${DATA_DIR:-./data}
DEVICE=${DEVICE:-0}
LCA_DICT=${LCA_DICT:-images/lca_dictionary_cifar10.pt}
EXTRA=()
if [ "${DOWNLOAD:-0}" = 1 ]; then EXTRA+=(--download); fi

run_lcacnn() {
  local mode=$1
  shift
  python main_fast.py --data-dir "$DATA_DIR" --device "$DEVICE" --lca-dict "$LCA_DICT" "${EXTRA[@]}" \
    --model LCACNN --task CIFAR10 --data-aug --channels 64 256 512 --kernels 3 3 3 --pools immmm \
    --strides 1 1 1 1 --paddings 1 1 1 1 --fc 10 --optim sgd --lrs 0.25 0.15 0.1 0.08 \
    --wds 3e-4 3e-4 3e-4 3e-4 3e-4 --mmt 0.9 --lr-decay --epochs 120 --act my_hard_sig --todo train \
    --T1 250 --T2 50 --mbs 128 --alg EP --betas 0.0 0.5 --scale 0.5 --thirdphase --loss cel \
    --softmax --save --seed 2 --lca_feats 64 --lca_lambda 0.25 --lca_tau 100 --lca_eta 0.05 \
    --lca_iters 600 --lca_stride 2 --lca_ksize 9 --dict_training "$mode" "$@"
}
