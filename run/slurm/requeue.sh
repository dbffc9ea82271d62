# Preemption and time limits for the sbatch scripts (sourced once they are in the project root).
#
# A job's run goes to $RESULTS_DIR/slurm-$SLURM_JOB_ID. Slurm sends SIGTERM when it preempts the
# job, and (with `#SBATCH --signal=B:TERM@120`) two minutes before the time limit; training then
# finishes its minibatch, writes a mid-epoch checkpoint and exits. The job is requeued, and when
# it starts again the run of that directory which has a checkpoint is resumed with its own flags
# (`main_fast.py --load-path RUN`), so it ends with the metrics an uninterrupted run has.
#
#   job_flags FLAGS...    sets the array JOB_FLAGS: FLAGS plus --save --results-dir for a new
#                         run, or --load-path RUN when this job already has one to resume
#   run_requeueable CMD   runs CMD in the background, passes SIGTERM on to it, waits until it has
#                         saved and exited, and requeues the job when it was stopped that way

JOB_RESULTS="${RESULTS_DIR:-./results}/slurm-${SLURM_JOB_ID:-local}"

# the newest run of this job with a checkpoint (find's order is arbitrary; the paths sort by
# date and run number)
job_run() {
  [ -d "$JOB_RESULTS" ] || return 0  # a first start: nothing to resume
  find "$JOB_RESULTS" -name checkpoint.pt -printf '%h\n' 2>/dev/null | sort -V | tail -n 1
}

job_flags() {
  local run
  run=$(job_run)
  if [ -n "$run" ]; then
    echo "resuming $run (start $(( ${SLURM_RESTART_COUNT:-0} + 1 )) of job ${SLURM_JOB_ID:-local})"
    JOB_FLAGS=(--load-path "$run")
  else
    JOB_FLAGS=("$@" --save --results-dir "$JOB_RESULTS")
  fi
}

run_requeueable() {
  local pid status stopped=0
  "$@" &
  pid=$!
  # torchrun (and srun) pass the signal on to every training process
  trap 'stopped=1; kill -TERM "$pid" 2>/dev/null || true' TERM
  # `wait` returns as soon as a trapped signal arrives: wait again until CMD has really exited
  while :; do
    if wait "$pid"; then status=0; else status=$?; fi
    kill -0 "$pid" 2>/dev/null || break
  done
  trap - TERM
  if [ "$stopped" = 1 ]; then
    if [ -n "${SLURM_JOB_ID:-}" ]; then
      echo "stopped by SIGTERM: requeueing job $SLURM_JOB_ID; it resumes from the checkpoint"
      scontrol requeue "$SLURM_JOB_ID" || echo "scontrol requeue failed; resume by hand:" \
        "python main_fast.py --load-path $(job_run)" >&2
    else
      echo "stopped by SIGTERM (not under Slurm): run this again to resume from the checkpoint"
    fi
  fi
  return "$status"
}
