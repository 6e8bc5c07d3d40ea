#!/usr/bin/env bash
# A small GPT on the bundled corpus with Megatron-DeepSpeed's sequence-length curriculum: the ds_config's
# curriculum_learning section grows every micro batch from 16 to 128 tokens (fixed_linear, steps of 8) over the
# first CL_STEPS iterations, and the learning rate decays over consumed tokens (--lr-decay-tokens), which the
# curriculum makes fewer per early step. The log line shows "curriculum seqlen". ZeRO 1, fp32, GPUs or CPU.
#   NUM_GPUS processes (default 1); TRAIN_ITERS (default 200); CL_STEPS (default TRAIN_ITERS / 2)
set -euo pipefail
cd "$(dirname "$0")/.."
source examples_deepspeed/common.sh

preprocess_gpt_corpus

NUM_GPUS=${NUM_GPUS:-1}
TRAIN_ITERS=${TRAIN_ITERS:-200}
CL_STEPS=${CL_STEPS:-$((TRAIN_ITERS / 2))}
SEQ_LENGTH=128
GLOBAL_BATCH=16
MICRO_BATCH=$((GLOBAL_BATCH / NUM_GPUS < 8 ? GLOBAL_BATCH / NUM_GPUS : 8))
# Tokens the whole run consumes, about: the curriculum's ramp at half the full length, then full samples.
TRAIN_TOKENS=$((GLOBAL_BATCH * (CL_STEPS * (16 + SEQ_LENGTH) / 2 + (TRAIN_ITERS - CL_STEPS) * SEQ_LENGTH)))
DS_CONFIG=$(mktemp --suffix=.json)
trap 'rm -f "$DS_CONFIG"' EXIT
python3 - "$DS_CONFIG" "$GLOBAL_BATCH" "$MICRO_BATCH" "$CL_STEPS" <<'PY'
import json
import sys

path, global_batch, micro_batch, steps = sys.argv[1], *map(int, sys.argv[2:])
with open("ds_configs/ds_config_gpt_curriculum.json") as source:
    config = json.load(source)
config.update(train_batch_size=global_batch, train_micro_batch_size_per_gpu=micro_batch)
config["curriculum_learning"]["schedule_config"]["total_curriculum_step"] = steps
with open(path, "w") as target:
    json.dump(config, target, indent=2)
PY

launch_checked deepspeed --num_gpus "$NUM_GPUS" --master_port "$MASTER_PORT" pretrain_gpt.py \
  --num-layers 4 --hidden-size 256 --num-attention-heads 4 \
  --seq-length "$SEQ_LENGTH" --max-position-embeddings "$SEQ_LENGTH" \
  --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH" \
  --train-iters "$TRAIN_ITERS" --lr 1e-3 --min-lr 1e-4 --lr-decay-style cosine \
  --lr-warmup-tokens $((TRAIN_TOKENS / 20)) --lr-decay-tokens "$TRAIN_TOKENS" \
  --weight-decay 0.1 --clip-grad 1.0 --attention-dropout 0.0 --hidden-dropout 0.0 \
  --data-path "${GPT_DATA_PREFIX}_text_document" --split 98,2,0 \
  --tokenizer-type GPT2BPETokenizer --vocab-file "$GPT_TOKENIZER/vocab.json" --merge-file "$GPT_TOKENIZER/merges.txt" \
  --log-interval 10 --eval-interval 100 --eval-iters 5 \
  --save checkpoints/curriculum_gpt --overwrite-save --save-interval 100 --tensorboard-dir runs/curriculum_gpt \
  --deepspeed --deepspeed_config "$DS_CONFIG"
