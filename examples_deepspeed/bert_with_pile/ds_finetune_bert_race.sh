#!/usr/bin/env bash
# BERT finetuning on RACE (multiple choice), in the layout and with the flags of Megatron-DeepSpeed's
# examples_deepspeed/bert_with_pile/ds_finetune_bert_race.sh. Every variable can be set from the environment
# (the tests run it on small generated folders with a tiny model). Accuracy on the dev and test sets.
set -euo pipefail
seed=${SEED:-1234}
## RACE have two sub-tasks that need to be finetuned separately
difficulty=${DIFFICULTY:-middle}
pretrained_checkpoint=${PRETRAINED_CHECKPOINT:-checkpoints/bert_336m}

###############################################################################
### Main configs
seq_len=${SEQ_LEN:-512}

task="RACE"
## RACE from its authors: http://www.cs.cmu.edu/~glai1/data/race/RACE.tar.gz
data_dir=${DATA_DIR:-RACE}
train_data=${TRAIN_DATA:-"${data_dir}/train/${difficulty}"}
## As in Megatron-DeepSpeed's recipe: the median dev and test scores over 5 seeds from one checkpoint.
valid_data=${VALID_DATA:-"${data_dir}/dev/${difficulty} ${data_dir}/test/${difficulty}"}

## Adjust based on number of GPUs.
batch_size=${BATCH_SIZE:-4}

## BERT 336M (same config as original BERT-Large model)
## BERT 110M: num_layers=12 hidden_size=768 num_attn_heads=12 global_batch_size=32 lr=2e-5
## BERT 1.3B: num_layers=24 hidden_size=2048 num_attn_heads=32 global_batch_size=16 lr=1e-5
## BERT 3.9B: num_layers=48 hidden_size=2560 num_attn_heads=40 global_batch_size=32 lr=2e-5
num_layers=${NUM_LAYERS:-24}
hidden_size=${HIDDEN_SIZE:-1024}
num_attn_heads=${NUM_ATTN_HEADS:-16}
global_batch_size=${GLOBAL_BATCH_SIZE:-32}
lr=${LR:-2e-5}
epochs=${EPOCHS:-3}
max_position_embeddings=${MAX_POSITION_EMBEDDINGS:-$seq_len}

source "$(dirname "$0")/ds_finetune_bert_common.sh"
