"""Small hand-made token corpora for the data tests, written with our builder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from megatron.data.indexed_dataset import MMapIndexedDatasetBuilder, data_file_path, index_file_path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = REPO_ROOT / "data" / "tokenizer" / "gpt2-bpe"
VOCAB = str(TOKENIZER_DIR / "vocab.json")
MERGES = str(TOKENIZER_DIR / "merges.txt")


def write_corpus(
    folder: Path, documents: Sequence[Sequence[int]], name: str = "corpus", dtype=np.uint16
) -> str:
    """Write documents (lists of token ids) as an mmap dataset; returns its prefix."""
    prefix = str(folder / f"{name}_text_document")
    builder = MMapIndexedDatasetBuilder(data_file_path(prefix), dtype)
    for doc in documents:
        builder.add_item(np.asarray(doc))
        builder.end_document()
    builder.finalize(index_file_path(prefix))
    return prefix


def random_documents(count: int, seed: int, min_len: int = 1, max_len: int = 40) -> list[np.ndarray]:
    """Documents of random lengths; every token is distinct, so a sample can be traced back to its source."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=count)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return [np.arange(s, s + n, dtype=np.int64) % 60000 for s, n in zip(starts, lengths)]
