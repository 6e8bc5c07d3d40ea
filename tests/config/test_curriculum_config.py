"""The ds_config's curriculum_learning section (read by the toolkit, taken out of what DeepSpeed gets), the
refused data_efficiency pipeline, and the token-counted LR schedule flags."""

from __future__ import annotations

import copy

import pytest

from megatron.config.errors import ConfigError
from tests.config.recipe import RECIPE_DS, build

CURRICULUM = {
    "enabled": True,
    "curriculum_type": "seqlen",
    "min_difficulty": 64,
    "max_difficulty": 2048,
    "schedule_type": "fixed_linear",
    "schedule_config": {"total_curriculum_step": 1000, "difficulty_step": 8},
}


def with_curriculum(**changes) -> dict:
    section = copy.deepcopy(CURRICULUM)
    for key, value in changes.items():
        if value is None:
            section.pop(key)
        else:
            section[key] = value
    return {**RECIPE_DS, "curriculum_learning": section}


def test_curriculum_is_read_and_kept_from_deepspeed(tmp_path):
    config = build(tmp_path, ds=with_curriculum())
    curriculum = config.curriculum
    assert (curriculum.min_difficulty, curriculum.max_difficulty) == (64, 2048)
    assert curriculum.schedule_type == "fixed_linear"
    assert curriculum.schedule == {"total_curriculum_step": 1000, "difficulty_step": 8}
    assert "curriculum_learning" not in config.deepspeed.ds_config


def test_disabled_or_absent_curriculum(tmp_path):
    config = build(tmp_path, ds=with_curriculum(enabled=False))
    assert config.curriculum is None and "curriculum_learning" not in config.deepspeed.ds_config
    assert build(tmp_path).curriculum is None


def test_other_schedules(tmp_path):
    root = {"total_curriculum_step": 10, "difficulty_step": 64, "root_degree": 2}
    assert build(tmp_path, ds=with_curriculum(schedule_type="fixed_root", schedule_config=root)).curriculum
    discrete = {"difficulty": [128, 1024, 2048], "max_step": [10, 20]}
    config = build(tmp_path, ds=with_curriculum(schedule_type="fixed_discrete", schedule_config=discrete))
    assert config.curriculum.schedule == discrete


BAD_SECTIONS = [
    (
        {"curriculum_type": "vocabularyrarity"},
        r"'curriculum_learning\.curriculum_type' is 'vocabularyrarity'",
    ),
    (
        {"min_difficluty": 8},
        r"'curriculum_learning\.min_difficluty' is not a known key \(did you mean 'min_difficulty'",
    ),
    ({"max_difficulty": 4096}, r"max_difficulty 4096 must satisfy min <= max <= --seq-length 2048"),
    (
        {"min_difficulty": None},
        r"'curriculum_learning\.min_difficulty' is missing; it must be an integer >= 1",
    ),
    ({"enabled": "yes"}, r"'curriculum_learning\.enabled' is 'yes'; it must be true or false"),
    (
        {"schedule_type": "custom"},
        r"'curriculum_learning\.schedule_type' is 'custom'; use one of fixed_linear",
    ),
    (
        {"schedule_config": None},
        r"'curriculum_learning\.schedule_config' is None; fixed_linear needs an object",
    ),
    ({"schedule_config": {"total_curriculum_step": 10}}, r"schedule_config\.difficulty_step' is missing"),
    (
        {"schedule_config": {"total_curriculum_step": 10, "difficulty_step": 8, "root_degree": 2}},
        r"schedule_config\.root_degree' is not a known key",
    ),
    (
        {"schedule_config": {"total_curriculum_step": 10, "difficulty_step": 48}},
        r"difficulty_step' is 48 but max_difficulty 2048 is not a multiple of it: .* would stop at 2016",
    ),
    (
        {
            "schedule_type": "fixed_root",
            "schedule_config": {"total_curriculum_step": 1, "difficulty_step": 8},
        },
        r"schedule_config\.root_degree' is None; it must be a number > 0",
    ),
    (
        {
            "schedule_type": "fixed_discrete",
            "schedule_config": {"difficulty": [64, 2048], "max_step": [5, 9]},
        },
        r"schedule_config\.max_step' is \[5, 9\]; it must list one step fewer than 'difficulty'",
    ),
    (
        {"schedule_type": "fixed_discrete", "schedule_config": {"difficulty": [2048, 64], "max_step": [5]}},
        r"schedule_config\.difficulty' is \[2048, 64\]; the lengths must not decrease",
    ),
    (
        {
            "schedule_type": "fixed_discrete",
            "schedule_config": {"difficulty": [64, 128, 2048], "max_step": [9, 5]},
        },
        r"schedule_config\.max_step' is \[9, 5\]; the steps must be >= 1 and increasing",
    ),
]


@pytest.mark.parametrize("changes, pattern", BAD_SECTIONS)
def test_bad_curriculum_sections_name_the_key(tmp_path, changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build(tmp_path, ds=with_curriculum(**changes))


def test_sequence_parallel_needs_lengths_it_can_split(tmp_path):
    split = {"--tensor-model-parallel-size": "4", "--sequence-parallel": True}
    odd = {"schedule_config": {"total_curriculum_step": 10, "difficulty_step": 2}, "min_difficulty": 2}
    with pytest.raises(
        ConfigError, match=r"sequence lengths \[2, 6, 10, 14, 18\] that --tensor-model-parallel-size"
    ):
        build(tmp_path, split, ds=with_curriculum(**odd))
    assert build(tmp_path, split, ds=with_curriculum()).curriculum is not None


def test_data_efficiency_is_refused_unless_disabled(tmp_path):
    sampling = {"enabled": True, "data_sampling": {"enabled": True, "curriculum_learning": {"enabled": True}}}
    with pytest.raises(
        ConfigError, match=r"'data_efficiency' .* is not supported yet\. For a sequence-length"
    ):
        build(tmp_path, ds={**RECIPE_DS, "data_efficiency": sampling})
    assert build(tmp_path, ds={**RECIPE_DS, "data_efficiency": {"enabled": False}}).curriculum is None


def test_token_schedule_flags(tmp_path):
    tokens = {"--lr-decay-tokens": "300000000000", "--lr-warmup-fraction": None}
    schedule = build(tmp_path, {**tokens, "--lr-warmup-tokens": "375000000"}).lr_schedule
    assert (schedule.decay_tokens, schedule.warmup_tokens, schedule.warmup_iters) == (
        300000000000,
        375000000,
        0,
    )
    schedule = build(tmp_path, {**tokens, "--lr-warmup-iters": "100"}).lr_schedule
    assert (schedule.decay_tokens, schedule.warmup_tokens, schedule.warmup_iters) == (300000000000, None, 100)


@pytest.mark.parametrize(
    "changes, pattern",
    [
        (
            {"--lr-warmup-tokens": "1000"},
            r"--lr-warmup-tokens 1000 and --lr-warmup-fraction 0\.01 were both given",
        ),
        (
            {"--lr-warmup-tokens": "1000", "--lr-warmup-fraction": None, "--lr-warmup-iters": "5"},
            r"--lr-warmup-tokens 1000 and --lr-warmup-iters 5 were both given",
        ),
        (
            {"--lr-warmup-tokens": "1000", "--lr-decay-tokens": "10", "--lr-warmup-fraction": None},
            r"--lr-warmup-tokens 1000 is longer than --lr-decay-tokens 10",
        ),
        ({"--lr-decay-tokens": "0"}, r"--lr-decay-tokens 0: must be > 0"),
        ({"--lr-warmup-tokens": "-1", "--lr-warmup-fraction": None}, r"--lr-warmup-tokens -1: must be >= 0"),
    ],
)
def test_bad_token_schedules(tmp_path, changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build(tmp_path, changes)
