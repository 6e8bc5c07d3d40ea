"""Blending several corpora: Megatron's greedy interleaving keeps every prefix close to the weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from megatron.data.blended_dataset import BlendedDataset, build_blending_indices
from megatron.data.gpt_dataset import BLEND_OVERSAMPLE, build_train_valid_test_datasets, parse_data_path
from tests.data.corpora import random_documents, write_corpus

SEQ = 8


def test_greedy_rule_by_hand() -> None:
    index, sample = build_blending_indices([0.5, 0.25, 0.25], 8)
    assert index.tolist() == [0, 1, 2, 0, 0, 1, 2, 0]
    assert sample.tolist() == [0, 0, 0, 1, 2, 1, 1, 3]


@pytest.mark.parametrize("weights", [[0.7, 0.3], [0.2, 0.5, 0.3], [0.01, 0.99], [0.25] * 4])
def test_every_prefix_keeps_the_weights(weights: list[float]) -> None:
    size = 2000
    index, sample = build_blending_indices(weights, size)
    one_hot = np.eye(len(weights), dtype=np.int64)[index]
    counts = np.cumsum(one_hot, axis=0)
    expected = np.outer(np.arange(1, size + 1), weights)
    assert np.abs(counts - expected).max() <= 1.0 + 1e-9
    for d in range(len(weights)):  # each corpus is read in order, without gaps
        assert sample[index == d].tolist() == list(range(int((index == d).sum())))


def test_blended_datasets_from_data_path(tmp_path: Path) -> None:
    a = write_corpus(tmp_path, random_documents(60, seed=1), name="a")
    b = write_corpus(tmp_path, [np.full(20, 60001 + i % 3) for i in range(60)], name="b")
    data_path = parse_data_path(["3", a, "1", b])
    train, valid, test = build_train_valid_test_datasets(data_path, "90,10,0", (400, 40, 5), SEQ, seed=9)
    assert isinstance(train, BlendedDataset) and len(train) == 400 and len(valid) == 40 and test is None
    from_b = [bool((train[i]["text"] > 60000).all()) for i in range(400)]
    assert abs(sum(from_b) / 400 - 0.25) < 0.01
    # Each component was asked for its share plus Megatron's 0.5% margin.
    part_a, part_b = train.datasets
    assert len(part_a) >= int(np.ceil(400 * 0.75 * BLEND_OVERSAMPLE))
    assert len(part_b) >= int(np.ceil(400 * 0.25 * BLEND_OVERSAMPLE))
    again, _, _ = build_train_valid_test_datasets(data_path, "90,10,0", (400, 40, 5), SEQ, seed=9)
    assert all(np.array_equal(train[i]["text"], again[i]["text"]) for i in range(0, 400, 7))
    assert len(list(tmp_path.glob("blend_*.npy"))) == 4  # train and valid, two arrays each


def test_weights_must_match_datasets() -> None:
    with pytest.raises(ValueError, match="2 datasets but 1 weights"):
        BlendedDataset([[{"text": 1}], [{"text": 2}]], [1.0], 2)
    with pytest.raises(ValueError, match="sum to 1"):
        BlendedDataset([[{"text": 1}], [{"text": 2}]], [0.5, 0.6], 2)
