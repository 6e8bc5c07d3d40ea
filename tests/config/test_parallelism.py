"""The parallel layout: tensor (T), pipeline (P) and DeepSpeed-Ulysses (U) sizes, the data-parallel size
that remains, and the rules refusing a layout the model or DeepSpeed cannot run, before any process group."""

from __future__ import annotations

import pytest

from megatron.config.errors import ConfigError
from megatron.config.parallelism import describe_data_parallel
from megatron.config.schema import ParallelConfig
from tests.config.recipe import RECIPE_DS, build

T, P, U = "--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--ds-sequence-parallel-size"
# 12 heads of 64 channels: divisible by 2 and 4 but not by 8, so head-splitting rules can fail.
TWELVE_HEADS = {"--num-attention-heads": "12", "--hidden-size": "768"}


def test_default_layout_is_pure_data_parallel(tmp_path):
    parallel = build(tmp_path).parallel
    assert parallel == ParallelConfig(world_size=16)
    assert parallel.use_pipeline_engine and not parallel.sequence_parallel
    assert parallel.pipeline_partition_method == "parameters"


def test_3d_recipe(tmp_path):
    config = build(tmp_path, {T: "2", P: "2", "--pipeline-partition-method": "type:transformer"})
    parallel = config.parallel
    assert (parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size) == (2, 2)
    assert parallel.data_parallel_size == 4 and config.batch.data_parallel_size == 4
    assert config.batch.gradient_accumulation_steps == 256 // (4 * 4)
    assert config.deepspeed.ds_config["gradient_accumulation_steps"] == 16
    assert parallel.use_pipeline_engine and parallel.pipeline_partition_method == "type:transformer"
    assert config.model.padded_vocab_size == 50432  # a multiple of 128 x T


def test_3d_recipe_with_sequence_parallel(tmp_path):
    parallel = build(tmp_path, {T: "2", P: "2", "--sequence-parallel": True}).parallel
    assert parallel.sequence_parallel and parallel.data_parallel_size == 4


def test_ulysses_recipe(tmp_path):
    config = build(tmp_path, {U: "2", "--no-pipeline-parallel": True})
    parallel = config.parallel
    assert parallel.ds_sequence_parallel_size == 2 and not parallel.use_pipeline_engine
    assert parallel.data_parallel_size == 8 and config.batch.gradient_accumulation_steps == 256 // (4 * 8)


def test_ulysses_with_tensor_parallelism(tmp_path):
    parallel = build(tmp_path, {**TWELVE_HEADS, T: "2", U: "2"}).parallel
    assert parallel.data_parallel_size == 4


def test_default_global_batch_uses_the_derived_data_parallel_size(tmp_path):
    config = build(tmp_path, {T: "2", P: "2", "--global-batch-size": None}, ds={})
    assert config.batch.global_batch_size == 4 * 4 and config.batch.gradient_accumulation_steps == 1


def test_pipeline_with_zero_stage_0_and_bf16(tmp_path):
    changes = {P: "4", "--zero-stage": "0", "--fp16": None, "--bf16": True}
    config = build(tmp_path, changes, ds={})
    assert config.deepspeed.zero_stage == 0 and config.parallel.data_parallel_size == 4


def test_describe_data_parallel():
    assert describe_data_parallel(ParallelConfig(world_size=8)) == "data-parallel size 8"
    layout = ParallelConfig(world_size=32, tensor_model_parallel_size=2, ds_sequence_parallel_size=4)
    assert describe_data_parallel(layout) == (
        "data-parallel size 4 (world size 32 / "
        "(--tensor-model-parallel-size 2 x --ds-sequence-parallel-size 4))"
    )


ERRORS = [
    ({T: "0"}, "--tensor-model-parallel-size 0: must be >= 1"),
    ({U: "-1"}, "--ds-sequence-parallel-size -1: must be >= 1"),
    (
        {T: "2", P: "4", U: "4"},
        r"world size 16 is not divisible by --tensor-model-parallel-size 2 x "
        r"--pipeline-model-parallel-size 4 x --ds-sequence-parallel-size 4 = 32: each data-parallel replica",
    ),
    (
        {**TWELVE_HEADS, T: "8"},
        "--num-attention-heads 12 is not divisible by --tensor-model-parallel-size 8: each tensor-parallel "
        "rank computes whole heads",
    ),
    (
        {T: "2", "--ffn-hidden-size": "4097"},
        "--ffn-hidden-size 4097 is not divisible by --tensor-model-parallel-size 2",
    ),
    (
        {"--sequence-parallel": True},
        "--sequence-parallel with --tensor-model-parallel-size 1: it splits along the sequence over the "
        "tensor-parallel ranks, .*Without tensor parallelism, use --ds-sequence-parallel-size",
    ),
    (
        {T: "2", "--sequence-parallel": True, "--seq-length": "2047"},
        "--seq-length 2047 is not divisible by --tensor-model-parallel-size 2: --sequence-parallel",
    ),
    (
        {**TWELVE_HEADS, T: "2", U: "4"},
        r"--num-attention-heads 12 with --ds-sequence-parallel-size 4: .*the heads on each tensor-parallel "
        r"rank \(12 / 2 = 6\) must be divisible by 4. Use a head count that is a multiple of 8",
    ),
    (
        {**TWELVE_HEADS, U: "8"},
        "--num-attention-heads 12 with --ds-sequence-parallel-size 8: .*so the heads must be divisible by 8",
    ),
    (
        {U: "2", "--seq-length": "2047"},
        "--seq-length 2047 is not divisible by --ds-sequence-parallel-size 2: DeepSpeed-Ulysses",
    ),
    (
        {T: "2", U: "2", "--sequence-parallel": True},
        "--sequence-parallel with --ds-sequence-parallel-size 2: both split the sequence .*; choose one",
    ),
    (
        {U: "2", P: "2"},
        "--ds-sequence-parallel-size 2 with --pipeline-model-parallel-size 2: DeepSpeed-Ulysses is supported "
        "here without pipeline parallelism. Use --pipeline-model-parallel-size 1 .*--no-pipeline-parallel",
    ),
    (
        {P: "2", "--no-pipeline-parallel": True},
        "--pipeline-model-parallel-size 2 with --no-pipeline-parallel: .*Drop one of the two",
    ),
    (
        {P: "2", "--zero-stage": "2"},
        r"--pipeline-model-parallel-size 2 with ZeRO stage 2 \(--zero-stage / zero_optimization.stage in "
        r".*ds_config.json\): DeepSpeed's pipeline engine supports ZeRO stage 0 and 1 only. "
        r"Use --zero-stage 1",
    ),
    ({P: "4", "--zero-stage": "3"}, "--pipeline-model-parallel-size 4 with ZeRO stage 3"),
    (
        {P: "4", "--num-layers": "2"},
        "--num-layers 2 is fewer than --pipeline-model-parallel-size 4: each pipeline stage needs",
    ),
    (
        {T: "2", P: "2", "--global-batch-size": "200"},
        r"--global-batch-size 200 is not divisible by --micro-batch-size 4 x data-parallel size 4 \(world "
        r"size 16 / \(--tensor-model-parallel-size 2 x --pipeline-model-parallel-size 2\)\) = 16",
    ),
    (
        {U: "2", "--global-batch-size": "240"},
        r"--micro-batch-size 4 x data-parallel size 8 \(world size 16 / \(--ds-sequence-parallel-size 2\)\) "
        r"= 32",
    ),
]


@pytest.mark.parametrize(("changes", "pattern"), ERRORS)
def test_layout_errors(tmp_path, changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build(tmp_path, changes, ds={})


def test_rampup_error_explains_the_data_parallel_size(tmp_path):
    changes = {
        T: "2", "--train-iters": None, "--lr-decay-iters": None, "--train-samples": "1000000",
        "--rampup-batch-size": ["16", "16", "1000"],
    }  # fmt: skip
    with pytest.raises(
        ConfigError,
        match=r"START 16 is not a multiple of micro-batch size x data-parallel size 8 \(world size 16 / "
        r"\(--tensor-model-parallel-size 2\)\) = 32",
    ):
        build(tmp_path, changes)


DS_MISMATCHES = [
    (
        {T: "2", P: "2"},
        {"gradient_accumulation_steps": 4},
        r"'gradient_accumulation_steps' is 4 but the flags give 16 \(--global-batch-size 256 / "
        r"\(--micro-batch-size 4 x data-parallel size 4 \(world size 16 / \(--tensor-model-parallel-size 2 x "
        r"--pipeline-model-parallel-size 2\)\)\)\)",
    ),
    (
        {U: "2"},
        {"sequence_parallel_size": 4},
        "'sequence_parallel_size' is 4 but --ds-sequence-parallel-size gives 2. Drop the key .*"
        "or set it to 2",
    ),
    (
        {T: "2"},
        {"data_parallel_size": 16},
        r"'data_parallel_size' is 16 but the flags give data-parallel size 8 \(world size 16 / "
        r"\(--tensor-model-parallel-size 2\)\)",
    ),
]


@pytest.mark.parametrize(("changes", "ds_changes", "pattern"), DS_MISMATCHES)
def test_ds_config_layout_keys_must_agree(tmp_path, changes, ds_changes, pattern):
    with pytest.raises(ConfigError, match=rf"ds_config .*ds_config\.json: {pattern}"):
        build(tmp_path, changes, ds={**RECIPE_DS, **ds_changes})


def test_ds_config_layout_keys_that_agree_are_dropped(tmp_path):
    """DeepSpeed would build a mesh of its own from the pair; the groups come from the flags instead."""
    config = build(tmp_path, {U: "2"}, ds={**RECIPE_DS, "sequence_parallel_size": 2, "data_parallel_size": 8})
    assert "sequence_parallel_size" not in config.deepspeed.ds_config
    assert "data_parallel_size" not in config.deepspeed.ds_config
