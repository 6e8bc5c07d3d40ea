"""The norm layer the config names (``--normalization``), replicated over the tensor-parallel ranks."""

from __future__ import annotations

from torch import nn

from megatron.config.schema import ModelConfig
from megatron.parallel.context import ParallelContext
from megatron.parallel.layers import LayerNorm, RMSNorm


def build_norm(config: ModelConfig, context: ParallelContext) -> nn.Module:
    norm = RMSNorm if config.normalization == "rmsnorm" else LayerNorm
    return norm(config.hidden_size, config.layernorm_epsilon, context)
