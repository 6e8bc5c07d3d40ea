"""Pretraining sampler and loader: ranks split each global batch, and resuming continues exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron.config.errors import ConfigError
from megatron.data.samplers import MegatronPretrainingSampler, build_pretraining_data_loader


class CountingDataset(torch.utils.data.Dataset):
    """Sample i is [i, i + 1, ..., i + 4], so a batch shows which indices it holds."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"text": np.arange(i, i + 5, dtype=np.int64)}


def batches(
    total: int, consumed: int, mbs: int, rank: int, size: int, drop_last: bool = True
) -> list[list[int]]:
    return list(MegatronPretrainingSampler(total, consumed, mbs, rank, size, drop_last))


def test_rank_slices() -> None:
    assert batches(12, 0, 2, 0, 2) == [[0, 1], [4, 5], [8, 9]]
    assert batches(12, 0, 2, 1, 2) == [[2, 3], [6, 7], [10, 11]]
    assert batches(13, 0, 2, 1, 2) == [[2, 3], [6, 7], [10, 11]]  # the short tail is dropped


def test_dp1_and_dp2_cover_the_same_samples_per_global_batch() -> None:
    total, mbs = 50, 3
    single = batches(total, 0, 2 * mbs, 0, 1)
    ranks = [batches(total, 0, mbs, r, 2) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == total // (2 * mbs)
    for step, global_batch in enumerate(single):
        assert ranks[0][step] + ranks[1][step] == global_batch


def test_resume_continues_exactly() -> None:
    total, mbs, dp = 40, 2, 2
    for rank in range(dp):
        full = batches(total, 0, mbs, rank, dp)
        for done in range(len(full)):
            consumed = done * mbs * dp
            assert batches(total, consumed, mbs, rank, dp) == full[done:]


def test_len_and_drop_last() -> None:
    assert len(MegatronPretrainingSampler(13, 0, 2, 0, 2)) == 3
    assert batches(13, 0, 2, 0, 2, drop_last=False) == [[0, 1], [4, 5], [8, 9], [12]]
    assert batches(13, 0, 2, 1, 2, drop_last=False) == [[2, 3], [6, 7], [10, 11]]
    assert len(MegatronPretrainingSampler(13, 0, 2, 0, 2, drop_last=False)) == 4
    assert len(MegatronPretrainingSampler(13, 0, 2, 1, 2, drop_last=False)) == 3


def test_sampler_errors() -> None:
    with pytest.raises(ConfigError, match=r"consumed_samples 10 leaves no sample of 10"):
        MegatronPretrainingSampler(10, 10, 1, 0, 1)
    with pytest.raises(ConfigError, match=r"--micro-batch-size 0 must be a positive integer"):
        MegatronPretrainingSampler(10, 0, 0, 0, 1)
    with pytest.raises(ConfigError, match=r"data-parallel rank 2 is not in \[0, 2\)"):
        MegatronPretrainingSampler(10, 0, 1, 2, 2)
    with pytest.raises(ConfigError, match=r"the dataset has 0 samples"):
        MegatronPretrainingSampler(0, 0, 1, 0, 1)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_data_loader(num_workers: int) -> None:
    loader = build_pretraining_data_loader(CountingDataset(20), 4, 2, 1, 2, num_workers)
    got = [batch["text"] for batch in loader]
    assert len(got) == len(loader) == 4
    assert all(t.dtype == torch.int64 and t.shape == (2, 5) for t in got)
    assert [t[:, 0].tolist() for t in got] == [[6, 7], [10, 11], [14, 15], [18, 19]]


def test_data_loader_none_and_bad_workers() -> None:
    assert build_pretraining_data_loader(None, 0, 1, 0, 1, 0) is None
    with pytest.raises(ConfigError, match=r"--num-workers -1"):
        build_pretraining_data_loader(CountingDataset(4), 0, 1, 0, 1, -1)
