"""Where training metrics go: the log line on stdout, tensorboard and wandb (each only on rank 0)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

from megatron.config.schema import Config

logger = logging.getLogger("megatron")


class MetricsWriter:
    """Fans scalars out to tensorboard and wandb when they are configured; a no-op on ranks other than 0.

    Tensorboard holds up to --tensorboard-queue-size scalars before writing them (and writes at least every
    two minutes, and at :meth:`close`), as in Megatron-DeepSpeed.
    """

    def __init__(self, config: Config, is_main: bool):
        self._tensorboard = None
        self._wandb_run = None
        if not is_main:
            return
        log_config = config.logging
        if log_config.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(
                log_dir=log_config.tensorboard_dir, max_queue=log_config.tensorboard_queue_size
            )
            logger.info(
                "tensorboard: writing to %s (queue of %d scalars)",
                log_config.tensorboard_dir,
                log_config.tensorboard_queue_size,
            )
        if log_config.wandb_project and log_config.wandb_mode != "disabled":
            import wandb

            save_dir = log_config.wandb_save_dir or os.getcwd()
            os.makedirs(save_dir, exist_ok=True)
            self._wandb_run = wandb.init(
                project=log_config.wandb_project,
                name=log_config.wandb_exp_name,
                dir=save_dir,
                mode=log_config.wandb_mode,
                config=dataclasses.asdict(config),
            )
            logger.info("wandb: project %s, mode %s", log_config.wandb_project, log_config.wandb_mode)

    def scalars(self, values: dict[str, float], iteration: int, consumed_samples: int) -> None:
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(name, value, iteration)
                self._tensorboard.add_scalar(f"{name} vs samples", value, consumed_samples)
        if self._wandb_run is not None:
            self._wandb_run.log({**values, "consumed samples": consumed_samples}, step=iteration)

    def tensorboard(
        self, tag: str, value: float, iteration: int, samples: int | None = None, tokens: int | None = None
    ) -> None:
        """One of Megatron-DeepSpeed's tensorboard scalars under its own tag, against the iteration and, when
        given, also as ``tag vs samples`` and ``tag vs tokens``."""
        if self._tensorboard is None:
            return
        self._tensorboard.add_scalar(tag, value, iteration)
        for axis, x in (("samples", samples), ("tokens", tokens)):
            if x is not None:
                self._tensorboard.add_scalar(f"{tag} vs {axis}", value, x)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()


def format_duration(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_log_line(fields: dict[str, Any]) -> str:
    """Megatron's ``name: value |`` layout, which users' log parsers already read."""
    parts = []
    for name, value in fields.items():
        if name == "iteration":
            parts.append(f"iteration {value}")
        elif isinstance(value, float) and not math.isfinite(value):
            parts.append(f"{name}: {value}")  # nan and inf as float() reads them back
        elif isinstance(value, float):
            # Every loss (lm, moe, sop, BERT pipeline's "lm + sop loss") in full, as Megatron prints them.
            parts.append(
                f"{name}: {value:.6E}"
                if name == "learning rate" or name.endswith(" loss")
                else f"{name}: {value:.3f}"
            )
        else:
            parts.append(f"{name}: {value}")
    return " | ".join(parts) + " |"
