"""BERT's and T5's data for the training loop: their datasets and the batches their models take.

Both read corpora preprocessed with ``--split-sentences`` (:mod:`megatron.data.sentence_samples`); the
model forward arguments are those of :class:`megatron.model.bert.BertModel` and
:class:`megatron.model.t5.T5Model`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron.config.schema import Config, MaskedLMConfig
from megatron.data.bert_dataset import BertDataset
from megatron.data.sentence_samples import build_split_datasets
from megatron.data.t5_dataset import T5Dataset
from megatron.parallel.context import ParallelContext
from megatron.training.data_provider import Datasets
from megatron.training.step import PipelineSample


@dataclass(frozen=True)
class BertBatch:
    tokens: torch.Tensor
    padding_mask: torch.Tensor
    tokentype_ids: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    sentence_order: torch.Tensor | None

    def model_inputs(self) -> tuple:
        return (
            self.tokens,
            self.padding_mask,
            self.tokentype_ids,
            self.labels,
            self.loss_mask,
            self.sentence_order,
        )

    def pipeline_inputs(self) -> PipelineSample:
        """The first stage's inputs and the last stage's loss labels (:mod:`megatron.model.bert_pipe`)."""
        labels = (self.labels, self.loss_mask)
        if self.sentence_order is not None:
            labels += (self.sentence_order,)
        return (self.tokens, self.padding_mask, self.tokentype_ids), labels


@dataclass(frozen=True)
class T5Batch:
    encoder_tokens: torch.Tensor
    decoder_tokens: torch.Tensor
    encoder_padding_mask: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor

    def model_inputs(self) -> tuple:
        return (
            self.encoder_tokens,
            self.decoder_tokens,
            self.encoder_padding_mask,
            self.labels,
            self.loss_mask,
        )


def _split_datasets(config: Config, num_samples: tuple[int, int, int], factory) -> Datasets:
    """The train/valid/test datasets of the sentence-split corpus, each built by ``factory(name, indexed,
    documents, samples)``."""
    data = config.data
    return tuple(build_split_datasets(data.data_path, data.split, num_samples, factory, data.data_cache_path))


def _on_device(sample: dict, device: torch.device, *keys: str) -> list[torch.Tensor]:
    """The named fields of a collated micro batch, moved to ``device`` (the others stay behind)."""
    return [sample[key].to(device, non_blocking=True) for key in keys]


@dataclass(frozen=True)
class BertData:
    tokenizer: object
    masked_lm: MaskedLMConfig

    def build_datasets(self, config: Config, num_samples: tuple[int, int, int]) -> Datasets:
        settings = self.masked_lm

        def factory(name, indexed, documents, samples):
            return BertDataset(
                name, indexed, documents, samples, config.model.seq_length, settings.mask_prob,
                settings.short_seq_prob, settings.binary_head, self.tokenizer, config.seed,
                config.data.data_cache_path,
            )  # fmt: skip

        return _split_datasets(config, num_samples, factory)

    def make_batch(
        self, sample: dict, device: torch.device, parallel: ParallelContext, seq_length: int | None = None
    ) -> BertBatch:
        tokens, padding_mask, types, labels, loss_mask = _on_device(
            sample, device, "text", "padding_mask", "types", "labels", "loss_mask"
        )
        binary_head = self.masked_lm.binary_head
        return BertBatch(
            tokens=tokens,
            padding_mask=padding_mask,
            tokentype_ids=types,
            labels=labels,
            loss_mask=loss_mask.float(),
            sentence_order=_on_device(sample, device, "is_random")[0] if binary_head else None,
        )


@dataclass(frozen=True)
class T5Data:
    tokenizer: object
    masked_lm: MaskedLMConfig

    def build_datasets(self, config: Config, num_samples: tuple[int, int, int]) -> Datasets:
        settings = self.masked_lm

        def factory(name, indexed, documents, samples):
            return T5Dataset(
                name, indexed, documents, samples, config.model.seq_length, settings.decoder_seq_length,
                settings.mask_prob, settings.short_seq_prob, self.tokenizer, config.seed,
                config.data.data_cache_path,
            )  # fmt: skip

        return _split_datasets(config, num_samples, factory)

    def make_batch(
        self, sample: dict, device: torch.device, parallel: ParallelContext, seq_length: int | None = None
    ) -> T5Batch:
        encoder_tokens, decoder_tokens, encoder_mask, labels, loss_mask = _on_device(
            sample, device, "text_enc", "text_dec", "enc_mask", "labels", "loss_mask"
        )
        return T5Batch(
            encoder_tokens=encoder_tokens,
            decoder_tokens=decoder_tokens,
            encoder_padding_mask=encoder_mask,
            labels=labels,
            loss_mask=loss_mask.float(),
        )
