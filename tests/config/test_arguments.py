"""The command line: Megatron-DeepSpeed flag names, defaults, and clean errors instead of argparse exits."""

from __future__ import annotations

import pytest

from megatron.config.arguments import build_parser, parse_args
from megatron.config.errors import ConfigError

REQUIRED = [
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
    "--micro-batch-size", "2", "--train-iters", "10", "--lr", "1e-3", "--data-path", "corpus_text_document",
    "--deepspeed", "--deepspeed_config", "ds.json",
]  # fmt: skip

BRIEF_FLAGS = """
--num-layers --hidden-size --num-attention-heads --ffn-hidden-size --seq-length --max-position-embeddings
--init-method-std --attention-dropout --hidden-dropout --make-vocab-size-divisible-by --layernorm-epsilon
--micro-batch-size --global-batch-size --rampup-batch-size --train-iters --train-samples --exit-interval
--exit-duration-in-mins --seed --optimizer --lr --min-lr --weight-decay --clip-grad --adam-beta1 --adam-beta2
--adam-eps --sgd-momentum --lr-decay-style --lr-decay-iters --lr-decay-samples --lr-warmup-iters
--lr-warmup-fraction --lr-warmup-samples --fp16 --bf16 --loss-scale --initial-loss-scale --min-loss-scale
--loss-scale-window --hysteresis --data-path --split --tokenizer-type --vocab-file --merge-file
--tokenizer-model --data-impl --eod-mask-loss --num-workers --data-cache-path --log-interval --eval-interval
--eval-iters --tensorboard-dir --wandb-project --wandb-exp-name --wandb-save-dir --wandb-mode --save --load
--save-interval --no-load-optim --no-load-rng --finetune --deepspeed --deepspeed_config --deepspeed-config
--zero-stage --deepspeed-activation-checkpointing --local_rank --local-rank --tensor-model-parallel-size
--pipeline-model-parallel-size --no-pipeline-parallel --pipeline-partition-method --sequence-parallel
--ds-sequence-parallel-size --recompute-granularity --recompute-method --recompute-num-layers
--checkpoint-activations
""".split()


# What Megatron-DeepSpeed's recipes (examples_deepspeed/rebase, azure/run-1t.sh) pass besides the above.
RECIPE_FLAGS = """
--train-tokens --override-opt_param-scheduler --use-checkpoint-opt_param-scheduler --no-load-lr-state
--reset-iteration --tensorboard-queue-size --log-timers-to-tensorboard --log-batch-size-to-tensorboard
--log-validation-ppl-to-tensorboard --log-optimizer-states-to-tensorboard --log-memory-to-tensorboard
--timing-log-level --distributed-backend --no-async-tensor-model-parallel-allreduce --no-masked-softmax-fusion
--no-bias-gelu-fusion --no-bias-dropout-fusion --no-gradient-accumulation-fusion --use-flash-attn-v2
--use-flash-attn-triton --cpu-optimizer --train-data-path --valid-data-path --test-data-path
""".split()


@pytest.mark.parametrize("flags", [BRIEF_FLAGS, RECIPE_FLAGS])
def test_every_megatron_deepspeed_flag_exists(flags):
    known = {s for action in build_parser()._actions for s in action.option_strings}
    assert [flag for flag in flags if flag not in known] == []


def test_defaults_follow_megatron():
    args = parse_args(REQUIRED)
    assert (args.num_layers, args.hidden_size, args.num_attention_heads, args.seq_length) == (2, 64, 4, 32)
    assert args.ffn_hidden_size is None and args.max_position_embeddings is None
    assert (args.init_method_std, args.attention_dropout, args.hidden_dropout) == (0.02, 0.1, 0.1)
    assert (args.make_vocab_size_divisible_by, args.layernorm_epsilon) == (128, 1e-5)
    assert (args.seed, args.optimizer, args.min_lr, args.weight_decay) == (1234, "adam", 0.0, 0.01)
    assert (args.adam_beta1, args.adam_beta2, args.adam_eps, args.sgd_momentum) == (0.9, 0.999, 1e-8, 0.9)
    assert (args.lr_decay_style, args.lr_warmup_iters, args.lr_warmup_samples) == ("linear", 0, 0)
    assert args.lr_warmup_fraction is None
    assert (args.split, args.tokenizer_type, args.data_impl, args.num_workers) == (
        "969,30,1",
        "GPT2BPETokenizer",
        "mmap",
        2,
    )
    assert (args.log_interval, args.eval_interval, args.eval_iters) == (100, 1000, 100)
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size) == (1, 1)
    assert (args.ds_sequence_parallel_size, args.pipeline_partition_method) == (1, "parameters")
    assert not (args.no_pipeline_parallel or args.sequence_parallel or args.checkpoint_activations)
    assert not args.deepspeed_activation_checkpointing and args.recompute_granularity is None
    # Left None so build_config can refuse them without full recomputation; it applies uniform and 1.
    assert args.recompute_method is None and args.recompute_num_layers is None
    assert not (args.fp16 or args.bf16 or args.eod_mask_loss or args.finetune or args.no_load_optim)
    assert args.deepspeed and args.deepspeed_config == "ds.json"
    # Settings the ds_config may also give stay None, so build_config can tell "not given" apart.
    assert args.global_batch_size is None and args.zero_stage is None and args.clip_grad is None
    assert args.loss_scale is None and args.initial_loss_scale is None and args.wandb_mode is None


@pytest.mark.parametrize("spelling", ["--deepspeed_config", "--deepspeed-config"])
def test_deepspeed_config_accepts_both_spellings(spelling):
    args = parse_args(REQUIRED[:-2] + [spelling, "other.json"])
    assert args.deepspeed_config == "other.json"


@pytest.mark.parametrize("local_rank", [["--local_rank=3"], ["--local-rank", "3"], ["--local_rank", "0"]])
def test_launcher_local_rank_is_accepted(local_rank):
    assert parse_args(REQUIRED + local_rank).local_rank in (0, 3)


def test_multi_value_flags():
    args = parse_args(
        REQUIRED + ["--rampup-batch-size", "16", "16", "1000", "--data-path", "0.3", "a", "0.7", "b"]
    )
    assert args.rampup_batch_size == [16, 16, 1000]
    assert args.data_path == ["0.3", "a", "0.7", "b"]


def test_rampup_needs_three_values():
    with pytest.raises(ConfigError, match="--rampup-batch-size"):
        parse_args(REQUIRED + ["--rampup-batch-size", "16", "16"])


def test_unknown_flags_are_listed_with_suggestions():
    argv = REQUIRED + [
        "--apply-residual-connection-post-layernorm",
        "--num-layers-per-virtual-pipeline-stage",
        "8",
        "--hidden-sise",
        "64",
        "--fp32-residual-connection",
    ]
    with pytest.raises(ConfigError) as error:
        parse_args(argv)
    message = str(error.value)
    for flag in (
        "--apply-residual-connection-post-layernorm",
        "--num-layers-per-virtual-pipeline-stage",
        "--fp32-residual-connection",
    ):
        assert flag in message
    assert "--hidden-sise (did you mean --hidden-size?)" in message
    assert "'8'" not in message  # a value of an unknown flag is not reported on its own


def test_abbreviated_flag_is_not_silently_expanded():
    with pytest.raises(ConfigError, match=r"--hidden \(did you mean --hidden-size\?\)"):
        parse_args(REQUIRED + ["--hidden", "64"])


def test_bad_value_is_a_config_error_naming_the_flag():
    with pytest.raises(ConfigError, match="--num-layers: invalid int value: 'two'"):
        parse_args(["--num-layers", "two"])
    with pytest.raises(ConfigError, match="--optimizer: invalid choice: 'adamw'"):
        parse_args(REQUIRED + ["--optimizer", "adamw"])
    with pytest.raises(ConfigError, match="--wandb-mode"):
        parse_args(REQUIRED + ["--wandb-mode", "sometimes"])


def test_help_still_works(capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--deepspeed_config" in out and "model:" in out


def test_reads_sys_argv_by_default(monkeypatch):
    monkeypatch.setattr("sys.argv", ["pretrain_gpt.py", *REQUIRED])
    assert parse_args().num_layers == 2


def test_parallel_and_recompute_choices():
    args = parse_args(
        REQUIRED + ["--pipeline-partition-method", "type:transformer", "--recompute-method", "block"]
    )
    assert (args.pipeline_partition_method, args.recompute_method) == ("type:transformer", "block")
    with pytest.raises(ConfigError, match="--pipeline-partition-method: invalid choice: 'layers'"):
        parse_args(REQUIRED + ["--pipeline-partition-method", "layers"])
    with pytest.raises(ConfigError, match="--recompute-granularity: invalid choice: 'partial'"):
        parse_args(REQUIRED + ["--recompute-granularity", "partial"])
