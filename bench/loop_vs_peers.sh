#!/usr/bin/env bash
# The table "real loop, synthetic step and peers" of bench/RESULTS.md, on one GPU: for each model named
# (small, medium, large, tinyllama), pretrain_gpt.py's loop with Megatron's default dropout and without
# (each run also times the synthetic step on its own engine), then the raw PyTorch peer and the
# HF + DeepSpeed peer, which run without dropout. PEER_DIR: the peers' folder (default .carry/peers). Every line but the RESULT and
# PEER lines goes to LOG_DIR (default a temporary folder); LOOP_FLAGS are added to the loop runs' flags.
#   bash bench/loop_vs_peers.sh small medium
set -uo pipefail
cd "$(dirname "$0")/.."
PEER_DIR=${PEER_DIR:-.carry/peers}
LOG_DIR=${LOG_DIR:-$(mktemp -d)}
read -r -a LOOP_ARGS <<< "--torch-compile --torch-compile-mode reduce-overhead ${LOOP_FLAGS:-}"
run() {
  local name=$1
  shift
  echo "== $name: $*"
  "$@" > "$LOG_DIR/$name.log" 2>&1
  echo "exit $?; $(grep -h -E '^(RESULT|PEER)|torch.compile: the first' "$LOG_DIR/$name.log" | sed 's/^\[[^]]*\] //')"
}
for model in "$@"; do
  run "$model-loop-dropout" deepspeed --num_gpus 1 bench/train_throughput.py --model "$model" --loop "${LOOP_ARGS[@]}"
  run "$model-loop-no-dropout" deepspeed --num_gpus 1 bench/train_throughput.py --model "$model" --loop \
    "${LOOP_ARGS[@]}" --attention-dropout 0 --hidden-dropout 0
  if [ "$model" = tinyllama ]; then
    run "$model-raw-peer" python3 "$PEER_DIR/raw_torch_llama.py"
  else
    run "$model-raw-peer" python3 bench/raw_peer_probe.py --peer-dir "$PEER_DIR" --model "$model"
  fi
  run "$model-hf-peer" deepspeed --num_gpus 1 "$PEER_DIR/hf_deepspeed_gpt.py" "$model"
done
