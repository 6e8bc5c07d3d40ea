"""What the loop reports every --log-interval: the log line, its scalars, and Megatron-DeepSpeed's optional
tensorboard scalars (--log-timers-to-tensorboard, --log-batch-size-to-tensorboard,
--log-memory-to-tensorboard, --log-optimizer-states-to-tensorboard) under its tag names.

The interval's figures are gathered on the device by :class:`LogWindow`, so the step never waits on the
host; everything here runs at a log interval, on every rank (the reductions are collectives), and rank 0
writes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from deepspeed.accelerator import get_accelerator

from megatron.checkpointing import TrainState
from megatron.config.schema import Config
from megatron.parallel.context import ParallelContext
from megatron.training.distributed import all_reduce_mean
from megatron.training.metrics import MetricsWriter, format_duration, format_log_line
from megatron.training.optimizer_states import optimizer_state_norms
from megatron.training.timers import StepTimers

logger = logging.getLogger("megatron")


class LogWindow:
    """Accumulates one log interval's figures on the device so the step itself never waits on the host."""

    def __init__(self, device: torch.device):
        self.start = time.time()
        self.excluded_seconds = 0.0
        self.device = device
        self.loss_sum = torch.zeros((), device=device)
        self.finite_losses = torch.zeros((), device=device)
        # Per iteration, whether this rank's loss was NaN or inf (reduced over the ranks at the log).
        self.nonfinite_loss: list[torch.Tensor] = []
        self.iterations = 0
        self.samples = 0
        self.tokens = 0
        self.skipped = 0
        self.grad_norm = None
        self.aux_loss_sum = None
        self.seq_length = None

    def add(self, result, global_batch: int, tokens: int, seq_length: int | None = None) -> None:
        finite = torch.isfinite(result.loss)
        self.loss_sum += torch.where(finite, result.loss, torch.zeros_like(result.loss))
        self.finite_losses += finite.float()
        self.nonfinite_loss.append(~finite)
        if result.aux_loss is not None:
            self.aux_loss_sum = result.aux_loss + (0.0 if self.aux_loss_sum is None else self.aux_loss_sum)
        self.iterations += 1
        self.samples += global_batch
        self.tokens += tokens
        self.seq_length = seq_length
        self.skipped += 0 if result.update_applied else 1
        self.grad_norm = result.grad_norm

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the block's time (evaluation, checkpoints) out of the interval; the training work queued
        before it still counts."""
        self._synchronize()
        start = time.time()
        try:
            yield
        finally:
            self._synchronize()
            self.excluded_seconds += time.time() - start

    def elapsed(self) -> float:
        """Training time since the window began, queued device work included."""
        self._synchronize()
        return max(1e-9, time.time() - self.start - self.excluded_seconds)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reduced_losses(self) -> tuple[float, int]:
        """The interval's lm loss, the mean of the finite losses of all ranks and iterations (NaN when none
        was finite, never 0), and how many iterations had a NaN or inf loss on some rank: one all-reduce."""
        flags = torch.stack(self.nonfinite_loss).float().reshape(-1)
        totals = all_reduce_mean(torch.cat([self.loss_sum.reshape(1), self.finite_losses.reshape(1), flags]))
        loss_sum, finite, *nonfinite = totals.tolist()
        loss = loss_sum / finite if finite > 0 else float("nan")
        return loss, sum(1 for flag in nonfinite if flag > 0)

    def last_grad_norm(self) -> float | None:
        if self.grad_norm is None:
            return None
        return float(self.grad_norm.item() if torch.is_tensor(self.grad_norm) else self.grad_norm)


@dataclass
class IntervalLogger:
    """Reports a finished :class:`LogWindow` for the run's engine, schedule and metrics."""

    config: Config
    parallel: ParallelContext
    device: torch.device
    world_size: int
    engine: object
    lr_scheduler: object
    metrics: MetricsWriter
    timers: StepTimers
    flops_per_token: float

    def log(
        self,
        window: LogWindow,
        state: TrainState,
        global_batch: int,
        target: int,
        seconds_per_iteration: float,
    ) -> None:
        """The Megatron log line and its scalars, then the optional tensorboard scalars and timers."""
        elapsed = window.elapsed()
        loss, nan_iterations = window.reduced_losses()
        samples_per_second = window.samples / elapsed
        tokens_per_second = window.tokens / elapsed
        tflops = tokens_per_second * self.flops_per_token / self.world_size / 1e12
        grad_norm = window.last_grad_norm()
        extra = self._extra_fields(window)
        fields = {
            "iteration": f"{state.iteration:8d}/{target:8d} ({100.0 * state.iteration / target:5.1f}%)",
            "consumed samples": f"{state.consumed_train_samples:12d}",
            "elapsed time per iteration (ms)": 1000.0 * elapsed / window.iterations,
            "learning rate": self.lr_scheduler.get_lr(),
            "global batch size": f"{global_batch:5d}",
            "lm loss": loss,
            **extra,
            "loss scale": loss_scale(self.engine.optimizer),
            "grad norm": grad_norm if grad_norm is not None else float("nan"),
            "number of skipped iterations": f"{window.skipped:3d}",
            "number of nan iterations": f"{nan_iterations:3d}",
            "samples per second": samples_per_second,
            "tokens per second": tokens_per_second,
            "TFLOPs per GPU": tflops,
            "memory (GiB)": memory_gib(self.device),
            "ETA": format_duration(seconds_per_iteration * (target - state.iteration)),
        }
        logger.info(format_log_line(fields))
        self.metrics.scalars(
            {
                "lm loss": loss,
                **{name: float(value) for name, value in extra.items()},
                "learning rate": fields["learning rate"],
                "grad norm": fields["grad norm"],
                "loss scale": fields["loss scale"],
                "batch size": float(global_batch),
                "samples per second": samples_per_second,
                "tokens per second": tokens_per_second,
                "TFLOPs per GPU": tflops,
                "skipped iterations": float(window.skipped),
                "nan iterations": float(nan_iterations),
            },
            state.iteration,
            state.consumed_train_samples,
        )
        self._optional_scalars(state, global_batch, elapsed / window.iterations)
        self._timers(state, window.iterations)

    def _optional_scalars(self, state: TrainState, global_batch: int, seconds_per_iteration: float) -> None:
        """Megatron-DeepSpeed's --log-*-to-tensorboard scalars, with its tag names."""
        options = self.config.logging
        axes = {"samples": state.consumed_train_samples, "tokens": state.consumed_train_tokens}
        write = self.metrics.tensorboard
        if options.log_timers_to_tensorboard:
            write("iteration-time/iteration-time", seconds_per_iteration, state.iteration, **axes)
        if options.log_batch_size_to_tensorboard:
            write("batch-size/batch-size", float(global_batch), state.iteration, **axes)
        if options.log_memory_to_tensorboard:
            for tag, value in memory_scalars().items():
                write(tag, value, state.iteration)
        if options.log_optimizer_states_to_tensorboard:
            stats = optimizer_state_norms(
                self.engine.optimizer, self.parallel, self.config.deepspeed.zero_stage, self.device
            )
            for name, value in stats.items():
                write(f"optimizer/{name}", value, state.iteration, tokens=state.consumed_train_tokens)

    def _timers(self, state: TrainState, iterations: int) -> None:
        """--timing-log-level's timers: a log line, and ``NAME-time`` scalars with
        --log-timers-to-tensorboard (seconds per iteration, slowest rank)."""
        times = self.timers.interval_times(iterations)
        if not times:
            return
        logger.info(
            "time per iteration (ms), slowest rank: %s",
            " | ".join(f"{name}: {1000.0 * seconds:.2f}" for name, seconds in times.items()),
        )
        if self.config.logging.log_timers_to_tensorboard:
            for name, seconds in times.items():
                self.metrics.tensorboard(f"{name}-time", seconds, state.iteration)

    def _extra_fields(self, window: LogWindow) -> dict:
        """Megatron-DeepSpeed's additions to the log line: the MoE loss (mean over the window and the
        ranks) and the curriculum's sequence length at the window's last iteration."""
        fields = {}
        if window.aux_loss_sum is not None:
            # The model's second loss: MoE's load balancing, or BERT's sentence order ("sop loss").
            name = getattr(self.engine.module, "aux_loss_name", "moe loss")
            fields[name] = all_reduce_mean(window.aux_loss_sum / window.iterations).item()
        if window.seq_length is not None:
            fields["curriculum seqlen"] = f"{window.seq_length:5d}"
        return fields


def loss_scale(optimizer) -> float:
    """DeepSpeed's fp16 wrappers expose the current scale as ``loss_scale``; anything else runs unscaled."""
    scale = getattr(optimizer, "loss_scale", 1.0)
    return float(scale.item() if torch.is_tensor(scale) else scale)


def memory_gib(device: torch.device) -> float:
    """Peak device memory on GPU; the process's resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def memory_scalars() -> dict[str, float]:
    """Megatron-DeepSpeed's memory scalars, from the accelerator's current figures: on GPUs the caching
    allocator's; on CPU DeepSpeed reports the process's resident memory for both, and has no count."""
    accelerator = get_accelerator()
    stats = accelerator.memory_stats()
    values = {
        "mem-reserved-bytes": float(stats.get("reserved_bytes.all.current", accelerator.memory_reserved())),
        "mem-allocated-bytes": float(stats["allocated_bytes.all.current"]),
    }
    if "allocation.all.current" in stats:
        values["mem-allocated-count"] = float(stats["allocation.all.current"])
    return values
