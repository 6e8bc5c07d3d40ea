"""Faster implementations applied to a built model; each computes the same function as the plain path.

Applied after the model is built and before DeepSpeed wraps it (as torchtitan orders it: parallelise,
recompute, compile), so the model code stays plain and each choice can be tested against the plain path.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from megatron.config.schema import KernelConfig
from megatron.model.gpt import GPTModel, LanguageModelLoss
from megatron.model.moe import MoEMLP
from megatron.model.transformer import ParallelTransformerLayer, SelfAttention

logger = logging.getLogger("megatron")


def flash_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float
) -> torch.Tensor:
    """flash-attn's kernel; it takes the batch-first ``[batch, sequence, heads, head_dim]`` layout as is."""
    from flash_attn import flash_attn_func

    return flash_attn_func(query, key, value, dropout_p=dropout, causal=True)


def compiles_as_one_graph(model: nn.Module) -> bool:
    """Whether the whole GPT can be one compiled graph: nothing in it leaves the graph (no collectives with
    one tensor-parallel and one Ulysses rank, no DeepSpeed recomputation, no DeepSpeed MoE gate)."""
    if not isinstance(model, GPTModel):
        return False
    if model.context.tensor_size > 1 or model.context.ulysses_size > 1:
        return False
    if model.language_model.encoder.recompute_chunks:
        return False
    return not any(
        layer.recompute_layer or layer.self_attention.recompute_core or isinstance(layer.mlp, MoEMLP)
        for layer in model.transformer_layers
    )


def apply_kernels(model: nn.Module, kernels: KernelConfig, allow_one_graph: bool = True) -> str:
    """Swap in the configured kernels; returns a description of what runs, for the log.

    ``--torch-compile`` compiles the whole model as one graph where :func:`compiles_as_one_graph` allows it
    and ``allow_one_graph`` (False under ZeRO 3, whose per-module hooks gather the weights); otherwise each
    transformer layer, and the output layer with its loss when the vocabulary is on one rank. One graph
    saves the per-call overhead of many compiled regions, which bounds small models' steps.
    """
    used = []
    if kernels.use_flash_attn:
        for module in model.modules():
            if isinstance(module, SelfAttention):
                module.attention_kernel = flash_attention
        used.append("attention through flash-attn")
    layers = [module for module in model.modules() if isinstance(module, ParallelTransformerLayer)]
    if not kernels.torch_compile:
        used.append("eager transformer layers")
    elif allow_one_graph and compiles_as_one_graph(model):
        model.compile(mode=kernels.compile_mode)
        used.append(f"torch.compile ({kernels.compile_mode}) on the whole model (one graph)")
    else:
        for layer in layers:
            layer.compile(mode=kernels.compile_mode)
        used.append(f"torch.compile ({kernels.compile_mode}) on each of {len(layers)} transformer layers")
        # With the vocabulary split over ranks the loss holds collectives: it stays eager there.
        losses = [
            module
            for module in model.modules()
            if isinstance(module, LanguageModelLoss) and module.context.tensor_size == 1
        ]
        for loss in losses:
            loss.compile(mode=kernels.compile_mode)
        if losses:
            used.append("torch.compile on the output layer and loss")
    return ", ".join(used)
