"""The pre-norm transformer block of Megatron's GPT and its LLaMA-style variants, from parallel layers.

Module and parameter names follow Megatron-LM's (``input_layernorm``, ``self_attention.query_key_value``,
``self_attention.dense``, ``post_attention_layernorm``, ``mlp.dense_h_to_4h``, ``mlp.dense_4h_to_h``) so
that a state dict of this model carries Megatron's key names and checkpoints convert without renaming
tables. Activations are laid out ``[batch, sequence, hidden]``; under sequence parallelism the sequence
dimension of the LayerNorm/dropout regions holds this rank's part only. With a single-rank
:class:`ParallelContext` every parallel layer is a plain layer.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from deepspeed.sequence.layer import DistributedAttention
from torch import nn

from megatron.config.schema import ModelConfig, MoEConfig, RecomputeConfig
from megatron.model.kv_cache import KVCache, LayerKVCache, StaticKVCache, StaticLayerKVCache
from megatron.model.mlp import mlp_class, output_layer_std
from megatron.model.moe import MoEMLP, expert_parallel_rank, moe_losses
from megatron.model.norm import build_norm
from megatron.model.rotary import RotaryEmbedding
from megatron.parallel.context import ParallelContext
from megatron.parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.parallel.random import (
    heads_are_split,
    init_generator,
    recompute,
    run_in_rank_stream,
    tensor_parallel_rng,
)


def sdpa_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float
) -> torch.Tensor:
    """Causal attention through torch's SDPA (flash or memory-efficient kernels on GPUs), batch-first.
    With fewer key/value heads than query heads (grouped-query attention) SDPA shares them itself, without
    a repeated copy in memory."""
    context = F.scaled_dot_product_attention(
        query.transpose(1, 2),
        key.transpose(1, 2),
        value.transpose(1, 2),
        dropout_p=dropout,
        is_causal=True,
        enable_gqa=key.shape[2] != query.shape[2],
    )
    return context.transpose(1, 2)


def masked_sdpa_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
) -> torch.Tensor:
    """Bidirectional attention through torch's SDPA, batch-first; ``attention_mask`` True where allowed."""
    context = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attention_mask, dropout_p=dropout
    )
    return context.transpose(1, 2)


class SelfAttention(nn.Module):
    """Causal multi-head attention through ``torch.nn.functional.scaled_dot_product_attention``.

    The fused QKV projection's output is laid out per key/value head as ``[kv heads, (q x groups, k, v),
    head_dim]``, where ``groups`` query heads share each key/value head: with one query head per key/value
    head this is Megatron's per-head ``(q, k, v)`` layout since checkpoint version 2, and either way the
    column-parallel split hands each rank whole groups. Rotary embeddings (when configured) turn query and
    key before attention.
    """

    def __init__(
        self,
        config: ModelConfig,
        context: ParallelContext,
        generator: torch.Generator,
        recompute_core: bool = False,
        causal: bool = True,
    ):
        super().__init__()
        self.local_heads = config.num_attention_heads // context.tensor_size
        self.local_kv_heads = config.kv_heads // context.tensor_size
        self.groups = config.num_attention_heads // config.kv_heads
        self.head_dim = config.head_dim
        self.attention_dropout = config.attention_dropout
        self.heads_split = heads_are_split(context)
        self.recompute_core = recompute_core
        # Causal (GPT, T5's decoder) or bidirectional under a padding mask (BERT, T5's encoder).
        self.causal = causal
        hidden, projection = config.hidden_size, config.num_attention_heads * config.head_dim
        kv_projection, bias = config.kv_heads * config.head_dim, config.add_bias_linear
        self.query_key_value = ColumnParallelLinear(
            hidden, projection + 2 * kv_projection, context, config.init_method_std, bias, generator=generator
        )
        self.dense = RowParallelLinear(
            projection, hidden, context, output_layer_std(config), bias, generator=generator
        )
        self.rotary = RotaryEmbedding(config, context) if config.rotary_position_embeddings else None
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

    def local_attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[batch, sequence, heads, head_dim]`` in and out; where heads are split over ranks, dropout
        draws from the per-rank stream.
        ``attention_mask`` (bidirectional attention only): True where a query may attend to a key,
        broadcastable to ``[batch, heads, queries, keys]``."""
        dropout = self.attention_dropout if self.training else 0.0
        if self.causal:
            attend = partial(self.attention_kernel, query, key, value, dropout)
        else:
            attend = partial(masked_sdpa_attention, query, key, value, attention_mask, dropout)
        if dropout > 0 and self.heads_split:
            return run_in_rank_stream(attend)
        return attend()

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        kv_cache: LayerKVCache | StaticLayerKVCache | None = None,
    ) -> torch.Tensor:
        """``kv_cache`` (incremental decoding): ``hidden`` holds the new tokens only, which attend to the
        cached ones and are added to the cache."""
        mixed = self.query_key_value(hidden)
        batch, seq = mixed.shape[:2]
        grouped = mixed.view(batch, seq, self.local_kv_heads, self.groups + 2, self.head_dim)
        query = grouped[:, :, :, : self.groups].reshape(batch, seq, self.local_heads, self.head_dim)
        key, value = grouped[:, :, :, self.groups], grouped[:, :, :, self.groups + 1]
        offset = kv_cache.offset if kv_cache is not None else 0
        if self.rotary is not None:
            query, key = self.rotary(query, key, offset)
        if kv_cache is not None:
            return self.dense(kv_cache.attend(query, key, value).reshape(batch, seq, -1))
        core = self.core_attention
        if attention_mask is not None:
            core = partial(core, attention_mask=attention_mask)
        context = recompute(core, query, key, value) if self.recompute_core else core(query, key, value)
        return self.dense(context.reshape(batch, context.shape[1], -1))


class ParallelTransformerLayer(nn.Module):
    """x + dropout(attn(LN(x))), then + dropout(mlp(LN(.))).

    ``layer_number`` (from 0) seeds this layer's initialisation, so its weights do not depend on which other
    layers the process builds. ``recompute_layer`` recomputes the whole layer in backward. With ``moe`` giving
    this layer experts, the MLP is an :class:`MoEMLP` (experts not split over the tensor-parallel ranks).
    """

    def __init__(
        self,
        config: ModelConfig,
        context: ParallelContext,
        layer_number: int,
        seed: int,
        recompute_core: bool = False,
        recompute_layer: bool = False,
        moe: MoEConfig | None = None,
        causal: bool = True,
    ):
        super().__init__()
        generator = init_generator(seed, layer_number)
        self.recompute_layer = recompute_layer
        self.input_layernorm = build_norm(config, context)
        self.self_attention = SelfAttention(config, context, generator, recompute_core, causal)
        self.post_attention_layernorm = build_norm(config, context)
        mlp = mlp_class(config)
        if moe is not None and moe.experts_at(layer_number) > 1:
            expert = partial(mlp, config, ParallelContext.single())
            rank = expert_parallel_rank(context, moe.expert_parallel_size)
            self.mlp = MoEMLP(config, moe, layer_number, seed, generator, expert, rank)
        else:
            self.mlp = mlp(config, context, generator)
        self.hidden_dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        kv_cache: LayerKVCache | StaticLayerKVCache | None = None,
    ) -> torch.Tensor:
        if self.recompute_layer and torch.is_grad_enabled():
            return recompute(partial(self._forward, attention_mask=attention_mask), hidden)
        return self._forward(hidden, attention_mask, kv_cache)

    def _forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        kv_cache: LayerKVCache | StaticLayerKVCache | None = None,
    ) -> torch.Tensor:
        attention = self.self_attention(self.input_layernorm(hidden), attention_mask, kv_cache)
        hidden = hidden + self.hidden_dropout(attention)
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
    """The stack of layers and the final LayerNorm (Megatron's ``encoder``).

    After each forward ``moe_loss`` holds the sum of the MoE layers' load-balancing losses (None without
    MoE layers). Recomputed chunks return those losses as outputs, so that their gradient survives
    recomputation.
    """

    def __init__(
        self,
        config: ModelConfig,
        context: ParallelContext,
        seed: int,
        recompute_config: RecomputeConfig,
        moe: MoEConfig | None = None,
        causal: bool = True,
    ):
        super().__init__()
        selective = recompute_config.granularity == "selective"
        self.layers = nn.ModuleList(
            ParallelTransformerLayer(
                config, context, number, seed, recompute_core=selective, moe=moe, causal=causal
            )
            for number in range(config.num_layers)
        )
        self.moe_loss: torch.Tensor | None = None
        self.recompute_chunks = recompute_plan(recompute_config, config.num_layers)
        self.final_layernorm = build_norm(config, context)
        self.sequence_parallel = context.sequence_parallel
        self.hidden_dropout = config.hidden_dropout

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | StaticKVCache | None = None,
    ) -> torch.Tensor:
        """``attention_mask``: for bidirectional layers (``causal`` False), True where a query may attend to
        a key, broadcastable to ``[batch, heads, queries, keys]``; None attends everywhere. ``kv_cache``:
        incremental decoding (inference only), one layer cache per layer."""
        if kv_cache is not None:
            for layer, layer_cache in zip(self.layers, kv_cache.layers, strict=True):
                hidden = layer(hidden, kv_cache=layer_cache)
            return self.final_layernorm(hidden)
        # Under sequence parallelism dropout on this rank's part of the sequence must differ from the others'.
        with tensor_parallel_rng(active=self.sequence_parallel and self.training and self.hidden_dropout > 0):
            return self.final_layernorm(self._layers(hidden, attention_mask))

    def _layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        chunk_starts = (
            {start: stop for start, stop in self.recompute_chunks} if torch.is_grad_enabled() else {}
        )
        index, losses = 0, []
        while index < len(self.layers):
            stop = chunk_starts.get(index)
            if stop is None:
                hidden = self.layers[index](hidden, attention_mask)
                losses += moe_losses(self.layers[index : index + 1])
                index += 1
            else:
                outputs = recompute(self._run_range(index, stop, attention_mask), hidden)
                # DeepSpeed's checkpoint returns a lone output as a tensor, several as a tuple.
                hidden, *chunk_losses = (outputs,) if torch.is_tensor(outputs) else outputs
                losses += chunk_losses
                index = stop
        self.moe_loss = torch.stack(losses).sum() if losses else None
        return hidden

    def _run_range(self, start: int, stop: int, attention_mask: torch.Tensor | None = None):
        def run(hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
            for layer in self.layers[start:stop]:
                hidden = layer(hidden, attention_mask)
            return (hidden, *moe_losses(self.layers[start:stop]))

        return run
