"""The sequence-length curriculum and the token-counted LR schedule: both schedules against hand-computed
values, and pretrain_gpt.py cutting every step's micro batches to the scheduled length (also across a
resume and under pipeline parallelism)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from megatron.config.schema import CurriculumConfig, LRScheduleConfig
from megatron.training.curriculum import SeqLengthCurriculum
from megatron.training.lr_schedule import LRScheduler
from tests.launch import run_pretrain, tiny_model_flags

SEQLEN_PATTERN = re.compile(r"iteration\s+(\d+)/.*?\| curriculum seqlen:\s+(\d+) \|")
LR_PATTERN = re.compile(r"iteration\s+(\d+)/.*?\| learning rate: (\S+) \|")


def root_schedule(iteration: int, low: int, high: int, total: int, step: int, degree: float) -> int:
    """DeepSpeed's fixed_root rule, written out: the root of the progress scales min..max, rounded down to
    a multiple of the step but not below the first multiple at or above min, and capped at max."""
    length = math.floor((iteration / total) ** (1 / degree) * (high - low) + low)
    length -= length % step
    return min(max(length, -(-low // step) * step), high)


@pytest.mark.parametrize(
    "schedule_type, schedule, expected",
    [
        ("fixed_linear", {"total_curriculum_step": 4, "difficulty_step": 8}, [8, 16, 24, 32, 32, 32]),
        (
            "fixed_root",
            {"total_curriculum_step": 4, "difficulty_step": 8, "root_degree": 2},
            [16, 24, 24, 32, 32],
        ),
        ("fixed_discrete", {"difficulty": [8, 16, 32], "max_step": [2, 4]}, [8, 8, 16, 16, 32, 32]),
    ],
)
def test_schedules(schedule_type, schedule, expected):
    curriculum = SeqLengthCurriculum(CurriculumConfig(8, 32, schedule_type, schedule))
    lengths = [curriculum.seq_length_at(iteration) for iteration in range(1, len(expected) + 1)]
    assert lengths == expected
    if schedule_type != "fixed_discrete":
        degree = schedule.get("root_degree", 1)
        assert lengths == [root_schedule(i, 8, 32, 4, 8, degree) for i in range(1, len(expected) + 1)]


def test_longer_root_schedule_matches_the_formula():
    schedule = {"total_curriculum_step": 300, "difficulty_step": 16, "root_degree": 3}
    curriculum = SeqLengthCurriculum(CurriculumConfig(40, 1024, "fixed_root", schedule))
    for iteration in range(1, 400, 7):
        assert curriculum.seq_length_at(iteration) == root_schedule(iteration, 40, 1024, 300, 16, 3)


def scheduler(**schedule) -> LRScheduler:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    config = LRScheduleConfig(decay_style="linear", min_lr=0.0, decay_iters=100, **schedule)
    return LRScheduler(optimizer, 1.0, config, global_batch_size=4)


def test_token_warmup_and_decay():
    lr = scheduler(warmup_tokens=100, decay_tokens=1100)
    lr.step(4, 50)
    assert lr.get_lr() == pytest.approx(0.5)  # 50 of 100 warmup tokens
    lr.step(4, 150)
    assert lr.get_lr() == pytest.approx(1.0 - 100 / 1000)  # 200 tokens: 100 into the 1000 of decay
    lr.step(4, 1000)
    assert lr.get_lr() == 0.0  # past the decay
    assert lr.state_dict()["num_tokens"] == 1200


def test_token_decay_after_a_sample_warmup_starts_where_the_warmup_ended():
    """Megatron-DeepSpeed's rule: with --lr-warmup-iters and --lr-decay-tokens the decay starts from the
    tokens consumed when the (iteration-counted) warmup ended."""
    lr = scheduler(warmup_iters=2, decay_tokens=500)
    lr.step(4, 40)
    assert lr.get_lr() == pytest.approx(0.5)
    lr.step(4, 60)  # the warmup ends with 100 tokens consumed
    assert lr.get_lr() == pytest.approx(1.0)
    lr.step(4, 100)
    assert lr.get_lr() == pytest.approx(1.0 - 100 / 400)
    resumed = scheduler(warmup_iters=2, decay_tokens=500)
    resumed.load_state_dict(lr.state_dict())
    assert resumed.get_lr() == lr.get_lr() and resumed.warmup_end_tokens == 100


CURRICULUM = {
    "enabled": True,
    "curriculum_type": "seqlen",
    "min_difficulty": 8,
    "max_difficulty": 32,
    "schedule_type": "fixed_linear",
    "schedule_config": {"total_curriculum_step": 4, "difficulty_step": 8},
}
LENGTHS = [8, 16, 24, 32, 32, 32]  # tiny_model_flags: --seq-length 32


def expected_learning_rates() -> list[float]:
    """--lr 1e-3 --min-lr 1e-4 cosine, --lr-warmup-iters 2, --lr-decay-tokens 1000, 8 samples per step."""
    rates, tokens = [], 0
    for iteration, length in enumerate(LENGTHS, start=1):
        tokens += 8 * length
        if iteration <= 2:
            rates.append(1e-3 * iteration / 2)
            continue
        warmup_end = 8 * (LENGTHS[0] + LENGTHS[1])
        progress = (tokens - warmup_end) / (1000 - warmup_end)
        rates.append(1e-4 if tokens > 1000 else 1e-4 + 0.5 * (math.cos(math.pi * progress) + 1) * 9e-4)
    return rates


def curriculum_flags(gpt_data_prefix, tmp_path) -> list[str]:
    ds = tmp_path / "ds_curriculum.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 0}, "curriculum_learning": CURRICULUM}))
    return tiny_model_flags(gpt_data_prefix) + [
        "--deepspeed_config", str(ds), "--lr-decay-tokens", "1000", "--eval-interval", "3",
    ]  # fmt: skip


@pytest.mark.slow
def test_each_step_runs_at_the_scheduled_length_with_a_token_lr_schedule(gpt_data_prefix, tmp_path):
    save = tmp_path / "ckpt"
    flags = curriculum_flags(gpt_data_prefix, tmp_path) + ["--save", str(save), "--save-interval", "3"]
    whole = run_pretrain(flags, launcher="python").check()
    seqlens = {int(it): int(length) for it, length in SEQLEN_PATTERN.findall(whole.stdout)}
    assert seqlens == dict(enumerate(LENGTHS, start=1))
    rates = {int(it): float(rate) for it, rate in LR_PATTERN.findall(whole.stdout)}
    assert [rates[it] for it in range(1, 7)] == pytest.approx(expected_learning_rates(), rel=1e-6)
    assert "validation loss at iteration 3" in whole.stdout  # evaluation runs at the full length

    # Resumed from iteration 3, the schedule and the token count carry on exactly.
    (save / "latest").write_text("global_step3")
    resumed = run_pretrain(
        curriculum_flags(gpt_data_prefix, tmp_path) + ["--load", str(save)], launcher="python"
    ).check()
    assert resumed.losses == {it: loss for it, loss in whole.losses.items() if it > 3}
    assert {int(it): float(rate) for it, rate in LR_PATTERN.findall(resumed.stdout)} == {
        it: rate for it, rate in rates.items() if it > 3
    }


@pytest.mark.slow
def test_curriculum_under_pipeline_parallelism_matches_one_process(gpt_data_prefix, tmp_path):
    """The pipeline engine's inter-stage buffers are reshaped whenever the length changes (and around
    evaluation, which runs at the full length)."""
    flags = curriculum_flags(gpt_data_prefix, tmp_path)
    single = run_pretrain(flags, launcher="python").check()
    pipeline = run_pretrain(flags + ["--pipeline-model-parallel-size", "2"], nproc=2).check()
    assert sorted(pipeline.losses) == list(range(1, 7))
    for iteration, loss in single.losses.items():
        assert pipeline.losses[iteration] == pytest.approx(loss, rel=2e-5), iteration
