"""Verifying datasets before training and from ``tools/verify_dataset.py``: structure, dtype, tokens.

Opening a dataset already checks its structure; what opening cannot know is the tokenizer. Here the
dtype must hold the tokenizer's ids (a flipped dtype byte or data made for another tokenizer), and with
``--verify-data full`` every token must be one of its ids. Entry points call :func:`check_training_data`
before any process group starts, on every rank, so a bad corpus stops every rank with one line and exit
status 2 instead of a hang or a silent run.
"""

from __future__ import annotations

import logging
import time

from megatron.config.errors import ConfigError
from megatron.config.schema import DataConfig
from megatron.data import integrity
from megatron.data.indexed_dataset import MMapIndexedDataset, data_file_path, index_file_path

logger = logging.getLogger(__name__)


def find_problems(prefix: str, vocab_size: int | None = None, full: bool = False) -> list[str]:
    """Every problem found in ``prefix``'s pair, one line each; the dtype first, as it explains the rest.

    ``vocab_size`` (the tokenizer's ids) enables the dtype check and, with ``full``, the token scan, which
    runs only on a pair whose structure is sound (a broken index would point the scan at wrong tokens).
    """
    try:
        dataset = MMapIndexedDataset(prefix, check=False)
    except ConfigError as error:
        return [str(error)]
    problems = []
    if vocab_size is not None:
        problem = integrity.dtype_problem(index_file_path(prefix), dataset.dtype, vocab_size)
        problems += [problem] if problem else []
    problems += dataset.structure_problems()
    if full and vocab_size is not None and not problems:
        problems += integrity.token_problems(
            data_file_path(prefix), dataset.tokens, dataset.pointers, vocab_size
        )
    return problems


def check_training_data(data: DataConfig, vocab_size: int) -> None:
    """Raise a :class:`ConfigError` for the first problem of any corpus the run would read."""
    full = data.verify_data == "full"
    start = time.perf_counter()
    checked = set()
    for flag, blend in data.blends().items():
        for _, prefix in blend:
            if prefix in checked:
                continue
            checked.add(prefix)
            problems = find_problems(prefix, vocab_size, full)
            if problems:
                raise ConfigError(f"{flag} {prefix!r}: {problems[0]}")
    logger.info(
        "verified %d dataset(s) (--verify-data %s) in %.2f s",
        len(checked),
        data.verify_data,
        time.perf_counter() - start,
    )
