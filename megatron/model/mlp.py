"""The transformer layer's MLP, one class per activation family; :func:`mlp_class` picks it from the config.

Both keep Megatron's parameter names (``dense_h_to_4h``, ``dense_4h_to_h``). SwiGLU's first projection holds
``[gate; up]`` (Megatron-DeepSpeed's layout), split over the tensor-parallel ranks with stride 2 so that each
rank multiplies whole gate/up pairs (see :mod:`megatron.parallel.layers`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from megatron.config.schema import ModelConfig
from megatron.parallel.context import ParallelContext
from megatron.parallel.layers import ColumnParallelLinear, RowParallelLinear


def output_layer_std(config: ModelConfig) -> float:
    """Megatron's scaled init for the projections that feed the residual stream: std / sqrt(2 * layers),
    which keeps the residual's variance from growing with depth."""
    return config.init_method_std / math.sqrt(2.0 * config.num_layers)


class MLP(nn.Module):
    """GeLU MLP: the tanh form (GPT) or the exact erf form (Megatron's default, BERT and T5)."""

    # Parts of the first projection's output: 1 here, 2 for SwiGLU's [gate; up].
    parts = 1

    def __init__(self, config: ModelConfig, context: ParallelContext, generator: torch.Generator):
        super().__init__()
        hidden, ffn, bias = config.hidden_size, config.ffn_hidden_size, config.add_bias_linear
        self.dense_h_to_4h = ColumnParallelLinear(
            hidden,
            self.parts * ffn,
            context,
            config.init_method_std,
            bias=bias,
            generator=generator,
            stride=self.parts,
        )
        self.dense_4h_to_h = RowParallelLinear(
            ffn, hidden, context, output_layer_std(config), bias=bias, generator=generator
        )
        self.gelu_approximate = "tanh" if config.openai_gelu else "none"

    def activation(self, projected: torch.Tensor) -> torch.Tensor:
        return F.gelu(projected, approximate=self.gelu_approximate)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.activation(self.dense_h_to_4h(hidden)))


class SwiGLUMLP(MLP):
    """``silu(gate) * up``, LLaMA's MLP (``--swiglu``)."""

    parts = 2

    def activation(self, projected: torch.Tensor) -> torch.Tensor:
        gate, up = projected.chunk(2, dim=-1)
        return F.silu(gate) * up


def mlp_class(config: ModelConfig) -> type[MLP]:
    return SwiGLUMLP if config.swiglu else MLP
