"""Consistency checks of a ``.bin``/``.idx`` pair: damaged or mismatched data fails at open, not silently.

A ``.idx`` beside the ``.bin`` of another corpus, a ``.bin`` cut short by a killed run, a flipped dtype byte
or negative sizes all map without complaint and train on garbage. What the index promises is checked here
against itself and against the ``.bin``'s size. These functions return problems (one self-contained line
each: the file, what is wrong with expected and found values, the fix) rather than raising, so that
``tools/verify_dataset.py`` can list them all and the training checks can raise the first.

Cost: the structural checks read the index once in vectorised chunks (never the tokens) and use bounded
memory; :func:`token_problems` reads every token and runs only when asked (``--verify-data full``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# Entries per vectorised step: ~4M int64 values keep the temporaries near 100 MB for any corpus size.
CHUNK = 1 << 22
FIX = "re-create the pair with tools/preprocess_data.py"


def _chunks(length: int) -> Iterator[tuple[int, int]]:
    for start in range(0, length, CHUNK):
        yield start, min(start + CHUNK, length)


def structure_problems(
    idx_path: str,
    bin_path: str,
    sizes: np.ndarray,
    pointers: np.ndarray,
    doc_idx: np.ndarray,
    itemsize: int,
    bin_size: int,
) -> list[str]:
    """Sizes non-negative, pointers equal to the running byte count of the sizes, the ``.bin`` exactly as
    long as the index describes, and the document index running from 0 to the sequence count in order."""
    problems = []
    for start, stop in _chunks(len(sizes)):
        chunk = sizes[start:stop]
        if chunk.min() < 0:
            first = start + int(np.argmax(chunk < 0))
            problems.append(
                f"index file {idx_path!r}: size of sequence {first} is {int(sizes[first])}, sizes cannot be "
                f"negative; the index is damaged: {FIX}."
            )
            break
    expected_bytes = 0
    bad_pointer: tuple[int, int, int] | None = None  # (sequence, pointer found, pointer expected)
    for start, stop in _chunks(len(sizes)):
        nbytes = sizes[start:stop].astype(np.int64) * itemsize
        if bad_pointer is None:
            expected = np.cumsum(nbytes) - nbytes + expected_bytes
            mismatch = pointers[start:stop] != expected
            if mismatch.any():
                first = int(np.argmax(mismatch))
                bad_pointer = (start + first, int(pointers[start + first]), int(expected[first]))
        expected_bytes += int(nbytes.sum())
    if bad_pointer is not None:
        sequence, found, wanted = bad_pointer
        problems.append(
            f"index file {idx_path!r}: pointer of sequence {sequence} is byte {found}, the sizes before it "
            f"at {itemsize} byte(s) per token give {wanted}; the pointers, sizes or dtype code are damaged: "
            f"{FIX}."
        )
    if bin_size != expected_bytes:
        state = (
            "is truncated (an interrupted preprocess or copy)"
            if bin_size < expected_bytes
            else "is longer than its index describes (the .bin of another corpus?)"
        )
        problems.append(
            f"data file {bin_path!r} {state}: {bin_size} bytes, its index {idx_path!r} describes "
            f"{expected_bytes}; {FIX}."
        )
    problems.extend(_doc_idx_problems(idx_path, doc_idx, len(sizes)))
    return problems


def _doc_idx_problems(idx_path: str, doc_idx: np.ndarray, count: int) -> list[str]:
    """Megatron's document index: 0, then the sequence count after each document, ending at the total."""
    where = f"index file {idx_path!r}: document index"
    if len(doc_idx) == 0 or doc_idx[0] != 0:
        seen = "empty" if len(doc_idx) == 0 else f"starts at {int(doc_idx[0])}"
        return [f"{where} {seen}, it must start at 0; {FIX}."]
    for start, stop in _chunks(len(doc_idx) - 1):
        backwards = doc_idx[start + 1 : stop + 1] < doc_idx[start:stop]
        if backwards.any():
            first = start + 1 + int(np.argmax(backwards))
            return [
                f"{where} entry {first} is {int(doc_idx[first])}, below entry {first - 1} "
                f"({int(doc_idx[first - 1])}); entries must not decrease: {FIX}."
            ]
    if doc_idx[-1] != count:
        return [
            f"{where} ends at {int(doc_idx[-1])}, the index holds {count} sequences; the last entry must "
            f"be the sequence count: {FIX}."
        ]
    return []


def dtype_problem(idx_path: str, dtype: type[np.number], vocab_size: int) -> str | None:
    """The token dtype must hold every id of the tokenizer: uint16 for a 50k vocabulary, never uint8."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        return (
            f"index file {idx_path!r}: tokens are stored as {dtype}, token files hold integer ids; the dtype "
            f"code is damaged or the file is not a token corpus: {FIX}."
        )
    largest = int(np.iinfo(dtype).max)
    if largest < vocab_size - 1:
        return (
            f"index file {idx_path!r}: tokens are stored as {dtype} (ids up to {largest}), the tokenizer has "
            f"{vocab_size} ids (up to {vocab_size - 1}); the dtype code is damaged or the data was made for "
            f"another tokenizer: {FIX} and this run's tokenizer flags."
        )
    return None


def token_problems(bin_path: str, tokens: np.ndarray, pointers: np.ndarray, vocab_size: int) -> list[str]:
    """Every token id within ``[0, vocab_size)``; reads the whole ``.bin`` once, chunk by chunk."""
    bad = 0
    first: tuple[int, int] | None = None  # (position in the file's tokens, id)
    for start, stop in _chunks(len(tokens)):
        chunk = tokens[start:stop]
        if chunk.max() < vocab_size and chunk.min() >= 0:
            continue
        outside = (chunk >= vocab_size) | (chunk < 0)
        bad += int(outside.sum())
        if first is None:
            position = int(np.argmax(outside))
            first = (start + position, int(chunk[position]))
    if first is None:
        return []
    position, token = first
    itemsize = tokens.dtype.itemsize
    sequence = int(np.searchsorted(pointers, position * itemsize, side="right")) - 1
    offset = position - int(pointers[sequence]) // itemsize
    return [
        f"data file {bin_path!r}: {bad} token(s) outside the tokenizer's {vocab_size} ids; the first is id "
        f"{token} at token {offset} of sequence {sequence}; the data was made with another tokenizer or is "
        f"damaged: {FIX} and this run's tokenizer flags."
    ]
