"""How both our benchmark and the peer probe time a training step, so that their figures compare."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import torch

Result = TypeVar("Result")


def median_step_seconds(step: Callable[[], Result], warmup: int, iterations: int) -> tuple[float, Result]:
    """The median wall time of ``iterations`` calls of ``step`` after ``warmup`` untimed ones, each call
    between two device synchronisations (as the peers time theirs; none on a CPU), and what the last call
    returned."""
    times = []
    synchronize = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    for _ in range(warmup + iterations):
        synchronize()
        start = time.perf_counter()
        result = step()
        synchronize()
        times.append(time.perf_counter() - start)
    timed = sorted(times[warmup:])
    return timed[len(timed) // 2], result
