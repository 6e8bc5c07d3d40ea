"""build_config: the cross-flag rules, the derived values, and the reconciliation with the ds_config."""

from __future__ import annotations

import json
import re

import pytest

from megatron.config.build import pad_vocab_size, world_size_from_env
from megatron.config.data import parse_data_path
from megatron.config.ds_config import QUIET_STEPS_PER_PRINT
from megatron.config.errors import ConfigError
from megatron.config.schema import RecomputeConfig
from tests.config.recipe import RECIPE_DS, build
from tests.launch import REPO_ROOT


def test_recipe_happy_path(tmp_path):
    original = json.dumps(RECIPE_DS)
    config = build(tmp_path)
    assert config.model.padded_vocab_size == 50304
    assert config.model.ffn_hidden_size == 4096 and config.model.head_dim == 64
    assert config.parallel.data_parallel_size == 16
    assert (config.batch.micro_batch_size, config.batch.global_batch_size) == (4, 256)
    assert config.batch.gradient_accumulation_steps == 4
    assert config.duration.train_iters == 500000 and config.duration.train_samples is None
    schedule = config.lr_schedule
    assert (schedule.decay_style, schedule.decay_iters, schedule.warmup_iters) == ("cosine", 320000, 3200)
    assert schedule.decay_samples is None and schedule.min_lr == 3e-5
    assert config.optimizer.lr == 3e-4 and config.optimizer.clip_grad == 1.0
    precision = config.precision
    assert precision.dtype_name == "fp16" and precision.loss_scale is None
    assert (precision.initial_loss_scale, precision.loss_scale_window, precision.hysteresis) == (
        4096.0,
        500,
        2,
    )
    assert config.data.data_path == ((1.0, "/data/pile_text_document"),)
    assert config.checkpoint.save_interval == 1000
    assert config.recompute == RecomputeConfig(
        granularity="full", method="uniform", num_layers=1, deepspeed=True
    )
    ds = config.deepspeed.ds_config
    assert ds["gradient_accumulation_steps"] == 4 and ds["train_batch_size"] == 256
    assert ds["zero_optimization"] == {"stage": 1} and config.deepspeed.zero_stage == 1
    assert ds["steps_per_print"] == 10 and ds["fp16"]["initial_scale_power"] == 12
    assert json.dumps(RECIPE_DS) == original  # the user's config is never modified
    assert json.loads((tmp_path / "ds_config.json").read_text()) == RECIPE_DS


def test_minimal_ds_config_is_filled_from_the_flags(tmp_path):
    config = build(
        tmp_path, {"--zero-stage": None, "--fp16": None, "--bf16": True, "--clip-grad": "0.5"}, ds={}
    )
    assert config.deepspeed.ds_config == {
        "train_micro_batch_size_per_gpu": 4,
        "train_batch_size": 256,
        "gradient_accumulation_steps": 4,
        "zero_optimization": {"stage": 0},
        "gradient_clipping": 0.5,
        "steps_per_print": QUIET_STEPS_PER_PRINT,
        "bf16": {"enabled": True},
    }
    assert config.deepspeed.zero_stage == 0 and config.precision.dtype_name == "bf16"


def test_fp16_loss_scale_keys_are_filled_from_the_flags(tmp_path):
    changes = {"--loss-scale-window": "200", "--initial-loss-scale": "65536", "--min-loss-scale": "2"}
    config = build(tmp_path, changes, ds={"fp16": {"enabled": True}})
    assert config.deepspeed.ds_config["fp16"] == {
        "enabled": True,
        "loss_scale": 0,
        "initial_scale_power": 16,
        "loss_scale_window": 200,
        "hysteresis": 2,
        "min_loss_scale": 2,
    }
    assert config.precision.initial_loss_scale == 65536.0 and config.precision.min_loss_scale == 2.0


def test_static_loss_scale(tmp_path):
    config = build(tmp_path, {"--loss-scale": "1024"}, ds={})
    assert (
        config.precision.loss_scale == 1024.0 and config.deepspeed.ds_config["fp16"]["loss_scale"] == 1024.0
    )


def test_batch_sizes_and_precision_can_come_from_the_ds_config(tmp_path):
    changes = {"--micro-batch-size": None, "--global-batch-size": None, "--fp16": None, "--clip-grad": None}
    ds = {"train_batch_size": 512, "train_micro_batch_size_per_gpu": 8, "bf16": {"enabled": True}}
    config = build(tmp_path, changes, ds=ds)
    assert (config.batch.micro_batch_size, config.batch.global_batch_size) == (8, 512)
    assert config.batch.gradient_accumulation_steps == 4
    assert config.precision.dtype_name == "bf16" and config.optimizer.clip_grad == 1.0


def test_global_batch_defaults_to_micro_times_data_parallel(tmp_path):
    config = build(tmp_path, {"--global-batch-size": None}, ds={}, world_size=8)
    assert config.batch.global_batch_size == 32 and config.batch.gradient_accumulation_steps == 1


def test_global_batch_follows_ds_gradient_accumulation(tmp_path):
    config = build(
        tmp_path, {"--global-batch-size": None}, ds={"gradient_accumulation_steps": 2}, world_size=8
    )
    assert config.batch.global_batch_size == 64


def test_sample_based_schedule_and_rampup(tmp_path):
    changes = {
        "--train-iters": None, "--lr-decay-iters": None, "--train-samples": "1000000",
        "--lr-warmup-fraction": "0.02", "--rampup-batch-size": ["64", "64", "200000"],
    }  # fmt: skip
    config = build(tmp_path, changes)
    schedule = config.lr_schedule
    assert (schedule.decay_samples, schedule.warmup_samples) == (1_000_000, 20_000)
    assert schedule.decay_iters is None and schedule.warmup_iters == 0
    assert config.batch.rampup_batch_size == (64, 64, 200000)


def test_weighted_data_path_and_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = build(tmp_path, {"--data-path": ["3", "a", "1", "b"], "--max-position-embeddings": None})
    assert config.data.data_path == ((0.75, "a"), (0.25, "b"))
    assert config.model.max_position_embeddings == 2048 and config.logging.wandb_mode == "offline"
    assert build(tmp_path, {"--wandb-mode": "disabled"}).logging.wandb_mode == "disabled"


def test_wandb_mode_defaults_to_online(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert build(tmp_path).logging.wandb_mode == "online"


def test_pad_vocab_size():
    assert pad_vocab_size(50257, 128, 1) == 50304
    assert pad_vocab_size(50257, 128, 2) == 50432
    assert pad_vocab_size(50304, 128, 1) == 50304
    assert pad_vocab_size(1, 1, 1) == 1


def test_world_size_from_env(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world_size_from_env() == 1
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert world_size_from_env() == 8
    monkeypatch.setenv("WORLD_SIZE", "eight")
    with pytest.raises(ConfigError, match="WORLD_SIZE='eight'"):
        world_size_from_env()


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        (["0.5", "a", "b"], "--data-path has 3 values"),
        (["half", "a", "0.5", "b"], "--data-path weight 'half'"),
        (["0", "a", "1", "b"], "--data-path weight 0 .* must be a positive number"),
        ([], "--data-path was given no value"),
    ],
)
def test_bad_data_path(values, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_data_path(values)


SAMPLE_MODE = {"--train-iters": None, "--lr-decay-iters": None, "--train-samples": "1000000"}
ERRORS = [
    ({"--num-layers": None, "--lr": None}, r"missing required flag\(s\): --num-layers, --lr"),
    ({"--train-iters": None}, "exactly one of --train-iters and --train-samples .*neither"),
    ({"--train-samples": "1000"}, "exactly one of --train-iters and --train-samples .*both"),
    ({"--micro-batch-size": None}, "--micro-batch-size .*train_micro_batch_size_per_gpu"),
    (
        {"--global-batch-size": "200"},
        "--global-batch-size 200 is not divisible by --micro-batch-size 4 x data-parallel size 16 = 64",
    ),
    (
        {"--num-attention-heads": "12", "--hidden-size": "1000"},
        "--hidden-size 1000 is not divisible by --num-attention-heads 12",
    ),
    ({"--max-position-embeddings": "1024"}, "--max-position-embeddings 1024 is smaller than --seq-length"),
    ({"--hidden-dropout": "1.0"}, r"--hidden-dropout 1.0: a dropout probability must be in \[0, 1\)"),
    ({"--num-layers": "0"}, "--num-layers 0: must be > 0"),
    ({"--bf16": True}, "--fp16 and --bf16 were both given"),
    ({"--lr-decay-samples": "1000"}, "--lr-decay-samples 1000 does not apply with --train-iters"),
    (
        {**SAMPLE_MODE, "--lr-warmup-fraction": None, "--lr-warmup-iters": "10"},
        "--lr-warmup-iters 10 does not apply with --train-samples",
    ),
    ({"--lr-warmup-iters": "100"}, "--lr-warmup-fraction 0.01 and --lr-warmup-iters 100 were both given"),
    (
        {"--lr-warmup-fraction": None, "--lr-warmup-iters": "400000"},
        "warmup of 400000 iters .*longer than the decay of 320000 iters .*--lr-decay-iters",
    ),
    ({"--min-lr": "1e-3"}, "--min-lr 0.001: must be between 0 and --lr 0.0003"),
    ({"--save": None}, "--save-interval 1000 was given without --save"),
    (
        {"--merge-file": None},
        "--tokenizer-type GPT2BPETokenizer needs --vocab-file and --merge-file; --merge-file is missing",
    ),
    ({"--tokenizer-type": "HFTokenizer"}, "--tokenizer-type HFTokenizer needs --tokenizer-model"),
    ({"--tokenizer-type": "Llama2Tokenizer"}, "--tokenizer-type Llama2Tokenizer needs --tokenizer-model"),
    ({"--tokenizer-type": "NullTokenizer"}, "--tokenizer-type NullTokenizer needs --vocab-size"),
    ({"--data-impl": "lazy"}, "--data-impl lazy is not supported; only mmap"),
    (
        {"--deepspeed": None},
        "--deepspeed is required: this toolkit always trains through the DeepSpeed engine",
    ),
    ({"--deepspeed_config": None}, "--deepspeed was given without --deepspeed_config"),
    ({"--zero-stage": "5"}, "--zero-stage 5: ZeRO stages are 0, 1, 2 and 3"),
    ({"--initial-loss-scale": "1000"}, "--initial-loss-scale 1000.0: .*power of two"),
    ({"--split": "90,abc"}, "--split '90,abc'"),
    ({"--rampup-batch-size": ["64", "64", "1000"]}, "--rampup-batch-size 64 64 1000 needs --train-samples"),
]
RAMPUP_ERRORS = [
    (["0", "64", "1000"], "START and INCR must be > 0"),
    (["64", "128", "1000"], r"\(global - START\) must be a non-negative multiple of INCR"),
    (["32", "32", "1000"], "START 32 is not a multiple of micro-batch size x data-parallel size 16 = 64"),
    (["64", "96", "1000"], r"INCR 96 is not a multiple of .* = 64"),
]


@pytest.mark.parametrize(("changes", "pattern"), ERRORS)
def test_flag_errors(tmp_path, changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build(tmp_path, changes, ds={})


@pytest.mark.parametrize(("rampup", "pattern"), RAMPUP_ERRORS)
def test_rampup_errors(tmp_path, rampup, pattern):
    with pytest.raises(ConfigError, match=rf"--rampup-batch-size {' '.join(rampup)}: .*{pattern}"):
        build(tmp_path, {**SAMPLE_MODE, "--rampup-batch-size": rampup})


MISMATCHES = [
    (
        {"train_micro_batch_size_per_gpu": 8},
        "'train_micro_batch_size_per_gpu' is 8 but --micro-batch-size gives 4",
    ),
    ({"train_batch_size": 512}, "'train_batch_size' is 512 but --global-batch-size gives 256"),
    (
        {"gradient_accumulation_steps": 2},
        r"'gradient_accumulation_steps' is 2 but the flags give 4 \(--global-batch-size 256 / "
        r"\(--micro-batch-size 4 x data-parallel size 16\)\)",
    ),
    ({"zero_optimization": {"stage": 2}}, "'zero_optimization.stage' is 2 but --zero-stage gives 1"),
    ({"fp16": {"enabled": False}}, "'fp16.enabled' is False but --fp16 gives True"),
    (
        {"bf16": {"enabled": True}},
        r"fp16 and bf16 are both enabled \(fp16 by --fp16, bf16 by 'bf16.enabled'\)",
    ),
    ({"gradient_clipping": 0.5}, "'gradient_clipping' is 0.5 but --clip-grad gives 1.0"),
]


@pytest.mark.parametrize(("ds_changes", "pattern"), MISMATCHES)
def test_ds_config_mismatches(tmp_path, ds_changes, pattern):
    with pytest.raises(ConfigError, match=rf".*ds_config\.json.*{pattern}"):
        build(tmp_path, ds={**RECIPE_DS, **ds_changes})


def test_bf16_flag_against_ds_config(tmp_path):
    with pytest.raises(ConfigError, match="'bf16.enabled' is False but --bf16 gives True"):
        build(tmp_path, {"--fp16": None, "--bf16": True}, ds={"bf16": {"enabled": False}})


@pytest.mark.parametrize(
    ("flag", "value", "pattern"),
    [
        ("--hysteresis", "4", "'fp16.hysteresis' is 2 but --hysteresis gives 4"),
        ("--loss-scale-window", "1000", "'fp16.loss_scale_window' is 500 but --loss-scale-window gives 1000"),
        (
            "--initial-loss-scale",
            "65536",
            "'fp16.initial_scale_power' is 12 but --initial-loss-scale gives 65536.0",
        ),
        ("--loss-scale", "128", "'fp16.loss_scale' is 0 but --loss-scale gives 128.0"),
        ("--min-loss-scale", "4", "'fp16.min_loss_scale' is 1 but --min-loss-scale gives 4.0"),
    ],
)
def test_loss_scale_mismatches(tmp_path, flag, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build(tmp_path, {flag: value})


def test_ds_config_problems_surface_through_build(tmp_path):
    with pytest.raises(ConfigError, match="remove the 'optimizer' section"):
        build(tmp_path, ds={**RECIPE_DS, "optimizer": {"type": "Adam", "params": {"lr": 3e-4}}})
    with pytest.raises(
        ConfigError, match=r"unknown top-level key 'gradient_clip' \(did you mean 'gradient_clipping'\?\)"
    ):
        build(tmp_path, ds={"gradient_clip": 1.0})
    with pytest.raises(ConfigError, match=r"'zero_optimization\.stage' is 7"):
        build(tmp_path, {"--zero-stage": None}, ds={"zero_optimization": {"stage": 7}})


def test_rules_only_deepspeed_knows_are_checked_too(tmp_path):
    # (The legacy curriculum_learning section, also gone from DeepSpeed 0.19, is read by the toolkit itself.)
    with pytest.raises(ConfigError, match="DeepSpeed rejects it: .*progressive_layer_drop"):
        build(tmp_path, ds={"progressive_layer_drop": {"enabled": False}})
    fp16_master = {"fp16": {"enabled": True, "fp16_master_weights_and_grads": True}}
    assert build(tmp_path, ds=fp16_master).deepspeed.zero_stage == 1


def test_fp16_needs_zero_stage_one_or_more(tmp_path):
    with pytest.raises(ConfigError, match=r"--fp16 with ZeRO stage 0 .* Use --zero-stage 1 .* or --bf16"):
        build(tmp_path, {"--zero-stage": "0"}, ds={"fp16": {"enabled": True}})


def test_universal_checkpoint_flag_sets_deepspeeds_switch(tmp_path):
    config = build(tmp_path, {"--universal-checkpoint": True})
    assert config.deepspeed.ds_config["checkpoint"]["load_universal"] is True
    assert "checkpoint" not in build(tmp_path).deepspeed.ds_config


def test_flash_attn_flag_needs_the_package(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "flash_attn" else real_find_spec(name, *a),
    )
    with pytest.raises(ConfigError, match="--use-flash-attn: the flash-attn package is not installed"):
        build(tmp_path, {"--use-flash-attn": True})
    assert build(tmp_path, {"--torch-compile": True}).kernels.torch_compile


def test_torch_compile_mode_needs_torch_compile(tmp_path):
    with pytest.raises(ConfigError, match="--torch-compile-mode reduce-overhead without --torch-compile"):
        build(tmp_path, {"--torch-compile-mode": "reduce-overhead"})
    changes = {"--torch-compile": True, "--torch-compile-mode": "max-autotune", **ONE_GRAPH}
    kernels = build(tmp_path, changes).kernels
    assert kernels.torch_compile and kernels.compile_mode == "max-autotune" and kernels.uses_cuda_graphs
    assert build(tmp_path, {"--torch-compile": True}).kernels.compile_mode == "default"


# The recipe recomputes through DeepSpeed's activation checkpointing; without it the GPT is one graph.
ONE_GRAPH = {"--deepspeed-activation-checkpointing": None}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, "--recompute-granularity full"),
        ({**ONE_GRAPH, "--tensor-model-parallel-size": "2"}, "--tensor-model-parallel-size > 1"),
        ({**ONE_GRAPH, "--pipeline-model-parallel-size": "2"}, "--pipeline-model-parallel-size > 1"),
        ({**ONE_GRAPH, "--ds-sequence-parallel-size": "2"}, "--ds-sequence-parallel-size > 1"),
        ({**ONE_GRAPH, "--recompute-granularity": "selective"}, "--recompute-granularity selective"),
        ({**ONE_GRAPH, "--zero-stage": "3"}, "ZeRO stage 3"),
    ],
)
def test_cuda_graphs_only_where_the_model_is_one_graph(tmp_path, changes, reason):
    """Seen on two H200s: reduce-overhead with tensor parallelism (the layers compiled in pieces) read a
    replay's overwritten output after the first evaluation."""
    compile_flags = {"--torch-compile": True, "--torch-compile-mode": "reduce-overhead"}
    ds = {key: value for key, value in RECIPE_DS.items() if key != "zero_optimization"}
    with pytest.raises(ConfigError, match=f"here {re.escape(reason)} split"):
        build(tmp_path, {**compile_flags, **changes}, ds=ds)
    plain = build(tmp_path, {"--torch-compile": True, "--torch-compile-mode": "default", **changes}, ds=ds)
    assert not plain.kernels.uses_cuda_graphs


def test_torch_autocast_section_keeps_fp32_weights_in_bf16_autocast(tmp_path):
    config = build(tmp_path, {"--fp16": None}, ds={"torch_autocast": {"enabled": True}})
    precision = config.precision
    assert precision.bf16_autocast and not (precision.bf16 or precision.fp16)
    assert precision.dtype_name == "bf16 autocast over fp32 weights"
    # DeepSpeed's own default dtype would be fp16 on a GPU: the reconciled dict names bf16.
    assert config.deepspeed.ds_config["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}


def test_bundled_autocast_ds_config_builds(tmp_path):
    bundled = json.loads((REPO_ROOT / "ds_configs" / "ds_config_gpt_autocast.json").read_text())
    changes = {"--fp16": None, "--zero-stage": None, "--micro-batch-size": "8"}
    config = build(tmp_path, changes, ds=bundled)
    assert config.precision.bf16_autocast and config.deepspeed.zero_stage == 0


@pytest.mark.parametrize(
    ("changes", "section", "pattern"),
    [
        ({}, {"enabled": True}, "'torch_autocast' is enabled together with --fp16. Choose one"),
        (
            {"--fp16": None, "--bf16": True},
            {"enabled": True},
            "'torch_autocast' is enabled together with --bf16",
        ),
        ({"--fp16": None}, {"enabled": True, "dtype": "fp16"}, r"'torch_autocast.dtype' is 'fp16'.*--fp16"),
        ({"--fp16": None}, {"enabled": "yes"}, "'torch_autocast.enabled' is 'yes'; use true or false"),
    ],
)
def test_torch_autocast_conflicts(tmp_path, changes, section, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build(tmp_path, changes, ds={"torch_autocast": section})
