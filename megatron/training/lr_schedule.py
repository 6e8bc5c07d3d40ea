"""Megatron's learning-rate schedule: linear warmup from 0, then linear/cosine decay to ``min_lr``.

Progress is counted in samples in both of Megatron's modes (iteration lengths are multiplied by the global
batch size), so that a batch-size ramp-up moves through the schedule by the samples it actually consumed.
"""

from __future__ import annotations

import math

from megatron.config.schema import LRScheduleConfig


class LRScheduler:
    """Sets ``lr`` on every param group of ``optimizer`` from the samples consumed so far."""

    def __init__(self, optimizer, max_lr: float, schedule: LRScheduleConfig, global_batch_size: int):
        self.optimizer = optimizer
        self.max_lr = max_lr
        self.min_lr = schedule.min_lr
        self.decay_style = schedule.decay_style
        if schedule.decay_iters is not None:
            self.warmup_samples = schedule.warmup_iters * global_batch_size
            self.decay_samples = schedule.decay_iters * global_batch_size
        else:
            assert schedule.decay_samples is not None, "validated config sets decay_iters or decay_samples"
            self.warmup_samples = schedule.warmup_samples
            self.decay_samples = schedule.decay_samples
        self.num_samples = 0
        self._apply()

    def lr_at(self, num_samples: int) -> float:
        if self.warmup_samples > 0 and num_samples <= self.warmup_samples:
            return self.max_lr * num_samples / self.warmup_samples
        if self.decay_style == "constant":
            return self.max_lr
        if num_samples > self.decay_samples:
            return self.min_lr
        progress = (num_samples - self.warmup_samples) / max(1, self.decay_samples - self.warmup_samples)
        if self.decay_style == "linear":
            coefficient = 1.0 - progress
        else:
            coefficient = 0.5 * (math.cos(math.pi * progress) + 1.0)
        return self.min_lr + coefficient * (self.max_lr - self.min_lr)

    def step(self, increment: int) -> None:
        self.num_samples += increment
        self._apply()

    def get_lr(self) -> float:
        return self.lr_at(self.num_samples)

    def _apply(self) -> None:
        lr = self.get_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict:
        return {"num_samples": self.num_samples, "max_lr": self.max_lr, "min_lr": self.min_lr}

    def load_state_dict(self, state: dict) -> None:
        self.num_samples = int(state["num_samples"])
        self._apply()
