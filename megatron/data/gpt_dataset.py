"""GPT pretraining samples from preprocessed corpora: ``--data-path``, ``--split`` and the per-split datasets.

Each sample is ``seq_length + 1`` consecutive tokens of a shuffled stream of documents (documents are joined
back to back, separated only by the eod token that preprocessing appended), so no token is wasted on padding.
The index arithmetic lives in :mod:`megatron.data.sample_index`, mixing several corpora in
:mod:`megatron.data.blended_dataset`. Nothing here talks to torch.distributed: every rank builds (or loads
from the cache) the same arrays for the same seed.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from megatron.config.errors import ConfigError
from megatron.data.blended_dataset import BlendedDataset
from megatron.data.indexed_dataset import MMapIndexedDataset, data_file_path, index_file_path
from megatron.data.sample_index import build_gpt_indices, cache_key, load_or_build

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")
# Megatron asks each corpus of a blend for 0.5% more than its share, so the greedy interleaving of
# BlendedDataset, which may run slightly ahead of a weight, never asks a corpus for a sample it lacks.
BLEND_OVERSAMPLE = 1.005
_INDEX_FORMAT_VERSION = 1


class GPTDataset(torch.utils.data.Dataset):
    """Samples from a range of documents of one indexed dataset; item ``i`` is ``{"text": int64 array}``."""

    def __init__(
        self,
        name: str,
        indexed_dataset: MMapIndexedDataset,
        documents: range,
        num_samples: int,
        seq_length: int,
        seed: int,
        cache_dir: str | None = None,
    ) -> None:
        if len(documents) == 0 or documents.start < 0 or documents.stop > len(indexed_dataset):
            raise ValueError(f"documents {documents} do not fit {len(indexed_dataset)} sequences")
        self.name = name
        self.indexed_dataset = indexed_dataset
        self.seq_length = seq_length
        doc_array = np.arange(documents.start, documents.stop, dtype=np.int64)
        prefix = indexed_dataset.path_prefix
        tokens = int(indexed_dataset.sizes[doc_array].astype(np.int64).sum())
        if tokens <= 1:
            raise ConfigError(
                f"--split gives the {name} split of --data-path {prefix!r} documents {documents.start}.."
                f"{documents.stop - 1}, which hold {tokens} tokens: too few for one sample; give that split "
                "a larger share in --split, or preprocess more text."
            )
        self.cache_key = cache_key(
            {
                "class": "GPTDataset",
                "version": _INDEX_FORMAT_VERSION,
                "prefix": os.path.realpath(prefix),
                "num_sequences": len(indexed_dataset),
                "split": name,
                "documents": [documents.start, documents.stop],
                "tokens": tokens,
                "num_samples": num_samples,
                "seq_length": seq_length,
                "seed": seed,
            }
        )
        stem = f"{os.path.basename(prefix)}_{name}_{self.cache_key}"
        folder = cache_dir or os.path.dirname(os.path.abspath(prefix))
        arrays = load_or_build(
            folder,
            stem,
            ("doc_idx", "sample_idx", "shuffle_idx"),
            lambda: build_gpt_indices(indexed_dataset.sizes, doc_array, num_samples, seq_length, seed),
        )
        self.doc_idx = arrays["doc_idx"]
        self.sample_idx = arrays["sample_idx"]
        self.shuffle_idx = arrays["shuffle_idx"]
        logger.info(
            "%s split of %s: %d documents, %d samples available for %d requested (index %s)",
            name,
            prefix,
            len(documents),
            len(self),
            num_samples,
            stem,
        )

    def __len__(self) -> int:
        return self.sample_idx.shape[0] - 1

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} out of range for the {self.name} split with {len(self)} samples")
        i = int(self.shuffle_idx[idx])
        first_doc, first_offset = (int(v) for v in self.sample_idx[i])
        last_doc, last_offset = (int(v) for v in self.sample_idx[i + 1])
        get = self.indexed_dataset.get
        if first_doc == last_doc:
            tokens = get(int(self.doc_idx[first_doc]), first_offset, last_offset - first_offset + 1)
        else:
            parts = [get(int(self.doc_idx[first_doc]), first_offset)]
            parts += [get(int(self.doc_idx[d])) for d in range(first_doc + 1, last_doc)]
            parts.append(get(int(self.doc_idx[last_doc]), 0, last_offset + 1))
            tokens = np.concatenate(parts)
        return {"text": np.asarray(tokens, dtype=np.int64)}


def parse_split(split: str, num_documents: int) -> list[range]:
    """Megatron's ``--split`` ("969,30,1", "98,2,0", "1"): normalised weights, cut over documents in order."""
    parts = split.replace("/", ",").split(",")
    try:
        weights = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"--split {split!r} is not a list of numbers; give up to three comma-separated weights for "
            "train,valid,test, e.g. 969,30,1."
        ) from None
    if len(weights) > 3 or any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise ConfigError(
            f"--split {split!r} needs one to three non-negative weights (train,valid,test) with a positive "
            "sum, e.g. 969,30,1 or 98,2,0."
        )
    weights += [0.0] * (3 - len(weights))
    total = sum(weights)
    bounds = [0]
    for w in weights:
        bounds.append(bounds[-1] + int(round(w / total * num_documents)))
    # Rounding may over- or under-shoot by a document or two; Megatron moves every boundary by the excess.
    excess = bounds[-1] - num_documents
    bounds = [0] + [max(0, b - excess) for b in bounds[1:]]
    return [range(bounds[i], bounds[i + 1]) for i in range(3)]


def parse_data_path(tokens: list[str]) -> tuple[tuple[float, str], ...]:
    """``--data-path PREFIX`` or ``--data-path W1 PREFIX1 W2 PREFIX2 ...`` as (weight, prefix) pairs.

    Weights are normalised to sum to 1, and every prefix must have its ``.bin`` and ``.idx``: a typo should
    fail here, before any process group starts, not minutes later on every rank.
    """
    if not tokens:
        raise ConfigError(
            "--data-path is empty; pass a prefix written by tools/preprocess_data.py, e.g. "
            "data/kjv_text_document, or weight/prefix pairs such as 0.7 a_text_document 0.3 b_text_document."
        )
    if len(tokens) == 1:
        pairs = [(1.0, tokens[0])]
    else:
        if len(tokens) % 2:
            raise ConfigError(
                f"--data-path {' '.join(tokens)!r} has {len(tokens)} items; with several corpora it must be "
                "weight/prefix pairs, e.g. 0.7 a_text_document 0.3 b_text_document."
            )
        pairs = []
        for weight_text, prefix in zip(tokens[0::2], tokens[1::2]):
            try:
                weight = float(weight_text)
            except ValueError:
                raise ConfigError(
                    f"--data-path weight {weight_text!r} (before {prefix!r}) is not a number; write "
                    "weight/prefix pairs, e.g. 0.7 a_text_document 0.3 b_text_document."
                ) from None
            if not weight > 0 or not math.isfinite(weight):
                raise ConfigError(
                    f"--data-path weight {weight_text!r} for {prefix!r} must be a positive number; drop a "
                    "corpus instead of giving it weight 0."
                )
            pairs.append((weight, prefix))
    check_data_prefixes(pairs)
    total = sum(w for w, _ in pairs)
    return tuple((w / total, p) for w, p in pairs)


def check_data_prefixes(data_path: Sequence[tuple[float, str]], flag: str = "--data-path") -> None:
    """Fail with a ConfigError naming ``flag`` if any prefix lacks its ``.bin`` or ``.idx`` file."""
    for _, prefix in data_path:
        missing = [p for p in (data_file_path(prefix), index_file_path(prefix)) if not os.path.isfile(p)]
        if missing:
            raise ConfigError(
                f"{flag} prefix {prefix!r}: {' and '.join(missing)} not found. Create the files with "
                "tools/preprocess_data.py --input FILE.jsonl --output-prefix P, then pass P_text_document: "
                "the prefix ends in _text_document, without .bin/.idx."
            )


def build_train_valid_test_datasets(
    data_path: Sequence[tuple[float, str]],
    split: str,
    num_samples: tuple[int, int, int],
    seq_length: int,
    seed: int,
    cache_dir: str | None = None,
) -> tuple[torch.utils.data.Dataset | None, torch.utils.data.Dataset | None, torch.utils.data.Dataset | None]:
    """Train, valid and test datasets; one is None when its split has no documents or no samples are asked."""
    if seq_length < 1:
        raise ConfigError(f"--seq-length {seq_length} must be at least 1; GPT-2 uses 1024.")
    if len(num_samples) != 3 or any(n < 0 for n in num_samples):
        raise ValueError(
            f"num_samples must be three non-negative counts (train, valid, test), got {num_samples}"
        )
    if not data_path:
        raise ConfigError("--data-path is empty; pass a prefix written by tools/preprocess_data.py.")
    if len(data_path) == 1:
        return _single_corpus(data_path[0][1], split, num_samples, seq_length, seed, cache_dir)
    per_corpus = [
        _single_corpus(prefix, split, _blend_share(num_samples, w), seq_length, seed, cache_dir)
        for w, prefix in data_path
    ]
    weights = [w for w, _ in data_path]
    return tuple(
        _blend([(w, datasets[s]) for w, datasets in zip(weights, per_corpus)], n, cache_dir)
        for s, n in enumerate(num_samples)
    )


def build_separate_datasets(
    split_paths: Sequence[Sequence[tuple[float, str]] | None],
    num_samples: tuple[int, int, int],
    seq_length: int,
    seed: int,
    cache_dir: str | None = None,
) -> tuple[torch.utils.data.Dataset | None, torch.utils.data.Dataset | None, torch.utils.data.Dataset | None]:
    """Megatron-DeepSpeed's --train-data-path / --valid-data-path / --test-data-path: each split from its
    own blend (or None), every corpus of it read whole (all its documents), blended as --data-path is."""
    datasets = []
    for name, blend, n in zip(SPLIT_NAMES, split_paths, num_samples):
        if not blend or n == 0:
            datasets.append(None)
        elif len(blend) == 1:
            datasets.append(_whole_corpus(name, blend[0][1], n, seq_length, seed, cache_dir))
        else:
            parts = [
                (w, _whole_corpus(name, prefix, _blend_share((n,), w)[0], seq_length, seed, cache_dir))
                for w, prefix in blend
            ]
            datasets.append(_blend(parts, n, cache_dir))
    return datasets[0], datasets[1], datasets[2]


def _whole_corpus(
    name: str, prefix: str, num_samples: int, seq_length: int, seed: int, cache_dir: str | None
) -> GPTDataset:
    indexed = MMapIndexedDataset(prefix)
    return GPTDataset(name, indexed, range(len(indexed)), num_samples, seq_length, seed, cache_dir)


def _blend_share(num_samples: Sequence[int], weight: float) -> tuple[int, ...]:
    """What each corpus of a blend is asked for: its share, plus Megatron's margin."""
    return tuple(int(math.ceil(n * weight * BLEND_OVERSAMPLE)) for n in num_samples)


def _blend(
    parts: Sequence[tuple[float, torch.utils.data.Dataset | None]], size: int, cache_dir: str | None
) -> BlendedDataset | None:
    """``size`` samples mixed from the corpora that have data for this split, weights renormalised."""
    parts = [(w, d) for w, d in parts if d is not None]
    if size == 0 or not parts:
        return None
    total = sum(w for w, _ in parts)
    return BlendedDataset([d for _, d in parts], [w / total for w, _ in parts], size, cache_dir)


def _single_corpus(
    prefix: str,
    split: str,
    num_samples: Sequence[int],
    seq_length: int,
    seed: int,
    cache_dir: str | None,
) -> list[GPTDataset | None]:
    indexed = MMapIndexedDataset(prefix)
    ranges = parse_split(split, len(indexed))
    datasets: list[GPTDataset | None] = []
    for name, documents, n in zip(SPLIT_NAMES, ranges, num_samples):
        if n == 0 or len(documents) == 0:
            datasets.append(None)
            continue
        datasets.append(GPTDataset(name, indexed, documents, n, seq_length, seed, cache_dir))
    return datasets
