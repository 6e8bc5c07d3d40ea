# Sourced by the per-size recipes (examples_deepspeed/ds_pretrain_*.sh) after they set PRESET and their
# variables: writes the ds_config from the variables, assembles the pretrain_*.py flags and launches them
# with the deepspeed launcher (one node, or the nodes of HOSTFILE), everything under OUTPUT_DIR:
#   OUTPUT_DIR/ds_config.json  OUTPUT_DIR/checkpoint/  OUTPUT_DIR/tensorboard/  OUTPUT_DIR/logs/<time>.log
# The model and layout variables (NUM_LAYERS ... NNODES) default to the preset's, from
# `python3 -m megatron.config.presets PRESET --shell`; each can be set from the environment.
#   DRY_RUN=1       write the ds_config and print the launch command, without installing or launching
#   HOSTFILE        DeepSpeed's hostfile ("host slots=8" per node; default /job/hostfile) when NNODES > 1
#   DATA_PATH       the data prefix (PREFIX_text_document / PREFIX_text_sentence); default the bundled corpus
#   VOCAB_FILE MERGE_FILE TOKENIZER_MODEL  the tokenizer files (default: the bundled ones)
#   PRECISION       bf16 (default) or fp16;  ACTIVATION_CHECKPOINT  true (default) or false
#   SKIP_INSTALL=1  use the Python environment as it is (see common.sh)
DRY_RUN=${DRY_RUN:-0}
[ "$DRY_RUN" = 1 ] && SKIP_INSTALL=1
source examples_deepspeed/common.sh

PRECISION=${PRECISION:-bf16}
ACTIVATION_CHECKPOINT=${ACTIVATION_CHECKPOINT:-true}
LOG_INTERVAL=${LOG_INTERVAL:-10}
EVAL_INTERVAL=${EVAL_INTERVAL:-1000}
EVAL_ITERS=${EVAL_ITERS:-10}
SAVE_INTERVAL=${SAVE_INTERVAL:-1000}
HOSTFILE=${HOSTFILE:-/job/hostfile}
if [ "$NNODES" -gt 1 ] && [ "$DRY_RUN" != 1 ] && [ ! -f "$HOSTFILE" ]; then  # before any preprocessing
  echo "error: NNODES=$NNODES needs DeepSpeed's hostfile: HOSTFILE=$HOSTFILE does not exist. Write one" \
    "line \"host slots=$GPUS_PER_NODE\" per node there, or set NNODES=1 (and a layout that fits one node)." >&2
  exit 1
fi
mkdir -p "$OUTPUT_DIR/checkpoint" "$OUTPUT_DIR/tensorboard" "$OUTPUT_DIR/logs"

case "$TOKENIZER_TYPE" in
  GPT2BPETokenizer)
    DATA_PATH=${DATA_PATH:-${GPT_DATA_PREFIX}_text_document}
    tokenizer_flags=(--vocab-file "${VOCAB_FILE:-$GPT_TOKENIZER/vocab.json}"
                     --merge-file "${MERGE_FILE:-$GPT_TOKENIZER/merges.txt}") ;;
  GPTSentencePieceTokenizer)  # LLaMA's tokenizer.model; default one trained on the bundled corpus
    DATA_PATH=${DATA_PATH:-data/processed/kjv_sp_text_document}
    TOKENIZER_MODEL=${TOKENIZER_MODEL:-data/processed/kjv-sp.model}
    tokenizer_flags=(--tokenizer-model "$TOKENIZER_MODEL") ;;
  BertWordPieceLowerCase)
    DATA_PATH=${DATA_PATH:-${SENTENCE_DATA_PREFIX}_text_sentence}
    tokenizer_flags=(--vocab-file "${VOCAB_FILE:-$BERT_VOCAB}") ;;
esac

if [ "$DRY_RUN" != 1 ] && [ "$DATA_PATH" = "${GPT_DATA_PREFIX}_text_document" ]; then
  preprocess_gpt_corpus
elif [ "$DRY_RUN" != 1 ] && [ "$DATA_PATH" = "${SENTENCE_DATA_PREFIX}_text_sentence" ]; then
  preprocess_sentence_corpus
elif [ "$DRY_RUN" != 1 ] && [ "$DATA_PATH" = data/processed/kjv_sp_text_document ]; then
  [ -f "$TOKENIZER_MODEL" ] || python3 tools/train_sentencepiece.py --input data/corpus/kjv.jsonl \
    --model-prefix "${TOKENIZER_MODEL%.model}" --vocab-size 8000
  [ -f "$DATA_PATH.idx" ] || python3 tools/preprocess_data.py --input data/corpus/kjv.jsonl --json-keys text \
    --output-prefix data/processed/kjv_sp --tokenizer-type GPTSentencePieceTokenizer \
    --tokenizer-model "$TOKENIZER_MODEL" --append-eod --workers 2
fi

DS_CONFIG=$OUTPUT_DIR/ds_config.json
if [ "$PRECISION" = fp16 ]; then
  precision_section='"fp16": {"enabled": true, "loss_scale": 0, "loss_scale_window": 500, "hysteresis": 2,
          "min_loss_scale": 1, "initial_scale_power": 12}'
else
  precision_section='"bf16": {"enabled": true}'
fi
cat <<EOT > "$DS_CONFIG"
{
  "train_batch_size": $GLOBAL_BATCH,
  "train_micro_batch_size_per_gpu": $MICRO_BATCH,
  "steps_per_print": $LOG_INTERVAL,
  "zero_optimization": {"stage": $ZERO_STAGE},
  "gradient_clipping": 1.0,
  "prescale_gradients": false,
  $precision_section,
  "wall_clock_breakdown": false
}
EOT

model_flags=(--num-layers "$NUM_LAYERS" --hidden-size "$HIDDEN_SIZE" --num-attention-heads "$NUM_ATTN_HEADS"
             --seq-length "$SEQ_LEN" --max-position-embeddings "$SEQ_LEN" --init-method-std "$INIT_STD")
[ -n "$FFN_HIDDEN_SIZE" ] && model_flags+=(--ffn-hidden-size "$FFN_HIDDEN_SIZE")
[ -n "$NUM_KV_HEADS" ] && model_flags+=(--num-key-value-heads "$NUM_KV_HEADS")
[ "$NUM_EXPERTS" -gt 1 ] && model_flags+=(--num-experts "$NUM_EXPERTS" --moe-expert-parallel-size "$EP_SIZE")
read -r -a arch_flags <<< "$ARCH_FLAGS"

parallel_flags=(--tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP" --zero-stage "$ZERO_STAGE")
[ "$PP" = 1 ] && parallel_flags+=(--no-pipeline-parallel)  # the plain engine, which takes ZeRO 2 and 3
[ "$ACTIVATION_CHECKPOINT" = true ] && parallel_flags+=(--recompute-granularity full --recompute-method uniform
                                                        --recompute-num-layers 1)

training_flags=(--micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH"
  --train-samples "$TRAIN_SAMPLES" --lr "$LR" --min-lr "$MIN_LR" --lr-decay-style cosine
  --lr-warmup-samples "$LR_WARMUP_SAMPLES" --lr-decay-samples "$LR_DECAY_SAMPLES"
  --adam-beta1 0.9 --adam-beta2 "${ADAM_BETA2:-0.95}" --weight-decay "${WEIGHT_DECAY:-0.1}" --clip-grad 1.0
  "--$PRECISION" --seed "${SEED:-1234}"
  --data-path "$DATA_PATH" --data-impl mmap --split "${SPLIT:-949,50,1}" --tokenizer-type "$TOKENIZER_TYPE"
  "${tokenizer_flags[@]}" --num-workers "${NUM_WORKERS:-2}"
  --log-interval "$LOG_INTERVAL" --eval-interval "$EVAL_INTERVAL" --eval-iters "$EVAL_ITERS"
  --save-interval "$SAVE_INTERVAL" --save "$OUTPUT_DIR/checkpoint" --load "$OUTPUT_DIR/checkpoint"
  --tensorboard-dir "$OUTPUT_DIR/tensorboard" --log-validation-ppl-to-tensorboard
  --deepspeed --deepspeed_config "$DS_CONFIG")

launcher=(deepspeed --num_gpus "$GPUS_PER_NODE" --master_port "$MASTER_PORT")
if [ "$NNODES" -gt 1 ]; then
  launcher=(deepspeed --hostfile "$HOSTFILE" --num_nodes "$NNODES" --num_gpus "$GPUS_PER_NODE"
            --master_port "$MASTER_PORT")
fi
command=("${launcher[@]}" "$ENTRY_POINT" "${model_flags[@]}" "${arch_flags[@]}" "${parallel_flags[@]}"
         "${training_flags[@]}" "$@")

if [ "$DRY_RUN" = 1 ]; then
  echo "ds_config: $DS_CONFIG"
  printf '%q ' "${command[@]}"
  echo
  exit 0
fi
log=$OUTPUT_DIR/logs/$(date -u +%Y%m%dT%H%M%SZ).log
echo "logging to $log"
launch_checked "${command[@]}" 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
