"""T5 as Megatron builds it: a bidirectional encoder and a causal decoder with cross-attention, sharing one
embedding (words and learned absolute positions), the output layer tied to the word embedding plus a bias.

Megatron's T5 is its GPT transformer twice, not Google's T5 (no relative position buckets, LayerNorm with
bias, GeLU MLP): the encoder is :class:`ParallelTransformer` run under the encoder's padding mask; each
decoder layer adds, between self-attention and MLP, attention from the decoder to the encoder output
(``inter_attention``: a column-parallel ``query`` of the decoder, a column-parallel ``key_value`` of the
encoder output laid out per head as ``[heads, (k, v), head_dim]``, a row-parallel ``dense``), with its own
pre-LayerNorm (``post_inter_attention_layernorm``). ``--kv-channels`` sets the head size of all attention.
Names are Megatron's (``language_model.decoder.layers.N.inter_attention.key_value.weight``, ``lm_head.bias``).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from megatron.config.schema import ModelConfig, RecomputeConfig
from megatron.model.bert import padding_attention_mask
from megatron.model.gpt import Embedding, language_model_loss, parallel_lm_logits
from megatron.model.mlp import MLP, output_layer_std
from megatron.model.transformer import (
    ParallelTransformer,
    SelfAttention,
    masked_sdpa_attention,
    recompute_plan,
)
from megatron.parallel.context import ParallelContext
from megatron.parallel.layers import (
    ColumnParallelLinear,
    LayerNorm,
    RowParallelLinear,
    set_tensor_parallel_attributes,
)
from megatron.parallel.mappings import gather_from_tensor_parallel_region
from megatron.parallel.random import heads_are_split, init_generator, recompute, run_in_rank_stream

# init_generator path of decoder layer N: (DECODER_INIT_PATH, N); the encoder's layers use (N,).
DECODER_INIT_PATH = -10


class CrossAttention(nn.Module):
    """Decoder queries attending to the encoder output, under the encoder's padding mask."""

    def __init__(self, config: ModelConfig, context: ParallelContext, generator: torch.Generator):
        super().__init__()
        self.local_heads = config.num_attention_heads // context.tensor_size
        self.head_dim = config.head_dim
        self.attention_dropout = config.attention_dropout
        self.heads_split = heads_are_split(context)
        hidden, projection = config.hidden_size, config.num_attention_heads * config.head_dim
        std = config.init_method_std
        self.query = ColumnParallelLinear(hidden, projection, context, std, generator=generator)
        self.key_value = ColumnParallelLinear(hidden, 2 * projection, context, std, generator=generator)
        self.dense = RowParallelLinear(
            projection, hidden, context, output_layer_std(config), generator=generator
        )

    def forward(
        self, hidden: torch.Tensor, encoder_output: torch.Tensor, encoder_mask: torch.Tensor
    ) -> torch.Tensor:
        batch, seq = hidden.shape[:2]
        query = self.query(hidden).view(batch, seq, self.local_heads, self.head_dim)
        key_value = self.key_value(encoder_output)
        key, value = key_value.view(batch, key_value.shape[1], self.local_heads, 2 * self.head_dim).split(
            self.head_dim, -1
        )
        dropout = self.attention_dropout if self.training else 0.0
        attend = partial(masked_sdpa_attention, query, key, value, encoder_mask, dropout)
        context = run_in_rank_stream(attend) if dropout > 0 and self.heads_split else attend()
        return self.dense(context.reshape(batch, seq, -1))


class ParallelDecoderLayer(nn.Module):
    """x + attn(LN(x)) (causal), + cross-attn(LN(.), encoder), + mlp(LN(.)); dropout on each branch."""

    def __init__(
        self,
        config: ModelConfig,
        context: ParallelContext,
        layer_number: int,
        seed: int,
        recompute_core: bool = False,
    ):
        super().__init__()
        generator = init_generator(seed, DECODER_INIT_PATH, layer_number)
        hidden, eps = config.hidden_size, config.layernorm_epsilon
        self.input_layernorm = LayerNorm(hidden, eps, context)
        self.self_attention = SelfAttention(config, context, generator, recompute_core, causal=True)
        self.post_attention_layernorm = LayerNorm(hidden, eps, context)
        self.inter_attention = CrossAttention(config, context, generator)
        self.post_inter_attention_layernorm = LayerNorm(hidden, eps, context)
        self.mlp = MLP(config, context, generator)
        self.hidden_dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self, hidden: torch.Tensor, encoder_output: torch.Tensor, encoder_mask: torch.Tensor
    ) -> torch.Tensor:
        hidden = hidden + self.hidden_dropout(self.self_attention(self.input_layernorm(hidden)))
        cross = self.inter_attention(self.post_attention_layernorm(hidden), encoder_output, encoder_mask)
        hidden = hidden + self.hidden_dropout(cross)
        return hidden + self.hidden_dropout(self.mlp(self.post_inter_attention_layernorm(hidden)))


class ParallelDecoder(nn.Module):
    """The decoder layers and their final LayerNorm (Megatron's ``decoder``); full recomputation chunks
    follow the same plan as the encoder's."""

    def __init__(
        self, config: ModelConfig, context: ParallelContext, seed: int, recompute_config: RecomputeConfig
    ):
        super().__init__()
        selective = recompute_config.granularity == "selective"
        self.layers = nn.ModuleList(
            ParallelDecoderLayer(config, context, number, seed, recompute_core=selective)
            for number in range(config.num_layers)
        )
        self.recompute_chunks = recompute_plan(recompute_config, config.num_layers)
        self.final_layernorm = LayerNorm(config.hidden_size, config.layernorm_epsilon, context)

    def forward(
        self, hidden: torch.Tensor, encoder_output: torch.Tensor, encoder_mask: torch.Tensor
    ) -> torch.Tensor:
        chunks = dict(self.recompute_chunks) if torch.is_grad_enabled() else {}
        index = 0
        while index < len(self.layers):
            stop = chunks.get(index, index + 1)
            run = self._run_range(index, stop, encoder_mask)
            hidden = (
                recompute(run, hidden, encoder_output) if index in chunks else run(hidden, encoder_output)
            )
            index = stop
        return self.final_layernorm(hidden)

    def _run_range(self, start: int, stop: int, encoder_mask: torch.Tensor):
        def run(hidden: torch.Tensor, encoder_output: torch.Tensor) -> torch.Tensor:
            for layer in self.layers[start:stop]:
                hidden = layer(hidden, encoder_output, encoder_mask)
            return hidden

        return run


class T5LanguageModel(nn.Module):
    def __init__(self, config: ModelConfig, context: ParallelContext, seed: int, recompute: RecomputeConfig):
        super().__init__()
        self.embedding = Embedding(config, context, seed)
        self.encoder = ParallelTransformer(config, context, seed, recompute, causal=False)
        self.decoder = ParallelDecoder(config, context, seed, recompute)

    def forward(
        self, encoder_tokens: torch.Tensor, decoder_tokens: torch.Tensor, encoder_padding_mask: torch.Tensor
    ) -> torch.Tensor:
        mask = padding_attention_mask(encoder_padding_mask)
        encoder_output = self.encoder(self.embedding(encoder_tokens), mask)
        return self.decoder(self.embedding(decoder_tokens), encoder_output, mask)


class T5LMHead(nn.Module):
    """The output bias over the (vocabulary-split) logits of the tied word embedding."""

    def __init__(self, config: ModelConfig, context: ParallelContext):
        super().__init__()
        shard = context.tensor_shard(config.padded_vocab_size, "the padded vocabulary")
        self.bias = set_tensor_parallel_attributes(
            nn.Parameter(torch.zeros(shard.stop - shard.start)), partition_dim=0
        )


class T5Model(nn.Module):
    """With labels: the mean token loss over ``loss_mask`` of the decoder's predictions; without: the
    decoder's logits, gathered over the tensor-parallel ranks."""

    def __init__(
        self,
        config: ModelConfig,
        context: ParallelContext | None = None,
        seed: int = 1234,
        recompute: RecomputeConfig | None = None,
    ):
        super().__init__()
        self.config = config
        self.context = context or ParallelContext.single()
        self.language_model = T5LanguageModel(config, self.context, seed, recompute or RecomputeConfig())
        self.lm_head = T5LMHead(config, self.context)

    @property
    def word_embeddings_weight(self) -> nn.Parameter:
        return self.language_model.embedding.word_embeddings.weight

    def forward(
        self,
        encoder_tokens: torch.Tensor,
        decoder_tokens: torch.Tensor,
        encoder_padding_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.language_model(encoder_tokens, decoder_tokens, encoder_padding_mask)
        logits = parallel_lm_logits(hidden, self.word_embeddings_weight, self.context) + self.lm_head.bias
        if labels is None:
            return gather_from_tensor_parallel_region(logits, self.context.tensor_group)
        return language_model_loss(logits, labels, loss_mask, self.context)
