"""The pre-LayerNorm transformer block of Megatron's GPT, built from tensor-parallel layers.

Module and parameter names follow Megatron-LM's (``input_layernorm``, ``self_attention.query_key_value``,
``self_attention.dense``, ``post_attention_layernorm``, ``mlp.dense_h_to_4h``, ``mlp.dense_4h_to_h``) so
that a state dict of this model carries Megatron's key names and checkpoints convert without renaming
tables. Activations are laid out ``[batch, sequence, hidden]``; under sequence parallelism the sequence
dimension of the LayerNorm/dropout regions holds this rank's part only. With a single-rank
:class:`ParallelContext` every parallel layer is a plain layer.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from deepspeed.sequence.layer import DistributedAttention
from torch import nn

from megatron.config.schema import ModelConfig, RecomputeConfig
from megatron.parallel.context import ParallelContext
from megatron.parallel.layers import ColumnParallelLinear, LayerNorm, RowParallelLinear
from megatron.parallel.random import init_generator, recompute, tensor_parallel_rng


def sdpa_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float
) -> torch.Tensor:
    """Causal attention through torch's SDPA (flash or memory-efficient kernels on GPUs), batch-first."""
    context = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), dropout_p=dropout, is_causal=True
    )
    return context.transpose(1, 2)


def output_layer_std(config: ModelConfig) -> float:
    """Megatron's scaled init for the projections that feed the residual stream: std / sqrt(2 * layers),
    which keeps the residual's variance from growing with depth."""
    return config.init_method_std / math.sqrt(2.0 * config.num_layers)


class SelfAttention(nn.Module):
    """Causal multi-head attention through ``torch.nn.functional.scaled_dot_product_attention``.

    The fused QKV projection's output is laid out per head as ``[heads, (q, k, v), head_dim]``, Megatron's
    layout since checkpoint version 2, so the column-parallel split hands each rank whole heads.
    """

    def __init__(
        self,
        config: ModelConfig,
        context: ParallelContext,
        generator: torch.Generator,
        recompute_core: bool = False,
    ):
        super().__init__()
        self.local_heads = config.num_attention_heads // context.tensor_size
        self.head_dim = config.head_dim
        self.attention_dropout = config.attention_dropout
        self.recompute_core = recompute_core
        hidden = config.hidden_size
        self.query_key_value = ColumnParallelLinear(
            hidden, 3 * hidden, context, config.init_method_std, generator=generator
        )
        self.dense = RowParallelLinear(hidden, hidden, context, output_layer_std(config), generator=generator)
        # The kernel behind local_attention; megatron.model.kernels may swap in flash-attn.
        self.attention_kernel = sdpa_attention
        self.core_attention = self.local_attention
        if context.ulysses_size > 1:
            # DeepSpeed-Ulysses: an all-to-all over the Ulysses group trades this rank's part of the sequence
            # for all of it on 1/U of the local heads ([b, s/U, h, d] -> [b, s, h/U, d]), so the causal
            # attention sees the whole sequence; the output goes back the same way. With our batch-first
            # layout the heads are dimension 2 (scattered) and the sequence dimension 1 (gathered).
            self.ulysses_attention = DistributedAttention(
                self.local_attention, context.ulysses_group, scatter_idx=2, gather_idx=1
            )
            self.core_attention = partial(self.ulysses_attention, batch_dim_idx=0)

    def local_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``[batch, sequence, heads, head_dim]`` in and out; heads are split, so dropout differs per rank."""
        dropout = self.attention_dropout if self.training else 0.0
        with tensor_parallel_rng(active=dropout > 0):
            return self.attention_kernel(query, key, value, dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mixed = self.query_key_value(hidden)
        batch, seq = mixed.shape[:2]
        query, key, value = mixed.view(batch, seq, self.local_heads, 3 * self.head_dim).split(
            self.head_dim, -1
        )
        if self.recompute_core:
            context = recompute(self.core_attention, query, key, value)
        else:
            context = self.core_attention(query, key, value)
        return self.dense(context.reshape(batch, context.shape[1], -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, context: ParallelContext, generator: torch.Generator):
        super().__init__()
        hidden, ffn = config.hidden_size, config.ffn_hidden_size
        self.dense_h_to_4h = ColumnParallelLinear(
            hidden, ffn, context, config.init_method_std, generator=generator
        )
        self.dense_4h_to_h = RowParallelLinear(
            ffn, hidden, context, output_layer_std(config), generator=generator
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(hidden), approximate="tanh"))


class ParallelTransformerLayer(nn.Module):
    """x + dropout(attn(LN(x))), then + dropout(mlp(LN(.))).

    ``layer_number`` (from 0) seeds this layer's initialisation, so its weights do not depend on which other
    layers the process builds. ``recompute_layer`` recomputes the whole layer in backward.
    """

    def __init__(
        self,
        config: ModelConfig,
        context: ParallelContext,
        layer_number: int,
        seed: int,
        recompute_core: bool = False,
        recompute_layer: bool = False,
    ):
        super().__init__()
        generator = init_generator(seed, layer_number)
        self.recompute_layer = recompute_layer
        self.input_layernorm = LayerNorm(config.hidden_size, config.layernorm_epsilon, context)
        self.self_attention = SelfAttention(config, context, generator, recompute_core)
        self.post_attention_layernorm = LayerNorm(config.hidden_size, config.layernorm_epsilon, context)
        self.mlp = MLP(config, context, generator)
        self.hidden_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.recompute_layer and torch.is_grad_enabled():
            return recompute(self._forward, hidden)
        return self._forward(hidden)

    def _forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.hidden_dropout(self.self_attention(self.input_layernorm(hidden)))
        return hidden + self.hidden_dropout(self.mlp(self.post_attention_layernorm(hidden)))


def recompute_plan(recompute_config: RecomputeConfig, num_layers: int) -> list[tuple[int, int]]:
    """The layer ranges ``[start, stop)`` to recompute as one chunk each, for ``num_layers`` local layers.

    "uniform" recomputes every ``num_layers`` consecutive layers as one chunk (only each chunk's input is
    kept); "block" recomputes the first ``num_layers`` layers one by one and keeps the rest.
    """
    if recompute_config.granularity != "full":
        return []
    step = recompute_config.num_layers
    if recompute_config.method == "uniform":
        return [(start, min(start + step, num_layers)) for start in range(0, num_layers, step)]
    return [(index, index + 1) for index in range(min(step, num_layers))]


class ParallelTransformer(nn.Module):
    """The stack of layers and the final LayerNorm (Megatron's ``encoder``)."""

    def __init__(
        self, config: ModelConfig, context: ParallelContext, seed: int, recompute_config: RecomputeConfig
    ):
        super().__init__()
        selective = recompute_config.granularity == "selective"
        self.layers = nn.ModuleList(
            ParallelTransformerLayer(config, context, number, seed, recompute_core=selective)
            for number in range(config.num_layers)
        )
        self.recompute_chunks = recompute_plan(recompute_config, config.num_layers)
        self.final_layernorm = LayerNorm(config.hidden_size, config.layernorm_epsilon, context)
        self.sequence_parallel = context.sequence_parallel
        self.hidden_dropout = config.hidden_dropout

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # Under sequence parallelism dropout on this rank's part of the sequence must differ from the others'.
        with tensor_parallel_rng(active=self.sequence_parallel and self.training and self.hidden_dropout > 0):
            return self.final_layernorm(self._layers(hidden))

    def _layers(self, hidden: torch.Tensor) -> torch.Tensor:
        chunk_starts = (
            {start: stop for start, stop in self.recompute_chunks} if torch.is_grad_enabled() else {}
        )
        index = 0
        while index < len(self.layers):
            stop = chunk_starts.get(index)
            if stop is None:
                hidden = self.layers[index](hidden)
                index += 1
            else:
                hidden = recompute(self._run_range(index, stop), hidden)
                index = stop
        return hidden

    def _run_range(self, start: int, stop: int):
        def run(hidden: torch.Tensor) -> torch.Tensor:
            for layer in self.layers[start:stop]:
                hidden = layer(hidden)
            return hidden

        return run
