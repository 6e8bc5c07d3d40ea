# Sourced by the sbatch scripts of this folder (from the submit directory, the repository root): the
# model, data and checkpoint settings they share, and the signal handling around the training step.
# Every variable can be set in the environment of `sbatch` (it exports it to the job).

# Model and batch (a GPT-350M as in Megatron-DeepSpeed's recipes; set all of them for another size).
NUM_LAYERS=${NUM_LAYERS:-24}
HIDDEN_SIZE=${HIDDEN_SIZE:-1024}
NUM_ATTN_HEADS=${NUM_ATTN_HEADS:-16}
SEQ_LENGTH=${SEQ_LENGTH:-2048}
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-4}
GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-256}
TRAIN_ITERS=${TRAIN_ITERS:-100000}
LR=${LR:-3e-4}
MIN_LR=${MIN_LR:-3e-5}
ZERO_STAGE=${ZERO_STAGE:-1}
# Data, tokenizer and folders. --load is --save, so a requeued job resumes from its newest checkpoint.
DATA_PATH=${DATA_PATH:-data/processed/kjv_text_document}
VOCAB_FILE=${VOCAB_FILE:-data/tokenizer/gpt2-bpe/vocab.json}
MERGE_FILE=${MERGE_FILE:-data/tokenizer/gpt2-bpe/merges.txt}
CHECKPOINT_PATH=${CHECKPOINT_PATH:-checkpoints/${SLURM_JOB_NAME:-gpt}}
SAVE_INTERVAL=${SAVE_INTERVAL:-1000}
LOG_INTERVAL=${LOG_INTERVAL:-10}
BF16=${BF16:-1}  # 0: fp32 (CPUs)
# 1: when the USR1 warning before the time limit stopped training, requeue the job (it resumes).
REQUEUE_ON_SIGNAL=${REQUEUE_ON_SIGNAL:-1}
# The rendezvous: the first node of the job, on a port derived from the job id (the same after a requeue,
# different for two jobs sharing a node).
MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export MASTER_ADDR MASTER_PORT

# The ds_config, beside the checkpoints (every node reads it, so it must be on a shared filesystem).
mkdir -p "$CHECKPOINT_PATH"
if [ -z "${DS_CONFIG:-}" ]; then
  DS_CONFIG=$CHECKPOINT_PATH/ds_config.json
  cat > "$DS_CONFIG" <<JSON
{"train_micro_batch_size_per_gpu": $MICRO_BATCH_SIZE, "steps_per_print": 1000000,
 "zero_optimization": {"stage": $ZERO_STAGE}, "bf16": {"enabled": $([ "$BF16" = 1 ] && echo true || echo false)}}
JSON
fi

GPT_ARGS=(
  --num-layers "$NUM_LAYERS" --hidden-size "$HIDDEN_SIZE" --num-attention-heads "$NUM_ATTN_HEADS"
  --seq-length "$SEQ_LENGTH" --max-position-embeddings "$SEQ_LENGTH"
  --micro-batch-size "$MICRO_BATCH_SIZE" --global-batch-size "$GLOBAL_BATCH_SIZE" --train-iters "$TRAIN_ITERS"
  --lr "$LR" --min-lr "$MIN_LR" --lr-decay-style cosine --lr-warmup-iters "${LR_WARMUP_ITERS:-2000}"
  --weight-decay 0.1 --clip-grad 1.0
  --data-path "$DATA_PATH" --split "${SPLIT:-969,30,1}"
  --tokenizer-type GPT2BPETokenizer --vocab-file "$VOCAB_FILE" --merge-file "$MERGE_FILE"
  --log-interval "$LOG_INTERVAL" --eval-interval "${EVAL_INTERVAL:-1000}" --eval-iters "${EVAL_ITERS:-10}"
  --save "$CHECKPOINT_PATH" --load "$CHECKPOINT_PATH" --save-interval "$SAVE_INTERVAL"
  --exit-signal-handler
  --deepspeed --deepspeed_config "$DS_CONFIG" --zero-stage "$ZERO_STAGE"
)
[ "$BF16" = 1 ] && GPT_ARGS+=(--bf16)

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
