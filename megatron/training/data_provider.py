"""What the training loop needs from a model family's data: its datasets, and batches for its model.

:class:`megatron.training.pretrain.Pretraining` is the same loop for GPT, BERT and T5; only this differs.
A provider builds the train/valid/test datasets from the config and turns a collated micro batch (a dict of
LongTensors, one per field of the samples) into a batch whose ``model_inputs()`` are the positional
arguments of the model's forward; the batches of a family that runs pipeline-parallel (GPT, BERT) also give
``pipeline_inputs()``, the first stage's inputs and the last stage's loss labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from megatron.config.schema import Config
from megatron.data.gpt_dataset import build_separate_datasets, build_train_valid_test_datasets
from megatron.parallel.context import ParallelContext
from megatron.training.step import Batch, make_batch

Datasets = tuple[
    torch.utils.data.Dataset | None, torch.utils.data.Dataset | None, torch.utils.data.Dataset | None
]


class ModelBatch(Protocol):
    def model_inputs(self) -> tuple: ...


class DataProvider(Protocol):
    def build_datasets(self, config: Config, num_samples: tuple[int, int, int]) -> Datasets: ...

    def make_batch(
        self, sample: dict, device: torch.device, parallel: ParallelContext, seq_length: int | None = None
    ) -> ModelBatch: ...


@dataclass(frozen=True)
class GPTData:
    """GPT: fixed-length token windows of the document stream, next-token labels."""

    eod: int
    eod_mask_loss: bool = False

    def build_datasets(self, config: Config, num_samples: tuple[int, int, int]) -> Datasets:
        data = config.data
        if data.split_paths is not None:
            return build_separate_datasets(
                data.split_paths, num_samples, config.model.seq_length, config.seed, data.data_cache_path
            )
        return build_train_valid_test_datasets(
            data.data_path,
            data.split,
            num_samples,
            config.model.seq_length,
            config.seed,
            cache_dir=data.data_cache_path,
        )

    def make_batch(
        self, sample: dict, device: torch.device, parallel: ParallelContext, seq_length: int | None = None
    ) -> Batch:
        return make_batch(sample, device, self.eod, self.eod_mask_loss, parallel, seq_length)
