"""Faster implementations applied to a built model; each computes the same function as the plain path.

Applied after the model is built and before DeepSpeed wraps it (as torchtitan orders it: parallelise,
recompute, compile), so the model code stays plain and each choice can be tested against the plain path.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from megatron.config.schema import KernelConfig
from megatron.model.transformer import ParallelTransformerLayer, SelfAttention

logger = logging.getLogger("megatron")


def flash_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float
) -> torch.Tensor:
    """flash-attn's kernel; it takes the batch-first ``[batch, sequence, heads, head_dim]`` layout as is."""
    from flash_attn import flash_attn_func

    return flash_attn_func(query, key, value, dropout_p=dropout, causal=True)


def apply_kernels(model: nn.Module, kernels: KernelConfig) -> str:
    """Swap in the configured kernels; returns a description of what runs, for the log."""
    used = []
    if kernels.use_flash_attn:
        for module in model.modules():
            if isinstance(module, SelfAttention):
                module.attention_kernel = flash_attention
        used.append("attention through flash-attn")
    layers = [module for module in model.modules() if isinstance(module, ParallelTransformerLayer)]
    if kernels.torch_compile:
        for layer in layers:
            layer.compile()
        used.append(f"torch.compile on each of {len(layers)} transformer layers")
    else:
        used.append("eager transformer layers")
    return ", ".join(used)
