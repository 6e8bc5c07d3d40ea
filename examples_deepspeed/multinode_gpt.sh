#!/usr/bin/env bash
# GPT pretraining over several nodes through the deepspeed launcher and a hostfile (DeepSpeed's
# "host slots=N" lines). Run from any directory, with the toolkit installed on every node.
#
#   HOSTS="node1 node2" GPUS_PER_NODE=8 bash examples_deepspeed/multinode_gpt.sh
#       writes OUTPUT_DIR/hostfile and starts every node from here over passwordless ssh (pdsh)
#   HOSTFILE=/path/hostfile NUM_NODES=2 INCLUDE="node1@node2:0,1" bash examples_deepspeed/multinode_gpt.sh
#       takes a hostfile; NUM_NODES and INCLUDE are deepspeed's --num_nodes and --include
#   NODE_RANK=0 ... (on node1), NODE_RANK=1 ... (on node2)
#       no ssh: each node runs its own launcher (deepspeed --no_ssh --node_rank R), same hostfile,
#       MASTER_ADDR the first host
#
# The model, batch, data and checkpoint variables are those of examples_deepspeed/gpt_job_args.sh. Output:
# OUTPUT_DIR (default output/multinode_gpt) holds the hostfile, the checkpoints (CHECKPOINT_PATH,
# --save = --load, so the same command resumes), tensorboard/ and logs/node-R.log (this launcher's output).
set -euo pipefail
cd "$(dirname "$0")/.."
source examples_deepspeed/launch_checked.sh

OUTPUT_DIR=${OUTPUT_DIR:-output/multinode_gpt}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
HOSTS=${HOSTS:-}
HOSTFILE=${HOSTFILE:-}
NODE_RANK=${NODE_RANK:-}
INCLUDE=${INCLUDE:-}
CHECKPOINT_PATH=${CHECKPOINT_PATH:-$OUTPUT_DIR/checkpoints}
mkdir -p "$OUTPUT_DIR/logs"

if [ -z "$HOSTFILE" ]; then
  if [ -z "$HOSTS" ]; then
    echo "error: set HOSTFILE (a deepspeed hostfile) or HOSTS (the nodes' names, e.g. HOSTS=\"node1 node2\")" >&2
    exit 2
  fi
  HOSTFILE=$OUTPUT_DIR/hostfile
  for host in $HOSTS; do echo "$host slots=$GPUS_PER_NODE"; done > "$HOSTFILE.$$"
  mv -f "$HOSTFILE.$$" "$HOSTFILE"
fi
NUM_NODES=${NUM_NODES:-$(grep -cv '^\s*\(#\|$\)' "$HOSTFILE")}
MASTER_ADDR=${MASTER_ADDR:-$(grep -v '^\s*\(#\|$\)' "$HOSTFILE" | head -n 1 | awk '{print $1}')}
MASTER_PORT=${MASTER_PORT:-29500}
source examples_deepspeed/gpt_job_args.sh
GPT_ARGS+=(--tensorboard-dir "$OUTPUT_DIR/tensorboard")

LAUNCHER=(deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
if [ -n "$INCLUDE" ]; then  # deepspeed refuses --num_nodes/--num_gpus beside --include
  LAUNCHER+=(--include "$INCLUDE")
else
  LAUNCHER+=(--num_nodes "$NUM_NODES" --num_gpus "$GPUS_PER_NODE")
fi
CHECKED=()
if [ -n "$NODE_RANK" ]; then
  LAUNCHER+=(--no_ssh --node_rank "$NODE_RANK")
  # Rank 0 runs on node 0, which alone can read the exit status it records (launch_checked.sh).
  if [ "$NODE_RANK" = 0 ]; then
    CHECKED=(launch_checked)
  fi
fi

"${CHECKED[@]}" "${LAUNCHER[@]}" pretrain_gpt.py "${GPT_ARGS[@]}" "$@" 2>&1 | tee "$OUTPUT_DIR/logs/node-${NODE_RANK:-0}.log"
