# Sourced by ds_finetune_bert_{mnli,qqp,race}.sh after they set the task, data and model variables: writes
# the ds_config and launches tasks/main.py with Megatron-DeepSpeed's finetuning flags (its
# examples_deepspeed/bert_with_pile/ds_finetune_bert_*.sh), through launch_checked.
dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$dir"
source examples_deepspeed/common.sh
###############################################################################
### Parallelism configs
## Model parallelism, 1 is no MP. Pipeline parallelism is not used for finetuning: a pipelined
## pretraining checkpoint loads into this layout.
mp_size=${MP_SIZE:-1}
pp_size=1
no_pp="true"
## ZeRO stage: Megatron-DeepSpeed's recipes use 0 with fp16; DeepSpeed's stage-0 fp16 path does not
## scale this toolkit's optimizer's loss (README, "What runs"), so the fp16 default here is stage 1.
zero_stage=${ZERO_STAGE:-1}
num_gpus=${NUM_GPUS:-1}
## fp16, bf16, or fp32 (neither flag; what a CPU runs)
precision=${PRECISION:-fp16}
###############################################################################
### Misc configs
log_interval=${LOG_INTERVAL:-10}
eval_iters=${EVAL_ITERS:-50}
eval_interval=${EVAL_INTERVAL:-100}
save_interval=${SAVE_INTERVAL:-100000}
## Activation checkpointing saves GPU memory, but reduces training speed
activation_checkpoint=${ACTIVATION_CHECKPOINT:-false}
num_workers=${NUM_WORKERS:-2}
###############################################################################
vocab_file=${VOCAB_FILE:-$BERT_VOCAB}
jobname="${task}${difficulty:+-${difficulty}}-bsz${global_batch_size}-lr${lr}-epochs${epochs}-seed${seed}"
checkpoint_path=${CHECKPOINT_PATH:-"${pretrained_checkpoint}-finetune/${jobname}"}
mkdir -p "$checkpoint_path"

config_json="${checkpoint_path}/ds_config_bert_bsz${global_batch_size}_mbsz${batch_size}_log${log_interval}_zero${zero_stage}.json"
fp16_enabled=false bf16_enabled=false
[ "$precision" = fp16 ] && fp16_enabled=true
[ "$precision" = bf16 ] && bf16_enabled=true
prescale_grad=false
[ "$zero_stage" -eq 0 ] && prescale_grad=true
cat > "$config_json" <<JSON
{
  "train_batch_size": ${global_batch_size},
  "train_micro_batch_size_per_gpu": ${batch_size},
  "steps_per_print": ${log_interval},
  "zero_optimization": {"stage": ${zero_stage}},
  "gradient_clipping": 1.0,
  "prescale_gradients": ${prescale_grad},
  "fp16": {"enabled": ${fp16_enabled}, "loss_scale": 0, "loss_scale_window": 500, "hysteresis": 2,
           "min_loss_scale": 1, "initial_scale_power": 11},
  "bf16": {"enabled": ${bf16_enabled}},
  "wall_clock_breakdown": false
}
JSON

options=" \
    --finetune \
    --deepspeed \
    --deepspeed_config ${config_json} \
    --zero-stage ${zero_stage} \
    --task ${task} \
    --seed ${seed} \
    --train-data ${train_data} \
    --valid-data ${valid_data} \
    --tokenizer-type BertWordPieceLowerCase \
    --vocab-file ${vocab_file} \
    --epochs ${epochs} \
    --pretrained-checkpoint ${pretrained_checkpoint} \
    --tensor-model-parallel-size ${mp_size} \
    --pipeline-model-parallel-size ${pp_size} \
    --num-layers ${num_layers} \
    --hidden-size ${hidden_size} \
    --num-attention-heads ${num_attn_heads} \
    --global-batch-size ${global_batch_size} \
    --micro-batch-size ${batch_size} \
    --lr ${lr} \
    --lr-decay-style linear \
    --lr-warmup-fraction 0.06 \
    --seq-length ${seq_len} \
    --max-position-embeddings ${max_position_embeddings:-$seq_len} \
    --save-interval ${save_interval} \
    --save ${checkpoint_path} \
    --log-interval ${log_interval} \
    --eval-interval ${eval_interval} \
    --eval-iters ${eval_iters} \
    --weight-decay 1.0e-1 \
    --clip-grad 1.0 \
    --num-workers ${num_workers}"

if [ "$precision" != fp32 ]; then
options="${options} \
    --${precision}"
fi

if [ "${activation_checkpoint}" = "true" ]; then
options="${options} \
    --checkpoint-activations \
    --deepspeed-activation-checkpointing"
fi

if [[ "${no_pp}" = "true" ]]; then
options="${options} \
    --no-pipeline-parallel"
fi

# The dev (and test) set accuracies: grep -e "metrics for" on the output.
# shellcheck disable=SC2086  # the option strings split into words on purpose
launch_checked deepspeed --num_gpus "$num_gpus" --master_port "$MASTER_PORT" ${dir}/tasks/main.py ${options}
