"""Non-finite losses and gradients: NaN logged as nan (never 0), the consecutive-iterations stop rule and
its fp16 loss-scale exception, and the guard that keeps non-finite weights out of checkpoints; the rule
and the guard in-process, then real pretrain_gpt.py runs that diverge in bf16, fp32 and fp16."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from deepspeed.accelerator import get_accelerator

from megatron.training.interval_log import LogWindow
from megatron.training.metrics import format_log_line
from megatron.training.nonfinite import (
    EXIT_STATUS,
    REASONS,
    ConsecutiveCount,
    NonFiniteError,
    NonFiniteMonitor,
    ensure_finite_weights,
)
from megatron.training.step import StepResult
from tests.config.recipe import build
from tests.launch import run_pretrain, tiny_model_flags, write_ds_config

INF, NAN = float("inf"), float("nan")
LOSS, GRAD_NORM, SKIPPED = REASONS


def step(loss: float, grad_norm: float | None = 1.0, applied: bool = True) -> StepResult:
    return StepResult(torch.tensor(loss), grad_norm, applied)


def test_a_run_of_nonfinite_iterations_spans_checks_and_a_finite_one_ends_it():
    count = ConsecutiveCount(limit=3)
    assert count.update([1, 2], [[False] * 3, [True, False, False]]) is None
    assert count.update([3], [[False, True, True]]) is None  # two in a row, across two checks
    assert count.update([4, 5], [[False] * 3, [True, False, False]]) is None  # 4 was finite: one now
    assert count.update([6, 7, 8], [[True, True, True], [False, True, False], [False] * 3]) == (
        7,
        [GRAD_NORM],
    )
    assert count.run == 3


class FakeEngine:
    """What the monitor reads of DeepSpeed's engine: the fp16 optimizer's loss scale and its scaler."""

    def __init__(self, scale: float):
        self.optimizer = SimpleNamespace(
            loss_scale=scale, loss_scaler=SimpleNamespace(raise_error_at_min_scale=True)
        )


def monitor_for(config, scale: float = 1.0) -> tuple[NonFiniteMonitor, FakeEngine]:
    engine = FakeEngine(scale)
    return NonFiniteMonitor(config, engine, torch.device("cpu")), engine


def test_unscaled_precisions_stop_at_a_skipped_update_or_a_nan_loss(tmp_path):
    fp16 = build(tmp_path)
    bf16 = dataclasses.replace(fp16, precision=dataclasses.replace(fp16.precision, fp16=False, bf16=True))
    monitor, _ = monitor_for(bf16)
    monitor.observe(step(9.0), 1)
    monitor.check(1)
    monitor.observe(step(1e12, INF, applied=False), 2)
    with pytest.raises(NonFiniteError, match=f"iteration 2: {GRAD_NORM}; {SKIPPED}. 1 consecutive"):
        monitor.check(2)
    monitor.observe(step(NAN, None), 3)
    monitor.observe(step(9.0), 4)
    with pytest.raises(NonFiniteError, match=rf"iteration 3 \(found at iteration 4\): {LOSS}\."):
        monitor.check(4)
    tolerant = dataclasses.replace(bf16, nonfinite=dataclasses.replace(bf16.nonfinite, max_consecutive=2))
    monitor, _ = monitor_for(tolerant)
    for iteration in (1, 2):  # one bad iteration between good ones, twice: never two in a row
        monitor.observe(step(NAN, NAN), 2 * iteration - 1)
        monitor.observe(step(9.0), 2 * iteration)
        monitor.check(2 * iteration)
    unchecked = dataclasses.replace(bf16, nonfinite=dataclasses.replace(bf16.nonfinite, check=False))
    monitor, _ = monitor_for(unchecked)
    monitor.observe(step(NAN, NAN, applied=False), 1)
    monitor.check(1)


def test_a_gradient_norm_on_another_device_than_the_loss_is_judged_on_the_loss_device(tmp_path):
    """ZeRO-Offload computes the gradient norm on the CPU while the loss is on the GPU (found on an H200:
    the first iteration failed); the meta device stands in for the GPU here."""
    bf16 = build(tmp_path)
    bf16 = dataclasses.replace(bf16, precision=dataclasses.replace(bf16.precision, fp16=False, bf16=True))
    monitor = NonFiniteMonitor(bf16, FakeEngine(1.0), torch.device("meta"))
    monitor.observe(StepResult(torch.tensor(2.0, device="meta"), torch.tensor(INF), True), 1)
    assert monitor._flags[0].device.type == "meta"


def test_fp16_overflow_skips_count_only_once_the_loss_scale_is_at_its_minimum(tmp_path):
    config = build(tmp_path)  # fp16, dynamic loss scale, --min-loss-scale 1, stop at the first
    assert config.precision.fp16 and config.precision.min_loss_scale == 1
    monitor, engine = monitor_for(config, scale=2.0**32)
    assert engine.optimizer.loss_scaler.raise_error_at_min_scale is False  # the rule decides instead
    for iteration in range(1, 33):  # 32 overflow skips halve 2**32 down to 1: routine
        engine.optimizer.loss_scale /= 2
        monitor.observe(step(9.0, INF, applied=False), iteration)
    monitor.check(32)
    monitor.observe(step(9.0, INF, applied=False), 33)  # at the minimum: nothing left to lower
    with pytest.raises(
        NonFiniteError, match=f"iteration 33: {GRAD_NORM}; the update was skipped at --min-loss-scale 1\\."
    ):
        monitor.check(33)
    monitor, engine = monitor_for(config, scale=2.0**16)
    engine.optimizer.loss_scale = 2.0**15
    monitor.observe(step(NAN, INF, applied=False), 1)  # a NaN loss is never the loss scale's doing
    with pytest.raises(NonFiniteError, match=f"iteration 1: {LOSS}\\."):
        monitor.check(1)


def test_the_interval_loss_is_the_mean_of_its_finite_losses_and_nan_when_none_is_finite():
    window = LogWindow(torch.device("cpu"))
    for loss in (2.0, NAN, 4.0, INF):
        window.add(step(loss), global_batch=8, tokens=256)
    assert window.reduced_losses() == (3.0, 2)
    window = LogWindow(torch.device("cpu"))
    window.add(step(NAN), global_batch=8, tokens=256)
    loss, nonfinite = window.reduced_losses()
    assert math.isnan(loss) and nonfinite == 1
    line = format_log_line({"lm loss": loss, "grad norm": INF, "loss scale": 1.0})
    assert line == "lm loss: nan | grad norm: inf | loss scale: 1.000 |"


def test_weights_holding_nan_or_inf_are_refused_by_name():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    ensure_finite_weights(model, torch.device("cpu"), iteration=7)
    with torch.no_grad():
        model[1].weight[0, 1] = NAN
    with pytest.raises(
        NonFiniteError, match="refusing to save the checkpoint at iteration 7: 1.weight holds"
    ):
        ensure_finite_weights(model, torch.device("cpu"), iteration=7)
    partitioned = torch.nn.Linear(4, 4)  # ZeRO-3: the parameter is empty, its values live in ds_tensor
    partitioned.weight.data = torch.empty(0)
    partitioned.weight.ds_tensor = torch.tensor([1.0, INF])
    with pytest.raises(NonFiniteError, match="weight holds NaN or inf"):
        ensure_finite_weights(partitioned, torch.device("cpu"), iteration=1)


# Real runs. The iteration at which each one stops is read from its own log, not assumed.

SKIPS = re.compile(r"iteration\s+(\d+)/.*?number of skipped iterations:\s+(\d+) \|")
SCALES = re.compile(r"iteration\s+(\d+)/.*?loss scale: (\S+) \|")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def saved_steps(save_dir: Path) -> list[int]:
    return sorted(int(path.name.removeprefix("global_step")) for path in save_dir.glob("global_step*"))


def diverging_run(data_prefix: str, tmp_path: Path, train_iters: int, zero_stage: int, *extra: str):
    flags = tiny_model_flags(data_prefix, train_iters) + [
        "--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", zero_stage)), *extra,
    ]  # fmt: skip
    return run_pretrain(flags, launcher="python")


@pytest.mark.slow
def test_bf16_nan_loss_is_logged_as_nan_and_stops_the_run_without_saving(gpt_data_prefix, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    save, tensorboard = tmp_path / "checkpoints", tmp_path / "tb"
    result = diverging_run(
        gpt_data_prefix, tmp_path, 10, 1, "--bf16", "--lr", "1e6", "--min-lr", "1e2",
        "--save", str(save), "--save-interval", "2", "--tensorboard-dir", str(tensorboard),
    )  # fmt: skip
    assert result.returncode == EXIT_STATUS, result.stderr[-3000:]
    nan_iterations = [it for it, loss in result.loss_strings.items() if loss == "nan"]
    assert nan_iterations, result.stdout[-3000:]
    stop = nan_iterations[0]
    assert max(result.losses) == stop  # the default tolerance: the first non-finite iteration stops it
    assert "0.000000E+00" not in result.stdout
    assert re.search(rf"iteration\s+{stop}/.*\| number of nan iterations:\s+1 \|", result.stdout)
    (error,) = error_lines(result.stderr)
    assert f"non-finite training at iteration {stop}: {LOSS}" in error
    assert "Traceback" not in result.stderr
    # Saved every 2 iterations until the stop, and nothing at or after it.
    assert saved_steps(save) == list(range(2, stop, 2))
    assert (save / "latest").read_text().strip() == f"global_step{saved_steps(save)[-1]}"
    events = EventAccumulator(str(tensorboard))
    events.Reload()
    by_step = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in ("lm loss", "nan iterations")}
    assert math.isnan(by_step["lm loss"][stop]) and by_step["nan iterations"][stop] == 1.0
    assert all(by_step["nan iterations"][it] == 0.0 for it in range(1, stop))
    skipped = {e.step: e.value for e in events.Scalars("skipped iterations")}
    assert skipped == {it: float(n) for it, n in map(lambda m: map(int, m), SKIPS.findall(result.stdout))}


@pytest.mark.slow
def test_fp32_divergence_with_every_update_skipped_stops_at_the_tolerance(gpt_data_prefix, tmp_path):
    """The loss explodes but stays finite; from some iteration on the gradient norm is infinite and
    DeepSpeed's ZeRO optimizer skips every update: the third such iteration in a row stops the run."""
    result = diverging_run(
        gpt_data_prefix, tmp_path, 14, 1, "--lr", "1e3", "--min-lr", "1e2",
        "--max-consecutive-nonfinite-iterations", "3",
    )  # fmt: skip
    assert result.returncode == EXIT_STATUS, result.stderr[-3000:]
    skipped = {int(it): int(n) for it, n in SKIPS.findall(result.stdout)}
    first_skip = min(it for it, n in skipped.items() if n)
    assert all(math.isfinite(loss) for loss in result.losses.values())
    assert result.losses[first_skip] > 1e6  # diverged, not a NaN
    assert max(skipped) == first_skip + 2 and all(skipped[first_skip + k] for k in range(3))
    (error,) = error_lines(result.stderr)
    assert f"iteration {first_skip + 2}: {GRAD_NORM}; {SKIPPED}. 3 consecutive" in error


FP16 = pytest.mark.skipif(
    not get_accelerator().is_fp16_supported(),
    reason="PyTorch has no fp16 kernels for this CPU (oneDNN needs AVX512-FP16 or AMX), so DeepSpeed refuses "
    "fp16 here",
)


@pytest.mark.slow
@FP16
def test_fp16_keeps_training_through_the_loss_scale_search(gpt_data_prefix, tmp_path):
    """Megatron's initial scale 2**32 overflows for several iterations in a row while DeepSpeed lowers it;
    the check, on by default and stopping at the first non-finite iteration, lets those pass."""
    result = diverging_run(gpt_data_prefix, tmp_path, 12, 1, "--fp16").check()
    skipped = [int(n) for _, n in SKIPS.findall(result.stdout)]
    longest = max(len(run) for run in "".join(map(str, skipped)).split("0"))
    assert longest >= 2, skipped
    assert all(math.isfinite(loss) for loss in result.losses.values())


@pytest.mark.slow
@FP16
def test_fp16_overflowing_at_the_minimum_loss_scale_stops_cleanly(gpt_data_prefix, tmp_path):
    """With --min-loss-scale 2**30 every scaled gradient overflows: once the scale is at its minimum the
    next skip stops the run (status 3, one line), where DeepSpeed alone would raise a bare Exception."""
    minimum = 2**30
    result = diverging_run(
        gpt_data_prefix, tmp_path, 10, 1, "--fp16", "--min-loss-scale", str(minimum), "--hysteresis", "1"
    )
    assert result.returncode == EXIT_STATUS, result.stderr[-3000:]
    at_minimum = min(int(it) for it, scale in SCALES.findall(result.stdout) if float(scale) == minimum)
    (error,) = error_lines(result.stderr)
    assert (
        f"iteration {at_minimum + 1}: {GRAD_NORM}; the update was skipped at --min-loss-scale {minimum}."
        in error
    )
    assert all(math.isfinite(loss) for loss in result.losses.values())
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_save_of_nan_weights_is_refused_and_the_last_checkpoint_stays_the_newest(gpt_data_prefix, tmp_path):
    """With the check off, fp32 without ZeRO applies an update with a NaN gradient norm and the weights
    turn NaN: the next save is refused (status 3) and writes nothing."""
    save = tmp_path / "checkpoints"
    result = diverging_run(
        gpt_data_prefix, tmp_path, 16, 0, "--lr", "1e3", "--min-lr", "1e2",
        "--no-check-for-nan-in-loss-and-grad", "--save", str(save), "--save-interval", "4",
    )  # fmt: skip
    assert result.returncode == EXIT_STATUS, result.stderr[-3000:]
    (error,) = error_lines(result.stderr)
    refused = int(re.search(r"refusing to save the checkpoint at iteration (\d+): ", error).group(1))
    assert refused % 4 == 0 and result.loss_strings[refused] == "nan"
    assert saved_steps(save) == list(range(4, refused, 4))
    assert (save / "latest").read_text().strip() == f"global_step{refused - 4}"
