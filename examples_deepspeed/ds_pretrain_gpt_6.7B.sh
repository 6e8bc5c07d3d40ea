#!/usr/bin/env bash
# GPT-3 6.7B: preset gpt-6.7b of megatron/config/presets.py
# (32 layers, hidden 4096, 32 heads, seq 2048),
# laid out for nodes of 8 x 80 GB GPUs as T=2 P=1 ZeRO-1 micro 4 global 1024, on 4 node(s).
# Megatron-DeepSpeed's recipe layout: the variables at the top (each can be set from the environment; the
# model and layout ones default to the preset's), the ds_config written from them, the deepspeed launcher
# (HOSTFILE for several nodes), logs and checkpoints under OUTPUT_DIR. examples_deepspeed/recipe.sh lists
# the other variables. DRY_RUN=1 writes the ds_config and prints the command without launching it.
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=gpt-6.7b
eval "$(python3 -m megatron.config.presets "$PRESET" --shell)"
###############################################################################
## GPT-3: 300B tokens, 375M tokens of warmup, cosine decay over 260B tokens (counted in 2048-token samples)
TRAIN_SAMPLES=${TRAIN_SAMPLES:-146484375}
LR_WARMUP_SAMPLES=${LR_WARMUP_SAMPLES:-183105}
LR_DECAY_SAMPLES=${LR_DECAY_SAMPLES:-126953125}
###############################################################################
OUTPUT_DIR=${OUTPUT_DIR:-output/$PRESET}
source examples_deepspeed/recipe.sh
