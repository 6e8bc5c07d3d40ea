"""The pre-LayerNorm transformer block of Megatron's GPT.

Module and parameter names follow Megatron-LM's (``input_layernorm``, ``self_attention.query_key_value``,
``self_attention.dense``, ``post_attention_layernorm``, ``mlp.dense_h_to_4h``, ``mlp.dense_4h_to_h``) so
that a state dict of this model carries Megatron's key names and checkpoints convert without renaming tables.
Activations are laid out ``[batch, sequence, hidden]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from megatron.config.schema import ModelConfig


def init_normal_(weight: torch.Tensor, std: float) -> None:
    nn.init.normal_(weight, mean=0.0, std=std)


def output_layer_std(config: ModelConfig) -> float:
    """Megatron's scaled init for the projections that feed the residual stream: std / sqrt(2 * layers),
    which keeps the residual's variance from growing with depth."""
    return config.init_method_std / math.sqrt(2.0 * config.num_layers)


def _linear(in_features: int, out_features: int, std: float) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    init_normal_(layer.weight, std)
    nn.init.zeros_(layer.bias)
    return layer


class SelfAttention(nn.Module):
    """Causal multi-head attention through ``torch.nn.functional.scaled_dot_product_attention``.

    The fused QKV projection's output is laid out per head as ``[heads, (q, k, v), head_dim]``, Megatron's
    layout since checkpoint version 2, so that splitting heads across tensor-parallel ranks is a plain slice.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.attention_dropout = config.attention_dropout
        self.query_key_value = _linear(config.hidden_size, 3 * config.hidden_size, config.init_method_std)
        self.dense = _linear(config.hidden_size, config.hidden_size, output_layer_std(config))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = hidden.shape
        mixed = self.query_key_value(hidden).view(batch, seq, self.num_heads, 3 * self.head_dim)
        query, key, value = (t.transpose(1, 2) for t in mixed.split(self.head_dim, dim=-1))
        context = F.scaled_dot_product_attention(
            query, key, value, dropout_p=self.attention_dropout if self.training else 0.0, is_causal=True
        )
        return self.dense(context.transpose(1, 2).reshape(batch, seq, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense_h_to_4h = _linear(config.hidden_size, config.ffn_hidden_size, config.init_method_std)
        self.dense_4h_to_h = _linear(config.ffn_hidden_size, config.hidden_size, output_layer_std(config))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(hidden), approximate="tanh"))


class ParallelTransformerLayer(nn.Module):
    """x + dropout(attn(LN(x))), then + dropout(mlp(LN(.)))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.self_attention = SelfAttention(config)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = MLP(config)
        self.hidden_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.hidden_dropout(self.self_attention(self.input_layernorm(hidden)))
        return hidden + self.hidden_dropout(self.mlp(self.post_attention_layernorm(hidden)))


class ParallelTransformer(nn.Module):
    """The stack of layers and the final LayerNorm (Megatron's ``encoder``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(ParallelTransformerLayer(config) for _ in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden)
        return self.final_layernorm(hidden)
