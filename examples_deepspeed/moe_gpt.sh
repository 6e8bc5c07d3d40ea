#!/usr/bin/env bash
# A small mixture-of-experts GPT on the bundled corpus, with Megatron-DeepSpeed's MoE flags and DeepSpeed's MoE
# layer: 4 experts in every second layer, top-1 gating, token dropping at capacity factor 1.0, the load-balancing
# loss weighted 0.01 (logged as "moe loss"), ZeRO 2, fp32; on the GPUs if there are any, else on the CPU.
#   NUM_GPUS      processes (default 1); each layer's experts are split over EP_SIZE of them (default NUM_GPUS)
#   NUM_EXPERTS   "4" (default), or one count per MoE layer for pyramid MoE, e.g. "2 4"
#   MLP_TYPE      standard (default) or residual (Residual MoE); TOPK 1 (default) or 2; TRAIN_ITERS (200)
set -euo pipefail
cd "$(dirname "$0")/.."
source examples_deepspeed/common.sh

preprocess_gpt_corpus

NUM_GPUS=${NUM_GPUS:-1}
EP_SIZE=${EP_SIZE:-$NUM_GPUS}
read -r -a EXPERTS <<< "${NUM_EXPERTS:-4}"
GLOBAL_BATCH=16
MICRO_BATCH=$((GLOBAL_BATCH / NUM_GPUS < 8 ? GLOBAL_BATCH / NUM_GPUS : 8))
DS_CONFIG=$(mktemp --suffix=.json)
trap 'rm -f "$DS_CONFIG"' EXIT
sed -e "s/\"train_batch_size\": 16/\"train_batch_size\": $GLOBAL_BATCH/" \
    -e "s/\"train_micro_batch_size_per_gpu\": 8/\"train_micro_batch_size_per_gpu\": $MICRO_BATCH/" \
    ds_configs/ds_config_gpt_moe.json > "$DS_CONFIG"

launch_checked deepspeed --num_gpus "$NUM_GPUS" --master_port "$MASTER_PORT" pretrain_gpt.py \
  --num-layers 4 --hidden-size 256 --num-attention-heads 4 --seq-length 128 --max-position-embeddings 128 \
  --num-experts "${EXPERTS[@]}" --expert-interval 2 --moe-expert-parallel-size "$EP_SIZE" \
  --topk "${TOPK:-1}" --mlp-type "${MLP_TYPE:-standard}" --moe-train-capacity-factor 1.0 \
  --moe-eval-capacity-factor 1.0 --moe-min-capacity 4 --moe-loss-coeff 0.01 \
  --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH" \
  --train-iters "${TRAIN_ITERS:-200}" --lr 1e-3 --min-lr 1e-4 --lr-decay-style cosine --lr-warmup-iters 20 \
  --weight-decay 0.1 --clip-grad 1.0 --attention-dropout 0.0 --hidden-dropout 0.0 \
  --data-path "${GPT_DATA_PREFIX}_text_document" --split 98,2,0 \
  --tokenizer-type GPT2BPETokenizer --vocab-file "$GPT_TOKENIZER/vocab.json" --merge-file "$GPT_TOKENIZER/merges.txt" \
  --log-interval 10 --eval-interval 100 --eval-iters 5 \
  --save checkpoints/moe_gpt --overwrite-save --save-interval 100 --tensorboard-dir runs/moe_gpt \
  --deepspeed --deepspeed_config "$DS_CONFIG"
