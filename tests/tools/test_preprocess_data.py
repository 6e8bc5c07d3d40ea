"""tools/preprocess_data.py end to end: same files for any --workers, eod per document, clear input errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from sentencepiece import SentencePieceProcessor

from megatron.config.errors import ConfigError
from megatron.data.indexed_dataset import MMapIndexedDataset
from megatron.data.tokenizer import build_tokenizer
from tests.data.corpora import MERGES, REPO_ROOT, VOCAB
from tools.preprocess_data import main as preprocess

CORPUS = REPO_ROOT / "data" / "corpus" / "kjv.jsonl"


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first chapters of the bundled corpus, plus an empty document and non-ASCII text."""
    lines = CORPUS.read_text(encoding="utf-8").splitlines()[:150]
    lines.insert(3, json.dumps({"text": ""}))
    lines.insert(7, json.dumps({"text": "Ünïcödé 😀 日本語 <|endoftext|> end", "id": 7}))
    path = tmp_path_factory.mktemp("corpus") / "small.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GPT2_FLAGS = ("--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", VOCAB, "--merge-file", MERGES)


def run(input_path: Path, prefix: Path, *extra: str, tokenizer: tuple[str, ...] = GPT2_FLAGS) -> str:
    preprocess(
        [
            "--input", str(input_path), "--output-prefix", str(prefix), *tokenizer,
            "--dataset-impl", "mmap", "--log-interval", "50", *extra,
        ]
    )  # fmt: skip
    return f"{prefix}_text_document"


def texts(path: Path) -> list[str]:
    return [
        json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def test_workers_give_identical_files(small_corpus: Path, tmp_path: Path) -> None:
    one = run(small_corpus, tmp_path / "one", "--append-eod", "--workers", "1")
    two = run(small_corpus, tmp_path / "two", "--append-eod", "--workers", "2", "--chunk-size", "7")
    for ext in (".bin", ".idx"):
        assert Path(one + ext).read_bytes() == Path(two + ext).read_bytes()


def test_documents_and_append_eod(small_corpus: Path, tmp_path: Path) -> None:
    tokenizer = build_tokenizer("GPT2BPETokenizer", VOCAB, MERGES)
    docs = [t for t in texts(small_corpus) if t]  # the empty document is skipped
    with_eod = MMapIndexedDataset(run(small_corpus, tmp_path / "eod", "--append-eod"))
    without = MMapIndexedDataset(run(small_corpus, tmp_path / "plain"))
    assert len(with_eod) == len(without) == len(docs)
    assert with_eod.dtype == np.uint16
    assert with_eod.doc_idx.tolist() == list(range(len(docs) + 1))
    for i, text in enumerate(docs):
        ids = tokenizer.tokenize(text)
        assert without[i].tolist() == ids
        assert with_eod[i].tolist() == ids + [tokenizer.eod]
    special = next(i for i, text in enumerate(docs) if "<|endoftext|>" in text)
    assert int((np.asarray(without[special]) == tokenizer.eod).sum()) == 1  # the literal text became eod


@pytest.mark.parametrize("tokenizer_type", ["GPTSentencePieceTokenizer", "Llama2Tokenizer"])
def test_sentencepiece_documents(
    small_corpus: Path, tmp_path: Path, sentencepiece_model: str, tokenizer_type: str
) -> None:
    """Llama 2 recipes preprocess with these two: each document is the tokenizer's ids (Llama2Tokenizer's
    start with <s>) and --append-eod ends it with </s>; an empty document is still skipped."""
    flags = ("--tokenizer-type", tokenizer_type, "--tokenizer-model", sentencepiece_model)
    tokenizer = build_tokenizer(tokenizer_type, None, None, sentencepiece_model)
    docs = [t for t in texts(small_corpus) if t]
    with_eod = MMapIndexedDataset(run(small_corpus, tmp_path / "eod", "--append-eod", tokenizer=flags))
    without = MMapIndexedDataset(run(small_corpus, tmp_path / "plain", "--workers", "2", tokenizer=flags))
    assert len(with_eod) == len(without) == len(docs)
    assert with_eod.dtype == np.uint16
    for i, text in enumerate(docs):
        ids = tokenizer.tokenize(text)
        assert without[i].tolist() == ids
        assert with_eod[i].tolist() == ids + [tokenizer.eod]
    assert tokenizer.eod == SentencePieceProcessor(model_file=sentencepiece_model).piece_to_id("</s>")
    starts_with_bos = {int(with_eod[i][0]) == tokenizer.bos for i in range(len(docs))}
    assert starts_with_bos == {tokenizer_type == "Llama2Tokenizer"}


def test_null_tokenizer_documents(tmp_path: Path) -> None:
    path = tmp_path / "ids.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["5 6 7", "", "0", "9 9"]))
    flags = ("--tokenizer-type", "NullTokenizer", "--vocab-size", "10")
    dataset = MMapIndexedDataset(run(path, tmp_path / "out", "--append-eod", tokenizer=flags))
    assert [dataset[i].tolist() for i in range(len(dataset))] == [[5, 6, 7, 10], [0, 10], [9, 9, 10]]
    with pytest.raises(ConfigError, match=r"--vocab-size is required with --tokenizer-type NullTokenizer"):
        run(path, tmp_path / "none", tokenizer=flags[:2])
    assert not list(tmp_path.glob("none_*"))


def test_gzip_input_and_several_keys(tmp_path: Path) -> None:
    records = [{"text": "In the beginning", "title": "Genesis"}, {"text": "was the Word", "title": "John"}]
    path = tmp_path / "in.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    preprocess(
        [
            "--input", str(path), "--output-prefix", str(tmp_path / "out"), "--json-keys", "text", "title",
            "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", VOCAB, "--merge-file", MERGES,
        ]
    )  # fmt: skip
    tokenizer = build_tokenizer("GPT2BPETokenizer", VOCAB, MERGES)
    for key in ("text", "title"):
        ds = MMapIndexedDataset(str(tmp_path / f"out_{key}_document"))
        assert [tokenizer.detokenize(ds[i]) for i in range(len(ds))] == [r[key] for r in records]


def test_missing_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--input .*absent\.jsonl' does not exist"):
        run(tmp_path / "absent.jsonl", tmp_path / "out")
    assert not list(tmp_path.glob("out_*"))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_line_that_is_not_json(tmp_path: Path, workers: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(ConfigError, match=r"--input .*bad\.jsonl' line 3 is not valid JSON"):
        run(path, tmp_path / "out", "--workers", workers)
    assert not list(tmp_path.glob("out_*"))  # the partial .bin is removed


def test_missing_key_and_wrong_types(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "no text key"}\n')
    with pytest.raises(
        ConfigError, match=r"--json-keys 'text' is missing from --input .*keys\.jsonl' line 2"
    ):
        run(path, tmp_path / "out")
    path.write_text('{"text": 5}\n')
    with pytest.raises(ConfigError, match=r"--json-keys 'text' in --input .* line 1 is a int, not a string"):
        run(path, tmp_path / "out")
    path.write_text('["text"]\n')
    with pytest.raises(ConfigError, match=r"--input .* line 1 holds a JSON list, not an object"):
        run(path, tmp_path / "out")


def test_bad_tokenizer_flags_fail_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "x"}\n')
    with pytest.raises(ConfigError, match=r"--vocab-file .*missing\.json' cannot be read"):
        preprocess(
            ["--input", str(path), "--output-prefix", str(tmp_path / "o"),
             "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", str(tmp_path / "missing.json"),
             "--merge-file", MERGES]
        )  # fmt: skip
    with pytest.raises(ConfigError, match=r"--workers 0 must be at least 1"):
        run(path, tmp_path / "o", "--workers", "0")
