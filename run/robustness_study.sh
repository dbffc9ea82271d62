#!/usr/bin/env bash
# The robustness study: four models of the same size, each trained with several seeds and
# attacked through its own relaxation with the ART attacks of --todo attack (PGD at two effort
# levels, AutoPGD CE and DLR, the black-box Square attack; the gradient-masking checks run with
# every attack), then the mean and 95% confidence interval over the seeds at every radius.
#
#   bash run/robustness_study.sh [DATA.npz [main_fast.py flags]]   e.g. ../shared/data/mnist-train-14k.npz
#   QUICK=1 bash run/robustness_study.sh         the CI variant: digits, tiny networks, 2 seeds
# Flags after DATA go to every training run and win over the study's (e.g. --T1 12 --epochs 2).
#
# Models (MODELS, default all): ep_cnn (EP), bptt_cnn (BPTT through the relaxation), ep_lcacnn
# (EP behind an LCA sparse-coding frontend), bp_ffcnn (the same layers feed-forward, trained with
# backprop: the baseline). Without DATA the offline digits are used.
# Settings (environment): SEEDS ("0 1 2"), EPOCHS, N_IMAGES (first N images of DATA; 0 = all),
# SAMPLES (test images attacked per seed; the study wants >= 1000), PGD_STEPS, HSJ_SAMPLES (the
# images HopSkipJump attacks, default 100), ATTACKS (names for --attacks; default all), NORM
# (Linf | L2 | both), EPSILONS (radii of that one norm), DEVICE (auto), OUT
# (./results/robustness_study/<data>). The results: OUT/study/study.csv (one row per model,
# norm, radius and attack kind), study_points.csv (per seed) and study.png.
# A run holding best.pt is not trained again and one holding attack.csv is not attacked again,
# so the script finishes what an interrupted one left; REDO_ATTACKS=1 attacks again, and the
# rows of attacks it does not run again stay in attack.csv (REDO_ATTACKS=1 ATTACKS=hopskipjump
# adds HopSkipJump to finished runs).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${1:-}
shift $(( $# > 0 ? 1 : 0 ))
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  : "${SEEDS:=0 1}" "${EPOCHS:=3}" "${SAMPLES:=64}" "${PGD_STEPS:=3}" "${HSJ_SAMPLES:=8}"
  : "${ATTACKS:=pgd square hopskipjump}"
  : "${NORM:=Linf}" "${EPSILONS:=0 0.1 0.3}" "${DEVICE:=cpu}"
  NET=(--channels 4 8 --kernels 3 3 --paddings 1 1 --pools mm --fc 10 --T1 6 --T2 2 --mbs 32
       --lrs 0.5 0.3 0.2 --mmt 0.9)
  LCA=(--lca_feats 8 --lca_ksize 3 --lca_stride 1 --lca_lambda 0.05 --lca_tau 10 --lca_iters 20
       --dict_training learn)
else
  NET=(--channels 16 32 --kernels 3 3 --paddings 1 1 --pools mm --fc 10 --T1 20 --T2 4 --mbs 64)
  LCA=(--lca_feats 16 --lca_ksize 5 --lca_stride 2 --lca_lambda 0.25 --lca_tau 10
       --lca_iters 50 --dict_training learn)
fi
SEEDS=${SEEDS:-0 1 2}
EPOCHS=${EPOCHS:-5}
N_IMAGES=${N_IMAGES:-0}
SAMPLES=${SAMPLES:-1000}
PGD_STEPS=${PGD_STEPS:-20}
NORM=${NORM:-both}
DEVICE=${DEVICE:-auto}
MODELS=${MODELS:-ep_cnn bptt_cnn ep_lcacnn bp_ffcnn}
REDO_ATTACKS=${REDO_ATTACKS:-0}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per process: fastest on shared CPUs

if [ -n "$DATA" ]; then
  [ -f "$DATA" ] || { echo "error: $DATA: no such file (an .npz with arrays x, y)" >&2; exit 2; }
  OUT=${OUT:-./results/robustness_study/$(basename "$DATA" .npz)}
  mkdir -p "$OUT"
  if [ "$N_IMAGES" -gt 0 ]; then  # the first N_IMAGES images (MNIST's order is already random)
    SUBSET="$OUT/first-$N_IMAGES.npz"
    [ -f "$SUBSET" ] || python -c "import numpy as np, sys
d = np.load(sys.argv[1]); n = int(sys.argv[3])
np.savez(sys.argv[2], x=d['x'][:n], y=d['y'][:n])" "$DATA" "$SUBSET" "$N_IMAGES"
    DATA=$SUBSET
  fi
  TASK=(--task npz --data-path "$DATA")
else
  OUT=${OUT:-./results/robustness_study/digits}
  TASK=(--task digits)
fi
ATTACK=(--attack-samples "$SAMPLES" --pgd-steps "$PGD_STEPS" --attack-norm "$NORM"
        --hsj-samples "${HSJ_SAMPLES:-100}")
# shellcheck disable=SC2206  # word lists
[ -n "${ATTACKS:-}" ] && ATTACK+=(--attacks $ATTACKS)
# shellcheck disable=SC2206
[ -n "${EPSILONS:-}" ] && ATTACK+=(--epsilons $EPSILONS)

model_flags() {  # the flags of one model of the study
  case $1 in
    ep_cnn) echo --alg EP ;;
    bptt_cnn) echo --alg BPTT ;;
    ep_lcacnn) echo --model LCACNN --alg EP "${LCA[@]}" ;;
    # its two layers are exact after two relaxation steps: T1 2 predicts (and attacks) with
    # the feed-forward pass at a tenth of the EP models' cost
    bp_ffcnn) echo --model FFCNN --alg BP --T1 2 ;;
    *) echo "error: unknown model $1 in MODELS; accepted: ep_cnn bptt_cnn ep_lcacnn bp_ffcnn" >&2
       return 2 ;;
  esac
}

latest_run() {  # the run directory with the newest best.pt below a folder, or nothing
  [ -d "$1" ] || return 0
  find "$1" -name best.pt -printf '%T@ %h\n' 2>/dev/null | sort -n | tail -n 1 | cut -d' ' -f2-
}

for model in $MODELS; do model_flags "$model" > /dev/null; done  # refuse a typo before work
for model in $MODELS; do
  read -r -a flags <<< "$(model_flags "$model")"
  for seed in $SEEDS; do
    dir="$OUT/$model/seed_$seed"
    run=$(latest_run "$dir")
    if [ -z "$run" ]; then
      python main_fast.py "${TASK[@]}" "${NET[@]}" --epochs "$EPOCHS" "$@" "${flags[@]}" \
        --seed "$seed" --device "$DEVICE" --save --results-dir "$dir"
      run=$(latest_run "$dir")
    fi
    if [ "$REDO_ATTACKS" = 1 ] || [ ! -f "$run/attack.csv" ]; then
      python main_fast.py --todo attack --load-path "$run" --device "$DEVICE" "${ATTACK[@]}"
    fi
  done
done
python -m eplcanet.app.robustness_study study "$OUT" --out "$OUT/study"
