"""The three index arrays that turn documents into fixed-length GPT samples, and their on-disk cache.

A GPT dataset never copies tokens. It decides once, for a seed:

* ``doc_idx``: the order in which documents are read, shuffled and repeated for as many epochs as the
  requested number of samples needs;
* ``sample_idx``: where each sample starts in that stream of documents, as (position in doc_idx, offset);
  sample ``i`` covers stream tokens ``[i * seq_length, (i + 1) * seq_length]``, so it is ``seq_length + 1``
  tokens long (inputs plus the shifted labels) and shares its first token with the previous sample's last;
* ``shuffle_idx``: the order in which samples are served.

The rules and the order in which the random generator is used are Megatron's, so the same seed walks the
documents in the same order. Megatron computes ``sample_idx`` with a C++ loop; here it is one
``searchsorted`` over cumulative document lengths. Building is deterministic, so several ranks may build at
once: each writes to a private temporary file and renames it into place, and a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable

import numpy as np

logger = logging.getLogger(__name__)

# Share of an epoch below which Megatron shuffles the last, partial epoch separately, so that its few samples
# are not all drawn from the same small group of documents.
_SEPARATE_LAST_EPOCH_FRACTION = 0.80


def num_epochs_needed(tokens_per_epoch: int, seq_length: int, num_samples: int) -> int:
    """Fewest epochs whose tokens give ``num_samples`` samples; samples share one token, hence the ``- 1``."""
    if tokens_per_epoch <= 1:
        raise ValueError(
            f"documents hold {tokens_per_epoch} tokens in total; at least 2 are needed for a sample"
        )
    # smallest e with (e * tokens_per_epoch - 1) // seq_length >= num_samples
    return max(1, -(-(num_samples * seq_length + 1) // tokens_per_epoch))


def build_doc_idx(
    documents: np.ndarray, num_epochs: int, rng: np.random.RandomState, separate_last_epoch: bool
) -> np.ndarray:
    """Documents repeated ``num_epochs`` times and shuffled (the last epoch on its own when asked)."""
    if not separate_last_epoch or num_epochs == 1:
        doc_idx = np.tile(documents.astype(np.int32), num_epochs)
        rng.shuffle(doc_idx)
        return doc_idx
    first = build_doc_idx(documents, num_epochs - 1, rng, False)
    last = build_doc_idx(documents, 1, rng, False)
    return np.concatenate((first, last))


def build_sample_idx(sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int, num_samples: int) -> np.ndarray:
    """Start of samples ``0..num_samples`` (one more row than samples: row ``i + 1`` ends sample ``i``).

    Row ``i`` locates stream token ``i * seq_length``: the index into ``doc_idx`` of the document holding it
    and the offset inside that document. ``side="right"`` passes over empty documents.
    """
    doc_lengths = sizes[doc_idx].astype(np.int64)
    doc_ends = np.cumsum(doc_lengths)
    positions = np.arange(num_samples + 1, dtype=np.int64) * seq_length
    if num_samples and positions[-1] >= doc_ends[-1]:
        raise ValueError(f"{num_samples} samples of {seq_length} tokens need more tokens than doc_idx holds")
    which = np.searchsorted(doc_ends, positions, side="right")
    offsets = positions - (doc_ends[which] - doc_lengths[which])
    dtype = np.int32 if len(doc_idx) < np.iinfo(np.int32).max else np.int64
    return np.stack((which, offsets), axis=1).astype(dtype)


def build_shuffle_idx(num_samples: int, total_size: int, rng: np.random.RandomState) -> np.ndarray:
    """A permutation of samples; those past ``num_samples`` (a separate last epoch) are shuffled apart."""
    dtype = np.uint32 if total_size < np.iinfo(np.uint32).max - 1 else np.int64
    first = np.arange(num_samples, dtype=dtype)
    rng.shuffle(first)
    if num_samples == total_size:
        return first
    last = np.arange(num_samples, total_size, dtype=dtype)
    rng.shuffle(last)
    return np.concatenate((first, last))


def build_gpt_indices(
    sizes: np.ndarray, documents: np.ndarray, num_samples: int, seq_length: int, seed: int
) -> dict[str, np.ndarray]:
    """doc_idx, sample_idx and shuffle_idx for ``num_samples`` samples of ``documents`` (indices of sizes)."""
    tokens_per_epoch = int(sizes[documents].astype(np.int64).sum())
    num_epochs = num_epochs_needed(tokens_per_epoch, seq_length, num_samples)
    separate_last_epoch = False
    samples_before_last = ((num_epochs - 1) * tokens_per_epoch - 1) // seq_length
    if num_epochs > 1:
        samples_in_last = num_samples - samples_before_last
        samples_per_epoch = (tokens_per_epoch - 1) // seq_length
        separate_last_epoch = samples_in_last < int(_SEPARATE_LAST_EPOCH_FRACTION * samples_per_epoch)

    rng = np.random.RandomState(seed=seed)
    doc_idx = build_doc_idx(documents, num_epochs, rng, separate_last_epoch)
    total_samples = (num_epochs * tokens_per_epoch - 1) // seq_length
    sample_idx = build_sample_idx(sizes, doc_idx, seq_length, total_samples)
    shuffled = samples_before_last if separate_last_epoch else total_samples
    shuffle_idx = build_shuffle_idx(shuffled, total_samples, rng)
    return {"doc_idx": doc_idx, "sample_idx": sample_idx, "shuffle_idx": shuffle_idx}


def cache_key(description: dict) -> str:
    """A short stable hash of everything the arrays depend on; any change gives new file names."""
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load_or_build(
    cache_dir: str, stem: str, names: tuple[str, ...], build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Arrays ``{stem}_{name}.npy`` from ``cache_dir``, built and saved first if any of them is missing.

    Loaded arrays are memory-mapped, so each rank of a job shares one copy in the page cache. A cache that
    cannot be written (a read-only data folder) only costs rebuilding on each start, so it is a warning.
    """
    paths = {name: os.path.join(cache_dir, f"{stem}_{name}.npy") for name in names}
    if all(os.path.isfile(p) for p in paths.values()):
        try:
            return {name: np.load(p, mmap_mode="r", allow_pickle=False) for name, p in paths.items()}
        except (OSError, ValueError) as exc:
            logger.warning("index cache %s is unreadable (%s); rebuilding it", stem, exc)
    arrays = build()
    try:
        os.makedirs(cache_dir, exist_ok=True)
        for name, path in paths.items():
            _save_atomic(path, arrays[name])
    except OSError as exc:
        logger.warning(
            "cannot write the index cache in %s (%s); using the arrays from memory. Pass a writable "
            "--data-cache-path to keep them between runs.",
            cache_dir,
            exc,
        )
    return arrays


def _save_atomic(path: str, array: np.ndarray) -> None:
    """Write to a name no other process uses, then rename: readers see the old state or the whole file."""
    tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
