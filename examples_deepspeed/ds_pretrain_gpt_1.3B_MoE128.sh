#!/usr/bin/env bash
# GPT-3 XL (1.3B) with 128 experts in every second layer (Megatron-DeepSpeed's MoE-128): preset gpt-1.3b-moe128 of megatron/config/presets.py
# (24 layers, hidden 2048, 16 heads x 128 experts, seq 2048),
# laid out for nodes of 8 x 80 GB GPUs as T=1 P=1 ZeRO-2 micro 8 global 512, on 8 node(s).
# Megatron-DeepSpeed's recipe layout: the variables at the top (each can be set from the environment; the
# model and layout ones default to the preset's), the ds_config written from them, the deepspeed launcher
# (HOSTFILE for several nodes), logs and checkpoints under OUTPUT_DIR. examples_deepspeed/recipe.sh lists
# the other variables. DRY_RUN=1 writes the ds_config and prints the command without launching it.
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=gpt-1.3b-moe128
eval "$(python3 -m megatron.config.presets "$PRESET" --shell)"
###############################################################################
## GPT-3: 300B tokens, 375M tokens of warmup, cosine decay over 260B tokens (counted in 2048-token samples)
TRAIN_SAMPLES=${TRAIN_SAMPLES:-146484375}
LR_WARMUP_SAMPLES=${LR_WARMUP_SAMPLES:-183105}
LR_DECAY_SAMPLES=${LR_DECAY_SAMPLES:-126953125}
###############################################################################
OUTPUT_DIR=${OUTPUT_DIR:-output/$PRESET}
source examples_deepspeed/recipe.sh
