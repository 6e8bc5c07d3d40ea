#!/usr/bin/env bash
# LLaMA-2 7B: preset llama2-7b of megatron/config/presets.py
# (32 layers, hidden 4096, 32 heads, seq 4096),
# laid out for nodes of 8 x 80 GB GPUs as T=2 P=1 ZeRO-1 micro 2 global 1024, on 4 node(s).
# Megatron-DeepSpeed's recipe layout: the variables at the top (each can be set from the environment; the
# model and layout ones default to the preset's), the ds_config written from them, the deepspeed launcher
# (HOSTFILE for several nodes), logs and checkpoints under OUTPUT_DIR. examples_deepspeed/recipe.sh lists
# the other variables. DRY_RUN=1 writes the ds_config and prints the command without launching it.
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=llama2-7b
eval "$(python3 -m megatron.config.presets "$PRESET" --shell)"
###############################################################################
## LLaMA-2: 2T tokens, 2000 steps of warmup, cosine decay to 10% (counted in 4096-token samples)
TRAIN_SAMPLES=${TRAIN_SAMPLES:-488281250}
LR_WARMUP_SAMPLES=${LR_WARMUP_SAMPLES:-2048000}
LR_DECAY_SAMPLES=${LR_DECAY_SAMPLES:-$TRAIN_SAMPLES}
WEIGHT_DECAY=${WEIGHT_DECAY:-0.1}
###############################################################################
OUTPUT_DIR=${OUTPUT_DIR:-output/$PRESET}
source examples_deepspeed/recipe.sh
