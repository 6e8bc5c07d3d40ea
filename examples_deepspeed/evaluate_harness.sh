#!/usr/bin/env bash
# lm-evaluation-harness tasks on a checkpoint of pretrain_gpt.py (tasks/eval_harness/evaluate.py), the model
# split over TP processes (torchrun; on the GPUs if there are any, else the CPU). Installs the toolkit with
# its eval extra (lm-eval) when missing. The harness downloads its tasks' data sets from the HF Hub unless
# they are cached (or the task is a local YAML under INCLUDE_PATH).
#   CHECKPOINT  the --load folder (default checkpoints/quickstart, what quickstart_gpt.sh writes)
#   TASKS       comma-separated harness tasks (default lambada_openai,hellaswag)
#   RESULTS     the results JSON (default results/harness.json)
#   TP          tensor-parallel processes (default 1); MICRO_BATCH requests a forward (default 8)
#   NUM_FEWSHOT few-shot examples (default 0); INCLUDE_PATH a folder of local task YAMLs (default none)
#   LIMIT       documents per task (default all)
set -euo pipefail
cd "$(dirname "$0")/.."
source examples_deepspeed/launch_checked.sh
bash tools/install.sh eval

CHECKPOINT=${CHECKPOINT:-checkpoints/quickstart}
TASKS=${TASKS:-lambada_openai,hellaswag}
RESULTS=${RESULTS:-results/harness.json}
TP=${TP:-1}
MICRO_BATCH=${MICRO_BATCH:-8}
NUM_FEWSHOT=${NUM_FEWSHOT:-0}
MASTER_PORT=${MASTER_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

mkdir -p "$(dirname "$RESULTS")"
EXTRA=()
if [ -n "${INCLUDE_PATH:-}" ]; then EXTRA+=(--include_path "$INCLUDE_PATH"); fi
if [ -n "${LIMIT:-}" ]; then EXTRA+=(--limit "$LIMIT"); fi

launch_checked python3 -m torch.distributed.run --nproc_per_node "$TP" --master_port "$MASTER_PORT" \
  tasks/eval_harness/evaluate.py --load "$CHECKPOINT" --tensor-model-parallel-size "$TP" \
  --task_list "$TASKS" --results_path "$RESULTS" --num_fewshot "$NUM_FEWSHOT" \
  --micro-batch-size "$MICRO_BATCH" "${EXTRA[@]}"
