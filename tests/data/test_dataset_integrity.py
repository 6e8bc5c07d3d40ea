"""Damaged or mismatched .bin/.idx pairs are refused with one line naming the file, the fault and the fix.

Each case starts from a real preprocessed corpus (the bundled KJV prefix of ``gpt_data_prefix``) and
damages one thing, the way the issue saw it happen: a larger .bin of another corpus, a half-written .bin,
a dtype byte set to uint8 under a GPT-2 BPE vocabulary, a negative size, a document index out of order, a
token outside the vocabulary (found only by the full check).
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from megatron.config.errors import ConfigError
from megatron.config.schema import DataConfig
from megatron.data.indexed_dataset import MMapIndexedDataset
from megatron.data.tokenizer import build_tokenizer
from megatron.data.verify import check_training_data, find_problems
from tests.config.recipe import build
from tests.launch import MERGE_FILE, VOCAB_FILE, run_pretrain, tiny_model_flags, write_ds_config
from tests.training.test_pretrain_bert import bert_flags
from tools.verify_dataset import main as verify_dataset

HEADER = 34  # magic 9, version 8, dtype code 1, sequence count 8, document count 8
UINT8_CODE = 1


@pytest.fixture(scope="module")
def vocab_size() -> int:
    return build_tokenizer("GPT2BPETokenizer", str(VOCAB_FILE), str(MERGE_FILE)).vocab_size


@pytest.fixture
def corpus(gpt_data_prefix: str, tmp_path: Path) -> str:
    """A private copy of the preprocessed corpus, free to damage."""
    prefix = str(tmp_path / "kjv_text_document")
    for ext in (".bin", ".idx"):
        shutil.copyfile(gpt_data_prefix + ext, prefix + ext)
    return prefix


def patch_index(prefix: str, offset: int, fmt: str, value: int) -> None:
    raw = bytearray(Path(prefix + ".idx").read_bytes())
    struct.pack_into(fmt, raw, offset, value)
    Path(prefix + ".idx").write_bytes(bytes(raw))


def count(prefix: str) -> int:
    return struct.unpack_from("<Q", Path(prefix + ".idx").read_bytes(), 18)[0]


def single_problem(prefix: str, vocab: int | None = None, full: bool = False) -> str:
    """The error raised at open (and before training), which must be the verifier's first line."""
    problems = find_problems(prefix, vocab, full)
    assert problems, f"{prefix} passed"
    data = DataConfig(data_path=((1.0, prefix),), verify_data="full" if full else "quick")
    with pytest.raises(ConfigError) as raised:
        check_training_data(data, vocab or 1)
    assert str(raised.value) == f"--data-path {prefix!r}: {problems[0]}"
    assert "\n" not in problems[0] and "tools/preprocess_data.py" in problems[0]
    return problems[0]


def test_sound_corpus_passes_every_check(corpus: str, vocab_size: int) -> None:
    assert find_problems(corpus, vocab_size, full=True) == []
    check_training_data(DataConfig(data_path=((1.0, corpus),), verify_data="full"), vocab_size)
    assert len(MMapIndexedDataset(corpus)) == count(corpus)


def test_larger_bin_of_another_corpus(corpus: str) -> None:
    own = Path(corpus + ".bin").read_bytes()
    Path(corpus + ".bin").write_bytes(own + own[::-1])  # another, larger corpus's tokens
    message = single_problem(corpus)
    assert f"data file {corpus + '.bin'!r} is longer than its index describes" in message
    assert f"{2 * len(own)} bytes, its index {corpus + '.idx'!r} describes {len(own)}" in message
    with pytest.raises(ConfigError, match="is longer than its index"):
        MMapIndexedDataset(corpus)


def test_half_written_bin(corpus: str) -> None:
    own = Path(corpus + ".bin").read_bytes()
    Path(corpus + ".bin").write_bytes(own[: len(own) // 2])
    message = single_problem(corpus)
    assert f"is truncated (an interrupted preprocess or copy): {len(own) // 2} bytes" in message


def test_dtype_byte_set_to_uint8_under_a_gpt2_vocabulary(corpus: str, vocab_size: int) -> None:
    patch_index(corpus, 17, "<B", UINT8_CODE)
    message = single_problem(corpus, vocab_size)
    assert f"tokens are stored as uint8 (ids up to 255), the tokenizer has {vocab_size} ids" in message
    # Without the vocabulary the halved item size still breaks the pointers and the byte count.
    structural = find_problems(corpus)
    assert "pointer of sequence 1 is byte" in structural[0] and "1 byte(s) per token" in structural[0]
    assert "is longer than its index describes" in structural[1]


def test_negative_size(corpus: str) -> None:
    patch_index(corpus, HEADER + 4 * 3, "<i", -5)
    assert "size of sequence 3 is -5, sizes cannot be negative" in single_problem(corpus)


def test_document_index_out_of_order(corpus: str) -> None:
    n = count(corpus)
    patch_index(corpus, HEADER + 12 * n + 8 * 5, "<q", 2)
    assert "document index entry 5 is 2, below entry 4 (4)" in single_problem(corpus)
    patch_index(corpus, HEADER + 12 * n + 8 * 5, "<q", 5)
    patch_index(corpus, HEADER + 12 * n + 8 * n, "<q", n + 7)
    assert f"document index ends at {n + 7}, the index holds {n} sequences" in single_problem(corpus)


def test_full_check_finds_a_token_outside_the_vocabulary(corpus: str, vocab_size: int) -> None:
    dataset = MMapIndexedDataset(corpus)
    position = int(dataset.pointers[5]) + 2 * dataset.tokens.itemsize
    del dataset
    raw = bytearray(Path(corpus + ".bin").read_bytes())
    struct.pack_into("<H", raw, position, vocab_size + 9)
    Path(corpus + ".bin").write_bytes(bytes(raw))
    assert find_problems(corpus, vocab_size) == []  # the quick check reads no tokens
    message = single_problem(corpus, vocab_size, full=True)
    assert f"1 token(s) outside the tokenizer's {vocab_size} ids; the first is id {vocab_size + 9}" in message
    assert "at token 2 of sequence 5" in message


def test_verify_data_flag(tmp_path: Path) -> None:
    assert build(tmp_path).data.verify_data == "quick"
    assert build(tmp_path, {"--verify-data": "full"}).data.verify_data == "full"
    with pytest.raises(
        ConfigError, match=r"--verify-data: invalid choice: 'deep' \(choose from 'quick', 'full'\)"
    ):
        build(tmp_path, {"--verify-data": "deep"})


def test_every_corpus_of_the_run_is_checked(corpus: str, gpt_data_prefix: str) -> None:
    """Blends and the per-split paths: the damaged corpus is named with the flag that brought it."""
    patch_index(corpus, HEADER, "<i", -1)
    good = ((1.0, gpt_data_prefix),)
    blend = ((0.5, gpt_data_prefix), (0.5, corpus))
    with pytest.raises(ConfigError, match=rf"^--data-path {corpus!r}: .*size of sequence 0 is -1"):
        check_training_data(DataConfig(data_path=blend), 8192)
    split_paths = DataConfig(data_path=(), train_data_path=good, valid_data_path=blend)
    with pytest.raises(ConfigError, match=rf"^--valid-data-path {corpus!r}: "):
        check_training_data(split_paths, 8192)


def test_verify_dataset_tool(corpus: str, gpt_data_prefix: str, capsys: pytest.CaptureFixture) -> None:
    tokenizer_flags = ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", str(VOCAB_FILE),
                       "--merge-file", str(MERGE_FILE)]  # fmt: skip
    assert verify_dataset([gpt_data_prefix, *tokenizer_flags, "--full"]) == 0
    assert capsys.readouterr().out == f"{gpt_data_prefix}: ok\n"
    patch_index(corpus, HEADER + 4 * 3, "<i", -5)
    Path(corpus + ".bin").write_bytes(Path(corpus + ".bin").read_bytes()[:-2])
    assert verify_dataset([gpt_data_prefix, corpus, "--vocab-size", "8192"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{gpt_data_prefix}: ok"
    assert len(lines) == 4 and "size of sequence 3 is -5" in lines[1]
    assert "pointer of sequence 4" in lines[2] and lines[3].startswith(f"data file {corpus + '.bin'!r}")
    with pytest.raises(ConfigError, match="--full checks token ids"):
        verify_dataset([corpus, "--full"])


def test_pretrain_gpt_refuses_a_damaged_corpus_before_training(corpus: str, tmp_path: Path) -> None:
    """Through the real entry point: exit status 2, one line naming the file and the fix, no step run."""
    patch_index(corpus, 17, "<B", UINT8_CODE)
    flags = tiny_model_flags(corpus) + ["--deepspeed_config", str(write_ds_config(tmp_path / "ds.json", 0))]
    result = run_pretrain(flags, launcher="python")
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert f"--data-path {corpus!r}: index file {corpus + '.idx'!r}: tokens are stored as uint8" in errors[0]
    assert "tools/preprocess_data.py" in errors[0]
    assert "iteration" not in result.stdout and "process group" not in result.stdout.lower()


def test_pretrain_bert_refuses_a_half_written_corpus(sentence_data_prefix: str, tmp_path: Path) -> None:
    """BERT and T5 read sentence corpora through their own datasets; the same check runs first."""
    prefix = str(tmp_path / "sentences_text_sentence")
    shutil.copyfile(sentence_data_prefix + ".idx", prefix + ".idx")
    Path(prefix + ".bin").write_bytes(Path(sentence_data_prefix + ".bin").read_bytes()[:1000])
    result = run_pretrain(bert_flags(prefix, tmp_path), launcher="python", script="pretrain_bert.py")
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    truncated = f"data file {prefix + '.bin'!r} is truncated (an interrupted preprocess or copy): 1000 bytes"
    assert truncated in errors[0]
