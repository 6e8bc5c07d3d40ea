#!/usr/bin/env bash
# GPT-3 Small (125M) in the layout and with the flags of Megatron-DeepSpeed's examples_deepspeed/rebase/
# ds_pretrain_gpt_125M.sh: token-counted duration and LR schedule (--train-tokens, --lr-warmup-tokens,
# --lr-decay-tokens), tensor x pipeline parallelism, ZeRO 1, fp16 from a ds_config template, activation
# recomputation and its tensorboard logging. The other GPT-3 sizes are in the comments, as there. Its
# defaults run a few iterations of a small model on the bundled corpus (set the variables for a real run);
# PRECISION=bf16 uses the bf16 template instead, for machines without fp16 kernels. The shape, batch and LR
# are the gpt-125m preset's (megatron/config/presets.py, which has the other sizes; each size has its
# recipe, ds_pretrain_gpt_350M.sh ... ds_pretrain_gpt_175B.sh). DRY_RUN=1 writes the ds_config and prints
# the command without launching it; HOSTFILE (DeepSpeed's) launches on its nodes.
set -euo pipefail
dir=$(cd "$(dirname "$0")/.." && pwd)
cd "$dir"
DRY_RUN=${DRY_RUN:-0}
[ "$DRY_RUN" = 1 ] && SKIP_INSTALL=1
source examples_deepspeed/common.sh
[ "$DRY_RUN" = 1 ] || preprocess_gpt_corpus
eval "$(python3 -m megatron.config.presets gpt-125m --shell)"
###############################################################################
### Main configs
seq_len=${SEQ_LEN}
## GPT-3 Small 125M
model_size=0.125
num_layers=${NUM_LAYERS}
hidden_size=${HIDDEN_SIZE}
num_attn_heads=${NUM_ATTN_HEADS}
global_batch_size=${GLOBAL_BATCH_SIZE:-$GLOBAL_BATCH}
lr=${LR}
min_lr=1.0e-6
init_std=${INIT_STD}
###############################################################################
### Training duration configs
## The main termination condition, original GPT-3 paper trains for 300B tokens.
train_tokens=${TRAIN_TOKENS:-$((300 * 1000000000))}
## train_samples is another termination condition, large enough not to stop before train_tokens.
train_samples=$((train_tokens * 2 / seq_len))
exit_duration=30000000
###############################################################################
### lr configs (warmup and decay counted in tokens)
lr_warmup_tokens=${LR_WARMUP_TOKENS:-$((3000 * 1000000))}
lr_decay_tokens=${train_tokens}
lr_decay_style="cosine"
###############################################################################
### Parallelism configs
mp_size=${MP_SIZE:-2}
pp_size=${PP_SIZE:-2}
no_pp="false"
zero_stage=1
num_gpus=${NUM_GPUS:-$((mp_size * pp_size))}
## Micro batch size per GPU
batch_size=${BATCH_SIZE:-2}
###############################################################################
### Misc configs
log_interval=${LOG_INTERVAL:-10}
eval_iters=${EVAL_ITERS:-10}
eval_interval=${EVAL_INTERVAL:-100}
save_interval=${SAVE_INTERVAL:-100}
activation_checkpoint="true"
log_optimizer_state="true"
###############################################################################
### Output and data configs
seed=1234
num_workers=0
data_path="${GPT_DATA_PREFIX}_text_document"
vocab_path="$GPT_TOKENIZER/vocab.json"
merge_path="$GPT_TOKENIZER/merges.txt"
precision=${PRECISION:-fp16}
prescale_grad="false"  # ZeRO stage > 0
jobname="gpt_${model_size}B_gbs${global_batch_size}_mbs${batch_size}_g${num_gpus}_z${zero_stage}_mp${mp_size}_pp${pp_size}"
output_home=${OUTPUT_HOME:-output}
checkpoint_path="${output_home}/checkpoint/${jobname}"
tensorboard_path="${output_home}/tensorboard/${jobname}"
mkdir -p "$checkpoint_path" "$tensorboard_path"
###############################################################################
data_options=" \
    --vocab-file ${vocab_path} \
    --merge-file ${merge_path} \
    --data-path ${data_path} \
    --data-impl mmap"

megatron_options=" \
    --override-opt_param-scheduler \
    --adam-beta1 0.9 \
    --adam-beta2 0.95 \
    --tensor-model-parallel-size ${mp_size} \
    --init-method-std ${init_std} \
    --lr-decay-tokens ${lr_decay_tokens} \
    --lr-warmup-tokens ${lr_warmup_tokens} \
    --micro-batch-size ${batch_size} \
    --exit-duration-in-mins ${exit_duration} \
    --global-batch-size ${global_batch_size} \
    --num-layers ${num_layers} \
    --hidden-size ${hidden_size} \
    --num-attention-heads ${num_attn_heads} \
    --seq-length ${seq_len} \
    --max-position-embeddings ${seq_len} \
    --train-tokens ${train_tokens} \
    --train-samples ${train_samples} \
    --lr ${lr} \
    --min-lr ${min_lr} \
    --lr-decay-style ${lr_decay_style} \
    --split 949,50,1 \
    --log-interval ${log_interval} \
    --eval-interval ${eval_interval} \
    --eval-iters ${eval_iters} \
    --save-interval ${save_interval} \
    --weight-decay 0.1 \
    --clip-grad 1.0 \
    --hysteresis 2 \
    --num-workers ${num_workers} \
    --${precision} \
    --seed ${seed} \
    --load ${checkpoint_path} \
    --save ${checkpoint_path} \
    --no-async-tensor-model-parallel-allreduce \
    --tensorboard-queue-size 1 \
    --log-timers-to-tensorboard \
    --log-batch-size-to-tensorboard \
    --log-validation-ppl-to-tensorboard \
    --tensorboard-dir ${tensorboard_path}"

if [ "${activation_checkpoint}" = "true" ]; then
megatron_options="${megatron_options} \
    --recompute-granularity full \
    --recompute-method uniform \
    --recompute-num-layers 1"
fi

if [ "${log_optimizer_state}" = "true" ]; then
megatron_options="${megatron_options} \
    --log-optimizer-states-to-tensorboard"
fi

config_json="${output_home}/ds_config_gbs${global_batch_size}_mbs${batch_size}_log${log_interval}_zero${zero_stage}.json"
template_json="ds_configs/ds_config_gpt_TEMPLATE.json"
[ "$precision" = bf16 ] && template_json="ds_configs/ds_config_gpt_bf16_TEMPLATE.json"
sed "s/GBSIZE/${global_batch_size}/" ${template_json} \
    | sed "s/MBSIZE/${batch_size}/" \
    | sed "s/LOG_INTERVAL/${log_interval}/" \
    | sed "s/ZERO_STAGE/${zero_stage}/" \
    | sed "s/PRESCALE_GRAD/${prescale_grad}/" \
      > ${config_json}

deepspeed_options=" \
    --deepspeed \
    --deepspeed_config ${config_json} \
    --zero-stage ${zero_stage} \
    --pipeline-model-parallel-size ${pp_size}"

if [[ "${no_pp}" = "true" ]]; then
deepspeed_options="${deepspeed_options} \
    --no-pipeline-parallel"
fi

launcher="deepspeed --num_gpus $num_gpus --master_port $MASTER_PORT"
[ -n "${HOSTFILE:-}" ] && launcher="deepspeed --hostfile $HOSTFILE --num_gpus $num_gpus --master_port $MASTER_PORT"
if [ "$DRY_RUN" = 1 ]; then
  echo "ds_config: $config_json"
  # shellcheck disable=SC2086  # the option strings split into words on purpose
  echo $launcher ${dir}/pretrain_gpt.py ${megatron_options} ${data_options} ${deepspeed_options}
  exit 0
fi
# shellcheck disable=SC2086  # the option strings split into words on purpose
launch_checked $launcher ${dir}/pretrain_gpt.py ${megatron_options} ${data_options} ${deepspeed_options}
