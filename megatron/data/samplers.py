"""Which samples each data-parallel rank reads, and the DataLoader that reads them.

Megatron's pretraining order: samples are taken in index order (the datasets already shuffle), cut into global
micro-batches of ``micro_batch_size * data_parallel_size``, and rank ``r`` reads the ``r``-th contiguous slice
of each. The position is a single number, ``consumed_samples``, which is what a checkpoint stores: resuming
from it continues with exactly the batch that would have come next, whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from megatron.config.errors import ConfigError


class MegatronPretrainingSampler:
    """Yields this rank's list of sample indices for each micro-batch, starting at ``consumed_samples``."""

    def __init__(
        self,
        total_samples: int,
        consumed_samples: int,
        micro_batch_size: int,
        data_parallel_rank: int,
        data_parallel_size: int,
        drop_last: bool = True,
    ) -> None:
        if total_samples <= 0:
            raise ConfigError(
                f"the dataset has {total_samples} samples; ask for at least one (--train-iters)."
            )
        if not 0 <= consumed_samples < total_samples:
            raise ConfigError(
                f"consumed_samples {consumed_samples} leaves no sample of {total_samples} to read; the "
                "checkpoint was trained past this dataset: raise --train-iters / --train-samples, or start "
                "without it."
            )
        if micro_batch_size <= 0:
            raise ConfigError(f"--micro-batch-size {micro_batch_size} must be a positive integer.")
        if data_parallel_size <= 0 or not 0 <= data_parallel_rank < data_parallel_size:
            raise ConfigError(
                f"data-parallel rank {data_parallel_rank} is not in [0, {data_parallel_size}); pass the rank "
                "and size of the data-parallel group."
            )
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.global_micro_batch = micro_batch_size * data_parallel_size
        self.drop_last = drop_last

    def _my_slice(self, batch: list[int]) -> list[int]:
        start = self.data_parallel_rank * self.micro_batch_size
        return batch[start : start + self.micro_batch_size]

    def __len__(self) -> int:
        remaining = self.total_samples - self.consumed_samples
        full, rest = divmod(remaining, self.global_micro_batch)
        has_tail = not self.drop_last and rest > self.data_parallel_rank * self.micro_batch_size
        return full + int(has_tail)

    def __iter__(self) -> Iterator[list[int]]:
        batch: list[int] = []
        for idx in range(self.consumed_samples, self.total_samples):
            batch.append(idx)
            if len(batch) == self.global_micro_batch:
                yield self._my_slice(batch)
                batch = []
        # A short last batch only without drop_last; a rank whose slice of it is empty gets nothing.
        if batch and not self.drop_last and self._my_slice(batch):
            yield self._my_slice(batch)


def collate_text(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack each field of the samples into one LongTensor: GPT's ``text`` is ``[batch, seq_length + 1]``;
    BERT and T5 samples have several fields."""
    return {
        key: torch.from_numpy(np.stack([s[key] for s in samples]).astype(np.int64, copy=False))
        for key in samples[0]
    }


def build_pretraining_data_loader(
    dataset: Dataset | None,
    consumed_samples: int,
    micro_batch_size: int,
    data_parallel_rank: int,
    data_parallel_size: int,
    num_workers: int,
) -> DataLoader | None:
    """A DataLoader over this rank's micro-batches; None for a None dataset (a split not asked for)."""
    if dataset is None:
        return None
    if num_workers < 0:
        raise ConfigError(f"--num-workers {num_workers} must be 0 or more; 0 loads in the training process.")
    sampler = MegatronPretrainingSampler(
        total_samples=len(dataset),
        consumed_samples=consumed_samples,
        micro_batch_size=micro_batch_size,
        data_parallel_rank=data_parallel_rank,
        data_parallel_size=data_parallel_size,
    )
    # A generator of its own: each new iterator of a DataLoader otherwise draws a seed from the global torch
    # RNG, which would shift the dropout masks of a resumed run against those of an uninterrupted one.
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_text,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(0),
    )
