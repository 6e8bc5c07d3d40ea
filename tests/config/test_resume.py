"""Checkpoint-resume flags and --train-tokens: Megatron-DeepSpeed's meanings, checked before any process group
starts (what they do on load is tested end to end in tests/training/test_pretrain_gpt_recipe_flags.py)."""

from __future__ import annotations

import pytest

from megatron.config.errors import ConfigError
from tests.config.recipe import build

SAMPLE_MODE = {
    "--train-iters": None, "--lr-decay-iters": None, "--lr-warmup-fraction": None,
    "--train-samples": "146484375", "--lr-warmup-samples": "1000000",
}  # fmt: skip


def test_recipe_without_resume_flags_needs_the_checkpoint_to_agree(tmp_path):
    checkpoint = build(tmp_path).checkpoint
    assert checkpoint.scheduler_source == "match"
    assert not checkpoint.no_load_lr_state and not checkpoint.reset_iteration


@pytest.mark.parametrize(
    ("flags", "source"),
    [
        ({"--override-opt_param-scheduler": True}, "flags"),
        ({"--use-checkpoint-opt_param-scheduler": True}, "checkpoint"),
    ],
)
def test_whose_schedule_settings_win(tmp_path, flags, source):
    assert build(tmp_path, flags).checkpoint.scheduler_source == source


def test_restart_flags_reach_the_checkpoint_config(tmp_path):
    checkpoint = build(tmp_path, {"--reset-iteration": True, "--no-load-lr-state": True}).checkpoint
    assert checkpoint.reset_iteration and checkpoint.no_load_lr_state


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {"--override-opt_param-scheduler": True, "--use-checkpoint-opt_param-scheduler": True},
            "--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler were both given",
        ),
        (
            {"--use-checkpoint-opt_param-scheduler": True, "--no-load-lr-state": True},
            "--use-checkpoint-opt_param-scheduler with --no-load-lr-state",
        ),
        (
            {"--use-checkpoint-opt_param-scheduler": True, "--no-load-optim": True},
            "--use-checkpoint-opt_param-scheduler with --no-load-optim",
        ),
        (
            {"--use-checkpoint-opt_param-scheduler": True, "--finetune": True},
            "--use-checkpoint-opt_param-scheduler with --finetune",
        ),
    ],
)
def test_contradicting_resume_flags_are_refused(tmp_path, flags, message):
    with pytest.raises(ConfigError, match=message):
        build(tmp_path, flags)


def test_train_tokens_with_train_samples_as_recipes_pass_them(tmp_path):
    duration = build(tmp_path, {**SAMPLE_MODE, "--train-tokens": "300000000000"}).duration
    assert (duration.train_samples, duration.train_tokens, duration.train_iters) == (146484375, 3e11, None)
    assert build(tmp_path, {"--train-tokens": "1000"}).duration.train_tokens == 1000
    assert build(tmp_path).duration.train_tokens is None


def test_train_tokens_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="--train-tokens 0: must be > 0"):
        build(tmp_path, {"--train-tokens": "0"})
