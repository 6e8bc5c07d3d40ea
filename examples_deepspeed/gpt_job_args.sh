# Sourced by the multi-node scripts (multinode_gpt.sh, slurm/*.sbatch), from the repository root: the
# GPT model, batch, data and checkpoint settings they share, as Megatron-DeepSpeed's variables, and
# GPT_ARGS, the pretrain_gpt.py flags they make. Every variable can be set in the environment; the
# defaults are a GPT-350M on the bundled corpus (examples_deepspeed/quickstart_gpt.sh preprocesses it).

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
# Data, tokenizer and folders. --load is --save: a restarted or requeued job resumes from its newest
# checkpoint (a first run finds none and starts from scratch).
DATA_PATH=${DATA_PATH:-data/processed/kjv_text_document}
VOCAB_FILE=${VOCAB_FILE:-data/tokenizer/gpt2-bpe/vocab.json}
MERGE_FILE=${MERGE_FILE:-data/tokenizer/gpt2-bpe/merges.txt}
CHECKPOINT_PATH=${CHECKPOINT_PATH:-checkpoints/gpt}
SAVE_INTERVAL=${SAVE_INTERVAL:-1000}
LOG_INTERVAL=${LOG_INTERVAL:-10}
BF16=${BF16:-1}  # 0: fp32 (CPUs)

# The ds_config, beside the checkpoints (every node reads it, so it must be on a shared filesystem; where
# each node runs this script, each writes the same file and renames it into place, so none reads half).
mkdir -p "$CHECKPOINT_PATH"
if [ -z "${DS_CONFIG:-}" ]; then
  DS_CONFIG=$CHECKPOINT_PATH/ds_config.json
  cat > "$DS_CONFIG.$$" <<JSON
{"train_micro_batch_size_per_gpu": $MICRO_BATCH_SIZE, "steps_per_print": 1000000,
 "zero_optimization": {"stage": $ZERO_STAGE}, "bf16": {"enabled": $([ "$BF16" = 1 ] && echo true || echo false)}}
JSON
  mv -f "$DS_CONFIG.$$" "$DS_CONFIG"
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
if [ "$BF16" = 1 ]; then
  GPT_ARGS+=(--bf16)
fi
