"""BERT as Megatron builds it, and as ``transformers.MegatronBertForPreTraining`` computes it.

Megatron's BERT is its GPT transformer run bidirectionally: word + position + token-type embeddings (no
LayerNorm on them), pre-LN layers (``apply_residual_connection_post_layernorm`` False) attending under a
padding mask, a final LayerNorm; then two heads:

* masked-LM head (``lm_head``): dense, GeLU, LayerNorm, then the logits through the tied word embedding plus
  a bias of its own, split over the tensor-parallel ranks by vocabulary like the embedding;
* sentence-order head (``binary_head``): two logits from the pooler, ``tanh(dense(hidden of [CLS]))``
  (``language_model.pooler``); ``--bert-no-binary-head`` drops both.

The GeLU is the exact (erf) one, Megatron's default and HF's ``gelu``. Parameter names are Megatron's, so
checkpoints convert to HF (``megatron.checkpointing.hf_bert``) by renaming. The pooler, the head's dense
and LayerNorm, and the binary head are replicated on every tensor-parallel rank, as in Megatron.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megatron.config.schema import ModelConfig, RecomputeConfig
from megatron.model.gpt import Embedding, language_model_loss, parallel_lm_logits
from megatron.model.transformer import ParallelTransformer
from megatron.parallel.context import ParallelContext
from megatron.parallel.layers import LayerNorm, set_tensor_parallel_attributes
from megatron.parallel.mappings import gather_from_tensor_parallel_region
from megatron.parallel.random import init_generator

NUM_TOKENTYPES = 2
# init_generator paths of the parts that are not transformer layers (the embedding's is -1, see gpt.py).
POOLER_INIT_PATH = -2
LM_HEAD_INIT_PATH = -3
BINARY_HEAD_INIT_PATH = -4


def replicated_linear(
    in_features: int, out_features: int, std: float, generator: torch.Generator
) -> nn.Linear:
    """A linear layer every tensor-parallel rank holds whole (Megatron's ``get_linear_layer``)."""
    linear = nn.Linear(in_features, out_features)
    linear.weight.data.normal_(0.0, std, generator=generator)
    linear.bias.data.zero_()
    for param in (linear.weight, linear.bias):
        set_tensor_parallel_attributes(param, None)
    return linear


def padding_attention_mask(padding_mask: torch.Tensor) -> torch.Tensor:
    """``[batch, 1, 1, keys]``, True where the key is a real token: every query attends to the sample's real
    tokens only. (Megatron also blanks the rows of padding queries; their outputs are never used.)"""
    return padding_mask.bool()[:, None, None, :]


def sentence_order_head(config: ModelConfig, seed: int) -> nn.Linear:
    """``binary_head``: two logits from the pooled [CLS] state (is segment B the one that followed A?)."""
    generator = init_generator(seed, BINARY_HEAD_INIT_PATH)
    return replicated_linear(config.hidden_size, 2, config.init_method_std, generator)


def sentence_order_loss(binary_logits: torch.Tensor, sentence_order: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy in float32; -1 marks a sample without a sentence-order target, as in Megatron."""
    return F.cross_entropy(binary_logits.float(), sentence_order, ignore_index=-1)


class Pooler(nn.Module):
    """``tanh(dense(h))`` of the first ([CLS]) token."""

    def __init__(self, config: ModelConfig, seed: int):
        super().__init__()
        generator = init_generator(seed, POOLER_INIT_PATH)
        self.dense = replicated_linear(
            config.hidden_size, config.hidden_size, config.init_method_std, generator
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class BertLMHead(nn.Module):
    """dense -> GeLU -> LayerNorm -> logits through the tied word embedding, plus a vocabulary-split bias."""

    def __init__(self, config: ModelConfig, context: ParallelContext, seed: int):
        super().__init__()
        generator = init_generator(seed, LM_HEAD_INIT_PATH)
        self.context = context
        vocab_shard = context.tensor_shard(config.padded_vocab_size, "the padded vocabulary")
        self.bias = set_tensor_parallel_attributes(
            nn.Parameter(torch.zeros(vocab_shard.stop - vocab_shard.start)), partition_dim=0
        )
        self.dense = replicated_linear(
            config.hidden_size, config.hidden_size, config.init_method_std, generator
        )
        self.layernorm = LayerNorm(config.hidden_size, config.layernorm_epsilon, context)
        self.gelu_approximate = "tanh" if config.openai_gelu else "none"

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        hidden = self.layernorm(F.gelu(self.dense(hidden), approximate=self.gelu_approximate))
        return parallel_lm_logits(hidden, word_embeddings, self.context) + self.bias


class BertLanguageModel(nn.Module):
    """Embedding, bidirectional encoder and (with the binary head) pooler: Megatron's ``language_model``."""

    def __init__(
        self,
        config: ModelConfig,
        context: ParallelContext,
        seed: int,
        recompute: RecomputeConfig,
        add_pooler: bool,
    ):
        super().__init__()
        self.embedding = Embedding(config, context, seed, num_tokentypes=NUM_TOKENTYPES)
        self.encoder = ParallelTransformer(config, context, seed, recompute, causal=False)
        self.pooler = Pooler(config, seed) if add_pooler else None

    def forward(
        self, tokens: torch.Tensor, padding_mask: torch.Tensor, tokentype_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        embeddings = self.embedding(tokens, tokentype_ids=tokentype_ids)
        hidden = self.encoder(embeddings, padding_attention_mask(padding_mask))
        return hidden, self.pooler(hidden) if self.pooler is not None else None


class BertModel(nn.Module):
    """Masked-LM (and sentence-order) pretraining. With labels the forward returns the masked-LM loss
    (mean over ``loss_mask``), or with the binary head the pair ``(lm loss, sop loss)``: training
    backpropagates their sum and logs them apart (``aux_loss_name``). Without labels it returns
    ``(masked-LM logits, sentence-order logits or None)``, the logits gathered over the tensor-parallel
    ranks."""

    aux_loss_name = "sop loss"

    def __init__(
        self,
        config: ModelConfig,
        context: ParallelContext | None = None,
        seed: int = 1234,
        recompute: RecomputeConfig | None = None,
        binary_head: bool = True,
    ):
        super().__init__()
        self.config = config
        self.context = context or ParallelContext.single()
        self.language_model = BertLanguageModel(
            config, self.context, seed, recompute or RecomputeConfig(), add_pooler=binary_head
        )
        self.lm_head = BertLMHead(config, self.context, seed)
        self.binary_head = sentence_order_head(config, seed) if binary_head else None

    @property
    def transformer_layers(self) -> nn.ModuleList:
        return self.language_model.encoder.layers

    @property
    def word_embeddings_weight(self) -> nn.Parameter:
        return self.language_model.embedding.word_embeddings.weight

    def forward(
        self,
        tokens: torch.Tensor,
        padding_mask: torch.Tensor,
        tokentype_ids: torch.Tensor,
        lm_labels: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        sentence_order: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        hidden, pooled = self.language_model(tokens, padding_mask, tokentype_ids)
        lm_logits = self.lm_head(hidden, self.word_embeddings_weight)
        binary_logits = self.binary_head(pooled) if self.binary_head is not None else None
        if lm_labels is None:
            return gather_from_tensor_parallel_region(lm_logits, self.context.tensor_group), binary_logits
        lm_loss = language_model_loss(lm_logits, lm_labels, loss_mask, self.context)
        if binary_logits is None or sentence_order is None:
            return lm_loss
        return lm_loss, sentence_order_loss(binary_logits, sentence_order)
