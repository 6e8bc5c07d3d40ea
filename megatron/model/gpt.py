"""GPT: learned absolute positions, pre-LN transformer, output projection tied to the input embedding; and
the LLaMA-style variants the config names (rotary positions, RMSNorm, SwiGLU, no biases, GQA, an output
layer of its own)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megatron.config.schema import ModelConfig, MoEConfig, RecomputeConfig
from megatron.model.kv_cache import KVCache, StaticKVCache
from megatron.model.transformer import ParallelTransformer
from megatron.parallel.context import ParallelContext
from megatron.parallel.cross_entropy import vocab_parallel_cross_entropy
from megatron.parallel.layers import VocabParallelEmbedding, sharded_normal
from megatron.parallel.mappings import (
    copy_to_tensor_parallel_region,
    gather_from_sequence_parallel_region,
    gather_from_tensor_parallel_region,
    scatter_to_sequence_parallel_region,
)
from megatron.parallel.random import init_generator, tensor_parallel_rng

# init_generator paths of the parts that are not transformer layers (layers use their own number).
EMBEDDING_INIT_PATH = -1
OUTPUT_LAYER_INIT_PATH = -3


class Embedding(nn.Module):
    """Word plus position embeddings, then dropout (Megatron's ``language_model.embedding``).

    The word table is split over the tensor-parallel ranks by vocabulary; positions are replicated, and
    absent when the config has no learned position table (rotary embeddings act in attention instead).
    Under sequence parallelism the output keeps only this rank's part of the sequence. BERT adds
    ``num_tokentypes`` segment embeddings (``tokentype_embeddings``, replicated).
    """

    def __init__(self, config: ModelConfig, context: ParallelContext, seed: int, num_tokentypes: int = 0):
        super().__init__()
        generator = init_generator(seed, EMBEDDING_INIT_PATH)
        std = config.init_method_std
        self.word_embeddings = VocabParallelEmbedding(
            config.padded_vocab_size,
            config.hidden_size,
            context,
            std,
            generator=generator,
            lookup_in_fp32=config.embedding_weights_in_fp32,
        )
        self.position_embeddings = None
        if config.learned_position_embeddings:
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
            self.position_embeddings.weight.data.normal_(0.0, std, generator=generator)
        self.tokentype_embeddings = None
        if num_tokentypes:
            self.tokentype_embeddings = nn.Embedding(num_tokentypes, config.hidden_size)
            self.tokentype_embeddings.weight.data.normal_(0.0, std, generator=generator)
        self.embedding_dropout = nn.Dropout(config.hidden_dropout)
        self.context = context

    def forward(
        self,
        tokens: torch.Tensor,
        position_offset: int | torch.Tensor = 0,
        tokentype_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``position_offset``: the position of the first token, on the host or (a static key/value
        cache's) on the device."""
        embeddings = self.word_embeddings(tokens)
        if self.position_embeddings is not None:
            positions = torch.arange(tokens.shape[1], device=tokens.device) + position_offset
            embeddings = embeddings + self.position_embeddings(positions)
        if self.tokentype_embeddings is not None:
            embeddings = embeddings + self.tokentype_embeddings(tokentype_ids)
        if not self.context.sequence_parallel:
            return self.embedding_dropout(embeddings)
        embeddings = scatter_to_sequence_parallel_region(embeddings, self.context.tensor_group)
        with tensor_parallel_rng(active=self.training and self.embedding_dropout.p > 0):
            return self.embedding_dropout(embeddings)


def parallel_lm_logits(
    hidden: torch.Tensor, word_embeddings: torch.Tensor, context: ParallelContext
) -> torch.Tensor:
    """This rank's vocabulary slice of the logits, through the tied (vocabulary-split) embedding table."""
    if context.sequence_parallel:
        hidden = gather_from_sequence_parallel_region(hidden, context.tensor_group)
    else:
        hidden = copy_to_tensor_parallel_region(hidden, context.tensor_group)
    return torch.nn.functional.linear(hidden, word_embeddings)


def language_model_loss(
    logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor | None, context: ParallelContext
) -> torch.Tensor:
    """Mean token loss (over ``loss_mask`` when given) from vocabulary-parallel logits, in float32.

    With the vocabulary on one rank torch's fused cross entropy is used: the same function with one
    float32 copy of the logits instead of several.
    """
    if context.tensor_size == 1:
        losses = F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), reduction="none")
        losses = losses.view(labels.shape)
    else:
        losses = vocab_parallel_cross_entropy(logits, labels, context)
    if loss_mask is None:
        return losses.mean()
    mask = loss_mask.float()
    return (losses * mask).sum() / mask.sum().clamp(min=1.0)


class LanguageModelLoss(nn.Module):
    """The logits through the tied embedding and their loss, as one module of the model.

    A module of its own so that ``--torch-compile`` can compile it (:mod:`megatron.model.kernels`): the
    compiled softmax reads the bf16 logits once and writes their gradient directly, where eager mode makes
    float32 copies of the whole ``[tokens, vocabulary]`` matrix in both directions.
    """

    def __init__(self, context: ParallelContext):
        super().__init__()
        self.context = context

    def forward(
        self,
        hidden: torch.Tensor,
        word_embeddings: torch.Tensor,
        labels: torch.Tensor,
        loss_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        logits = parallel_lm_logits(hidden, word_embeddings, self.context)
        return language_model_loss(logits, labels, loss_mask, self.context)


class OutputLayer(nn.Module):
    """The output projection of a model whose output is not tied to its input embedding
    (``--untie-embeddings-and-output-weights``; Megatron's ``language_model.output_layer``), split over the
    tensor-parallel ranks by vocabulary as the word embedding is."""

    def __init__(self, config: ModelConfig, context: ParallelContext, seed: int):
        super().__init__()
        self.context = context
        shard = context.tensor_shard(config.padded_vocab_size, "output layer vocabulary")
        shape = (config.padded_vocab_size, config.hidden_size)
        generator = init_generator(seed, OUTPUT_LAYER_INIT_PATH)
        self.weight = sharded_normal(shape, config.init_method_std, shard, dim=0, generator=generator)


class TransformerLanguageModel(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        context: ParallelContext,
        seed: int,
        recompute: RecomputeConfig,
        moe: MoEConfig | None = None,
    ):
        super().__init__()
        self.embedding = Embedding(config, context, seed)
        self.encoder = ParallelTransformer(config, context, seed, recompute, moe)
        if config.untie_embeddings_and_output_weights:
            self.output_layer = OutputLayer(config, context, seed)

    def forward(
        self,
        tokens: torch.Tensor,
        position_offset: int | torch.Tensor = 0,
        kv_cache: KVCache | StaticKVCache | None = None,
    ) -> torch.Tensor:
        return self.encoder(self.embedding(tokens, position_offset), kv_cache=kv_cache)


class GPTModel(nn.Module):
    """Returns the mean language-model loss when ``labels`` are given, else the full logits.

    The loss is computed here, in float32 and without gathering the vocabulary-split logits, so that the
    DeepSpeed engine's forward returns exactly what its ``backward`` needs. ``seed`` fixes the
    initialisation (each part from its own generator, whatever the parallel layout). With MoE layers
    (``moe``) the loss comes as ``(lm loss, moe loss)``, the second being ``--moe-loss-coeff`` x the sum of
    the layers' load-balancing losses; training backpropagates their sum and logs them apart.
    """

    def __init__(
        self,
        config: ModelConfig,
        context: ParallelContext | None = None,
        seed: int = 1234,
        recompute: RecomputeConfig | None = None,
        moe: MoEConfig | None = None,
    ):
        super().__init__()
        self.config = config
        self.context = context or ParallelContext.single()
        self.moe_loss_coeff = moe.loss_coeff if moe is not None else 0.0
        self.language_model = TransformerLanguageModel(
            config, self.context, seed, recompute or RecomputeConfig(), moe
        )
        self.output_loss = LanguageModelLoss(self.context)

    @property
    def transformer_layers(self) -> nn.ModuleList:
        return self.language_model.encoder.layers

    @property
    def word_embeddings_weight(self) -> nn.Parameter:
        return self.language_model.embedding.word_embeddings.weight

    @property
    def output_weight(self) -> nn.Parameter:
        """The logits' projection: the word embedding, or the output layer of an untied model."""
        if self.config.untie_embeddings_and_output_weights:
            return self.language_model.output_layer.weight
        return self.word_embeddings_weight

    def forward(
        self,
        tokens: torch.Tensor,
        labels: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        position_offset: int | torch.Tensor = 0,
        kv_cache: KVCache | StaticKVCache | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``kv_cache`` (inference): ``tokens`` are the next ones after those cached, which sets their
        positions; the cache then holds them too."""
        if kv_cache is not None:
            position_offset = kv_cache.length
        hidden = self.language_model(tokens, position_offset, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(tokens.shape[1])
        if labels is None:
            logits = parallel_lm_logits(hidden, self.output_weight, self.context)
            return gather_from_tensor_parallel_region(logits, self.context.tensor_group)
        loss = self.output_loss(hidden, self.output_weight, labels, loss_mask)
        moe_loss = self.language_model.encoder.moe_loss
        return loss if moe_loss is None else (loss, self.moe_loss_coeff * moe_loss)
