#!/usr/bin/env bash
# BERT finetuning on GLUE QQP, in the layout and with the flags of Megatron-DeepSpeed's
# examples_deepspeed/bert_with_pile/ds_finetune_bert_qqp.sh. Every variable can be set from the environment
# (the tests run it on small generated files with a tiny model). Accuracy on dev.
set -euo pipefail
seed=${SEED:-1234}
pretrained_checkpoint=${PRETRAINED_CHECKPOINT:-checkpoints/bert_336m}

###############################################################################
### Main configs
seq_len=${SEQ_LEN:-128}

task="QQP"
## GLUE data: python download_glue_data.py --tasks QQP (from the GLUE benchmark), which writes
## glue_data/QQP/{train,dev}.tsv
data_dir=${DATA_DIR:-glue_data/QQP}
train_data=${TRAIN_DATA:-"${data_dir}/train.tsv"}
valid_data=${VALID_DATA:-"${data_dir}/dev.tsv"}

## Adjust based on number of GPUs.
batch_size=${BATCH_SIZE:-4}

## BERT 336M (same config as original BERT-Large model); batch, LR and epochs as in the RACE recipe
## BERT 110M: num_layers=12 hidden_size=768 num_attn_heads=12
## BERT 1.3B: num_layers=24 hidden_size=2048 num_attn_heads=32
## BERT 3.9B: num_layers=48 hidden_size=2560 num_attn_heads=40
num_layers=${NUM_LAYERS:-24}
hidden_size=${HIDDEN_SIZE:-1024}
num_attn_heads=${NUM_ATTN_HEADS:-16}
global_batch_size=${GLOBAL_BATCH_SIZE:-32}
lr=${LR:-2e-5}
epochs=${EPOCHS:-3}
max_position_embeddings=${MAX_POSITION_EMBEDDINGS:-$seq_len}

source "$(dirname "$0")/ds_finetune_bert_common.sh"
