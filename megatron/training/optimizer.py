"""The optimizer, built here rather than from the ds_config so that Megatron's weight-decay groups apply."""

from __future__ import annotations

import logging

import torch
from torch import nn

from megatron.config.schema import OptimizerConfig

logger = logging.getLogger(__name__)


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Biases and LayerNorm weights (all one-dimensional parameters) get no weight decay, as in Megatron."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.dim() == 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: OptimizerConfig, device_type: str) -> torch.optim.Optimizer:
    """torch's AdamW (fused kernel on CUDA, multi-tensor on CPU) or SGD; DeepSpeed wraps it for ZeRO."""
    groups = weight_decay_groups(model, config.weight_decay)
    if config.optimizer == "sgd":
        logger.info("optimizer: torch.optim.SGD (momentum %s)", config.sgd_momentum)
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.sgd_momentum)
    fused = device_type == "cuda"
    logger.info("optimizer: torch.optim.AdamW (%s)", "fused CUDA kernel" if fused else "foreach")
    return torch.optim.AdamW(
        groups,
        lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps,
        fused=fused,
        foreach=None if fused else True,
    )
