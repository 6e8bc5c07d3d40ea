"""Token files on disk: Megatron's ``mmap`` indexed dataset (``PREFIX.bin`` + ``PREFIX.idx``).

The layout is byte-for-byte the one Megatron-LM and Megatron-DeepSpeed read and write, so corpora
preprocessed by either tool can be used here and the other way round:

``PREFIX.bin``: every sequence's tokens, concatenated, in the dtype named by the index; nothing else.

``PREFIX.idx`` (little-endian)::

    9 bytes   magic b"MMIDIDX\\x00\\x00"
    <Q        version, always 1
    <B        dtype code (see DTYPE_CODES)
    <Q        number of sequences N
    <Q        number of document-index entries D
    int32[N]  sizes: tokens in each sequence
    int64[N]  pointers: byte offset of each sequence in PREFIX.bin
    int64[D]  document index: 0, then the sequence count after each document ends

For GPT corpora each document is one sequence, so D = N + 1. Reading maps both files with numpy.memmap:
opening a corpus of any size costs only the index header, and each rank of a job shares the page cache.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterable

import numpy as np

from megatron.config.errors import ConfigError
from megatron.data import integrity

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document-index count

# Megatron's table. Its legacy code mapped both 6 (np.float) and 7 (np.double) to float64; megatron-core
# settled 7 as float32, which is what is written here. Token files only ever use the integer codes.
DTYPE_CODES: dict[int, type[np.number]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
_CODE_OF_DTYPE = {np.dtype(dtype): code for code, dtype in DTYPE_CODES.items()}


def best_fitting_dtype(vocab_size: int | None) -> type[np.number]:
    """uint16 halves the file size whenever every id fits; the 65500 cut-off is Megatron's."""
    if vocab_size is not None and vocab_size < 65500:
        return np.uint16
    return np.int32


def data_file_path(prefix: str) -> str:
    return prefix + ".bin"


def index_file_path(prefix: str) -> str:
    return prefix + ".idx"


def dataset_exists(prefix: str) -> bool:
    return os.path.isfile(data_file_path(prefix)) and os.path.isfile(index_file_path(prefix))


class _Index:
    """The parsed ``.idx`` file: sizes, pointers and document index as read-only views of one memmap."""

    def __init__(self, path: str) -> None:
        try:
            file_size = os.path.getsize(path)
            with open(path, "rb") as f:
                header = f.read(_HEADER.size)
        except OSError as exc:
            raise ConfigError(
                f"index file {path!r} cannot be read ({exc.strerror}); run tools/preprocess_data.py to "
                "create PREFIX.bin and PREFIX.idx, and pass PREFIX without the extension."
            ) from exc
        if len(header) < _HEADER.size or not header.startswith(INDEX_MAGIC):
            raise ConfigError(
                f"index file {path!r} does not start with Megatron's mmap magic {INDEX_MAGIC!r} (seen "
                f"{header[:9]!r}); it is not an mmap indexed dataset: re-create it with "
                "tools/preprocess_data.py --dataset-impl mmap."
            )
        _, version, code, count, doc_count = _HEADER.unpack(header)
        if version != INDEX_VERSION:
            raise ConfigError(
                f"index file {path!r} has version {version}, only version {INDEX_VERSION} is supported; "
                "re-create it with tools/preprocess_data.py."
            )
        if code not in DTYPE_CODES:
            raise ConfigError(
                f"index file {path!r} has dtype code {code}, not one of {sorted(DTYPE_CODES)}; the file is "
                "damaged or from another format: re-create it with tools/preprocess_data.py."
            )
        expected = _HEADER.size + count * (4 + 8) + doc_count * 8
        if file_size != expected:
            state = "is truncated" if file_size < expected else "is longer than its header says"
            raise ConfigError(
                f"index file {path!r} {state}: {file_size} bytes, its header promises {expected}; "
                "re-create it with tools/preprocess_data.py (an interrupted run or copy leaves such files)."
            )
        self.dtype = DTYPE_CODES[code]
        buffer = np.memmap(path, mode="r", dtype=np.uint8)
        offset = _HEADER.size
        self.sizes = np.frombuffer(buffer, dtype=np.int32, count=count, offset=offset)
        offset += self.sizes.nbytes
        self.pointers = np.frombuffer(buffer, dtype=np.int64, count=count, offset=offset)
        offset += self.pointers.nbytes
        self.doc_idx = np.frombuffer(buffer, dtype=np.int64, count=doc_count, offset=offset)


class MMapIndexedDataset:
    """Read-only access to ``PREFIX.bin``/``PREFIX.idx``; item ``i`` is sequence ``i`` as a numpy array.

    Opening checks the index against itself and against the ``.bin``'s size
    (:func:`megatron.data.integrity.structure_problems`: vectorised over the index, the tokens are not read)
    and raises a :class:`ConfigError` naming the file; ``check=False`` skips that, for callers that list
    the problems themselves or reopen a pair already checked.
    """

    def __init__(self, path_prefix: str, check: bool = True) -> None:
        self.path_prefix = path_prefix
        self._index = _Index(index_file_path(path_prefix))
        bin_path = data_file_path(path_prefix)
        itemsize = np.dtype(self._index.dtype).itemsize
        try:
            bin_size = os.path.getsize(bin_path)
        except OSError as exc:
            raise ConfigError(
                f"data file {bin_path!r} cannot be read ({exc.strerror}); it must sit next to "
                f"{index_file_path(path_prefix)!r}: re-run tools/preprocess_data.py."
            ) from exc
        self.bin_size = bin_size
        if check:
            problems = self.structure_problems()
            if problems:
                raise ConfigError(problems[0])
        # An empty file cannot be memory-mapped; an empty corpus is still a valid dataset.
        count = bin_size // itemsize
        self._bin = (
            np.memmap(bin_path, mode="r", dtype=self._index.dtype, shape=(count,))
            if count
            else np.empty(0, self._index.dtype)
        )

    def structure_problems(self) -> list[str]:
        """What is inconsistent between the index and the ``.bin`` (empty when the pair is sound)."""
        index = self._index
        return integrity.structure_problems(
            index_file_path(self.path_prefix),
            data_file_path(self.path_prefix),
            index.sizes,
            index.pointers,
            index.doc_idx,
            np.dtype(index.dtype).itemsize,
            self.bin_size,
        )

    def __getstate__(self) -> str:
        # DataLoader workers started with spawn pickle the dataset: send the path, not the mapped tokens.
        return self.path_prefix

    def __setstate__(self, path_prefix: str) -> None:
        self.__init__(path_prefix, check=False)  # checked when the parent process opened it

    def __len__(self) -> int:
        return len(self._index.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``[offset, offset + length)`` of sequence ``i``; a view into the mapped file, no copy."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {self.path_prefix!r} with {len(self)} sequences")
        size = int(self._index.sizes[i])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(
                f"tokens [{offset}, {offset + length}) out of range for sequence {i} of size {size}"
            )
        start = int(self._index.pointers[i]) // self._bin.itemsize + offset
        return self._bin[start : start + length]

    @property
    def sizes(self) -> np.ndarray:
        return self._index.sizes

    @property
    def doc_idx(self) -> np.ndarray:
        return self._index.doc_idx

    @property
    def dtype(self) -> type[np.number]:
        return self._index.dtype

    @property
    def pointers(self) -> np.ndarray:
        """Byte offset of each sequence in the ``.bin``."""
        return self._index.pointers

    @property
    def tokens(self) -> np.ndarray:
        """Every token of the ``.bin`` in file order (a memory map; reading it reads the file)."""
        return self._bin


class MMapIndexedDatasetBuilder:
    """Streams sequences into ``PREFIX.bin`` and writes the matching ``.idx`` at :meth:`finalize`."""

    def __init__(self, bin_path: str, dtype: type[np.number] = np.int32) -> None:
        if np.dtype(dtype) not in _CODE_OF_DTYPE:
            raise ConfigError(
                f"dtype {np.dtype(dtype)} has no code in the mmap index format; use one of "
                f"{', '.join(str(np.dtype(d)) for d in DTYPE_CODES.values())} (best_fitting_dtype picks one)."
            )
        self._bin_path = bin_path
        self._file = open(bin_path, "wb")
        self._dtype = np.dtype(dtype)
        self._sizes: list[int] = []
        self._doc_idx: list[int] = [0]

    def add_item(self, tokens: Iterable[int] | np.ndarray) -> None:
        """Append one sequence (for GPT: one document's tokens)."""
        array = np.asarray(tokens)
        if array.size and self._dtype.kind in "iu":
            info = np.iinfo(self._dtype)
            if array.min() < info.min or array.max() > info.max:
                raise ValueError(
                    f"token ids outside {self._dtype} range [{info.min}, {info.max}]: pass a wider dtype"
                )
        self._file.write(array.astype(self._dtype, copy=False).tobytes(order="C"))
        self._sizes.append(int(array.size))

    def end_document(self) -> None:
        self._doc_idx.append(len(self._sizes))

    def merge_file_(self, prefix: str) -> None:
        """Append another finished dataset (e.g. one worker's shard) after what was written so far."""
        other = _Index(index_file_path(prefix))
        if np.dtype(other.dtype) != self._dtype:
            raise ConfigError(
                f"cannot merge {index_file_path(prefix)!r}: its dtype is {np.dtype(other.dtype)}, this "
                f"builder writes {self._dtype}; preprocess both with the same tokenizer."
            )
        offset = len(self._sizes)
        self._sizes.extend(int(s) for s in other.sizes)
        self._doc_idx.extend(int(d) + offset for d in other.doc_idx[1:])
        with open(data_file_path(prefix), "rb") as f:
            shutil.copyfileobj(f, self._file)

    def discard(self) -> None:
        """Close and delete the partial ``.bin`` after a failed run; no ``.idx`` was written for it."""
        self._file.close()
        if os.path.exists(self._bin_path):
            os.remove(self._bin_path)

    def finalize(self, idx_path: str) -> None:
        self._file.close()
        sizes = np.asarray(self._sizes, dtype=np.int32)
        pointers = np.zeros(len(sizes), dtype=np.int64)
        if len(sizes) > 1:
            np.cumsum(sizes[:-1].astype(np.int64) * self._dtype.itemsize, out=pointers[1:])
        with open(idx_path, "wb") as f:
            header = (INDEX_MAGIC, INDEX_VERSION, _CODE_OF_DTYPE[self._dtype], len(sizes), len(self._doc_idx))
            f.write(_HEADER.pack(*header))
            f.write(sizes.tobytes(order="C"))
            f.write(pointers.tobytes(order="C"))
            f.write(np.asarray(self._doc_idx, dtype=np.int64).tobytes(order="C"))
