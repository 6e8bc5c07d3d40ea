"""The .bin/.idx format: our writer and reader agree, and both agree with the documented Megatron layout."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from megatron.config.errors import ConfigError
from megatron.data.indexed_dataset import (
    MMapIndexedDataset,
    MMapIndexedDatasetBuilder,
    best_fitting_dtype,
    data_file_path,
    index_file_path,
)
from tests.data.corpora import write_corpus

# Megatron's dtype codes, written out here independently of the module under test.
CODES = {
    np.uint8: 1,
    np.int8: 2,
    np.int16: 3,
    np.int32: 4,
    np.int64: 5,
    np.float64: 6,
    np.float32: 7,
    np.uint16: 8,
}
DOCS = [[5, 6, 7], [1], [9, 9, 9, 9, 9], [42, 0]]


def write_reference(prefix: str, documents: list[list[int]], dtype: type) -> None:
    """An independent writer: the layout straight from the format description, with struct and numpy."""
    arrays = [np.asarray(d, dtype=dtype) for d in documents]
    with open(prefix + ".bin", "wb") as f:
        for a in arrays:
            f.write(a.tobytes())
    sizes = np.array([len(a) for a in arrays], dtype=np.int32)
    pointers = np.concatenate(([0], np.cumsum(sizes * np.dtype(dtype).itemsize)[:-1])).astype(np.int64)
    doc_idx = np.arange(len(arrays) + 1, dtype=np.int64)
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", CODES[dtype]))
        f.write(struct.pack("<Q", len(sizes)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(sizes.tobytes() + pointers.tobytes() + doc_idx.tobytes())


def read_reference(prefix: str) -> dict:
    """An independent reader of the same layout."""
    raw = Path(prefix + ".idx").read_bytes()
    magic, version, code, count, doc_count = struct.unpack("<9sQBQQ", raw[:34])
    offset = 34
    sizes = np.frombuffer(raw, np.int32, count, offset)
    pointers = np.frombuffer(raw, np.int64, count, offset + 4 * count)
    doc_idx = np.frombuffer(raw, np.int64, doc_count, offset + 12 * count)
    dtype = {v: k for k, v in CODES.items()}[code]
    data = np.frombuffer(Path(prefix + ".bin").read_bytes(), dtype)
    itemsize = np.dtype(dtype).itemsize
    docs = [data[p // itemsize : p // itemsize + s].tolist() for p, s in zip(pointers, sizes)]
    return dict(
        magic=magic, version=version, dtype=dtype, sizes=sizes, pointers=pointers, doc_idx=doc_idx, docs=docs
    )


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, np.uint8])
def test_round_trip(tmp_path: Path, dtype: type) -> None:
    prefix = write_corpus(tmp_path, DOCS, dtype=dtype)
    ds = MMapIndexedDataset(prefix)
    assert len(ds) == len(DOCS)
    assert ds.dtype == dtype
    assert [ds[i].tolist() for i in range(len(ds))] == DOCS
    assert ds.sizes.tolist() == [len(d) for d in DOCS]
    assert ds.doc_idx.tolist() == [0, 1, 2, 3, 4]
    assert ds.get(2, offset=1, length=3).tolist() == [9, 9, 9]
    assert ds.get(0, offset=1).tolist() == [6, 7]
    assert ds[-1].tolist() == [42, 0]
    with pytest.raises(IndexError):
        ds[len(DOCS)]
    with pytest.raises(IndexError):
        ds.get(0, offset=2, length=5)


def test_our_files_match_the_documented_layout(tmp_path: Path) -> None:
    prefix = write_corpus(tmp_path, DOCS, dtype=np.uint16)
    ref = read_reference(prefix)
    assert Path(prefix + ".idx").read_bytes()[:18] == b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + b"\x08"
    assert (ref["magic"], ref["version"], ref["dtype"]) == (b"MMIDIDX\x00\x00", 1, np.uint16)
    assert ref["sizes"].tolist() == [3, 1, 5, 2]
    assert ref["pointers"].tolist() == [0, 6, 8, 18]  # bytes, uint16
    assert ref["doc_idx"].tolist() == [0, 1, 2, 3, 4]
    assert ref["docs"] == DOCS
    assert Path(prefix + ".idx").stat().st_size == 34 + 4 * 4 + 8 * 4 + 8 * 5


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_reads_files_written_to_the_documented_layout(tmp_path: Path, dtype: type) -> None:
    prefix = str(tmp_path / "ref")
    write_reference(prefix, DOCS, dtype)
    ds = MMapIndexedDataset(prefix)
    assert ds.dtype == dtype
    assert [ds[i].tolist() for i in range(len(ds))] == DOCS
    assert ds.doc_idx.tolist() == [0, 1, 2, 3, 4]


def test_multi_sequence_documents_and_merge(tmp_path: Path) -> None:
    """doc_idx counts sequences: a document of two sequences advances it by two; merging offsets it."""
    first = str(tmp_path / "first")
    builder = MMapIndexedDatasetBuilder(data_file_path(first), np.int32)
    builder.add_item([1, 2])
    builder.add_item([3])
    builder.end_document()
    builder.add_item([4, 5, 6])
    builder.end_document()
    builder.finalize(index_file_path(first))
    assert MMapIndexedDataset(first).doc_idx.tolist() == [0, 2, 3]

    merged = str(tmp_path / "merged")
    builder = MMapIndexedDatasetBuilder(data_file_path(merged), np.int32)
    builder.add_item([7])
    builder.end_document()
    builder.merge_file_(first)
    builder.merge_file_(first)
    builder.finalize(index_file_path(merged))
    ds = MMapIndexedDataset(merged)
    assert [ds[i].tolist() for i in range(len(ds))] == [[7], [1, 2], [3], [4, 5, 6], [1, 2], [3], [4, 5, 6]]
    assert ds.doc_idx.tolist() == [0, 1, 3, 4, 6, 7]
    assert read_reference(merged)["pointers"].tolist() == [0, 4, 12, 16, 28, 36, 40]


def test_empty_documents_and_empty_dataset(tmp_path: Path) -> None:
    ds = MMapIndexedDataset(write_corpus(tmp_path, [[1, 2], [], [3]], name="holes"))
    assert ds.sizes.tolist() == [2, 0, 1]
    assert ds[1].tolist() == [] and ds[2].tolist() == [3]
    empty = MMapIndexedDataset(write_corpus(tmp_path, [], name="empty"))
    assert len(empty) == 0 and empty.doc_idx.tolist() == [0]


def test_best_fitting_dtype() -> None:
    assert best_fitting_dtype(8192) is np.uint16
    assert best_fitting_dtype(65499) is np.uint16
    assert best_fitting_dtype(65500) is np.int32
    assert best_fitting_dtype(None) is np.int32
    assert data_file_path("a/b") == "a/b.bin" and index_file_path("a/b") == "a/b.idx"


def test_builder_rejects_ids_outside_the_dtype(tmp_path: Path) -> None:
    builder = MMapIndexedDatasetBuilder(str(tmp_path / "x.bin"), np.uint16)
    with pytest.raises(ValueError, match="uint16"):
        builder.add_item([70000])


def test_missing_index_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"index file .*nope\.idx.* cannot be read.*preprocess_data"):
        MMapIndexedDataset(str(tmp_path / "nope"))


def test_missing_data_file(tmp_path: Path) -> None:
    prefix = write_corpus(tmp_path, DOCS)
    Path(prefix + ".bin").unlink()
    with pytest.raises(ConfigError, match=r"data file .*\.bin.* cannot be read"):
        MMapIndexedDataset(prefix)


def test_bad_magic(tmp_path: Path) -> None:
    prefix = write_corpus(tmp_path, DOCS)
    raw = Path(prefix + ".idx").read_bytes()
    Path(prefix + ".idx").write_bytes(b"TNTIDX\x00\x00\x00" + raw[9:])
    with pytest.raises(ConfigError, match=r"\.idx.* does not start with Megatron's mmap magic.*TNTIDX"):
        MMapIndexedDataset(prefix)


def test_bad_version_and_dtype_code(tmp_path: Path) -> None:
    prefix = write_corpus(tmp_path, DOCS)
    raw = bytearray(Path(prefix + ".idx").read_bytes())
    Path(prefix + ".idx").write_bytes(bytes(raw[:9]) + struct.pack("<Q", 2) + bytes(raw[17:]))
    with pytest.raises(ConfigError, match="has version 2"):
        MMapIndexedDataset(prefix)
    raw[17] = 99
    Path(prefix + ".idx").write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match="has dtype code 99"):
        MMapIndexedDataset(prefix)


def test_truncated_index(tmp_path: Path) -> None:
    prefix = write_corpus(tmp_path, DOCS)
    raw = Path(prefix + ".idx").read_bytes()
    Path(prefix + ".idx").write_bytes(raw[:-8])
    with pytest.raises(ConfigError, match=r"\.idx.* is truncated"):
        MMapIndexedDataset(prefix)
    Path(prefix + ".idx").write_bytes(raw[:20])
    with pytest.raises(ConfigError, match="does not start with"):
        MMapIndexedDataset(prefix)
    Path(prefix + ".idx").write_bytes(raw + bytes(8))
    with pytest.raises(ConfigError, match=r"\.idx.* is longer than its header says"):
        MMapIndexedDataset(prefix)


def test_truncated_data(tmp_path: Path) -> None:
    prefix = write_corpus(tmp_path, DOCS)
    raw = Path(prefix + ".bin").read_bytes()
    Path(prefix + ".bin").write_bytes(raw[:-2])
    with pytest.raises(ConfigError, match=r"data file .*\.bin.* is truncated"):
        MMapIndexedDataset(prefix)


def test_pickles_by_path(tmp_path: Path) -> None:
    import pickle

    ds = MMapIndexedDataset(write_corpus(tmp_path, DOCS))
    payload = pickle.dumps(ds)
    assert len(payload) < 500
    assert pickle.loads(payload)[2].tolist() == DOCS[2]
