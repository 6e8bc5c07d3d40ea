"""Shared fixtures: a small preprocessed slice of the bundled corpus and a small SentencePiece model, built
once per test session."""

from __future__ import annotations

import collections
import itertools
import json
import os
from pathlib import Path

import pytest

from tests.launch import BERT_VOCAB_FILE, MERGE_FILE, REPO_ROOT, VOCAB_FILE, free_port, threads_per_process

CORPUS_DOCUMENTS = 400


def pytest_configure(config: pytest.Config) -> None:
    """In-process tests compute on this worker's share of the cores, as the processes tests start do."""
    import torch

    torch.set_num_threads(threads_per_process())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with the most slow tests first: pytest-xdist hands out whole files in this order, and a long
    file handed out last would run alone on one worker while the other waits. A file's tests keep their
    order (the sort is stable and a file's tests share their key)."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])


@pytest.fixture(scope="session")
def gpt_data_prefix(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The first documents of the bundled corpus as a Megatron mmap dataset; returns its prefix."""
    from tools.preprocess_data import main as preprocess

    folder = tmp_path_factory.mktemp("gpt_data")
    corpus = sorted((REPO_ROOT / "data" / "corpus").glob("*.jsonl"))[0]
    sample = folder / "corpus.jsonl"
    with corpus.open() as source:
        sample.write_text("".join(itertools.islice(source, CORPUS_DOCUMENTS)))
    output = folder / "corpus"
    preprocess(
        [
            "--input", str(sample), "--output-prefix", str(output), "--json-keys", "text",
            "--tokenizer-type", "GPT2BPETokenizer",
            "--vocab-file", str(VOCAB_FILE), "--merge-file", str(MERGE_FILE),
            "--append-eod", "--workers", "1",
        ]
    )  # fmt: skip
    return str(Path(f"{output}_text_document"))


@pytest.fixture(scope="session")
def sentence_data_prefix(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The first documents of the bundled corpus split into sentences with the bundled WordPiece vocabulary
    (BERT and T5 data); returns its prefix."""
    from tools.preprocess_data import main as preprocess

    folder = tmp_path_factory.mktemp("sentence_data")
    corpus = sorted((REPO_ROOT / "data" / "corpus").glob("*.jsonl"))[0]
    sample = folder / "corpus.jsonl"
    with corpus.open() as source:
        sample.write_text("".join(itertools.islice(source, CORPUS_DOCUMENTS)))
    output = folder / "corpus"
    preprocess(
        [
            "--input", str(sample), "--output-prefix", str(output), "--json-keys", "text",
            "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", str(BERT_VOCAB_FILE),
            "--split-sentences", "--workers", "1",
        ]
    )  # fmt: skip
    return f"{output}_text_sentence"


@pytest.fixture(scope="session")
def single_process_group():
    """A process group of one (gloo on CPU), for in-process tests of code that talks to DeepSpeed's comm."""
    from megatron.training.distributed import initialize_distributed

    os.environ.setdefault("MASTER_PORT", str(free_port()))
    return initialize_distributed()


@pytest.fixture(scope="session")
def sentencepiece_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SentencePiece model trained here on the bundled corpus with LLaMA's settings (BPE, byte fallback,
    digits split, text kept as written, ``<unk> <s> </s>`` at ids 0 1 2 and no pad), since no model can be
    downloaded in tests; returns the path of its ``.model`` file."""
    from megatron.data.sentencepiece_tokenizer import train_llama_style

    folder = tmp_path_factory.mktemp("sentencepiece")
    corpus = sorted((REPO_ROOT / "data" / "corpus").glob("*.jsonl"))[0]
    with corpus.open() as source:
        documents = [json.loads(line)["text"] for line in itertools.islice(source, 100)]
    lines = [line for text in documents for line in text.split("\n") if line]
    return train_llama_style(lines, str(folder / "tokenizer"), vocab_size=1000)
