"""Samples of whole sentences for BERT and T5: which sentences each sample takes, and the per-split datasets.

The corpus comes from ``tools/preprocess_data.py --split-sentences``: one item per sentence, documents
marked in the document index. A sample is a run of consecutive sentences of one document, grown until it
reaches a target length: the longest the model takes, or, with probability ``--short-seq-prob``, a random
shorter one (so that the model also sees short inputs, as Megatron does). Samples never span documents and
hold whole sentences; BERT samples need at least two sentences (to make two segments). Documents with a
sentence longer than :data:`LONG_SENTENCE_LEN` tokens are left out, as Megatron leaves them out.

The mapping (start sentence, end sentence, target length) is built for as many epochs as the requested
samples need, shuffled, and cached next to the data like the GPT indices
(:func:`megatron.data.sample_index.load_or_build`). ``--split`` divides the *documents* into
train/valid/test, and ``--data-path`` weights blend several corpora, as for GPT.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from megatron.config.errors import ConfigError
from megatron.data.blended_dataset import BlendedDataset
from megatron.data.gpt_dataset import BLEND_OVERSAMPLE, SPLIT_NAMES, parse_split
from megatron.data.indexed_dataset import MMapIndexedDataset
from megatron.data.sample_index import cache_key, load_or_build

logger = logging.getLogger(__name__)

LONG_SENTENCE_LEN = 512
_MAPPING_VERSION = 1
# An epoch that yields no sample cannot be repeated into one.
_MAX_EPOCHS = 100_000


def check_sentence_prefixes(data_path: Sequence[tuple[float, str]]) -> None:
    """Fail with a ConfigError naming ``--data-path`` if any prefix lacks its ``.bin`` or ``.idx`` file."""
    for _, prefix in data_path:
        missing = [p for p in (prefix + ".bin", prefix + ".idx") if not os.path.isfile(p)]
        if missing:
            raise ConfigError(
                f"--data-path prefix {prefix!r}: {' and '.join(missing)} not found. BERT and T5 read "
                "sentences: create them with tools/preprocess_data.py --input FILE.jsonl --output-prefix P "
                "--split-sentences --tokenizer-type BertWordPieceLowerCase --vocab-file vocab.txt, then pass "
                "P_text_sentence (without .bin/.idx)."
            )


def target_length(max_length: int, short_seq_prob: float, rng: np.random.RandomState) -> int:
    """``max_length``, or with probability ``short_seq_prob`` a length drawn from 2..max_length."""
    if short_seq_prob > 0 and rng.random_sample() < short_seq_prob:
        return int(rng.randint(2, max_length + 1))
    return max_length


def build_samples_mapping(
    sizes: np.ndarray,
    doc_idx: np.ndarray,
    documents: range,
    num_samples: int,
    max_length: int,
    short_seq_prob: float,
    min_sentences: int,
    seed: int,
) -> np.ndarray:
    """``[samples, 3]`` int64 rows (first sentence, end sentence (exclusive), target length), shuffled.

    Epochs over ``documents`` are added until there are at least ``num_samples`` rows; each epoch draws new
    target lengths, so repeated documents are cut differently.
    """
    rng = np.random.RandomState(seed % 2**32)
    usable = []
    for document in documents:
        first, end = int(doc_idx[document]), int(doc_idx[document + 1])
        if end - first >= min_sentences and int(sizes[first:end].max(initial=0)) <= LONG_SENTENCE_LEN:
            usable.append((first, end))
    rows: list[tuple[int, int, int]] = []
    epochs = 0
    while len(rows) < num_samples:
        epoch_rows = _one_epoch(sizes, usable, max_length, short_seq_prob, min_sentences, rng)
        if not epoch_rows:
            raise ConfigError(
                f"no {'sentence pair' if min_sentences > 1 else 'sentence'} sample can be made from "
                f"documents {documents.start}..{documents.stop - 1}: each needs {min_sentences} or more "
                f"sentences of at most {LONG_SENTENCE_LEN} tokens. Preprocess with tools/preprocess_data.py "
                "--split-sentences, or give this split more documents in --split."
            )
        rows += epoch_rows
        epochs += 1
        if epochs >= _MAX_EPOCHS:
            break
    mapping = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    rng.shuffle(mapping)
    return mapping


def _one_epoch(
    sizes: np.ndarray,
    documents: list[tuple[int, int]],
    max_length: int,
    short_seq_prob: float,
    min_sentences: int,
    rng: np.random.RandomState,
) -> list[tuple[int, int, int]]:
    rows = []
    for first, end in documents:
        start, length = first, 0
        target = target_length(max_length, short_seq_prob, rng)
        for sentence in range(first, end):
            length += int(sizes[sentence])
            taken = sentence + 1 - start
            remaining = end - sentence - 1
            # Close the sample when it is long enough and what is left of the document can still make one;
            # the document's last sentences join the last sample.
            if (length >= target and taken >= min_sentences and remaining >= min_sentences) or remaining == 0:
                if taken >= min_sentences:
                    rows.append((start, sentence + 1, target))
                start, length = sentence + 1, 0
                target = target_length(max_length, short_seq_prob, rng)
    return rows


class SentenceSampleDataset(torch.utils.data.Dataset):
    """The samples of one split of one corpus; subclasses turn a row of the mapping into model inputs."""

    kind = "sentences"

    def __init__(
        self,
        name: str,
        indexed_dataset: MMapIndexedDataset,
        documents: range,
        num_samples: int,
        max_length: int,
        short_seq_prob: float,
        min_sentences: int,
        seed: int,
        cache_dir: str | None = None,
    ) -> None:
        self.name = name
        self.indexed_dataset = indexed_dataset
        self.seed = seed
        prefix = indexed_dataset.path_prefix
        if len(indexed_dataset.doc_idx) < 2:
            raise ConfigError(f"--data-path {prefix!r} has no documents; preprocess some text first.")
        key = cache_key(
            {
                "class": self.kind,
                "version": _MAPPING_VERSION,
                "prefix": os.path.realpath(prefix),
                "num_sequences": len(indexed_dataset),
                "documents": [documents.start, documents.stop],
                "num_samples": num_samples,
                "max_length": max_length,
                "short_seq_prob": short_seq_prob,
                "min_sentences": min_sentences,
                "seed": seed,
            }
        )
        stem = f"{os.path.basename(prefix)}_{name}_{self.kind}_{key}"
        folder = cache_dir or os.path.dirname(os.path.abspath(prefix))
        self.samples_mapping = load_or_build(
            folder,
            stem,
            ("samples_mapping",),
            lambda: {
                "samples_mapping": build_samples_mapping(
                    indexed_dataset.sizes,
                    indexed_dataset.doc_idx,
                    documents,
                    num_samples,
                    max_length,
                    short_seq_prob,
                    min_sentences,
                    seed,
                )
            },
        )["samples_mapping"]
        logger.info(
            "%s split of %s: %d documents, %d %s samples for %d requested (index %s)",
            name,
            prefix,
            len(documents),
            len(self),
            self.kind,
            num_samples,
            stem,
        )

    def __len__(self) -> int:
        return self.samples_mapping.shape[0]

    def sample_sentences(self, idx: int) -> tuple[list[np.ndarray], int, np.random.RandomState]:
        """The sentences of sample ``idx``, its target length, and the generator seeded for it."""
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} out of range for the {self.name} split with {len(self)} samples")
        first, end, target = (int(v) for v in self.samples_mapping[idx])
        sentences = [np.asarray(self.indexed_dataset[i], dtype=np.int64) for i in range(first, end)]
        return sentences, target, np.random.RandomState((self.seed + idx) % 2**32)


DatasetFactory = Callable[[str, MMapIndexedDataset, range, int], torch.utils.data.Dataset]


def build_split_datasets(
    data_path: Sequence[tuple[float, str]],
    split: str,
    num_samples: tuple[int, int, int],
    factory: DatasetFactory,
    cache_dir: str | None = None,
) -> list[torch.utils.data.Dataset | None]:
    """Train, valid and test datasets made by ``factory(split name, corpus, documents, samples)``; None for
    a split without documents or samples; several corpora are blended by weight, as for GPT."""
    if len(data_path) == 1:
        return _single_corpus(data_path[0][1], split, num_samples, factory)
    per_corpus = [
        _single_corpus(
            prefix, split, tuple(int(math.ceil(n * w * BLEND_OVERSAMPLE)) for n in num_samples), factory
        )
        for w, prefix in data_path
    ]
    blended: list[torch.utils.data.Dataset | None] = []
    for index, n in enumerate(num_samples):
        parts = [(w, datasets[index]) for (w, _), datasets in zip(data_path, per_corpus) if datasets[index]]
        if n == 0 or not parts:
            blended.append(None)
            continue
        total = sum(w for w, _ in parts)
        blended.append(BlendedDataset([d for _, d in parts], [w / total for w, _ in parts], n, cache_dir))
    return blended


def _single_corpus(
    prefix: str, split: str, num_samples: Sequence[int], factory: DatasetFactory
) -> list[torch.utils.data.Dataset | None]:
    indexed = MMapIndexedDataset(prefix)
    ranges = parse_split(split, len(indexed.doc_idx) - 1)
    return [
        factory(name, indexed, documents, n) if n and len(documents) else None
        for name, documents, n in zip(SPLIT_NAMES, ranges, num_samples)
    ]
