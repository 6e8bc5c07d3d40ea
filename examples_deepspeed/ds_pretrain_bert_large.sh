#!/usr/bin/env bash
# BERT-Large (336M): preset bert-large of megatron/config/presets.py
# (24 layers, hidden 1024, 16 heads, seq 512),
# laid out for nodes of 8 x 80 GB GPUs as T=1 P=1 ZeRO-1 micro 32 global 256, on 1 node(s).
# Megatron-DeepSpeed's recipe layout: the variables at the top (each can be set from the environment; the
# model and layout ones default to the preset's), the ds_config written from them, the deepspeed launcher
# (HOSTFILE for several nodes), logs and checkpoints under OUTPUT_DIR. examples_deepspeed/recipe.sh lists
# the other variables. DRY_RUN=1 writes the ds_config and prints the command without launching it.
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=bert-large
eval "$(python3 -m megatron.config.presets "$PRESET" --shell)"
###############################################################################
## BERT: 1M steps of 256 sequences, 10k steps of warmup; Adam beta2 0.999, weight decay 0.01
TRAIN_SAMPLES=${TRAIN_SAMPLES:-256000000}
LR_WARMUP_SAMPLES=${LR_WARMUP_SAMPLES:-2560000}
LR_DECAY_SAMPLES=${LR_DECAY_SAMPLES:-$TRAIN_SAMPLES}
ADAM_BETA2=${ADAM_BETA2:-0.999}
WEIGHT_DECAY=${WEIGHT_DECAY:-0.01}
###############################################################################
OUTPUT_DIR=${OUTPUT_DIR:-output/$PRESET}
source examples_deepspeed/recipe.sh
