"""Activation recomputation: how --recompute-*, --checkpoint-activations and
--deepspeed-activation-checkpointing combine into one RecomputeConfig, and the combinations where a flag would
do nothing."""

from __future__ import annotations

import pytest

from megatron.config.errors import ConfigError
from megatron.config.schema import RecomputeConfig
from tests.config.recipe import build

# The recipe passes --deepspeed-activation-checkpointing; these variants start without it.
PLAIN = {"--deepspeed-activation-checkpointing": None}
DS_CKPT = {"--deepspeed-activation-checkpointing": True}

COMBINATIONS = [
    (PLAIN, RecomputeConfig()),
    (DS_CKPT, RecomputeConfig("full", "uniform", 1, deepspeed=True)),
    ({**PLAIN, "--checkpoint-activations": True}, RecomputeConfig("full", "uniform", 1)),
    (
        {**DS_CKPT, "--checkpoint-activations": True},
        RecomputeConfig("full", "uniform", 1, deepspeed=True),
    ),
    (
        {**PLAIN, "--checkpoint-activations": True, "--recompute-num-layers": "2"},
        RecomputeConfig("full", "uniform", 2),
    ),
    (
        {**PLAIN, "--checkpoint-activations": True, "--recompute-granularity": "full"},
        RecomputeConfig("full", "uniform", 1),
    ),
    ({**PLAIN, "--recompute-granularity": "selective"}, RecomputeConfig("selective")),
    ({**DS_CKPT, "--recompute-granularity": "selective"}, RecomputeConfig("selective", deepspeed=True)),
    ({**PLAIN, "--recompute-granularity": "full"}, RecomputeConfig("full", "uniform", 1)),
    (
        {**PLAIN, "--recompute-granularity": "full", "--recompute-num-layers": "24"},
        RecomputeConfig("full", "uniform", 24),
    ),
    (
        {**DS_CKPT, "--recompute-granularity": "full", "--recompute-method": "block"},
        RecomputeConfig("full", "block", 1, deepspeed=True),
    ),
    (
        {
            **PLAIN,
            "--recompute-granularity": "full",
            "--recompute-method": "block",
            "--recompute-num-layers": "6",
            "--pipeline-model-parallel-size": "4",
        },
        RecomputeConfig("full", "block", 6),
    ),  # fmt: skip
]


@pytest.mark.parametrize(("changes", "expected"), COMBINATIONS)
def test_flag_combinations(tmp_path, changes, expected):
    assert build(tmp_path, changes).recompute == expected


def test_recomputation_leaves_the_layout_alone(tmp_path):
    changes = {"--recompute-granularity": "full", "--tensor-model-parallel-size": "2"}
    assert build(tmp_path, changes).parallel.data_parallel_size == 8


ERRORS = [
    (
        {**PLAIN, "--recompute-method": "block"},
        "--recompute-method block with no --recompute-granularity: they only apply to full recomputation. "
        r"Add --recompute-granularity full \(or --checkpoint-activations\)",
    ),
    (
        {**PLAIN, "--recompute-granularity": "selective", "--recompute-num-layers": "2"},
        "--recompute-num-layers 2 with --recompute-granularity selective: they only apply to full",
    ),
    (
        {**DS_CKPT, "--recompute-method": "uniform", "--recompute-num-layers": "4"},
        "--recompute-method uniform and --recompute-num-layers 4 with no --recompute-granularity: they only "
        "apply to full recomputation",
    ),
    (
        {"--recompute-granularity": "selective", "--checkpoint-activations": True},
        "--recompute-granularity selective with --checkpoint-activations, .*; choose one",
    ),
    (
        {"--recompute-granularity": "full", "--recompute-num-layers": "0"},
        "--recompute-num-layers 0: must be >= 1",
    ),
    (
        {"--checkpoint-activations": True, "--recompute-num-layers": "25"},
        "--recompute-num-layers 25 is more than --num-layers 24: .*Use at most 24",
    ),
    (
        {
            "--recompute-granularity": "full",
            "--recompute-method": "block",
            "--recompute-num-layers": "7",
            "--pipeline-model-parallel-size": "4",
        },
        r"--recompute-num-layers 7 with --recompute-method block: .*a stage holds at most 6 "
        r"\(--num-layers 24 / --pipeline-model-parallel-size 4, rounded up\)",
    ),  # fmt: skip
    (
        {
            "--recompute-granularity": "full",
            "--recompute-method": "block",
            "--recompute-num-layers": "7",
            "--pipeline-model-parallel-size": "4",
            "--num-layers": "22",
        },
        r"a stage holds at most 6 \(--num-layers 22 / --pipeline-model-parallel-size 4, rounded up\)",
    ),  # fmt: skip
]


@pytest.mark.parametrize(("changes", "pattern"), ERRORS)
def test_recompute_errors(tmp_path, changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build(tmp_path, changes)
