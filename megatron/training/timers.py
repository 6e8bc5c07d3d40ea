"""Timers for the parts of a training step, at Megatron's --timing-log-level.

Timing a part means waiting for the device before and after it, which the step otherwise never does; so a
timer runs only when its level is within --timing-log-level, as in Megatron-DeepSpeed: level 1 for what
happens once per iteration (forward-backward, optimizer), level 2 for what happens once per micro batch
(batch-generator, forward-compute, backward-compute). Names are Megatron-DeepSpeed's, so its tensorboard
tags (``forward-backward-time``, ...) read the same.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

# Megatron-DeepSpeed's timers that this step has, each with its level, in the order they are logged.
TIMER_LEVELS = {
    "forward-backward": 1,
    "optimizer": 1,
    "batch-generator": 2,
    "forward-compute": 2,
    "backward-compute": 2,
}


class StepTimers:
    """Seconds spent in each timed part since the last :meth:`interval_times`, on this rank."""

    def __init__(self, level: int, device: torch.device):
        self.level = level
        self.device = device
        self.elapsed = {name: 0.0 for name, needed in TIMER_LEVELS.items() if needed <= level}

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        """Add the block's time to ``name``; nothing (not even a sync) when its level is not logged."""
        if name not in self.elapsed:
            yield
            return
        self._synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._synchronize()
            self.elapsed[name] += time.perf_counter() - start

    def interval_times(self, iterations: int) -> dict[str, float]:
        """Seconds per iteration of each timer over the interval, the largest over all ranks (the slowest
        rank sets the pace, as in Megatron-DeepSpeed's tensorboard timers), then restart. Every rank calls
        it: the maximum is a collective."""
        if not self.elapsed:
            return {}
        values = torch.tensor(list(self.elapsed.values()), dtype=torch.float64, device=self.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
        per_iteration = values / max(1, iterations)
        times = dict(zip(self.elapsed, per_iteration.tolist()))
        self.elapsed = dict.fromkeys(self.elapsed, 0.0)
        return times

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
