# Sourced by the sbatch scripts of this folder (from the submit directory, the repository root): the GPT
# settings of examples_deepspeed/gpt_job_args.sh (every variable can be set in the environment of
# `sbatch`, which exports it to the job), the rendezvous, and the signal handling around the training step.
CHECKPOINT_PATH=${CHECKPOINT_PATH:-checkpoints/${SLURM_JOB_NAME:-gpt}}
source examples_deepspeed/gpt_job_args.sh

# 1: when the USR1 warning before the time limit stopped training, requeue the job (it resumes).
REQUEUE_ON_SIGNAL=${REQUEUE_ON_SIGNAL:-1}
# The rendezvous: the first node of the job, on a port derived from the job id (the same after a requeue,
# different for two jobs sharing a node).
MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export MASTER_ADDR MASTER_PORT

# With `#SBATCH --signal=B:USR1@120` Slurm signals this batch shell, not the training processes: pass the
# signal on to every task of the job's steps (scancel without --batch skips this shell), so that each rank
# saves a checkpoint and exits (status 4). Slurm's own SIGTERM at the time limit or on `scancel` reaches
# the tasks directly and is handled the same way.
CAUGHT_SIGNAL=
forward_signal() {
  CAUGHT_SIGNAL=$1
  echo "batch script: caught SIG$1, forwarding it to the training processes of job $SLURM_JOB_ID"
  scancel --signal="$1" "$SLURM_JOB_ID"
}
trap 'forward_signal USR1' USR1
trap 'forward_signal TERM' TERM

# Run a step command in the background and wait for it through the traps (bash runs a trap only between
# commands, and `wait` returns early when one fires). Then, when the USR1 warning stopped training and
# REQUEUE_ON_SIGNAL is 1, requeue this job: it runs again later and resumes from the checkpoint just saved.
run_step() {
  local pid status
  "$@" &
  pid=$!
  wait "$pid" && status=0 || status=$?
  while kill -0 "$pid" 2>/dev/null; do
    wait "$pid" && status=0 || status=$?
  done
  echo "batch script: training step exited with status $status"
  if [ "$CAUGHT_SIGNAL" = USR1 ] && [ "$REQUEUE_ON_SIGNAL" = 1 ]; then
    echo "batch script: requeueing job $SLURM_JOB_ID to resume from $CHECKPOINT_PATH"
    scontrol requeue "$SLURM_JOB_ID"
  fi
  return "$status"
}
