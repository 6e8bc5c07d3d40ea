"""The trainer's two memory lines: the planner's prediction before the engine is built, and after the first
iteration what the allocator saw, so that every run checks the memory model the planner ranks layouts by.

Neither may stop a run: a model the memory model does not cover, or any failure in it, logs why there is no
prediction instead.
"""

from __future__ import annotations

import logging

import torch

from megatron.config.schema import Config
from megatron.planning.from_config import memory_of
from megatron.planning.memory import MemoryBreakdown

logger = logging.getLogger("megatron")

GIB = 2**30
PARTS = ("parameters", "gradients", "optimizer_states", "activations", "logits", "temporary", "fragmentation")


def unpredictable(config: Config) -> str | None:
    """Why the memory model does not cover this run, or None when it does."""
    if config.masked_lm is not None:
        return f"the memory model covers GPT only, not {config.masked_lm.model_type.upper()}"
    if config.moe.enabled:
        return "the memory model does not count MoE layers' activations (capacity, all-to-all buffers)"
    return None


def gib(value: int) -> str:
    return f"{value / GIB:.3f}"


def describe(prediction: MemoryBreakdown) -> str:
    parts = " + ".join(f"{name.replace('_', ' ')} {gib(getattr(prediction, name))}" for name in PARTS)
    return f"{gib(prediction.total)} GiB = {parts} GiB; host {gib(prediction.host)} GiB"


def log_prediction(config: Config) -> MemoryBreakdown | None:
    """Predict this run's peak memory per GPU (the most loaded rank) and log it with its parts."""
    reason = unpredictable(config)
    if reason is not None:
        logger.info("memory: no prediction (%s)", reason)
        return None
    try:
        prediction = memory_of(config)
    except Exception as error:  # a prediction is a report, never a reason to stop a run
        logger.info("memory: no prediction (%s: %s)", type(error).__name__, error)
        return None
    kernels = (
        " (counted for eager kernels; torch.compile saves fewer)" if config.kernels.torch_compile else ""
    )
    logger.info("memory: predicted peak per GPU %s%s", describe(prediction), kernels)
    return prediction


def log_actual(prediction: MemoryBreakdown | None, device: torch.device) -> None:
    """After the first iteration: the prediction beside torch's peak statistics for this rank's GPU. On a
    CPU there are none (the allocator keeps no statistics), so the line says so rather than guess."""
    if prediction is None:
        return
    predicted = f"predicted {gib(prediction.total)} GiB ({gib(prediction.allocated)} GiB allocated)"
    if device.type != "cuda":
        logger.info(
            "memory after the first iteration: %s, actual unknown: the %s allocator keeps no statistics",
            predicted,
            device.type,
        )
        return
    reserved, allocated = torch.cuda.max_memory_reserved(device), torch.cuda.max_memory_allocated(device)
    logger.info(
        "memory after the first iteration: %s, actual %s GiB (%s GiB allocated) on rank 0",
        predicted,
        gib(reserved),
        gib(allocated),
    )
