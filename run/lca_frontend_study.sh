#!/usr/bin/env bash
# The LCA frontend study on a CIFAR-10 .npz file (e.g. the 4,660-image subset): plain EP and the
# LCA-RCNN at equal epochs with the same EP settings, each over SEEDS, then the report over both
# models (mean, std, 95% CI). Every seed's LCA-RCNN codes its images with a dictionary learned on
# that seed's own training split (cifar_dictlearning.py --seed N), so no validation or test image
# shaped its atoms.
#
#   DATA_PATH=PATH/TO/cifar10-train-4k.npz SEEDS="0 1 2" bash run/lca_frontend_study.sh [flags]
#
# Flags given go to both models' main_fast.py runs (e.g. --epochs 2); LCA_FLAGS to the LCA-RCNN's
# only (e.g. "--lca_lambda 0.25"); DICT_FLAGS to cifar_dictlearning.py (its --lca_feats and
# --lca_ksize must agree with the LCA-RCNN's). OUT (default ./results/lca_frontend_study):
# OUT/dictionaries/seed_N.pt (learned once, reused by later calls), OUT/plain/seed_N,
# OUT/lca/seed_N, each with its own report, and OUT/report over both. MODELS ("plain lca"): the
# models to train now (the report covers whatever OUT holds). DICT_TRAINING (pretrained): the
# LCA-RCNN's --dict_training; pretrained codes every image once (--cache-codes), finetune and
# learn code live, since their dictionary changes; learn starts from random atoms, so it learns
# no dictionary file. The measured study and the variants it chose from: docs/lcacnn.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_PATH=${DATA_PATH:?set DATA_PATH to the CIFAR-10 .npz file (arrays x (N,32,32,3) uint8, y (N,))}
STUDY=${OUT:-./results/lca_frontend_study}
export SEEDS=${SEEDS:-${SEED:-0 1 2}}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per process: fastest on shared CPUs
source run/seeds_common.sh

MODELS=${MODELS:-plain lca}
DICT_TRAINING=${DICT_TRAINING:-pretrained}
STUDY_DICT="$STUDY/dictionaries/seed_{seed}.pt"
case $DICT_TRAINING in
  pretrained) MODE_FLAGS=(--cache-codes --lca-dict "$STUDY_DICT") ;;
  finetune) MODE_FLAGS=(--lca-dict "$STUDY_DICT") ;;
  learn) MODE_FLAGS=() ;;
  *) echo "error: DICT_TRAINING: unknown mode $DICT_TRAINING; accepted: pretrained finetune learn" >&2
     exit 2 ;;
esac
for model in $MODELS; do
  case $model in
    plain|lca) ;;
    *) echo "error: MODELS: unknown model $model; accepted: plain lca" >&2; exit 2 ;;
  esac
done
wanted() { [[ " $MODELS " == *" $1 "* ]]; }

# each seed's dictionary, learned once on its own training split (learn starts from random atoms)
if wanted lca && [ "$DICT_TRAINING" != learn ]; then
  for seed in $SEEDS; do
    dict=$STUDY/dictionaries/seed_$seed.pt
    [ -f "$dict" ] && continue
    # shellcheck disable=SC2086  # DICT_FLAGS: a list of flags
    python cifar_dictlearning.py --task npz --data-path "$DATA_PATH" --lca_feats 64 \
      --lca_ksize 9 --lca_stride 2 --lca_lambda 0.25 --epochs 3 --mbs 64 --n-eval 419 \
      --threads 1 --seed "$seed" --results-dir "$STUDY/dictionaries" ${DICT_FLAGS:-} --out "$dict"
  done
fi

EP=(--task npz --data-path "$DATA_PATH" --channels 32 64 --kernels 3 3 --paddings 1 1 --fc 10
    --T1 20 --T2 5 --betas 0.0 0.5 --lrs 0.3 0.2 0.1 --wds 3e-4 3e-4 3e-4 --lr-decay --mbs 64
    --epochs 8 --device cpu)
if wanted plain; then
  OUT=$STUDY/plain run_seeds plain "${EP[@]}" --model CNN --strides 1 1 --pools mm "$@"
fi
if wanted lca; then
  # shellcheck disable=SC2086  # LCA_FLAGS: a list of flags
  OUT=$STUDY/lca PER_SEED=lca_dict run_seeds lca "${EP[@]}" --model LCACNN --strides 2 1 \
    --pools iim --lca_feats 64 --lca_ksize 9 --lca_stride 2 --lca_lambda 0.1 --lca_iters 100 \
    --lca-solver fista --dict_training "$DICT_TRAINING" --code-gain 8 "${MODE_FLAGS[@]}" \
    ${LCA_FLAGS:-} "$@"
fi
reported=()
for model in plain lca; do [ -d "$STUDY/$model" ] && reported+=("$STUDY/$model"); done
python -m eplcanet.app.report "${reported[@]}" --per-seed lca_dict \
  --out "$STUDY/report"
