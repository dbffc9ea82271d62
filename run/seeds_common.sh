# The multi-seed recipes' loop, shared by mnist_14k.sh and cifar_4k.sh (sourced by them, not run
# on its own). `run_seeds NAME FLAGS...` runs `main_fast.py FLAGS... --seed N --save` once per
# seed into OUT/seed_N, then the report (mean, std, 95% CI, learning curves) over them into
# OUT/report. A flag holding {seed} gets the seed in its place (e.g. --lca-dict D/seed_{seed}.pt, a
# dictionary per seed); PER_SEED names the hyperparameters it changes (e.g. "lca_dict"), for the
# report's --per-seed.
#
# SEEDS: the seeds (default "0 1 2"), or SEED: one seed. OUT: the results folder (default
# ./results/NAME/<date-time>). The flags given to the recipe script come after the recipe's in
# FLAGS and win over them (argparse keeps the last value).
run_seeds() {
  local name=$1 seed
  shift
  local out=${OUT:-./results/$name/$(date +%Y%m%d-%H%M%S)}
  for seed in ${SEEDS:-${SEED:-0 1 2}}; do
    python main_fast.py "${@//'{seed}'/$seed}" --seed "$seed" --save --results-dir "$out/seed_$seed"
  done
  # shellcheck disable=SC2086  # PER_SEED: a list of names
  python -m eplcanet.app.report "$out" --out "$out/report" ${PER_SEED:+--per-seed $PER_SEED}
}
