"""GPT: learned absolute positions, pre-LN transformer, output projection tied to the input embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megatron.config.schema import ModelConfig
from megatron.model.transformer import ParallelTransformer, init_normal_


class Embedding(nn.Module):
    """Word plus position embeddings, then dropout (Megatron's ``language_model.embedding``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        init_normal_(self.word_embeddings.weight, config.init_method_std)
        init_normal_(self.position_embeddings.weight, config.init_method_std)
        self.embedding_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.embedding_dropout(self.word_embeddings(tokens) + self.position_embeddings(positions))


class TransformerLanguageModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embedding = Embedding(config)
        self.encoder = ParallelTransformer(config)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embedding(tokens))


class GPTModel(nn.Module):
    """Returns the mean language-model loss when ``labels`` are given, else the logits.

    The loss is computed here, in float32, so that the DeepSpeed engine's forward returns exactly what its
    ``backward`` needs and the logits of a micro batch never outlive the step.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.language_model = TransformerLanguageModel(config)

    @property
    def transformer_layers(self) -> nn.ModuleList:
        return self.language_model.encoder.layers

    @property
    def word_embeddings_weight(self) -> nn.Parameter:
        return self.language_model.embedding.word_embeddings.weight

    def forward(
        self,
        tokens: torch.Tensor,
        labels: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.language_model(tokens)
        logits = F.linear(hidden, self.word_embeddings_weight)
        if labels is None:
            return logits
        losses = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
        if loss_mask is None:
            return losses.mean()
        mask = loss_mask.flatten().float()
        return (losses * mask).sum() / mask.sum().clamp(min=1.0)
