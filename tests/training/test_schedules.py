"""LR schedule and batch-size ramp-up against values worked out from their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from megatron.config.errors import ConfigError
from megatron.config.schema import BatchConfig, LRScheduleConfig
from megatron.training.batch_schedule import global_batch_size_at
from megatron.training.lr_schedule import LRScheduler


def make_scheduler(**schedule) -> LRScheduler:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    return LRScheduler(optimizer, 1.0, LRScheduleConfig(**schedule), global_batch_size=4)


@pytest.mark.parametrize("style", ["linear", "cosine", "constant"])
def test_warmup_then_decay(style):
    scheduler = make_scheduler(decay_style=style, min_lr=0.1, decay_iters=10, warmup_iters=2)
    lrs = []
    for _ in range(12):
        lrs.append(scheduler.get_lr())
        scheduler.step(4)
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(0.5) and lrs[2] == pytest.approx(1.0)
    progress = [(i - 2) / 8 for i in range(2, 11)]
    if style == "linear":
        expected = [0.1 + (1 - p) * 0.9 for p in progress]
    elif style == "cosine":
        expected = [0.1 + 0.5 * (math.cos(math.pi * p) + 1) * 0.9 for p in progress]
    else:
        expected = [1.0] * len(progress)
    assert lrs[2:11] == pytest.approx(expected)
    assert lrs[11] == pytest.approx(0.1 if style != "constant" else 1.0)
    assert scheduler.optimizer.param_groups[0]["lr"] == scheduler.get_lr()


def test_sample_mode_and_state_round_trip():
    scheduler = make_scheduler(decay_style="linear", decay_samples=100, warmup_samples=10)
    scheduler.step(5)
    assert scheduler.get_lr() == pytest.approx(0.5)
    scheduler.step(50)
    restored = make_scheduler(decay_style="linear", decay_samples=100, warmup_samples=10)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.get_lr() == scheduler.get_lr() == pytest.approx(1 - 45 / 90)


def test_rampup_batch_size_follows_megatron_rule():
    batch = BatchConfig(
        micro_batch_size=2, global_batch_size=16, data_parallel_size=2, rampup_batch_size=(4, 4, 300)
    )
    # 3 increments of 4 over 300 samples: one every 100 samples.
    assert [global_batch_size_at(batch, s) for s in (0, 99, 100, 199, 200, 299, 300, 10_000)] == [
        4, 4, 8, 8, 12, 12, 16, 16,
    ]  # fmt: skip
    assert global_batch_size_at(BatchConfig(2, 16, 2), 0) == 16


def trained_state(**schedule) -> dict:
    scheduler = make_scheduler(**schedule)
    for _ in range(3):
        scheduler.step(4, 128)
    return scheduler.state_dict()


SAVED = {"decay_style": "cosine", "min_lr": 0.1, "decay_iters": 10, "warmup_iters": 2}


def test_a_checkpoint_with_other_settings_needs_a_choice():
    """Neither flag: the checkpoint's settings must be the flags' (Megatron-DeepSpeed asserts the same)."""
    state = trained_state(**SAVED)
    restored = make_scheduler(**SAVED)
    restored.load_state_dict(state)
    assert restored.num_samples == 12 and restored.num_tokens == 384
    changed = make_scheduler(**{**SAVED, "decay_iters": 20, "decay_style": "linear"})
    with pytest.raises(ConfigError) as error:
        changed.load_state_dict(state)
    message = str(error.value)
    assert "--lr-decay-style: cosine (checkpoint) vs linear (flags)" in message
    assert "--lr-decay-iters/-samples (in samples): 40 (checkpoint) vs 80 (flags)" in message
    assert "--override-opt_param-scheduler" in message and "--use-checkpoint-opt_param-scheduler" in message


def test_override_takes_the_flags_and_use_checkpoint_the_checkpoints_settings():
    state = trained_state(**SAVED)
    flags = {**SAVED, "decay_iters": 20, "min_lr": 0.0}
    overridden = make_scheduler(**flags)
    overridden.load_state_dict(state, "flags")
    kept = make_scheduler(**flags)
    kept.load_state_dict(state, "checkpoint")
    # 12 samples into a 2-iteration (8-sample) warmup, then cosine decay over the rest.
    flags_lr = 0.5 * (math.cos(math.pi * (12 - 8) / (80 - 8)) + 1.0)
    checkpoint_lr = 0.1 + 0.9 * 0.5 * (math.cos(math.pi * (12 - 8) / (40 - 8)) + 1.0)
    assert overridden.get_lr() == pytest.approx(flags_lr)
    assert kept.get_lr() == pytest.approx(checkpoint_lr)
    assert (kept.decay_samples, kept.min_lr) == (40, 0.1) and overridden.decay_samples == 80


def test_a_checkpoint_from_before_the_settings_were_saved_loads_its_progress():
    state = {"num_samples": 12, "num_tokens": 384, "warmup_end_tokens": 256, "max_lr": 1.0, "min_lr": 0.1}
    restored = make_scheduler(**{**SAVED, "decay_iters": 20})
    restored.load_state_dict(state)
    assert (restored.num_samples, restored.decay_samples) == (12, 80)
