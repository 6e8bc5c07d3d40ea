#!/usr/bin/env bash
# LLaMA-2-style pretraining in Megatron-DeepSpeed's recipe layout (its examples_deepspeed/
# pretrain_llama2_distributed.sh, with the same model flags): rotary positions, SwiGLU, RMSNorm, no biases,
# an untied output layer, grouped-query attention, a SentencePiece tokenizer, bf16, tensor x pipeline
# parallelism through torchrun. Its defaults run a small model on the bundled corpus (a SentencePiece model
# is trained on it first when TOKENIZER_PATH is unset), on the GPUs if there are any and on the CPU
# otherwise; set the variables below for a real run (e.g. LLaMA-2 7B: HIDDEN_SIZE=4096 FFN_HIDDEN_SIZE=11008
# NUM_LAYERS=32 NUM_HEADS=32 NUM_KV_HEADS=32 SEQ_LENGTH=4096).
set -euo pipefail
cd "$(dirname "$0")/.."
source examples_deepspeed/common.sh

######################################
# Change the below configurations here
BASE_PATH=${BASE_PATH:-checkpoints/llama2}
DS_CONFIG=${BASE_PATH}/deepspeed.json
CHECKPOINT_PATH=${BASE_PATH}
TOKENIZER_PATH=${TOKENIZER_PATH:-}  # an official LLaMA tokenizer.model, or empty to train one here
DATASET=${DATASET:-}                # "1 PREFIX_text_document", or empty to preprocess the bundled corpus

TP=${TP:-2}
PP=${PP:-2}
ZERO_STAGE=${ZERO_STAGE:-0}
GPUS_PER_NODE=${GPUS_PER_NODE:-$((TP * PP))}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
# The recipe's NCCL on GPUs; gloo where there are none.
BACKEND=${BACKEND:-$(python3 -c 'import torch; print("nccl" if torch.cuda.is_available() else "gloo")')}

HIDDEN_SIZE=${HIDDEN_SIZE:-256}          # e.g. llama-13b: 5120
FFN_HIDDEN_SIZE=${FFN_HIDDEN_SIZE:-688}  # e.g. llama-13b: 13824
NUM_LAYERS=${NUM_LAYERS:-4}              # e.g. llama-13b: 40
NUM_HEADS=${NUM_HEADS:-8}                # e.g. llama-13b: 40
SEQ_LENGTH=${SEQ_LENGTH:-256}
NUM_KV_HEADS=${NUM_KV_HEADS:-4}          # llama2 70B uses GQA

MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-4}
GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-16}  # e.g. llama: 4M tokens
TRAIN_STEPS=${TRAIN_STEPS:-100}             # e.g. llama: 1T tokens / 4M tokens_per_batch = 250000 steps
LR=3e-4
MIN_LR=3e-5
LR_WARMUP_STEPS=${LR_WARMUP_STEPS:-10}
WEIGHT_DECAY=0.1
GRAD_CLIP=1

## Activation checkpointing saves GPU memory, but reduces training speed
activation_checkpoint=${ACTIVATION_CHECKPOINT:-false}
######################################

mkdir -p "$BASE_PATH"
if [ -z "$TOKENIZER_PATH" ]; then
  TOKENIZER_PATH=data/processed/kjv-sp.model
  [ -f "$TOKENIZER_PATH" ] || python3 tools/train_sentencepiece.py --input data/corpus/kjv.jsonl \
    --model-prefix data/processed/kjv-sp --vocab-size 8000
fi
if [ -z "$DATASET" ]; then
  [ -f data/processed/kjv_sp_text_document.idx ] || python3 tools/preprocess_data.py \
    --input data/corpus/kjv.jsonl --json-keys text --output-prefix data/processed/kjv_sp \
    --tokenizer-type GPTSentencePieceTokenizer --tokenizer-model "$TOKENIZER_PATH" --append-eod --workers 2
  DATASET="1 data/processed/kjv_sp_text_document"
fi

cat <<EOT > "$DS_CONFIG"
{
  "train_batch_size" : $GLOBAL_BATCH_SIZE,
  "train_micro_batch_size_per_gpu": $MICRO_BATCH_SIZE,
  "steps_per_print": 1,
  "zero_optimization": {
    "stage": $ZERO_STAGE
  },
  "bf16": {
    "enabled": true
  }
}
EOT

ds_args=""
ds_args=" --deepspeed ${ds_args}"
ds_args=" --deepspeed_config=$DS_CONFIG ${ds_args}"
ds_args=" --zero-stage=$ZERO_STAGE ${ds_args}"
if [ "${activation_checkpoint}" = "true" ]; then
  ds_args="--deepspeed-activation-checkpointing --recompute-granularity full --recompute-method uniform ${ds_args}"
fi

DISTRIBUTED_ARGS="--nproc_per_node $GPUS_PER_NODE --nnodes $NNODES --node_rank $NODE_RANK --master_addr $MASTER_ADDR --master_port $MASTER_PORT"

# shellcheck disable=SC2086  # DATASET and the argument strings split into words on purpose
launch_checked torchrun $DISTRIBUTED_ARGS \
       pretrain_gpt.py \
       --tensor-model-parallel-size $TP \
       --pipeline-model-parallel-size $PP \
       --num-layers $NUM_LAYERS \
       --hidden-size $HIDDEN_SIZE \
       --ffn-hidden-size $FFN_HIDDEN_SIZE \
       --num-attention-heads $NUM_HEADS \
       --micro-batch-size $MICRO_BATCH_SIZE \
       --global-batch-size $GLOBAL_BATCH_SIZE \
       --seq-length $SEQ_LENGTH \
       --max-position-embeddings $SEQ_LENGTH \
       --train-iters $TRAIN_STEPS \
       --save $CHECKPOINT_PATH \
       --load $CHECKPOINT_PATH \
       --data-path $DATASET \
       --data-impl mmap \
       --tokenizer-type GPTSentencePieceTokenizer \
       --tokenizer-model $TOKENIZER_PATH \
       --split 949,50,1 \
       --distributed-backend $BACKEND \
       --lr $LR \
       --lr-decay-style cosine \
       --min-lr $MIN_LR \
       --weight-decay $WEIGHT_DECAY \
       --clip-grad $GRAD_CLIP \
       --lr-warmup-iters $LR_WARMUP_STEPS \
       --optimizer adam \
       --adam-beta1 0.9 \
       --adam-beta2 0.95 \
       --log-interval 1 \
       --save-interval 10000 \
       --eval-interval 1000 \
       --eval-iters 10 \
       --bf16 \
       --no-query-key-layer-scaling \
       --attention-dropout 0 \
       --hidden-dropout 0 \
       --use-rotary-position-embeddings \
       --untie-embeddings-and-output-weights \
       --swiglu \
       --normalization rmsnorm \
       --disable-bias-linear \
       --num-key-value-heads $NUM_KV_HEADS \
       $ds_args
