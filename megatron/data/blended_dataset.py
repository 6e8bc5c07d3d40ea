"""Several corpora mixed by weight, in a fixed interleaving that every rank computes identically.

The interleaving is Megatron's greedy rule: sample ``i`` is taken from the corpus whose count so far lags
its weight the most (largest ``weight * max(i, 1) - taken``, lowest index on ties). Unlike random sampling by
weight, every prefix of the blend holds each corpus within about one sample of its share, so short runs and
evaluation see the intended mix. The rule is sequential by nature (each choice depends on all earlier
ones), so it is a plain loop of O(size x corpora) steps; the result is cached next to the GPT indices.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from megatron.data.sample_index import cache_key, load_or_build

logger = logging.getLogger(__name__)


def build_blending_indices(weights: Sequence[float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """For each blended sample: which corpus it comes from and which sample of that corpus it is."""
    num = len(weights)
    w = [float(x) for x in weights]
    taken = [0] * num
    dataset_index = np.empty(size, dtype=np.int16)
    dataset_sample_index = np.empty(size, dtype=np.int64)
    for i in range(size):
        step = max(i, 1)
        best, best_lag = 0, w[0] * step - taken[0]
        for d in range(1, num):
            lag = w[d] * step - taken[d]
            if lag > best_lag:
                best, best_lag = d, lag
        dataset_index[i] = best
        dataset_sample_index[i] = taken[best]
        taken[best] += 1
    return dataset_index, dataset_sample_index


class BlendedDataset(torch.utils.data.Dataset):
    """``size`` samples drawn from ``datasets`` in the proportions ``weights`` (which must sum to 1)."""

    def __init__(
        self,
        datasets: Sequence[torch.utils.data.Dataset],
        weights: Sequence[float],
        size: int,
        cache_dir: str | None = None,
    ) -> None:
        if len(datasets) != len(weights) or not datasets:
            raise ValueError(f"{len(datasets)} datasets but {len(weights)} weights")
        if not np.isclose(sum(weights), 1.0) or min(weights) <= 0:
            raise ValueError(f"blend weights must be positive and sum to 1, got {list(weights)}")
        self.datasets = list(datasets)
        self.weights = [float(w) for w in weights]
        self.size = size
        keys = [getattr(d, "cache_key", None) for d in self.datasets]
        arrays = {}
        build = self._build_indices
        if all(keys):
            # Named after the components' own cache keys, so it is rebuilt whenever any of them is.
            key = cache_key({"class": "BlendedDataset", "parts": keys, "weights": self.weights, "size": size})
            folder = cache_dir or os.path.dirname(
                os.path.abspath(self.datasets[0].indexed_dataset.path_prefix)
            )
            arrays = load_or_build(folder, f"blend_{key}", ("dataset_index", "dataset_sample_index"), build)
        else:
            arrays = build()
        self.dataset_index = arrays["dataset_index"]
        self.dataset_sample_index = arrays["dataset_sample_index"]

    def _build_indices(self) -> dict[str, np.ndarray]:
        dataset_index, dataset_sample_index = build_blending_indices(self.weights, self.size)
        for d, dataset in enumerate(self.datasets):
            taken = int(np.count_nonzero(dataset_index == d))
            if taken > len(dataset):
                raise ValueError(
                    f"blend takes {taken} samples from dataset {d}, which has {len(dataset)}; build each "
                    "component with at least weight * size * 1.005 samples"
                )
        shares = ", ".join(
            f"{np.count_nonzero(dataset_index == d) / max(self.size, 1):.4f}"
            for d in range(len(self.datasets))
        )
        logger.info("blended %d samples; achieved shares %s for weights %s", self.size, shares, self.weights)
        return {"dataset_index": dataset_index, "dataset_sample_index": dataset_sample_index}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        if not 0 <= idx < self.size:
            raise IndexError(f"sample {idx} out of range for a blend of {self.size} samples")
        return self.datasets[int(self.dataset_index[idx])][int(self.dataset_sample_index[idx])]
