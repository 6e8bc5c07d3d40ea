"""BERT with a task head for finetuning, as Megatron-LM's ``Classification`` and ``MultipleChoice`` models.

Both take the pretrained ``language_model`` (embedding, encoder, pooler) of :mod:`megatron.model.bert`,
without its masked-LM and sentence-order heads, and put on the pooled ``[CLS]`` state a dropout
(``--hidden-dropout``) and one linear layer (``classification_head``, replicated on every tensor-parallel
rank as in Megatron): ``num_classes`` logits for a classification, one score per choice for a multiple
choice, where the choices of a sample are run as a batch and the loss is the softmax over them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megatron.config.schema import ModelConfig, RecomputeConfig
from megatron.model.bert import BertLanguageModel, replicated_linear
from megatron.parallel.context import ParallelContext
from megatron.parallel.random import init_generator

# The init_generator path of the head (bert.py's heads use -2 to -4).
CLASSIFICATION_HEAD_INIT_PATH = -5


class BertClassifier(nn.Module):
    """``num_classes`` logits per sample from ``tokens`` [batch, seq]; with ``num_choices`` the tokens are
    [batch, choices, seq] and the logits one score per choice ([batch, choices]). With ``labels`` the
    forward returns the mean cross entropy (float32), without them the logits."""

    def __init__(
        self,
        config: ModelConfig,
        num_classes: int,
        context: ParallelContext | None = None,
        seed: int = 1234,
        recompute: RecomputeConfig | None = None,
        multiple_choice: bool = False,
    ):
        super().__init__()
        self.config = config
        self.multiple_choice = multiple_choice
        self.context = context or ParallelContext.single()
        self.language_model = BertLanguageModel(
            config, self.context, seed, recompute or RecomputeConfig(), add_pooler=True
        )
        self.classification_dropout = nn.Dropout(config.hidden_dropout)
        generator = init_generator(seed, CLASSIFICATION_HEAD_INIT_PATH)
        outputs = 1 if multiple_choice else num_classes
        self.classification_head = replicated_linear(
            config.hidden_size, outputs, config.init_method_std, generator
        )

    @property
    def transformer_layers(self) -> nn.ModuleList:
        return self.language_model.encoder.layers

    def forward(
        self,
        tokens: torch.Tensor,
        padding_mask: torch.Tensor,
        tokentype_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch = tokens.shape[0]
        if self.multiple_choice:  # every choice of every sample is one sequence of the encoder's batch
            tokens, padding_mask, tokentype_ids = (
                tensor.reshape(-1, tensor.shape[-1]) for tensor in (tokens, padding_mask, tokentype_ids)
            )
        _, pooled = self.language_model(tokens, padding_mask, tokentype_ids)
        logits = self.classification_head(self.classification_dropout(pooled))
        if self.multiple_choice:
            logits = logits.reshape(batch, -1)
        if labels is None:
            return logits
        return F.cross_entropy(logits.float(), labels)
