"""Accuracy of the finetuned model on each validation set, over the whole set, as Megatron-LM reports it.

Each data-parallel rank scores its slice of every global micro batch. Ranks take the same number of
forwards (ZeRO 3 gathers parameters in every forward, so a rank left with no sample still runs one, on
repeated samples that are not counted); the counts are summed over the data-parallel ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from megatron.data.samplers import collate_text
from megatron.parallel.context import ParallelContext


@dataclass(frozen=True)
class Accuracy:
    name: str
    correct: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.correct / self.total if self.total else 0.0

    def report(self, where: str) -> str:
        """Megatron-LM's line (finetune_utils / eval_utils), with where in training it was measured."""
        return (
            f"metrics for {self.name} at {where}: correct / total = {self.correct} / {self.total} = "
            f"{self.percent:.4f} %"
        )


def evaluation_batches(
    dataset: Dataset, micro_batch_size: int, data_rank: int, data_size: int
) -> Iterator[tuple[dict, torch.Tensor]]:
    """This rank's micro batches of the whole set, each with the mask of the samples it counts."""
    size = len(dataset)
    step = micro_batch_size * data_size
    for start in range(0, size, step):
        indices = start + data_rank * micro_batch_size + np.arange(micro_batch_size)
        counted = indices < size
        samples = [dataset[int(index)] for index in np.minimum(indices, size - 1)]
        yield collate_text(samples), torch.from_numpy(counted)


@torch.no_grad()
def evaluate_accuracy(
    engine,
    dataset: Dataset,
    make_batch: Callable[[dict], object],
    micro_batch_size: int,
    parallel: ParallelContext,
) -> Accuracy:
    """Correct predictions (argmax of the logits) over the set; dropout off, training mode after."""
    engine.eval()
    counts = torch.zeros(2, dtype=torch.int64, device=engine.device)
    for sample, counted in evaluation_batches(
        dataset, micro_batch_size, parallel.data_rank, parallel.data_size
    ):
        batch = make_batch(sample)
        predicted = engine(*batch.model_inputs()[:-1]).argmax(dim=-1)
        counted = counted.to(engine.device)
        counts[0] += ((predicted == batch.labels) & counted).sum()
        counts[1] += counted.sum()
    engine.train()
    if dist.is_initialized() and parallel.data_size > 1:
        dist.all_reduce(counts, group=parallel.data_group)
    name = getattr(dataset, "name", "validation")
    return Accuracy(name, int(counts[0]), int(counts[1]))


def overall(results: list[Accuracy]) -> Accuracy:
    return Accuracy("overall", sum(r.correct for r in results), sum(r.total for r in results))
