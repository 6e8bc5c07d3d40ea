"""Megatron's learning-rate schedule: linear warmup from 0, then linear/cosine decay to ``min_lr``.

Progress is counted in samples in both of Megatron's modes (iteration lengths are multiplied by the global
batch size), so that a batch-size ramp-up moves through the schedule by the samples it actually consumed.
With Megatron-DeepSpeed's ``--lr-warmup-tokens`` / ``--lr-decay-tokens`` that phase counts consumed tokens
instead; a token decay after a sample warmup starts from the tokens consumed when the warmup ended.
"""

from __future__ import annotations

import logging
import math

from megatron.config.errors import ConfigError
from megatron.config.schema import LRScheduleConfig, SchedulerSource

logger = logging.getLogger(__name__)

# The schedule's settings a checkpoint carries, with the flags that set them (lengths are in samples, as
# Megatron-DeepSpeed's OptimizerParamScheduler counts them, and in tokens).
_SETTINGS = {
    "max_lr": "--lr",
    "min_lr": "--min-lr",
    "decay_style": "--lr-decay-style",
    "warmup_samples": "--lr-warmup-iters/-samples/-fraction (in samples)",
    "decay_samples": "--lr-decay-iters/-samples (in samples)",
    "warmup_tokens": "--lr-warmup-tokens",
    "decay_tokens": "--lr-decay-tokens",
}


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
        self.warmup_tokens = schedule.warmup_tokens
        self.decay_tokens = schedule.decay_tokens
        self.num_samples = 0
        self.num_tokens = 0
        # Where a token decay starts after a sample warmup: the tokens consumed when the warmup ended.
        self.warmup_end_tokens = 0 if self.warmup_samples == 0 else None
        self._apply()

    def lr_at(self, num_samples: int, num_tokens: int = 0) -> float:
        if self.warmup_tokens is not None:
            if self.warmup_tokens > 0 and num_tokens <= self.warmup_tokens:
                return self.max_lr * num_tokens / self.warmup_tokens
        elif self.warmup_samples > 0 and num_samples <= self.warmup_samples:
            return self.max_lr * num_samples / self.warmup_samples
        if self.decay_style == "constant":
            return self.max_lr
        if self.decay_tokens is not None:
            start = self.warmup_tokens if self.warmup_tokens is not None else self.warmup_end_tokens or 0
            if num_tokens > self.decay_tokens:
                return self.min_lr
            progress = (num_tokens - start) / max(1, self.decay_tokens - start)
        elif num_samples > self.decay_samples:
            return self.min_lr
        else:
            progress = (num_samples - self.warmup_samples) / max(1, self.decay_samples - self.warmup_samples)
        if self.decay_style == "linear":
            coefficient = 1.0 - progress
        else:
            coefficient = 0.5 * (math.cos(math.pi * progress) + 1.0)
        return self.min_lr + coefficient * (self.max_lr - self.min_lr)

    def step(self, increment: int, tokens: int = 0) -> None:
        """After an applied update that consumed ``increment`` samples holding ``tokens`` tokens."""
        self.num_samples += increment
        self.num_tokens += tokens
        if self.warmup_end_tokens is None and self.num_samples >= self.warmup_samples:
            self.warmup_end_tokens = self.num_tokens
        self._apply()

    def get_lr(self) -> float:
        return self.lr_at(self.num_samples, self.num_tokens)

    def _apply(self) -> None:
        lr = self.get_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict:
        return {
            "num_samples": self.num_samples,
            "num_tokens": self.num_tokens,
            "warmup_end_tokens": self.warmup_end_tokens,
            **{name: getattr(self, name) for name in _SETTINGS},
        }

    def load_state_dict(self, state: dict, source: SchedulerSource = "match") -> None:
        """Progress from ``state``; its settings replace this schedule's with ``source`` "checkpoint",
        are ignored with "flags", and must equal them with "match" (checkpoints written before a setting
        was saved are not checked for it)."""
        saved = {name: state[name] for name in _SETTINGS if name in state}
        differing = {name: value for name, value in saved.items() if value != getattr(self, name)}
        if source == "match" and differing:
            listed = "; ".join(
                f"{_SETTINGS[name]}: {value} (checkpoint) vs {getattr(self, name)} (flags)"
                for name, value in differing.items()
            )
            raise ConfigError(
                f"--load: the checkpoint's LR schedule differs from the flags': {listed}. Add "
                "--override-opt_param-scheduler to use the flags' settings, or "
                "--use-checkpoint-opt_param-scheduler to keep the checkpoint's."
            )
        if source == "checkpoint":
            for name, value in saved.items():
                setattr(self, name, value)
        if differing:
            winner = "checkpoint's" if source == "checkpoint" else "flags'"
            logger.info(
                "LR schedule: the %s settings where the two differ (%s)",
                winner,
                ", ".join(_SETTINGS[name] for name in differing),
            )
        self.num_samples = int(state["num_samples"])
        self.num_tokens = int(state.get("num_tokens", 0))
        self.warmup_end_tokens = state.get("warmup_end_tokens", self.warmup_end_tokens)
        self._apply()
