"""The optimizer, built here rather than from the ds_config so that Megatron's weight-decay groups apply."""

from __future__ import annotations

import logging
import os

import torch
from deepspeed.moe.utils import is_moe_param, split_params_into_different_moe_groups_for_optimizer
from torch import nn
from torch.utils import cpp_extension

from megatron.config.schema import OptimizerConfig

logger = logging.getLogger(__name__)


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Biases and LayerNorm weights (all one-dimensional parameters) get no weight decay, as in Megatron.

    MoE expert parameters go into groups of their own (marked ``moe``, one per expert-parallel size), as
    DeepSpeed's ZeRO optimizers require, with the same weight-decay rule.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.dim() == 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if not any(is_moe_param(param) for param in decay + no_decay):
        return groups
    named = [{**groups[0], "name": "decay"}, {**groups[1], "name": "no_decay"}]
    return [group for group in split_params_into_different_moe_groups_for_optimizer(named) if group["params"]]


def build_optimizer(model: nn.Module, config: OptimizerConfig) -> torch.optim.Optimizer:
    """torch's AdamW with its fused kernel (CUDA and CPU alike, so that the CPU tests run the GPU's path,
    gradient clipping folded into it included) or SGD; DeepSpeed wraps it for ZeRO. Under ZeRO-Offload,
    DeepSpeed's CPUAdam in its AdamW mode (the same update, on the CPU), which DeepSpeed requires there."""
    groups = weight_decay_groups(model, config.weight_decay)
    if config.cpu_adam:
        return _cpu_adam(groups, config)
    if config.optimizer == "sgd":
        logger.info("optimizer: torch.optim.SGD (momentum %s)", config.sgd_momentum)
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.sgd_momentum)
    logger.info("optimizer: torch.optim.AdamW (fused kernel)")
    return torch.optim.AdamW(
        groups,
        lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps,
        fused=True,
    )


def _cpu_adam(groups: list[dict], config: OptimizerConfig) -> torch.optim.Optimizer:
    """DeepSpeed JIT-compiles the op behind CPUAdam the first time a machine uses it (minutes): say so."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    from deepspeed.ops.op_builder import CPUAdamBuilder

    builder = CPUAdamBuilder()
    build_directory = cpp_extension._get_build_directory(builder.name, verbose=False)
    if not os.path.exists(os.path.join(build_directory, f"{builder.name}.so")):
        logger.info(
            "DeepSpeed is compiling its CPU Adam op (%s, into %s): once per machine, a few minutes",
            builder.name,
            build_directory,
        )
    logger.info("optimizer: DeepSpeed CPUAdam (AdamW mode; ZeRO-Offload, the update on the CPU)")
    return DeepSpeedCPUAdam(
        groups,
        lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps,
        adamw_mode=True,
    )
