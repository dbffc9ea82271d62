# The multi-seed recipes' loop, shared by mnist_14k.sh and cifar_4k.sh (sourced by them, not run
# on its own). `run_seeds NAME FLAGS...` runs `main_fast.py FLAGS... --seed N --save` once per
# seed into OUT/seed_N, then the report (mean, std, 95% CI, learning curves) over them into
# OUT/report.
#
# SEEDS: the seeds (default "0 1 2"), or SEED: one seed. OUT: the results folder (default
# ./results/NAME/<date-time>). The flags given to the recipe script come after the recipe's in
# FLAGS and win over them (argparse keeps the last value).
run_seeds() {
  local name=$1 seed
  shift
  local out=${OUT:-./results/$name/$(date +%Y%m%d-%H%M%S)}
  for seed in ${SEEDS:-${SEED:-0 1 2}}; do
    python main_fast.py "$@" --seed "$seed" --save --results-dir "$out/seed_$seed"
  done
  python -m eplcanet.app.report "$out" --out "$out/report"
}
