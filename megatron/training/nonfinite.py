"""Non-finite losses and gradients: the rule that stops a diverged run, and the guard that keeps non-finite
weights out of every checkpoint.

An iteration is non-finite when its loss is NaN or inf, its gradient norm is, or its update was skipped.
Under fp16 with a dynamic loss scale, DeepSpeed skips the update and reports an infinite norm whenever the
scaled gradients overflow, and then lowers the scale: at the start of every healthy fp16 run (Megatron's
initial scale is 2**32) and now and then later. Those skips count only once the scale is at
--min-loss-scale, where it cannot come down any further; a non-finite loss always counts. fp32 and bf16 run
unscaled, so there a skipped update means non-finite gradients.

The rule costs the step no host sync: each iteration appends its verdict (a few flags) on the device, and
they are read, all-reduced over every rank, at the points where the loop reads the host anyway: each
--log-interval, before each checkpoint save and at the end. Every rank judges the same reduced flags, so
all stop at once, and a stop found before a save happens instead of the save. A stop can therefore be
reported up to --log-interval - 1 iterations after the iteration that reached the limit (the message names
both); reading every iteration instead would make each step wait for the device.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from megatron.config.schema import Config
from megatron.training.interval_log import loss_scale
from megatron.training.step import StepResult

logger = logging.getLogger("megatron")

# What ``run_cli`` returns for a run stopped here (2 is bad input).
EXIT_STATUS = 3

# One column per reason, in the order the stop message names them.
REASONS = ("the lm loss is NaN or inf", "the gradient norm is NaN or inf", "the update was skipped")
_LOSS, _GRAD_NORM, _SKIPPED = range(len(REASONS))
_RESUME = "Lower --lr (or --clip-grad) and resume from the last checkpoint with --load"
_FIX = (
    f"{_RESUME}, or pass --max-consecutive-nonfinite-iterations N to tolerate more "
    "(--no-check-for-nan-in-loss-and-grad turns the check off)."
)


class NonFiniteError(RuntimeError):
    """The run stopped on non-finite values; ``run_cli`` prints it as one line and exits with status 3."""


@dataclass
class ConsecutiveCount:
    """Counts consecutive non-finite iterations over all the checks of a run (a run of them can span two
    log intervals). Pure host logic, fed with the flags every rank agreed on."""

    limit: int
    run: int = 0
    reasons: tuple[str, ...] = REASONS

    def update(
        self, iterations: Iterable[int], flags: Iterable[Iterable[bool]]
    ) -> tuple[int, list[str]] | None:
        """``flags``: one row per iteration, one column per entry of :data:`REASONS`. Returns the iteration
        at which the run of non-finite iterations reached ``limit`` and what was non-finite there, or None."""
        for iteration, row in zip(iterations, flags, strict=True):
            reasons = [reason for reason, flag in zip(self.reasons, row, strict=True) if flag]
            self.run = self.run + 1 if reasons else 0
            if self.run >= self.limit:
                return iteration, reasons
        return None


def stop_message(iteration: int, reasons: list[str], run: int, limit: int, current: int) -> str:
    found = "" if current == iteration else f" (found at iteration {current})"
    return (
        f"non-finite training at iteration {iteration}{found}: {'; '.join(reasons)}. {run} consecutive "
        f"non-finite iteration(s) reach --max-consecutive-nonfinite-iterations {limit}: stopped without "
        f"saving a checkpoint (the last saved one stays the newest). {_FIX}"
    )


class NonFiniteMonitor:
    """--check-for-nan-in-loss-and-grad: :meth:`observe` each iteration, :meth:`check` where the loop
    already syncs; a no-op when the check is off."""

    def __init__(self, config: Config, engine, device: torch.device):
        self.enabled = config.nonfinite.check
        self.device = device
        self.engine = engine
        precision = config.precision
        self.min_scale = precision.min_loss_scale if precision.fp16 and precision.loss_scale is None else None
        reasons = REASONS
        if self.min_scale is not None:
            reasons = (
                *REASONS[:_SKIPPED],
                f"the update was skipped at --min-loss-scale {self.min_scale:.10g}",
            )
        self.count = ConsecutiveCount(config.nonfinite.max_consecutive, reasons=reasons)
        # The fp16 loss scale before the coming step (a host float in DeepSpeed's scalers; read only then).
        self._scale = loss_scale(engine.optimizer) if self.min_scale is not None else None
        self._iterations: list[int] = []
        self._flags: list[torch.Tensor] = []
        if self.enabled and self.min_scale is not None:
            self._leave_the_minimum_scale_to_the_rule()

    def _leave_the_minimum_scale_to_the_rule(self) -> None:
        """DeepSpeed's dynamic loss scaler raises a bare Exception on an overflow at its minimum scale (a
        traceback, whatever the tolerance); with this rule on it keeps skipping there instead, and the
        rule counts those skips and stops the run cleanly."""
        scaler = getattr(self.engine.optimizer, "loss_scaler", None)
        if scaler is not None and hasattr(scaler, "raise_error_at_min_scale"):
            scaler.raise_error_at_min_scale = False

    def observe(self, result: StepResult, iteration: int) -> None:
        """Queue this iteration's verdict on the device (no host sync)."""
        if not self.enabled:
            return
        overflow_is_routine = False
        if self.min_scale is not None:
            scale_before, self._scale = self._scale, loss_scale(self.engine.optimizer)
            overflow_is_routine = scale_before > self.min_scale
        loss_bad = ~torch.isfinite(result.loss.detach().float())
        zero = torch.zeros((), dtype=torch.bool, device=self.device)
        grad_bad, skipped = zero, zero
        if not overflow_is_routine:
            grad_bad = _not_finite(result.grad_norm, self.device)
            skipped = zero if result.update_applied else ~zero
        self._flags.append(torch.stack([loss_bad.reshape(()), grad_bad, skipped]))
        self._iterations.append(iteration)

    def check(self, current: int) -> None:
        """Judge the iterations observed since the last check; every rank raises :class:`NonFiniteError`
        together when the consecutive limit was reached. ``current``: the loop's iteration now."""
        if not self._flags:
            return
        flags = torch.stack(self._flags).float()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        iterations = self._iterations
        self._flags, self._iterations = [], []
        stop = self.count.update(iterations, (flags > 0).tolist())
        if stop is not None:
            iteration, reasons = stop
            raise NonFiniteError(stop_message(iteration, reasons, self.count.run, self.count.limit, current))


def _not_finite(value: float | torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Whether a gradient norm (a tensor, a float, or None when none was measured) is non-finite, as a flag
    on ``device``: with ZeRO-Offload DeepSpeed computes the norm on the CPU while the loss is on the GPU."""
    if value is None:
        return torch.zeros((), dtype=torch.bool, device=device)
    if torch.is_tensor(value):
        return ~torch.isfinite(value.detach().float().reshape(()).to(device, non_blocking=True))
    return torch.full((), not math.isfinite(value), dtype=torch.bool, device=device)


def first_nonfinite_parameter(module: nn.Module) -> str | None:
    """The name of this rank's first parameter holding a NaN or inf, or None. Under ZeRO-3 a parameter's
    own tensor is empty and its values live in its partition (``ds_tensor``), which is checked instead."""
    names, finite = [], []
    for name, param in module.named_parameters():
        values = getattr(param, "ds_tensor", None)
        values = param if values is None else values
        if values.numel():
            names.append(name)
            finite.append(torch.isfinite(values.detach()).all())
    if not finite:
        return None
    flags = torch.stack(finite).tolist()
    return next((name for name, ok in zip(names, flags, strict=True) if not ok), None)


def ensure_finite_weights(module: nn.Module, device: torch.device, iteration: int) -> None:
    """Refuse to save weights holding a NaN or inf, on every rank (one all-reduce of a flag), so that the
    newest checkpoint stays the last finite one. Raised as :class:`NonFiniteError` (exit status 3)."""
    name = first_nonfinite_parameter(module)
    flag = torch.tensor([0.0 if name is None else 1.0], device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() > 0:
        where = name if name is not None else "a parameter on another rank"
        raise NonFiniteError(
            f"refusing to save the checkpoint at iteration {iteration}: {where} holds NaN or inf values; "
            f"nothing was written (the last saved checkpoint is the newest). {_RESUME}."
        )
