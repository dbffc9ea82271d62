# Settings shared by the *_quick.sh scripts (sourced by them, not run on its own).
# DEVICE (default cpu); DATA_PATH: an .npz file of images (arrays x, y), e.g. the shared CIFAR-10
# subset; without it the scripts use scikit-learn's bundled digits (offline). OUT: results folder;
# EPOCHS: training epochs.
DEVICE=${DEVICE:-cpu}
OUT=${OUT:-./results/quick}
EPOCHS=${EPOCHS:-8}
if [ -n "${DATA_PATH:-}" ]; then
  NAME=npz
  TASK=(--task npz --data-path "$DATA_PATH")
  # 32x32 colour images: 64 atoms of 9x9 at stride 2 (the seed's geometry) -> codes 64x16x16;
  # the first conv layer has stride 2 (16 -> 8), then a max pool (8 -> 4).
  FEATS=64 KSIZE=9 STRIDE=2 LAMBDA=0.25 ITERS=100 DICT_IMAGES=1024
  NET=(--channels 32 64 --kernels 3 3 --strides 2 1 --paddings 1 1 --fc 10)
  LCA_POOLS=iim CNN_POOLS=mm
  EP=(--T1 20 --T2 5 --lrs 0.3 0.2 0.1 --lr-decay)
else
  NAME=digits
  TASK=(--task digits)
  # 8x8 grey digits: 16 atoms of 5x5 at stride 1 -> codes 16x8x8.
  FEATS=16 KSIZE=5 STRIDE=1 LAMBDA=0.1 ITERS=60 DICT_IMAGES=2000
  NET=(--channels 32 64 --kernels 3 3 --paddings 1 1 --fc 10)
  LCA_POOLS=imm CNN_POOLS=mm
  EP=(--T1 30 --T2 8 --lrs 0.5 0.3 0.2)
fi
LCA_DICT=${LCA_DICT:-$OUT/lca_dictionary_$NAME.pt}
# FISTA reaches the LCA optimum in far fewer iterations than the seed's Euler dynamics.
LCA=(--lca_feats "$FEATS" --lca_ksize "$KSIZE" --lca_stride "$STRIDE" --lca_lambda "$LAMBDA"
     --lca_tau 100 --lca_eta 0.05 --lca_iters "$ITERS" --lca-solver fista)
EP+=(--betas 0.0 0.5 --thirdphase --loss cel --softmax --act my_hard_sig --optim sgd --mmt 0.9
     --wds 3e-4 3e-4 3e-4 --mbs 64 --seed 0 --epochs "$EPOCHS" --save --results-dir "$OUT")

# Learn the dictionary of the quick LCA-RCNN runs unless LCA_DICT already exists.
ensure_dictionary() {
  if [ ! -f "$LCA_DICT" ]; then
    python cifar_dictlearning.py "${TASK[@]}" --device "$DEVICE" --lca_feats "$FEATS" \
      --lca_ksize "$KSIZE" --lca_stride "$STRIDE" --lca_lambda "$LAMBDA" --lca_iters 60 \
      --n-images "$DICT_IMAGES" --epochs "${DICT_EPOCHS:-2}" --results-dir "$OUT" \
      --out "$LCA_DICT"
  fi
}
