"""GPT samples: length, overlap, the shuffled document stream they rebuild, splits, seeds and the cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from megatron.config.errors import ConfigError
from megatron.data import gpt_dataset
from megatron.data.gpt_dataset import (
    GPTDataset,
    build_train_valid_test_datasets,
    parse_data_path,
    parse_split,
)
from megatron.data.indexed_dataset import MMapIndexedDataset
from megatron.data.sample_index import build_gpt_indices, build_sample_idx, num_epochs_needed
from tests.data.corpora import random_documents, write_corpus

SEQ = 16


def loop_sample_idx(sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int, num_samples: int) -> np.ndarray:
    """Megatron's sample-index walk, one sample at a time, as the reference for the vectorised version."""
    out = np.zeros((num_samples + 1, 2), dtype=np.int64)
    index, offset = 0, 0
    for s in range(1, num_samples + 1):
        remaining = seq_length + 1
        while remaining != 0:
            length = int(sizes[doc_idx[index]]) - offset
            remaining -= length
            if remaining <= 0:
                offset += remaining + length - 1
                remaining = 0
            else:
                index += 1
                offset = 0
        out[s] = (index, offset)
    return out


def unshuffled(ds: GPTDataset) -> list[np.ndarray]:
    """Samples in stream order: invert the shuffle so sample i starts at stream token i * seq_length."""
    order = np.argsort(np.asarray(ds.shuffle_idx))
    return [ds[int(j)]["text"] for j in order]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_sample_index_matches_the_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 50, size=30).astype(np.int32)
    doc_idx = np.tile(np.arange(30, dtype=np.int32), 3)
    rng.shuffle(doc_idx)
    seq_length = int(rng.integers(1, 40))
    num_samples = (int(sizes.sum()) * 3 - 1) // seq_length
    ours = build_sample_idx(sizes, doc_idx, seq_length, num_samples)
    assert np.array_equal(ours, loop_sample_idx(sizes, doc_idx, seq_length, num_samples))


def test_num_epochs_needed() -> None:
    assert num_epochs_needed(100, 10, 9) == 1  # (100 - 1) // 10 = 9 samples fit in one epoch
    assert num_epochs_needed(100, 10, 10) == 2
    assert num_epochs_needed(100, 10, 0) == 1
    for tokens, seq, n in [(7, 3, 11), (1000, 7, 5000), (2, 1, 1)]:
        e = num_epochs_needed(tokens, seq, n)
        assert (e * tokens - 1) // seq >= n and ((e - 1) * tokens - 1) // seq < n


@pytest.mark.parametrize("num_samples", [5, 40, 200])
def test_samples_reconstruct_the_shuffled_document_stream(tmp_path: Path, num_samples: int) -> None:
    docs = random_documents(25, seed=3)
    indexed = MMapIndexedDataset(write_corpus(tmp_path, docs))
    ds = GPTDataset("train", indexed, range(0, 25), num_samples, SEQ, seed=7)
    assert len(ds) >= num_samples
    samples = unshuffled(ds)
    assert all(s.dtype == np.int64 and s.shape == (SEQ + 1,) for s in samples)
    stream = np.concatenate([docs[d] for d in np.asarray(ds.doc_idx)])
    for i, s in enumerate(samples):
        assert np.array_equal(s, stream[i * SEQ : i * SEQ + SEQ + 1])
        if i:
            assert samples[i - 1][-1] == s[0]  # consecutive samples share one token
    # Every document is read once per epoch, for as many epochs as the samples need.
    epochs = num_epochs_needed(sum(len(d) for d in docs), SEQ, num_samples)
    assert np.bincount(np.asarray(ds.doc_idx), minlength=25).tolist() == [epochs] * 25


def test_separate_last_epoch_matches_megatrons_rule() -> None:
    sizes = np.full(10, 11, dtype=np.int32)  # 110 tokens per epoch, 10 samples of 10 per epoch (109 // 10)
    docs = np.arange(10)
    short_tail = build_gpt_indices(sizes, docs, 12, 10, seed=1)  # 2 samples of the 2nd epoch: shuffled apart
    assert set(short_tail["shuffle_idx"][:10].tolist()) == set(range(10))
    assert set(short_tail["doc_idx"][10:].tolist()) == set(range(10))
    long_tail = build_gpt_indices(sizes, docs, 19, 10, seed=1)  # 9 of 10: one shuffle over everything
    assert len(long_tail["shuffle_idx"]) == (2 * 110 - 1) // 10
    assert set(long_tail["shuffle_idx"][:10].tolist()) != set(range(10))


def test_zero_length_documents_are_skipped(tmp_path: Path) -> None:
    docs = [np.arange(5), np.array([], dtype=np.int64), np.arange(100, 103), np.array([], dtype=np.int64)]
    indexed = MMapIndexedDataset(write_corpus(tmp_path, docs))
    ds = GPTDataset("train", indexed, range(0, 4), 6, 3, seed=0)
    stream = np.concatenate([docs[d] for d in np.asarray(ds.doc_idx)])
    for i, s in enumerate(unshuffled(ds)):
        assert np.array_equal(s, stream[3 * i : 3 * i + 4])


def test_deterministic_for_a_seed_and_different_for_another(tmp_path: Path) -> None:
    prefix = write_corpus(tmp_path, random_documents(40, seed=1))

    def texts(seed: int, folder: str) -> list[list[int]]:
        train, _, _ = build_train_valid_test_datasets([(1.0, prefix)], "1", (30, 0, 0), SEQ, seed, folder)
        return [train[i]["text"].tolist() for i in range(30)]

    a = texts(1234, str(tmp_path / "c1"))
    assert a == texts(1234, str(tmp_path / "c2"))  # rebuilt from scratch elsewhere: same samples
    assert a != texts(4321, str(tmp_path / "c3"))


def test_parse_split() -> None:
    assert parse_split("969,30,1", 1000) == [range(0, 969), range(969, 999), range(999, 1000)]
    assert parse_split("98,2,0", 100) == [range(0, 98), range(98, 100), range(100, 100)]
    assert parse_split("1", 7) == [range(0, 7), range(7, 7), range(7, 7)]
    assert parse_split("90/10", 50) == [range(0, 45), range(45, 50), range(50, 50)]
    # Rounding overshoot is taken back from every boundary, as Megatron does.
    assert parse_split("1,1,1", 10) == [range(0, 4), range(4, 7), range(7, 10)]
    splits = parse_split("5,3,2", 37)
    assert sum(len(r) for r in splits) == 37 and splits[0].start == 0 and splits[2].stop == 37


@pytest.mark.parametrize("split", ["a,b,c", "1,2,3,4", "-1,2,0", "0,0,0", "", "1,,2"])
def test_bad_split(split: str) -> None:
    with pytest.raises(ConfigError, match=rf"--split '{split}'"):
        parse_split(split, 10)


def test_split_sizes_follow_the_split_flag(tmp_path: Path) -> None:
    prefix = write_corpus(tmp_path, random_documents(100, seed=2))
    train, valid, test = build_train_valid_test_datasets([(1.0, prefix)], "80,15,5", (10, 10, 10), SEQ, 1)
    assert (train.doc_idx.min(), train.doc_idx.max()) == (0, 79)
    assert (valid.doc_idx.min(), valid.doc_idx.max()) == (80, 94)
    assert (test.doc_idx.min(), test.doc_idx.max()) == (95, 99)
    assert len(train) >= 10 and len(valid) >= 10 and len(test) >= 10

    _, valid, test = build_train_valid_test_datasets([(1.0, prefix)], "98,2,0", (10, 10, 10), SEQ, 1)
    assert valid is not None and test is None  # an empty split
    train, valid, _ = build_train_valid_test_datasets([(1.0, prefix)], "98,2,0", (10, 0, 0), SEQ, 1)
    assert train is not None and valid is None  # nothing asked of it


def test_cache_files_are_written_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    prefix = write_corpus(tmp_path / "data", random_documents(30, seed=4))
    first, _, _ = build_train_valid_test_datasets([(1.0, prefix)], "1", (20, 0, 0), SEQ, 5)
    cached = sorted(p.name for p in (tmp_path / "data").glob("*.npy"))
    assert len(cached) == 3 and all(name.startswith("corpus_text_document_train_") for name in cached)
    assert not list((tmp_path / "data").glob("*.tmp"))

    def must_not_build(*args, **kwargs):
        raise AssertionError("the cached index should have been loaded")

    monkeypatch.setattr(gpt_dataset, "build_gpt_indices", must_not_build)
    second, _, _ = build_train_valid_test_datasets([(1.0, prefix)], "1", (20, 0, 0), SEQ, 5)
    assert isinstance(second.sample_idx, np.memmap)
    assert [second[i]["text"].tolist() for i in range(20)] == [first[i]["text"].tolist() for i in range(20)]
    with pytest.raises(AssertionError, match="cached index"):  # another seed is another cache entry
        build_train_valid_test_datasets([(1.0, prefix)], "1", (20, 0, 0), SEQ, 6)


def test_cache_dir(tmp_path: Path) -> None:
    prefix = write_corpus(tmp_path, random_documents(30, seed=4))
    build_train_valid_test_datasets(
        [(1.0, prefix)], "1", (20, 0, 0), SEQ, 5, cache_dir=str(tmp_path / "cache")
    )
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
    assert not list(tmp_path.glob("*.npy"))


def test_too_few_tokens_for_a_split(tmp_path: Path) -> None:
    prefix = write_corpus(tmp_path, [[1], [2, 3, 4, 5]])
    with pytest.raises(ConfigError, match=r"--split gives the train split .* 1 tokens: too few"):
        build_train_valid_test_datasets([(1.0, prefix)], "1,1", (4, 4, 0), SEQ, 1)


def test_parse_data_path(tmp_path: Path) -> None:
    a = write_corpus(tmp_path, [[1, 2]], name="a")
    b = write_corpus(tmp_path, [[1, 2]], name="b")
    assert parse_data_path([a]) == ((1.0, a),)
    assert parse_data_path(["3", a, "1", b]) == ((0.75, a), (0.25, b))


def test_parse_data_path_errors(tmp_path: Path) -> None:
    a = write_corpus(tmp_path, [[1, 2]], name="a")
    with pytest.raises(ConfigError, match=r"--data-path .* has 3 items; .* weight/prefix pairs"):
        parse_data_path(["0.5", a, "0.5"])
    with pytest.raises(ConfigError, match=r"--data-path weight 'half' \(before .*\) is not a number"):
        parse_data_path(["half", a, "0.5", a])
    with pytest.raises(ConfigError, match=r"--data-path weight '0' for .* must be a positive number"):
        parse_data_path(["0", a, "1", a])
    with pytest.raises(ConfigError, match=r"--data-path weight '-1' for .* must be a positive number"):
        parse_data_path(["-1", a, "1", a])
    with pytest.raises(ConfigError, match=r"--data-path is empty"):
        parse_data_path([])
    missing = str(tmp_path / "corpus")
    with pytest.raises(
        ConfigError, match=r"--data-path prefix .*corpus': .*corpus\.bin and .*corpus\.idx not found"
    ):
        parse_data_path([missing])
    os.remove(a + ".idx")
    with pytest.raises(
        ConfigError, match=r"a_text_document\.idx not found.*preprocess_data\.py.*_text_document"
    ):
        parse_data_path(["1", a])


def test_separate_split_paths_read_each_corpus_whole(tmp_path: Path) -> None:
    """--train-data-path 3 A 1 B --valid-data-path V: the train samples blend every document of A and B, the
    validation samples come from every document of V, and a split without a path has no dataset."""
    corpora = {name: random_documents(12, seed=seed) for name, seed in (("a", 1), ("b", 2), ("v", 3))}
    offsets = {"a": 0, "b": 10_000, "v": 20_000}  # each corpus its own token range, to trace samples back
    prefixes = {
        name: write_corpus(tmp_path, [doc + offsets[name] for doc in docs], name)
        for name, docs in corpora.items()
    }

    def source(sample: np.ndarray) -> str:
        (name,) = {name for name, start in offsets.items() if start <= sample.min() < start + 10_000}
        return name

    train, valid, test = gpt_dataset.build_separate_datasets(
        (((0.75, prefixes["a"]), (0.25, prefixes["b"])), ((1.0, prefixes["v"]),), None), (40, 10, 5), SEQ, 5
    )
    assert test is None
    sources = [source(train[i]["text"]) for i in range(40)]
    assert (sources.count("a"), sources.count("b")) == (30, 10)
    assert all(source(valid[i]["text"]) == "v" for i in range(len(valid)))
    assert len(valid) >= 10 and set(np.asarray(valid.doc_idx).tolist()) == set(range(12))
    for part in train.datasets:
        assert set(np.asarray(part.doc_idx).tolist()) == set(range(12))
