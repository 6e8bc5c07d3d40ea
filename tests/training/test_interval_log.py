"""The parts behind Megatron-DeepSpeed's optional tensorboard scalars: step timers at --timing-log-level, the
writer's queue and tags, and the optimizer-state norms against torch's own norms."""

from __future__ import annotations

import time

import pytest
import torch

from megatron.parallel.context import ParallelContext
from megatron.training.metrics import MetricsWriter
from megatron.training.optimizer_states import optimizer_state_norms
from megatron.training.timers import StepTimers
from tests.config.recipe import build


def test_timers_run_only_at_their_level():
    timers = StepTimers(1, torch.device("cpu"))
    for _ in range(2):
        with timers.measure("forward-backward"):
            with timers.measure("batch-generator"):  # level 2: not timed at level 1
                time.sleep(0.01)
        with timers.measure("optimizer"):
            pass
    times = timers.interval_times(iterations=2)
    assert set(times) == {"forward-backward", "optimizer"}
    assert times["forward-backward"] >= 0.01 and times["optimizer"] < times["forward-backward"]
    assert timers.interval_times(iterations=1) == {"forward-backward": 0.0, "optimizer": 0.0}
    assert StepTimers(0, torch.device("cpu")).interval_times(1) == {}
    assert set(StepTimers(2, torch.device("cpu")).elapsed) == {
        "forward-backward", "optimizer", "batch-generator", "forward-compute", "backward-compute"
    }  # fmt: skip


class RecordingSummaryWriter:
    """Stands in for torch's SummaryWriter: what the writer was built with and what it was given."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        pass


def test_writer_takes_the_queue_size_and_megatron_deepspeeds_axes(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.utils.tensorboard.SummaryWriter", RecordingSummaryWriter)
    changes = {"--tensorboard-dir": str(tmp_path / "tb"), "--tensorboard-queue-size": "7"}
    writer = MetricsWriter(build(tmp_path, changes), is_main=True)
    tensorboard = writer._tensorboard
    assert tensorboard.kwargs == {"log_dir": str(tmp_path / "tb"), "max_queue": 7}
    writer.tensorboard("batch-size/batch-size", 8.0, 3, samples=24, tokens=768)
    writer.tensorboard("mem-allocated-bytes", 1.0, 3)
    assert tensorboard.scalars == [
        ("batch-size/batch-size", 8.0, 3),
        ("batch-size/batch-size vs samples", 8.0, 24),
        ("batch-size/batch-size vs tokens", 8.0, 768),
        ("mem-allocated-bytes", 1.0, 3),
    ]
    assert MetricsWriter(build(tmp_path, changes), is_main=False)._tensorboard is None


class Wrapped:
    """Like DeepSpeed's ZeRO and mixed-precision optimizers, which keep the torch optimizer inside."""

    def __init__(self, optimizer):
        self.optimizer = optimizer


def test_optimizer_state_norms_are_those_of_adams_moments_and_the_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    idle = torch.nn.Parameter(torch.ones(4))  # in the optimizer, never updated: no moments yet
    optimizer = torch.optim.AdamW([{"params": model.parameters()}, {"params": [idle]}], lr=0.1)
    for _ in range(2):
        model(torch.randn(4, 6)).square().sum().backward()
        optimizer.step()
    stats = optimizer_state_norms(Wrapped(optimizer), ParallelContext.single(), 0, torch.device("cpu"))
    params = list(model.parameters())
    flat = {
        "variance": torch.cat([optimizer.state[p]["exp_avg_sq"].flatten() for p in params]).double(),
        "momentum": torch.cat([optimizer.state[p]["exp_avg"].flatten() for p in params]).double(),
        "weight": torch.cat([p.detach().flatten() for p in params]).double(),
    }
    flat["variance_sqrt"] = flat["variance"].sqrt()
    assert set(stats) == {f"{name}_{kind}" for name in flat for kind in ("l2", "l1", "abs_max")}
    for name, values in flat.items():
        assert stats[f"{name}_l2"] == pytest.approx(values.norm().item(), rel=1e-12)
        assert stats[f"{name}_l1"] == pytest.approx(values.abs().sum().item(), rel=1e-12)
        assert stats[f"{name}_abs_max"] == pytest.approx(values.abs().max().item(), rel=1e-12)
