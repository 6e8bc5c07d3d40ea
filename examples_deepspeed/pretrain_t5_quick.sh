#!/usr/bin/env bash
# A small T5 (span corruption with 100 sentinels) on the bundled corpus: installs the toolkit, splits the corpus
# into sentences with the bundled WordPiece vocabulary and pretrains through DeepSpeed (ZeRO-1, fp32), on the
# GPUs if there are any and on the CPU otherwise. A few minutes on 2 cores.
# NUM_GPUS sets the number of processes (default 1); TRAIN_ITERS the length (default 200).
set -euo pipefail
cd "$(dirname "$0")/.."
source examples_deepspeed/common.sh

preprocess_sentence_corpus

NUM_GPUS=${NUM_GPUS:-1}
GLOBAL_BATCH=16
MICRO_BATCH=$((GLOBAL_BATCH / NUM_GPUS < 8 ? GLOBAL_BATCH / NUM_GPUS : 8))
DS_CONFIG=$(mktemp --suffix=.json)
trap 'rm -f "$DS_CONFIG"' EXIT
sed -e "s/\"train_batch_size\": 16/\"train_batch_size\": $GLOBAL_BATCH/" \
    -e "s/\"train_micro_batch_size_per_gpu\": 8/\"train_micro_batch_size_per_gpu\": $MICRO_BATCH/" \
    ds_configs/ds_config_gpt.json > "$DS_CONFIG"

launch_checked deepspeed --num_gpus "$NUM_GPUS" --master_port "$MASTER_PORT" pretrain_t5.py \
  --num-layers 4 --hidden-size 256 --num-attention-heads 4 --kv-channels 64 --ffn-hidden-size 1024 \
  --encoder-seq-length 128 --decoder-seq-length 32 --max-position-embeddings 128 --vocab-extra-ids 100 \
  --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH" \
  --train-iters "${TRAIN_ITERS:-200}" --lr 1e-3 --min-lr 1e-4 --lr-decay-style cosine --lr-warmup-iters 20 \
  --weight-decay 0.01 --clip-grad 1.0 --attention-dropout 0.1 --hidden-dropout 0.1 \
  --mask-prob 0.15 --short-seq-prob 0.1 \
  --data-path "${SENTENCE_DATA_PREFIX}_text_sentence" --split 98,2,0 \
  --tokenizer-type BertWordPieceLowerCase --vocab-file "$BERT_VOCAB" \
  --log-interval 10 --eval-interval 100 --eval-iters 5 \
  --save checkpoints/t5_quick --overwrite-save --save-interval 100 --tensorboard-dir runs/t5_quick \
  --deepspeed --deepspeed_config "$DS_CONFIG" --zero-stage 1
