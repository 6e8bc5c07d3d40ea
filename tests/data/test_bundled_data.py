"""The bundled corpus and tokenizer: the shape data/README.md promises, and the tokenizer reproducible."""

from __future__ import annotations

import json
from pathlib import Path

from tests.data.corpora import REPO_ROOT, TOKENIZER_DIR
from tools.train_tokenizer import main as train_tokenizer

CORPUS = REPO_ROOT / "data" / "corpus" / "kjv.jsonl"


def test_corpus_shape() -> None:
    texts = [json.loads(line)["text"] for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    assert len(texts) == 1189
    assert texts[0].startswith("Genesis 1\n\nIn the beginning God created the heaven and the earth.")
    assert texts[-1].startswith("Revelation 22\n\n")
    assert 1_500_000 < sum(map(len, texts)) < 4_200_000
    assert min(map(len, texts)) > 100


def test_bundled_files_stay_small() -> None:
    data = REPO_ROOT / "data"
    shipped = [data / "README.md", *(data / "corpus").rglob("*"), *(data / "tokenizer").rglob("*")]
    assert sum(p.stat().st_size for p in shipped if p.is_file()) < 6 * 1024 * 1024


def test_bundled_tokenizer_is_reproducible_from_the_corpus(tmp_path: Path) -> None:
    train_tokenizer(["--input", str(CORPUS), "--output-dir", str(tmp_path)])
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == (TOKENIZER_DIR / name).read_bytes(), name
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 8192 and vocab["<|endoftext|>"] == 8191
    assert (tmp_path / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")
